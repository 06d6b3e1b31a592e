"""Throwaway PostgreSQL servers on 127.0.0.1: the demo's source, the restore check's target, the tests' servers.

As root, initdb refuses to run, so the server runs as an unprivileged system user that is created on demand.

initdb costs about a second, so it runs once per set of server binaries: its output is kept as a template
data directory in the user's cache (verified by checksum on every use, rebuilt when missing or altered) and
each new server starts from a copy. The template holds no password: each server gets its own pg_hba.conf
(password-only over TCP) and its own fresh password, set through a unix socket in a private 0700 directory
before anyone could learn the port; until then no TCP login can succeed, since the role has no password.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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

import psycopg
from psycopg import sql

from pg_backup_dagster.config import setting
from pg_backup_dagster.errors import BackupError, one_line, register_secret
from pg_backup_dagster.pg.tools import server_programs_dir

SERVER_USER = "pgbackup"
TEMPLATE_FORMAT = "1"  # bump when the initdb options or the template layout change
_MANIFEST = "manifest.json"
_HBA = """# written by pg_backup_dagster: the unix socket lives in a private 0700 directory; TCP needs the password
local all all trust
host all all 127.0.0.1/32 {auth}
host all all ::1/128 {auth}
"""


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


def _server_user() -> pwd.struct_passwd | None:
    """The account servers run as: the unprivileged user when we are root, else ourselves (None)."""
    return _ensure_server_user() if os.geteuid() == 0 else None


def _open_path_for(path: Path) -> None:
    """Let the unprivileged server user traverse every parent of path (binaries and data dirs)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


