"""What the per-table split needs to know about the database, read once inside the dump's snapshot.

The archive's TOC names objects only by sanitized, space-separated text, so different objects can print
alike. This catalog maps (catalog oid, object oid) to the owning table or schema, which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER

PG_CLASS = 1259  # fixed oids of system catalogs, the same on every PostgreSQL version
_EXTENSION_MEMBER = """
    EXISTS (SELECT 1 FROM pg_depend e
            WHERE e.classid = {cls}::regclass AND e.objid = {oid} AND e.deptype = 'e')
"""

SCHEMAS_SQL = f"""
SELECT n.oid, n.nspname FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER}
  AND NOT {_EXTENSION_MEMBER.format(cls="'pg_namespace'", oid="n.oid")}
ORDER BY n.nspname
"""

TABLES_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind,
       COALESCE((SELECT array_agg(i.inhparent ORDER BY i.inhseqno)
                 FROM pg_inherits i WHERE i.inhrelid = c.oid), '{{}}') AS parents
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMA_FILTER}
  AND NOT {_EXTENSION_MEMBER.format(cls="'pg_class'", oid="c.oid")}
ORDER BY n.nspname, c.relname
"""

# (catalog, oid) of everything that hangs on a table -> the table's oid. Filtered to user tables in Python.
OWNED_SQL = """
SELECT 'pg_class'::regclass::oid, indexrelid, indrelid FROM pg_index
UNION ALL SELECT 'pg_constraint'::regclass::oid, oid, conrelid FROM pg_constraint WHERE conrelid <> 0
UNION ALL SELECT 'pg_trigger'::regclass::oid, oid, tgrelid FROM pg_trigger WHERE NOT tgisinternal
UNION ALL SELECT 'pg_policy'::regclass::oid, oid, polrelid FROM pg_policy
UNION ALL SELECT 'pg_attrdef'::regclass::oid, oid, adrelid FROM pg_attrdef
UNION ALL SELECT 'pg_rewrite'::regclass::oid, oid, ev_class FROM pg_rewrite WHERE rulename <> '_RETURN'
UNION ALL SELECT 'pg_statistic_ext'::regclass::oid, oid, stxrelid FROM pg_statistic_ext
UNION ALL SELECT 'pg_class'::regclass::oid, d.objid, d.refobjid FROM pg_depend d
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
"""

# (catalog, oid) of schema-level objects that are not tables -> schema name.
NAMESPACED_SQL = f"""
SELECT cls, objid, n.nspname FROM (
    SELECT 'pg_namespace'::regclass::oid AS cls, oid AS objid, oid AS nsp FROM pg_namespace
    UNION ALL SELECT 'pg_class'::regclass::oid, oid, relnamespace FROM pg_class
        WHERE relkind NOT IN ('r', 'p', 'i', 'I', 't')
    UNION ALL SELECT 'pg_type'::regclass::oid, t.oid, t.typnamespace FROM pg_type t
        WHERE t.typcategory <> 'A'
          AND (t.typrelid = 0 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
    UNION ALL SELECT 'pg_proc'::regclass::oid, oid, pronamespace FROM pg_proc
    UNION ALL SELECT 'pg_collation'::regclass::oid, oid, collnamespace FROM pg_collation
    UNION ALL SELECT 'pg_conversion'::regclass::oid, oid, connamespace FROM pg_conversion
    UNION ALL SELECT 'pg_operator'::regclass::oid, oid, oprnamespace FROM pg_operator
    UNION ALL SELECT 'pg_opclass'::regclass::oid, oid, opcnamespace FROM pg_opclass
    UNION ALL SELECT 'pg_opfamily'::regclass::oid, oid, opfnamespace FROM pg_opfamily
    UNION ALL SELECT 'pg_ts_config'::regclass::oid, oid, cfgnamespace FROM pg_ts_config
    UNION ALL SELECT 'pg_ts_dict'::regclass::oid, oid, dictnamespace FROM pg_ts_dict
    UNION ALL SELECT 'pg_ts_parser'::regclass::oid, oid, prsnamespace FROM pg_ts_parser
    UNION ALL SELECT 'pg_ts_template'::regclass::oid, oid, tmplnamespace FROM pg_ts_template
    UNION ALL SELECT 'pg_constraint'::regclass::oid, c.oid, t.typnamespace FROM pg_constraint c
        JOIN pg_type t ON t.oid = c.contypid WHERE c.contypid <> 0
) o JOIN pg_namespace n ON n.oid = o.nsp
WHERE {SYSTEM_SCHEMA_FILTER}
"""


