"""The current schema as SQLAlchemy tables (what queries use), and the UTC timestamp type.

Tables are not created from these definitions: the SQL files in `migrations/` create them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

from digest.models import CADENCES, STATUSES, DigestKind, DigestStatus

DUMP_STATUSES = ("stored", "failed", "duplicate")
DIGEST_KINDS = tuple(k.value for k in DigestKind)
DIGEST_STATUSES = tuple(s.value for s in DigestStatus)
VERDICTS = ("like", "dislike")


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


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# --- the current schema (what queries use) ----------------------------------------------------
# The migrations (digest/store/migrations/*.sql) are frozen history and what creates the tables;
# these definitions describe the result for queries. When a table changes here, add a migration
# file that brings a database to the same shape (tests/test_store_schema.py checks they agree).

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

dumps = Table(
    "dumps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("papers", Integer, nullable=False, server_default="0"),
    Column("new_papers", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("layout", Text),
    Column("captured_on", Date),
    CheckConstraint(f"status IN ({_in(DUMP_STATUSES)})", name="ck_dumps_status"),
)
# One *stored* dump per content; failed attempts and duplicates are recorded beside it.
Index(
    "ux_dumps_sha256_stored",
    dumps.c.sha256,
    unique=True,
    sqlite_where=dumps.c.status == "stored",
    postgresql_where=dumps.c.status == "stored",
)
Index("ix_dumps_sha256", dumps.c.sha256)
Index("ix_dumps_received_at", dumps.c.received_at)

papers = Table(
    "papers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("title", Text, nullable=False),
    Column("abstract", Text, nullable=False),
    Column("authors", Integer),
    Column("organization", Text),
    Column("organization_id", Text),
    Column("published", Date),
    Column("upvotes", Integer),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("first_dump_id", Integer, ForeignKey("dumps.id"), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
Index("ix_papers_first_seen", papers.c.first_seen)

sightings = Table(
    "sightings",
    metadata,
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    Column("dump_id", Integer, ForeignKey("dumps.id"), primary_key=True),
    Column("upvotes", Integer),
)
Index("ix_sightings_dump_id", sightings.c.dump_id)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", Text, nullable=False, unique=True),
    Column("name", Text, nullable=False, server_default=""),
    Column("status", String(16), nullable=False),
    Column("cadence", String(16), nullable=False),
    Column("time", String(5), nullable=False),
    Column("tz", Text, nullable=False),
    Column("weekday", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("since", UtcDateTime),
    Column("token", String(64), nullable=False, unique=True),
    Column("bounces", Integer, nullable=False, server_default="0"),
    Column("updated_at", UtcDateTime, nullable=False),
    # Papers with an id at or below this were already considered for this subscriber.
    Column("watermark", Integer, nullable=False, server_default="0"),
    # The delivery slot last handled (schedule.latest_slot), so each slot is served once.
    Column("last_slot", UtcDateTime),
    # When a daily/weekly subscriber can next be due (NULL: check at once); lets the per-minute
    # due job read only the subscribers whose time has come instead of all of them.
    Column("next_due_at", UtcDateTime),
    CheckConstraint(f"status IN ({_in(STATUSES)})", name="ck_subscribers_status"),
    CheckConstraint(f"cadence IN ({_in(CADENCES)})", name="ck_subscribers_cadence"),
    CheckConstraint("weekday BETWEEN 0 AND 6", name="ck_subscribers_weekday"),
)
Index("ix_subscribers_status", subscribers.c.status)
Index("ix_subscribers_due", subscribers.c.status, subscribers.c.next_due_at)

topics = Table(
    "topics",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("query", Text, nullable=False),
)
Index("ix_topics_subscriber", topics.c.subscriber_id, topics.c.position)

digests = Table(
    "digests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(8), nullable=False),
    Column("message_id", Text, nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("claimed_by", Text),
    Column("lease_until", UtcDateTime),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime),
    Column("sent_at", UtcDateTime),
    Column("last_error", Text),
    CheckConstraint(f"kind IN ({_in(DIGEST_KINDS)})", name="ck_digests_kind"),
    CheckConstraint(f"status IN ({_in(DIGEST_STATUSES)})", name="ck_digests_status"),
)
Index("ix_digests_queue", digests.c.status, digests.c.next_attempt_at)
Index("ix_digests_subscriber", digests.c.subscriber_id, digests.c.created_at)

deliveries = Table(
    "deliveries",
    metadata,
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    # Feed items reference a digest of kind 'feed'; nullable leaves room for other ledgers.
    Column("digest_id", Integer, ForeignKey("digests.id", ondelete="CASCADE")),
    Column("topic", Text),
    Column("delivered_at", UtcDateTime, nullable=False),
    # Why it matched, kept so a digest renders the same after a profile edit or a crash.
    Column("topics", Text),  # JSON list of topic names, best first
    Column("terms", Text),  # JSON list of the matched words
    Column("score", Float),
)
Index("ix_deliveries_digest", deliveries.c.digest_id)

meta = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)


# Added by migration 2: a subscriber's status history, and their verdicts on papers.
subscriber_events = Table(
    "subscriber_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("at", UtcDateTime, nullable=False),
    Column("old_status", String(16)),  # NULL: the subscriber was created
    Column("new_status", String(16), nullable=False),
    Column("how", String(16), nullable=False),
)
Index("ix_subscriber_events_subscriber", subscriber_events.c.subscriber_id, subscriber_events.c.id)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("topic", Text, nullable=False),  # the topic's name (topics are replaced on edits)
    Column("paper_id", Integer, ForeignKey("papers.id"), nullable=False),
    Column("verdict", String(8), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    UniqueConstraint("subscriber_id", "topic", "paper_id", name="uq_feedback_once"),
    CheckConstraint(f"verdict IN ({_in(VERDICTS)})", name="ck_feedback_verdict"),
)
