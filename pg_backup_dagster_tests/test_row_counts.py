"""Counting thousands of tables inside one snapshot must not run out of lock slots."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.backup.row_counts import COUNT_BATCH, count_rows
from pg_backup_dagster.pg.local_server import LocalPostgres

TABLES = 1000  # lock table here: 10 x (10 + background workers) slots, well under 1000 tables held at once


@pytest.fixture(scope="module")
def few_locks_server():
    server = LocalPostgres(root_dir=Path(tempfile.mkdtemp(prefix="pgbd-test-locks-")) / "pg",
                           settings={"max_locks_per_transaction": "10", "max_connections": "10"})
    server.start()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for start in range(1, TABLES + 1, 100):  # one transaction per 100 tables: creating locks them too
            conn.execute(f"""DO $$ BEGIN FOR i IN {start}..{start + 99} LOOP
                EXECUTE format('CREATE TABLE t%s (x int)', i);
                EXECUTE format('INSERT INTO t%s SELECT generate_series(1, %s)', i, i % 7);
            END LOOP; END $$""")
    yield server
    server.destroy()


def test_counts_inside_one_snapshot_release_their_locks(few_locks_server):
    tables = [("public", f"t{i}") for i in range(1, TABLES + 1)]
    assert TABLES > 3 * COUNT_BATCH
    with psycopg.connect(few_locks_server.dsn()) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        started = conn.execute("SELECT now()").fetchone()[0]
        assert count_rows(conn, tables) == [i % 7 for i in range(1, TABLES + 1)]
        assert conn.execute("SELECT now()").fetchone()[0] == started  # still the snapshot's transaction


def test_holding_every_lock_at_once_would_fail(few_locks_server):
    """The server really is small: counting without releasing runs out of shared memory."""
    with psycopg.connect(few_locks_server.dsn()) as conn, pytest.raises(psycopg.errors.OutOfMemory):
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for i in range(1, TABLES + 1):
            conn.execute(f"SELECT count(*) FROM t{i}")
