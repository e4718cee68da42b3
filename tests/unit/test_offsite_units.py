"""Off-site pieces that need no server: the GPG keys block, fingerprints, remote key names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from erp_backup.adapters.crypto import KeyMaterial, normalize_fingerprint
from erp_backup.adapters.storage.s3 import S3Store
from erp_backup.blocks.gpg import GpgKeys
from erp_backup.core.errors import CryptoError, StorageError

FPR = "0123456789ABCDEF0123456789ABCDEF01234567"
PRIV = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nsecret-material-xyz\n-----END PGP PRIVATE KEY BLOCK-----\n"


def test_gpg_keys_block_holds_secrets_as_secretstr() -> None:
    block = GpgKeys(public_keys="-----BEGIN PGP PUBLIC KEY BLOCK-----\n…", signing_key=PRIV,  # type: ignore[arg-type]
                    signing_passphrase="sign-pw-777", private_key=PRIV, private_key_passphrase="restore-pw-888",
                    trusted_signers=[FPR.lower()])
    for name in ("signing_key", "signing_passphrase", "private_key", "private_key_passphrase"):
        assert isinstance(getattr(block, name), SecretStr), name
    shown = repr(block) + str(block) + block.model_dump_json()
    for secret in ("secret-material-xyz", "sign-pw-777", "restore-pw-888"):
        assert secret not in shown
    assert block.signing_secret() == "sign-pw-777" and block.restore_secret() == "restore-pw-888"
    assert block.trusted_fingerprints() == (FPR,)
    assert GpgKeys._block_type_slug == "erp-backup-gpg-keys"


def test_gpg_keys_block_key_material() -> None:
    empty = GpgKeys()
    assert empty.key_material() == KeyMaterial() and empty.signing_secret() is None
    block = GpgKeys(public_keys="PUB", signing_key=SecretStr("SIGN"), private_key=SecretStr("RESTORE"))
    assert block.key_material() == KeyMaterial(public_keys=("PUB",), secret_keys=("SIGN",))
    assert block.key_material(signing=False, restore=True) == KeyMaterial(public_keys=("PUB",),
                                                                          secret_keys=("RESTORE",))
    assert "SIGN" not in repr(block.key_material())


@pytest.mark.parametrize("given", [FPR, FPR.lower(), "0x" + FPR, " ".join(FPR[i:i + 4] for i in range(0, 40, 4))])
def test_fingerprints_normalise(given: str) -> None:
    assert normalize_fingerprint(given) == FPR


@pytest.mark.parametrize("given", ["", FPR[-16:], FPR[-8:], FPR + "0", "Z" * 40, "alice@example.com"])
def test_short_or_bad_fingerprints_are_refused(given: str) -> None:
    with pytest.raises(CryptoError, match="full GPG key fingerprint"):
        normalize_fingerprint(given)
    with pytest.raises(CryptoError):
        GpgKeys(trusted_signers=[given]).trusted_fingerprints()


class _Events:
    def register(self, *a: Any, **kw: Any) -> None:
        pass


def _store(folder: str, prefix: str) -> S3Store:
    client = SimpleNamespace(meta=SimpleNamespace(events=_Events(), endpoint_url="http://s3.test"))
    bucket = SimpleNamespace(bucket_name="b", bucket_folder=folder,
                             credentials=SimpleNamespace(get_s3_client=lambda: client))
    return S3Store(bucket, prefix)


def test_remote_names() -> None:
    s = _store("/tenant/", "/django_erp/")
    assert s.prefix == "tenant/django_erp"
    assert s._full("20261128T020000Z-full/manifest.json") == "tenant/django_erp/20261128T020000Z-full/manifest.json"
    assert s.describe() == "s3://b/tenant/django_erp at http://s3.test"
    assert _store("", "")._full("x/y") == "x/y"
    for bad in ("", "/abs", "a//b", "../x", "a/./b", "a/.."):
        with pytest.raises(StorageError):
            s._full(bad)
