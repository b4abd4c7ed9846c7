"""One full cycle against a real SMTP server (aiosmtpd on loopback), with its faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import feedparser
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from smtp_helpers import RecordingHandler, SmtpServer, smtp_server, start_server  # noqa: F401

from digest import pipeline
from digest.config import Settings, build_settings
from digest.errors import DigestError
from digest.ingest import ingest_files
from digest.mail import make_transport
from digest.models import Paper, Topic
from digest.outbox import queue_digests
from digest.parse import format_dump
from digest.pipeline import Cycle
from digest.render import Renderer
from digest.status import collect_status, format_status
from digest.store import Store
from digest.subscribers import add_subscriber

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
PEOPLE = {
    "ada@example.org": "latency, speculative decoding",
    "bob@example.org": "sparse, prune*",
    "cy@example.org": "expert*, latency",
}


def _settings(tmp_path: Path, server: SmtpServer, **mail: object) -> Settings:
    return build_settings(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'digest.db'}"},
            "inbox": {"settle_seconds": 0},
            "mail": {"transport": "smtp", "retry_base_seconds": 1, **mail},
            "smtp": {"host": server.host, "port": server.port, "timeout_seconds": 5.0},
            "site": {"base_url": "https://papers.example.org"},
        },
        root=tmp_path,
    )


@pytest.fixture
def world(tmp_path: Path, smtp_server: SmtpServer):  # noqa: F811 - pytest fixture injection
    settings = _settings(tmp_path, smtp_server)
    store = Store.open(settings.database.url)
    for email, query in PEOPLE.items():
        add_subscriber(
            store,
            settings,
            email,
            name=email.split("@")[0].title(),
            topics=[Topic("Mine", query)],
            cadence="instant",
            now=datetime.now(UTC) - timedelta(days=1),
        )
    settings.inbox.dir.mkdir(parents=True, exist_ok=True)
    for name in ("ingest_day1.txt", "ingest_day2.txt"):
        shutil.copy(FIXTURES / name, settings.inbox.dir / name)
    yield store, settings, smtp_server
    store.close()


def _received(server: SmtpServer) -> Counter[tuple[str, str]]:
    """(recipient, Message-ID) of every message the server accepted."""
    found: Counter[tuple[str, str]] = Counter()
    for m in server.handler.messages:
        msg = message_from_bytes(m.data, policy=policy.default)
        found[(m.rcpt_tos[0], str(msg["Message-ID"]))] += 1
    return found


def test_one_cycle_delivers_each_subscriber_one_complete_digest(world) -> None:
    store, settings, server = world
    report = Cycle(store, settings).run(quiet=True)
    assert report.ingest.new_papers == 4
    assert report.delivery.sent == 3
    assert sorted(r for r, _ in _received(server)) == sorted(PEOPLE)
    for m in server.handler.messages:
        msg = message_from_bytes(m.data, policy=policy.default)
        assert msg.get_content_type() == "multipart/alternative"
        html = msg.get_body(preferencelist=("html",)).get_content()
        text = msg.get_body(preferencelist=("plain",)).get_content()
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "https://papers.example.org/" in msg["List-Unsubscribe"]
        assert ("matched: Mine" in text and "<mark" in html) or "background" in html
        # Wrapped at 72 columns; only a URL, which must not be broken, may stand longer.
        long = [ln for ln in text.splitlines() if len(ln) > 72]
        assert all(ln.strip().startswith(("http://", "https://")) for ln in long), long
    # A second cycle with nothing new sends nothing.
    assert Cycle(store, settings).run(quiet=True).delivery.sent == 0
    assert len(server.handler.messages) == 3
    # The feeds were written and read cleanly by a feed client.
    parsed = feedparser.parse(str(settings.feeds.public_dir / "feeds" / "all.atom"))
    assert not parsed.bozo and len(parsed.entries) == 4


def test_smtp_faults_then_a_rerun_leaves_everyone_with_exactly_their_digest(world) -> None:
    store, settings, server = world
    server.handler.temp_fail.add("ada@example.org")  # 450 at RCPT
    server.handler.perm_fail.add("bob@example.org")  # 550 at RCPT
    server.handler.drop_during_data = 1  # the first DATA loses the connection
    t0 = datetime.now(UTC)
    report = Cycle(store, settings, lambda: t0).run(quiet=True)
    assert report.delivery.bounced == 1
    assert report.delivery.retried == 2  # ada's 450 and whoever met the dropped DATA
    server.handler.temp_fail.clear()
    later = t0 + timedelta(minutes=5)
    transport = make_transport(settings)
    try:
        again = Cycle(store, settings, lambda: later).deliver(transport)
    finally:
        transport.close()
    assert again.sent == 2 and again.bounced == 0
    received = _received(server)
    assert {r for r, _ in received} == {"ada@example.org", "cy@example.org"}
    assert all(n == 1 for n in received.values())
    assert store.digest_status_counts() == {
        "queued": 0,
        "sending": 0,
        "sent": 2,
        "failed": 0,
        "bounced": 1,
    }


def test_death_between_acceptance_and_ledger_update_repeats_only_that_message(world) -> None:
    store, settings, server = world
    real_mark = store.mark_digests_sent

    def die(digest_ids: list[int], *, now: datetime) -> None:
        raise SystemExit("killed right after the server said 250")

    store.mark_digests_sent = die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        # A batch of one is a group of one: only the message accepted since the last mark.
        cycle = Cycle(store, settings)
        cycle.ingest(quiet=True)
        cycle.queue()
        cycle.deliver(batch=1)
    store.mark_digests_sent = real_mark  # type: ignore[method-assign]
    assert len(server.handler.messages) == 1
    # The restarted daemon (sole sender) takes its claims back and finishes.
    store.release_all_claims()
    queue_digests(store, settings, now=datetime.now(UTC))
    transport = make_transport(settings)
    try:
        Cycle(store, settings).deliver(transport)
    finally:
        transport.close()
    received = _received(server)
    assert sorted(r for r, _ in received) == sorted(PEOPLE)
    assert sorted(received.values()) == [1, 1, 2]  # only the in-flight one, same Message-ID
    assert store.digest_status_counts()["sent"] == 3


def test_death_before_the_group_is_marked_repeats_the_group_under_its_ids(world) -> None:
    store, settings, server = world
    real_mark = store.mark_digests_sent

    def die(digest_ids: list[int], *, now: datetime) -> None:
        raise SystemExit("killed after three 250s, before their group was marked sent")

    store.mark_digests_sent = die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        Cycle(store, settings).run(quiet=True)  # one batch of three: one group
    store.mark_digests_sent = real_mark  # type: ignore[method-assign]
    first = _received(server)
    assert sorted(first.values()) == [1, 1, 1]
    store.release_all_claims()
    transport = make_transport(settings)
    try:
        Cycle(store, settings).deliver(transport)
    finally:
        transport.close()
    received = _received(server)
    # Each message of the unmarked group once more, under the same Message-ID; none new.
    assert received.keys() == first.keys() and sorted(received.values()) == [2, 2, 2]
    assert store.digest_status_counts()["sent"] == 3


def _maildir_ids(settings: Settings, folder: str) -> list[str]:
    """The Message-IDs of the messages in one folder of the configured Maildir."""
    path = settings.mail.maildir / folder
    return [
        str(message_from_bytes(f.read_bytes(), policy=policy.default)["Message-ID"])
        for f in sorted(path.iterdir())
    ]


def test_a_maildir_digest_is_in_new_before_it_is_marked_sent(world) -> None:
    store, settings, _server = world
    settings = dataclasses.replace(
        settings, mail=dataclasses.replace(settings.mail, transport="maildir")
    )
    seen_at_mark: list[tuple[set[str], set[str]]] = []
    real_mark = store.mark_digests_sent

    def checked_mark(digest_ids: list[int], *, now: datetime) -> None:
        ids = {store.digest_record(i).message_id for i in digest_ids}
        seen_at_mark.append((ids, set(_maildir_ids(settings, "new"))))
        real_mark(digest_ids, now=now)

    store.mark_digests_sent = checked_mark  # type: ignore[method-assign]
    report = Cycle(store, settings).run(quiet=True)
    assert report.delivery.sent == 3 and seen_at_mark
    for marked, delivered in seen_at_mark:
        assert marked <= delivered  # delivered (synced, in new/) before marked sent
    assert len(_maildir_ids(settings, "new")) == 3 and not _maildir_ids(settings, "tmp")


def test_death_before_a_maildir_group_is_flushed_delivers_none_of_it_and_repeats_none(
    world,
) -> None:
    store, settings, _server = world
    settings = dataclasses.replace(
        settings, mail=dataclasses.replace(settings.mail, transport="maildir")
    )
    transport = make_transport(settings)

    def die() -> None:
        raise SystemExit("killed after writing the group, before its flush")

    transport.flush = die  # type: ignore[attr-defined]
    cycle = Cycle(store, settings)
    cycle.ingest(quiet=True)
    assert cycle.queue(force=True).queued == 3
    with pytest.raises(SystemExit):
        cycle.deliver(transport)
    # Written to tmp/ only: no reader saw any of them, and none is marked sent.
    assert not _maildir_ids(settings, "new")
    assert store.digest_status_counts()["sent"] == 0
    store.release_all_claims()
    assert Cycle(store, settings).deliver().sent == 3
    ids = _maildir_ids(settings, "new")
    assert len(ids) == len(set(ids)) == 3  # each once: nothing of the dead pass was delivered


def test_a_maildir_group_the_disk_refuses_is_never_marked_sent(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings, _server = world
    settings = dataclasses.replace(
        settings, mail=dataclasses.replace(settings.mail, transport="maildir")
    )
    cycle = Cycle(store, settings)
    cycle.ingest(quiet=True)
    assert cycle.queue(force=True).queued == 3
    real_fsync = os.fsync

    def refuse(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(DigestError, match="cannot deliver a group"):
        cycle.deliver()
    # Not delivered, so not marked sent: back in the queue at once, no file anywhere.
    assert store.digest_status_counts()["sent"] == 0
    assert store.digest_status_counts()["queued"] == 3
    assert not _maildir_ids(settings, "new") and not _maildir_ids(settings, "tmp")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert Cycle(store, settings).deliver().sent == 3
    ids = _maildir_ids(settings, "new")
    assert len(ids) == len(set(ids)) == 3


class _SlowHandler(RecordingHandler):
    """Takes a while to accept each message, so a long queue outlasts a helper's start."""

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(0.12)
        return await super().handle_DATA(server, session, envelope)


