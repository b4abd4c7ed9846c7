"""`digest worker`: several processes share the send queue; nobody is skipped or sent twice.

The scale-out tests run real `digest worker` processes (from the venv's bin folder) against a real
PostgreSQL server and a real aiosmtpd receiver on a loopback port chosen at run time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import tomli_w
from smtp_helpers import SmtpServer, smtp_server

from digest.config import Settings, build_settings
from digest.ingest import ingest_files
from digest.mail import DryRunTransport
from digest.models import StatusChange, Subscriber, Topic
from digest.outbox import deliver_queued, queue_digests
from digest.pipeline import Cycle
from digest.store import Store
from digest.worker import WorkerOptions, run_worker

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
DIGEST_BIN = Path(sys.executable).with_name("digest")
# Worker processes run on the real clock: queue with a time just before it.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
QUERY = "models, scaling"  # matches several papers of ingest_day1.txt
__all__ = ["smtp_server"]  # the fixture, imported for pytest


# --- helpers -------------------------------------------------------------------------------------


def settings_file(tmp_path: Path, url: str, smtp: SmtpServer | None) -> tuple[Path, Settings]:
    """A settings.toml for the worker processes (SMTP to the test server when given)."""
    data: dict = {
        "database": {"url": url},
        "inbox": {"settle_seconds": 0},
        "mail": {"transport": "smtp" if smtp else "maildir", "max_papers": 10},
    }
    if smtp:
        data["smtp"] = {"host": smtp.host, "port": smtp.port, "timeout_seconds": 10.0}
    path = tmp_path / "settings.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path, build_settings(data, root=tmp_path)


def populate(store: Store, settings: Settings, count: int) -> list[str]:
    """Papers, `count` subscribers added in one bulk insert, and one queued digest each."""
    assert not ingest_files(store, settings, [FIXTURES / "ingest_day1.txt"], quiet=True).failures
    emails = [f"reader{n:05d}@example.org" for n in range(count)]
    since = T0 - timedelta(days=1)
    subs = [
        Subscriber(
            id=0,
            email=email,
            name=f"Reader {n}",
            status="active",
            cadence="instant",
            time="08:00",
            tz="UTC",
            weekday=0,
            created_at=since,
            token=f"token-{n:05d}",
            topics=(Topic("Models", QUERY),),
            since=since,
        )
        for n, email in enumerate(emails)
    ]
    assert store.insert_subscribers(subs, how=StatusChange.IMPORT) == count
    report = queue_digests(store, settings, now=T0, force=True)
    assert report.queued == count
    return emails


def start_worker(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A `digest worker` process from the venv, its stderr (the log) going to `log`."""
    cmd = [str(DIGEST_BIN), "--config", str(config), "worker", "--poll", "0.2", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    with log.open("wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)


def wait_all(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float = 120) -> None:
    """Wait for the workers to exit; fail with their logs when one hangs."""
    for proc, log in zip(procs, logs, strict=True):
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"worker {proc.pid} did not exit:\n{log.read_text()[-3000:]}")


def wait_for(predicate, what: str, timeout: float = 180) -> None:
    """Poll until `predicate()` holds (a rendezvous, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


_HEADER = re.compile(rb"^(To|Message-ID): *(.+?)\r?$", re.M | re.I)


def received(smtp: SmtpServer) -> list[tuple[str, str]]:
    """(recipient, Message-ID) of each message the receiver accepted, in order."""
    out = []
    for msg in list(smtp.handler.messages):
        head = msg.data.split(b"\r\n\r\n", 1)[0] if isinstance(msg.data, bytes) else b""
        found = {k.decode().lower(): v.decode() for k, v in _HEADER.findall(head)}
        assert msg.rcpt_tos and found.get("message-id"), "a message without recipient or id"
        out.append((msg.rcpt_tos[0], found["message-id"]))
    return out


# --- scale out on PostgreSQL ---------------------------------------------------------------------

SUBSCRIBERS = 5_000


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_on_postgresql_send_each_digest_exactly_once(
    postgres_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config, settings = settings_file(tmp_path, postgres_url, smtp_server)
    with Store.open(postgres_url) as store:
        emails = populate(store, settings, SUBSCRIBERS)
        logs = [tmp_path / f"worker{n}.log" for n in range(3)]
        procs = [start_worker(config, log, "--idle-exit", "--batch", "25") for log in logs]
        wait_all(procs, logs)
        assert [p.returncode for p in procs] == [0, 0, 0], [log.read_text() for log in logs]

        got = received(smtp_server)
        per_address = Counter(rcpt for rcpt, _ in got)
        assert set(per_address) == set(emails)
        assert max(per_address.values()) == 1, per_address.most_common(3)
        assert len({mid for _, mid in got}) == SUBSCRIBERS
        counts = store.digest_status_counts()
        assert counts["sent"] == SUBSCRIBERS and counts["queued"] == counts["sending"] == 0
        # The work was shared: every worker sent some (each log ends with its summary).
        shares = [int(re.search(r": (\d+) sent", log.read_text()).group(1)) for log in logs]
        assert sum(shares) == SUBSCRIBERS
        assert all(shares), shares


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_killed_mid_run_leaves_its_claims_to_the_others(
    postgres_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    config, settings = settings_file(tmp_path, postgres_url, smtp_server)
    with Store.open(postgres_url) as store:
        emails = populate(store, settings, SUBSCRIBERS)
        logs = [tmp_path / f"worker{n}.log" for n in range(3)]
        extra = ("--idle-exit", "--batch", "25", "--lease", "2")
        # Workers log each finished batch ("pass: ..."): the victim has sent some before the kill.
        victim = start_worker(config, logs[0], *extra)
        procs = [victim] + [start_worker(config, log, *extra) for log in logs[1:]]
        wait_for(lambda: "pass: " in logs[0].read_text(), "the victim's first batch")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_all(procs[1:], logs[1:])
        assert [p.returncode for p in procs[1:]] == [0, 0], [log.read_text() for log in logs]
        assert victim.returncode == -signal.SIGKILL

        got = received(smtp_server)
        per_address = Counter(rcpt for rcpt, _ in got)
        assert set(per_address) == set(emails), "somebody was skipped"
        repeats = {rcpt: n for rcpt, n in per_address.items() if n > 1}
        # At most the victim's group accepted but not yet marked sent (a group never outgrows
        # the claimed batch, 25 here), each sent again under its own id.
        assert len(repeats) <= 25 and all(n == 2 for n in repeats.values()), repeats
        for rcpt in repeats:
            assert len({mid for r, mid in got if r == rcpt}) == 1
        assert len({mid for _, mid in got}) == SUBSCRIBERS
        counts = store.digest_status_counts()
        assert counts["sent"] == SUBSCRIBERS and counts["queued"] == counts["sending"] == 0


# --- SQLite: the same command as a single worker -------------------------------------------------


def test_a_single_worker_on_sqlite_sends_each_digest_once(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    config, settings = settings_file(tmp_path, url, smtp_server)
    with Store.open(url) as store:
        emails = populate(store, settings, 300)
    proc = start_worker(config, tmp_path / "worker.log", "--idle-exit", "--batch", "40")
    wait_all([proc], [tmp_path / "worker.log"])
    assert proc.returncode == 0, (tmp_path / "worker.log").read_text()
    assert sorted(rcpt for rcpt, _ in received(smtp_server)) == emails
    with Store.open(url) as store:
        assert store.digest_status_counts()["sent"] == 300


def test_sigterm_finishes_the_message_in_flight_and_gives_the_batch_back(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    config, settings = settings_file(tmp_path, url, smtp_server)
    with Store.open(url) as store:
        emails = populate(store, settings, 400)
    log = tmp_path / "worker.log"
    proc = start_worker(config, log, "--batch", "400")  # one big batch, no idle exit
    wait_for(lambda: len(smtp_server.handler.messages) >= 20, "the first messages")
    proc.send_signal(signal.SIGTERM)
    wait_all([proc], [log])
    assert proc.returncode == 0, log.read_text()
    assert "finishing the message in flight" in log.read_text()
    first = received(smtp_server)
    assert len(first) < 400, "the worker did not stop early"
    with Store.open(url) as store:
        counts = store.digest_status_counts()
        # Nothing left claimed: the rest of the batch went straight back to the queue.
        assert counts["sending"] == 0
        assert counts["sent"] == len(first) and counts["queued"] == 400 - len(first)
    # A second worker finishes the job: everyone has exactly one digest.
    proc = start_worker(config, log, "--idle-exit")
    wait_all([proc], [log])
    assert proc.returncode == 0, log.read_text()
    assert sorted(rcpt for rcpt, _ in received(smtp_server)) == emails


# --- in process: the loop, the lease -------------------------------------------------------------


class Clock:
    """A controllable clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_stalled_worker_renews_its_lease_and_skips_what_was_taken_over(store: Store, tmp_path):
    settings = build_settings({"mail": {"max_papers": 10}}, root=tmp_path)
    populate(store, settings, 3)
    clock = Clock(T0)
    sent: list[int] = []
    taken: list[int] = []

    def send_one(digest) -> None:
        sent.append(digest.id)
        if len(sent) == 1:
            # This send stalls past the lease: another worker takes every lapsed claim.
            clock.now += timedelta(seconds=11)
            taken.extend(
                store.claim_digests("other", limit=10, lease_until=clock.now + timedelta(60),
                                    now=clock.now)
            )  # fmt: skip

    report = deliver_queued(
        store, settings, send_one, clock=clock, worker="me", batch=10, lease=timedelta(seconds=10)
    )
    # Only the message in flight is in both hands; the rest is left to its new holder.
    assert len(sent) == 1 and report.sent == 1
    assert sorted(taken) == sorted(store.digest_ids_by_status("sending") + sent)
    assert set(sent) <= set(taken)


def test_run_worker_idle_exit_waits_for_claims_held_elsewhere(store: Store, tmp_path):
    settings = build_settings({"mail": {"max_papers": 10}}, root=tmp_path)
    populate(store, settings, 5)
    # Another worker holds two digests with a lease that has already lapsed (it died).
    held = store.claim_digests("dead", limit=2, lease_until=T0, now=T0)
    assert Cycle(store, settings).pending()
    transport = DryRunTransport(stream=None)
    report = run_worker(
        store,
        settings,
        options=WorkerOptions(batch=2, lease=60, poll=0.01, idle_exit=True),
        transport_factory=lambda _settings: transport,
        clock=lambda: T0 + timedelta(seconds=1),
        name="alive",
    )
    assert report.sent == 5 and len(held) == 2
    assert not Cycle(store, settings).pending()
    assert sorted(m.recipients[0] for m in transport.messages) == [
        f"reader{n:05d}@example.org" for n in range(5)
    ]


def test_queue_digests_page_by_page_plans_what_one_pass_would(store: Store, tmp_path, monkeypatch):
    import digest.outbox as outbox
    from digest.outbox import plan_digests

    settings = build_settings({"mail": {"max_papers": 10}}, root=tmp_path)
    assert not ingest_files(store, settings, [FIXTURES / "ingest_day1.txt"], quiet=True).failures
    since = T0 - timedelta(days=1)
    queries = ["models", "scaling", "small, cheap", "models, -bigger", "author"]
    store.insert_subscribers(
        [
            Subscriber(
                0,
                f"p{n}@example.org",
                "",
                "active",
                "instant",
                "08:00",
                "UTC",
                0,
                since,
                f"tok-{n}",
                (Topic("T", q),),
                since,
            )
            for n, q in enumerate(queries)
        ],
        how=StatusChange.IMPORT,
    )
    expected = {
        p.state.subscriber.email: [i.paper_id for i in p.items]
        for p in plan_digests(store, settings, now=T0, force=True)[0]
    }
    monkeypatch.setattr(outbox, "QUEUE_CHUNK", 2)
    report = queue_digests(store, settings, now=T0, force=True)
    assert report.due == len(queries)
    assert report.queued == sum(1 for ids in expected.values() if ids)
    got = {}
    for digest_id in store.digest_ids_by_status("queued"):
        record = store.digest_record(digest_id)
        got[record.subscriber.email] = [e.paper.id for e in record.items]
    assert got == {email: ids for email, ids in expected.items() if ids}


def test_a_send_worker_does_not_load_the_matching_engine():
    # numpy and numba cost a worker ~120 MB of memory and only planning needs them
    code = "import sys, digest.worker; print(sorted({'numba', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _dead_port() -> socket.socket:
    """A loopback port bound but not listening (connections to it are refused), held until
    the socket is closed, so no other test's server takes it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def _down_settings(tmp_path: Path, sock: socket.socket) -> tuple[Path, Settings]:
    from smtp_helpers import RecordingHandler

    down = SmtpServer("127.0.0.1", sock.getsockname()[1], RecordingHandler(), None)  # type: ignore[arg-type]
    return settings_file(tmp_path, f"sqlite:///{tmp_path / 'digest.db'}", down)


def _digest_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`digest --config CONFIG -q ARGS...` from the venv, without the suite's DIGEST_ vars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    return subprocess.run(
        [str(DIGEST_BIN), "--config", str(config), "-q", *args],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip


def test_an_smtp_outage_spends_no_retry_and_a_worker_waits_it_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The relay is down: a pass stops at once and every digest stays queued untouched (no
    # attempt counted, none failed), where each used to spend its retries until all failed.
    # A running worker backs off and tries again, and sends each digest once it is back.
    import threading

    from aiosmtpd.controller import Controller
    from smtp_helpers import RecordingHandler

    from digest.models import DigestStatus

    sock = _dead_port()
    port = sock.getsockname()[1]
    _, settings = _down_settings(tmp_path, sock)
    with Store.open(settings.database.url) as store:
        emails = populate(store, settings, 6)
        ids = store.digest_ids_by_status("queued")
        report = Cycle(store, settings).deliver(helpers=False)
        assert f"127.0.0.1:{port}: cannot connect" in report.unavailable
        assert (report.sent, report.retried, report.failed) == (0, 0, 0)
        assert store.digest_ids_by_status("queued") == ids
        assert all(r.attempts == 0 for r in store.digest_records(ids).values())
        assert store.digest_status_counts()[DigestStatus.FAILED] == 0

        stop = threading.Event()
        reports: list = []
        options = WorkerOptions(poll=0.05)
        worker = threading.Thread(
            target=lambda: reports.append(run_worker(store, settings, options=options, stop=stop)),
            daemon=True,
        )
        handler = RecordingHandler()
        controller = None
        try:
            with caplog.at_level("WARNING", logger="digest.worker"):
                worker.start()
                wait_for(lambda: any("trying again" in r.getMessage() for r in caplog.records),
                         "the worker to meet the outage")  # fmt: skip
            sock.close()  # the relay comes back on the same port
            controller = Controller(handler, hostname="127.0.0.1", port=port)
            controller.start()
            wait_for(lambda: len(handler.messages) == len(emails), "every digest sent")
        finally:
            stop.set()
            worker.join(30)
            sock.close()
            if controller is not None:
                controller.stop()
        (report,) = reports
        assert report.outages >= 1 and report.sent == len(emails) and report.failed == 0
        assert "SMTP server unreachable" in report.summary()
        assert sorted(m.rcpt_tos[0] for m in handler.messages) == sorted(emails)
        assert store.digest_status_counts()[DigestStatus.SENT] == len(emails)


def test_an_idle_exit_worker_ends_on_an_smtp_outage_with_the_reason(tmp_path: Path) -> None:
    # a batch job (cron, CI) must not wait forever for a relay that is down
    with _dead_port() as sock:
        config, settings = _down_settings(tmp_path, sock)
        with Store.open(settings.database.url) as store:
            populate(store, settings, 3)
        log = tmp_path / "worker.log"
        proc = start_worker(config, log, "--idle-exit")
        wait_all([proc], [log], timeout=60)
        text = log.read_text()
        assert proc.returncode == 1, text
        assert f"{sock.getsockname()[1]}: cannot connect" in text and "Traceback" not in text
        with Store.open(settings.database.url) as store:
            assert len(store.digest_ids_by_status("queued")) == 3


def test_send_with_the_smtp_server_down_exits_1_naming_it_and_keeps_the_queue(
    tmp_path: Path,
) -> None:
    with _dead_port() as sock:
        config, settings = _down_settings(tmp_path, sock)
        with Store.open(settings.database.url) as store:
            populate(store, settings, 3)
        done = _digest_cli(config, "send", "--now")
        assert done.returncode == 1, done.stderr
        assert f"127.0.0.1:{sock.getsockname()[1]}: cannot connect" in done.stderr, done.stderr
        assert "stay queued" in done.stderr and "Traceback" not in done.stderr
        with Store.open(settings.database.url) as store:
            ids = store.digest_ids_by_status("queued")
            assert len(ids) == 3
            assert all(r.attempts == 0 for r in store.digest_records(ids).values())


def test_run_once_with_the_smtp_server_down_still_writes_the_feeds(tmp_path: Path) -> None:
    # feeds need no SMTP server: a cron `run --once` during an outage writes them, keeps the
    # email digests queued and exits 1 naming the server
    import shutil

    with _dead_port() as sock:
        config, settings = _down_settings(tmp_path, sock)
        with Store.open(settings.database.url) as store:
            populate(store, settings, 2)
        settings.inbox.dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / "ingest_day2.txt", settings.inbox.dir / "ingest_day2.txt")
        done = _digest_cli(config, "run", "--once")
        assert done.returncode == 1, done.stderr
        assert "cannot connect" in done.stderr and "Traceback" not in done.stderr
        feeds = settings.feeds.public_dir / "feeds"
        assert (feeds / "all.rss").exists() and (feeds / "all.atom").exists(), done.stderr
        with Store.open(settings.database.url) as store:
            assert len(store.digest_ids_by_status("queued")) >= 2
