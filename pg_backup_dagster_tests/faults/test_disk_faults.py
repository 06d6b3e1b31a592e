"""Disk full on the target: a 2 MiB tmpfs as the local target, a database whose dump no longer fits."""

from __future__ import annotations

import dagster as dg
import psycopg

from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.faults.helpers import (
    assert_failed_naming,
    assert_gc_cleans,
    assert_only_published,
    backup,
    make_source,
    tmpfs,
)
from pg_backup_dagster_tests.helpers import create_database

SMALL_SQL = (
    "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;"
)
# ~3 MiB of random bytes: its dump cannot fit on a 2 MiB filesystem.
BIG_SQL = """
CREATE TABLE big (id int PRIMARY KEY, body bytea NOT NULL);
INSERT INTO big SELECT g, decode(string_agg(md5(g || '/' || x), '' ORDER BY x), 'hex')
FROM generate_series(1, 800) g, generate_series(1, 256) x GROUP BY g;
"""


def test_target_disk_full(pg18, tmp_path, monkeypatch):
    with tmpfs(tmp_path / "small-disk", "2m") as disk:
        dsn = create_database(pg18, "diskfull", SMALL_SQL)
        source = make_source(monkeypatch, "diskfull", dsn, str(disk / "backups"), pg18.dsn())
        storage = open_storage(source.target)
        with dg.instance_for_test() as instance:
            good = backup(source, instance)
            assert good.success, good.errors
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(BIG_SQL)

            failed = backup(source, instance)
            assert_failed_naming(failed, "No space left on device")
            assert_only_published(storage, "diskfull", [good.backup_id])
            assert_gc_cleans(storage, "diskfull", [good.backup_id])

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DROP TABLE big")
            nxt = backup(source, instance)
            assert nxt.success, nxt.errors
            assert_only_published(storage, "diskfull", [good.backup_id, nxt.backup_id])
