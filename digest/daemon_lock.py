"""One daemon per database: a file lock beside a SQLite file, an advisory lock on PostgreSQL.

The holder writes "pid N on host H" into the store's meta table once it has the lock, so a second
daemon can say who is in the way. The lock is held for the daemon's whole life and released by the
operating system (file lock) or the server (session advisory lock) if the process dies.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from sqlalchemy.engine import make_url

from digest.errors import LockError
from digest.store import Store

HOLDER_KEY = "daemon_holder"
LOCK_SUFFIX = ".daemon.lock"


def holder_text() -> str:
    """How this process names itself in the lock message: pid and host."""
    return f"pid {os.getpid()} on host {socket.gethostname()}"


def database_label(url: str) -> str:
    """The database as an operator recognises it: a SQLite path, else the URL without password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


def lock_file_for(url: str) -> Path | None:
    """Where the daemon's file lock of a SQLite database lives; None for other engines."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).with_name(Path(database).name + LOCK_SUFFIX)


class DaemonLock:
    """The database's daemon lock, held by this process until `release`."""

    def __init__(self, store: Store, url: str) -> None:
        self.store = store
        self.url = url
        self._file: FileLock | None = None
        self._conn: Any = None
        self.held = False

    def acquire(self) -> None:
        """Take the lock without waiting; LockError naming the holder if another process has it."""
        if self.store.dialect == "postgresql":
            self._conn = self.store.try_daemon_lock()
            got = self._conn is not None
        else:
            path = lock_file_for(self.url)
            got = True
            if path is not None:
                self._file = FileLock(str(path), timeout=0, thread_local=False)
                try:
                    self._file.acquire()
                except Timeout:
                    self._file = None
                    got = False
        if not got:
            holder = self.store.get_meta(HOLDER_KEY) or "holder unknown"
            raise LockError(
                f"another digest daemon holds the lock for {database_label(self.url)} ({holder})"
            )
        self.held = True
        self.store.set_meta(HOLDER_KEY, holder_text())

    def alive(self) -> bool:
        """False once the lock is known lost (the PostgreSQL session holding it dropped)."""
        if not self.held:
            return False
        if self._conn is not None:
            return self.store.daemon_lock_alive(self._conn)
        return True

    def release(self) -> None:
        """Give the lock back; safe to call twice."""
        if self._conn is not None:
            self.store.release_daemon_lock(self._conn)
            self._conn = None
        if self._file is not None:
            self._file.release()
            self._file = None
        self.held = False


@contextlib.contextmanager
def daemon_lock(store: Store, url: str) -> Iterator[DaemonLock]:
    """Hold the database's daemon lock for the `with` block (LockError if another holds it)."""
    lock = DaemonLock(store, url)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def running_daemon(store: Store, url: str) -> str | None:
    """Who holds the lock ("pid N on host H"), or None when no daemon runs (for `status`)."""
    if store.dialect == "postgresql":
        conn = store.try_daemon_lock()
        if conn is None:
            return store.get_meta(HOLDER_KEY) or "holder unknown"
        store.release_daemon_lock(conn)
        return None
    path = lock_file_for(url)
    if path is None or not path.exists():
        return None
    probe = FileLock(str(path), timeout=0, thread_local=False)
    try:
        probe.acquire()
    except Timeout:
        return store.get_meta(HOLDER_KEY) or "holder unknown"
    probe.release()
    return None
