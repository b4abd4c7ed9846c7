"""Subscribers and their keyword topics: validation and the service used by the CLI and the web app.

Consent: unsubscribed is terminal for every admin path (CLI, admin pages, CSV import). Only the
person comes back, through a new double opt-in (`prepare_confirmation`, then `confirm`); the
refusal (ConsentError) says when and how they left. A wiped person leaves only a suppression
entry (a hash of the address) that keeps admin paths from re-adding them.

Every function validates its input and raises a DigestError subclass naming the address, field or
CSV line concerned: `FieldError` (a ValidationError with `.field`) for a bad value,
`TopicQueryError` (a QueryError with `.topic`, `.column` and `.hint`) for a topic whose query does
not compile, NotFoundError for an unknown subscriber. SQL stays in digest/store/.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email

from digest import urls
from digest.config import Settings
from digest.errors import ConsentError, DigestError, NotFoundError, QueryError, ValidationError
from digest.feedback import topics_json
from digest.models import (
    CADENCES,
    STATUSES,
    Cadence,
    StatusChange,
    StoredPaper,
    Subscriber,
    SubscriberStatus,
    Topic,
    paper_key,
)
from digest.query import compile_query
from digest.store import Store, SubscriberEvent, Suppression
from digest.text import clean_text, one_line

if TYPE_CHECKING:
    from digest.match import PaperIndex

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CSV_COLUMNS = ("email", "name", "status", "cadence", "time", "tz", "weekday", "topics")
KEYWORDS_TOPIC = "Keywords"
MAX_NAME = 200
MAX_TOPIC_NAME = 100
MAX_QUERY = 2000
MAX_TOPICS = 50
MAX_BACKFILL_DAYS = 3650

_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)\Z")
# A line break in a one-line field is refused (the person meant something else), not joined.
_LINE_BREAK = re.compile(r"[\n\r\x0b\x0c\x85\u2028\u2029]")


class FieldError(ValidationError):
    """A bad value for one field of a subscriber (`field` names it, for forms and CSV reports)."""

    def __init__(self, field_name: str, message: str) -> None:
        self.field = field_name
        super().__init__(message)


class TopicQueryError(QueryError):
    """A topic whose query does not compile: the QueryError plus the topic's name and position."""

    def __init__(self, topic: str, index: int, err: QueryError) -> None:
        # QueryError.__init__ would prefix the column again; keep its fields, name the topic.
        Exception.__init__(self, f"topic {topic!r}: {err}")
        self.query = err.query
        self.column = err.column
        self.hint = err.hint
        self.topic = topic
        self.index = index


# --- single values -------------------------------------------------------------------------------


def normalize_email(text: str) -> str:
    """The normalised form of an address (syntax checks only, no DNS); lower-cased throughout."""
    raw = (text or "").strip()
    try:
        checked = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise FieldError("email", f"{raw!r} is not a valid email address: {exc}") from None
    # Local parts are case-sensitive in theory; in practice providers fold them and duplicates
    # that differ only in case are a support burden, so one case it is.
    return checked.normalized.lower()


def check_name(text: str) -> str:
    """A display name: trimmed, one line, at most MAX_NAME characters (it goes in headers)."""
    name = (text or "").strip()
    if _LINE_BREAK.search(name):
        raise FieldError("name", f"name {name!r} must be one line without control characters")
    name = clean_text(name).strip()  # the text policy, once, where a name comes in
    if len(name) > MAX_NAME:
        raise FieldError("name", f"name is {len(name)} characters long; at most {MAX_NAME}")
    return name


def check_time(text: str) -> str:
    """A delivery time HH:MM (24 hours), zero-padded: "7:00" gives "07:00"."""
    m = _TIME.match((text or "").strip())
    if not m:
        raise FieldError("time", f"time {text!r} is not HH:MM on a 24-hour clock (e.g. 07:30)")
    return f"{int(m.group(1)):02d}:{m.group(2)}"


def check_tz(text: str) -> str:
    """An IANA time zone name such as Europe/London."""
    name = (text or "").strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise FieldError(
            "tz", f"time zone {text!r} is not an IANA zone name (e.g. Europe/London, UTC)"
        ) from None
    return name


