"""Issue 17: rows are proven by content, not only by count. Real backups through Dagster, real restores, real amcheck.

The source holds what could make a restored table's COPY text differ from pg_dump's without any row changing:
rows moved by UPDATE (physical order is not insertion order), session settings pg_dump leaves to the database
(TimeZone, bytea_output), dropped and generated columns, a child whose column order changes on restore, a table
without columns, floats, money, hostile names. Every table must come back identical in content; one changed row,
with every file hash recomputed, must be named.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zlib
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pg_backup_dagster.backup.dumps import dump_full_and_schemas
from pg_backup_dagster.backup.manifest import parse_manifest
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.backup.step import StepContext
from pg_backup_dagster.config import HEAPALLINDEXED_ENV, RTO_BUDGET_ENV, SourceConfig, source_from_env
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.source import SourceDatabase
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster.tiers.archive import (
    COMPRESSION_GZIP,
    OFFSET_SET,
    ArchiveReader,
    block_chunks,
    block_data,
    read_archive,
    write_subset,
)
from pg_backup_dagster.tiers.content import archive_digests
from pg_backup_dagster.verify.amcheck import check_btree_indexes
from pg_backup_dagster.verify.content import ContentSpec, MarkedStream, not_comparable, restored_content
from pg_backup_dagster.verify.tiers import check_table_files
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import (
    Published,
    back_up,
    cli,
    hostile_database,
    restore_full_dump,
    tampered_copy,
)

SETTINGS = ("timezone = 'Asia/Kathmandu'", "bytea_output = 'escape'")  # ALTER DATABASE … SET of the source
SQL = """
CREATE TABLE public.moved (id int PRIMARY KEY, note text);
INSERT INTO public.moved SELECT g, repeat('x', g % 50) FROM generate_series(1, 3000) g;
UPDATE public.moved SET note = note || 'y' WHERE id % 7 = 0;
CREATE TABLE public.kinds (
    id int GENERATED ALWAYS AS IDENTITY, dropme int, ts timestamptz, d date, iv interval, f float8, r real,
    b bytea, j jsonb, n numeric, m money, p point, arr float8[], gen int GENERATED ALWAYS AS (id * 2) STORED);
ALTER TABLE public.kinds DROP COLUMN dropme;
INSERT INTO public.kinds (ts, d, iv, f, r, b, j, n, m, p, arr)
SELECT timestamptz '2026-01-01 00:00+00' - g * interval '7 hours 3 minutes', date '2026-01-01' - g,
       g * interval '1 day 2 hours', 1.0 / g, 1.0 / (g + 1), decode(md5(g::text), 'hex'),
       jsonb_build_object('g', g, 'f', 1.0 / g), g / 3.0, g * 1.5, point(g, 1.0 / g), ARRAY[1.0 / g, g]
