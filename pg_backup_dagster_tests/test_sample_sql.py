"""The demo's sample database loads (psycopg and psql), holds every promised object, and is deterministic.

The backup tiers are only as well tested as the objects the sample contains, so each promise of the
file's header is checked against the catalogs here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pg_backup_dagster
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster_tests.helpers import create_database

SAMPLE = Path(pg_backup_dagster.__file__).parent / "demo" / "sample.sql"
SCHEMAS = ("analytics", "audit", "crm", "shop")


def psql_file(dsn: str, path: Path, *, as_user: str | None = None) -> subprocess.CompletedProcess:
    """psql -v ON_ERROR_STOP=1 -f path, the password in the environment (never argv)."""
    info = conninfo_to_dict(dsn)
    env = {**os.environ, "PGPASSWORD": str(info.get("password", ""))}
    args = [
        find_tools().path("psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(info["host"]),
        "-p",
        str(info["port"]),
        "-U",
        as_user or str(info["user"]),
        "-d",
        str(info["dbname"]),
        "-f",
        str(path),
    ]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def sample_dsn(pg18: LocalPostgres) -> str:
    """The sample loaded with one psycopg execute(), as the demo does."""
    return create_database(pg18, "sample", SAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def conn(sample_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(sample_dsn, autocommit=True) as connection:
        yield connection


def scalar(conn: psycopg.Connection, query: str, *params: object) -> object:
    return conn.execute(query, params or None).fetchone()[0]


def test_schemas_and_tables(conn: psycopg.Connection) -> None:
    schemas = {
        r[0]
        for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [list(SCHEMAS)])
    }
    assert schemas == set(SCHEMAS)
    tables = scalar(
        conn,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        list(SCHEMAS),
    )
    assert tables >= 12
    fks = scalar(
        conn,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace::regnamespace::text"
        " = ANY(%s) AND conparentid = 0",
        list(SCHEMAS),
    )
    assert fks >= 10
    cross_schema = scalar(
        conn,
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid::regclass::text = 'shop.orders' AND confrelid::regclass::text = 'crm.customers'",
    )
    assert cross_schema == 1


def test_types_sequences_and_columns(conn: psycopg.Connection) -> None:
    enums = {
        r[0]
        for r in conn.execute(
            "SELECT t.typname FROM pg_type t WHERE t.typtype = 'e' "
            "AND t.typnamespace::regnamespace::text = ANY(%s)",
            [list(SCHEMAS)],
        )
    }
    assert enums == {"customer_tier", "order_status"}
    assert scalar(conn, "SELECT typtype FROM pg_type WHERE oid = 'crm.address'::regtype") == "c"
    assert scalar(conn, "SELECT typtype FROM pg_type WHERE oid = 'shop.money_amount'::regtype") == "d"
    identity = scalar(
        conn,
        "SELECT count(*) FROM pg_attribute WHERE attidentity <> '' "
        "AND attrelid::regclass::text LIKE ANY(ARRAY['crm.%%', 'shop.%%', 'audit.%%'])",
    )
    assert identity >= 6
    standalone = {
        r[0]
        for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'S' AND NOT EXISTS ("
            " SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid"
            " AND d.deptype IN ('a', 'i'))"
            " AND c.relnamespace::regnamespace::text = ANY(%s)",
            [list(SCHEMAS)],
        )
    }
    assert standalone == {"shop.invoice_number_seq", "analytics.event_id_seq"}
    generated = {
        r[0]
        for r in conn.execute(
            "SELECT attrelid::regclass::text || '.' || attname FROM pg_attribute WHERE attgenerated = 's' "
            "AND attrelid::regclass::text LIKE 'shop.%%'"
        )
    }
    assert generated == {"shop.products.price_gross", "shop.order_items.line_total"}
    jsonb = scalar(
        conn,
        "SELECT count(*) FROM pg_attribute WHERE atttypid = 'jsonb'::regtype AND NOT attisdropped "
        "AND attrelid::regclass::text IN ('crm.customers', 'shop.products', 'audit.log')",
    )
    assert jsonb == 3


def test_partitioned_table(conn: psycopg.Connection) -> None:
    assert scalar(conn, "SELECT relkind FROM pg_class WHERE oid = 'analytics.events'::regclass") == "p"
    parts = [
        r[0]
        for r in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'analytics.events'::regclass ORDER BY 1"
        )
    ]
    assert parts == ["analytics.events_2025_q1", "analytics.events_2025_q2", "analytics.events_2025_q3"]
    for part in parts:
        assert scalar(conn, f"SELECT count(*) FROM {part}") > 0


def test_views_functions_triggers_indexes_comments(conn: psycopg.Connection) -> None:
    kinds = dict(
        conn.execute(
            "SELECT oid::regclass::text, relkind::text FROM pg_class "
            "WHERE oid::regclass::text IN ('shop.order_totals', 'crm.top_customers', "
            "'analytics.daily_revenue')"
        ).fetchall()
    )
    assert kinds == {"shop.order_totals": "v", "crm.top_customers": "v", "analytics.daily_revenue": "m"}
    assert scalar(conn, "SELECT relispopulated FROM pg_class WHERE oid = 'analytics.daily_revenue'::regclass")
    plpgsql = scalar(
        conn,
        "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE l.lanname = 'plpgsql' AND p.pronamespace::regnamespace::text = ANY(%s)",
        list(SCHEMAS),
    )
    assert plpgsql >= 3
    triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert {"orders_audit", "products_audit", "customers_normalize_email"} <= triggers
    # The audit trigger fired during the load: one row per product and per order.
    assert scalar(conn, "SELECT count(*) FROM audit.log") == 1100
    assert scalar(conn, "SELECT count(*) FROM crm.customers WHERE email <> lower(trim(email))") == 0
    indexes = scalar(
        conn,
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relnamespace::regnamespace::text = ANY(%s) AND NOT i.indisprimary",
        list(SCHEMAS),
    )
    assert indexes >= 10
    comments = scalar(
        conn,
        "SELECT count(*) FROM pg_description d JOIN pg_class c ON c.oid = d.objoid "
        "WHERE d.classoid = 'pg_class'::regclass AND c.relnamespace::regnamespace::text = ANY(%s)",
        list(SCHEMAS),
    )
    assert comments >= 5


def test_large_object_roles_and_grants(conn: psycopg.Connection) -> None:
    assert scalar(conn, "SELECT count(*) FROM pg_largeobject_metadata") >= 1
    assert scalar(conn, "SELECT lo_get(min(oid)) FROM pg_largeobject_metadata") == b"hello"
    roles = dict(
        conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles "
            "WHERE rolname IN ('app_reader', 'app_writer', 'app_login')"
        ).fetchall()
    )
    assert roles == {"app_reader": False, "app_writer": False, "app_login": True}
    assert scalar(
        conn, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = 'app_login'"
    )
    assert scalar(conn, "SELECT pg_has_role('app_login', 'app_reader', 'USAGE')")
    assert scalar(conn, "SELECT has_table_privilege('app_reader', 'analytics.events', 'SELECT')")
    assert scalar(conn, "SELECT has_table_privilege('app_writer', 'shop.orders', 'INSERT')")
    assert not scalar(conn, "SELECT has_table_privilege('app_reader', 'shop.orders', 'INSERT')")


def test_row_totals(conn: psycopg.Connection) -> None:
    total = 0
    for (table,) in conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'r' "
        "AND c.relnamespace::regnamespace::text = ANY(%s)",
        [list(SCHEMAS)],
    ).fetchall():
        total += scalar(conn, f"SELECT count(*) FROM {table}")
    assert 3000 <= total <= 20000


def _fingerprint(dsn: str) -> dict[str, str]:
    """md5 of every table's rows in key order (audit timestamps left out: they record the load time)."""
    with psycopg.connect(dsn) as c:
        tables = [
            r[0]
            for r in c.execute(
                "SELECT c.oid::regclass::text FROM pg_class c"
                " WHERE c.relkind = 'r' AND c.relnamespace::regnamespace::text"
                " = ANY(%s) ORDER BY 1",
                [list(SCHEMAS)],
            )
        ]
        out = {}
        for table in tables:
            cols = "t" if table != "audit.log" else "(t.id, t.table_name, t.operation, t.row_data)"
            out[table] = c.execute(
                f"SELECT md5(string_agg({cols}::text, '|' ORDER BY {cols}::text)) FROM {table} t"
            ).fetchone()[0]
        return out


def test_psql_loads_it_again_identically(pg18: LocalPostgres, sample_dsn: str) -> None:
    """psql with ON_ERROR_STOP loads the same file on the same server (roles exist) to the same rows."""
    second = create_database(pg18, "sample_psql")
    result = psql_file(second, SAMPLE)
    assert result.returncode == 0, result.stderr
    assert _fingerprint(second) == _fingerprint(sample_dsn)
