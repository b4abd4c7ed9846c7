"""What the table definitions share: one MetaData, the UTC timestamp type, the version table.

Each aggregate module defines its own tables on `metadata` (papers.py: dumps, papers, sightings;
subscribers.py: subscribers, topics, subscriber_events, feedback; ledger.py: digests, deliveries;
meta.py: meta), next to the queries that use them. They describe the schema the migrations
(migrations/*.sql) create; tables are never created from them (tests/test_store_schema.py checks
that both agree). A changed table is a new migration file plus the change of its definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, Table, Text, TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """An aware datetime stored as UTC; naive values are refused, results are always aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store needs timezone-aware times")
        value = value.astimezone(UTC)
        # SQLite keeps text; dropping the offset keeps every stored value in one sortable format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def in_list(values: Sequence[str]) -> str:
    """SQL text of a CHECK constraint's IN list."""
    return ", ".join(f"'{v}'" for v in values)


metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)
