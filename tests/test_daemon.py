"""`digest run` as a real process: one daemon per database, SIGTERM mid-send, forced stops.

Each test starts `python -m digest.cli run` in a subprocess against a database prepared here and,
where mail matters, an aiosmtpd server on a loopback port whose handler can hold one message until
the test lets it go, so "mid-send" is a fact of the test, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from smtp_helpers import RecordingHandler, SmtpServer, start_server

from digest.config import load_settings
from digest.daemon_lock import database_label
from digest.ingest import ingest_files
from digest.models import Topic
from digest.store import Store
from digest.subscribers import add_subscriber

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
PEOPLE = [f"reader{i}@example.org" for i in range(6)]
WAIT = 60.0  # upper bound for a process to react; never a timing assertion


def _settings_text(url: str, smtp_port: int | None, shutdown_seconds: float) -> str:
    mail = (
        f'[mail]\ntransport = "smtp"\n\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\n'
        "timeout_seconds = 20.0\n"
        if smtp_port
        else ""
    )
    return (
        f'[database]\nurl = "{url}"\n\n'
        "[inbox]\nsettle_seconds = 0.0\npoll_seconds = 3600.0\n\n"
        f"[schedule]\nshutdown_seconds = {shutdown_seconds}\n\n"
        '[site]\nbase_url = "https://papers.example.org"\n\n' + mail
    )


def make_site(
    tmp_path: Path, url: str, *, smtp_port: int | None = None, shutdown_seconds: float = 30.0
) -> Path:
    """A settings file, subscribers (instant, all matching) and one stored dump."""
    config = tmp_path / "settings.toml"
    config.write_text(_settings_text(url, smtp_port, shutdown_seconds), encoding="utf-8")
    settings = load_settings(config, env={})
    settings.inbox.dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(url)
    try:
        yesterday = datetime.now(UTC) - timedelta(days=1)
        for email in PEOPLE:
            add_subscriber(
                store, settings, email, topics=[Topic("Sparse", "sparse")],
                cadence="instant", now=yesterday,
            )  # fmt: skip
        report = ingest_files(store, settings, [FIXTURES / "ingest_day1.txt"], quiet=True)
        assert report.new_papers > 0
    finally:
        store.close()
    return config


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def digest_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "digest.cli", "--config", str(config), *args]


class DaemonProcess:
    """`digest run` in a subprocess, its stderr collected line by line as it comes."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            digest_cmd(config, "run", *args),
            cwd=config.parent,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, text: str, timeout: float = WAIT) -> bool:
        """Wait until a stderr line contains `text` (False if the process ended without it)."""

        def seen() -> bool:
            return any(text in ln for ln in self.lines) or self.proc.poll() is not None

        with self._changed:
            self._changed.wait_for(seen, timeout)
            return any(text in ln for ln in self.lines)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT)


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons a test started; any still running at the end are killed."""
    started: list[DaemonProcess] = []
    yield started
    for d in started:
        d.kill()


# --- one daemon per database --------------------------------------------------------------------


def test_a_second_daemon_exits_1_naming_the_holder(
    tmp_path: Path, store_url: str, daemons: list[DaemonProcess]
) -> None:
    config = make_site(tmp_path, store_url)
    first = DaemonProcess(config)
    daemons.append(first)
    assert first.wait_for_line("digest daemon started"), first.stderr()
    expected = (
        f"another digest daemon holds the lock for {database_label(store_url)} "
        f"(pid {first.pid} on host {socket.gethostname()})"
    )
    for args in (["run"], ["run", "--once"]):
        second = subprocess.run(
            digest_cmd(config, *args), cwd=tmp_path, env=_env(),
            capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert expected in second.stderr
        assert "Traceback" not in second.stderr
    # The state the last assertion needs, waited for (not assumed): all six sent by the first.
    assert first.wait_for_line("stage=deliver sent=6"), first.stderr()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0, first.stderr()
    assert "digest daemon stopped" in first.stderr()
    # The lock went with the first daemon: a cron-style run now goes ahead.
    once = subprocess.run(
        digest_cmd(config, "run", "--once"), cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    assert "deliver: 0 sent" in once.stdout  # the first daemon had sent all six at its start


# --- signals ------------------------------------------------------------------------------------


@dataclass
class GatedHandler(RecordingHandler):
    """Records like RecordingHandler, but holds the `hold_at`-th DATA until `release` is set."""

    hold_at: int = 0
    arrivals: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server, session, envelope):
        self.arrivals += 1
        if self.arrivals == self.hold_at:
            self.arrived.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def gated_smtp() -> Iterator[SmtpServer]:
    server = start_server(GatedHandler(hold_at=3))
    try:
        yield server
    finally:
        server.handler.release.set()
        server.controller.stop()


def _message_ids_by_recipient(server: SmtpServer) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for m in server.handler.messages:
        msg = message_from_bytes(m.data, policy=policy.default)
        found[m.rcpt_tos[0]].append(str(msg["Message-ID"]))
    return found


def _counts(url: str) -> dict[str, int]:
    store = Store.open(url)
    try:
        return store.digest_status_counts()
    finally:
        store.close()


def test_sigterm_mid_send_finishes_the_message_in_flight_and_a_restart_sends_the_rest(
    tmp_path: Path, gated_smtp: SmtpServer, daemons: list[DaemonProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    config = make_site(tmp_path, url, smtp_port=gated_smtp.port)
    handler: GatedHandler = gated_smtp.handler  # type: ignore[assignment]
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    assert handler.arrived.wait(WAIT), daemon.stderr()  # the third digest is on the wire
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_for_line("SIGTERM: finishing the message in flight"), daemon.stderr()
    handler.release.set()
    assert daemon.wait() == 0, daemon.stderr()
    # The message in flight was finished and marked; the rest went back to the queue.
    assert handler.arrivals == 3
    assert _counts(url) == {"queued": 3, "sending": 0, "sent": 3, "failed": 0, "bounced": 0}
    # A restart (here the cron form) continues where the daemon stopped.
    once = subprocess.run(
        digest_cmd(config, "run", "--once"), cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    assert "deliver: 3 sent" in once.stdout
    received = _message_ids_by_recipient(gated_smtp)
    assert sorted(received) == sorted(PEOPLE), "somebody was skipped"
    assert all(len(ids) == 1 for ids in received.values()), received  # nobody got two
    assert _counts(url)["sent"] == 6


def test_a_stop_that_outlasts_shutdown_seconds_exits_and_the_restart_resends_the_same_message(
    tmp_path: Path, gated_smtp: SmtpServer, daemons: list[DaemonProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    config = make_site(tmp_path, url, smtp_port=gated_smtp.port, shutdown_seconds=0.5)
    handler: GatedHandler = gated_smtp.handler  # type: ignore[assignment]
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    assert handler.arrived.wait(WAIT), daemon.stderr()
    daemon.signal(signal.SIGTERM)
    # The server never answers the message in flight: the daemon gives up waiting and exits.
    assert daemon.wait() == 1, daemon.stderr()
    assert "resent at the next start under the same Message-ID" in daemon.stderr()
    # The message in flight stays claimed (its fate is unknown), with the rest of its batch,
    # and so do the two accepted before it: their group was to be marked after the batch.
    counts = _counts(url)
    assert counts["sent"] == 0 and counts["sending"] >= 3
    assert counts["queued"] + counts["sending"] == 6
    handler.release.set()  # the server finally takes the held message, too late for the ledger
    once = subprocess.run(
        digest_cmd(config, "run", "--once"), cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    assert once.returncode == 0, once.stderr
    assert f"requeued {counts['sending']} digest" in once.stderr
    received = _message_ids_by_recipient(gated_smtp)
    assert sorted(received) == sorted(PEOPLE), "somebody was skipped"
    # Nobody got two different digests; the repeats (the unmarked group, maybe the held one)
    # carry the same Message-IDs.
    assert all(len(set(ids)) == 1 for ids in received.values()), received
    assert sum(len(ids) for ids in received.values()) in (8, 9)
    assert _counts(url)["sent"] == 6


def test_a_send_killed_mid_batch_is_finished_at_once_by_the_next_send(
    tmp_path: Path, gated_smtp: SmtpServer
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    config = make_site(tmp_path, url, smtp_port=gated_smtp.port)
    handler: GatedHandler = gated_smtp.handler  # type: ignore[assignment]
    send = subprocess.Popen(
        digest_cmd(config, "send", "--now"), cwd=tmp_path, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert handler.arrived.wait(WAIT)  # the third digest is on the wire
        send.kill()  # kill -9: no handler runs, its claimed batch stays 'sending'
        send.wait(WAIT)
    finally:
        if send.poll() is None:
            send.kill()
        assert send.stderr is not None
        send.stderr.close()
    counts = _counts(url)
    # The two accepted before the kill were not marked yet (one group per batch): all six are
    # still claimed by the dead sender.
    assert counts["sent"] == 0 and counts["sending"] == 6, counts
    handler.release.set()  # the held message arrives after all; the ledger never learnt it
    again = subprocess.run(
        digest_cmd(config, "send"), cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=WAIT,
    )  # fmt: skip
    # No wait for the 10-minute lease: the dead sender's claims are given back at once.
    assert again.returncode == 0, again.stderr
    assert "requeued 6 digest" in again.stderr
    assert "deliver: 6 sent" in again.stdout
    received = _message_ids_by_recipient(gated_smtp)
    assert sorted(received) == sorted(PEOPLE), "somebody was skipped"
    # The unmarked group (two) and the one in flight at the kill may arrive twice, each under
    # its own Message-ID; nobody else, and never two different digests.
    assert all(len(set(ids)) == 1 for ids in received.values()), received
    assert sum(len(ids) for ids in received.values()) in (8, 9)
    assert _counts(url)["sent"] == 6


def test_sigint_stops_an_idle_daemon_with_status_0(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    config = make_site(tmp_path, url)
    daemon = DaemonProcess(config)
    daemons.append(daemon)
    assert daemon.wait_for_line("stage=deliver sent=6"), daemon.stderr()
    daemon.signal(signal.SIGINT)
    assert daemon.wait() == 0, daemon.stderr()
    assert "SIGINT: finishing the message in flight" in daemon.stderr()
    assert (tmp_path / "maildir" / "new").is_dir()
    assert len(list((tmp_path / "maildir" / "new").iterdir())) == 6
