"""The per-table tier of one backup: split from the full archive, no extra load on the source.

It is written while pg_dump writes the full archive (tiers/live_split.py): the split follows the archive file
and finishes moments after pg_dump does. Archives the live splitter does not read are split after the dump.
"""

from __future__ import annotations

import shutil
import threading
import time

from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.backup.state import TablesState
from pg_backup_dagster.files import temp_path
from pg_backup_dagster.pg.tools import PgTools
from pg_backup_dagster.tiers.archive import UnsupportedArchive
from pg_backup_dagster.tiers.catalog import TableCatalog
from pg_backup_dagster.tiers.live_split import LiveSplit
from pg_backup_dagster.tiers.table_split import SplitResult, split_in_one_pass


def clear_table_outputs(staging: Staging) -> None:
    """Forget table files of an earlier try of this backup id so nothing stale is published."""
    for tables_dir in staging.root.glob("*/tables"):
        shutil.rmtree(tables_dir)
    for objects in [*staging.root.glob("*/objects*.sql"), *staging.root.glob("global_objects*.sql")]:
        objects.unlink()


class TableTierSplit:
    """One backup's table tier: `follow` runs beside pg_dump, `finish` after the archive is in place."""

    def __init__(self, tools: PgTools, staging: Staging, catalog: TableCatalog) -> None:
        self.staging = staging
        self.catalog = catalog
        self.pg_restore = tools.path("pg_restore")
        self.live: LiveSplit | None = LiveSplit(staging.root, catalog, self.pg_restore)
        self.started = time.monotonic()

    def follow(self, dump_done: threading.Event) -> None:
        """Split while pg_dump writes its temp file; an archive the splitter does not read waits for `finish`."""
        clear_table_outputs(self.staging)
        assert self.live is not None
        try:
            self.live.follow(temp_path(self.staging.full_dump), dump_done)
        except UnsupportedArchive:
            self.live = None

    def finish(self) -> TablesState:
        """Complete the split over the published full archive and describe the tier for metadata and manifest."""
        archive, root = self.staging.full_dump, self.staging.root
        try:
            if self.live is not None:
                result = self.live.finish(archive)
            else:
                result = split_in_one_pass(archive, root, self.catalog, pg_restore=self.pg_restore)
        except BaseException:
            if self.live is not None:
                self.live.discard()
            raise
        return describe_tier(self.staging, result, time.monotonic() - self.started)


def describe_tier(staging: Staging, result: SplitResult, seconds: float) -> TablesState:
    """What metadata, checks, RESTORE.md and the manifest need to know about the table files."""
    paths = [p for t in result.tables for p in t.files.values()]
    paths += [p for p in (result.global_objects, result.global_objects_late) if p]
    paths += list(result.schema_objects.values())
    return TablesState(
        tables=result.tables,
        schema_objects=result.schema_objects,
        global_objects=result.global_objects,
        global_objects_late=result.global_objects_late,
        files=len(paths),
        size=sum((staging.root / p).stat().st_size for p in paths),
        seconds=seconds,
    )
