"""Behaviour both targets promise: publish, list, read, fetch, latest, delete, gc, refusals."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pg_backup_dagster.backup.manifest import FORMAT_VERSION
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import BackupRepository, LocalStorage, S3Storage
from pg_backup_dagster_tests.storage.helpers import FILES, ID1, ID2, SOURCE, entry, read_all, stage

StorageFactory = Callable[..., BackupRepository]
LATEST = "latest.json"


def _write_raw(storage: BackupRepository, relkey: str, data: bytes) -> None:
    """Put bytes at {target}/{relkey} behind the storage's back (orphans, garbage, corruption)."""
    store = storage.store
    if isinstance(store, LocalStorage):
        path = store.root / relkey
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        assert isinstance(store, S3Storage)
        store.client.put_object(Bucket=store.bucket, Key=store._key_prefix + relkey, Body=data)


def test_publish_then_list_read_fetch(make_storage: StorageFactory, tmp_path: Path) -> None:
    storage = make_storage()
    manifest = stage(storage)
    url = storage.publish(SOURCE, ID1, manifest)

    assert url.endswith(f"{SOURCE}/{ID1}/")
    assert storage.list_backups(SOURCE) == [ID1]
    assert storage.list_sources() == [SOURCE]
    stored = storage.read_manifest(SOURCE, ID1)
    assert stored.backup_id == ID1 and stored.format_version == FORMAT_VERSION
    assert [e.path for e in stored.files] == sorted(FILES)
    assert all(e.tier == "test" for e in stored.files)  # caller's keys kept
    assert read_all(storage, ID1, tmp_path / "fetched") == FILES
    assert not storage.staging_dir(SOURCE, ID1).exists()


def test_undeclared_staged_files_are_added_to_manifest(make_storage: StorageFactory) -> None:
    storage = make_storage()
    manifest = stage(storage)
    manifest.files = manifest.files[:1]
    storage.publish(SOURCE, ID1, manifest)
    paths = {e["path"]: e for e in storage.read_manifest(SOURCE, ID1).model_dump(mode="json")["files"]}
    assert set(paths) == set(FILES)
    assert paths["RESTORE.md"] == {k: v for k, v in entry("RESTORE.md", FILES["RESTORE.md"]).items() if k != "tier"}


def test_publish_refuses_existing_id(make_storage: StorageFactory, tmp_path: Path) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    manifest = stage(storage, files={"roles.sql": b"other"})
    with pytest.raises(BackupError, match="already exists"):
        storage.publish(SOURCE, ID1, manifest)
    roles = next(e for e in storage.read_manifest(SOURCE, ID1).files if e.path == "roles.sql")
    fetched = storage.fetch_file(SOURCE, ID1, roles, tmp_path / "roles.sql")
    assert fetched.read_bytes() == FILES["roles.sql"]


def test_failed_publish_leaves_nothing_and_keeps_previous(make_storage: StorageFactory, tmp_path: Path) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    manifest = stage(storage, ID2)
    (storage.staging_dir(SOURCE, ID2) / "public/tables/t1/data.sql").unlink()  # a file vanishes

    with pytest.raises(BackupError, match="missing from staging"):
        storage.publish(SOURCE, ID2, manifest)
    assert storage.list_backups(SOURCE) == [ID1]
    assert not storage.has_backup(SOURCE, ID2)
    assert read_all(storage, ID1, tmp_path / "prev") == FILES


def test_file_changed_after_hashing_is_refused(make_storage: StorageFactory) -> None:
    storage = make_storage()
    manifest = stage(storage)
    (storage.staging_dir(SOURCE, ID1) / "roles.sql").write_bytes(b"CREATE ROLE tampered;\n")
    with pytest.raises(BackupError, match="roles.sql"):
        storage.publish(SOURCE, ID1, manifest)
    assert storage.list_backups(SOURCE) == []


def test_manifest_backup_id_must_match(make_storage: StorageFactory) -> None:
    storage = make_storage()
    manifest = stage(storage)
    with pytest.raises(BackupError, match="differs"):
        storage.publish(SOURCE, ID1, manifest.model_copy(update={"backup_id": ID2}))