def test_helper_processes_share_a_long_queue_and_each_digest_goes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server(_SlowHandler(), pipelining=True)
    try:
        settings = _settings(tmp_path, server, processes=3)
        monkeypatch.setattr(pipeline, "HELPER_MIN_QUEUED", 1)
        people = [f"reader{i}@example.org" for i in range(24)]
        with Store.open(settings.database.url) as store:
            for email in people:
                add_subscriber(
                    store, settings, email, name="Reader", topics=[Topic("Mine", "latency")],
                    cadence="instant", now=datetime.now(UTC) - timedelta(days=1),
                )  # fmt: skip
            settings.inbox.dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(FIXTURES / "ingest_day1.txt", settings.inbox.dir / "ingest_day1.txt")
            cycle = Cycle(store, settings)
            cycle.ingest(quiet=True)
            assert cycle.queue(force=True).queued == 24
            shown: list[int] = []
            with caplog.at_level(logging.INFO, logger="digest.pipeline"):
                report = cycle.deliver(batch=2, progress=shown.append)
            helped = [r.message for r in caplog.records if "helper processes sent" in r.message]
            assert helped and int(helped[0].rsplit(" ", 1)[1]) > 0, helped
            # The helpers' sends are in the report and on the progress bar.
            assert (report.sent, report.failed, report.errors) == (24, 0, [])
            assert sum(shown) == 24
            assert store.digest_status_counts()["sent"] == 24
        received = _received(server)
        assert sorted(r for r, _ in received) == sorted(people)
        assert set(received.values()) == {1} and len({m for _, m in received}) == 24
        # More than one process sent (each keeps its own SMTP connection).
        assert len({m.session for m in server.handler.messages}) >= 2
    finally:
        server.controller.stop()


