"""The daemon's PostgreSQL session lock (SQLite daemons use a lock file: digest.daemon_lock)."""

from __future__ import annotations

import contextlib

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from digest.store.base import PG_LOCK_DAEMON, StoreBase


class LockStore(StoreBase):
    """Session advisory locks that outlive a transaction."""

    def try_daemon_lock(self) -> Connection | None:
        """PostgreSQL: take the daemon's session advisory lock; None if another session holds it.

        The lock lives as long as the returned connection (autocommit, so it never sits idle in a
        transaction): keep it open for the daemon's life, give it to `release_daemon_lock`.
        """
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_DAEMON})
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return conn

    @staticmethod
    def daemon_lock_alive(conn: Connection) -> bool:
        """True while the lock's session still answers; a dropped session has lost the lock."""
        try:
            return conn.scalar(text("SELECT 1")) == 1
        except SQLAlchemyError:
            return False

    @staticmethod
    def release_daemon_lock(conn: Connection) -> None:
        """Give the advisory lock back and close its connection (closing alone also frees it)."""
        with contextlib.suppress(SQLAlchemyError):
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_DAEMON})
        with contextlib.suppress(SQLAlchemyError):
            conn.close()
