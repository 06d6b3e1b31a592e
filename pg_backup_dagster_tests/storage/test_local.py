"""Local target specifics: layout on disk, atomic publish by rename, latest symlink, URL parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import BackupRepository, LocalStorage, open_storage
from pg_backup_dagster_tests.storage.helpers import FILES, ID1, ID2, SOURCE, stage


@pytest.fixture
def storage(tmp_path: Path) -> BackupRepository:
    result = open_storage(str(tmp_path / "target"))
    assert isinstance(result.store, LocalStorage)
    return result


def test_layout_manifest_and_latest_symlink(storage: BackupRepository, tmp_path: Path) -> None:
    staging = storage.staging_dir(SOURCE, ID1)
    assert staging == tmp_path / "target" / SOURCE / ".staging" / ID1
    url = storage.publish(SOURCE, ID1, stage(storage))
    folder = tmp_path / "target" / SOURCE / ID1
    assert url == f"{folder}{os.sep}"
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert on_disk == sorted([*FILES, "manifest.json"])  # internal .state.json stripped
    text = (folder / "manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert not staging.exists()

    storage.write_latest(SOURCE, ID1, {})
    link = tmp_path / "target" / SOURCE / "latest"
    assert link.is_symlink() and os.readlink(link) == ID1
    storage.publish(SOURCE, ID2, stage(storage, ID2))
    storage.write_latest(SOURCE, ID2, {})
    assert os.readlink(link) == ID2
    assert json.loads((tmp_path / "target" / SOURCE / "latest.json").read_text())["backup_id"] == ID2
    assert [p.name for p in (tmp_path / "target" / SOURCE).iterdir() if ".tmp-" in p.name] == []


def test_fetch_unencrypted_returns_the_folder_itself(storage: BackupRepository, tmp_path: Path) -> None:
    storage.publish(SOURCE, ID1, stage(storage))
    assert storage.fetch(SOURCE, ID1, tmp_path / "unused") == tmp_path / "target" / SOURCE / ID1
    assert not (tmp_path / "unused").exists()


def test_rename_failure_leaves_no_backup(storage: BackupRepository, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash at the last step: the manifest exists only inside the hidden staging dir, nothing lists it."""
    storage.publish(SOURCE, ID1, stage(storage))
    manifest = stage(storage, ID2)
    real_rename = os.rename

    def failing_rename(src: object, dst: object) -> None:
        if str(dst).endswith(ID2):
            assert (Path(str(src)) / "manifest.json").is_file()  # manifest written before the rename
            raise OSError(28, "No space left on device")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(BackupError, match="No space left"):
        storage.publish(SOURCE, ID2, manifest)
    monkeypatch.undo()
    assert storage.list_backups(SOURCE) == [ID1]
    assert not (storage.store.root / SOURCE / ID2).exists()
    storage.publish(SOURCE, ID2, manifest)  # a retry from the same staging succeeds
    assert storage.list_backups(SOURCE) == [ID1, ID2]


def test_half_deleted_backup_is_invisible_and_gc_finishes(
    storage: BackupRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.publish(SOURCE, ID1, stage(storage))
    monkeypatch.setattr("shutil.rmtree", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(BackupError, match="gc will finish"):
        storage.delete_backup(SOURCE, ID1)
    monkeypatch.undo()
    assert storage.list_backups(SOURCE) == []
    assert storage.gc(SOURCE, min_age=0) == [str(storage.store.root / SOURCE / ID1)]


def test_symlink_in_staging_is_refused(storage: BackupRepository, tmp_path: Path) -> None:
    manifest = stage(storage, files={"a.sql": b"1"})
    (storage.staging_dir(SOURCE, ID1) / "link.sql").symlink_to(tmp_path)
    with pytest.raises(BackupError, match="symlink"):
        storage.publish(SOURCE, ID1, manifest)


def test_open_storage_urls(tmp_path: Path) -> None:
    assert isinstance(open_storage(f"file://{tmp_path}/t").store, LocalStorage)
    assert open_storage(f"file://{tmp_path}/t").url == str(tmp_path / "t")
    for bad, message in [
        ("", "empty"),
        ("gs://bucket/x", "unsupported"),
        ("s3://", "invalid S3 target"),
        ("s3://key:secret@bucket/x", "credentials"),
        ("s3://bucket/a/../b", "invalid S3 prefix"),
        ("file://otherhost/x", "remote host"),
    ]:
        with pytest.raises(BackupError, match=message) as err:
            open_storage(bad)
        assert "secret" not in str(err.value) or "credentials" in message
    with pytest.raises(BackupError, match="s3:// targets only"):
        open_storage(str(tmp_path / "t"), sse="AES256")


def test_unwritable_local_target(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(BackupError, match="not writable"):
        open_storage(str(blocker / "target"))
