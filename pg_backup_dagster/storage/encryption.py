"""age encryption of backup files (pyrage), so a leaked bucket does not leak the database.

pyrage's encrypt_file/decrypt_file stream through Rust's io::copy (64 KiB age chunks): memory stays
flat whatever the file size. The identity (secret key) comes from a parameter or PG_BACKUP_AGE_IDENTITY
and is registered for redaction; it is never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyrage
from pyrage import ssh, x25519

from pg_backup_dagster.errors import BackupError, register_secret
from pg_backup_dagster.files import atomic_path

IDENTITY_ENV = "PG_BACKUP_AGE_IDENTITY"


def parse_recipients(recipients: list[str]) -> list[Any]:
    """age public keys (`age1…`) or SSH public keys (`ssh-ed25519 …`, `ssh-rsa …`)."""
    if not recipients:
        raise BackupError("encryption needs at least one age recipient")
    parsed = []
    for text in recipients:
        text = text.strip()
        try:
            parsed.append(ssh.Recipient.from_str(text) if text.startswith("ssh-") else x25519.Recipient.from_str(text))
        except Exception:  # pyrage raises RecipientError or ValueError depending on the key type
            raise BackupError(f"invalid age recipient {text[:24]!r}…: expected age1… or ssh-… public key") from None
    return parsed


def parse_identity(identity: str) -> list[Any]:
    """Secret keys from an age key file's text (comments allowed) or an unencrypted OpenSSH private key."""
    register_secret(identity.strip())
    if "OPENSSH PRIVATE KEY" in identity:
        try:
            return [ssh.Identity.from_buffer(identity.encode())]
        except Exception:
            raise BackupError(
                "the SSH identity could not be read (passphrase-protected keys are not supported)"
            ) from None
    keys = [line.strip() for line in identity.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")]
    for key in keys:
        register_secret(key)
    try:
        parsed = [x25519.Identity.from_str(key) for key in keys]
    except Exception:
        raise BackupError("the age identity is malformed (expected AGE-SECRET-KEY-1… lines)") from None
    if not parsed:
        raise BackupError("the age identity holds no AGE-SECRET-KEY-1… line")
    return parsed


def resolve_identity(identity: str | None) -> str:
    """The identity passed in, else the one in PG_BACKUP_AGE_IDENTITY; a clear error when neither is set."""
    value = identity if identity is not None else os.environ.get(IDENTITY_ENV)
    if not value or not value.strip():
        raise BackupError(f"the backup is age-encrypted: set {IDENTITY_ENV} to the secret key text to read it")
    return value


def encrypt_file(src: Path, dst: Path, recipients: list[str]) -> None:
    """Encrypt src to dst (binary age format) for every recipient."""
    parsed = parse_recipients(recipients)
    try:
        pyrage.encrypt_file(str(src), str(dst), parsed)
    except (OSError, pyrage.EncryptError) as exc:
        Path(dst).unlink(missing_ok=True)
        raise BackupError(f"cannot encrypt {src}: {exc}") from None


def decrypt_file(src: Path, dst: Path, identity: str | None = None) -> None:
    """Decrypt src to dst with the identity text (or PG_BACKUP_AGE_IDENTITY); dst is complete or absent."""
    parsed = parse_identity(resolve_identity(identity))
    try:
        with atomic_path(Path(dst)) as partial:
            pyrage.decrypt_file(str(src), str(partial), parsed)
    except (OSError, pyrage.DecryptError) as exc:
        raise BackupError(f"cannot decrypt {src}: {exc} (wrong identity or corrupt file)") from None


def generate_identity() -> tuple[str, str]:
    """A new (secret key, public recipient) pair, for tests and `age-keygen`-less setups."""
    ident = x25519.Identity.generate()
    return str(ident), str(ident.to_public())
