"""What a person would do without this tool: bare pg_dump/pg_restore, and one pg_dump per object."""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
from psycopg import sql

from benchmarks.measure import Sample, measured
from pg_backup_dagster.pg.conninfo import split_password
from pg_backup_dagster.pg.sql import quote_ident
from pg_backup_dagster.pg.tools import PgTools

COMPRESSIONS = ("gzip", "gzip:1", "zstd", "lz4", "none")
PER_OBJECT_WORKERS = 8


def run_pg_tool(argv: list[str], dsn: str) -> None:
    """Run a pg tool against dsn, password in the environment; raise with its stderr if it fails."""
    safe_dsn, env = split_password(dsn)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(
        [*argv, "--dbname", safe_dsn], env={**base, **env}, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed: {result.stderr.strip()[-500:]}")


def bare_dump(tools: PgTools, dsn: str, archive: Path, compression: str | None = None) -> Sample:
    """`pg_dump -Fc` of the whole database (pg_dump's default compression unless one is named)."""
    argv = [tools.path("pg_dump"), "--format=custom", "--file", str(archive)]
    if compression:
        argv.append(f"--compress={compression}")
    with measured() as sample:
        run_pg_tool(argv, dsn)
    return sample


def compression_supported(tools: PgTools, method: str) -> bool:
    """pg_dump rejects a method it was built without before connecting; probe with an unreachable DSN."""
    result = subprocess.run(
        [
            tools.path("pg_dump"),
            "--format=custom",
            f"--compress={method}",
            "--file",
            os.devnull,
            "--dbname",
            "postgresql://127.0.0.1:1/none?connect_timeout=1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return "invalid compression specification" not in result.stderr


def compression_choices(tools: PgTools, dsn: str, work: Path) -> dict[str, dict]:
    """Size and time of the full archive per compression method the client supports."""
    results: dict[str, dict] = {}
    for method in COMPRESSIONS:
        if not compression_supported(tools, method):
            results[method] = {"supported": False}
            continue
        archive = work / f"compress_{method}.dump"
        sample = bare_dump(tools, dsn, archive, method)
        results[method] = {"supported": True, "seconds": round(sample.seconds, 3), "bytes": archive.stat().st_size}
        archive.unlink()
    return results


def create_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def bare_restore(tools: PgTools, archive: Path, admin_dsn: str, dsn: str, jobs: int) -> Sample:
    """`pg_restore -j` into a fresh database on a running server, with the flags the restore check uses.

    The database is created, and the server checkpointed, before the clock starts, and dropped after it
    stops: dropping the previous round's database just before restoring slowed the restore by up to half.
    """
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    create_database(admin_dsn, name)
    checkpoint(admin_dsn)
    argv = [tools.path("pg_restore"), "--no-owner", "--no-privileges", f"--jobs={jobs}", str(archive)]
    with measured() as sample:
        run_pg_tool(argv, dsn)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    return sample


def checkpoint(*admin_dsns: str) -> None:
    """Flush what earlier measurements left dirty (dropped databases, restored tables), so it is not billed
    to the next one: every compared measurement starts from a settled server and page cache."""
    for admin_dsn in admin_dsns:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    os.sync()


def per_object_dump(tools: PgTools, dsn: str, schemas: list[str], tables: list[tuple[str, str]], work: Path) -> Sample:
    """The approach this project replaces: one pg_dump per schema plus two per table, 8 at a time."""
    pg_dump = tools.path("pg_dump")
    jobs: list[list[str]] = [
        [pg_dump, "--format=custom", f"--schema={quote_ident(s)}", "--file", str(work / f"schema_{i}.dump")]
        for i, s in enumerate(schemas)
    ]
    for i, (schema, table) in enumerate(tables):
        pattern = quote_ident(schema, table)
        jobs.append([pg_dump, "--schema-only", f"--table={pattern}", "--file", str(work / f"t{i}_schema.sql")])
        jobs.append([pg_dump, "--data-only", f"--table={pattern}", "--file", str(work / f"t{i}_data.sql")])
    work.mkdir(parents=True, exist_ok=True)
    with measured() as sample, ThreadPoolExecutor(max_workers=PER_OBJECT_WORKERS) as pool:
        list(pool.map(lambda argv: run_pg_tool(argv, dsn), jobs))
    return sample
