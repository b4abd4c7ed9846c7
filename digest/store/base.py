"""What every part of the store shares: the engine, transactions, locks and small helpers."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Executable, Table, text
from sqlalchemy.engine import Connection

# Big enough to amortise round trips, small enough for SQLite's bound-parameter limit.
CHUNK = 500
# SQLite's default bound-parameter limit before 3.32.0 (SQLITE_MAX_VARIABLE_NUMBER; 32,766
# since): statements of this many parameters run on the builds anyone still ships.
SQLITE_MAX_PARAMS = 999
# PostgreSQL advisory lock ids (arbitrary constants, "dgst" + a purpose number).
MAX_ID = 2**63 - 1  # ids are 64-bit integers on both engines
PG_LOCK_MIGRATE = 0x64677374_0001
PG_LOCK_INGEST = 0x64677374_0002
PG_LOCK_DAEMON = 0x64677374_0003


class StoreBase:
    """The engine and transaction helpers the aggregate stores (mixins of `Store`) build on."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @contextlib.contextmanager
    def _write(self, *, foreign_keys: bool = True) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE).

        foreign_keys=False (SQLite only): the transaction's rows are not checked one by one
        against their parents; the caller checks them in bulk before it ends (a pragma that
        only holds between transactions, so it is set before BEGIN and put back after)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(digest_write=True)
            raw = None
            if not foreign_keys and self.dialect == "sqlite":
                raw = conn.connection.dbapi_connection
                assert raw is not None
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin():
                    yield conn
            finally:
                if raw is not None:
                    # never hand a pooled connection on without them (the pragma is a silent
                    # no-op inside a transaction a failed rollback left open: read it back)
                    try:
                        raw.execute("PRAGMA foreign_keys=ON")
                        on = raw.execute("PRAGMA foreign_keys").fetchone() == (1,)
                    except Exception:
                        on = False
                    if not on:
                        conn.invalidate()

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A read transaction: a consistent snapshot that does not block writers."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _lock(self, conn: Connection, lock_id: int) -> None:
        """Serialise with other processes for this transaction (SQLite already is, by BEGIN
        IMMEDIATE)."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_id})

    def _dialect_insert(self, table: Table) -> Any:
        """INSERT with the engine's ON CONFLICT support."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)


def utc(value: datetime) -> datetime:
    """An aware datetime in UTC; naive values are refused."""
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
    return value.astimezone(UTC)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    """Slices of at most `size` items (bound-parameter limits of IN lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_many(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Insert plain driver rows (values already bound) into `table`: on SQLite as statements of
    as many rows as its parameter limit allows, elsewhere by the driver's executemany."""
    if not rows:
        return
    names, width = ", ".join(columns), len(columns)
    # flattened rows no longer fail one by one: a row of another width would shift the rest
    if any(len(row) != width for row in rows):
        raise ValueError(f"a row for {table} does not have its {width} columns")
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    one = f"({', '.join([mark] * width)})"
    head = f"INSERT INTO {table} ({names}) VALUES "
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(head + one, list(rows))  # a list is what SQLAlchemy runs as many
        return
    # Many rows a statement: sqlite3's executemany steps, resets and binds a statement per
    # row, which was a quarter of inserting a queue page's ledger rows (bench/README.md).
    per = max(1, SQLITE_MAX_PARAMS // width)
    whole = len(rows) - len(rows) % per
    flat = itertools.chain.from_iterable
    if whole:
        conn.exec_driver_sql(
            head + ", ".join([one] * per),
            [tuple(flat(rows[k : k + per])) for k in range(0, whole, per)],
        )
    if whole < len(rows):
        rest = rows[whole:]
        conn.exec_driver_sql(head + ", ".join([one] * len(rest)), tuple(flat(rest)))


def bound(conn: Connection, column: Any, value: Any) -> Any:
    """`value` as the driver receives it for `column` (its type's bind processing), for rows
    handed to the driver's executemany directly."""
    # The dialect's own type (SQLite's DATETIME text format), not the generic one: a value
    # bound here is stored exactly as one SQLAlchemy binds, so equal instants compare equal.
    process = column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return process(value) if process is not None else value


def inserted_id(conn: Connection, stmt: Executable) -> int:
    """Run a one-row INSERT and return the new row's primary key."""
    key = conn.execute(stmt).inserted_primary_key
    assert key is not None  # an INSERT of one row always has one
    return int(key[0])
