"""Which backups to keep and which to delete: a pure planner with no I/O, so every rule is testable.

The caller lists the backups that have a manifest under its own prefix (one `BackupRecord` each, `passed`
meaning the blocking checks passed), asks `plan_retention` for a plan, and only then deletes (or, in the
CLI's default dry-run, prints the plan with its reasons). The rules are in `plan_retention`'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from pg_backup_dagster.backup.backup_id import parse_backup_id
from pg_backup_dagster.errors import BackupError

_COUNT_FIELDS = ("daily", "weekly", "monthly", "minimum")


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backups to keep; validated on construction so a plan is never made from a bad policy.

    keep_last: keep the N newest passing backups (None: rule off; 0 is rejected because "keep none" and
    "rule off" would both be plausible readings of it).
    max_age_days: backups older than this are deleted unless another rule keeps them; younger ones are kept.
    daily/weekly/monthly: keep the newest passing backup of each of the N most recent UTC days / ISO weeks /
    months that have one (0: rule off).
    minimum: the N newest passing backups are never deleted, whatever the other rules say.
    """

    keep_last: int | None = None
    max_age_days: float | None = None
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    minimum: int = 1

    def __post_init__(self) -> None:
        if self.keep_last is not None:
            _check_int("keep_last", self.keep_last, lowest=1)
        if self.max_age_days is not None:
            value = self.max_age_days
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise BackupError(f"retention.max_age_days must be a finite number of days, got {value!r}")
            if value < 0:
                raise BackupError(f"retention.max_age_days must not be negative, got {value!r}")
            object.__setattr__(self, "max_age_days", float(value))
        for name in _COUNT_FIELDS:
            _check_int(name, getattr(self, name), lowest=0)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object] | None) -> RetentionPolicy:
        """Build a policy from the YAML `retention:` section; a typo must fail loudly, not keep everything."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise BackupError(f"retention must be a mapping of rules, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in data if key not in allowed)
        if unknown:
            raise BackupError(
                f"retention: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        return cls(**{str(key): value for key, value in data.items()})  # type: ignore[arg-type]

    def is_empty(self) -> bool:
        """True when no deleting rule is set (minimum alone is not one): retention then keeps everything."""
        return (
            self.keep_last is None
            and self.max_age_days is None
            and self.daily == 0
            and self.weekly == 0
            and self.monthly == 0
        )


def _check_int(name: str, value: object, *, lowest: int) -> None:
    """Counts come from YAML: reject strings, floats and booleans instead of guessing what was meant."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BackupError(f"retention.{name} must be a whole number, got {value!r}")
    if value < lowest:
        what = "negative" if lowest == 0 else f"below {lowest} (leave it out to turn the rule off)"
        raise BackupError(f"retention.{name} must not be {what}, got {value!r}")


@dataclass(frozen=True)
class BackupRecord:
    """What retention needs to know about one backup with a manifest."""

    backup_id: str
    started_at: datetime
    passed: bool  # blocking checks passed, as recorded in the manifest


@dataclass(frozen=True)
class RetentionPlan:
    """The decision for every backup given, each list ordered by backup_id, with a reason per backup_id."""

    keep: list[BackupRecord]
    delete: list[BackupRecord]
    reasons: dict[str, str]


