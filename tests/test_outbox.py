"""The send ledger: each matching paper reaches each subscriber exactly once, across dumps,
re-runs, crashes, retries and bounces."""

from __future__ import annotations

import functools
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jinja2
import pytest

from digest.config import Settings, build_settings
from digest.errors import DigestError
from digest.ingest import ingest_files
from digest.mail import (
    DryRunTransport,
    PermanentDeliveryError,
    SendResult,
    TemporaryDeliveryError,
    TransportError,
    make_message_id,
)
from digest.models import Topic
from digest.outbox import build_digest, plan_digests, queue_digests
from digest.pipeline import Cycle
from digest.render import Renderer
from digest.store import Store
from digest.subscribers import add_subscriber, get_subscriber

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
T0 = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)


def make_settings(tmp_path: Path, url: str, **sections: dict) -> Settings:
    data = {
        "database": {"url": url},
        "inbox": {"settle_seconds": 0},
        "mail": {"max_papers": 1000, "retry_base_seconds": 60, **sections.pop("mail", {})},
        **sections,
    }
    return build_settings(data, root=tmp_path)


class Recorder(DryRunTransport):
    """A transport that keeps every message and can be told to fail for chosen addresses."""

    def __init__(self) -> None:
        super().__init__(stream=None)
        self.temporary: set[str] = set()
        self.permanent: set[str] = set()

    def send(self, msg):  # type: ignore[override]
        rcpt = msg.recipients[0]
        if rcpt in self.temporary:
            raise TemporaryDeliveryError(f"451 try later: {rcpt}", code=451, address=rcpt)
        if rcpt in self.permanent:
            raise PermanentDeliveryError(f"550 no such user: {rcpt}", code=550, address=rcpt)
        return super().send(msg)

    def by_recipient(self) -> Counter[str]:
        return Counter(m.recipients[0] for m in self.messages)


def _titles(message) -> list[str]:
    """Paper titles in a digest's text part (the numbered lines)."""
    text = message.as_email().get_body(preferencelist=("plain",)).get_content()
    return [m.group(1).strip() for m in re.finditer(r"^\d+\.\s+(.+)$", text, re.M)]


def _ingest(store: Store, settings: Settings, *names: str) -> None:
    report = ingest_files(store, settings, [FIXTURES / n for n in names], quiet=True)
    assert not report.failures


def _subscribe(
    store: Store, settings: Settings, email: str, query: str, *, topic: str = "T", **options
) -> None:
    """An instant subscriber since yesterday (T0 - 1 day) with one topic."""
    options = {"cadence": "instant", "now": T0 - timedelta(days=1), **options}
    add_subscriber(store, settings, email, topics=[Topic(topic, query)], **options)


@pytest.fixture
def world(store: Store, tmp_path: Path, store_url: str):
    settings = make_settings(tmp_path, store_url)
    return store, settings


def test_a_paper_reappearing_in_a_later_dump_is_not_sent_again(world) -> None:
    store, settings = world
    add_subscriber(
        store,
        settings,
        "ada@example.org",
        topics=[
            Topic("Speed", "latency, speculative decoding"),
            Topic("Small", "sparse, prune*, expert*"),
        ],
        cadence="instant",
        now=T0 - timedelta(days=1),
    )
    transport = Recorder()
    _ingest(store, settings, "ingest_day1.txt")
    first = queue_digests(store, settings, now=T0)
    Cycle(store, settings, lambda: T0).deliver(transport)
    assert first.queued == 1
    _ingest(store, settings, "ingest_day2.txt")  # repeats papers of day 1
    queue_digests(store, settings, now=T0 + timedelta(hours=1))
    Cycle(store, settings, lambda: T0 + timedelta(hours=1)).deliver(transport)
    # A third pass with nothing new sends nothing.
    queue_digests(store, settings, now=T0 + timedelta(hours=2))
    Cycle(store, settings, lambda: T0 + timedelta(hours=2)).deliver(transport)

    sent = [t for m in transport.messages for t in _titles(m)]
    assert len(sent) == len(set(sent)), f"a paper was sent twice: {sent}"
    assert len(transport.messages) == 2
    # Every stored paper the profile matches was delivered exactly once.
    from digest.match import PaperIndex, match_profiles

    papers = store.papers_after(0)
    sub = get_subscriber(store, "ada@example.org")
    expected = {m.paper_id for m in match_profiles(PaperIndex(papers), {1: sub.topics})[1]}
    by_id = {p.id: p.title for p in papers}
    assert sorted(sent) == sorted(by_id[i] for i in expected)


