"""Shared fixtures: a real PostgreSQL server, a store on each engine, the shared dumps.

PostgreSQL comes from $DIGEST_TEST_POSTGRES_URL when set (a role allowed to CREATE DATABASE),
else from a throwaway cluster started here when the server binaries exist
(/usr/lib/postgresql/*/bin/initdb). Without either, the PostgreSQL tests skip with the reason,
unless DIGEST_REQUIRE_POSTGRES=1 (CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from browser_support import browser, server  # noqa: F401  (the browser tests' fixtures)
from sqlalchemy.pool import NullPool
from support import free_port, unavailable

SHARED_DUMPS = Path(__file__).resolve().parents[2] / "shared" / "dumps"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


# --- PostgreSQL ---------------------------------------------------------------------------------


def _unavailable(reason: str) -> NoReturn:
    unavailable("PostgreSQL tests", "DIGEST_REQUIRE_POSTGRES", reason)


def _initdb() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    return found[-1] if found else (shutil.which("initdb") or None)


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parts
    try:
        return (int(parts[-3]),)
    except (ValueError, IndexError):
        return (0,)


class _Cluster:
    """A throwaway PostgreSQL cluster in a temp folder, on a free loopback port."""

    def __init__(self, initdb: str) -> None:
        self.bindir = Path(initdb).parent
        self.root = Path(tempfile.mkdtemp(prefix="digest-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = None
        if os.geteuid() == 0:
            # The server refuses to run as root: hand the folder to an unprivileged user.
            self.user = _unprivileged_user()
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.port = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> str:
        done = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
        last = ""
        for _attempt in range(5):  # the free port may be taken between probing and binding
            self.port = free_port()
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                "-o", options, "-w", "-t", "60", "start",
            )  # fmt: skip
            if done.returncode == 0:
                return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
            last = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()} {last}")

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run the server")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL of a maintenance database on a PostgreSQL server we may create databases on."""
    url = os.environ.get("DIGEST_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    initdb = _initdb()
    if initdb is None:
        _unavailable(
            "no $DIGEST_TEST_POSTGRES_URL and no server binaries "
            "(/usr/lib/postgresql/*/bin/initdb); install the 'postgresql' package"
        )
    cluster = _Cluster(initdb)
    try:
        url = cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        _unavailable(f"could not start a throwaway cluster: {exc}")
    try:
        yield url
    finally:
        cluster.stop()


def _admin_engine(url: str) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def _create_database(conn: Any, name: str) -> None:
    from sqlalchemy import text

    # FILE_COPY (PostgreSQL 15+) skips WAL-logging the template copy.
    fast = int(conn.execute(text("SHOW server_version_num")).scalar()) >= 150000
    conn.execute(text(f'CREATE DATABASE "{name}"' + (" STRATEGY FILE_COPY" if fast else "")))


@contextlib.contextmanager
def _new_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server (its URL), dropped on exit."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    name = f"digest_test_{uuid.uuid4().hex[:12]}"
    admin = _admin_engine(server_url)
    with admin.connect() as conn:
        _create_database(conn, name)
    try:
        yield make_url(str(admin.url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def _postgres_test_database(postgres_server: str) -> Iterator[str]:
    """One database for the whole session; each test works in its own schema inside it."""
    with _new_database(postgres_server) as url:
        yield url


@pytest.fixture
def postgres_url(_postgres_test_database: str) -> Iterator[str]:
    """A URL whose connections see a fresh, empty schema (search_path), dropped afterwards.

    A schema per test costs milliseconds where a database per test costs ~0.3 s.
    """
    with _schema_url(_postgres_test_database) as url:
        yield url


@contextlib.contextmanager
def _schema_url(database_url: str) -> Iterator[str]:
    """A URL of `database_url` whose connections see a new, empty schema, dropped on exit."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = _admin_engine(database_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # Tests run one at a time: whatever still holds this database is left over.
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


# --- stores on both engines ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for a fresh, empty database: SQLite in tmp_path, then PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'digest.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def other_store_url(
    store_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A second fresh, empty database on the same engine as `store_url` (schema comparisons)."""
    if store_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'other.db'}"
        return
    with _schema_url(request.getfixturevalue("_postgres_test_database")) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[object]:
    """An open, migrated Store on each engine."""
    from digest.store import Store

    opened = Store.open(store_url)
    try:
        yield opened
    finally:
        opened.close()


# --- dumps --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_dumps() -> list[Path]:
    """The four real dumps of ../shared/dumps, in name order."""
    files = sorted(SHARED_DUMPS.glob("*.txt")) if SHARED_DUMPS.is_dir() else []
    if len(files) < 4:
        pytest.skip(f"shared dumps not found at {SHARED_DUMPS}")
    return files
