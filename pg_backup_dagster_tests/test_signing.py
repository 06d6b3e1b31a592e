"""Signed manifests: whoever can write the backup target can rewrite a file together with its sha256 in
manifest.json and SHA256SUMS, and then only a signature tells. Real backups through Dagster, real restores."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from pg_backup_dagster.backup.manifest import Encryption, FileEntry, Manifest, parse_manifest
from pg_backup_dagster.backup.signing import (
    check_signature,
    generate_key,
    load_private_key,
    load_public_key,
    sign_manifest,
    source_signing_key,
)
from pg_backup_dagster.config import SourceConfig, load_config_file
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import encrypt_file, generate_identity
from pg_backup_dagster.tiers.content import script_digest
from pg_backup_dagster_tests.helpers import create_database
from pg_backup_dagster_tests.restore_helpers import Published, back_up, cli

SQL = (
    "CREATE SCHEMA shop; CREATE TABLE shop.orders (id int PRIMARY KEY, note text);"
    "INSERT INTO shop.orders SELECT g, 'order ' || g FROM generate_series(1, 50) g;"
)
SIGNING_ENV = "PGBD_TEST_SIGNING_KEY"
PRIVATE_PEM, PUBLIC_B64 = generate_key()
OTHER_PUBLIC = generate_key()[1]
BACKUP_ID_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ")


def private_needles() -> list[bytes]:
    """Every spelling of the private key: its PEM body, the base64 and hex of its 32 raw bytes, the raw bytes."""
    raw = load_private_key(PRIVATE_PEM, "test key").private_bytes_raw()
    body = [line for line in PRIVATE_PEM.splitlines() if line and not line.startswith("-----")]
    return [*(line.encode() for line in body), base64.b64encode(raw), raw.hex().encode(), raw]


def assert_no_private_key(data: str | bytes, where: str) -> None:
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    for needle in private_needles():
        assert needle not in blob, f"the private signing key appears in {where}"


@pytest.fixture(scope="module")
def signed(pg18, tmp_path_factory) -> Published:
    dsn = create_database(pg18, "signed", SQL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SIGNING_ENV, PRIVATE_PEM)
        return back_up(
            mp, "signed", dsn, str(tmp_path_factory.mktemp("signed_target")), pg18.dsn(), signing_key_env=SIGNING_ENV
        )


def with_key(public: str = PUBLIC_B64, **more: str) -> dict[str, str]:
    """The env-configured source's verify key, as an operator on the restore side sets it."""
    return {"PG_BACKUP_VERIFY_KEY": public, **more}


def copy_target(published: Published, tmp_path: Path) -> tuple[Published, Path]:
    assert published.folder is not None
    target = tmp_path / "target"
    shutil.copytree(Path(published.source.target), target)
    copy = replace(published, source=replace(published.source, target=str(target)),
                   folder=target / published.source.name / published.backup_id)
    assert copy.folder is not None
    return copy, copy.folder


