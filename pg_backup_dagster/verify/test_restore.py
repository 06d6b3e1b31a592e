"""Test restores: prove an archive restores and reproduces the exact row counts taken at dump time."""

from __future__ import annotations

import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_dagster.backup.row_counts import COUNT_BATCH, count_rows, existing_tables
from pg_backup_dagster.errors import BackupError, one_line, redact, register_secret
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster.pg.tools import PgTools
from pg_backup_dagster.tiers.table_split import TocEntry, parse_toc

_PG_RESTORE_ERROR = re.compile(r"^pg_restore: error: (.*)$", re.M)


@dataclass
class RestoreReport:
    """What a test restore found: duration, per-table counts, and why it failed if it did."""

    seconds: float = 0.0
    tables: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    accepted_errors: list[str] = field(default_factory=list)

    @property
    def differing(self) -> list[dict]:
        return [t for t in self.tables if t["expected"] != t["restored"]]

    @property
    def passed(self) -> bool:
        return not self.errors and not self.differing


def create_stub_roles(conn: psycopg.Connection, roles: Sequence[str]) -> None:
    """NOLOGIN stand-ins for platform roles (Supabase's anon, authenticated, …) that policies name."""
    for role in roles:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


@contextmanager
def scratch_database(
    restore_url: str | None, work_dir: Path | None = None, stub_roles: Sequence[str] = ()
) -> Iterator[str]:
    """A throwaway database: on the configured restore server, else on an ephemeral local server; always dropped.

    The ephemeral server's own empty `postgres` database is the target: it is what CREATE DATABASE would copy
    from template1 anyway, and the whole server goes away afterwards."""
    if not restore_url:
        with ephemeral_server(parent=work_dir) as server:
            with psycopg.connect(server.dsn(), autocommit=True) as conn:
                create_stub_roles(conn, stub_roles)
            yield server.dsn()
        return
    name = f"pgbd_check_{secrets.token_hex(6)}"
    register_secret(conninfo_to_dict(restore_url).get("password"))
    try:
        admin = psycopg.connect(restore_url, autocommit=True)
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect to the restore server: {one_line(str(exc))}") from None
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        create_stub_roles(admin, stub_roles)
        try:
            yield make_conninfo(restore_url, dbname=name)
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def partition_tables(entries: list[TocEntry]) -> set[int]:
    """Dump ids of the TABLE entries that may be partitioned tables, partitions or inheritance children: those
    without a TABLE DATA entry (a partitioned table stores no rows), those a TABLE ATTACH names, and those
    depending on another TABLE. Errs towards too many: an extra table only costs a serial foreign key."""
    tables = {e.dump_id for e in entries if e.desc == "TABLE"}
    with_data = {d for e in entries if e.desc == "TABLE DATA" for d in e.deps}
    attached = {d for e in entries if e.desc == "TABLE ATTACH" for d in e.deps}
    children = {e.dump_id for e in entries if e.desc == "TABLE" and tables.intersection(e.deps)}
    return (tables - with_data) | attached | children


def serial_foreign_keys(entries: list[TocEntry]) -> set[int]:
    """The FK CONSTRAINT entries that must wait for a serial pass: all but those whose dependencies are plain
    tables, or constraints and indexes of plain tables only. Anything else (a partition, an INDEX ATTACH, an
    id missing from the TOC, no table at all) could take part in the deadlock, so it stays serial."""
    by_id = {e.dump_id: e for e in entries}
    risky_tables = partition_tables(entries)

    def plain_table(dump_id: int) -> bool:
        entry = by_id.get(dump_id)
        return entry is not None and entry.desc == "TABLE" and dump_id not in risky_tables

    def plain_dependency(dump_id: int) -> bool:
        entry = by_id.get(dump_id)
        if entry is not None and entry.desc in ("CONSTRAINT", "INDEX"):
            return bool(entry.deps) and all(plain_table(d) for d in entry.deps)
        return plain_table(dump_id)

    return {
        e.dump_id for e in entries if e.desc == "FK CONSTRAINT"
        and not (any(plain_table(d) for d in e.deps) and all(plain_dependency(d) for d in e.deps))
    }


