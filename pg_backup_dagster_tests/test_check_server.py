"""The full-dump check restores what the archive holds, or says before restoring what its server lacks.

Found on real databases: policies naming the backup's own roles failed on a check server without them
(PostgreSQL's regression database), an extension the bundled server lacks failed every backup halfway
(Supabase's pgcrypto on PostgreSQL 15), and a PostgreSQL 15 restore server refused pg_restore 18's
`SET transaction_timeout`.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import dagster as dg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster_tests.helpers import create_database


def _backup(monkeypatch: pytest.MonkeyPatch, name: str, dsn: str, target: Path, restore_url: str | None):
    monkeypatch.setenv(f"PGBD_CHK_{name.upper()}_DSN", dsn)
    restore_env = None
    if restore_url:
        restore_env = f"PGBD_CHK_{name.upper()}_RESTORE"
        monkeypatch.setenv(restore_env, restore_url)
    source = SourceConfig(name=name, dsn_env=f"PGBD_CHK_{name.upper()}_DSN", target=str(target),
                          restore_url_env=restore_env, restore_jobs=1)
    with dg.instance_for_test() as instance:
        return run_backup(source, [source], instance)


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
    outcome = _backup(monkeypatch, "polroles", dsn, tmp_path / "t", None)  # the default: an ephemeral server
    assert outcome.success, outcome.errors
    assert outcome.checks["full_dump_restores"][0], outcome.checks


def test_an_extension_the_check_server_lacks_is_named_before_restoring(pg15, tmp_path, monkeypatch):
    dsn = create_database(pg15, "ext", """
        CREATE EXTENSION pgcrypto;
        CREATE TABLE secrets_t (id int PRIMARY KEY, h bytea DEFAULT digest('x', 'sha256'));
        INSERT INTO secrets_t (id) SELECT g FROM generate_series(1, 10) g;
    """)
    outcome = _backup(monkeypatch, "extmiss", dsn, tmp_path / "t", None)  # bundled PostgreSQL 18: no pgcrypto
    assert not outcome.success
    passed, description = outcome.checks["full_dump_restores"]
    assert not passed
    assert "lacks extension(s) pgcrypto" in description and "PG_BACKUP_RESTORE_URL" in description
    assert not (tmp_path / "t" / "extmiss" / "latest.json").exists()


def test_an_older_restore_server_built_like_production_checks_the_backup(pg15, tmp_path, monkeypatch):
    dsn = create_database(pg15, "ext15", """
        CREATE EXTENSION pgcrypto;
        CREATE TABLE secrets_t (id int PRIMARY KEY, h bytea DEFAULT digest('x', 'sha256'));
        INSERT INTO secrets_t (id) SELECT g FROM generate_series(1, 10) g;
    """)
    outcome = _backup(monkeypatch, "ext15", dsn, tmp_path / "t", pg15.dsn())  # PostgreSQL 15 with contrib
    assert outcome.success, (outcome.errors, outcome.checks)
    passed, description = outcome.checks["full_dump_restores"]
    assert passed and "(1 also identical in content), 1 B-tree indexes sound" in description, description
