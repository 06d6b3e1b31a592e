"""The tier registry: one record per tier, read by config, the assets, the checks, verify and restore.

A tier's name is its entry in a source's `tiers:` list, the `tier` tag of its files in the manifest and the
tier `restore` takes; its asset and check are named here once. How each tier is made (backup/dumps.py,
tiers/), checked (verify/tiers.py) and restored (restore/run.py) is keyed by this name.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_backup_dagster.constants import FULL_ASSET, ROLES_ASSET, SCHEMAS_ASSET, TABLES_ASSET


@dataclass(frozen=True)
class Tier:
    name: str
    asset: str
    asset_description: str
    check: str
    check_description: str
    archive: bool  # its files are custom-format archives (verify lists each with pg_restore -l)


ROLES = Tier(
    "roles", ROLES_ASSET, "Cluster roles (pg_dumpall --roles-only, no password hashes).",
    "roles_sql_loadable", "roles.sql present, without password hashes, and loads into a scratch server.",
    archive=False,
)
FULL = Tier(
    "full", FULL_ASSET, "Whole database, pg_dump custom format, from the backup's snapshot.",
    "full_dump_restores", "pg_restore -j into a throwaway database; exact row counts and content hashes equal dump "
    "time; amcheck finds every B-tree index sound.",
    archive=True,
)
SCHEMA = Tier(
    "schema", SCHEMAS_ASSET, "One custom-format archive per user schema, from the same snapshot.",
    "schema_dumps_complete", "Every user schema has a readable archive, and nothing extra.",
    archive=True,
)
TABLE = Tier(
    "table", TABLES_ASSET,
    "Per-table schema.sql/data.sql/post.sql/fk.sql split from the full archive while pg_dump writes it.",
    "table_dumps_restore", "Every table has its files; each restores its exact rows (count and content hash) into a "
    "scratch db.",
    archive=False,
)

TIERS: tuple[Tier, ...] = (ROLES, FULL, SCHEMA, TABLE)
TIER_NAMES: tuple[str, ...] = tuple(t.name for t in TIERS)
ARCHIVE_TIERS: tuple[str, ...] = tuple(t.name for t in TIERS if t.archive)


def tiers_of(names: tuple[str, ...] | list[str]) -> list[Tier]:
    """The registered tiers among `names`, in registry order."""
    return [t for t in TIERS if t.name in names]
