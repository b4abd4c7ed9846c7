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


def test_recorded_instants_compare_equal_in_sql_and_ids_follow_the_database(
    store: Store,
) -> None:
    """Rows written as plain driver rows store their instants as SQLAlchemy does (so a digest's
    created_at equals its ledger rows' delivered_at in SQL), and digest ids taken up front
    are those the database gives next (after the newest digest was deleted, too)."""
    from sqlalchemy import text

    a, b = (_subscriber(store, f"{n}@example.org", "daily") for n in "ab")
    p1, p2 = _papers(store, 2)
    item = LedgerItem(paper_id=p1, topics=("T",), terms=("paper",), score=1.0)
    extra = LedgerItem(paper_id=p2, topics=("T",), terms=("about",), score=0.5)

    def record(sid: int) -> int:
        plan = PlanProgress(sid, DigestKind.EMAIL, [item], p2, T0, T0 + timedelta(days=1),
                            extra=[extra], matched=2)  # fmt: skip
        (digest_id,) = store.record_plans([plan], now=T0, message_id=lambda i: f"<{i}@x>").values()
        return digest_id

    first = record(a)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM digests WHERE id = :i"), {"i": first})
        conn.execute(text("DELETE FROM deliveries WHERE subscriber_id = :s"), {"s": a})
        conn.execute(text("INSERT INTO digests (subscriber_id, kind, message_id, status, "
                          "created_at, attempts) VALUES (:s, 'email', '<by-hand>', 'sent', "
                          ":t, 0)"), {"s": a, "t": T0.replace(tzinfo=None)})  # fmt: skip
        by_hand = conn.scalar(text("SELECT max(id) FROM digests"))
    second = record(b)
    assert second == by_hand + 1
    with store.engine.connect() as conn:
        same = conn.scalar(
            text(
                "SELECT count(*) FROM deliveries d JOIN digests g ON g.id = d.digest_id "
                "JOIN subscribers s ON s.id = d.subscriber_id WHERE d.delivered_at = "
                "g.created_at AND g.next_attempt_at = g.created_at AND s.last_slot = :t"
            ),
            {"t": T0 if store.dialect != "sqlite" else "2026-03-03 07:00:00.000000"},
        )
    assert same == 1
    (page_item,) = store.digest_records([second])[second].items
    assert (page_item.paper.id, page_item.item.terms, page_item.delivered_at) == (
        p1, ("paper",), T0,
    )  # fmt: skip


def test_a_plan_naming_no_such_paper_or_subscriber_records_nothing_of_its_page(
    store: Store,
) -> None:
    # the page's parents are checked in bulk (ledger._check_parents; on SQLite instead of per
    # row): a missing paper or subscriber refuses the whole page with a clear error, and the
    # SQLite connection goes back to the pool with its foreign keys on
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from digest.errors import StoreError

    a, b = (_subscriber(store, f"{n}@example.org", "daily") for n in "ab")
    (p1,) = _papers(store, 1)
    item = LedgerItem(paper_id=p1, topics=("T",), terms=("paper",), score=1.0)
    ghost = LedgerItem(paper_id=p1 + 1000, topics=("T",), terms=("x",), score=0.5)

    def plan(sid: int, items: list[LedgerItem], extra: tuple = ()) -> PlanProgress:
        return PlanProgress(sid, DigestKind.EMAIL, items, p1, T0, T0 + timedelta(days=1),
                            extra=extra)  # fmt: skip

    def record(plans: list[PlanProgress]) -> dict[int, int]:
        return store.record_plans(plans, now=T0, message_id=lambda i: f"<{i}@x>")

    bad = (
        [plan(a, [item]), plan(b, [item, ghost])],  # a paper that is not stored
        [plan(a, [item]), plan(b, [item], extra=(ghost,))],  # nor in the extras
        [plan(a, [item]), plan(b + 1000, [item])],  # a subscriber that is not
    )
    for plans, missing in zip(bad, ("paper", "paper", "subscriber"), strict=True):
        with pytest.raises(
            StoreError,
            match=f"no such {missing} \\(id {p1 + 1000 if missing == 'paper' else b + 1000}\\)",
        ):
            record(plans)
        with store.engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM digests")) == 0
            assert conn.scalar(text("SELECT count(*) FROM deliveries")) == 0
            assert conn.scalar(text("SELECT count(*) FROM digest_extras")) == 0
    assert {s.subscriber.id: s.watermark for s in store.subscribers_for_delivery()} == {
        a: 0, b: 0
    }  # fmt: skip
    assert len(record([plan(a, [item]), plan(b, [item])])) == 2
    if store.dialect == "sqlite":  # the pooled connection enforces foreign keys again
        with pytest.raises(IntegrityError), store.engine.begin() as conn:
            sql = (
                "INSERT INTO deliveries (subscriber_id, paper_id, delivered_at) VALUES (:s, :p, '')"
            )
            conn.execute(text(sql), {"s": a, "p": p1 + 1000})


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


