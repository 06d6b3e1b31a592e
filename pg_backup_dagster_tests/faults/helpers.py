"""What every fault test needs: sources on real servers, ways to pause and kill real work, and the invariants.

The invariants, asserted after every fault: the run failed naming the cause, only backups with a complete
manifest are listed, latest.json still names the last good backup, and gc leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import BackupOutcome, run_backup
from pg_backup_dagster.storage import BackupRepository, LocalStorage, S3Storage

RESTORE_ENV = "PGBD_FAULTS_RESTORE_URL"
_ids = itertools.count()
_BASE = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(days=os.getpid() % 1000)  # in the past: future ids are refused


def next_backup_id() -> str:
    """Distinct, valid, increasing backup ids (the clock's one-second ids would collide within a test)."""
    return (_BASE + timedelta(seconds=next(_ids))).strftime("%Y-%m-%dT%H-%M-%SZ")


def make_source(
    monkeypatch: pytest.MonkeyPatch, name: str, dsn: str, target: str, restore_url: str, **settings
) -> SourceConfig:
    """A source whose DSN and restore server travel through env variables, as in production.

    The variables are set with monkeypatch, so they last as long as its scope: a module-scoped world passes
    the `pytest.MonkeyPatch.context()` it holds open while its tests run.
    """
    dsn_env = f"PGBD_FAULTS_{name.upper()}_DSN"
    monkeypatch.setenv(dsn_env, dsn)
    monkeypatch.setenv(RESTORE_ENV, restore_url)
    return SourceConfig(name=name, dsn_env=dsn_env, target=target, restore_url_env=RESTORE_ENV, **settings)


def backup(source: SourceConfig, instance: dg.DagsterInstance, backup_id: str | None = None) -> BackupOutcome:
    return run_backup(source, [source], instance, backup_id=backup_id or next_backup_id())


def assert_failed_naming(outcome: BackupOutcome, *causes: str) -> str:
    """The run failed and one of its errors names one of the causes (case-insensitive); returns the errors."""
    text = " | ".join(outcome.errors)
    assert not outcome.success, "the run should have failed"
    assert any(cause.lower() in text.lower() for cause in causes), f"no error names {causes}: {text}"
    assert all("\n" not in error for error in outcome.errors)
    return text


def assert_only_published(storage: BackupRepository, source: str, published: list[str]) -> None:
    """Exactly these backups are visible, each complete (every file matches its manifest), latest on the last."""
    assert storage.list_backups(source) == sorted(published)
    assert (storage.read_latest(source) or {}).get("backup_id") == max(published)
    for backup_id in published:
        manifest = storage.read_manifest(source, backup_id)
        assert manifest.passed is True and manifest.files
    if isinstance(storage.store, LocalStorage):
        for backup_id in published:
            storage.fetch(source, backup_id, Path("/nonexistent"))  # local: verifies every file in place


def leftovers(storage: BackupRepository, source: str) -> list[str]:
    """Anything under the source that is not part of a published backup, latest.json or the latest link."""
    published = set(storage.list_backups(source))
    store = storage.store
    if isinstance(store, LocalStorage):
        root = store.root / source
        found = []
        for path in sorted(root.rglob("*")) if root.exists() else []:
            rel = path.relative_to(root).parts
            if rel[0] in published or (len(rel) == 1 and rel[0] in ("latest.json", "latest")):
                continue
            if rel == (".staging",) and not any(path.iterdir()):
                continue
            found.append(str(path))
        return found
    assert isinstance(store, S3Storage)
    base = f"{source}/"
    keys = [obj.key for obj in store.list_objects(base)]
    stray = [k for k in keys if k != base + "latest.json" and k[len(base) :].split("/")[0] not in published]
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store._key(base)).get("Uploads", [])
    work = store.work_dir / source
    local = [str(p) for p in sorted(work.iterdir())] if work.exists() else []
    return stray + [f"multipart {u['Key']}" for u in uploads] + local


def assert_gc_cleans(storage: BackupRepository, source: str, published: list[str]) -> list[str]:
    """gc removes every leftover of the failed run and never a published backup."""
    removed = storage.gc(source, min_age=0)
    assert leftovers(storage, source) == []
    assert storage.list_backups(source) == sorted(published)
    return removed


# --- pausing and killing real work ---------------------------------------------------------------------
@contextmanager
def table_locked(dsn: str, table: str) -> Iterator[psycopg.Connection]:
    """Hold ACCESS EXCLUSIVE on a table: every pg_dump of its database blocks mid-dump, alive, until released."""
    conn = psycopg.connect(dsn)
    try:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield conn
    finally:
        try:
            conn.rollback()
            conn.close()
        except psycopg.Error:
            pass  # the fault may have killed this session too


def wait_for_blocked_dump(admin_dsn: str, backup_id: str, timeout: float = 180.0) -> None:
    """Until the backup's full pg_dump is connected and waiting on a lock, i.e. in the middle of its dump."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                [f"pg_backup_dagster/{backup_id}/full"],
            ).fetchone()
            if row[0]:
                return
            time.sleep(0.05)
    raise AssertionError(f"pg_dump of {backup_id} never blocked on the held lock")


def pids_of(program: str, needle: str) -> list[int]:
    """Processes whose argv[0] is `program` and whose command line contains `needle` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and Path(argv[0].decode(errors="replace")).name == program and needle.encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


def in_background(action: Callable[[], None]) -> Callable[[], None]:
    """Run action in a thread; the returned join() re-raises whatever it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join() -> None:
        thread.join(timeout=120)
        assert not thread.is_alive(), "background fault injector hung"
        if errors:
            raise errors[0]

    return join


# --- filesystems ---------------------------------------------------------------------------------------
@contextmanager
def tmpfs(path: Path, size: str = "2m", *, read_only: bool = False) -> Iterator[Path]:
    """A small tmpfs at path (root only); skips the test where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
