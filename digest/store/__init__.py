"""The store: every SQL statement of the project lives in this package (SQLAlchemy Core).

SQLite by default and PostgreSQL for `postgresql+psycopg://` URLs (engine.py). `Store` is a thin
facade combining one class per aggregate:

- papers.py: dumps, papers and sightings (PaperStore)
- subscribers.py: subscribers, topics, status history, suppressions (SubscriberStore)
- ledger.py: delivery states, recording digests, the delivery ledger (LedgerStore)
- claims.py: senders' claims on email digests and their outcomes (ClaimStore)
- meta.py: the meta table of named values (MetaStore)
- locks.py: the daemon's PostgreSQL session lock (LockStore)

Each module defines its tables (what its queries use) on schema.metadata; migrate.py applies the
frozen SQL files of migrations/, which create those tables, and records them in
`schema_version`. Timestamps go in and come out as timezone-aware UTC; records are frozen
dataclasses (records.py).
"""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from digest.errors import StoreError
from digest.store.admin import AdminStore
from digest.store.base import PG_LOCK_MIGRATE, StoreBase
from digest.store.claims import ClaimStore
from digest.store.engine import SQLITE_BUSY_TIMEOUT_MS, engine_for, reason, safe_url
from digest.store.feedback import FeedbackStore
from digest.store.ledger import DIGEST_KINDS, DIGEST_STATUSES, LedgerStore, deliveries, digests
from digest.store.locks import LockStore
from digest.store.meta import MetaStore, meta
from digest.store.migrate import MIGRATIONS, SCHEMA_VERSION, Migration, apply_migrations
from digest.store.migrate import current_version as _current_version
from digest.store.papers import DUMP_STATUSES, PaperStore, dumps, papers, sightings
from digest.store.records import (
    ArchivedDigest,
    DeliveryState,
    DigestPage,
    DigestRecord,
    DigestRow,
    DumpRecord,
    FeedbackRecord,
    IngestOutcome,
    LedgerEntry,
    LedgerItem,
    PlanProgress,
    RunSize,
    SentDigest,
    SentPaper,
    Sighting,
    SubscriberEvent,
    Suppression,
)
from digest.store.rising import RisingPaper, RisingRule, RisingStore
from digest.store.schema import UtcDateTime, metadata, schema_version
from digest.store.subscribers import (
    VERDICTS,
    SubscriberStore,
    feedback,
    subscriber_events,
    subscribers,
    suppressions,
    topics,
)

__all__ = [
    "DIGEST_KINDS",
    "DIGEST_STATUSES",
    "DUMP_STATUSES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLITE_BUSY_TIMEOUT_MS",
    "VERDICTS",
    "ArchivedDigest",
    "DeliveryState",
    "DigestPage",
    "DigestRecord",
    "DigestRow",
    "DumpRecord",
    "FeedbackRecord",
    "IngestOutcome",
    "LedgerEntry",
    "LedgerItem",
    "Migration",
    "PlanProgress",
    "RisingPaper",
    "RisingRule",
    "RunSize",
    "SentDigest",
    "SentPaper",
    "Sighting",
    "Store",
    "SubscriberEvent",
    "Suppression",
    "UtcDateTime",
    "deliveries",
    "digests",
    "dumps",
    "feedback",
    "meta",
    "metadata",
    "papers",
    "schema_version",
    "sightings",
    "subscriber_events",
    "subscribers",
    "suppressions",
    "topics",
]


class Store(
    PaperStore,
    SubscriberStore,
    FeedbackStore,
    LedgerStore,
    ClaimStore,
    MetaStore,
    LockStore,
    AdminStore,
    RisingStore,
):
    """The database behind digest; open with `Store.open(url)`, which also migrates it."""

    def __init__(self, engine: Engine) -> None:
        StoreBase.__init__(self, engine)

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to a sqlite: or postgresql: URL and bring its schema up to date."""
        store = cls(engine_for(url))
        if migrate:
            try:
                store.migrate()
            except StoreError:
                store.close()
                raise
            except SQLAlchemyError as exc:
                store.close()
                raise StoreError(f"database {safe_url(url)}: {reason(exc)}") from None
        return store

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def schema_version(self) -> int:
        """The highest applied migration step (0 for an empty database)."""
        with self._read() as conn:
            return _current_version(conn)

    def migrate(self, *, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply the missing migration steps (up to `target`) in one transaction; return the
        versions applied."""
        with self._write() as conn:
            self._lock(conn, PG_LOCK_MIGRATE)
            return apply_migrations(
                conn, target=target, url=safe_url(self.engine.url.render_as_string())
            )
