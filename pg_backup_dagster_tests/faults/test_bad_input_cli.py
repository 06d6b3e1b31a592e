"""More bad input through the real CLI (see also ../test_bad_input.py): one clear line, non-zero exit, nothing written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.faults.helpers import backup, make_source, tmpfs
from pg_backup_dagster_tests.helpers import create_database

SECRET = "Bad-Input-Pa55-x9"
BACKUP_ID = "2026-03-01T00-00-00Z"  # ids in the future are refused (finding: 2099 held retention)


def run_cli(args: list[str], tmp_path: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        {"DAGSTER_HOME": str(tmp_path / "dagster_home"), "PG_BACKUP_TARGET": str(tmp_path / "target"), **env_extra}
    )
    return subprocess.run(
        [sys.executable, "-m", "pg_backup_dagster.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def assert_clean_failure(result: subprocess.CompletedProcess[str], expected: str, target: Path | None) -> str:
    """Non-zero exit, exactly one `error:` line naming the cause, no secret, no file written under target."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected.lower() in lines[0].lower(), lines[0]
    assert SECRET not in result.stderr + result.stdout
    if target is not None:
        assert files_under(target) == []
    return lines[0]


def test_malformed_yaml_config(tmp_path):
    config = tmp_path / "sources.yaml"
    config.write_text("sources:\n  - name: main\n    target: [unclosed\n")
    result = run_cli(["backup"], tmp_path, PG_BACKUP_CONFIG=str(config))
    assert_clean_failure(result, "is not valid YAML at line", tmp_path / "target")


def test_config_with_an_unknown_field(tmp_path):
    config = tmp_path / "sources.yaml"
    config.write_text(f"sources:\n  - name: main\n    targett: {tmp_path / 'target'}\n")
    result = run_cli(["backup"], tmp_path, PG_BACKUP_CONFIG=str(config))
    assert_clean_failure(result, "unknown field 'targett'", tmp_path / "target")


@pytest.fixture
def not_postgres() -> Iterator[int]:
    """A TCP server that answers every connection with a few bytes of HTTP and hangs up."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nnot postgres\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def test_port_that_is_not_postgresql(not_postgres, tmp_path):
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:{not_postgres}/db"
    result = run_cli(["backup"], tmp_path, PG_BACKUP_DATABASE_URL=url)
    assert_clean_failure(result, "cannot connect", tmp_path / "target")


def test_pg_binaries_missing(pg18, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_cli(["backup"], tmp_path, PG_BACKUP_DATABASE_URL=pg18.dsn(), PG_BACKUP_PG_BIN=str(empty))
    line = assert_clean_failure(result, "PostgreSQL client programs missing", tmp_path / "target")
    assert "pg_dump" in line and str(empty) in line


def test_target_under_a_regular_file(pg18, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run_cli(["backup"], tmp_path, PG_BACKUP_DATABASE_URL=pg18.dsn(), PG_BACKUP_TARGET=str(blocker / "t"))
    assert_clean_failure(result, "is not writable: Not a directory", None)
    assert blocker.read_text() == "not a directory"


def test_target_on_a_read_only_filesystem(pg18, tmp_path):
    """Root ignores permission bits, so a read-only mount is the honest 'not writable' here."""
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        result = run_cli(["backup"], tmp_path, PG_BACKUP_DATABASE_URL=pg18.dsn(), PG_BACKUP_TARGET=str(ro / "t"))
        assert_clean_failure(result, "Read-only file system", ro)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"{not json", "is not valid JSON"), (b"[]", "not a JSON object"), (b"{}", "manifest")],
    ids=["garbage", "array", "empty-object"],
)
def test_list_with_an_unreadable_manifest(tmp_path, content, expected):
    folder = tmp_path / "target" / "main" / BACKUP_ID
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_bytes(content)
    before = files_under(tmp_path / "target")
    result = run_cli(["list"], tmp_path)
    line = assert_clean_failure(result, expected, None)
    assert BACKUP_ID in line or "manifest" in line
    assert files_under(tmp_path / "target") == before


@pytest.fixture
def tampered(pg18, tmp_path, monkeypatch) -> tuple[Path, str, str]:
    """A real backup whose table file and full archive were then altered on disk."""
    dsn = create_database(
        pg18,
        "tamper",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    target = tmp_path / "target"
    source = make_source(monkeypatch, "main", dsn, str(target), pg18.dsn())
    with dg.instance_for_test() as instance:
        outcome = backup(source, instance, BACKUP_ID)
    assert outcome.success, outcome.errors
    folder = target / "main" / BACKUP_ID
    data = folder / "public" / "tables" / "t" / "data.sql"
    data.write_text(data.read_text().replace("v42", "v43"))
    full = folder / f"database_full_{BACKUP_ID}.dump"
    raw = bytearray(full.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    full.write_bytes(bytes(raw))
    return target, dsn, pg18.dsn()


def test_tampered_files_on_verify(tampered, tmp_path):
    target, dsn, _ = tampered
    before = files_under(target)
    result = run_cli(["verify", BACKUP_ID], tmp_path, PG_BACKUP_DATABASE_URL=dsn)
    assert result.returncode == 1
    bad = [line for line in result.stderr.splitlines() if line.startswith("BAD ")]
    assert any("public/tables/t/data.sql" in line for line in bad), result.stderr
    assert any(f"database_full_{BACKUP_ID}.dump" in line for line in bad), result.stderr
    assert files_under(target) == before


def test_tampered_file_on_restore_writes_nothing(tampered, pg18, tmp_path):
    target, dsn, _ = tampered
    restore_to = create_database(pg18, "tamper_restore")
    result = run_cli(["restore", BACKUP_ID], tmp_path, PG_BACKUP_DATABASE_URL=dsn, PG_BACKUP_RESTORE_TO=restore_to)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "corrupt" in errors[0], result.stderr
    with psycopg.connect(restore_to) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0]
    assert tables == 0, "a corrupt backup must not be half-restored"
    assert open_storage(str(target)).list_backups("main") == [BACKUP_ID]
