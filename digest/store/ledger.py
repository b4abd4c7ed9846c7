"""The delivery ledger: who is due, which papers they already had, and recording digests.

A digest is recorded with its ledger rows (deliveries) and the subscriber's progress in one
transaction, so a paper is never put in two digests for one subscriber.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    ColumnElement,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import NULLTYPE

from digest.errors import StoreError
from digest.models import Cadence, DigestKind, DigestStatus, Subscriber, SubscriberStatus, Topic
from digest.store.base import StoreBase, bound, chunks, insert_many, utc
from digest.store.papers import papers, stored_paper
from digest.store.records import (
    ArchivedDigest,
    DeliveryState,
    DigestPage,
    LedgerEntry,
    PlanProgress,
    SentDigest,
    SentPaper,
    ledger_item,
)
from digest.store.rising import (
    insert_rising_deliveries,
    latest_rising_time,
    rising_ledger_entries,
    rising_row,
    rising_subscribers_since,
)
from digest.store.schema import UtcDateTime, in_list, metadata
from digest.store.subscribers import (
    SUBSCRIBER_COLUMNS,
    group_topics,
    load_subscribers,
    subscriber_from,
    subscribers,
    topic_select,
    topics,
)

DIGEST_KINDS = tuple(k.value for k in DigestKind)
DIGEST_STATUSES = tuple(s.value for s in DigestStatus)

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
    # How many papers matched (migration 4): more than the digest's items when it was capped.
    Column("matched", Integer),
    CheckConstraint(f"kind IN ({in_list(DIGEST_KINDS)})", name="ck_digests_kind"),
    CheckConstraint(f"status IN ({in_list(DIGEST_STATUSES)})", name="ck_digests_status"),
)
Index("ix_digests_queue", digests.c.status, digests.c.next_attempt_at)
Index("ix_digests_subscriber", digests.c.subscriber_id, digests.c.created_at)
Index("ix_digests_archive", digests.c.subscriber_id, digests.c.id)  # archive pages, by keyset

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
    Column("why", Text),  # e.g. 'suggested: like "A liked paper"', or passed conditions
)
Index("ix_deliveries_digest", deliveries.c.digest_id)

# The papers a capped digest matched but did not carry (migration 4): its web page lists them
# after its own. Never part of the ledger: they were not delivered.
digest_extras = Table(
    "digest_extras",
    metadata,
    Column(
        "digest_id",
        Integer,
        ForeignKey("digests.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    Column("position", Integer, nullable=False),  # rank among the extras, 0 = best
    Column("topics", Text),
    Column("terms", Text),
    Column("score", Float),
)


def why_columns() -> tuple[Any, ...]:
    """A ledger row's reason and time, labelled as records.ledger_item reads them."""
    return (
        deliveries.c.topics.label("d_topics"),
        deliveries.c.terms.label("d_terms"),
        deliveries.c.why.label("d_why"),
        deliveries.c.score.label("d_score"),
        deliveries.c.delivered_at.label("d_at"),
        literal(False).label("d_rising"),
    )


# A ledger row as records.ledger_entry reads it, positionally: paper, topics, terms, score,
# why, the instant as the driver gives it (records.instant), rising.
LEDGER_ROW = (
    deliveries.c.paper_id,
    deliveries.c.topics,
    deliveries.c.terms,
    deliveries.c.score,
    deliveries.c.why,
    type_coerce(deliveries.c.delivered_at, NULLTYPE),
    literal(False),
)


_RECEIVING = [s for s in SubscriberStatus if s.receives_mail]
# What a DeliveryState reads, by position (not updated_at, next_due_at, confirm_sent_at).
_STATE_COLUMNS = (*SUBSCRIBER_COLUMNS, subscribers.c.watermark, subscribers.c.last_slot)
_SCHEDULED = [c for c in Cadence if c.is_scheduled]
_AS_PAPERS_ARRIVE = [c for c in Cadence if not c.is_scheduled]
_BY_EMAIL = [c for c in Cadence if c != Cadence.FEED]


