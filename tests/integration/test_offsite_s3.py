"""S3 remote store against a real moto_server, through prefect-aws blocks and boto3 only."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

import pytest

from erp_backup.adapters import crypto
from erp_backup.adapters.archive import ArtifactWriter, open_decompressed
from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.s3 import MIB, S3Store
from erp_backup.core.errors import StorageError
from tests.integration.conftest import assert_actionable
from tests.integration.offsite_fixtures import PASSPHRASE, SECRET_KEY, GpgTestKeys, MotoServer, S3Env

pytestmark = pytest.mark.integration


class Stream:
    """A non-seekable readable producing ``size`` pseudo-random bytes, hashing what it hands out."""

    def __init__(self, size: int, seed: bytes = b"s") -> None:
        self.left = size
        self.block = hashlib.sha256(seed).digest() * (MIB // 32) + os.urandom(4096)
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        out = (self.block * (n // len(self.block) + 1))[:n]
        self.left -= n
        self.sha.update(out)
        return out

    def readable(self) -> bool:
        return True


class InFlight:
    """Counts concurrent requests of one S3 operation through botocore's own event hooks."""

    def __init__(self, client: Any, op: str) -> None:
        self.now = self.peak = self.calls = 0
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._client, self._op = client, op
        client.meta.events.register(f"before-call.s3.{op}", self._before, unique_id=f"t-before-{op}")
        client.meta.events.register(f"after-call.s3.{op}", self._after, unique_id=f"t-after-{op}")
        client.meta.events.register(f"before-send.s3.{op}", self._send, unique_id=f"t-send-{op}")

    def _before(self, **_: Any) -> None:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)

    def _after(self, **_: Any) -> None:
        with self._lock:
            self.now -= 1

    def _send(self, request: Any, **_: Any) -> None:
        self.headers.append(dict(request.headers))

    def close(self) -> None:
        ev = self._client.meta.events
        ev.unregister(f"before-call.s3.{self._op}", unique_id=f"t-before-{self._op}")
        ev.unregister(f"after-call.s3.{self._op}", unique_id=f"t-after-{self._op}")
        ev.unregister(f"before-send.s3.{self._op}", unique_id=f"t-send-{self._op}")


def test_put_get_list_delete_under_prefix(moto_s3: S3Env) -> None:
    store: RemoteStore = S3Store(moto_s3.bucket, "django_erp", chunk_size=5 * MIB, concurrency=4)
    client = moto_s3.client()
    parts = InFlight(client, "UploadPart")
    try:
        src = Stream(23 * MIB + 123)
        size = store.put_stream("20261128T020000Z-full/files.tar.zst.gpg", cast(IO[bytes], src))
    finally:
        parts.close()
    assert size == 23 * MIB + 123
    assert parts.calls == 5 and parts.peak > 1, (parts.calls, parts.peak)  # multipart, parts in parallel
    head = client.head_object(Bucket=moto_s3.bucket.bucket_name,
                              Key="django_erp/20261128T020000Z-full/files.tar.zst.gpg")
    assert head["ETag"].strip('"').endswith("-5")

    with store.get_stream("20261128T020000Z-full/files.tar.zst.gpg") as body:
        h = hashlib.sha256()
        while chunk := body.read(MIB):
            h.update(chunk)
    assert h.hexdigest() == src.sha.hexdigest()

    store.put_stream("20261128T020000Z-full/manifest.json", cast(IO[bytes], Stream(10)))
    store.put_stream("20261128T030000Z-incr/manifest.json", cast(IO[bytes], Stream(0)))
    client.put_object(Bucket=moto_s3.bucket.bucket_name, Key="elsewhere/x", Body=b"x")  # outside the prefix
    assert store.size("20261128T020000Z-full/manifest.json") == 10
    assert store.size("20261128T030000Z-incr/manifest.json") == 0
    assert store.size("20261128T040000Z-incr/manifest.json") is None
    listed = list(store.list())
    assert [(o.key, o.size) for o in listed] == [
        ("20261128T020000Z-full/files.tar.zst.gpg", 23 * MIB + 123),
        ("20261128T020000Z-full/manifest.json", 10),
        ("20261128T030000Z-incr/manifest.json", 0),
    ]
    assert all(o.modified is not None for o in listed)  # upload times: retention ages incomplete uploads by them
    assert [o.key for o in store.list("20261128T03")] == ["20261128T030000Z-incr/manifest.json"]
    assert store.delete(["20261128T020000Z-full/manifest.json", "20261128T020000Z-full/manifest.json",
                         "no/such-object"]) == 2
    assert [o.key for o in store.list("20261128T020000Z-full/")] == ["20261128T020000Z-full/files.tar.zst.gpg"]
    with pytest.raises(StorageError) as e:
        store.get_stream("20261128T020000Z-full/manifest.json")
    assert_actionable(e.value, "no such object", "django_erp/20261128T020000Z-full/manifest.json",
                      secrets=(SECRET_KEY,))
    with pytest.raises(StorageError):
        store.size("../escape")


