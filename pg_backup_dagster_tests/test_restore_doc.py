"""RESTORE.md is run literally: its ```sh blocks, taken from a real published backup of the hostile database,
run with bash in the backup folder (only PATH, TARGET and the block's own variables set) and restore the same
content as the source, tier by tier."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.backup.restore_doc import COMPAT_FUNCTION
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import (
    back_up,
    hostile_database,
    index,
    run_every_table,
    run_section,
    sections,
)

ROLE = f"pgbd_doc_reader_{os.getpid()}"


@pytest.fixture(scope="module")
def source_dsn(pg18) -> str:
    return hostile_database(pg18, "doc_hostile", f"CREATE ROLE {ROLE} LOGIN CONNECTION LIMIT 7")


@pytest.fixture(scope="module")
def folder(source_dsn, pg18, tmp_path_factory) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        published = back_up(mp, "doc", source_dsn, str(tmp_path_factory.mktemp("doc_target")), pg18.dsn())
    assert published.folder is not None
    return published.folder


def test_every_tier_has_a_block(folder):
    assert list(sections((folder / "RESTORE.md").read_text())) == [
        "0. Check the files",
        "1. Roles",
        "2. The whole database",
        "3. One schema",
        "4. Any tables",
    ]


def test_checksums_block_passes_and_catches_a_changed_file(folder, pg18, tmp_path):
    assert run_section(folder, "0. Check the files", pg18.dsn()).returncode == 0
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    victim = next(copy.glob("public/tables/uses_types/data.sql"))
    victim.write_bytes(victim.read_bytes().replace(b"\t5", b"\t6"))
    result = run_section(copy, "0. Check the files", pg18.dsn())
    assert result.returncode != 0 and "public/tables/uses_types/data.sql: FAILED" in result.stdout


def test_whole_database_block(folder, source_dsn, pg18):
    target = create_database(pg18, "doc_full")
    result = run_section(folder, "2. The whole database", target)
    assert result.returncode == 0, result.stderr
    assert table_fingerprints(target) == table_fingerprints(source_dsn)


def test_schema_block_with_a_hostile_schema(folder, source_dsn, pg18):
    schema = 'we"ird.sch/ema'
    archive = next(p for p in index_archives(folder) if p.startswith("we%22ird"))
    target = create_database(pg18, "doc_schema")
    result = run_section(folder, "3. One schema", target, ARCHIVE=archive)
    assert result.returncode == 0, result.stderr
    restored = table_fingerprints(target)
    assert restored and restored == table_fingerprints(source_dsn, {schema})
    with psycopg.connect(target) as conn:
        assert conn.execute("""SELECT last_value FROM "we""ird.sch/ema"."free seq" """).fetchone()[0] == 42


def index_archives(folder: Path) -> list[str]:
    text = (folder / "RESTORE.md").read_text().split("## 3. One schema", 1)[1]
    block = re.search(r"^```text\n(.*?)^```$", text, flags=re.M | re.S)
    assert block is not None
    return [line.split("\t")[0] for line in block.group(1).splitlines()]


def test_tables_block_default_restores_its_example_table(folder, source_dsn, pg18):
    target = create_database(pg18, "doc_table")
    result = run_section(folder, "4. Any tables", target)
    assert result.returncode == 0, result.stderr
    restored = table_fingerprints(target)
    assert len(restored) == 1
    assert restored.items() <= table_fingerprints(source_dsn).items()


def test_tables_block_with_hostile_tables_into_a_fresh_database(folder, source_dsn, pg18):
    """Tables whose names hold a quote, dots, slashes, percent and a newline, with their schemas' objects."""
    wanted = [
        f for f in index((folder / "RESTORE.md").read_text()) if f.startswith(("we%22ird", "new%0Aline", "pct%252F"))
    ]
    assert len(wanted) == 4
    objects = " ".join(f"{f.split('/')[0]}/objects.sql" for f in dict.fromkeys(wanted))
    target = create_database(pg18, "doc_tables")
    result = run_section(folder, "4. Any tables", target, TABLES=" ".join(wanted), OBJECTS=objects)
    assert result.returncode == 0, result.stderr
    expected = table_fingerprints(source_dsn, {'we"ird.sch/ema', "new\nline", "pct%2F"})
    assert len(expected) == 4 and table_fingerprints(target) == expected


def test_tables_block_with_every_table_rebuilds_the_database(folder, source_dsn, pg18):
    """Every table of the index, in its order, plus every objects file: the per-table tier alone is complete."""
    target = create_database(pg18, "doc_all_tables")
    result = run_every_table(folder, target)
    assert result.returncode == 0, result.stderr
    assert table_fingerprints(target) == table_fingerprints(source_dsn)


def test_tables_block_fails_whole_when_a_file_is_missing(folder, pg18, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(folder), str(copy)], check=True)
    (copy / "case" / "tables" / "t" / "data.sql").unlink()
    target = create_database(pg18, "doc_missing")
    result = run_section(copy, "4. Any tables", target, TABLES="case/tables/T case/tables/t", OBJECTS="")
    assert result.returncode != 0 and "could not be read" in result.stderr
    assert table_fingerprints(target) == {}, "one transaction: nothing may be left behind"


def test_roles_block_into_another_server(folder):
    with ephemeral_server() as server:
        result = run_section(folder, "1. Roles", server.dsn())
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        assert all("already exists" in line for line in errors), result.stderr
        with psycopg.connect(server.dsn()) as conn:
            row = conn.execute("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone()
    assert row == (True, 7)


def test_compat_filter_drops_only_what_old_servers_reject():
    script = "\n".join(
        [
            "\\restrict KEY",
            "SET statement_timeout = 0;",
            "SET transaction_timeout = 0;",
            "COPY t (v) FROM stdin;",
            "SET transaction_timeout = 0;",
            "\\\\restrict x",
            "\\.",
            "\\unrestrict KEY",
            "",
        ]
    )
    result = subprocess.run(
        ["bash", "-c", f"{COMPAT_FUNCTION}\ncompat"], input=script, capture_output=True, text=True, check=True
    )
    assert result.stdout.splitlines() == [
        "SET statement_timeout = 0;",
        "COPY t (v) FROM stdin;",
        "SET transaction_timeout = 0;",
        "\\\\restrict x",
        "\\.",
    ]