def test_ledger_on_the_shared_dumps_000_then_001(world, shared_dumps) -> None:
    store, settings = world
    _subscribe(
        store,
        settings,
        "grace@example.org",
        "latency, efficient, pruning, quantization",
        topic="Efficiency",
    )
    transport = Recorder()
    for step, dump in enumerate(shared_dumps[:2]):
        assert not ingest_files(store, settings, [dump], quiet=True).failures
        now = T0 + timedelta(hours=step)
        queue_digests(store, settings, now=now)
        Cycle(store, settings, lambda now=now: now).deliver(transport)
    sent = [t for m in transport.messages for t in _titles(m)]
    assert len(transport.messages) == 2
    assert len(sent) == len(set(sent))
    ledger = store.ledger_entries(1, 10_000)
    assert len(ledger) == len(sent)  # every new match delivered once, and nothing else


def test_subscribers_only_get_papers_stored_after_they_subscribed(world) -> None:
    store, settings = world
    _ingest(store, settings, "ingest_day1.txt")
    add_subscriber(
        store, settings, "late@example.org", topics=[Topic("All", "the")], cadence="instant"
    )
    add_subscriber(
        store,
        settings,
        "back@example.org",
        topics=[Topic("All", "the")],
        cadence="instant",
        backfill_days=30,
    )
    transport = Recorder()
    queue_digests(store, settings, now=datetime.now(UTC))
    Cycle(store, settings).deliver(transport)
    assert transport.by_recipient() == Counter({"back@example.org": 1})


