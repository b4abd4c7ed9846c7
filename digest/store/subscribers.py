"""Subscribers with their topics, and their status history (subscriber_events).

Every store method that creates a subscriber or changes a status writes a subscriber_events row in
the same transaction, with `how` the change came about (models.StatusChange).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from digest.errors import DigestError, StoreError, ValidationError
from digest.models import (
    CADENCES,
    STATUSES,
    Cadence,
    StatusChange,
    Subscriber,
    SubscriberStatus,
    Topic,
)
from digest.query import compiled_form
from digest.store.base import MAX_ID, StoreBase, chunks, inserted_id, utc
from digest.store.engine import reason
from digest.store.meta import meta
from digest.store.papers import papers
from digest.store.records import FeedbackRecord, SubscriberEvent, Suppression
from digest.store.schema import UtcDateTime, in_list, metadata

VERDICTS = ("like", "dislike")

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
    # Added by migration 3: when a confirmation email (sign-up, re-subscribe) was last sent, so
    # an address gets at most one per web.confirm_interval_minutes, across restarts.
    Column("confirm_sent_at", UtcDateTime),
    CheckConstraint(f"status IN ({in_list(STATUSES)})", name="ck_subscribers_status"),
    CheckConstraint(f"cadence IN ({in_list(CADENCES)})", name="ck_subscribers_cadence"),
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
    # Added by migration 7: the query compiled when the topic is saved (query.encode_query), so
    # a cycle decodes it instead of parsing; NULL or stale (another compiler): compiled again
    # by the queue stage and rewritten (save_topic_forms)
    Column("compiled", LargeBinary),
)
Index("ix_topics_subscriber", topics.c.subscriber_id, topics.c.position)

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
    CheckConstraint(f"verdict IN ({in_list(VERDICTS)})", name="ck_feedback_verdict"),
)

# Added by migration 3: addresses wiped at the person's request, kept only as a hash of the
# normalised address (sha256 hex) with when and why, so no admin path re-adds them.
suppressions = Table(
    "suppressions",
    metadata,
    Column("email_hash", String(64), primary_key=True, autoincrement=False),
    Column("at", UtcDateTime, nullable=False),
    Column("reason", Text, nullable=False),
)


# Columns a subscriber edit may change; `since` moves only with an explicit backfill. The status
# changes through set_subscriber_status, which keeps the status history.
SUBSCRIBER_FIELDS = ("email", "name", "cadence", "time", "tz", "weekday", "since")
_SCHEDULE_FIELDS = {"cadence", "time", "tz", "weekday"}


class SubscriberStore(StoreBase):
    """Subscribers, their topics and status history."""

    def insert_subscriber(
        self, sub: Subscriber, *, watermark: int = 0, how: StatusChange
    ) -> Subscriber:
        """Store a new subscriber with its topics; ValidationError if the email is taken."""
        try:
            with self._write() as conn:
                new_id = inserted_id(conn, insert(subscribers).values(**_new_row(sub, watermark)))
                _insert_topics(conn, new_id, sub.topics)
                record_events(conn, [(new_id, None, sub.status)], how, at=utc(sub.created_at))
        except IntegrityError as exc:
            raise _subscriber_conflict(exc, sub.email) from None
        found = self.subscriber_by_id(new_id)
        assert found is not None
        return found

    def insert_subscribers(
        self, subs: Sequence[Subscriber], *, watermark: int = 0, how: StatusChange
    ) -> int:
        """Store many new, already validated subscribers with their topics in one transaction
        (bulk loads, benchmarks); ValidationError if an email is taken. Returns how many."""
        rows = [_new_row(s, watermark) for s in subs]
        if not rows:
            return 0
        by_email = {s.email: s for s in subs}
        try:
            with self._write() as conn:
                # RETURNING gives (id, email) pairs, so row order does not matter.
                stmt = insert(subscribers).returning(subscribers.c.id, subscribers.c.email)
                ids = {r.email: r.id for r in conn.execute(stmt, rows)}
                topic_rows = [
                    _topic_row(ids[email], i, t)
                    for email, s in by_email.items()
                    for i, t in enumerate(s.topics)
                ]
                if topic_rows:
                    conn.execute(insert(topics), topic_rows)
                record_events(
                    conn,
                    [(ids[email], None, s.status) for email, s in by_email.items()],
                    how,
                    at=datetime.now(UTC),
                )
        except IntegrityError as exc:
            raise _subscriber_conflict(exc, "a subscriber of the batch") from None
        return len(rows)

    def update_subscriber(
        self,
        subscriber_id: int,
        fields: dict[str, Any],
        topic_list: Sequence[Topic] | None = None,
    ) -> bool:
        """Change the given columns and, when given, replace the topics; False if unknown id."""
        unknown = set(fields) - set(SUBSCRIBER_FIELDS)
        if unknown:
            raise StoreError(f"subscriber columns {sorted(unknown)} cannot be edited")
        values = dict(fields)
        if values.get("since") is not None:
            values["since"] = utc(values["since"])
        values["updated_at"] = datetime.now(UTC)
        if _SCHEDULE_FIELDS & set(fields):
            values["next_due_at"] = None  # the schedule changed: work the next slot out again
        try:
            with self._write() as conn:
                done = conn.execute(
                    update(subscribers).where(subscribers.c.id == subscriber_id).values(**values)
                ).rowcount
                if not done:
                    return False
                if topic_list is not None:
                    _carry_feedback(conn, subscriber_id, [t.name for t in topic_list])
                    conn.execute(topics.delete().where(topics.c.subscriber_id == subscriber_id))
                    _insert_topics(conn, subscriber_id, topic_list)
        except IntegrityError as exc:
            raise _subscriber_conflict(exc, str(fields.get("email", ""))) from None
        return True

    def set_subscriber_status(
        self,
        subscriber_id: int,
        status: SubscriberStatus,
        *,
        how: StatusChange,
        reset_watermark: bool = False,
    ) -> bool:
        """Set the status; with reset_watermark, papers stored until now are no longer pending."""
        now = datetime.now(UTC)
        with self._write() as conn:
            old = conn.scalar(select(subscribers.c.status).where(subscribers.c.id == subscriber_id))
            if old is None:
                return False
            values: dict[str, Any] = {"status": status, "next_due_at": None, "updated_at": now}
            if reset_watermark:
                values["watermark"] = conn.scalar(select(func.max(papers.c.id))) or 0
            conn.execute(
                update(subscribers).where(subscribers.c.id == subscriber_id).values(**values)
            )
            if old != status:
                record_events(conn, [(subscriber_id, old, status)], how, at=now)
        return True

    def reset_watermark(self, subscriber_id: int, paper_id: int) -> None:
        """Mark papers up to `paper_id` as not pending for this subscriber."""
        with self._write() as conn:
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == subscriber_id)
                .values(watermark=paper_id, updated_at=datetime.now(UTC))
            )

    def save_topic_forms(self, rows: Sequence[tuple[int, int, str, bytes]]) -> None:
        """Rewrite topics' compiled forms, (subscriber id, position, query, form) rows, in one
        statement; a topic whose query changed meanwhile is left as it is."""
        if not rows:
            return
        stmt = (
            update(topics)
            .where(
                topics.c.subscriber_id == bindparam("b_sid"),
                topics.c.position == bindparam("b_pos"),
                topics.c.query == bindparam("b_query"),
            )
            .values(compiled=bindparam("b_form"))
        )
        params = [{"b_sid": sid, "b_pos": pos, "b_query": q, "b_form": form}
                  for sid, pos, q, form in rows]  # fmt: skip
        with self._write() as conn:
            conn.execute(stmt, params)

    def unsubscribe_token(self, token: str, *, how: StatusChange) -> bool:
        """Unsubscribe whoever holds this token (idempotent); False if no one does."""
        gone = SubscriberStatus.UNSUBSCRIBED
        now = datetime.now(UTC)
        with self._write() as conn:
            found = conn.execute(
                select(subscribers.c.id, subscribers.c.status).where(subscribers.c.token == token)
            ).first()
            if found is None:
                return False
            if found.status != gone:
                conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id == found.id)
                    .values(status=gone, updated_at=now)
                )
                record_events(conn, [(found.id, found.status, gone)], how, at=now)
        return True

    def delete_subscriber(self, subscriber_id: int, *, suppress: Suppression | None = None) -> bool:
        """Delete a subscriber with their topics, digests, ledger rows, history and feedback;
        False if unknown. With `suppress`, its suppression entry is written in the same
        transaction (replacing an older one for the same hash)."""
        with self._write() as conn:
            this = subscribers.c.id == subscriber_id
            token = conn.scalar(select(subscribers.c.token).where(this))
            if token is not None:
                # Only a hash of the random feed token stays: its feed answers 410 Gone, so
                # feed readers stop polling (a 404 they retry for ever).
                conn.execute(
                    self._dialect_insert(meta)
                    .values(key=_gone_key(token), value=datetime.now(UTC).isoformat())
                    .on_conflict_do_nothing(index_elements=[meta.c.key])
                )
            if suppress is not None:
                conn.execute(
                    suppressions.delete().where(suppressions.c.email_hash == suppress.email_hash)
                )
                conn.execute(
                    insert(suppressions).values(
                        email_hash=suppress.email_hash, at=utc(suppress.at), reason=suppress.reason
                    )
                )
            # Explicit deletes: the cascade needs foreign keys on, which only we guarantee.
            # Every table with a subscriber_id, dependents first (deliveries before digests);
            # a digest's left-out papers (no subscriber_id of their own) go with it.
            extras = metadata.tables["digest_extras"]
            own = metadata.tables["digests"]
            conn.execute(
                extras.delete().where(
                    extras.c.digest_id.in_(
                        select(own.c.id).where(own.c.subscriber_id == subscriber_id)
                    )
                )
            )
            for table in reversed(metadata.sorted_tables):
                if "subscriber_id" not in table.c:
                    continue
                conn.execute(table.delete().where(table.c.subscriber_id == subscriber_id))
            done = conn.execute(
                subscribers.delete().where(subscribers.c.id == subscriber_id)
            ).rowcount
        return bool(done)

    def feed_gone(self, token: str) -> bool:
        """Whether a feed token belonged to a subscriber since removed (its feed is Gone)."""
        with self._read() as conn:
            return conn.scalar(select(meta.c.key).where(meta.c.key == _gone_key(token))) is not None

    def suppression(self, email_hash: str) -> Suppression | None:
        """The suppression entry of this address hash, or None."""
        with self._read() as conn:
            row = conn.execute(
                select(suppressions).where(suppressions.c.email_hash == email_hash)
            ).first()
        return Suppression(row.email_hash, row.at, row.reason) if row else None

    def lift_suppression(self, email_hash: str) -> bool:
        """Remove the suppression of this address hash; False if there was none."""
        with self._write() as conn:
            done = conn.execute(
                suppressions.delete().where(suppressions.c.email_hash == email_hash)
            ).rowcount
        return bool(done)

    def confirmation_sent_at(self, subscriber_id: int) -> datetime | None:
        """When a confirmation email was last sent to this subscriber (None: never)."""
        with self._read() as conn:
            return conn.scalar(
                select(subscribers.c.confirm_sent_at).where(subscribers.c.id == subscriber_id)
            )

    def claim_confirmation(self, subscriber_id: int, now: datetime, not_since: datetime) -> bool:
        """Record that a confirmation email goes out now, unless one went out after
        `not_since`; True if the caller should send it (atomic: one sender wins)."""
        now, not_since = utc(now), utc(not_since)
        with self._write() as conn:
            done = conn.execute(
                update(subscribers)
                .where(
                    subscribers.c.id == subscriber_id,
                    (subscribers.c.confirm_sent_at.is_(None))
                    | (subscribers.c.confirm_sent_at <= not_since),
                )
                .values(confirm_sent_at=now)
            ).rowcount
        return bool(done)

    def release_confirmation(self, subscriber_id: int) -> None:
        """Forget the last confirmation time (its email could not be sent)."""
        with self._write() as conn:
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == subscriber_id)
                .values(confirm_sent_at=None)
            )

    def feedback_of(self, subscriber_id: int) -> list[FeedbackRecord]:
        """A subscriber's verdicts on papers, oldest first, with the papers' titles."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    feedback.c.topic,
                    feedback.c.verdict,
                    feedback.c.at,
                    feedback.c.paper_id,
                    papers.c.title,
                )
                .join(papers, papers.c.id == feedback.c.paper_id)
                .where(feedback.c.subscriber_id == subscriber_id)
                .order_by(feedback.c.id)
            )
            return [FeedbackRecord(r.title, r.topic, r.verdict, r.at, r.paper_id) for r in rows]

    def subscriber_by_id(self, subscriber_id: int) -> Subscriber | None:
        """The subscriber with this id, with topics, or None."""
        if not 0 < subscriber_id <= MAX_ID:  # a URL may carry any number; no row has it
            return None
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
        status: SubscriberStatus | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[Subscriber]:
        """Subscribers with their topics, by email; `search` matches email or name, any case."""
        stmt = select(subscribers).order_by(subscribers.c.email)
        for cond in _subscriber_filter(search, status):
            stmt = stmt.where(cond)
        if offset:
            stmt = stmt.offset(offset)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = list(conn.execute(stmt))
            by_id = topics_of(conn, [r.id for r in rows])
        return [subscriber_row(r, by_id.get(r.id, ())) for r in rows]

    def count_subscribers(
        self, *, search: str | None = None, status: SubscriberStatus | None = None
    ) -> int:
        """How many subscribers `list_subscribers` would give without offset and limit."""
        stmt = select(func.count()).select_from(subscribers)
        for cond in _subscriber_filter(search, status):
            stmt = stmt.where(cond)
        with self._read() as conn:
            return conn.scalar(stmt) or 0

    def subscriber_status_counts(self) -> dict[str, int]:
        """Subscribers per status, every status present (0 when none)."""
        counts: dict[str, int] = {s: 0 for s in STATUSES}
        with self._read() as conn:
            rows = conn.execute(
                select(subscribers.c.status, func.count()).group_by(subscribers.c.status)
            )
            for status, n in rows:
                counts[SubscriberStatus(status)] = n
        return counts

    def subscriber_events(self, subscriber_id: int) -> list[SubscriberEvent]:
        """A subscriber's status history, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(subscriber_events)
                .where(subscriber_events.c.subscriber_id == subscriber_id)
                .order_by(subscriber_events.c.id)
            )
            return [
                SubscriberEvent(
                    subscriber_id=r.subscriber_id,
                    at=r.at,
                    old_status=SubscriberStatus(r.old_status) if r.old_status else None,
                    new_status=SubscriberStatus(r.new_status),
                    how=StatusChange(r.how),
                )
                for r in rows
            ]

    def _one_subscriber(self, cond: Any) -> Subscriber | None:
        with self._read() as conn:
            row = conn.execute(select(subscribers).where(cond)).first()
            if row is None:
                return None
            found = topics_of(conn, [row.id])
        return subscriber_row(row, found.get(row.id, ()))


# --- helpers the ledger shares -----------------------------------------------------------------


def _gone_key(token: str) -> str:
    return "feed.gone." + hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


def record_events(
    conn: Connection,
    changes: Sequence[tuple[int, str | None, str]],
    how: StatusChange,
    *,
    at: datetime,
) -> None:
    """Append status-history rows: (subscriber_id, old status or None when created, new)."""
    if changes:
        conn.execute(
            insert(subscriber_events),
            [
                {
                    "subscriber_id": sid,
                    "at": at,
                    "old_status": old,
                    "new_status": new,
                    "how": StatusChange(how),
                }
                for sid, old, new in changes
            ],
        )


def topic_select() -> Select[Any]:
    """Topics with their feedback in one query: topics LEFT JOIN feedback, a row per topic
    without feedback or per verdict, in subscriber, position and paper order (group_topics)."""
    return (
        select(
            topics.c.subscriber_id,
            topics.c.position,
            topics.c.name,
            topics.c.query,
            topics.c.compiled,
            feedback.c.paper_id,
            feedback.c.verdict,
        )
        .select_from(
            topics.outerjoin(
                feedback,
                and_(
                    feedback.c.subscriber_id == topics.c.subscriber_id,
                    feedback.c.topic == topics.c.name,
                ),
            )
        )
        .order_by(topics.c.subscriber_id, topics.c.position, feedback.c.paper_id)
    )


def group_topics(rows: Iterable[Any], found: dict[int, list[Topic]]) -> dict[int, list[Topic]]:
    """Add the Topics of topic_select rows to `found` (by subscriber id), likes and dislikes
    filled (sorted ids, as the query orders them)."""
    key: tuple[int, int] | None = None
    likes: list[int] = []
    dislikes: list[int] = []
    name = query = ""
    form: bytes | None = None
    sid = 0

    def flush() -> None:
        found.setdefault(sid, []).append(Topic(name, query, tuple(likes), tuple(dislikes), form))

    # Positional (topic_select's column order): a queue pass reads ~250k topic rows, and
    # named access on each was a tenth of loading them (profiled).
    for row_sid, position, row_name, row_query, compiled, paper_id, verdict in rows:
        if key is None or row_sid != sid or position != key[1]:
            if key is not None:
                flush()
            key, sid, name, query = (row_sid, position), row_sid, row_name, row_query
            form = None if compiled is None else bytes(compiled)
            likes, dislikes = [], []
        if verdict == "like":
            likes.append(paper_id)
        elif verdict == "dislike":
            dislikes.append(paper_id)
    if key is not None:
        flush()
    return found


def topics_of(conn: Connection, ids: Sequence[int]) -> dict[int, list[Topic]]:
    """The topics of these subscribers, in their order, with their feedback, by subscriber id."""
    found: dict[int, list[Topic]] = {}
    for chunk in chunks(list(ids)):
        group_topics(conn.execute(topic_select().where(topics.c.subscriber_id.in_(chunk))), found)
    return found


def load_subscribers(conn: Connection, ids: Sequence[int]) -> dict[int, Subscriber]:
    """These subscribers with their topics, by id (unknown ids are absent)."""
    wanted = sorted(set(ids))
    found = topics_of(conn, wanted)
    subs: dict[int, Subscriber] = {}
    for chunk in chunks(wanted):
        for row in conn.execute(
            select(*SUBSCRIBER_COLUMNS).where(subscribers.c.id.in_(chunk))
        ).all():
            subs[row[0]] = subscriber_from(row, found.get(row[0], ()))
    return subs


# Row values to enums by lookup: the delivery queue builds 100k subscribers at a time.
_STATUS = {s.value: s for s in SubscriberStatus}
_CADENCE = {c.value: c for c in Cadence}


def subscriber_row(row: Any, found: Sequence[Topic]) -> Subscriber:
    """A Subscriber from a row of the subscribers table and its topics."""
    return Subscriber(
        id=row.id,
        email=row.email,
        name=row.name,
        status=_STATUS[row.status],
        cadence=_CADENCE[row.cadence],
        time=row.time,
        tz=row.tz,
        weekday=row.weekday,
        created_at=row.created_at,
        token=row.token,
        topics=tuple(found),
        since=row.since,
        bounces=row.bounces,
    )


# What a Subscriber holds, in the order subscriber_from reads (a select may add columns after).
SUBSCRIBER_COLUMNS = tuple(
    subscribers.c[name]
    for name in ("id", "email", "name", "status", "cadence", "time", "tz", "weekday",
                 "created_at", "token", "since", "bounces")
)  # fmt: skip


def subscriber_from(row: Sequence[Any], found: Sequence[Topic]) -> Subscriber:
    """subscriber_row for a row that starts with SUBSCRIBER_COLUMNS, read by position (the
    queue builds 100k of them at a time; named access was half of building each)."""
    sid, email, name, status, cadence, time, tz, weekday, created, token, since, bounces = row[:12]
    return Subscriber(
        sid, email, name, _STATUS[status], _CADENCE[cadence], time, tz, weekday, created, token,
        tuple(found), since, bounces,
    )  # fmt: skip


def _new_row(sub: Subscriber, watermark: int) -> dict[str, Any]:
    return {
        "email": sub.email,
        "name": sub.name,
        "status": sub.status,
        "cadence": sub.cadence,
        "time": sub.time,
        "tz": sub.tz,
        "weekday": sub.weekday,
        "created_at": utc(sub.created_at),
        "since": utc(sub.since) if sub.since else None,
        "token": sub.token,
        "bounces": sub.bounces,
        "updated_at": utc(sub.created_at),
        "watermark": watermark,
    }


def _subscriber_filter(search: str | None, status: str | None) -> list[Any]:
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


def _insert_topics(conn: Connection, subscriber_id: int, items: Sequence[Topic]) -> None:
    if items:
        conn.execute(insert(topics), [_topic_row(subscriber_id, i, t) for i, t in enumerate(items)])


def _topic_row(subscriber_id: int, position: int, topic: Topic) -> dict[str, Any]:
    """A topics row, its query compiled now (the form a cycle decodes instead of parsing)."""
    return {"subscriber_id": subscriber_id, "position": position, "name": topic.name,
            "query": topic.query, "compiled": compiled_form(topic.query)}  # fmt: skip


def _carry_feedback(conn: Connection, subscriber_id: int, new_names: Sequence[str]) -> None:
    """Before topics are replaced: feedback follows a topic renamed in place (same position, old
    name gone, new name not used before) and is dropped with a removed topic."""
    old_names = list(
        conn.scalars(
            select(topics.c.name)
            .where(topics.c.subscriber_id == subscriber_id)
            .order_by(topics.c.position)
        )
    )
    kept, before = set(new_names), set(old_names)
    for old, new in zip(old_names, new_names, strict=False):
        if old != new and old not in kept and new not in before:
            conn.execute(
                update(feedback)
                .where(feedback.c.subscriber_id == subscriber_id, feedback.c.topic == old)
                .values(topic=new)
            )
    conn.execute(
        feedback.delete().where(
            feedback.c.subscriber_id == subscriber_id, feedback.c.topic.not_in(list(kept))
        )
    )


def _subscriber_conflict(exc: IntegrityError, email: str) -> DigestError:
    why = reason(exc).lower()
    if "email" in why or "subscribers_email" in why:
        return ValidationError(f"{email}: already subscribed")
    return StoreError(f"subscriber {email}: {reason(exc)}")
