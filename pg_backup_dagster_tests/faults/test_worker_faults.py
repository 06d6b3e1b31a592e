"""The run worker itself failing: `pg-backup-dagster backup` SIGKILLed mid-dump, and two runs of one source at once.

Both run the real CLI as subprocesses sharing one DAGSTER_HOME, as a cron job or two operators would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import pytest

from pg_backup_dagster.storage import BackupRepository, open_storage
from pg_backup_dagster_tests.faults.helpers import (
    assert_gc_cleans,
    assert_only_published,
    leftovers,
    next_backup_id,
    table_locked,
    wait_for_blocked_dump,
)
from pg_backup_dagster_tests.helpers import create_database

SOURCE = "worker"
SQL = """
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 500) g;
"""


@dataclass
class Cli:
    env: dict[str, str]
    dsn: str
    storage: BackupRepository
    published: list[str]

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pg_backup_dagster.cli", *args],
            env=self.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def backup(self, backup_id: str) -> subprocess.CompletedProcess[str]:
        proc = self.start("backup", "--backup-id", backup_id)
        out, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def cli(pg18, tmp_path_factory) -> Iterator[Cli]:
    """The CLI's environment for one source, and one good backup made through it."""
    home = tmp_path_factory.mktemp("worker")
    dsn = create_database(pg18, "worker", SQL)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PG_BACKUP_DATABASE_URL=dsn,
        PG_BACKUP_TARGET=str(home / "target"),
        PG_BACKUP_SOURCE=SOURCE,
        PG_BACKUP_RESTORE_URL=pg18.dsn(),
        DAGSTER_HOME=str(home / "dagster_home"),
    )
    cli = Cli(env, dsn, open_storage(str(home / "target")), [])
    good_id = next_backup_id()
    result = cli.backup(good_id)
    assert result.returncode == 0, result.stderr
    cli.published.append(good_id)
    yield cli


def test_worker_killed_mid_dump(cli, pg18):
    backup_id = next_backup_id()
    with table_locked(cli.dsn, "app.items"):
        proc = cli.start("backup", "--backup-id", backup_id)
        try:
            wait_for_blocked_dump(pg18.dsn(), backup_id)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pg_dump children, as when a pod dies
            proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert_only_published(cli.storage, SOURCE, cli.published)
    assert leftovers(cli.storage, SOURCE), "the killed run should have left its staging dir for gc"

    nxt_id = next_backup_id()
    nxt = cli.backup(nxt_id)
    assert nxt.returncode == 0, nxt.stderr
    cli.published.append(nxt_id)
    assert_only_published(cli.storage, SOURCE, cli.published)
    assert_gc_cleans(cli.storage, SOURCE, cli.published)
    with dg.DagsterInstance.from_config(cli.env["DAGSTER_HOME"]) as instance:
        stuck = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert not stuck, "the killed run must be marked failed (and its pool slot freed), not left STARTED"


def test_two_runs_of_one_source_at_once_with_the_same_id(cli):
    """The worst case of two simultaneous runs: same second, same backup id, same staging dir."""
    backup_id = next_backup_id()
    procs = [cli.start("backup", "--backup-id", backup_id) for _ in range(2)]
    results = [(proc, *proc.communicate(timeout=300)) for proc in procs]
    codes = sorted(proc.returncode for proc, _, _ in results)
    assert codes[0] == 0, [err for _, _, err in results]
    for proc, _, err in results:
        if proc.returncode != 0:
            error_lines = [line for line in err.splitlines() if "error" in line.lower()]
            assert error_lines, err
    cli.published.append(backup_id)
    assert_only_published(cli.storage, SOURCE, cli.published)  # complete: every file matches its manifest
    assert_gc_cleans(cli.storage, SOURCE, cli.published)

    nxt_id = next_backup_id()
    nxt = cli.backup(nxt_id)
    assert nxt.returncode == 0, nxt.stderr
    cli.published.append(nxt_id)
    assert_only_published(cli.storage, SOURCE, cli.published)
