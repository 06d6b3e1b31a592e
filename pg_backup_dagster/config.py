"""Sources to back up: from a YAML file (`PG_BACKUP_CONFIG`, several sources) or single-source env variables.

A bad config fails at load with one line naming the field, before Dagster builds anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from cronsim import CronSim, CronSimError
from psycopg.conninfo import conninfo_to_dict

from pg_backup_dagster.backup.signing import load_public_key
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, parse_mode
from pg_backup_dagster.retention.policy import RetentionPolicy
from pg_backup_dagster.tiers.registry import TIER_NAMES as TIERS

# Every environment variable the tool itself reads (libpq's PG* and boto3's AWS_* are theirs), by name.
CONFIG_ENV = "PG_BACKUP_CONFIG"
PG_BIN_ENV = "PG_BACKUP_PG_BIN"
WORK_DIR_ENV = "PG_BACKUP_WORK_DIR"
RESTORE_TO_ENV = "PG_BACKUP_RESTORE_TO"
WEBHOOK_ENV = "PG_BACKUP_WEBHOOK_URL"
AGE_IDENTITY_ENV = "PG_BACKUP_AGE_IDENTITY"
SIGNING_KEY_ENV = "PG_BACKUP_SIGNING_KEY"  # the env-configured source: private key, signs its manifests
VERIFY_KEY_ENV = "PG_BACKUP_VERIFY_KEY"  # the env-configured source: public key, verify/restore require it
S3_ADDRESSING_ENV = "PG_BACKUP_S3_ADDRESSING_STYLE"
S3_TRANSFERS_ENV = "PG_BACKUP_S3_TRANSFERS"  # concurrent uploads/downloads to S3 (default 16)
# the env-configured source's settings beyond its URL, target, name and profile
SCHEDULE_ENV = "PG_BACKUP_SCHEDULE"
MAX_CONNECTIONS_ENV = "PG_BACKUP_MAX_CONNECTIONS"
LOCK_TIMEOUT_ENV = "PG_BACKUP_LOCK_TIMEOUT_SECONDS"
MAX_RUNTIME_ENV = "PG_BACKUP_MAX_RUNTIME_MINUTES"  # minutes, or `off` for no limit
ACCEPTED_RESTORE_ERRORS_ENV = "PG_BACKUP_ACCEPTED_RESTORE_ERRORS"  # one regex per line
UNVERIFIABLE_ENV = "PG_BACKUP_UNVERIFIABLE"  # fail (default) or warn
RTO_BUDGET_ENV = "PG_BACKUP_RTO_BUDGET_SECONDS"  # the env-configured source: restore time budget of its check
HEAPALLINDEXED_ENV = "PG_BACKUP_AMCHECK_HEAPALLINDEXED"  # the env-configured source: on/off (default off)
DAGSTER_PG_URL_ENV = "DAGSTER_PG_URL"
DAGSTER_HOME_ENV = "DAGSTER_HOME"


def setting(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A process-wide setting by its variable name (read when asked, so tests and operators may change it)."""
    return (os.environ if env is None else env).get(name) or None


DEFAULT_SCHEDULE = "0 3 * * *"  # the env-configured source: daily at 03:00 (its timezone, UTC by default)
SOURCE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
PROFILES = ("plain", "supabase")
RECHECK_MODES = ("size", "sha256")
UNVERIFIABLE_MODES = ("fail", "warn")


