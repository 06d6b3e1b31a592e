"""Restore a published backup, by tier, into a target database: the reason a backup exists.

Tiers: the whole database (pg_restore -j of the full archive), one schema (its own archive), any set of
tables (the per-table files, through psql in phases, all or nothing) and the roles (roles.sql). Every file
used is fetched through the storage, which checks its sha256 against the manifest and decrypts age files,
so a tampered or truncated file is never restored. psql-fed tiers are filtered for the target's version.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_dagster.backup.manifest import FileEntry, Manifest
from pg_backup_dagster.backup.signing import check_signature, source_verify_key
from pg_backup_dagster.config import RESTORE_TO_ENV, WORK_DIR_ENV, SourceConfig, setting
from pg_backup_dagster.errors import BackupError, one_line, redact, register_secret
from pg_backup_dagster.pg.sql import existing_tables, quote_ident, server_major_at
from pg_backup_dagster.pg.tools import PgTools, find_tools
from pg_backup_dagster.restore.roles import restore_roles_file
from pg_backup_dagster.restore.runner import pg_restore
from pg_backup_dagster.restore.tables import plan_table_restore, restore_tables
from pg_backup_dagster.restore.target import (
    OLD_DATABASE_CHOICES,
    conflict_message,
    conflicting_objects,
    database_name,
    drop_database,
    replace_database,
)
from pg_backup_dagster.storage import BackupRepository, open_source_storage
from pg_backup_dagster.storage.base import concurrently
from pg_backup_dagster.tiers.table_split import TableDump
from pg_backup_dagster.verify.content import ContentSpec
from pg_backup_dagster.verify.test_restore import compare_restored, differences_text, differing_rows

TARGET_ENV = RESTORE_TO_ENV
TIERS = ("full", "schema", "table", "roles")


def parse_table_name(text: str) -> tuple[str, str]:
    """`schema.table` as two exact names; either part may be double-quoted ("a.b"."c", "x""y") to hold dots."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            name, i = _quoted_part(text, i)
        else:
            end = text.find(".", i)
            end = n if end < 0 else end
            name = text[i:end]
            if '"' in name:
                raise BackupError(f"table name {text!r}: a quote may only open or close a whole name")
            i = end
        if not name:
            raise BackupError(f"table name {text!r}: empty schema or table name (expected SCHEMA.TABLE)")
        parts.append(name)
        if i == n:
            break
        if text[i] != ".":
            raise BackupError(f"table name {text!r}: expected '.' after a quoted name")
        i += 1
    if len(parts) != 2:
        raise BackupError(f'table name {text!r}: expected SCHEMA.TABLE; quote names that hold dots: "a.b"."c"')
    return parts[0], parts[1]


