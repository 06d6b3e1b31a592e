"""Apply a retention plan to one source's storage and Dagster instance.

The planner (retention/policy.py) decides from records; this module builds those records from what is really
published (manifests under the source's own prefix, nothing else), adds the one guard the planner cannot
know about (the backup latest.json points to is never deleted), then deletes backups and the dynamic
partition keys of what it deleted. The CLI, the `retention_{source}` job and the after-backup hook all
come through `run_retention`, so they cannot disagree.

"Passed" is not trusted as written once: before planning, the stored files are re-checked against their
manifests (`recheck_records`): the newest passing backup with the source's `retention_verify` (size, or
sha256), walking down until one holds, every other passing one by size. A backup that fails is marked
(verify.json beside its manifest), logged as an error, and planned as failed: it never takes a keep slot.
Nothing is deleted unless a backup re-checked intact just now stays; without one the run fails. Ids in
the future are ignored and reported: they would hold "newest" and keep slots until their date.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import dagster as dg

from pg_backup_dagster.backup.backup_id import future_problem, parse_backup_id
from pg_backup_dagster.backup.manifest import Manifest
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import backup_job_name
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.retention.policy import BackupRecord, RetentionPlan, plan_retention
from pg_backup_dagster.storage import DEFAULT_GC_MIN_AGE, BackupRepository
from pg_backup_dagster.storage.repository import Recheck

log = logging.getLogger(__name__)

LATEST_GUARD = "latest.json points here"
# A run in one of these states may still be writing its staging dir.
ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class RetentionResult:
    """The plan as applied: what was kept and why, what went (or would go), what could not be read."""

    source: str
    location: str
    plan: RetentionPlan
    skipped: dict[str, str] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    rechecks: dict[str, Recheck] = field(default_factory=dict)
    intact: str | None = None  # the newest backup whose files were re-checked intact by this run

    def lines(self, applied: bool) -> list[str]:
        """One line per backup, oldest first, for the CLI and the run log."""
        rows = [(r.backup_id, "keep", self.plan.reasons[r.backup_id]) for r in self.plan.keep]
        gone = "deleted" if applied else "delete"
        rows += [(r.backup_id, gone, self.plan.reasons[r.backup_id]) for r in self.plan.delete]
        rows += [(backup_id, "skip", why) for backup_id, why in self.skipped.items()]
        lines = [f"{action:<7} {backup_id}  {why}" for backup_id, action, why in sorted(rows)]
        return lines + [f"checked {backup_id}  {check.summary()}" for backup_id, check in sorted(self.rechecks.items())]


def load_records(storage: BackupRepository, source: str) -> tuple[list[BackupRecord], dict[str, str]]:
    """Records of the source's published backups; anything unreadable or not ours is skipped, never deleted.

    A backup whose recorded re-check failed is a failed record; one whose id is in the future (by the real
    clock) is skipped.
    """
    records, skipped, _ = _load(storage, source)
    return records, skipped


def _load(storage: BackupRepository, source: str) -> tuple[list[BackupRecord], dict[str, str], dict[str, Manifest]]:
    records: list[BackupRecord] = []
    skipped: dict[str, str] = {}
    manifests: dict[str, Manifest] = {}
    for backup_id in storage.list_backups(source):
        try:
            started = parse_backup_id(backup_id)
            manifest = storage.read_manifest(source, backup_id)
        except BackupError as exc:
            skipped[backup_id] = f"not considered: {exc}"
            continue
        if manifest.source != source or manifest.backup_id != backup_id:
            skipped[backup_id] = "not considered: manifest names another source or backup id"
            continue
        if problem := future_problem(started):
            skipped[backup_id] = f"not considered: backup id {problem}"
            log.error("retention of %s: ignoring backup %s: its id %s", source, backup_id, problem)
            continue
        failed = storage.failed_recheck(source, backup_id)
        records.append(BackupRecord(backup_id, started, manifest.passed and failed is None))
        manifests[backup_id] = manifest
    return records, skipped, manifests


def recheck_records(
    storage: BackupRepository,
    source: SourceConfig,
    records: list[BackupRecord],
    manifests: dict[str, Manifest],
    *,
    record: bool,
) -> tuple[list[BackupRecord], dict[str, Recheck], str | None]:
    """Re-check the stored files of every passing backup now; returns the records with failures demoted,
    the re-checks, and the newest backup found intact (None if none is).

    Newest first: the configured `retention_verify` until one backup holds, then size checks (one listing
    per backup). With record, each result is written to the backup's verify.json.
    """
    rechecks: dict[str, Recheck] = {}
    demoted: set[str] = set()
    intact: str | None = None
    for rec in sorted(records, key=lambda r: (r.started_at, r.backup_id), reverse=True):
        if not rec.passed:
            continue
        how = source.retention_verify if intact is None else "size"
        check = storage.recheck_backup(source.name, rec.backup_id, manifests[rec.backup_id], how=how,
                                       by="retention", record=record)
        rechecks[rec.backup_id] = check
        if check.passed:
            intact = intact or rec.backup_id
            continue
        demoted.add(rec.backup_id)
        log.error("backup %s/%s at %s fails its re-check and no longer counts as passing: %s", source.name,
                  rec.backup_id, storage.backup_url(source.name, rec.backup_id), "; ".join(check.problems[:5]))
    records = [replace(r, passed=False) if r.backup_id in demoted else r for r in records]
    return records, rechecks, intact


def guard_latest(plan: RetentionPlan, latest_id: str | None) -> RetentionPlan:
    """Move the backup latest.json points to from delete to keep: restores start from it."""
    doomed = [r for r in plan.delete if r.backup_id == latest_id]
    if not doomed:
        return plan
    keep = sorted([*plan.keep, *doomed], key=lambda r: r.backup_id)
    delete = [r for r in plan.delete if r.backup_id != latest_id]
    return RetentionPlan(keep=keep, delete=delete, reasons={**plan.reasons, latest_id: LATEST_GUARD})


def plan_for_source(
    source: SourceConfig, storage: BackupRepository, now: datetime | None = None, *, record: bool = False
) -> RetentionResult:
    """The plan for one source as it stands in storage now (files re-checked), with the latest.json guard.

    BackupError when the plan would delete something while no backup re-checked intact stays.
    """
    records, skipped, manifests = _load(storage, source.name)
    rechecks: dict[str, Recheck] = {}
    intact = None
    if not source.retention.is_empty():  # an empty policy deletes nothing: nothing to guard
        records, rechecks, intact = recheck_records(storage, source, records, manifests, record=record)
        if records and intact is None:
            log.error("retention of %s: no backup re-checks intact; nothing deleted", source.name)
            raise BackupError(
                f"retention of source '{source.name}' at {storage.url}: no backup passes its checks and a re-check "
                f"of its files now ({len(records)} with a manifest); nothing deleted"
            )
    plan = plan_retention(records, source.retention, now or datetime.now(UTC))
    latest = storage.read_latest(source.name) or {}
    plan = guard_latest(plan, latest.get("backup_id"))
    if plan.delete and intact not in {r.backup_id for r in plan.keep}:
        raise BackupError(f"retention of source '{source.name}': the plan would not keep {intact}, the newest "
                          "backup re-checked intact; nothing deleted")
    return RetentionResult(source.name, storage.url, plan, skipped, rechecks=rechecks, intact=intact)


def run_retention(
    source: SourceConfig,
    storage: BackupRepository,
    instance: dg.DagsterInstance | None,
    *,
    apply: bool,
    now: datetime | None = None,
) -> RetentionResult:
    """Plan, and with apply delete each planned backup (manifest first) and then its partition key."""
    result = plan_for_source(source, storage, now, record=apply)
    if not apply:
        return result
    known = set(instance.get_dynamic_partitions(source.partitions_name)) if instance is not None else set()
    for record in result.plan.delete:
        storage.delete_backup(source.name, record.backup_id)
        if record.backup_id in known:
            instance.delete_dynamic_partition(source.partitions_name, record.backup_id)
        result.deleted.append(record.backup_id)
    return result


def other_backup_running(instance: dg.DagsterInstance, source: SourceConfig, run_id: str | None) -> bool:
    """True while another run of this source's backup job is queued or running: its staging is not litter."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=backup_job_name(source), statuses=ACTIVE_RUN_STATUSES))
    return any(run.run_id != run_id for run in runs)


