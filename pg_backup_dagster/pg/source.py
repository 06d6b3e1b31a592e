"""The source database: every connection and pg tool process against a source goes through here.

It holds a `max_connections` semaphore shared by psycopg connections and pg_dump/pg_restore/psql processes,
retries transient failures with exponential backoff and jitter, tags work with application_name, and keeps
the password out of argv (passed as PGPASSWORD in the child's environment). Dagster's PostgresResource
(defs/resources.py) configures one per step.

Every session it opens is made independent of the backup role's settings: statement_timeout,
idle_in_transaction_session_timeout and transaction_timeout (PostgreSQL 17+) are off, lock waits are bounded by
`lock_timeout`, and names arrive as text whatever the server encoding (client_encoding UTF8; on SQL_ASCII, where
the server converts nothing, bytes that are not UTF-8 are kept as surrogate escapes and sent back unchanged).
The pg tools it starts are tracked, so a failing or interrupted step can stop them (`stop_tools`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.string import StrDumperUnknown, TextLoader
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from pg_backup_dagster.errors import BackupError, one_line, redact, register_secret
from pg_backup_dagster.pg.retry import TransientDatabaseError, is_transient_error, is_transient_message
from pg_backup_dagster.pg.sql import server_major
from pg_backup_dagster.pg.tools import PgTools, find_tools


@dataclass
class SourceDatabase:
    """One source database, reached with a connection budget shared by every connection and pg tool it runs."""

    dsn: str
    source: str = "main"
    max_connections: int = 4
    connect_timeout: int = 10
    retry_attempts: int = 5
    retry_max_wait: float = 20.0
    pg_bin: str | None = None
    lock_timeout: float = 60.0  # seconds any session of ours waits for a lock before failing

    semaphore: threading.BoundedSemaphore = field(init=False, repr=False)
    _children: set[subprocess.Popen] = field(init=False, repr=False, default_factory=set)
    _children_lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.semaphore = threading.BoundedSemaphore(self.max_connections)
        register_secret(self.conn_params().get("password"))

    # --- connection parameters -------------------------------------------------------------------------
    def conn_params(self) -> dict[str, Any]:
        try:
            return conninfo_to_dict(self.dsn)
        except psycopg.ProgrammingError:
            raise BackupError(f"source '{self.source}': the database URL is not a valid connection string") from None

    @property
    def safe_dsn(self) -> str:
        """The DSN without its password, fit for argv, logs and metadata."""
        params = {k: v for k, v in self.conn_params().items() if k != "password"}
        return make_conninfo(**params)

    def display(self) -> str:
        p = self.conn_params()
        return f"{p.get('user', '')}@{p.get('host', 'localhost')}:{p.get('port', 5432)}/{p.get('dbname', '')}"

    def tools(self) -> PgTools:
        return find_tools(self.pg_bin)

    def tool_env(self, application_name: str) -> dict[str, str]:
        """Environment for pg tools: password and application_name travel here, never in argv."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        password = self.conn_params().get("password")
        if password:
            env["PGPASSWORD"] = str(password)
        env["PGAPPNAME"] = application_name
        env["PGCONNECT_TIMEOUT"] = str(self.connect_timeout)
        return env

    # --- retry -----------------------------------------------------------------------------------------
    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception(is_transient_error),
            stop=stop_after_attempt(self.retry_attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=self.retry_max_wait),
            reraise=True,
        )

    def _fail(self, exc: BaseException, action: str) -> BackupError:
        return BackupError(f"source '{self.source}' ({self.display()}): {action}: {one_line(str(exc))}")

    # --- connections -----------------------------------------------------------------------------------
    @property
    def lock_timeout_ms(self) -> int:
        return max(1, round(self.lock_timeout * 1000))

    def _open(self, application_name: str) -> psycopg.Connection:
        conn = psycopg.connect(
            self.dsn,
            autocommit=True,
            application_name=application_name,
            connect_timeout=self.connect_timeout,
            client_encoding="UTF8",
        )
        try:
            prepare_session(conn, self.lock_timeout_ms)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def connect(self, application_name: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection]:
        """A psycopg connection holding one slot of the budget until closed, with our session settings."""
        with self.semaphore:
            try:
                conn = self._retrying()(self._open, application_name)
            except psycopg.Error as exc:
                raise self._fail(exc, "cannot connect") from None
            conn.autocommit = autocommit
            with conn:
                yield conn

    def server_major(self, application_name: str) -> int:
        """The server's major version, and a refusal if our pg_dump is older."""
        with self.connect(application_name) as conn:
            major = server_major(conn)
        self.tools().require_at_least(major)
        return major

    @contextmanager
    def exported_snapshot(self, application_name: str) -> Iterator[tuple[psycopg.Connection, str]]:
        """Hold a REPEATABLE READ transaction open and export its snapshot for every pg_dump of one backup.

        A failure inside is reported by its cause (backup/failures.py names lock holders, missing privileges,
        dropped tables); "lost the backup's snapshot connection" only when the connection really is gone.
        """
        with self.connect(application_name, autocommit=False) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            try:
                yield conn, snapshot
            except psycopg.Error as exc:
                if connection_lost(conn, exc):  # e.g. the server restarted: name that, not the rollback's error
                    raise self._fail(exc, "lost the backup's snapshot connection") from None
                sqlstate = getattr(exc, "sqlstate", None) or "no SQLSTATE"
                raise self._fail(exc, f"the snapshot session failed ({sqlstate})") from None
            finally:
                if not abandon_query(conn) and not conn.closed:  # interrupted mid-query: canceled and closed
                    conn.rollback()

    def fail(self, message: str) -> BackupError:
        """A one-line error about this source."""
        return BackupError(f"source '{self.source}' ({self.display()}): {message}")

    # --- pg tools --------------------------------------------------------------------------------------
    def run_tool(
        self,
        program: str,
        args: Sequence[str],
        application_name: str,
        *,
        stdout: IO[bytes] | int | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a pg client program under the budget, retrying only failures that happened while connecting."""
        argv = [self.tools().path(program), *args, "--dbname", self.safe_dsn]

        def attempt() -> subprocess.CompletedProcess:
            with self.semaphore:
                result = self._run_tracked(argv, self.tool_env(application_name), stdout or subprocess.PIPE)
            if result.returncode != 0:
                message = redact(result.stderr.decode("utf-8", "replace")).strip() or _exit_cause(result.returncode)
                if is_transient_message(message) and _failed_while_connecting(message):
                    raise TransientDatabaseError(message)
                raise BackupError(f"{program} failed for source '{self.source}' ({self.display()}): {one_line(message)}")
            return result

        try:
            return self._retrying()(attempt)
        except TransientDatabaseError as exc:
            raise BackupError(f"{program} failed for source '{self.source}' ({self.display()}): {one_line(str(exc))}") from None

    def _run_tracked(self, argv: list[str], env: dict[str, str], stdout: IO[bytes] | int) -> subprocess.CompletedProcess:
        """subprocess.run, with the child known to stop_tools while it runs (and killed if we are interrupted)."""
        with subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.PIPE) as proc:
            with self._children_lock:
                self._children.add(proc)
            try:
                out, err = proc.communicate()
            except BaseException:
                _stop(proc)
                raise
            finally:
                with self._children_lock:
                    self._children.discard(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def stop_tools(self) -> None:
        """Stop every pg tool this source is running: SIGTERM first, so pg_dump cancels its own server queries."""
        with self._children_lock:
            running = list(self._children)
        for proc in running:
            _stop(proc)

    def terminate_backends(self, conn: psycopg.Connection, prefix: str, *, waiting_only: bool = True) -> list[int]:
        """Terminate server sessions of ours (application_name starting with prefix) other than conn's own.

        With waiting_only, only sessions blocked on a lock: what a pg tool killed without a word leaves behind.
        """
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE starts_with(application_name, %s) AND pid <> pg_backend_pid() "
            "AND datname = current_database() AND (NOT %s OR wait_event_type = 'Lock')",
            [prefix, waiting_only],
        ).fetchall()
        return [int(pid) for pid, _ in rows]


class _SqlAsciiText(TextLoader):
    """Text from a SQL_ASCII database: UTF-8 where it is, other bytes kept as surrogate escapes (round trip)."""

    def load(self, data) -> str:
        return bytes(data).decode("utf-8", "surrogateescape")


class _SqlAsciiStr(StrDumperUnknown):
    """Strings back to a SQL_ASCII database: exactly the bytes they were read from."""

    def dump(self, obj: str) -> bytes:
        return obj.encode("utf-8", "surrogateescape")


def prepare_session(conn: psycopg.Connection, lock_timeout_ms: int) -> None:
    """Our session settings, whatever the role or database sets: no statement, idle or transaction timeout (our
    snapshot session stays open for the whole dump), a bounded lock wait, and names decoded as text.

    SET rather than startup options, so it also works through poolers that refuse `options`.
    """
    settings = {"statement_timeout": "0", "idle_in_transaction_session_timeout": "0",
                "lock_timeout": f"{lock_timeout_ms}ms"}
    if conn.info.server_version >= 170000:
        settings["transaction_timeout"] = "0"
    placeholders = ", ".join("set_config(%s, %s, false)" for _ in settings)
    conn.execute(f"SELECT {placeholders}", [v for item in settings.items() for v in item])
    if conn.info.parameter_status("server_encoding") == "SQL_ASCII":
        # The server checks UTF-8 output but converts nothing: read the bytes as they are, decode them ourselves.
        conn.execute("SET client_encoding = 'SQL_ASCII'")
        for name in ("text", "name", "varchar", "bpchar", '"char"'):
            conn.adapters.register_loader(name, _SqlAsciiText)
        conn.adapters.register_loader(0, _SqlAsciiText)
        conn.adapters.register_dumper(str, _SqlAsciiStr)


def abandon_query(conn: psycopg.Connection) -> bool:
    """If conn is still running a query (we were interrupted while waiting on it, e.g. on a lock), cancel it on the
    server and close the connection: closing alone leaves a backend waiting on its lock. True if it did."""
    if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
        return False
    with contextlib.suppress(psycopg.Error):  # the server is gone too: then nothing waits there
        conn.cancel_safe(timeout=10)
    conn.close()
    return True


def connection_lost(conn: psycopg.Connection, exc: BaseException) -> bool:
    """The session is really gone (server restart, network, FATAL), as opposed to an SQL error in it."""
    if conn.closed or getattr(conn, "broken", False):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return not sqlstate or sqlstate.startswith(("08", "57P"))


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _exit_cause(returncode: int) -> str:
    """What to say when a tool died without a word (killed by a signal: OOM killer, operator, timeout)."""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exited with status {returncode} without an error message"


def _failed_while_connecting(message: str) -> bool:
    """pg tools prefix connection failures this way; a failure later in a dump is not retried blindly."""
    lowered = message.lower()
    return "connection to server" in lowered or "could not connect" in lowered or "too many clients" in lowered