@dataclass(frozen=True, slots=True)
class TableInfo:
    """One user table (relkind r or p), with the tables it inherits from or is a partition of."""

    schema: str
    table: str
    relkind: str
    oid: int
    parents: tuple[int, ...] = ()


def _key(classid: int, oid: int) -> str:
    return f"{classid}:{oid}"


@dataclass
class TableCatalog:
    """User schemas and tables, and which table or schema every dumpable object belongs to."""

    schemas: list[str] = field(default_factory=list)
    tables: list[TableInfo] = field(default_factory=list)
    owners: dict[str, int] = field(default_factory=dict)  # "classid:oid" -> table oid
    namespaces: dict[str, str] = field(default_factory=dict)  # "classid:oid" -> schema name
    excluded_schemas: list[str] = field(default_factory=list)  # managed schemas: left out of this tier
    excluded_tables: list[int] = field(default_factory=list)  # oids of tables in excluded schemas

    def table(self, oid: int) -> TableInfo | None:
        """The user table with this oid."""
        return self._by_oid().get(oid)

    def owner_of(self, classid: int, oid: int) -> int | None:
        """The table an object belongs to (the table itself for its pg_class row)."""
        return self.owners.get(_key(classid, oid))

    def schema_of(self, classid: int, oid: int) -> str | None:
        """The user schema a non-table object lives in."""
        return self.namespaces.get(_key(classid, oid))

    def depth(self, oid: int) -> int:
        """How many inheritance/partition levels sit above a table (parents restore first)."""
        seen: set[int] = set()
        level, frontier = 0, [oid]
        while True:
            parents = [p for o in frontier for p in self._parents(o) if p not in seen]
            if not parents:
                return level
            seen.update(parents)
            level, frontier = level + 1, parents

    def _parents(self, oid: int) -> tuple[int, ...]:
        info = self.table(oid)
        return info.parents if info else ()

    def _by_oid(self) -> dict[int, TableInfo]:
        cache = self.__dict__.get("_oid_cache")
        if cache is None or len(cache) != len(self.tables):
            cache = {t.oid: t for t in self.tables}
            self.__dict__["_oid_cache"] = cache
        return cache


def fetch_table_catalog(conn: psycopg.Connection, exclude_schemas: set[str] | None = None) -> TableCatalog:
    """Read the catalog; run it inside the dump's exported snapshot so it describes the same instant."""
    excluded = set(exclude_schemas or ())
    with conn.cursor() as cur:
        all_schemas = [row[1] for row in cur.execute(SCHEMAS_SQL).fetchall()]
        all_tables = [
            TableInfo(schema, name, kind, int(oid), tuple(int(p) for p in parents))
            for oid, schema, name, kind, parents in cur.execute(TABLES_SQL).fetchall()
        ]
        owned = cur.execute(OWNED_SQL).fetchall()
        namespaced = cur.execute(NAMESPACED_SQL).fetchall()
    tables = [t for t in all_tables if t.schema not in excluded]
    owner_oids = {t.oid for t in all_tables}
    owners = {_key(PG_CLASS, t.oid): t.oid for t in all_tables}
    for classid, objid, relid in owned:
        if int(relid) in owner_oids:
            owners[_key(int(classid), int(objid))] = int(relid)
    return TableCatalog(
        schemas=[s for s in all_schemas if s not in excluded],
        tables=tables,
        owners=owners,
        namespaces={_key(int(c), int(o)): nsp for c, o, nsp in namespaced},
        excluded_schemas=sorted(excluded & set(all_schemas)),
        excluded_tables=[t.oid for t in all_tables if t.schema in excluded],
    )
