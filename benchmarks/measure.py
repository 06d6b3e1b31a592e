"""Wall-clock timing and peak memory of this process and everything it starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

MB = 1024 * 1024


@dataclass
class Sample:
    """What one measured block cost: seconds, and peak RSS of the process tree while it ran."""

    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    peak_python_rss_mb: float = 0.0
    peak_children_rss_mb: float = 0.0

    def as_dict(self) -> dict:
        return {k: round(v, 3) for k, v in vars(self).items()}


def _tree_rss() -> tuple[int, int]:
    """(RSS of this process, summed RSS of all its live descendants). Shared pages count twice: an upper bound."""
    me = psutil.Process()
    children = 0
    for child in me.children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
    return me.memory_info().rss, children


@contextmanager
def measured(interval: float = 0.05) -> Iterator[Sample]:
    """Time the block and sample RSS of the process tree every `interval` seconds in a background thread.

    Servers started with pg_ctl detach from our tree, so PostgreSQL's own memory is not counted; pg_dump,
    pg_restore and psql children are.
    """
    sample = Sample()
    stop = threading.Event()

    def poll() -> None:
        while True:
            own, children = _tree_rss()
            sample.peak_python_rss_mb = max(sample.peak_python_rss_mb, own / MB)
            sample.peak_children_rss_mb = max(sample.peak_children_rss_mb, children / MB)
            sample.peak_rss_mb = max(sample.peak_rss_mb, (own + children) / MB)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=poll, name="rss-sampler", daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        yield sample
    finally:
        sample.seconds = time.monotonic() - started
        stop.set()
        thread.join()
