"""Work a step of an in-process run starts early for a later step of the same run.

A run executed in process (the CLI's) runs its steps one after another. It tags itself (IN_PROCESS_TAG) so that
work a later step needs, and that waits on nothing still to come, starts as soon as it can: both restore checks
at once, and the upload of the tier files while the checks run. Under a multiprocess executor (the UI,
schedules) every step is its own process and does its own work, and steps that do not depend on each other
already run at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import dagster as dg

from pg_backup_dagster.constants import IN_PROCESS_TAG

_started: dict[tuple[str, str], Future[Any]] = {}
_taken: set[tuple[str, str]] = set()  # work once started stays started for its run
_lock = threading.Lock()
_pool = ThreadPoolExecutor(4, thread_name_prefix="early")


def shares_process(context: dg.OpExecutionContext | dg.AssetCheckExecutionContext) -> bool:
    """Whether this step's run executes every step in this process (so work started here outlives the step)."""
    return context.run.tags.get(IN_PROCESS_TAG) == "true"


def start(run_id: str, name: str, work: Callable[[], Any]) -> None:
    """Start `work` for the step that will `take` it, unless this run started it already."""
    with _lock:
        if (run_id, name) not in _started and (run_id, name) not in _taken:
            _started[(run_id, name)] = _pool.submit(work)


def take(run_id: str, name: str) -> Future[Any] | None:
    """The work started under this name in this run (now the caller's), or None."""
    with _lock:
        _taken.add((run_id, name))
        return _started.pop((run_id, name), None)


def forget(run_id: str) -> None:
    """Wait for whatever this run started and no step took (the run stopped early); its errors are not news."""
    with _lock:
        left = [_started.pop(key) for key in [key for key in _started if key[0] == run_id]]
        _taken.difference_update({key for key in _taken if key[0] == run_id})
    for future in left:
        future.exception()