FROM generate_series(1, 500) g;
CREATE TABLE public.parent (a int);
CREATE TABLE public.child (c text) INHERITS (public.parent);
ALTER TABLE public.parent ADD COLUMN z int;
INSERT INTO public.child (a, c, z) VALUES (1, 'one', 10), (2, 'two', 20);
CREATE TABLE public.nocols ();
INSERT INTO public.nocols DEFAULT VALUES;
INSERT INTO public.nocols DEFAULT VALUES;
CREATE INDEX ON public.kinds (ts);
"""
MOVED_DATA = "public/tables/moved/data.sql"


def with_source_settings(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for setting in SETTINGS:
            conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET {setting}')
    return dsn


@pytest.fixture(scope="module")
def published(pg18, tmp_path_factory) -> Published:
    dsn = with_source_settings(hostile_database(pg18, "content", SQL))
    with pytest.MonkeyPatch.context() as mp:
        return back_up(mp, "content", dsn, str(tmp_path_factory.mktemp("content_target")), pg18.dsn())


def manifest_of(published: Published) -> dict:
    assert published.folder is not None
    return json.loads((published.folder / "manifest.json").read_text())


def test_every_table_is_identical_in_content_after_the_full_and_the_table_restores(published):
    manifest = manifest_of(published)
    assert manifest["format_version"] == 2
    assert manifest["copy_settings"]["TimeZone"] == "Asia/Kathmandu"
    assert manifest["copy_settings"]["bytea_output"] == "escape"
    tables = {(t["schema"], t["table"]): t for t in manifest["tables"]}
    assert all(re.fullmatch(r"[0-9a-f]{64}", t["sha256"] or "") for t in tables.values()), tables
    full, per_table = manifest["checks"]["full_dump_restores"], manifest["checks"]["table_dumps_restore"]
    assert full["passed"] and full["content_not_compared"] == {}, full
    assert f"({len(tables)} also identical in content)" in full["description"]
    assert per_table["passed"] and per_table["content_not_compared"] == {}, per_table
    assert "also identical in content" in per_table["description"]
    assert full["amcheck"] == "ran" and full["indexes_checked"] >= 3 and full["indexes_corrupt"] == 0
    assert full["indexes_heapallindexed"] == 0  # structure and order only, by default


def test_verify_with_a_full_restore_proves_content(published):
    result = cli(published, "verify", published.backup_id, "--full-restore")
    assert result.exit_code == 0, result.output
    tables = len(manifest_of(published)["tables"])
    assert f"0 differ, {tables} identical in content" in result.output
    assert "B-tree indexes checked" in result.output


def change_row(data: bytes) -> bytes:
    """Row 2 of public.moved, same length: only its content hash can tell."""
    changed = data.replace(b"\n2\txx\n", b"\n2\tyy\n", 1)
    assert changed != data and len(changed) == len(data)
    return changed


def test_verify_names_a_data_sql_whose_rows_differ_from_the_full_dump(published, tmp_path):
    copy = tampered_copy(published, tmp_path / "copy", MOVED_DATA, change_row)
    result = cli(copy, "verify", copy.backup_id)
    assert result.exit_code == 1
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert bad == [f"BAD {MOVED_DATA}: rows of public.moved differ from the full dump's "
                   "(content hash differs from the manifest's)"], result.output


def with_rows_changed(archive: Path, table: bytes, change: Callable[[bytes], bytes], dest: Path) -> bytes:
    """The archive with one table's data block re-written (its rows changed, recompressed) and every later block's
    offset moved in the TOC: a valid full dump whose rows differ from the manifest's in that table only."""
    read = read_archive(archive)
    entry = next(e for e in read.entries if e.desc == "TABLE DATA" and e.tag == table)
    start, end, raw = entry.offset, read.block_ends[entry.dump_id], archive.read_bytes()
    reader = ArchiveReader(io.BytesIO(raw[start:end]), read.int_size, read.off_size)
    head = bytes([reader.byte()]) + reader.raw(1 + read.int_size)
    rows = change(b"".join(block_data(block_chunks(reader), read.compression, "test")))
    packed = zlib.compress(rows) if read.compression == COMPRESSION_GZIP else rows

    def integer(value: int) -> bytes:
        return b"\0" + value.to_bytes(read.int_size, "little")

    block = head + integer(len(packed)) + packed + integer(0)
    delta = len(block) - (end - start)
    for other in read.entries:
        if other.offset_state == OFFSET_SET and other.offset > start:
            other.offset += delta
    read.size += delta
    del read.__dict__["block_ends"]  # cached for the old layout
    source = dest.with_suffix(".blocks")
    source.write_bytes(raw[:start] + block + raw[end:])
    write_subset(source, read, read.entries, dest)
    return dest.read_bytes()


def test_full_restore_names_the_table_whose_rows_changed(published, tmp_path):
    assert published.folder is not None
    archive = f"database_full_{published.backup_id}.dump"
    changed = with_rows_changed(published.folder / archive, b"moved", change_row, tmp_path / "changed.dump")
    copy = tampered_copy(published, tmp_path / "copy", archive, lambda _: changed)
    assert cli(copy, "verify", copy.backup_id).exit_code == 0, "every file matches its (recomputed) hash"
    result = cli(copy, "verify", copy.backup_id, "--full-restore")
    assert result.exit_code == 1
    assert "test restore FAILED" in result.output and "1 differ" in result.output, result.output
    named = [line.strip() for line in result.output.splitlines() if "content differs" in line]
    assert named == ["public.moved: expected 3000 rows, restored 3000, content differs"], result.output


