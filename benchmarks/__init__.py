"""Benchmarks that show what the tiers cost against bare pg_dump/pg_restore and one dump per object."""
