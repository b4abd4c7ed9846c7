"""Schema migrations: numbered SQL files per engine, applied in order by a small runner.

`migrations/NNNN_name.{sqlite,postgresql}.sql` are frozen history: a released file is never
edited (tests/test_store_schema.py pins their hashes). A schema change is a new file pair plus the
matching change of the tables in schema.py. `schema_version` records the applied steps; the missing
ones run in one transaction (DDL is transactional on both engines here), so a failed step leaves
the database at the version it had.
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
_FILE = re.compile(r"^(\d{4})_(\w+)\.(sqlite|postgresql)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its version number, what it does, and its SQL file's stem."""

    version: int
    description: str
    stem: str  # e.g. "0001_initial": the files are <stem>.sqlite.sql and <stem>.postgresql.sql

    def sql(self, dialect: str) -> str:
        """The step's SQL for one engine."""
        if dialect not in DIALECTS:
            raise StoreError(f"no migrations for the {dialect} engine")
        folder = resources.files("digest.store") / "migrations"
        return (folder / f"{self.stem}.{dialect}.sql").read_text(encoding="utf-8")

    def statements(self, dialect: str) -> list[str]:
        """The step's statements: the file split at semicolons that end a line, comments off."""
        lines = [
            line for line in self.sql(dialect).splitlines() if not line.lstrip().startswith("--")
        ]
        parts = re.split(r";[ \t]*$", "\n".join(lines), flags=re.MULTILINE)
        return [part.strip() for part in parts if part.strip()]


# Ordered; append only.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "dumps, papers, sightings, subscribers, topics, digests, deliveries, meta",
        "0001_initial",
    ),
    Migration(2, "subscriber_events (status history) and feedback", "0002_events_feedback"),
)
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
