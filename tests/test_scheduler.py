"""The scheduler daemon in-process: jobs in the job store, a controllable clock, restarts, locks.

The job bodies take their time from an injected clock, so days (and clock changes) pass in a loop
instead of by sleeping; APScheduler itself runs on the real clock only to fire the start-up runs.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

from digest.config import Settings, build_settings
from digest.daemon_lock import running_daemon
from digest.errors import LockError
from digest.mail import OutgoingMessage, SendResult
from digest.models import Paper, ParseResult, Topic
from digest.outbox import queue_digests, worker_name
from digest.scheduler import (
    JOB_DUE,
    JOB_FEEDS,
    JOB_HOUSEKEEPING,
    JOB_INBOX,
    JOBS_TABLE,
    Daemon,
    DigestScheduler,
    Runtime,
    run_once,
    scheduled_jobs,
)
from digest.store import Store
from digest.subscribers import add_subscriber

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
WAIT = 60.0  # generous upper bound for the scheduler thread; never a timing assertion


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class RecordingTransport:
    """Accepts every message and remembers it with the (fake) time it was sent."""

    parallel = 1

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sent: list[tuple[datetime, OutgoingMessage]] = []

    def send(self, msg: OutgoingMessage) -> SendResult:
        self.sent.append((self.clock(), msg))
        return SendResult(msg.message_id, tuple(msg.recipients))

    def close(self) -> None:
        pass

    def recipients(self) -> list[str]:
        return [m.recipients[0] for _t, m in self.sent]


def _settings(tmp_path: Path, url: str, **schedule: object) -> Settings:
    return build_settings(
        {
            "database": {"url": url},
            "inbox": {"settle_seconds": 0, "poll_seconds": 3600},
            "schedule": {"shutdown_seconds": 30, **schedule},
            "site": {"base_url": "https://papers.example.org"},
        },
        root=tmp_path,
    )


@pytest.fixture
def world(tmp_path: Path, store_url: str) -> Iterator[tuple[Settings, Store]]:
    settings = _settings(tmp_path, store_url)
    settings.inbox.dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(store_url)
    try:
        yield settings, store
    finally:
        store.close()


def _add_paper(store: Store, n: int) -> None:
    title = f"Sparse attention study number {n}"
    result = ParseResult(
        papers=(Paper(title, f"We study sparse attention, case {n}, and measure latency."),)
    )
    store.ingest_dump(
        f"dump-{n}.txt",
        hashlib.sha256(title.encode()).hexdigest(),
        100,
        result,
        received_at=datetime.now(UTC),
    )


def _subscribe(
    store: Store, settings: Settings, email: str, *, created: datetime, **kwargs: object
) -> None:
    add_subscriber(
        store, settings, email, topics=[Topic("Sparse", "sparse")], now=created, **kwargs
    )


# --- job registration ---------------------------------------------------------------------------


def _stored_jobs(store: Store) -> dict[str, object]:
    jobstore = SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)
    jobstore.start(None, "default")
    return {job.id: job for job in jobstore.get_all_jobs()}


def test_jobs_are_registered_in_the_database_with_stable_ids_and_options(world) -> None:
    settings, store = world
    clock = FakeClock(datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    transport = RecordingTransport(clock)
    for _restart in range(2):  # a restart replaces the jobs, never duplicates them
        daemon = Daemon(settings, store, clock=clock, transport_factory=lambda s: transport)
        daemon.start()
        try:
            assert daemon.wait_for_runs(JOB_DUE, 1, WAIT)
        finally:
            assert daemon.shutdown()
    jobs = _stored_jobs(store)
    assert set(jobs) == {JOB_INBOX, JOB_DUE, JOB_FEEDS, JOB_HOUSEKEEPING}
    for job in jobs.values():
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time == settings.schedule.misfire_grace_seconds
        assert job.func_ref.startswith("digest.scheduler:")
        assert len(job.args) == 1 and isinstance(job.args[0], str)  # a key, nothing pickled live
    assert jobs[JOB_INBOX].trigger.interval == timedelta(seconds=settings.inbox.poll_seconds)
    assert jobs[JOB_FEEDS].trigger.interval == timedelta(minutes=settings.schedule.feeds_minutes)
    assert {s.id for s in scheduled_jobs(store)} == set(jobs)


def test_feeds_minutes_zero_drops_the_periodic_feeds_job(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    store = Store.open(url)
    try:
        for minutes, expected in ((15, True), (0, False)):
            settings = _settings(tmp_path, url, feeds_minutes=minutes)
            daemon = Daemon(settings, store, transport_factory=lambda s: RecordingTransport(None))
            daemon.start()
            assert daemon.shutdown()
            assert (JOB_FEEDS in _stored_jobs(store)) is expected
    finally:
        store.close()


# --- the due job with a controllable clock ------------------------------------------------------


def _step_through(
    runtime: Runtime, store: Store, clock: FakeClock, start: datetime, end: datetime
) -> None:
    """Every 15 minutes run the due job; every hour a new matching paper arrives."""
    n = 0
    clock.now = start
    while clock.now < end:
        if clock.now.minute == 0:
            n += 1
            _add_paper(store, int(clock.now.timestamp()) * 10 + n)
        runtime.due_step()
        clock.now += timedelta(minutes=15)


@pytest.mark.parametrize(
    ("zone", "at", "start", "change_day", "local_time_that_day"),
    [
        # Spring forward: 02:30 does not exist on 30 March in Berlin; it is taken an hour later.
        ("Europe/Berlin", "02:30", datetime(2025, 3, 28, 12, tzinfo=UTC), date(2025, 3, 30),
         "03:30"),
        # Fall back: 01:30 happens twice on 2 November in New York; only the first one counts.
        ("America/New_York", "01:30", datetime(2025, 10, 31, 12, tzinfo=UTC), date(2025, 11, 2),
         "01:30"),
    ],
)  # fmt: skip
def test_a_daily_digest_goes_out_exactly_once_per_local_day_across_a_clock_change(
    tmp_path: Path, zone: str, at: str, start: datetime, change_day: date, local_time_that_day: str
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    settings = _settings(tmp_path, url)
    store = Store.open(url)
    try:
        clock = FakeClock(start)
        transport = RecordingTransport(clock)
        _subscribe(store, settings, "ada@example.org", created=start, time=at, tz=zone)
        runtime = Runtime(settings, store, clock=clock, transport_factory=lambda s: transport)
        _step_through(runtime, store, clock, start, start + timedelta(days=4))
    finally:
        store.close()
    tz = ZoneInfo(zone)
    local = [t.astimezone(tz) for t, _m in transport.sent]
    days = [t.date() for t in local]
    assert days == sorted(set(days)), "two digests on one local day"
    first = (start.astimezone(tz) + timedelta(days=1)).date()
    assert days == [first + timedelta(days=i) for i in range(len(days))], "a day was skipped"
    assert change_day in days and len(days) >= 3
    for t in local:
        expected = local_time_that_day if t.date() == change_day else at
        assert t.strftime("%H:%M") == expected
    # A fall-back day's second 01:30 found new papers waiting and still sent nothing.
    assert len({m.message_id for _t, m in transport.sent}) == len(transport.sent)


def test_weekly_digest_goes_out_once_a_week_on_its_weekday(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    settings = _settings(tmp_path, url)
    store = Store.open(url)
    start = datetime(2025, 3, 24, 0, tzinfo=UTC)  # a Monday
    try:
        clock = FakeClock(start)
        transport = RecordingTransport(clock)
        _subscribe(
            store, settings, "bo@example.org", created=start, cadence="weekly",
            weekday=2, time="09:00", tz="Europe/Berlin",
        )  # fmt: skip
        runtime = Runtime(settings, store, clock=clock, transport_factory=lambda s: transport)
        n = 0
        while clock.now < start + timedelta(days=15):
            n += 1
            _add_paper(store, n)
            runtime.due_step()
            clock.now += timedelta(hours=1)
    finally:
        store.close()
    local = [t.astimezone(ZoneInfo("Europe/Berlin")) for t, _m in transport.sent]
    assert [t.strftime("%Y-%m-%d %a %H:%M") for t in local] == [
        "2025-03-26 Wed 09:00",
        "2025-04-02 Wed 09:00",
    ]


def test_instant_subscribers_get_new_papers_right_after_the_inbox_poll(world) -> None:
    settings, store = world
    now = datetime.now(UTC)
    clock = FakeClock(now)
    transport = RecordingTransport(clock)
    _subscribe(store, settings, "now@example.org", created=now - timedelta(days=1),
               cadence="instant")  # fmt: skip
    _subscribe(store, settings, "later@example.org", created=now - timedelta(hours=1),
               cadence="daily", time=(now + timedelta(hours=3)).strftime("%H:%M"))  # fmt: skip
    runtime = Runtime(settings, store, clock=clock, transport_factory=lambda s: transport)
    assert runtime.inbox_step().files == 0
    assert transport.sent == []
    (settings.inbox.dir / "day1.txt").write_bytes((FIXTURES / "ingest_day1.txt").read_bytes())
    report = runtime.inbox_step()
    assert report.new_papers > 0
    assert transport.recipients() == ["now@example.org"]
    assert (settings.feeds.public_dir / "feeds" / "all.atom").exists()
    # Nothing new: the next poll sends nothing.
    runtime.inbox_step()
    assert transport.recipients() == ["now@example.org"]


# --- restarts -----------------------------------------------------------------------------------


def _push_next_run_into_the_past(store: Store, job_id: str, hours: float) -> None:
    """What a long downtime looks like in the job store: a next run time hours ago."""
    scheduler = DigestScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)},
        timezone=UTC,
    )
    scheduler.start(paused=True)
    scheduler.modify_job(job_id, next_run_time=datetime.now(UTC) - timedelta(hours=hours))
    scheduler.shutdown(wait=False)


def test_restart_after_downtime_sends_the_missed_slot_once_and_logs_the_missed_runs(
    world, caplog: pytest.LogCaptureFixture
) -> None:
    settings, store = world
    day0 = datetime(2025, 5, 5, 12, 0, tzinfo=UTC)
    clock = FakeClock(day0)
    transport = RecordingTransport(clock)
    _subscribe(store, settings, "ada@example.org", created=day0, time="07:00", tz="UTC")
    for n in range(3):
        _add_paper(store, n)

    # Up on day 1 before the slot: nothing is due yet.
    clock.now = day0 + timedelta(hours=18)
    first = Daemon(settings, store, clock=clock, transport_factory=lambda s: transport)
    first.start()
    assert first.wait_for_runs(JOB_DUE, 1, WAIT)
    assert first.shutdown()
    assert transport.sent == []

    # Down for two and a half days: the slots of days 1, 2 and 3 pass unseen.
    _push_next_run_into_the_past(store, JOB_DUE, hours=60)
    _push_next_run_into_the_past(store, JOB_HOUSEKEEPING, hours=3)
    for n in range(3, 5):
        _add_paper(store, n)
    clock.now = day0 + timedelta(days=3, hours=-2)  # day 3, 10:00
    caplog.set_level(logging.INFO, logger="digest.scheduler")
    second = Daemon(settings, store, clock=clock, transport_factory=lambda s: transport)
    second.start()
    try:
        assert second.wait_for_runs(JOB_DUE, 1, WAIT)
        assert second.wait_for_runs(JOB_HOUSEKEEPING, 1, WAIT)
        assert len(transport.sent) == 1, "the missed slots are coalesced into one digest"
        html = transport.sent[0][1].data.decode("utf-8", "replace")
        assert html.count("Sparse attention study number") >= 5  # every pending paper, once
        # Later runs the same day send nothing more; the next day's slot sends again.
        clock.now += timedelta(minutes=5)
        second.runtime.due_step()
        assert len(transport.sent) == 1
        _add_paper(store, 99)
        clock.now = day0 + timedelta(days=3, hours=19)  # day 4, 07:00
        second.runtime.due_step()
        assert len(transport.sent) == 2
    finally:
        assert second.shutdown()
    logged = [r.getMessage() for r in caplog.records]
    missed = [m for m in logged if "while the daemon was down" in m]
    assert any(JOB_DUE in m for m in missed) and any(JOB_HOUSEKEEPING in m for m in missed)
    assert any("stage=housekeeping papers=5" in m for m in logged)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_digest_left_in_flight_by_a_crash_is_resent_with_its_message_id(
    world, caplog: pytest.LogCaptureFixture
) -> None:
    settings, store = world
    now = datetime.now(UTC)
    clock = FakeClock(now)
    _subscribe(store, settings, "ada@example.org", created=now - timedelta(days=1),
               cadence="instant")  # fmt: skip
    _add_paper(store, 1)
    assert queue_digests(store, settings, now=now).queued == 1
    # A previous daemon on this host claimed it with a long lease, then died before marking it
    # sent; a sender on another host keeps its claim until the lease lapses.
    dead = f"{worker_name().rpartition(':')[0]}:{_dead_pid()}"
    claimed = store.claim_digests(dead, limit=10, lease_until=now + timedelta(days=1), now=now)
    message_id = store.digest_record(claimed[0]).message_id
    transport = RecordingTransport(clock)
    daemon = Daemon(settings, store, clock=clock, transport_factory=lambda s: transport)
    caplog.set_level(logging.WARNING, logger="digest.scheduler")
    daemon.start()
    try:
        assert daemon.wait_for_runs(JOB_DUE, 1, WAIT)
    finally:
        assert daemon.shutdown()
    assert [m.message_id for _t, m in transport.sent] == [message_id]
    assert store.digest_status_counts()["sent"] == 1
    assert any("requeued 1 digest" in r.getMessage() for r in caplog.records)


def test_a_failing_job_logs_one_line_and_the_daemon_carries_on(
    world, caplog: pytest.LogCaptureFixture
) -> None:
    settings, store = world
    now = datetime.now(UTC)
    _subscribe(store, settings, "ada@example.org", created=now - timedelta(days=1),
               cadence="instant")  # fmt: skip
    _add_paper(store, 1)

    def broken(_settings: Settings) -> RecordingTransport:
        raise OSError("mail relay unreachable")

    runtime = Runtime(settings, store, clock=lambda: now, transport_factory=broken)
    caplog.set_level(logging.ERROR, logger="digest.scheduler")
    runtime.run_job(JOB_DUE)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "digest-due failed: mail relay unreachable" in errors[0].getMessage()
    assert not runtime.stop.is_set()
    # The digest stays queued for the next run, which succeeds.
    transport = RecordingTransport(FakeClock(now))
    runtime.cycle.transport_factory = lambda s: transport
    runtime.run_job(JOB_DUE)
    assert transport.recipients() == ["ada@example.org"]


def test_jobs_do_nothing_once_stopping(world) -> None:
    settings, store = world
    now = datetime.now(UTC)
    _subscribe(store, settings, "ada@example.org", created=now - timedelta(days=1),
               cadence="instant")  # fmt: skip
    _add_paper(store, 1)
    transport = RecordingTransport(FakeClock(now))
    runtime = Runtime(settings, store, clock=lambda: now, transport_factory=lambda s: transport)
    runtime.stop.set()
    runtime.run_job(JOB_DUE)
    assert transport.sent == [] and store.digest_status_counts()["queued"] == 0
    assert runtime.wait_idle(0)


# --- one daemon per database --------------------------------------------------------------------


def test_a_second_daemon_on_the_same_database_is_refused_with_the_holder(world) -> None:
    settings, store = world
    other = Store.open(settings.database.url)

    def recording(_settings: Settings) -> RecordingTransport:
        return RecordingTransport(None)

    first = Daemon(settings, store, transport_factory=recording)
    first.start()
    try:
        holder = running_daemon(other, settings.database.url)
        assert holder is not None and holder.startswith("pid ")
        second = Daemon(settings, other, transport_factory=lambda s: RecordingTransport(None))
        with pytest.raises(LockError, match=r"another digest daemon holds the lock for .*\(pid "):
            second.start()
        with pytest.raises(LockError, match="another digest daemon"):
            run_once(settings, other, transport_factory=recording, quiet=True)
    finally:
        assert first.shutdown()
    assert running_daemon(other, settings.database.url) is None
    # Once the first has stopped, the lock is free again.
    report = run_once(settings, other, transport_factory=recording, quiet=True)
    assert report.ingest is not None
    other.close()


@pytest.mark.postgres
def test_a_daemon_whose_advisory_lock_session_drops_stops(postgres_url: str, tmp_path: Path):
    from sqlalchemy import create_engine, text

    settings = _settings(tmp_path, postgres_url)
    store = Store.open(postgres_url)
    daemon = Daemon(settings, store, transport_factory=lambda s: RecordingTransport(None))
    daemon.start()
    try:
        admin = create_engine(postgres_url)
        with admin.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                )
            ).all()
        admin.dispose()
        assert killed
        daemon.runtime.run_job(JOB_DUE)
        assert daemon.stop.is_set() and daemon.runtime.lost_lock
    finally:
        daemon.shutdown()
        store.close()


def test_jobs_of_unknown_daemons_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    from digest.scheduler import due_job

    caplog.set_level(logging.WARNING, logger="digest.scheduler")
    due_job("no-such-daemon")
    assert "no running daemon" in caplog.text
