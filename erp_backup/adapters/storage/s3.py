"""Remote copies on an S3-compatible service (AWS S3, Aliyun OSS, MinIO) through prefect-aws blocks.

``S3Store(bucket_block, prefix)`` implements ``RemoteStore``. Objects live under
``<bucket_folder of the S3Bucket block>/<prefix>/<key>``. All calls go through the boto3 client of
the block's credentials (``bucket.credentials.get_s3_client()``: endpoint, region, retries and
botocore config come from the ``AwsCredentials`` block). Uploads are multipart above
``chunk_size`` with ``concurrency`` parts in flight:

* ``put_file``: boto3's ``upload_file`` (each thread reads its parts from the file).
* ``put_stream`` (any readable, non-seekable too: a stream being encrypted): our own multipart
  upload (``_StreamUpload``). A non-seekable stream's parts must be held in memory until the
  service has them (a retry resends them); they are read straight into at most
  ``in_memory_parts`` (default ``concurrency``) reused part buffers and sent from there without a
  copy, so its memory is ``in_memory_parts x chunk_size`` (15 MiB by default) and flat whatever
  the size. boto3's ``upload_fileobj`` held one part more than its in-memory limit and copied
  each 1 MiB it hashed or sent: ~60 MB over the imports with 8 MiB x 4 (issue #8). Checksums
  (CRC32 per part), retries (botocore's, per request) and the abort of a failed upload are as
  boto3 does them. The largest object streamed is 10,000 parts (48.8 GiB at 5 MiB parts).

Service settings (``AwsCredentials.aws_client_parameters``):

* **AWS S3**: nothing beyond the region. A lifecycle rule "abort incomplete multipart uploads
  after N days" cleans up after uploads killed half way (a failed upload aborts its own).
* **Aliyun OSS** (not tested against the real service here): endpoint
  ``https://oss-<region>.aliyuncs.com`` (Aliyun's S3-compatibility pages also name
  ``https://s3.oss-<region>.aliyuncs.com``; ``-internal`` from inside Aliyun), and OSS only
  accepts virtual-hosted addressing::

      aws_client_parameters={
          "endpoint_url": "https://oss-cn-hangzhou.aliyuncs.com",
          "config": {"s3": {"addressing_style": "virtual"},
                     "request_checksum_calculation": "when_required",
                     "response_checksum_validation": "when_required"}}

  The two checksum settings matter with boto3 >= 1.36, whose default CRC32 trailers
  (``aws-chunked`` encoding) OSS rejects ("aws-chunked encoding is not supported");
  Aliyun's own page instead suggests ``"signature_version": "s3"``. OSS wants ``Content-MD5``
  on multi-object delete, which boto3 >= 1.36 no longer sends: this store adds it.
* **MinIO**: ``endpoint_url`` of the server and path-style addressing
  (``"config": {"s3": {"addressing_style": "path"}}``); add the two checksum settings for
  MinIO releases older than 2025.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mmap
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from erp_backup.adapters.storage.base import RemoteObject
from erp_backup.core.errors import BackupError, ConfigError, StorageError

log = logging.getLogger(__name__)

MIB = 1 << 20
_MAX_PARTS = 10_000  # the S3 API's limit per multipart upload
_READ = MIB  # put_stream reads its source in pieces of this size into the part buffers
_DELETE_BATCH = 1000  # the S3 API's limit per DeleteObjects request
_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                 "InvalidToken", "ExpiredToken", "AccountProblem", "403"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _content_md5(request: Any, **_: Any) -> None:
    """Content-MD5 on DeleteObjects for services that still require it (Aliyun OSS)."""
    body = request.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, bytes | bytearray) and "Content-MD5" not in request.headers:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        request.headers["Content-MD5"] = base64.b64encode(digest).decode("ascii")


class S3Store:
    """``RemoteStore`` on an S3 bucket (prefect-aws ``S3Bucket`` block with its ``AwsCredentials``)."""

    def __init__(self, bucket: Any, prefix: str = "", *, chunk_size: int = 5 * MIB, concurrency: int = 3,
                 in_memory_parts: int | None = None, page_size: int = 1000,
                 delete_batch: int = _DELETE_BATCH) -> None:
        self.bucket_name: str = bucket.bucket_name
        folder = str(getattr(bucket, "bucket_folder", "") or "").strip("/")
        self.prefix = "/".join(p for p in (folder, prefix.strip("/")) if p)
        self._client = bucket.credentials.get_s3_client()
        self._client.meta.events.register("before-sign.s3.DeleteObjects", _content_md5,
                                          unique_id="erp-backup-content-md5")
        self.page_size = page_size
        self.delete_batch = min(delete_batch, _DELETE_BATCH)
        self.transfer = TransferConfig(multipart_threshold=chunk_size, multipart_chunksize=chunk_size,
                                       max_concurrency=concurrency, use_threads=True,
                                       preferred_transfer_client="classic")
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        # parts of put_stream in memory at once (uploading, or being read from the stream)
        self.in_memory_parts = max(in_memory_parts or concurrency, 1)

    # -- names

    def describe(self) -> str:
        return f"s3://{self.bucket_name}/{self.prefix}".rstrip("/") + f" at {self.endpoint}"

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _full(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid remote object name {key!r}", hint="this is a bug: report it")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def _where(self, key: str | None = None) -> str:
        path = self._full(key) if key else self.prefix
        return f"s3://{self.bucket_name}/{path}".rstrip("/")

    # -- errors

    def _error(self, e: BaseException, action: str, key: str | None = None) -> BaseException:
        if isinstance(e, BackupError):
            return e  # the stream we upload from failed (a gpg or disk error): already explained
        where = self._where(key)
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = str(err.get("Code", "") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code == "NoSuchBucket":
                return StorageError(f"cannot {action} {where}: bucket '{self.bucket_name}' does not exist "
                                    f"at {self.endpoint}",
                                    hint="create the bucket, or fix bucket_name in the S3 bucket block")
            if code in _ACCESS_CODES:
                return StorageError(f"cannot {action} {where}: access denied ({code})",
                                    hint="check the keys in the AwsCredentials block and the bucket policy "
                                         "(the backup user needs s3:PutObject, GetObject, ListBucket and "
                                         "DeleteObject on the prefix)")
            if code in _MISSING_CODES:
                return StorageError(f"cannot {action} {where}: no such object",
                                    hint="list the remote sets (erp-backup list --remote) and pick one that exists")
            msg = str(err.get("Message", "")).splitlines()[0] if err.get("Message") else ""
            return StorageError(f"cannot {action} {where}: {code} {msg}".rstrip(),
                                hint="check the S3 service's status and the bucket block's settings")
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return StorageError(f"cannot {action} {where}: no S3 credentials",
                                hint="set aws_access_key_id and aws_secret_access_key in the AwsCredentials block")
        if isinstance(e, BotoConnectionError):
            return StorageError(f"cannot {action} {where}: the S3 endpoint {self.endpoint} does not answer "
                                f"({type(e).__name__})",
                                hint="is the service up and reachable from here? check endpoint_url in the "
                                     "AwsCredentials block, DNS, proxy and firewall")
        if isinstance(e, BotoCoreError | OSError | Urllib3Error):
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            return StorageError(f"cannot {action} {where}: {line}",
                                hint="check the network and the S3 bucket/credentials blocks, then retry")
        return e

    def _bucket_problem(self, action: str, key: str) -> StorageError | None:
        """After a bare 404 on HEAD: is it the bucket that is missing?"""
        try:
            self._client.head_bucket(Bucket=self.bucket_name)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                return StorageError(f"cannot {action} {self._where(key)}: bucket '{self.bucket_name}' does not "
                                    f"exist at {self.endpoint}",
                                    hint="create the bucket, or fix bucket_name in the S3 bucket block")
            return cast(StorageError, self._error(e, action, key))
        except Exception as e:
            err = self._error(e, action, key)
            return err if isinstance(err, StorageError) else None
        return None

    # -- RemoteStore

    def _uploaded_size(self, key: str) -> int:
        """The size the service reports for an object just uploaded (checked against what was sent)."""
        size = self.size(key)
        if size is None:
            raise StorageError(f"{self._where(key)} is missing right after its upload",
                               hint="the service lost or hid the object: check its consistency settings and retry")
        return size

    def put_stream(self, key: str, readable: IO[bytes]) -> int:
        full = self._full(key)
        upload = _StreamUpload(self._client, self.bucket_name, full, self.chunk_size, self.concurrency)
        buffers = self._buffers()
        try:
            upload.run(readable, buffers)
        except Exception as e:
            if isinstance(e, _TooManyParts):  # a ConfigError: another attempt would fail the same way
                raise ConfigError(f"cannot upload to {self._where(key)}: the object needs more than "
                                  f"{_MAX_PARTS} parts of {self.chunk_size / MIB:g} MiB (S3's limit)",
                                  hint="raise [remote] part_size_mib (the largest object streamed is "
                                       f"{_MAX_PARTS} x part_size_mib)") from e
            raise self._error(e, "upload to", key) from e
        finally:
            buffers.close()
        return self._uploaded_size(key)

    def _buffers(self) -> _Buffers:
        """The part buffers of one ``put_stream`` (unmapped when it returns)."""
        return _Buffers(self.chunk_size, self.in_memory_parts)

    def put_file(self, key: str, path: Path) -> int:
        full = self._full(key)
        try:
            self._client.upload_file(str(path), self.bucket_name, full, Config=self.transfer)
        except Exception as e:
            # upload_file wraps a ClientError in S3UploadFailedError (raised while handling it)
            cause = e.__context__ if isinstance(e, S3UploadFailedError) and e.__context__ else e
            raise self._error(cause, "upload to", key) from e
        return self._uploaded_size(key)

    def get_stream(self, key: str) -> IO[bytes]:
        try:
            resp = self._client.get_object(Bucket=self.bucket_name, Key=self._full(key))
        except Exception as e:
            raise self._error(e, "download", key) from e
        return cast(IO[bytes], _Body(resp["Body"], self, key))

    def size(self, key: str) -> int | None:
        try:
            resp = self._client.head_object(Bucket=self.bucket_name, Key=self._full(key))
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                problem = self._bucket_problem("read", key)
                if problem:
                    raise problem from e
                return None
            raise self._error(e, "read", key) from e
        except Exception as e:
            raise self._error(e, "read", key) from e
        return int(resp["ContentLength"])

    def list(self, prefix: str = "") -> Iterator[RemoteObject]:
        if prefix and (prefix.startswith("/") or ".." in prefix.split("/")):
            raise StorageError(f"invalid remote prefix {prefix!r}", hint="this is a bug: report it")
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket_name, Prefix=full,
                                           PaginationConfig={"PageSize": self.page_size}):
                for obj in page.get("Contents", []):
                    yield RemoteObject(self._rel(obj["Key"]), int(obj["Size"]), obj.get("LastModified"))
        except Exception as e:
            raise self._error(e, "list", prefix or None) from e

    def delete(self, keys: Iterable[str]) -> int:
        fulls = [self._full(k) for k in dict.fromkeys(keys)]
        for i in range(0, len(fulls), self.delete_batch):
            batch = fulls[i:i + self.delete_batch]
            try:
                resp = self._client.delete_objects(
                    Bucket=self.bucket_name, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
            except Exception as e:
                raise self._error(e, "delete from", None) from e
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(f"cannot delete {len(errors)} object(s) from {self._where()}: e.g. "
                                   f"{self._rel(first.get('Key', '?'))}: {first.get('Code', '')} "
                                   f"{first.get('Message', '')}".rstrip(),
                                   hint="check that the backup user may s3:DeleteObject under the prefix")
        return len(fulls)


class _Body:
    """A GetObject body: streamed reads, failures as StorageError."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key
        self.name = key.rsplit("/", 1)[-1]

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self._body.read(None if n is None or n < 0 else n))
        except Exception as e:
            raise self._store._error(e, "download", self._key) from e

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _TooManyParts(Exception):
    pass


