"""Feedback: a subscriber's verdicts ("more like this" / "not for me") on papers, per topic.

The feedback table (migration 2) keys a verdict by subscriber, topic NAME and paper; one verdict
per triple, so a like replaces a dislike and vice versa. Topics are replaced as a whole on every
edit, which is why feedback names its topic instead of pointing at a topics row: an edit keeps the
feedback of every topic whose name survives, moves it with a topic renamed in place (same
position, old name gone, new name new) and drops the feedback of a removed topic
(subscribers.update_subscriber). Loading topics fills `Topic.likes`/`dislikes` in the same query
(subscribers.topic_select: topics LEFT JOIN feedback).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import and_, insert, select

from digest.errors import ValidationError
from digest.models import StoredPaper, paper_key
from digest.store.base import StoreBase, utc
from digest.store.ledger import deliveries
from digest.store.papers import papers, stored_paper
from digest.store.records import FeedbackRecord
from digest.store.subscribers import VERDICTS, feedback

# papers.id is an INTEGER (SERIAL on PostgreSQL): a larger number names no paper and must not
# reach the query (PostgreSQL refuses it as out of range).
_MAX_PAPER_ID = 2**31 - 1


class FeedbackStore(StoreBase):
    """Record, undo and list verdicts; find a paper by id or title."""

    def record_feedback(
        self,
        subscriber_id: int,
        topic: str,
        paper_id: int,
        verdict: str,
        *,
        at: datetime | None = None,
    ) -> bool:
        """Store this verdict, replacing any other on the same (subscriber, topic, paper);
        False if it was already the verdict (nothing changed)."""
        if verdict not in VERDICTS:
            raise ValidationError(f"verdict {verdict!r}: must be one of {', '.join(VERDICTS)}")
        when = utc(at or datetime.now(UTC))
        key = and_(
            feedback.c.subscriber_id == subscriber_id,
            feedback.c.topic == topic,
            feedback.c.paper_id == paper_id,
        )
        with self._write() as conn:
            old = conn.scalar(select(feedback.c.verdict).where(key))
            if old == verdict:
                return False
            # Delete then insert in one transaction: portable (no dialect upsert), and a
            # concurrent twin fails on uq_feedback_once instead of leaving two verdicts.
            conn.execute(feedback.delete().where(key))
            conn.execute(
                insert(feedback).values(
                    subscriber_id=subscriber_id,
                    topic=topic,
                    paper_id=paper_id,
                    verdict=verdict,
                    at=when,
                )
            )
        return True

    def remove_feedback(self, subscriber_id: int, topic: str, paper_id: int) -> bool:
        """Undo the verdict on this paper under this topic; False if there was none."""
        with self._write() as conn:
            done = conn.execute(
                feedback.delete().where(
                    feedback.c.subscriber_id == subscriber_id,
                    feedback.c.topic == topic,
                    feedback.c.paper_id == paper_id,
                )
            ).rowcount
        return bool(done)

    def verdict_of(self, subscriber_id: int, topic: str, paper_id: int) -> str | None:
        """The recorded verdict on this paper under this topic, or None."""
        with self._read() as conn:
            return conn.scalar(
                select(feedback.c.verdict).where(
                    feedback.c.subscriber_id == subscriber_id,
                    feedback.c.topic == topic,
                    feedback.c.paper_id == paper_id,
                )
            )

    def examples_of(self, subscriber_id: int, topic: str | None = None) -> list[FeedbackRecord]:
        """A subscriber's verdicts (of one topic, when given) with titles, by topic then title."""
        stmt = (
            select(
                feedback.c.topic,
                feedback.c.verdict,
                feedback.c.at,
                feedback.c.paper_id,
                papers.c.title,
            )
            .join(papers, papers.c.id == feedback.c.paper_id)
            .where(feedback.c.subscriber_id == subscriber_id)
            .order_by(feedback.c.topic, papers.c.title, feedback.c.paper_id)
        )
        if topic is not None:
            stmt = stmt.where(feedback.c.topic == topic)
        with self._read() as conn:
            return [
                FeedbackRecord(r.title, r.topic, r.verdict, r.at, r.paper_id)
                for r in conn.execute(stmt)
            ]

    def delivered_topic(self, subscriber_id: int, paper_id: int) -> str | None:
        """The topic this paper was delivered to this subscriber under, if it was."""
        with self._read() as conn:
            return conn.scalar(
                select(deliveries.c.topic).where(
                    deliveries.c.subscriber_id == subscriber_id,
                    deliveries.c.paper_id == paper_id,
                )
            )

    def papers_by_ref(self, ref: str) -> list[StoredPaper]:
        """The stored papers a reference names: the paper with that id (digits) and the paper
        with that title (compared in its identity form, models.normalize_title); 0, 1 or 2."""
        text = ref.strip()
        found: dict[int, StoredPaper] = {}
        with self._read() as conn:
            if text.isdigit() and 0 < int(text) <= _MAX_PAPER_ID:
                row = conn.execute(select(papers).where(papers.c.id == int(text))).first()
                if row is not None:
                    found[row.id] = stored_paper(row)
            if text:
                row = conn.execute(select(papers).where(papers.c.key == paper_key(text))).first()
                if row is not None:
                    found[row.id] = stored_paper(row)
        return list(found.values())
