"""Backup ids: the UTC time a backup started, `YYYY-MM-DDTHH-MM-SSZ`, used as partition key and folder name.

An id more than `FUTURE_TOLERANCE` ahead of the clock is refused wherever a new backup can get one (CLI
`--backup-id`, the partition key at the start of every step): ids order backups, so a backup dated 2099 would
hold retention's "newest" and its keep slots until 2099. Retention ignores (and reports) such folders.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pg_backup_dagster.errors import BackupError

BACKUP_ID_FORMAT = "%Y-%m-%dT%H-%M-%SZ"
_BACKUP_ID_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")
# Clock skew between the machine that picks the id (a schedule tick, a UI request) and the one that runs it.
FUTURE_TOLERANCE = timedelta(minutes=5)


def new_backup_id(now: datetime | None = None) -> str:
    """The id for a backup starting now (or at `now`), always in UTC."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime(BACKUP_ID_FORMAT)


def parse_backup_id(backup_id: str) -> datetime:
    """The UTC start time a backup id stands for; raises BackupError for anything else."""
    if not isinstance(backup_id, str) or not _BACKUP_ID_RE.match(backup_id):
        raise BackupError(f"invalid backup id {backup_id!r}: expected UTC time as YYYY-MM-DDTHH-MM-SSZ")
    try:
        return datetime.strptime(backup_id, BACKUP_ID_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise BackupError(f"invalid backup id {backup_id!r}: {exc}") from None


def future_problem(started: datetime, now: datetime | None = None) -> str | None:
    """Why a backup id's time cannot be a real start time (too far ahead of `now`), or None."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if started - now > FUTURE_TOLERANCE:
        minutes = int(FUTURE_TOLERANCE.total_seconds() // 60)
        return f"it is more than {minutes} minutes in the future (now {new_backup_id(now)})"
    return None


def validate_backup_id(backup_id: str, now: datetime | None = None) -> str:
    """Return the id unchanged if it is valid for a backup starting now, so callers can validate before any work."""
    problem = future_problem(parse_backup_id(backup_id), now)
    if problem:
        raise BackupError(f"invalid backup id {backup_id!r}: {problem}")
    return backup_id
