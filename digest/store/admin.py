"""The admin's questions: delivery history pages, next deliveries, failures, daily figures.

Every list is a keyset page (`before`/`after` an id, newest first), so a page costs the same at
100k subscribers and deliveries as at ten; each query is served by an existing index
(ix_digests_subscriber, ix_digests_queue, ix_subscribers_due, ix_papers_first_seen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select

from digest.models import DigestKind, DigestStatus, StoredPaper, Subscriber, SubscriberStatus
from digest.store.base import StoreBase, chunks, utc
from digest.store.ledger import deliveries, digests
from digest.store.papers import papers, stored_paper
from digest.store.records import DigestRow, digest_row
from digest.store.subscribers import (
    _subscriber_filter,
    subscriber_row,
    subscribers,
    topics_of,
)

_RECEIVING = [s.value for s in SubscriberStatus if s.receives_mail]
_FAILED = [DigestStatus.FAILED.value, DigestStatus.BOUNCED.value]


@dataclass(frozen=True, slots=True)
class NextDelivery:
    """A subscriber whose next digest is due soonest."""

    subscriber_id: int
    email: str
    cadence: str
    due_at: datetime


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who received a paper, in which digest, when."""

    subscriber_id: int
    email: str
    digest_id: int | None
    delivered_at: datetime


@dataclass(frozen=True, slots=True)
class DayCount:
    """Papers first stored and email digests sent on one UTC day."""

    day: date
    papers: int
    digests: int