def _may_be_due(
    due_at: datetime | None, cadences: Sequence[Cadence] | None, ids: Sequence[int] | None
) -> ColumnElement[bool]:
    """Receiving subscribers (of `cadences`, of `ids`) who may be due at `due_at`: instant and
    feed ones with papers stored after their watermark, daily and weekly ones whose next slot
    has come (no `due_at`: all of them)."""
    wanted: ColumnElement[bool] = subscribers.c.status.in_(_RECEIVING)
    if cadences is not None:
        wanted = wanted & subscribers.c.cadence.in_(list(cadences))
    if ids is not None:
        wanted = wanted & subscribers.c.id.in_(list(ids))
    if due_at is not None:
        newest = select(func.max(papers.c.id)).scalar_subquery()
        wanted = wanted & (
            (
                subscribers.c.cadence.in_(_AS_PAPERS_ARRIVE)
                & (subscribers.c.watermark < func.coalesce(newest, 0))
            )
            | (
                subscribers.c.cadence.in_(_SCHEDULED)
                & (subscribers.c.next_due_at.is_(None) | (subscribers.c.next_due_at <= utc(due_at)))
            )
        )
    return wanted


class LedgerStore(StoreBase):
    """Delivery states, recorded digests and the ledger of delivered papers."""

    def subscribers_for_delivery(
        self,
        *,
        due_at: datetime | None = None,
        after_id: int = 0,
        limit: int | None = None,
        cadences: Sequence[Cadence] | None = None,
        ids: Sequence[int] | None = None,
    ) -> list[DeliveryState]:
        """Active subscribers with topics, each with their paper watermark and last slot.

        With `due_at`, only those who may be due then: instant and feed subscribers with papers
        stored after their watermark, daily and weekly ones whose next slot has come; with
        `cadences` or `ids`, only those (a preview reads one subscriber, not all). By id;
        `after_id` and `limit` give one page (the queue walks 100k subscribers page by page).
        """
        wanted = _may_be_due(due_at, cadences, ids)
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
            # Only what a delivery state holds: each datetime column read is parsed per row.
            rows = conn.execute(
                select(*_STATE_COLUMNS).where(wanted).order_by(subscribers.c.id)
            ).all()
            # One pass over topics instead of chunked IN lists when (nearly) everyone is wanted.
            found: dict[int, list[Topic]] = {}
            result = conn.execute(
                topic_select()
                .join(subscribers, subscribers.c.id == topics.c.subscriber_id)
                .where(wanted)
            )
            # Python rows built in blocks (fetchmany), not a driver call per row (SQLite also
            # steps its cursor per block; psycopg has the whole result already)
            group_topics(itertools.chain.from_iterable(result.partitions(2048)), found)
        return [DeliveryState(subscriber_from(r, found.get(r[0], ())), r[12], r[13]) for r in rows]

    def count_may_be_due(self, *, due_at: datetime | None = None) -> int:
        """How many email digests a queue pass at `due_at` (None: `send --now`) may record: of
        the subscribers subscribers_for_delivery would read, those who get email (not
        feed-only) and have papers stored after their watermark. A daily or weekly slot not
        worked out yet (NULL: a new schedule) is not counted: the pass decides it, and a
        count short of the digests only means the helpers start after the queue stage."""
        newest = select(func.max(papers.c.id)).scalar_subquery()
        wanted = _may_be_due(due_at, _BY_EMAIL, None) & (
            subscribers.c.watermark < func.coalesce(newest, 0)
        )
        if due_at is not None:
            wanted = wanted & ~(
                subscribers.c.cadence.in_(_SCHEDULED) & subscribers.c.next_due_at.is_(None)
            )
        with self._read() as conn:
            return int(conn.scalar(select(func.count()).where(wanted)) or 0)

    def delivered_pairs(
        self, subscriber_ids: Sequence[int], paper_ids: Sequence[int]
    ) -> set[tuple[int, int]]:
        """Which of these (subscriber, paper) pairs are already in the delivery ledger."""
        found: set[tuple[int, int]] = set()
        if not subscriber_ids or not paper_ids:
            return found
        with self._read() as conn:
            for chunk in chunks(list(paper_ids)):
                rows = conn.execute(
                    select(deliveries.c.subscriber_id, deliveries.c.paper_id).where(
                        deliveries.c.paper_id.in_(chunk)
                    )
                )
                wanted = set(subscriber_ids)
                found.update((s, p) for s, p in rows if s in wanted)
        return found

    def delivered_above(self, watermarks: Mapping[int, int]) -> set[tuple[int, int]]:
        """The ledger's (subscriber, paper) pairs whose paper is above that subscriber's
        watermark (`watermarks`: subscriber id -> watermark): the only delivered papers a plan
        must skip, since it never takes a paper at or below the watermark.

        One primary-key range read per distinct watermark and chunk of subscribers (planning
        passes usually hold one or two distinct watermarks: every plan advances its subscriber
        to the same newest paper), so a subscriber with an old watermark (a backfill) costs its
        own ledger rows only, never the other subscribers' whole ledger.
        """
        by_mark: dict[int, list[int]] = {}
        for sid, mark in watermarks.items():
            by_mark.setdefault(mark, []).append(sid)
        found: set[tuple[int, int]] = set()
        with self._read() as conn:
            for mark, ids in sorted(by_mark.items()):
                for chunk in chunks(sorted(ids)):
                    rows = conn.execute(
                        select(deliveries.c.subscriber_id, deliveries.c.paper_id).where(
                            deliveries.c.subscriber_id.in_(chunk), deliveries.c.paper_id > mark
                        )
                    )
                    found.update((s, p) for s, p in rows)
        return found

    def record_plans(
        self,
        plans: Sequence[PlanProgress],
        *,
        now: datetime,
        message_id: Callable[[int], str],
        chunk: int = 5_000,
    ) -> dict[int, int]:
        """Record digests (subscriber, kind, items) and each subscriber's progress; the digests
        created, by subscriber id (a plan made from a stale state records nothing).

        Each digest is written with its ledger rows and the subscriber's new watermark and slot
        in one transaction (several subscribers share one, for speed), so a crash leaves each
        either wholly recorded or not at all. Email digests start `queued`; feed digests are
        delivered by being recorded (`sent`). An empty item list only advances the subscriber.
        The Message-ID derives from the digest id, so a repeat after a crash is recognisable.
        """
        now = utc(now)
        created: dict[int, int] = {}
        for start in range(0, len(plans), chunk):
            part = plans[start : start + chunk]
            # The ledger rows' parents checked in bulk (_check_parents), on SQLite instead of
            # three lookups a row (profiled: a third of inserting a page's ~54k rows); the
            # same clear error on both engines
            with self._write(foreign_keys=False) as conn:
                # A few executemany statements per page of subscribers (the queue's page of
                # 5k is one transaction), not four statements per subscriber (profiled:
                # recording 100k digests one by one took minutes on PostgreSQL; a commit per
                # 500 was a tenth of recording on SQLite). A plan whose subscriber moved on
                # meanwhile (another pass recorded it) is dropped, with its digest: never two
                # digests from one state.
                part = self._still_at(conn, part)
                wanted = [p for p in part if p.items]
                _check_parents(conn, wanted)
                created.update(_insert_digests(conn, wanted, now, message_id))
                self._advance_many(conn, part)
        return created

    def _still_at(self, conn: Connection, plans: Sequence[PlanProgress]) -> list[PlanProgress]:
        """The plans whose subscriber is still at the progress the plan was made from (rows
        locked on PostgreSQL; SQLite's write transaction already excludes other writers)."""
        ids = sorted(p.subscriber_id for p in plans if p.was_watermark is not None)
        if not ids:
            return list(plans)
        at: dict[int, tuple[int, datetime | None]] = {}
        for part in chunks(ids):  # in id order: two passes lock in one order, no deadlock
            stmt = select(
                subscribers.c.id,
                subscribers.c.watermark,
                subscribers.c.last_slot,
                subscribers.c.status,
            ).where(subscribers.c.id.in_(part))
            if self.dialect != "sqlite":
                stmt = stmt.order_by(subscribers.c.id).with_for_update()
            at.update(
                # Someone who paused or unsubscribed since the plan was made gets nothing either.
                (r.id, (r.watermark, r.last_slot))
                for r in conn.execute(stmt)
                if SubscriberStatus(r.status).receives_mail
            )
        return [
            p
            for p in plans
            if p.was_watermark is None
            or at.get(p.subscriber_id) == (p.was_watermark, utc(p.was_slot) if p.was_slot else None)
        ]

    def _advance_many(self, conn: Connection, progress: Sequence[PlanProgress]) -> None:
        """Advance subscribers: watermark, slot handled, next due time."""
        if not progress:
            return
        larger = "max" if self.dialect == "sqlite" else "greatest"
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        # Plain rows to the driver's executemany, each distinct instant bound once (a page's
        # subscribers share a few slots): SQLAlchemy's per-row processing was most of this.
        instant = _binder(conn, subscribers.c.last_slot)
        conn.exec_driver_sql(
            f"UPDATE subscribers SET watermark = {larger}(watermark, {mark}), "
            f"last_slot = {mark}, next_due_at = {mark} WHERE id = {mark}",
            [
                (p.watermark, instant(p.slot), instant(p.next_due), p.subscriber_id)
                for p in progress
            ],
        )

    def subscribers_with_deliveries_since(self, ts: datetime | None) -> list[Subscriber]:
        """Subscribers whose ledger grew after `ts` (all with a ledger when None): feed rewrites."""
        stmt = select(deliveries.c.subscriber_id).distinct()
        if ts is not None:
            stmt = stmt.where(deliveries.c.delivered_at > utc(ts))
        with self._read() as conn:
            ids = list(conn.scalars(stmt))
            known = set(ids)
            ids += [i for i in rising_subscribers_since(conn, ts) if i not in known]
            found = load_subscribers(conn, ids)
        return [found[i] for i in ids if i in found]

    def latest_delivery_time(self) -> datetime | None:
        """When the ledger last grew (None when empty)."""
        with self._read() as conn:
            times = [
                conn.scalar(select(func.max(deliveries.c.delivered_at))),
                latest_rising_time(conn),  # a digest of rising papers only grows no ledger row
            ]
        return max((t for t in times if t is not None), default=None)

    def ledger_entries(self, subscriber_id: int, limit: int) -> list[LedgerEntry]:
        """A subscriber's ledger, newest first (paper, why it matched, when), at most `limit`."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    papers,
                    *why_columns(),
                )
                .join(deliveries, deliveries.c.paper_id == papers.c.id)
                .where(deliveries.c.subscriber_id == subscriber_id)
                .order_by(deliveries.c.delivered_at.desc(), papers.c.id.desc())
                .limit(limit)
            )
            found = [LedgerEntry(stored_paper(r), ledger_item(r), r.d_at) for r in rows]
            # Rising papers came back in a later digest: they are feed items of their own.
            found += rising_ledger_entries(conn, subscriber_id, limit)
        found.sort(key=lambda e: (e.delivered_at, e.paper.id), reverse=True)
        return found[:limit]

    def subscriber_history(self, subscriber_id: int) -> list[SentDigest]:
        """Sent email digests of a subscriber, newest first, each with its papers' titles and
        best topics."""
        with self._read() as conn:
            heads = list(
                conn.execute(
                    select(digests.c.id, digests.c.message_id, digests.c.sent_at)
                    .where(
                        digests.c.subscriber_id == subscriber_id,
                        digests.c.kind == DigestKind.EMAIL,
                        digests.c.status == DigestStatus.SENT,
                    )
                    .order_by(digests.c.sent_at.desc(), digests.c.id.desc())
                )
            )
            items: dict[int, list[SentPaper]] = {h.id: [] for h in heads}
            # The digest's own ranking when the ledger keeps scores, else the order stored.
            order = (
                [deliveries.c.score.desc(), papers.c.id]
                if "score" in deliveries.c
                else [papers.c.id]
            )
            for chunk in chunks(list(items)):
                rows = conn.execute(
                    select(deliveries.c.digest_id, papers.c.title, deliveries.c.topic)
                    .join(papers, papers.c.id == deliveries.c.paper_id)
                    .where(deliveries.c.digest_id.in_(chunk))
                    .order_by(deliveries.c.digest_id, *order)
                )
                for row in rows:
                    items[row.digest_id].append(SentPaper(row.title, row.topic))
        return [SentDigest(h.id, h.message_id, h.sent_at, tuple(items[h.id])) for h in heads]

    def archive_page(
        self, subscriber_id: int, *, before: int | None = None, limit: int = 50
    ) -> list[ArchivedDigest]:
        """A page of a subscriber's sent email digests, newest first, with ids below `before`
        (keyset pagination: one query per page, however long the archive)."""
        shown = (
            select(func.count())
            .select_from(deliveries)
            .where(deliveries.c.digest_id == digests.c.id)
            .scalar_subquery()
        )
        best = (
            select(papers.c.title)
            .join(deliveries, deliveries.c.paper_id == papers.c.id)
            .where(deliveries.c.digest_id == digests.c.id)
            .order_by(deliveries.c.score.desc(), papers.c.id)
            .limit(1)
            .scalar_subquery()
        )
        stmt = (
            select(
                digests.c.id,
                digests.c.sent_at,
                digests.c.matched,
                shown.label("shown"),
                best.label("best"),
            )
            .where(
                digests.c.subscriber_id == subscriber_id,
                digests.c.kind == DigestKind.EMAIL,
                digests.c.status == DigestStatus.SENT,
            )
            .order_by(digests.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(digests.c.id < before)
        with self._read() as conn:
            rows = list(conn.execute(stmt))
        return [
            ArchivedDigest(
                r.id,
                r.sent_at,
                r.shown or 0,
                max(r.matched or 0, r.shown or 0),
                (r.best,) if r.best else (),
            )
            for r in rows
        ]

    def digest_page(self, subscriber_id: int, digest_id: int) -> DigestPage | None:
        """A sent email digest of this subscriber with all its matches: the papers it carried
        (best first), then those its email left out; None if it is not theirs or not sent."""
        with self._read() as conn:
            head = conn.execute(
                select(digests).where(
                    digests.c.id == digest_id,
                    digests.c.subscriber_id == subscriber_id,
                    digests.c.kind == DigestKind.EMAIL,
                    digests.c.status == DigestStatus.SENT,
                )
            ).first()
            if head is None:
                return None
            carried = conn.execute(
                select(
                    papers,
                    *why_columns(),
                )
                .join(deliveries, deliveries.c.paper_id == papers.c.id)
                .where(deliveries.c.digest_id == digest_id)
                .order_by(deliveries.c.score.desc(), papers.c.id)
            )
            items = [LedgerEntry(stored_paper(r), ledger_item(r), r.d_at) for r in carried]
            left_out = conn.execute(
                select(
                    papers,
                    digest_extras.c.topics.label("d_topics"),
                    digest_extras.c.terms.label("d_terms"),
                    digest_extras.c.score.label("d_score"),
                    literal("").label("d_why"),  # a digest's left-out extras keep no why
                    literal(False).label("d_rising"),
                )
                .join(digest_extras, digest_extras.c.paper_id == papers.c.id)
                .where(digest_extras.c.digest_id == digest_id)
                .order_by(digest_extras.c.position)
            )
            extras = [
                LedgerEntry(stored_paper(r), ledger_item(r), head.created_at) for r in left_out
            ]
        matched = max(head.matched or 0, len(items) + len(extras))
        return DigestPage(
            head.id, subscriber_id, head.sent_at, head.created_at, items, extras, matched
        )


def first_digest_id_since(conn: Connection, since: datetime) -> int | None:
    """The lowest digest id recorded at or after `since` (None if none), by a binary search of
    primary-key lookups: digests has no index on created_at (and takes no migration for one),
    and ids grow with the time a digest is recorded, so a recent window is an id range and a
    health check reads that window's rows only, not the whole history."""
    since = utc(since)
    top = conn.scalar(select(func.max(digests.c.id)))
    if top is None:
        return None

    def created(at_least: int) -> datetime | None:  # the first digest from this id on
        return conn.scalar(
            select(digests.c.created_at)
            .where(digests.c.id >= at_least)
            .order_by(digests.c.id)
            .limit(1)
        )

    newest = created(top)
    if newest is None or newest < since:
        return None
    lo, hi = conn.scalar(select(func.min(digests.c.id))) or 0, top  # created(hi) >= since
    while lo < hi:
        mid = (lo + hi) // 2
        at = created(mid)
        if at is not None and at >= since:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _binder(conn: Connection, column: Any) -> Callable[[datetime | None], Any]:
    """A function giving an instant as the driver takes it for `column`, each distinct value
    bound once."""
    seen: dict[datetime, Any] = {}

    def bind(value: datetime | None) -> Any:
        if value is None:
            return None
        got = seen.get(value)
        if got is None:
            got = seen[value] = bound(conn, column, value)
        return got

    return bind


