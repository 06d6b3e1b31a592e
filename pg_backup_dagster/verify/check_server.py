"""Which server a test restore goes to: one that can restore what the archive holds, chosen before restoring.

The bundled PostgreSQL 18 has no libxml, no ICU and only core contrib; a backup of Supabase (pgcrypto,
uuid-ossp on PostgreSQL 15), of xml columns or of PostGIS would fail halfway there. So the archive's TOC says
what it needs, each installed server build says what it has (pg/server_builds.py, read from its files), and the
first build that has everything runs the ephemeral check server. PG_BACKUP_RESTORE_URL, when set, is the user's
choice and wins. When no build qualifies, NoCheckServer names what is missing and the fixes, before any restore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.server_builds import ServerBuild, server_builds
from pg_backup_dagster.tiers.archive import Archive, TocEntry, UnsupportedArchive, entry_definition, read_archive

RESTORE_URL_LABEL = "restore server (PG_BACKUP_RESTORE_URL)"
# a column (`    "name" xml[],`) or a domain (`AS xml`) of type xml, in pg_dump's CREATE text
_XML_TYPE = re.compile(rb'(?:^\s+(?:"(?:[^"]|"")*"|[^\s"]+)|\bAS) (?:pg_catalog\.)?xml(?:\[\])*(?=[\s,)]|$)', re.M)
_ICU_COLLATION = re.compile(rb'provider = icu|-x-icu"')
_XML_DESCS = {"TABLE", "DOMAIN", "TYPE"}
_ICU_DESCS = {"COLLATION", "TABLE", "DOMAIN", "INDEX", "CONSTRAINT"}


@dataclass(frozen=True)
class CheckServer:
    """Where a test restore goes: the configured restore server, or an ephemeral server from these binaries."""

    label: str
    restore_url: str | None = None
    bin_dir: Path | None = None


@dataclass(frozen=True)
class Need:
    """One thing the archive needs from the check server (`kind`: extension, xml or icu), and the objects
    that need it."""

    kind: str
    name: str = ""
    objects: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return {"extension": f"extension {self.name}", "xml": "xml (a build --with-libxml)",
                "icu": "ICU collations (a build with ICU)"}[self.kind]

    def met_by(self, build: ServerBuild) -> bool:
        return {"extension": self.name in build.extensions, "xml": build.xml, "icu": build.icu}[self.kind]


class NoCheckServer(BackupError):
    """No server can restore what the archive holds: `missing` (what the closest build lacks) and `objects` (what
    in the archive needs it) let a check report what stays unverified."""

    def __init__(self, message: str, missing: list[Need]) -> None:
        super().__init__(message)
        self.missing = [str(need) for need in missing]
        self.objects = list(dict.fromkeys(obj for need in missing for obj in need.objects))


def _name(entry: TocEntry) -> str:
    schema = f"{entry.namespace.decode(errors='replace')}." if entry.namespace else ""
    return f"{entry.desc.lower()} {schema}{(entry.tag or b'').decode(errors='replace')}"


def _extension_needs(archive: Archive) -> list[Need]:
    """Each extension the archive creates, with the objects whose TOC entries depend on it."""
    needs = []
    for ext in (e for e in archive.entries if e.desc == "EXTENSION"):
        users = tuple(_name(e) for e in archive.entries if ext.dump_id in e.deps and e.desc != "COMMENT")
        needs.append(Need("extension", (ext.tag or b"").decode(), users))
    return needs


def archive_needs(path: Path) -> list[Need]:
    """What the archive needs beyond a core build: its extensions, xml support, ICU. Archives the reader does not
    know are not pre-checked (the restore itself then says what failed)."""
    try:
        archive = read_archive(path)
    except UnsupportedArchive:
        return []
    needs = _extension_needs(archive)
    for kind, descs, pattern in (("xml", _XML_DESCS, _XML_TYPE), ("icu", _ICU_DESCS, _ICU_COLLATION)):
        users = tuple(_name(e) for e in archive.entries
                      if e.desc in descs and pattern.search(entry_definition(archive, e)))
        if users:
            needs.append(Need(kind, objects=users))
    return needs


def choose_check_server(archive: Path, restore_url: str | None, source_major: int) -> CheckServer:
    """The configured restore server if any, else the first installed build that has everything the archive
    needs; NoCheckServer (one line: what is missing and the fixes) when none has."""
    if restore_url:
        return CheckServer(RESTORE_URL_LABEL, restore_url=restore_url)
    needs = archive_needs(archive)
    builds = server_builds()
    lacks = [(build, [need for need in needs if not need.met_by(build)]) for build in builds]
    for build, lacking in lacks:
        if not lacking:
            return CheckServer(f"ephemeral {build.label}", bin_dir=build.bin_dir)
    missing = min((lacking for _, lacking in lacks), key=len, default=needs)
    tried = "; ".join(f"{build.label} lacks {', '.join(map(str, lacking))}" for build, lacking in lacks)
    raise NoCheckServer(
        f"no check server can restore this backup: it needs {', '.join(map(str, missing))} "
        f"({tried or 'no PostgreSQL server build is installed'}); install a PostgreSQL {source_major} server "
        f"build that has it (e.g. apt install postgresql-{source_major} and the extension's package) or point "
        "PG_BACKUP_RESTORE_URL at a server built like production",
        missing,
    )
