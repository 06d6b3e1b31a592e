"""The per-table tier written while pg_dump is still writing the full archive.

pg_dump's custom format writes the whole TOC first, then one data block per table, and at the end rewrites the
TOC in place with the blocks' offsets (PostgreSQL's src/bin/pg_dump/pg_backup_custom.c, `_CloseArchive`). So once the TOC is on disk
everything but the rows can be split (pg_restore over a copy of the header and TOC), and each table's rows can
be written as soon as its block is complete. pg_dump's compression keeps one core busy; the split runs beside
it instead of after it. Rows are copied out of the archive's own blocks, so the table tier holds exactly what the
full archive holds.

Files whose entries need other data blocks (large objects, in `global_objects.sql`) are written by pg_restore
over the finished archive. Archives this reader does not know raise UnsupportedArchive before anything is
written, and the caller splits the finished archive in one pg_restore pass instead.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.tiers.archive import (
    BLOCK_TABLE_DATA,
    COMPRESSION_GZIP,
    COMPRESSION_NONE,
    DATA_BLOCKS,
    OFFSET_NO_DATA,
    Archive,
    ArchiveReader,
    UnsupportedArchive,
    block_chunks,
    block_data,
    read_toc,
    skip_block,
)
from pg_backup_dagster.tiers.catalog import TableCatalog
from pg_backup_dagster.tiers.content import CopyDataDigest
from pg_backup_dagster.tiers.table_split import (
    SplitPlan,
    SplitResult,
    StreamSplitter,
    describe_split,
    plan_split,
    split_in_one_pass,
    stream_entries,
)

_POLL_SECONDS = 0.02


class GrowingFile:
    """A file another process is still writing: read(n) waits for n bytes until the writer is done."""

    def __init__(self, path: Path, writer_done: threading.Event) -> None:
        self.path = path
        self.writer_done = writer_done
        self.handle: BinaryIO | None = None

    def __enter__(self) -> GrowingFile:
        while self.handle is None:
            try:
                self.handle = self.path.open("rb")
            except FileNotFoundError:
                if self.writer_done.is_set():
                    raise UnsupportedArchive("the archive was never written") from None
                time.sleep(_POLL_SECONDS)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()

    def read(self, n: int) -> bytes:
        assert self.handle is not None
        parts, wanted = [], n
        while wanted > 0:
            finished = self.writer_done.is_set()  # before reading: bytes written before it was set are visible
            data = self.handle.read(wanted)
            if data:
                parts.append(data)
                wanted -= len(data)
            elif finished:
                break
            else:
                time.sleep(_POLL_SECONDS)
        return b"".join(parts)

    def tell(self) -> int:
        assert self.handle is not None
        return self.handle.tell()

    def seek(self, position: int) -> int:
        assert self.handle is not None
        return self.handle.seek(position)


@dataclass(frozen=True, slots=True)
class _TableRows:
    """Where one TABLE DATA entry's rows go, and the COPY statement that loads them."""

    relpath: str
    oid: int
    copy_stmt: bytes


@dataclass
class _Passes:
    """The plan cut three ways: rows from blocks, text from the TOC alone, text needing other data blocks.

    Only this is kept while the rows are copied, not the parsed TOC (a TOC can hold 100,000 entries).
    """

    table_data: dict[int, _TableRows]  # by TABLE DATA dump id
    toc_only: SplitPlan
    after_dump: SplitPlan
    int_size: int
    off_size: int
    compression: int
    toc_end: int


def _passes(plan: SplitPlan, archive: Archive) -> _Passes:
    by_id = {e.dump_id: e for e in archive.entries}
    table_data = {
        e.dump_id: _TableRows(relpath, by_id[e.dump_id].oid, by_id[e.dump_id].copy_stmt or b"")
        for e, relpath in plan.steps if e.desc == "TABLE DATA"
    }
    if any(not rows.copy_stmt for rows in table_data.values()):
        raise UnsupportedArchive("table data without a COPY statement (dumped with --inserts?)")
    needs_blocks = {
        relpath for e, relpath in plan.steps
        if e.dump_id not in table_data and by_id[e.dump_id].offset_state != OFFSET_NO_DATA
    }

    def subset(keep) -> SplitPlan:
        chosen = [(i, step) for i, step in enumerate(plan.steps) if keep(step)]
        return SplitPlan([s for _, s in chosen], plan.table_oids, sum(1 for i, _ in chosen if i < plan.deferred_start))

    return _Passes(
        table_data,
        subset(lambda s: s[1] not in needs_blocks and s[0].dump_id not in table_data),
        subset(lambda s: s[1] in needs_blocks),
        archive.int_size,
        archive.off_size,
        archive.compression,
        archive.toc_end,
    )


def _read_plan(stream: GrowingFile, catalog: TableCatalog) -> tuple[SplitPlan, _Passes]:
    """Read the TOC as soon as pg_dump has written it and plan every file; the parsed TOC is dropped here."""
    archive = read_toc(stream)
    if archive.compression not in (COMPRESSION_NONE, COMPRESSION_GZIP):
        raise UnsupportedArchive(f"compression method {archive.compression}")
    plan = plan_split(archive.entries, catalog)
    return plan, _passes(plan, archive)


