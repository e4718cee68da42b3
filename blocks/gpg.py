"""Prefect block holding the GPG keys of the off-site copies (public keys; private keys and passphrases as secrets)."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from erp_backup.adapters.crypto import KeyMaterial, normalize_fingerprint


class GpgKeys(Block):
    """Keys for encrypting, signing and (on a restore host) decrypting backup sets.

    The backup host needs ``public_keys`` (the recipients') and, to sign, ``signing_key`` with
    its passphrase; it should *not* hold ``private_key``: then nobody who takes the backup host
    can read the off-site copies. A restore host adds ``private_key`` and its passphrase.
    Secrets are stored encrypted by Prefect and never shown in the UI."""

    _block_type_name = "erp-backup GPG keys"
    _block_type_slug = "erp-backup-gpg-keys"
    _description = "GPG keys of the ERP backup: recipients' public keys, signing key, restore key (secrets)."

    public_keys: str = Field(
        default="",
        description="Armored public keys (-----BEGIN PGP PUBLIC KEY BLOCK-----…): the recipients' keys and "
        "the signing key's public half; several blocks may follow each other.",
    )
    trusted_signers: list[str] = Field(
        default_factory=list,
        description="Fingerprints whose signatures on SHA256SUMS are accepted. Empty: the signing key's own.",
    )
    signing_key: SecretStr | None = Field(
        default=None, description="Armored private key that signs SHA256SUMS (backup host)."
    )
    signing_passphrase: SecretStr | None = Field(default=None, description="Passphrase of the signing key.")
    private_key: SecretStr | None = Field(
        default=None,
        description="Armored private key that decrypts the sets (restore host only; leave empty on the backup host).",
    )
    private_key_passphrase: SecretStr | None = Field(default=None, description="Passphrase of the private key.")

    def key_material(self, *, signing: bool = True, restore: bool = False) -> KeyMaterial:
        """The keys to import into a run's GNUPGHOME: the public keys, the signing key (``signing``)
        and the restore key (``restore``)."""
        secrets: list[str] = []
        if signing and self.signing_key is not None:
            secrets.append(self.signing_key.get_secret_value())
        if restore and self.private_key is not None:
            secrets.append(self.private_key.get_secret_value())
        return KeyMaterial(public_keys=(self.public_keys,) if self.public_keys.strip() else (),
                           secret_keys=tuple(secrets))

    def trusted_fingerprints(self) -> tuple[str, ...]:
        """``trusted_signers``, normalised (an empty list means: the signing key's, found at run time)."""
        return tuple(normalize_fingerprint(f) for f in self.trusted_signers)

    @staticmethod
    def _secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    def signing_secret(self) -> str | None:
        return self._secret(self.signing_passphrase)

    def restore_secret(self) -> str | None:
        return self._secret(self.private_key_passphrase)