def check_cadence(text: str) -> Cadence:
    """One of models.Cadence."""
    value = (text or "").strip().lower()
    if value not in CADENCES:
        raise FieldError("cadence", f"cadence {text!r} is not one of {', '.join(CADENCES)}")
    return Cadence(value)


def check_status(text: str) -> SubscriberStatus:
    """One of models.SubscriberStatus."""
    value = (text or "").strip().lower()
    if value not in STATUSES:
        raise FieldError("status", f"status {text!r} is not one of {', '.join(STATUSES)}")
    return SubscriberStatus(value)


def parse_weekday(value: str | int) -> int:
    """A weekday as 0 (Monday) .. 6, from an int, "0".."6", or a name ("mon", "Monday")."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 6:
            return value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit() and int(text) <= 6:
            return int(text)
        if len(text) >= 3 and text[:3] in WEEKDAYS:
            full = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
            i = WEEKDAYS.index(text[:3])
            if full[i].startswith(text):
                return i
    raise FieldError("weekday", f"weekday {value!r} is not one of {', '.join(WEEKDAYS)} (or 0-6)")


def check_topics(topics: Sequence[Topic]) -> tuple[Topic, ...]:
    """Trimmed topics whose names are unique and whose queries compile."""
    if len(topics) > MAX_TOPICS:
        raise FieldError("topics", f"{len(topics)} topics; at most {MAX_TOPICS}")
    out: list[Topic] = []
    seen: dict[str, int] = {}
    for i, topic in enumerate(topics):
        if _LINE_BREAK.search(topic.name or ""):
            raise FieldError("topics", f"topic name {topic.name!r} must be one line")
        # The text policy, once, where topics come in (CLI, CSV import and the web forms).
        name = clean_text(topic.name or "").strip()
        query = clean_text(topic.query or "", multiline=True).strip()
        if not name:
            raise FieldError("topics", f"topic {i + 1} has no name")
        if ":" in name or "|" in name:
            raise FieldError(
                "topics",
                f"topic name {name!r} must be one line without ':' or '|' "
                "(they separate topics in CSV files)",
            )
        if len(name) > MAX_TOPIC_NAME:
            raise FieldError(
                "topics", f"topic name {name[:40]!r}... is longer than {MAX_TOPIC_NAME}"
            )
        folded = name.casefold()
        if folded in seen:
            raise FieldError("topics", f"topic name {name!r} is used twice")
        seen[folded] = i
        if len(query) > MAX_QUERY:
            raise FieldError("topics", f"topic {name!r}: query longer than {MAX_QUERY} characters")
        if "|" in query:
            raise FieldError(
                "topics",
                f"topic {name!r}: '|' is not allowed in a query (it separates topics in CSV "
                "files; use OR or a comma)",
            )
        try:
            if query:  # an empty query: a topic of examples alone (it matches by its likes)
                compile_query(query)
        except QueryError as exc:
            raise TopicQueryError(name, i, exc) from None
        out.append(Topic(name, query))
    return tuple(out)


def topic_warnings(topics: Sequence[Topic]) -> list[str]:
    """What in valid topics is probably a mistake (see query.query_warnings), topic by topic."""
    from digest.query import query_warnings

    return [f"topic {t.name!r}: {w}" for t in topics for w in query_warnings(t.query)]


def topic_notes(topics: Sequence[Topic], index: PaperIndex | None = None) -> list[str]:
    """The warnings of valid topics, each naming its topic: probable mistakes, and (given an
    index of the stored papers) a query matching none or almost all of them. The CLI, the
    admin pages and the CSV import all say these."""
    notes = topic_warnings(topics)
    if index is not None:
        notes += [
            f"topic {t.name!r} {cover}" for t in topics if (cover := coverage_note(t.query, index))
        ]
    return notes


def coverage_note(query: str, index: PaperIndex) -> str | None:
    """A valid query's warning when it matches none or almost all of the indexed papers."""
    from digest.query import coverage_warning

    if not query.strip():
        return None
    hits = index.bits(compile_query(query).root).bit_count()
    return coverage_warning(hits, len(index.papers))


