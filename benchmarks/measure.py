"""Wall-clock timing and peak memory of this process and everything it starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024


@dataclass
class Sample:
    """What one measured block cost: seconds, and peak memory of the process tree while it ran.

    pss is the proportional set size (a page shared by n processes counts 1/n in each), so a child that was
    just forked from this process and has not exec'd yet adds nothing; rss sums resident sizes and counts
    such shared pages in every process (an upper bound).
    """

    seconds: float = 0.0
    peak_pss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    peak_python_rss_mb: float = 0.0
    peak_processes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in vars(self).items()}


def _memory(process: psutil.Process) -> tuple[str, int, int]:
    info = process.memory_full_info()
    return process.name(), info.rss, getattr(info, "pss", info.rss)


def _tree_memory(root: psutil.Process) -> list[tuple[str, int, int]]:
    """(name, rss, pss) of the root process first, then of each live descendant."""
    try:
        found = [_memory(root)]
    except psutil.Error:  # the root exited
        return []
    for child in root.children(recursive=True):
        try:
            found.append(_memory(child))
        except psutil.Error:  # exited between listing and reading
            continue
    return found


@contextmanager
def measured(interval: float = 0.05, root: int | None = None) -> Iterator[Sample]:
    """Time the block and sample memory of a process tree every `interval` seconds in a background thread.

    The tree is this process and what it starts, or with `root` the process of that pid and its descendants (a
    job run in a child process, without the S3 server the benchmark runs beside it). Servers started with pg_ctl
    detach from our tree, so PostgreSQL's own memory is not counted; pg_dump, pg_restore, psql and Dagster's
    helper processes are. peak_python_rss_mb is the root's RSS.
    """
    sample = Sample()
    stop = threading.Event()
    process = psutil.Process(root)

    def poll() -> None:
        while True:
            tree = _tree_memory(process)
            pss = sum(p for _, _, p in tree) / MB
            sample.peak_rss_mb = max(sample.peak_rss_mb, sum(r for _, r, _ in tree) / MB)
            python_rss = tree[0][1] if tree else 0
            sample.peak_python_rss_mb = max(sample.peak_python_rss_mb, python_rss / MB)
            if pss > sample.peak_pss_mb:
                sample.peak_pss_mb = pss
                sample.peak_processes = [f"{name} {p / MB:.0f} MB" for name, _, p in tree]
            if stop.wait(interval):
                return

    thread = threading.Thread(target=poll, name="memory-sampler", daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        yield sample
    finally:
        sample.seconds = time.monotonic() - started
        stop.set()
        thread.join()
