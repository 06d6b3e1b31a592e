"""Several sources on one PostgreSQL-backed instance, and the pool that keeps overlapping runs within budget."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.instance import PG_URL_ENV, pool_limit, set_pool_limits
from pg_backup_dagster.runner import open_instance, run_backup
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.conftest import create_database

SQL = """
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text);
INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 500) g;
CREATE TABLE public.notes (id serial PRIMARY KEY, body text);
INSERT INTO public.notes (body) VALUES ('a'), ('b');
"""


@pytest.fixture
def pg_instance(pg18, tmp_path, monkeypatch):
    """A fresh DAGSTER_HOME whose instance keeps runs and events in PostgreSQL (DAGSTER_PG_URL)."""
    url = create_database(pg18, "dagster").replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv(PG_URL_ENV, url)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = open_instance(tmp_path / "home")
    try:
        yield instance
    finally:
        instance.dispose()


def source(name: str, dsn: str, tmp_path, monkeypatch, **kw) -> SourceConfig:
    env = f"PGBD_TEST_MULTI_{name.upper()}"
    monkeypatch.setenv(env, dsn)
    return SourceConfig(name=name, dsn_env=env, target=str(tmp_path / "target"), restore_url_env=None, **kw)


def test_instance_config_written_for_postgres_without_the_url(pg_instance, tmp_path, pg18):
    text = (tmp_path / "home" / "dagster.yaml").read_text()
    assert "postgres_url:\n      env: DAGSTER_PG_URL" in text and pg18.password not in text
    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    assert pg_instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_two_sources_back_up_side_by_side_on_a_postgres_instance(pg_instance, pg18, tmp_path, monkeypatch):
    sources = [source(n, create_database(pg18, n, SQL), tmp_path, monkeypatch) for n in ("alpha", "beta")]
    assert set_pool_limits(pg_instance, sources) == {"pg_backup_alpha": 1, "pg_backup_beta": 1}
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda s: run_backup(s, sources, pg_instance), sources))
    for s, outcome in zip(sources, outcomes, strict=True):
        assert outcome.success, outcome.errors
        assert pg_instance.get_dynamic_partitions(s.partitions_name) == [outcome.backup_id]
        assert open_storage(s.target).list_backups(s.name) == [outcome.backup_id]
    with psycopg.connect(pg_instance.run_storage.postgres_url.replace("+psycopg2", "")) as conn:
        stored = {row[0]: row[1] for row in conn.execute("SELECT run_id, status FROM runs")}
    assert {o.run_id: "SUCCESS" for o in outcomes}.items() <= stored.items()


BACKUP_IDS = ("2001-01-01T00-00-01Z", "2001-01-01T00-00-02Z")


class ConnectionSampler:
    """Counts the backup's connections in pg_stat_activity, as often as it can, until stopped."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn, self.samples, self._stop = admin_dsn, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def count(self, conn: psycopg.Connection, blocked_only: bool = False) -> int:
        query = ("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'pg_backup_dagster/%%' "
                 "AND (application_name LIKE %s OR application_name LIKE %s)")
        if blocked_only:
            query += " AND wait_event_type = 'Lock'"
        return conn.execute(query, [f"pg_backup_dagster/{b}%" for b in BACKUP_IDS]).fetchone()[0]

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
    """Two runs of one source start while the source's table is locked, so their dumps stall on it and stay
    visible in pg_stat_activity. With the pool, the second run waits for the slot and the connections never
    exceed max_connections; without it (the counter-check), both runs' dumps pile up and exceed it."""
    dsn = create_database(pg18, "budget", SQL)
    src = source("budget", dsn, tmp_path, monkeypatch, max_connections=2)
    limit = pool_limit(src) if pooled else 10
    pg_instance.event_log_storage.set_concurrency_slots(src.pool, limit)
    budget = src.max_connections
    with psycopg.connect(dsn) as locker, psycopg.connect(pg18.dsn(), autocommit=True) as admin:
        locker.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")  # held until locker commits
        with ConnectionSampler(pg18.dsn()) as sampler, ThreadPoolExecutor(2) as runs:
            futures = [runs.submit(run_backup, src, [src], pg_instance, b) for b in BACKUP_IDS]
            if pooled:
                wait_for(lambda: sampler.count(admin, blocked_only=True) >= 1, "the first run's dump to stall")
                wait_for(lambda: pg_instance.event_log_storage.get_concurrency_info(src.pool).pending_step_count >= 1,
                         "the second run to wait for the pool slot")
                assert sampler.count(admin) <= budget
            else:
                wait_for(lambda: sampler.count(admin, blocked_only=True) > budget, "both runs' dumps to stall")
            locker.commit()
            outcomes = [f.result(timeout=300) for f in futures]
    assert all(o.success for o in outcomes), [o.errors for o in outcomes]
    assert max(sampler.samples) >= 2, "the sampler must have seen the stalled dump"
    if pooled:
        assert max(sampler.samples) <= budget
    else:
        assert max(sampler.samples) > budget
