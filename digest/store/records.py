"""Records the store takes and returns (frozen dataclasses), and the row -> record converters."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from digest.models import (
    DigestKind,
    DigestStatus,
    StatusChange,
    StoredPaper,
    Subscriber,
    SubscriberStatus,
)


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
class RunSize:
    """One queueing run as the ledger keeps it: the email digests recorded at one time (a run
    records all its digests with the same created_at) and the papers they hold."""

    at: datetime
    digests: int
    papers: int


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
    kind: DigestKind
    status: DigestStatus
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    last_error: str | None
    papers: int


@dataclass(frozen=True, slots=True)
class RisingRule:
    """When an upvote change is a jump: at least `min_gain` more and `ratio` times as many."""

    min_gain: int
    ratio: float

    def jumped(self, old: int | None, new: int | None) -> bool:
        """True when going from `old` to `new` upvotes is a jump (unknown counts never are)."""
        if old is None or new is None:
            return False
        return new - old >= self.min_gain and new >= old * self.ratio


@dataclass(frozen=True, slots=True)
class LedgerItem:
    """A paper put in a digest, with why it matched (kept in the delivery ledger)."""

    paper_id: int
    topics: tuple[str, ...]
    terms: tuple[str, ...]
    score: float
    why: str = ""
    rising: bool = False  # back once because its upvotes jumped (kept in rising_deliveries)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A ledger row read back: the paper, why it matched, and when it was delivered."""

    paper: StoredPaper
    item: LedgerItem
    delivered_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """An active subscriber with their delivery progress."""

    subscriber: Subscriber
    watermark: int
    last_slot: datetime | None


@dataclass(frozen=True, slots=True)
class PlanProgress:
    """What `Store.record_plans` records for one subscriber: a digest (when there are items)
    and their progress: the paper watermark, the slot handled and when they are next due."""

    subscriber_id: int
    kind: DigestKind
    items: Sequence[LedgerItem]
    watermark: int
    slot: datetime
    next_due: datetime | None = None
    # The progress the plan was made from: recorded only if the subscriber still has it, so
    # two queueing passes at once (cron beside the daemon) never record two digests.
    was_watermark: int | None = None
    was_slot: datetime | None = None
    # A capped digest: the matches its email leaves out (best first) and how many matched.
    extra: Sequence[LedgerItem] = ()
    matched: int | None = None


@dataclass(frozen=True, slots=True)
class DigestRecord:
    """A recorded digest: its subscriber, identity, state and ledger entries (best first)."""

    id: int
    subscriber: Subscriber
    kind: DigestKind
    status: DigestStatus
    message_id: str
    created_at: datetime
    attempts: int
    items: list[LedgerEntry]
    matched: int | None = None  # papers matched; more than len(items) when the email was capped


@dataclass(frozen=True, slots=True)
class ArchivedDigest:
    """One sent digest in a subscriber's archive: when, how many papers, its best titles."""

    id: int
    sent_at: datetime
    shown: int
    matched: int
    titles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DigestPage:
    """A sent digest as its web page shows it: the papers carried, then those left out."""

    id: int
    subscriber_id: int
    sent_at: datetime | None
    created_at: datetime
    items: list[LedgerEntry]
    extras: list[LedgerEntry]
    matched: int  # papers matched: at least items + extras (extras are kept up to a bound)


@dataclass(frozen=True, slots=True)
class SentPaper:
    """A paper of a sent digest, as a subscriber's history shows it."""

    title: str
    topic: str | None


@dataclass(frozen=True, slots=True)
class SentDigest:
    """An email digest sent to a subscriber, with its papers' titles and best topics."""

    digest_id: int
    message_id: str
    sent_at: datetime | None
    papers: tuple[SentPaper, ...]


@dataclass(frozen=True, slots=True)
class SubscriberEvent:
    """A row of a subscriber's status history (old_status None: the subscriber was created)."""

    subscriber_id: int
    at: datetime
    old_status: SubscriberStatus | None
    new_status: SubscriberStatus
    how: StatusChange


@dataclass(frozen=True, slots=True)
class Suppression:
    """A wiped address: the sha256 of its normalised form, when and why it was wiped."""

    email_hash: str
    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A subscriber's verdict on a paper, read back with the paper's title."""

    title: str
    topic: str
    verdict: str
    at: datetime
    paper_id: int = 0


def digest_row(row: Any, papers: int) -> DigestRow:
    """A digest row for the admin lists, from a select of digests joined with the email."""
    return DigestRow(
        id=row.id,
        email=row.email,
        kind=DigestKind(row.kind),
        status=DigestStatus(row.status),
        created_at=row.created_at,
        sent_at=row.sent_at,
        attempts=row.attempts,
        last_error=row.last_error,
        papers=papers,
    )


def ledger_item(row: Any) -> LedgerItem:
    """Why a paper is in a ledger row selected with d_topics, d_terms, d_score, d_why and
    d_rising labels (every select names all five: a missing attribute on a SQLAlchemy row
    raises and catches an exception inside it, which was a sixth of reading a batch)."""
    return LedgerItem(
        paper_id=row.id,
        topics=_json_tuple(row.d_topics or "[]"),
        terms=_json_tuple(row.d_terms or "[]"),
        score=row.d_score or 0.0,
        why=row.d_why or "",
        rising=bool(row.d_rising),
    )


# A ledger row read positionally (store.ledger.LEDGER_ROW): paper id, topics, terms, score,
# why, the instant as the driver gave it, rising.
LedgerRow = Sequence[Any]


def ledger_entry(paper: StoredPaper, row: LedgerRow) -> LedgerEntry:
    """A LedgerEntry from a positional ledger row (a worker reads ~10 per message)."""
    pid, topics, terms, score, why, at, is_rising = row
    item = LedgerItem(
        pid,
        _json_tuple(topics or "[]"),
        _json_tuple(terms or "[]"),
        score or 0.0,
        why or "",
        bool(is_rising),
    )
    return LedgerEntry(paper, item, instant(at))


@functools.lru_cache(maxsize=4096)
def instant(value: str | datetime) -> datetime:
    """An aware UTC datetime from a stored instant as the driver returns it, untyped (SQLite:
    text; PostgreSQL: an aware datetime); a batch's rows share a few, so each is parsed once."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@functools.lru_cache(maxsize=8192)
def _json_tuple(text: str) -> tuple[str, ...]:
    # A sender reads the same few topic lists and word lists in row after row (profiled:
    # decoding them was a tenth of reading a batch); tuples of str are safe to share.
    return tuple(json.loads(text))
