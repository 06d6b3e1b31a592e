"""Names shared by the Dagster surface, the CLI and the tests: tags, asset names, resource keys, job names.

A name lives here once so that a rename is one edit and every reader agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pg_backup_dagster.config import SourceConfig

# Run tags
SOURCE_TAG = "pg_backup/source"
TRIGGER_TAG = "pg_backup/trigger"
HOST_TAG = "pg_backup/host"
PID_TAG = "pg_backup/pid"
IN_PROCESS_TAG = "pg_backup/in_process"  # a run whose steps share one process: later steps' work may start early
MAX_RUNTIME_TAG = "dagster/max_runtime"  # seconds; the daemon's run monitoring fails runs that exceed it

# Step log lines starting with this are progress a person may want live (the CLI shows them on a terminal)
PROGRESS_PREFIX = "progress: "

# Asset names (each under the source's key prefix)
ROLES_ASSET = "roles_sql"
FULL_ASSET = "full_dump"
SCHEMAS_ASSET = "schema_dumps"
TABLES_ASSET = "table_dumps"
MANIFEST_ASSET = "backup_manifest"


def postgres_key(source: SourceConfig) -> str:
    """Resource key of the source database."""
    return f"{source.name}_postgres"


def target_key(source: SourceConfig) -> str:
    """Resource key of the backup target."""
    return f"{source.name}_target"


def backup_job_name(source: SourceConfig) -> str:
    return f"backup_{source.name}"


def retention_job_name(source: SourceConfig) -> str:
    return f"retention_{source.name}"


def restore_job_name(source: SourceConfig) -> str:
    return f"restore_{source.name}"


def schedule_name(source: SourceConfig) -> str:
    return f"backup_{source.name}_schedule"


def now_sensor_name(source: SourceConfig) -> str:
    return f"backup_{source.name}_now"