def test_read_manifest_garbage_and_missing(make_storage: StorageFactory) -> None:
    storage = make_storage()
    _write_raw(storage, f"{SOURCE}/{ID1}/manifest.json", b"{not json")
    with pytest.raises(BackupError, match="not valid JSON") as err:
        storage.read_manifest(SOURCE, ID1)
    assert "\n" not in str(err.value)
    with pytest.raises(BackupError, match="does not exist"):
        storage.read_manifest(SOURCE, ID2)


def test_fetch_detects_corruption(make_storage: StorageFactory, tmp_path: Path) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    _write_raw(storage, f"{SOURCE}/{ID1}/roles.sql", b"CREATE ROLE evil;\n")
    with pytest.raises(BackupError, match="corrupt"):
        storage.fetch(SOURCE, ID1, tmp_path / "out")


def test_manifest_paths_cannot_escape(make_storage: StorageFactory, tmp_path: Path) -> None:
    storage = make_storage()
    bad = {"files": [{"path": "../../etc/passwd", "size": 1, "sha256": "00"}]}
    _write_raw(storage, f"{SOURCE}/{ID1}/manifest.json", json.dumps(bad).encode())
    with pytest.raises(BackupError, match="unsafe file path"):
        storage.fetch(SOURCE, ID1, tmp_path / "out")
    with pytest.raises(BackupError, match="invalid source"):
        storage.list_backups("../other")


def test_latest_round_trip(make_storage: StorageFactory) -> None:
    storage = make_storage()
    assert storage.read_latest(SOURCE) is None
    with pytest.raises(BackupError, match="no manifest"):
        storage.write_latest(SOURCE, ID1, {})
    storage.publish(SOURCE, ID1, stage(storage))
    storage.publish(SOURCE, ID2, stage(storage, ID2))
    storage.write_latest(SOURCE, ID1, {"checks": "passed"})
    storage.write_latest(SOURCE, ID2, {"checks": "passed", "backup_id": "ignored"})
    assert storage.read_latest(SOURCE) == {"backup_id": ID2, "source": SOURCE, "checks": "passed"}
    assert storage.list_backups(SOURCE) == [ID1, ID2]  # the `latest` symlink is not a backup


def test_delete_backup(make_storage: StorageFactory) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    storage.publish(SOURCE, ID2, stage(storage, ID2))
    storage.delete_backup(SOURCE, ID1)
    assert storage.list_backups(SOURCE) == [ID2]
    assert storage.gc(SOURCE, min_age=0) == []  # nothing left behind
    with pytest.raises(BackupError, match="no backup"):
        storage.delete_backup(SOURCE, ID1)


def test_gc_removes_orphans_only(make_storage: StorageFactory) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    stage(storage, ID2)  # a run that died before publish
    orphan_id = "2026-01-03T00-00-00Z"
    _write_raw(storage, f"{SOURCE}/{orphan_id}/roles.sql", b"half uploaded")

    assert storage.gc(SOURCE) == []  # fresh leftovers may belong to a running backup
    removed = storage.gc(SOURCE, min_age=0)

    assert any(orphan_id in item for item in removed)
    assert any(ID2 in item for item in removed)
    assert not storage.staging_dir(SOURCE, ID2).exists()
    assert storage.list_backups(SOURCE) == [ID1]
    assert storage.read_manifest(SOURCE, ID1).backup_id == ID1
    assert storage.gc(SOURCE, min_age=0) == []


def test_empty_staging_is_refused(make_storage: StorageFactory) -> None:
    storage = make_storage()
    with pytest.raises(BackupError, match="nothing to publish"):
        storage.publish(SOURCE, ID1, stage(storage, files={}))


def test_bad_segments_rejected(make_storage: StorageFactory) -> None:
    storage = make_storage()
    for bad in ("", ".hidden", "a/b", "..", "x y"):
        with pytest.raises(BackupError):
            storage.staging_dir(SOURCE, bad)


