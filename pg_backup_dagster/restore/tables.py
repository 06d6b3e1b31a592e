"""Restore any set of tables from the per-table tier with psql, in phases that make any subset restorable.

Order: schemas, global objects, the schemas' objects (types, functions the tables need), every schema.sql,
every data.sql, every post.sql, every fk.sql, then late objects (views …) when given. Within a phase,
parents (partitioned/inherited tables) come before their children. Everything goes through one
`psql -X -1 -v ON_ERROR_STOP=1` reading our stdin, so the restore is all or nothing and each line can be
filtered for the target (sql_compat). psql reports stdin line numbers; they are mapped back to the file.
"""

from __future__ import annotations

import bisect
import io
import re
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.sql import quote_ident, server_major_at
from pg_backup_dagster.pg.sql_script import copy_compatible
from pg_backup_dagster.restore.guard import restrict_lines
from pg_backup_dagster.tiers.table_split import KINDS, TableDump

_PSQL_ERROR = re.compile(r"psql:<stdin>:(\d+):\s*(.*)")


def order_tables(tables: list[TableDump]) -> list[TableDump]:
    """Parents before children (stable otherwise): partitions attach to, and inherit from, their parents."""
    by_name = {(t.schema, t.table): t for t in tables}
    ordered: list[TableDump] = []
    placed: set[tuple[str, str]] = set()

    def place(table: TableDump, path: tuple[tuple[str, str], ...]) -> None:
        key = (table.schema, table.table)
        if key in placed or key in path:
            return
        for parent in table.after:
            if tuple(parent) in by_name:
                place(by_name[tuple(parent)], (*path, key))  # type: ignore[index]
        placed.add(key)
        ordered.append(table)

    for table in tables:
        place(table, ())
    return ordered


@dataclass
class TableRestorePlan:
    """What a restore of some tables runs, and one line saying what it leaves out (empty when nothing)."""

    tables: list[TableDump]
    schema_objects: dict[str, str]
    global_objects: str | None
    late_objects: str | None
    left_out: str = ""
    notes: list[str] = field(default_factory=list)


def plan_table_restore(
    chosen: list[TableDump],
    tier_tables: list[TableDump],
    schema_objects: dict[str, str],
    global_objects: str | None,
    late_objects: str | None,
    *,
    in_target: set[tuple[str, str]] = frozenset(),  # type: ignore[assignment]
    populated: set[str] = frozenset(),  # type: ignore[assignment]
) -> TableRestorePlan:
    """What restoring `chosen` needs, besides their own files.

    Objects files hold types, functions, sequences and schemas, never tables, so every one restores alone:
    global_objects.sql (extensions, access methods, large objects) and the objects.sql of every schema run,
    because a table's columns, defaults and checks may use any schema's types and functions. Into a target where
    some of the backup's schemas already hold objects (`populated`), their objects files are skipped, and so is
    global_objects.sql (it would collide with what is there). `in_target` are the tables the target already has.

    What the chosen tables name but do not bring: a post.sql naming a table (a rule or policy reading it) that is
    neither chosen nor in the target fails the plan, naming it; a foreign key whose target is missing has its
    fk.sql left out; views and what reads them (global_objects_late.sql) run only when every table is chosen.
    """
    names = {(t.schema, t.table) for t in chosen}
    present = names | set(in_target)
    needed = sorted({tuple(r) for t in chosen for r in t.post_refs} - present)
    if needed:
        shown = ", ".join(quote_ident(*r) for r in needed[:5])  # type: ignore[misc]
        raise BackupError(
            f"the rules, policies or triggers of the chosen tables read {shown}: restore it too (--table), or create "
            "it in the target first"
        )
    tables, left_out = [], []
    for table in chosen:
        missing = sorted({tuple(r) for r in table.fk_refs} - present)
        if missing and "fk" in table.files:
            table = replace(table, files={k: v for k, v in table.files.items() if k != "fk"})
            targets = ", ".join(quote_ident(*r) for r in missing)  # type: ignore[misc]
            left_out.append(f"the foreign keys of {quote_ident(table.schema, table.table)} (to {targets})")
        tables.append(table)
    every_table = names >= {(t.schema, t.table) for t in tier_tables}
    late = late_objects if every_table and not populated else None
    if late_objects and not late:
        left_out.append(f"views, materialized views and what reads them ({late_objects})")
    objects = {schema: rel for schema, rel in schema_objects.items() if schema not in populated}
    notes = []
    if populated and global_objects:
        notes.append(f"{global_objects} not run: the target already holds schema(s) {', '.join(sorted(populated))}")
    line = ""
    if left_out:
        line = ("left out: " + "; ".join(left_out) + ": add the tables they name (--table), or restore them "
                "afterwards from their files")
    return TableRestorePlan(tables, objects, None if populated else global_objects, late, line, notes)


