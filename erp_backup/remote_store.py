"""The configured remote store: ``[remote] block`` loaded from Prefect, as a ``RemoteStore``.

``block`` names a prefect-aws ``S3Bucket`` block (AWS S3, Aliyun OSS, MinIO: see
``erp_backup.adapters.storage.s3``) or an erp-backup ``FtpStorage`` block. ``"s3-bucket/NAME"`` or
``"erp-backup-ftp-storage/NAME"`` names the type; a bare ``NAME`` is looked up as an S3 bucket
block first, then as an FTP storage block.
"""

from __future__ import annotations

from typing import Any

from erp_backup.adapters.storage.base import RemoteStore
from erp_backup.adapters.storage.s3 import MIB, S3Store
from erp_backup.config import RemoteConfig, Settings
from erp_backup.core.errors import ConfigError

S3_SLUG = "s3-bucket"
FTP_SLUG = "erp-backup-ftp-storage"


def remote_config(settings: Settings) -> RemoteConfig:
    if settings.remote is None:
        raise ConfigError(f"no [remote] section in {settings.source}",
                          hint="add [remote] block = \"NAME\" (see README: Off-site copies)")
    return settings.remote


def _load(slug: str, name: str) -> Any:
    from prefect.blocks.core import Block

    return Block.load(f"{slug}/{name}")


def load_block(name: str) -> Any:
    """The block named by ``[remote] block``."""
    slug, _, bare = name.rpartition("/")
    if not bare.strip():
        raise ConfigError(f"remote.block: {name!r} names no block", hint='write the block\'s name, e.g. "erp-offsite"')
    tries = [slug] if slug else [S3_SLUG, FTP_SLUG]
    if slug and slug not in (S3_SLUG, FTP_SLUG):
        raise ConfigError(f"remote.block: {name!r} is not an S3 bucket or FTP storage block",
                          hint=f'write "{S3_SLUG}/NAME", "{FTP_SLUG}/NAME" or just NAME')
    import erp_backup.blocks.ftp  # noqa: F401  (registers the FTP block type with Prefect)

    for s in tries:
        try:
            return _load(s, bare)
        except ValueError:
            continue  # no such block of this type
    raise ConfigError(f"remote.block: no S3 bucket or FTP storage block named {bare!r}",
                      hint="create it with `erp-backup block s3|ftp --name NAME …` (see README), or fix the name; "
                           "is PREFECT_API_URL the server that holds the blocks?")


def store_for(block: Any, remote: RemoteConfig) -> RemoteStore:
    """A ``RemoteStore`` over an already loaded block (tests pass blocks they built)."""
    from prefect_aws import S3Bucket

    from erp_backup.blocks.ftp import FtpStorage

    if isinstance(block, S3Bucket):
        return S3Store(block, remote.prefix, chunk_size=remote.part_size_mib * MIB, concurrency=remote.concurrency)
    if isinstance(block, FtpStorage):
        return block.store(remote.prefix)
    raise ConfigError(f"remote.block: a {type(block).__name__} block cannot hold backups",
                      hint="use a prefect-aws S3Bucket block or an erp-backup FTP storage block")


def open_store(settings: Settings) -> RemoteStore:
    remote = remote_config(settings)
    return store_for(load_block(remote.block), remote)
