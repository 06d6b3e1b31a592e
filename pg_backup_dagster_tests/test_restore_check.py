"""The restore check itself: it passes on a good archive and fails on a truncated or altered one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.verify.check_server import choose_check_server
from pg_backup_dagster.verify.test_restore import RestoreReport, restore_and_compare
from pg_backup_dagster_tests.helpers import create_database

ROWS = 5000


def check(path: Path, expected: list[dict], restore_url: str | None = None, **options) -> RestoreReport:
    """restore_and_compare on the server the checks would choose for this archive."""
    return restore_and_compare(find_tools(), path, expected, server=choose_check_server(path, restore_url, 18),
                               **options)


@pytest.fixture(scope="module")
def archive(pg18, tmp_path_factory):
    """A real pg_dump archive of a small database, and the counts taken at dump time."""
    import os
    import subprocess

    from pg_backup_dagster.pg.conninfo import split_password

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
    report = check(path, expected)
    assert report.passed, report
    assert [t["restored"] for t in report.tables] == [ROWS, 2]
    assert report.seconds > 0


def test_count_mismatch_names_the_table(archive):
    path, expected = archive
    wrong = [dict(expected[0], rows=ROWS + 1), expected[1]]
    report = check(path, wrong)
    assert not report.passed
    assert [(t["schema"], t["table"]) for t in report.differing] == [("public", "items")]


def test_truncated_archive_fails(archive, tmp_path):
    path, expected = archive
    broken = tmp_path / "truncated.dump"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = check(broken, expected)
    assert not report.passed and report.errors


def test_altered_archive_fails(archive, tmp_path):
    path, expected = archive
    altered = tmp_path / "altered.dump"
    shutil.copy(path, altered)
    data = bytearray(altered.read_bytes())
    middle = len(data) * 3 // 4
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    altered.write_bytes(bytes(data))
    report = check(altered, expected)
    assert not report.passed


def test_restore_server_scratch_database_is_dropped(archive, pg18):
    import psycopg

    path, expected = archive
    report = check(path, expected, pg18.dsn())
    assert report.passed, report
    with psycopg.connect(pg18.dsn()) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbd_check_%'").fetchone()[0]
    assert left == 0


PARTITIONED_SQL = """
    CREATE TABLE parent (id int PRIMARY KEY);
    INSERT INTO parent SELECT generate_series(1, 50);
    CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
    INSERT INTO child SELECT g, g FROM generate_series(1, 50) g;
    CREATE TABLE measures (id int, at int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
    CREATE TABLE measures_1 PARTITION OF measures FOR VALUES FROM (0) TO (100);
    CREATE TABLE measures_2 PARTITION OF measures FOR VALUES FROM (100) TO (200);
    CREATE INDEX ON measures (id);
    INSERT INTO measures SELECT g, g FROM generate_series(1, 199) g;
    CREATE TABLE to_partitioned (id int, at int, FOREIGN KEY (id, at) REFERENCES measures);
    INSERT INTO to_partitioned VALUES (1, 1), (150, 150);
    CREATE TABLE to_partition (id int, at int, FOREIGN KEY (id, at) REFERENCES measures_1);
    INSERT INTO to_partition VALUES (2, 2);
    CREATE TABLE events (id int, kind int) PARTITION BY LIST (kind);
    CREATE TABLE events_1 PARTITION OF events FOR VALUES IN (1);
    ALTER TABLE events ADD FOREIGN KEY (id) REFERENCES parent;
    INSERT INTO events VALUES (3, 1);
    CREATE TABLE base (id int PRIMARY KEY);
    CREATE TABLE heir (ref int REFERENCES parent) INHERITS (base);
"""


@pytest.fixture(scope="module")
def partitioned_archive(pg18, tmp_path_factory):
    """An archive with foreign keys to, from and between partitioned tables, partitions and plain tables."""
    import os
    import subprocess

    import psycopg

    from pg_backup_dagster.backup.dumps import exact_row_counts
    from pg_backup_dagster.pg.conninfo import split_password

    dsn = create_database(pg18, "parts", PARTITIONED_SQL)
    path = tmp_path_factory.mktemp("partitioned") / "full.dump"
    safe, env = split_password(dsn)
    subprocess.run([find_tools().path("pg_dump"), "-Fc", "-O", "-x", "-f", str(path), "--dbname", safe],
                   check=True, env={**os.environ, **env})
    with psycopg.connect(dsn) as conn:
        expected = exact_row_counts(conn, frozenset())
    return path, expected


def _foreign_keys(path) -> tuple[list, set[int]]:
    import subprocess

    from pg_backup_dagster.restore.runner import serial_foreign_keys
    from pg_backup_dagster.tiers.archive import parse_toc

    listing = subprocess.run([find_tools().path("pg_restore"), "-l", "-v", str(path)], capture_output=True,
                             text=True, check=True).stdout
    entries = parse_toc(listing)
    return [e for e in entries if e.desc == "FK CONSTRAINT"], serial_foreign_keys(entries)


def test_only_foreign_keys_touching_partitions_or_inheritance_are_serial(partitioned_archive):
    path, _ = partitioned_archive
    fks, serial = _foreign_keys(path)
    by_table = {e.line.split(" FK CONSTRAINT ")[1].split()[1]: e.dump_id for e in fks}
    assert set(by_table) == {"child", "to_partitioned", "to_partition", "events", "heir"}
    assert {t for t, dump_id in by_table.items() if dump_id in serial} == {"to_partitioned", "to_partition", "events",
                                                                          "heir"}


def test_plain_foreign_keys_stay_in_the_parallel_pass(archive, partitioned_archive):
    from pg_backup_dagster.restore.runner import restore_passes

    def fk_tables(listing: str) -> set[str]:
        return {line.split(" FK CONSTRAINT ")[1].split()[1] for line in listing.splitlines() if " FK CONSTRAINT " in line}

    with restore_passes(find_tools(), partitioned_archive[0], 2) as passes:
        assert [p[0] for p in passes] == ["--jobs=2", "--jobs=1"]
        main, serial = (Path(p[2]).read_text() for p in passes)
    assert fk_tables(main) == {"child"}
    assert fk_tables(serial) == {"to_partitioned", "to_partition", "events", "heir"}
    assert len(serial.splitlines()) == 4
    with restore_passes(find_tools(), archive[0], 2) as passes:
        assert passes == [["--jobs=2"]]


def test_partitioned_archive_passes_with_exact_counts(partitioned_archive):
    path, expected = partitioned_archive
    report = check(path, expected, jobs=2)
    assert report.passed, report
    assert {t["table"]: t["restored"] for t in report.tables}["measures_2"] == 100


def test_parallel_counts_keep_order_and_exactness(pg18):
    from pg_backup_dagster.verify.test_restore import parallel_counts

    tables = [("many", f"t{i}") for i in range(2 * 200 + 7)]  # three batches: up to three connections
    statements = ["CREATE SCHEMA many"] + [
        f"CREATE TABLE many.t{i} AS SELECT g FROM generate_series(1, {i % 11}) g" for i in range(len(tables))
    ]
    dsn = create_database(pg18, "counts", ";\n".join(statements))
    expected = [i % 11 for i in range(len(tables))]
    for workers in (1, 2, 3, 8):
        assert parallel_counts(dsn, tables, workers) == expected
    assert parallel_counts(dsn, [], 2) == []
