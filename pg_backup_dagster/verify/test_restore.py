"""Test restores: prove an archive restores and reproduces the rows taken at dump time (exact counts, and content
hashes where the backup recorded them), with sound B-tree indexes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_dagster.backup.row_counts import COUNT_BATCH, count_rows
from pg_backup_dagster.errors import BackupError, first_of, one_line, register_secret
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster.pg.sql import existing_tables
from pg_backup_dagster.pg.tools import PgTools
from pg_backup_dagster.restore.runner import pg_restore_into
from pg_backup_dagster.verify.amcheck import AmcheckReport, check_btree_indexes
from pg_backup_dagster.verify.check_server import CheckServer, archive_needs
from pg_backup_dagster.verify.content import ContentSpec, TableContent, not_comparable, restored_content


@dataclass
class RestoreReport:
    """What a test restore found: where it ran, duration, per-table counts and content, the tables compared by
    count only (and why), amcheck's findings, and why it failed if it did."""

    server: str = ""
    seconds: float = 0.0
    tables: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    accepted_errors: list[str] = field(default_factory=list)
    not_compared: dict[str, str] = field(default_factory=dict)  # "schema.table" -> why only its count was compared
    amcheck: AmcheckReport | None = None

    @property
    def differing(self) -> list[dict]:
        return differing_rows(self.tables)

    @property
    def passed(self) -> bool:
        return not self.errors and not self.differing and not (self.amcheck and self.amcheck.corrupt)


def create_stub_roles(conn: psycopg.Connection, roles: Sequence[str]) -> None:
    """NOLOGIN stand-ins for platform roles (Supabase's anon, authenticated, …) that policies name."""
    for role in roles:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


@contextmanager
def scratch_database(
    server: CheckServer, work_dir: Path | None = None, stub_roles: Sequence[str] = ()
) -> Iterator[str]:
    """A throwaway database: on the configured restore server, else on an ephemeral server from the chosen
    build; always dropped.

    The ephemeral server's own empty `postgres` database is the target: it is what CREATE DATABASE would copy
    from template1 anyway, and the whole server goes away afterwards."""
    restore_url = server.restore_url
    if not restore_url:
        with ephemeral_server(parent=work_dir, bin_dir=server.bin_dir) as local:
            with psycopg.connect(local.dsn(), autocommit=True) as conn:
                create_stub_roles(conn, stub_roles)
            yield local.dsn()
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


IDENTICAL, DIFFERS, COUNT_ONLY = "identical", "differs", "count only"


def differing_rows(rows: list[dict]) -> list[dict]:
    """The compared tables whose restored rows are not the dumped ones: another count, or another content hash."""
    return [r for r in rows if r["expected"] != r["restored"] or r.get("content") == DIFFERS]


def differences_text(rows: list[dict], shown: int = 10) -> str:
    """Differing tables in one line: another count, or the same count with other content."""

    def one(r: dict) -> str:
        if r["expected"] != r["restored"]:
            return f"{r['schema']}.{r['table']} (expected {r['expected']}, restored {r['restored']})"
        return f"{r['schema']}.{r['table']} (rows differ in content, same count {r['restored']})"

    return first_of([one(r) for r in rows], shown)


def compare_restored(
    dsn: str, expected: list[dict], spec: ContentSpec | None, psql: str, workers: int = 1
) -> tuple[list[dict], dict[str, str]]:
    """Each expected table's restored rows: content hash and count from one COPY where the backup has a hash it
    can be compared with, exact count(*) otherwise; and why each of those was compared by count only."""
    if spec is None:
        return [{**row, "content": COUNT_ONLY} for row in restored_counts(dsn, expected, workers)], {}
    reasons = not_comparable(dsn, spec, expected)
    hashed = [(r["schema"], r["table"]) for r in expected if (r["schema"], r["table"]) not in reasons]
    with psycopg.connect(dsn, autocommit=True) as conn:
        present = existing_tables(conn, hashed)
    read = [key for key in hashed if key in present]  # a missing table: -1, like its count
    contents = dict(zip(read, restored_content(dsn, spec, read, psql, workers), strict=True))
    by_count = [r for r in expected if (r["schema"], r["table"]) in reasons]
    counted = {(r["schema"], r["table"]): r for r in restored_counts(dsn, by_count, workers)} if by_count else {}
    rows = []
    for row in expected:
        key = (row["schema"], row["table"])
        if key in reasons:
            rows.append({**counted[key], "content": COUNT_ONLY})
        else:
            found = contents.get(key, TableContent(None, -1))
            rows.append({"schema": key[0], "table": key[1], "expected": row["rows"], "restored": found.rows,
                         "content": IDENTICAL if found.sha256 == row["sha256"] else DIFFERS})
    return rows, {f"{schema}.{table}": why for (schema, table), why in reasons.items()}


def missing_extensions(archive: Path, dsn: str) -> list[str]:
    """Extensions the archive creates that the server at dsn cannot (not installed there), found before any restore
    so the check names them instead of failing halfway (a configured server is checked live: no files to read)."""
    wanted = {need.name for need in archive_needs(archive) if need.kind == "extension"}
    if not wanted:
        return []
    with psycopg.connect(dsn, autocommit=True) as conn:
        available = {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions")}
    return sorted(wanted - available)


def restore_and_compare(
    tools: PgTools,
    archive: Path,
    expected: list[dict],
    *,
    server: CheckServer,
    jobs: int = 2,
    accepted_errors: list[str] | None = None,
    work_dir: Path | None = None,
    stub_roles: Sequence[str] = (),
    content: ContentSpec | None = None,
    amcheck: bool = False,
    heapallindexed: bool = False,
) -> RestoreReport:
    """Restore the archive into a throwaway database on `server` (see verify/check_server.py) and compare every
    table's rows with the dump-time counts, and with the content hashes when `content` is given (expected rows then
    carry `sha256`); with `amcheck`, check every B-tree index of the restored database (`heapallindexed`: also that
    every row has its index entries, see verify/amcheck.py)."""
    report = RestoreReport(server=server.label)
    started = time.monotonic()
    with scratch_database(server, work_dir, stub_roles) as dsn:
        if server.restore_url and (missing := missing_extensions(archive, dsn)):
            report.errors = [
                f"the restore server (PG_BACKUP_RESTORE_URL) lacks extension(s) {', '.join(missing)} that the backup "
                "holds: install them there, point PG_BACKUP_RESTORE_URL at a server built like production, or unset "
                "it to let the check choose an installed server build"
            ]
            return report
        report.errors, report.accepted_errors = pg_restore_into(tools, archive, dsn, jobs, accepted_errors or [])
        report.seconds = time.monotonic() - started
        # amcheck beside the rows' COPYs (both only read the restored database), which leave a core partly idle: at
        # 500 tables on 2 cores it added 0.13-0.32 s there against 0.48 s after them (benchmarks/README.md)
        with ThreadPoolExecutor(max_workers=1) as pool:
            indexes = (pool.submit(check_btree_indexes, dsn, heapallindexed, max(1, jobs // 2))
                       if amcheck and not report.errors else None)
            report.tables, report.not_compared = compare_restored(dsn, expected, content, tools.path("psql"), jobs)
            report.amcheck = indexes.result() if indexes else None
    return report