def _quoted_part(text: str, start: int) -> tuple[str, int]:
    out, i = [], start + 1
    while i < len(text):
        if text[i] == '"':
            if text[i + 1 : i + 2] == '"':
                out.append('"')
                i += 2
                continue
            return "".join(out), i + 1
        out.append(text[i])
        i += 1
    raise BackupError(f"table name {text!r}: unterminated quote")


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore and where. No schemas, tables or roles selected means the whole database."""

    backup_id: str
    target_dsn: str
    full: bool = False
    roles: bool = False
    schemas: tuple[str, ...] = ()
    tables: tuple[tuple[str, str], ...] = ()
    clean: bool = False
    jobs: int = 2
    create_db: bool = False
    force: bool = False
    old_database: str = "keep"
    terminate_sessions: bool = False

    @property
    def tiers(self) -> list[str]:
        """Tiers in the order they run: roles first (objects may name them), then the database objects."""
        chosen = ["roles"] if self.roles else []
        if self.full or not (self.roles or self.schemas or self.tables):
            chosen.append("full")
        chosen += ["schema"] * bool(self.schemas) + ["table"] * bool(self.tables)
        return chosen

    def validate(self) -> None:
        if self.full and (self.schemas or self.tables):
            raise BackupError("the full tier already holds every schema and table: drop --schema/--table or --full")
        if not 1 <= self.jobs <= 64:
            raise BackupError(f"--jobs {self.jobs}: must be between 1 and 64")
        if self.clean and self.tables:
            raise BackupError("--clean applies to pg_restore tiers (full, schema); drop or rename the tables first")
        if self.old_database not in OLD_DATABASE_CHOICES:
            raise BackupError(f"--old-database {self.old_database!r}: expected keep or drop")
        switching = self.clean and "full" in self.tiers and not self.create_db
        if (self.old_database != "keep" or self.terminate_sessions) and not switching:
            raise BackupError("--old-database and --terminate-sessions apply to --clean of the whole database")


@dataclass
class RestoreResult:
    """What a restore did, for the CLI and the Dagster job's metadata."""

    source: str
    backup_id: str
    target: str
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class OpenedBackup:
    """A published backup: where it is and its manifest."""

    source: SourceConfig
    storage: BackupRepository
    backup_id: str
    manifest: Manifest
    _by_path: dict[str, FileEntry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_path = {entry.path: entry for entry in self.manifest.files}

    def fetch(self, relpath: str, work: Path) -> Path:
        """A verified, decrypted local copy of one file (sha256 checked against the manifest)."""
        entry = self._by_path.get(relpath)
        if entry is None:
            location = self.storage.backup_url(self.source.name, self.backup_id)
            raise BackupError(f"{relpath!r} is not in the manifest of {location}")
        return self.storage.fetch_file(self.source.name, self.backup_id, entry, work / relpath)


def open_backup(source: SourceConfig, backup_id: str) -> OpenedBackup:
    """The backup `backup_id` (or `latest`) of a source, from its target.

    With a verify key configured, a manifest that is unsigned or not signed by that key is refused here, before
    any file is fetched (so neither verify nor restore reads, let alone runs, what it lists).
    """
    public_key = source_verify_key(source)  # a named but unset key variable fails before the target is read
    storage = open_source_storage(source, create=False)
    if backup_id == "latest":
        latest = storage.read_latest(source.name)
        if not latest:
            raise BackupError(f"source '{source.name}' has no latest backup at {storage.url}")
        backup_id = latest["backup_id"]
    if not storage.has_backup(source.name, backup_id):
        raise BackupError(f"no backup {backup_id!r} of source '{source.name}' at {storage.url}; "
                          "`pg-backup-dagster list` shows its backups")
    manifest = storage.read_manifest(source.name, backup_id)
    if public_key is not None:
        check_signature(manifest, public_key, source.name, backup_id)
    return OpenedBackup(source, storage, backup_id, manifest)


def work_dir() -> tempfile.TemporaryDirectory:
    """Where fetched files live during a restore (PG_BACKUP_WORK_DIR, else the system temp dir); always removed."""
    parent = setting(WORK_DIR_ENV)
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix="pgbd-restore-", dir=parent or None)


# --- the target -----------------------------------------------------------------------------------


def _endpoint(dsn: str) -> tuple[str, str, str]:
    params = conninfo_to_dict(dsn)
    host = params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
    if host.startswith("/"):
        host = "localhost"
    port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
    user = params.get("user") or os.environ.get("PGUSER") or ""
    dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return host.lower(), port, dbname


def _identity(dsn: str) -> tuple[int, str] | None:
    """(system_identifier, database) of a server, or None when it cannot be read (unreachable, no permission)."""
    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            row = conn.execute("SELECT (SELECT system_identifier FROM pg_control_system()), current_database()")
            return tuple(row.fetchone())  # type: ignore[return-value]
    except psycopg.Error:
        return None


def check_not_source(target_dsn: str, source_dsn: str | None) -> str | None:
    """Refuse a target that is the backup's own source database; returns a note when it cannot tell."""
    if not source_dsn:
        return "source database URL not set: could not check that the target is not the source"
    if _endpoint(target_dsn) == _endpoint(source_dsn):
        raise BackupError("the target is the source database itself (same host, port and database): pass --force")
    source_id = _identity(source_dsn)
    if source_id is not None and source_id == _identity(target_dsn):
        raise BackupError("the target is the source database itself (same server and database): pass --force")
    return None if source_id is not None else "source database unreachable: compared host, port and name only"