def _day(value: object) -> date:
    """SQLite's date() gives text, PostgreSQL's a date: one type for both."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


class AdminStore(StoreBase):
    """Read-only queries behind the admin pages."""

    def _digest_rows(self, stmt: object) -> list[DigestRow]:
        with self._read() as conn:
            heads = list(conn.execute(stmt))  # type: ignore[call-overload]
            counts: dict[int, int] = {}
            for chunk in chunks([h.id for h in heads]):
                counts.update(
                    (k, v)
                    for k, v in conn.execute(
                        select(deliveries.c.digest_id, func.count())
                        .where(deliveries.c.digest_id.in_(chunk))
                        .group_by(deliveries.c.digest_id)
                    ).all()
                )
        return [digest_row(h, counts.get(h.id, 0)) for h in heads]

    def _digest_select(self) -> object:
        return select(
            digests.c.id,
            subscribers.c.email,
            digests.c.kind,
            digests.c.status,
            digests.c.created_at,
            digests.c.sent_at,
            digests.c.attempts,
            digests.c.last_error,
        ).join(subscribers, subscribers.c.id == digests.c.subscriber_id)

    def delivery_history(
        self, subscriber_id: int, *, before: int | None = None, limit: int = 25
    ) -> list[DigestRow]:
        """A subscriber's email digests (any status), newest first, `limit` below id `before`."""
        stmt = (
            self._digest_select()  # type: ignore[attr-defined]
            .where(digests.c.subscriber_id == subscriber_id, digests.c.kind == DigestKind.EMAIL)
            .order_by(digests.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            stmt = stmt.where(digests.c.id < before)
        return self._digest_rows(stmt)

    def recent_failures(self, limit: int = 10) -> list[DigestRow]:
        """The latest failed or bounced digests, newest first."""
        stmt = (
            self._digest_select()  # type: ignore[attr-defined]
            .where(digests.c.status.in_(_FAILED))
            .order_by(digests.c.id.desc())
            .limit(limit)
        )
        return self._digest_rows(stmt)

    def next_deliveries(self, limit: int = 10) -> list[NextDelivery]:
        """Receiving subscribers by when their next digest is due, soonest first."""
        stmt = (
            select(
                subscribers.c.id,
                subscribers.c.email,
                subscribers.c.cadence,
                subscribers.c.next_due_at,
            )
            .where(subscribers.c.status.in_(_RECEIVING), subscribers.c.next_due_at.is_not(None))
            .order_by(subscribers.c.next_due_at, subscribers.c.id)
            .limit(limit)
        )
        with self._read() as conn:
            return [
                NextDelivery(r.id, r.email, r.cadence, r.next_due_at) for r in conn.execute(stmt)
            ]

    def daily_counts(self, since: datetime) -> list[DayCount]:
        """Per UTC day from `since`: papers first stored and email digests sent (days with
        neither are absent)."""
        since = utc(since)
        by_day: dict[date, list[int]] = {}
        with self._read() as conn:
            day = func.date(papers.c.first_seen)
            for d, n in conn.execute(
                select(day, func.count()).where(papers.c.first_seen >= since).group_by(day)
            ):
                by_day.setdefault(_day(d), [0, 0])[0] = n
            day = func.date(digests.c.sent_at)
            for d, n in conn.execute(
                select(day, func.count())
                .where(
                    digests.c.sent_at >= since,
                    digests.c.kind == DigestKind.EMAIL,
                    digests.c.status == DigestStatus.SENT,
                )
                .group_by(day)
            ):
                by_day.setdefault(_day(d), [0, 0])[1] = n
        return [DayCount(d, p, s) for d, (p, s) in sorted(by_day.items())]

    def papers_page(self, *, before: int | None = None, limit: int = 25) -> list[StoredPaper]:
        """Stored papers, newest first, `limit` below id `before`."""
        stmt = select(papers).order_by(papers.c.id.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(papers.c.id < before)
        with self._read() as conn:
            return [stored_paper(r) for r in conn.execute(stmt)]

    def paper_by_id(self, paper_id: int) -> StoredPaper | None:
        """One stored paper, or None."""
        with self._read() as conn:
            row = conn.execute(select(papers).where(papers.c.id == paper_id)).first()
        return stored_paper(row) if row is not None else None

    def paper_recipients(
        self, paper_id: int, *, after: int | None = None, limit: int = 50
    ) -> list[Recipient]:
        """Who received a paper (by subscriber id), `limit` after subscriber id `after`."""
        stmt = (
            select(
                deliveries.c.subscriber_id,
                subscribers.c.email,
                deliveries.c.digest_id,
                deliveries.c.delivered_at,
            )
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(deliveries.c.paper_id == paper_id)
            .order_by(deliveries.c.subscriber_id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(deliveries.c.subscriber_id > after)
        with self._read() as conn:
            return [
                Recipient(r.subscriber_id, r.email, r.digest_id, r.delivered_at)
                for r in conn.execute(stmt)
            ]

    def recipient_counts(self, paper_ids: Sequence[int]) -> dict[int, int]:
        """How many subscribers received each of these papers."""
        found: dict[int, int] = {}
        with self._read() as conn:
            for chunk in chunks(list(paper_ids)):
                found.update(
                    (k, v)
                    for k, v in conn.execute(
                        select(deliveries.c.paper_id, func.count())
                        .where(deliveries.c.paper_id.in_(chunk))
                        .group_by(deliveries.c.paper_id)
                    ).all()
                )
        return found

    def digest_owner(self, digest_id: int) -> int | None:
        """The subscriber id of a digest, or None when there is no such digest."""
        with self._read() as conn:
            return conn.scalar(select(digests.c.subscriber_id).where(digests.c.id == digest_id))

    def subscribers_after(
        self,
        *,
        search: str | None = None,
        status: str | None = None,
        after: str | None = None,
        limit: int = 25,
    ) -> list[Subscriber]:
        """Subscribers by email, `limit` after the email `after` (a keyset page on the unique
        email index: the 4,000th page costs what the first does)."""
        stmt = select(subscribers).order_by(subscribers.c.email).limit(limit)
        for cond in _subscriber_filter(search, status):
            stmt = stmt.where(cond)
        if after is not None:
            stmt = stmt.where(subscribers.c.email > after)
        with self._read() as conn:
            rows = list(conn.execute(stmt))
            by_id = topics_of(conn, [r.id for r in rows])
        return [subscriber_row(r, by_id.get(r.id, ())) for r in rows]
