"""The CLI's remote commands: ``list --remote``, ``verify --remote``, ``upload``, ``restore --from-remote``,
``block s3|ftp``. ``erp_backup.cli`` registers them and calls in here; the plain (Prefect-free)
variants handed to ``runner.run`` live here too.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from erp_backup.core.errors import ConfigError
from erp_backup.core.models import BackupId

if TYPE_CHECKING:  # the parser is built for every command: heavy modules are imported when used
    from erp_backup import restore as restorer
    from erp_backup.adapters.storage.base import RemoteStore
    from erp_backup.config import Settings

# ----------------------------------------------------------------------------- plain variants (runner.run)


def plain_upload(settings: Settings, backup_ids: list[str] | None = None) -> dict[str, Any]:
    from erp_backup.remote_store import open_store
    from erp_backup.upload import push

    res = push(settings, open_store(settings), wanted=[BackupId(i) for i in backup_ids] if backup_ids else None)
    return {"remote": res.remote, "uploaded": ", ".join(res.uploaded) or "-", "bytes sent": res.bytes_sent,
            "warnings": "; ".join(res.warnings) or "-"}


def plain_verify_remote(settings: Settings, backup_ids: list[str] | None = None) -> list[dict[str, Any]]:
    from erp_backup import remote_verify
    from erp_backup import verify as verifier
    from erp_backup.remote_store import open_store

    reports = remote_verify.verify_remote(settings, open_store(settings), backup_ids)
    rows = remote_verify.rows(reports)
    bad = [r for r in reports if not r.ok]
    if bad:
        raise verifier.VerifyFailed(rows, bad)
    return rows


def plain_restore_from_remote(settings: Settings, request: restorer.RestoreRequest,
                              scratch_dir: str | None = None) -> dict[str, Any]:
    from erp_backup import remote_restore
    from erp_backup.remote_store import open_store

    rep = remote_restore.restore_from_remote(settings, open_store(settings), request, scratch_dir)
    return {**rep.row(), "from": "remote"}


# ----------------------------------------------------------------------------- commands


def list_remote(settings: Settings, as_json: bool, store: RemoteStore | None = None) -> int:
    from erp_backup import remote_sets
    from erp_backup.core import chain
    from erp_backup.remote_store import open_store
    from erp_backup.tables import human, print_table

    store = store or open_store(settings)
    listing = remote_sets.scan(store)
    good, damaged = remote_sets.headers(store, listing)
    rows: list[dict[str, Any]] = []
    ids = [m.id for m in good]
    for m in good:
        problem = chain.chain_problem(m, ids, damaged)
        rows.append({"id": m.id.value, "kind": m.kind.value, "tags": ",".join(m.tags),
                     "parent": m.parent.value if m.parent else None,
                     "finished_at": m.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "size_bytes": sum(listing.objects[m.id.value].values()),
                     "status": "complete" if problem is None else "broken",
                     "reason": None if problem is None else f"it {problem}"})
    for d in damaged:
        rows.append({"id": d.id.value, "kind": d.id.kind.value, "tags": "", "parent": None, "finished_at": None,
                     "size_bytes": sum(listing.objects[d.id.value].values()), "status": "damaged",
                     "reason": d.reason})
    for sid in listing.incomplete:
        rows.append({"id": sid.value, "kind": sid.kind.value, "tags": "", "parent": None, "finished_at": None,
                     "size_bytes": sum(listing.objects[sid.value].values()), "status": "incomplete",
                     "reason": "no manifest.json: an upload did not finish (the next one completes it)"})
    rows.sort(key=lambda r: r["id"])
    if as_json:
        print(json.dumps({"remote": store.describe(), "sets": rows, "foreign": list(listing.foreign)}, indent=2))
        return 0
    if not rows:
        print(f"no backup sets in {store.describe()}")
    else:
        print_table([{**{k: ("-" if v is None else v) for k, v in r.items() if k != "reason"},
                      "size_bytes": human(r["size_bytes"])} for r in rows])
    for r in rows:
        if r["reason"]:
            print(f"({r['status']}: {r['id']}: {r['reason']})")
    if listing.foreign:
        print(f"({len(listing.foreign)} object(s) that belong to no set were ignored, e.g. {listing.foreign[0]!r})")
    return 0


# ----------------------------------------------------------------------------- blocks for scripted installs

OSS_CONFIG = {"s3": {"addressing_style": "virtual"}, "request_checksum_calculation": "when_required",
              "response_checksum_validation": "when_required"}


def _env(name: str, what: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{what}: ${name} is not set",
                          hint=f"export {name} in the environment of this command (never on its command line)")
    return value


def create_s3_block(args: argparse.Namespace) -> str:
    from prefect_aws import AwsCredentials, S3Bucket
    from pydantic import SecretStr

    params: dict[str, Any] = {}
    if args.endpoint_url:
        params["endpoint_url"] = args.endpoint_url
    config: dict[str, Any] = dict(OSS_CONFIG) if args.oss else {}
    if args.addressing_style:
        config["s3"] = {"addressing_style": args.addressing_style}
    if config:
        params["config"] = config
    token = os.environ.get("AWS_SESSION_TOKEN") or None
    creds = AwsCredentials(aws_access_key_id=_env("AWS_ACCESS_KEY_ID", "S3 access key"),
                           aws_secret_access_key=SecretStr(_env("AWS_SECRET_ACCESS_KEY", "S3 secret key")),
                           aws_session_token=token, region_name=args.region, aws_client_parameters=params)
    creds_name = f"{args.name}-credentials"
    creds.save(creds_name, overwrite=args.overwrite)
    bucket = S3Bucket(bucket_name=args.bucket, credentials=AwsCredentials.load(creds_name),
                      bucket_folder=args.folder or "")
    bucket.save(args.name, overwrite=args.overwrite)
    return f"saved blocks aws-credentials/{creds_name} and s3-bucket/{args.name} (bucket {args.bucket})"


def create_ftp_block(args: argparse.Namespace) -> str:
    from pydantic import SecretStr

    from erp_backup.blocks.ftp import FtpStorage

    ca = ""
    if args.ca_file:
        try:
            ca = Path(args.ca_file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--ca-file {args.ca_file} cannot be read", hint="give a PEM certificate file") from e
    password = os.environ.get("ERP_BACKUP_FTP_PASSWORD") or None
    if password is None and args.user != "anonymous":
        _env("ERP_BACKUP_FTP_PASSWORD", "FTP password")
    block = FtpStorage(host=args.host, port=args.port, user=args.user,
                       password=SecretStr(password) if password else None, directory=args.directory,
                       tls=not args.no_tls, allow_plain=args.allow_plain, verify_tls=not args.no_verify_tls,
                       ca_certificate=ca)
    block.store("")  # refuses plain FTP without allow_plain, before anything is saved
    block.save(args.name, overwrite=args.overwrite)
    return f"saved block erp-backup-ftp-storage/{args.name} ({block.store('').describe()})"


def add_block_parsers(kinds: Any) -> None:
    """``block s3`` and ``block ftp`` under the ``block`` command (next to ``block gpg``)."""
    s3 = kinds.add_parser("s3", help="AwsCredentials + S3Bucket blocks (AWS S3, Aliyun OSS, MinIO); keys from "
                                     "$AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY [/ $AWS_SESSION_TOKEN]")
    s3.add_argument("--name", required=True,
                    help="the S3Bucket block's name ([remote] block); the credentials are NAME-credentials")
    s3.add_argument("--bucket", required=True)
    s3.add_argument("--endpoint-url", help="for OSS/MinIO, e.g. https://oss-cn-hangzhou.aliyuncs.com")
    s3.add_argument("--region", help="e.g. us-east-1, cn-hangzhou")
    s3.add_argument("--folder", help="a folder inside the bucket (before [remote] prefix)")
    s3.add_argument("--addressing-style", choices=["virtual", "path"], help="path for MinIO, virtual for OSS")
    s3.add_argument("--oss", action="store_true", help="Aliyun OSS settings: virtual addressing, no CRC trailers")
    s3.add_argument("--overwrite", action="store_true", help="replace blocks of the same name")
    s3.set_defaults(func=cmd_blocks)
    ftp = kinds.add_parser("ftp", help="erp-backup FTP storage block; password from $ERP_BACKUP_FTP_PASSWORD")
    ftp.add_argument("--name", required=True, help="the block's name ([remote] block)")
    ftp.add_argument("--host", required=True)
    ftp.add_argument("--port", type=int, default=21)
    ftp.add_argument("--user", default="anonymous")
    ftp.add_argument("--directory", default="/", help="directory on the server (before [remote] prefix)")
    ftp.add_argument("--ca-file", help="PEM CA certificate to trust (a self-signed server's)")
    ftp.add_argument("--no-verify-tls", action="store_true", help="do not check the server's certificate")
    ftp.add_argument("--no-tls", action="store_true", help="plain FTP (refused unless --allow-plain)")
    ftp.add_argument("--allow-plain", action="store_true", help="allow plain FTP: password and data in clear")
    ftp.add_argument("--overwrite", action="store_true", help="replace a block of the same name")
    ftp.set_defaults(func=cmd_blocks)


def cmd_blocks(args: argparse.Namespace) -> int:
    make = create_s3_block if args.block_kind == "s3" else create_ftp_block
    try:
        print(make(args))
    except ValueError as e:  # Prefect: a block of that name exists, or the name is not one it takes
        if "already" in str(e).lower():
            raise ConfigError(f"cannot save block {args.name!r}: a block of that name exists",
                              hint="pass --overwrite to replace it, or choose another name") from e
        raise ConfigError(f"cannot save block {args.name!r}: {str(e).splitlines()[0]}",
                          hint="check the block name (lowercase letters, digits and dashes)") from e
    return 0
