"""Session-scoped real PostgreSQL servers (bundled 18, Debian's 15) and per-test databases on them."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster_tests.storage.conftest import bucket, moto_endpoint, s3_client, s3_env  # noqa: F401 (moto)

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
_db_counter = itertools.count()


def _server(name: str, bin_dir: Path | None = None) -> Iterator[LocalPostgres]:
    """A server outside pytest's temp tree: each pytest session resets that tree to 0700, which the
    unprivileged server user could then no longer enter."""
    root = Path(tempfile.mkdtemp(prefix=f"pgbd-test-{name}-"))
    server = LocalPostgres(root_dir=root / "pg", **({"bin_dir": bin_dir} if bin_dir else {}))
    server.start()
    try:
        yield server
    finally:
        server.destroy()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg18() -> Iterator[LocalPostgres]:
    """The bundled PostgreSQL 18 server."""
    yield from _server("pg18")


@pytest.fixture(scope="session")
def pg15() -> Iterator[LocalPostgres]:
    """Debian's PostgreSQL 15 server (installed by .ci/run)."""
    if not (PG15_BIN / "initdb").exists():
        pytest.skip("Debian postgresql-15 is not installed (apt-get install postgresql-15)")
    yield from _server("pg15", PG15_BIN)


def create_database(server: LocalPostgres, prefix: str = "db", sql: str | None = None) -> str:
    """Create a uniquely named database, optionally load SQL into it, and return its DSN."""
    name = f"{prefix}_{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = server.dsn(name)
    if sql:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)
    return dsn


@pytest.fixture
def new_database(pg18: LocalPostgres) -> Callable[..., str]:
    """Factory: a fresh database on the PostgreSQL 18 server, with optional SQL loaded."""
    return lambda prefix="db", sql=None: create_database(pg18, prefix, sql)


SAMPLE_SQL = Path(__file__).resolve().parents[1] / "pg_backup_dagster" / "demo" / "sample.sql"


def load_sql_file(dsn: str, path: Path) -> None:
    """Load a SQL file with psql (it may hold psql meta-commands), stopping at the first error."""
    import subprocess

    from pg_backup_dagster.pg.conninfo import split_password
    from pg_backup_dagster.pg.tools import find_tools

    safe, env = split_password(dsn)
    subprocess.run([find_tools().path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", safe, "-f", str(path)],
                   check=True, env={**os.environ, **env}, capture_output=True)


@pytest.fixture(scope="session")
def sample_dsn(pg18: LocalPostgres) -> str:
    """The demo's sample database, loaded once per test session on the PostgreSQL 18 server."""
    dsn = create_database(pg18, "sample")
    load_sql_file(dsn, SAMPLE_SQL)
    return dsn


def table_fingerprints(dsn: str, schemas: set[str] | None = None) -> dict[tuple[str, str], tuple[int, str]]:
    """(row count, md5 of all rows in a stable order) of every user table: equal fingerprints, equal content."""
    from psycopg import sql

    result = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2"
        ).fetchall()
        for schema, table in tables:
            if schemas is not None and schema not in schemas:
                continue
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM ONLY {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(table))
            count, digest = conn.execute(query).fetchone()
            result[(schema, table)] = (count, digest)
    return result
