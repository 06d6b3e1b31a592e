"""What each check verifies, without Dagster: restore the full archive, read every schema archive, restore the
per-table files, load the roles. Each returns a CheckOutcome the Dagster check and the manifest record."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pg_backup_dagster.backup.manifest import tables_phrase
from pg_backup_dagster.backup.state import CheckRecord, DumpsState, TablesState
from pg_backup_dagster.backup.step import StepContext
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.errors import BackupError, first_of, one_line
from pg_backup_dagster.files import throughput
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster.pg.profiles import roles_sql_has_password_hash
from pg_backup_dagster.pg.sql import server_major_at
from pg_backup_dagster.restore.roles import restore_roles_file
from pg_backup_dagster.restore.tables import plan_table_restore, restore_tables
from pg_backup_dagster.tiers.table_split import TableDump
from pg_backup_dagster.verify.check_server import CheckServer, NoCheckServer, choose_check_server
from pg_backup_dagster.verify.content import ContentSpec
from pg_backup_dagster.verify.test_restore import (
    IDENTICAL,
    RestoreReport,
    compare_restored,
    differences_text,
    differing_rows,
    restore_and_compare,
    restored_counts,
    scratch_database,
)

DEFAULT_TABLE_SAMPLE_LIMIT = 1000
NO_OWN_ROWS = "no rows of its own"  # a partitioned table's rows are its partitions'


@dataclass
class CheckOutcome:
    """A check's verdict, a one-line description, what the UI shows (`row_counts`: expected vs restored rows per
    table), the JSON kept in the manifest, and a warning that does not fail it (a restore slower than its budget).
    `unverified`: why the check could not run, when the source publishes anyway (a warning, not a failure)."""

    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    unverified: str | None = None
    warning: str | None = None

    def record(self) -> CheckRecord:
        return CheckRecord(passed=self.passed, description=self.description, seconds=round(self.seconds, 3),
                           unverified=self.unverified, **({"warning": self.warning} if self.warning else {}),
                           **self.details)


def _check_server(step: StepContext, source: SourceConfig) -> CheckServer:
    """The server this backup's restores go to (verify/check_server.py), or NoCheckServer before any restore."""
    major = step.staging.load(DumpsState).server_major
    return choose_check_server(step.staging.full_dump, source.restore_url(), major)


def _no_check_server(source: SourceConfig, problem: NoCheckServer, started: float) -> CheckOutcome:
    """No server can restore the backup: a failure naming what is missing and the fixes, or, when the source
    chose `unverifiable: warn`, an unverified outcome naming what is missing and what no restore has checked."""
    seconds = time.monotonic() - started
    details = {"missing": problem.missing, "not_verified": problem.objects}
    if source.unverifiable != "warn":
        return CheckOutcome(False, str(problem), {"missing": ", ".join(problem.missing)}, details, seconds)
    objects = first_of(problem.objects)
    reason = (f"no test restore ran: no check server has {', '.join(problem.missing)}"
              + (f"; objects needing it, not verified: {objects}" if objects else ""))
    return CheckOutcome(
        False, f"UNVERIFIED (published anyway, unverifiable: warn): {reason}",
        {"missing": ", ".join(problem.missing), "not_verified": ", ".join(problem.objects) or "(none named)",
         "restore_ran": False},
        details, seconds, unverified=reason,
    )


def _content_metadata(report: RestoreReport, spec: ContentSpec | None) -> dict[str, Any]:
    """How many tables were proven by content, which only by count and why (never silently)."""
    identical = sum(1 for r in report.tables if r.get("content") == IDENTICAL)
    not_compared = report.not_compared if spec is not None else {
        "all tables": "the full archive is of a version this tool's reader does not know"}
    return {"tables_content_identical": identical, "tables_count_only": len(report.tables) - identical,
            "content_not_compared": not_compared}


