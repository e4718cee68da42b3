"""Remote copies on an S3-compatible service (AWS S3, Aliyun OSS, MinIO) through prefect-aws blocks.

``S3Store(bucket_block, prefix)`` implements ``RemoteStore``. Objects live under
``<bucket_folder of the S3Bucket block>/<prefix>/<key>``. All calls go through the boto3 client of
the block's credentials (``bucket.credentials.get_s3_client()``: endpoint, region, retries and
botocore config come from the ``AwsCredentials`` block); uploads are boto3 managed transfers:
multipart above ``chunk_size``, ``concurrency`` parts in flight, streamed from any readable
(non-seekable too: at most ``in_memory_parts`` parts are buffered, so memory stays flat);
``put_file`` lets each thread read its parts from the file (boto3's ``upload_file``).

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
from collections.abc import Iterable, Iterator
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
from erp_backup.core.errors import BackupError, StorageError

MIB = 1 << 20
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

    def __init__(self, bucket: Any, prefix: str = "", *, chunk_size: int = 8 * MIB, concurrency: int = 4,
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
        # parts read ahead of the uploads from a non-seekable stream (boto3's default is 10)
        self.transfer.max_in_memory_upload_chunks = in_memory_parts or concurrency + 1

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
        try:
            self._client.upload_fileobj(readable, self.bucket_name, full, Config=self.transfer)
        except Exception as e:
            raise self._error(e, "upload to", key) from e
        return self._uploaded_size(key)

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
