"""Backup assets, built per source by a factory."""

from pg_backup_dagster.assets.backup import build_backup_assets

__all__ = ["build_backup_assets"]
