"""Server encodings other than UTF8: SQL_ASCII (the server converts nothing) and LATIN1, with non-ASCII schema,
table and column names and data, backed up with default settings and restored whole and table by table."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster_tests.restore_helpers import back_up, cli

TABLES_SQL = """
CREATE SCHEMA "café";
CREATE TABLE "café"."thé" (id int PRIMARY KEY, "crème" text NOT NULL);
INSERT INTO "café"."thé" SELECT g, 'brûlée ' || g FROM generate_series(1, 300) g;
CREATE TABLE public.plain (id int PRIMARY KEY, note text);
INSERT INTO public.plain SELECT g, 'note ' || g FROM generate_series(1, 50) g;
"""


def _database(server, encoding: str, prefix: str) -> str:
    name = f"{prefix}_{os.getpid()}_{encoding.lower()}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
                     "TEMPLATE template0")
    return server.dsn(name)


def _content(dsn: str) -> dict[tuple[str, str], list[tuple]]:
    """Every user table by (schema, table) as text, with its rows, read as UTF-8 (names included)."""
    found = {}
    with psycopg.connect(dsn, autocommit=True, client_encoding="UTF8") as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname !~ '^pg_' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            ident = psycopg.sql.Identifier(schema, table)
            found[(schema, table)] = conn.execute(psycopg.sql.SQL("SELECT * FROM {} ORDER BY 1").format(ident)).fetchall()
    return found


def _schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True, client_encoding="UTF8") as conn:
        return {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_' "
                                           "AND nspname <> 'information_schema'")}


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
def test_backup_and_restore_of_a_non_utf8_database(pg18, tmp_path: Path, encoding: str, monkeypatch):
    source_dsn = _database(pg18, encoding, "enc")
    with psycopg.connect(source_dsn, autocommit=True, client_encoding="UTF8") as conn:
        conn.execute(TABLES_SQL)  # on SQL_ASCII the names and rows are stored as the UTF-8 bytes sent
    expected = _content(source_dsn)
    assert ("café", "thé") in expected and expected[("café", "thé")][0] == (1, "brûlée 1")

    published = back_up(monkeypatch, f"enc_{encoding.lower()}", source_dsn, str(tmp_path / "target"), pg18.dsn())
    manifest_names = {(t["schema"], t["table"]) for t in _manifest(published.folder)["tables"]}
    assert ("café", "thé") in manifest_names
    for check in ("full_dump_restores", "table_dumps_restore"):  # rows proven by content in the dump's encoding
        record = _manifest(published.folder)["checks"][check]
        assert record["content_not_compared"] == {} and "also identical in content" in record["description"]

    whole = _database(pg18, encoding, "encfull")
    result = cli(published, "restore", published.backup_id, env={"PG_BACKUP_RESTORE_TO": whole})
    assert result.exit_code == 0, result.output
    assert _content(whole) == expected

    one = _database(pg18, encoding, "enctable")
    result = cli(published, "restore", published.backup_id, "--table", "café.thé",
                 env={"PG_BACKUP_RESTORE_TO": one})
    assert result.exit_code == 0, result.output
    assert _content(one) == {("café", "thé"): expected[("café", "thé")]}
    assert _schemas(one) == {"public", "café"}, "no schema with a garbled name"


def _manifest(folder: Path | None) -> dict:
    import json

    assert folder is not None
    return json.loads((folder / "manifest.json").read_text())
