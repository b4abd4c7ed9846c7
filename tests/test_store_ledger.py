"""The ledger and claims parts of the store (digest/store/ledger.py, claims.py) on SQLite and
PostgreSQL: plans recorded from PlanProgress records, ledger rows read back as records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from digest.models import (
    Cadence,
    DigestKind,
    DigestStatus,
    Paper,
    ParseResult,
    StatusChange,
    Subscriber,
    Topic,
)
from digest.store import LedgerEntry, LedgerItem, PlanProgress, SentDigest, SentPaper, Store

T0 = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


def _subscriber(store: Store, email: str, cadence: str) -> int:
    sub = Subscriber(
        id=0, email=email, name="", status="active", cadence=cadence, time="07:00", tz="UTC",
        weekday=0, created_at=T0, token=f"t-{email}", topics=(Topic("T", "p"),),
    )  # fmt: skip
    return store.insert_subscriber(sub, how=StatusChange.CLI).id


def _papers(store: Store, n: int) -> list[int]:
    found = tuple(Paper(f"Paper {i}", f"about {i}") for i in range(n))
    store.ingest_dump("d", "1" * 64, 1, ParseResult(papers=found), received_at=T0)
    return sorted(p.id for p in store.recent_papers(n))


def test_record_plans_writes_digests_ledger_rows_and_progress(store: Store) -> None:
    mail, feed, idle = (
        _subscriber(store, "mail@example.org", "daily"),
        _subscriber(store, "feed@example.org", "feed"),
        _subscriber(store, "idle@example.org", "weekly"),
    )
    p1, p2 = _papers(store, 2)
    items = [
        LedgerItem(paper_id=p1, topics=("T",), terms=("paper",), score=1.0),
        LedgerItem(paper_id=p2, topics=("T", "U"), terms=("about",), score=2.0, why="suggested"),
    ]
    slot, upcoming = T0 + timedelta(hours=1), T0 + timedelta(days=1)
    by_subscriber = store.record_plans(
        [
            PlanProgress(mail, DigestKind.EMAIL, items, p2, slot, upcoming),
            PlanProgress(feed, DigestKind.FEED, items[:1], p2, slot),
            PlanProgress(idle, DigestKind.EMAIL, [], p2, slot, upcoming),  # only advances
        ],
        now=T0,
        message_id=lambda i: f"<{i}@example.org>",
    )
    assert list(by_subscriber) == [mail, feed]  # the idle one only advanced
    created = list(by_subscriber.values())
    records = store.digest_records(created)
    email, feed_digest = (records[i] for i in created)
    assert (email.kind, email.status, email.message_id) == (
        "email", "queued", f"<{created[0]}@example.org>",
    )  # fmt: skip
    assert type(email.kind) is DigestKind and type(email.status) is DigestStatus
    assert (feed_digest.kind, feed_digest.status) == ("feed", "sent")
    assert store.digest_ids_by_status(DigestStatus.QUEUED) == [created[0]]  # emails only
    assert all(isinstance(e, LedgerEntry) for e in email.items)
    assert [(e.paper.id, e.item.topics, e.item.why, e.delivered_at) for e in email.items] == [
        (p2, ("T", "U"), "suggested", T0),  # best score first
        (p1, ("T",), "", T0),
    ]
    states = {s.subscriber.id: s for s in store.subscribers_for_delivery()}
    assert {sid: (s.watermark, s.last_slot) for sid, s in states.items()} == {
        mail: (p2, slot), feed: (p2, slot), idle: (p2, slot),
    }  # fmt: skip
    # the next slot recorded keeps daily/weekly subscribers out of the due query until then
    due_soon = {s.subscriber.id for s in store.subscribers_for_delivery(due_at=slot)}
    assert due_soon == set()
    due_later = store.subscribers_for_delivery(due_at=upcoming)
    assert {s.subscriber.id for s in due_later} == {mail, idle}
    assert store.delivered_pairs([mail, feed], [p1, p2]) == {(mail, p1), (mail, p2), (feed, p1)}

    (entry, *_older) = store.ledger_entries(feed, 10)
    assert entry == LedgerEntry(store.papers_by_ids([p1])[p1], items[0], T0)


def test_subscriber_history_lists_sent_email_digests_as_records(store: Store) -> None:
    sid = _subscriber(store, "mail@example.org", "instant")
    p1, p2 = _papers(store, 2)
    items = [
        LedgerItem(paper_id=p1, topics=("T",), terms=(), score=1.0),
        LedgerItem(paper_id=p2, topics=(), terms=(), score=3.0),
    ]
    (digest_id,) = store.record_plans(
        [PlanProgress(sid, DigestKind.EMAIL, items, p2, T0)], now=T0, message_id=lambda i: "<m>"
    ).values()
    assert store.subscriber_history(sid) == []  # queued, not sent
    store.mark_digest_sent(digest_id, now=T0 + timedelta(minutes=1))
    titles = {p.id: p.title for p in store.recent_papers(2)}
    assert store.subscriber_history(sid) == [
        SentDigest(
            digest_id, "<m>", T0 + timedelta(minutes=1),
            (SentPaper(titles[p2], None), SentPaper(titles[p1], "T")),
        )
    ]  # fmt: skip


def test_subscribers_for_delivery_filters_by_cadence_and_id_in_the_query(store: Store) -> None:
    mail = _subscriber(store, "mail@example.org", "daily")
    feed = _subscriber(store, "feed@example.org", "feed")
    instant = _subscriber(store, "now@example.org", "instant")

    def ids(**where: Any) -> list[int]:
        return [s.subscriber.id for s in store.subscribers_for_delivery(**where)]

    assert ids() == [mail, feed, instant]
    assert ids(cadences=[Cadence.FEED]) == [feed]  # `digest feeds` reads only these
    assert ids(ids=[instant]) == [instant]  # a preview reads one subscriber
    assert ids(cadences=[Cadence.FEED], ids=[mail]) == []
