"""Conditions of real databases: a backup role with production timeouts, a table locked or rewritten by another
session while the backup starts, a role that may not read every table.

Each test backs up a database of its own on the bundled server through Dagster, and coordinates with the backup by
watching pg_stat_activity for its application_name (`pg_backup_dagster/{backup_id}/…`).
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pg_backup_dagster.config import SourceConfig, source_from_mapping
from pg_backup_dagster.constants import MAX_RUNTIME_TAG
from pg_backup_dagster.defs.jobs import build_backup_job
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.source import SourceDatabase
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.faults.helpers import (
    assert_failed_naming,
    backup,
    in_background,
    make_source,
    next_backup_id,
    pids_of,
    table_locked,
    wait_for_blocked_dump,
)
from pg_backup_dagster_tests.helpers import create_database

SQL = """
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 2000) g;
CREATE TABLE app.events (id int NOT NULL, what text) PARTITION BY RANGE (id);
CREATE TABLE app.events_1 PARTITION OF app.events FOR VALUES FROM (0) TO (100000);
INSERT INTO app.events SELECT g, 'event ' || g FROM generate_series(1, 500) g;
"""
_names = itertools.count()


def _role(server_dsn: str, dsn: str, *settings: str, revoke: str | None = None) -> str:
    """A login role that may read the database at dsn, with ALTER ROLE … SET settings; returns its DSN."""
    name, password = f"bk_{os.getpid()}_{next(_names)}", secrets.token_hex(12)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        for setting in settings:
            conn.execute(f"ALTER ROLE {name} SET {setting}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA app TO {name}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA app TO {name}")
        conn.execute(f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA app TO {name}")
        if revoke:
            conn.execute(f"REVOKE SELECT ON {revoke} FROM {name}")
    return make_conninfo(dsn, user=name, password=password)


def _ours_on_server(admin_dsn: str, backup_id: str, settle: float = 5.0) -> list[tuple]:
    """Sessions of this backup still on the server (given `settle` seconds to finish disconnecting)."""
    deadline = time.monotonic() + settle
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT pid, application_name, state, wait_event_type FROM pg_stat_activity "
                "WHERE starts_with(application_name, %s)",
                [f"pg_backup_dagster/{backup_id}/"],
            ).fetchall()
            if not rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def _source(
    monkeypatch: pytest.MonkeyPatch, name: str, dsn: str, tmp_path: Path, restore_dsn: str, **settings
) -> SourceConfig:
    return make_source(monkeypatch, name, dsn, str(tmp_path / "target"), restore_dsn, max_connections=3,
                       retry_max_wait=2.0, **settings)


# --- 1. role settings ------------------------------------------------------------------------------------
def test_snapshot_session_survives_role_timeouts(pg18):
    """Engine level: a role with 1-second idle/statement/transaction timeouts keeps its snapshot for longer."""
    dsn = create_database(pg18, "rolets", SQL)
    role_dsn = _role(pg18.dsn(), dsn, "statement_timeout = '1s'", "idle_in_transaction_session_timeout = '1s'",
                     "transaction_timeout = '1s'")
    source = SourceDatabase(dsn=role_dsn, source="rolets")
    with source.exported_snapshot("pg_backup_dagster/test/snapshot") as (conn, _):
        time.sleep(1.6)  # idle in transaction longer than the role allows
        assert conn.execute("SELECT count(*), pg_sleep(1.2) FROM app.items").fetchone()[0] == 2000
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', "
            "'idle_in_transaction_session_timeout', 'transaction_timeout')"
        ).fetchall())
    assert settings == {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0",
                        "transaction_timeout": "0"}


def test_backup_role_with_one_second_timeouts_publishes(monkeypatch, pg18, tmp_path):
    """Through Dagster: the count waits on a lock for 2 s (statement), then the snapshot session idles 2 s while
    pg_dump waits on the partitioned parent (idle in transaction), far beyond the role's 1-second limits."""
    dsn = create_database(pg18, "roleto", SQL)
    role_dsn = _role(pg18.dsn(), dsn, "statement_timeout = '1s'", "idle_in_transaction_session_timeout = '1s'",
                     "transaction_timeout = '1s'")
    source = _source(monkeypatch, "roleto", role_dsn, tmp_path, pg18.dsn())
    backup_id = next_backup_id()
    with psycopg.connect(dsn) as items_lock, psycopg.connect(dsn) as parent_lock:
        items_lock.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")  # blocks the count and pg_dump
        parent_lock.execute("LOCK TABLE ONLY app.events IN ACCESS EXCLUSIVE MODE")  # blocks pg_dump, not count(*)

        def release_in_two_steps() -> None:
            wait_for_blocked_dump(pg18.dsn(), backup_id)
            time.sleep(2)  # the count waits: a 2 s statement
            items_lock.rollback()
            time.sleep(2)  # the count is done, pg_dump still waits: the snapshot session idles in its transaction
            parent_lock.rollback()

        join = in_background(release_in_two_steps)
        with dg.instance_for_test() as instance:
            outcome = backup(source, instance, backup_id)
        join()
    assert outcome.success, outcome.errors
    assert outcome.materialized["full_dump"]
    manifest = open_storage(source.target).read_manifest("roleto", backup_id)
    assert manifest.passed is True


