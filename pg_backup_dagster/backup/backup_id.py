"""Backup ids: the UTC time a backup started, `YYYY-MM-DDTHH-MM-SSZ`, used as partition key and folder name."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pg_backup_dagster.errors import BackupError

BACKUP_ID_FORMAT = "%Y-%m-%dT%H-%M-%SZ"
_BACKUP_ID_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")


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


def validate_backup_id(backup_id: str) -> str:
    """Return the id unchanged if valid, so callers can validate inline before any work."""
    parse_backup_id(backup_id)
    return backup_id
