"""Managed-database profiles: roles.sql filtering (by example, then on real pg_dumpall output) and lookup.

The end-to-end tests dump a Supabase-shaped server of their own (roles are cluster-wide: a shared
server would also hold other tests' roles) and load the filtered roles.sql into fresh servers, once as
a superuser and once as a Supabase-like `postgres` (CREATEROLE, not superuser), which is how a
restore into a Supabase project runs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.local_server import LocalPostgres, ephemeral_server
from pg_backup_dagster.pg.profiles import (
    PLAIN,
    RESERVED_MARK,
    SUPABASE,
    filter_roles_sql,
    get_profile,
    roles_sql_has_password_hash,
)
from pg_backup_dagster.pg.tools import find_tools

SUPABASE_LIKE = Path(__file__).parent / "sql" / "supabase_like.sql"
RESERVED_IN_FIXTURE = (
    "anon",
    "authenticated",
    "authenticator",
    "service_role",
    "supabase_admin",
    "supabase_auth_admin",
    "supabase_storage_admin",
    "dashboard_user",
    "pgbouncer",
    "pgsodium_keyiduser",
    "postgres",
)
APP_ROLES = ("app_api", "report_reader", "Report Viewer", "anon_analyst")
SCRAM = (
    "SCRAM-SHA-256$4096:uuUKfsz5p3mTNOaNJ/E1zQ==$ne4MMdUSWw3/p5soGm7YzbklpT6ZuFOjUD2vy2IoQMM="
    ":zQGHXA8LXtVo0jEsZewyqrj6SBF1Kfzf0rtwysUtKsE="
)
MD5 = "md5d41d8cd98f00b204e9800998ecf8427e"


# --- lookup --------------------------------------------------------------------------------------------


def test_get_profile() -> None:
    assert get_profile("plain") is PLAIN
    assert get_profile(" Supabase ") is SUPABASE
    with pytest.raises(BackupError, match=r"^unknown profile 'x': expected plain or supabase$"):
        get_profile("x")


def test_profiles_shape() -> None:
    assert PLAIN.pg_dumpall_args == ("--roles-only", "--no-role-passwords")
    assert PLAIN.excluded_schemas == frozenset() and not PLAIN.reserved_roles
    assert "--no-role-passwords" in SUPABASE.pg_dumpall_args
    # User data stays in the backup; platform internals are left out.
    assert {"auth", "storage", "extensions", "public"}.isdisjoint(SUPABASE.excluded_schemas)
    assert {"realtime", "vault", "graphql", "supabase_migrations", "pgsodium"} <= SUPABASE.excluded_schemas
    assert {"auth", "storage"} <= SUPABASE.platform_schemas
    assert SUPABASE.platform_schemas.isdisjoint(SUPABASE.excluded_schemas)
    assert ("auth", "schema_migrations") in SUPABASE.platform_tables


@pytest.mark.parametrize(
    ("role", "reserved"),
    [
        ("anon", True),
        ("postgres", True),
        ("supabase_admin", True),
        ("supabase_anything", True),
        ("pgsodium_keymaker", True),
        ("cli_login_postgres", True),
        ("anon_analyst", False),
        ("Anon", False),
        ("my_supabase_role", False),
        ("app", False),
    ],
)
def test_is_reserved_role(role: str, reserved: bool) -> None:
    assert SUPABASE.is_reserved_role(role) is reserved
    assert PLAIN.is_reserved_role(role) is False


# --- filtering by example -----------------------------------------------------------------------------

ROLES_SQL = f"""--
-- PostgreSQL database cluster dump
--

\\restrict abc123

SET default_transaction_read_only = off;

CREATE ROLE anon;
ALTER ROLE anon WITH NOSUPERUSER NOINHERIT NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "supabase_admin";
ALTER ROLE "supabase_admin" WITH SUPERUSER LOGIN PASSWORD '{SCRAM}';
CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD '{MD5}';
CREATE ROLE anon_analyst;
COMMENT ON ROLE authenticated IS 'platform; managed';
COMMENT ON ROLE app IS 'the app''s role';
ALTER ROLE authenticated SET statement_timeout TO '8s';
ALTER ROLE app SET search_path TO 'public', 'anon';
CREATE ROLE "odd
name";
GRANT authenticated TO app WITH INHERIT TRUE GRANTED BY postgres;
GRANT app TO "service_role" WITH INHERIT TRUE GRANTED BY postgres;
GRANT app TO anon_analyst, "odd
name" WITH INHERIT TRUE GRANTED BY supabase_admin;
GRANT app TO anon_analyst WITH ADMIN OPTION GRANTED BY app;

