"""The catalog artifact's remote section, from a real S3 endpoint (moto_server): complete sets and an
upload that did not finish, read from the listing alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from erp_backup import upload
from erp_backup.adapters.storage.local import LocalRepository
from erp_backup.core.models import BackupKind
from erp_backup.monitoring import catalog_markdown, remote_catalog
from erp_backup.remote_store import store_for
from tests.integration import test_encrypted_sets
from tests.integration.offsite_fixtures import GpgTestKeys, S3Env
from tests.integration.test_encrypted_sets import Host
from tests.integration.test_offsite_remote import T0, backup, remote_settings

pytestmark = pytest.mark.integration
host = test_encrypted_sets.host


def test_remote_section_lists_complete_and_unfinished_sets(tmp_path: Path, moto_s3: S3Env, gpg_keys: GpgTestKeys,
                                                           host: Host) -> None:
    s = remote_settings(tmp_path, gpg_keys)
    assert s.remote is not None and remote_catalog(s.model_copy(update={"remote": None})) is None
    host.backup()
    store = store_for(moto_s3.bucket, s.remote)
    full = backup(s, BackupKind.FULL, T0)
    incr = backup(s, BackupKind.INCREMENTAL, T0.replace(hour=3))
    upload.push(s, store, now=T0.replace(hour=3))
    # the incremental's upload "did not finish": its manifest (sent last) is not there
    s3 = moto_s3.client()
    bucket = moto_s3.bucket.bucket_name
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    [manifest_key] = [k for k in keys if k.endswith(f"{incr}/manifest.json")]
    s3.delete_object(Bucket=bucket, Key=manifest_key)

    where, rows = remote_catalog(s, store) or ("", [])
    assert where == store.describe()
    assert [(r["set"], r["kind"], r["status"]) for r in rows] == [
        (incr.value, "incremental", "incomplete (upload not finished)"), (full.value, "full", "complete")]
    text = catalog_markdown(str(s.storage.local_dir), LocalRepository(s.storage.local_dir).scan(), T0,
                            (where, rows))
    remote_part = text.split("## Remote")[1]
    assert where in remote_part and full.value in remote_part and "2 set(s)" in remote_part
