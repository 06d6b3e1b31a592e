"""The Dagster instance: the config (dagster.yaml) this tool writes into a fresh DAGSTER_HOME, pool limits, and
the pool slots of runs whose process died.

Runs are queued (QueuedRunCoordinator through the `concurrency:` block); storage is PostgreSQL through
dagster-postgres when DAGSTER_PG_URL is set (the URL stays an env reference in the file, never written out),
the local SQLite default otherwise. An existing dagster.yaml is the operator's and is never touched.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import dagster as dg
import sqlalchemy

from pg_backup_dagster.config import DAGSTER_PG_URL_ENV, SourceConfig
from pg_backup_dagster.constants import HOST_TAG, PID_TAG, SOURCE_TAG
from pg_backup_dagster.errors import BackupError

PG_URL_ENV = DAGSTER_PG_URL_ENV

BASE_CONFIG = """\
# Instance settings for deployments: copy into $DAGSTER_HOME (README, "Run it as a service").
# Runs are queued (QueuedRunCoordinator) and steps share per-source pools, so runs on one source never
# open more connections than its max_connections. Per-pool limits are set with
#   pg-backup-dagster pools        (or: dagster instance concurrency set pg_backup_<source> 1)
# An unset pool gets default_limit 1: one connecting step per source at a time (docs/service.md, "Pools").
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: pg_backup/source
        value:
          applyLimitPerUniqueValue: true
        limit: 2
  pools:
    default_limit: 1
    granularity: op

# The daemon frees pool slots a finished run still holds (its process was killed mid-step).
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 60

telemetry:
  enabled: false
"""

POSTGRES_STORAGE = f"""
# Runs, events and schedules in PostgreSQL (set {PG_URL_ENV}; dagster-postgres).
storage:
  postgres:
    postgres_url:
      env: {PG_URL_ENV}
"""


def instance_config(env: Mapping[str, str] | None = None) -> str:
    """dagster.yaml for this environment: PostgreSQL storage when DAGSTER_PG_URL is set, SQLite otherwise."""
    env = os.environ if env is None else env
    return BASE_CONFIG + (POSTGRES_STORAGE if env.get(PG_URL_ENV) else "")


def check_pg_url(env: Mapping[str, str]) -> None:
    """Refuse a DAGSTER_PG_URL that would reach dagster-postgres through psycopg 3.

    SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, on which dagster-postgres 0.29 fails at the first
    event (it binds a parameter in NOTIFY); `postgresql+psycopg2://` selects the driver it is built for.
    """
    url = env.get(PG_URL_ENV) or ""
    if url and "://" in url and "+" not in url.split("://", 1)[0] and _sqlalchemy_defaults_to_psycopg3():
        raise BackupError(f"{PG_URL_ENV} must start with postgresql+psycopg2:// (dagster-postgres needs psycopg2)")


def _sqlalchemy_defaults_to_psycopg3() -> bool:
    major, minor = (int(part) for part in sqlalchemy.__version__.split(".")[:2])
    return (major, minor) >= (2, 1)


def ensure_instance_config(home: Path, env: Mapping[str, str] | None = None) -> Path:
    """Write dagster.yaml into `home` unless one is there already; return its path."""
    env = os.environ if env is None else env
    check_pg_url(env)
    path = home / "dagster.yaml"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".dagster.yaml.tmp")
        tmp.write_text(instance_config(env))
        tmp.replace(path)
    return path


def pool_limit(source: SourceConfig) -> int:
    """Concurrent steps allowed in a source's pool: the connection budget divided by what one step may hold.

    One step's PostgresResource may hold all `max_connections` connections (snapshot + parallel pg_dump), so
    budget // per-step peak = max_connections // max_connections = 1, whatever max_connections is. Raising it
    would let two dump steps (of two runs) hold 2 x max_connections together.
    """
    per_step_peak = source.max_connections
    return max(1, source.max_connections // per_step_peak)


def set_pool_limits(instance: dg.DagsterInstance, sources: Sequence[SourceConfig]) -> dict[str, int]:
    """Set every source's pool limit on the instance; returns pool → limit."""
    limits = {s.pool: pool_limit(s) for s in sources}
    for pool, limit in limits.items():
        instance.event_log_storage.set_concurrency_slots(pool, limit)
    return limits


# Runs whose process died (SIGKILL, OOM, reboot) stay STARTED and keep their pool slots forever without a
# daemon. Before a CLI run, runs started by a now-dead process on this host are marked failed and their slots
# freed; runs of other hosts (or whose pid is alive) are never touched.
def process_tags() -> dict[str, str]:
    """Tags that let a later run recognise this process as gone."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reclaim_abandoned_runs(instance: dg.DagsterInstance, source: str) -> list[str]:
    """Fail the source's runs whose process on this host no longer exists, freeing their pool slots."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED],
            tags={SOURCE_TAG: source, HOST_TAG: socket.gethostname()},
        )
    )
    reclaimed = []
    for run in runs:
        pid = int(run.tags.get(PID_TAG) or 0)
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(run, message=f"the process running it (pid {pid}) is gone")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            reclaimed.append(run.run_id)
    return reclaimed