@dataclass
class _Source:
    """One piece of the psql input: a file of the backup, or generated SQL with a label."""

    label: str
    path: Path | None = None
    text: bytes = b""


def restore_plan(
    backup_dir: Path,
    tables: list[TableDump],
    schema_objects: dict[str, str] | None = None,
    global_objects: str | None = None,
    late_objects: str | None = None,
) -> list[_Source]:
    """The phases as a list of sources, in the order psql must read them."""
    ordered = order_tables(tables)
    schemas = list(dict.fromkeys([t.schema for t in ordered] + list(schema_objects or {})))
    # Our own text is UTF-8: say so, or a LATIN1 target reads the names as LATIN1 (each backup file sets its own).
    create = "SET client_encoding = 'UTF8';\n" + "".join(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(s)};\n" for s in schemas)
    sources = [_Source("CREATE SCHEMA", text=create.encode())]
    sources += [_Source(global_objects, backup_dir / global_objects)] if global_objects else []
    sources += [_Source(rel, backup_dir / rel) for rel in (schema_objects or {}).values()]
    for kind in KINDS:
        sources += [_Source(t.files[kind], backup_dir / t.files[kind]) for t in ordered if kind in t.files]
    sources += [_Source(late_objects, backup_dir / late_objects)] if late_objects else []
    missing = [s.label for s in sources if s.path is not None and not s.path.is_file()]
    if missing:
        raise BackupError(f"per-table restore: {len(missing)} file(s) missing in {backup_dir}, first {missing[0]}")
    return sources


class _LineMap:
    """Maps psql's stdin line numbers back to the file that held the line."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.labels: list[str] = []
        self.lines = 0

    def begin(self, label: str) -> None:
        self.starts.append(self.lines + 1)
        self.labels.append(label)

    def label_of(self, line_number: int) -> tuple[str, int]:
        index = max(bisect.bisect_right(self.starts, line_number) - 1, 0)
        return self.labels[index], line_number - self.starts[index] + 1


def _feed(stdin: BinaryIO, sources: list[_Source], server_major: int, guard: tuple[bytes, bytes],
          line_map: _LineMap) -> None:
    """Write every source, filtered for the target, wrapped in one \\restrict of our own."""
    stdin.write(guard[0])
    line_map.lines = 1
    for source in sources:
        line_map.begin(source.label)
        if source.path is None:
            line_map.lines += copy_compatible(io.BytesIO(source.text), stdin.write, server_major)
            continue
        with source.path.open("rb") as handle:
            line_map.lines += copy_compatible(handle, stdin.write, server_major)
    stdin.write(guard[1])


def restore_tables(
    backup_dir: Path,
    tables: list[TableDump],
    dsn: str,
    *,
    psql: str,
    env: dict[str, str] | None = None,
    schema_objects: dict[str, str] | None = None,
    server_major: int | None = None,
    global_objects: str | None = None,
    late_objects: str | None = None,
) -> None:
    """Restore `tables` (and the given schemas' objects) into the database at dsn, all or nothing.

    Restoring a partition or an inheriting table needs its parents in `tables` too. `global_objects`
    (extensions, large objects, …) runs before the schemas' objects; pass `late_objects` (views, …) only
    when every table they read is restored as well.
    """
    sources = restore_plan(Path(backup_dir), tables, schema_objects, global_objects, late_objects)
    major = server_major if server_major is not None else server_major_at(dsn)
    conninfo, environment = child_env(dsn, env)
    args = [psql, "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f", "-"]
    line_map = _LineMap()
    guard = restrict_lines(psql)  # refuses a psql that cannot be guarded, before anything runs
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=environment)
        assert proc.stdin is not None
        try:
            _feed(proc.stdin, sources, major, guard, line_map)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # psql stopped on an error: its message says why
        except BaseException:
            proc.kill()
            raise
        finally:
            code = proc.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", errors="replace")
    if code != 0:
        raise BackupError(_failure_message(stderr, line_map))


def _failure_message(stderr: str, line_map: _LineMap) -> str:
    """psql's first error, naming the backup file (and line in it) it came from."""
    for line in stderr.splitlines():
        match = _PSQL_ERROR.match(line)
        if match and ("ERROR" in match.group(2) or "FATAL" in match.group(2) or "error" in match.group(2)):
            label, file_line = line_map.label_of(int(match.group(1)))
            return f"per-table restore failed in {label} line {file_line}: {match.group(2)}"
    return f"per-table restore failed: psql: {one_line(stderr) or 'no message'}"