def _delete_raw(storage: BackupRepository, relkey: str) -> None:
    """Remove one stored file behind the storage's back (a lost manifest, an interrupted delete)."""
    store = storage.store
    if isinstance(store, LocalStorage):
        (store.root / relkey).unlink()
    else:
        assert isinstance(store, S3Storage)
        store.client.delete_object(Bucket=store.bucket, Key=store._key_prefix + relkey)


def test_recheck_finds_missing_truncated_and_altered_files(make_storage: StorageFactory) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    manifest = storage.read_manifest(SOURCE, ID1)
    assert storage.recheck(SOURCE, ID1, manifest, how="sha256") == []
    dump = f"database_full_{ID1}.dump"
    _write_raw(storage, f"{SOURCE}/{ID1}/{dump}", b"")
    _delete_raw(storage, f"{SOURCE}/{ID1}/roles.sql")
    altered = bytearray(FILES["RESTORE.md"])
    altered[0] ^= 1
    _write_raw(storage, f"{SOURCE}/{ID1}/RESTORE.md", bytes(altered))
    assert storage.recheck(SOURCE, ID1, manifest, how="size") == [
        f"{dump}: 0 bytes stored, manifest says {len(FILES[dump])}", "roles.sql: missing"
    ]
    by_hash = storage.recheck(SOURCE, ID1, manifest, how="sha256")
    assert len(by_hash) == 3 and by_hash[0].startswith("RESTORE.md: sha256 ")

    check = storage.recheck_backup(SOURCE, ID1, manifest, how="size", by="test")
    assert not check.passed and storage.read_recheck(SOURCE, ID1) == check
    assert storage.failed_recheck(SOURCE, ID1) == check
    assert storage.read_manifest(SOURCE, ID1) == manifest, "the manifest is never edited"
    assert storage.list_backups(SOURCE) == [ID1]


def test_gc_never_removes_the_folder_latest_names_and_repairs_a_dangling_latest(make_storage: StorageFactory):
    """latest.json names a folder whose manifest is gone: gc keeps that folder, repoints latest.json at the
    newest backup that re-checks intact, and only a later pass sweeps the old folder."""
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    storage.publish(SOURCE, ID2, stage(storage, ID2))
    storage.write_latest(SOURCE, ID2, {"location": "x"})
    _delete_raw(storage, f"{SOURCE}/{ID2}/manifest.json")

    dry = storage.sweep(SOURCE, min_age=0, dry_run=True)
    assert not any(ID2 in item for item in dry.removed)
    assert any("has no manifest: --apply repoints it" in note for note in dry.notes)
    assert storage.read_latest(SOURCE)["backup_id"] == ID2

    applied = storage.sweep(SOURCE, min_age=0)
    assert not any(ID2 in item for item in applied.removed), "never the folder latest.json names"
    assert any(f"repointed at {ID1}" in note for note in applied.notes)
    latest = storage.read_latest(SOURCE)
    assert latest["backup_id"] == ID1 and latest["repaired_from"] == ID2
    assert storage.read_recheck(SOURCE, ID1).passed and storage.read_recheck(SOURCE, ID1).by == "gc"

    later = storage.gc(SOURCE, min_age=0)
    assert any(ID2 in item for item in later), "no longer named by latest.json: an ordinary leftover"
    assert storage.list_backups(SOURCE) == [ID1]


def test_dangling_latest_with_no_intact_backup_is_reported_and_left(make_storage: StorageFactory) -> None:
    storage = make_storage()
    storage.publish(SOURCE, ID1, stage(storage))
    _write_raw(storage, f"{SOURCE}/{ID1}/roles.sql", b"")  # the only backup is damaged
    storage.write_latest(SOURCE, ID1, {})
    _write_raw(storage, f"{SOURCE}/{LATEST}", json.dumps({"backup_id": ID2, "source": SOURCE}).encode())

    report = storage.sweep(SOURCE, min_age=0)
    assert any("no backup verifies: left as is" in note for note in report.notes)
    assert any(f"{ID1} fails its re-check" in note for note in report.notes)
    assert storage.read_latest(SOURCE)["backup_id"] == ID2
    assert storage.failed_recheck(SOURCE, ID1) is not None
    assert storage.list_backups(SOURCE) == [ID1]
