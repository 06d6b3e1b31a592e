"""Restore never makes things worse, each fault reproduced the way it was found: a real backup, a real server,
a pg_restore really killed midway, a session really connected, a dependent view really blocking a DROP,
backup content really carrying a psql meta-command, PostgreSQL 16 grant syntax really loaded into 15."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pg_backup_dagster.pg.local_server import LocalPostgres, ephemeral_server
from pg_backup_dagster_tests.fixtures.postgres import running_server
from pg_backup_dagster_tests.helpers import PG15_BIN, create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import Published, back_up, cli, tampered_copy

PID = os.getpid()
PARENT, CHILD, ADMIN = f"pgbd_parent_{PID}", f"pgbd_child_{PID}", f"pgbd_admin_{PID}"
COMMENT_PAD = "A" * 160
TABLES = 16
BULK_SQL = "\n".join(
    [
        "CREATE TABLE t01 (id int PRIMARY KEY, payload text NOT NULL);",
        *(
            f"CREATE TABLE t{i:02d} (id int PRIMARY KEY, parent int REFERENCES t01, payload text NOT NULL);"
            for i in range(2, TABLES + 1)
        ),
        "INSERT INTO t01 SELECT g, repeat('x', 60) || g FROM generate_series(1, 20000) g;",
        *(
            f"INSERT INTO t{i:02d} SELECT g, 1 + g % 1000, repeat('y', 60) || g FROM generate_series(1, 20000) g;"
            for i in range(2, TABLES + 1)
        ),
        *(f"CREATE INDEX t{i:02d}_payload ON t{i:02d} (payload);" for i in range(1, TABLES + 1)),
        f"COMMENT ON TABLE t01 IS '{COMMENT_PAD}';",
        "CREATE SCHEMA app;",
        "CREATE TABLE app.a (id int PRIMARY KEY, name text);",
        "CREATE TABLE app.b (id int PRIMARY KEY, a_id int REFERENCES app.a);",
        "INSERT INTO app.a SELECT g, 'a' || g FROM generate_series(1, 50) g;",
        "INSERT INTO app.b SELECT g, g FROM generate_series(1, 50) g;",
    ]
)
ROLES_SQL = [
    f"CREATE ROLE {PARENT} NOLOGIN",
    f"CREATE ROLE {CHILD} LOGIN CONNECTION LIMIT 5",
    f"CREATE ROLE {ADMIN} NOLOGIN CREATEROLE",
    f"GRANT {PARENT} TO {ADMIN} WITH ADMIN OPTION, INHERIT TRUE, SET TRUE",
    f"GRANT {PARENT} TO {CHILD} WITH INHERIT FALSE",
    f"ALTER ROLE {CHILD} SET transaction_timeout = '5min'",  # a setting PostgreSQL 15 does not know
    f"ALTER ROLE {CHILD} SET work_mem = '8MB'",
]


@pytest.fixture(scope="module")
def source_dsn(pg18) -> str:
    dsn = create_database(pg18, "safety", BULK_SQL)
    with psycopg.connect(pg18.dsn(), autocommit=True) as conn:
        for statement in ROLES_SQL:
            conn.execute(statement)
    return dsn


@pytest.fixture(scope="module")
def published(source_dsn, pg18, tmp_path_factory) -> Published:
    with pytest.MonkeyPatch.context() as mp:
        return back_up(mp, "safety", source_dsn, str(tmp_path_factory.mktemp("safety_target")), pg18.dsn())


def restore(published: Published, target: str, *args: str):
    return cli(published, "restore", published.backup_id, *args, env={"PG_BACKUP_RESTORE_TO": target})


def dbname(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]


def databases(server: LocalPostgres) -> set[str]:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def structure(dsn: str) -> tuple[int, int, int]:
    """(indexes, foreign keys, views) of the user schemas: what a half-dropped database loses."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname IN ('public', 'app')), "
            "(SELECT count(*) FROM pg_constraint WHERE contype = 'f'), "
            "(SELECT count(*) FROM pg_views WHERE schemaname IN ('public', 'app'))"
        ).fetchone()


@contextmanager
def kill_pg_restore_during_copy(server: LocalPostgres, *database_like: str) -> Iterator[list[int]]:
    """SIGKILL the pg_restore this test process started, the moment it copies rows into a matching database."""
    killed: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        me = psutil.Process()
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                ours = [p for p in me.children(recursive=True) if p.name() == "pg_restore"]
                if ours and conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE ANY(%s) AND state = 'active' "
                    "AND query LIKE 'COPY %%'",
                    [list(database_like)],
                ).fetchone()[0]:
                    for process in ours:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            process.send_signal(signal.SIGKILL)
                        killed.append(process.pid)
                    return
                time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield killed
    finally:
        stop.set()
        thread.join(timeout=30)


# --- 1. --clean never destroys a good database ------------------------------------------------------


