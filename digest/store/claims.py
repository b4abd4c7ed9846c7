"""Sending recorded email digests: claims (leases) by senders, and each digest's outcome.

Senders claim due digests (queued, or sending with a lapsed lease), send them and mark them sent,
to retry, failed or bounced; a stalled sender's claims are taken over once their lease lapses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from digest.errors import StoreError
from digest.models import DigestKind, DigestStatus, StatusChange, StoredPaper, SubscriberStatus
from digest.store.base import StoreBase, chunks, utc
from digest.store.ledger import (
    DIGEST_STATUSES,
    LEDGER_ROW,
    deliveries,
    digests,
    first_digest_id_since,
)
from digest.store.papers import papers, stored_paper
from digest.store.records import DigestRecord, DigestRow, LedgerRow, digest_row, ledger_entry
from digest.store.rising import rising_ledger_rows
from digest.store.subscribers import load_subscribers, record_events, subscribers

QUEUED, SENDING = DigestStatus.QUEUED, DigestStatus.SENDING


class ClaimStore(StoreBase):
    """Claims on email digests and their delivery outcomes."""

    def claim_digests(
        self, worker: str, *, limit: int, lease_until: datetime, now: datetime
    ) -> list[int]:
        """Claim up to `limit` email digests that are due: queued, or sending with a lapsed lease.

        On PostgreSQL concurrent workers skip each other's rows (FOR UPDATE SKIP LOCKED); on
        SQLite the write transaction itself serialises claimers.
        """
        now = utc(now)
        due = (digests.c.kind == DigestKind.EMAIL) & (
            ((digests.c.status == QUEUED) & (digests.c.next_attempt_at <= now))
            | ((digests.c.status == SENDING) & (digests.c.lease_until < now))
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
                    .values(status=SENDING, claimed_by=worker, lease_until=utc(lease_until))
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
            digests.c.status == SENDING,
        )
        with self._write() as conn:
            conn.execute(update(digests).where(*held).values(lease_until=utc(lease_until)))
            return set(conn.scalars(select(digests.c.id).where(*held)))

    def release_claims(self, digest_ids: Sequence[int], worker: str) -> None:
        """Give back claimed digests not yet sent (a graceful stop), so others take them now."""
        if digest_ids:
            self._release(digests.c.id.in_(list(digest_ids)), digests.c.claimed_by == worker)

    def claim_holders(self) -> list[str]:
        """Who holds in-flight digests (`host:pid` of each sender with a claim)."""
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(digests.c.claimed_by)
                    .where(digests.c.status == SENDING, digests.c.claimed_by.is_not(None))
                    .distinct()
                )
            )

    def release_claims_of(self, worker: str) -> int:
        """Return a dead sender's in-flight digests to the queue at once (no lease wait)."""
        return self._release(digests.c.claimed_by == worker)

    def release_all_claims(self) -> int:
        """Return every in-flight digest to the queue: only for the sole sender after a crash."""
        return self._release()

    def _release(self, *where: Any) -> int:
        """In-flight digests matching `where` back to the queue, unclaimed; how many."""
        with self._write() as conn:
            return conn.execute(
                update(digests)
                .where(digests.c.status == SENDING, *where)
                .values(status=QUEUED, claimed_by=None, lease_until=None)
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

    def digest_records(
        self, digest_ids: Sequence[int], papers_seen: dict[int, StoredPaper] | None = None
    ) -> dict[int, DigestRecord]:
        """Many recorded digests at once (a worker's batch), by id, in a few queries.

        Digests that do not exist, or whose subscriber no longer does, are absent.
        `papers_seen` (paper id -> paper), when given, is used and filled: papers read by an
        earlier batch of the same delivery pass are not read again.
        """
        wanted = list(dict.fromkeys(digest_ids))
        heads: dict[int, Any] = {}
        rows: dict[int, list[LedgerRow]] = {i: [] for i in wanted}
        with self._read() as conn:
            for chunk in chunks(wanted):
                for head in conn.execute(select(digests).where(digests.c.id.in_(chunk))).all():
                    heads[head.id] = head
                # Positional rows, instants as the driver gives them: a worker reads ~10
                # ledger rows per message, and named access and per-row type processing were
                # most of reading a batch (profiled).
                for did, *entry in conn.execute(
                    select(deliveries.c.digest_id, *LEDGER_ROW)
                    .where(deliveries.c.digest_id.in_(chunk))
                    .order_by(
                        deliveries.c.digest_id, deliveries.c.score.desc(), deliveries.c.paper_id
                    )
                ).all():
                    rows[did].append(entry)
            _add_rising_rows(conn, list(heads), rows)
            # A batch's digests share most of their papers: each is read (and built) once.
            by_id: dict[int, StoredPaper] = {} if papers_seen is None else papers_seen
            paper_ids = sorted({r[0] for items in rows.values() for r in items} - by_id.keys())
            for chunk in chunks(paper_ids):
                for row in conn.execute(select(papers).where(papers.c.id.in_(chunk))).all():
                    by_id[row.id] = stored_paper(row)
            subs = load_subscribers(conn, [h.subscriber_id for h in heads.values()])
        return {
            head.id: DigestRecord(
                id=head.id,
                subscriber=subs[head.subscriber_id],
                kind=DigestKind(head.kind),
                status=DigestStatus(head.status),
                message_id=head.message_id,
                created_at=head.created_at,
                attempts=head.attempts,
                items=[ledger_entry(by_id[r[0]], r) for r in rows[head.id]],
                matched=head.matched,
            )
            for head in (heads[i] for i in wanted if i in heads)
            if head.subscriber_id in subs
        }

    def digest_attempts(self, digest_id: int) -> int:
        """How many times sending this digest was tried and ended (sent, retried, failed)."""
        with self._read() as conn:
            return conn.scalar(select(digests.c.attempts).where(digests.c.id == digest_id)) or 0

    def mark_digest_sent(self, digest_id: int, *, now: datetime) -> None:
        """The transport accepted the digest: it is never sent again. Whoever holds it now: a
        sender whose lease lapsed mid-send still delivered it, and marking it spares the new
        holder a repeat (the other outcomes only count while the sender holds the claim)."""
        with self._write() as conn:
            _settle_claim(
                conn, digest_id, None, status=DigestStatus.SENT, sent_at=utc(now), last_error=None
            )

    def mark_digests_sent(self, digest_ids: Sequence[int], *, now: datetime) -> None:
        """`mark_digest_sent` for a group of accepted digests, in one transaction: a sender
        marks what it sent in groups, since a durable commit per message was a fifth of its
        time (profiled); a crash before the group's commit repeats its messages (same
        Message-IDs), as docs/guide/delivery.md says."""
        if not digest_ids:
            return
        with self._write() as conn:
            for chunk in chunks(list(digest_ids)):
                conn.execute(
                    update(digests)
                    .where(digests.c.id.in_(chunk))
                    .values(
                        attempts=digests.c.attempts + 1, claimed_by=None, lease_until=None,
                        status=DigestStatus.SENT, sent_at=utc(now), last_error=None,
                    )
                )  # fmt: skip

    def retry_digest(
        self, digest_id: int, error: str, *, next_attempt_at: datetime, worker: str | None = None
    ) -> bool:
        """A temporary failure: back to the queue, to be tried again at `next_attempt_at`."""
        with self._write() as conn:
            return _settle_claim(
                conn, digest_id, worker, status=QUEUED, next_attempt_at=utc(next_attempt_at),
                last_error=error[:2000],
            )  # fmt: skip

    def fail_digest(
        self, digest_id: int, error: str, *, now: datetime, worker: str | None = None
    ) -> bool:
        """Out of retries (or unsendable): the digest stays failed and visible to the admin."""
        with self._write() as conn:
            return _settle_claim(
                conn, digest_id, worker, status=DigestStatus.FAILED, last_error=error[:2000]
            )

    def bounce_digest(
        self, digest_id: int, error: str, *, max_bounces: int, worker: str | None = None
    ) -> bool:
        """A permanent failure: record the bounce; True if the subscriber is now 'bouncing'
        (an active subscriber at `max_bounces` bounces; the status history says 'bounce')."""
        with self._write() as conn:
            sub_id = conn.scalar(select(digests.c.subscriber_id).where(digests.c.id == digest_id))
            if sub_id is None:
                return False  # no such digest
            if not _settle_claim(
                conn, digest_id, worker, status=DigestStatus.BOUNCED, last_error=error[:2000]
            ):
                return False  # another sender took it over and settled it
            conn.execute(
                update(subscribers)
                .where(subscribers.c.id == sub_id)
                .values(bounces=subscribers.c.bounces + 1)
            )
            bounces = conn.scalar(select(subscribers.c.bounces).where(subscribers.c.id == sub_id))
            if bounces is not None and bounces >= max_bounces:
                now = datetime.now(UTC)
                active, bouncing = SubscriberStatus.ACTIVE, SubscriberStatus.BOUNCING
                changed = conn.execute(
                    update(subscribers)
                    .where(subscribers.c.id == sub_id, subscribers.c.status == active)
                    .values(status=bouncing, updated_at=now)
                ).rowcount
                if changed:
                    record_events(conn, [(sub_id, active, bouncing)], StatusChange.BOUNCE, at=now)
                return True
        return False

    def requeue_failed(self, *, now: datetime) -> int:
        """Failed email digests of subscribers still receiving mail back to the queue, attempts
        reset (the operator fixed what failed them: a template, a setting); how many."""
        receiving = select(subscribers.c.id).where(subscribers.c.status == SubscriberStatus.ACTIVE)
        with self._write() as conn:
            return conn.execute(
                update(digests)
                .where(
                    digests.c.kind == DigestKind.EMAIL,
                    digests.c.status == DigestStatus.FAILED,
                    digests.c.subscriber_id.in_(receiving),
                )
                .values(status=QUEUED, attempts=0, next_attempt_at=utc(now), last_error=None)
            ).rowcount

    def digest_status_counts(self) -> dict[str, int]:
        """Email digests per status (queued, sending, sent, failed, bounced)."""
        counts: dict[str, int] = {s: 0 for s in DIGEST_STATUSES}
        with self._read() as conn:
            for status, n in conn.execute(
                select(digests.c.status, func.count())
                .where(digests.c.kind == DigestKind.EMAIL)
                .group_by(digests.c.status)
            ):
                counts[DigestStatus(status)] = n
        return counts

    def email_outcomes_since(self, since: datetime) -> dict[str, int]:
        """Email digests recorded from `since` on, per status (the health check's failure
        rate: failed and bounced against sent)."""
        counts: dict[str, int] = {s: 0 for s in DIGEST_STATUSES}
        with self._read() as conn:
            lo = first_digest_id_since(conn, since)  # the window's id range (see there)
            if lo is None:
                return counts
            for status, n in conn.execute(
                select(digests.c.status, func.count())
                .where(
                    digests.c.id >= lo,
                    digests.c.kind == DigestKind.EMAIL,
                    digests.c.created_at >= utc(since),
                )
                .group_by(digests.c.status)
            ):
                counts[DigestStatus(status)] = n
        return counts

    def digest_ids_by_status(self, status: DigestStatus) -> list[int]:
        """Ids of email digests in a status, oldest first (tests and `status`)."""
        with self._read() as conn:
            return list(
                conn.scalars(
                    select(digests.c.id)
                    .where(digests.c.kind == DigestKind.EMAIL, digests.c.status == status)
                    .order_by(digests.c.id)
                )
            )

    def recent_digests(
        self, limit: int = 20, *, status: DigestStatus | None = None
    ) -> list[DigestRow]:
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
            return [digest_row(r, r.papers) for r in conn.execute(stmt)]


def _settle_claim(conn: Connection, digest_id: int, worker: str | None, **values: Any) -> bool:
    """End one send attempt: the outcome's values, one more attempt, the claim released. With
    `worker`, only while that sender still holds the digest; True if the row changed."""
    stmt = update(digests).where(digests.c.id == digest_id)
    if worker is not None:
        stmt = stmt.where(digests.c.claimed_by == worker, digests.c.status == SENDING)
    stmt = stmt.values(attempts=digests.c.attempts + 1, claimed_by=None, lease_until=None, **values)
    return bool(conn.execute(stmt).rowcount)


def _add_rising_rows(
    conn: Connection, digest_ids: Sequence[int], rows: dict[int, list[LedgerRow]]
) -> None:
    """Append each digest's rising papers (kept apart from the ledger: see store/rising.py)
    after its new papers, best score first."""
    extra: dict[int, list[LedgerRow]] = {}
    for r in rising_ledger_rows(conn, digest_ids):
        row = (r.id, r.d_topics, r.d_terms, r.d_score, r.d_why, r.d_at, r.d_rising)
        extra.setdefault(r.d_digest, []).append(row)
    for digest_id, found in extra.items():
        found.sort(key=lambda r: (-(r[3] or 0.0), r[0]))
        rows[digest_id].extend(found)
