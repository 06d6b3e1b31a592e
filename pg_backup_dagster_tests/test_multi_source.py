"""Several sources on one PostgreSQL-backed instance, and the pool that keeps overlapping runs within budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from pg_backup_dagster.config import SourceConfig, load_sources
from pg_backup_dagster.defs.instance import BASE_CONFIG, PG_URL_ENV, ensure_instance_config, pool_limit, set_pool_limits
from pg_backup_dagster.defs.run import open_instance
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.helpers import create_database

SQL = """
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text);
INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 500) g;
CREATE TABLE public.notes (id serial PRIMARY KEY, body text);
INSERT INTO public.notes (body) VALUES ('a'), ('b');
"""


@pytest.fixture
def service_env(pg18, tmp_path, monkeypatch) -> dict[str, str]:
    """A fresh DAGSTER_HOME whose instance keeps runs and events in PostgreSQL (DAGSTER_PG_URL)."""
    url = create_database(pg18, "dagster").replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv(PG_URL_ENV, url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(tmp_path / "sources.yaml"))
    return os.environ


@pytest.fixture
def pg_instance(service_env, tmp_path):
    instance = open_instance(tmp_path / "home")
    try:
        yield instance
    finally:
        instance.dispose()


def configure(tmp_path, monkeypatch, databases: dict[str, str], **settings) -> list[SourceConfig]:
    """Write PG_BACKUP_CONFIG for these sources (DSNs in env variables, as in production); test restores go to
    scratch databases on the session's server instead of an ephemeral server per check."""
    server = next(iter(databases.values())).rsplit("/", 1)[0]
    monkeypatch.setenv("PGBD_TEST_MULTI_RESTORE", f"{server}/postgres")
    entries = []
    for name, dsn in databases.items():
        env = f"PGBD_TEST_MULTI_{name.upper()}"
        monkeypatch.setenv(env, dsn)
        entries.append(
            {
                "name": name,
                "dsn_env": env,
                "target": str(tmp_path / "target"),
                "restore_url_env": "PGBD_TEST_MULTI_RESTORE",
                **settings,
            }
        )
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"sources": entries}))
    return load_sources()


def cli_backup(source: str, backup_id: str | None = None) -> subprocess.Popen:
    """`pg-backup-dagster backup` in its own process: what an operator or cron job runs."""
    argv = [sys.executable, "-m", "pg_backup_dagster.cli", "backup", "--source", source]
    argv += ["--backup-id", backup_id] if backup_id else []
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def test_instance_config_written_for_postgres_without_the_url(pg_instance, tmp_path, pg18):
    text = (tmp_path / "home" / "dagster.yaml").read_text()
    assert "postgres_url:\n      env: DAGSTER_PG_URL" in text and pg18.password not in text
    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    assert pg_instance.get_concurrency_config().pool_config.default_pool_limit == 1
    repo_yaml = Path(__file__).resolve().parents[1] / "docs" / "dagster.yaml"
    assert repo_yaml.read_text() == BASE_CONFIG, "docs/dagster.yaml is the template without storage"


def test_bare_postgresql_url_is_refused_with_the_fix(tmp_path):
    with pytest.raises(BackupError, match=r"postgresql\+psycopg2://"):
        ensure_instance_config(tmp_path, {PG_URL_ENV: "postgresql://u:secret@h/db"})
    assert not (tmp_path / "dagster.yaml").exists()


def test_two_sources_back_up_side_by_side_on_a_postgres_instance(pg_instance, pg18, tmp_path, monkeypatch):
    sources = configure(tmp_path, monkeypatch, {n: create_database(pg18, n, SQL) for n in ("alpha", "beta")})
    assert set_pool_limits(pg_instance, sources) == {"pg_backup_alpha": 1, "pg_backup_beta": 1}
    for output in [finish(p) for p in [cli_backup("alpha"), cli_backup("beta")]]:
        assert ": OK (Dagster run" in output
    runs = pg_instance.get_runs()
    assert sorted(r.job_name for r in runs) == ["backup_alpha", "backup_beta"]
    assert all(r.status.value == "SUCCESS" for r in runs)
    for s in sources:
        [backup_id] = pg_instance.get_dynamic_partitions(s.partitions_name)
        assert open_storage(s.target).list_backups(s.name) == [backup_id]
    with psycopg.connect(os.environ[PG_URL_ENV].replace("+psycopg2", "")) as conn:
        stored = {row[0] for row in conn.execute("SELECT run_id FROM runs")}
    assert {r.run_id for r in runs} <= stored


BACKUP_IDS = ("2001-01-01T00-00-01Z", "2001-01-01T00-00-02Z")