def test_crash_between_acceptance_and_ledger_update_resends_same_message_id(world) -> None:
    store, settings = world
    for name in ("a", "b", "c"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    transport = Recorder()
    real_mark = store.mark_digests_sent
    calls = 0

    def dies_on_second_mark(digest_ids: list[int], *, now: datetime) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise SystemExit("killed after the server accepted message 2")
        real_mark(digest_ids, now=now)

    store.mark_digests_sent = dies_on_second_mark  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        # Batches of one: each accepted digest is its own group, marked before the next send.
        Cycle(store, settings, lambda: T0).deliver(transport, batch=1)
    store.mark_digests_sent = real_mark  # type: ignore[method-assign]
    assert len(transport.messages) == 2
    # Another sender, while the dead one's lease holds, takes nothing of its batch (only the
    # digest it never claimed)...
    Cycle(store, settings, lambda: T0 + timedelta(minutes=1)).deliver(transport)
    assert [m.recipients for m in transport.messages[2:]] == [("c@example.org",)]
    # ...once it lapses, the one in flight is sent again under the same Message-ID.
    Cycle(store, settings, lambda: T0 + timedelta(hours=1)).deliver(transport)
    ids = Counter(m.message_id for m in transport.messages)
    assert len(ids) == 3 and sorted(ids.values()) == [1, 1, 2]
    assert ids[transport.messages[1].message_id] == 2
    assert transport.by_recipient().keys() == {"a@example.org", "b@example.org", "c@example.org"}
    assert store.digest_status_counts()["sent"] == 3


def test_a_crash_before_the_group_is_marked_repeats_that_group_under_its_ids(world) -> None:
    store, settings = world
    for name in ("a", "b", "c", "d"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    transport = Recorder()
    real_mark = store.mark_digests_sent
    groups: list[list[int]] = []

    def dies_on_second_group(digest_ids: list[int], *, now: datetime) -> None:
        groups.append(list(digest_ids))
        if len(groups) == 2:
            raise SystemExit("killed before the second group was marked sent")
        real_mark(digest_ids, now=now)

    store.mark_digests_sent = dies_on_second_group  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        Cycle(store, settings, lambda: T0).deliver(transport, batch=2)  # groups of two
    store.mark_digests_sent = real_mark  # type: ignore[method-assign]
    assert [len(g) for g in groups] == [2, 2] and len(transport.messages) == 4
    first = {m.message_id for m in transport.messages[:2]}
    # Lease lapsed: exactly the unmarked group is sent again, each under its own Message-ID;
    # the marked group never again, and no digest under a new id.
    Cycle(store, settings, lambda: T0 + timedelta(hours=1)).deliver(transport)
    ids = Counter(m.message_id for m in transport.messages)
    assert len(ids) == 4
    assert {mid: n for mid, n in ids.items() if n > 1}.keys() == set(ids) - first
    assert sorted(ids.values()) == [1, 1, 2, 2]
    assert store.digest_status_counts()["sent"] == 4


def test_the_sole_daemon_restarting_takes_back_its_claims_at_once(world) -> None:
    store, settings = world
    _subscribe(store, settings, "a@example.org", "latency", topic="T")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    claimed = store.claim_digests("dead:1", limit=10, lease_until=T0 + timedelta(hours=1), now=T0)
    assert claimed and store.digest_status_counts()["sending"] == 1
    assert store.release_all_claims() == 1
    transport = Recorder()
    assert Cycle(store, settings, lambda: T0).deliver(transport).sent == 1


def test_temporary_failures_retry_with_backoff_then_fail(world) -> None:
    store, settings = world
    _subscribe(store, settings, "slow@example.org", "latency", topic="T")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    transport = Recorder()
    transport.temporary.add("slow@example.org")
    now = T0
    report = Cycle(store, settings, lambda: now).deliver(transport)
    assert report.retried == 1
    # Not due again until the backoff has passed (60 s, then 120 s, ...).
    now = T0 + timedelta(seconds=30)
    assert Cycle(store, settings, lambda: now).deliver(transport).retried == 0
    now = T0 + timedelta(seconds=61)
    assert Cycle(store, settings, lambda: now).deliver(transport).retried == 1
    for _ in range(settings.mail.retry_attempts):
        now += timedelta(days=1)
        Cycle(store, settings, lambda now=now: now).deliver(transport)
    assert store.digest_status_counts()["failed"] == 1
    transport.temporary.clear()
    now += timedelta(days=1)
    assert Cycle(store, settings, lambda: now).deliver(transport).sent == 0


def test_hard_bounces_mark_the_subscriber_bouncing(world, tmp_path: Path, store_url: str) -> None:
    store, _ = world
    settings = make_settings(tmp_path, store_url, mail={"max_bounces": 2})
    _subscribe(store, settings, "gone@example.org", "latency, sparse, pruning, experts", topic="T")
    transport = Recorder()
    transport.permanent.add("gone@example.org")
    for step, name in enumerate(("ingest_day1.txt", "ingest_day2.txt")):
        _ingest(store, settings, name)
        now = T0 + timedelta(hours=step)
        queue_digests(store, settings, now=now)
        report = Cycle(store, settings, lambda now=now: now).deliver(transport)
        assert report.bounced == 1 and report.retried == 0
    assert get_subscriber(store, "gone@example.org").status == "bouncing"
    assert plan_digests(store, settings, now=T0 + timedelta(days=1), force=True)[0] == []


def test_feed_subscribers_get_ledger_items_and_no_email(world) -> None:
    store, settings = world
    _subscribe(store, settings, "reader@example.org", "latency", cadence="feed")
    _ingest(store, settings, "ingest_day1.txt")
    report = queue_digests(store, settings, now=T0)
    transport = Recorder()
    Cycle(store, settings, lambda: T0).deliver(transport)
    assert report.feed_items >= 1 and report.queued == 0
    assert transport.messages == []
    assert len(store.ledger_entries(1, 100)) == report.feed_items


def test_daily_subscribers_wait_for_their_slot_and_get_it_once(world) -> None:
    store, settings = world
    _subscribe(
        store,
        settings,
        "daily@example.org",
        "latency",
        cadence="daily",
        time="09:00",
        tz="Europe/Paris",
    )
    _ingest(store, settings, "ingest_day1.txt")
    # 09:00 in Paris is 08:00 UTC on 4 March (CET); they subscribed at 08:00 UTC on the 3rd.
    assert queue_digests(store, settings, now=T0 - timedelta(minutes=1)).due == 0
    assert queue_digests(store, settings, now=T0).queued == 1
    assert queue_digests(store, settings, now=T0 + timedelta(hours=2)).due == 0
    assert queue_digests(store, settings, now=T0 + timedelta(days=1)).due == 1


def test_a_recorded_digest_renders_from_the_ledger_after_a_profile_edit(world) -> None:
    store, settings = world
    from digest.subscribers import edit_subscriber

    _subscribe(store, settings, "ed@example.org", "latency", topic="Speed")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    edit_subscriber(store, settings, "ed@example.org", topics=[Topic("Other", "diffusion")])
    digest = build_digest(store, store.digest_ids_by_status("queued")[0])
    assert {t for item in digest.items for t in item.match.topics} == {"Speed"}
    assert all(item.match.title_spans or item.match.abstract_spans for item in digest.items)


def test_refused_recipient_inside_an_accepted_session_is_a_bounce(world) -> None:
    store, settings = world
    _subscribe(store, settings, "x@example.org", "latency", topic="T")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)

    class Refusing(Recorder):
        def send(self, msg):  # type: ignore[override]
            rcpt = msg.recipients[0]
            return SendResult(
                msg.message_id, (), {rcpt: PermanentDeliveryError("550 refused", code=550)}
            )

    report = Cycle(store, settings, lambda: T0).deliver(Refusing())
    assert report.bounced == 1


def test_the_due_job_reads_only_subscribers_whose_time_has_come(world) -> None:
    store, settings = world
    from digest.subscribers import edit_subscriber

    _subscribe(store, settings, "daily@example.org", "latency", cadence="daily", time="09:00")
    _subscribe(store, settings, "instant@example.org", "latency")

    def due(at: datetime) -> set[str]:
        return {s.subscriber.email for s in store.subscribers_for_delivery(due_at=at)}

    # Nothing stored yet: the instant subscriber has nothing after their watermark.
    assert due(T0) == {"daily@example.org"}  # never checked: its next slot is unknown
    queue_digests(store, settings, now=T0)  # handles the 09:00 slot of 3 March; next: 4 March
    assert due(T0) == set()
    _ingest(store, settings, "ingest_day1.txt")
    assert due(T0) == {"instant@example.org"}
    queue_digests(store, settings, now=T0)
    assert due(T0 + timedelta(minutes=1)) == set()
    assert due(datetime(2026, 3, 4, 9, 0, tzinfo=UTC)) == {"daily@example.org"}
    edit_subscriber(store, settings, "daily@example.org", time="06:00")
    assert due(T0) == {"daily@example.org"}  # a schedule edit makes it check again


def test_a_restarting_daemon_releases_only_claims_of_dead_local_senders(world) -> None:
    import os
    import socket
    import subprocess

    from digest.outbox import release_dead_claims, worker_name

    store, settings = world
    for name in ("a", "b", "c"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    proc = subprocess.Popen(["true"])
    proc.wait()
    host = worker_name().rpartition(":")[0]  # this host and PID namespace
    assert worker_name() == f"{host}:{os.getpid()}" and host.startswith(socket.gethostname())
    # A container with the same host name but its own PIDs: its "dead" pid proves nothing.
    other_ns = f"{socket.gethostname()}/1:{proc.pid}"
    lease = T0 + timedelta(hours=1)
    for holder in (f"{host}:{proc.pid}", f"{host}:{os.getpid()}", other_ns):
        assert len(store.claim_digests(holder, limit=1, lease_until=lease, now=T0)) == 1
    assert release_dead_claims(store) == 1  # only the dead local one
    assert sorted(store.claim_holders()) == sorted([f"{host}:{os.getpid()}", other_ns])


def test_a_transport_misconfiguration_stops_sending_and_bounces_nobody(world) -> None:
    from digest.mail import TransportError

    store, settings = world
    for name in ("a", "b"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)

    class LoginRefused(Recorder):
        def send(self, msg):  # type: ignore[override]
            raise TransportError("smtp.example.org: 535 authentication failed (check smtp.user)")

    with pytest.raises(TransportError):
        Cycle(store, settings, lambda: T0).deliver(LoginRefused())
    counts = store.digest_status_counts()
    assert counts["queued"] == 2 and counts["bounced"] == 0 and counts["sending"] == 0
    assert Cycle(store, settings, lambda: T0).deliver(Recorder()).sent == 2


def test_a_cut_ranking_whose_head_is_filtered_out_is_ranked_in_full(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Planning ranks only each subscriber's best 2 x max_papers; when all of those are older
    # than the subscriber (or delivered), the whole ranking is taken, in one batch.
    import digest.rank

    store, settings = world
    settings = make_settings(Path(settings.root), settings.database.url, mail={"max_papers": 1})
    three_days_ago = (T0 - timedelta(days=3)).timestamp()
    report = ingest_files(
        store, settings, [FIXTURES / "ingest_day1.txt"], quiet=True, clock=lambda: three_days_ago
    )
    assert not report.failures
    # since = T0 - 1 day, pending from paper 1 on: the day-1 papers are pending but too old
    _subscribe(store, settings, "ada@example.org", "model, latency, pruning, sparse",
               now=T0, backfill_days=1)  # fmt: skip
    report = ingest_files(
        store, settings, [FIXTURES / "ingest_day2.txt"], quiet=True, clock=T0.timestamp
    )
    assert not report.failures
    calls = []
    match = digest.rank.match_profiles

    def counted(index, profiles, *, limit=None):
        calls.append((sorted(profiles), limit))
        return match(index, profiles, limit=limit)

    monkeypatch.setattr(digest.rank, "match_profiles", counted)

    plans, papers = plan_digests(store, settings, now=T0 + timedelta(hours=1))

    assert calls == [([1], 2), ([1], None)]
    (plan,) = plans
    assert [papers[i.paper_id].title for i in plan.items] == [
        "Mixture of Tiny Experts for Edge Devices"
    ]


def test_two_queueing_passes_from_one_state_record_one_digest(world) -> None:
    store, settings = world
    for name in ("a", "b"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    # Two passes plan at once (cron beside the daemon): both see the same state...
    first, _ = plan_digests(store, settings, now=T0)
    second, _ = plan_digests(store, settings, now=T0)
    assert [p.items for p in first] == [p.items for p in second] and first[0].items
    ids = functools.partial(make_message_id, settings=settings)
    record = functools.partial(store.record_plans, now=T0, message_id=ids)
    assert len(record([p.progress() for p in first])) == 2
    # ...the later one records nothing: no IntegrityError, no second digest for anyone.
    assert record([p.progress() for p in second]) == {}
    assert store.digest_status_counts()["queued"] == 2
    assert Cycle(store, settings, lambda: T0).deliver(Recorder()).sent == 2


def test_when_every_render_fails_the_pass_stops_and_nothing_is_failed(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = world
    for n in range(5):
        _subscribe(store, settings, f"r{n}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)

    def broken(self, digest, links):
        raise jinja2.UndefinedError("'item' has no attribute 'titel'")  # a bad override

    monkeypatch.setattr(Renderer, "render", broken)
    with pytest.raises(DigestError, match="first 3 digests of this pass all failed to render"):
        Cycle(store, settings, lambda: T0).deliver(Recorder())
    counts = store.digest_status_counts()
    assert counts["queued"] == 5 and counts["failed"] == 0 and counts["sending"] == 0
    monkeypatch.undo()  # the operator fixed the template
    assert Cycle(store, settings, lambda: T0).deliver(Recorder()).sent == 5


def test_failed_digests_can_be_requeued_once_the_cause_is_fixed(world) -> None:
    store, settings = world
    _subscribe(store, settings, "a@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    (digest_id,) = store.claim_digests("me", limit=5, lease_until=T0 + timedelta(hours=1), now=T0)
    assert store.fail_digest(digest_id, "cannot render: x", now=T0, worker="me")
    assert store.requeue_failed(now=T0) == 1
    assert Cycle(store, settings, lambda: T0).deliver(Recorder()).sent == 1


def test_a_late_outcome_of_a_sender_that_lost_its_claim_changes_nothing(world) -> None:
    store, settings = world
    _subscribe(store, settings, "a@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    (digest_id,) = store.claim_digests("slow", limit=1, lease_until=T0, now=T0)
    later = T0 + timedelta(minutes=1)
    assert store.claim_digests("other", limit=1, lease_until=later + timedelta(hours=1), now=later)
    # The slow sender's 4xx, failure or bounce comes in after the other took over: ignored.
    assert not store.retry_digest(digest_id, "451", next_attempt_at=later, worker="slow")
    assert not store.fail_digest(digest_id, "gave up", now=later, worker="slow")
    assert not store.bounce_digest(digest_id, "550", max_bounces=1, worker="slow")
    assert store.digest_status_counts()["sending"] == 1
    assert get_subscriber(store, "a@example.org").status == "active"


def test_with_several_connections_our_own_failure_settles_what_is_in_flight(world) -> None:
    store, settings = world
    for n in range(8):
        _subscribe(store, settings, f"r{n}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)

    class Pool(Recorder):
        parallel = 3

        def send(self, msg):  # type: ignore[override]
            if msg.recipients[0] == "r3@example.org":
                raise TransportError("smtp.example.org: 535 authentication failed")
            return super().send(msg)

    transport = Pool()
    with pytest.raises(TransportError):
        Cycle(store, settings, lambda: T0).deliver(transport)
    counts = store.digest_status_counts()
    # What the server took is marked sent; nothing is stranded in 'sending'; the rest waits.
    assert counts["sent"] == len(transport.messages) and counts["sending"] == 0
    assert counts["queued"] == 8 - counts["sent"]
    assert Cycle(store, settings, lambda: T0).deliver(Recorder()).sent == 8 - counts["sent"]


def test_a_plan_for_someone_who_paused_meanwhile_records_nothing(world) -> None:
    store, settings = world
    for name in ("a", "b"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    plans, _ = plan_digests(store, settings, now=T0)
    paused = get_subscriber(store, "b@example.org")
    store.set_subscriber_status(paused.id, "paused", how="admin")  # between planning and recording
    ids = functools.partial(make_message_id, settings=settings)
    created = store.record_plans([p.progress() for p in plans], now=T0, message_id=ids)
    assert list(created) == [get_subscriber(store, "a@example.org").id]


def _two_due_and_another_pass_first(world, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two subscribers due; whatever this pass records, a concurrent pass recorded just before."""
    store, settings = world
    for name in ("a", "b"):
        _subscribe(store, settings, f"{name}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    real = store.record_plans

    def another_pass_first(plans, **kwargs):
        real(plans, **kwargs)  # the same plans, recorded by a concurrent pass just before
        return real(plans, **kwargs)

    monkeypatch.setattr(store, "record_plans", another_pass_first)


def test_a_queue_pass_reports_what_it_recorded_not_what_it_planned(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = world
    _two_due_and_another_pass_first(world, monkeypatch)
    report = queue_digests(store, settings, now=T0)
    assert report.due == 2 and report.queued == 0
    assert store.digest_status_counts()["queued"] == 2
    # said as such (and no "every digest empty" health warning: see test_health)
    assert report.dropped == 2
    assert report.summary().endswith(
        ", 2 dropped (recorded by another pass, or the subscriber paused or left, meanwhile)"
    )


def test_the_health_check_hears_of_the_digests_another_pass_recorded(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the run passes to the health check (whose empty_run rule skips such a run).
    import digest.pipeline

    store, settings = world
    _two_due_and_another_pass_first(world, monkeypatch)
    runs = []
    monkeypatch.setattr(digest.pipeline, "sentinel", lambda _s, _t, run, **_k: runs.append(run))
    Cycle(store, settings, lambda: T0).queue(force=True)
    assert [(r.due, r.digests, r.dropped) for r in runs] == [(2, 0, 2)]


def _reference_plans(store: Store, settings: Settings) -> list[tuple[int, list]]:
    """Every active subscriber's whole ranking against one index of everything pending for any
    of them, filtered paper by paper against the whole ledger: what planning must give."""
    from digest.match import PaperIndex, match_profiles

    states = store.subscribers_for_delivery()
    papers = store.papers_after(min(s.watermark for s in states))
    by_id = {p.id: p for p in papers}
    found = match_profiles(
        PaperIndex(papers), {s.subscriber.id: s.subscriber.topics for s in states}
    )
    delivered = store.delivered_pairs([s.subscriber.id for s in states], list(by_id))
    out = []
    for s in states:
        sub, items = s.subscriber, []
        for m in found.get(sub.id, []):
            pending = m.paper_id > s.watermark and by_id[m.paper_id].first_seen >= sub.since
            if pending and (sub.id, m.paper_id) not in delivered:
                items.append((m.paper_id, m.topics, m.terms, m.score))
        out.append((sub.id, items[: settings.mail.max_papers]))
    return out


def test_a_backfilled_subscriber_changes_nobody_s_plans(world, shared_dumps) -> None:
    # Planning reads the ledger once per batch (the rows above each watermark) and ranks the
    # lists that ran out in one batch; the plans must be those of the naive reading.
    store, settings = world
    settings = make_settings(Path(settings.root), settings.database.url, mail={"max_papers": 3})
    day = [T0 - timedelta(days=4 - d) for d in range(4)]
    queries = ["model, language", "diffusion, image, video", "reasoning, agent", "efficient"]
    for n, q in enumerate(queries):
        _subscribe(store, settings, f"r{n}@example.org", q, now=day[0] - timedelta(hours=1))
    for d, dump in enumerate(shared_dumps):
        report = ingest_files(store, settings, [dump], quiet=True, clock=day[d].timestamp)
        assert not report.failures
        if d < 3:
            queue_digests(store, settings, now=day[d] + timedelta(hours=1))
    assert store.digest_status_counts()["queued"] >= 8  # a ledger: three cycles recorded
    # A new subscriber with a backfill (watermark 0: every stored paper pending for them), and
    # one whose watermark went back to 0 while their ledger stays (delivered papers above it).
    _subscribe(store, settings, "late@example.org", "model, learning", now=T0, backfill_days=3)
    store.reset_watermark(get_subscriber(store, "r0@example.org").id, 0)
    assert store.delivered_above({1: 0, 2: 10**9}) == {
        (1, e.paper.id) for e in store.ledger_entries(1, 10_000)
    }

    plans, _ = plan_digests(store, settings, now=T0, force=True)

    got = [(p.state.subscriber.id, [(i.paper_id, i.topics, i.terms, i.score) for i in p.items])
           for p in plans]  # fmt: skip
    assert got == _reference_plans(store, settings)
    assert all(len(items) == 3 for _, items in got)  # every list full: cut lists were resumed
    r0_ledger = {e.paper.id for e in store.ledger_entries(1, 10_000)}
    assert r0_ledger and not r0_ledger & {i[0] for i in got[0][1]}


def test_the_next_digest_renders_while_one_is_sent_and_a_stop_gives_it_back(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings = world
    for n in range(4):
        _subscribe(store, settings, f"r{n}@example.org", "latency")
    _ingest(store, settings, "ingest_day1.txt")
    queue_digests(store, settings, now=T0)
    import digest.pipeline as pipeline

    rendered: list[int] = []
    real_links = pipeline.links_for

    def counting_links(settings_, signer, subscriber, digest_id=None):  # type: ignore[no-untyped-def]
        rendered.append(digest_id)
        return real_links(settings_, signer, subscriber, digest_id)

    monkeypatch.setattr(pipeline, "links_for", counting_links)
    on_the_wire, go = threading.Event(), threading.Event()

    class Slow(Recorder):
        overlap = True  # sent from a thread, as SMTP and the Maildir are

        def send(self, msg):  # type: ignore[override]
            on_the_wire.set()
            assert go.wait(10)
            return super().send(msg)

    cycle = Cycle(store, settings, lambda: T0)
    transport = Slow()
    done: list[object] = []
    runner = threading.Thread(target=lambda: done.append(cycle.deliver(transport)))
    runner.start()
    assert on_the_wire.wait(10)
    deadline = time.monotonic() + 10
    while len(rendered) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(rendered) == 4  # the others rendered while the first is on the wire
    cycle.stop.set()
    go.set()
    runner.join(10)
    counts = store.digest_status_counts()
    # The one on the wire is sent; those rendered ahead had not started: withheld, queued again.
    assert len(transport.messages) == 1 and counts["sent"] == 1
    assert counts["queued"] == 3 and counts["sending"] == 0


def test_subscribers_sharing_a_profile_share_each_paper_s_built_item(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A paper's words and why are worked out once per page for every subscriber with the same
    # topics; another topic name is another profile (its items name that topic).
    import digest.match

    store, settings = world
    for name in ("a", "b", "c"):
        _subscribe(store, settings, f"{name}@example.org", "latency, sparse, prune*")
    _subscribe(store, settings, "d@example.org", "latency, sparse, prune*", topic="Other")
    _ingest(store, settings, "ingest_day1.txt")
    builds = []
    reasons = digest.match.Matches.reasons

    def counted(self, ml, ks):
        builds.extend(ks)
        return reasons(self, ml, ks)

    monkeypatch.setattr(digest.match.Matches, "reasons", counted)

    plans, _ = plan_digests(store, settings, now=T0)

    a, b, c, d = (p.items for p in plans)
    assert a and a == b == c and all(x is y for x, y in zip(a, c, strict=True))
    assert [i.paper_id for i in d] == [i.paper_id for i in a]
    assert {i.topics for i in d} == {("Other",)} and {i.topics for i in a} == {("T",)}
    assert len(builds) == len(a) + len(d)


def test_one_learner_serves_every_page_of_a_queue_pass(world, monkeypatch) -> None:
    # A page of subscribers at a time: the models' trainer is built once per pass, and a later
    # page's example papers join it, ranking exactly as one page holding everyone would.
    from digest import outbox, rank

    store, settings = world
    emails = ["a@example.org", "b@example.org", "c@example.org"]
    for email in emails:
        _subscribe(store, settings, email, "", topic="Mine")
    _ingest(store, settings, "ingest_day1.txt", "ingest_day2.txt")
    pids = [p.id for p in store.recent_papers(limit=50)]
    for k, email in enumerate(emails):
        sid = get_subscriber(store, email).id
        store.record_feedback(sid, "Mine", pids[k], "like")  # each page brings its own
    one_page = {
        p.state.subscriber.id: [(i.paper_id, i.why) for i in p.items]
        for p in plan_digests(store, settings, now=T0)[0]
    }
    assert len(pids) >= 3 and len(one_page) == 3
    assert sum(map(bool, one_page.values())) >= 2  # examples alone find papers like the likes

    built: list[int] = []
    original = rank.Learner.__init__

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(1)
        original(self, *args, **kwargs)

    paged: dict[int, list[tuple[int, str]]] = {}
    plan_states = outbox._plan_states

    def capture(*args, **kwargs):  # type: ignore[no-untyped-def]
        plans = plan_states(*args, **kwargs)
        paged.update({p.state.subscriber.id: [(i.paper_id, i.why) for i in p.items] for p in plans})
        return plans

    monkeypatch.setattr(rank.Learner, "__init__", counting)
    monkeypatch.setattr(outbox, "_plan_states", capture)
    monkeypatch.setattr(outbox, "QUEUE_CHUNK", 1)
    assert queue_digests(store, settings, now=T0).queued == 3
    assert len(built) == 1
    assert paged == one_page


def test_a_missing_or_stale_compiled_form_is_rewritten_by_the_queue_stage(world) -> None:
    from digest import match as engine
    from digest.query import compiled_form

    store, settings = world
    _subscribe(store, settings, "ada@example.org", "latency, speculative decoding")
    sub = get_subscriber(store, "ada@example.org")
    form = compiled_form("latency, speculative decoding")
    assert form is not None and sub.topics[0].compiled == form  # written when saved
    # a form of another compiler (or damaged): matched all the same, then written again
    store.save_topic_forms([(sub.id, 0, "latency, speculative decoding", b"stale form")])
    store.save_topic_forms([(sub.id, 0, "another query", b"x")])  # its query changed: no-op
    assert get_subscriber(store, "ada@example.org").topics[0].compiled == b"stale form"
    engine._COMPILED.clear()  # as in a fresh process
    _ingest(store, settings, "ingest_day1.txt")
    assert queue_digests(store, settings, now=T0).queued == 1
    assert get_subscriber(store, "ada@example.org").topics[0].compiled == form