def test_clean_restore_killed_midway_leaves_the_target_untouched(published, source_dsn, pg18):
    target = create_database(pg18, "s_kill")
    assert restore(published, target).exit_code == 0
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM t05 WHERE id % 2 = 0")
    before, shape = table_fingerprints(target), structure(target)
    with kill_pg_restore_during_copy(pg18, "pgbd_restore_%", dbname(target)) as killed:
        result = restore(published, target, "--clean")
    assert killed, "pg_restore finished before it could be killed"
    assert result.exit_code != 0
    assert "pg_restore killed by SIGKILL" in result.output and "untouched" in result.output, result.output
    assert table_fingerprints(target) == before and structure(target) == shape
    assert not [d for d in databases(pg18) if d.startswith("pgbd_restore_")]


def test_clean_restore_switches_in_a_checked_copy_despite_a_dependent_view(published, source_dsn, pg18):
    """Before: pg_restore --clean could not drop t02 (a view depends on it), carried on and appended its rows."""
    target = create_database(pg18, "s_view")
    assert restore(published, target).exit_code == 0
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM t02 WHERE id > 10")
        conn.execute("CREATE VIEW public.depends_on_t02 AS SELECT id FROM t02")
    old = table_fingerprints(target)
    result = restore(published, target, "--clean")
    assert result.exit_code == 0, result.output
    assert table_fingerprints(target) == table_fingerprints(source_dsn)
    kept = f"{dbname(target)}_before_{published.backup_id}"
    assert repr(kept) in result.output
    kept_dsn = pg18.dsn(kept)
    assert table_fingerprints(kept_dsn) == old and structure(kept_dsn)[2] == 1
    again = restore(published, target, "--clean")
    assert again.exit_code != 0 and "already exists" in again.output and "--old-database drop" in again.output
    dropped = restore(published, target, "--clean", "--old-database", "drop")
    assert dropped.exit_code == 0, dropped.output
    assert table_fingerprints(target) == table_fingerprints(source_dsn)
    assert not [d for d in databases(pg18) if d.startswith(("pgbd_old_", "pgbd_restore_"))]


def test_clean_restore_names_blocking_sessions_and_terminates_only_when_asked(published, source_dsn, pg18):
    target = create_database(pg18, "s_sessions")
    assert restore(published, target).exit_code == 0
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM t03")
    before = table_fingerprints(target)
    blocker = psycopg.connect(target, autocommit=True, application_name="pgbd_test_blocker")
    try:
        pid = blocker.info.backend_pid
        refused = restore(published, target, "--clean")
        assert refused.exit_code != 0
        assert f"pid {pid} (pgbd_test_blocker)" in refused.output and "--terminate-sessions" in refused.output
        assert table_fingerprints(target) == before
        assert not [d for d in databases(pg18) if d.startswith("pgbd_restore_")]
        forced = restore(published, target, "--clean", "--terminate-sessions", "--old-database", "drop")
        assert forced.exit_code == 0, forced.output
        assert "terminated 1 session(s)" in forced.output
        with pytest.raises(psycopg.OperationalError):
            blocker.execute("SELECT 1")
    finally:
        blocker.close()
    assert table_fingerprints(target) == table_fingerprints(source_dsn)


# --- 2. no partial mix, no leftovers, a named cause ---------------------------------------------------


def test_full_restore_into_a_populated_database_stops_before_writing(published, pg18):
    target = create_database(pg18, "s_populated", "CREATE TABLE t07 (id int); INSERT INTO t07 VALUES (1); "
                                                  "CREATE TABLE unrelated (x int)")
    before, shape = table_fingerprints(target), structure(target)
    result = restore(published, target)
    assert result.exit_code != 0
    assert 'relation "public"."t07"' in result.output and "--clean" in result.output, result.output
    assert table_fingerprints(target) == before and structure(target) == shape


def test_full_restore_killed_into_an_empty_database_leaves_it_empty(published, pg18):
    target = create_database(pg18, "s_empty")
    with kill_pg_restore_during_copy(pg18, dbname(target)) as killed:
        result = restore(published, target)
    assert killed, "pg_restore finished before it could be killed"
    assert result.exit_code != 0 and "pg_restore killed by SIGKILL" in result.output, result.output
    assert table_fingerprints(target) == {} and structure(target) == (0, 0, 0)


def test_create_db_is_dropped_when_the_restore_fails(published, pg18):
    name = f"s_created_{PID}"
    with kill_pg_restore_during_copy(pg18, name) as killed:
        result = restore(published, pg18.dsn(name), "--create-db")
    assert killed, "pg_restore finished before it could be killed"
    assert result.exit_code != 0 and "pg_restore killed by SIGKILL" in result.output, result.output
    assert "dropped it again" in result.output
    assert name not in databases(pg18)