def _description(report: RestoreReport) -> str:
    if report.errors:
        return f"pg_restore failed: {report.errors[0]}"
    problems = []
    if report.differing:
        problems.append(f"{len(report.differing)} table(s) differ: {differences_text(report.differing)}")
    if report.amcheck and report.amcheck.corrupt:
        named = ", ".join(f"{c['index']} ({c['error']})" for c in report.amcheck.corrupt[:5])
        problems.append(f"amcheck found {len(report.amcheck.corrupt)} corrupt index(es): {named}")
    if problems:
        return "; ".join(problems)
    identical = sum(1 for r in report.tables if r.get("content") == IDENTICAL)
    indexes = "" if report.amcheck is None else (
        ", amcheck unavailable on the check server" if report.amcheck.unavailable
        else f", {report.amcheck.checked} B-tree indexes sound")
    return (f"restored {len(report.tables)} tables with identical row counts ({identical} also identical in "
            f"content){indexes} in {report.seconds:.1f}s")


def check_full_restore(step: StepContext, source: SourceConfig, stub_roles: Sequence[str]) -> CheckOutcome:
    """pg_restore -j the full archive into a throwaway database on a server that can restore what it holds, compare
    exact row counts and content hashes, and amcheck every B-tree index. A restore slower than the source's
    `rto_budget_seconds` is a warning, never a failure.

    pg_restore errors fail the check unless they match a pattern the source lists explicitly in
    `accepted_restore_errors` (empty by default).
    """
    dumps = step.staging.load(DumpsState)
    expected = [asdict(row) for row in dumps.row_counts]
    spec = ContentSpec.of_archive(step.staging.full_dump, dumps.copy_settings, dumps.server_major)
    started = time.monotonic()
    try:
        server = _check_server(step, source)
    except NoCheckServer as problem:
        return _no_check_server(source, problem, started)
    report = restore_and_compare(
        step.pg.tools(), step.staging.full_dump, expected, server=server, jobs=source.restore_jobs,
        accepted_errors=list(source.accepted_restore_errors), stub_roles=stub_roles, content=spec, amcheck=True,
        heapallindexed=source.amcheck_heapallindexed,
    )
    rows = sum(max(r["restored"], 0) for r in report.tables)
    content = _content_metadata(report, spec)
    amcheck = report.amcheck.summary() if report.amcheck else {"amcheck": "not run: the restore failed"}
    budget = source.rto_budget_seconds
    warning = (f"restore took {report.seconds:.1f}s, over the RTO budget of {budget:g}s"
               if budget is not None and report.seconds > budget else None)
    return CheckOutcome(
        passed=report.passed,
        description=_description(report),
        metadata={
            "restore_duration_s": round(report.seconds, 3),
            "restore_throughput_mib_s": throughput(dumps.full.size, report.seconds),
            "restore_rows_per_s": round(rows / report.seconds) if report.seconds > 0 else 0,
            **({"rto_budget_s": budget, "rto_exceeded": warning is not None} if budget is not None else {}),
            "tables_checked": len(report.tables),
            "tables_differing": len(report.differing),
            **content,
            **amcheck,
            **({"corrupt_indexes": report.amcheck.corrupt} if report.amcheck and report.amcheck.corrupt else {}),
            "restore_errors": len(report.errors),
            "row_counts": report.tables,
            "check_server": report.server,
        },
        details={"check_server": report.server, "restore_seconds": round(report.seconds, 3),
                 "tables_checked": len(report.tables),
                 "differing": report.differing, "errors": report.errors, "accepted_errors": report.accepted_errors,
                 "content_not_compared": content["content_not_compared"],
                 **amcheck, "corrupt_indexes": report.amcheck.corrupt if report.amcheck else []},
        seconds=time.monotonic() - started,
        warning=warning,
    )


