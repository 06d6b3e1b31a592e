"""The one-command demo: an embedded PostgreSQL 18 with a sample database, backed up through Dagster."""