\\unrestrict abc123
"""


def commented(text: str) -> list[str]:
    return [line[len(RESERVED_MARK) :] for line in text.splitlines() if line.startswith(RESERVED_MARK)]


def live(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith(("--", "\\"))]


def test_plain_changes_only_password_clauses() -> None:
    out = filter_roles_sql(ROLES_SQL, PLAIN)
    assert not roles_sql_has_password_hash(out)
    assert roles_sql_has_password_hash(ROLES_SQL)
    before, after = ROLES_SQL.splitlines(), out.splitlines()
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert [a for _, a in changed] == [
        'ALTER ROLE "supabase_admin" WITH SUPERUSER LOGIN;',
        "ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;",
    ]
    no_hash = "\n".join(line for line in ROLES_SQL.splitlines() if "PASSWORD" not in line)
    assert filter_roles_sql(no_hash, PLAIN) == no_hash


def test_supabase_comments_out_reserved_roles() -> None:
    out = filter_roles_sql(ROLES_SQL, SUPABASE)
    assert not roles_sql_has_password_hash(out)
    assert commented(out) == [
        "CREATE ROLE anon;",
        "ALTER ROLE anon WITH NOSUPERUSER NOINHERIT NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;",
        'CREATE ROLE "supabase_admin";',
        'ALTER ROLE "supabase_admin" WITH SUPERUSER LOGIN;',
        "COMMENT ON ROLE authenticated IS 'platform; managed';",
        "ALTER ROLE authenticated SET statement_timeout TO '8s';",
        "GRANT authenticated TO app WITH INHERIT TRUE GRANTED BY postgres;",
        'GRANT app TO "service_role" WITH INHERIT TRUE GRANTED BY postgres;',
    ]
    assert live(out) == [
        "SET default_transaction_read_only = off;",
        "CREATE ROLE app;",
        # only a superuser may mention SUPERUSER/REPLICATION, even to deny them
        "ALTER ROLE app WITH INHERIT NOCREATEDB LOGIN NOBYPASSRLS;",
        "CREATE ROLE anon_analyst;",
        "COMMENT ON ROLE app IS 'the app''s role';",
        "ALTER ROLE app SET search_path TO 'public', 'anon';",
        'CREATE ROLE "odd',
        'name";',
        # granted by a reserved role: the membership stays, granted by whoever loads the file
        'GRANT app TO anon_analyst, "odd',
        'name" WITH INHERIT TRUE;',
        "GRANT app TO anon_analyst WITH ADMIN OPTION GRANTED BY app;",
    ]
    assert "\\restrict abc123" in out.splitlines()


def test_multi_line_reserved_statement_is_commented_on_every_line() -> None:
    text = 'GRANT "odd\nname" TO anon WITH INHERIT TRUE GRANTED BY postgres;\nCREATE ROLE x;\n'
    assert filter_roles_sql(text, SUPABASE) == (
        f'{RESERVED_MARK}GRANT "odd\n{RESERVED_MARK}name" TO anon WITH INHERIT TRUE GRANTED BY postgres;\n'
        "CREATE ROLE x;\n"
    )


def test_hash_outside_a_password_clause_is_still_removed() -> None:
    text = f"-- old: PASSWORD '{SCRAM}'\nCOMMENT ON ROLE app IS '{MD5}';\n"
    assert roles_sql_has_password_hash(text)
    assert not roles_sql_has_password_hash(filter_roles_sql(text, PLAIN))


# --- on real servers ----------------------------------------------------------------------------------


def _client_env(dsn: str) -> tuple[list[str], dict[str, str]]:
    """Connection options for a client program; the password goes to the environment only."""
    info = conninfo_to_dict(dsn)
    args = ["-h", str(info["host"]), "-p", str(info["port"]), "-U", str(info["user"])]
    return args, {**os.environ, "PGPASSWORD": str(info.get("password", ""))}


def pg_dumpall(dsn: str, args: tuple[str, ...]) -> str:
    conn_args, env = _client_env(dsn)
    result = subprocess.run(
        [find_tools().path("pg_dumpall"), *conn_args, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def psql(dsn: str, sql_text: str) -> subprocess.CompletedProcess:
    conn_args, env = _client_env(dsn)
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    return subprocess.run(
        [find_tools().path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *conn_args, "-d", dbname],
        input=sql_text,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def supabase_source() -> Iterator[LocalPostgres]:
    """A server of its own holding the Supabase-shaped database, loaded with psql -v ON_ERROR_STOP=1."""
    with ephemeral_server() as server:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE supa")
        result = psql(server.dsn("supa"), SUPABASE_LIKE.read_text(encoding="utf-8"))
        assert result.returncode == 0, result.stderr
        yield server


def test_supabase_like_database_shape(supabase_source: LocalPostgres) -> None:
    with psycopg.connect(supabase_source.dsn("supa")) as conn:
        rls = dict(
            conn.execute(
                "SELECT relname, relrowsecurity FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            ).fetchall()
        )
        assert rls == {"todos": True, "profiles": True}
        policies = conn.execute(
            "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' "
            "AND 'authenticated' = ANY(roles) AND qual LIKE '%%uid()%%'"
        ).fetchone()[0]
        assert policies == 2
        assert (
            conn.execute(
                "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'citext'"
            ).fetchone()[0]
            == "extensions"
        )
        assert conn.execute("SELECT count(*) FROM auth.users").fetchone()[0] == 50
        assert conn.execute("SELECT has_table_privilege('anon', 'public.todos', 'SELECT')").fetchone()[0]
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        assert set(RESERVED_IN_FIXTURE) | set(APP_ROLES) <= roles
    # Guarded role creation: loading again (into another database of the same server) works.
    with psycopg.connect(supabase_source.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE supa_again")
    again = psql(supabase_source.dsn("supa_again"), SUPABASE_LIKE.read_text(encoding="utf-8"))
    assert again.returncode == 0, again.stderr


def _member_pairs(dsn: str) -> set[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return set(
            conn.execute(
                "SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
                "JOIN pg_roles m ON m.oid = a.member"
            ).fetchall()
        )


def _roles(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")}


def test_supabase_roles_sql_loads_where_reserved_roles_are_missing(supabase_source: LocalPostgres) -> None:
    raw = pg_dumpall(supabase_source.dsn(), SUPABASE.pg_dumpall_args)
    filtered = filter_roles_sql(raw, SUPABASE)
    assert not roles_sql_has_password_hash(filtered)
    for role in RESERVED_IN_FIXTURE:
        assert any(f'"{role}"' in line for line in commented(filtered)), role
        assert not [line for line in live(filtered) if f'"{role}"' in line], role
    for role in APP_ROLES:
        quoted = '"' + role.replace('"', '""') + '"'
        assert f"CREATE ROLE {quoted};" in filtered.splitlines()

    with ephemeral_server() as target:
        # 1. As a superuser, into a server that has none of the reserved roles except postgres.
        result = psql(target.dsn(), filtered)
        assert result.returncode == 0, result.stderr
        assert set(APP_ROLES) <= _roles(target.dsn())
        assert _roles(target.dsn()).isdisjoint(set(RESERVED_IN_FIXTURE) - {"postgres"})
        assert {("report_reader", "app_api"), ("report_reader", "Report Viewer")} <= _member_pairs(
            target.dsn()
        )
        with psycopg.connect(target.dsn()) as conn:
            timeout = conn.execute(
                "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = 'app_api'"
            ).fetchone()[0]
            assert timeout == ["statement_timeout=30s"]

        # 2. As Supabase's `postgres`: CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS but no superuser.
        with psycopg.connect(target.dsn(), autocommit=True) as conn:
            for role in APP_ROLES:
                conn.execute(f'DROP ROLE "{role}"')
            conn.execute(f"CREATE ROLE boot_admin SUPERUSER LOGIN PASSWORD '{target.password}'")
        with psycopg.connect(target.dsn(user="boot_admin"), autocommit=True) as conn:
            conn.execute("ALTER ROLE postgres RENAME TO bootstrap_superuser")
            conn.execute(
                f"CREATE ROLE postgres LOGIN CREATEROLE CREATEDB REPLICATION BYPASSRLS "
                f"PASSWORD '{target.password}'"
            )
        result = psql(target.dsn(), filtered)
        assert result.returncode == 0, result.stderr
        assert set(APP_ROLES) <= _roles(target.dsn())
        # Why the profile drops NOSUPERUSER: merely mentioning it needs a superuser.
        denied = psql(target.dsn(), "ALTER ROLE app_api WITH NOSUPERUSER;")
        assert denied.returncode != 0 and "permission denied" in denied.stderr


def test_hashes_never_survive_the_filter(supabase_source: LocalPostgres) -> None:
    """Defence in depth: even a dump taken WITH passwords loses every hash, whatever the profile."""
    raw = pg_dumpall(supabase_source.dsn(), ("--roles-only",))
    assert roles_sql_has_password_hash(raw)
    for profile in (PLAIN, SUPABASE):
        assert not roles_sql_has_password_hash(filter_roles_sql(raw, profile))
    plain = pg_dumpall(supabase_source.dsn(), PLAIN.pg_dumpall_args)
    assert not roles_sql_has_password_hash(plain)
    assert filter_roles_sql(plain, PLAIN) == plain
    # Line by line, the filtered dump WITH passwords equals the one without (\\restrict keys differ).
    for with_pw, without in zip(filter_roles_sql(raw, PLAIN).splitlines(), plain.splitlines(), strict=True):
        if not without.startswith(("\\restrict", "\\unrestrict")):
            assert with_pw == without


def test_make_conninfo_keeps_password_out_of_argv() -> None:
    """The helpers above pass -h/-p/-U only; the password travels in PGPASSWORD."""
    args, env = _client_env(
        make_conninfo("", host="127.0.0.1", port=5, user="u", dbname="d", password="s3cret")
    )
    assert "s3cret" not in " ".join(args) and env["PGPASSWORD"] == "s3cret"