def _new_digest_ids(conn: Connection, count: int) -> list[int]:
    """`count` ids for new digests, in the order the database itself would give them."""
    if conn.dialect.name == "sqlite":
        # The write transaction (BEGIN IMMEDIATE) excludes every other writer, and a rowid
        # table without AUTOINCREMENT gives max(id) + 1: the same ids, taken up front.
        top = conn.scalar(select(func.coalesce(func.max(digests.c.id), 0)))
        return list(range(int(top or 0) + 1, int(top or 0) + 1 + count))
    # The column's own sequence (SERIAL), so concurrent writers never collide.
    rows = conn.exec_driver_sql(
        "SELECT nextval(pg_get_serial_sequence('digests', 'id')) FROM generate_series(1, %s)",
        (count,),
    )
    return sorted(int(r[0]) for r in rows)


def _check_parents(conn: Connection, wanted: Sequence[PlanProgress]) -> None:
    """What the foreign keys check of the plans' rows, in a few queries: every subscriber and
    paper they name exists (their digests are inserted with them). Inside the write
    transaction (SQLite: the write lock; PostgreSQL: the subscribers' rows locked by _still_at,
    papers never deleted while referenced), so no parent goes before the rows are committed."""
    sids = sorted({p.subscriber_id for p in wanted})
    pids = sorted({i.paper_id for p in wanted for i in (*p.items, *p.extra)})
    for table, ids in ((subscribers, sids), (papers, pids)):
        found: set[int] = set()
        for part in chunks(ids):
            found.update(conn.scalars(select(table.c.id).where(table.c.id.in_(part))))
        if len(found) != len(ids):
            missing = ", ".join(map(str, sorted(set(ids) - found)[:5]))
            raise StoreError(f"a digest names no such {table.name[:-1]} (id {missing}): "
                             "nothing of this page was recorded")  # fmt: skip


