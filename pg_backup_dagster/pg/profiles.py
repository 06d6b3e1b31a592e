"""Managed-database profiles: which roles and schemas belong to the platform rather than to the user.

A managed database (Supabase) ships roles and schemas that every project already has and that the
customer may not create or alter (supautils blocks it, and `postgres` is no superuser there). A backup
that replays them fails, so the profile says what to leave out of roles.sql and of the dumps.

Supabase choices (following the Supabase CLI's own `supabase db dump`, pkg/migration/dump.go):

- Reserved roles: the CLI's `reservedRoles` (anon, authenticated, authenticator, dashboard_user,
  pgbouncer, postgres, service_role, supabase_*, cli_login_*, pgsodium_key*, pgtle_admin). Every
  statement that creates, alters, comments or grants them is commented out of roles.sql; a membership
  merely *granted by* a reserved role keeps the grant and loses the `GRANTED BY` clause (loading runs
  as `postgres`, which may not grant as `supabase_admin`). `NOSUPERUSER`/`NOREPLICATION` are dropped
  from the rest, as the CLI does: only a superuser may even mention those attributes.
- `excluded_schemas` (left out of every dump, DDL and data): the CLI's *data*-dump exclusion list,
  not its longer schema-dump list. Those schemas hold platform or extension internals with nothing of
  the customer's (graphql, vault, pgsodium, realtime, supabase_migrations, …), some are not even
  readable by `postgres`, and every project recreates them. `auth`, `storage`, `supabase_functions`,
  `cron`, `net`, `pgmq` stay IN the backup: auth.users, storage.objects and cron jobs are the
  customer's data, and public tables have foreign keys into auth.users, so a dump without auth could
  not be test-restored. `extensions` stays in as well, because `pg_dump -N extensions` still writes
  `CREATE EXTENSION … WITH SCHEMA extensions` and that fails where the schema is missing.
- `platform_schemas`: schemas that stay in the backup but whose DDL a restore target of the same
  shape (another Supabase project) already has: restore their data only there.
- `platform_tables`: the platform's own migration-history tables inside those schemas; the target has
  its own rows, so their data is not restored (the CLI's data dump excludes them too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.sql_script import Token, split_statements, tokens

RESERVED_MARK = "-- reserved by profile: "


@dataclass(frozen=True)
class Profile:
    """What a kind of server reserves for itself, and how roles are dumped from it."""

    name: str
    reserved_roles: tuple[str, ...]
    reserved_role_prefixes: tuple[str, ...]
    excluded_schemas: frozenset[str]
    pg_dumpall_args: tuple[str, ...]
    platform_schemas: frozenset[str] = field(default_factory=frozenset)
    platform_tables: frozenset[tuple[str, str]] = field(default_factory=frozenset)
    dropped_role_attributes: tuple[str, ...] = ()

    def is_reserved_role(self, role: str) -> bool:
        """Exact, case-sensitive role name as stored in pg_roles (unquoted names arrive lower-cased)."""
        return role in self.reserved_roles or any(role.startswith(p) for p in self.reserved_role_prefixes)


_ROLES_ARGS = ("--roles-only", "--no-role-passwords")

PLAIN = Profile(
    name="plain",
    reserved_roles=(),
    reserved_role_prefixes=(),
    excluded_schemas=frozenset(),
    pg_dumpall_args=_ROLES_ARGS,
)

SUPABASE = Profile(
    name="supabase",
    reserved_roles=(
        "anon",
        "authenticated",
        "authenticator",
        "dashboard_user",
        "pgbouncer",
        "postgres",
        "service_role",
        "pgsodium_keyholder",
        "pgsodium_keyiduser",
        "pgsodium_keymaker",
        "pgtle_admin",
    ),
    reserved_role_prefixes=("supabase_", "cli_login_", "pgsodium_"),
    excluded_schemas=frozenset(
        {
            # extension-owned
            "graphql",
            "graphql_public",
            "pgsodium",
            "pgsodium_masks",
            "pgtle",
            "repack",
            "tiger",
            "tiger_data",
            "topology",
            "vault",
            "timescaledb_information",
            "timescaledb_experimental",
            "_timescaledb_internal",
            "_timescaledb_cache",
            "_timescaledb_catalog",
            "_timescaledb_config",
            "_timescaledb_functions",
            "_timescaledb_debug",
            # platform-managed
            "etl",
            "pgbouncer",
            "realtime",
            "supabase_migrations",
            "_analytics",
            "_realtime",
            "_supavisor",
        }
    ),
    # --no-role-passwords also makes pg_dumpall read pg_roles instead of pg_authid, which `postgres`
    # on Supabase may not read.
    pg_dumpall_args=(*_ROLES_ARGS, "--quote-all-identifiers"),
    platform_schemas=frozenset(
        {"auth", "storage", "extensions", "supabase_functions", "cron", "net", "pgmq", "dbdev"}
    ),
    platform_tables=frozenset(
        {("auth", "schema_migrations"), ("storage", "migrations"), ("supabase_functions", "migrations")}
    ),
    dropped_role_attributes=("NOSUPERUSER", "NOREPLICATION"),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PLAIN, SUPABASE)}


def get_profile(name: str) -> Profile:
    """The profile called `name` (case-insensitive); a typo is an error, never a silent `plain`."""
    profile = PROFILES.get((name or "").strip().lower())
    if profile is None:
        raise BackupError(f"unknown profile {name!r}: expected plain or supabase")
    return profile


# --- roles.sql filtering --------------------------------------------------------------------------------

# A stored password hash: SCRAM (SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey) or md5 + 32 hex digits.
_HASH = re.compile(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+|md5[0-9a-fA-F]{32}")
_HASH_PLACEHOLDER = "<password hash removed>"

def _role_lists(code: list[Token]) -> tuple[list[Token], list[Token], Token | None]:
    """For GRANT/REVOKE: the granted roles (empty for object privileges), the grantees, the grantor."""
    words = [t.keyword for t in code]
    target_kw = "TO" if words[0] == "GRANT" else "FROM"
    if target_kw not in words:
        return [], [], None
    split = words.index(target_kw)
    granted = [] if "ON" in words[:split] else [t for t in code[1:split] if t.ident is not None]
    if words[0] == "REVOKE" and "FOR" in words[:split]:  # REVOKE ADMIN OPTION FOR a FROM b
        granted = [t for t in code[words.index("FOR") + 1 : split] if t.ident is not None]
    grantees: list[Token] = []
    grantor = None
    i = split + 1
    stop = ("WITH", "GRANTED", "CASCADE", "RESTRICT")
    while i < len(code) and code[i].keyword not in stop and code[i].text != ";":
        if code[i].ident is not None and code[i].keyword != "GROUP":
            grantees.append(code[i])
        i += 1
    if "GRANTED" in words[i:]:
        j = words.index("GRANTED", i)
        if j + 2 < len(code) and words[j + 1] == "BY":
            grantor = code[j + 2]
    return granted, grantees, grantor


def _roles_named(code: list[Token]) -> list[Token]:
    """The role-name tokens of a role statement pg_dumpall writes (CREATE/ALTER/DROP/COMMENT/GRANT…)."""
    words = [t.keyword for t in code]
    if len(code) < 3:
        return []
    if words[0] in ("CREATE", "ALTER") and words[1] in ("ROLE", "USER", "GROUP"):
        if words[0] == "ALTER" and words[2] in ("ALL", "CURRENT_USER", "SESSION_USER", "CURRENT_ROLE"):
            return []
        named = [code[2]]
        if words[0] == "ALTER" and "RENAME" in words and words.index("RENAME") + 2 < len(code):
            named.append(code[words.index("RENAME") + 2])
        return named
    if words[0] == "DROP" and words[1] in ("ROLE", "USER", "GROUP"):
        return [t for t in code[2:] if t.ident is not None and t.keyword not in ("IF", "EXISTS")]
    if "ON" in words and words[0] in ("COMMENT", "SECURITY"):
        on = words.index("ON")
        if on + 2 < len(code) and words[on + 1] == "ROLE":
            return [code[on + 2]]
        return []
    if words[0] in ("GRANT", "REVOKE"):
        granted, grantees, _ = _role_lists(code)
        return granted + grantees
    return []


def _rewrite(statement: str, profile: Profile) -> tuple[str, bool]:
    """Remove password clauses (always) and what the profile drops; say whether the statement is reserved."""
    toks = tokens(statement)
    code = [t for t in toks if t.kind not in ("ws", "comment")]
    words = [t.keyword for t in code]
    cuts: list[tuple[int, int]] = []  # spans to delete, each including the whitespace before it

    def cut(first: Token, last: Token) -> None:
        start = first.start
        while start > 0 and statement[start - 1] in " \t":
            start -= 1
        cuts.append((start, last.end))

    for i, tok in enumerate(code[:-1]):
        if tok.keyword == "PASSWORD" and code[i + 1].kind == "string":
            cut(code[i - 1] if i and words[i - 1] == "ENCRYPTED" else tok, code[i + 1])
    reserved = any(t.ident is not None and profile.is_reserved_role(t.ident) for t in _roles_named(code))
    if reserved:  # kept as written (minus passwords): it documents what the platform provides
        pass
    elif code and words[0] in ("GRANT", "REVOKE"):
        _, _, grantor = _role_lists(code)
        if grantor is not None and grantor.ident is not None and profile.is_reserved_role(grantor.ident):
            granted_idx = next(i for i, t in enumerate(code) if t is grantor)
            cut(code[granted_idx - 2], grantor)
    if (
        not reserved
        and profile.dropped_role_attributes
        and len(words) > 3
        and words[0] == "ALTER"
        and words[1] in ("ROLE", "USER")
        and words[3] == "WITH"
    ):
        for tok in code[4:]:
            if tok.keyword in profile.dropped_role_attributes:
                cut(tok, tok)
    for start, end in sorted(cuts, reverse=True):
        statement = statement[:start] + statement[end:]
    return _HASH.sub(_HASH_PLACEHOLDER, statement), reserved


def filter_roles_sql(text: str, profile: Profile) -> str:
    """roles.sql made loadable on a target of the profile's shape, and free of password hashes.

    Statements naming a reserved role are kept as comments (prefix `RESERVED_MARK`) so a reader sees
    what was left to the platform. Every `PASSWORD '…'` clause is removed whatever the profile: a
    stored hash is a credential, even though --no-role-passwords should already have kept it out.
    """
    out: list[str] = []
    for is_statement, lines in split_statements(text):
        if not is_statement:
            out.append(_HASH.sub(_HASH_PLACEHOLDER, lines[0]))
            continue
        statement, reserved = _rewrite("".join(lines), profile)
        if reserved:
            statement = "".join(RESERVED_MARK + line for line in statement.splitlines(keepends=True))
        out.append(statement)
    return "".join(out)


def roles_sql_has_password_hash(text: str) -> bool:
    """True when a SCRAM or md5 password hash appears anywhere, comments included."""
    return _HASH.search(text) is not None


def roles_created(text: str) -> list[str]:
    """Roles that roles.sql creates (not those left as comments for the platform): what a check server needs
    before objects that name them (policies `TO role`, grants) can restore."""
    names: list[str] = []
    for is_statement, lines in split_statements(text):
        code = [t for t in tokens("".join(lines)) if t.kind not in ("ws", "comment")] if is_statement else []
        words = [t.keyword for t in code[:2]]
        if words == ["CREATE", "ROLE"] and len(code) > 2 and code[2].ident is not None:
            names.append(code[2].ident)
    return names
