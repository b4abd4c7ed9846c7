"""Schema migrations: numbered SQL files, applied in order by a small runner.

`migrations/NNNN_name.sql` holds a step for both engines, or `NNNN_name.sqlite.sql` and
`NNNN_name.postgresql.sql` one per engine when their DDL differs; the file's first line says what
the step does (`-- Migration N: ...`). The files are found by their number: adding a step is
adding its file. Released files are frozen history, never edited (tests/test_store_schema.py pins
their hashes); a schema change is a new file plus the matching change of the tables the queries
use. `schema_version` records the applied steps; the missing ones run in one transaction (DDL is
transactional on both engines here), so a failed step leaves the database at the version it had.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources

from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from digest.errors import StoreError
from digest.store.schema import schema_version

DIALECTS = ("sqlite", "postgresql")
_FILE = re.compile(r"^(\d{4})_(\w+?)(?:\.(sqlite|postgresql))?\.sql$")
_FOLDER = resources.files("digest.store") / "migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its version number, what it does, and its SQL files' stem."""

    version: int
    description: str
    stem: str  # e.g. "0001_initial": <stem>.sql, or <stem>.sqlite.sql and <stem>.postgresql.sql

    def files(self) -> dict[str, str]:
        """The file name of the step's SQL for each engine."""
        found = {d: f"{self.stem}.{d}.sql" for d in DIALECTS}
        return {
            d: name if (_FOLDER / name).is_file() else f"{self.stem}.sql"
            for d, name in found.items()
        }

    def sql(self, dialect: str) -> str:
        """The step's SQL for one engine."""
        if dialect not in DIALECTS:
            raise StoreError(f"no migrations for the {dialect} engine")
        return (_FOLDER / self.files()[dialect]).read_text(encoding="utf-8")

    def statements(self, dialect: str) -> list[str]:
        """The step's statements: the file split at semicolons that end a line, comments off."""
        lines = [
            line for line in self.sql(dialect).splitlines() if not line.lstrip().startswith("--")
        ]
        parts = re.split(r";[ \t]*$", "\n".join(lines), flags=re.MULTILINE)
        return [part.strip() for part in parts if part.strip()]


def _discover() -> tuple[Migration, ...]:
    """The steps in the migrations folder, by number; StoreError if the files are inconsistent."""
    stems: dict[int, set[str]] = {}
    for entry in _FOLDER.iterdir():
        found = _FILE.match(entry.name)
        if found:
            stems.setdefault(int(found.group(1)), set()).add(f"{found.group(1)}_{found.group(2)}")
    steps = []
    for version in sorted(stems):
        if len(stems[version]) != 1:
            raise StoreError(f"migration {version}: several names {sorted(stems[version])}")
        step = Migration(version, "", stems[version].pop())
        for dialect in DIALECTS:
            if not (_FOLDER / step.files()[dialect]).is_file():
                raise StoreError(f"migration {step.stem}: no SQL for {dialect}")
        first = step.sql("sqlite").splitlines()[0] if step.sql("sqlite") else ""
        described = re.match(rf"^-- Migration {version}: (.+?)\.?$", first)
        if described is None:
            raise StoreError(
                f"migration {step.stem}: first line must be '-- Migration {version}: ...'"
            )
        steps.append(Migration(version, described.group(1), step.stem))
    if [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise StoreError(
            f"migrations must be numbered 1, 2, 3...: found {[s.version for s in steps]}"
        )
    return tuple(steps)


# Ordered by version; found once, when the store is imported.
MIGRATIONS: tuple[Migration, ...] = _discover()
SCHEMA_VERSION = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """The highest applied step (0 when none is, or there is no schema_version table)."""
    if not conn.dialect.has_table(conn, "schema_version"):
        return 0
    return conn.scalar(select(func.max(schema_version.c.version))) or 0


def apply_migrations(conn: Connection, *, target: int = SCHEMA_VERSION, url: str = "") -> list[int]:
    """Apply the missing steps up to `target` in the caller's transaction; the versions applied.

    The caller holds the migration lock (PostgreSQL advisory lock; SQLite's BEGIN IMMEDIATE).
    """
    schema_version.create(conn, checkfirst=True)
    current = current_version(conn)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"database {url} has schema version {current}, "
            f"newer than this digest knows ({SCHEMA_VERSION}); upgrade digest"
        )
    applied: list[int] = []
    now = datetime.now(UTC)
    for step in MIGRATIONS:
        if step.version <= current or step.version > target:
            continue
        for statement in step.statements(conn.dialect.name):
            conn.exec_driver_sql(statement)
        conn.execute(
            insert(schema_version).values(
                version=step.version, description=step.description, applied_at=now
            )
        )
        applied.append(step.version)
    return applied
