"""Why a backup's dumps failed, on one line a person can act on.

A failure in the snapshot session or in pg_dump is named by its cause: the table whose lock we could not get and
the session holding it (pid, application_name, queried from pg_locks/pg_stat_activity when the wait timed out),
the tables the backup role may not read, a table dropped or rewritten while the backup ran, a timeout, and "lost
the backup's snapshot connection" only when the connection really is gone.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import psycopg

from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.source import SourceDatabase, connection_lost
from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER

OUR_APPLICATION_PREFIX = "pg_backup_dagster/"

# Locks that block ACCESS SHARE (what pg_dump and count(*) take): ACCESS EXCLUSIVE, granted or queued ahead.
LOCK_HOLDERS_SQL = f"""
SELECT n.nspname, c.relname, l.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), l.granted,
       coalesce(extract(epoch FROM now() - a.xact_start)::int, 0)
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid IS DISTINCT FROM pg_backend_pid()
  AND NOT starts_with(coalesce(a.application_name, ''), '{OUR_APPLICATION_PREFIX}')
  AND {SYSTEM_SCHEMA_FILTER}
ORDER BY l.granted DESC, n.nspname, c.relname, l.pid
"""

# What pg_dump and the row counts must read: every table and sequence, through its schema.
UNREADABLE_SQL = f"""
SELECT n.nspname, c.relname, has_schema_privilege(n.oid, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'S') AND {SYSTEM_SCHEMA_FILTER}
  AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'))
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class LockHolder:
    schema: str
    table: str
    pid: int | None
    application_name: str
    state: str
    granted: bool
    seconds: int

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "a prepared transaction"
        what = "holds" if self.granted else "is queued for"
        state = f", {self.state}" if self.state else ""
        age = f" for {self.seconds} s" if self.seconds else ""
        return (f"{self.schema}.{self.table} is locked: {who} (application_name '{self.application_name}'{state}"
                f"{age}) {what} ACCESS EXCLUSIVE on it")


def lock_holders(conn: psycopg.Connection) -> list[LockHolder]:
    """Sessions other than ours holding (or queued ahead for) ACCESS EXCLUSIVE on a user table, granted first."""
    return [LockHolder(s, t, pid, app, state, granted, secs)
            for s, t, pid, app, state, granted, secs in conn.execute(LOCK_HOLDERS_SQL).fetchall()]


def unreadable(conn: psycopg.Connection, excluded: Collection[str]) -> list[str]:
    """schema.table of every table or sequence the backup role cannot read (no USAGE on its schema, no SELECT)."""
    found = []
    for schema, table, usage in conn.execute(UNREADABLE_SQL).fetchall():
        if schema not in excluded:
            found.append(f"{schema}.{table}" + ("" if usage else f" (no USAGE on schema {schema})"))
    return found


def _several(items: list[str]) -> str:
    more = f" and {len(items) - 1} more" if len(items) > 1 else ""
    return f"{items[0]}{more}"


class Diagnosis:
    """Explain one failure, with a working connection to ask the server what it knows right now."""

    def __init__(self, pg: SourceDatabase, excluded: Collection[str], snapshot_conn: psycopg.Connection | None):
        self.pg = pg
        self.excluded = excluded
        self.snapshot_conn = snapshot_conn

    def explain(self, exc: BaseException) -> BaseException:
        """The error to raise instead of exc (exc itself when there is nothing better to say)."""
        if isinstance(exc, psycopg.Error):
            return self._session_error(exc)
        if isinstance(exc, BackupError):
            return self._tool_error(exc)
        return exc

    def _session_error(self, exc: psycopg.Error) -> BaseException:
        conn = self.snapshot_conn
        text = one_line(str(exc))
        if conn is not None and connection_lost(conn, exc):
            return self.pg.fail(f"lost the backup's snapshot connection: {text}")
        sqlstate = getattr(exc, "sqlstate", None) or ""
        if sqlstate == "55P03":  # lock_not_available: lock_timeout fired
            return self._lock_error()
        if sqlstate == "42501":
            return self._permission_error(text)
        if sqlstate == "57014":
            cause = "statement timeout" if "statement timeout" in text else "statement canceled"
            return self.pg.fail(f"{cause} in the backup's snapshot session: {text}")
        if sqlstate == "42P01" or "could not open relation" in text:
            return self.pg.fail(f"a table was dropped while the backup ran: {text}")
        return self.pg.fail(f"the backup's snapshot session failed (SQLSTATE {sqlstate or 'unknown'}): {text}")

    def _tool_error(self, exc: BackupError) -> BaseException:
        text = str(exc).split("): ", 1)[-1]  # without run_tool's "pg_dump failed for source '…' (…)" prefix
        lowered = text.lower()
        if "statement timeout" in lowered and "lock table" in lowered:  # pg_dump --lock-wait-timeout
            return self._lock_error()
        if "permission denied" in lowered or "affected by row-level security" in lowered:
            return self._permission_error(text)
        if "does not exist" in lowered and ("relation" in lowered or "oid" in lowered):
            return self.pg.fail(f"a table was dropped while the backup ran: {text}")
        return exc

    def _ask(self, question):
        """Run question(conn) on the snapshot connection (after a rollback) or on a fresh one."""
        conn = self.snapshot_conn
        try:
            if conn is not None and not conn.closed and not getattr(conn, "broken", False):
                conn.rollback()
                try:
                    return question(conn)
                finally:
                    conn.rollback()
            with self.pg.connect(f"{OUR_APPLICATION_PREFIX}diagnose") as fresh:
                return question(fresh)
        except (psycopg.Error, BackupError):
            return None

    def _lock_error(self) -> BackupError:
        waited = f"{self.pg.lock_timeout:g} s (lock_timeout_seconds)"
        holders = [h for h in self._ask(lock_holders) or [] if h.schema not in self.excluded]
        if not holders:
            return self.pg.fail(f"timed out after {waited} waiting for a table lock; "
                                "its holder had released it by the time we looked")
        tables = list(dict.fromkeys(f"{h.schema}.{h.table}" for h in holders))
        also = f" (locked too: {', '.join(tables[1:4])})" if len(tables) > 1 else ""
        return self.pg.fail(f"lock wait timed out after {waited}: {holders[0].describe()}{also}")

    def _permission_error(self, text: str) -> BackupError:
        tables = self._ask(lambda conn: unreadable(conn, self.excluded))
        if tables:
            return self.pg.fail(f"permission denied on {_several(tables)}: the backup role needs SELECT on every "
                                f"table and sequence (and USAGE on their schemas): {one_line(text, 200)}")
        return self.pg.fail(f"permission denied: {one_line(text, 300)}")
