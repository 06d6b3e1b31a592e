"""Asset checks: every tier is proven restorable before the backup is published."""

from pg_backup_dagster.checks.backup_checks import build_backup_checks

__all__ = ["build_backup_checks"]