def test_ledger_rows_written_through_the_driver_match_what_sqlalchemy_writes(
    store: Store,
) -> None:
    from sqlalchemy import text

    sid = _subscriber(store, "mail@example.org", "daily")
    (p1,) = _papers(store, 1)
    now = T0 + timedelta(microseconds=123456)
    item = LedgerItem(paper_id=p1, topics=("T", "Ü"), terms=('"odd"', "word"), score=0.5)
    (digest_id,) = store.record_plans(
        [PlanProgress(sid, DigestKind.EMAIL, [item], p1, now)], now=now, message_id=str
    ).values()
    with store.engine.connect() as conn:
        # digests.created_at goes through SQLAlchemy's types, deliveries.delivered_at through
        # the driver's executemany: the same stored value, so both compare and sort alike.
        row = conn.execute(
            text(
                "SELECT d.created_at, l.delivered_at, d.message_id FROM digests d "
                "JOIN deliveries l ON l.digest_id = d.id"
            )
        ).one()
    assert row[0] == row[1] and row[2] == str(digest_id)
    (entry,) = store.digest_records([digest_id])[digest_id].items
    assert (entry.item, entry.delivered_at) == (item, now)
    assert [s.id for s in store.subscribers_with_deliveries_since(now - timedelta(seconds=1))] == [
        sid
    ]
    assert store.subscribers_with_deliveries_since(now) == []


def test_grouped_mark_sent_and_papers_read_once_per_pass(store: Store) -> None:
    subs = [_subscriber(store, f"m{i}@example.org", "daily") for i in range(3)]
    (p1,) = _papers(store, 1)
    item = LedgerItem(paper_id=p1, topics=("T",), terms=(), score=1.0)
    created = store.record_plans(
        [PlanProgress(s, DigestKind.EMAIL, [item], p1, T0) for s in subs],
        now=T0,
        message_id=lambda i: f"<{i}@x>",
    )
    ids = list(created.values())
    seen: dict[int, Any] = {}
    first = store.digest_records(ids[:1], seen)
    assert set(seen) == {p1}
    again = store.digest_records(ids[1:], seen)
    assert again[ids[1]].items[0].paper is first[ids[0]].items[0].paper  # not read again
    store.claim_digests("w:1", limit=3, lease_until=T0 + timedelta(hours=1), now=T0)
    store.mark_digests_sent(ids[:2], now=T0 + timedelta(minutes=1))
    assert store.digest_ids_by_status(DigestStatus.SENT) == ids[:2]
    assert store.digest_ids_by_status(DigestStatus.SENDING) == ids[2:]
    assert [store.digest_records([i])[i].attempts for i in ids] == [1, 1, 0]


