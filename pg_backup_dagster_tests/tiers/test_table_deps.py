"""What PostgreSQL's regression database found in the per-table tier, each reproduced by sql/table_deps.sql on a real
server: session settings leaking into other tables' files (a custom access method), rules and policies reading
views restored before the views, `restore --table` without the objects its tables use, and transaction control
in a file ending the one transaction a restore runs in."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.sql_script import LineKind, ScriptScanner
from pg_backup_dagster.pg.tools import PgTools, find_tools
from pg_backup_dagster.restore.tables import plan_table_restore, restore_tables
from pg_backup_dagster.tiers.live_split import split_archive
from pg_backup_dagster.tiers.table_split import SplitResult, TableDump, split_in_one_pass
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import back_up, cli, run_section
from pg_backup_dagster_tests.tiers.test_tables import dump_with_catalog, object_counts, table_digests

DEPS_SQL = (Path(__file__).parent.parent / "sql" / "table_deps.sql").read_text(encoding="utf-8")
HEAP2 = b"SET default_table_access_method = heap2;"


@pytest.fixture(scope="module")
def tools() -> PgTools:
    return find_tools()


@pytest.fixture(scope="module")
def deps_split(pg18, tools: PgTools, tmp_path_factory: pytest.TempPathFactory):
    """table_deps.sql dumped once and split both ways: live (beside pg_dump) and in one pg_restore pass."""
    source = create_database(pg18, "deps", DEPS_SQL)
    work = tmp_path_factory.mktemp("deps")
    catalog = dump_with_catalog(source, work / "full.dump", tools)
    pg_restore = tools.path("pg_restore")
    splits = {
        "live": split_archive(work / "full.dump", work / "live", catalog, pg_restore=pg_restore),
        "one_pass": split_in_one_pass(work / "full.dump", work / "one_pass", catalog, pg_restore=pg_restore),
    }
    return source, work, splits


def _paths(result: SplitResult) -> list[str]:
    paths = [p for t in result.tables for p in t.files.values()] + list(result.schema_objects.values())
    return paths + [p for p in (result.global_objects, result.global_objects_late) if p]


def _table(result: SplitResult, schema: str, table: str) -> TableDump:
    return next(t for t in result.tables if (t.schema, t.table) == (schema, table))


def _per_object_settings(path: Path) -> list[tuple[bytes, bytes]]:
    """(SET line, type of the entry it stands in front of) for every default_table_access_method and
    default_tablespace line; the type is b"" when anything but settings lies between them."""
    lines = path.read_bytes().splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith((b"SET default_table_access_method ", b"SET default_tablespace ")):
            rest = [x for x in lines[i + 1 :] if x.strip() not in (b"", b"--") and not x.startswith(b"SET ")]
            name_line = next((x for x in rest[1:4] if x.startswith(b"-- Name: ")), b"")
            kind = re.search(rb"; Type: ([A-Z ]+);", name_line) if rest[0].startswith(b"-- TOC entry ") else None
            found.append((line, kind.group(1) if kind else b""))
    return found


@pytest.mark.parametrize("mode", ["live", "one_pass"])
def test_access_method_is_set_only_in_front_of_the_tables_using_it(deps_split, mode: str) -> None:
    _, work, splits = deps_split
    out, result = work / mode, splits[mode]
    using = {_table(result, "other", "zz_heap2").files["schema"], result.global_objects_late}
    seen = []
    for relpath in _paths(result):
        for line, kind in _per_object_settings(out / relpath):
            assert kind in ((b"TABLE", b"MATERIALIZED VIEW") if b"access_method" in line
                            else (b"TABLE", b"MATERIALIZED VIEW", b"INDEX", b"CONSTRAINT")), (relpath, line, kind)
            assert line != HEAP2 or relpath in using, relpath
            seen.append((relpath, line))
    assert (_table(result, "other", "zz_heap2").files["schema"], HEAP2) in seen
    assert (result.global_objects_late, HEAP2) in seen  # the materialized view
    assert (_table(result, "app", "plain").files["schema"], b"SET default_table_access_method = heap;") in seen


def test_a_table_with_a_custom_access_method_restores_alone(deps_split, new_database: Callable[..., str],
                                                             tools: PgTools) -> None:
    source, work, splits = deps_split
    result = splits["live"]
    plan = plan_table_restore([_table(result, "other", "zz_heap2")], result.tables, result.schema_objects,
                              result.global_objects, result.global_objects_late)
    target = new_database("deps_heap2")
    restore_tables(work / "live", plan.tables, target, psql=tools.path("psql"), schema_objects=plan.schema_objects,
                   global_objects=plan.global_objects, late_objects=plan.late_objects)
    assert table_digests(target) == {("other", "zz_heap2"): table_digests(source)[("other", "zz_heap2")]}
    with psycopg.connect(target) as conn:
        am = conn.execute("SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                          "WHERE c.oid = 'other.zz_heap2'::regclass").fetchone()
    assert am == ("heap2",)


def test_rules_and_policies_reading_views_run_after_the_views(deps_split, new_database: Callable[..., str],
                                                              tools: PgTools) -> None:
    source, work, splits = deps_split
    result = splits["live"]
    late = (work / "live" / result.global_objects_late).read_text(encoding="utf-8")
    assert "CREATE RULE shoelace_ok_ins" in late
    assert "CREATE POLICY by_view" in late and "CREATE POLICY by_matview" in late
    assert late.index("CREATE VIEW app.shoelace ") < late.index("CREATE RULE shoelace_ok_ins")
    for name in ("shoelace_ok", "docs"):
        post = _table(result, "app", name).files.get("post")
        assert post is None or "CREATE RULE" not in (work / "live" / post).read_text(encoding="utf-8")
    notes = _table(result, "app", "notes")
    assert "CREATE POLICY by_table" in (work / "live" / notes.files["post"]).read_text(encoding="utf-8")
    assert notes.post_refs == [("app", "shoelace_data")]
    target = new_database("deps_all")
    restore_tables(work / "live", result.tables, target, psql=tools.path("psql"),
                   schema_objects=result.schema_objects, global_objects=result.global_objects,
                   late_objects=result.global_objects_late)
    assert table_digests(target) == table_digests(source)
    assert object_counts(target) == object_counts(source)


def test_a_table_using_another_schemas_domain_restores_with_every_objects_file(
    deps_split, new_database: Callable[..., str], tools: PgTools
) -> None:
    source, work, splits = deps_split
    result = splits["one_pass"]
    chosen = _table(result, "other", "uses_domain")
    assert chosen.fk_refs == [("app", "plain")]
    plan = plan_table_restore([chosen], result.tables, result.schema_objects, result.global_objects,
                              result.global_objects_late)
    assert "fk" not in plan.tables[0].files and plan.late_objects is None
    assert set(plan.schema_objects) == set(result.schema_objects) and plan.global_objects == result.global_objects
    assert 'the foreign keys of "other"."uses_domain" (to "app"."plain")' in plan.left_out
    assert result.global_objects_late in plan.left_out
    target = new_database("deps_domain")
    restore_tables(work / "one_pass", plan.tables, target, psql=tools.path("psql"),
                   schema_objects=plan.schema_objects, global_objects=plan.global_objects)
    assert table_digests(target) == {("other", "uses_domain"): table_digests(source)[("other", "uses_domain")]}
    with_target = plan_table_restore([chosen, _table(result, "app", "plain")], result.tables,
                                     result.schema_objects, result.global_objects, result.global_objects_late)
    assert "fk" in with_target.tables[0].files and "foreign keys" not in with_target.left_out


def test_a_policy_reading_another_table_needs_that_table(deps_split, new_database: Callable[..., str],
                                                         tools: PgTools) -> None:
    source, work, splits = deps_split
    result = splits["live"]
    notes, data = _table(result, "app", "notes"), _table(result, "app", "shoelace_data")
    args = (result.tables, result.schema_objects, result.global_objects, result.global_objects_late)
    with pytest.raises(BackupError, match=r'read "app"\."shoelace_data": restore it too'):
        plan_table_restore([notes], *args)
    assert plan_table_restore([notes], *args, in_target={("app", "shoelace_data")}).tables == [notes]
    plan = plan_table_restore([notes, data], *args)
    target = new_database("deps_policy")
    restore_tables(work / "live", plan.tables, target, psql=tools.path("psql"), schema_objects=plan.schema_objects,
                   global_objects=plan.global_objects)
    expected = table_digests(source)
    assert table_digests(target) == {k: expected[k] for k in (("app", "notes"), ("app", "shoelace_data"))}
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT polname FROM pg_policy").fetchall() == [("by_table",)]


@pytest.mark.parametrize("mode", ["live", "one_pass"])
def test_no_transaction_control_in_split_files(deps_split, mode: str) -> None:
    _, work, splits = deps_split
    result = splits[mode]
    assert b"lo_open" in (work / mode / result.global_objects).read_bytes()  # the large object's data is there
    for relpath in _paths(result):
        scanner = ScriptScanner()
        for line in (work / mode / relpath).read_bytes().splitlines(keepends=True):
            if scanner.feed(line) is LineKind.TOP:
                assert not re.match(rb"(?i)(BEGIN|COMMIT|END|ROLLBACK|START TRANSACTION)\s*;", line), relpath


def _catalog_state(dsn: str) -> dict[str, list]:
    """Everything a restore of the split files could create, listed."""
    queries = {
        "namespaces": "SELECT nspname FROM pg_namespace ORDER BY 1",
        "relations": "SELECT relnamespace::regnamespace::text, relname FROM pg_class ORDER BY 1, 2",
        "types": "SELECT typnamespace::regnamespace::text, typname FROM pg_type ORDER BY 1, 2",
        "functions": "SELECT oid::regprocedure::text FROM pg_proc ORDER BY 1",
        "access methods": "SELECT amname FROM pg_am ORDER BY 1",
        "extensions": "SELECT extname FROM pg_extension ORDER BY 1",
        "large objects": "SELECT oid FROM pg_largeobject_metadata ORDER BY 1",
    }
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in queries.items()}


def test_a_failed_subset_restore_leaves_the_target_as_it_was(deps_split, new_database: Callable[..., str],
                                                             tools: PgTools) -> None:
    """global_objects.sql (large-object data) ran first, then a foreign key to a table not restored fails."""
    _, work, splits = deps_split
    result = splits["live"]
    target = new_database("deps_failed")
    before = _catalog_state(target)
    with pytest.raises(BackupError, match=r"uses_domain/fk\.sql line \d+: .*ERROR"):
        restore_tables(work / "live", [_table(result, "other", "uses_domain")], target, psql=tools.path("psql"),
                       schema_objects=result.schema_objects, global_objects=result.global_objects)
    assert _catalog_state(target) == before


@pytest.fixture(scope="module")
def published(pg18, tmp_path_factory):
    source = create_database(pg18, "deps_backup", DEPS_SQL)
    with pytest.MonkeyPatch.context() as mp:
        return source, back_up(mp, "deps", source, str(tmp_path_factory.mktemp("deps_target")), pg18.dsn())


def test_restore_table_brings_what_its_tables_use_and_says_what_it_leaves_out(published, pg18) -> None:
    """`restore --table` into a fresh database: the access method and the other schema's domain come along."""
    source, backup = published
    target = create_database(pg18, "deps_cli")
    result = cli(backup, "restore", backup.backup_id, "--table", "other.zz_heap2", "--table", "other.uses_domain",
                 env={"PG_BACKUP_RESTORE_TO": target})
    assert result.exit_code == 0, result.output
    expected = table_fingerprints(source)
    assert table_fingerprints(target) == {k: expected[k] for k in (("other", "zz_heap2"), ("other", "uses_domain"))}
    assert 'left out: the foreign keys of "other"."uses_domain" (to "app"."plain")' in result.output
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT a.amname FROM pg_class c JOIN pg_am a ON a.oid = c.relam "
                            "WHERE c.oid = 'other.zz_heap2'::regclass").fetchone() == ("heap2",)


def test_restore_md_tables_block_brings_the_access_method_by_default(published, pg18) -> None:
    """RESTORE.md's "Any tables" block, run literally: its default OBJECTS include global_objects.sql."""
    source, backup = published
    assert backup.folder is not None
    target = create_database(pg18, "deps_doc")
    result = run_section(backup.folder, "4. Any tables", target, TABLES="other/tables/zz_heap2")
    assert result.returncode == 0, result.stderr
    assert table_fingerprints(target) == {("other", "zz_heap2"): table_fingerprints(source)[("other", "zz_heap2")]}
