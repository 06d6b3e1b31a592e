"""The restore target as a database: what it already holds, who is connected, and the safe switch.

A whole-database restore into a database that already holds objects (`--clean`) never touches it until the
restore is known good: the backup is restored into a new database on the same server (a temporary name),
its rows are compared with the manifest (content hashes and counts), and only then, in one transaction, the
old database is renamed away (`<name>_before_<backup_id>`, or dropped) and the new one takes the target's
name. Renaming needs every other session off both databases: the blocking sessions are named, or terminated
when asked.
On any failure the new database is dropped and the target is exactly as it was.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_dagster.errors import BackupError, first_of, one_line
from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER, quote_ident
from pg_backup_dagster.tiers.archive import UnsupportedArchive, read_archive

OLD_DATABASE_CHOICES = ("keep", "drop")
_MAX_NAME = 63  # NAMEDATALEN - 1: longer names are silently truncated by the server
_RELATION_DESCS = {"TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE"}
_TYPE_DESCS = {"TYPE", "DOMAIN"}
_ROUTINE_DESCS = {"FUNCTION", "PROCEDURE", "AGGREGATE"}


def database_name(dsn: str) -> str:
    name = conninfo_to_dict(dsn).get("dbname")
    if not name:
        raise BackupError("the target URL names no database")
    return str(name)


def maintenance_dsn(dsn: str) -> str:
    """The same server, connected to a database that is not the target (renaming needs that)."""
    return make_conninfo(dsn, dbname="template1" if database_name(dsn) == "postgres" else "postgres")


@contextmanager
def admin_connection(dsn: str) -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(maintenance_dsn(dsn), autocommit=True, connect_timeout=30)
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect to the target server's maintenance database: {one_line(str(exc))}") from None
    with conn:
        yield conn


def drop_database(dsn_or_admin: str | psycopg.Connection, name: str) -> str | None:
    """DROP DATABASE name, terminating its sessions (it is ours); returns why it could not, or None."""
    def drop(admin: psycopg.Connection) -> None:
        force = sql.SQL(" WITH (FORCE)") if admin.info.server_version >= 130000 else sql.SQL("")
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(sql.Identifier(name), force))

    try:
        if isinstance(dsn_or_admin, str):
            with admin_connection(dsn_or_admin) as admin:
                drop(admin)
        else:
            drop(dsn_or_admin)
    except (psycopg.Error, BackupError) as exc:
        return one_line(str(exc))
    return None


# --- what the target already holds ----------------------------------------------------------------


def conflicting_objects(dsn: str, archive: Path) -> list[str]:
    """The objects of the archive that the target already has (same schema and name), as people read them.

    Tables, views, sequences, types, domains, routines and non-public schemas: restoring them again fails
    (or, with pg_restore going on past errors, appends rows to the old ones)."""
    try:
        toc = read_archive(archive)
    except (UnsupportedArchive, OSError, ValueError):
        return _any_user_relation(dsn)  # a TOC this reader does not know: any existing relation may conflict
    wanted: dict[str, list[tuple[str, str]]] = {"relation": [], "type": [], "routine": [], "schema": []}
    for entry in toc.entries:
        tag = (entry.tag or b"").decode("utf-8", errors="replace")
        namespace = (entry.namespace or b"").decode("utf-8", errors="replace")
        if entry.desc in _RELATION_DESCS:
            wanted["relation"].append((namespace, tag))
        elif entry.desc in _TYPE_DESCS:
            wanted["type"].append((namespace, tag))
        elif entry.desc in _ROUTINE_DESCS:
            wanted["routine"].append((namespace, tag))
        elif entry.desc == "SCHEMA" and tag != "public":
            wanted["schema"].append(("", tag))
    found: list[str] = []
    with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
        relations = set(conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {SYSTEM_SCHEMA_FILTER}"
        ).fetchall())
        types = set(conn.execute(
            "SELECT n.nspname, t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            f"WHERE {SYSTEM_SCHEMA_FILTER}"
        ).fetchall())
        schemas = {r[0] for r in conn.execute(f"SELECT nspname FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER}")}
        found += [f"schema {quote_ident(s)}" for _, s in wanted["schema"] if s in schemas]
        found += [f"relation {quote_ident(*r)}" for r in wanted["relation"] if r in relations]
        found += [f"type {quote_ident(*t)}" for t in wanted["type"] if t in types]
        routines = set(conn.execute(  # pg_dump's tag: name(type, type) with format_type's spelling
            "SELECT n.nspname, p.proname || '(' || array_to_string(ARRAY(SELECT format_type(t, NULL) "
            "FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i) ORDER BY i), ', ') || ')' "
            f"FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {SYSTEM_SCHEMA_FILTER}"
        ).fetchall())
        found += [f"routine {quote_ident(r[0])}.{r[1]}" for r in wanted["routine"] if r in routines]
    return found


def _any_user_relation(dsn: str) -> list[str]:
    with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {SYSTEM_SCHEMA_FILTER} ORDER BY 1, 2"
        ).fetchall()
    return [f"relation {quote_ident(*r)}" for r in rows]


def conflict_message(what: str, found: list[str], clean_hint: str) -> str:
    shown = first_of(found, 8)
    # the next step before the list: a long list is cut at the end of the one-line error, the hint never is
    return f"{what} already holds {len(found)} object(s) of the backup; nothing was restored. {clean_hint} Found: {shown}"


# --- sessions ---------------------------------------------------------------------------------------


def other_sessions(admin: psycopg.Connection, names: list[str]) -> list[tuple[int, str, str]]:
    """(pid, application_name, database) of every client session on those databases but ours. Autovacuum
    workers are not counted: the server ends them itself for DROP and RENAME (a freshly restored database
    often has one)."""
    rows = admin.execute(
        "SELECT pid, coalesce(application_name, ''), datname FROM pg_stat_activity "
        "WHERE datname = ANY(%s) AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid",
        [names],
    ).fetchall()
    return [(int(pid), str(app), str(db)) for pid, app, db in rows]


def _sessions_text(sessions: list[tuple[int, str, str]]) -> str:
    return first_of([f"pid {pid} ({app or 'no application_name'}) on {db}" for pid, app, db in sessions], 8)


def clear_sessions(admin: psycopg.Connection, names: list[str], terminate: bool) -> list[str]:
    """Refuse (naming them) or terminate the other sessions on those databases; returns notes."""
    sessions = other_sessions(admin, names)
    if not sessions:
        return []
    if not terminate:
        raise BackupError(
            f"cannot switch databases while other sessions are connected: {_sessions_text(sessions)}; "
            "close them or pass --terminate-sessions"
        )
    for pid, _, _ in sessions:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + 30
    while other_sessions(admin, names) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [f"terminated {len(sessions)} session(s): {_sessions_text(sessions)}"]


# --- the safe switch --------------------------------------------------------------------------------


def _fits(name: str) -> bool:
    return len(name.encode("utf-8")) <= _MAX_NAME


def kept_name(target: str, backup_id: str) -> str:
    """`<name>_before_<backup_id>`, the target's name shortened (at a character boundary) to fit 63 bytes."""
    suffix = f"_before_{backup_id}"
    base = target
    while not _fits(base + suffix):
        base = base[:-1]
    return base + suffix


