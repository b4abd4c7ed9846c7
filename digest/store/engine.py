"""Engine setup: which database a URL names, and how each engine's connections behave.

SQLite: WAL, busy_timeout and foreign keys on every connection, and an explicit BEGIN (IMMEDIATE
for writers) so DDL and DML are truly transactional. PostgreSQL: `postgresql+psycopg://` (a plain
`postgresql://` URL gets the psycopg driver).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError

from digest.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def engine_for(url: str) -> Engine:
    """An engine for a sqlite: or postgresql: URL; StoreError for anything else."""
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise StoreError(f"database URL {url!r} is not valid: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True)
    raise StoreError(f"database URL {safe_url(url)}: only sqlite and postgresql are supported")


def _sqlite_engine(url: Any) -> Engine:
    database = url.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # pysqlite's own transaction handling skips BEGIN before DDL; we issue BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the lock up front: a deferred transaction that later writes can fail
        # with SQLITE_BUSY at once instead of waiting for busy_timeout.
        write = conn.get_execution_options().get("digest_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "<invalid URL>"


def reason(exc: SQLAlchemyError) -> str:
    """The first line of what the database said."""
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]
