"""The store: every SQL statement of the project lives here (SQLAlchemy Core).

SQLite by default (WAL, busy_timeout, foreign keys on; each transaction starts with an explicit
BEGIN so DDL and DML are truly transactional) and PostgreSQL for `postgresql+psycopg://` URLs.
The schema is versioned: `schema_version` records the applied steps of `MIGRATIONS`, and
`Store.open` applies the missing ones. Timestamps go in and come out as timezone-aware UTC.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from digest.errors import DigestError, StoreError, ValidationError
from digest.models import (
    CADENCES,
    STATUSES,
    Paper,
    ParseResult,
    StoredPaper,
    Subscriber,
    Topic,
)

DUMP_STATUSES = ("stored", "failed", "duplicate")
DIGEST_KINDS = ("email", "feed")
DIGEST_STATUSES = ("queued", "sending", "sent", "failed", "bounced")

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Big enough to amortise round trips, small enough for SQLite's bound-parameter limit.
_CHUNK = 500
# PostgreSQL advisory lock ids (arbitrary constants, "dgst" + a purpose number).
_PG_LOCK_MIGRATE = 0x64677374_0001
_PG_LOCK_INGEST = 0x64677374_0002
_PG_LOCK_DAEMON = 0x64677374_0003


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
# Migration steps below are frozen history; when a table changes here, append a migration step
# that brings an existing database to the same shape (test_store checks they agree).

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


# --- migrations ---------------------------------------------------------------------------------


def _schema_v1() -> MetaData:
    """The schema as migration 1 creates it.

    It equals the current tables today. Before changing a table above, freeze this function by
    copying the v1 definitions into it (test_store pins its DDL), then append a migration step.
    """
    md = MetaData()
    for table in metadata.sorted_tables:
        if table.name != "schema_version":
            table.to_metadata(md)
    return md


def _migration_1(conn: Connection) -> None:
    _schema_v1().create_all(conn)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its version number, what it does, and the function that does it."""

    version: int
    description: str
    apply: Callable[[Connection], None]


