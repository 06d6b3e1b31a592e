"""Split one custom-format archive into standalone per-table SQL files, in one streaming pg_restore pass.

Why this way (benchmarks/README.md has the measurements): one pg_restore per table is quadratic in TOC size, so the
TOC is listed once, reordered so every file's entries are contiguous, and streamed once through
`pg_restore -v -O -x -L list -f -`. The stream is cut at the exact `-- TOC entry <id>` headers, accepted
only at top level (outside literals) and only in the requested order; every requested entry must be seen
exactly once, so a forged or missing header fails the split instead of misfiling SQL. Entries are
attributed by oid and dependency, never by the printed names. Table data is streamed, never buffered.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.sql_script import (
    ChunkReader,
    LineKind,
    ScriptScanner,
    is_restrict_line,
    setting_name,
)
from pg_backup_dagster.tiers.archive import TocEntry, parse_toc
from pg_backup_dagster.tiers.catalog import PG_CLASS, TableCatalog
from pg_backup_dagster.tiers.paths import encode_segment

KINDS = ("schema", "data", "post", "fk")
GLOBAL_OBJECTS = "global_objects.sql"
GLOBAL_OBJECTS_LATE = "global_objects_late.sql"

# Entries pg_restore never prints for `-O -x` without -C: leave them out of the list.
_SKIPPED = {"ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE", "DATABASE PROPERTIES", "ACL", "DEFAULT ACL"}
_SCHEMA_KIND = {"TABLE", "DEFAULT", "SEQUENCE", "SEQUENCE OWNED BY", "TABLE ATTACH"}
_DATA_KIND = {"TABLE DATA", "SEQUENCE SET"}
_FOLLOWERS = {"COMMENT", "SECURITY LABEL", "SEQUENCE SET", "SEQUENCE OWNED BY"}
_ATTACH = {"TABLE ATTACH", "INDEX ATTACH"}
_RELATION_VIEWS = {"VIEW", "MATERIALIZED VIEW", "MATERIALIZED VIEW DATA"}
# pg_restore emits these in a last pass after everything else, whatever their place in the list.
_DEFERRED_PASS = {"MATERIALIZED VIEW DATA", "EVENT TRIGGER"}
_HEADER = re.compile(rb"^-- TOC entry (\d+) \(class \d+ OID \d+\)\r?\n?$")
_SET_CONFIG = re.compile(rb"^SELECT pg_catalog\.set_config\('([A-Za-z_.]+)'")
# Settings pg_restore selects per object (its _selectTablespace / _selectTableAccessMethod), printed only when they
# change: they belong in front of the entries that use them, never in a file's header (a custom access method set
# for one table would otherwise be demanded by every file written after it). Name -> entry types that use it.
_ENTRY_SETTINGS = {
    b"default_table_access_method": frozenset({"TABLE", "MATERIALIZED VIEW"}),
    b"default_tablespace": frozenset({"TABLE", "MATERIALIZED VIEW", "INDEX", "CONSTRAINT"}),
}
# Transaction control pg_restore writes around large-object data: it would end the one transaction a restore
# of the split files runs in (psql -1), so a failed restore could leave objects behind. Dropped when top level.
_TRANSACTION_CONTROL = re.compile(rb"^(?:BEGIN|COMMIT|END|START\s+TRANSACTION)\s*;\s*$", re.I)


@dataclass
class TableDump:
    """One table's files (kind -> path relative to the backup dir), its dumped row count and content hash (the
    sha256 of its COPY data as pg_dump wrote it, tiers/content.py; None when the archive holds no data for it).

    `after` lists the tables (inheritance/partition parents) whose files must run before this one's in
    every restore phase; `post_refs` and `fk_refs` the other tables its post.sql and fk.sql name (rules,
    policies, triggers reading them; foreign keys' targets), which must exist when those files run.
    """

    schema: str
    table: str
    files: dict[str, str]
    rows: int = 0
    sha256: str | None = None
    after: list[tuple[str, str]] = field(default_factory=list)
    post_refs: list[tuple[str, str]] = field(default_factory=list)  # other tables its post.sql names
    fk_refs: list[tuple[str, str]] = field(default_factory=list)  # tables its foreign keys reference


@dataclass
class SplitResult:
    """Per-table files plus what belongs to no table.

    schema_objects and global_objects run before the tables (types, functions, sequences, extensions, …);
    global_objects_late after them: views, materialized views and anything else that depends on a table,
    in one file in the dump's own order, because such objects often read across schemas.
    """

    tables: list[TableDump]
    schema_objects: dict[str, str]
    global_objects: str | None
    global_objects_late: str | None = None


@dataclass(frozen=True, slots=True)
class _Target:
    """Where an entry goes: a table's file of some kind, a schema's / the global objects file, or nowhere."""

    table_oid: int | None = None
    kind: str = ""
    schema: str | None = None
    late: bool = False


_GLOBAL = _Target(kind="objects")
_DROP = _Target(kind="drop")  # objects of excluded (managed) schemas: not part of this tier
# Extensions and large objects are database-wide even when they name a schema.
_GLOBAL_CLASSES = {3079, 2613}


class _Attributor:
    """Decides, from oids and dependencies only, which file every TOC entry belongs to."""

    def __init__(self, entries: list[TocEntry], catalog: TableCatalog) -> None:
        self.catalog = catalog
        self.by_id = {e.dump_id: e for e in entries}
        self.excluded_tables = set(catalog.excluded_tables)
        self.excluded_schemas = set(catalog.excluded_schemas)
        self._targets: dict[int, _Target] = {}
        self.refs: dict[tuple[int, str], set[int]] = {}  # (table oid, "post"/"fk") -> other tables named

    def target(self, entry: TocEntry) -> _Target:
        cached = self._targets.get(entry.dump_id)
        if cached is None:
            self._targets[entry.dump_id] = _GLOBAL  # breaks dependency cycles
            cached = self._resolve(entry)
            if cached.table_oid is None and cached.kind == "objects":
                late = self._is_late(entry)
                cached = _Target(kind="objects", schema=None if late else cached.schema, late=late)
            elif cached.table_oid is not None and cached.kind in ("post", "fk"):
                cached = self._post_target(entry, cached)
            self._targets[entry.dump_id] = cached
        return cached

    def _post_target(self, entry: TocEntry, target: _Target) -> _Target:
        """What hangs on a table and needs a view, a materialized view or any late object (a rule writing to a
        view, a policy reading one, a trigger whose function is late) goes late too: post.sql runs before views
        exist. Otherwise note the other tables it names, which a restore of a subset must have."""
        deps = [self.by_id[d] for d in entry.deps if d in self.by_id]
        if any(dep.desc in _RELATION_VIEWS or self.target(dep).late for dep in deps):
            return _Target(kind="objects", late=True)
        others = {self.target(dep).table_oid for dep in deps} - {None, target.table_oid}
        if others:
            self.refs.setdefault((target.table_oid, target.kind), set()).update(others)  # type: ignore[arg-type]
        return target

    def _resolve(self, entry: TocEntry) -> _Target:
        if entry.desc in _ATTACH:
            return self._attach_target(entry)
        classid = entry.catalog_id or (PG_CLASS if entry.oid else 0)
        table = self.catalog.owner_of(classid, entry.oid) if entry.oid else None
        if table is not None:
            return _DROP if table in self.excluded_tables else _Target(table, self._kind(entry))
        schema = self.catalog.schema_of(classid, entry.oid) if entry.oid else None
        if schema is not None:
            return _DROP if schema in self.excluded_schemas else _Target(kind="objects", schema=schema)
        return _GLOBAL if entry.catalog_id in _GLOBAL_CLASSES else self._follow(entry)

    @staticmethod
    def _kind(entry: TocEntry) -> str:
        if entry.desc in _SCHEMA_KIND:
            return "schema"
        if entry.desc in _DATA_KIND:
            return "data"
        return "fk" if entry.desc == "FK CONSTRAINT" else "post"

    def _follow(self, entry: TocEntry) -> _Target:
        """COMMENT, SEQUENCE SET, … go where the one object they depend on went; ambiguous ones go global."""
        targets = {self.target(self.by_id[d]) for d in entry.deps if d in self.by_id}
        if len(targets) != 1:
            return _DROP if targets and targets <= {_DROP} else _GLOBAL
        (dep,) = targets
        if dep.table_oid is not None and entry.desc == "SEQUENCE SET":
            return _Target(dep.table_oid, "data")
        return dep

    def _attach_target(self, entry: TocEntry) -> _Target:
        """TABLE ATTACH / INDEX ATTACH belong to the deepest partition among what they depend on."""
        targets = {self.target(self.by_id[d]) for d in entry.deps if d in self.by_id}
        if _DROP in targets:
            return _DROP
        tables = {t.table_oid for t in targets if t.table_oid is not None}
        if not tables:
            return _GLOBAL
        deepest = max(tables, key=lambda oid: (self.catalog.depth(oid), oid))
        return _Target(deepest, "schema" if entry.desc == "TABLE ATTACH" else "post")

    def _is_late(self, entry: TocEntry) -> bool:
        """A non-table object that (transitively) depends on a table or a view restores after the tables.

        Views and materialized views are always late: their TOC dependencies name only schema and types,
        not the tables their query reads, so the dependency walk alone would place them too early.
        """
        if entry.desc in _RELATION_VIEWS:
            return True
        stack, seen = list(entry.deps), {entry.dump_id}
        while stack:
            dep_id = stack.pop()
            dep = self.by_id.get(dep_id)
            if dep is None or dep_id in seen:
                continue
            seen.add(dep_id)
            if dep.desc in _RELATION_VIEWS or self.target(dep).table_oid is not None:
                return True
            stack.extend(dep.deps)
        return False


def _table_relpath(schema: str, table: str, kind: str) -> str:
    return f"{encode_segment(schema)}/tables/{encode_segment(table)}/{kind}.sql"


def _objects_relpath(schema: str | None, late: bool) -> str:
    if schema is None:
        return GLOBAL_OBJECTS_LATE if late else GLOBAL_OBJECTS
    return f"{encode_segment(schema)}/objects.sql"


@dataclass
class SplitPlan:
    """The requested entries in stream order, each with its file, and the tables in restore order."""

    steps: list[tuple[TocEntry, str]]
    table_oids: list[int]
    deferred_start: int
    refs: dict[tuple[int, str], set[int]] = field(default_factory=dict)  # see _Attributor.refs


def plan_split(entries: list[TocEntry], catalog: TableCatalog) -> SplitPlan:
    """Order the requested entries so each file's entries are contiguous, parents' tables first."""
    attributor = _Attributor(entries, catalog)
    skipped_ids = {e.dump_id for e in entries if e.desc in _SKIPPED}
    wanted = [
        e
        for e in entries
        if e.desc not in _SKIPPED and not (e.desc in _FOLLOWERS and e.deps and set(e.deps) <= skipped_ids)
    ]
    table_first: dict[int, int] = {}
    buckets: dict[str, list[TocEntry]] = {}
    order_of: dict[str, tuple] = {}
    for position, entry in enumerate(wanted):
        target = attributor.target(entry)
        if target is _DROP or target.kind == "drop":
            continue
        if target.table_oid is not None:
            info = catalog.table(target.table_oid)
            assert info is not None
            relpath = _table_relpath(info.schema, info.table, target.kind)
            first = table_first.setdefault(target.table_oid, position)
            order_of[relpath] = (0, catalog.depth(target.table_oid), first, KINDS.index(target.kind))
        else:
            relpath = _objects_relpath(target.schema, target.late)
            order_of[relpath] = (1, target.late, target.schema is None, relpath)
        buckets.setdefault(relpath, []).append(entry)
    ordered = [(e, relpath) for relpath in sorted(buckets, key=order_of.__getitem__) for e in buckets[relpath]]
    by_id = {e.dump_id: e for e in entries}
    main = [s for s in ordered if not _deferred(s[0], by_id)]
    steps = main + [s for s in ordered if _deferred(s[0], by_id)]
    tables = sorted(table_first, key=lambda oid: (catalog.depth(oid), table_first[oid]))
    table_oids = [oid for oid in tables if _has_table_entry(buckets, catalog, oid)]
    return SplitPlan(steps, table_oids, len(main), attributor.refs)


def _deferred(entry: TocEntry, by_id: dict[int, TocEntry]) -> bool:
    """Entries pg_restore holds back to its final pass (matview data, event triggers and their comments)."""
    if entry.desc in _DEFERRED_PASS:
        return True
    return entry.desc in {"COMMENT", "SECURITY LABEL"} and any(
        by_id[d].desc == "EVENT TRIGGER" for d in entry.deps if d in by_id
    )


def _has_table_entry(buckets: dict[str, list[TocEntry]], catalog: TableCatalog, oid: int) -> bool:
    """Only tables whose CREATE TABLE is in the archive get files (not ones excluded from the dump)."""
    info = catalog.table(oid)
    assert info is not None
    return any(e.desc == "TABLE" for e in buckets.get(_table_relpath(info.schema, info.table, "schema"), []))


def _run_list(archive: Path, pg_restore: str, env: dict[str, str] | None) -> str:
    result = subprocess.run([pg_restore, "-l", "-v", str(archive)], capture_output=True, env=env, check=False)
    if result.returncode != 0:
        raise BackupError(f"pg_restore -l {archive.name} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode("utf-8", errors="surrogateescape")


class StreamSplitter:
    """Consumes the pg_restore stream and writes each requested entry to its file, checking the order."""

    def __init__(
        self,
        out_dir: Path,
        plan: list[tuple[TocEntry, str]],
        deferred_start: int | None = None,
        unterminated: set[str] | None = None,
    ) -> None:
        self.out_dir = out_dir
        self.unterminated = unterminated or set()  # files someone else finishes (rows appended later)
        self.plan = plan
        self.deferred_start = len(plan) if deferred_start is None else deferred_start
        self.next_index = 0
        self.scanner = ScriptScanner()
        self.preamble: list[bytes] = []
        self.restrict_key: bytes | None = None
        self.session: dict[bytes, bytes] = {}
        self.pending: list[bytes] = []
        self.current: BinaryIO | None = None
        self.current_path: str | None = None
        self.current_entry: TocEntry | None = None
        self.file_session: dict[bytes, bytes] = {}
        self.in_statement = False  # the last top-level code line did not end its statement
        self.written: set[str] = set()
        self.made_dirs: set[Path] = set()
        self.rows: dict[str, int] = {}
        self.hashes: dict[str, hashlib._Hash] = {}  # data.sql -> sha256 of its COPY data (tiers/content.py)

    def feed(self, reader: ChunkReader) -> None:
        """Route every line; COPY rows go straight to the current file, counted, never held."""
        while line := reader.readline():
            kind = self.scanner.feed(line)
            if kind is LineKind.TOP:
                self._top_line(line)
            else:
                self._content(line)
            if kind in (LineKind.COPY_DATA, LineKind.COPY_END):
                self.in_statement = False
            elif kind is LineKind.LITERAL or not (line.isspace() or line.startswith((b"--", b"\\"))):
                self.in_statement = not self.scanner.ends_statement
            if self.scanner.in_copy and kind is not LineKind.COPY_DATA:
                assert self.current is not None and self.current_path is not None
                sha = self.hashes.setdefault(self.current_path, hashlib.sha256())
                self.rows[self.current_path] += reader.copy_data(_tee(self.current.write, sha.update))

    def _top_line(self, line: bytes) -> None:
        header = _HEADER.match(line)
        if header:
            self._header(int(header[1]), line)
        elif is_restrict_line(line):
            if self.restrict_key is None and line.startswith(b"\\restrict"):
                self.restrict_key = line.split()[1] if len(line.split()) > 1 else None
        elif line.strip() in (b"", b"--") or setting_name(line) or _SET_CONFIG.match(line):
            self.pending.append(line)
        elif not self.in_statement and _TRANSACTION_CONTROL.match(line):
            pass  # files run inside the restore's own transaction
        elif (
            self.current_entry is not None
            and self.current_entry.desc == "SCHEMA"
            and line.startswith(b"CREATE SCHEMA ")
        ):
            self._content(b"CREATE SCHEMA IF NOT EXISTS " + line[len(b"CREATE SCHEMA ") :])
        else:
            self._content(line)

    def _content(self, line: bytes) -> None:
        if self.pending:
            pending, self.pending = self.pending, []
            for held in pending:
                self._emit(held)
        self._emit(line)

    def _emit(self, line: bytes) -> None:
        if self.current_entry is None:
            self.preamble.append(line)
        else:
            self._write(line)

    def _write(self, line: bytes) -> None:
        assert self.current is not None
        self.current.write(line)

    def _header(self, dump_id: int, line: bytes) -> None:
        expected = self.plan[self.next_index][0].dump_id if self.next_index < len(self.plan) else None
        if dump_id != expected:
            raise BackupError(
                f"pg_restore stream has TOC entry {dump_id} where entry {expected} was expected: "
                "the archive, its list or the stream was tampered with; no per-table files were trusted"
            )
        for held in self.pending:
            self._remember_setting(held)
        self.pending = []
        entry, relpath = self.plan[self.next_index]
        self.next_index += 1
        if relpath != self.current_path:
            self._open(relpath)
        self.current_entry = entry
        self._sync_session()
        self._write(b"\n--\n" + line)

    def _remember_setting(self, line: bytes) -> None:
        name = setting_name(line)
        match = _SET_CONFIG.match(line)
        if name is None and match:
            name = match.group(1).lower()
        if name is not None:
            self.session[name] = line

    def _sync_session(self) -> None:
        assert self.current_entry is not None
        for name, line in self.session.items():
            if name in _ENTRY_SETTINGS and self.current_entry.desc not in _ENTRY_SETTINGS[name]:
                continue
            if self.file_session.get(name) != line:
                self._write(line)
                self.file_session[name] = line

    def _open(self, relpath: str) -> None:
        self.close()
        reopening = relpath in self.written
        if reopening and self.next_index <= self.deferred_start:
            raise BackupError(f"per-table split would write {relpath} twice: the entry order is not contiguous")
        self.written.add(relpath)
        path = self.out_dir / relpath
        self.ensure_dir(path.parent)
        self.current = path.open("ab" if reopening else "wb")
        self.current_path = relpath
        self.file_session = {}
        self.current.write(self.file_header())
        self.rows.setdefault(relpath, 0)

    def file_header(self) -> bytes:
        """The lines that make a file standalone: psql's restrict key and the dump's session settings."""
        lines = [b"\\restrict " + self.restrict_key + b"\n"] if self.restrict_key else []
        lines += [line for line in self.preamble if _file_wide_setting(line)]
        return b"".join(lines) + b"\n"

    def ensure_dir(self, folder: Path) -> None:
        """mkdir once per folder: at 5,000 tables a mkdir per file was a fifth of the split's time."""
        if folder not in self.made_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            self.made_dirs.add(folder)

    def session_lines(self) -> bytes:
        """The settings in force at the end of the stream, for a file started outside it (not the per-object ones)."""
        return b"".join(line for name, line in self.session.items() if name not in _ENTRY_SETTINGS)

    def file_footer(self) -> bytes:
        return b"\n\\unrestrict " + self.restrict_key + b"\n" if self.restrict_key else b""

    def close(self) -> None:
        if self.current is not None:
            if self.current_path not in self.unterminated:
                self.current.write(self.file_footer())
            self.current.close()
            self.current = None

    def finish(self) -> None:
        self.close()
        if self.next_index != len(self.plan):
            missing = [str(e.dump_id) for e, _ in self.plan[self.next_index : self.next_index + 5]]
            raise BackupError(
                f"pg_restore stream ended before TOC entries {', '.join(missing)} "
                f"({len(self.plan) - self.next_index} missing): the per-table split is incomplete"
            )
        if not self.scanner.at_top:
            raise BackupError("pg_restore stream ended inside a literal or COPY data: the split is not trusted")


def _tee(*writers: Callable[[bytes], object]) -> Callable[[bytes], None]:
    """One write that goes to each of writers (the file and the content hash)."""
    def write(data: bytes) -> None:
        for writer in writers:
            writer(data)
    return write


def _file_wide_setting(line: bytes) -> bool:
    """A session setting every file repeats in its header (not one pg_restore selects per object)."""
    name = setting_name(line)
    return (name is not None and name not in _ENTRY_SETTINGS) or _SET_CONFIG.match(line) is not None


def _write_empty(path: Path, header: bytes, footer: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + footer)


def split_in_one_pass(
    archive: Path,
    out_dir: Path,
    catalog: TableCatalog,
    *,
    pg_restore: str,
    env: dict[str, str] | None = None,
) -> SplitResult:
    """The split as one `pg_restore -L` stream over a finished archive of any format version."""
    archive, out_dir = Path(archive), Path(out_dir)
    plan = plan_split(parse_toc(_run_list(archive, pg_restore, env)), catalog)
    out_dir.mkdir(parents=True, exist_ok=True)
    splitter = StreamSplitter(out_dir, plan.steps, plan.deferred_start)
    try:
        stream_entries(archive, plan.steps, splitter, pg_restore, env)
    except BaseException:
        for relpath in splitter.written:  # never leave files that look like a finished split
            (out_dir / relpath).unlink(missing_ok=True)
        raise
    hashes = {relpath: sha.hexdigest() for relpath, sha in splitter.hashes.items()}
    return describe_split(out_dir, plan, splitter.written, splitter.rows, (splitter.file_header(), splitter.file_footer()),
                          catalog, hashes)


def stream_entries(
    archive: Path,
    steps: list[tuple[TocEntry, str]],
    splitter: StreamSplitter,
    pg_restore: str,
    env: dict[str, str] | None,
) -> None:
    """Run the one pg_restore pass; stderr goes to a file so neither pipe can block the other."""
    with tempfile.TemporaryDirectory(prefix="pgbd-split-") as tmp:
        list_file = Path(tmp) / "toc.list"
        list_file.write_text("".join(e.line + "\n" for e, _ in steps), encoding="utf-8", errors="surrogateescape")
        with open(Path(tmp) / "stderr", "w+b") as err:
            args = [pg_restore, "-v", "-O", "-x", "-L", str(list_file), "-f", "-", str(archive)]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, env=env)
            assert proc.stdout is not None
            try:
                splitter.feed(ChunkReader(proc.stdout))
            except BaseException:
                proc.kill()
                raise
            finally:
                splitter.close()
                proc.stdout.close()
                code = proc.wait()
            err.seek(0)
            stderr = err.read().decode(errors="replace")
    if code != 0:
        errors = [ln for ln in stderr.splitlines() if "error" in ln.lower()] or stderr.splitlines()[-3:]
        raise BackupError(f"pg_restore of {archive.name} for the per-table split failed: {one_line(' '.join(errors))}")
    splitter.finish()