def _run_as_server_user(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    user = _server_user()
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    if user is not None:
        kwargs["user"] = user.pw_uid
        kwargs["group"] = user.pw_gid
        kwargs["extra_groups"] = []
    return subprocess.run(args, cwd="/", **kwargs)


def _give_to_server_user(directory: Path, bin_dir: Path) -> None:
    """Make directory the server user's own and let it reach directory and the binaries (root only)."""
    user = _server_user()
    if user is not None:
        _open_path_for(bin_dir)
        _open_path_for(directory)
        os.chown(directory, user.pw_uid, user.pw_gid)


def _initdb(bin_dir: Path, data_dir: Path) -> None:
    """initdb without any password: authentication is decided by the pg_hba.conf each server writes."""
    result = _run_as_server_user([
        str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--encoding=UTF8", "--locale=C",
        "--no-sync", "--no-instructions", "--auth=trust",
    ])
    if result.returncode != 0:
        raise BackupError(f"initdb failed in {data_dir}: {one_line(result.stderr)}")


def _copy_tree(source: Path, target: Path) -> subprocess.Popen:
    """Start `cp -a` (owners and modes kept, reflinks where the filesystem has them); see _copy_error."""
    return subprocess.Popen(["cp", "-a", "--reflink=auto", str(source), str(target)], cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _copy_error(copy: subprocess.Popen) -> str | None:
    """Wait for a _copy_tree; its error message, or None if it succeeded."""
    _, stderr = copy.communicate()
    return None if copy.returncode == 0 else one_line(stderr.decode(errors="replace")) or f"cp: {copy.returncode}"


def _tree_digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path: proves a template is still exactly what initdb wrote."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            with path.open("rb") as handle:
                digests[str(path.relative_to(root))] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def template_cache_dir() -> Path:
    """Where cached PostgreSQL templates live: $XDG_CACHE_HOME (else ~/.cache)/pg_backup_dagster/templates."""
    return Path(setting("XDG_CACHE_HOME") or Path.home() / ".cache") / "pg_backup_dagster" / "templates"


def template_dir(bin_dir: Path) -> Path:
    """The template's directory for these binaries and this server user: a new build of postgres gets a new one."""
    postgres = (bin_dir / "postgres").resolve()
    stat = postgres.stat()
    user = _server_user()
    owner = user.pw_uid if user is not None else os.geteuid()
    identity = f"{TEMPLATE_FORMAT}|{postgres}|{stat.st_size}|{stat.st_mtime_ns}|{owner}"
    return template_cache_dir() / hashlib.sha256(identity.encode()).hexdigest()[:24]


def _template_digests(template: Path) -> dict[str, str] | None:
    """The checksums recorded when the template was built, or None if it is missing or unreadable."""
    try:
        manifest = json.loads((template / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest else None


def build_template(bin_dir: Path) -> Path:
    """initdb once into a staging directory, then rename it into the cache (atomic: readers never see a half)."""
    final = template_dir(bin_dir)
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    scratch = Path(tempfile.mkdtemp(prefix="pgbd-template-"))  # the server user may not reach the cache
    try:
        _give_to_server_user(scratch, bin_dir)
        _initdb(bin_dir, scratch / "data")
        error = _copy_error(_copy_tree(scratch / "data", staging / "data"))
        if error:
            raise BackupError(f"cannot copy the template into {staging}: {error}")
        (staging / _MANIFEST).write_text(json.dumps(_tree_digests(staging / "data")), encoding="utf-8")
        with contextlib.suppress(OSError):  # another process renamed its build first: theirs is as good
            staging.rename(final)
        return final
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def _discard(template: Path) -> None:
    """Move a bad template aside first (one rename), so no reader picks it up while it is being deleted."""
    if template.exists():
        trash = template.with_name(f".trash-{secrets.token_hex(6)}")
        template.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


def copy_template(bin_dir: Path, data_dir: Path) -> None:
    """data_dir becomes a copy of the cached template, checked against its checksums while `cp` runs."""
    template = template_dir(bin_dir)
    expected = _template_digests(template)
    if expected is None:  # never built, or its build was cut short
        _discard(template)
        template = build_template(bin_dir)
        expected = _template_digests(template)
    copy = _copy_tree(template / "data", data_dir)  # checksums are computed meanwhile, on the other core
    intact = _tree_digests(template / "data") == expected
    error = _copy_error(copy)
    if intact and not error:
        return
    shutil.rmtree(data_dir, ignore_errors=True)
    if not error:  # the copy worked but the template has changed since it was built: rebuild it, once
        _discard(template)
        error = _copy_error(_copy_tree(build_template(bin_dir) / "data", data_dir))
        if not error:
            return
    raise BackupError(f"cannot copy the template data directory: {error}")


@dataclass
class LocalPostgres:
    """A PostgreSQL server in `root_dir`, listening on 127.0.0.1 only, with a password for `postgres`."""

    root_dir: Path
    bin_dir: Path = field(default_factory=server_programs_dir)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=_free_port)
    trust_local: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    use_template: bool = True
    _password_pending: bool = field(default=False, repr=False)
    _socket_dir: Path | None = field(default=None, repr=False)

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
        return _run_as_server_user(args, **kwargs)

    def init(self) -> None:
        """A data directory from the cached template (or initdb), with scram passwords over TCP (trust: demo)."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").exists():
            return
        _give_to_server_user(self.root_dir, self.bin_dir)
        if not (self.use_template and self._copy_template()):
            _initdb(self.bin_dir, self.data_dir)
        auth = "trust" if self.trust_local else "scram-sha-256"
        (self.data_dir / "pg_hba.conf").write_text(_HBA.format(auth=auth), encoding="utf-8")  # keeps its owner
        self._password_pending = not self.trust_local

    def _copy_template(self) -> bool:
        """Whether data_dir now holds a verified copy of the template; False if there is no usable cache
        (no home directory, a read-only one, no `cp`): initdb then runs as it always did."""
        try:
            copy_template(self.bin_dir, self.data_dir)
        except (OSError, RuntimeError, BackupError):
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return False
        return True

    def _private_socket_dir(self) -> Path:
        """A 0700 directory only the server user (and root) can enter, for the trusted unix socket."""
        if self._socket_dir is None or not self._socket_dir.is_dir():
            self._socket_dir = Path(tempfile.mkdtemp(prefix="pgbd-sock-"))  # short: socket paths are limited
            user = _server_user()
            if user is not None:
                os.chown(self._socket_dir, user.pw_uid, user.pw_gid)
        return self._socket_dir

    def _set_password(self) -> None:
        """Store only a scram verifier computed here: the password itself never reaches the server or its log."""
        register_secret(self.password)
        with psycopg.connect(host=str(self._private_socket_dir()), port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=30) as conn:
            verifier = conn.pgconn.encrypt_password(self.password.encode(), b"postgres", b"scram-sha-256")
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(verifier.decode())))
        self._password_pending = False

    def start(self) -> LocalPostgres:
        """Start (initialising first if needed) and wait until it accepts connections."""
        self.init()
        options = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                   "unix_socket_directories": str(self._private_socket_dir()),
                   "fsync": "off", "max_connections": "100", **self.settings}
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        result = self._run_as_server_user([
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60",
            "-o", opts, "start",
        ])
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise BackupError(f"PostgreSQL server did not start: {one_line(result.stderr + ' ' + log)}")
        if self._password_pending:
            self._set_password()
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and remove its socket directory (start makes a new one)."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run_as_server_user(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"]
            )
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

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