# --- 2. a locked table -----------------------------------------------------------------------------------
def test_locked_table_fails_in_one_line_naming_table_and_holder(monkeypatch, pg18, tmp_path):
    dsn = create_database(pg18, "locked", SQL)
    source = _source(monkeypatch, "locked", dsn, tmp_path, pg18.dsn(), lock_timeout_seconds=2)
    backup_id = next_backup_id()
    with psycopg.connect(dsn, application_name="long-migration") as locker:
        locker.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")
        holder = locker.info.backend_pid
        with dg.instance_for_test() as instance:
            started = time.monotonic()
            failed = backup(source, instance, backup_id)
            seconds = time.monotonic() - started
        left = _ours_on_server(pg18.dsn(), backup_id)
        assert locker.execute("SELECT 1").fetchone() == (1,)  # our victim session is untouched
    text = assert_failed_naming(failed, "app.items")
    assert f"pid {holder}" in text and "long-migration" in text, text
    assert "lock_timeout_seconds" in text and "Traceback" not in text
    assert len([e for e in failed.errors if "dumps" in e]) == 1, failed.errors
    assert seconds < 120, f"the lock wait is bounded by lock_timeout_seconds, took {seconds:.0f} s"
    assert left == [], f"sessions of the failed backup still on the server: {left}"
    assert not pids_of("pg_dump", f"database_full_{backup_id}")
    assert open_storage(source.target).list_backups("locked") == []

    with dg.instance_for_test() as instance:  # lock released: the pool is free, the next run publishes
        nxt = backup(source, instance)
    assert nxt.success, nxt.errors