def _readers(store: Store, settings: Settings, count: int) -> list[str]:
    people = [f"reader{i}@example.org" for i in range(count)]
    for email in people:
        add_subscriber(
            store, settings, email, name="Reader", topics=[Topic("Mine", "latency")],
            cadence="instant", now=datetime.now(UTC) - timedelta(days=1),
        )  # fmt: skip
    settings.inbox.dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "ingest_day1.txt", settings.inbox.dir / "ingest_day1.txt")
    return people


def test_a_helper_whose_parent_is_gone_ends_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The parent (killed, or ended by its own error) closed its end of the results pipe: the
    # helper has nobody to report to, and must end without printing a traceback.
    import multiprocessing

    # an empty store: nothing to send, so no SMTP server is ever asked
    settings = build_settings(
        {"database": {"url": f"sqlite:///{tmp_path / 'digest.db'}"}, "mail": {"transport": "smtp"}},
        root=tmp_path,
    )
    Store.open(settings.database.url).close()
    context = multiprocessing.get_context("spawn")
    mine, theirs = context.Pipe(duplex=False)
    mine.close()
    sent = context.Array("q", 1, lock=False)
    proc = context.Process(
        target=pipeline._helper_main,
        args=(settings, 5, timedelta(minutes=1), sent, 0, theirs, logging.WARNING,
              os.getpid(), None),
    )  # fmt: skip
    proc.start()
    theirs.close()
    proc.join(60)
    err = capfd.readouterr().err
    assert proc.exitcode == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


@contextlib.contextmanager
def _early_helpers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handler: RecordingHandler,
    around_page: Callable[..., None],
) -> Iterator[tuple[SmtpServer, Settings]]:
    """An SMTP server and settings for one early helper: the queue stage records pages of 2
    digests, each through around_page(record_page, *args)."""
    from digest import outbox

    server = start_server(handler, pipelining=True)
    try:
        settings = _settings(tmp_path, server, processes=2)
        monkeypatch.setattr(pipeline, "HELPER_MIN_QUEUED", 1)
        monkeypatch.setattr(outbox, "QUEUE_CHUNK", 2)  # a page of 2 digests, recorded at once
        record_page = outbox._queue_page
        monkeypatch.setattr(outbox, "_queue_page", functools.partial(around_page, record_page))
        yield server, settings
    finally:
        server.controller.stop()


@pytest.mark.slow
def test_early_helpers_send_pages_while_the_queue_stage_records_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A send starts its helpers before the queue stage: they send each page as it is recorded,
    # and deliver() takes them over; every digest still goes once.
    pages: list[int] = []

    def slow_page(record_page: Callable[..., None], *args: object) -> None:
        # a long queue stage whose first page comes after the helper has started and found
        # nothing to send: it must keep looking until the stage is over
        time.sleep(3.0 if not pages else 0.2)
        pages.append(1)
        record_page(*args)

    with _early_helpers(tmp_path, monkeypatch, _SlowHandler(), slow_page) as (server, settings):
        with Store.open(settings.database.url) as store:
            people = _readers(store, settings, 20)
            cycle = Cycle(store, settings)
            cycle.ingest(quiet=True)
            shown: list[int] = []
            with cycle.sending(force=True):
                assert cycle._early is not None
                assert cycle.queue(force=True).queued == 20
                early = cycle.helped()
                report = cycle.deliver(batch=2, progress=shown.append)
            assert early > 0  # the helper sent while the queue stage was still recording
            assert (report.sent, report.failed, report.errors) == (20, 0, [])
            assert sum(shown) == 20
            assert store.digest_status_counts()["sent"] == 20
        received = _received(server)
        assert sorted(r for r, _ in received) == sorted(people)
        assert set(received.values()) == {1}