def create_target_database(target_dsn: str) -> None:
    """CREATE DATABASE for the target's name, connected to the server's `postgres` database."""
    name = conninfo_to_dict(target_dsn).get("dbname")
    if not name:
        raise BackupError("--create-db needs a database name in the target URL")
    try:
        with psycopg.connect(make_conninfo(target_dsn, dbname="postgres"), autocommit=True, connect_timeout=30) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        raise BackupError(f"--create-db: database {name!r} already exists on the target server; restore into it "
                          "without --create-db (with --clean to replace what it holds)") from None
    except psycopg.Error as exc:
        raise BackupError(f"--create-db: cannot create database {name!r}: {one_line(str(exc))}") from None


def _target_major(request: RestoreRequest) -> int:
    """The target server's major version; a missing target database names --create-db as the next step."""
    try:
        return server_major_at(request.target_dsn)
    except BackupError as exc:
        if not request.create_db and re.search(r'database ".*" does not exist', str(exc)):
            raise BackupError(f"{exc}; pass --create-db to create it") from None
        raise


def populated_schemas(dsn: str, schemas: list[str]) -> set[str]:
    """Those of `schemas` that exist in the target and hold a relation, type or function already."""
    query = (
        "SELECT nspname FROM pg_namespace n WHERE nspname = ANY(%s) AND ("
        "EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = n.oid) OR "
        "EXISTS (SELECT 1 FROM pg_type WHERE typnamespace = n.oid) OR "
        "EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = n.oid))"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute(query, [schemas]).fetchall()}


# --- the tiers ------------------------------------------------------------------------------------


def table_dumps(backup: OpenedBackup) -> dict[tuple[str, str], TableDump]:
    """The per-table tier as listed in the manifest (tier "table" files carry schema, table, kind)."""
    rows = {t.key: t.rows for t in backup.manifest.tables}
    dumps: dict[tuple[str, str], TableDump] = {}
    for entry in backup.manifest.entries("table"):
        key = (entry.schema or "", entry.table or "")
        dump = dumps.setdefault(key, TableDump(key[0], key[1], {}, rows.get(key, 0)))
        dump.files[entry.kind or ""] = entry.path
        dump.after = list(entry.after or []) or dump.after
        dump.post_refs = list(entry.post_refs or []) or dump.post_refs
        dump.fk_refs = list(entry.fk_refs or []) or dump.fk_refs
    return dumps


