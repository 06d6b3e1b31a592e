"""Per-table tier on real servers: split a hostile database's archive, restore all or one table, compare."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.sql import quote_ident
from pg_backup_dagster.pg.sql_script import compatible_lines
from pg_backup_dagster.pg.tools import PgTools, find_tools
from pg_backup_dagster.restore.tables import restore_tables
from pg_backup_dagster.tiers.catalog import TableCatalog, fetch_table_catalog
from pg_backup_dagster.tiers.live_split import split_archive
from pg_backup_dagster.tiers.paths import decode_segment
from pg_backup_dagster.tiers.table_split import SplitResult, TableDump
from pg_backup_dagster_tests.helpers import create_database

HOSTILE_SQL = (Path(__file__).parent.parent / "sql" / "hostile.sql").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tools() -> PgTools:
    return find_tools()


def dump_with_catalog(dsn: str, archive: Path, tools: PgTools) -> TableCatalog:
    """pg_dump inside an exported snapshot, and the catalog read in that same snapshot (as the asset does)."""
    conninfo, env = child_env(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        subprocess.run(
            [
                tools.path("pg_dump"),
                "-Fc",
                "--no-owner",
                "--no-privileges",
                f"--snapshot={snapshot}",
                "-f",
                str(archive),
                "-d",
                conninfo,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        catalog = fetch_table_catalog(conn)
        conn.rollback()
    return catalog


def table_digests(dsn: str) -> dict[tuple[str, str], tuple[int, str | None]]:
    """(schema, table) -> (rows, md5 of all rows in a stable order), over every user table (ONLY each)."""
    with psycopg.connect(dsn) as conn:
        names = conn.execute(
            """SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                 AND n.nspname !~ '^pg_toast'"""
        ).fetchall()
        return {
            (schema, table): conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) "
                f"FROM ONLY {quote_ident(schema)}.{quote_ident(table)} t"
            ).fetchone()
            for schema, table in names
        }


def object_counts(dsn: str) -> dict[str, int]:
    """What hangs on tables or lives beside them, counted, so a restore that lost a trigger is noticed."""
    user = "schemaname !~ '^pg_' AND schemaname <> 'information_schema'"
    queries = {
        "constraints": "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'",
        "indexes": f"SELECT count(*) FROM pg_indexes WHERE {user}",
        "triggers": "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
        "policies": "SELECT count(*) FROM pg_policy",
        "rules": "SELECT count(*) FROM pg_rules WHERE schemaname !~ '^pg_'",
        "views": f"SELECT count(*) FROM pg_views WHERE {user}",
        "matviews": "SELECT count(*) FROM pg_matviews",
        "statistics": "SELECT count(*) FROM pg_statistic_ext",
        "rls": "SELECT count(*) FROM pg_class WHERE relrowsecurity",
        "unlogged": "SELECT count(*) FROM pg_class WHERE relpersistence = 'u'",
        "partitions": "SELECT count(*) FROM pg_inherits",
    }
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(sql).fetchone()[0] for name, sql in queries.items()}


@pytest.fixture(scope="module")
def hostile_split(pg18: LocalPostgres, tools: PgTools, tmp_path_factory: pytest.TempPathFactory):
    """The hostile database on PostgreSQL 18, dumped and split once for the tests of this module."""
    source = create_database(pg18, "hostile", HOSTILE_SQL)
    work = tmp_path_factory.mktemp("split")
    archive = work / "full.dump"
    catalog = dump_with_catalog(source, archive, tools)
    result = split_archive(archive, work / "out", catalog, pg_restore=tools.path("pg_restore"))
    return source, catalog, archive, work / "out", result


def test_catalog_holds_the_hostile_schemas(hostile_split) -> None:
    _, catalog, *_ = hostile_split
    assert {"new\nline", 'we"ird.sch/ema', "..", "case", "CASE"} <= set(catalog.schemas)


def test_split_gives_every_table_its_files_and_row_count(hostile_split) -> None:
    source, catalog, _, out, result = hostile_split
    digests = table_digests(source)
    dumped = {(t.schema, t.table): t for t in result.tables}
    assert set(dumped) == set(digests) == {(t.schema, t.table) for t in catalog.tables}
    all_paths = [p for t in result.tables for p in t.files.values()]
    all_paths += list(result.schema_objects.values()) + [result.global_objects, result.global_objects_late]
    assert len(all_paths) == len(set(all_paths)), "two objects share a path"
    for relpath in all_paths:
        resolved = (out / relpath).resolve()
        assert resolved.is_file() and resolved.is_relative_to(out.resolve()), relpath
    for key, table in dumped.items():
        assert {"schema", "data"} <= set(table.files)
        schema_seg, _, table_seg, _ = table.files["schema"].split("/")
        assert (decode_segment(schema_seg), decode_segment(table_seg)) == key
        assert table.rows == digests[key][0], key
    assert not list(out.rglob("*forged*"))
    hostile = (out / dumped[("Mixed Case", "Tab le")].files["schema"]).read_text(encoding="utf-8")
    assert "TOC entry 9999" in hostile and "DROP TABLE forged" in hostile  # the forged header stayed content
    assert ("public", "Parted") in dumped[("public", "Parted eu")].after
    assert result.global_objects is not None  # the large object


def test_restore_all_tables_matches_source(hostile_split, new_database: Callable[..., str], tools: PgTools) -> None:
    source, _, _, out, result = hostile_split
    target = new_database("restore_all")
    restore_tables(
        out,
        result.tables,
        target,
        psql=tools.path("psql"),
        schema_objects=result.schema_objects,
        global_objects=result.global_objects,
        late_objects=result.global_objects_late,
    )
    assert table_digests(target) == table_digests(source)
    expected = object_counts(source)
    assert object_counts(target) == expected


def test_restore_one_table_with_its_schema_objects(
    hostile_split, new_database: Callable[..., str], tools: PgTools
) -> None:
    source, _, _, out, result = hostile_split
    table = next(t for t in result.tables if (t.schema, t.table) == ("Mixed Case", "Tab le"))
    target = new_database("restore_one")
    restore_tables(
        out,
        [table],
        target,
        psql=tools.path("psql"),
        schema_objects={"Mixed Case": result.schema_objects["Mixed Case"]},
    )
    restored = table_digests(target)
    assert restored == {("Mixed Case", "Tab le"): table_digests(source)[("Mixed Case", "Tab le")]}
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM pg_policy").fetchone()[0] == 1
        assert conn.execute("""SELECT nextval('"Mixed Case"."Tab le_id_seq"')""").fetchone()[0] == 57


def test_restore_failure_names_the_file(hostile_split, new_database: Callable[..., str], tools: PgTools) -> None:
    _, _, _, out, result = hostile_split
    child = next(t for t in result.tables if (t.schema, t.table) == ("public", "Parted eu low"))
    with pytest.raises(BackupError, match=r"Parted%20eu%20low/schema\.sql line \d+: .*ERROR"):
        restore_tables(out, [child], new_database("restore_bad"), psql=tools.path("psql"))


def _tampering_pg_restore(tmp_path: Path, real: str, mode: str) -> str:
    """A pg_restore wrapper that tampers with the list (-L) or the stream, as an attacker or bug might."""
    script = tmp_path / f"pg_restore_{mode}"
    script.write_text(
        f"""#!{sys.executable}