@dataclass(frozen=True)
class SourceConfig:
    """Everything one source database needs: where it is, where backups go, when and how to keep them."""

    name: str = "main"
    dsn_env: str = "PG_BACKUP_DATABASE_URL"
    dsn: str | None = None
    target: str = "./backups"
    profile: str = "plain"
    max_connections: int = 4
    schedule: str | None = None
    timezone: str = "UTC"
    restore_url_env: str | None = "PG_BACKUP_RESTORE_URL"
    pg_bin: str | None = None
    table_check_sample: int | None = None
    retry_attempts: int = 5
    retry_max_wait: float = 20.0
    restore_jobs: int = 2
    accepted_restore_errors: tuple[str, ...] = ()
    sse: str | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    part_size: int | None = None  # S3 multipart part size in bytes (default: 64 MiB, raised to fit 10,000 parts)
    age_recipients: tuple[str, ...] = ()
    signing_key_env: str | None = None  # env variable holding the Ed25519 private key (backup side): signs manifests
    verify_key: str | None = None  # the Ed25519 public key itself (public: fine in the file) ...
    verify_key_env: str | None = None  # ... or the env variable holding it; either makes verify/restore check it
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    retention_after_backup: bool = False
    freshness_hours: float | None = None
    tiers: tuple[str, ...] = TIERS
    lock_timeout_seconds: float = 60.0  # how long any session of the backup waits for a table lock, then fails
    max_runtime_minutes: int | None = 1440  # a backup run still going after this is failed (dagster/max_runtime)
    file_mode: int = PRIVATE_FILE_MODE  # local targets: mode of every file written (octal string or int in YAML)
    dir_mode: int = PRIVATE_DIR_MODE  # local targets: mode of every folder created, `.staging` included
    retention_verify: str = "size"  # what retention re-checks before deleting: "size" (and existence) or "sha256"
    unverifiable: str = "fail"  # no check server can restore the backup: fail, or warn and publish it unverified
    rto_budget_seconds: float | None = None  # a test restore slower than this warns (never blocks the backup)
    amcheck_heapallindexed: bool = False  # the full check's amcheck also proves every row has its index entries

    def __post_init__(self) -> None:
        _check(SOURCE_NAME_RE.match(self.name) is not None, "name", f"{self.name!r} must match [a-z][a-z0-9_]*")
        _check(self.profile in PROFILES, "profile", f"{self.profile!r} must be one of {', '.join(PROFILES)}")
        _check(2 <= self.max_connections <= 64, "max_connections", "must be between 2 and 64")
        _check(1 <= self.retry_attempts <= 20, "retry_attempts", "must be between 1 and 20")
        _check(1 <= self.restore_jobs <= 32, "restore_jobs", "must be between 1 and 32")
        _check(bool(self.target), "target", "must not be empty")
        _check(_is_number(self.lock_timeout_seconds) and 0.1 <= self.lock_timeout_seconds <= 86400,
               "lock_timeout_seconds", "must be a number of seconds between 0.1 and 86400")
        _check(self.max_runtime_minutes is None
               or (_is_number(self.max_runtime_minutes) and 1 <= self.max_runtime_minutes <= 10080),
               "max_runtime_minutes", "must be between 1 and 10080 (a week), or null for no limit")
        unknown_tiers = sorted(set(self.tiers) - set(TIERS))
        _check(not unknown_tiers, "tiers", f"unknown tier {unknown_tiers[0]!r}" if unknown_tiers else "")
        _check("full" in self.tiers, "tiers", "must include 'full' (the other tiers and the restore check use it)")
        if self.schedule is not None:
            _check(_is_cron(self.schedule), "schedule", f"{self.schedule!r} is not a cron expression")
        _check(_is_timezone(self.timezone), "timezone", f"{self.timezone!r} is not an IANA time zone")
        for name in ("signing_key_env", "verify_key_env"):
            value = getattr(self, name)
            _check(value is None or _is_env_name(value), name,
                   "must name an environment variable (the key itself never goes into the config file)")
        if self.verify_key is not None:
            _check(not self.verify_key_env, "verify_key", "set verify_key or verify_key_env, not both")
            try:
                load_public_key(self.verify_key, "it")
            except BackupError as exc:
                raise BackupError(f"invalid config field 'verify_key': {exc}") from None
        if self.dsn is not None:
            _check(not _has_password(self.dsn), "dsn", "must not contain a password: use dsn_env or PGPASSFILE")
        for name in ("file_mode", "dir_mode"):
            try:
                object.__setattr__(self, name, parse_mode(name, getattr(self, name), directory=name == "dir_mode"))
            except BackupError as exc:
                raise BackupError(f"invalid config field '{name}': {exc}") from None
        _check(self.rto_budget_seconds is None or (_is_number(self.rto_budget_seconds) and self.rto_budget_seconds > 0),
               "rto_budget_seconds", "must be a positive number of seconds, or null for no budget")
        _check(isinstance(self.amcheck_heapallindexed, bool), "amcheck_heapallindexed", "must be true or false")
        _check(self.retention_verify in RECHECK_MODES, "retention_verify",
               f"{self.retention_verify!r} must be one of {', '.join(RECHECK_MODES)}")
        for pattern in self.accepted_restore_errors:
            _check(_is_regex(pattern), "accepted_restore_errors", f"{pattern!r} is not a regular expression")
        _check(self.unverifiable in UNVERIFIABLE_MODES, "unverifiable",
               f"{self.unverifiable!r} must be one of {', '.join(UNVERIFIABLE_MODES)}")

    def database_url(self) -> str | None:
        """The source's connection string: inline (no password) or from its environment variable."""
        return self.dsn if self.dsn is not None else setting(self.dsn_env)

    def restore_url(self) -> str | None:
        """The configured restore server for the checks, if any."""
        return setting(self.restore_url_env) if self.restore_url_env else None

    @property
    def partitions_name(self) -> str:
        return f"{self.name}_backups"

    @property
    def pool(self) -> str:
        return f"pg_backup_{self.name}"