@contextmanager
def restore_passes(tools: PgTools, archive: Path, jobs: int) -> Iterator[list[list[str]]]:
    """pg_restore arguments per pass. In parallel, validating a foreign key to a partitioned table can deadlock
    with index builds on its partitions (seen about once in 20 runs): foreign keys that touch a partitioned
    table or a partition then get a serial pass of their own after everything else; the others stay in the
    parallel pass, as in a bare `pg_restore -j`. The list files live in a temp dir, never beside the archive."""
    if jobs == 1:
        yield [["--jobs=1"]]
        return
    listing = subprocess.run([tools.path("pg_restore"), "-l", "-v", str(archive)], capture_output=True, check=False)
    entries = parse_toc(listing.stdout.decode("utf-8", errors="surrogateescape")) if listing.returncode == 0 else []
    serial = serial_foreign_keys(entries)
    if not serial:  # nothing to separate, or unreadable: the restore itself reports why
        yield [[f"--jobs={jobs}"]]
        return
    with tempfile.TemporaryDirectory(prefix="pgbd-lists-") as folder:
        passes = []
        for name, keep, pass_jobs in (("main", False, jobs), ("fk", True, 1)):
            path = Path(folder) / f"{name}.list"
            lines = [e.line for e in entries if (e.dump_id in serial) == keep]
            path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", errors="surrogateescape")
            passes.append([f"--jobs={pass_jobs}", "--use-list", str(path)])
        yield passes


def pg_restore_into(
    tools: PgTools, archive: Path, dsn: str, jobs: int, accepted: list[str], extra: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """pg_restore -j into dsn; returns (unaccepted errors, accepted errors). Accepted patterns are explicit."""
    safe_dsn, env = child_env(dsn)
    argv = [tools.path("pg_restore"), "--no-owner", "--no-privileges", *(extra or []), "--dbname", safe_dsn]
    errors: list[str] = []
    with restore_passes(tools, archive, jobs) as passes:
        for chosen in passes:
            result = subprocess.run([*argv, *chosen, str(archive)], env=env, capture_output=True,
                                    text=True, check=False)
            errors += [redact(e) for e in _PG_RESTORE_ERROR.findall(result.stderr)]
            if result.returncode != 0 and not errors:
                errors = [one_line(redact(result.stderr)) or f"pg_restore exited with {result.returncode}"]
    patterns = [re.compile(p) for p in accepted]
    accepted_hits = [e for e in errors if any(p.search(e) for p in patterns)]
    return [e for e in errors if e not in accepted_hits], accepted_hits


def _count_share(dsn: str, tables: list[tuple[str, str]]) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return count_rows(conn, tables)


def parallel_counts(dsn: str, tables: list[tuple[str, str]], workers: int) -> list[int]:
    """count_rows over up to `workers` connections, each with a contiguous share of whole batches: counting a
    freshly restored table also sets its hint bits, CPU work that spreads over the server's cores."""
    shares = min(workers, -(-len(tables) // COUNT_BATCH))
    if shares <= 1:
        return _count_share(dsn, tables)
    size = -(-len(tables) // shares)
    parts = [tables[i : i + size] for i in range(0, len(tables), size)]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        return [n for counts in pool.map(lambda part: _count_share(dsn, part), parts) for n in counts]


def restored_counts(dsn: str, expected: list[dict], workers: int = 1) -> list[dict]:
    """Exact count(*) of each expected table in the restored database (-1 when the table is missing)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        present = existing_tables(conn)
    found = [(i["schema"], i["table"]) for i in expected if (i["schema"], i["table"]) in present]
    counts = dict(zip(found, parallel_counts(dsn, found, workers), strict=True))
    return [{"schema": i["schema"], "table": i["table"], "expected": i["rows"],
             "restored": counts.get((i["schema"], i["table"]), -1)} for i in expected]


def restore_and_compare(
    tools: PgTools,
    archive: Path,
    expected: list[dict],
    *,
    restore_url: str | None = None,
    jobs: int = 2,
    accepted_errors: list[str] | None = None,
    work_dir: Path | None = None,
    stub_roles: Sequence[str] = (),
) -> RestoreReport:
    """Restore the archive into a throwaway database and compare every table's rows with the dump-time counts."""
    report = RestoreReport()
    started = time.monotonic()
    with scratch_database(restore_url, work_dir, stub_roles) as dsn:
        report.errors, report.accepted_errors = pg_restore_into(tools, archive, dsn, jobs, accepted_errors or [])
        report.seconds = time.monotonic() - started
        report.tables = restored_counts(dsn, expected, jobs)
    return report


