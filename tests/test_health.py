"""The send-health sentinel: each rule with and without its anomaly, the figures the store gives,
the warning line, `digest status`, the dashboard, the operator's mail and its once-a-day limit."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digest import health, status
from digest.config import build_settings
from digest.health import AnomalyKind, Figures, ThisRun
from digest.ingest import ingest_files
from digest.mail import DryRunTransport
from digest.models import DigestStatus, Topic
from digest.pipeline import Cycle
from digest.store import RunSize, Store
from digest.subscribers import add_subscriber

FIXTURES = Path(__file__).parent / "fixtures" / "dumps"
T0 = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)
H = build_settings({}, root=Path(".")).health
BROAD = "model, latency, pruning, sparse, attention"


def _figures(**changes) -> Figures:
    """Healthy figures: fresh papers, 5 recent runs of ~100 digests of ~5 papers, no failure."""
    base = {
        "now": T0,
        "newest_paper_at": T0 - timedelta(hours=5),
        "waiting": 100,
        "recent": [RunSize(T0 - timedelta(days=d), 100 + d, 5 * (100 + d)) for d in range(1, 6)],
        "outcomes": {"sent": 500, "failed": 2, "bounced": 1},
        "run": ThisRun(due=100, digests=98, papers=490, candidates=40),
    }
    return Figures(**{**base, **changes})


def _kinds(f: Figures) -> list[str]:
    return [a.kind for a in health.check(f, H)]


# --- the rules -----------------------------------------------------------------------------------


def test_healthy_figures_show_no_anomaly() -> None:
    assert _kinds(_figures()) == []
    assert _kinds(_figures(run=None)) == []


def test_stale_ingest_when_nothing_new_for_days_while_subscribers_wait() -> None:
    stale = T0 - timedelta(days=3, minutes=1)
    assert _kinds(_figures(newest_paper_at=stale)) == [AnomalyKind.STALE_INGEST]
    assert _kinds(_figures(newest_paper_at=T0 - timedelta(days=2, hours=23))) == []
    # nobody due (or, without a run, nobody active): no one waits, no anomaly
    assert _kinds(_figures(newest_paper_at=stale, run=ThisRun(0, 0, 0, 0))) == []
    assert _kinds(_figures(newest_paper_at=stale, run=None, waiting=0)) == []
    assert _kinds(_figures(newest_paper_at=stale, run=None)) == [AnomalyKind.STALE_INGEST]
    (found,) = health.check(_figures(newest_paper_at=stale), H)
    assert "3.0 days" in found.message and "100 subscriber(s) wait" in found.message


def test_a_tenfold_jump_in_digests_against_the_recent_median() -> None:
    assert _kinds(_figures(run=ThisRun(1030, 1030, 5150, 40))) == [AnomalyKind.DIGEST_JUMP]
    assert _kinds(_figures(run=ThisRun(1000, 1000, 5000, 40))) == []  # 9.9x the median 103
    # too little history to compare with
    few = _figures(run=ThisRun(1030, 1030, 5150, 40), recent=_figures().recent[:2])
    assert _kinds(few) == []


def test_a_tenfold_jump_in_papers_per_digest() -> None:
    assert _kinds(_figures(run=ThisRun(100, 100, 5000, 40))) == [AnomalyKind.PAPERS_JUMP]
    assert _kinds(_figures(run=ThisRun(100, 100, 4900, 40))) == []


def test_every_digest_empty_while_subscribers_are_due_and_papers_pending() -> None:
    empty = ThisRun(due=100, digests=0, papers=0, candidates=40)
    assert _kinds(_figures(run=empty)) == [AnomalyKind.EMPTY_RUN]
    assert _kinds(_figures(run=ThisRun(100, 0, 0, candidates=0))) == []  # nothing to match
    assert _kinds(_figures(run=ThisRun(100, 0, 0, 40, feed_items=3))) == []  # feeds got them
    assert _kinds(_figures(run=ThisRun(100, 1, 5, 40))) == []
    assert _kinds(_figures(run=empty, recent=[])) == []  # a new site: nothing ever matched
    # two sends at once: the other pass recorded this one's digests first; not empty
    assert _kinds(_figures(run=ThisRun(100, 0, 0, 40, dropped=100))) == []


def test_a_delivery_failure_rate_over_the_threshold() -> None:
    bad = {"sent": 70, "failed": 20, "bounced": 11}
    assert _kinds(_figures(outcomes=bad)) == [AnomalyKind.FAILURE_RATE]
    assert _kinds(_figures(outcomes={"sent": 80, "failed": 20})) == []  # 20%: not over
    assert _kinds(_figures(outcomes={"sent": 1, "failed": 8})) == []  # too few to judge
    assert _kinds(_figures(outcomes=bad, run=None)) == [AnomalyKind.FAILURE_RATE]


# --- the figures from the store (both engines) ---------------------------------------------------


def _settings(tmp_path: Path, url: str, **site: str):
    return build_settings(
        {"database": {"url": url}, "inbox": {"settle_seconds": 0}, "site": site}, root=tmp_path
    )


def _ingest(store: Store, settings, name: str, at: datetime) -> None:
    report = ingest_files(store, settings, [FIXTURES / name], quiet=True, clock=at.timestamp)
    assert not report.failures


def test_the_figures_come_from_the_store(store: Store, tmp_path: Path, store_url: str) -> None:
    settings = _settings(tmp_path, store_url)
    for name in ("ada", "bob"):
        add_subscriber(store, settings, f"{name}@example.org", topics=[Topic("T", BROAD)],
                       cadence="instant", now=T0 - timedelta(days=9))  # fmt: skip
    _ingest(store, settings, "ingest_day1.txt", T0 - timedelta(days=2))
    first = Cycle(store, settings, lambda: T0 - timedelta(days=2), Outbox()).queue()
    _ingest(store, settings, "ingest_day2.txt", T0 - timedelta(days=1))
    second = Cycle(store, settings, lambda: T0 - timedelta(days=1), Outbox()).queue()
    assert first.queued == second.queued == 2 and second.queued_papers >= 2
    failed = store.digest_ids_by_status(DigestStatus.QUEUED)[0]
    store.fail_digest(failed, "550 refused", now=T0)

    f = health.figures(store, settings, now=T0)

    assert f.newest_paper_at == T0 - timedelta(days=1)
    assert f.waiting == 2
    # each checked run's size is kept (meta), newest first
    assert f.recent == [
        RunSize(T0 - timedelta(days=1), 2, second.queued_papers),
        RunSize(T0 - timedelta(days=2), 2, first.queued_papers),
    ]
    assert store.recent_runs(since=T0 - timedelta(days=1, hours=1), limit=5) == f.recent[:1]
    assert store.recent_runs(since=T0 - timedelta(days=9), limit=1) == f.recent[:1]
    store.add_run(RunSize(T0, 7, 21), keep=2)
    assert store.recent_runs(since=T0 - timedelta(days=9), limit=9) == [
        RunSize(T0, 7, 21),
        f.recent[0],
    ]
    # the failure window (1 day) holds the second run's digests only; the earlier run's failure
    # is outside it
    assert f.outcomes[DigestStatus.QUEUED] + f.outcomes[DigestStatus.FAILED] == 2
    assert store.email_outcomes_since(T0 - timedelta(days=3))[DigestStatus.FAILED] == 1
    # the window is found as an id range (no index on created_at), by a binary search
    from digest.store.ledger import first_digest_id_since

    ids = sorted([*store.digest_ids_by_status(DigestStatus.QUEUED), failed])
    with store.engine.connect() as conn:
        assert first_digest_id_since(conn, T0 - timedelta(days=1)) == ids[2]
        assert first_digest_id_since(conn, T0 - timedelta(days=1, seconds=1)) == ids[2]
        assert first_digest_id_since(conn, T0 - timedelta(days=3)) == ids[0]
        assert first_digest_id_since(conn, T0 - timedelta(days=1, seconds=-1)) is None


# --- the sentinel in the cycle: warning, findings kept, status, mail, throttle -------------------


class Outbox(DryRunTransport):
    """Every message any transport of the factory was given."""

    def __init__(self) -> None:
        super().__init__(stream=None)

    def __call__(self, _settings) -> Outbox:
        return self

    def close(self) -> None:  # kept open: the test reads the messages
        pass


@pytest.fixture
def stale(store: Store, tmp_path: Path, store_url: str):
    """A daily subscriber whose papers were all stored five days before T0; operator set."""
    settings = _settings(tmp_path, store_url, operator_email="ops@example.org")
    add_subscriber(store, settings, "ada@example.org", topics=[Topic("T", "latency")],
                   cadence="daily", now=T0 - timedelta(days=6))  # fmt: skip
    _ingest(store, settings, "ingest_day1.txt", T0 - timedelta(days=5))
    return store, settings, Outbox()


def test_a_run_with_an_anomaly_warns_keeps_it_and_mails_the_operator(
    stale, caplog: pytest.LogCaptureFixture
) -> None:
    store, settings, outbox = stale
    with caplog.at_level(logging.WARNING, logger="digest.health"):
        report = Cycle(store, settings, lambda: T0, outbox).queue(force=True)
    assert report.due == 1 and report.queued == 1
    (line,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert line.getMessage().startswith("health: stale_ingest: no new paper stored for 5.0 days")
    kept = json.loads(store.get_meta(health.LATEST_KEY) or "")
    assert kept["at"] == T0.isoformat() and kept["anomalies"][0]["kind"] == "stale_ingest"
    (mail,) = outbox.messages
    assert mail.recipients == ("ops@example.org",)
    assert "send health: stale_ingest" in mail.subject
    body = mail.as_email().get_body(preferencelist=("plain",)).get_content()
    assert "- stale_ingest: no new paper stored for 5.0 days" in body
    # the digest itself is still queued and sent: the check never stops a send
    assert Cycle(store, settings, lambda: T0, outbox).deliver(DryRunTransport()).sent == 1


def test_the_operator_is_mailed_at_most_once_a_day_per_kind(
    stale, caplog: pytest.LogCaptureFixture
) -> None:
    store, settings, outbox = stale
    for minutes in (0, 1, 60, 23 * 60):  # a stuck daemon checking again and again
        Cycle(store, settings, lambda m=minutes: T0 + timedelta(minutes=m), outbox).queue(
            force=True
        )
    assert len(outbox.messages) == 1
    assert sum("health: stale_ingest" in r.getMessage() for r in caplog.records) == 4
    # a new kind the same day is mailed at once, without the one already mailed
    found = [health.Anomaly(AnomalyKind.FAILURE_RATE, "5 of 10 failed"),
             health.Anomaly(AnomalyKind.STALE_INGEST, "stale")]  # fmt: skip
    at = T0 + timedelta(hours=23, minutes=30)
    assert health.alert_operator(store, settings, found, now=at, transport_factory=outbox)
    assert outbox.messages[-1].subject.endswith("send health: failure_rate")
    # a day after the first mail, the same kind is mailed again
    Cycle(store, settings, lambda: T0 + timedelta(days=1), outbox).queue(force=True)
    assert len(outbox.messages) == 3 and "stale_ingest" in outbox.messages[-1].subject


def test_no_operator_address_no_mail_and_a_broken_transport_stops_nothing(
    store: Store, tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, store_url)
    add_subscriber(store, settings, "ada@example.org", topics=[Topic("T", "latency")],
                   cadence="daily", now=T0 - timedelta(days=6))  # fmt: skip
    _ingest(store, settings, "ingest_day1.txt", T0 - timedelta(days=5))
    outbox = Outbox()
    assert Cycle(store, settings, lambda: T0, outbox).queue(force=True).queued == 1
    assert outbox.messages == []
    # with an address but an SMTP server that refuses: a warning, and the alert retried later
    settings = _settings(tmp_path, store_url, operator_email="ops@example.org")

    class Refusing(Outbox):
        def send(self, msg):  # type: ignore[override]
            raise OSError("connection refused")

    found = [health.Anomaly(AnomalyKind.STALE_INGEST, "stale")]
    sent = health.alert_operator(store, settings, found, now=T0, transport_factory=Refusing())
    assert not sent and store.get_meta(health.ALERTED_KEY + "stale_ingest") is None
    assert "cannot mail the operator ops@example.org" in caplog.text


def test_a_healthy_run_warns_nothing_and_keeps_an_empty_finding(
    store: Store, tmp_path: Path, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path, store_url, operator_email="ops@example.org")
    add_subscriber(store, settings, "ada@example.org", topics=[Topic("T", "latency")],
                   cadence="daily", now=T0 - timedelta(days=2))  # fmt: skip
    _ingest(store, settings, "ingest_day1.txt", T0 - timedelta(hours=3))
    outbox = Outbox()
    with caplog.at_level(logging.WARNING):
        assert Cycle(store, settings, lambda: T0, outbox).queue(force=True).queued == 1
    assert not [r for r in caplog.records if r.name == "digest.health"]
    assert json.loads(store.get_meta(health.LATEST_KEY) or "")["anomalies"] == []
    assert outbox.messages == []


def test_status_shows_the_anomalies_in_text_and_json(
    stale, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, settings, outbox = stale
    Cycle(store, settings, lambda: T0, outbox).queue(force=True)
    # a run rule's finding of the last check (kept), shown for a day
    kept = {"at": T0.isoformat(), "anomalies": [
        {"kind": "empty_run", "message": "every digest empty", "at": T0.isoformat()}]}  # fmt: skip
    store.set_meta(health.LATEST_KEY, json.dumps(kept))
    monkeypatch.setattr(status, "utcnow", lambda: T0 + timedelta(hours=2))

    data = status.collect_status(store, settings)

    assert [a["kind"] for a in data["health"]] == ["stale_ingest", "empty_run"]
    assert json.loads(json.dumps(data))["health"][1]["message"] == "every digest empty"
    text = status.format_status(data)
    assert "health: 2 warning(s)" in text
    assert "  WARNING stale_ingest (2026-03-04T10:00): no new paper stored for 5.1 days" in text
    assert "  WARNING empty_run (2026-03-04T08:00): every digest empty" in text
    # a day later the kept finding is old news; papers arrive: healthy again
    monkeypatch.setattr(status, "utcnow", lambda: T0 + timedelta(days=1, hours=1))
    _ingest(store, settings, "ingest_day2.txt", T0 + timedelta(days=1))
    data = status.collect_status(store, settings)
    assert data["health"] == [] and "health: ok" in status.format_status(data)


def test_the_dashboard_shows_the_anomalies(tmp_path: Path) -> None:
    from web_support import admin_client, make_settings

    from digest.web import create_app

    settings = make_settings(tmp_path)
    with Store.open(settings.database.url) as store:
        app = create_app(settings, store, transport_factory=Outbox())
        app.config["TESTING"] = True
        client = admin_client(app)
        page = client.get("/admin/").get_data(as_text=True)
        assert "Send health" in page and "No anomaly" in page
        now = datetime.now(UTC)
        jump = {"kind": "digest_jump", "message": "1030 digests <b>", "at": now.isoformat()}
        kept = {"at": now.isoformat(), "anomalies": [jump]}
        store.set_meta(health.LATEST_KEY, json.dumps(kept))
        page = client.get("/admin/").get_data(as_text=True)
        assert "<strong>digest_jump</strong>" in page and "1030 digests &lt;b&gt;" in page
        assert "No anomaly" not in page


def test_the_daemon_due_step_checks_before_it_delivers(
    stale, caplog: pytest.LogCaptureFixture
) -> None:
    from digest.scheduler import Runtime

    store, settings, outbox = stale
    runtime = Runtime(settings, store, clock=lambda: T0, transport_factory=outbox)
    order: list[str] = []
    deliver = runtime.cycle.deliver
    runtime.cycle.deliver = lambda *a, **k: order.append("deliver") or deliver(*a, **k)  # type: ignore[method-assign]  # spy
    with caplog.at_level(logging.WARNING):
        queued, delivery = runtime.due_step()
    assert queued.due == 1 and delivery is not None and delivery.sent == 1
    (alert, digest) = outbox.messages
    assert alert.recipients == ("ops@example.org",) and digest.recipients == ("ada@example.org",)
    assert order == ["deliver"] and "health: stale_ingest" in caplog.text
    # the next minute nobody is due: no check, no warning
    caplog.clear()
    runtime.cycle.clock = lambda: T0 + timedelta(minutes=1)
    assert runtime.due_step()[0].due == 0 and "health" not in caplog.text


def test_digest_send_and_status_through_the_cli(tmp_path: Path) -> None:
    """`digest send` warns and mails the operator (maildir here); `digest status` shows it."""
    import os
    import subprocess
    import sys

    from digest.config import load_settings

    def digest(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DIGEST_SITE_OPERATOR_EMAIL": "ops@example.org"}
        argv = [sys.executable, "-m", "digest.cli", "--config", str(config), *args]
        return subprocess.run(
            argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
        )

    config = tmp_path / "site" / "settings.toml"
    init = subprocess.run([sys.executable, "-m", "digest.cli", "init", str(config.parent)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert init.returncode == 0, init.stderr
    settings = load_settings(config, env={})
    days_ago = datetime.now(UTC) - timedelta(days=5)
    with Store.open(settings.database.url) as store:
        add_subscriber(store, settings, "ada@example.org", topics=[Topic("T", "latency")],
                       cadence="daily", now=days_ago - timedelta(days=1))  # fmt: skip
        _ingest(store, settings, "ingest_day1.txt", days_ago)

    sent = digest("send", "--now")
    assert sent.returncode == 0, sent.stderr
    assert "health: stale_ingest: no new paper stored for 5.0 days" in sent.stderr
    mails = sorted((settings.mail.maildir / "new").iterdir())
    assert len(mails) == 2  # the digest and the operator's alert
    assert any(b"send health: stale_ingest" in m.read_bytes() for m in mails)
    text = digest("status")
    assert "health: 1 warning(s)" in text.stdout and "WARNING stale_ingest" in text.stdout
    data = json.loads(digest("status", "--json").stdout)
    assert [a["kind"] for a in data["health"]] == ["stale_ingest"]


def test_run_once_checks_before_it_delivers(stale, caplog: pytest.LogCaptureFixture) -> None:
    from digest.scheduler import run_once

    store, settings, outbox = stale
    with caplog.at_level(logging.WARNING):
        report = run_once(settings, store, clock=lambda: T0, transport_factory=outbox, quiet=True)
    assert report.delivery is not None and report.delivery.sent == 1
    assert [m.recipients for m in outbox.messages] == [("ops@example.org",), ("ada@example.org",)]
    assert "health: stale_ingest" in caplog.text