def _archive_readable(pg_restore: str, path) -> str | None:
    result = subprocess.run([pg_restore, "--list", str(path)], capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else one_line(result.stderr) or "pg_restore --list failed"


def check_schema_archives(step: StepContext) -> CheckOutcome:
    """Every user schema has exactly one readable archive, and no archive is extra."""
    started = time.monotonic()
    dumps = step.staging.load(DumpsState)
    expected = {item.path for item in dumps.schemas}
    found = {p.relative_to(step.staging.root).as_posix()
             for p in step.staging.root.glob(f"*/*_schema_{step.backup_id}.dump")}
    problems = [f"missing {p}" for p in sorted(expected - found)] + [f"extra {p}" for p in sorted(found - expected)]
    pg_restore = step.pg.tools().path("pg_restore")
    for rel in sorted(expected & found):
        if error := _archive_readable(pg_restore, step.staging.root / rel):
            problems.append(f"unreadable {rel}: {error}")
    passed = not problems
    return CheckOutcome(
        passed=passed,
        description=f"{len(expected)} schema archives readable" if passed else "; ".join(problems[:5]),
        metadata={"schemas": len(expected), "problems": len(problems)},
        details={"schemas": len(expected), "problems": problems},
        seconds=time.monotonic() - started,
    )


def sample_tables(tables: list[TableDump], sample: int | None, seed: str) -> list[TableDump]:
    """All tables under the default limit; otherwise a reproducible sample (seeded by the backup id)."""
    limit = sample if sample is not None else DEFAULT_TABLE_SAMPLE_LIMIT
    if len(tables) <= limit:
        return tables
    by_name = {(t.schema, t.table): t for t in tables}
    chosen = {(t.schema, t.table) for t in random.Random(seed).sample(tables, limit)}
    pending = list(chosen)
    while pending:  # a partition or inheriting table restores only with its parents
        for parent in by_name[pending.pop()].after:
            if tuple(parent) not in chosen and tuple(parent) in by_name:
                chosen.add(tuple(parent))
                pending.append(tuple(parent))
    return [by_name[key] for key in sorted(chosen)]


def check_table_files(step: StepContext, source: SourceConfig, stub_roles: Sequence[str]) -> CheckOutcome:
    """Every table has schema.sql and data.sql; the sampled ones restore into a scratch db, on a server that can
    restore what the backup holds, with the exact rows of the full archive: same counts, and the same content
    hashes where they can be compared."""
    started = time.monotonic()
    try:
        server = _check_server(step, source)
    except NoCheckServer as problem:
        return _no_check_server(source, problem, started)
    tier = step.staging.load(TablesState)
    dumps = step.staging.load(DumpsState)
    dumped = {r.key: r for r in dumps.row_counts}
    missing = [f"{t.schema}.{t.table}: {kind}" for t in tier.tables for kind in ("schema", "data")
               if kind not in t.files or not (step.staging.root / t.files[kind]).is_file()]
    absent = sorted(f"{s}.{t}" for (s, t) in set(dumped) - {(t.schema, t.table) for t in tier.tables})
    chosen = sample_tables(tier.tables, source.table_check_sample, step.backup_id)
    spec = ContentSpec.of_archive(step.staging.full_dump, dumps.copy_settings, dumps.server_major)
    rows: list[dict] = []
    not_compared: dict[str, str] = {}
    error = None
    if not missing and not absent:
        try:
            rows, not_compared = _restore_sample(step, server, chosen, tier, dumped, stub_roles, spec)
        except BackupError as exc:
            error = str(exc)
    differing = differing_rows(rows)
    identical = sum(1 for r in rows if r["content"] == IDENTICAL)
    passed = not (missing or absent or differing or error)
    parents = len(tier.tables) - len(dumped)  # partitioned tables: a folder each, no rows of their own
    restored_parents = sum((r["schema"], r["table"]) not in dumped for r in rows)
    restored = "all" if len(rows) == len(tier.tables) else tables_phrase(len(rows) - restored_parents,
                                                                           restored_parents)
    description = (
        f"{tables_phrase(len(dumped), parents)} have their files; {restored} restored with identical rows "
        f"({identical} also identical in content)" if passed
        else "; ".join(filter(None, [
            f"missing files: {', '.join(missing[:5])}" if missing else "",
            f"tables without files: {', '.join(absent[:5])}" if absent else "",
            f"restore failed: {error}" if error else "",
            f"{len(differing)} table(s) differ: {differences_text(differing)}" if differing else "",
        ]))
    )
    return CheckOutcome(
        passed=passed, description=description,
        metadata={"tables": len(dumped), "partitioned_parents": parents, "restored": len(rows),
                  "tables_differing": len(differing), "tables_content_identical": identical,
                  "content_not_compared": not_compared, "check_server": server.label, "row_counts": rows},
        details={"tables": len(dumped), "partitioned_parents": parents, "restored": len(rows), "missing": missing,
                 "absent": absent, "differing": differing, "error": error, "content_not_compared": not_compared},
        seconds=time.monotonic() - started,
    )


def _with_named_tables(chosen: list[TableDump], tier: TablesState) -> list[TableDump]:
    """The sample plus the tables its post.sql names (a policy reading another table) and their parents."""
    by_name = {(t.schema, t.table): t for t in tier.tables}
    keys = {(t.schema, t.table) for t in chosen}
    pending = list(keys)
    while pending:
        table = by_name[pending.pop()]
        for other in [*table.post_refs, *table.after]:
            if tuple(other) in by_name and tuple(other) not in keys:
                keys.add(tuple(other))  # type: ignore[arg-type]
                pending.append(tuple(other))  # type: ignore[arg-type]
    return [t for t in tier.tables if (t.schema, t.table) in keys]


def _restore_sample(
    step: StepContext, server: CheckServer, chosen: list[TableDump], tier: TablesState, dumped: dict,
    stub_roles: Sequence[str], spec: ContentSpec | None,
) -> tuple[list[dict], dict[str, str]]:
    """Restore the sample the way `restore --table` does: every objects file, the tables and what they need (a
    foreign key to a table outside the sample is left out; late objects run only when every table is restored)."""
    plan = plan_table_restore(_with_named_tables(chosen, tier), tier.tables, tier.schema_objects,
                              tier.global_objects, tier.global_objects_late)
    with scratch_database(server, stub_roles=stub_roles) as dsn:
        restore_tables(step.staging.root, plan.tables, dsn, psql=step.pg.tools().path("psql"),
                       schema_objects=plan.schema_objects, global_objects=plan.global_objects,
                       late_objects=plan.late_objects)
        own = [{"schema": t.schema, "table": t.table, "rows": dumped[t.schema, t.table].rows,
                "sha256": dumped[t.schema, t.table].sha256} for t in plan.tables if (t.schema, t.table) in dumped]
        rows, not_compared = compare_restored(dsn, own, spec, step.pg.tools().path("psql"))
        parents = [{"schema": t.schema, "table": t.table, "rows": t.rows} for t in plan.tables
                   if (t.schema, t.table) not in dumped]  # partitioned tables: no rows of their own, count 0
        return rows + [{**row, "content": NO_OWN_ROWS} for row in restored_counts(dsn, parents)], not_compared


def check_roles_file(step: StepContext) -> CheckOutcome:
    """roles.sql exists, carries no password hash, and loads into a scratch server the way `restore --roles`
    loads it (roles that already exist there are tolerated)."""
    started = time.monotonic()
    path = step.staging.roles_file
    if not path.is_file():
        return CheckOutcome(False, "roles.sql is missing")
    text = path.read_text(encoding="utf-8")
    if roles_sql_has_password_hash(text):
        return CheckOutcome(False, "roles.sql contains password hashes")
    tools = step.pg.tools()
    errors: list[str] = []
    with ephemeral_server() as server:
        try:
            restore_roles_file(tools, path, server.dsn(), server_major_at(server.dsn()))
        except BackupError as exc:
            errors = [str(exc)]
    roles = text.count("CREATE ROLE")
    passed = not errors
    return CheckOutcome(
        passed=passed,
        description=f"{roles} roles load into a scratch server" if passed else one_line(errors[0]),
        metadata={"roles": roles, "size_bytes": path.stat().st_size},
        details={"roles": roles, "errors": errors},
        seconds=time.monotonic() - started,
    )
