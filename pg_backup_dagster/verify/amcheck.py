"""amcheck over a restored database: every B-tree index's structure, and for tables up to a size that every row
has its index entry (heapallindexed). Equal rows prove the data; this proves the indexes built from them are sound,
so a restore that reads fine but answers index scans wrongly does not pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from pg_backup_dagster.errors import one_line
from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER

HEAPALLINDEXED_LIMIT = 256 << 20  # tables up to this size (bytes) are also scanned for rows missing from an index
_INDEXES = f"""
SELECT i.indexrelid, n.nspname, c.relname, pg_relation_size(i.indrelid)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_am am ON am.oid = c.relam JOIN pg_class t ON t.oid = i.indrelid
WHERE am.amname = 'btree' AND c.relkind = 'i' AND i.indisvalid AND i.indisready AND t.relpersistence <> 't'
  AND {SYSTEM_SCHEMA_FILTER}
ORDER BY 2, 3
"""


@dataclass
class AmcheckReport:
    """Indexes checked (and how many with heapallindexed), those found corrupt with amcheck's error, or why amcheck
    could not run (then nothing was checked, which is not a failure)."""

    unavailable: str | None = None
    checked: int = 0
    heapallindexed: int = 0
    corrupt: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"amcheck": self.unavailable or "ran", "indexes_checked": self.checked,
                "indexes_heapallindexed": self.heapallindexed, "indexes_corrupt": len(self.corrupt)}


def check_btree_indexes(dsn: str, heap_limit: int = HEAPALLINDEXED_LIMIT) -> AmcheckReport:
    """bt_index_check on every valid B-tree index of the database at dsn (CREATE EXTENSION amcheck first)."""
    report = AmcheckReport()
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        except psycopg.Error as exc:
            report.unavailable = f"amcheck unavailable on the check server: {one_line(str(exc))}"
            return report
        row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                           "WHERE e.extname = 'amcheck'").fetchone()
        assert row is not None
        check = sql.SQL("SELECT {}.bt_index_check(%s::oid::regclass, %s)").format(sql.Identifier(row[0]))
        for oid, schema, index, heap_size in conn.execute(_INDEXES).fetchall():
            heapallindexed = heap_size <= heap_limit
            try:
                conn.execute(check, [oid, heapallindexed])
            except psycopg.errors.InsufficientPrivilege as exc:
                report.unavailable = f"amcheck not permitted on the check server: {one_line(str(exc))}"
                return report
            except psycopg.Error as exc:
                report.corrupt.append({"index": f"{schema}.{index}", "error": one_line(str(exc))})
            report.checked += 1
            report.heapallindexed += heapallindexed
    return report