def test_schema_restore_stops_before_writing_and_clean_is_one_transaction(published, pg18):
    target = create_database(pg18, "s_schema")
    assert restore(published, target).exit_code == 0
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DELETE FROM app.b")
        conn.execute("CREATE VIEW public.reads_app AS SELECT * FROM app.a")
    before, shape = table_fingerprints(target), structure(target)
    refused = restore(published, target, "--schema", "app")
    assert refused.exit_code != 0
    assert 'schema "app"' in refused.output and 'relation "app"."a"' in refused.output and "--clean" in refused.output
    assert table_fingerprints(target) == before and structure(target) == shape
    blocked = restore(published, target, "--schema", "app", "--clean")  # the view blocks DROP TABLE app.a
    assert blocked.exit_code != 0 and "other objects depend on it" in blocked.output, blocked.output
    assert table_fingerprints(target) == before and structure(target) == shape


# --- 3. backup content never runs client-side commands ---------------------------------------------


@pytest.mark.parametrize(
    "payload",
    ["\\! touch {marker}\n", "COMMENT ON ROLE {role} IS 'x' \\! touch {marker}\n;\n"],
    ids=["own-line", "inside-a-statement"],
)
def test_meta_command_in_roles_sql_never_runs(published, tmp_path, payload):
    marker = Path(tempfile.gettempdir()) / f"pgbd_marker_roles_{PID}_{len(payload)}"
    marker.unlink(missing_ok=True)
    text = payload.format(marker=marker, role=CHILD).encode()
    tampered = tampered_copy(published, tmp_path / "copy", "roles.sql", lambda data: data + text)
    assert cli(tampered, "verify", tampered.backup_id).exit_code == 0
    with ephemeral_server() as server:
        result = restore(tampered, server.dsn(), "--roles")
        with psycopg.connect(server.dsn()) as conn:
            created = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", [PARENT]).fetchone()[0]
    assert not marker.exists(), "a meta-command from roles.sql ran"
    assert result.exit_code != 0
    assert "meta-command" in result.output or "backslash commands are restricted" in result.output, result.output
    assert created == 0  # one transaction: nothing of roles.sql was loaded


def test_meta_command_in_an_archive_never_runs_on_an_older_server(published, pg15, tmp_path):
    """The psql path (pg_restore 18 -f - | psql into PostgreSQL 15) used to strip pg_dump's \\restrict."""
    marker = Path(tempfile.gettempdir()) / f"pgbd_marker_archive_{PID}"
    marker.unlink(missing_ok=True)
    rel = f"database_full_{published.backup_id}.dump"
    injected = f"';\n\\! touch {marker}\n--".encode()
    assert len(injected) < len(COMMENT_PAD)
    replacement = injected + b"A" * (len(COMMENT_PAD) - len(injected))

    def inject(data: bytes) -> bytes:
        assert data.count(COMMENT_PAD.encode()) == 1
        return data.replace(COMMENT_PAD.encode(), replacement)

    tampered = tampered_copy(published, tmp_path / "copy", rel, inject)
    assert cli(tampered, "verify", tampered.backup_id).exit_code == 0
    target = create_database(pg15, "s_meta15")
    result = restore(tampered, target)
    assert not marker.exists(), "a meta-command from the archive ran"
    assert result.exit_code != 0 and "backslash commands are restricted" in result.output, result.output
    assert table_fingerprints(target) == {}
    control = create_database(pg15, "s_meta15_control")  # the untouched backup restores into 15 the same way
    assert restore(published, control).exit_code == 0


# --- 4. roles.sql of PostgreSQL 16+ into PostgreSQL 15 --------------------------------------------


@pytest.fixture
def fresh_pg15() -> Iterator[LocalPostgres]:
    """A PostgreSQL 15 server of its own: its roles are exactly what this test loads."""
    if not (PG15_BIN / "initdb").exists():
        pytest.skip("Debian postgresql-15 is not installed (apt-get install postgresql-15)")
    yield from running_server("roles15", PG15_BIN)


def test_roles_with_postgresql_16_grant_options_load_into_15(published, fresh_pg15):
    with psycopg.connect(fresh_pg15.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {CHILD} NOLOGIN")  # exists already: altered by roles.sql, and reported
    result = restore(published, fresh_pg15.dsn(), "--roles")
    assert result.exit_code == 0, result.output
    assert f'role "{CHILD}" already existed and was altered' in result.output
    assert "INHERIT FALSE" in result.output  # the one option PostgreSQL 15 cannot express per grant
    assert "PostgreSQL 15 has no setting transaction_timeout" in result.output
    with psycopg.connect(fresh_pg15.dsn()) as conn:
        members = set(conn.execute(
            "SELECT r.rolname, m.rolname, am.admin_option FROM pg_auth_members am "
            "JOIN pg_roles r ON r.oid = am.roleid JOIN pg_roles m ON m.oid = am.member WHERE r.rolname = %s",
            [PARENT],
        ).fetchall())
        child = conn.execute("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", [CHILD]).fetchone()
        settings = conn.execute("SELECT rolconfig FROM pg_roles WHERE rolname = %s", [CHILD]).fetchone()[0]
    assert members == {(PARENT, ADMIN, True), (PARENT, CHILD, False)}
    assert child == (True, 5) and settings == ["work_mem=8MB"]
