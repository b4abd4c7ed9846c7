"""Feedback in the store (digest/store/feedback.py, subscribers.topic_select) on SQLite and
PostgreSQL: one verdict per (subscriber, topic, paper), undo, examples, topics loaded with their
likes and dislikes, and feedback through topic edits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.errors import ValidationError
from digest.models import (
    DigestKind,
    Paper,
    ParseResult,
    StatusChange,
    Subscriber,
    Topic,
)
from digest.store import LedgerItem, PlanProgress, Store

T0 = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


def new(
    email: str, topics: tuple[Topic, ...] = (Topic("T", "fast"), Topic("U", "slow"))
) -> Subscriber:
    return Subscriber(
        id=0, email=email, name="", status="active", cadence="daily", time="07:00", tz="UTC",
        weekday=0, created_at=T0, token=f"token-{email}", topics=topics,
    )  # fmt: skip


def _papers(store: Store, n: int = 3) -> list[int]:
    found = tuple(Paper(f"Paper number {i}", f"abstract {i}") for i in range(n))
    store.ingest_dump("d", "0" * 64, 1, ParseResult(papers=found), received_at=T0)
    return sorted(p.id for p in store.recent_papers())


def _topics(store: Store, sid: int) -> list[Topic]:
    sub = store.subscriber_by_id(sid)
    assert sub is not None
    return list(sub.topics)


def test_a_like_replaces_a_dislike_and_undo_removes_it(store: Store) -> None:
    a, b, _ = _papers(store)
    sid = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI).id
    assert store.record_feedback(sid, "T", a, "dislike", at=T0)
    assert store.record_feedback(sid, "T", a, "like", at=T0)
    assert not store.record_feedback(sid, "T", a, "like", at=T0)  # no change
    assert store.record_feedback(sid, "T", b, "dislike", at=T0)
    assert store.record_feedback(sid, "U", b, "like", at=T0)
    assert store.verdict_of(sid, "T", a) == "like"
    assert [(f.topic, f.paper_id, f.verdict) for f in store.examples_of(sid)] == [
        ("T", a, "like"),
        ("T", b, "dislike"),
        ("U", b, "like"),
    ]
    assert [f.title for f in store.examples_of(sid, "U")] == ["Paper number 1"]
    assert store.remove_feedback(sid, "T", a)
    assert not store.remove_feedback(sid, "T", a)
    assert store.verdict_of(sid, "T", a) is None
    with pytest.raises(ValidationError, match="verdict"):
        store.record_feedback(sid, "T", a, "love")


def test_topics_load_with_sorted_likes_and_dislikes_everywhere(store: Store) -> None:
    a, b, c = _papers(store)
    sid = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI).id
    other = store.insert_subscriber(new("b@example.org"), how=StatusChange.CLI).id
    for paper in (c, a):
        store.record_feedback(sid, "T", paper, "like")
    store.record_feedback(sid, "T", b, "dislike")
    store.record_feedback(other, "U", a, "dislike")
    want = [Topic("T", "fast", (a, c), (b,)), Topic("U", "slow")]
    assert _topics(store, sid) == want
    assert [s.topics for s in store.list_subscribers()] == [
        tuple(want),
        (Topic("T", "fast"), Topic("U", "slow", (), (a,))),
    ]
    states = {s.subscriber.id: s.subscriber.topics for s in store.subscribers_for_delivery()}
    assert states[sid] == tuple(want)
    assert store.subscribers_for_delivery(limit=1)[0].subscriber.topics == tuple(want)
    assert states[other][1].has_examples and not states[other][0].has_examples


def test_an_edit_keeps_renames_in_place_and_drops_removed_topics_feedback(store: Store) -> None:
    a, b, c = _papers(store)
    topics = (Topic("T", "fast"), Topic("U", "slow"), Topic("V", "mid"))
    sid = store.insert_subscriber(new("a@example.org", topics), how=StatusChange.CLI).id
    store.record_feedback(sid, "T", a, "like")
    store.record_feedback(sid, "U", b, "like")
    store.record_feedback(sid, "V", c, "dislike")
    # T kept (moved), U renamed in place to W, V removed.
    store.update_subscriber(sid, {}, [Topic("W", "slow"), Topic("T", "fast")])
    assert _topics(store, sid) == [Topic("W", "slow"), Topic("T", "fast", (a,))]
    assert [(f.topic, f.paper_id) for f in store.examples_of(sid)] == [("T", a)]
    # position 0: "W" -> "X" is a rename; feedback follows.
    store.update_subscriber(sid, {}, [Topic("X", "slow"), Topic("T", "fast")])
    store.record_feedback(sid, "X", b, "like")
    store.update_subscriber(sid, {}, [Topic("Y", "slow"), Topic("T", "fast")])
    assert _topics(store, sid)[0] == Topic("Y", "slow", (b,))


def test_a_paper_is_found_by_id_or_title_and_its_delivered_topic(store: Store) -> None:
    a, b, _ = _papers(store)
    assert [p.id for p in store.papers_by_ref(str(a))] == [a]
    assert [p.id for p in store.papers_by_ref("Paper number 1")] == [b]
    assert [p.id for p in store.papers_by_ref("  paper NUMBER 1 ")] == [b]
    assert store.papers_by_ref("No such paper") == []
    assert store.papers_by_ref("999999999999") == []
    sid = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI).id
    item = LedgerItem(paper_id=b, topics=("U",), terms=("p",), score=1.0)
    plan = PlanProgress(sid, DigestKind.EMAIL, [item], b, T0)
    store.record_plans([plan], now=T0, message_id=lambda i: f"<{i}@x>")
    assert store.delivered_topic(sid, b) == "U"
    assert store.delivered_topic(sid, a) is None