def records_from_ids(passed_by_id: Mapping[str, bool]) -> list[BackupRecord]:
    """Records from backup ids (their start time is in the id) and whether each passed its blocking checks."""
    return [
        BackupRecord(backup_id=backup_id, started_at=parse_backup_id(backup_id), passed=bool(passed))
        for backup_id, passed in sorted(passed_by_id.items())
    ]


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _iso_week(moment: datetime) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def _month(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def _utc(moment: datetime, what: str) -> datetime:
    """Ages and calendar periods are only meaningful in UTC; a naive time is a caller bug, not a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise BackupError(f"retention: {what} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def plan_retention(backups: Sequence[BackupRecord], policy: RetentionPolicy, now: datetime) -> RetentionPlan:
    """Decide, without side effects, which backups to keep and which to delete, and why.

    Rules (why: a backup that cannot be restored must never displace one that can, and the newest good
    backup must survive any configuration):

    1. Empty policy (`policy.is_empty()`, `minimum` alone counts as empty): keep everything, so a missing
       or mistyped-away retention section never deletes anything.
    2. Keep rules pick only passing backups (a failed one is no restore point and must not take a slot):
       keep_last N newest; for daily/weekly/monthly N, the newest in each of the N most recent UTC days /
       ISO weeks / months that contain a passing backup (periods without one are skipped, as restic and
       borg do, so a pause in backups does not use up the retention); the `minimum` newest; and always the
       newest passing backup. Reasons name every rule that kept a backup.
    3. Not kept by rule 2: with max_age_days set, deleted if now - started_at > max_age_days, else kept
       ("within N days"); without max_age_days, deleted.
    4. A failed backup is deleted (under rule 3) only if a newer passing backup exists; otherwise kept.

    "Newer" orders by (started_at, backup_id). Planning again on `keep` with the same policy and `now`
    deletes nothing more, and input order never matters.
    """
    now = _utc(now, "now")
    seen: set[str] = set()
    for record in backups:
        if record.backup_id in seen:
            raise BackupError(f"retention: backup id {record.backup_id} listed twice")
        seen.add(record.backup_id)
        _utc(record.started_at, f"started_at of {record.backup_id}")

    by_id = sorted(backups, key=lambda r: r.backup_id)
    if policy.is_empty():
        return RetentionPlan(
            keep=by_id, delete=[], reasons={r.backup_id: "no retention rule set" for r in by_id}
        )

    newest_first = sorted(backups, key=lambda r: (r.started_at.astimezone(UTC), r.backup_id), reverse=True)
    passing = [r for r in newest_first if r.passed]
    kept_by: dict[str, list[str]] = {}

    def keep(record: BackupRecord, reason: str) -> None:
        kept_by.setdefault(record.backup_id, []).append(reason)

    if policy.keep_last is not None:
        for record in passing[: policy.keep_last]:
            keep(record, f"keep_last {policy.keep_last}")
    buckets: list[tuple[str, int, Callable[[datetime], str]]] = [
        ("daily", policy.daily, _day),
        ("weekly", policy.weekly, _iso_week),
        ("monthly", policy.monthly, _month),
    ]
    for name, count, period_of in buckets:
        periods: list[str] = []
        for record in passing:  # newest first, so the first of each period is its newest
            if len(periods) >= count:
                break
            period = period_of(record.started_at.astimezone(UTC))
            if period not in periods:
                periods.append(period)
                keep(record, f"{name} {period}")
    for record in passing[: policy.minimum]:
        keep(record, "minimum")
    if passing:
        keep(passing[0], "newest passing")

    newest_passing_at = (passing[0].started_at.astimezone(UTC), passing[0].backup_id) if passing else None
    max_age = timedelta(days=policy.max_age_days) if policy.max_age_days is not None else None
    age_text = f"{policy.max_age_days:g} days" if policy.max_age_days is not None else ""
    keep_list: list[BackupRecord] = []
    delete_list: list[BackupRecord] = []
    reasons: dict[str, str] = {}
    for record in by_id:
        started = record.started_at.astimezone(UTC)
        if record.backup_id in kept_by:
            keep_list.append(record)
            reasons[record.backup_id] = ", ".join(kept_by[record.backup_id])
        elif not record.passed and (
            newest_passing_at is None or (started, record.backup_id) > newest_passing_at
        ):
            keep_list.append(record)
            reasons[record.backup_id] = "failed, no newer passing backup"
        elif max_age is not None and now - started <= max_age:
            keep_list.append(record)
            reasons[record.backup_id] = f"within {age_text}"
        else:
            delete_list.append(record)
            why = f"older than {age_text}" if max_age is not None else "not kept by any rule"
            reasons[record.backup_id] = f"failed, {why}" if not record.passed else why
    return RetentionPlan(keep=keep_list, delete=delete_list, reasons=reasons)
