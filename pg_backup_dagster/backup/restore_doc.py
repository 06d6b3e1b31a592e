"""RESTORE.md and SHA256SUMS: each backup folder explains how to restore itself without this tool.

Every ```sh block of RESTORE.md is run literally by the tests (bash, in the backup folder, `TARGET` set),
so what it says is what works. Blocks take their choices from variables with defaults (`ARCHIVE`,
`TABLES`, `OBJECTS`, `LATE`), and the index at the end maps every table to its folder. manifest.json
stays the source of truth; the index is a convenience for a person with only a shell.
"""

from __future__ import annotations

import re

from pg_backup_dagster.backup.manifest import tables_phrase
from pg_backup_dagster.backup.staging import Staging
from pg_backup_dagster.backup.state import DumpsState, TablesState
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import Digest, atomic_write
from pg_backup_dagster.pg.sql import quote_ident
from pg_backup_dagster.tiers.table_split import TableDump

RESTORE_DOC_NAME = "RESTORE.md"
CHECKSUMS_NAME = "SHA256SUMS"

# Drops what an older psql or server rejects, never data: \restrict/\unrestrict (unknown to psql before
# 17.6/16.10/15.14; COPY data never starts with `\u` or `\r`), and `SET transaction_timeout` (servers before 17),
# which pg_dump only writes in a file's header, before the first statement.
COMPAT_FUNCTION = (
    "compat() { LC_ALL=C awk '/^\\\\(un)?restrict / { next } "
    '!body && /^SET transaction_timeout / { next } /^[^-S\\\\]/ { body = 1 } { print }\' "$@" '
    "|| echo \"DO \\$\\$ BEGIN RAISE EXCEPTION 'a backup file could not be read'; END \\$\\$;\"; }"
)
EXCLUDED_NOTE = "(names are shown SQL-quoted, with control characters escaped)"


def shown(*names: str) -> str:
    """A qualified name on one line: SQL-quoted, newlines and tabs escaped so the index stays one line per table."""
    text = quote_ident(*names)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def tools_major(pg_dump_version: str) -> int:
    """The major version of the programs that can read the dumps: pg_restore reads archives of its own major and
    older, never newer ones."""
    match = re.match(r"\d+", pg_dump_version)
    if match is None:
        raise BackupError(f"cannot read a major version from pg_dump version {pg_dump_version!r}")
    return int(match.group())


def _folder(table: TableDump) -> str:
    return table.files["schema"].rsplit("/", 1)[0]


def _sh(*lines: str) -> list[str]:
    return ["```sh", *lines, "```", ""]


def roles_section() -> list[str]:
    return [
        "## 1. Roles",
        "",
        "Roles are cluster-wide: errors for roles that already exist on the target are harmless.",
        "",
        *_sh(COMPAT_FUNCTION, 'compat roles.sql | psql -X -q -d "$TARGET"'),
    ]


