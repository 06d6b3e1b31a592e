"""Leftovers of failed runs: swept by the next backup run once older than min_age, or by `gc`; never a backup.

The failed runs are real: the same source pointed at a database that does not exist fails in Dagster after
the run created its staging folder, exactly what a crash or outage leaves behind.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from typer.testing import CliRunner

from pg_backup_dagster.cli import app
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.helpers import create_database

DSN_ENV = "PGBD_TEST_GC_DSN"
BROKEN_DSN_ENV = "PGBD_TEST_GC_BROKEN_DSN"
RESTORE_ENV = "PGBD_TEST_GC_RESTORE_URL"
OLD_FAILED, NEW_FAILED, GOOD = "2026-02-01T00-00-00Z", "2026-02-02T00-00-00Z", "2026-02-03T00-00-00Z"
INTERRUPTED_DELETE = "2026-01-15T00-00-00Z"


def backdate(path: Path, seconds: float) -> None:
    """Make a leftover look untouched for `seconds` (what waiting that long would do)."""
    stamp = time.time() - seconds
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (stamp, stamp), follow_symlinks=False)
    os.utime(path, (stamp, stamp))


@pytest.fixture
def sources(pg18, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SourceConfig, SourceConfig]:
    """The same source twice: once healthy, once pointed at a database that does not exist."""
    monkeypatch.setenv(
        DSN_ENV, create_database(pg18, "gc", "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
    )
    monkeypatch.setenv(BROKEN_DSN_ENV, pg18.dsn("no_such_database_for_gc"))
    monkeypatch.setenv(RESTORE_ENV, pg18.dsn())
    common = {"name": "gcsrc", "target": str(tmp_path / "target"), "restore_url_env": RESTORE_ENV}
    return SourceConfig(dsn_env=DSN_ENV, **common), SourceConfig(dsn_env=BROKEN_DSN_ENV, **common)


def test_next_run_and_gc_remove_leftovers_of_failed_runs_but_never_a_backup(sources, tmp_path, monkeypatch) -> None:
    good, broken = sources
    storage = open_storage(good.target)
    with dg.instance_for_test() as instance:
        for backup_id in (OLD_FAILED, NEW_FAILED):
            assert not run_backup(broken, [broken], instance, backup_id=backup_id).success
        old_leftover, new_leftover = storage.staging_dir("gcsrc", OLD_FAILED), storage.staging_dir("gcsrc", NEW_FAILED)
        assert old_leftover.is_dir() and new_leftover.is_dir()
        backdate(old_leftover, 2 * 3600)

        outcome = run_backup(good, [good], instance, backup_id=GOOD)
        assert outcome.success, outcome.errors
    assert not old_leftover.exists(), "the next run sweeps a failed run's staging older than min_age"
    assert new_leftover.is_dir(), "a younger one may belong to a running backup: it stays"
    assert storage.list_backups("gcsrc") == [GOOD]

    interrupted = Path(good.target) / "gcsrc" / INTERRUPTED_DELETE  # manifest went first, the rest did not
    interrupted.mkdir()
    (interrupted / "roles.sql").write_text("-- left by an interrupted delete\n")
    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"name": "gcsrc", "dsn_env": DSN_ENV, "target": good.target}]}))
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(config))
    runner = CliRunner()

    dry = runner.invoke(app, ["gc"])
    assert dry.exit_code == 0 and "would remove 0 leftover(s)" in dry.output, dry.output
    listed = runner.invoke(app, ["gc", "--min-age", "0"])  # a dry run lists what --apply would remove
    assert listed.exit_code == 0 and "would remove 2 leftover(s)" in listed.output, listed.output
    assert str(new_leftover) in listed.output and str(interrupted) in listed.output
    assert new_leftover.is_dir() and interrupted.is_dir()

    young = runner.invoke(app, ["gc", "--apply"])
    assert young.exit_code == 0 and "removed 0 leftover(s)" in young.output, young.output
    assert new_leftover.is_dir() and interrupted.is_dir()

    swept = runner.invoke(app, ["gc", "--source", "gcsrc", "--apply", "--min-age", "0"])
    assert swept.exit_code == 0, swept.output
    assert str(new_leftover) in swept.output and str(interrupted) in swept.output
    assert not new_leftover.exists() and not interrupted.exists()
    assert storage.list_backups("gcsrc") == [GOOD]
    assert storage.read_latest("gcsrc")["backup_id"] == GOOD
    storage.fetch("gcsrc", GOOD, tmp_path / "check")  # every file still matches its sha256


def test_a_symlinked_staging_is_never_swept_by_gc_or_after_a_backup(sources, tmp_path, monkeypatch) -> None:
    """`.staging` points at another folder holding files older than an hour: neither `gc --apply` nor the
    sweep after a backup deletes them; the backup refuses to stage through the link and says so."""
    good, _ = sources
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "photos").mkdir(parents=True)
    (elsewhere / "photos" / "2019.jpg").write_bytes(b"precious")
    (elsewhere / "notes.txt").write_text("precious")
    backdate(elsewhere, 2 * 3600)
    source_dir = Path(good.target) / "gcsrc"
    source_dir.mkdir(parents=True)
    (source_dir / ".staging").symlink_to(elsewhere, target_is_directory=True)

    with dg.instance_for_test() as instance:
        outcome = run_backup(good, [good], instance, backup_id=GOOD)
    assert not outcome.success
    assert any(".staging is a symlink" in error for error in outcome.errors), outcome.errors

    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"name": "gcsrc", "dsn_env": DSN_ENV, "target": good.target}]}))
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(config))
    swept = CliRunner().invoke(app, ["gc", "--apply", "--min-age", "0"])
    assert swept.exit_code == 0, swept.output
    assert "removed 0 leftover(s)" in swept.output and "refusing to stage or sweep through it" in swept.output
    assert (elsewhere / "photos" / "2019.jpg").read_bytes() == b"precious"
    assert (elsewhere / "notes.txt").read_text() == "precious"


def test_backup_files_are_private_under_umask_022(sources, tmp_path) -> None:
    """Published files 0600, folders 0700, and a failed run's staging behind a 0700 folder."""
    good, broken = sources
    previous = os.umask(0o022)
    try:
        with dg.instance_for_test() as instance:
            assert not run_backup(broken, [broken], instance, backup_id=OLD_FAILED).success
            outcome = run_backup(good, [good], instance, backup_id=GOOD)
            assert outcome.success, outcome.errors
    finally:
        os.umask(previous)
    source_dir = Path(good.target) / "gcsrc"
    folder = source_dir / GOOD
    entries = [folder, *folder.rglob("*")]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in entries if p.is_dir()} == {"0o700"}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in entries if p.is_file()} == {"0o600"}
    assert any(p.name == f"database_full_{GOOD}.dump" for p in entries) and (folder / "roles.sql").is_file()
    assert oct(stat.S_IMODE((source_dir / "latest.json").stat().st_mode)) == "0o600"
    for private_dir in (source_dir, source_dir / ".staging"):
        assert oct(stat.S_IMODE(private_dir.stat().st_mode)) == "0o700"
    assert (source_dir / ".staging" / OLD_FAILED).is_dir(), "the failed run's staging stays for gc, unreadable"
