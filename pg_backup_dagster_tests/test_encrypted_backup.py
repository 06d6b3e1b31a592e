"""Client-side age encryption through a real backup: nothing readable at rest, everything back with the identity."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import IDENTITY_ENV, generate_identity, open_storage
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import restore_full_dump

DSN_ENV = "PGBD_TEST_ENCRYPTED_DSN"
RESTORE_ENV = "PGBD_TEST_ENCRYPTED_RESTORE_URL"
PLAIN_MARKER = b"wholesale"  # a value in crm.segments of the sample database
AGE_HEADER = b"age-encryption.org/v1"


@pytest.fixture(scope="module")
def encrypted(sample_dsn, pg18, tmp_path_factory: pytest.TempPathFactory):
    """One backup of the sample database with an age recipient configured."""
    secret, recipient = generate_identity()
    target = tmp_path_factory.mktemp("encrypted")
    source = SourceConfig(
        name="secret", dsn_env=DSN_ENV, target=str(target), restore_url_env=RESTORE_ENV, age_recipients=(recipient,)
    )
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        mp.setenv(DSN_ENV, sample_dsn)
        mp.setenv(RESTORE_ENV, pg18.dsn())
        outcome = run_backup(source, [source], instance)
    assert outcome.success, outcome.errors
    return outcome.backup_id, target, secret


def test_published_files_are_age_encrypted_and_the_manifest_says_so(encrypted) -> None:
    backup_id, target, _ = encrypted
    folder = target / "secret" / backup_id
    manifest = open_storage(str(target)).read_manifest("secret", backup_id)
    assert manifest.encryption is not None and manifest.encryption.type == "age"
    stored = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    plain = {"RESTORE.md", "manifest.json"}
    assert stored - plain and all(path.endswith(".age") for path in stored - plain), sorted(stored)
    for entry in manifest.files:
        if entry.path != "RESTORE.md":
            assert entry.encrypted == "age" and entry.stored_path == entry.path + ".age"
    for path in stored:
        data = (folder / path).read_bytes()
        assert PLAIN_MARKER not in data, f"{path} holds plaintext rows"
        if path not in plain:
            assert data.startswith(AGE_HEADER), path


def test_fetch_needs_the_right_identity(encrypted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backup_id, target, _ = encrypted
    storage = open_storage(str(target))
    monkeypatch.delenv(IDENTITY_ENV, raising=False)
    with pytest.raises(BackupError, match=IDENTITY_ENV):
        storage.fetch("secret", backup_id, tmp_path / "no-identity")
    monkeypatch.setenv(IDENTITY_ENV, generate_identity()[0])
    with pytest.raises(BackupError, match="cannot decrypt"):
        storage.fetch("secret", backup_id, tmp_path / "wrong-identity")


def test_decrypted_full_dump_restores_with_equal_rows(encrypted, sample_dsn, pg18, tmp_path, monkeypatch) -> None:
    backup_id, target, secret = encrypted
    monkeypatch.setenv(IDENTITY_ENV, secret)
    folder = open_storage(str(target)).fetch("secret", backup_id, tmp_path / "plain")
    assert not list(folder.rglob("*.age"))
    restored = create_database(pg18, "decrypted")
    restore_full_dump(folder / f"database_full_{backup_id}.dump", restored)
    expected = table_fingerprints(sample_dsn)
    assert expected and table_fingerprints(restored) == expected