CRON_ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}


def cron_ticks(cron: str, timezone: str, start: datetime) -> Iterator[datetime]:
    """The schedule's ticks after `start`, in its time zone (the aliases Dagster accepts included)."""
    return CronSim(CRON_ALIASES.get(cron, cron), start.astimezone(ZoneInfo(timezone)))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_cron(cron: str) -> bool:
    try:
        CronSim(CRON_ALIASES.get(cron, cron), datetime(2000, 1, 1))
    except CronSimError:
        return False
    return True


def _is_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _is_env_name(name: object) -> bool:
    return isinstance(name, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) is not None


def _is_regex(pattern: object) -> bool:
    try:
        re.compile(pattern)  # type: ignore[arg-type]
    except (re.error, TypeError):
        return False
    return True


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise BackupError(f"invalid config field '{field_name}': {message}")


def _has_password(dsn: str) -> bool:
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except Exception:  # unparsable DSN: reported by the connection itself, but never echoed
        raise BackupError("invalid config field 'dsn': not a valid PostgreSQL connection string") from None


_FIELD_NAMES = {f.name for f in fields(SourceConfig)}


def source_from_mapping(data: dict[str, Any], where: str) -> SourceConfig:
    """Build one source, naming the field of any problem."""
    if not isinstance(data, dict):
        raise BackupError(f"invalid config {where}: expected a mapping of settings")
    unknown = sorted(set(data) - _FIELD_NAMES)
    if unknown:
        raise BackupError(f"invalid config {where}: unknown field '{unknown[0]}'")
    values = dict(data)
    try:
        values["retention"] = RetentionPolicy.from_mapping(values.get("retention"))
        values["age_recipients"] = tuple(values.get("age_recipients") or ())
        values["accepted_restore_errors"] = tuple(values.get("accepted_restore_errors") or ())
        values["tiers"] = tuple(values.get("tiers") or TIERS)
        return SourceConfig(**values)
    except TypeError as exc:
        raise BackupError(f"invalid config {where}: {exc}") from None