def test_clean_restore_refuses_a_database_whose_rows_differ_in_content_and_keeps_the_target(
    published, tmp_path, pg18
):
    """Before: restore compared row counts only, so --clean switched a full archive with one row changed (same
    count, file hashes recomputed: what a compromised storage could publish) in over a good database."""
    assert published.folder is not None
    archive = f"database_full_{published.backup_id}.dump"
    changed = with_rows_changed(published.folder / archive, b"moved", change_row, tmp_path / "changed.dump")
    copy = tampered_copy(published, tmp_path / "copy", archive, lambda _: changed)
    target = pg18.dsn(f"clean_content_{os.getpid()}")
    good = cli(published, "restore", published.backup_id, "--create-db", env={"PG_BACKUP_RESTORE_TO": target})
    assert good.exit_code == 0, good.output
    assert "rows identical to the dump by content hash" in good.output
    before = table_fingerprints(target)
    result = cli(copy, "restore", copy.backup_id, "--clean", env={"PG_BACKUP_RESTORE_TO": target})
    assert result.exit_code != 0
    assert "public.moved (rows differ in content, same count 3000)" in result.output, result.output
    assert "untouched" in result.output
    assert table_fingerprints(target) == before


CORRUPTIBLE = """
CREATE FUNCTION public.cmp(int, int) RETURNS int LANGUAGE sql IMMUTABLE
    AS 'SELECT CASE WHEN $1 < $2 THEN -1 WHEN $1 > $2 THEN 1 ELSE 0 END';
CREATE OPERATOR CLASS public.int4_by_cmp FOR TYPE int4 USING btree AS
    OPERATOR 1 <, OPERATOR 2 <=, OPERATOR 3 =, OPERATOR 4 >=, OPERATOR 5 >, FUNCTION 1 public.cmp(int, int);
CREATE TABLE public.t (v int PRIMARY KEY);
INSERT INTO public.t SELECT generate_series(1, 2000);
CREATE INDEX t_by_cmp ON public.t (v public.int4_by_cmp);
"""


def test_amcheck_finds_every_index_of_a_sound_database_sound(pg18):
    dsn = create_database(pg18, "sound", CORRUPTIBLE)
    report = check_btree_indexes(dsn)  # structure and order only, the default
    assert report.unavailable is None and report.corrupt == []
    assert report.checked == 2 and report.heapallindexed == 0
    report = check_btree_indexes(dsn, heapallindexed=True)
    assert report.unavailable is None and report.corrupt == []
    assert report.checked == 2 and report.heapallindexed == 2


def test_amcheck_names_an_index_whose_order_no_longer_holds(pg18):
    """The operator class's comparison is reversed after the index was built: its entries are out of order. The
    structure check finds it without heapallindexed (the default)."""
    dsn = create_database(pg18, "corrupt", CORRUPTIBLE)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE OR REPLACE FUNCTION public.cmp(int, int) RETURNS int LANGUAGE sql IMMUTABLE "
                     "AS 'SELECT CASE WHEN $1 < $2 THEN 1 WHEN $1 > $2 THEN -1 ELSE 0 END'")
    report = check_btree_indexes(dsn)
    assert [c["index"] for c in report.corrupt] == ["public.t_by_cmp"], report.corrupt
    assert "order" in report.corrupt[0]["error"]