def _create_like(admin: psycopg.Connection, name: str, like: str) -> None:
    """CREATE DATABASE name from template0 with the encoding and locale of database `like`."""
    major = admin.info.server_version // 10000
    locale_columns = ""
    if major >= 15:
        locale_columns = ", datlocprovider, " + ("datlocale" if major >= 17 else "daticulocale")
    row = admin.execute(
        f"SELECT pg_encoding_to_char(encoding), datcollate, datctype{locale_columns} FROM pg_database "
        "WHERE datname = %s",
        [like],
    ).fetchone()
    if row is None:
        raise BackupError(f"database {like!r} does not exist on the target server")
    parts = [
        sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Identifier(name), sql.Literal(row[0]), sql.Literal(row[1]), sql.Literal(row[2])
        )
    ]
    if len(row) > 3:
        provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(row[3], "libc")
        parts.append(sql.SQL("LOCALE_PROVIDER {}").format(sql.SQL(provider)))
        if provider == "icu" and row[4]:
            parts.append(sql.SQL("ICU_LOCALE {}").format(sql.Literal(row[4])))
        elif provider == "builtin" and row[4]:
            parts.append(sql.SQL("BUILTIN_LOCALE {}").format(sql.Literal(row[4])))
    admin.execute(sql.SQL(" ").join(parts))