def load_config_file(path: Path) -> list[SourceConfig]:
    """Parse a YAML config with a top-level `sources:` list."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise BackupError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise BackupError(f"config {path} is not valid YAML{at}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list) or not raw["sources"]:
        raise BackupError(f"invalid config {path}: expected a non-empty 'sources:' list")
    sources = [source_from_mapping(item, f"{path} sources[{i}]") for i, item in enumerate(raw["sources"])]
    names = [s.name for s in sources]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise BackupError(f"invalid config {path}: source name '{duplicates[0]}' appears twice")
    return sources


def source_from_env(env: dict[str, str]) -> SourceConfig:
    """The single-source setup: PG_BACKUP_DATABASE_URL, PG_BACKUP_TARGET, PG_BACKUP_SOURCE, PG_BACKUP_PROFILE
    (and PG_BACKUP_SIGNING_KEY / PG_BACKUP_VERIFY_KEY when set: that source signs / checks signatures), and the
    optional *_ENV settings above (the same meaning as the YAML field of the same name).

    It backs up daily unless PG_BACKUP_SCHEDULE says otherwise (`off` disables the schedule): a backup service
    that never backs up until told would be a trap.
    """
    values: dict[str, Any] = {
        "name": env.get("PG_BACKUP_SOURCE", "main"),
        "target": env.get("PG_BACKUP_TARGET", "./backups"),
        "profile": env.get("PG_BACKUP_PROFILE", "plain"),
    }
    schedule = env.get(SCHEDULE_ENV) or DEFAULT_SCHEDULE
    if schedule.strip().lower() != "off":
        values["schedule"] = schedule
    if env.get(SIGNING_KEY_ENV):
        values["signing_key_env"] = SIGNING_KEY_ENV
    if env.get(VERIFY_KEY_ENV):
        values["verify_key_env"] = VERIFY_KEY_ENV
    if env.get(MAX_CONNECTIONS_ENV):
        values["max_connections"] = _number_env(env, MAX_CONNECTIONS_ENV, int)
    if env.get(LOCK_TIMEOUT_ENV):
        values["lock_timeout_seconds"] = _number_env(env, LOCK_TIMEOUT_ENV, float)
    if env.get(MAX_RUNTIME_ENV):
        off = env[MAX_RUNTIME_ENV].strip().lower() == "off"
        values["max_runtime_minutes"] = None if off else _number_env(env, MAX_RUNTIME_ENV, int)
    if env.get(ACCEPTED_RESTORE_ERRORS_ENV):
        values["accepted_restore_errors"] = [p for p in env[ACCEPTED_RESTORE_ERRORS_ENV].splitlines() if p.strip()]
    if env.get(UNVERIFIABLE_ENV):
        values["unverifiable"] = env[UNVERIFIABLE_ENV].strip().lower()
    if env.get(RTO_BUDGET_ENV):
        values["rto_budget_seconds"] = _number_env(env, RTO_BUDGET_ENV, float)
    if env.get(HEAPALLINDEXED_ENV):
        values["amcheck_heapallindexed"] = _switch_env(env, HEAPALLINDEXED_ENV)
    return source_from_mapping(values, "from environment")


def _switch_env(env: dict[str, str], key: str) -> bool:
    value = env[key].strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0"):
        raise BackupError(f"invalid {key}: {env[key]!r} is not on or off")
    return value in ("on", "true", "1")


def _number_env(env: dict[str, str], key: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(env[key])
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise BackupError(f"invalid {key}: {env[key]!r} is not {what}") from None


def load_sources(env: dict[str, str] | None = None) -> list[SourceConfig]:
    """All configured sources: the YAML file when PG_BACKUP_CONFIG is set, else one source from env."""
    env = dict(os.environ if env is None else env)
    if env.get(CONFIG_ENV):
        return load_config_file(Path(env[CONFIG_ENV]))
    return [source_from_env(env)]


def find_source(sources: list[SourceConfig], name: str | None) -> SourceConfig:
    """Pick a source by name (the only one when name is None)."""
    if name is None:
        if len(sources) == 1:
            return sources[0]
        raise BackupError(f"several sources configured ({', '.join(s.name for s in sources)}): pass --source")
    for source in sources:
        if source.name == name:
            return source
    raise BackupError(f"unknown source '{name}': configured are {', '.join(s.name for s in sources)}")
