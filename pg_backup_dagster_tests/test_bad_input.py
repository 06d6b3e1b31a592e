"""Bad input through the real CLI: one clear line, non-zero exit, no password anywhere, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_backup_dagster_tests.helpers import PG15_BIN, create_database

SECRET = "Hunter2-wrong-Pa55"


def run_cli(args: list[str], env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG_BACKUP", "PG"))}
    env.update({"DAGSTER_HOME": str(tmp_path / "dagster_home"), "PG_BACKUP_TARGET": str(tmp_path / "target"),
                **env_extra})
    return subprocess.run([sys.executable, "-m", "pg_backup_dagster.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_clean_line(result: subprocess.CompletedProcess, expected: str, tmp_path: Path) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected.lower() in lines[0].lower(), lines[0]
    assert SECRET not in result.stderr + result.stdout
    assert not list((tmp_path / "target").rglob("*.dump")) if (tmp_path / "target").exists() else True


def test_wrong_password(pg18, tmp_path):
    dsn = pg18.dsn().replace(pg18.password, SECRET)
    result = run_cli(["backup"], {"PG_BACKUP_DATABASE_URL": dsn}, tmp_path)
    assert_one_clean_line(result, "password authentication failed", tmp_path)


def test_unreachable_host(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"sources: [{{name: gone, dsn_env: GONE_URL, target: {tmp_path / 'target'}, "
                      "retry_attempts: 2, retry_max_wait: 0.5}]")
    result = run_cli(["backup"], {"PG_BACKUP_CONFIG": str(config),
                                  "GONE_URL": f"postgresql://postgres:{SECRET}@127.0.0.1:9/db"}, tmp_path)
    assert_one_clean_line(result, "cannot connect", tmp_path)


def test_missing_database(pg18, tmp_path):
    dsn = pg18.dsn("no_such_db")
    result = run_cli(["backup"], {"PG_BACKUP_DATABASE_URL": dsn}, tmp_path)
    assert_one_clean_line(result, 'database "no_such_db" does not exist', tmp_path)
    assert pg18.password not in result.stderr


def test_missing_url(tmp_path):
    result = run_cli(["backup"], {}, tmp_path)
    assert_one_clean_line(result, "PG_BACKUP_DATABASE_URL is not set", tmp_path)


def test_invalid_backup_id(pg18, tmp_path):
    dsn = create_database(pg18, "badid")
    result = run_cli(["backup", "--backup-id", "yesterday"], {"PG_BACKUP_DATABASE_URL": dsn}, tmp_path)
    assert_one_clean_line(result, "invalid backup id", tmp_path)


def test_unknown_source(tmp_path):
    result = run_cli(["backup", "--source", "nope"], {}, tmp_path)
    assert_one_clean_line(result, "unknown source 'nope'", tmp_path)


def test_pg_dump_older_than_server_is_refused(pg18, tmp_path):
    if not (PG15_BIN / "pg_dump").exists():
        pytest.skip("Debian postgresql-15 is not installed")
    dsn = create_database(pg18, "old_client")
    result = run_cli(["backup"], {"PG_BACKUP_DATABASE_URL": dsn, "PG_BACKUP_PG_BIN": str(PG15_BIN)}, tmp_path)
    assert_one_clean_line(result, "pg_dump 15", tmp_path)
    assert "PostgreSQL 18" in result.stderr


def test_backup_id_in_the_future(pg18, tmp_path):
    """A 2099 id would hold retention's newest and keep slots until 2099: refused before anything is written."""
    dsn = pg18.dsn()
    result = run_cli(["backup", "--backup-id", "2099-01-01T00-00-00Z"], {"PG_BACKUP_DATABASE_URL": dsn}, tmp_path)
    assert_one_clean_line(result, "more than 5 minutes in the future", tmp_path)
    assert not (tmp_path / "target" / "main").exists()
