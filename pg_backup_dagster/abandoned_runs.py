"""Runs whose process died (SIGKILL, OOM, reboot) stay STARTED and keep their pool slots forever without a daemon.

The CLI runs jobs in its own process: one killed `backup` would then make every later backup of that source
wait on the pool slot indefinitely. Before a run, runs started by a now-dead process on this host are marked
failed and their slots freed. Runs of other hosts (or whose pid is alive) are never touched.
"""

from __future__ import annotations

import os
import socket

import dagster as dg

HOST_TAG = "pg_backup/host"
PID_TAG = "pg_backup/pid"


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
            tags={"pg_backup/source": source, HOST_TAG: socket.gethostname()},
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
