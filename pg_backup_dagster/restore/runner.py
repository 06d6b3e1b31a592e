"""The one way backup content is restored into a database: pg_restore in passes, or through psql for older servers.

The test restore behind the checks, `verify --full-restore` and `restore` all run pg_restore here; they differ
only in how they read its errors (collect and match accepted patterns, or stop at the first harmful one).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from pg_backup_dagster.errors import BackupError, one_line, redact
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.sql import server_major_at
from pg_backup_dagster.pg.sql_script import copy_compatible
from pg_backup_dagster.pg.tools import PgTools
from pg_backup_dagster.restore.guard import restrict_lines
from pg_backup_dagster.tiers.archive import TocEntry, parse_toc

_PG_RESTORE_ERROR = re.compile(r"^pg_restore: error: (.*)$", re.M)


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
    """pg_restore -j into dsn, going on past errors; returns (unaccepted errors, accepted errors).

    This is the test restore's way: every error is collected, and only patterns the source lists are accepted.
    A server older than pg_restore gets the archive as SQL through the compatibility filter (one transaction).
    """
    options = ["--no-owner", "--no-privileges", *(extra or [])]
    major = server_major_at(dsn)
    if major < tools.major:  # pg_restore would send settings the older server rejects: SQL through our filter
        returncode, stderr, _ = _pg_restore_through_psql(tools, archive, dsn, options, major)
        errors = [redact(ln.strip()) for ln in stderr.splitlines() if "ERROR:" in ln or "error:" in ln]
    else:
        returncode, stderr = run_pg_restore(tools, archive, dsn, options, restore_passes(tools, archive, jobs))
        errors = [redact(e) for e in _PG_RESTORE_ERROR.findall(stderr)]
    if returncode != 0 and not errors:
        errors = [one_line(redact(stderr)) or f"pg_restore exited with {returncode}"]
    patterns = [re.compile(p) for p in accepted]
    accepted_hits = [e for e in errors if any(p.search(e) for p in patterns)]
    return [e for e in errors if e not in accepted_hits], accepted_hits


def run_pg_restore(
    tools: PgTools, archive: Path, dsn: str, options: list[str], passes: AbstractContextManager[list[list[str]]],
    *, stop_after_failed_pass: bool = False,
) -> tuple[int, str]:
    """The one place pg_restore runs against a database: each pass in turn; (first non-zero exit, all stderr)."""
    safe, env = child_env(dsn)
    argv = [tools.path("pg_restore"), *options, "--dbname", safe]
    returncode, stderr = 0, ""
    with passes as chosen_passes:
        for chosen in chosen_passes:
            done = subprocess.run([*argv, *chosen, str(archive)], env=env, capture_output=True, text=True)
            returncode, stderr = returncode or done.returncode, stderr + done.stderr
            if done.returncode and stop_after_failed_pass:
                break
    return returncode, stderr


# pg_restore --clean drops a partition's inherited primary key before its parent's, which PostgreSQL refuses;
# dropping the parent's key right after removes it anyway, so this one error of the drop phase is harmless
# (when the restore is not one transaction: inside one, any error rolls everything back).
_HARMLESS_CLEAN_ERRORS = ("cannot drop inherited constraint",)


def exit_text(program: str, returncode: int) -> str:
    """How a program ended, for an error message: `pg_restore killed by SIGKILL`, `psql exited with 3`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"{program} killed by {name}"
    return f"{program} exited with {returncode}"