def test_bucket_folder_pagination_and_batched_delete(moto_s3: S3Env, moto_server: MotoServer) -> None:
    bucket = moto_server.bucket(folder="tenant-a")
    store = S3Store(bucket, "/erp/", page_size=2, delete_batch=3)
    keys = [f"set{i}/obj" for i in range(7)]
    for k in keys:
        store.put_stream(k, cast(IO[bytes], Stream(1)))
    client = bucket.credentials.get_s3_client()
    names = [o["Key"] for o in client.list_objects_v2(Bucket=bucket.bucket_name)["Contents"]]
    assert names == [f"tenant-a/erp/{k}" for k in keys]
    listed = InFlight(client, "ListObjectsV2")
    try:
        assert [o.key for o in store.list()] == keys
    finally:
        listed.close()
    assert listed.calls == 4  # 7 objects, 2 per page
    deletes = InFlight(client, "DeleteObjects")
    try:
        assert store.delete(keys) == 7
    finally:
        deletes.close()
    assert deletes.calls == 3
    assert all("Content-MD5" in h for h in deletes.headers)  # what Aliyun OSS requires
    assert list(store.list()) == []


def test_missing_bucket(moto_server: MotoServer, tmp_path: Path) -> None:
    store = S3Store(moto_server.bucket("erpb-nonexistent-bucket", create=False), "p")
    local = tmp_path / "f"
    local.write_bytes(b"x" * 100)
    for call in (lambda: store.put_stream("a/b", cast(IO[bytes], Stream(10))), lambda: store.put_file("a/b", local),
                 lambda: list(store.list()),
                 lambda: store.size("a/b"), lambda: store.get_stream("a/b"), lambda: store.delete(["a/b"])):
        with pytest.raises(StorageError) as e:
            call()
        assert_actionable(e.value, "bucket 'erpb-nonexistent-bucket' does not exist", moto_server.endpoint,
                          secrets=(SECRET_KEY,))


