"""What one backup step hands the next, as typed records: the dumps, the per-table tier, each check's result.

Steps may run in separate processes (or machines sharing a volume), so these travel through staging
(`Staging.save` / `Staging.load`), validated on the way back in, never through memory.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.dataclasses import dataclass

from pg_backup_dagster.tiers.table_split import TableDump


@dataclass(frozen=True)
class RowCount:
    """count(*) of one table inside the backup's snapshot, and the content hash of its rows in the full archive
    (tiers/content.py; None when unknown): what a restore must reproduce."""

    schema: str
    table: str
    rows: int
    sha256: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.schema, self.table


@dataclass(frozen=True)
class DumpedFile:
    """One archive written by pg_dump (or cut from the full one), with what metadata and manifest need."""

    path: str
    size: int
    seconds: float
    schema: str | None = None


class StepState(BaseModel):
    """A record one step saves in staging for the steps after it; `state_name` names its file."""

    model_config = ConfigDict(extra="forbid")
    state_name: ClassVar[str]


class DumpsState(StepState):
    """The full and per-schema archives of one snapshot, and the exact row counts taken in it."""

    state_name: ClassVar[str] = "dumps"
    snapshot: str
    full: DumpedFile
    schemas: list[DumpedFile]
    row_counts: list[RowCount]
    copy_settings: dict[str, str] = {}  # the dump session's settings its COPY text depends on (tiers/content.py)
    database_size: int
    server_major: int
    pg_dump_version: str
    seconds: float


class TablesState(StepState):
    """The per-table tier: each table's files, and the files of what belongs to no table."""

    state_name: ClassVar[str] = "tables"
    tables: list[TableDump]
    schema_objects: dict[str, str]
    global_objects: str | None = None
    global_objects_late: str | None = None
    files: int
    size: int
    seconds: float


class CheckRecord(BaseModel):
    """A check's verdict as kept in staging and in the manifest; check-specific details ride along as extras.

    `unverified` holds the reason when the check could not run and the source chose to publish anyway
    (`unverifiable: warn`): such a check has not passed, yet it does not stop publishing."""

    model_config = ConfigDict(extra="allow")
    passed: bool
    description: str
    seconds: float = 0.0
    unverified: str | None = None

    @property
    def status(self) -> str:
        return "passed" if self.passed else "UNVERIFIED" if self.unverified else "FAILED"

    @property
    def publishable(self) -> bool:
        return self.passed or self.unverified is not None