def rewrite_like_an_attacker(folder: Path, relpath: str, content: bytes) -> None:
    """Replace a file and update its size and sha256 in manifest.json and SHA256SUMS (and SHA256SUMS's own)."""
    (folder / relpath).write_bytes(content)
    document = json.loads((folder / "manifest.json").read_text())
    sums = (folder / "SHA256SUMS").read_text()
    old = next(e for e in document["files"] if e["path"] == relpath)
    new_sha = hashlib.sha256(content).hexdigest()
    sums = sums.replace(old["sha256"], new_sha)
    (folder / "SHA256SUMS").write_text(sums)
    old.update(size=len(content), sha256=new_sha)
    listed = next(e for e in document["files"] if e["path"] == "SHA256SUMS")
    listed.update(size=len(sums.encode()), sha256=hashlib.sha256(sums.encode()).hexdigest())
    (folder / "manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def user_tables(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


# --- a real signed backup -------------------------------------------------------------------------


def test_publish_signs_the_manifest(signed):
    assert signed.folder is not None
    document = json.loads((signed.folder / "manifest.json").read_text())
    signature = document["signature"]
    public = load_public_key(PUBLIC_B64, "test")
    assert signature["algorithm"] == "ed25519" and len(base64.b64decode(signature["value"])) == 64
    check_signature(parse_manifest((signed.folder / "manifest.json").read_bytes(), "manifest"), public,
                    signed.source.name, signed.backup_id)
    assert not list(signed.folder.rglob("*.sig")), "the signature lives in the manifest, written last"


def test_signed_backup_verifies_and_restores_with_the_key(signed, pg18):
    result = cli(signed, "verify", signed.backup_id, env=with_key())
    assert result.exit_code == 0, result.output
    assert "BAD" not in result.output
    target = create_database(pg18, "sig_ok")
    result = cli(signed, "restore", "latest", "--table", "shop.orders",
                 env=with_key(PG_BACKUP_RESTORE_TO=target))
    assert result.exit_code == 0, result.output
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM shop.orders").fetchone() == (50,)


def test_a_file_rewritten_with_its_hashes_is_refused_and_nothing_runs(signed, pg18, tmp_path):
    copy, folder = copy_target(signed, tmp_path)
    relpath = "shop/tables/orders/data.sql"
    marker = tmp_path / "pwned"
    injected = (folder / relpath).read_bytes() + f"COPY (SELECT 1) TO PROGRAM 'touch {marker}';\n".encode()
    rewrite_like_an_attacker(folder, relpath, injected)

    # Without a key, the sha256 checks cannot tell: the attacker kept every hash consistent.
    assert cli(copy, "verify", "latest").exit_code == 0

    refusal = f"signature of backup signed/{signed.backup_id} does not match the configured key"
    result = cli(copy, "verify", "latest", env=with_key())
    assert result.exit_code != 0 and one_error_line(result.output) == f"error: {refusal}"
    target = create_database(pg18, "sig_tampered")
    for args in (["--table", "shop.orders"], ["--full"], ["--roles"]):
        result = cli(copy, "restore", signed.backup_id, *args, env=with_key(PG_BACKUP_RESTORE_TO=target))
        assert result.exit_code != 0 and one_error_line(result.output) == f"error: {refusal}"
    assert not marker.exists() and user_tables(target) == []


@pytest.mark.parametrize("change", ["row count", "signature removed", "other key", "copied under another id"])
def test_refused_without_a_matching_signature(signed, pg18, tmp_path, change):
    copy, folder = copy_target(signed, tmp_path)
    document = json.loads((folder / "manifest.json").read_text())
    key, backup_id = PUBLIC_B64, signed.backup_id
    if change == "row count":
        document["tables"][0]["rows"] += 1
        expected = "does not match the configured key"
    elif change == "signature removed":  # a downgrade to an unsigned backup
        del document["signature"]
        expected = f"backup signed/{backup_id} is not signed, but source 'signed' has a verify key configured"
    elif change == "other key":
        key, expected = OTHER_PUBLIC, "does not match the configured key"
    else:  # a signed older backup copied under a newer name, to pass as the latest
        backup_id = "2999-01-01T00-00-00Z"
        shutil.copytree(folder, folder.parent / backup_id)
        expected = f"holds the signed manifest of backup signed/{signed.backup_id}"
    (folder / "manifest.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    result = cli(copy, "verify", backup_id, env=with_key(key))
    assert result.exit_code != 0 and expected in one_error_line(result.output)
    target = create_database(pg18, "sig_refused")
    result = cli(copy, "restore", backup_id, "--full", env=with_key(key, PG_BACKUP_RESTORE_TO=target))
    assert result.exit_code != 0 and expected in one_error_line(result.output)
    assert user_tables(target) == []


def test_a_named_but_unset_verify_key_variable_refuses(signed, monkeypatch, tmp_path):
    monkeypatch.delenv("PGBD_UNSET_VERIFY", raising=False)
    config = str(tmp_path / "config.yaml")
    Path(config).write_text(
        f"sources:\n  - name: signed\n    target: {signed.source.target}\n    verify_key_env: PGBD_UNSET_VERIFY\n"
    )
    result = cli(signed, "verify", "latest", env={"PG_BACKUP_CONFIG": config})
    assert result.exit_code != 0
    assert one_error_line(result.output) == (
        "error: verify_key_env names PGBD_UNSET_VERIFY, which is not set: cannot check the backups' signatures"
    )


def test_age_encrypted_backup_on_s3_is_signed_over_its_plaintext(s3_env, bucket, s3_client, pg18, monkeypatch,
                                                                  tmp_path):
    secret, recipient = generate_identity()
    monkeypatch.setenv(SIGNING_ENV, PRIVATE_PEM)
    published = back_up(monkeypatch, "sigage", create_database(pg18, "sigage", SQL), f"s3://{bucket}/b", pg18.dsn(),
                        signing_key_env=SIGNING_ENV, age_recipients=(recipient,))
    keys = with_key(PG_BACKUP_AGE_IDENTITY=secret)
    result = cli(published, "verify", "latest", env=keys)
    assert result.exit_code == 0, result.output

    # The recipient is public: an attacker can encrypt what they like to it and list it with matching hashes.
    prefix = f"b/sigage/{published.backup_id}/"
    manifest_key = prefix + "manifest.json"
    document = json.loads(s3_client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    entry = next(e for e in document["files"] if e["path"] == "shop/tables/orders/data.sql")
    plain, sealed = tmp_path / "evil.sql", tmp_path / "evil.sql.age"
    plain.write_bytes(b"COPY (SELECT 1) TO PROGRAM 'true';\n")
    encrypt_file(plain, sealed, [recipient])
    s3_client.put_object(Bucket=bucket, Key=prefix + entry["stored_path"], Body=sealed.read_bytes())
    entry.update(size=sealed.stat().st_size, sha256=hashlib.sha256(sealed.read_bytes()).hexdigest(),
                 plain_size=plain.stat().st_size, plain_sha256=hashlib.sha256(plain.read_bytes()).hexdigest())
    table = next(t for t in document["tables"] if (t["schema"], t["table"]) == ("shop", "orders"))
    table["sha256"] = script_digest(plain)  # and the rows' content hash, which verify also compares
    s3_client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(document, indent=2).encode())
    assert cli(published, "verify", "latest", env={"PG_BACKUP_AGE_IDENTITY": secret}).exit_code == 0
    result = cli(published, "verify", "latest", env=keys)
    assert result.exit_code != 0 and one_error_line(result.output) == (
        f"error: signature of backup sigage/{published.backup_id} does not match the configured key"
    )


# --- the private key stays secret -----------------------------------------------------------------


def test_private_key_absent_from_logs_metadata_manifest_and_errors(pg18, tmp_path, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(SIGNING_ENV, PRIVATE_PEM)
    monkeypatch.setenv("PGBD_SIGNED_LEAK_DSN", create_database(pg18, "signed_leak", SQL))
    monkeypatch.setenv("PGBD_SIGNED_LEAK_RESTORE", pg18.dsn())
    source = SourceConfig(name="leak", dsn_env="PGBD_SIGNED_LEAK_DSN", target=str(tmp_path / "target"),
                          restore_url_env="PGBD_SIGNED_LEAK_RESTORE", restore_jobs=1, signing_key_env=SIGNING_ENV)
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as instance:
        outcome = run_backup(source, [source], instance, log_level="DEBUG")
        assert outcome.success, outcome.errors
        records = instance.all_logs(outcome.run_id)
        for record in records:
            assert_no_private_key(dg.serialize_value(record), f"event log record {record.dagster_event_type}")
        assert_no_private_key(repr(outcome), "the run outcome")
    assert any("manifest signed (ed25519" in dg.serialize_value(r) for r in records), "summary names the signature"
    files = [p for root in (tmp_path / "target", tmp_path / "instance") for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files)
    for path in files:
        assert_no_private_key(path.read_bytes(), str(path))
    assert_no_private_key("\n".join(r.getMessage() for r in caplog.records), "captured log records")

    # Errors about keys name the variable or field, never the value.
    errors = []
    for attempt in (
        lambda: SourceConfig(verify_key=PRIVATE_PEM),
        lambda: SourceConfig(signing_key_env=PRIVATE_PEM),
        lambda: load_public_key(PRIVATE_PEM, "a field"),
        lambda: load_private_key(PRIVATE_PEM.replace("MC4C", "MC4D"), "a variable"),
        lambda: source_signing_key(replace(source, verify_key=OTHER_PUBLIC)),
        lambda: source_signing_key(replace(source, verify_key=base64.b64encode(
            load_private_key(PRIVATE_PEM, "k").private_bytes_raw()).decode())),
    ):
        with pytest.raises(BackupError) as raised:
            attempt()
        errors.append(str(raised.value) + repr(raised.value))
    assert "is not the public half of its signing key" in errors[4] and "is its private signing key" in errors[5]
    assert_no_private_key("\n".join(errors), "error messages")
    out, err = capfd.readouterr()
    assert_no_private_key(out + err, "stdout/stderr")


# --- the signed bytes, without servers ------------------------------------------------------------


def _manifest(**changes) -> Manifest:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    base = Manifest(
        source="s", profile="plain", backup_id="2024-05-01T00-00-00Z", started_at=now, finished_at=now,
        server_major=18, pg_dump_version="18.1", snapshot="00000003-1", tables=[], checks={}, passed=True,
        files=[FileEntry(path="b.sql", size=3, sha256="b" * 64, tier="table"),
               FileEntry(path="a.sql", size=2, sha256="a" * 64, tier="roles")],
    )
    return base.model_copy(update=changes)


def test_signature_covers_plaintext_hashes_not_storage_details():
    private, public = load_private_key(PRIVATE_PEM, "k"), load_public_key(PUBLIC_B64, "k")
    signed_manifest = sign_manifest(_manifest(), private)
    # What the repository does at publish: files sorted, age-encrypted entries point at their ciphertext.
    stored = signed_manifest.model_copy(update={
        "encryption": Encryption(recipients=["age1example"]),
        "files": [
            FileEntry(path="a.sql", size=99, sha256="c" * 64, tier="roles", encrypted="age",
                      stored_path="a.sql.age", plain_size=2, plain_sha256="a" * 64),
            FileEntry(path="b.sql", size=3, sha256="b" * 64, tier="table"),
        ],
    })
    check_signature(parse_manifest(stored.to_bytes(), "m"), public, "s", "2024-05-01T00-00-00Z")
    for tampered in (
        stored.model_copy(update={"files": [replace(stored.files[0], plain_sha256="d" * 64), stored.files[1]]}),
        stored.model_copy(update={"files": [stored.files[0], replace(stored.files[1], tier="full")]}),
        stored.model_copy(update={"passed": False}),
    ):
        with pytest.raises(BackupError, match="does not match the configured key"):
            check_signature(parse_manifest(tampered.to_bytes(), "m"), public, "s", "2024-05-01T00-00-00Z")


def test_config_keys(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"sources:\n  - name: a\n    signing_key_env: A_KEY\n    verify_key: {PUBLIC_B64}\n")
    (source,) = load_config_file(config)
    assert source.signing_key_env == "A_KEY" and source.verify_key == PUBLIC_B64
    ssh_public = load_public_key(PUBLIC_B64, "k").public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    public_pem = load_public_key(PUBLIC_B64, "k").public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    for text in (ssh_public, public_pem, "".join(public_pem.splitlines()[1:-1])):  # OpenSSH, PEM, one-line DER
        assert load_public_key(text, "k").public_bytes_raw() == base64.b64decode(PUBLIC_B64)
    one_line_private = "".join(PRIVATE_PEM.splitlines()[1:-1])
    assert load_private_key(one_line_private, "k").public_key().public_bytes_raw() == base64.b64decode(PUBLIC_B64)
    for field, value, message in (
        ("verify_key", "not-a-key", "does not hold an Ed25519 public key"),
        ("verify_key", PRIVATE_PEM, "holds a private key"),
        ("verify_key", "".join(PRIVATE_PEM.splitlines()[1:-1]), "holds a private key"),
        ("signing_key_env", "-----BEGIN", "must name an environment variable"),
    ):
        with pytest.raises(BackupError, match=f"invalid config field '{field}': .*{message}"):
            SourceConfig(**{field: value})
