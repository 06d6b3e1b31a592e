"""Plain helpers shared by the tests: databases on the real servers, their content, and a moto subprocess.

Fixtures live in pg_backup_dagster_tests/fixtures/ (pytest plugins registered in conftest.py); these are
ordinary functions, imported by name.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.pg.local_server import LocalPostgres

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
SAMPLE_SQL = Path(__file__).resolve().parents[1] / "pg_backup_dagster" / "demo" / "sample.sql"
_db_counter = itertools.count()


# --- databases ------------------------------------------------------------------------------------------
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


def load_sql_file(dsn: str, path: Path) -> None:
    """Load a SQL file with psql (it may hold psql meta-commands), stopping at the first error."""
    from pg_backup_dagster.pg.conninfo import split_password
    from pg_backup_dagster.pg.tools import find_tools

    safe, env = split_password(dsn)
    subprocess.run([find_tools().path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", safe, "-f", str(path)],
                   check=True, env={**os.environ, **env}, capture_output=True)


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


# --- moto (S3 over real HTTP) ---------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_command(port: int) -> list[str]:
    """argv of a moto server on 127.0.0.1:port; skips the test where moto[server] is not installed."""
    script = Path(sys.executable).with_name("moto_server")
    exe = str(script) if script.exists() else shutil.which("moto_server")
    if not exe:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    return [exe, "-H", "127.0.0.1", "-p", str(port)]


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until the moto server at url answers; fails if it exits or stays silent for timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout}s")