# Ordered; append only. A step runs inside the migration transaction (DDL is transactional on both
# engines here) so a failed step leaves the database at the previous version.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "dumps, papers, sightings, subscribers, topics, digests, deliveries, meta", _migration_1
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# --- records returned by the store ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DumpRecord:
    """A row of the dumps table: one dump file the store was given, and what became of it."""

    id: int
    name: str
    sha256: str
    size: int
    received_at: datetime
    status: str
    papers: int
    new_papers: int
    error: str | None = None
    layout: str | None = None
    captured_on: date | None = None


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What ingesting one dump did: stored (with counts), or a recorded duplicate."""

    dump_id: int
    status: str  # 'stored' or 'duplicate'
    papers: int
    new_papers: int
    duplicate_of: int | None = None


@dataclass(frozen=True, slots=True)
class Sighting:
    """A paper seen in one dump, with the upvotes that dump showed."""

    dump_id: int
    dump_name: str
    received_at: datetime
    upvotes: int | None


@dataclass(frozen=True, slots=True)
class DigestRow:
    """A digest as the admin dashboard lists it."""

    id: int
    email: str
    kind: str
    status: str
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None
    papers: int


@dataclass(frozen=True, slots=True)
class LedgerItem:
    """A paper put in a digest, with why it matched (kept in the delivery ledger)."""

    paper_id: int
    topics: tuple[str, ...]
    terms: tuple[str, ...]
    score: float


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """An active subscriber with their delivery progress."""

    subscriber: Subscriber
    watermark: int
    last_slot: datetime | None


@dataclass(frozen=True, slots=True)
class DigestRecord:
    """A recorded digest: its subscriber, identity, state and ledger items (best first)."""

    id: int
    subscriber: Subscriber
    kind: str
    status: str
    message_id: str
    created_at: datetime
    attempts: int
    items: list[tuple[StoredPaper, LedgerItem]]


# --- the store -----------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass a timezone-aware time")
    return value.astimezone(UTC)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _merge_by_key(found: Iterable[Paper]) -> dict[str, Paper]:
    """One record per key in dump order: first title and abstract, later non-null facts win."""
    merged: dict[str, Paper] = {}
    for paper in found:
        key = paper.key
        old = merged.get(key)
        if old is None:
            merged[key] = paper
            continue
        merged[key] = Paper(
            title=old.title,
            abstract=old.abstract or paper.abstract,
            authors=paper.authors if paper.authors is not None else old.authors,
            organization=paper.organization or old.organization,
            organization_id=paper.organization_id or old.organization_id,
            published=paper.published or old.published,
            upvotes=paper.upvotes if paper.upvotes is not None else old.upvotes,
            line=old.line,
        )
    return merged


_PAPER_FACTS = ("authors", "organization", "organization_id", "published", "upvotes")


class Store:
    """The database behind digest; open with `Store.open(url)`, which also migrates it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    # -- lifecycle --

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to a sqlite: or postgresql+psycopg: URL and bring its schema up to date."""
        shown = _safe_url(url)
        try:
            parsed = make_url(url)
        except SQLAlchemyError as exc:
            raise StoreError(f"database URL {url!r} is not valid: {exc}") from None
        backend = parsed.get_backend_name()
        if backend == "sqlite":
            engine = _sqlite_engine(parsed)
        elif backend == "postgresql":
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            engine = create_engine(parsed, pool_pre_ping=True)
        else:
            raise StoreError(f"database URL {shown}: only sqlite and postgresql are supported")
        store = cls(engine)
        if migrate:
            try:
                store.migrate()
            except StoreError:
                engine.dispose()
                raise
            except SQLAlchemyError as exc:
                engine.dispose()
                raise StoreError(f"database {shown}: {_reason(exc)}") from None
        return store

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(digest_write=True)
            with conn.begin():
                yield conn

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

    # -- schema --

    def schema_version(self) -> int:
        """The highest applied migration step (0 for an empty database)."""
        with self._read() as conn:
            if not self.engine.dialect.has_table(conn, "schema_version"):
                return 0
            return conn.scalar(select(func.max(schema_version.c.version))) or 0

    def migrate(self) -> list[int]:
        """Apply the missing migration steps in one transaction; return the versions applied."""
        applied: list[int] = []
        with self._write() as conn:
            self._lock(conn, _PG_LOCK_MIGRATE)
            schema_version.create(conn, checkfirst=True)
            current = conn.scalar(select(func.max(schema_version.c.version))) or 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"database {_safe_url(str(self.engine.url))} has schema version {current}, "
                    f"newer than this digest knows ({SCHEMA_VERSION}); upgrade digest"
                )
            now = datetime.now(UTC)
            for step in MIGRATIONS:
                if step.version <= current:
                    continue
                step.apply(conn)
                conn.execute(
                    insert(schema_version).values(
                        version=step.version, description=step.description, applied_at=now
                    )
                )
                applied.append(step.version)
        return applied

    # -- dumps and papers --

    def ingest_dump(
        self,
        name: str,
        sha256: str,
        size: int,
        result: ParseResult,
        *,
        received_at: datetime,
    ) -> IngestOutcome:
        """Store one parsed dump in one transaction; the same content again is a recorded no-op."""
        received_at = _utc(received_at)
        merged = _merge_by_key(result.papers)
        try:
            with self._write() as conn:
                self._lock(conn, _PG_LOCK_INGEST)
                earlier = self._stored_dump_id(conn, sha256)
                if earlier is not None:
                    return self._insert_duplicate(conn, name, sha256, size, received_at, earlier)
                dump_id = conn.execute(
                    insert(dumps).values(
                        name=name,
                        sha256=sha256,
                        size=size,
                        received_at=received_at,
                        status="stored",
                        papers=len(merged),
                        new_papers=0,
                        layout=result.layout or None,
                        captured_on=result.capture_date,
                    )
                ).inserted_primary_key[0]
                new_count = self._upsert_papers(conn, dump_id, merged, received_at)
                conn.execute(
                    update(dumps).where(dumps.c.id == dump_id).values(new_papers=new_count)
                )
                return IngestOutcome(dump_id, "stored", len(merged), new_count)
        except IntegrityError:
            # Another process stored the same content between our check and our insert.
            with self._write() as conn:
                earlier = self._stored_dump_id(conn, sha256)
                if earlier is None:
                    raise
                return self._insert_duplicate(conn, name, sha256, size, received_at, earlier)

    def _stored_dump_id(self, conn: Connection, sha256: str) -> int | None:
        return conn.scalar(
            select(dumps.c.id).where(dumps.c.sha256 == sha256, dumps.c.status == "stored")
        )

    def _insert_duplicate(
        self,
        conn: Connection,
        name: str,
        sha256: str,
        size: int,
        received_at: datetime,
        earlier: int,
    ) -> IngestOutcome:
        dump_id = conn.execute(
            insert(dumps).values(
                name=name,
                sha256=sha256,
                size=size,
                received_at=received_at,
                status="duplicate",
                papers=0,
                new_papers=0,
                error=f"same content as dump {earlier}",
            )
        ).inserted_primary_key[0]
        return IngestOutcome(dump_id, "duplicate", 0, 0, duplicate_of=earlier)

    def _upsert_papers(
        self, conn: Connection, dump_id: int, merged: dict[str, Paper], now: datetime
    ) -> int:
        """Insert new papers, update the changing facts of known ones, add the sightings."""
        keys = list(merged)
        existing: dict[str, Any] = {}
        cols = [papers.c.id, papers.c.key, *(papers.c[f] for f in _PAPER_FACTS)]
        for chunk in _chunks(keys):
            for row in conn.execute(select(*cols).where(papers.c.key.in_(chunk))):
                existing[row.key] = row
        ids: dict[str, int] = {k: row.id for k, row in existing.items()}

        fresh = [
            {
                "key": key,
                "title": p.title,
                "abstract": p.abstract,
                "authors": p.authors,
                "organization": p.organization,
                "organization_id": p.organization_id,
                "published": p.published,
                "upvotes": p.upvotes,
                "first_seen": now,
                "first_dump_id": dump_id,
                "updated_at": now,
            }
            for key, p in merged.items()
            if key not in existing
        ]
        if fresh:
            # RETURNING gives (id, key) pairs, so row order does not matter (and batches stay big).
            stmt = insert(papers).returning(papers.c.id, papers.c.key)
            for row in conn.execute(stmt, fresh):
                ids[row.key] = row.id

        changes = []
        for key, row in existing.items():
            p = merged[key]
            values = {f: getattr(p, f) for f in _PAPER_FACTS}
            new = {f: (values[f] if values[f] is not None else getattr(row, f)) for f in values}
            if any(new[f] != getattr(row, f) for f in new):
                changes.append(
                    {"b_id": row.id, "b_now": now, **{f"b_{f}": v for f, v in new.items()}}
                )
        if changes:
            conn.execute(
                update(papers)
                .where(papers.c.id == bindparam("b_id"))
                .values(
                    updated_at=bindparam("b_now"),
                    **{f: bindparam(f"b_{f}") for f in _PAPER_FACTS},
                ),
                changes,
            )

        conn.execute(
            insert(sightings),
            [
                {"paper_id": ids[key], "dump_id": dump_id, "upvotes": p.upvotes}
                for key, p in merged.items()
            ],
        )
        return len(fresh)

    def record_failed_dump(
        self, name: str, sha256: str, size: int, error: str, received_at: datetime
    ) -> int:
        """Record a dump that could not be stored, with why; returns its dumps row id."""
        with self._write() as conn:
            return conn.execute(
                insert(dumps).values(
                    name=name,
                    sha256=sha256,
                    size=size,
                    received_at=_utc(received_at),
                    status="failed",
                    papers=0,
                    new_papers=0,
                    error=error,
                )
            ).inserted_primary_key[0]

    def record_duplicate_dump(
        self, name: str, sha256: str, size: int, received_at: datetime
    ) -> IngestOutcome:
        """Record that content already stored arrived again (without parsing it again)."""
        with self._write() as conn:
            self._lock(conn, _PG_LOCK_INGEST)
            earlier = self._stored_dump_id(conn, sha256)
            if earlier is None:
                raise StoreError(f"dump {name}: no stored dump has sha256 {sha256}")
            return self._insert_duplicate(conn, name, sha256, size, _utc(received_at), earlier)

    def dump_by_sha256(self, sha256: str) -> DumpRecord | None:
        """The stored dump with this content if any, else the latest attempt with it, else None."""
        order = (dumps.c.status == "stored").desc(), dumps.c.id.desc()
        with self._read() as conn:
            row = conn.execute(
                select(dumps).where(dumps.c.sha256 == sha256).order_by(*order).limit(1)
            ).first()
        return _dump(row) if row else None

    def recent_dumps(self, limit: int = 20) -> list[DumpRecord]:
        """The latest dumps received, newest first, whatever became of them."""
        with self._read() as conn:
            rows = conn.execute(select(dumps).order_by(dumps.c.id.desc()).limit(limit))
            return [_dump(r) for r in rows]

    def count_papers(self) -> int:
        """How many distinct papers are stored."""
        with self._read() as conn:
            return conn.scalar(select(func.count()).select_from(papers)) or 0

    def papers_first_seen_since(self, ts: datetime) -> list[StoredPaper]:
        """Papers first stored at or after `ts`, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(papers)
                .where(papers.c.first_seen >= _utc(ts))
                .order_by(papers.c.first_seen, papers.c.id)
            )
            return [_paper(r) for r in rows]

    def recent_papers(self, limit: int = 100) -> list[StoredPaper]:
        """The most recently first-stored papers, newest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(papers).order_by(papers.c.first_seen.desc(), papers.c.id.desc()).limit(limit)
            )
            return [_paper(r) for r in rows]

    def papers_by_ids(self, ids: Iterable[int]) -> dict[int, StoredPaper]:
        """The stored papers with these ids, by id (unknown ids are absent)."""
        wanted = sorted(set(ids))
        found: dict[int, StoredPaper] = {}
        with self._read() as conn:
            for chunk in _chunks(wanted):
                for row in conn.execute(select(papers).where(papers.c.id.in_(chunk))):
                    found[row.id] = _paper(row)
        return found

    def paper_by_key(self, key: str) -> StoredPaper | None:
        """The stored paper with this identity key (see models.paper_key), if any."""
        with self._read() as conn:
            row = conn.execute(select(papers).where(papers.c.key == key)).first()
        return _paper(row) if row else None

    def upvote_history(self, paper_id: int) -> list[Sighting]:
        """Every dump that showed this paper, oldest first, with the upvotes it showed."""
        with self._read() as conn:
            rows = conn.execute(
                select(sightings.c.dump_id, dumps.c.name, dumps.c.received_at, sightings.c.upvotes)
                .join(dumps, dumps.c.id == sightings.c.dump_id)
                .where(sightings.c.paper_id == paper_id)
                .order_by(dumps.c.received_at, dumps.c.id)
            )
            return [Sighting(r.dump_id, r.name, r.received_at, r.upvotes) for r in rows]

    # -- meta --

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value kept in the meta table (e.g. a generated secret key), or `default`."""
        with self._read() as conn:
            value = conn.scalar(select(meta.c.value).where(meta.c.key == key))
        return default if value is None else value

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value, replacing any earlier one."""
        stmt = self._dialect_insert(meta).values(key=key, value=value)
        with self._write() as conn:
            conn.execute(
                stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value})
            )

    def meta_setdefault(self, key: str, value: str) -> str:
        """Keep `value` under `key` unless one is there already; return the value that won."""
        stmt = self._dialect_insert(meta).values(key=key, value=value)
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[meta.c.key]))
            return conn.scalar(select(meta.c.value).where(meta.c.key == key))

    # -- subscribers --

    # Columns a subscriber edit may change; `since` moves only with an explicit backfill.
    _SUBSCRIBER_FIELDS = ("email", "name", "status", "cadence", "time", "tz", "weekday", "since")

    def max_paper_id(self) -> int:
        """The highest paper id stored (0 when there is none): the watermark of a new subscriber."""
        with self._read() as conn:
            return conn.scalar(select(func.max(papers.c.id))) or 0

    def insert_subscriber(self, sub: Subscriber, *, watermark: int = 0) -> Subscriber:
        """Store a new subscriber with its topics; ValidationError if the email is taken."""
        values: dict[str, Any] = {
            "email": sub.email,
            "name": sub.name,
            "status": sub.status,
            "cadence": sub.cadence,
            "time": sub.time,
            "tz": sub.tz,
            "weekday": sub.weekday,
            "created_at": _utc(sub.created_at),
            "since": _utc(sub.since) if sub.since else None,
            "token": sub.token,
            "bounces": sub.bounces,
            "updated_at": _utc(sub.created_at),
            "watermark": watermark,
        }
        try:
            with self._write() as conn:
                new_id = conn.execute(insert(subscribers).values(**values)).inserted_primary_key[0]
                self._insert_topics(conn, new_id, sub.topics)
        except IntegrityError as exc:
            raise self._subscriber_conflict(exc, sub.email) from None
        found = self.subscriber_by_id(new_id)
        assert found is not None
        return found

    def insert_subscribers(self, subs: Sequence[Subscriber], *, watermark: int = 0) -> int:
        """Store many new, already validated subscribers with their topics in one transaction
        (bulk loads, benchmarks); ValidationError if an email is taken. Returns how many."""
        rows = [
            {
                "email": s.email,
                "name": s.name,
                "status": s.status,
                "cadence": s.cadence,
                "time": s.time,
                "tz": s.tz,
                "weekday": s.weekday,
                "created_at": _utc(s.created_at),
                "since": _utc(s.since) if s.since else None,
                "token": s.token,
                "bounces": s.bounces,
                "updated_at": _utc(s.created_at),
                "watermark": watermark,
            }
            for s in subs
        ]
        if not rows:
            return 0
        topics_of = {s.email: s.topics for s in subs}
        try:
            with self._write() as conn:
                # RETURNING gives (id, email) pairs, so row order does not matter.
                stmt = insert(subscribers).returning(subscribers.c.id, subscribers.c.email)
                topic_rows = [
                    {"subscriber_id": r.id, "position": i, "name": t.name, "query": t.query}
                    for r in conn.execute(stmt, rows)
                    for i, t in enumerate(topics_of[r.email])
                ]
                if topic_rows:
                    conn.execute(insert(topics), topic_rows)
        except IntegrityError as exc:
            raise self._subscriber_conflict(exc, "a subscriber of the batch") from None
        return len(rows)

    def update_subscriber(
        self,
        subscriber_id: int,
        fields: dict[str, Any],
        topic_list: Sequence[Topic] | None = None,
    ) -> bool:
        """Change the given columns and, when given, replace the topics; False if unknown id."""
        unknown = set(fields) - set(self._SUBSCRIBER_FIELDS)
        if unknown:
            raise StoreError(f"subscriber columns {sorted(unknown)} cannot be edited")
        values = dict(fields)
        if values.get("since") is not None:
            values["since"] = _utc(values["since"])
        values["updated_at"] = datetime.now(UTC)
        if {"status", "cadence", "time", "tz", "weekday"} & set(fields):
            values["next_due_at"] = None  # the schedule changed: work the next slot out again
        try:
            with self._write() as conn:
                done = conn.execute(
                    update(subscribers).where(subscribers.c.id == subscriber_id).values(**values)
                ).rowcount
                if not done:
                    return False
                if topic_list is not None:
                    conn.execute(topics.delete().where(topics.c.subscriber_id == subscriber_id))
                    self._insert_topics(conn, subscriber_id, topic_list)
        except IntegrityError as exc:
            raise self._subscriber_conflict(exc, str(fields.get("email", ""))) from None
        return True

    def set_subscriber_status(
        self, subscriber_id: int, status: str, *, reset_watermark: bool = False
    ) -> bool:
        """Set the status; with reset_watermark, papers stored until now are no longer pending."""
        with self._write() as conn:
            done = conn.execute(
                update(subscribers)
                .where(subscribers.c.id == subscriber_id)
                .values(status=status, next_due_at=None, updated_at=datetime.now(UTC))
            ).rowcount
            if done and reset_watermark:
                top = conn.scalar(select(func.max(papers.c.id))) or 0
                conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id == subscriber_id)
                    .values(watermark=top)
                )
        return bool(done)

    def reset_watermark(self, subscriber_id: int, paper_id: int) -> None:
        """Mark papers up to `paper_id` as not pending for this subscriber."""
        with self._write() as conn:
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == subscriber_id)
                .values(watermark=paper_id, updated_at=datetime.now(UTC))
            )

    def unsubscribe_token(self, token: str) -> bool:
        """Unsubscribe whoever holds this token (idempotent); False if no one does."""
        with self._write() as conn:
            found = conn.scalar(select(subscribers.c.id).where(subscribers.c.token == token))
            if found is None:
                return False
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == found, subscribers.c.status != "unsubscribed")
                .values(status="unsubscribed", updated_at=datetime.now(UTC))
            )
        return True

    def delete_subscriber(self, subscriber_id: int) -> bool:
        """Delete a subscriber with their topics, digests and ledger rows; False if unknown."""
        with self._write() as conn:
            # Explicit deletes: the cascade needs foreign keys on, which only we guarantee.
            conn.execute(deliveries.delete().where(deliveries.c.subscriber_id == subscriber_id))
            conn.execute(digests.delete().where(digests.c.subscriber_id == subscriber_id))
            conn.execute(topics.delete().where(topics.c.subscriber_id == subscriber_id))
            done = conn.execute(
                subscribers.delete().where(subscribers.c.id == subscriber_id)
            ).rowcount
        return bool(done)

    def subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        """The subscriber with this id, with topics, or None."""
        return self._one_subscriber(subscribers.c.id == subscriber_id)

    def subscriber_by_email(self, email: str) -> Subscriber | None:
        """The subscriber with this (normalised) email, with topics, or None."""
        return self._one_subscriber(subscribers.c.email == email)

    def subscriber_by_token(self, token: str) -> Subscriber | None:
        """The subscriber holding this secret token, with topics, or None."""
        return self._one_subscriber(subscribers.c.token == token)

    def list_subscribers(
        self,
        *,
        search: str | None = None,
        status: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Subscriber]:
        """Subscribers with their topics, by email; `search` matches email or name, any case."""
        stmt = select(subscribers).order_by(subscribers.c.email)
        for cond in self._subscriber_filter(search, status):
            stmt = stmt.where(cond)
        if offset:
            stmt = stmt.offset(offset)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = list(conn.execute(stmt))
            by_id = self._topics_of(conn, [r.id for r in rows])
        return [self._subscriber_row(r, by_id.get(r.id, ())) for r in rows]

    def count_subscribers(self, *, search: str | None = None, status: str | None = None) -> int:
        """How many subscribers `list_subscribers` would give without offset and limit."""
        stmt = select(func.count()).select_from(subscribers)
        for cond in self._subscriber_filter(search, status):
            stmt = stmt.where(cond)
        with self._read() as conn:
            return conn.scalar(stmt) or 0

    def subscriber_status_counts(self) -> dict[str, int]:
        """Subscribers per status, every status present (0 when none)."""
        counts = dict.fromkeys(STATUSES, 0)
        with self._read() as conn:
            rows = conn.execute(
                select(subscribers.c.status, func.count()).group_by(subscribers.c.status)
            )
            for status, n in rows:
                counts[status] = n
        return counts

    def subscriber_history(self, subscriber_id: int) -> list[dict[str, Any]]:
        """Sent email digests of a subscriber, newest first, each with its papers' titles and
        topics: [{"digest_id", "message_id", "sent_at", "papers": [(title, topic)]}]."""
        with self._read() as conn:
            heads = list(
                conn.execute(
                    select(digests.c.id, digests.c.message_id, digests.c.sent_at)
                    .where(
                        digests.c.subscriber_id == subscriber_id,
                        digests.c.kind == "email",
                        digests.c.status == "sent",
                    )
                    .order_by(digests.c.sent_at.desc(), digests.c.id.desc())
                )
            )
            items: dict[int, list[tuple[str, str | None]]] = {h.id: [] for h in heads}
            # The digest's own ranking when the ledger keeps scores, else the order stored.
            order = (
                [deliveries.c.score.desc(), papers.c.id]
                if "score" in deliveries.c
                else [papers.c.id]
            )
            for chunk in _chunks(list(items)):
                rows = conn.execute(
                    select(deliveries.c.digest_id, papers.c.title, deliveries.c.topic)
                    .join(papers, papers.c.id == deliveries.c.paper_id)
                    .where(deliveries.c.digest_id.in_(chunk))
                    .order_by(deliveries.c.digest_id, *order)
                )
                for row in rows:
                    items[row.digest_id].append((row.title, row.topic))
        return [
            {
                "digest_id": h.id,
                "message_id": h.message_id,
                "sent_at": h.sent_at,
                "papers": items[h.id],
            }
            for h in heads
        ]

    def _one_subscriber(self, cond: Any) -> Subscriber | None:
        with self._read() as conn:
            row = conn.execute(select(subscribers).where(cond)).first()
            if row is None:
                return None
            found = self._topics_of(conn, [row.id])
        return self._subscriber_row(row, found.get(row.id, ()))

    def _subscriber_filter(self, search: str | None, status: str | None) -> list[Any]:
        conds: list[Any] = []
        if status:
            conds.append(subscribers.c.status == status)
        if search:
            needle = search.strip().lower()
            conds.append(
                func.lower(subscribers.c.email).contains(needle, autoescape=True)
                | func.lower(subscribers.c.name).contains(needle, autoescape=True)
            )
        return conds

    def _topics_of(self, conn: Connection, ids: Sequence[int]) -> dict[int, list[Topic]]:
        found: dict[int, list[Topic]] = {}
        for chunk in _chunks(list(ids)):
            rows = conn.execute(
                select(topics.c.subscriber_id, topics.c.name, topics.c.query)
                .where(topics.c.subscriber_id.in_(chunk))
                .order_by(topics.c.subscriber_id, topics.c.position)
            )
            for row in rows:
                found.setdefault(row.subscriber_id, []).append(Topic(row.name, row.query))
        return found

    def _insert_topics(self, conn: Connection, subscriber_id: int, items: Sequence[Topic]) -> None:
        if items:
            conn.execute(
                insert(topics),
                [
                    {
                        "subscriber_id": subscriber_id,
                        "position": i,
                        "name": t.name,
                        "query": t.query,
                    }
                    for i, t in enumerate(items)
                ],
            )

    def _subscriber_conflict(self, exc: IntegrityError, email: str) -> DigestError:
        reason = _reason(exc).lower()
        if "email" in reason or "subscribers_email" in reason:
            return ValidationError(f"{email}: already subscribed")
        return StoreError(f"subscriber {email}: {_reason(exc)}")

    @staticmethod
    def _subscriber_row(row: Any, found: Sequence[Topic]) -> Subscriber:
        return Subscriber(
            id=row.id,
            email=row.email,
            name=row.name,
            status=row.status,
            cadence=row.cadence,
            time=row.time,
            tz=row.tz,
            weekday=row.weekday,
            created_at=row.created_at,
            token=row.token,
            topics=tuple(found),
            since=row.since,
            bounces=row.bounces,
        )

    def _dialect_insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # -- outbox --

    def subscribers_for_delivery(
        self, *, due_at: datetime | None = None, after_id: int = 0, limit: int | None = None
    ) -> list[DeliveryState]:
        """Active subscribers with topics, each with their paper watermark and last slot.

        With `due_at`, only those who may be due then: instant and feed subscribers with papers
        stored after their watermark, daily and weekly ones whose next slot has come. By id;
        `after_id` and `limit` give one page (the queue walks 100k subscribers page by page).
        """
        wanted = subscribers.c.status == "active"
        if due_at is not None:
            newest = select(func.max(papers.c.id)).scalar_subquery()
            wanted = wanted & (
                (
                    subscribers.c.cadence.in_(("instant", "feed"))
                    & (subscribers.c.watermark < func.coalesce(newest, 0))
                )
                | (
                    subscribers.c.cadence.in_(("daily", "weekly"))
                    & (
                        subscribers.c.next_due_at.is_(None)
                        | (subscribers.c.next_due_at <= _utc(due_at))
                    )
                )
            )
        if after_id:
            wanted = wanted & (subscribers.c.id > after_id)
        if limit is not None:
            # The page's last id bounds the topics query to the same subscribers.
            page = select(subscribers.c.id).where(wanted).order_by(subscribers.c.id).limit(limit)
            with self._read() as conn:
                last = conn.scalar(select(func.max(page.subquery().c.id)))
            if last is None:
                return []
            wanted = wanted & (subscribers.c.id <= last)
        with self._read() as conn:
            rows = list(conn.execute(select(subscribers).where(wanted).order_by(subscribers.c.id)))
            # One pass over topics instead of chunked IN lists when (nearly) everyone is wanted.
            found: dict[int, list[Topic]] = {}
            for row in conn.execute(
                select(topics.c.subscriber_id, topics.c.name, topics.c.query)
                .join(subscribers, subscribers.c.id == topics.c.subscriber_id)
                .where(wanted)
                .order_by(topics.c.subscriber_id, topics.c.position)
            ):
                found.setdefault(row.subscriber_id, []).append(Topic(row.name, row.query))
        return [
            DeliveryState(
                subscriber=self._subscriber_row(r, found.get(r.id, ())),
                watermark=r.watermark,
                last_slot=r.last_slot,
            )
            for r in rows
        ]

    def papers_after(self, paper_id: int) -> list[StoredPaper]:
        """Papers with an id above `paper_id` (stored after that one), oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(papers).where(papers.c.id > paper_id).order_by(papers.c.id))
            return [_paper(r) for r in rows]

    def delivered_pairs(
        self, subscriber_ids: Sequence[int], paper_ids: Sequence[int]
    ) -> set[tuple[int, int]]:
        """Which of these (subscriber, paper) pairs are already in the delivery ledger."""
        found: set[tuple[int, int]] = set()
        if not subscriber_ids or not paper_ids:
            return found
        with self._read() as conn:
            for chunk in _chunks(list(paper_ids)):
                rows = conn.execute(
                    select(deliveries.c.subscriber_id, deliveries.c.paper_id).where(
                        deliveries.c.paper_id.in_(chunk)
                    )
                )
                wanted = set(subscriber_ids)
                found.update((s, p) for s, p in rows if s in wanted)
        return found

    def record_plans(
        self,
        plans: Sequence[tuple[int, str, Sequence[LedgerItem], int, datetime, datetime | None]],
        *,
        now: datetime,
        message_id: Callable[[int], str],
        chunk: int = 500,
    ) -> list[int]:
        """Record digests and progress: (subscriber_id, kind, items, watermark, slot, next_due).

        Each digest is written with its ledger rows and the subscriber's new watermark and slot
        in one transaction (several subscribers share one, for speed), so a crash leaves each
        either wholly recorded or not at all. Email digests start `queued`; feed digests are
        delivered by being recorded (`sent`). An empty item list only advances the subscriber.
        The Message-ID derives from the digest id, so a repeat after a crash is recognisable.
        """
        now = _utc(now)
        created: list[int] = []
        for start in range(0, len(plans), chunk):
            part = plans[start : start + chunk]
            with self._write() as conn:
                # A few executemany statements per chunk, not four statements per subscriber
                # (profiled: recording 100k digests one by one took minutes on PostgreSQL).
                created.extend(
                    self._insert_digests(
                        conn, [(p[0], p[1], p[2]) for p in part if p[2]], now, message_id
                    )
                )
                self._advance_many(conn, [(p[0], p[3], p[4], p[5]) for p in part])
        return created

    def _insert_digests(
        self,
        conn: Connection,
        wanted: Sequence[tuple[int, str, Sequence[LedgerItem]]],
        now: datetime,
        message_id: Callable[[int], str],
    ) -> list[int]:
        """Insert digests (subscriber_id, kind, items) with their ledger rows; return their ids."""
        if not wanted:
            return []
        stamp = now.timestamp()
        rows = [
            {
                "subscriber_id": subscriber_id,
                "kind": kind,
                # Unique placeholder until the id is known; replaced in this transaction.
                "message_id": f"<pending-{subscriber_id}-{stamp}>",
                "status": "sent" if kind == "feed" else "queued",
                "created_at": now,
                "sent_at": now if kind == "feed" else None,
                "next_attempt_at": now,
            }
            for subscriber_id, kind, _items in wanted
        ]
        # RETURNING gives (id, subscriber_id) pairs, so row order does not matter.
        stmt = insert(digests).returning(digests.c.id, digests.c.subscriber_id)
        ids = {r.subscriber_id: r.id for r in conn.execute(stmt, rows)}
        conn.execute(
            update(digests)
            .where(digests.c.id == bindparam("b_id"))
            .values(message_id=bindparam("b_mid")),
            [{"b_id": i, "b_mid": message_id(i)} for i in ids.values()],
        )
        conn.execute(
            insert(deliveries),
            [
                {
                    "subscriber_id": subscriber_id,
                    "paper_id": item.paper_id,
                    "digest_id": ids[subscriber_id],
                    "topic": item.topics[0] if item.topics else None,
                    "topics": json.dumps(list(item.topics)),
                    "terms": json.dumps(list(item.terms)),
                    "score": item.score,
                    "delivered_at": now,
                }
                for subscriber_id, _kind, items in wanted
                for item in items
            ],
        )
        return [ids[subscriber_id] for subscriber_id, _kind, _items in wanted]

    def _advance_many(
        self, conn: Connection, progress: Sequence[tuple[int, int, datetime, datetime | None]]
    ) -> None:
        """Advance subscribers: (subscriber_id, watermark, slot handled, next due time)."""
        if not progress:
            return
        larger = func.max if self.dialect == "sqlite" else func.greatest
        conn.execute(
            update(subscribers)
            .where(subscribers.c.id == bindparam("b_id"))
            .values(
                watermark=larger(subscribers.c.watermark, bindparam("b_watermark")),
                last_slot=bindparam("b_slot"),
                next_due_at=bindparam("b_next"),
            ),
            [
                {
                    "b_id": sid,
                    "b_watermark": watermark,
                    "b_slot": _utc(slot),
                    "b_next": _utc(next_due) if next_due else None,
                }
                for sid, watermark, slot, next_due in progress
            ],
        )

    def claim_digests(
        self, worker: str, *, limit: int, lease_until: datetime, now: datetime
    ) -> list[int]:
        """Claim up to `limit` email digests that are due: queued, or sending with a lapsed lease.

        On PostgreSQL concurrent workers skip each other's rows (FOR UPDATE SKIP LOCKED); on
        SQLite the write transaction itself serialises claimers.
        """
        now = _utc(now)
        due = (digests.c.kind == "email") & (
            ((digests.c.status == "queued") & (digests.c.next_attempt_at <= now))
            | ((digests.c.status == "sending") & (digests.c.lease_until < now))
        )
        pick = select(digests.c.id).where(due).order_by(digests.c.id).limit(limit)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        with self._write() as conn:
            ids = [r.id for r in conn.execute(pick)]
            if ids:
                conn.execute(
                    update(digests)
                    .where(digests.c.id.in_(ids))
                    .values(status="sending", claimed_by=worker, lease_until=_utc(lease_until))
                )
        return ids

    def renew_claims(
        self, digest_ids: Sequence[int], worker: str, *, lease_until: datetime
    ) -> set[int]:
        """Extend this worker's lease on claimed digests; return the ids it still holds.

        A digest missing from the answer was taken over after the lease lapsed (a stalled
        worker): the caller must not send it, the new holder will.
        """
        if not digest_ids:
            return set()
        held = (
            digests.c.id.in_(list(digest_ids)),
            digests.c.claimed_by == worker,
            digests.c.status == "sending",
        )
        with self._write() as conn:
            conn.execute(update(digests).where(*held).values(lease_until=_utc(lease_until)))
            return set(conn.scalars(select(digests.c.id).where(*held)))

    def release_claims(self, digest_ids: Sequence[int], worker: str) -> None:
        """Give back claimed digests not yet sent (a graceful stop), so others take them now."""
        if not digest_ids:
            return
        with self._write() as conn:
            conn.execute(
                update(digests)
                .where(
                    digests.c.id.in_(list(digest_ids)),
                    digests.c.claimed_by == worker,
                    digests.c.status == "sending",
                )
                .values(status="queued", claimed_by=None, lease_until=None)
            )

    def claim_holders(self) -> list[str]:
        """Who holds in-flight digests (`host:pid` of each sender with a claim)."""
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(digests.c.claimed_by)
                    .where(digests.c.status == "sending", digests.c.claimed_by.is_not(None))
                    .distinct()
                )
            )

    def release_claims_of(self, worker: str) -> int:
        """Return a dead sender's in-flight digests to the queue at once (no lease wait)."""
        with self._write() as conn:
            return conn.execute(
                update(digests)
                .where(digests.c.status == "sending", digests.c.claimed_by == worker)
                .values(status="queued", claimed_by=None, lease_until=None)
            ).rowcount

    def release_all_claims(self) -> int:
        """Return every in-flight digest to the queue: only for the sole sender after a crash."""
        with self._write() as conn:
            return conn.execute(
                update(digests)
                .where(digests.c.status == "sending")
                .values(status="queued", claimed_by=None, lease_until=None)
            ).rowcount

    def digest_record(self, digest_id: int) -> DigestRecord:
        """A recorded digest with its subscriber and ledger items, best score first."""
        record = self.digest_records([digest_id]).get(digest_id)
        if record is None:
            with self._read() as conn:
                exists = conn.scalar(select(digests.c.id).where(digests.c.id == digest_id))
            if exists is None:
                raise StoreError(f"digest {digest_id} does not exist")
            raise StoreError(f"digest {digest_id}: its subscriber no longer exists")
        return record

    def digest_records(self, digest_ids: Sequence[int]) -> dict[int, DigestRecord]:
        """Many recorded digests at once (a worker's batch), by id, in a few queries.

        Digests that do not exist, or whose subscriber no longer does, are absent.
        """
        wanted = list(dict.fromkeys(digest_ids))
        heads: dict[int, Any] = {}
        rows: dict[int, list[Any]] = {i: [] for i in wanted}
        with self._read() as conn:
            for chunk in _chunks(wanted):
                for head in conn.execute(select(digests).where(digests.c.id.in_(chunk))):
                    heads[head.id] = head
                for row in conn.execute(
                    select(
                        deliveries.c.paper_id.label("id"),
                        deliveries.c.digest_id.label("d_digest"),
                        deliveries.c.topics.label("d_topics"),
                        deliveries.c.terms.label("d_terms"),
                        deliveries.c.score.label("d_score"),
                    )
                    .where(deliveries.c.digest_id.in_(chunk))
                    .order_by(
                        deliveries.c.digest_id, deliveries.c.score.desc(), deliveries.c.paper_id
                    )
                ):
                    rows[row.d_digest].append(row)
            # A batch's digests share most of their papers: each is read (and built) once.
            paper_ids = sorted({r.id for items in rows.values() for r in items})
            by_id: dict[int, StoredPaper] = {}
            for chunk in _chunks(paper_ids):
                for row in conn.execute(select(papers).where(papers.c.id.in_(chunk))):
                    by_id[row.id] = _paper(row)
            sub_ids = sorted({h.subscriber_id for h in heads.values()})
            subs: dict[int, Subscriber] = {}
            found = self._topics_of(conn, sub_ids)
            for chunk in _chunks(sub_ids):
                for row in conn.execute(select(subscribers).where(subscribers.c.id.in_(chunk))):
                    subs[row.id] = self._subscriber_row(row, found.get(row.id, ()))
        return {
            head.id: DigestRecord(
                id=head.id,
                subscriber=subs[head.subscriber_id],
                kind=head.kind,
                status=head.status,
                message_id=head.message_id,
                created_at=head.created_at,
                attempts=head.attempts,
                items=[(by_id[r.id], _ledger_item(r)) for r in rows[head.id]],
            )
            for head in (heads[i] for i in wanted if i in heads)
            if head.subscriber_id in subs
        }

    def digest_attempts(self, digest_id: int) -> int:
        """How many times sending this digest was tried and ended (sent, retried, failed)."""
        with self._read() as conn:
            return conn.scalar(select(digests.c.attempts).where(digests.c.id == digest_id)) or 0

    def mark_digest_sent(self, digest_id: int, *, now: datetime) -> None:
        """The transport accepted the digest: it is never sent again."""
        with self._write() as conn:
            conn.execute(
                update(digests)
                .where(digests.c.id == digest_id)
                .values(
                    status="sent",
                    sent_at=_utc(now),
                    attempts=digests.c.attempts + 1,
                    claimed_by=None,
                    lease_until=None,
                    last_error=None,
                )
            )

    def retry_digest(self, digest_id: int, error: str, *, next_attempt_at: datetime) -> None:
        """A temporary failure: back to the queue, to be tried again at `next_attempt_at`."""
        with self._write() as conn:
            conn.execute(
                update(digests)
                .where(digests.c.id == digest_id)
                .values(
                    status="queued",
                    attempts=digests.c.attempts + 1,
                    next_attempt_at=_utc(next_attempt_at),
                    claimed_by=None,
                    lease_until=None,
                    last_error=error[:2000],
                )
            )

    def fail_digest(self, digest_id: int, error: str, *, now: datetime) -> None:
        """Out of retries: the digest stays failed and visible to the admin."""
        with self._write() as conn:
            conn.execute(
                update(digests)
                .where(digests.c.id == digest_id)
                .values(
                    status="failed",
                    attempts=digests.c.attempts + 1,
                    claimed_by=None,
                    lease_until=None,
                    last_error=error[:2000],
                )
            )

    def bounce_digest(self, digest_id: int, error: str, *, max_bounces: int) -> bool:
        """A permanent failure: record the bounce; True if the subscriber is now 'bouncing'."""
        with self._write() as conn:
            sub_id = conn.scalar(select(digests.c.subscriber_id).where(digests.c.id == digest_id))
            conn.execute(
                update(digests)
                .where(digests.c.id == digest_id)
                .values(
                    status="bounced",
                    attempts=digests.c.attempts + 1,
                    claimed_by=None,
                    lease_until=None,
                    last_error=error[:2000],
                )
            )
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == sub_id)
                .values(bounces=subscribers.c.bounces + 1)
            )
            bounces = conn.scalar(select(subscribers.c.bounces).where(subscribers.c.id == sub_id))
            if bounces is not None and bounces >= max_bounces:
                conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id == sub_id, subscribers.c.status == "active")
                    .values(status="bouncing", updated_at=datetime.now(UTC))
                )
                return True
        return False

    def digest_status_counts(self) -> dict[str, int]:
        """Email digests per status (queued, sending, sent, failed, bounced)."""
        counts = dict.fromkeys(DIGEST_STATUSES, 0)
        with self._read() as conn:
            for status, n in conn.execute(
                select(digests.c.status, func.count())
                .where(digests.c.kind == "email")
                .group_by(digests.c.status)
            ):
                counts[status] = n
        return counts

    def digest_ids_by_status(self, status: str) -> list[int]:
        """Ids of email digests in a status, oldest first (tests and `status`)."""
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(digests.c.id)
                    .where(digests.c.kind == "email", digests.c.status == status)
                    .order_by(digests.c.id)
                )
            )

    def subscribers_with_deliveries_since(self, ts: datetime | None) -> list[Subscriber]:
        """Subscribers whose ledger grew after `ts` (all with a ledger when None): feed rewrites."""
        stmt = select(deliveries.c.subscriber_id).distinct()
        if ts is not None:
            stmt = stmt.where(deliveries.c.delivered_at > _utc(ts))
        with self._read() as conn:
            ids = list(conn.scalars(stmt))
        return [s for s in (self.subscriber_by_id(i) for i in ids) if s is not None]

    def latest_delivery_time(self) -> datetime | None:
        """When the ledger last grew (None when empty)."""
        with self._read() as conn:
            return conn.scalar(select(func.max(deliveries.c.delivered_at)))

    def ledger_entries(
        self, subscriber_id: int, limit: int
    ) -> list[tuple[StoredPaper, LedgerItem, datetime]]:
        """A subscriber's ledger, newest first: (paper, why it matched, when), at most `limit`."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    papers,
                    deliveries.c.topics.label("d_topics"),
                    deliveries.c.terms.label("d_terms"),
                    deliveries.c.score.label("d_score"),
                    deliveries.c.delivered_at.label("d_at"),
                )
                .join(deliveries, deliveries.c.paper_id == papers.c.id)
                .where(deliveries.c.subscriber_id == subscriber_id)
                .order_by(deliveries.c.delivered_at.desc(), papers.c.id.desc())
                .limit(limit)
            )
            return [(_paper(r), _ledger_item(r), r.d_at) for r in rows]

    # -- web --

    def papers_of_recent_dumps(self, dumps_count: int) -> list[StoredPaper]:
        """Every paper seen in the latest `dumps_count` stored dumps, newest first seen first."""
        with self._read() as conn:
            recent = (
                select(dumps.c.id)
                .where(dumps.c.status == "stored")
                .order_by(dumps.c.id.desc())
                .limit(dumps_count)
                .subquery()
            )
            seen = select(sightings.c.paper_id).where(sightings.c.dump_id.in_(select(recent.c.id)))
            rows = conn.execute(
                select(papers)
                .where(papers.c.id.in_(seen))
                .order_by(papers.c.first_seen.desc(), papers.c.id.desc())
            )
            return [_paper(r) for r in rows]

    def recent_digests(self, limit: int = 20, *, status: str | None = None) -> list[DigestRow]:
        """The latest digests (optionally of one status), newest first, with paper counts."""
        counts = (
            select(deliveries.c.digest_id, func.count().label("n"))
            .group_by(deliveries.c.digest_id)
            .subquery()
        )
        stmt = (
            select(
                digests.c.id,
                subscribers.c.email,
                digests.c.kind,
                digests.c.status,
                digests.c.created_at,
                digests.c.sent_at,
                digests.c.attempts,
                digests.c.last_error,
                func.coalesce(counts.c.n, 0).label("papers"),
            )
            .join(subscribers, subscribers.c.id == digests.c.subscriber_id)
            .outerjoin(counts, counts.c.digest_id == digests.c.id)
            .order_by(digests.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            stmt = stmt.where(digests.c.status == status)
        with self._read() as conn:
            return [DigestRow(*r) for r in conn.execute(stmt)]

    # -- daemon lock --

    def try_daemon_lock(self) -> Connection | None:
        """PostgreSQL: take the daemon's session advisory lock; None if another session holds it.

        The lock lives as long as the returned connection (autocommit, so it never sits idle in a
        transaction): keep it open for the daemon's life, give it to `release_daemon_lock`.
        """
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_LOCK_DAEMON})
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
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_DAEMON})
        with contextlib.suppress(SQLAlchemyError):
            conn.close()


# --- helpers -------------------------------------------------------------------------------------


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


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except SQLAlchemyError:
        return "<invalid URL>"


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]


def _dump(row: Any) -> DumpRecord:
    return DumpRecord(
        id=row.id,
        name=row.name,
        sha256=row.sha256,
        size=row.size,
        received_at=row.received_at,
        status=row.status,
        papers=row.papers,
        new_papers=row.new_papers,
        error=row.error,
        layout=row.layout,
        captured_on=row.captured_on,
    )


def _paper(row: Any) -> StoredPaper:
    return StoredPaper(
        id=row.id,
        key=row.key,
        title=row.title,
        abstract=row.abstract,
        first_seen=row.first_seen,
        authors=row.authors,
        organization=row.organization,
        organization_id=row.organization_id,
        published=row.published,
        upvotes=row.upvotes,
    )


def _ledger_item(row: Any) -> LedgerItem:
    """Why a paper is in a ledger row selected with d_topics, d_terms and d_score labels."""
    return LedgerItem(
        paper_id=row.id,
        topics=tuple(json.loads(row.d_topics or "[]")),
        terms=tuple(json.loads(row.d_terms or "[]")),
        score=row.d_score or 0.0,
    )
