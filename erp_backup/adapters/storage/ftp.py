"""Remote copies on an FTP server, over TLS (``ftplib.FTP_TLS``, explicit ``AUTH TLS``, ``PROT P``).

``FtpStore(params, prefix)`` implements ``RemoteStore``. Objects live under
``<directory>/<prefix>/<key>``. Plain FTP (password and backups in clear on the wire) is refused
unless the parameters say ``allow_plain=True`` explicitly.

FTP has no atomic object upload: a ``STOR`` cut half way leaves a short file under its name. So
every object is stored as ``.<name>.part-<random>`` beside its final name and renamed (``RNFR``/
``RNTO``) once its size was checked: a name without that prefix is always a whole object, and the
manifest-last rule holds as on S3. ``list`` leaves the temporary names out; ``delete`` removes a
set's directory when it is empty.

One control connection per operation (logged in, TLS negotiated): simple, and nothing to keep
alive between stages. Reads are streamed from the data connection (``transfercmd``).
"""

from __future__ import annotations

import builtins
import contextlib
import ftplib
import os
import socket
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from erp_backup.adapters.storage.base import RemoteObject
from erp_backup.core.errors import ConfigError, StorageError

CHUNK = 1 << 20
TMP_MARK = ".part-"
MAX_DEPTH = 8  # directory levels below the prefix that ``list`` walks (a set needs 1)


@dataclass(frozen=True)
class FtpParams:
    """How to reach the server (from the erp-backup FTP storage block); ``password`` never shown."""

    host: str
    port: int = 21
    user: str = "anonymous"
    password: str = field(default="", repr=False)
    directory: str = "/"
    tls: bool = True
    allow_plain: bool = False
    verify_tls: bool = True
    ca_pem: str = ""  # extra trusted CA certificates (PEM), e.g. a self-signed server's
    timeout_s: float = 60.0


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


