"""``[encryption]`` config: what it accepts, what it refuses (one line naming the key), the
``[remote]``-needs-``[encryption]`` rule, and the manifest header that records recipients."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erp_backup.config import load_settings, settings_from_dict
from erp_backup.core import manifest as mf
from erp_backup.core.errors import ConfigError
from erp_backup.core.models import Artifact, BackupId, BackupKind, Manifest

FPR = "A" * 40
FPR2 = "0123456789ABCDEF0123456789ABCDEF01234567"


def enc(**kw: object) -> dict[str, object]:
    return {"encryption": {"recipients": [FPR], "public_keys": "/etc/erp-backup/keys.asc", "signers": [FPR2], **kw}}


def test_defaults_sign_and_keep_local_sets_plain() -> None:
    e = settings_from_dict(enc()).encryption
    assert e is not None and e.sign is True and e.local is False and e.manifest is False
    assert settings_from_dict({}).encryption is None


@pytest.mark.parametrize("data, needle", [
    ({"remote": {"block": "erp-offsite"}}, "[remote] without [encryption]"),
    (enc(manifest=True), "encryption.manifest = true is not offered"),
    (enc(recipients=["DEADBEEF"]), "encryption.recipients: 'DEADBEEF' is not a full GPG key fingerprint"),
    (enc(signers=["0x1234"]), "encryption.signers"),
    (enc(signing_key="nope"), "encryption.signing_key"),
    (enc(recipients=[], local=True), "encryption.recipients is empty"),
    (enc(public_keys="keys.asc"), "encryption.public_keys: must be an absolute path"),
    ({"encryption": {"recipients": [FPR], "signers": [FPR]}}, "no public_keys file and no block"),
    ({"encryption": {"recipients": [FPR], "public_keys": "/k.asc"}}, "no verification key is named"),
    (enc(colour="blue"), "encryption.colour: unknown key"),
])
def test_refused_in_one_line_naming_the_key(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings_from_dict(data)
    text = str(e.value)
    assert needle in text and " — " in text and "\n" not in text


def test_remote_with_encryption_passes_the_rule() -> None:
    s = settings_from_dict({**enc(), "remote": {"block": "erp-offsite"}})
    assert s.encryption is not None and s.encryption.recipients == [FPR]


def test_fingerprints_in_any_spelling(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[encryption]\nrecipients = ["{" ".join(FPR2[i:i + 4] for i in range(0, 40, 4)).lower()}"]\n'
                   f'public_keys = "/k.asc"\nsigners = ["0x{FPR2}"]\n')
    s = load_settings(cfg)
    assert s.encryption is not None and s.encryption.public_keys == Path("/k.asc")
    from erp_backup import encryption

    assert encryption.recipients(s) == (FPR2,)


def test_template_documents_the_section() -> None:
    from erp_backup.config import render_config

    text = render_config(Path("/srv/erp"), Path("/var/backups/erp"), None)
    assert "# [encryption]" in text and "recipients" in text and "sign = true" in text


T = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


@given(st.lists(st.sampled_from([FPR, FPR2]), unique=True))
def test_manifest_records_recipients_and_reads_them_back(recipients: list[str]) -> None:
    m = Manifest(id=BackupId("20261128T020000Z-full"), kind=BackupKind.FULL, started_at=T, finished_at=T,
                 host="h", tool_version="1", source_root="/srv",
                 artifacts=(Artifact("files.tar.zst.gpg", "files", 10, "0" * 64, encryption="gpg"),),
                 recipients=tuple(recipients))
    text = mf.dumps(m)
    back = mf.loads(text)
    assert back.recipients == tuple(recipients) and back.artifacts[0].encryption == "gpg"
    assert ('"encryption": {' in text) == bool(recipients)


@pytest.mark.parametrize("value", ['"gpg"', '{"recipients": "AAAA"}', "[1]"])
def test_malformed_encryption_header_is_an_integrity_error(value: str) -> None:
    from erp_backup.core.errors import IntegrityError

    m = Manifest(id=BackupId("20261128T020000Z-full"), kind=BackupKind.FULL, started_at=T, finished_at=T,
                 host="h", tool_version="1", source_root="/srv", recipients=(FPR,))
    text = mf.dumps(m).replace('"encryption": {\n    "method": "gpg",\n    "recipients": [\n      "' + FPR
                               + '"\n    ]\n  }', f'"encryption": {value}')
    assert f'"encryption": {value}' in text
    with pytest.raises(IntegrityError, match="malformed"):
        mf.loads(text)