def render_restore_md(source: str, staging: Staging) -> str:
    """Exact commands for every tier; `$TARGET` is a connection URL of the database to restore into."""
    dumps = staging.load(DumpsState)
    tier = staging.load_optional(TablesState)
    bid = staging.backup_id
    schemas = sorted(dumps.schemas, key=lambda s: s.schema or "")
    tables = tier.tables if tier else []
    example = tables[0] if tables else None
    all_objects = " ".join([*([tier.global_objects] if tier.global_objects else []), *tier.schema_objects.values()]
                           ) if tier else ""
    major = tools_major(dumps.pg_dump_version)
    lines = [
        f"# Restoring backup {bid} of source `{source}`",
        "",
        f"These commands need only PostgreSQL's own programs (pg_restore and psql of version {major} or newer:",
        f"the dumps were written by pg_dump {dumps.pg_dump_version}), bash, awk and sha256sum. To get them:",
        "",
        '    export PATH="$(pg-backup-dagster tools):$PATH"   # where pg_backup_dagster is installed (its bundled ones)',
        f"    apt-get install postgresql-client-{major}           # Debian/Ubuntu (PostgreSQL's apt repository)",
        "",
        f"`pg_restore --version` must then say {major} or newer. Run the commands in this folder with `TARGET` set",
        "to a connection URL of the database to restore into (an existing database; `createdb` makes one), and",
        "give the password through `PGPASSWORD` or `~/.pgpass`, not in the URL:",
        "",
        "    export TARGET='postgresql://user@host:5432/dbname'",
        "",
        "If the files end in `.age` (an encrypted backup), decrypt each first: `age -d -i KEYFILE -o FILE FILE.age`.",
        "manifest.json lists every file with its tier, its exact schema and table names, size and sha256.",
        "",
        "## 0. Check the files",
        "",
        *_sh("sha256sum --check --quiet SHA256SUMS"),
        *(roles_section() if staging.roles_file.exists() else []),
        "## 2. The whole database",
        "",
        "Into an empty database. `--jobs=N` makes a large restore faster, but PostgreSQL may then deadlock",
        "validating a foreign key to a partitioned table; `pg-backup-dagster restore` runs those keys in a pass",
        "of their own.",
        "",
        *_sh(f'pg_restore --no-owner --no-privileges --exit-on-error --dbname="$TARGET" {dumps.full.path}'),
    ]
    if schemas:
        lines += [
            "## 3. One schema",
            "",
            "Each schema has its own archive; set `ARCHIVE` to one of the list below. Objects it references in other",
            "schemas (types, foreign keys) must exist in the target first.",
            "",
        ]
        lines += _sh(
            f'ARCHIVE="${{ARCHIVE:-{schemas[0].path}}}"',
            'pg_restore --no-owner --no-privileges --exit-on-error --dbname="$TARGET" "$ARCHIVE"',
        )
        lines += ["```text", *(f"{s.path}\t{shown(s.schema or '')}" for s in schemas), "```", ""]
    if not tables:  # the per-table tier is not part of this backup
        return "\n".join(lines)
    lines += [
        "## 4. Any tables",
        "",
        "Set `TABLES` to the folders of the tables to restore (see the index below; list a partition's or child's",
        "parent tables before it, and the tables a table's fk.sql references or its post.sql's rules and policies",
        "read: `fk_refs` and `post_refs` in manifest.json). `OBJECTS` lists what belongs to no table and any table",
        "may use: by default `global_objects.sql` (extensions, access methods, large objects) and every",
        "`{schema}/objects.sql` (types, functions, sequences); empty it, or keep only the missing ones, when the",
        "target has them already. `LATE` may name `global_objects_late.sql` (views, materialized views and the rules,",
        "policies and triggers that need them) when every table they read is restored too.",
        "Everything runs in one transaction (all or nothing), in phases: all schema.sql, all data.sql, all",
        "post.sql (indexes, constraints, triggers, policies), then all fk.sql, so any set of tables can be restored.",
        "",
    ]
    if example:
        lines += _sh(
            f'TABLES="${{TABLES:-{_folder(example)}}}"',
            f'OBJECTS="${{OBJECTS-{all_objects}}}"',
            'LATE="${LATE-}"',
            COMPAT_FUNCTION,
            "{",
            "  echo \"SET client_encoding = 'UTF8'; SET client_min_messages = warning;\"",
            "  for t in $TABLES; do",
            "    seg=${t%%/*}; printf -v name '%b' \"${seg//[%]/\\\\x}\"",
            '    printf \'CREATE SCHEMA IF NOT EXISTS "%s";\\n\' "${name//\\"/\\"\\"}"',
            "  done",
            '  for f in $OBJECTS; do compat "$f"; done',
            "  for kind in schema data post fk; do",
            "    for t in $TABLES; do",
            '      case $kind in post | fk) [ -f "$t/$kind.sql" ] || continue ;; esac',
            '      compat "$t/$kind.sql"',
            "    done",
            "  done",
            '  for f in $LATE; do compat "$f"; done',
            '} | psql -X -q -1 -v ON_ERROR_STOP=1 -o /dev/null -d "$TARGET"',
        )
    holding_rows = {r.key for r in dumps.row_counts}
    parents = sum((t.schema, t.table) not in holding_rows for t in tables)
    lines += [
        "## Index of tables",
        "",
        f"{tables_phrase(len(tables) - parents, parents)}: folder, rows as dumped (`partitioned` for a partitioned",
        "table, whose rows are in its partitions), and the table",
        f"{EXCLUDED_NOTE}; parents come before their partitions and children.",
        "",
        "```text",
        *(f"{_folder(t)}\t{t.rows if (t.schema, t.table) in holding_rows else 'partitioned'}\t"
          f"{shown(t.schema, t.table)}" for t in tables),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_restore_doc(source: str, staging: Staging) -> None:
    atomic_write(staging.root / RESTORE_DOC_NAME, render_restore_md(source, staging).encode("utf-8"))


def write_checksums(staging: Staging, digests: dict[str, Digest]) -> None:
    """SHA256SUMS in `sha256sum -c` format, so files can be checked with coreutils alone."""
    body = "".join(f"{digests[rel].sha256}  {rel}\n" for rel in sorted(digests))
    atomic_write(staging.root / CHECKSUMS_NAME, body.encode("utf-8"))
