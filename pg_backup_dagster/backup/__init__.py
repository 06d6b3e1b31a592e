"""One backup from snapshot to manifest: dumps, row counts, staging (the state steps hand on), the manifest,
RESTORE.md/SHA256SUMS and publish."""
