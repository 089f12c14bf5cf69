"""Durable UTXO set: SQLite by default, PostgreSQL by configuration, one schema for both.

Each applied batch is one database transaction (spent rows out, new rows in, height, totals
and digest), so the stored height always matches the stored set. Snapshots are full copies
of the set at a height; a node whose live tables do not match their recorded digest starts
from the newest snapshot and replays the rest from etcd.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psycopg

from . import codec
from .model import Output, OutputCoin, utxo_type
from .store import Change, SnapshotError, UtxoStore

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger_utxo (id BYTEA PRIMARY KEY, type SMALLINT NOT NULL,"
    " owner TEXT NOT NULL, script_address TEXT, body BYTEA NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ledger_utxo_owner ON ledger_utxo (owner)",
    "CREATE TABLE IF NOT EXISTS ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ledger_snapshot (height BIGINT PRIMARY KEY, digest TEXT NOT NULL,"
    " body BYTEA NOT NULL)",
)
_INSERT_UTXO = (
    "INSERT INTO ledger_utxo (id, type, owner, script_address, body) VALUES (?, ?, ?, ?, ?)"
)
_UPSERT_META = (
    "INSERT INTO ledger_meta (name, value) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


class DatabaseError(Exception):
    """The database cannot be opened or used; str() says which and why."""


def _row(
    utxo_id: bytes, output: Output, encoded: bytes
) -> tuple[bytes, int, str, str | None, bytes]:
    script = None if isinstance(output, OutputCoin) else output.script_address
    return (utxo_id, int(utxo_type(output)), output.owner, script, encoded)


class Database:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.url_kind = parsed.scheme
        try:
            if parsed.scheme == "sqlite":
                path = Path(parsed.path)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._conn: Any = sqlite3.connect(path, isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")
            elif parsed.scheme in ("postgresql", "postgres"):
                self._conn = psycopg.connect(url, autocommit=True)
            else:
                raise DatabaseError(f"unsupported database URL scheme {parsed.scheme!r}")
            for statement in SCHEMA:
                self._conn.execute(statement)
        except (sqlite3.Error, psycopg.Error) as exc:
            raise DatabaseError(f"cannot open the {parsed.scheme} database: {exc}") from None

    def _sql(self, query: str) -> str:
        return query if self.url_kind == "sqlite" else query.replace("?", "%s")

    def _execute(self, query: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(query), params)

    def _executemany(self, query: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self.url_kind == "sqlite":
            self._conn.executemany(query, rows)
        else:
            with self._conn.cursor() as cur:
                cur.executemany(self._sql(query), rows)

    def _transaction(self) -> Any:
        if self.url_kind == "sqlite":
            return _SqliteTransaction(self._conn)
        return self._conn.transaction()

    def close(self) -> None:
        self._conn.close()

    # Live set --------------------------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return {
            name: value
            for name, value in self._execute("SELECT name, value FROM ledger_meta").fetchall()
        }

    def load(self) -> UtxoStore:
        """The stored set; raises SnapshotError when it does not match its recorded digest."""
        store = UtxoStore()
        for utxo_id, body in self._execute("SELECT id, body FROM ledger_utxo").fetchall():
            store.add(bytes(utxo_id), codec.decode_output(bytes(body)), bytes(body))
        meta = self.meta()
        store.height = int(meta.get("height", "0"))
        store.issued = int(meta.get("issued", "0"))
        store.fees = int(meta.get("fees", "0"))
        if store.digest().hex() != meta.get("digest", store.digest().hex()):
            raise SnapshotError("stored UTXO set does not match its recorded digest")
        return store

    def commit(self, store: UtxoStore, changes: Iterable[Change]) -> None:
        """Persist the changes that brought `store` to its current height, atomically."""
        with self._transaction():
            for change in changes:
                self._executemany(
                    "DELETE FROM ledger_utxo WHERE id = ?", [(i,) for i in change.spent]
                )
                self._executemany(_INSERT_UTXO, [_row(*c) for c in change.created])
            self._put_meta(store)

    def _put_meta(self, store: UtxoStore) -> None:
        for name, value in (
            ("height", store.height),
            ("issued", store.issued),
            ("fees", store.fees),
            ("digest", store.digest().hex()),
        ):
            self._execute(_UPSERT_META, (name, str(value)))

    def replace_all(self, store: UtxoStore) -> None:
        """Make the live tables hold exactly `store` (after restoring a snapshot)."""
        with self._transaction():
            self._execute("DELETE FROM ledger_utxo")
            self._executemany(_INSERT_UTXO, [_row(i, o, store.encoded(i)) for i, o in _all(store)])
            self._put_meta(store)

    # Snapshots -------------------------------------------------------------------------------

    def save_snapshot(self, store: UtxoStore, keep: int) -> None:
        with self._transaction():
            self._execute(
                "INSERT INTO ledger_snapshot (height, digest, body) VALUES (?, ?, ?)"
                " ON CONFLICT (height) DO NOTHING",
                (store.height, store.digest().hex(), store.snapshot()),
            )
            self._execute(
                "DELETE FROM ledger_snapshot WHERE height NOT IN"
                " (SELECT height FROM ledger_snapshot ORDER BY height DESC LIMIT ?)",
                (keep,),
            )

    def latest_snapshot(self) -> UtxoStore | None:
        """The newest snapshot whose content matches its digest."""
        rows = self._execute(
            "SELECT height, digest, body FROM ledger_snapshot ORDER BY height DESC"
        ).fetchall()
        for _height, digest, body in rows:
            try:
                store = UtxoStore.from_snapshot(bytes(body))
            except SnapshotError:
                continue
            if store.digest().hex() == digest:
                return store
        return None

    def snapshot_heights(self) -> list[int]:
        return [
            int(h)
            for (h,) in self._execute(
                "SELECT height FROM ledger_snapshot ORDER BY height"
            ).fetchall()
        ]


def _all(store: UtxoStore) -> list[tuple[bytes, Output]]:
    return [(i, o) for part in store.partitions.values() for i, o in part.items()]


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
