"""The restore check itself: it passes on a good archive and fails on a truncated or altered one."""

from __future__ import annotations

import shutil

import pytest

from pg_backup_dagster.pgtools import find_tools
from pg_backup_dagster.verification import restore_and_compare
from pg_backup_dagster_tests.conftest import create_database

ROWS = 5000


@pytest.fixture(scope="module")
def archive(pg18, tmp_path_factory):
    """A real pg_dump archive of a small database, and the counts taken at dump time."""
    import os
    import subprocess

    from pg_backup_dagster.conninfo import split_password

    dsn = create_database(pg18, "checkme", f"""
        CREATE TABLE items (id int PRIMARY KEY, note text);
        INSERT INTO items SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {ROWS}) g;
        CREATE SCHEMA other; CREATE TABLE other.t (x int); INSERT INTO other.t VALUES (1), (2);
    """)
    path = tmp_path_factory.mktemp("archive") / "full.dump"
    safe, env = split_password(dsn)
    subprocess.run([find_tools().path("pg_dump"), "-Fc", "-O", "-x", "-f", str(path), "--dbname", safe],
                   check=True, env={**os.environ, **env})
    expected = [{"schema": "public", "table": "items", "rows": ROWS}, {"schema": "other", "table": "t", "rows": 2}]
    return path, expected


def test_good_archive_passes_with_exact_counts(archive):
    path, expected = archive
    report = restore_and_compare(find_tools(), path, expected)
    assert report.passed, report
    assert [t["restored"] for t in report.tables] == [ROWS, 2]
    assert report.seconds > 0


def test_count_mismatch_names_the_table(archive):
    path, expected = archive
    wrong = [dict(expected[0], rows=ROWS + 1), expected[1]]
    report = restore_and_compare(find_tools(), path, wrong)
    assert not report.passed
    assert [(t["schema"], t["table"]) for t in report.differing] == [("public", "items")]


def test_truncated_archive_fails(archive, tmp_path):
    path, expected = archive
    broken = tmp_path / "truncated.dump"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = restore_and_compare(find_tools(), broken, expected)
    assert not report.passed and report.errors


def test_altered_archive_fails(archive, tmp_path):
    path, expected = archive
    altered = tmp_path / "altered.dump"
    shutil.copy(path, altered)
    data = bytearray(altered.read_bytes())
    middle = len(data) * 3 // 4
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    altered.write_bytes(bytes(data))
    report = restore_and_compare(find_tools(), altered, expected)
    assert not report.passed


def test_restore_server_scratch_database_is_dropped(archive, pg18):
    import psycopg

    path, expected = archive
    report = restore_and_compare(find_tools(), path, expected, restore_url=pg18.dsn())
    assert report.passed, report
    with psycopg.connect(pg18.dsn()) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbd_check_%'").fetchone()[0]
    assert left == 0
