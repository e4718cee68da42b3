"""What a remote copy needs from a storage service (S3 today, FTP(S) later).

Keys are relative to the store's own prefix (``<id>/files.tar.zst.gpg``), always with ``/``.
Every failure is a ``StorageError`` whose message names the store and says what to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Protocol


@dataclass(frozen=True)
class RemoteObject:
    key: str  # relative to the store's prefix
    size: int
    modified: datetime | None = None  # when the service stored it, if the store can tell (prune's grace)


class RemoteStore(Protocol):
    def describe(self) -> str:
        """Where the objects go, for messages and logs (``s3://bucket/prefix``); no secret."""
        ...

    def put_stream(self, key: str, readable: IO[bytes]) -> int:
        """Store everything ``readable.read()`` yields under ``key`` (streamed, never whole in
        memory); the stored object's size as the service reports it afterwards."""
        ...

    def put_file(self, key: str, path: Path) -> int:
        """``put_stream`` of a local file (a committed set's artifact); a store may do better
        with a path than with a stream (S3: parts read from the file by each thread)."""
        ...

    def get_stream(self, key: str) -> IO[bytes]:
        """A readable of the object's bytes (streamed); the caller closes it."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size, or None if there is no such object."""
        ...

    def list(self, prefix: str = "") -> Iterator[RemoteObject]:
        """Every object whose key starts with ``prefix``, in key order."""
        ...

    def delete(self, keys: Iterable[str]) -> int:
        """Delete these objects (missing ones are not an error); how many were asked for."""
        ...
