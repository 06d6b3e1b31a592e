"""The dump work of one backup, independent of Dagster: roles, and full + per-schema archives from one snapshot."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psycopg

from pg_backup_dagster.backup.failures import Diagnosis
from pg_backup_dagster.backup.row_counts import count_rows
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.backup.state import DumpedFile, DumpsState, TablesState
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import atomic_path, temp_path
from pg_backup_dagster.pg.profiles import filter_roles_sql, get_profile
from pg_backup_dagster.pg.source import SourceDatabase, abandon_query
from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER, quote_ident
from pg_backup_dagster.tiers.archive import UnsupportedArchive, read_archive
from pg_backup_dagster.tiers.catalog import TableCatalog, fetch_table_catalog
from pg_backup_dagster.tiers.content import archive_digests, output_settings
from pg_backup_dagster.tiers.paths import encode_segment
from pg_backup_dagster.tiers.schema_cut import copy_archive_for_schema
from pg_backup_dagster.tiers.table_tier import TableTierSplit


def app_name(backup_id: str, tier: str) -> str:
    """application_name a DBA sees in pg_stat_activity for our work."""
    return f"pg_backup_dagster/{backup_id}/{tier}"


def dump_roles(pg: SourceDatabase, staging: Staging, profile_name: str) -> DumpedFile:
    """pg_dumpall --roles-only without password hashes; stderr never lands in the file."""
    profile = get_profile(profile_name)
    started = time.monotonic()
    with atomic_path(staging.roles_file) as tmp:
        raw = tmp.with_suffix(".raw")
        try:
            with raw.open("wb") as out:
                pg.run_tool("pg_dumpall", list(profile.pg_dumpall_args), app_name(staging.backup_id, "roles"), stdout=out)
            tmp.write_text(filter_roles_sql(raw.read_text(encoding="utf-8"), profile), encoding="utf-8")
        finally:
            raw.unlink(missing_ok=True)
    return DumpedFile("roles.sql", staging.roles_file.stat().st_size, time.monotonic() - started)


def user_schemas(conn: psycopg.Connection, excluded: frozenset[str]) -> list[str]:
    rows = conn.execute(f"SELECT n.nspname FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER} ORDER BY 1").fetchall()
    return [r[0] for r in rows if r[0] not in excluded]


def exact_row_counts(conn: psycopg.Connection, excluded: frozenset[str]) -> list[dict]:
    """count(*) of every table with data of its own, inside the snapshot: what a restore must reproduce.

    Runs inside the caller's open transaction (the exported snapshot's).
    """
    tables = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'r' AND {SYSTEM_SCHEMA_FILTER} ORDER BY 1, 2"
    ).fetchall()
    wanted = [(schema, table) for schema, table in tables if schema not in excluded]
    counts = count_rows(conn, wanted)
    return [{"schema": s, "table": t, "rows": n} for (s, t), n in zip(wanted, counts, strict=True)]


TABLE_FILENODES_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {SYSTEM_SCHEMA_FILTER}
"""


def table_filenodes(conn: psycopg.Connection, excluded: Collection[str]) -> dict[int, tuple[str, str, int]]:
    """oid -> (schema, table, relfilenode) of every table as the snapshot sees it (run inside the snapshot)."""
    return {int(oid): (schema, table, int(node)) for oid, schema, table, node in conn.execute(TABLE_FILENODES_SQL)
            if schema not in excluded}


def check_no_rewrite(pg: SourceDatabase, before: dict[int, tuple[str, str, int]], app: str) -> None:
    """Fail when a table got a new relfilenode after the snapshot (TRUNCATE, ALTER TABLE … TYPE, CLUSTER,
    VACUUM FULL): a rewrite is not MVCC-safe, so a dump in an older snapshot reads the new file and may see
    none of the rows. Run right after pg_dump, which held every table's lock until it exited: a rewrite that
    committed before pg_dump locked the table is what this finds (one after it exited, moments ago, is too
    rare to tell apart and fails safe)."""
    if not before:
        return
    with pg.connect(app) as conn:
        now = dict(conn.execute("SELECT oid, relfilenode FROM pg_class WHERE oid = ANY(%s)",
                                [list(before)]).fetchall())
    changed = [before[oid] for oid in before if oid in now and int(now[oid]) != before[oid][2]]
    if changed:
        schema, table, _ = changed[0]
        more = f" (and {len(changed) - 1} more tables)" if len(changed) > 1 else ""
        raise pg.fail(
            f"table {schema}.{table}{more} was rewritten (TRUNCATE, ALTER TABLE … TYPE, CLUSTER or VACUUM FULL) by "
            "a transaction that committed after the backup's snapshot was taken; a rewrite is not MVCC-safe, so "
            "the dump may hold none of its rows: nothing is published, run the backup again"
        )


