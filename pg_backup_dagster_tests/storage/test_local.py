"""Local target specifics: layout on disk, atomic publish by rename, latest symlink, URL parsing."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pg_backup_dagster.config import SourceConfig
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


def backdated(path: Path, seconds: float = 2 * 3600) -> Path:
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp), follow_symlinks=False)
    return path


def test_gc_never_sweeps_through_a_symlinked_staging(storage: BackupRepository, tmp_path: Path) -> None:
    """`.staging` is a symlink to someone else's folder: gc reports it and deletes nothing there."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "old_dir").mkdir(parents=True)
    old_file = elsewhere / "precious.txt"
    old_file.write_text("not ours")
    backdated(old_file)
    backdated(elsewhere / "old_dir")
    (storage.store.root / SOURCE).mkdir(parents=True)
    (storage.store.root / SOURCE / ".staging").symlink_to(elsewhere, target_is_directory=True)

    report = storage.sweep(SOURCE, min_age=0)
    assert report.removed == []
    assert any("is a symlink" in note and "refusing to stage or sweep" in note for note in report.notes)
    assert old_file.read_text() == "not ours" and (elsewhere / "old_dir").is_dir()
    with pytest.raises(BackupError, match="is a symlink"):
        storage.staging_dir(SOURCE, ID1)  # nor does a backup stage through it


def test_links_inside_staging_are_removed_as_links(storage: BackupRepository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    staging = storage.staging_dir(SOURCE, ID1)
    staging.mkdir(parents=True)
    (staging / "link").symlink_to(outside, target_is_directory=True)
    backdated(staging / "link")
    backdated(staging)
    assert storage.gc(SOURCE, min_age=0) == [str(staging)]
    assert (outside / "keep.txt").read_text() == "x"


def modes_under(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix() or ".": oct(stat.S_IMODE(p.lstat().st_mode))
            for p in [folder, *folder.rglob("*")] if not p.is_symlink()}


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_files_are_private_whatever_the_umask(tmp_path: Path, umask_022: None) -> None:
    storage = open_storage(str(tmp_path / "target"))
    storage.publish(SOURCE, ID1, stage(storage))
    storage.write_latest(SOURCE, ID1, {})
    stage(storage, ID2)  # a run that never publishes
    source_dir = tmp_path / "target" / SOURCE
    manifest = storage.read_manifest(SOURCE, ID1)
    storage.recheck_backup(SOURCE, ID1, manifest, how="size", by="test")

    published = modes_under(source_dir / ID1)
    assert {mode for name, mode in published.items() if (source_dir / ID1 / name).is_dir()} == {"0o700"}
    assert {mode for name, mode in published.items() if (source_dir / ID1 / name).is_file()} == {"0o600"}
    assert {"manifest.json", "verify.json", "roles.sql"} <= set(published)
    assert oct(stat.S_IMODE((source_dir / "latest.json").stat().st_mode)) == "0o600"
    assert oct(stat.S_IMODE(source_dir.stat().st_mode)) == "0o700"
    assert oct(stat.S_IMODE((source_dir / ".staging").stat().st_mode)) == "0o700"


def test_modes_are_configurable_and_validated(tmp_path: Path, umask_022: None) -> None:
    storage = open_storage(str(tmp_path / "target"), file_mode="0640", dir_mode="0750")
    storage.publish(SOURCE, ID1, stage(storage))
    folder = tmp_path / "target" / SOURCE / ID1
    assert oct(stat.S_IMODE((folder / "roles.sql").stat().st_mode)) == "0o640"
    assert oct(stat.S_IMODE((folder / "public").stat().st_mode)) == "0o750"
    assert oct(stat.S_IMODE(folder.stat().st_mode)) == "0o750"
    for bad, message in [(640, "not a permission mode"), ("0400", "owner read and write"), ("0755", "executable"),
                         ("rw", "not an octal mode"), (True, "must be an octal mode")]:
        with pytest.raises(BackupError, match=message):
            open_storage(str(tmp_path / "t2"), file_mode=bad)
    with pytest.raises(BackupError, match="read, write and enter"):
        open_storage(str(tmp_path / "t2"), dir_mode="0600")
    with pytest.raises(BackupError, match="invalid config field 'file_mode'"):
        SourceConfig(file_mode=644)
    assert SourceConfig(file_mode="0640", dir_mode=0o750).file_mode == 0o640
