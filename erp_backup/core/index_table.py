"""A snapshot index held compactly: one array per field instead of one object per entry. Pure.

A 200,000-file index as a tuple of ``FileEntry`` costs ~480 bytes an entry (the object, its path,
three large ints, a 64-character hex digest); here ~170 (the path string and packed fields, the
digest as 32 bytes). Entries are built again when read (``table[i]``, iteration): what a restore
keeps between its passes over the index is this table, not the entries.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from erp_backup.core.models import EntryType, FileEntry, shared_int

_TYPES = list(EntryType)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_HEX = frozenset("0123456789abcdef")
_Q_MIN, _Q_MAX = -(1 << 63), (1 << 63) - 1
_NO_SHA = bytes(32)


class IndexTable(Sequence[FileEntry]):
    """The entries appended, in order; reads give back equal ``FileEntry`` values."""

    __slots__ = ("_gids", "_holder_code", "_holder_names", "_holders", "_inos", "_modes", "_mtimes", "_odd",
                 "_paths", "_sha_kind", "_shas", "_sizes", "_targets", "_types", "_uids")

    def __init__(self, entries: Iterable[FileEntry] = ()) -> None:
        self._paths: list[str] = []
        self._types = bytearray()
        self._modes = array("I")
        self._mtimes = array("q")
        self._sizes = array("q")
        self._uids = array("I")
        self._gids = array("I")
        self._inos = array("q")
        self._shas = bytearray()  # 32 bytes an entry (zeros unless _sha_kind is 1)
        self._sha_kind = bytearray()  # 0: None, 1: packed in _shas, 2: in _odd
        self._holders = array("H")  # 0: none, else 1 + position in _holder_names
        self._holder_names: list[str] = []
        self._holder_code: dict[str, int] = {}
        self._targets: dict[int, str | None] = {}  # symlinks (and any entry with a target)
        # values that do not fit the packed form, by position and field: a sha256 that is not 64
        # lowercase hex digits, an inode or mode out of range, more than 65535 holders
        self._odd: dict[tuple[int, str], object] = {}
        for e in entries:
            self.append(e)

    def append(self, e: FileEntry) -> None:
        i = len(self._paths)
        self._paths.append(e.path)
        self._types.append(_TYPE_CODE[e.type])
        for arr, name, value, low, high in ((self._modes, "mode", e.mode, 0, 0xFFFFFFFF),
                                            (self._mtimes, "mtime_ns", e.mtime_ns, _Q_MIN, _Q_MAX),
                                            (self._sizes, "size", e.size, _Q_MIN, _Q_MAX),
                                            (self._uids, "uid", e.uid, 0, 0xFFFFFFFF),
                                            (self._gids, "gid", e.gid, 0, 0xFFFFFFFF),
                                            (self._inos, "ino", e.ino, _Q_MIN, _Q_MAX)):
            if type(value) is int and low <= value <= high:
                arr.append(value)
            else:
                arr.append(0)
                self._odd[(i, name)] = value
        sha = e.sha256
        if sha is None:
            self._sha_kind.append(0)
            self._shas += _NO_SHA
        elif type(sha) is str and len(sha) == 64 and _HEX.issuperset(sha):
            self._sha_kind.append(1)
            self._shas += bytes.fromhex(sha)
        else:
            self._sha_kind.append(2)
            self._shas += _NO_SHA
            self._odd[(i, "sha256")] = sha
        h = e.holder
        if h is None:
            self._holders.append(0)
        else:
            code = self._holder_code.get(h)
            if code is None and len(self._holder_names) < 0xFFFE:
                self._holder_names.append(h)
                code = self._holder_code[h] = len(self._holder_names)
            if code is None:
                self._holders.append(0)
                self._odd[(i, "holder")] = h
            else:
                self._holders.append(code)
        if e.target is not None:
            self._targets[i] = e.target

    def __len__(self) -> int:
        return len(self._paths)

    @overload
    def __getitem__(self, i: int) -> FileEntry: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[FileEntry]: ...

    def __getitem__(self, i: int | slice) -> FileEntry | Sequence[FileEntry]:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self))))
        if i < 0:
            i += len(self._paths)
        if not 0 <= i < len(self._paths):
            raise IndexError(i)
        return self._entry(i)

    def _entry(self, i: int) -> FileEntry:
        odd = self._odd
        if odd:
            def get(name: str, packed: object) -> object:
                return odd.get((i, name), packed)
        else:
            def get(name: str, packed: object) -> object:
                return packed
        code = self._holders[i]
        kind = self._sha_kind[i]
        sha = self._shas[32 * i:32 * i + 32].hex() if kind == 1 else None if kind == 0 else odd[(i, "sha256")]
        return FileEntry(
            path=self._paths[i],
            type=_TYPES[self._types[i]],
            mode=get("mode", shared_int(self._modes[i])),  # type: ignore[arg-type]
            mtime_ns=get("mtime_ns", self._mtimes[i]),  # type: ignore[arg-type]
            size=get("size", self._sizes[i]),  # type: ignore[arg-type]
            uid=get("uid", shared_int(self._uids[i])),  # type: ignore[arg-type]
            gid=get("gid", shared_int(self._gids[i])),  # type: ignore[arg-type]
            ino=get("ino", self._inos[i]),  # type: ignore[arg-type]
            sha256=sha,  # type: ignore[arg-type]
            holder=get("holder", self._holder_names[code - 1] if code else None),  # type: ignore[arg-type]
            target=self._targets.get(i),
        )

    def __iter__(self) -> Iterator[FileEntry]:
        for i in range(len(self._paths)):
            yield self._entry(i)

    def path(self, i: int) -> str:
        return self._paths[i]

    def type(self, i: int) -> EntryType:
        return _TYPES[self._types[i]]

    def holder(self, i: int) -> str | None:
        code = self._holders[i]
        if code:
            return self._holder_names[code - 1]
        return self._odd.get((i, "holder")) if self._odd else None  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IndexTable | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"IndexTable({len(self)} entries)"