@dataclass
class LiveSplit:
    """Follows an archive as pg_dump writes it; `follow` runs beside pg_dump, `finish` once it has ended."""

    out_dir: Path
    catalog: TableCatalog
    pg_restore: str
    env: dict[str, str] | None = None
    written: set[str] = field(default_factory=set)
    rows: dict[str, int] = field(default_factory=dict)
    digests: dict[str, CopyDataDigest] = field(default_factory=dict)  # data.sql -> its rows' content hash
    _plan: SplitPlan | None = None
    _passes: _Passes | None = None
    _splitter: StreamSplitter | None = None

    def follow(self, archive_path: Path, writer_done: threading.Event) -> None:
        """Split everything but large objects: the TOC's text as soon as it is on disk, then each table's rows."""
        with GrowingFile(archive_path, writer_done) as stream:
            self._plan, self._passes = _read_plan(stream, self.catalog)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._split_toc_text(stream)
                self._split_rows(stream)
            except BaseException:
                self.discard()
                raise

    def finish(self, archive_path: Path) -> SplitResult:
        """Write the files that need large-object data from the finished archive, then describe the split."""
        assert self._plan is not None and self._passes is not None and self._splitter is not None
        late = self._passes.after_dump
        if late.steps:
            splitter = StreamSplitter(self.out_dir, late.steps, late.deferred_start)
            try:
                stream_entries(archive_path, late.steps, splitter, self.pg_restore, self.env)
            finally:
                self.written |= splitter.written
            self.rows.update(splitter.rows)
        header_footer = (self._splitter.file_header(), self._splitter.file_footer())
        hashes = {relpath: digest.hexdigest() for relpath, digest in self.digests.items()}
        return describe_split(self.out_dir, self._plan, self.written, self.rows, header_footer, self.catalog, hashes)

    def discard(self) -> None:
        """Remove every file written so far: nothing may look like a finished split."""
        for relpath in self.written:
            (self.out_dir / relpath).unlink(missing_ok=True)

    def _split_toc_text(self, stream: GrowingFile) -> None:
        """pg_restore over header + TOC only; data.sql files stay open for their rows (no footer yet)."""
        assert self._passes is not None
        early = self._passes.toc_only
        position = stream.tell()
        stream.seek(0)
        toc = stream.read(self._passes.toc_end)
        stream.seek(position)
        self._splitter = StreamSplitter(
            self.out_dir, early.steps, early.deferred_start, unterminated=set(self._passes.table_data.values())
        )
        with tempfile.TemporaryDirectory(prefix="pgbd-toc-") as tmp:
            toc_copy = Path(tmp) / "toc.dump"
            toc_copy.write_bytes(toc)
            try:
                stream_entries(toc_copy, early.steps, self._splitter, self.pg_restore, self.env)
            finally:
                self.written |= self._splitter.written
        self.rows.update(self._splitter.rows)

    def _split_rows(self, stream: GrowingFile) -> None:
        """Read data blocks in the order pg_dump writes them; every table's block must come exactly once."""
        assert self._passes is not None and self._splitter is not None
        wanted = self._passes.table_data
        reader = ArchiveReader(stream, self._passes.int_size, self._passes.off_size)
        seen: set[int] = set()
        try:
            while block := stream.read(1):
                dump_id = reader.int()
                if block[0] == BLOCK_TABLE_DATA and dump_id in wanted:
                    if dump_id in seen:
                        raise BackupError(f"full archive holds the data of TOC entry {dump_id} twice")
                    seen.add(dump_id)
                    self._write_table_rows(reader, dump_id, wanted[dump_id], self._passes.compression)
                elif block[0] in DATA_BLOCKS:
                    skip_block(reader, block[0])
                else:
                    raise BackupError(f"full archive: unknown data block type {block[0]} at entry {dump_id}")
        except UnsupportedArchive:
            raise BackupError("full archive ends inside a data block: pg_dump did not finish it") from None
        missing = sorted(set(wanted) - seen)
        if missing:
            raise BackupError(f"full archive has no data for TOC entries {missing[:5]}: the per-table split is incomplete")

    def _write_table_rows(self, reader: ArchiveReader, dump_id: int, table: _TableRows, compression: int) -> None:
        """Append one table's COPY statement and rows to its data.sql, then close it with the footer; the rows'
        content hash is taken on the way (tiers/content.py)."""
        assert self._splitter is not None
        relpath = table.relpath
        path = self.out_dir / relpath
        started = relpath in self.written
        self._splitter.ensure_dir(path.parent)
        self.written.add(relpath)
        digest = self.digests.setdefault(relpath, CopyDataDigest())
        rows_before, what = digest.rows, f"TOC entry {dump_id}"
        with path.open("ab" if started else "wb") as out:
            if not started:
                out.write(self._splitter.file_header() + self._splitter.session_lines())
            out.write(b"\n--\n-- TOC entry %d (class 0 OID %d)\n-- Type: TABLE DATA\n--\n\n" % (dump_id, table.oid))
            out.write(table.copy_stmt)
            for data in block_data(block_chunks(reader), compression, what):
                out.write(data)
                digest.update(data)
            digest.end_block(what)
            out.write(self._splitter.file_footer())
        self.rows[relpath] = self.rows.get(relpath, 0) + digest.rows - rows_before


def split_archive(
    archive: Path, out_dir: Path, catalog: TableCatalog, *, pg_restore: str, env: dict[str, str] | None = None
) -> SplitResult:
    """Write `{schema}/tables/{table}/{schema,data,post,fk}.sql` and the objects files of a finished archive.

    Archives the live splitter reads (known versions, gzip or no compression) go through it; any other is
    split in one pg_restore pass.
    """
    done = threading.Event()
    done.set()
    live = LiveSplit(Path(out_dir), catalog, pg_restore, env)
    try:
        live.follow(Path(archive), done)
    except UnsupportedArchive:
        return split_in_one_pass(archive, out_dir, catalog, pg_restore=pg_restore, env=env)
    return live.finish(Path(archive))


