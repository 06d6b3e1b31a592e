"""Ephemeral servers from the cached template: each gets its own password, the template is checked and rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import psycopg
import pytest

from pg_backup_dagster.pg.local_server import (
    SERVER_USER,
    LocalPostgres,
    _tree_digests,
    ephemeral_server,
    template_dir,
)
from pg_backup_dagster.pg.tools import server_programs_dir


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private template cache, so each test sees the template appear, break and come back."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _template() -> Path:
    return template_dir(server_programs_dir())


def _refused(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        assert "password" in str(exc)
        return True
    return False


def _whoami(dsn: str) -> str:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return conn.execute("SELECT current_user").fetchone()[0]


def _postgres_cmdlines() -> list[str]:
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return [line for line in lines if "postgres" in line]


def test_servers_from_the_template_accept_only_their_own_password(cache: Path) -> None:
    with ephemeral_server() as first, ephemeral_server() as second:
        assert (_template() / "manifest.json").exists(), "the servers did not come from the cached template"
        assert first.password != second.password
        assert _whoami(first.dsn()) == _whoami(second.dsn()) == "postgres"
        assert _refused(first.dsn().replace(first.password, second.password))
        assert _refused(second.dsn().replace(second.password, first.password))
        assert _refused(first.dsn(with_password=False))
        assert _refused(second.dsn(with_password=False))
        for server in (first, second):
            assert server.password not in server.log_file.read_text(errors="replace")
            assert server.password not in (server.data_dir / "postmaster.opts").read_text()
            assert not any(server.password in line for line in _postgres_cmdlines())
            assert server.password not in (server.data_dir / "pg_hba.conf").read_text()


def test_template_holds_no_password_and_no_open_tcp_door(cache: Path) -> None:
    with ephemeral_server() as server:
        hba = (_template() / "data" / "pg_hba.conf").read_text()
        with psycopg.connect(server.dsn()) as conn:
            verifier = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").fetchone()[0]
        lines = [line.split() for line in (server.data_dir / "pg_hba.conf").read_text().splitlines()]
    assert verifier.startswith("SCRAM-SHA-256$")
    assert [line for line in lines if line and line[0] == "host" and line[-1] != "scram-sha-256"] == []
    assert "trust" in hba  # initdb's own file: never used by a server, each writes its own


def test_unix_socket_is_in_a_private_directory(cache: Path) -> None:
    with ephemeral_server() as server:
        folder = server._private_socket_dir()
        info = folder.stat()
        sockets = [p for p in folder.iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
        assert stat.S_IMODE(info.st_mode) == 0o700
        if os.geteuid() == 0:
            import pwd

            assert info.st_uid == pwd.getpwnam(SERVER_USER).pw_uid
        assert sockets, "the server should listen on its private socket"
        server.stop()
        assert not folder.exists(), "stop() removes the socket directory"
        server.start()
        folder = server._private_socket_dir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not folder.exists(), "destroy() removes the socket directory"


def test_template_is_built_once_then_reused(cache: Path) -> None:
    with ephemeral_server():
        pass
    built = (_template() / "manifest.json").stat()
    with ephemeral_server() as server:
        assert _whoami(server.dsn()) == "postgres"
    again = (_template() / "manifest.json").stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert [p.name for p in _template().parent.iterdir()] == [_template().name], "no build or trash left behind"


def _corrupt_catalog_file(template: Path) -> Path:
    manifest = json.loads((template / "manifest.json").read_text())
    relative = next(name for name in sorted(manifest) if name.startswith("base/1/") and name.split("/")[-1].isdigit()
                    and (template / "data" / name).stat().st_size >= 8192)
    path = template / "data" / relative
    data = bytearray(path.read_bytes())
    data[100:164] = bytes(b ^ 0xFF for b in data[100:164])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", ["flipped bytes", "deleted file", "extra file", "no manifest", "no template"])
def test_damaged_template_is_rebuilt(cache: Path, damage: str) -> None:
    with ephemeral_server():
        pass
    template = _template()
    before = json.loads((template / "manifest.json").read_text())
    if damage == "flipped bytes":
        _corrupt_catalog_file(template)
    elif damage == "deleted file":
        (template / "data" / "global" / "pg_control").unlink()
    elif damage == "extra file":
        (template / "data" / "base" / "1" / "999999").write_bytes(b"\0" * 8192)
    elif damage == "no manifest":
        (template / "manifest.json").unlink()
    else:
        shutil.rmtree(template)
    with ephemeral_server() as server:
        with psycopg.connect(server.dsn()) as conn:  # reads the catalog a damaged copy would have broken
            assert conn.execute("SELECT count(*) FROM pg_class").fetchone()[0] > 100
        assert not (server.data_dir / "base" / "1" / "999999").exists()
    rebuilt = json.loads((template / "manifest.json").read_text())
    assert rebuilt.keys() == before.keys()
    assert _tree_digests(template / "data") == rebuilt


def test_unusable_cache_falls_back_to_initdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with ephemeral_server() as server:
        assert _whoami(server.dsn()) == "postgres"
        assert _refused(server.dsn(with_password=False))


def test_trust_server_needs_no_password_and_restarts(cache: Path, tmp_path: Path) -> None:
    server = LocalPostgres(root_dir=tmp_path / "demo", trust_local=True)
    try:
        server.start()
        assert _whoami(server.dsn()) == "postgres"
        server.stop()
        server.start()
        assert _whoami(server.dsn()) == "postgres"
    finally:
        server.destroy()


def test_restarted_server_keeps_its_password(cache: Path) -> None:
    with ephemeral_server() as server:
        server.stop()
        server.start()
        assert _whoami(server.dsn()) == "postgres"
        assert _refused(server.dsn(with_password=False))


def test_before_its_password_is_set_no_tcp_login_succeeds(cache: Path, tmp_path: Path) -> None:
    """The window between start and the password: the role has none, so scram refuses every TCP login."""
    server = LocalPostgres(root_dir=tmp_path / "window")
    try:
        server.init()
        server._password_pending = False  # start without setting it, to look into that window
        server.start()
        assert _refused(server.dsn())
        assert _refused(server.dsn(with_password=False))
        assert _refused(server.dsn().replace(server.password, ""))
    finally:
        server.destroy()