def _restore_tables(
    backup: OpenedBackup, request: RestoreRequest, tools: PgTools, major: int, work: Path, result: RestoreResult
) -> None:
    available = table_dumps(backup)
    missing = [t for t in request.tables if t not in available]
    if missing:
        raise BackupError(f"table {quote_ident(*missing[0])} is not in backup {backup.backup_id}")
    chosen = [available[t] for t in dict.fromkeys(request.tables)]
    needed_parents = {tuple(p) for t in chosen for p in t.after} - set(request.tables)
    named = {tuple(r) for t in chosen for r in [*t.post_refs, *t.fk_refs]} - set(request.tables)
    with psycopg.connect(request.target_dsn, autocommit=True) as conn:
        absent_parents = needed_parents - existing_tables(conn, needed_parents)
        in_target = existing_tables(conn, named) if named else set()
        present = existing_tables(conn, {(t.schema, t.table) for t in chosen})
    if present:
        names = ", ".join(quote_ident(*t) for t in sorted(present))
        raise BackupError(f"the target already has table(s) {names}; nothing was restored. Drop or rename them "
                          "first (--clean does not apply to tables), or restore into another database")
    if absent_parents:
        names = ", ".join(quote_ident(*p) for p in sorted(absent_parents))
        raise BackupError(f"restore the parent table(s) {names} too (--table), or create them in the target first")
    all_objects = {e.schema: e.path for e in backup.manifest.entries("schema_objects") if e.schema}
    phases = {e.phase: e.path for e in backup.manifest.entries("global_objects")}
    plan = plan_table_restore(  # every objects file, global objects; what the tables name but do not bring
        chosen, list(available.values()), all_objects, phases.get("early"), phases.get("late"),
        in_target=in_target, populated=populated_schemas(request.target_dsn, list(all_objects)),
    )
    objects = plan.schema_objects
    wanted = [rel for dump in plan.tables for rel in dump.files.values()]
    wanted += [rel for rel in [*objects.values(), plan.global_objects, plan.late_objects] if rel]
    concurrently(wanted, lambda rel: backup.fetch(rel, work), backup.storage.store.transfers)
    restore_tables(
        work, plan.tables, request.target_dsn, psql=tools.path("psql"), schema_objects=objects, server_major=major,
        global_objects=plan.global_objects, late_objects=plan.late_objects,
    )
    for dump in chosen:
        result.steps.append(f"table {quote_ident(dump.schema, dump.table)}: {dump.rows} rows")
    if objects:
        result.notes.append(f"restored the types, functions and sequences of empty schema(s) {', '.join(objects)}")
    result.notes += plan.notes + ([plan.left_out] if plan.left_out else [])


def _schema_entry(backup: OpenedBackup, schema: str) -> FileEntry:
    for entry in backup.manifest.entries("schema"):
        if entry.schema == schema:
            return entry
    known = ", ".join(sorted(e.schema or "" for e in backup.manifest.entries("schema")))
    raise BackupError(f"schema {schema!r} is not in backup {backup.backup_id} (schemas: {known})")


def _check_rows(backup: OpenedBackup, archive: Path, psql: str, dsn: str, jobs: int) -> str:
    """Every table of the manifest holds the rows it had at dump time: the same content hash where the backup has
    one (manifest format 2, what the checks compared), else the same count; a one-line error otherwise. Returns
    how the rows were compared, for the step line."""
    manifest = backup.manifest
    spec = ContentSpec.of_archive(archive, manifest.copy_settings, manifest.server_major)
    rows, by_count = compare_restored(dsn, [asdict(t) for t in manifest.tables], spec, psql, jobs)
    differing = differing_rows(rows)
    if differing:
        raise BackupError(f"the restored database differs from the backup: {differences_text(differing, 5)}")
    if spec is None or len(by_count) == len(rows):
        return "row counts match the manifest"
    counted = f"; {len(by_count)} by row count only" if by_count else ""
    return f"rows identical to the dump by content hash{counted}"


def _restore_full(
    backup: OpenedBackup, request: RestoreRequest, tools: PgTools, major: int, work: Path, result: RestoreResult,
    *, created: bool, log: Callable[[str], None],
) -> None:
    """The whole database: into a database we just created (-j, checked, dropped on failure by the caller),
    into an existing one by the safe switch (--clean), or into an existing one that holds none of the
    backup's objects in one transaction (all or nothing)."""
    rel = backup.manifest.entries("full")[0].path
    archive = backup.fetch(rel, work)

    def restore_into(dsn: str, *, single: bool) -> None:
        result.notes.extend(pg_restore(
            tools, archive, dsn, jobs=request.jobs, clean=False, server_major=major, single_transaction=single
        ))

    compared: list[str] = []

    def check(dsn: str) -> None:
        compared.append(_check_rows(backup, archive, tools.path("psql"), dsn, request.jobs))

    if created:
        restore_into(request.target_dsn, single=False)
        check(request.target_dsn)
        result.steps.append(f"full database from {rel} ({compared[0]})")
    elif request.clean:
        result.notes += replace_database(
            request.target_dsn,
            backup.backup_id,
            lambda dsn: restore_into(dsn, single=False),
            check,
            old_database=request.old_database,
            terminate_sessions=request.terminate_sessions,
            log=log,
        )
        result.steps.append(
            f"full database from {rel} into a new database ({compared[0]}), switched in under the target's name"
        )
    else:
        conflicts = conflicting_objects(request.target_dsn, archive)
        if conflicts:
            raise BackupError(conflict_message(
                f"the target database {database_name(request.target_dsn)!r}", conflicts,
                "Pass --clean to restore into a new database and switch it in once complete (the current one is "
                "kept as <name>_before_<backup_id>), or restore into an empty database.",
            ))
        restore_into(request.target_dsn, single=True)
        result.steps.append(f"full database from {rel} (one transaction)")