@contextmanager
def explained_failures(
    pg: SourceDatabase, excluded: Collection[str], conn: psycopg.Connection, backup_id: str
) -> Iterator[None]:
    """On any failure or interruption: stop our pg tools and our sessions still waiting on the server, then
    raise the failure by its cause (backup/failures.py) instead of the raw exception."""
    try:
        yield
    except BaseException as exc:
        pg.stop_tools()
        abandon_query(conn)  # interrupted while the snapshot session waited: cancel that wait on the server
        _terminate_leftovers(pg, conn, backup_id)
        if not isinstance(exc, psycopg.Error | BackupError):
            raise
        raise Diagnosis(pg, excluded, conn).explain(exc) from None


def _terminate_leftovers(pg: SourceDatabase, conn: psycopg.Connection, backup_id: str) -> None:
    """Sessions of this backup still blocked on a lock after its tools stopped (a pg_dump killed by SIGKILL
    leaves its server session waiting until the lock is released): terminate them."""
    try:
        if conn.closed or getattr(conn, "broken", False):
            with pg.connect(app_name(backup_id, "cleanup")) as fresh:
                pg.terminate_backends(fresh, app_name(backup_id, ""), waiting_only=True)
            return
        conn.rollback()
        pg.terminate_backends(conn, app_name(backup_id, ""), waiting_only=True)
        conn.rollback()
    except (psycopg.Error, BackupError):
        pass  # the server is out of reach: nothing more we can do from here


def _pg_dump(pg: SourceDatabase, out: Path, snapshot: str, app: str, extra: list[str]) -> float:
    started = time.monotonic()
    with atomic_path(out) as tmp:
        args = ["--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}", "--file", str(tmp),
                f"--lock-wait-timeout={pg.lock_timeout_ms}"]
        pg.run_tool("pg_dump", args + extra, app)
    return time.monotonic() - started


def _schema_file(staging: Staging, schema: str, seconds: float) -> DumpedFile:
    path = staging.schema_dump(encode_segment(schema))
    return DumpedFile(path.relative_to(staging.root).as_posix(), path.stat().st_size, seconds, schema)


def clear_dump_outputs(staging: Staging) -> None:
    """Forget archives from an earlier try of this backup id so nothing stale is published."""
    staging.full_dump.unlink(missing_ok=True)
    temp_path(staging.full_dump).unlink(missing_ok=True)  # the table split follows this file: never a stale one
    for old in staging.root.glob(f"*/*_schema_{staging.backup_id}.dump"):
        old.unlink()


