"""A snapshot index read from its manifest on disk each time it is iterated.

A backup writes its index straight from a spill file to ``manifest.json``; the manifest it hands
on (sealed, committed) carries this view instead of a tuple of entries, so that no stage after the
seal holds the whole index. It is a ``Collection``: ``len`` is known, iterating reads the file.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

from erp_backup.core import manifest as mf
from erp_backup.core.models import FileEntry


class IndexFile(Collection[FileEntry]):
    """The entries of the index of ``manifest`` (a file this tool wrote), ``count`` of them."""

    __slots__ = ("count", "manifest")

    def __init__(self, manifest: Path, count: int) -> None:
        self.manifest = Path(manifest)
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[FileEntry]:
        with open(self.manifest, encoding="utf-8", newline="") as f:
            yield from mf.iter_entries(f, where=str(self.manifest))

    def __contains__(self, item: object) -> bool:
        return any(e == item for e in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexFile):
            return (self.manifest, self.count) == (other.manifest, other.count)
        if isinstance(other, tuple):
            return len(other) == self.count and tuple(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.manifest, self.count))

    def __repr__(self) -> str:
        return f"IndexFile({str(self.manifest)!r}, {self.count})"

    def moved(self, manifest: Path) -> IndexFile:
        """The same index at its new place (the partial set renamed at the commit)."""
        return IndexFile(manifest, self.count)
