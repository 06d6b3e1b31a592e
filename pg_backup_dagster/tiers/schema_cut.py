"""Per-schema custom-format archives cut out of the full archive, instead of one more pg_dump per schema.

Every `pg_dump --schema` reads the whole catalog and dumps and compresses its data a second time; cutting the
schema's entries and their already-compressed data blocks out of the full archive costs a file copy and
describes exactly the same snapshot. Archive versions tiers/archive.py does not know make the caller fall back
to pg_dump. Entries are chosen by the raw schema name the TOC stores for every schema-qualified object (never
by names printed by `pg_restore -l`).
"""

from __future__ import annotations

from pathlib import Path

from pg_backup_dagster.tiers.archive import Archive, TocEntry, read_archive, write_subset

_FOLLOWERS = {"COMMENT", "SECURITY LABEL", "ACL"}
_SESSION = {"ENCODING", "STDSTRINGS", "SEARCHPATH"}  # settings every archive carries


def schema_entries(archive: Archive, schema: str) -> list[TocEntry]:
    """What `pg_dump --schema` would hold: the schema, everything in it, and comments on those.

    Looked up by namespace, not by scanning the TOC: a many-schema archive is cut once per schema.
    """
    name = schema.encode()
    unqualified = archive.by_namespace.get(None, []) + archive.by_namespace.get(b"", [])
    chosen = {e.dump_id for e in archive.by_namespace.get(name, [])}
    chosen |= {e.dump_id for e in unqualified if e.desc in _SESSION or (e.desc == "SCHEMA" and e.tag == name)}
    chosen |= {e.dump_id for e in unqualified if e.desc in _FOLLOWERS and e.deps and set(e.deps) <= chosen}
    return [e for e in archive.entries if e.dump_id in chosen]


def copy_archive_for_schema(full: Path, schema: str, dest: Path, archive: Archive | None = None) -> None:
    """dest = the schema's part of the full archive, a valid custom-format archive of its own."""
    archive = archive or read_archive(full)
    write_subset(full, archive, schema_entries(archive, schema), dest)