@pytest.mark.slow
def test_the_daemon_reports_what_early_helpers_sent_when_they_emptied_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the helpers send every page while the queue stage is still going (each page is followed
    # by more work): when it ends nothing is pending, and the due step must still take the
    # helpers over and report their sends
    from digest.scheduler import Runtime

    def page_then_more(record_page: Callable[..., None], *args: object) -> None:
        record_page(*args)
        time.sleep(2.5)  # the helper sends this page meanwhile

    handler = RecordingHandler()
    with _early_helpers(tmp_path, monkeypatch, handler, page_then_more) as (server, settings):
        with Store.open(settings.database.url) as store:
            people = _readers(store, settings, 4)
            runtime = Runtime(settings, store)
            runtime.cycle.ingest(quiet=True)
            queued, delivery = runtime.due_step()
            assert queued.queued == 4
            assert delivery is not None and (delivery.sent, delivery.errors) == (4, [])
            assert store.digest_status_counts()["sent"] == 4
        assert sorted(r for r, _ in _received(server)) == sorted(people)


def test_early_helpers_stop_when_nothing_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(RecordingHandler(), pipelining=True)
    try:
        settings = _settings(tmp_path, server, processes=2)
        monkeypatch.setattr(pipeline, "HELPER_MIN_QUEUED", 1)
        with Store.open(settings.database.url) as store:
            _readers(store, settings, 3)
            cycle = Cycle(store, settings)
            # no papers yet: nobody may be due, even forced, and no helper starts at all
            for force in (False, True):
                with cycle.sending(force=force):
                    assert cycle._early is None
            cycle.ingest(quiet=True)
            with pytest.raises(RuntimeError), cycle.sending(force=True):
                team = cycle._early
                assert team is not None and all(p.is_alive() for p in team.procs)
                raise RuntimeError("the queue stage failed")
            assert team.finished and not any(p.is_alive() for p in team.procs)
            assert cycle._early is None
    finally:
        server.controller.stop()


def test_no_helper_process_for_a_short_queue_a_rate_limit_or_one_process() -> None:
    base = build_settings({})
    assert pipeline.helper_count(base, 10_000) == min(os.cpu_count() or 1, 4) - 1
    assert pipeline.helper_count(base, pipeline.HELPER_MIN_QUEUED - 1) == 0
    one = build_settings({"mail": {"processes": 1}})
    assert pipeline.helper_count(one, 10_000) == 0
    three = build_settings({"mail": {"processes": 3}})
    assert pipeline.helper_count(three, 10_000) == 2
    assert pipeline.helper_count(three, pipeline.HELPER_MIN_QUEUED) == 1
    limited = build_settings({"mail": {"processes": 3}, "smtp": {"rate_per_second": 5}})
    assert pipeline.helper_count(limited, 10_000) == 0


def test_the_feeds_step_records_feed_only_subscribers_first(world) -> None:
    store, settings, server = world
    add_subscriber(
        store, settings, "feedy@example.org", topics=[Topic("Mine", "latency")],
        cadence="feed", now=datetime.now(UTC) - timedelta(days=1),
    )  # fmt: skip
    cycle = Cycle(store, settings)
    cycle.ingest(quiet=True)
    report = cycle.feeds()  # no send, no run: the feed-only subscriber's feed is current anyway
    feedy = store.subscriber_by_email("feedy@example.org")
    assert feedy is not None and report.private_written >= 1
    private = settings.feeds.public_dir / "feeds" / "s" / f"{feedy.token}.atom"
    parsed = feedparser.parse(str(private))
    assert not parsed.bozo and parsed.entries, parsed
    # Email subscribers were left for their own delivery: nothing was queued for them.
    assert store.digest_status_counts()["queued"] == 0 and not server.handler.messages


@dataclass
class OverlapHandler(RecordingHandler):
    """Holds each DATA until `want` are open at once (or a second passes); notes the most."""

    want: int = 3
    active: int = 0
    most: int = 0

    async def handle_DATA(self, server, session, envelope):
        self.active += 1
        self.most = max(self.most, self.active)
        for _ in range(100):
            if self.active >= self.want:
                break
            await asyncio.sleep(0.01)
        try:
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.active -= 1


def test_deliver_uses_every_configured_smtp_connection(tmp_path: Path) -> None:
    server = start_server(OverlapHandler(want=3))
    try:
        settings = build_settings(
            {
                "database": {"url": f"sqlite:///{tmp_path / 'digest.db'}"},
                "mail": {"transport": "smtp"},
                "smtp": {"host": server.host, "port": server.port, "connections": 3},
            },
            root=tmp_path,
        )
        store = Store.open(settings.database.url)
        people = [f"p{n}@example.org" for n in range(9)]
        for email in people:
            add_subscriber(
                store, settings, email, topics=[Topic("Mine", "latency")], cadence="instant",
                now=datetime.now(UTC) - timedelta(days=1),
            )  # fmt: skip
        cycle = Cycle(store, settings)
        ingest_files(store, settings, [FIXTURES / "ingest_day1.txt"], quiet=True)
        cycle.queue()
        report = cycle.deliver()
        store.close()
    finally:
        server.controller.stop()
    assert report.sent == 9 and sorted(r for r, _ in _received(server)) == sorted(people)
    assert server.handler.most == 3  # three sessions carried messages at the same time
    assert len({m.session for m in server.handler.messages}) == 3


def test_a_digest_that_cannot_be_rendered_fails_alone_and_delivery_goes_on(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings, server = world
    real = Renderer.render

    def render(self, digest, links):
        if digest.subscriber.email == "bob@example.org":
            raise ValueError("a template override met text it cannot handle")
        return real(self, digest, links)

    monkeypatch.setattr(Renderer, "render", render)
    cycle = Cycle(store, settings)
    cycle.ingest(quiet=True)
    cycle.queue()
    # bob's digest is first in line on every pass: it must not hold the others back.
    report = cycle.deliver()
    assert (report.sent, report.failed) == (2, 1)
    assert sorted(r for r, _ in _received(server)) == ["ada@example.org", "cy@example.org"]
    assert any("bob@example.org: cannot render: ValueError: a template" in e for e in report.errors)
    status = collect_status(store, settings)
    assert "cannot render" in format_status(status)
    assert Cycle(store, settings).deliver().sent == 0  # failed is final, not retried forever


def test_the_date_header_is_the_send_time_not_the_queue_time(world) -> None:
    store, settings, server = world
    queued_at = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    sent_at = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)
    Cycle(store, settings, lambda: queued_at).ingest(quiet=True)
    Cycle(store, settings, lambda: queued_at).queue(force=True)
    assert Cycle(store, settings, lambda: sent_at).deliver().sent == 3
    for m in server.handler.messages:
        msg = message_from_bytes(m.data, policy=policy.default)
        assert msg["Date"].datetime == sent_at.replace(microsecond=0)


def test_an_edited_template_override_is_used_by_the_next_delivery(world, tmp_path: Path) -> None:
    store, settings, server = world
    override = tmp_path / "my-templates" / "email"
    override.mkdir(parents=True)
    shipped = (Path(__file__).parents[1] / "templates" / "email" / "paper.txt").read_text()
    (override / "paper.txt").write_text("EDITION-ONE\n" + shipped, encoding="utf-8")
    settings = dataclasses.replace(
        settings,
        templates=dataclasses.replace(settings.templates, override_dir=override.parent),
    )
    cycle = Cycle(store, settings)  # one Cycle, as the daemon keeps one for its life
    ingest_files(store, settings, [FIXTURES / "ingest_day1.txt"], quiet=True)
    cycle.queue()
    assert cycle.deliver().sent
    (override / "paper.txt").write_text("EDITION-TWO\n" + shipped, encoding="utf-8")
    ingest_files(store, settings, [FIXTURES / "ingest_day2.txt"], quiet=True)
    cycle.queue()
    assert cycle.deliver().sent
    bodies = [m.data.decode("utf-8", "replace") for m in server.handler.messages]
    assert "EDITION-ONE" in bodies[0] and "EDITION-TWO" in bodies[-1]


_FIELD = st.text(st.characters(codec="utf-8") | st.sampled_from(list("\ue000\ue001\u202e\x1b\n")))


@pytest.mark.slow
@hyp_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(_FIELD, _FIELD, _FIELD), min_size=1, max_size=3))
def test_digests_of_a_dump_with_random_text_in_every_field_are_all_sent(fields):
    records = [
        Paper(f"Paper {title}", f"Paper {abstract}.", 3, org or None, "org" if org else None,
              None, 7)
        for title, abstract, org in fields
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dump = root / "random.txt"
        dump.write_text(format_dump(records), encoding="utf-8")
        settings = build_settings({"database": {"url": f"sqlite:///{root / 'd.db'}"}}, root=root)
        with Store.open(settings.database.url) as store:
            add_subscriber(
                store, settings, "reader@example.org", name="Reader",
                topics=[Topic("Papers", "paper")], cadence="instant",
                now=datetime.now(UTC) - timedelta(days=1),
            )  # fmt: skip
            report = ingest_files(store, settings, [dump], quiet=True)
            if not report.new_papers:
                return  # a file that leaves no title/abstract pair is refused, named: fine
            cycle = Cycle(store, settings)
            assert cycle.queue(force=True).queued == 1
            sent = cycle.deliver()
            assert (sent.sent, sent.failed) == (1, 0), sent.errors
            message = next((settings.mail.maildir / "new").iterdir()).read_bytes()
            assert "\ue000".encode() not in message and "\u202e".encode() not in message
