"""Schema archives cut out of the full archive hold what `pg_dump --schema` would, and restore the same."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.sql import quote_ident
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.tiers.archive import UnsupportedArchive, read_archive, write_subset
from pg_backup_dagster.tiers.schema_cut import copy_archive_for_schema
from pg_backup_dagster_tests.helpers import create_database, load_sql_file, table_fingerprints

HOSTILE = Path(__file__).parents[1] / "sql" / "hostile.sql"
_VOLATILE = ("\\restrict", "\\unrestrict", "-- Dumped", "-- Started", "-- Completed")


@pytest.fixture(scope="module")
def dumped(pg18, tmp_path_factory):
    dsn = create_database(pg18, "cut")
    load_sql_file(dsn, HOSTILE)
    folder = tmp_path_factory.mktemp("cut")
    safe, env = child_env(dsn)
    subprocess.run([find_tools().path("pg_dump"), "-Fc", "-O", "-x", "-f", str(folder / "full.dump"), "-d", safe],
                   env=env, check=True)
    with psycopg.connect(dsn) as conn:
        schemas = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND nspname NOT LIKE 'pg\\_%' ORDER BY 1")]
    return dsn, folder, schemas


def sql_lines(archive: Path) -> list[str]:
    out = subprocess.run([find_tools().path("pg_restore"), "-f", "-", str(archive)], capture_output=True, check=True)
    return sorted(line for line in out.stdout.decode().splitlines() if not line.startswith(_VOLATILE))


def test_writing_every_entry_reproduces_the_archive_byte_for_byte(dumped, tmp_path):
    _, folder, _ = dumped
    archive = read_archive(folder / "full.dump")
    write_subset(folder / "full.dump", archive, archive.entries, tmp_path / "copy.dump")
    assert (tmp_path / "copy.dump").read_bytes() == (folder / "full.dump").read_bytes()


def test_each_cut_schema_archive_matches_pg_dump_of_that_schema(dumped, tmp_path, pg18):
    dsn, folder, schemas = dumped
    safe, env = child_env(dsn)
    archive = read_archive(folder / "full.dump")
    source = table_fingerprints(dsn)
    restored = 0
    for schema in schemas:
        ours, theirs = tmp_path / "ours.dump", tmp_path / "theirs.dump"
        copy_archive_for_schema(folder / "full.dump", schema, ours, archive)
        subprocess.run([find_tools().path("pg_dump"), "-Fc", "-O", "-x", "-f", str(theirs),
                        f"--schema={quote_ident(schema)}", "-d", safe], env=env, check=True)
        if schema != "public":  # pg_dump --schema public adds CREATE SCHEMA public, which a fresh db already has
            assert sql_lines(ours) == sql_lines(theirs), schema
        # a schema whose objects need another schema fails alone either way; the two must agree
        ours_ok, ours_tables = restore_alone(pg18, ours)
        theirs_ok, _ = restore_alone(pg18, theirs)
        assert ours_ok == theirs_ok or (schema == "public" and ours_ok), schema
        if ours_ok:
            assert ours_tables == {k: v for k, v in source.items() if k[0] == schema}, schema
            restored += 1
    assert restored >= len(schemas) - 2


def restore_alone(server, archive: Path) -> tuple[bool, dict]:
    target = create_database(server, "cut_restore")
    safe, env = child_env(target)
    done = subprocess.run([find_tools().path("pg_restore"), "-O", "-x", "--exit-on-error", "-d", safe, str(archive)],
                          env=env, capture_output=True)
    return done.returncode == 0, table_fingerprints(target)


def test_anything_but_a_known_custom_archive_is_refused(tmp_path):
    plain = tmp_path / "plain.sql"
    plain.write_text("SELECT 1;\n")
    with pytest.raises(UnsupportedArchive):
        read_archive(plain)
    future = tmp_path / "future.dump"
    future.write_bytes(b"PGDMP" + bytes([1, 99, 0, 4, 8, 1]) + b"\0" * 64)
    with pytest.raises(UnsupportedArchive):
        read_archive(future)


def test_a_database_without_any_table_data_is_cut_too(pg18, tmp_path):
    """An archive with no data block at all (a fresh database, only functions or views) once failed the cut with
    `zip() argument 2 is longer than argument 1`, and with it every backup of such a database."""
    dsn = create_database(pg18, "nodata", "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';")
    safe, env = child_env(dsn)
    full = tmp_path / "full.dump"
    subprocess.run([find_tools().path("pg_dump"), "-Fc", "-O", "-x", "-f", str(full), "-d", safe], env=env, check=True)
    assert read_archive(full).block_ends == {}
    copy_archive_for_schema(full, "public", tmp_path / "public.dump")
    assert any("answer()" in line for line in sql_lines(tmp_path / "public.dump"))
