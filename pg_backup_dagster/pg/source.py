"""The source database: every connection and pg tool process against a source goes through here.

It holds a `max_connections` semaphore shared by psycopg connections and pg_dump/pg_restore/psql processes,
retries transient failures with exponential backoff and jitter, tags work with application_name, and keeps
the password out of argv (passed as PGPASSWORD in the child's environment). Dagster's PostgresResource
(defs/resources.py) configures one per step.
"""

from __future__ import annotations

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

    semaphore: threading.BoundedSemaphore = field(init=False, repr=False)

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
    @contextmanager
    def connect(self, application_name: str, *, autocommit: bool = True) -> Iterator[psycopg.Connection]:
        """A psycopg connection holding one slot of the budget until closed."""
        with self.semaphore:
            try:
                conn = self._retrying()(
                    psycopg.connect,
                    self.dsn,
                    autocommit=autocommit,
                    application_name=application_name,
                    connect_timeout=self.connect_timeout,
                )
            except psycopg.Error as exc:
                raise self._fail(exc, "cannot connect") from None
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
        """Hold a REPEATABLE READ transaction open and export its snapshot for every pg_dump of one backup."""
        with self.connect(application_name, autocommit=False) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            try:
                yield conn, snapshot
            except psycopg.Error as exc:  # e.g. the server restarted: name that, not the rollback's "connection lost"
                raise self._fail(exc, "lost the backup's snapshot connection") from None
            finally:
                if not conn.closed:
                    conn.rollback()

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
                result = subprocess.run(
                    argv, env=self.tool_env(application_name), stdout=stdout or subprocess.PIPE,
                    stderr=subprocess.PIPE, check=False,
                )
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


def _exit_cause(returncode: int) -> str:
    """What to say when a tool died without a word (killed by a signal: OOM killer, operator, timeout)."""
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return f"exited with status {returncode} without an error message"


def _failed_while_connecting(message: str) -> bool:
    """pg tools prefix connection failures this way; a failure later in a dump is not retried blindly."""
    lowered = message.lower()
    return "connection to server" in lowered or "could not connect" in lowered or "too many clients" in lowered
