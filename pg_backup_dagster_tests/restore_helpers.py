"""Shared by the restore tests: back a real database up through Dagster, and run the CLI as a user would."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from typer.testing import CliRunner

from pg_backup_dagster.cli import app
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.pg.conninfo import split_password
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster_tests.helpers import create_database, load_sql_file

HOSTILE_SQL = Path(__file__).parent / "sql" / "hostile.sql"


def hostile_database(server: LocalPostgres, prefix: str, *statements: str) -> str:
    """A fresh database on server with hostile.sql loaded, then statements (say, a role for the roles tier) run."""
    dsn = create_database(server, prefix)
    load_sql_file(dsn, HOSTILE_SQL)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    return dsn


@dataclass
class Published:
    """A backup published by a real backup run: its source config, id, (for local targets) folder, and the
    env variables the source config names (its DSN and restore server), for whoever runs it again."""

    source: SourceConfig
    backup_id: str
    folder: Path | None
    env: dict[str, str]


def back_up(
    monkeypatch: pytest.MonkeyPatch, name: str, dsn: str, target: str, restore_server: str, **settings: Any
) -> Published:
    """One backup run of the database at dsn through Dagster (job backup_{name}); fails the test if it fails.

    The source's env variables are set with monkeypatch (a module-scoped fixture passes its own
    `pytest.MonkeyPatch.context()`), so they end with the caller's scope. The checks restore on
    restore_server (a running server's maintenance DSN) rather than on throwaway servers. settings: more
    SourceConfig fields (say, signing_key_env).
    """
    env_var, restore_var = f"PGBD_TEST_{name.upper()}_DSN", f"PGBD_TEST_{name.upper()}_RESTORE_URL"
    env = {env_var: dsn, restore_var: restore_server}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # restore_jobs=1: the check's parallel pg_restore can deadlock on the hostile schema's foreign key to a
    # partitioned table (PostgreSQL, ~1 run in 20); restore.py avoids it with a separate foreign-key pass.
    source = SourceConfig(name=name, dsn_env=env_var, target=target, restore_url_env=restore_var, restore_jobs=1,
                          **settings)
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance)
    assert outcome.success, outcome.errors
    folder = None if target.startswith("s3://") else Path(target) / name / outcome.backup_id
    return Published(source, outcome.backup_id, folder, env)


def tampered_copy(published: Published, root: Path, relpath: str, change: Callable[[bytes], bytes]) -> Published:
    """A copy of the published backup with one file changed and its sha256 updated in manifest.json and
    SHA256SUMS, so verification passes: what a compromised source or storage could publish."""
    shutil.copytree(published.source.target, root, symlinks=True)
    folder = root / published.source.name / published.backup_id
    path = folder / relpath
    path.write_bytes(change(path.read_bytes()))
    manifest = json.loads((folder / "manifest.json").read_text())

    def refresh(rel: str) -> str:
        data = (folder / rel).read_bytes()
        entry = next(e for e in manifest["files"] if e["path"] == rel)
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        return entry["sha256"]

    digest = refresh(relpath)
    sums = folder / "SHA256SUMS"
    sums.write_text(
        "".join(f"{digest}  {relpath}\n" if line.endswith(f"  {relpath}") else line + "\n"
                for line in sums.read_text().splitlines())
    )
    refresh("SHA256SUMS")
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    source = dataclasses.replace(published.source, target=str(root))
    return Published(source, published.backup_id, folder, published.env)


def cli(published: Published, *args: str, env: dict[str, str] | None = None):
    """Run pg-backup-dagster with the source's settings in the environment, as a person would."""
    source = published.source
    base = {
        "PG_BACKUP_TARGET": source.target,
        "PG_BACKUP_SOURCE": source.name,
        "PG_BACKUP_CONFIG": "",
        "PG_BACKUP_DATABASE_URL": published.env[source.dsn_env],
        "PG_BACKUP_RESTORE_URL": published.env[source.restore_url_env or ""],
    }
    return CliRunner().invoke(app, list(args), env={**base, **(env or {})}, catch_exceptions=False)


def sections(restore_md: str) -> dict[str, str]:
    """Section title ("2. The whole database") -> its ```sh block, exactly as written."""
    found = {}
    for part in re.split(r"^## ", restore_md, flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        blocks = re.findall(r"^```sh\n(.*?)^```$", body, flags=re.M | re.S)
        if blocks:
            assert len(blocks) == 1, title
            found[title.strip()] = blocks[0]
    return found


def index(restore_md: str) -> list[str]:
    """Table folders from the index at the end, in their listed order."""
    body = restore_md.split("## Index of tables", 1)[1]
    block = re.search(r"^```text\n(.*?)^```$", body, flags=re.M | re.S)
    assert block is not None
    return [line.split("\t")[0] for line in block.group(1).splitlines()]


def run_section(folder: Path, title: str, target_dsn: str, **variables: str) -> subprocess.CompletedProcess:
    """Run one section's block with bash in the backup folder; password through PGPASSWORD as RESTORE.md says."""
    block = sections((folder / "RESTORE.md").read_text())[title]
    safe, pw_env = split_password(target_dsn)
    env = {"PATH": f"{find_tools().bin_dir}:/usr/bin:/bin", "TARGET": safe, **pw_env, **variables}
    return subprocess.run(["bash", "-c", block], cwd=folder, env=env, capture_output=True, text=True, check=False)


def run_every_table(folder: Path, target_dsn: str) -> subprocess.CompletedProcess:
    """Section 4 with every table of the index, in its order, plus every objects file: the whole database."""
    objects = ["global_objects.sql", *sorted(p.relative_to(folder).as_posix() for p in folder.glob("*/objects.sql"))]
    return run_section(
        folder,
        "4. Any tables",
        target_dsn,
        TABLES=" ".join(index((folder / "RESTORE.md").read_text())),
        OBJECTS=" ".join(objects),
        LATE="global_objects_late.sql",
    )


def restore_full_dump(archive: Path, dsn: str) -> None:
    """pg_restore a full-tier archive into dsn, password through the environment; fails the test if it fails."""
    safe, env = split_password(dsn)
    subprocess.run(
        [
            find_tools().path("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
            safe,
            str(archive),
        ],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )
