"""Rising papers: a paper whose upvotes jump between dumps comes back once to those it matched."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from test_outbox import Recorder, make_settings

from digest.config import Settings, build_settings
from digest.errors import ConfigError
from digest.ingest import ingest_files
from digest.models import Paper, Topic
from digest.outbox import queue_digests
from digest.parse import format_dump
from digest.pipeline import Cycle
from digest.publish import private_entries
from digest.store import LedgerItem, PlanProgress, RisingRule, Store
from digest.subscribers import add_subscriber

T0 = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


def _papers(upvotes: dict[str, int]) -> list[Paper]:
    return [
        Paper(
            title=title,
            abstract=f"A study of {title.lower()}.",
            authors=3,
            published=date(2026, 3, 2),
            upvotes=votes,
        )
        for title, votes in upvotes.items()
    ]


def _ingest(store: Store, settings: Settings, folder: Path, name: str, upvotes: dict[str, int]):
    path = folder / name
    path.write_text(format_dump(_papers(upvotes)), encoding="utf-8")
    report = ingest_files(store, settings, [path], quiet=True)
    assert not report.failures


def _text(message) -> str:
    return message.as_email().get_body(preferencelist=("plain",)).get_content()


def _html(message) -> str:
    return message.as_email().get_body(preferencelist=("html",)).get_content()


def _send(store: Store, settings: Settings, transport: Recorder, now: datetime) -> int:
    report = queue_digests(store, settings, now=now)
    Cycle(store, settings, lambda: now).deliver(transport)
    return report.queued


@pytest.fixture
def world(store: Store, tmp_path: Path, store_url: str):
    settings = make_settings(tmp_path, store_url, rank={"rising_min_gain": 10, "rising_ratio": 2.0})
    add_subscriber(
        store, settings, "ada@example.org", topics=[Topic("Speed", "latency")],
        cadence="daily", time="08:00", tz="UTC", now=T0 - timedelta(days=1),
    )  # fmt: skip
    return store, settings, tmp_path


def test_a_received_paper_whose_upvotes_jump_comes_back_once_marked_rising(world) -> None:
    store, settings, folder = world
    transport = Recorder()
    day1 = {"Low Latency Serving": 5, "Latency of Samplers": 40, "Video Generation": 2}
    _ingest(store, settings, folder, "d1.txt", day1)
    assert _send(store, settings, transport, T0) == 1
    assert "RISING" not in _text(transport.messages[0])
    # The same papers again: one jumps (5 -> 50), one gains little (40 -> 45), one never matched.
    day2 = {"Low Latency Serving": 50, "Latency of Samplers": 45, "Video Generation": 90}
    _ingest(store, settings, folder, "d2.txt", day2)
    assert _send(store, settings, transport, T0 + timedelta(days=1)) == 1
    second = transport.messages[1]
    text, html = _text(second), _html(second)
    assert "RISING: its upvotes jumped" in text and "Low Latency Serving" in text
    assert "Latency of Samplers" not in text and "Video Generation" not in text
    assert 'class="rising"' in html and "Low Latency Serving" in html
    # It rises further: never twice for one paper and person.
    day3 = {"Low Latency Serving": 500, "Latency of Samplers": 45, "Video Generation": 90}
    _ingest(store, settings, folder, "d3.txt", day3)
    assert _send(store, settings, transport, T0 + timedelta(days=2)) == 0
    assert len(transport.messages) == 2


def test_a_matched_paper_cut_by_max_papers_comes_back_when_it_rises(
    store: Store, tmp_path: Path, store_url: str
) -> None:
    settings = make_settings(tmp_path, store_url, mail={"max_papers": 1})
    add_subscriber(
        store, settings, "bo@example.org", topics=[Topic("Speed", "latency")],
        cadence="daily", time="08:00", tz="UTC", now=T0 - timedelta(days=1),
    )  # fmt: skip
    transport = Recorder()
    # "latency" twice in the title ranks the first paper higher; the second is cut.
    _ingest(store, settings, tmp_path, "d1.txt", {"Latency, Latency": 1, "Latency Notes": 1})
    _send(store, settings, transport, T0)
    assert "Latency Notes" not in _text(transport.messages[0])
    _ingest(store, settings, tmp_path, "d2.txt", {"Latency, Latency": 1, "Latency Notes": 80})
    _send(store, settings, transport, T0 + timedelta(days=1))
    assert "Latency Notes" in _text(transport.messages[1])


def test_feed_items_of_rising_papers_are_marked_and_separate(
    store: Store, tmp_path: Path, store_url: str
) -> None:
    settings = make_settings(tmp_path, store_url)
    sub = add_subscriber(
        store, settings, "feed@example.org", topics=[Topic("Speed", "latency")],
        cadence="feed", now=T0 - timedelta(days=1),
    )  # fmt: skip
    _ingest(store, settings, tmp_path, "d1.txt", {"Latency Study": 1})
    queue_digests(store, settings, now=T0)
    # A feed subscriber is planned when papers arrive: a new paper comes with the jump.
    _ingest(store, settings, tmp_path, "d2.txt", {"Latency Study": 90, "Latency Again": 1})
    queue_digests(store, settings, now=T0 + timedelta(hours=1))
    entries = private_entries(store, sub.id, 100)
    assert sorted((e.paper.title, e.rising) for e in entries) == [
        ("Latency Again", False), ("Latency Study", False), ("Latency Study", True),
    ]  # fmt: skip
    from digest import feed

    head = {"fmt": "atom", "title": "t", "self_url": "http://x/f.atom", "site_url": "http://x/",
            "description": "d"}  # fmt: skip
    doc = feed.build_feed(entries, max_items=100, max_bytes=1_000_000, **head)
    assert doc.body == feed.reference_document(entries, **head)
    body = doc.body.decode()
    assert "/rising</id>" in body and "Rising:" in body
    assert len(re.findall(r"<entry>", body)) == 3


def test_the_store_records_jumps_by_the_rule_and_gives_a_paper_back_once(store: Store) -> None:
    from digest.models import ParseResult

    rule = RisingRule(min_gain=10, ratio=2.0)

    def ingest(name: str, votes: dict[str, int], at: datetime) -> None:
        result = ParseResult(papers=_papers(votes))
        store.ingest_dump(name, name * 8, 1, result, received_at=at, rising=rule)

    ingest("a", {"A": 5, "B": 30, "C": 0}, T0)
    ingest("b", {"A": 15, "B": 50, "C": 9}, T0 + timedelta(hours=1))  # +10 x3; +20 x1.67; +9
    rising = store.rising_since(T0)
    assert [(r.paper.title, r.from_upvotes, r.to_upvotes) for r in rising] == [("A", 5, 15)]
    assert store.rising_since(T0 + timedelta(hours=2)) == []
    # One row per (subscriber, paper): a second digest carrying it again is refused.
    sub = add_subscriber(
        store, Settings(), "cy@example.org", topics=[Topic("T", "a")], cadence="instant",
        now=T0,
    )  # fmt: skip
    paper_id = rising[0].paper.id
    item = LedgerItem(paper_id, ("T",), ("a",), 1.0, rising=True)

    def record(slot: datetime) -> set[int]:
        state = store.subscribers_for_delivery(ids=[sub.id])[0]
        progress = PlanProgress(
            sub.id, sub.cadence.digest_kind, [item], state.watermark, slot,
            was_watermark=state.watermark, was_slot=state.last_slot,
        )  # fmt: skip
        return store.record_plans([progress], now=slot, message_id=lambda i: f"<{i}@x>")

    assert record(T0 + timedelta(hours=3))
    assert store.rising_delivered([sub.id], [paper_id]) == {(sub.id, paper_id)}
    # A digest of rising papers only still counts as news for feed rewrites.
    assert [s.id for s in store.subscribers_with_deliveries_since(T0)] == [sub.id]
    assert store.latest_delivery_time() == T0 + timedelta(hours=3)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        record(T0 + timedelta(hours=4))
    assert store.rising_delivered([sub.id], [paper_id]) == {(sub.id, paper_id)}


@pytest.mark.parametrize(
    ("key", "value"),
    [("rising_min_gain", 0), ("rising_ratio", 0.5), ("rising_days", 0)],
)
def test_rising_settings_are_checked_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"rank.{key}"):
        build_settings({"rank": {key: value}})