def test_sigterm_while_blocked_on_a_lock_leaves_nothing_on_the_server(pg18, tmp_path):
    """`pg-backup-dagster backup` terminated (SIGTERM, as a scheduler or operator does) while pg_dump waits."""
    dsn = create_database(pg18, "sigterm", SQL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PG_BACKUP_DATABASE_URL=dsn, PG_BACKUP_TARGET=str(tmp_path / "target"), PG_BACKUP_SOURCE="sigterm",
               PG_BACKUP_RESTORE_URL=pg18.dsn(), DAGSTER_HOME=str(tmp_path / "home"))
    backup_id = next_backup_id()
    with table_locked(dsn, "app.items"):
        proc = subprocess.Popen([sys.executable, "-m", "pg_backup_dagster.cli", "backup", "--backup-id", backup_id],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            wait_for_blocked_dump(pg18.dsn(), backup_id)
            proc.send_signal(signal.SIGTERM)  # the worker only: its children are its business
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        left = _ours_on_server(pg18.dsn(), backup_id)
        orphans = pids_of("pg_dump", f"database_full_{backup_id}")
    assert proc.returncode != 0
    assert left == [], f"sessions of the terminated backup still on the server: {left}\n{err}"
    assert orphans == [], "pg_dump outlived the terminated run"


def test_lock_timeout_and_max_runtime_settings():
    source = SourceConfig(name="limits", dsn="host=x dbname=y", lock_timeout_seconds=5, max_runtime_minutes=90)
    assert build_backup_job(source).tags[MAX_RUNTIME_TAG] == str(90 * 60)
    assert SourceConfig(name="defaults", dsn="host=x").lock_timeout_seconds == 60
    assert MAX_RUNTIME_TAG not in build_backup_job(SourceConfig(name="nolimit", max_runtime_minutes=None)).tags
    for bad in ({"lock_timeout_seconds": 0}, {"lock_timeout_seconds": "60"}, {"max_runtime_minutes": 0},
                {"max_runtime_minutes": True}):
        with pytest.raises(BackupError, match=f"invalid config field '{next(iter(bad))}'"):
            source_from_mapping({"name": "bad", **bad}, "test")


# --- 3. failures named by their cause --------------------------------------------------------------------
def test_permission_denied_names_the_table(monkeypatch, pg18, tmp_path):
    dsn = create_database(pg18, "perm", SQL + "CREATE TABLE app.secret (x int); INSERT INTO app.secret VALUES (1);")
    role_dsn = _role(pg18.dsn(), dsn, revoke="app.secret")
    source = _source(monkeypatch, "perm", role_dsn, tmp_path, pg18.dsn())
    with dg.instance_for_test() as instance:
        failed = backup(source, instance)
    text = assert_failed_naming(failed, "permission denied on app.secret")
    assert "lost the backup's snapshot connection" not in text
    assert "InsufficientPrivilege" not in text and "Traceback" not in text


def test_table_dropped_while_the_backup_starts_is_named(monkeypatch, pg18, tmp_path):
    dsn = create_database(pg18, "dropped", SQL + "CREATE TABLE app.gone (x int);")
    source = _source(monkeypatch, "dropped", dsn, tmp_path, pg18.dsn())
    backup_id = next_backup_id()
    with psycopg.connect(dsn) as dropper:
        dropper.execute("DROP TABLE app.gone")  # holds ACCESS EXCLUSIVE until commit

        def commit_when_blocked() -> None:
            wait_for_blocked_dump(pg18.dsn(), backup_id)
            dropper.commit()

        join = in_background(commit_when_blocked)
        with dg.instance_for_test() as instance:
            failed = backup(source, instance, backup_id)
        join()
    text = assert_failed_naming(failed, "dropped while the backup ran")
    assert "lost the backup's snapshot connection" not in text


# --- 5. a table rewritten across the snapshot --------------------------------------------------------------
@pytest.mark.parametrize("rewrite", ["TRUNCATE app.items", "ALTER TABLE app.items ALTER COLUMN id TYPE bigint"])
def test_table_rewritten_across_the_snapshot_fails_naming_it(monkeypatch, pg18, tmp_path, rewrite):
    """A transaction rewrites a table, holds its lock while the backup takes its snapshot, then commits: the dump
    would read the new file with the old snapshot (0 rows) and every count would agree. The backup must fail."""
    dsn = create_database(pg18, "rewrite", SQL)
    source = _source(monkeypatch, "rewrite", dsn, tmp_path, pg18.dsn())
    backup_id = next_backup_id()
    with psycopg.connect(dsn) as writer:
        writer.execute(rewrite)

        def commit_when_blocked() -> None:
            wait_for_blocked_dump(pg18.dsn(), backup_id)
            writer.commit()

        join = in_background(commit_when_blocked)
        with dg.instance_for_test() as instance:
            failed = backup(source, instance, backup_id)
        join()
    text = assert_failed_naming(failed, "app.items")
    assert "rewritten" in text and "MVCC" in text, text
    assert open_storage(source.target).list_backups("rewrite") == []

    with dg.instance_for_test() as instance:  # a quiet database afterwards: no false alarm
        nxt = backup(source, instance)
    assert nxt.success, nxt.errors
