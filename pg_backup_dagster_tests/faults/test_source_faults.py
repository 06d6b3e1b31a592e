"""Faults on the source side, on a dedicated server: pg_dump killed, the server restarted, connections exhausted.

To hit pg_dump "mid-dump" deterministically, the test holds ACCESS EXCLUSIVE on a table: the backup's pg_dump
connects, starts its transaction and blocks on that table's lock, alive, until the fault is injected.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.storage import BackupRepository, open_storage
from pg_backup_dagster_tests.faults.helpers import (
    assert_failed_naming,
    assert_gc_cleans,
    assert_only_published,
    backup,
    in_background,
    make_source,
    next_backup_id,
    pids_of,
    table_locked,
    wait_for_blocked_dump,
)
from pg_backup_dagster_tests.helpers import create_database

MAX_SERVER_CONNECTIONS = 12
SQL = """
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 2000) g;
CREATE SCHEMA audit;
CREATE TABLE audit.log (at timestamptz DEFAULT now(), what text);
INSERT INTO audit.log (what) SELECT 'event ' || g FROM generate_series(1, 100) g;
"""


@dataclass
class World:
    """One dedicated server, one source on it, one instance, and the backups published so far."""

    server: LocalPostgres
    dsn: str
    source: SourceConfig
    storage: BackupRepository
    instance: dg.DagsterInstance
    published: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def world(pg18, tmp_path_factory) -> Iterator[World]:
    """A server this module may stop, restart and starve, with one good backup made first."""
    root = Path(tempfile.mkdtemp(prefix="pgbd-faults-src-"))
    server = LocalPostgres(root_dir=root / "pg", settings={"max_connections": str(MAX_SERVER_CONNECTIONS)})
    server.start()
    try:
        dsn = create_database(server, "faultsrc", SQL)
        target = tmp_path_factory.mktemp("faults-src-target")
        with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
            source = make_source(mp, "srcfaults", dsn, str(target), pg18.dsn(), max_connections=3, retry_max_wait=2.0)
            world = World(server, dsn, source, open_storage(source.target), instance)
            good = backup(source, instance)
            assert good.success, good.errors
            world.published.append(good.backup_id)
            yield world
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


def test_pg_dump_killed_mid_dump_then_the_same_partition_reruns(world):
    backup_id = next_backup_id()
    killed: list[int] = []
    with table_locked(world.dsn, "app.items") as lock:

        def kill_pg_dump() -> None:
            wait_for_blocked_dump(world.server.dsn(), backup_id)
            killed.extend(pids_of("pg_dump", f"database_full_{backup_id}"))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            lock.rollback()

        join = in_background(kill_pg_dump)
        failed = backup(world.source, world.instance, backup_id)
        join()
    assert killed, "no pg_dump process of this backup was found in /proc"
    assert_failed_naming(failed, "pg_dump", "SIGKILL")
    assert "SIGKILL" in " ".join(failed.errors)
    assert_only_published(world.storage, "srcfaults", world.published)

    rerun = backup(world.source, world.instance, backup_id)
    assert rerun.success, rerun.errors
    world.published.append(backup_id)
    assert_only_published(world.storage, "srcfaults", world.published)
    assert_gc_cleans(world.storage, "srcfaults", world.published)


def test_source_server_restarted_mid_dump(world):
    backup_id = next_backup_id()
    with table_locked(world.dsn, "app.items"):

        def restart() -> None:
            wait_for_blocked_dump(world.server.dsn(), backup_id)
            world.server.stop("fast")
            world.server.start()

        join = in_background(restart)
        failed = backup(world.source, world.instance, backup_id)
        join()
    assert_failed_naming(failed, "terminating connection due to administrator command", "server closed the connection")
    assert_only_published(world.storage, "srcfaults", world.published)
    assert_gc_cleans(world.storage, "srcfaults", world.published)

    nxt = backup(world.source, world.instance)
    assert nxt.success, nxt.errors
    world.published.append(nxt.backup_id)
    assert_only_published(world.storage, "srcfaults", world.published)


def _refusals(log: Path) -> int:
    return log.read_text(errors="replace").count("too many clients already")


def test_connections_exhausted_then_freed_the_retry_succeeds_within_the_cap(world):
    """All slots taken (SQLSTATE 53300); freed right after the backup's first refusal; the retry gets in."""
    watch = psycopg.connect(world.server.dsn(), autocommit=True)  # the sampler's own slot, opened first
    hog: list[psycopg.Connection] = []
    try:
        while True:
            try:
                hog.append(psycopg.connect(world.server.dsn(), autocommit=True))
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc), exc  # SQLSTATE 53300 (psycopg gives no sqlstate at connect)
                break
        refusals_before = _refusals(world.server.log_file)
        done = threading.Event()
        peak = [0]

        def sample() -> None:
            while not done.is_set():
                count = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_backup_dagster/%'"
                ).fetchone()[0]
                peak[0] = max(peak[0], count)
                time.sleep(0.01)

        def release_after_first_refusal() -> None:
            deadline = time.monotonic() + 60
            while _refusals(world.server.log_file) <= refusals_before:
                assert time.monotonic() < deadline, "the backup never hit the connection limit"
                time.sleep(0.02)
            for conn in hog:
                conn.close()

        join_sampler = in_background(sample)
        join_release = in_background(release_after_first_refusal)
        try:
            outcome = backup(world.source, world.instance)
        finally:
            join_release()
            done.set()
            join_sampler()
    finally:
        for conn in hog:
            conn.close()
        watch.close()
    assert outcome.success, outcome.errors
    assert _refusals(world.server.log_file) > refusals_before
    assert 1 <= peak[0] <= world.source.max_connections, f"{peak[0]} backup connections at once"
    world.published.append(outcome.backup_id)
    assert_only_published(world.storage, "srcfaults", world.published)