class _Buffers:
    """At most ``count`` part buffers of ``size`` bytes, allocated on first need and reused: anonymous
    mmaps, so a buffer costs memory only for the pages a part filled, outside the malloc heap (no
    fragmentation by parts freed in other threads), and ``close()`` gives it all back at once."""

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self._slots = threading.Semaphore(count)
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []
        self.made: list[mmap.mmap] = []

    def get(self) -> mmap.mmap:
        """A free buffer; blocks while ``count`` are taken."""
        self._slots.acquire()
        with self._lock:
            if self._free:
                return self._free.pop()  # the last one given back: its pages are resident already
            buf = mmap.mmap(-1, self.size)
            self.made.append(buf)
            return buf

    def put(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)
        self._slots.release()

    def close(self) -> None:
        with self._lock:
            for buf in self.made:
                try:
                    buf.close()
                except BufferError:  # a view of it still lives (an exception's traceback): freed with it
                    pass
            self._free.clear()


def _fill(buf: mmap.mmap, readable: IO[bytes]) -> int:
    """Read into ``buf`` until it is full or the stream ends; how many bytes it holds."""
    n, size = 0, len(buf)
    while n < size:
        want = min(size - n, _READ)
        chunk = readable.read(want)
        if not chunk:
            break
        if len(chunk) > want:
            raise StorageError(f"the stream being uploaded returned {len(chunk)} bytes for a read of {want}",
                               hint="this is a bug: report it")
        buf[n:n + len(chunk)] = chunk
        n += len(chunk)
    return n


