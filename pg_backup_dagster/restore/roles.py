r"""Load a backup's roles.sql into a server: the restore's roles tier and the check that roles.sql loads.

roles.sql is rewritten for the target before psql sees it, then loaded in one transaction that stops at the
first error, under our own `\restrict` (a meta-command in it is refused, never run):
- roles that already exist on the target keep their CREATE ROLE out (it would fail); the ALTER ROLE, SET and
  COMMENT statements that follow still apply to them, and the result names every existing role altered;
- for servers before PostgreSQL 16, membership grants lose the per-grant options they do not know
  (`WITH INHERIT TRUE`, `SET TRUE`, …; `ADMIN OPTION` is kept), noted when an option had no equivalent;
- a role's default for a setting the server does not know (`ALTER ROLE … SET transaction_timeout` before 17)
  is left out, with a note.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pg_backup_dagster.errors import BackupError, one_line, redact
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.sql import quote_ident
from pg_backup_dagster.pg.sql_script import Token, compatible_bytes, known_setting, split_statements, tokens
from pg_backup_dagster.pg.tools import PgTools
from pg_backup_dagster.restore.guard import restrict_lines
from pg_backup_dagster.restore.runner import exit_text

# Per-grant membership options arrived in PostgreSQL 16; before it only ADMIN OPTION exists.
_GRANT_OPTIONS_SINCE = 16


@dataclass
class RolesLoaded:
    """What loading roles.sql did: the roles that existed already, and what a person should know."""

    existing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _code(statement: str) -> list[Token]:
    return [t for t in tokens(statement) if t.kind not in ("ws", "comment")]


def _grant_without_new_options(statement: str, code: list[Token]) -> tuple[str, list[str]]:
    """A role membership GRANT with PostgreSQL 16's `WITH ADMIN|INHERIT|SET OPTION|TRUE|FALSE, …` list rewritten
    to what older servers accept (`WITH ADMIN OPTION` or nothing); returns it and what could not be kept."""
    words = [t.keyword for t in code]
    if "ON" in words or "TO" not in words or "WITH" not in words[words.index("TO"):]:
        return statement, []
    start = words.index("WITH", words.index("TO"))
    i, options = start + 1, {}
    while i + 1 < len(code) and words[i] in ("ADMIN", "INHERIT", "SET") and words[i + 1] in ("OPTION", "TRUE", "FALSE"):
        options[words[i]] = words[i + 1] != "FALSE"
        i += 2
        if i < len(code) and code[i].text == ",":
            i += 1
            continue
        break
    if not options or (set(options) == {"ADMIN"} and options["ADMIN"]):
        return statement, []
    lost = [f"{name} FALSE" for name in ("INHERIT", "SET") if options.get(name) is False]
    keep = " WITH ADMIN OPTION" if options.get("ADMIN") else ""
    cut_from = code[start].start
    while cut_from > 0 and statement[cut_from - 1] in " \t":
        cut_from -= 1
    return statement[:cut_from] + keep + statement[code[i - 1].end :], lost


def _role_setting(code: list[Token], words: list[str]) -> str | None:
    """The setting `ALTER ROLE r [IN DATABASE d] SET name …` gives a default for, else None."""
    if words[:1] != ["ALTER"] or "SET" not in words or words.index("SET") + 1 >= len(code):
        return None
    return code[words.index("SET") + 1].ident


def roles_script(text: str, server_major: int, existing: set[str]) -> tuple[str, RolesLoaded]:
    """roles.sql made loadable on this target in one transaction, and what it will do to existing roles.

    A psql meta-command anywhere at a statement's start is refused here already (the `\\restrict` guard
    refuses the rest)."""
    loaded = RolesLoaded()
    out: list[str] = []
    for is_statement, lines in split_statements(text):
        statement = "".join(lines)
        if not is_statement:
            if statement.lstrip().startswith("\\"):
                raise BackupError(
                    f"roles.sql holds a psql meta-command ({one_line(statement)[:60]!r}): refused, "
                    "backup content never runs client-side commands"
                )
            out.append(statement)
            continue
        code = _code(statement)
        words = [t.keyword for t in code]
        if len(code) >= 3 and words[:2] in (["CREATE", "ROLE"], ["CREATE", "USER"], ["CREATE", "GROUP"]):
            role = code[2].ident
            if role is not None and role in existing:
                loaded.existing.append(role)
                out.append(f"-- role {quote_ident(role)} already exists: CREATE ROLE left out\n")
                continue
        if len(code) >= 3 and words[0] == "ALTER" and words[1] in ("ROLE", "USER", "GROUP"):
            role = code[2].ident
            if role is not None and role in existing and role not in loaded.altered:
                loaded.altered.append(role)
        setting = _role_setting(code, words)
        if setting is not None and not known_setting(setting, server_major):
            loaded.notes.append(f"PostgreSQL {server_major} has no setting {setting}: "
                                f"{one_line(statement)[:160]} left out")
            out.append(f"-- left out: PostgreSQL {server_major} has no setting {setting}\n")
            continue
        if server_major < _GRANT_OPTIONS_SINCE and words[:1] == ["GRANT"]:
            statement, lost = _grant_without_new_options(statement, code)
            if lost:
                loaded.notes.append(
                    f"PostgreSQL {server_major} has no per-grant {' / '.join(lost)}: "
                    f"{one_line(statement)[:160]} follows the member's own INHERIT setting"
                )
        out.append(statement)
    for role in loaded.altered:
        loaded.notes.insert(0, f"role {quote_ident(role)} already existed and was altered (ALTER ROLE from roles.sql)")
    for role in loaded.existing:
        if role not in loaded.altered:
            loaded.notes.insert(0, f"role {quote_ident(role)} already existed: left as it was")
    return "".join(out), loaded


def existing_roles(dsn: str) -> set[str]:
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
            return {row[0] for row in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    except psycopg.Error as exc:
        raise BackupError(f"cannot read the target's roles: {one_line(str(exc))}") from None


def restore_roles_file(tools: PgTools, roles_file: Path, dsn: str, server_major: int) -> RolesLoaded:
    """Load roles.sql with psql in one transaction, stopping at the first error; nothing is created on failure."""
    psql = tools.path("psql")
    head, tail = restrict_lines(psql)
    with roles_file.open("rb") as handle:
        text = b"".join(compatible_bytes(handle, server_major)).decode("utf-8", errors="surrogateescape")
    script, loaded = roles_script(text, server_major, existing_roles(dsn))
    safe, env = child_env(dsn)
    result = subprocess.run(
        [psql, "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-d", safe, "-f", "-"],
        input=head + script.encode("utf-8", errors="surrogateescape") + tail,
        env=env,
        capture_output=True,
    )
    stderr = result.stderr.decode("utf-8", errors="replace")
    errors = [ln for ln in stderr.splitlines() if "ERROR:" in ln or "FATAL:" in ln or "error:" in ln]
    if result.returncode != 0 or errors:
        cause = errors[0] if errors else one_line(stderr) or exit_text("psql", result.returncode)
        raise BackupError(f"roles.sql failed (nothing was loaded): {redact(cause)}")
    return loaded
