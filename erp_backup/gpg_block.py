"""``erp-backup block gpg``: create (or replace) the erp-backup GPG keys block for a scripted install.

Public material comes from arguments (files, fingerprints); secrets never do: the armored private
keys from a file (its path on the command line, not its content) or from the environment, the
passphrases from the environment only:

    ERP_BACKUP_GPG_SIGNING_KEY          armored signing key (instead of --signing-key-file)
    ERP_BACKUP_GPG_SIGNING_PASSPHRASE   its passphrase
    ERP_BACKUP_GPG_PRIVATE_KEY          armored restore key (instead of --private-key-file; restore hosts)
    ERP_BACKUP_GPG_PASSPHRASE           its passphrase

Everything is checked with the real gpg before the block is saved: the keys import, the private
keys are private, each passphrase opens its key (a test signature, a test decryption), the trusted
signers are among the keys. Nothing is saved when a check fails.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from erp_backup.adapters import crypto
from erp_backup.core.errors import ConfigError, CryptoError

ENV_SIGNING_KEY = "ERP_BACKUP_GPG_SIGNING_KEY"
ENV_SIGNING_PASSPHRASE = "ERP_BACKUP_GPG_SIGNING_PASSPHRASE"
ENV_PRIVATE_KEY = "ERP_BACKUP_GPG_PRIVATE_KEY"
ENV_PASSPHRASE = "ERP_BACKUP_GPG_PASSPHRASE"


@dataclass(frozen=True)
class GpgBlockSpec:
    name: str
    public_keys: str
    trusted_signers: tuple[str, ...] = ()
    signing_key: str | None = field(default=None, repr=False)
    signing_passphrase: str | None = field(default=None, repr=False)
    private_key: str | None = field(default=None, repr=False)
    private_key_passphrase: str | None = field(default=None, repr=False)


def add_parser(block_sub: Any) -> None:
    """``block gpg`` under the ``block`` command (the S3/FTP storage blocks go next to it)."""
    sp = block_sub.add_parser(
        "gpg", help="create the GPG keys block (secrets from files or the environment, never arguments)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--name", required=True, help="block name ([encryption] block)")
    sp.add_argument("--public-keys", action="append", default=[], metavar="FILE",
                    help="armored public keys (recipients', signing key's); repeatable")
    sp.add_argument("--signing-key-file", metavar="FILE", help=f"armored signing key (or ${ENV_SIGNING_KEY})")
    sp.add_argument("--private-key-file", metavar="FILE",
                    help=f"armored restore key, restore hosts only (or ${ENV_PRIVATE_KEY})")
    sp.add_argument("--trusted-signer", action="append", default=[], metavar="FPR",
                    help="fingerprint whose signatures are accepted (default: the signing key's); repeatable")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing block of that name")


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the {what} file {path}", hint="give a readable armored (text) key file") from e


def spec_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> GpgBlockSpec:
    env = dict(os.environ) if env is None else env
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.name):
        raise ConfigError(f"--name {args.name!r}: a block name has lowercase letters, digits and dashes only",
                          hint="e.g. --name erp-gpg")
    publics = "".join(_read(p, "public key") for p in args.public_keys)
    signing = _read(args.signing_key_file, "signing key") if args.signing_key_file else env.get(ENV_SIGNING_KEY)
    private = _read(args.private_key_file, "private key") if args.private_key_file else env.get(ENV_PRIVATE_KEY)
    if not publics.strip() and not signing and not private:
        raise ConfigError("no keys given", hint="pass --public-keys FILE (and --signing-key-file FILE on the backup "
                          "host, --private-key-file FILE on a restore host)")
    return GpgBlockSpec(
        name=args.name, public_keys=publics,
        trusted_signers=tuple(crypto.normalize_fingerprint(f) for f in args.trusted_signer),
        signing_key=signing or None, signing_passphrase=env.get(ENV_SIGNING_PASSPHRASE) or None,
        private_key=private or None, private_key_passphrase=env.get(ENV_PASSPHRASE) or None)


def check(spec: GpgBlockSpec) -> dict[str, Any]:
    """Import and exercise the keys in a private home; what the block will hold (no secret)."""
    out: dict[str, Any] = {"public": [], "signing": None, "private": None}
    publics = (spec.public_keys,) if spec.public_keys.strip() else ()
    with crypto.gpg_home(crypto.KeyMaterial(public_keys=publics)) as home:
        out["public"] = [k.fingerprint for k in home.keys()]
        if spec.signing_key:
            out["signing"] = _secret_key(home, spec.signing_key, "signing key", "s")
            probe = home.path / "probe"
            probe.write_bytes(b"erp-backup block check\n")
            home.sign_detached(probe, signer=out["signing"], passphrase=spec.signing_passphrase)
            home.verify_detached(probe, probe.with_name("probe.sig"), [out["signing"]])
        if spec.private_key:
            out["private"] = _secret_key(home, spec.private_key, "private key", "e")
            _decrypt_probe(home, out["private"], spec.private_key_passphrase)
        known = [k for k in home.keys()]
        for fpr in spec.trusted_signers:
            if not any(k.matches(fpr) for k in known):
                raise CryptoError(f"trusted signer {fpr} is not among the keys given",
                                  hint="add its public key with --public-keys")
    return out


def _secret_key(home: crypto.GpgHome, armored: str, what: str, cap: str) -> str:
    """Import ``armored``; the fingerprint of its private key that can ``cap`` (s: sign, e: encrypt)."""
    fprs = set(home.import_keys(armored, what=what))
    usable = [k for k in home.keys(secret=True) if k.fingerprint in fprs and k.usable_for(cap)]
    if not usable:
        raise CryptoError(f"the {what} holds no private key that can {'sign' if cap == 's' else 'decrypt'}",
                          hint="export it with gpg --armor --export-secret-keys FINGERPRINT")
    return usable[0].fingerprint


def _decrypt_probe(home: crypto.GpgHome, fpr: str, passphrase: str | None) -> None:
    import io

    from erp_backup.adapters.archive.artifact import CHUNK

    sink = io.BytesIO()
    w = crypto.EncryptingWriter(home, [fpr], sink)
    w.write(b"probe" * 10)
    w.close()
    r = crypto.DecryptingReader(home, io.BytesIO(sink.getvalue()), passphrase, name="a test message")
    try:
        while r.read(CHUNK):
            pass
    finally:
        r.close()


def save(spec: GpgBlockSpec, *, overwrite: bool) -> str:
    from pydantic import SecretStr

    from erp_backup.blocks.gpg import GpgKeys

    checked = check(spec)

    def secret(v: str | None) -> SecretStr | None:
        return SecretStr(v) if v else None

    block = GpgKeys(public_keys=spec.public_keys, trusted_signers=list(spec.trusted_signers),
                    signing_key=secret(spec.signing_key), signing_passphrase=secret(spec.signing_passphrase),
                    private_key=secret(spec.private_key), private_key_passphrase=secret(spec.private_key_passphrase))
    try:
        block.save(spec.name, overwrite=overwrite)
    except ValueError as e:
        if "already" in str(e).lower():
            raise ConfigError(f"a GPG keys block named {spec.name!r} already exists",
                              hint="pass --overwrite to replace it") from e
        raise ConfigError(f"cannot save the GPG keys block {spec.name!r}: {str(e).splitlines()[0]}",
                          hint="check the block name (lowercase letters, digits and dashes)") from e
    except Exception as e:  # the Prefect API is down or unreachable
        raise ConfigError(f"cannot save the GPG keys block {spec.name!r} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no message'})",
                          hint="check that the Prefect server at PREFECT_API_URL is up, then run again") from e
    parts = [f"{len(checked['public'])} public key(s)"]
    if checked["signing"]:
        parts.append(f"signing key {checked['signing']}")
    if checked["private"]:
        parts.append(f"restore key {checked['private']}")
    return f"saved GPG keys block {spec.name!r}: " + ", ".join(parts)