def parse_topics(text: str) -> tuple[Topic, ...]:
    """Topics from the CSV form "Name: query | Name: query" (validated)."""
    found: list[Topic] = []
    for piece in (text or "").split("|"):
        if not piece.strip():
            continue
        name, colon, query = piece.partition(":")
        if not colon or not name.strip():
            raise FieldError("topics", f"{piece.strip()!r} is not 'Name: query'")
        found.append(Topic(name.strip(), query.strip()))
    return check_topics(found)


def format_topics(topics: Sequence[Topic]) -> str:
    """The CSV form of topics, which parse_topics reads back."""
    return " | ".join(f"{t.name}: {t.query}" for t in topics)


# --- the service ---------------------------------------------------------------------------------


def add_subscriber(
    store: Store,
    settings: Settings,
    email: str,
    *,
    name: str = "",
    topics: Sequence[Topic] = (),
    cadence: str = Cadence.DAILY,
    time: str | None = None,
    tz: str | None = None,
    weekday: int = 0,
    backfill_days: int | None = None,
    status: str = SubscriberStatus.ACTIVE,
    now: datetime | None = None,
    how: StatusChange = StatusChange.CLI,
) -> Subscriber:
    """Validate and store a new subscriber; their first digest holds papers stored from now on
    (or from `backfill_days` ago). `how` goes to the status history."""
    address = normalize_email(email)
    with _about(address):
        return _add(store, settings, address, name, topics, cadence, time, tz, weekday,
                    backfill_days, status, now, how)  # fmt: skip


def _add(
    store: Store,
    settings: Settings,
    address: str,
    name: str,
    topics: Sequence[Topic],
    cadence: str,
    time: str | None,
    tz: str | None,
    weekday: int,
    backfill_days: int | None,
    status: str,
    now: datetime | None,
    how: StatusChange,
) -> Subscriber:
    now = _now(now)
    if backfill_days is not None and not (0 <= backfill_days <= MAX_BACKFILL_DAYS):
        raise FieldError(
            "backfill", f"backfill of {backfill_days} days: give 0 to {MAX_BACKFILL_DAYS}"
        )
    sub = Subscriber(
        id=0,
        email=address,
        name=check_name(name),
        status=check_status(status),
        cadence=check_cadence(cadence),
        time=check_time(time if time is not None else settings.schedule.default_time),
        tz=check_tz(tz if tz is not None else settings.schedule.default_tz),
        weekday=parse_weekday(weekday),
        created_at=now,
        token=secrets.token_urlsafe(24),
        topics=check_topics(topics),
        since=now - timedelta(days=backfill_days) if backfill_days is not None else now,
    )
    existing = store.subscriber_by_email(address)
    if existing is not None:
        if existing.status is SubscriberStatus.UNSUBSCRIBED:
            raise ConsentError(left_message(store, existing))
        raise FieldError("email", f"{address}: already subscribed")
    if how is not StatusChange.SIGNUP:  # the person themselves may always sign up again
        check_not_suppressed(store, address)
    # Papers already stored are not pending, unless a backfill asks for them (then `since` rules).
    watermark = 0 if backfill_days is not None else store.max_paper_id()
    return store.insert_subscriber(sub, watermark=watermark, how=how)


def get_subscriber(store: Store, email: str) -> Subscriber:
    """The subscriber with this address; NotFoundError if none."""
    address = _lookup_form(email)
    found = store.subscriber_by_email(address)
    if found is None:
        raise NotFoundError(f"no subscriber {address}")
    return found


def subscriber_by_token(store: Store, token: str) -> Subscriber | None:
    """The subscriber holding this secret token, or None."""
    if not token or len(token) > 200:
        return None
    return store.subscriber_by_token(token)


