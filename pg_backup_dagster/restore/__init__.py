"""Restore a published backup by tier: the request, the target's safety, the one pg_restore/psql runner, the
per-table restore and roles."""