import subprocess, sys
args, mode = sys.argv[1:], {mode!r}
if "-L" not in args:
    sys.exit(subprocess.call([{real!r}, *args]))
lst = args[args.index("-L") + 1]
lines = open(lst, encoding="utf-8", errors="surrogateescape").read().splitlines(True)
if mode == "swap_list":
    lines[3], lines[4] = lines[4], lines[3]
    open(lst, "w", encoding="utf-8", errors="surrogateescape").writelines(lines)
out = subprocess.run([{real!r}, *args], stdout=subprocess.PIPE, check=True).stdout.split(b"\\n")
# real headers only: hostile.sql forges one (entry 9999) inside a string literal
headers = [i for i, line in enumerate(out) if line.startswith(b"-- TOC entry ") and b" 9999 " not in line]
if mode == "drop_header":
    del out[headers[5]]
elif mode == "forge_header":
    out.insert(headers[2] - 1, out[headers[4]])
elif mode == "duplicate_entry":
    out[headers[-1] - 1:headers[-1] - 1] = out[headers[3] - 1:headers[4] - 1]
sys.stdout.buffer.write(b"\\n".join(out))
""",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize("mode", ["swap_list", "drop_header", "forge_header", "duplicate_entry"])
def test_tampered_list_or_stream_is_detected(hostile_split, tools: PgTools, tmp_path: Path, mode: str) -> None:
    _, catalog, archive, _, _ = hostile_split
    wrapper = _tampering_pg_restore(tmp_path, tools.path("pg_restore"), mode)
    with pytest.raises(BackupError, match="TOC entr"):
        split_archive(archive, tmp_path / "out", catalog, pg_restore=wrapper)


def test_compat_drops_only_top_level_commands() -> None:
    script = [
        "\\restrict abc\n",
        "SET transaction_timeout = 0;\n",
        "SET lock_timeout = 0;\n",
        "COPY public.t (v) FROM stdin;\n",
        "SET transaction_timeout = 0;\n",
        "\\restrict inside data\n",
        "\\.\n",
        "SELECT 'a\n",
        "SET transaction_timeout = 0;\n",
        "';\n",
    ]
    assert list(compatible_lines(script, 15)) == [script[i] for i in (2, 3, 4, 5, 6, 7, 8, 9)]
    assert list(compatible_lines(script, 17)) == script[1:]
    assert list(compatible_lines(script, 18, keep_restrict=True)) == script


def test_pg18_dump_of_pg15_database_restores_into_pg15(pg15: LocalPostgres, tools: PgTools, tmp_path: Path) -> None:
    source = create_database(pg15, "hostile15", HOSTILE_SQL)
    catalog = dump_with_catalog(source, tmp_path / "full.dump", tools)
    result: SplitResult = split_archive(
        tmp_path / "full.dump", tmp_path / "out", catalog, pg_restore=tools.path("pg_restore")
    )
    assert "transaction_timeout" in (tmp_path / "out" / result.tables[0].files["schema"]).read_text()
    target = create_database(pg15, "restore15")
    restore_tables(
        tmp_path / "out",
        result.tables,
        target,
        psql=tools.path("psql"),
        schema_objects=result.schema_objects,
        global_objects=result.global_objects,
        late_objects=result.global_objects_late,
    )
    assert table_digests(target) == table_digests(source)
    assert object_counts(target) == object_counts(source)
    tables: list[TableDump] = result.tables
    assert all(t.rows == table_digests(source)[(t.schema, t.table)][0] for t in tables)


def test_password_stays_out_of_argv() -> None:
    conninfo, env = child_env("postgresql://u:s3cret-pw@127.0.0.1:5/db", {"PATH": os.environ["PATH"]})
    assert "s3cret" not in conninfo and env["PGPASSWORD"] == "s3cret-pw"