def test_amcheck_unavailable_is_said_not_failed(pg18):
    """A check server where the restore's role may not create amcheck: said in the report, nothing failed."""
    dsn = create_database(pg18, "noamcheck", "CREATE TABLE t (id int PRIMARY KEY)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE pgbd_no_amcheck; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute(f'GRANT CREATE ON DATABASE "{conn.info.dbname}" TO pgbd_no_amcheck')
    report = check_btree_indexes(make_conninfo(dsn, options="-c role=pgbd_no_amcheck"))
    assert report.unavailable is not None and "amcheck" in report.unavailable
    assert report.checked == 0 and report.corrupt == []


def test_tables_compared_by_count_only_are_named_with_the_reason(published, pg18):
    """Floats print differently across PostgreSQL 12 (and money without the dump's lc_monetary): those tables fall
    back to counts, each named with why; nothing else does."""
    assert published.folder is not None
    archive = published.folder / f"database_full_{published.backup_id}.dump"
    scratch = create_database(pg18, "fallback")
    restore_full_dump(archive, scratch)
    tables = manifest_of(published)["tables"]
    spec = ContentSpec.of_archive(archive, {"lc_monetary": "xx_NOWHERE"}, source_major=11)
    assert spec is not None
    reasons = not_comparable(scratch, spec, tables)
    assert set(reasons) == {("public", "kinds")}, reasons
    assert "float output changed in PostgreSQL 12; dumped from 11, restored on 18" in reasons[("public", "kinds")]
    assert "money output depends on lc_monetary 'xx_NOWHERE'" in reasons[("public", "kinds")]
    same_major = ContentSpec.of_archive(archive, {}, source_major=18)
    assert same_major is not None and not_comparable(scratch, same_major, tables) == {}


def test_a_restore_over_its_rto_budget_warns_and_still_publishes(pg18, tmp_path, monkeypatch):
    dsn = create_database(pg18, "rto", "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 100000) g")
    monkeypatch.setenv("PGBD_TEST_RTO_DSN", dsn)
    source = SourceConfig(name="rto", dsn_env="PGBD_TEST_RTO_DSN", target=str(tmp_path), restore_url_env=None,
                          tiers=("full",), rto_budget_seconds=0.001)
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance)
        records = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey(["rto", "full_dump"]), "full_dump_restores"), limit=1)
    assert outcome.success, outcome.errors
    passed, description = outcome.checks["full_dump_restores"]
    assert passed and description.startswith("warning: restore took "), description
    assert "over the RTO budget of 0.001s" in description
    evaluation = records[0].event.dagster_event.event_specific_data
    assert evaluation.severity == dg.AssetCheckSeverity.WARN and not evaluation.passed
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert metadata["rto_exceeded"] is True and metadata["restore_duration_s"] > 0.001
    assert metadata["restore_throughput_mib_s"] > 0 and metadata["restore_rows_per_s"] > 0
    manifest = parse_manifest((tmp_path / "rto" / outcome.backup_id / "manifest.json").read_bytes(), "manifest")
    record = manifest.checks["full_dump_restores"]
    assert manifest.passed and record.passed and "RTO budget" in (record.model_extra or {})["warning"]
    assert manifest.tables[0].sha256 and "(1 also identical in content)" in record.description, "tier off: hashed"


def test_heapallindexed_is_off_by_default_and_a_setting_of_the_source():
    assert SourceConfig().amcheck_heapallindexed is False
    assert source_from_env({}).amcheck_heapallindexed is False
    assert source_from_env({HEAPALLINDEXED_ENV: "on"}).amcheck_heapallindexed is True
    assert source_from_env({HEAPALLINDEXED_ENV: "off"}).amcheck_heapallindexed is False
    with pytest.raises(BackupError, match=HEAPALLINDEXED_ENV):
        source_from_env({HEAPALLINDEXED_ENV: "sometimes"})
    with pytest.raises(BackupError, match="'amcheck_heapallindexed'"):
        SourceConfig(amcheck_heapallindexed="yes")  # type: ignore[arg-type]


def test_rto_budget_from_the_environment_and_its_validation():
    assert source_from_env({RTO_BUDGET_ENV: "90"}).rto_budget_seconds == 90.0
    assert source_from_env({}).rto_budget_seconds is None
    with pytest.raises(BackupError, match=RTO_BUDGET_ENV):
        source_from_env({RTO_BUDGET_ENV: "soon"})
    with pytest.raises(BackupError, match="'rto_budget_seconds'"):
        SourceConfig(rto_budget_seconds=0)


def test_a_version_1_manifest_still_reads(published):
    document = manifest_of(published)
    document["format_version"] = 1
    del document["copy_settings"]
    for table in document["tables"]:
        del table["sha256"]
    manifest = parse_manifest(json.dumps(document).encode(), "v1 manifest")
    assert manifest.format_version == 1 and all(t.sha256 is None for t in manifest.tables)


