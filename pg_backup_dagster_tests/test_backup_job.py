"""A real backup of the sample database through Dagster: partitions, materializations, checks, files, restore."""

from __future__ import annotations

import json
import os
import re
import subprocess

import dagster as dg
import psycopg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.files import sha256_file
from pg_backup_dagster.pg.conninfo import split_password
from pg_backup_dagster.pg.profiles import roles_sql_has_password_hash
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints

ENV_VAR = "PGBD_TEST_SAMPLE_DSN"


@pytest.fixture(scope="module")
def backed_up(sample_dsn, tmp_path_factory):
    """One backup run of the sample database, on a real (temporary) Dagster instance."""
    target = tmp_path_factory.mktemp("target")
    source = SourceConfig(name="sample", dsn_env=ENV_VAR, target=str(target), restore_url_env=None)
    with dg.instance_for_test() as instance:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(ENV_VAR, sample_dsn)
            outcome = run_backup(source, [source], instance)
        yield outcome, target / "sample" / outcome.backup_id, instance


def test_run_succeeds_with_every_check_passed(backed_up):
    outcome, _, _ = backed_up
    assert outcome.success, outcome.errors
    assert set(outcome.checks) == {"full_dump_restores", "schema_dumps_complete", "table_dumps_restore",
                                   "roles_sql_loadable"}
    assert all(passed for passed, _ in outcome.checks.values()), outcome.checks


def test_instance_records_partition_materializations_and_checks(backed_up):
    outcome, _, instance = backed_up
    assert outcome.backup_id in instance.get_dynamic_partitions("sample_backups")
    for name in ("roles_sql", "full_dump", "schema_dumps", "table_dumps", "backup_manifest"):
        event = instance.get_latest_materialization_event(dg.AssetKey(["sample", name]))
        assert event is not None and event.dagster_event.partition == outcome.backup_id
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey(["sample", "full_dump"]), "full_dump_restores"), limit=1
    )
    assert records and records[0].status.value == "SUCCEEDED"
    assert records[0].partition == outcome.backup_id  # the UI ties the check result to its backup


def test_published_layout_and_manifest(backed_up):
    outcome, folder, _ = backed_up
    bid = outcome.backup_id
    assert (folder / "roles.sql").is_file()
    assert (folder / f"database_full_{bid}.dump").is_file()
    for schema in ("shop", "crm"):
        assert (folder / schema / f"{schema}_schema_{bid}.dump").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["backup_id"] == bid and manifest["passed"] is True
    for entry in manifest["files"]:
        assert sha256_file(folder / entry["path"]).sha256 == entry["sha256"]
        assert (folder / entry["path"]).stat().st_size == entry["size"]
    listed = {e["path"] for e in manifest["files"]}
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk
    latest = json.loads((folder.parent / "latest.json").read_text())
    assert latest["backup_id"] == bid
    assert not list(folder.parent.glob(".staging/*")), "staging must be empty after publish"


def test_roles_file_has_roles_but_no_password_hashes(backed_up, sample_dsn):
    _, folder, _ = backed_up
    text = (folder / "roles.sql").read_text()
    assert "CREATE ROLE app_login" in text, "the demo's login role (it has a password) must be in roles.sql"
    assert not roles_sql_has_password_hash(text)  # the product's own detector: SCRAM or md5, comments included
    assert "SCRAM-SHA-256$" not in text and not re.search(r"PASSWORD\s+'", text, re.I)  # not even a fragment
    with psycopg.connect(sample_dsn) as conn:
        (stored,) = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app_login'").fetchone()
    assert stored and roles_sql_has_password_hash(stored), "the detector must recognise this server's hash"
    assert stored not in text


def test_full_dump_restores_with_identical_tables(backed_up, pg18, sample_dsn):
    outcome, folder, _ = backed_up
    target_dsn = create_database(pg18, "restored")
    safe, env = split_password(target_dsn)
    subprocess.run(
        [find_tools().path("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", safe,
         str(folder / f"database_full_{outcome.backup_id}.dump")],
        check=True, env={**os.environ, **env}, capture_output=True,
    )
    source = table_fingerprints(sample_dsn)
    assert source and table_fingerprints(target_dsn) == source
