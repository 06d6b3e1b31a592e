"""Across versions: a PostgreSQL 15 source (Debian's server) is backed up through Dagster with pg_dump 18 and
restore-verified; the backup of 15 restores into 15, with the tool (every
tier) and with RESTORE.md's commands, although pg_dump 18 writes lines a 15 server or psql would reject."""

from __future__ import annotations

import json

import psycopg
import pytest

from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import back_up, cli, hostile_database, run_every_table

HOSTILE_TABLES = [('we"ird.sch/ema', 'ta"ble.with/slash'), ("Mixed Case", "Tab le"), ("public", "uses_types")]


@pytest.fixture(scope="module")
def version_case(pg15, pg18, tmp_path_factory):
    """(server, source dsn, published backup) of the PostgreSQL 15 source; checks restore on the 18 server.

    The 18 source is backed up and restored the same way in test_restore.py and test_restore_doc.py.
    """
    dsn = hostile_database(pg15, "cross_pg15")
    with pytest.MonkeyPatch.context() as mp:
        published = back_up(mp, "cross_pg15", dsn, str(tmp_path_factory.mktemp("cross_pg15")), pg18.dsn())
    return pg15, dsn, published


def test_backup_was_written_by_pg_dump_18(version_case):
    server, dsn, published = version_case
    assert find_tools().major == 18
    assert published.folder is not None and (published.folder / "manifest.json").is_file()
    with psycopg.connect(dsn) as conn:
        assert conn.info.server_version // 10000 == 15
    assert "pg_dump 18" in (published.folder / "RESTORE.md").read_text()
    full = json.loads((published.folder / "manifest.json").read_text())["checks"]["full_dump_restores"]
    assert full["content_not_compared"] == {}, "15 and 18 print every type alike: all rows proven by content"
    assert "also identical in content" in full["description"]


def test_verify_with_full_test_restore(version_case):
    _, _, published = version_case
    result = cli(published, "verify", published.backup_id, "--full-restore")
    assert result.exit_code == 0, result.output


def test_full_tier_into_the_same_version(version_case):
    server, dsn, published = version_case
    target = create_database(server, "cross_full")
    result = cli(published, "restore", published.backup_id, env={"PG_BACKUP_RESTORE_TO": target})
    assert result.exit_code == 0, result.output
    assert table_fingerprints(target) == table_fingerprints(dsn)


def test_table_and_schema_tiers_into_the_same_version(version_case):
    server, dsn, published = version_case
    target = create_database(server, "cross_tables")
    args = ["--schema", "new\nline"]
    for schema, table in HOSTILE_TABLES:
        args += ["--table", ".".join('"' + n.replace('"', '""') + '"' for n in (schema, table))]
    result = cli(published, "restore", published.backup_id, *args, env={"PG_BACKUP_RESTORE_TO": target})
    assert result.exit_code == 0, result.output
    source = table_fingerprints(dsn)
    expected = {t: source[t] for t in [*HOSTILE_TABLES, ("new\nline", "tab\nle")]}
    assert table_fingerprints(target) == expected


def test_restore_md_tables_block_into_the_same_version(version_case):
    """psql 18 with a 15 server: `SET transaction_timeout` must be filtered by RESTORE.md's own commands."""
    server, dsn, published = version_case
    target = create_database(server, "cross_doc")
    result = run_every_table(published.folder, target)
    assert result.returncode == 0, result.stderr
    assert table_fingerprints(target) == table_fingerprints(dsn)