def test_access_denied(moto_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # this moto_server checks credentials
    server = moto_factory()
    store = S3Store(server.bucket("erpb-denied", create=False), "p")
    local = tmp_path / "f"
    local.write_bytes(b"x" * 100)
    for call in (lambda: store.put_stream("a/b", cast(IO[bytes], Stream(10))), lambda: store.put_file("a/b", local),
                 lambda: list(store.list()), lambda: store.size("a/b")):
        with pytest.raises(StorageError) as e:
            call()
        assert_actionable(e.value, "access denied", "AwsCredentials", secrets=(SECRET_KEY,))


def test_endpoint_down(moto_factory: Any, tmp_path: Path) -> None:
    local = tmp_path / "f"
    local.write_bytes(os.urandom(6 * MIB))
    server = moto_factory()
    # botocore's retries (default: 5 attempts with back-off) only make the test slower
    store = S3Store(server.bucket(config={"retries": {"max_attempts": 2}}), "p", chunk_size=5 * MIB)
    store.put_stream("a/one", cast(IO[bytes], Stream(100)))
    server.stop()
    for call in (lambda: store.put_stream("a/two", cast(IO[bytes], Stream(12 * MIB))),
                 lambda: store.put_file("a/three", local), lambda: list(store.list()),
                 lambda: store.size("a/one"), lambda: store.get_stream("a/one")):
        t0 = time.monotonic()
        with pytest.raises(StorageError) as e:
            call()
        assert time.monotonic() - t0 < 60
        assert_actionable(e.value, "does not answer", server.endpoint, "endpoint_url", secrets=(SECRET_KEY,))


def test_encrypted_artifact_round_trip_through_s3(moto_s3: S3Env, gpg_keys: GpgTestKeys, tmp_path: Path) -> None:
    """Local encrypted artifact -> put_stream -> get_stream -> decrypt -> decompress: nothing on disk
    on the way back, and the reader's SHA-256 (of the encrypted bytes) equals the local one."""
    data = os.urandom(2 * MIB) + b"MARKER-customer-ACME " * 100_000
    art = tmp_path / "files.tar.zst.gpg"
    with crypto.gpg_home(crypto.KeyMaterial(public_keys=(gpg_keys.enc.public,))) as home:
        w = ArtifactWriter(art, encryptor=home.encryptor([gpg_keys.enc.fingerprint]))
        w.write(data)
        written = w.close()
    store = S3Store(moto_s3.bucket, "erp", chunk_size=5 * MIB)
    assert store.put_file("s1/files.tar.zst.gpg", art) == written.size
    raw = moto_s3.client().get_object(Bucket=moto_s3.bucket.bucket_name, Key="erp/s1/files.tar.zst.gpg")["Body"].read()
    assert b"MARKER-customer-ACME" not in raw
    with crypto.gpg_home(crypto.KeyMaterial(secret_keys=(gpg_keys.enc.secret,))) as home:
        with store.get_stream("s1/files.tar.zst.gpg") as body, \
                open_decompressed(body, decryptor=home.decryptor(PASSPHRASE)) as r:
            out = r.read()
            assert r.hexdigest() == written.sha256 and r.compressed_size == written.size
    assert out == data


class PooledStore(S3Store):
    """The real store, keeping the part buffers of each ``put_stream`` for the test to inspect."""

    pools: list[Any]

    def _buffers(self) -> Any:
        pool = super()._buffers()
        self.__dict__.setdefault("pools", []).append(pool)
        return pool


@pytest.mark.parametrize("size", [0, 10, 5 * MIB - 1, 5 * MIB, 15 * MIB, 17 * MIB + 12345])
def test_put_stream_parts_are_the_bytes_read(moto_s3: S3Env, size: int) -> None:
    """Sizes around the part size: every byte arrives once and in order, through at most
    ``concurrency`` reused part buffers, all unmapped when the upload returns."""
    store = PooledStore(moto_s3.bucket, "erp", chunk_size=5 * MIB, concurrency=2)
    client = moto_s3.client()
    parts = InFlight(client, "UploadPart")
    try:
        src = Stream(size, seed=str(size).encode())
        assert store.put_stream("s/obj", cast(IO[bytes], src)) == size
    finally:
        parts.close()
    with store.get_stream("s/obj") as body:
        got = hashlib.sha256()
        while chunk := body.read(MIB):
            got.update(chunk)
    assert got.hexdigest() == src.sha.hexdigest()
    want_parts = 0 if size < 5 * MIB else -(-size // (5 * MIB))
    assert parts.calls == want_parts and parts.peak <= 2, (parts.calls, parts.peak)
    (pool,) = store.pools
    assert len(pool.made) <= 2 and (size == 0 or pool.made)
    assert all(buf.closed for buf in pool.made)


class FailingStream(Stream):
    """Fails with ``error`` once ``fail_after`` bytes were read."""

    def __init__(self, size: int, fail_after: int, error: BaseException) -> None:
        super().__init__(size)
        self.fail_after, self.error, self.given = fail_after, error, 0

    def read(self, n: int = -1) -> bytes:
        if self.given >= self.fail_after:
            raise self.error
        out = super().read(n)
        self.given += len(out)
        return out


def _no_uploads_left(client: Any, bucket: str) -> None:
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert left == [], left  # aborted: no parts kept (and billed) by the service


def test_put_stream_source_failure_aborts_and_frees_buffers(moto_s3: S3Env) -> None:
    from erp_backup.core.errors import CryptoError

    store = PooledStore(moto_s3.bucket, "erp", chunk_size=5 * MIB, concurrency=3)
    client, bucket = moto_s3.client(), moto_s3.bucket.bucket_name
    boom = CryptoError("gpg failed while encrypting", hint="check the key")
    with pytest.raises(CryptoError) as e:
        store.put_stream("s/obj", cast(IO[bytes], FailingStream(40 * MIB, 12 * MIB, boom)))
    assert e.value is boom  # the stream's own error, not a storage one
    _no_uploads_left(client, bucket)
    assert store.size("s/obj") is None
    (pool,) = store.pools
    assert pool.made and all(buf.closed for buf in pool.made)


def test_put_stream_part_failure_aborts_and_frees_buffers(moto_s3: S3Env) -> None:
    """A part the service refuses (after botocore's own retries): the upload stops reading, waits
    for the parts under way, aborts, and reports the service's error."""
    from botocore.exceptions import ClientError

    store = PooledStore(moto_s3.bucket, "erp", chunk_size=5 * MIB, concurrency=2)
    client, bucket = moto_s3.client(), moto_s3.bucket.bucket_name
    src = Stream(60 * MIB)

    def refuse_part_3(params: dict[str, Any], **_: Any) -> None:
        if params.get("PartNumber") == 3:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "injected failure"}}, "UploadPart")

    store._client.meta.events.register("before-parameter-build.s3.UploadPart", refuse_part_3, unique_id="t-refuse-3")
    try:
        with pytest.raises(StorageError) as e:
            store.put_stream("s/obj", cast(IO[bytes], src))
    finally:
        store._client.meta.events.unregister("before-parameter-build.s3.UploadPart", unique_id="t-refuse-3")
    assert_actionable(e.value, "InternalError", "erp/s/obj", secrets=(SECRET_KEY,))
    assert src.left >= 40 * MIB, src.left  # it stopped reading soon after the failure (parts 1-4 read)
    _no_uploads_left(client, bucket)
    assert store.size("s/obj") is None
    (pool,) = store.pools
    assert pool.made and all(buf.closed for buf in pool.made)