def dump_full_and_schemas(
    pg: SourceDatabase,
    staging: Staging,
    profile_name: str,
    server_major: int,
    *,
    schema_tier: bool = True,
    table_tier: bool = True,
) -> tuple[DumpsState, TablesState | None]:
    """Export one snapshot; dump the whole database in it, then give every user schema its own archive.

    While pg_dump runs, the snapshot connection reads the catalog and counts rows, and the per-table tier is
    split out of the archive as pg_dump writes it (tiers/table_tier.py), so counts, catalog and every tier describe
    the same instant. Schema archives are cut out of the full archive (its entries and already-compressed
    data blocks), not dumped again: one more pg_dump per schema would read the whole catalog and compress all
    data a second time. pg_dump per schema, in the same snapshot, is the fallback for archive versions the
    cutter does not know. The table tier's description comes second (None without that tier).
    """
    started = time.monotonic()
    excluded = get_profile(profile_name).excluded_schemas
    clear_dump_outputs(staging)
    bid = staging.backup_id
    with pg.exported_snapshot(app_name(bid, "snapshot")) as (conn, snapshot), \
            explained_failures(pg, excluded, conn, bid):
        filenodes = table_filenodes(conn, excluded)
        schemas = user_schemas(conn, excluded) if schema_tier else []
        exclude_args = [f"--exclude-schema={quote_ident(s)}" for s in sorted(excluded)]
        dump_done = threading.Event()
        split = None
        with ThreadPoolExecutor(max_workers=2) as pool:
            full = pool.submit(_pg_dump, pg, staging.full_dump, snapshot, app_name(bid, "full"), exclude_args)
            full.add_done_callback(lambda _: dump_done.set())
            try:
                catalog = fetch_table_catalog(conn, exclude_schemas=set(excluded))
                split = TableTierSplit(pg.tools(), staging, catalog) if table_tier else None
                following = pool.submit(split.follow, dump_done) if split else None
                counts = exact_row_counts(conn, excluded)
                copy_settings = output_settings(conn)
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
                try:
                    full_seconds = full.result()
                except BackupError:
                    check_no_rewrite(pg, filenodes, app_name(bid, "check"))  # pg_dump's own error may be a symptom
                    raise
                check_no_rewrite(pg, filenodes, app_name(bid, "check"))
                if following is not None:
                    following.result()
            except BaseException:
                pg.stop_tools()  # before the pool waits for pg_dump: it may be blocked on a lock
                raise
        try:
            schema_files = cut_schema_archives(staging, schemas)
        except UnsupportedArchive:
            schema_files = dump_schema_archives(pg, staging, schemas, snapshot)
    tables = split.finish() if split is not None else None
    hashes = content_hashes(staging, catalog, tables)
    dumps = DumpsState(
        snapshot=snapshot,
        full=DumpedFile(staging.full_dump.name, staging.full_dump.stat().st_size, full_seconds),
        schemas=schema_files,
        row_counts=[{**row, "sha256": hashes.get((row["schema"], row["table"]))} for row in counts],
        copy_settings=copy_settings,
        database_size=size,
        server_major=server_major,
        pg_dump_version=pg.tools().version,
        seconds=time.monotonic() - started,
    )
    return dumps, tables


def content_hashes(staging: Staging, catalog: TableCatalog, tables: TablesState | None) -> dict[tuple[str, str], str]:
    """(schema, table) -> content hash of its rows: taken by the table split while it copied them, else by one
    read of the finished archive's data blocks (none for archives that reader does not know)."""
    if tables is not None:
        return {(t.schema, t.table): t.sha256 for t in tables.tables if t.sha256}
    try:
        digests = archive_digests(staging.full_dump)
    except UnsupportedArchive:
        return {}
    return {(info.schema, info.table): digests[info.oid][0] for info in catalog.tables if info.oid in digests}


def cut_schema_archives(staging: Staging, schemas: list[str]) -> list[DumpedFile]:
    """Each schema's archive cut out of the full one: same snapshot by construction, no load on the source."""
    archive = read_archive(staging.full_dump)
    files = []
    for schema in schemas:
        started = time.monotonic()
        with atomic_path(staging.schema_dump(encode_segment(schema))) as tmp:
            copy_archive_for_schema(staging.full_dump, schema, tmp, archive)
        files.append(_schema_file(staging, schema, time.monotonic() - started))
    return files


def dump_schema_archives(
    pg: SourceDatabase, staging: Staging, schemas: list[str], snapshot: str
) -> list[DumpedFile]:
    """One pg_dump per schema in the exported snapshot, in parallel under the connection budget."""
    app = app_name(staging.backup_id, "schema")
    with ThreadPoolExecutor(max_workers=max(1, pg.max_connections - 1)) as pool:
        per_schema = {
            schema: pool.submit(_pg_dump, pg, staging.schema_dump(encode_segment(schema)), snapshot, app,
                                [f"--schema={quote_ident(schema)}", "--strict-names"])
            for schema in schemas
        }
        return [_schema_file(staging, s, f.result()) for s, f in per_schema.items()]
