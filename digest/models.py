"""Plain records that flow between the stages; no behaviour beyond identity and convenience."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum

_KEY_STRIP = re.compile(r"[\W_]+", re.UNICODE)


def normalize_title(title: str) -> str:
    """Fold a title to its identity form: NFKC, casefold, punctuation and LaTeX markup removed."""
    folded = unicodedata.normalize("NFKC", title).casefold()
    return " ".join(part for part in _KEY_STRIP.split(folded) if part)


def paper_key(title: str) -> str:
    """Stable identity of a paper across dumps: a hash of its normalised title."""
    return hashlib.sha256(normalize_title(title).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper entry as parsed from a dump."""

    title: str
    abstract: str
    authors: int | None = None
    organization: str | None = None
    organization_id: str | None = None
    published: date | None = None
    upvotes: int | None = None
    line: int = 0  # line of the title in its dump, for messages

    @property
    def key(self) -> str:
        return paper_key(self.title)


@dataclass(frozen=True, slots=True)
class ParseWarning:
    """Something odd but recoverable in a dump (an unknown short line...)."""

    line: int
    message: str


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Everything the parser learned from one dump."""

    papers: tuple[Paper, ...]
    warnings: tuple[ParseWarning, ...] = ()
    layout: str = ""
    capture_date: date | None = None


@dataclass(frozen=True, slots=True)
class StoredPaper:
    """A paper as the store knows it: its id, identity key and when it was first seen."""

    id: int
    key: str
    title: str
    abstract: str
    first_seen: datetime
    authors: int | None = None
    organization: str | None = None
    organization_id: str | None = None
    published: date | None = None
    upvotes: int | None = None


@dataclass(frozen=True, slots=True)
class Topic:
    """A named topic of a subscriber: a keyword query and/or example papers.

    `likes` and `dislikes` are the ids of the papers the subscriber marked "more like this" and
    "not for me" under this topic (the feedback table); an empty query with likes is a topic of
    examples alone.
    """

    name: str
    query: str
    likes: tuple[int, ...] = ()
    dislikes: tuple[int, ...] = ()
    # the query's stored compiled form as loaded with the topic (query.encode_query), or None;
    # not part of the topic's identity: the query text is
    compiled: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def has_examples(self) -> bool:
        """Whether feedback exists for this topic (the learned ranker then takes part)."""
        return bool(self.likes or self.dislikes)


class Cadence(StrEnum):
    """How often a subscriber gets papers; the values are what the database and CLI show."""

    INSTANT = "instant"
    DAILY = "daily"
    WEEKLY = "weekly"
    FEED = "feed"

    @property
    def is_scheduled(self) -> bool:
        """Delivered at a time of day (and weekday): daily and weekly, not as papers arrive."""
        return self in (Cadence.DAILY, Cadence.WEEKLY)

    @property
    def sends_email(self) -> bool:
        """Digests go out by email (feed subscribers only read their Atom feed)."""
        return self is not Cadence.FEED

    @property
    def digest_kind(self) -> DigestKind:
        """The kind of digest recorded for this cadence."""
        return DigestKind.EMAIL if self.sends_email else DigestKind.FEED


class SubscriberStatus(StrEnum):
    """Where a subscriber stands; only active ones are delivered to."""

    PENDING = "pending"  # signed up on the web, not confirmed yet
    ACTIVE = "active"
    PAUSED = "paused"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCING = "bouncing"  # too many permanent failures

    @property
    def receives_mail(self) -> bool:
        """Digests are planned and sent (emails or feed items) for this status."""
        return self is SubscriberStatus.ACTIVE


class DigestKind(StrEnum):
    """What a recorded digest is: an email to send or items of the subscriber's feed."""

    EMAIL = "email"
    FEED = "feed"


class DigestStatus(StrEnum):
    """Where a recorded digest stands in the send ledger."""

    QUEUED = "queued"
    SENDING = "sending"  # claimed by a sender (a lease)
    SENT = "sent"
    FAILED = "failed"  # out of retries
    BOUNCED = "bounced"  # a permanent failure

    @property
    def in_flight(self) -> bool:
        """Still to be sent by someone: queued, or claimed and being sent."""
        return self in (DigestStatus.QUEUED, DigestStatus.SENDING)


class StatusChange(StrEnum):
    """How a subscriber's status changed, as the status history (subscriber_events) keeps it."""

    SIGNUP = "signup"  # the web sign-up form (a pending subscriber)
    CONFIRM = "confirm"  # the confirmation link
    LINK = "link"  # a signed link: unsubscribe page, resubscribe on the manage page
    ONE_CLICK = "one-click"  # RFC 8058 List-Unsubscribe-Post
    ADMIN = "admin"  # the admin web pages
    BOUNCE = "bounce"  # permanent delivery failures
    IMPORT = "import"  # subscriber import (CSV)
    CLI = "cli"  # the digest command (and code calling the service directly)


# The values as plain strings, in order (choices of forms and the CLI, CHECK constraints).
CADENCES: tuple[str, ...] = tuple(c.value for c in Cadence)
STATUSES: tuple[str, ...] = tuple(s.value for s in SubscriberStatus)


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A person receiving digests, with their keyword profile."""

    id: int
    email: str
    name: str
    status: SubscriberStatus
    cadence: Cadence
    time: str  # "HH:MM" in tz
    tz: str
    weekday: int  # 0 = Monday; used by the weekly cadence
    created_at: datetime
    token: str
    topics: tuple[Topic, ...] = ()
    since: datetime | None = None  # papers first seen at or after this are eligible
    bounces: int = 0

    def __post_init__(self) -> None:
        # Callers may pass the plain strings; the record always holds the enums.
        if type(self.status) is not SubscriberStatus:
            object.__setattr__(self, "status", SubscriberStatus(self.status))
        if type(self.cadence) is not Cadence:
            object.__setattr__(self, "cadence", Cadence(self.cadence))


@dataclass(frozen=True, slots=True)
class Match:
    """One paper matched for one subscriber: score, topics that matched, and highlight spans."""

    paper_id: int
    score: float
    topics: tuple[str, ...]
    terms: tuple[str, ...] = ()  # the matched words, as they appear in the paper
    title_spans: tuple[tuple[int, int], ...] = ()
    abstract_spans: tuple[tuple[int, int], ...] = ()
    why: str = ""  # a short reason beyond the words, e.g. 'suggested: like "A liked paper"'


@dataclass(frozen=True, slots=True)
class DigestItem:
    """A paper in a digest with why it matched."""

    paper: StoredPaper
    match: Match
    rising: bool = False  # back once because its upvotes jumped (see outbox._add_rising)


@dataclass(slots=True)
class Digest:
    """A digest for one subscriber: its ranked items, identity and when it was built."""

    id: int
    subscriber: Subscriber
    created_at: datetime
    message_id: str
    items: list[DigestItem] = field(default_factory=list)
    matched: int | None = None  # papers matched, when more than the items (a capped digest)