def after_publish(
    source: SourceConfig,
    storage: BackupRepository,
    instance: dg.DagsterInstance | None,
    run_id: str | None,
    logger: logging.Logger,
) -> None:
    """After a published backup: sweep old leftovers of failed runs, then retention if configured.

    The backup is already published and latest.json moved, so a failure here is logged, not raised:
    failing the run would report a good backup as bad. Leftovers are swept only while no other backup
    run of the source is in progress, and only if untouched for min_age, so a concurrent run (say, one
    in a long restore check) keeps its staging.
    """
    if instance is not None and other_backup_running(instance, source, run_id):
        logger.info("another backup run of this source is in progress: leftover cleanup skipped")
    else:
        try:
            swept = storage.sweep(source.name, min_age=DEFAULT_GC_MIN_AGE, how=source.retention_verify)
            for path in swept.removed:
                logger.info(f"removed leftover of an earlier failed run: {path}")
            for note in swept.notes:
                logger.warning(f"cleanup: {note}")
        except BackupError as exc:
            logger.warning(f"cleanup of earlier failed runs incomplete (run `pg-backup-dagster gc`): {exc}")
    if not source.retention_after_backup:
        return
    try:
        result = run_retention(source, storage, instance, apply=True)
    except BackupError as exc:
        logger.error(f"retention after backup failed: {exc}")
        return
    for backup_id in result.deleted:
        logger.info(f"retention deleted backup {backup_id} ({result.plan.reasons[backup_id]})")