def test_count_may_be_due_counts_email_digests_a_pass_may_record(store: Store) -> None:
    # what sending() starts helpers for: email subscribers with papers after their watermark,
    # instant ones, and daily/weekly ones whose slot has come; not feed-only subscribers, not
    # those with nothing new, not a slot still to be worked out (NULL), unless forced (None)
    _subscriber(store, "fresh@example.org", "instant")
    seen = _subscriber(store, "seen@example.org", "instant")
    _subscriber(store, "feed@example.org", "feed")
    _subscriber(store, "unset@example.org", "daily")  # next_due_at NULL
    due = _subscriber(store, "due@example.org", "daily")
    later = _subscriber(store, "later@example.org", "weekly")
    p1, p2 = _papers(store, 2)
    store.record_plans(
        [
            PlanProgress(seen, DigestKind.EMAIL, [], p2, T0),
            PlanProgress(due, DigestKind.EMAIL, [], p1, T0, T0 + timedelta(hours=1)),
            PlanProgress(later, DigestKind.EMAIL, [], p1, T0, T0 + timedelta(days=7)),
        ],
        now=T0,
        message_id=lambda i: f"<{i}@example.org>",
    )
    assert store.count_may_be_due(due_at=T0) == 1  # fresh
    assert store.count_may_be_due(due_at=T0 + timedelta(hours=2)) == 2  # fresh, due
    assert store.count_may_be_due(due_at=None) == 4  # fresh, unset, due, later


def test_positional_reads_build_the_same_subscribers_as_named_ones(store: Store) -> None:
    # The queue and the workers read subscribers, topics and ledger rows by column position:
    # every field must land where the named reads (admin, web) put it.
    sub = Subscriber(
        id=0, email="pos@example.org", name="Ada", status="active", cadence="weekly",
        time="06:30", tz="Europe/Paris", weekday=3, created_at=T0, token="tok-pos",
        topics=(Topic("A", "alpha"), Topic("B", "beta")), since=T0 - timedelta(days=2),
        bounces=1,
    )  # fmt: skip
    sid = store.insert_subscriber(sub, how=StatusChange.CLI).id
    p1, p2, p3 = _papers(store, 3)
    store.record_feedback(sid, "B", p1, "like", at=T0)
    store.record_feedback(sid, "B", p2, "dislike", at=T0)
    named = store.subscriber_by_email("pos@example.org")
    assert named is not None and named.topics[1].likes == (p1,)
    (state,) = store.subscribers_for_delivery(ids=[sid])
    assert state.subscriber == named
    assert state.last_slot is None and state.watermark == 0
    items = [
        LedgerItem(paper_id=p1, topics=("B", "A"), terms=("about",), score=2.5, why="why 1"),
        LedgerItem(paper_id=p2, topics=("A",), terms=(), score=1.0),
    ]
    ids = store.record_plans(
        [PlanProgress(sid, DigestKind.EMAIL, items, p2, T0, T0 + timedelta(days=7))],
        now=T0,
        message_id=lambda i: f"<{i}@example.org>",
    )
    record = store.digest_records([ids[sid]])[ids[sid]]
    assert record.subscriber == named
    assert [e.item for e in record.items] == items
    assert [e.delivered_at for e in record.items] == [T0, T0]
    assert all(e.delivered_at.tzinfo is UTC for e in record.items)
    named_rows = sorted(store.ledger_entries(sid, 10), key=lambda e: -e.item.score)
    assert record.items == named_rows  # the named read of the same rows (feeds, web)
    # a rising paper comes back in a later digest, read from its own table, after the new ones
    later = T0 + timedelta(days=7)
    new = LedgerItem(paper_id=p3, topics=("A",), terms=("about",), score=0.5)
    back = LedgerItem(paper_id=p1, topics=("A", "B"), terms=("paper",), score=3.0, rising=True)
    ids = store.record_plans(
        [PlanProgress(sid, DigestKind.EMAIL, [back, new], p3, later, later, p2, T0)],
        now=later,
        message_id=lambda i: f"<{i}@example.org>",
    )
    record = store.digest_records([ids[sid]])[ids[sid]]
    assert [e.item for e in record.items] == [new, back]
    assert [e.delivered_at for e in record.items] == [later, later]
    rising_named = [e for e in store.ledger_entries(sid, 10) if e.item.rising]
    assert record.items[1] == rising_named[0]
