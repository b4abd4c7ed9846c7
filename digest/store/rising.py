"""Rising papers: upvote jumps between dumps, and which subscriber got which paper back.

A jump is recorded when a dump is ingested (papers.PaperStore.ingest_dump, same transaction).
A rising paper comes back to a subscriber at most once: `rising_deliveries` has one row per
(subscriber, paper), written with the digest that carries it (ledger._insert_digests).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import Connection

from digest.models import StoredPaper
from digest.store.base import StoreBase, chunks, utc
from digest.store.papers import papers, stored_paper
from digest.store.records import LedgerEntry, RisingRule, ledger_item
from digest.store.schema import UtcDateTime, metadata

__all__ = ["RisingPaper", "RisingRule", "RisingStore", "rising", "rising_deliveries"]

rising = Table(
    "rising",
    metadata,
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    Column("dump_id", Integer, ForeignKey("dumps.id"), primary_key=True),
    Column("from_upvotes", Integer, nullable=False),
    Column("to_upvotes", Integer, nullable=False),
    Column("seen_at", UtcDateTime, nullable=False),
)
Index("ix_rising_seen_at", rising.c.seen_at)

rising_deliveries = Table(
    "rising_deliveries",
    metadata,
    Column(
        "subscriber_id",
        Integer,
        ForeignKey("subscribers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # The primary key is the "never twice for one paper and person" rule.
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    Column("digest_id", Integer, ForeignKey("digests.id", ondelete="CASCADE")),
    Column("delivered_at", UtcDateTime, nullable=False),
    Column("topics", Text),
    Column("terms", Text),
    Column("score", Float),
)
Index("ix_rising_deliveries_digest", rising_deliveries.c.digest_id)


@dataclass(frozen=True, slots=True)
class RisingPaper:
    """A paper whose upvotes jumped, with the latest jump seen."""

    paper: StoredPaper
    from_upvotes: int
    to_upvotes: int
    seen_at: datetime


def record_jumps(
    conn: Connection, dump_id: int, jumps: Sequence[tuple[int, int, int]], now: datetime
) -> None:
    """Record (paper id, old upvotes, new upvotes) jumps seen in one dump, in its transaction."""
    if jumps:
        conn.execute(
            insert(rising),
            [
                {"paper_id": p, "dump_id": dump_id, "from_upvotes": a, "to_upvotes": b,
                 "seen_at": now}
                for p, a, b in jumps
            ],
        )  # fmt: skip


def insert_rising_deliveries(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
    """The rising rows of digests being recorded (ledger._insert_digests, same transaction)."""
    wanted = list(rows)
    if wanted:
        conn.execute(insert(rising_deliveries), wanted)


def rising_ledger_rows(conn: Connection, digest_ids: Sequence[int]) -> list[Any]:
    """The rising rows of these digests, labelled as claims.digest_records reads deliveries."""
    found: list[Any] = []
    for chunk in chunks(list(digest_ids)):
        found.extend(
            conn.execute(
                select(
                    rising_deliveries.c.paper_id.label("id"),
                    rising_deliveries.c.digest_id.label("d_digest"),
                    rising_deliveries.c.topics.label("d_topics"),
                    rising_deliveries.c.terms.label("d_terms"),
                    rising_deliveries.c.score.label("d_score"),
                    rising_deliveries.c.delivered_at.label("d_at"),
                    literal("").label("d_why"),
                    literal(True).label("d_rising"),
                ).where(rising_deliveries.c.digest_id.in_(chunk))
            )
        )
    return found


class RisingStore(StoreBase):
    """Reading upvote jumps and the rising papers already given back."""

    def rising_since(self, ts: datetime) -> list[RisingPaper]:
        """Papers whose upvotes jumped in a dump ingested at or after `ts`, by paper id (the
        latest jump of each)."""
        latest: dict[int, Any] = {}
        with self._read() as conn:
            rows = conn.execute(
                select(papers, rising.c.from_upvotes, rising.c.to_upvotes, rising.c.seen_at)
                .join(rising, rising.c.paper_id == papers.c.id)
                .where(rising.c.seen_at >= utc(ts))
                .order_by(papers.c.id, rising.c.seen_at)
            )
            for row in rows:
                latest[row.id] = row
        return [
            RisingPaper(stored_paper(r), r.from_upvotes, r.to_upvotes, r.seen_at)
            for r in latest.values()
        ]

    def rising_delivered(
        self, subscriber_ids: Sequence[int], paper_ids: Sequence[int]
    ) -> set[tuple[int, int]]:
        """Which (subscriber, paper) pairs already came back as rising."""
        found: set[tuple[int, int]] = set()
        if not subscriber_ids or not paper_ids:
            return found
        wanted = set(subscriber_ids)
        with self._read() as conn:
            for chunk in chunks(list(paper_ids)):
                rows = conn.execute(
                    select(rising_deliveries.c.subscriber_id, rising_deliveries.c.paper_id).where(
                        rising_deliveries.c.paper_id.in_(chunk)
                    )
                )
                found.update((s, p) for s, p in rows if s in wanted)
        return found


def rising_row(subscriber_id: int, digest_id: int, item: Any, now: datetime) -> dict[str, Any]:
    """A rising_deliveries row for one LedgerItem of a digest being recorded."""
    return {
        "subscriber_id": subscriber_id,
        "paper_id": item.paper_id,
        "digest_id": digest_id,
        "topics": json.dumps(list(item.topics)),
        "terms": json.dumps(list(item.terms)),
        "score": item.score,
        "delivered_at": now,
    }


def rising_ledger_entries(conn: Connection, subscriber_id: int, limit: int) -> list[LedgerEntry]:
    """A subscriber's rising papers given back, newest first, at most `limit` (feed items)."""
    rows = conn.execute(
        select(
            papers,
            rising_deliveries.c.topics.label("d_topics"),
            rising_deliveries.c.terms.label("d_terms"),
            rising_deliveries.c.score.label("d_score"),
            rising_deliveries.c.delivered_at.label("d_at"),
            literal("").label("d_why"),
            literal(True).label("d_rising"),
        )
        .join(rising_deliveries, rising_deliveries.c.paper_id == papers.c.id)
        .where(rising_deliveries.c.subscriber_id == subscriber_id)
        .order_by(rising_deliveries.c.delivered_at.desc(), papers.c.id.desc())
        .limit(limit)
    )
    return [LedgerEntry(stored_paper(r), ledger_item(r), r.d_at) for r in rows]


def rising_subscribers_since(conn: Connection, ts: datetime | None) -> list[int]:
    """Subscribers given a rising paper after `ts` (all when None): their feeds changed."""
    stmt = select(rising_deliveries.c.subscriber_id).distinct()
    if ts is not None:
        stmt = stmt.where(rising_deliveries.c.delivered_at > utc(ts))
    return list(conn.scalars(stmt))


def latest_rising_time(conn: Connection) -> datetime | None:
    """When a rising paper was last given back (None when never)."""
    return conn.scalar(select(func.max(rising_deliveries.c.delivered_at)))