class _PartBody:
    """The first ``size`` bytes of a part buffer as the seekable file botocore hashes (checksum,
    SigV4 payload hash), sends and rewinds on a retry. Reads are views into the buffer, not copies:
    hashlib, zlib, the socket and botocore's aws-chunked framing all take any bytes-like object, and
    copies of 1 MiB per read in each upload thread cost ~1.5 MiB per thread (per-thread malloc
    arenas) in the measurements of issue #8. The buffer is given back only when the request is over."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self._buf = buf
        self._size = size
        self._pos = 0

    def read(self, n: int | None = -1) -> bytes | memoryview:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        with memoryview(self._buf) as whole:
            data = whole[self._pos:end]
        self._pos = end
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class _StreamUpload:
    """One object from a non-seekable stream: a PutObject if it fits in one part, else a multipart
    upload whose parts are read into the store's bounded buffers (``_Buffers``: the caller's thread
    reads the next part while ``concurrency`` threads upload), completed in order, aborted if the
    stream or any part fails. Checksums as boto3's managed transfers send them (CRC32 per part
    unless ``request_checksum_calculation`` is ``when_required``); botocore retries each request."""

    def __init__(self, client: Any, bucket: str, key: str, part_size: int, concurrency: int) -> None:
        self._client = client
        self._where = {"Bucket": bucket, "Key": key}
        self._part_size = part_size
        self._concurrency = max(concurrency, 1)
        self._extra: dict[str, str] = {}
        if getattr(client.meta.config, "request_checksum_calculation", None) == "when_supported":
            from botocore.httpchecksum import DEFAULT_CHECKSUM_ALGORITHM

            self._extra["ChecksumAlgorithm"] = DEFAULT_CHECKSUM_ALGORITHM
        self._failed = threading.Event()
        self._lock = threading.Lock()
        self._first_error: BaseException | None = None

    def run(self, readable: IO[bytes], buffers: _Buffers) -> None:
        buf = buffers.get()
        try:
            n = _fill(buf, readable)
            if n < self._part_size:  # the whole object
                self._client.put_object(**self._where, Body=_PartBody(buf, n) if n else b"", **self._extra)
                return
        except BaseException:
            buffers.put(buf)
            raise
        self._multipart(readable, buffers, buf, n)

    def _multipart(self, readable: IO[bytes], buffers: _Buffers, buf: mmap.mmap, n: int) -> None:
        try:
            upload_id = self._client.create_multipart_upload(**self._where, **self._extra)["UploadId"]
        except BaseException:
            buffers.put(buf)
            raise
        pool = ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="s3-part")
        futures: list[Future[dict[str, Any]]] = []
        try:
            number = 1
            taken: mmap.mmap | None = buf
            while taken is not None:
                futures.append(pool.submit(self._part, buffers, taken, n, number, upload_id))
                taken = None
                if n < self._part_size:
                    break  # that was the last part
                taken = buffers.get()  # waits for a part to finish when all buffers are in flight
                if self._failed.is_set():
                    buffers.put(taken)
                    break
                try:
                    n = _fill(taken, readable)
                except BaseException:
                    buffers.put(taken)
                    raise
                if n == 0:
                    buffers.put(taken)
                    break
                number += 1
                if number > _MAX_PARTS:
                    buffers.put(taken)
                    raise _TooManyParts()
            for f in futures:
                f.exception()  # wait for every part
            if self._first_error is not None:
                raise self._first_error
            parts = [f.result() for f in futures]
            self._client.complete_multipart_upload(**self._where, UploadId=upload_id,
                                                   MultipartUpload={"Parts": parts})
        except BaseException:
            self._failed.set()
            # parts not started are dropped (their buffers too: the caller unmaps them all); parts
            # under way end first (botocore's timeouts bound them), then the upload is aborted
            pool.shutdown(wait=True, cancel_futures=True)
            self._abort(upload_id)
            raise
        finally:
            pool.shutdown(wait=True)

    def _part(self, buffers: _Buffers, buf: mmap.mmap, n: int, number: int, upload_id: str) -> dict[str, Any]:
        try:
            if self._failed.is_set():
                return {}  # another part failed: the upload is aborted
            resp = self._client.upload_part(**self._where, UploadId=upload_id, PartNumber=number,
                                            Body=_PartBody(buf, n), **self._extra)
        except BaseException as e:
            with self._lock:
                if self._first_error is None:
                    self._first_error = e
            self._failed.set()
            raise
        finally:
            buffers.put(buf)
        part: dict[str, Any] = {"ETag": resp["ETag"], "PartNumber": number}
        member = f"Checksum{self._extra['ChecksumAlgorithm'].upper()}" if self._extra else ""
        if member and member in resp:
            part[member] = resp[member]
        return part

    def _abort(self, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(**self._where, UploadId=upload_id)
        except Exception as e:  # the original failure matters more; a lifecycle rule cleans up
            log.warning("could not abort the multipart upload of s3://%s/%s (%s): its parts stay until the "
                        "bucket's lifecycle rule removes them", self._where["Bucket"], self._where["Key"], e)