def list_subscribers(
    store: Store,
    *,
    search: str | None = None,
    status: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> list[Subscriber]:
    """Subscribers by email; `search` is a case-insensitive substring of email or name."""
    return store.list_subscribers(
        search=search or None,
        status=check_status(status) if status else None,
        offset=max(0, offset),
        limit=limit,
    )


def count_subscribers(store: Store, *, search: str | None = None, status: str | None = None) -> int:
    """How many subscribers list_subscribers would give without offset and limit."""
    return store.count_subscribers(
        search=search or None, status=check_status(status) if status else None
    )


def status_counts(store: Store) -> dict[str, int]:
    """Subscribers per status (every status present)."""
    return store.subscriber_status_counts()


def edit_subscriber(
    store: Store,
    settings: Settings,
    email: str,
    *,
    name: str | None = None,
    topics: Sequence[Topic] | None = None,
    cadence: str | None = None,
    time: str | None = None,
    tz: str | None = None,
    weekday: int | str | None = None,
    new_email: str | None = None,
) -> Subscriber:
    """Change only the given fields (topics are replaced as a whole); later digests follow."""
    current = get_subscriber(store, email)
    if current.status is SubscriberStatus.UNSUBSCRIBED:
        raise ConsentError(left_message(store, current))
    with _about(current.email):
        return _edit(store, current, name, topics, cadence, time, tz, weekday, new_email)


def _edit(
    store: Store,
    current: Subscriber,
    name: str | None,
    topics: Sequence[Topic] | None,
    cadence: str | None,
    time: str | None,
    tz: str | None,
    weekday: int | str | None,
    new_email: str | None,
) -> Subscriber:
    fields: dict[str, Any] = {}
    if new_email is not None:
        address = normalize_email(new_email)
        if address != current.email:
            if store.subscriber_by_email(address) is not None:
                raise FieldError("email", f"{address}: already subscribed")
            check_not_suppressed(store, address)  # no re-adding a wiped person by a rename
            fields["email"] = address
    if name is not None:
        fields["name"] = check_name(name)
    if cadence is not None:
        fields["cadence"] = check_cadence(cadence)
    if time is not None:
        fields["time"] = check_time(time)
    if tz is not None:
        fields["tz"] = check_tz(tz)
    if weekday is not None:
        fields["weekday"] = parse_weekday(weekday)
    new_topics = check_topics(topics) if topics is not None else None
    fields = {k: v for k, v in fields.items() if getattr(current, k) != v}
    # Loaded topics carry likes and dislikes, given ones do not: compare what an edit can change.
    if new_topics is not None and [(t.name, t.query) for t in new_topics] == [
        (t.name, t.query) for t in current.topics
    ]:
        new_topics = None
    if fields or new_topics is not None:
        store.update_subscriber(current.id, fields, new_topics)
    return _reload(store, current.id, current.email)


def set_status(
    store: Store, email: str, status: str, *, how: StatusChange = StatusChange.CLI
) -> Subscriber:
    """Pause, resume or unsubscribe; a resumed subscriber skips the papers of their pause.
    `how` goes to the status history."""
    new = check_status(status)
    current = get_subscriber(store, email)
    if new != current.status and how is not StatusChange.CONFIRM:
        if current.status is SubscriberStatus.UNSUBSCRIBED:
            raise ConsentError(left_message(store, current))
        if current.status is SubscriberStatus.PENDING and new is not SubscriberStatus.UNSUBSCRIBED:
            # Not paused either: paused -> active is a resume, which would make someone who
            # never confirmed a subscriber by two admin steps.
            raise ConsentError(
                f"{current.email} signed up on {current.created_at:%Y-%m-%d} but has not "
                "confirmed; only their confirmation link makes them active (they can be removed)"
            )
    resuming = new.receives_mail and not current.status.receives_mail
    if new != current.status:
        store.set_subscriber_status(current.id, new, how=how, reset_watermark=resuming)
    return _reload(store, current.id, current.email)


def unsubscribe_by_token(store: Store, token: str, *, how: StatusChange) -> bool:
    """Unsubscribe whoever holds this token; True if someone does (already unsubscribed too).
    `how` (a link, one-click) goes to the status history."""
    if not token or len(token) > 200:
        return False
    return store.unsubscribe_token(token, how=how)


def remove_subscriber(store: Store, email: str) -> None:
    """Delete a subscriber with their topics, digests and delivery ledger. Removing someone
    who unsubscribed leaves a suppression entry: removal must not be a way to re-add them."""
    current = get_subscriber(store, email)
    suppress = None
    if current.status is SubscriberStatus.UNSUBSCRIBED:
        left = departure(store, current)
        why = f"unsubscribed{_when_how(left)}, then removed"
        suppress = Suppression(email_hash(current.email), datetime.now(UTC), why)
    store.delete_subscriber(current.id, suppress=suppress)


def wipe_subscriber(
    store: Store,
    email: str,
    *,
    reason: str = "erased at their request",
    now: datetime | None = None,
) -> Suppression:
    """Delete everything stored about a person (profile, topics, ledger, digests, history,
    feedback), keeping only a suppression entry: a sha256 of the normalised address with when
    and why, so no import or admin add re-adds them. Their own sign-up lifts it once confirmed."""
    current = get_subscriber(store, email)
    entry = Suppression(email_hash(current.email), _now(now), reason)
    store.delete_subscriber(current.id, suppress=entry)
    return entry


# --- consent -------------------------------------------------------------------------------------


def email_hash(address: str) -> str:
    """The suppression key of an address: sha256 (hex) of its normalised form."""
    return hashlib.sha256(_lookup_form(address).encode("utf-8")).hexdigest()


def departure(store: Store, sub: Subscriber) -> SubscriberEvent | None:
    """The status-history row of the subscriber's latest unsubscription, or None."""
    gone = [
        e for e in store.subscriber_events(sub.id) if e.new_status is SubscriberStatus.UNSUBSCRIBED
    ]
    return gone[-1] if gone else None


def _when_how(event: SubscriberEvent | None) -> str:
    if event is None:
        return " (when and how were not recorded)"
    return f" on {event.at:%Y-%m-%d} by {event.how}"


def left_message(store: Store, sub: Subscriber) -> str:
    """Why an admin path may not bring this unsubscribed person back: when and how they left."""
    return (
        f"{sub.email} unsubscribed{_when_how(departure(store, sub))}; only they can subscribe "
        "again (sign-up with double opt-in)"
    )


def check_not_suppressed(store: Store, email: str) -> None:
    """ConsentError naming the address if it was wiped (a suppression entry exists)."""
    address = _lookup_form(email)
    entry = store.suppression(email_hash(address))
    if entry is not None:
        raise ConsentError(
            f"{address} was erased on {entry.at:%Y-%m-%d} ({entry.reason}); only they can "
            "subscribe again (sign-up with double opt-in)"
        )


def prepare_confirmation(
    store: Store,
    settings: Settings,
    email: str,
    *,
    name: str = "",
    topics: Sequence[Topic] = (),
    now: datetime | None = None,
    schedule: Mapping[str, str] | None = None,
) -> Subscriber | None:
    """The work behind a sign-up (or a re-subscribe request): a new address becomes a pending
    subscriber; a pending or unsubscribed one is due a confirmation email unless one went out in
    the last web.confirm_interval_minutes (recorded in the store, so restarts do not reset it).
    Returns the subscriber to mail, or None (already active, paused, or mailed recently)."""
    now = _now(now)
    address = normalize_email(email)
    sub = store.subscriber_by_email(address)
    if sub is None:
        chosen = dict(schedule or {})  # cadence, time, tz, weekday picked on the sign-up form
        try:
            sub = add_subscriber(
                store, settings, address, name=name[:100], topics=topics,
                cadence=chosen.get("cadence") or Cadence.DAILY,
                time=chosen.get("time") or None, tz=chosen.get("tz") or None,
                weekday=parse_weekday(chosen.get("weekday") or 0),
                status=SubscriberStatus.PENDING, now=now, how=StatusChange.SIGNUP,
            )  # fmt: skip
        except FieldError:  # signed up by a concurrent request meanwhile
            sub = store.subscriber_by_email(address)
            if sub is None:
                raise
    if sub.status not in (SubscriberStatus.PENDING, SubscriberStatus.UNSUBSCRIBED):
        return None
    interval = timedelta(minutes=settings.web.confirm_interval_minutes)
    if not store.claim_confirmation(sub.id, now, now - interval):
        return None
    return sub


def confirmation_failed(store: Store, sub: Subscriber) -> None:
    """The confirmation email could not be sent: let the next sign-up try again at once."""
    store.release_confirmation(sub.id)


def can_confirm(store: Store, sub: Subscriber) -> bool:
    """Whether this person's confirmation link would (re)activate them now: pending, or
    unsubscribed with a confirmation email sent after they left."""
    if sub.status is SubscriberStatus.PENDING:
        return True
    if sub.status is not SubscriberStatus.UNSUBSCRIBED:
        return False
    sent = store.confirmation_sent_at(sub.id)
    left = departure(store, sub)
    return sent is not None and (left is None or sent > left.at)


def confirm(store: Store, sub: Subscriber) -> bool:
    """The person pressed Confirm on their confirmation link: a pending subscriber becomes
    active; an unsubscribed one only if a confirmation was sent after they left (an older link
    does not bring them back). Lifts a suppression of the address. True if now active."""
    if not can_confirm(store, sub):
        return sub.status is SubscriberStatus.ACTIVE
    set_status(store, sub.email, SubscriberStatus.ACTIVE, how=StatusChange.CONFIRM)
    store.lift_suppression(email_hash(sub.email))
    return True


def history_to_json(events: Sequence[SubscriberEvent]) -> list[dict[str, Any]]:
    """The status history as `subscriber show --json` gives it: oldest first."""
    return [
        {
            "at": e.at.isoformat(timespec="seconds"),
            "from": e.old_status.value if e.old_status else None,
            "to": e.new_status.value,
            "how": e.how.value,
        }
        for e in events
    ]


def export_data(store: Store, settings: Settings, email: str) -> dict[str, Any]:
    """Everything stored about one person, as JSON-ready data: profile, topics, status
    history, deliveries (paper titles and dates), digests sent, feedback."""
    sub = get_subscriber(store, email)
    sent = store.confirmation_sent_at(sub.id)
    return {
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": {
            **subscriber_to_json(sub, settings, store),
            "weekday": WEEKDAYS[sub.weekday],
            "created_at": sub.created_at.isoformat(timespec="seconds"),
            "since": sub.since.isoformat(timespec="seconds") if sub.since else None,
            "bounces": sub.bounces,
            "confirmation_sent_at": sent.isoformat(timespec="seconds") if sent else None,
        },
        "topics": subscriber_to_json(sub, settings, store)["topics"],
        "history": history_to_json(store.subscriber_events(sub.id)),
        "deliveries": [
            {
                "title": e.paper.title,
                "published": e.paper.published.isoformat() if e.paper.published else None,
                "delivered_at": e.delivered_at.isoformat(timespec="seconds"),
                "topics": list(e.item.topics),
            }
            for e in store.ledger_entries(sub.id, 2**31 - 1)
        ],
        "digests": history(store, sub.email),
        "feedback": [
            {
                "title": f.title,
                "topic": f.topic,
                "verdict": f.verdict,
                "paper_id": f.paper_id,
                "at": f.at.isoformat(timespec="seconds"),
            }
            for f in store.feedback_of(sub.id)
        ],
    }