def pg_restore(
    tools: PgTools, archive: Path, dsn: str, *, jobs: int, clean: bool, server_major: int,
    single_transaction: bool = False,
) -> list[str]:
    r"""pg_restore without owners or grants (the target's roles may differ); returns the harmless errors of --clean.

    The restore stops at the first error, except that a --clean restore outside a transaction must go on past
    the known harmless drop error (then every error is read and any other one fails the restore).
    `single_transaction` makes it all or nothing (and serial). A target older than pg_restore gets the
    archive as SQL through the compatibility filter and psql (pg_restore 18 sends `SET transaction_timeout`
    even to servers that do not know it), always in one transaction, guarded by our own `\restrict`.
    """
    options = ["--no-owner", "--no-privileges", *(["--clean", "--if-exists"] if clean else [])]
    tolerant = clean and not single_transaction
    if server_major < tools.major:
        returncode, stderr, program = _pg_restore_through_psql(tools, archive, dsn, options, server_major)
        tolerant = False
    else:
        program = "pg_restore"
        if single_transaction:
            passes: AbstractContextManager[list[list[str]]] = contextlib.nullcontext([["--single-transaction"]])
        elif clean:  # --clean keeps one pass, so its drops stay in dependency order
            passes = contextlib.nullcontext([[f"--jobs={jobs}"]])
        else:
            passes = restore_passes(tools, archive, jobs)
        returncode, stderr = run_pg_restore(
            tools, archive, dsn, [*options, *([] if tolerant else ["--exit-on-error"])], passes,
            stop_after_failed_pass=not tolerant,
        )
    errors = [ln for ln in stderr.splitlines() if "error:" in ln or "ERROR:" in ln or "FATAL:" in ln]
    harmless = [e for e in errors if tolerant and any(h in e for h in _HARMLESS_CLEAN_ERRORS)]
    harmful = [e for e in errors if e not in harmless]
    if harmful or (returncode != 0 and not harmless):
        cause = [exit_text(program, returncode)] if returncode < 0 else []
        detail = " ".join([*cause, *harmful[:3]]) or one_line(stderr) or exit_text(program, returncode)
        raise BackupError(f"pg_restore of {archive.name} failed: {one_line(redact(detail))}")
    return [one_line(e) for e in harmless]


def _pg_restore_through_psql(
    tools: PgTools, archive: Path, dsn: str, options: list[str], server_major: int
) -> tuple[int, str, str]:
    r"""pg_restore -f - | copy_compatible | psql, in one transaction, stopping at the first error, under our own
    `\restrict`: (exit code, both programs' stderr, the program that failed). Data is never buffered.

    The archive's own `\restrict` lines are dropped (older psql rejects them) and ours replaces them, so a
    meta-command inside a TOC entry (`\! cmd`) is refused by psql instead of run."""
    safe, env = child_env(dsn)
    psql = tools.path("psql")
    head, tail = restrict_lines(psql)
    with tempfile.TemporaryFile() as dump_err, tempfile.TemporaryFile() as load_err:
        dump = subprocess.Popen(
            [tools.path("pg_restore"), *options, "--single-transaction", "-f", "-", str(archive)],
            stdout=subprocess.PIPE,
            stderr=dump_err,
        )
        load = subprocess.Popen(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull, "-d", safe, "-f", "-"],
            stdin=subprocess.PIPE,
            stderr=load_err,
            env=env,
        )
        assert dump.stdout is not None and load.stdin is not None
        try:
            load.stdin.write(head)
            copy_compatible(dump.stdout, load.stdin.write, server_major)
            if dump.wait() == 0:  # psql commits only what pg_restore wrote in full
                load.stdin.write(tail)
        except BrokenPipeError:
            pass  # psql stopped at an error: its stderr says which
        except BaseException:
            load.kill()
            dump.kill()
            raise
        finally:
            dump.stdout.close()
            if dump.poll() is not None and dump.returncode != 0 and load.poll() is None:
                load.kill()  # pg_restore died: psql must not commit what it received so far
            with contextlib.suppress(BrokenPipeError):
                load.stdin.close()
            load_code, dump_code = load.wait(), dump.wait()
        dump_err.seek(0)
        load_err.seek(0)
        stderr = dump_err.read().decode(errors="replace") + load_err.read().decode(errors="replace")
    if dump_code:
        return dump_code, stderr, "pg_restore"
    return load_code, stderr, "psql"
