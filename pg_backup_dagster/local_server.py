"""Throwaway PostgreSQL servers on 127.0.0.1: the demo's source, the restore check's target, the tests' servers.

As root, initdb refuses to run, so the server runs as an unprivileged system user that is created on demand.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pgtools import server_programs_dir

SERVER_USER = "pgbackup"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True, capture_output=True)
        return pwd.getpwnam(SERVER_USER)


def _open_path_for(path: Path) -> None:
    """Let the unprivileged server user traverse every parent of path (binaries and data dirs)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


@dataclass
class LocalPostgres:
    """A PostgreSQL server in `root_dir`, listening on 127.0.0.1 only, with a password for `postgres`."""

    root_dir: Path
    bin_dir: Path = field(default_factory=server_programs_dir)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=_free_port)
    trust_local: bool = False
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.root_dir / "server.log"

    def dsn(self, dbname: str = "postgres", *, with_password: bool = True, user: str = "postgres") -> str:
        secret = f":{self.password}" if with_password and not self.trust_local else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{dbname}"

    def _run_as_server_user(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        user = _ensure_server_user() if os.geteuid() == 0 else None
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        if user is not None:
            kwargs["user"] = user.pw_uid
            kwargs["group"] = user.pw_gid
            kwargs["extra_groups"] = []
        return subprocess.run(args, cwd="/", **kwargs)

    def init(self) -> None:
        """initdb with scram passwords over TCP (or trust, for the demo)."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if os.geteuid() == 0:
            user = _ensure_server_user()
            _open_path_for(self.bin_dir)
            _open_path_for(self.root_dir)
            os.chown(self.root_dir, user.pw_uid, user.pw_gid)
        with tempfile.NamedTemporaryFile("w", dir=self.root_dir, delete=False) as pwfile:
            pwfile.write(self.password + "\n")
        os.chmod(pwfile.name, 0o644)
        auth = "trust" if self.trust_local else "scram-sha-256"
        try:
            result = self._run_as_server_user([
                str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--encoding=UTF8",
                "--locale=C", "--no-sync", "--no-instructions", f"--auth-host={auth}", "--auth-local=trust", f"--pwfile={pwfile.name}",
            ])
        finally:
            os.unlink(pwfile.name)
        if result.returncode != 0:
            raise BackupError(f"initdb failed in {self.data_dir}: {one_line(result.stderr)}")

    def start(self) -> LocalPostgres:
        """Start (initialising first if needed) and wait until it accepts connections."""
        self.init()
        options = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": "''",
                   "fsync": "off", "max_connections": "100", **self.settings}
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        result = self._run_as_server_user([
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", opts, "start",
        ])
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise BackupError(f"PostgreSQL server did not start: {one_line(result.stderr + ' ' + log)}")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run_as_server_user(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
            )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


@contextmanager
def ephemeral_server(parent: Path | None = None, bin_dir: Path | None = None):
    """A server in a fresh temp directory, destroyed on exit whatever happens."""
    root = Path(tempfile.mkdtemp(prefix="pgbd-server-", dir=parent))
    server = LocalPostgres(root_dir=root, bin_dir=bin_dir or server_programs_dir())
    try:
        yield server.start()
    finally:
        server.destroy()