def _restore_schemas(
    backup: OpenedBackup, request: RestoreRequest, tools: PgTools, major: int, work: Path, result: RestoreResult,
    entries: list[FileEntry],
) -> None:
    """Each schema archive in one transaction; without --clean, a schema whose objects exist stops everything
    before anything is written."""
    archives = [(entry, backup.fetch(entry.path, work)) for entry in entries]
    if not request.clean:
        for entry, archive in archives:
            conflicts = conflicting_objects(request.target_dsn, archive)
            if conflicts:
                raise BackupError(conflict_message(
                    f"the target (schema {entry.schema!r})", conflicts,
                    "Pass --clean to drop and recreate them (in one transaction), or restore into another database.",
                ))
    for entry, archive in archives:
        result.notes += pg_restore(
            tools, archive, request.target_dsn, jobs=request.jobs, clean=request.clean, server_major=major,
            single_transaction=True,
        )
        result.steps.append(f"schema {entry.schema!r} from {entry.path} (one transaction)")


def restore_backup(
    source: SourceConfig, request: RestoreRequest, log: Callable[[str], None] = lambda _: None
) -> RestoreResult:
    """Restore the requested tiers of a published backup into request.target_dsn.

    Each tier is all or nothing (see the tier functions); a database created by --create-db is dropped again
    when anything fails, so a failed restore leaves the target as it was."""
    request.validate()
    register_secret(conninfo_to_dict(request.target_dsn).get("password"))
    started = time.monotonic()
    backup = open_backup(source, request.backup_id)
    result = RestoreResult(source.name, backup.backup_id, redact(request.target_dsn))
    if not request.force:
        source_dsn = source.database_url()
        if note := check_not_source(request.target_dsn, source_dsn):
            result.notes.append(note)
    schema_entries = [_schema_entry(backup, s) for s in dict.fromkeys(request.schemas)]
    tools = find_tools(source.pg_bin)
    created = False
    if request.create_db:
        create_target_database(request.target_dsn)
        created = True
        result.steps.append(f"created database {conninfo_to_dict(request.target_dsn).get('dbname')}")
    try:
        major = _target_major(request)
        if major < backup.manifest.server_major:
            result.notes.append(
                f"target runs PostgreSQL {major}, older than the source's {backup.manifest.server_major}"
            )
        with work_dir() as tmp:
            work = Path(tmp)
            for tier in request.tiers:
                log(f"restoring the {tier} tier of {backup.backup_id} into {result.target}")
                if tier == "roles":
                    loaded = restore_roles_file(tools, backup.fetch("roles.sql", work), request.target_dsn, major)
                    result.steps.append(f"roles ({len(loaded.existing)} already existed, one transaction)")
                    result.notes += loaded.notes
                elif tier == "full":
                    _restore_full(backup, request, tools, major, work, result, created=created, log=log)
                elif tier == "schema":
                    _restore_schemas(backup, request, tools, major, work, result, schema_entries)
                else:
                    _restore_tables(backup, request, tools, major, work, result)
    except BaseException as exc:
        if created:
            name = database_name(request.target_dsn)
            problem = drop_database(request.target_dsn, name)
            if isinstance(exc, BackupError):
                what = f"could not drop it: {problem}" if problem else "dropped it again"
                raise BackupError(f"{exc} (database {name} was created by --create-db: {what})") from None
        raise
    result.seconds = time.monotonic() - started
    return result