def test_put_stream_over_https_sends_aws_chunked_parts(moto_factory: Any) -> None:
    """Over HTTPS botocore frames each part as aws-chunked with a CRC32 trailer (unsigned payload),
    reading the part buffer in views: the object must still be the bytes read."""
    import warnings

    from urllib3.exceptions import InsecureRequestWarning

    server = moto_factory(tls=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureRequestWarning)  # moto's self-signed certificate
        store = S3Store(server.bucket(verify=False), "erp", chunk_size=5 * MIB, concurrency=2)
        client = store._client
        parts = InFlight(client, "UploadPart")
        try:
            src = Stream(11 * MIB + 5)
            assert store.put_stream("s/obj", cast(IO[bytes], src)) == 11 * MIB + 5
        finally:
            parts.close()
        got = hashlib.sha256(client.get_object(Bucket=store.bucket_name, Key="erp/s/obj")["Body"].read())
    assert got.hexdigest() == src.sha.hexdigest()
    assert parts.calls == 3
    encodings = {str(h.get("Content-Encoding", b""), "ascii", "replace") for h in parts.headers}
    assert encodings == {"aws-chunked"}, parts.headers[:1]


def test_put_stream_beyond_the_part_limit_is_a_config_error(moto_s3: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """More parts than S3 allows (10,000; lowered to 2 here): not retried (ConfigError), aborted."""
    from erp_backup.adapters.storage import s3
    from erp_backup.core.errors import ConfigError

    monkeypatch.setattr(s3, "_MAX_PARTS", 2)
    store = S3Store(moto_s3.bucket, "erp", chunk_size=5 * MIB, concurrency=2)
    with pytest.raises(ConfigError) as e:
        store.put_stream("s/big", cast(IO[bytes], Stream(11 * MIB)))
    assert_actionable(e.value, "more than 2 parts", "part_size_mib", secrets=(SECRET_KEY,))
    _no_uploads_left(moto_s3.client(), moto_s3.bucket.bucket_name)
    assert store.size("s/big") is None
