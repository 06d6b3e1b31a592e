"""The four tiers through Dagster on hard databases: hostile identifiers, a Supabase-like database, and a
database written to throughout the backup (every tier must show the same instant)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import BackupOutcome, run_backup
from pg_backup_dagster.pg.conninfo import split_password
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.tiers.paths import decode_segment
from pg_backup_dagster_tests.helpers import create_database, load_sql_file, table_fingerprints

SQL_DIR = Path(__file__).parent / "sql"


def backup_through_dagster(
    monkeypatch: pytest.MonkeyPatch, dsn: str, target: Path, name: str, **config
) -> tuple[BackupOutcome, Path]:
    """One backup run through Dagster, the DSN in an env variable set with the caller's monkeypatch."""
    env_var = f"PGBD_TEST_{name.upper()}_DSN"
    monkeypatch.setenv(env_var, dsn)
    source = SourceConfig(name=name, dsn_env=env_var, target=str(target), restore_url_env=None, **config)
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance)
    return outcome, target / name / outcome.backup_id


def pg_restore(dsn: str, archive: Path, *extra: str) -> None:
    safe, env = split_password(dsn)
    subprocess.run([find_tools().path("pg_restore"), "-O", "-x", "--exit-on-error", *extra, "--dbname", safe,
                    str(archive)], check=True, env={**os.environ, **env}, capture_output=True)


# --- hostile identifiers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_backup(pg18, tmp_path_factory):
    dsn = create_database(pg18, "hostile")
    load_sql_file(dsn, SQL_DIR / "hostile.sql")
    with pytest.MonkeyPatch.context() as mp:
        outcome, folder = backup_through_dagster(mp, dsn, tmp_path_factory.mktemp("target"), "hostile")
    return dsn, outcome, folder


def test_hostile_backup_passes_every_check(hostile_backup):
    _, outcome, _ = hostile_backup
    assert outcome.success, outcome.errors
    assert len(outcome.checks) == 4 and all(passed for passed, _ in outcome.checks.values()), outcome.checks


