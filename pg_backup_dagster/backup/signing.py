"""Ed25519 signatures over manifest.json, so that whoever can write the backup target cannot forge a backup.

Without a signature, anyone with write access to the target can change a file together with its sha256 in
manifest.json and SHA256SUMS: verify passes and restore runs what they wrote. With a signing key configured
(`signing_key_env`: the environment variable holding the private key, on the backup side), the manifest carries
a `signature`; with a verify key configured (`verify_key` or `verify_key_env`: the public key), verify and
restore refuse a backup whose signature does not match, and a backup that has none, before reading any file.

What is signed: the manifest as published, without its `signature`, in one canonical JSON form. Storage
details that are only known once the bytes are stored are left out: the `encryption` block, and for an
age-encrypted file its ciphertext's path, size and sha256 (the entry's signed size and sha256 are the plaintext's,
which restore checks after decrypting). So every byte a restore uses has the hash the signer saw.

Keys: PEM (PKCS#8 private, SubjectPublicKeyInfo public), OpenSSH (`ssh-ed25519 …`, `-----BEGIN OPENSSH PRIVATE
KEY-----`), or one line of base64: of the 32 raw key bytes, or of the DER (a PEM body without its armour). A key's text never appears in a message, log or metadata:
errors name the environment variable or config field, never the value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pg_backup_dagster.backup.manifest import Manifest, Signature
from pg_backup_dagster.errors import BackupError, register_secret

if TYPE_CHECKING:
    from pg_backup_dagster.config import SourceConfig

# Domain separation: these bytes can never be mistaken for a signature over anything else.
CONTEXT = b"pg_backup_dagster manifest signature v1\n"
# Keys of a file entry that describe how it is stored, not what it holds (only set on age-encrypted files).
_STORAGE_KEYS = ("encrypted", "stored_path", "plain_size", "plain_sha256")
_FORMATS = "PEM, OpenSSH, or base64 of the 32 raw bytes or of the DER"


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def load_private_key(text: str, what: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from its text; `what` names where it came from (never the key) in errors."""
    register_secret(text.strip())
    data = text.strip().encode("utf-8", "replace")
    key: Any = None
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        elif data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        elif (raw := _base64(text)) is not None:
            key = Ed25519PrivateKey.from_private_bytes(raw) if len(raw) == 32 else \
                serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None  # the library's message may quote the input: never echoed
    if not isinstance(key, Ed25519PrivateKey):
        raise BackupError(f"{what} does not hold an unencrypted Ed25519 private key ({_FORMATS})")
    register_secret(_b64(key.private_bytes_raw()))
    return key


def load_public_key(text: str, what: str) -> Ed25519PublicKey:
    """An Ed25519 public key from its text; a private key is refused (it must not sit where public keys go)."""
    data = text.strip().encode("utf-8", "replace")
    if b"PRIVATE KEY" in data or _is_private_key(text):
        raise BackupError(f"{what} holds a private key: give the public key here (keep the private one in the "
                          "environment variable named by signing_key_env, on the backup side only)")
    key: Any = None
    try:
        if data.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data)
        elif data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        elif (raw := _base64(text)) is not None:
            key = Ed25519PublicKey.from_public_bytes(raw) if len(raw) == 32 else serialization.load_der_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise BackupError(f"{what} does not hold an Ed25519 public key ({_FORMATS})")
    return key


def _is_private_key(text: str) -> bool:
    """A private key in DER form (base64 of 32 bytes is read as a public key: the two cannot be told apart)."""
    raw = _base64(text)
    if raw is None or len(raw) == 32:
        return False
    try:
        serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    register_secret("".join(text.split()))
    return True


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def public_key_text(key: Ed25519PublicKey) -> str:
    """The base64 of the 32 raw bytes: what `verify_key` accepts."""
    return _b64(key.public_bytes_raw())


def key_id(key: Ed25519PublicKey) -> str:
    """A short, public name of a key: the first 16 hex digits of the sha256 of its raw bytes."""
    return hashlib.sha256(key.public_bytes_raw()).hexdigest()[:16]


def generate_key() -> tuple[str, str]:
    """A new key pair as (private PEM, public base64)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return pem, public_key_text(private.public_key())


def signed_bytes(manifest: Manifest) -> bytes:
    """The exact bytes a signature covers (see the module docstring)."""
    document = manifest.model_dump(mode="json")
    document.pop("signature", None)
    document.pop("encryption", None)
    files = []
    for entry in document["files"]:
        if entry.get("encrypted"):
            entry = {**entry, "size": entry.get("plain_size"), "sha256": entry.get("plain_sha256")}
        files.append({key: value for key, value in entry.items() if key not in _STORAGE_KEYS})
    document["files"] = sorted(files, key=lambda entry: entry["path"])
    return CONTEXT + json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> Manifest:
    """The manifest with its signature."""
    unsigned = manifest.model_copy(update={"signature": None})
    signature = Signature(key_id=key_id(key.public_key()), value=_b64(key.sign(signed_bytes(unsigned))))
    return unsigned.model_copy(update={"signature": signature})


def check_signature(manifest: Manifest, key: Ed25519PublicKey, source: str, backup_id: str) -> None:
    """Refuse, in one line, a backup whose manifest is unsigned, not signed by `key`, or names another backup."""
    backup = f"{source}/{backup_id}"
    if manifest.signature is None:
        raise BackupError(f"backup {backup} is not signed, but source '{source}' has a verify key configured: "
                          "refusing it")
    try:
        value = base64.b64decode(manifest.signature.value, validate=True)
        key.verify(value, signed_bytes(manifest))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BackupError(f"signature of backup {backup} does not match the configured key") from None
    if (manifest.source, manifest.backup_id) != (source, backup_id):
        raise BackupError(f"backup {backup} holds the signed manifest of backup {manifest.source}/"
                          f"{manifest.backup_id}: refusing it (a signed backup copied under another name)")


def _from_env(env_name: str, field: str, purpose: str) -> str:
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise BackupError(f"{field} names {env_name}, which is not set: {purpose}")
    return value


def source_signing_key(source: SourceConfig) -> Ed25519PrivateKey | None:
    """The source's private key (None when it does not sign); a named but unset variable is an error, and so is
    a verify key on the same source that is not the signing key's public half (it would refuse every backup)."""
    if not source.signing_key_env:
        return None
    text = _from_env(source.signing_key_env, "signing_key_env", "refusing to publish an unsigned backup")
    key = load_private_key(text, f"environment variable {source.signing_key_env}")
    public = source_verify_key(source)
    if public is not None and public.public_bytes_raw() == key.private_bytes_raw():
        raise BackupError(f"the verify key of source '{source.name}' is its private signing key: configure the "
                          "public key instead")
    if public is not None and public.public_bytes_raw() != key.public_key().public_bytes_raw():
        raise BackupError(f"the verify key of source '{source.name}' (key {key_id(public)}) is not the public half "
                          f"of its signing key (key {key_id(key.public_key())}): refusing to publish a backup that "
                          "verify would refuse")
    return key


def source_verify_key(source: SourceConfig) -> Ed25519PublicKey | None:
    """The source's public key (None when none is configured); a named but unset variable is an error."""
    if source.verify_key:
        return load_public_key(source.verify_key, "config field 'verify_key'")
    if not source.verify_key_env:
        return None
    text = _from_env(source.verify_key_env, "verify_key_env", "cannot check the backups' signatures")
    return load_public_key(text, f"environment variable {source.verify_key_env}")
