"""PostgreSQL server builds on this host that could run a throwaway check server, and what each can restore.

What a build has is read from its files, without starting it: the extensions it ships are its
`pg_config --sharedir`/extension/*.control files, xml support and ICU come from `pg_config --configure`
(libxml only with --with-libxml; ICU with --with-icu before PostgreSQL 16, by default from 16 on unless
--without-icu). Order of preference: the bundled PostgreSQL 18, then system installs, newest major first.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pg_backup_dagster.pg.tools import bundled_bin_dir, system_bin_dirs

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres", "pg_config")
_MAJOR_RE = re.compile(r"PostgreSQL (\d+)")


@dataclass(frozen=True)
class ServerBuild:
    """One installed server build: where its programs are and what it can restore."""

    bin_dir: Path
    major: int
    bundled: bool
    extensions: frozenset[str]
    xml: bool
    icu: bool

    @property
    def label(self) -> str:
        """How metadata and errors name it: `PostgreSQL 15 (/usr/lib/postgresql/15)`, `bundled PostgreSQL 18`."""
        return f"bundled PostgreSQL {self.major}" if self.bundled else f"PostgreSQL {self.major} ({self.bin_dir.parent})"


def _pg_config(bin_dir: Path, option: str) -> str:
    result = subprocess.run([str(bin_dir / "pg_config"), option], capture_output=True, text=True, check=False,
                            timeout=30)
    return result.stdout.strip() if result.returncode == 0 else ""


@functools.lru_cache(maxsize=16)
def read_build(bin_dir: Path, bundled: bool = False) -> ServerBuild | None:
    """What the build in bin_dir has, or None when it is not a whole server build (a client-only install)."""
    if not all((bin_dir / program).exists() for program in SERVER_PROGRAMS):
        return None
    match = _MAJOR_RE.search(_pg_config(bin_dir, "--version"))
    if match is None:
        return None
    major = int(match.group(1))
    configure = _pg_config(bin_dir, "--configure")
    extension_dir = Path(_pg_config(bin_dir, "--sharedir")) / "extension"
    extensions = frozenset(p.stem for p in extension_dir.glob("*.control")) if extension_dir.is_dir() else frozenset()
    icu = "--with-icu" in configure if major < 16 else "--without-icu" not in configure
    return ServerBuild(bin_dir, major, bundled, extensions, "--with-libxml" in configure, icu)


def server_builds() -> list[ServerBuild]:
    """Every server build found, in order of preference (bundled first, then system installs, newest first)."""
    bundled = bundled_bin_dir()
    found = [read_build(bundled, True)] if bundled else []
    seen = {bundled}
    for bin_dir in system_bin_dirs():
        if bin_dir not in seen:
            seen.add(bin_dir)
            found.append(read_build(bin_dir))
    return [build for build in found if build is not None]
