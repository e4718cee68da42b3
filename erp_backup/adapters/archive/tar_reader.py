"""A lean, streaming tar parser (POSIX/PAX/GNU) over a decompressing reader."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from erp_backup.adapters.archive.artifact import CHUNK
from erp_backup.core.errors import IntegrityError

BLOCK = tarfile.BLOCKSIZE


class ByteSource(Protocol):
    def read(self, n: int = -1) -> bytes: ...

    def read_exact(self, n: int) -> bytes: ...


@dataclass(slots=True)
class TarMember:
    name: str
    type: bytes  # b"0" file, b"5" dir, b"2" symlink, ...
    size: int
    linkname: str = ""

    def isfile(self) -> bool:
        return self.type in (b"0", b"\x00", b"7")


def _octal(field: bytes, where: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        n = int.from_bytes(field[1:], "big")
        return -n if field[0] & 0x40 else n
    text = field.rstrip(b"\x00 ").strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise IntegrityError(f"{where}: tar header has a bad number field",
                             hint="the archive is damaged; verify the set") from None


def _pax(data: bytes, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise IntegrityError(f"{where}: bad PAX header", hint="the archive is damaged; verify the set") from None
        rec = data[sp + 1:pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
        if length <= 0:
            break
    return out


def _pax_size(value: str, where: str) -> int:
    """A PAX ``size`` record: decimal digits only (no sign, blank or ``_`` that ``int()`` would take)."""
    if not value.isascii() or not value.isdigit() or len(value) > 20:
        raise IntegrityError(f"{where}: a PAX header gives a member the size {value[:40]!r}",
                             hint="the archive is damaged or malicious; verify the set; restore from another set")
    return int(value)


class TarStream:
    """A lean, streaming reader of POSIX/PAX/GNU tar (what GNU tar and Python write).

    ``members()`` yields each member; its data can be read with ``read(n)`` until the next
    iteration, which skips whatever was not read. Member names are returned as stored: the
    caller decides what to do with them (the restore only uses them as lookup keys)."""

    def __init__(self, reader: ByteSource, where: str) -> None:
        self._r = reader
        self.where = where
        self._left = 0
        self._pad = 0

    def _exact(self, n: int) -> bytes:
        data = self._r.read_exact(n)
        if len(data) != n:
            raise IntegrityError(f"{self.where}: archive is truncated", hint="verify the set; restore from another set")
        return data

    def _skip(self) -> None:
        n = self._left + self._pad
        while n > 0:
            got = self._r.read(min(n, CHUNK))
            if not got:
                raise IntegrityError(f"{self.where}: archive is truncated",
                                     hint="verify the set; restore from another set")
            n -= len(got)
        self._left = self._pad = 0

    def read(self, n: int = CHUNK) -> bytes:
        if self._left <= 0:
            return b""
        data = self._r.read(min(n, self._left))
        if not data:
            raise IntegrityError(f"{self.where}: archive is truncated", hint="verify the set; restore from another set")
        self._left -= len(data)
        return data

    def members(self) -> Iterator[TarMember]:
        pax: dict[str, str] = {}
        longname: str | None = None
        longlink: str | None = None
        while True:
            self._skip()
            hdr = self._r.read_exact(BLOCK)
            if not hdr:
                raise IntegrityError(f"{self.where}: archive ends without its end marker",
                                     hint="the archive is truncated; verify the set")
            if len(hdr) != BLOCK:
                raise IntegrityError(f"{self.where}: archive is truncated", hint="verify the set")
            if hdr == bytes(BLOCK):
                return
            chk = _octal(hdr[148:156], self.where)
            if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
                raise IntegrityError(f"{self.where}: tar header checksum mismatch",
                                     hint="the archive is damaged; verify the set; restore from another set")
            typ = hdr[156:157]
            size = _octal(hdr[124:136], self.where)
            if size < 0:
                raise IntegrityError(f"{self.where}: negative member size", hint="the archive is damaged")
            if typ in (b"x", b"g", b"L", b"K"):
                if size > (1 << 20):
                    raise IntegrityError(f"{self.where}: a {size}-byte extended header is not plausible",
                                         hint="the archive is damaged or malicious; restore from another set")
                data = self._exact(size)
                self._pad = (-size) % BLOCK
                self._skip()
                if typ == b"x":
                    pax = _pax(data, self.where)
                elif typ == b"L":
                    longname = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                elif typ == b"K":
                    longlink = data.rstrip(b"\x00").decode("utf-8", "surrogateescape")
                continue
            name = hdr[0:100].split(b"\x00", 1)[0]
            if hdr[257:262] == b"ustar" and hdr[345:500].strip(b"\x00"):
                name = hdr[345:500].split(b"\x00", 1)[0] + b"/" + name
            if "size" in pax:
                size = _pax_size(pax["size"], self.where)
            m = TarMember(
                name=pax.get("path") or longname or name.decode("utf-8", "surrogateescape"),
                type=typ,
                size=size,
                linkname=pax.get("linkpath") or longlink or hdr[157:257].split(b"\x00", 1)[0].decode(
                    "utf-8", "surrogateescape"),
            )
            pax, longname, longlink = {}, None, None
            # data follows regular files and unknown types; links, dirs and devices carry none
            self._left = 0 if typ in (b"1", b"2", b"3", b"4", b"5", b"6") else m.size
            self._pad = (-self._left) % BLOCK
            if m.name.endswith("/"):
                m.name = m.name.rstrip("/")
            yield m
