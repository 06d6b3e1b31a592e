"""Exact row counts of many tables, many per round trip: what a dump holds and what a restore reproduced."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from pg_backup_dagster.pg.sql import encode_query, quote_ident

COUNT_BATCH = 200  # tables per query (and per savepoint): bounds the locks held at once


def count_rows(conn: psycopg.Connection, tables: Sequence[tuple[str, str]]) -> list[int]:
    """count(*) FROM ONLY each (schema, table), in order, with one UNION ALL query per batch.

    Each count locks its table until the transaction ends; with thousands of tables that would exhaust
    max_locks_per_transaction, so each batch runs in a savepoint that is rolled back (the snapshot stays).
    """
    counts: list[int] = []
    for start in range(0, len(tables), COUNT_BATCH):
        batch = tables[start : start + COUNT_BATCH]
        query = encode_query(conn, " UNION ALL ".join(
            f"SELECT {i}::int AS i, count(*) FROM ONLY {quote_ident(schema, table)}"
            for i, (schema, table) in enumerate(batch)
        ))
        with conn.transaction() as batch_transaction:  # a savepoint inside the caller's transaction
            rows = dict(conn.execute(query).fetchall())
            raise psycopg.Rollback(batch_transaction)  # frees this batch's locks; a count has nothing to keep
        counts += [rows[i] for i in range(len(batch))]
    return counts

