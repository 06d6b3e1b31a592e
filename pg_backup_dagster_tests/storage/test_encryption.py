"""age encryption: files stored as `.age`, manifests say so, fetch decrypts and verifies plaintext."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pg_backup_dagster.errors import BackupError, redact
from pg_backup_dagster.storage import (
    IDENTITY_ENV,
    BackupRepository,
    decrypt_file,
    encrypt_file,
    generate_identity,
)
from pg_backup_dagster_tests.storage.helpers import FILES, ID1, SOURCE, read_all, stage


def test_file_round_trip_streams_large_file(tmp_path: Path) -> None:
    secret, public = generate_identity()
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    encrypt_file(plain, tmp_path / "enc.age", [public])
    assert (tmp_path / "enc.age").read_bytes()[:21] == b"age-encryption.org/v1"
    decrypt_file(tmp_path / "enc.age", tmp_path / "back", f"# created: now\n# public key: {public}\n{secret}\n")
    assert (tmp_path / "back").read_bytes() == plain.read_bytes()
    assert redact(f"oops {secret}") == "oops ***"  # the identity is registered as a secret


def test_bad_keys_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"x")
    with pytest.raises(BackupError, match="invalid age recipient"):
        encrypt_file(tmp_path / "p", tmp_path / "e", ["age1notakey"])
    _, public = generate_identity()
    encrypt_file(tmp_path / "p", tmp_path / "e", [public])
    other_secret, _ = generate_identity()
    with pytest.raises(BackupError, match="cannot decrypt") as err:
        decrypt_file(tmp_path / "e", tmp_path / "d", other_secret)
    assert other_secret not in str(err.value)
    assert not (tmp_path / "d").exists()


def test_encrypted_backup_round_trip(
    make_storage: Callable[..., BackupRepository], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, public = generate_identity()
    storage = make_storage(recipients=[public])
    storage.publish(SOURCE, ID1, stage(storage))

    manifest = storage.read_manifest(SOURCE, ID1)
    assert manifest.model_dump(mode="json")["encryption"] == {"type": "age", "recipients": [public]}
    by_path = {e["path"]: e for e in manifest.model_dump(mode="json")["files"]}
    roles = by_path["roles.sql"]
    assert roles["encrypted"] == "age" and roles["stored_path"] == "roles.sql.age"
    assert roles["plain_sha256"] == hashlib.sha256(FILES["roles.sql"]).hexdigest()
    assert roles["plain_size"] == len(FILES["roles.sql"]) and roles["size"] > roles["plain_size"]
    with storage.store.open(f"{SOURCE}/{ID1}/roles.sql.age") as fh:
        stored = fh.read()
    assert hashlib.sha256(stored).hexdigest() == roles["sha256"] and FILES["roles.sql"] not in stored
    assert "encrypted" not in by_path["RESTORE.md"]  # instructions stay readable

    monkeypatch.delenv(IDENTITY_ENV, raising=False)
    with pytest.raises(BackupError, match=IDENTITY_ENV):
        storage.fetch(SOURCE, ID1, tmp_path / "no-key")
    assert read_all(storage, ID1, tmp_path / "param", identity=secret) == FILES
    monkeypatch.setenv(IDENTITY_ENV, secret)
    assert read_all(storage, ID1, tmp_path / "env") == FILES
    assert not list((tmp_path / "env").rglob("*.age")) and not list((tmp_path / "env").rglob("*.part"))


def test_encrypted_local_backup_holds_no_plaintext(tmp_path: Path) -> None:
    from pg_backup_dagster.storage import open_storage

    _, public = generate_identity()
    storage = open_storage(str(tmp_path / "t"), recipients=[public])
    storage.publish(SOURCE, ID1, stage(storage))
    folder = tmp_path / "t" / SOURCE / ID1
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert names == sorted(["RESTORE.md", "manifest.json"] + [f"{p}.age" for p in FILES if p != "RESTORE.md"])
    assert not storage.staging_dir(SOURCE, ID1).exists()