def test_table_check_names_a_table_whose_data_sql_rows_changed(pg18, tmp_path):
    """The table tier's check restores data.sql files and compares them with the full archive's content hashes."""
    dsn = create_database(pg18, "tablecheck", SQL)
    pg = SourceDatabase(dsn, source="tablecheck")
    staging = Staging(tmp_path / "staging", "2026-01-01T00-00-00Z")
    staging.root.mkdir()
    dumps, tables = dump_full_and_schemas(pg, staging, "plain", 18)
    assert tables is not None
    staging.save(dumps)
    staging.save(tables)
    step = StepContext(staging.backup_id, pg, open_storage(str(tmp_path / "target")), staging)
    source = SourceConfig(name="tablecheck", dsn_env="PGBD_UNUSED", target=str(tmp_path / "target"),
                          restore_url_env=None)  # checked on an ephemeral server
    intact = check_table_files(step, source, ())
    assert intact.passed and intact.details["content_not_compared"] == {}, intact.description
    data = staging.root / MOVED_DATA
    data.write_bytes(change_row(data.read_bytes()))
    outcome = check_table_files(step, source, ())
    assert not outcome.passed
    assert outcome.description == "1 table(s) differ: public.moved (rows differ in content, same count 3000)"


@pytest.mark.parametrize("chunk", [1, 2, 7, 40, 1 << 20])
def test_a_psql_stream_is_cut_at_its_markers_whatever_the_chunk_size(chunk):
    """Markers may straddle reads; rows that merely look like markers (another token) stay rows."""
    token = b"0123abcd"
    tables = [b"1\tone\n2\ttwo\n", b"", b"pgbd-ffffffff 1\n\\\\.x\n", b"\n\n"]
    stream = b"".join(b"pgbd-%s %d\n" % (token, i) + rows for i, rows in enumerate(tables)) + b"pgbd-%s end\n" % token
    segments = MarkedStream(token)
    for start in range(0, len(stream), chunk):
        segments.feed(stream[start : start + chunk])
    assert [(f.sha256, f.rows) for f in segments.found] == [
        (hashlib.sha256(rows).hexdigest(), rows.count(b"\n")) for rows in tables]


def test_a_table_whose_copy_fails_has_no_hash_and_the_others_are_still_read(pg18):
    dsn = create_database(pg18, "copyfails", "CREATE TABLE a (id int); CREATE TABLE b (id int); CREATE TABLE c (id int);"
                                             "INSERT INTO a VALUES (1), (2); INSERT INTO c VALUES (3)")
    columns = {(b"public", b"a"): [b"id"], (b"public", b"b"): [b"no such column"], (b"public", b"c"): [b"id"]}
    spec = ContentSpec(columns, "UTF8", {}, source_major=18)
    found = restored_content(dsn, spec, [("public", "a"), ("public", "b"), ("public", "c")], find_tools().path("psql"))
    assert [(f.sha256, f.rows) for f in found] == [
        (hashlib.sha256(b"1\n2\n").hexdigest(), 2), (None, -1), (hashlib.sha256(b"3\n").hexdigest(), 1)]


def test_the_archive_reader_and_the_table_split_take_the_same_hashes(published, pg18):
    """Without the table tier the hashes come from one read of the archive: the same as the split's."""
    assert published.folder is not None
    digests = archive_digests(published.folder / f"database_full_{published.backup_id}.dump")
    with psycopg.connect(published.env[published.source.dsn_env]) as conn:
        keys = {oid: (schema, table) for oid, schema, table in conn.execute(
            "SELECT c.oid::int, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r'")}
    by_name = {keys[oid]: sha for oid, (sha, _) in digests.items() if oid in keys}
    tables = manifest_of(published)["tables"]
    assert by_name == {(t["schema"], t["table"]): t["sha256"] for t in tables}


def test_a_version_1_backup_verifies_by_counts_and_says_so(published, tmp_path):
    copy = tampered_copy(published, tmp_path / "copy", MOVED_DATA, lambda data: data)
    assert copy.folder is not None
    document = json.loads((copy.folder / "manifest.json").read_text())
    document["format_version"] = 1
    del document["copy_settings"]
    for table in document["tables"]:
        table.pop("sha256")
    (copy.folder / "manifest.json").write_text(json.dumps(document))
    result = cli(copy, "verify", copy.backup_id, "--full-restore")
    assert result.exit_code == 0, result.output
    tables = len(document["tables"])
    assert "0 differ, 0 identical in content" in result.output
    assert "compared by count only (no content hash recorded for it): " in result.output
    assert f"and {tables - 10} more" in result.output
