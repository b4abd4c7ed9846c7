"""The subscribers part of the store (digest/store/subscribers.py) on SQLite and PostgreSQL:
records come back with enums, and every new subscriber and status change leaves a history row."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select

from digest.errors import StoreError
from digest.models import (
    Cadence,
    DigestKind,
    Paper,
    ParseResult,
    StatusChange,
    Subscriber,
    SubscriberStatus,
    Topic,
)
from digest.store import LedgerItem, PlanProgress, Store, feedback, subscriber_events

T0 = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
ACTIVE, PAUSED = SubscriberStatus.ACTIVE, SubscriberStatus.PAUSED


def new(email: str, status: str = "active", n: int = 0) -> Subscriber:
    return Subscriber(
        id=0, email=email, name="", status=status, cadence="daily", time="07:00", tz="UTC",
        weekday=0, created_at=T0, token=f"token-{email}-{n}", topics=(Topic("T", "fast"),),
    )  # fmt: skip


def history(store: Store, sid: int) -> list[tuple[str | None, str, str]]:
    return [(e.old_status, e.new_status, e.how) for e in store.subscriber_events(sid)]


def test_records_hold_enums_equal_to_their_strings(store: Store) -> None:
    sub = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI)
    assert type(sub.status) is SubscriberStatus and type(sub.cadence) is Cadence
    assert (sub.status, sub.cadence) == ("active", "daily")
    assert f"{sub.status} {sub.cadence}" == "active daily"
    (state,) = store.subscribers_for_delivery()
    assert state.subscriber == sub
    assert store.subscriber_status_counts()["active"] == 1
    assert set(store.subscriber_status_counts()) == {s.value for s in SubscriberStatus}


def test_a_new_subscriber_and_each_status_change_are_recorded_with_how(store: Store) -> None:
    sub = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI)
    assert history(store, sub.id) == [(None, "active", "cli")]
    assert store.set_subscriber_status(sub.id, PAUSED, how=StatusChange.ADMIN)
    assert store.set_subscriber_status(sub.id, PAUSED, how=StatusChange.ADMIN)  # no change
    assert store.unsubscribe_token(sub.token, how=StatusChange.ONE_CLICK)
    assert store.unsubscribe_token(sub.token, how=StatusChange.ONE_CLICK)  # idempotent
    assert store.set_subscriber_status(sub.id, ACTIVE, how=StatusChange.LINK)
    assert history(store, sub.id) == [
        (None, "active", "cli"),
        ("active", "paused", "admin"),
        ("paused", "unsubscribed", "one-click"),
        ("unsubscribed", "active", "link"),
    ]
    (first, *_rest) = store.subscriber_events(sub.id)
    assert first.subscriber_id == sub.id and first.at == T0 and first.at.tzinfo == UTC
    assert type(first.how) is StatusChange and first.old_status is None
    assert not store.set_subscriber_status(12345, PAUSED, how=StatusChange.CLI)
    assert not store.unsubscribe_token("nobody", how=StatusChange.LINK)


def test_a_bulk_insert_records_each_subscriber_created(store: Store) -> None:
    batch = [new(f"s{i}@example.org", status="pending" if i % 2 else "active") for i in range(3)]
    assert store.insert_subscribers(batch, how=StatusChange.IMPORT) == 3
    for sub in store.list_subscribers():
        assert history(store, sub.id) == [(None, sub.status, "import")]
    assert store.insert_subscribers([], how=StatusChange.IMPORT) == 0


def test_the_status_changes_only_through_the_method_that_keeps_history(store: Store) -> None:
    sub = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI)
    with pytest.raises(StoreError, match="status"):
        store.update_subscriber(sub.id, {"status": "paused"})
    assert store.update_subscriber(sub.id, {"name": "A", "cadence": Cadence.WEEKLY})
    found = store.subscriber_by_id(sub.id)
    assert found is not None and (found.name, found.cadence, found.status) == (
        "A",
        "weekly",
        ACTIVE,
    )
    assert history(store, sub.id) == [(None, "active", "cli")]


def _digest_for(store: Store, sid: int) -> int:
    store.ingest_dump("d", "0" * 64, 1, ParseResult(papers=(Paper("P", "p"),)), received_at=T0)
    item = LedgerItem(paper_id=store.max_paper_id(), topics=("T",), terms=("p",), score=1.0)
    plan = PlanProgress(sid, DigestKind.EMAIL, [item], store.max_paper_id(), T0)
    (digest_id,) = store.record_plans([plan], now=T0, message_id=lambda i: f"<{i}@x>").values()
    return digest_id


def test_enough_bounces_make_an_active_subscriber_bouncing_with_history(store: Store) -> None:
    sub = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI)
    digest_id = _digest_for(store, sub.id)
    assert not store.bounce_digest(digest_id, "550 no such user", max_bounces=2)
    assert history(store, sub.id) == [(None, "active", "cli")]
    assert store.bounce_digest(digest_id, "550 no such user", max_bounces=2)
    assert history(store, sub.id) == [(None, "active", "cli"), ("active", "bouncing", "bounce")]
    assert store.bounce_digest(digest_id, "550 again", max_bounces=2)  # still over the limit
    assert len(history(store, sub.id)) == 2  # already bouncing: no second row
    assert not store.bounce_digest(99999, "no such digest", max_bounces=1)


def test_deleting_a_subscriber_removes_their_history_and_feedback(store: Store) -> None:
    sub = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI)
    other = store.insert_subscriber(new("b@example.org"), how=StatusChange.CLI)
    _digest_for(store, sub.id)
    with store.engine.begin() as conn:
        conn.execute(
            insert(feedback).values(
                subscriber_id=sub.id, topic="T", paper_id=store.max_paper_id(), verdict="like",
                at=T0,
            )
        )  # fmt: skip
    assert store.delete_subscriber(sub.id)
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(feedback)) == 0
        left = conn.execute(select(subscriber_events.c.subscriber_id)).scalars().all()
    assert left == [other.id]


def test_feedback_is_one_verdict_per_subscriber_topic_and_paper(store: Store) -> None:
    sub = store.insert_subscriber(new("a@example.org"), how=StatusChange.CLI)
    _digest_for(store, sub.id)
    row = {"subscriber_id": sub.id, "topic": "T", "paper_id": store.max_paper_id(), "at": T0}
    with store.engine.begin() as conn:
        conn.execute(insert(feedback).values(**row, verdict="like"))
        conn.execute(insert(feedback).values(**{**row, "topic": "U"}, verdict="dislike"))
    with pytest.raises(Exception, match=r"(?i)unique"), store.engine.begin() as conn:
        conn.execute(insert(feedback).values(**row, verdict="dislike"))
    with pytest.raises(Exception, match=r"(?i)check"), store.engine.begin() as conn:
        conn.execute(insert(feedback).values(**{**row, "topic": "V"}, verdict="meh"))
