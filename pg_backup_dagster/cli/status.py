"""`status`: is each source backed up, in one block per source, with an exit code monitoring can use.

Read only: the target must exist (nothing is created), retention is planned dry, and the Dagster instance is
read only when its DAGSTER_HOME exists. Non-zero when a source has no backup, its newest backup or newest
backup run failed, or its newest backup is older than `--max-age` (default: two schedule intervals).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from pg_backup_dagster.cli.app import app, clean_errors
from pg_backup_dagster.cli.maintenance import SourcesOption, chosen_sources
from pg_backup_dagster.config import SourceConfig, cron_ticks
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import human_bytes

if TYPE_CHECKING:
    from pg_backup_dagster.storage import BackupRepository

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> timedelta:
    """`90m`, `26h`, `2d` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise BackupError(f"--max-age {text!r}: expected a positive duration such as 90m, 26h or 2d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def human_age(delta: timedelta) -> str:
    """`3 min 20 s`, `5 h 2 min`, `2 d 4 h`: precise enough to judge freshness at a glance."""
    seconds = max(0, int(delta.total_seconds()))
    days, hours, mins, secs = seconds // 86400, seconds // 3600 % 24, seconds // 60 % 60, seconds % 60
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min {secs} s"


@dataclass
class SourceStatus:
    """What `status` found for one source; `problem` empty means OK."""

    source: str
    target: str
    verdict: str = "OK"
    problem: str = ""
    lines: list[tuple[str, str]] = field(default_factory=list)

    def flag(self, verdict: str, problem: str) -> None:
        """Keep the first problem found: the newest backup's own state outranks age and runs."""
        if self.verdict == "OK":
            self.verdict, self.problem = verdict, problem

    def render(self) -> str:
        head = f"source '{self.source}' at {self.target}: {self.verdict}" + (f" ({self.problem})" if self.problem else "")
        return "\n".join([head, *(f"  {label:<14} {text}" for label, text in self.lines)])


def stale_limit(source: SourceConfig, max_age: timedelta | None, now: datetime) -> tuple[timedelta | None, str]:
    """How old the newest backup may be, and the schedule line: --max-age, else two of the schedule's intervals."""
    if not source.schedule:
        return max_age, "no schedule" + ("" if max_age else " (pass --max-age to judge staleness)")
    ticks = cron_ticks(source.schedule, source.timezone, now)
    first, second = next(ticks), next(ticks)
    limit = max_age or 2 * (second - first)
    when = first.astimezone(UTC).isoformat(timespec="minutes")
    return limit, f"{when} (cron {source.schedule!r} {source.timezone})"


def source_status(source: SourceConfig, max_age: timedelta | None, now: datetime) -> SourceStatus:
    """The newest backup, its checks and last verify, the newest run, the next run, what retention would remove."""
    from pg_backup_dagster.storage import open_source_storage

    status = SourceStatus(source.name, source.target)
    limit, schedule_line = stale_limit(source, max_age, now)
    try:
        storage = open_source_storage(source, create=False)
    except BackupError as exc:
        status.flag("NO BACKUP", str(exc))
        return status
    status.target = storage.url
    ids = storage.list_backups(source.name)
    newest = ids[-1] if ids else None
    if newest is None:
        status.flag("NO BACKUP", "no published backup")
        status.lines.append(("latest backup", "none"))
    else:
        manifest = storage.read_manifest(source.name, newest)
        age = now - manifest.finished_at
        status.lines.append(("latest backup", f"{newest}, finished {human_age(age)} ago: {manifest.tables_text()}, "
                                              f"{human_bytes(manifest.total_size)}"))
        failed = manifest.failed_checks()
        status.lines.append(("checks", f"FAILED: {', '.join(failed)}" if failed
                             else f"passed ({len(manifest.checks)}): {', '.join(sorted(manifest.checks))}"))
        if failed or not manifest.passed:
            status.flag("FAILED", f"checks of {newest} failed")
        try:
            recheck = storage.read_recheck(source.name, newest)
        except BackupError as exc:
            recheck = None
            status.flag("FAILED", f"verify.json of {newest} unreadable: {exc}")
        status.lines.append(("last verified", recheck.summary() if recheck
                             else "never (`pg-backup-dagster verify latest` checks every file)"))
        if recheck is not None and not recheck.passed:
            status.flag("FAILED", f"{newest} failed its re-check")
        if limit is not None and age > limit:
            status.flag("STALE", f"newest backup is {human_age(age)} old, more than {human_age(limit)}")
    _last_run(source, status, manifest.finished_at if newest else None)
    status.lines.append(("next run", schedule_line + (f"; stale after {human_age(limit)}" if limit else "")))
    status.lines.append(("retention", _retention_line(source, storage)))
    return status


def _last_run(source: SourceConfig, status: SourceStatus, newest_finished: datetime | None) -> None:
    """The newest run of the backup job, when the Dagster instance exists (it is never created here)."""
    import dagster as dg

    from pg_backup_dagster.constants import backup_job_name
    from pg_backup_dagster.defs.run import instance_home

    home = instance_home()
    if not (home / "dagster.yaml").is_file():
        status.lines.append(("last run", f"no Dagster instance at {home} (DAGSTER_HOME)"))
        return
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(dg.RunsFilter(job_name=backup_job_name(source)), limit=1)
    if not records:
        status.lines.append(("last run", f"none recorded in {home}"))
        return
    run = records[0].dagster_run
    started = records[0].create_timestamp.astimezone(UTC)
    partition = run.tags.get("dagster/partition", "?")
    status.lines.append(("last run", f"{partition} {run.status.value} (Dagster run {run.run_id[:8]}, "
                                     f"{started.isoformat(timespec='seconds')})"))
    failed = run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    if failed and (newest_finished is None or started > newest_finished):
        status.flag("FAILED", f"the newest backup run ({partition}) ended {run.status.value}")


def _retention_line(source: SourceConfig, storage: BackupRepository) -> str:
    from pg_backup_dagster.retention.apply import plan_for_source

    if source.retention.is_empty():
        return "no rule set: every backup is kept"
    try:
        plan = plan_for_source(source, storage).plan
    except BackupError as exc:
        return f"cannot plan: {exc}"
    doomed = [r.backup_id for r in plan.delete]
    return (f"would delete {len(doomed)}: {', '.join(doomed)} (`pg-backup-dagster retention --apply`)" if doomed
            else f"would delete nothing ({len(plan.keep)} kept)")


@app.command()
@clean_errors
def status(
    source: SourcesOption = None,
    max_age: Annotated[
        str | None, typer.Option("--max-age", help="Stale when the newest backup is older (90m, 26h, 2d); "
                                 "default: two schedule intervals.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per source, one per line.")] = False,
) -> None:
    """Per source: the newest backup's age, checks and last verify, the last and next run, what retention would
    remove. Exit 1 when a source has no backup, a failed one, or a stale one (for monitoring)."""
    limit = parse_age(max_age) if max_age else None
    now = datetime.now(UTC)
    found = [source_status(chosen, limit, now) for chosen in chosen_sources(source)]
    for index, item in enumerate(found):
        if as_json:
            typer.echo(json.dumps({**asdict(item), "lines": dict(item.lines)}, sort_keys=True))
        else:
            typer.echo(("" if index == 0 else "\n") + item.render())
    if any(item.verdict != "OK" for item in found):
        raise typer.Exit(1)

