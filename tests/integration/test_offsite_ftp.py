"""FTP(S) remote store against a real pyftpdlib server with TLS on a free loopback port."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import IO, cast

import pytest

from erp_backup.adapters.storage.base import RemoteObject, RemoteStore
from erp_backup.adapters.storage.ftp import FtpStore
from erp_backup.core.errors import ConfigError, StorageError
from tests.integration.conftest import assert_actionable
from tests.integration.offsite_fixtures import FTP_PASSWORD, FtpServer, start_ftp

pytestmark = pytest.mark.integration


class Cut:
    """A readable that fails after ``after`` bytes (the source dies mid-upload)."""

    def __init__(self, after: int) -> None:
        self.left = after

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise OSError("source went away")
        n = min(n if n and n > 0 else 65536, self.left)
        self.left -= n
        return b"x" * n


def test_put_get_list_delete_over_tls(ftp_server: FtpServer) -> None:
    store: RemoteStore = FtpStore(ftp_server.params(), "django_erp")
    assert list(store.list()) == []  # the prefix directory does not exist yet
    data = bytes(range(256)) * 20000 + b"tail"
    assert store.put_stream("20261128T020000Z-full/files.tar.zst.gpg", io.BytesIO(data)) == len(data)
    assert store.put_stream("20261128T020000Z-full/manifest.json", io.BytesIO(b"{}")) == 2
    assert store.put_stream("20261128T030000Z-incr/SHA256SUMS", io.BytesIO(b"")) == 0
    on_disk = ftp_server.root / "backups" / "django_erp" / "20261128T020000Z-full" / "files.tar.zst.gpg"
    assert on_disk.read_bytes() == data
    assert store.size("20261128T020000Z-full/manifest.json") == 2
    assert store.put_stream("20261128T030000Z-incr/SHA256SUMS", io.BytesIO(b"second")) == 6  # replaced
    assert store.put_stream("20261128T030000Z-incr/SHA256SUMS", io.BytesIO(b"")) == 0
    assert store.size("20261128T020000Z-full/nothing") is None
    assert list(store.list()) == [RemoteObject("20261128T020000Z-full/files.tar.zst.gpg", len(data)),
                                  RemoteObject("20261128T020000Z-full/manifest.json", 2),
                                  RemoteObject("20261128T030000Z-incr/SHA256SUMS", 0)]
    assert [o.key for o in store.list("20261128T03")] == ["20261128T030000Z-incr/SHA256SUMS"]
    with store.get_stream("20261128T020000Z-full/files.tar.zst.gpg") as body:
        h = hashlib.sha256()
        while chunk := body.read(70000):
            h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()
    with store.get_stream("20261128T020000Z-full/files.tar.zst.gpg") as body:  # closed half way
        assert body.read(10) == data[:10]
    assert store.delete(["20261128T020000Z-full/files.tar.zst.gpg", "20261128T020000Z-full/manifest.json",
                         "20261128T020000Z-full/gone"]) == 3
    assert not on_disk.parent.exists()  # the set's directory goes with its last object
    assert [o.key for o in store.list()] == ["20261128T030000Z-incr/SHA256SUMS"]
    with pytest.raises(StorageError) as e:
        store.get_stream("20261128T020000Z-full/manifest.json")
    assert_actionable(e.value, "no such object", "20261128T020000Z-full/manifest.json", secrets=(FTP_PASSWORD,))
    for bad in ("../escape", "/abs", "a//b", "a/./b"):
        with pytest.raises(StorageError):
            store.size(bad)


def test_a_cut_upload_leaves_no_object_under_its_name(ftp_server: FtpServer) -> None:
    store = FtpStore(ftp_server.params(), "p")
    with pytest.raises(StorageError):
        store.put_stream("s/manifest.json", cast(IO[bytes], Cut(300_000)))
    assert store.size("s/manifest.json") is None
    assert list(store.list()) == []
    left = [p.name for p in (ftp_server.root / "backups" / "p" / "s").iterdir()]
    assert left == []  # the temporary object was removed too
    # one of a killed upload (no chance to remove it) goes with the next upload of that object
    killed = ftp_server.root / "backups" / "p" / "s" / ".manifest.json.part-0123456789ab"
    killed.write_bytes(b"half")
    assert list(store.list()) == []  # never listed
    assert store.put_stream("s/manifest.json", io.BytesIO(b"{}")) == 2
    assert sorted(p.name for p in killed.parent.iterdir()) == ["manifest.json"]


def test_plain_ftp_refused_unless_the_block_allows_it(tmp_path: Path) -> None:
    server = start_ftp(tmp_path, tls=False)
    try:
        with pytest.raises(ConfigError) as e:
            FtpStore(server.params(tls=False))
        assert_actionable(e.value, "plain FTP", "allow_plain", secrets=(FTP_PASSWORD,))
        with pytest.raises(ConfigError):
            server.block(tls=False).store("p")
        store = FtpStore(server.params(tls=False, allow_plain=True), "p")
        assert store.put_stream("a/b", io.BytesIO(b"abc")) == 3
        assert store.describe().startswith("ftp://")
        with pytest.raises(StorageError) as se:  # a TLS client against a server without TLS
            FtpStore(server.params(tls=True), "p").size("a/b")
        assert_actionable(se.value, "cannot read", secrets=(FTP_PASSWORD,))
    finally:
        server.stop()


def test_wrong_password_untrusted_certificate_dead_server(ftp_server: FtpServer) -> None:
    with pytest.raises(StorageError) as e:
        list(FtpStore(ftp_server.params(password="wrong-pass-1"), "p").list())
    assert_actionable(e.value, "login refused", "password", secrets=(FTP_PASSWORD, "wrong-pass-1"))
    with pytest.raises(StorageError) as e:
        FtpStore(ftp_server.params(ca_pem=""), "p").size("a/b")
    assert_actionable(e.value, "certificate is not trusted", "ca_certificate", secrets=(FTP_PASSWORD,))
    block = ftp_server.block()
    assert FTP_PASSWORD not in repr(block) + block.model_dump_json()
    assert block.store("p").size("a/b") is None
    ftp_server.stop()
    with pytest.raises(StorageError) as e:
        FtpStore(ftp_server.params(), "p").size("a/b")
    assert_actionable(e.value, "does not answer", "host and port", secrets=(FTP_PASSWORD,))


@pytest.mark.parametrize("lie", ["MLSD size fact", "SIZE reply"])
def test_a_server_whose_sizes_are_no_numbers_is_one_error(ftp_server: FtpServer, lie: str) -> None:
    """The store is untrusted: a review's server listing ``size=abc`` (or answering SIZE with it)
    ended list --remote, upload and restore --from-remote in a ValueError traceback."""
    store = FtpStore(ftp_server.params(), "django_erp")
    key = "20261128T020000Z-full/manifest.json"
    assert store.put_stream(key, io.BytesIO(b"{}")) == 2
    handler = ftp_server._server.handler
    if lie == "SIZE reply":
        handler.ftp_SIZE = lambda self, path: self.respond("213 12abc")
    else:
        fs = handler.abstracted_fs
        plain = fs.format_mlsx

        def lying(self, *args, **kw):  # type: ignore[no-untyped-def]
            for line in plain(self, *args, **kw):
                yield line.replace(b"size=2;", b"size=abc;")

        handler.abstracted_fs = type("LyingFS", (fs,), {"format_mlsx": lying})
    with pytest.raises(StorageError) as e:
        if lie == "SIZE reply":
            store.put_stream(key, io.BytesIO(b"{}"))
        else:
            list(store.list())
    assert_actionable(e.value, "which is no number", "FTP server")