def feed_url(sub: Subscriber, settings: Settings) -> str:
    """The subscriber's private Atom feed."""
    return urls.feed_url(settings.site.base_url, "atom", sub.token)


def subscriber_to_json(
    sub: Subscriber, settings: Settings, store: Store | None = None
) -> dict[str, Any]:
    """The public JSON shape of a subscriber (CONTRACT.md, `subscriber show --json`); with the
    store, topics carry `likes` and `dislikes` (paper titles), else empty lists."""
    if store is not None:
        topic_list = topics_json(store, sub)
    else:
        topic_list = [
            {"name": t.name, "query": t.query, "likes": [], "dislikes": []} for t in sub.topics
        ]
    return {
        "email": sub.email,
        "name": sub.name,
        "status": sub.status,
        "cadence": sub.cadence,
        "time": sub.time,
        "tz": sub.tz,
        "topics": topic_list,
        "feed_url": feed_url(sub, settings),
    }


def history(store: Store, email: str) -> list[dict[str, Any]]:
    """Email digests sent to a subscriber, newest first (CONTRACT.md, `digest history --json`)."""
    sub = get_subscriber(store, email)
    return [
        {
            "message_id": entry.message_id,
            "sent_at": entry.sent_at.isoformat() if entry.sent_at else None,
            "papers": [{"title": p.title, "topic": p.topic} for p in entry.papers],
        }
        for entry in store.subscriber_history(sub.id)
    ]


