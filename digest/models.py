"""Plain records that flow between the stages; no behaviour beyond identity and convenience."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date, datetime

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
    """A named keyword query of a subscriber."""

    name: str
    query: str


CADENCES = ("instant", "daily", "weekly", "feed")
STATUSES = ("pending", "active", "paused", "unsubscribed", "bouncing")


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A person receiving digests, with their keyword profile."""

    id: int
    email: str
    name: str
    status: str
    cadence: str
    time: str  # "HH:MM" in tz
    tz: str
    weekday: int  # 0 = Monday; used by the weekly cadence
    created_at: datetime
    token: str
    topics: tuple[Topic, ...] = ()
    since: datetime | None = None  # papers first seen at or after this are eligible
    bounces: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    """One paper matched for one subscriber: score, topics that matched, and highlight spans."""

    paper_id: int
    score: float
    topics: tuple[str, ...]
    terms: tuple[str, ...] = ()  # the matched words, as they appear in the paper
    title_spans: tuple[tuple[int, int], ...] = ()
    abstract_spans: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class DigestItem:
    """A paper in a digest with why it matched."""

    paper: StoredPaper
    match: Match


@dataclass(slots=True)
class Digest:
    """A digest for one subscriber: its ranked items, identity and when it was built."""

    id: int
    subscriber: Subscriber
    created_at: datetime
    message_id: str
    items: list[DigestItem] = field(default_factory=list)
