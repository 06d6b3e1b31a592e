"""pg_backup_dagster: PostgreSQL backups orchestrated by Dagster, test-restored before they are trusted."""

__version__ = "0.1.0"