def _insert_digests(
    conn: Connection,
    wanted: Sequence[PlanProgress],
    now: datetime,
    message_id: Callable[[int], str],
) -> dict[int, int]:
    """Insert the plans' digests with their ledger rows; their ids by subscriber id."""
    if not wanted:
        return {}
    # Ids taken first, so each digest is inserted with its final Message-ID: one executemany
    # of plain rows, no RETURNING and no second pass to replace placeholders (profiled: those
    # two were a fifth of recording).
    ids = dict(zip((p.subscriber_id for p in wanted), _new_digest_ids(conn, len(wanted)),
                   strict=True))  # fmt: skip
    at = bound(conn, deliveries.c.delivered_at, now)  # one instant for every row
    email, feed = DigestKind.EMAIL.value, DigestKind.FEED.value
    queued, sent = DigestStatus.QUEUED.value, DigestStatus.SENT.value
    insert_many(
        conn,
        "digests",
        DIGEST_COLUMNS,
        [
            (
                ids[p.subscriber_id],
                p.subscriber_id,
                feed if p.kind == DigestKind.FEED else email,
                message_id(ids[p.subscriber_id]),
                # A feed digest is delivered by being recorded; an email waits for a sender.
                sent if p.kind == DigestKind.FEED else queued,
                at,
                at if p.kind == DigestKind.FEED else None,
                at,
                p.matched,
            )
            for p in wanted
        ],
    )
    texts: dict[tuple[str, ...], str] = {}  # the same topic and word lists recur in many rows

    def dumps(values: tuple[str, ...]) -> str:
        got = texts.get(values)
        if got is None:
            got = texts[values] = json.dumps(list(values))
        return got

    ledger = [
        (
            p.subscriber_id,
            item.paper_id,
            ids[p.subscriber_id],
            item.topics[0] if item.topics else None,
            dumps(tuple(item.topics)),
            dumps(tuple(item.terms)),
            item.score,
            item.why or None,
            at,
        )
        for p in wanted
        for item in p.items
        if not item.rising
    ]
    if ledger:  # a digest may hold rising papers only
        _insert_rows(conn, "deliveries", DELIVERY_COLUMNS, ledger)
    _record_rising(conn, wanted, ids, now)
    extras = [
        (
            ids[p.subscriber_id],
            item.paper_id,
            position,
            dumps(tuple(item.topics)),
            dumps(tuple(item.terms)),
            item.score,
        )
        for p in wanted
        for position, item in enumerate(p.extra)
    ]
    if extras:
        _insert_rows(conn, "digest_extras", EXTRA_COLUMNS, extras)
    return ids


DIGEST_COLUMNS = ("id", "subscriber_id", "kind", "message_id", "status", "created_at", "sent_at",
                  "next_attempt_at", "matched")  # fmt: skip
DELIVERY_COLUMNS = ("subscriber_id", "paper_id", "digest_id", "topic", "topics", "terms", "score",
                    "why", "delivered_at")  # fmt: skip
EXTRA_COLUMNS = ("digest_id", "paper_id", "position", "topics", "terms", "score")


def _insert_rows(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Many plain rows into a table: COPY on PostgreSQL, a few multi-row INSERTs on SQLite."""
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        # COPY streams the rows in one statement instead of a round trip per batch of rows.
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    insert_many(conn, table, columns, rows)


def _record_rising(
    conn: Connection, wanted: Sequence[PlanProgress], ids: Mapping[int, int], now: datetime
) -> None:
    """The digests' rising papers (already in the ledger, or cut), once per subscriber each."""
    insert_rising_deliveries(
        conn,
        (
            rising_row(p.subscriber_id, ids[p.subscriber_id], item, now)
            for p in wanted
            for item in p.items
            if item.rising
        ),
    )