def test_every_schema_and_table_is_in_every_tier_at_a_safe_unique_path(hostile_backup):
    dsn, _, folder = hostile_backup
    manifest = json.loads((folder / "manifest.json").read_text())
    source_tables = set(table_fingerprints(dsn))
    with psycopg.connect(dsn) as conn:
        schemas = {r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND nspname NOT LIKE 'pg\\_%'")}
    by_tier: dict[str, list[dict]] = {}
    for entry in manifest["files"]:
        by_tier.setdefault(entry["tier"], []).append(entry)
        path = (folder / entry["path"]).resolve()
        assert path.is_file() and path.is_relative_to(folder.resolve()), entry["path"]
    assert len({e["path"] for e in manifest["files"]}) == len(manifest["files"])
    assert {e["schema"] for e in by_tier["schema"]} == schemas
    for entry in by_tier["schema"]:
        assert decode_segment(entry["path"].split("/")[0]) == entry["schema"]
    table_files = {(e["schema"], e["table"]): set() for e in by_tier["table"]}
    for e in by_tier["table"]:
        table_files[(e["schema"], e["table"])].add(e["kind"])
        schema_seg, _, table_seg, _ = e["path"].split("/")
        assert (decode_segment(schema_seg), decode_segment(table_seg)) == (e["schema"], e["table"])
    assert source_tables <= set(table_files)
    assert all({"schema", "data"} <= kinds for kinds in table_files.values())
    assert {(t["schema"], t["table"]) for t in manifest["tables"]} == source_tables


def test_hostile_full_dump_restores_identically(hostile_backup, pg18):
    dsn, outcome, folder = hostile_backup
    target = create_database(pg18, "hostile_restored")
    pg_restore(target, folder / f"database_full_{outcome.backup_id}.dump")
    assert table_fingerprints(target) == table_fingerprints(dsn)


# --- Supabase-like ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def supabase_server() -> Iterator[LocalPostgres]:
    """Its own server: the platform roles are cluster-wide and must not leak into the shared one."""
    import tempfile

    server = LocalPostgres(root_dir=Path(tempfile.mkdtemp(prefix="pgbd-test-supabase-")) / "pg")
    server.start()
    yield server
    server.destroy()


def test_supabase_like_backup_restores_into_the_same_shape(supabase_server, tmp_path, monkeypatch):
    dsn = create_database(supabase_server, "project")
    load_sql_file(dsn, SQL_DIR / "supabase_like.sql")
    outcome, folder = backup_through_dagster(monkeypatch, dsn, tmp_path, "supa", profile="supabase")
    assert outcome.success, outcome.errors
    assert all(passed for passed, _ in outcome.checks.values()), outcome.checks
    roles = (folder / "roles.sql").read_text()
    assert "-- reserved by profile" in roles or "reserved" in roles
    assert "SCRAM-SHA-256$" not in roles
    live = [line for line in roles.splitlines() if not line.startswith("--")]
    assert not any("CREATE ROLE anon;" in line or "CREATE ROLE authenticated;" in line for line in live)
    assert any("app_api" in line for line in live)
    # a target "of the same shape": same server (platform roles exist), a new empty database
    target = create_database(supabase_server, "project_restored")
    pg_restore(target, folder / f"database_full_{outcome.backup_id}.dump")
    assert table_fingerprints(target) == table_fingerprints(dsn)
    with psycopg.connect(target) as conn:
        policies = conn.execute("SELECT count(*) FROM pg_policies").fetchone()[0]
    with psycopg.connect(dsn) as conn:
        assert policies == conn.execute("SELECT count(*) FROM pg_policies").fetchone()[0] > 0


# --- one snapshot for every tier --------------------------------------------------------------------------
def _writer(dsn: str, stop: threading.Event) -> int:
    """Insert one row into s1.a and one into s2.b per transaction until stopped: any consistent snapshot
    sees equal counts in both."""
    batches = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set():
            with conn.transaction():
                conn.execute("INSERT INTO s1.a (v) SELECT md5(g::text) FROM generate_series(1, 50) g")
                conn.execute("INSERT INTO s2.b (v) SELECT md5(g::text) FROM generate_series(1, 50) g")
            batches += 1
    return batches


def test_all_tiers_show_one_instant_while_the_database_is_written(pg18, tmp_path, monkeypatch):
    dsn = create_database(pg18, "busy", """
        CREATE SCHEMA s1; CREATE SCHEMA s2;
        CREATE TABLE s1.a (id bigserial PRIMARY KEY, v text);
        CREATE TABLE s2.b (id bigserial PRIMARY KEY, v text);
        CREATE TABLE s2.filler (x int, pad text);
        INSERT INTO s2.filler SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g;
    """)
    stop = threading.Event()
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(_writer(dsn, stop)))
    writer.start()
    try:
        outcome, folder = backup_through_dagster(monkeypatch, dsn, tmp_path, "busy")
    finally:
        stop.set()
        writer.join()
    assert outcome.success, outcome.errors
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = {(t["schema"], t["table"]): t for t in manifest["tables"]}
    full_a, full_b = counts[("s1", "a")]["rows"], counts[("s2", "b")]["rows"]
    assert full_a == full_b > 0, "the full dump's snapshot saw half a transaction"
    assert counts[("s1", "a")]["rows_in_table_files"] == full_a
    assert counts[("s2", "b")]["rows_in_table_files"] == full_b
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM s1.a").fetchone()[0] > full_a, "no write happened during the backup"
    # the two schema archives were written by separate pg_dump processes: same snapshot, same counts
    restored = create_database(pg18, "busy_schemas")
    for schema in ("s1", "s2"):
        pg_restore(restored, folder / schema / f"{schema}_schema_{outcome.backup_id}.dump")
    with psycopg.connect(restored) as conn:
        assert conn.execute("SELECT count(*) FROM s1.a").fetchone()[0] == full_a
        assert conn.execute("SELECT count(*) FROM s2.b").fetchone()[0] == full_b


# --- choosing tiers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tiers", "checks"),
    [(("full",), {"full_dump_restores"}), (("full", "table"), {"full_dump_restores", "table_dumps_restore"})],
)
def test_a_source_can_take_only_some_tiers(sample_dsn, tmp_path, tiers, checks, monkeypatch):
    outcome, folder = backup_through_dagster(monkeypatch, sample_dsn, tmp_path, "some", tiers=tiers)
    assert outcome.success, outcome.errors
    assert set(outcome.checks) == checks and all(passed for passed, _ in outcome.checks.values())
    manifest = json.loads((folder / "manifest.json").read_text())
    stored = {e["tier"] for e in manifest["files"]}
    assert stored == {"full", "doc"} | ({"table", "schema_objects", "global_objects"} if "table" in tiers else set())
    assert not (folder / "roles.sql").exists() and not list(folder.glob("*/*_schema_*.dump"))
    restore_md = (folder / "RESTORE.md").read_text()
    assert "## 2. The whole database" in restore_md and "## 1. Roles" not in restore_md
    assert ("## 4. Any tables" in restore_md) == ("table" in tiers)


def test_tiers_must_include_the_full_dump():
    from pg_backup_dagster.errors import BackupError

    with pytest.raises(BackupError, match="invalid config field 'tiers'"):
        SourceConfig(name="x", tiers=("table",))
    with pytest.raises(BackupError, match="unknown tier 'views'"):
        SourceConfig(name="x", tiers=("full", "views"))