def _copy_database_properties(admin: psycopg.Connection, source: str, dest: str) -> list[str]:
    """Owner, database privileges and per-database settings of `source` given to `dest`; notes what failed.

    pg_restore without --create restores none of them (they belong to the database, not its contents)."""
    notes: list[str] = []
    owner, acl = admin.execute(
        "SELECT pg_get_userbyid(datdba), datacl::text[] FROM pg_database WHERE datname = %s", [source]
    ).fetchone()
    statements = [sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(dest), sql.Identifier(owner))]
    privileges = admin.execute(
        "SELECT pg_get_userbyid(a.grantee), a.privilege_type, "
        "a.is_grantable, a.grantee = 0 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
        [source],
    ).fetchall() if acl else []
    if acl:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dest)))
    for grantee, privilege, grantable, public in privileges:
        statements.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
            sql.SQL(privilege), sql.Identifier(dest), sql.SQL("PUBLIC") if public else sql.Identifier(grantee),
            sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
        ))
    settings = admin.execute(
        "SELECT coalesce(pg_get_userbyid(nullif(s.setrole, 0)), ''), cfg FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) cfg WHERE d.datname = %s",
        [source],
    ).fetchall()
    for role, cfg in settings:
        name, _, value = cfg.partition("=")
        scope = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), sql.Identifier(dest)) if role \
            else sql.SQL("ALTER DATABASE {}").format(sql.Identifier(dest))
        # set_config's text form: a list setting keeps its stored (already quoted) list syntax this way
        statements.append(sql.SQL("{} SET {} = {}").format(scope, sql.Identifier(name), sql.SQL(_setting_value(value))))
    for statement in statements:
        try:
            admin.execute(statement)
        except psycopg.Error as exc:
            notes.append(f"could not copy a property of the old database ({statement.as_string(admin)}): "
                         f"{one_line(str(exc))}")
    return notes


def _setting_value(stored: str) -> str:
    """A stored `name=value` value as SQL: list settings (`"$user", public`) as their items, else one literal."""
    items, current, quoted, i = [], "", False, 0
    while i < len(stored):
        char = stored[i]
        if char == '"':
            if quoted and stored[i + 1 : i + 2] == '"':
                current += '"'
                i += 2
                continue
            quoted = not quoted
        elif char == "," and not quoted:
            items.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    items.append(current.strip())
    if len(items) == 1 and '"' not in stored:
        return "'" + stored.replace("'", "''") + "'"
    return ", ".join("'" + item.replace("'", "''") + "'" for item in items)


def replace_database(
    target_dsn: str,
    backup_id: str,
    restore_into: Callable[[str], None],
    check: Callable[[str], None],
    *,
    old_database: str = "keep",
    terminate_sessions: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> list[str]:
    """Restore into a new database, check it, then switch it in under the target's name; returns notes.

    The target is untouched unless everything succeeded: a failed or interrupted restore, a failed check,
    sessions that block the renames, all leave it as it was and drop the new database."""
    if old_database not in OLD_DATABASE_CHOICES:
        raise BackupError(f"--old-database {old_database!r}: expected keep or drop")
    target = database_name(target_dsn)
    kept = kept_name(target, backup_id) if old_database == "keep" else f"pgbd_old_{secrets.token_hex(6)}"
    new = f"pgbd_restore_{secrets.token_hex(6)}"
    notes: list[str] = []
    with admin_connection(target_dsn) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [kept]).fetchone():
            raise BackupError(
                f"database {kept!r} already exists (kept by an earlier restore): drop it or pass --old-database drop"
            )
        if not terminate_sessions:  # say so now rather than after a long restore
            clear_sessions(admin, [target], terminate=False)
        try:
            _create_like(admin, new, target)
        except psycopg.Error as exc:
            raise BackupError(f"cannot create the new database for the restore: {one_line(str(exc))}") from None
        log(f"restoring into the new database {new}; {target} stays untouched until it is complete")
        try:
            new_dsn = make_conninfo(target_dsn, dbname=new)
            restore_into(new_dsn)
            check(new_dsn)
            notes += _copy_database_properties(admin, target, new)
            # only the target: nobody else knows the new database's random name, and the sessions our own restore
            # and counts opened there may still be exiting (RENAME waits for those itself)
            notes += clear_sessions(admin, [target], terminate=terminate_sessions)
            try:
                with admin.transaction():
                    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(target), sql.Identifier(kept)))
                    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(new), sql.Identifier(target)))
            except psycopg.errors.ObjectInUse:
                clear_sessions(admin, [target, new], terminate=False)  # names whoever came in meanwhile
                raise
            except psycopg.Error as exc:
                raise BackupError(f"cannot rename the databases: {one_line(str(exc))}") from None
        except BaseException as exc:
            if problem := drop_database(admin, new):
                log(f"could not drop the new database {new}: {problem}")
            if isinstance(exc, (psycopg.Error, BackupError)):
                raise BackupError(f"{one_line(str(exc))} (database {target} is untouched)") from None
            raise
    if old_database == "keep":
        notes.append(f"the previous database is kept as {kept!r} (drop it when no longer needed)")
    elif problem := drop_database(target_dsn, kept):
        notes.append(f"the previous database, renamed {kept!r}, could not be dropped: {problem}")
    else:
        notes.append("the previous database was dropped (--old-database drop)")
    return notes
