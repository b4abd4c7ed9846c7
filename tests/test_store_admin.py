"""The admin's store questions on SQLite and PostgreSQL: keyset pages, counts per day."""

from __future__ import annotations

from datetime import timedelta

from web_support import NOW, PAPERS_NEW, PAPERS_OLD, add_dump, make_settings

from digest import subscribers as subs
from digest.mail import SendResult
from digest.models import Topic
from digest.pipeline import Cycle


class _Accepting:
    parallel = 1

    def send(self, msg):
        return SendResult(msg.message_id, tuple(msg.recipients))

    def close(self) -> None:
        pass


def test_history_recipients_next_and_daily_counts(store, tmp_path):
    settings = make_settings(tmp_path)
    add_dump(store, "a.txt", PAPERS_OLD, NOW - timedelta(days=2))
    add_dump(store, "b.txt", PAPERS_NEW, NOW - timedelta(days=1))
    people = [
        subs.add_subscriber(
            store,
            settings,
            f"p{i}@example.org",
            topics=[Topic("t", "latency")],
            backfill_days=30,
            now=NOW,
        )
        for i in range(3)
    ]
    cycle = Cycle(store, settings, clock=lambda: NOW)
    cycle.queue(force=True)
    cycle.deliver(_Accepting())
    first = people[0]
    history = store.delivery_history(first.id)
    assert len(history) == 1 and history[0].papers == 3 and history[0].status == "sent"
    assert store.delivery_history(first.id, before=history[0].id) == []
    assert store.digest_owner(history[0].id) == first.id and store.digest_owner(10**9) is None
    pid = store.papers_page(limit=1)[0].id
    page = store.papers_page(limit=2)
    assert [p.id for p in store.papers_page(before=page[0].id, limit=1)] == [page[1].id]
    latency = next(p for p in store.papers_page(limit=10) if "latency" in p.abstract)
    found = store.paper_recipients(latency.id, limit=2)
    assert [r.email for r in found] == ["p0@example.org", "p1@example.org"]
    rest = store.paper_recipients(latency.id, after=found[-1].subscriber_id, limit=2)
    assert [r.email for r in rest] == ["p2@example.org"]
    assert store.recipient_counts([latency.id, pid]).get(latency.id) == 3
    upcoming = store.next_deliveries(2)
    assert len(upcoming) == 2 and upcoming[0].due_at <= upcoming[1].due_at
    days = store.daily_counts(NOW - timedelta(days=5))
    assert sum(d.papers for d in days) == len(PAPERS_OLD) + len(PAPERS_NEW)
    assert sum(d.digests for d in days) == 3
    assert store.recent_failures() == []