# --- CSV import and export -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected CSV row: its first line, the column at fault and why."""

    file: str
    line: int
    column: str
    message: str
    address: str = ""  # the row's email cell as written, when it has one

    def __str__(self) -> str:
        # a message about the row's address itself names it already
        named = self.address and not self.message.startswith(self.address)
        where = f"{self.file}:{self.line}: {self.address + ': ' if named else ''}"
        if self.column == "-":  # the row as a whole (cell count, CSV syntax)
            return f"{where}{self.message}"
        return f"{where}column {self.column}: {self.message}"


@dataclass
class ImportReport:
    """What an import did: rows added, updated, unchanged, and the rows rejected."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    warnings: list[RowError] = field(default_factory=list)  # probable mistakes, row still taken

    def summary(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{len(self.errors)} rows rejected"
        )


def import_csv(
    store: Store,
    settings: Settings,
    path: str | Path,
    *,
    dry_run: bool = False,
    index: PaperIndex | None = None,
) -> ImportReport:
    """Add or update subscribers from a CSV file; every row is checked and bad rows reported
    (by line, address and column) without stopping the good ones, and each row's topic
    warnings too (`index`: the stored papers a topic's coverage counts against). `dry_run`
    only checks."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(text.splitlines(keepends=True))
    report = ImportReport()
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationError(f"{path}: empty file; expected a header line") from None
    except csv.Error as exc:
        raise ValidationError(f"{path}:1: not valid CSV: {exc}") from None
    columns = [h.strip().lower() for h in header]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown or "email" not in columns or len(set(columns)) != len(columns):
        raise ValidationError(
            f"{path}:1: header must name 'email' and only these columns, once each: "
            f"{', '.join(CSV_COLUMNS)} (found {', '.join(columns) or 'nothing'})"
        )
    seen: dict[str, int] = {}
    at = columns.index("email")  # each row's address names its errors and warnings
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.errors.append(RowError(str(path), line, "-", f"not valid CSV: {exc}"))
            break
        start, line = line, reader.line_num + 1
        if not any(c.strip() for c in cells):
            continue
        address = one_line(clean_text(cells[at] if at < len(cells) else "")).strip()[:320]
        if len(cells) != len(columns):
            report.errors.append(
                RowError(
                    str(path),
                    start,
                    "-",
                    f"{len(cells)} cells but the header has {len(columns)} columns",
                    address,
                )
            )
            continue
        row = dict(zip(columns, cells, strict=True))
        found = len(report.errors)
        _import_row(store, settings, row, str(path), start, seen, report, dry_run)
        for k in range(found, len(report.errors)):
            report.errors[k] = dataclasses.replace(report.errors[k], address=address)
        if len(report.errors) > found:
            continue  # a refused row: its errors say what to mend; no advice on its topics
        with contextlib.suppress(DigestError):  # a bad topic is already an error of the row
            for warning in topic_notes(parse_topics(row.get("topics", "")), index):
                report.warnings.append(RowError(str(path), start, "-", warning, address))
    return report


def _import_row(
    store: Store,
    settings: Settings,
    row: dict[str, str],
    file: str,
    line: int,
    seen: dict[str, int],
    report: ImportReport,
    dry_run: bool,
) -> None:
    errors: list[RowError] = []
    values: dict[str, Any] = {}
    checks = {
        "email": normalize_email,
        "name": check_name,
        "status": check_status,
        "cadence": check_cadence,
        "time": check_time,
        "tz": check_tz,
        "weekday": parse_weekday,
        "topics": parse_topics,
    }
    for column, check in checks.items():
        raw = row.get(column, "")
        if column != "name" and not raw.strip():
            continue  # empty: the default for a new subscriber, unchanged for a known one
        try:
            values[column] = check(raw)
        except (ValidationError, QueryError) as exc:
            errors.append(RowError(file, line, column, str(exc)))
    if "email" not in values and not any(e.column == "email" for e in errors):
        errors.append(RowError(file, line, "email", "no address"))
    address: str = values.get("email", "")
    if address in seen:
        errors.append(RowError(file, line, "email", f"{address} already on line {seen[address]}"))
    if errors:
        report.errors.extend(errors)
        return
    seen[address] = line
    try:
        _apply_row(store, settings, address, row, values, report, dry_run)
    except DigestError as exc:  # e.g. added by someone else meanwhile
        report.errors.append(RowError(file, line, "-", str(exc)))


def _apply_row(
    store: Store,
    settings: Settings,
    address: str,
    row: dict[str, str],
    values: dict[str, Any],
    report: ImportReport,
    dry_run: bool,
) -> None:
    existing = store.subscriber_by_email(address)
    if existing is None:
        check_not_suppressed(store, address)  # also on a dry run: the row would be refused
        if not dry_run:
            add_subscriber(
                store,
                settings,
                address,
                name=values.get("name", ""),
                topics=values.get("topics", ()),
                cadence=values.get("cadence", Cadence.DAILY),
                time=values.get("time"),
                tz=values.get("tz"),
                weekday=values.get("weekday", 0),
                status=values.get("status", SubscriberStatus.ACTIVE),
                how=StatusChange.IMPORT,
            )
        report.added += 1
        return
    if "name" in row and not row["name"].strip():
        values.pop("name", None)  # an empty name cell leaves a known subscriber's name alone
    changed = any(
        getattr(existing, k) != v for k, v in values.items() if k not in ("email", "topics")
    ) or ("topics" in values and values["topics"] != existing.topics)
    if not changed:
        report.unchanged += 1
        return
    if existing.status is SubscriberStatus.UNSUBSCRIBED:
        raise ConsentError(left_message(store, existing))
    if not dry_run:
        if "status" in values:  # first: a refused status leaves the row unapplied
            set_status(store, address, values["status"], how=StatusChange.IMPORT)
        edit_subscriber(
            store,
            settings,
            address,
            name=values.get("name"),
            topics=values.get("topics"),
            cadence=values.get("cadence"),
            time=values.get("time"),
            tz=values.get("tz"),
            weekday=values.get("weekday"),
        )
    report.updated += 1


def export_csv(store: Store, out: TextIO) -> int:
    """Write every subscriber as CSV that import_csv reads back; returns the row count."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    batch = 1000
    while True:
        subs = store.list_subscribers(offset=count, limit=batch)
        for s in subs:
            writer.writerow(
                [
                    s.email,
                    s.name,
                    s.status,
                    s.cadence,
                    s.time,
                    s.tz,
                    WEEKDAYS[s.weekday],
                    format_topics(s.topics),
                ]
            )
        count += len(subs)
        if len(subs) < batch:
            return count


# --- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _about(address: str) -> Iterator[None]:
    """Prefix validation messages with the address concerned (once)."""
    try:
        yield
    except FieldError as exc:
        if not str(exc).startswith(address):
            exc.args = (f"{address}: {exc}",)
        raise
    except TopicQueryError as exc:
        exc.args = (f"{address}: {exc}",)
        raise


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _lookup_form(email: str) -> str:
    """The stored form of an address to look up; a malformed one cannot be stored, so it is
    simply not found (the message still names what was asked for)."""
    try:
        return normalize_email(email)
    except ValidationError:
        return (email or "").strip().lower()


def _reload(store: Store, subscriber_id: int, email: str) -> Subscriber:
    found = store.subscriber_by_id(subscriber_id)
    if found is None:
        raise NotFoundError(f"no subscriber {email} (removed meanwhile)")
    return found


def resolve_papers(store: Store, refs: Sequence[str]) -> list[StoredPaper]:
    """Stored papers named by id (as `digest match --json` prints) or exact title."""
    out = []
    for ref in refs:
        ref = ref.strip()
        paper = None
        if ref.isdigit():
            paper = store.papers_by_ids([int(ref)]).get(int(ref))
        if paper is None:
            paper = store.paper_by_key(paper_key(ref))
        if paper is None:
            raise NotFoundError(f"no stored paper has the id or title {ref!r}")
        out.append(paper)
    return out