def describe_split(
    out_dir: Path,
    plan: SplitPlan,
    written: set[str],
    rows: dict[str, int],
    header_footer: tuple[bytes, bytes],
    catalog: TableCatalog,
    hashes: dict[str, str],
) -> SplitResult:
    """Describe what was written, creating the files a table or schema must always have."""
    header, footer = header_footer
    by_oid = {t.oid: t for t in catalog.tables}
    tables: list[TableDump] = []
    for oid in plan.table_oids:
        info = by_oid[oid]
        files: dict[str, str] = {}
        for kind in KINDS:
            relpath = _table_relpath(info.schema, info.table, kind)
            if relpath not in written and kind in ("schema", "data"):
                _write_empty(out_dir / relpath, header, footer)
            if relpath in written or kind in ("schema", "data"):
                files[kind] = relpath
        parents = [(by_oid[p].schema, by_oid[p].table) for p in info.parents if p in by_oid]
        refs = {kind: sorted((by_oid[r].schema, by_oid[r].table) for r in plan.refs.get((oid, kind), ()) if r in by_oid)
                for kind in ("post", "fk")}
        tables.append(TableDump(info.schema, info.table, files, rows.get(files["data"], 0), hashes.get(files["data"]),
                                parents, refs["post"] if "post" in files else [], refs["fk"] if "fk" in files else []))
    return SplitResult(
        tables=tables,
        schema_objects=_objects_files(out_dir, catalog.schemas, written, header, footer),
        global_objects=GLOBAL_OBJECTS if GLOBAL_OBJECTS in written else None,
        global_objects_late=GLOBAL_OBJECTS_LATE if GLOBAL_OBJECTS_LATE in written else None,
    )


def _objects_files(out_dir: Path, schemas: list[str], written: set[str], header: bytes, footer: bytes) -> dict[str, str]:
    """Every user schema gets its objects files, even when empty, so a schema restore can always find them."""
    files = {}
    for schema in schemas:
        relpath = _objects_relpath(schema, False)
        if relpath not in written:
            _write_empty(out_dir / relpath, header, footer)
        files[schema] = relpath
    return files