class FtpStore:
    """``RemoteStore`` on an FTP(S) server."""

    def __init__(self, params: FtpParams, prefix: str = "") -> None:
        if not params.tls and not params.allow_plain:
            raise ConfigError(f"FTP store {params.host}: plain FTP sends the password and the backups in clear",
                              hint="use FTPS (tls = true in the FTP storage block), or set allow_plain = true "
                                   "in the block if the network is trusted")
        self.params = params
        base = "/".join(p for p in (params.directory.strip("/"), prefix.strip("/")) if p)
        self.root = "/" + base if base else "/"

    # -- names

    def describe(self) -> str:
        scheme = "ftps" if self.params.tls else "ftp"
        return f"{scheme}://{self.params.user}@{self.params.host}:{self.params.port}{self.root}"

    def _full(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\n" in key \
                or "\r" in key:
            raise StorageError(f"invalid remote object name {key!r}", hint="this is a bug: report it")
        return f"{self.root.rstrip('/')}/{key}"

    def _where(self, key: str | None = None) -> str:
        return self.describe().split(self.root, 1)[0] + (self._full(key) if key else self.root)

    # -- connections

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.params.ca_pem.strip():
            ctx.load_verify_locations(cadata=self.params.ca_pem)
        if not self.params.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    @contextlib.contextmanager
    def _connect(self, action: str, key: str | None = None) -> Iterator[ftplib.FTP]:
        p = self.params
        try:
            ftp: ftplib.FTP
            if p.tls:
                ftp = ftplib.FTP_TLS(context=self._context(), timeout=p.timeout_s)
            else:
                ftp = ftplib.FTP(timeout=p.timeout_s)
            ftp.connect(p.host, p.port)
        except (OSError, ftplib.Error) as e:
            raise self._error(e, action, key) from e
        try:
            try:
                if isinstance(ftp, ftplib.FTP_TLS):
                    ftp.auth()
                ftp.login(p.user, p.password)
                if isinstance(ftp, ftplib.FTP_TLS):
                    ftp.prot_p()
                ftp.voidcmd("TYPE I")
            except (OSError, ftplib.Error, EOFError) as e:
                raise self._error(e, action, key) from e
            yield ftp
        finally:
            with contextlib.suppress(Exception):
                ftp.quit()
            with contextlib.suppress(Exception):
                ftp.close()

    def _error(self, e: BaseException, action: str, key: str | None = None) -> StorageError:
        where = self._where(key)
        if isinstance(e, StorageError):
            return e
        if isinstance(e, ssl.SSLCertVerificationError):
            return StorageError(f"cannot {action} {where}: the server's TLS certificate is not trusted "
                                f"({e.verify_message})",
                                hint="put the server's CA certificate in the FTP block's ca_certificate")
        if isinstance(e, ssl.SSLError):
            return StorageError(f"cannot {action} {where}: TLS failed ({e.reason or e})",
                                hint="does the server speak FTPS (AUTH TLS)? check host, port and tls in the block")
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ftplib.error_perm):
            if text.startswith("530"):
                return StorageError(f"cannot {action} {where}: login refused ({text})",
                                    hint="check user and password in the FTP storage block")
            if text.startswith("550"):
                return StorageError(f"cannot {action} {where}: no such object or no permission ({text})",
                                    hint="list the remote sets (erp-backup list --remote); check the "
                                         "user's rights on the directory")
            return StorageError(f"cannot {action} {where}: the server refused ({text})",
                                hint="check the FTP user's rights on the directory and the server's quota")
        if isinstance(e, ConnectionRefusedError | socket.gaierror | TimeoutError):
            return StorageError(f"cannot {action} {where}: the FTP server {self.params.host}:{self.params.port} "
                                f"does not answer ({type(e).__name__})",
                                hint="is the server up and reachable from here? check host and port in the block")
        return StorageError(f"cannot {action} {where}: {text}",
                            hint="check the network and the FTP server, then retry")

    # -- helpers

    @staticmethod
    def _makedirs(ftp: ftplib.FTP, path: str) -> None:
        cur = ""
        for part in path.strip("/").split("/"):
            if not part:
                continue
            cur += "/" + part
            try:
                ftp.mkd(cur)
            except ftplib.error_perm:
                pass  # exists (or no right: the STOR that follows says so)

    @staticmethod
    def _drop_leftovers(ftp: ftplib.FTP, parent: str, name: str) -> None:
        """Temporary objects of earlier uploads of ``name`` that were killed before their rename."""
        try:
            entries = [n for n, _ in ftp.mlsd(parent, facts=["type"])]
        except ftplib.error_perm:
            return
        finally:
            ftp.voidcmd("TYPE I")  # a listing switches to ASCII: the upload that follows must be binary
        for n in entries:
            if n.startswith(f".{name}{TMP_MARK}") and "/" not in n:
                with contextlib.suppress(ftplib.error_perm):
                    ftp.delete(f"{parent}/{n}")

    def _size(self, ftp: ftplib.FTP, path: str) -> int | None:
        ftp.voidcmd("TYPE I")  # SIZE is refused in ASCII mode (with the 550 of a missing file)
        try:
            resp = ftp.sendcmd(f"SIZE {path}")  # ftplib's size() ends in a ValueError on a reply that is no number
        except ftplib.error_perm as e:
            if str(e).startswith("550"):
                return None
            raise
        if not resp.startswith("213"):
            return None  # as ftplib's size()
        return self._number(resp[3:], path.removeprefix(self.root.rstrip("/") + "/"))

    # -- RemoteStore

    def put_stream(self, key: str, readable: IO[bytes]) -> int:
        full = self._full(key)
        parent, _, name = full.rpartition("/")
        tmp = f"{parent}/.{name}{TMP_MARK}{os.urandom(6).hex()}"
        sent = 0
        with self._connect("upload to", key) as ftp:
            try:
                self._makedirs(ftp, parent)
                self._drop_leftovers(ftp, parent, name)
                with ftp.transfercmd(f"STOR {tmp}") as conn:
                    while chunk := readable.read(CHUNK):
                        conn.sendall(chunk)
                        sent += len(chunk)
                    if isinstance(conn, ssl.SSLSocket):
                        conn.unwrap()
                ftp.voidresp()
                size = self._size(ftp, tmp)
                if size != sent:
                    raise StorageError(f"{self._where(key)}: the server holds {size} bytes of the {sent} sent",
                                       hint="the upload was cut short or the server's disk is full: run it again")
                try:
                    ftp.rename(tmp, full)
                except ftplib.error_perm:  # servers that do not rename over an existing file
                    ftp.delete(full)
                    ftp.rename(tmp, full)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    ftp.delete(tmp)
                if isinstance(e, OSError | ftplib.Error | EOFError):
                    raise self._error(e, "upload to", key) from e
                raise
            return sent

    def put_file(self, key: str, path: Path) -> int:
        with open(path, "rb") as f:
            return self.put_stream(key, f)

    def get_stream(self, key: str) -> IO[bytes]:
        full = self._full(key)
        cm = self._connect("download", key)
        ftp = cm.__enter__()
        try:
            conn = ftp.transfercmd(f"RETR {full}")
        except BaseException as e:
            cm.__exit__(None, None, None)
            if isinstance(e, OSError | ftplib.Error | EOFError):
                raise self._error(e, "download", key) from e
            raise
        return cast(IO[bytes], _Download(self, key, cm, ftp, conn))

    def size(self, key: str) -> int | None:
        full = self._full(key)
        with self._connect("read", key) as ftp:
            try:
                return self._size(ftp, full)
            except (OSError, ftplib.Error, EOFError) as e:
                raise self._error(e, "read", key) from e

    def list(self, prefix: str = "") -> Iterator[RemoteObject]:
        if prefix and (prefix.startswith("/") or ".." in prefix.split("/")):
            raise StorageError(f"invalid remote prefix {prefix!r}", hint="this is a bug: report it")
        found: list[RemoteObject] = []
        with self._connect("list", None) as ftp:
            try:
                self._walk(ftp, "", prefix, found)
            except (OSError, ftplib.Error, EOFError) as e:
                raise self._error(e, "list", prefix or None) from e
        yield from sorted(found, key=lambda o: o.key)

    def _walk(self, ftp: ftplib.FTP, rel: str, prefix: str, out: builtins.list[RemoteObject]) -> None:
        path = f"{self.root.rstrip('/')}/{rel}" if rel else self.root
        if not rel:
            try:
                ftp.cwd(path)
            except ftplib.error_perm:
                return  # the prefix directory does not exist yet: nothing stored
        entries = list(ftp.mlsd(path, facts=["type", "size"]))
        for name, facts in entries:
            if name in (".", "..") or "/" in name or _is_tmp(name):
                continue
            key = f"{rel}{name}"
            kind = facts.get("type", "")
            if kind == "dir":
                if key.count("/") >= MAX_DEPTH:
                    continue  # deeper than any set's objects: a crafted tree is not walked forever
                if prefix.startswith(key + "/") or key.startswith(prefix) or (key + "/").startswith(prefix):
                    self._walk(ftp, key + "/", prefix, out)
            elif kind == "file" and key.startswith(prefix):
                out.append(RemoteObject(key, self._number(facts.get("size", "0") or "0", key)))

    def _number(self, text: str, key: str) -> int:
        """A size the server sent (MLSD fact, SIZE reply): decimal digits, else one StorageError."""
        text = text.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 20:
            raise StorageError(f"{self._where(key)}: the server gives the size {text[:40]!r}, which is no number",
                               hint="the FTP server is broken or not the one configured: check it and the block")
        return int(text)

    def delete(self, keys: Iterable[str]) -> int:
        fulls = [self._full(k) for k in dict.fromkeys(keys)]
        if not fulls:
            return 0
        with self._connect("delete from", None) as ftp:
            dirs: set[str] = set()
            for full in fulls:
                try:
                    ftp.delete(full)
                except ftplib.error_perm as e:
                    if not str(e).startswith("550"):
                        raise self._error(e, "delete from", None) from e
                    if self._size(ftp, full) is not None:  # there, but not ours to delete
                        raise self._error(e, "delete from", None) from e
                except (OSError, ftplib.Error, EOFError) as e:
                    raise self._error(e, "delete from", None) from e
                parent = full.rpartition("/")[0]
                if parent.rstrip("/") != self.root.rstrip("/"):
                    dirs.add(parent)
            for d in sorted(dirs, key=len, reverse=True):
                with contextlib.suppress(ftplib.Error, OSError):
                    ftp.rmd(d)  # only empty directories go (a set's directory once its objects are gone)
        return len(fulls)


class _Download:
    """A RETR data connection: streamed reads; close() ends the transfer and the session."""

    def __init__(self, store: FtpStore, key: str, cm: contextlib.AbstractContextManager[ftplib.FTP],
                 ftp: ftplib.FTP, conn: socket.socket) -> None:
        self._store, self._key, self._cm, self._ftp, self._conn = store, key, cm, ftp, conn
        self._file = conn.makefile("rb")
        self._eof = False
        self.name = key.rsplit("/", 1)[-1]

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._file.read(None if n is None or n < 0 else n)
        except (OSError, ftplib.Error) as e:
            raise self._store._error(e, "download", self._key) from e
        if not data or (n is not None and n < 0):
            self._eof = True
        return bytes(data or b"")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(Exception):
            self._file.close()
        try:
            if self._eof and isinstance(self._conn, ssl.SSLSocket):
                with contextlib.suppress(Exception):
                    self._conn.unwrap()
            self._conn.close()
            if self._eof:
                with contextlib.suppress(Exception):
                    self._ftp.voidresp()
        finally:
            self._conn = None  # type: ignore[assignment]
            self._cm.__exit__(None, None, None)

    def __enter__(self) -> _Download:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