class ConnectionSampler:
    """Counts the backups' connections to the source database in pg_stat_activity, as often as it can."""

    def __init__(self, admin_dsn: str, dbname: str) -> None:
        self.admin_dsn, self.dbname, self.samples, self._stop = admin_dsn, dbname, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def count(self, conn: psycopg.Connection, blocked_only: bool = False) -> int:
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND (application_name LIKE %s OR application_name LIKE %s)"
        )
        if blocked_only:
            query += " AND wait_event_type = 'Lock'"
        return conn.execute(query, [self.dbname, *(f"pg_backup_dagster/{b}%" for b in BACKUP_IDS)]).fetchone()[0]

    def _run(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                self.samples.append(self.count(conn))

    def __enter__(self) -> ConnectionSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def wait_for(condition, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("pooled", [True, False], ids=["pool_limit", "no_pool_limit"])
def test_overlapping_runs_stay_within_the_connection_budget(pooled, pg_instance, pg18, tmp_path, monkeypatch):
    """Two runs of one source start while a table is locked, so their dumps stall on it and stay visible in
    pg_stat_activity. With the pool, the second run waits for the slot and the connections never exceed
    max_connections; without it (the counter-check), both runs' dumps pile up and exceed it."""
    dsn = create_database(pg18, "budget", SQL)
    [src] = configure(tmp_path, monkeypatch, {"budget": dsn}, max_connections=2)
    limit = pool_limit(src) if pooled else 10
    pg_instance.event_log_storage.set_concurrency_slots(src.pool, limit)
    budget = src.max_connections
    with psycopg.connect(dsn) as locker, psycopg.connect(pg18.dsn(), autocommit=True) as admin:
        locker.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")  # held until locker commits
        with ConnectionSampler(pg18.dsn(), dsn.rsplit("/", 1)[1]) as sampler:
            processes = [cli_backup("budget", b) for b in BACKUP_IDS]
            if pooled:
                # generous waits: on a loaded 2-core CI machine each CLI run needs a while to reach its dump
                wait_for(lambda: sampler.count(admin, blocked_only=True) >= 1, "the first run's dump to stall", 240)
                wait_for(
                    lambda: pg_instance.event_log_storage.get_concurrency_info(src.pool).pending_step_count >= 1
                    or any(p.poll() is not None for p in processes),
                    "the second run to wait for the pool slot",
                    240,
                )
                assert all(p.poll() is None for p in processes), [finish(p) for p in processes if p.poll() is not None]
                assert sampler.count(admin) <= budget
            else:  # proven once both stall; stop them (and their pg_dumps) rather than wait for two backups
                wait_for(lambda: sampler.count(admin, blocked_only=True) > budget, "both runs' dumps to stall", 240)
                for process in processes:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            locker.commit()
            if pooled:
                for process in processes:
                    finish(process)
    if pooled:
        assert 2 <= max(sampler.samples) <= budget, "the sampler must have seen the stalled dump"
    else:
        assert max(sampler.samples) > budget


def test_definitions_validate_with_several_sources(tmp_path):
    """`dagster definitions validate` (as CI runs it) on a config with three sources, two of them scheduled."""
    config = {
        "sources": [
            {
                "name": "orders",
                "dsn_env": "ORDERS_URL",
                "target": str(tmp_path / "a"),
                "schedule": "15 1 * * *",
                "timezone": "Europe/Berlin",
                "max_connections": 6,
            },
            {
                "name": "crm",
                "dsn_env": "CRM_URL",
                "target": "s3://bucket/backups",
                "schedule": "0 */6 * * *",
                "profile": "supabase",
            },
            {"name": "adhoc", "dsn_env": "ADHOC_URL", "target": str(tmp_path / "c"), "freshness_hours": 48},
        ]
    }
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(config))
    repo_root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PG_BACKUP_CONFIG": str(tmp_path / "sources.yaml"), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            str(repo_root / "workspace.yaml"),
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_pools_command_sets_each_source_pool_on_the_instance(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pg_backup_dagster.cli import app

    monkeypatch.setenv("PG_BACKUP_CONFIG", str(tmp_path / "sources.yaml"))
    configure(tmp_path, monkeypatch, {"alpha": "postgresql://u@127.0.0.1/a", "beta": "postgresql://u@127.0.0.1/b"})
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(PG_URL_ENV, raising=False)
    result = CliRunner().invoke(app, ["pools"])
    assert result.exit_code == 0, result.output
    assert "pool pg_backup_alpha: 1 step at a time" in result.output
    with open_instance(tmp_path / "home") as instance:
        for pool in ("pg_backup_alpha", "pg_backup_beta"):
            info = instance.event_log_storage.get_concurrency_info(pool)
            assert info.slot_count == 1 and not info.using_default_limit
