"""The source's password never leaves the process environment of the pg tools: not in any process's argv, log
line, Dagster event or metadata, instance file, published file, or the text of an error."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.preflight import preflight
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster_tests.helpers import create_database

DSN_ENV = "PGBD_SECRETS_DSN"
RESTORE_ENV = "PGBD_SECRETS_RESTORE_URL"
TOKEN = secrets.token_hex(8)
PASSWORD = f"Zq!{TOKEN}@p/w"  # characters that URL-encode, so both spellings are searched
NEEDLES = (TOKEN, PASSWORD, quote(PASSWORD, safe=""))
SQL = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;"


def assert_clean(text: str | bytes, where: str) -> None:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    for needle in NEEDLES:
        assert needle.encode() not in data, f"the password appears in {where}"


def scan_tree(root: Path) -> int:
    """Every file under root, bytes included (SQLite event logs, dumps, compute logs); returns files scanned."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert_clean(path.read_bytes(), str(path))
    return len(files)


class CmdlineSampler(threading.Thread):
    """Reads /proc/*/cmdline of every process, over and over, while a backup runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.seen: set[bytes] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        self.seen.add((entry / "cmdline").read_bytes())
                    except OSError:
                        continue
            self.stop.wait(0.005)


@pytest.fixture(scope="module")
def secret_dsns(pg18) -> dict[str, str]:
    """A login role with a distinctive password, its database, and a DSN naming a database that does not exist."""
    role = f"pgbd_secret_{os.getpid()}"
    with psycopg.connect(pg18.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD))
        )
    dbname = create_database(pg18, "secret", SQL).rsplit("/", 1)[1]
    base = f"postgresql://{role}:{quote(PASSWORD, safe='')}@127.0.0.1:{pg18.port}"
    return {"good": f"{base}/{dbname}", "missing_db": f"{base}/no_such_db_{TOKEN[:4]}"}


def _source(dsn: str, target: Path, monkeypatch, pg18) -> SourceConfig:
    monkeypatch.setenv(DSN_ENV, dsn)
    monkeypatch.setenv(RESTORE_ENV, pg18.dsn())
    return SourceConfig(name="secret", dsn_env=DSN_ENV, target=str(target), restore_url_env=RESTORE_ENV)


def test_password_absent_everywhere_during_a_real_backup(secret_dsns, pg18, tmp_path, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    source = _source(secret_dsns["good"], tmp_path / "target", monkeypatch, pg18)
    sampler = CmdlineSampler()
    sampler.start()
    try:
        (tmp_path / "instance").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
            outcome = run_backup(source, [source], instance, log_level="DEBUG")
            records = instance.all_logs(outcome.run_id)
            assert outcome.success, outcome.errors
            for record in records:
                assert_clean(dg.serialize_value(record), f"event log record {record.dagster_event_type}")
            assert_clean(repr(outcome), "the run outcome (metadata and check descriptions)")
    finally:
        sampler.stop.set()
        sampler.join()
    assert any(b"pg_dump" in argv for argv in sampler.seen), "the sampler never saw a pg_dump process"
    for argv in sampler.seen:
        assert_clean(argv, f"a process command line: {argv[:120]!r}")
    assert any(e.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION for e in records)
    assert_clean("\n".join(r.getMessage() for r in caplog.records), "captured log records")
    out, err = capfd.readouterr()
    assert_clean(out + err, "stdout/stderr")
    folder = tmp_path / "target" / "secret" / outcome.backup_id
    assert (folder / "manifest.json").is_file() and (folder / "RESTORE.md").is_file()
    assert scan_tree(tmp_path / "target") > 5
    assert scan_tree(tmp_path / "instance") > 0


def test_password_absent_from_errors_of_failing_runs(secret_dsns, pg18, tmp_path, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    source = _source(secret_dsns["missing_db"], tmp_path / "target", monkeypatch, pg18)
    with pytest.raises(BackupError) as raised:
        preflight(source)
    assert "does not exist" in str(raised.value)
    assert_clean(str(raised.value) + repr(raised.value), "the preflight exception")

    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        outcome = run_backup(source, [source], instance, log_level="DEBUG")
        assert not outcome.success and any("does not exist" in e for e in outcome.errors), outcome.errors
        assert_clean(" ".join(outcome.errors), "the run's errors")
        for record in instance.all_logs(outcome.run_id):
            assert_clean(dg.serialize_value(record), f"event log record {record.dagster_event_type}")
    assert_clean("\n".join(r.getMessage() for r in caplog.records), "captured log records")
    out, err = capfd.readouterr()
    assert_clean(out + err, "stdout/stderr")
    scan_tree(tmp_path / "instance")

    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        {
            "PG_BACKUP_DATABASE_URL": secret_dsns["missing_db"],
            "PG_BACKUP_TARGET": str(tmp_path / "cli-target"),
            "DAGSTER_HOME": str(tmp_path / "cli-home"),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "pg_backup_dagster.cli", "backup"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "does not exist" in result.stderr, result.stderr
    assert_clean(result.stdout + result.stderr, "the CLI's output")
