"""The send-health sentinel: before a scheduled send, compare the run with recent ones.

Operators learned weeks later that sending had stopped; this check says so at the run. The rules
are pure functions over `Figures` (a few numbers read through named store methods); an anomaly is
logged as a WARNING, kept in the meta table for `digest status` and the admin dashboard, and
mailed to `[site] operator_email` at most once a day per kind (the last alert time per kind is
kept in the meta table too, so a stuck daemon retrying every minute does not flood anyone).

The kinds:

- `stale_ingest`: no new paper stored for `[health] stale_days` while subscribers are due;
- `digest_jump`: the run plans `jump_factor` times the recent median of digests per run;
- `papers_jump`: its digests hold `jump_factor` times the recent median of papers per digest;
- `empty_run`: subscribers are due and papers are pending, yet every digest of the run is empty;
- `failure_rate`: more than `failure_rate` of the email digests of the last `failure_days`
  failed after every retry or bounced.

The check never stops a send: a failure inside it is logged and the run goes on.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from enum import StrEnum
from typing import Any

from digest.config import HealthSettings, Settings
from digest.mail import Transport
from digest.models import DigestStatus
from digest.store import RunSize, Store

log = logging.getLogger(__name__)

LATEST_KEY = "health.latest"  # meta: the last check's time and anomalies (JSON)
ALERTED_KEY = "health.alerted."  # meta, + kind: when that kind was last mailed (ISO time)
ALERT_EVERY = timedelta(days=1)


class AnomalyKind(StrEnum):
    STALE_INGEST = "stale_ingest"
    DIGEST_JUMP = "digest_jump"
    PAPERS_JUMP = "papers_jump"
    EMPTY_RUN = "empty_run"
    FAILURE_RATE = "failure_rate"


# Kinds a check without a run (`digest status`) can still evaluate from the store alone.
LIVE_KINDS = frozenset({AnomalyKind.STALE_INGEST, AnomalyKind.FAILURE_RATE})


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: AnomalyKind
    message: str

    def as_dict(self, at: datetime) -> dict[str, str]:
        return {"kind": str(self.kind), "message": self.message, "at": at.isoformat()}


@dataclass(frozen=True, slots=True)
class ThisRun:
    """The run about to send: who is due and what its queueing recorded."""

    due: int
    digests: int  # email digests recorded (with papers)
    papers: int  # papers in those digests
    candidates: int  # papers pending for the due subscribers
    feed_items: int = 0
    dropped: int = 0  # digests it planned that were not recorded (a concurrent pass first)


@dataclass(frozen=True, slots=True)
class Figures:
    """Recent-run figures, as the store gives them."""

    now: datetime
    newest_paper_at: datetime | None
    waiting: int  # active subscribers (they wait for digests)
    recent: Sequence[RunSize]  # earlier checked runs that queued email digests, newest first
    outcomes: Mapping[str, int]  # email digests of the last failure_days, per status
    run: ThisRun | None = None


# --- the rules (pure) ----------------------------------------------------------------------------


def stale_ingest(f: Figures, h: HealthSettings) -> Anomaly | None:
    """Nothing new stored for stale_days while subscribers are due (or, without a run, wait)."""
    waiting = f.run.due if f.run is not None else f.waiting
    if not waiting or f.newest_paper_at is None:
        return None
    age = f.now - f.newest_paper_at
    if age < timedelta(days=h.stale_days):
        return None
    return Anomaly(
        AnomalyKind.STALE_INGEST,
        f"no new paper stored for {age.total_seconds() / 86400:.1f} days (last "
        f"{f.newest_paper_at:%Y-%m-%d %H:%M} UTC) while {waiting} subscriber(s) wait; "
        "is the dump fetcher writing to the inbox?",
    )


def _median(values: Iterable[float]) -> float | None:
    got = list(values)
    return statistics.median(got) if got else None


def digest_jump(f: Figures, h: HealthSettings) -> Anomaly | None:
    """This run plans jump_factor x the recent median of digests per run."""
    if f.run is None or not f.run.digests or len(f.recent) < h.min_runs:
        return None
    median = _median(r.digests for r in f.recent)
    if not median or f.run.digests < h.jump_factor * median:
        return None
    return Anomaly(
        AnomalyKind.DIGEST_JUMP,
        f"this run queued {f.run.digests} digests, {f.run.digests / median:.0f}x the median "
        f"of the last {len(f.recent)} runs ({median:g}); were watermarks reset or subscribers "
        "imported twice?",
    )


def papers_jump(f: Figures, h: HealthSettings) -> Anomaly | None:
    """This run's digests hold jump_factor x the recent median of papers per digest."""
    if f.run is None or not f.run.digests or len(f.recent) < h.min_runs:
        return None
    median = _median(r.papers / r.digests for r in f.recent if r.digests)
    per_digest = f.run.papers / f.run.digests
    if not median or per_digest < h.jump_factor * median:
        return None
    return Anomaly(
        AnomalyKind.PAPERS_JUMP,
        f"this run's digests hold {per_digest:.1f} papers each, {per_digest / median:.0f}x the "
        f"median of the last {len(f.recent)} runs ({median:.1f}); old papers sent again?",
    )


def empty_run(f: Figures, h: HealthSettings) -> Anomaly | None:
    """Subscribers due and papers pending, yet every digest of the run empty (once digests
    used to come out of runs: a new site whose few profiles match nothing is not an anomaly)."""
    run = f.run
    if run is None or not run.due or not run.candidates or run.digests or run.feed_items:
        return None
    if run.dropped:  # not empty: another pass (two sends at once) recorded its digests
        return None
    if not any(r.digests for r in f.recent):
        return None
    return Anomaly(
        AnomalyKind.EMPTY_RUN,
        f"{run.due} subscriber(s) due and {run.candidates} paper(s) pending, yet every digest "
        "of this run is empty; are the papers parsed right and the profiles matching?",
    )


def failure_rate(f: Figures, h: HealthSettings) -> Anomaly | None:
    """More than failure_rate of the settled email digests of failure_days failed or bounced."""
    bad = f.outcomes.get(DigestStatus.FAILED, 0) + f.outcomes.get(DigestStatus.BOUNCED, 0)
    settled = bad + f.outcomes.get(DigestStatus.SENT, 0)
    if settled < max(1, h.min_outcomes) or bad / settled <= h.failure_rate:
        return None
    return Anomaly(
        AnomalyKind.FAILURE_RATE,
        f"{bad} of the {settled} digests of the last {h.failure_days:g} day(s) failed or "
        f"bounced ({bad / settled:.0%}, threshold {h.failure_rate:.0%}); see `digest status` "
        "and the SMTP settings",
    )


RULES: tuple[Callable[[Figures, HealthSettings], Anomaly | None], ...] = (
    stale_ingest,
    digest_jump,
    papers_jump,
    empty_run,
    failure_rate,
)


def check(f: Figures, h: HealthSettings) -> list[Anomaly]:
    """Every anomaly these figures show (rules about the run are skipped without one)."""
    return [a for rule in RULES if (a := rule(f, h)) is not None]


# --- reading the figures -------------------------------------------------------------------------


def figures(
    store: Store, settings: Settings, *, now: datetime, run: ThisRun | None = None
) -> Figures:
    """The recent-run figures from the store (the run being checked is not yet among the
    recent runs: the sentinel adds it after the check)."""
    h = settings.health
    return Figures(
        now=now,
        newest_paper_at=store.newest_paper_seen_at(),
        waiting=store.subscriber_status_counts().get("active", 0),
        recent=store.recent_runs(since=now - timedelta(days=h.recent_days), limit=h.recent_runs),
        outcomes=store.email_outcomes_since(now - timedelta(days=h.failure_days)),
        run=run,
    )


# --- the sentinel -------------------------------------------------------------------------------


def sentinel(
    store: Store,
    settings: Settings,
    run: ThisRun,
    *,
    now: datetime,
    transport_factory: Callable[[Settings], Transport],
) -> list[Anomaly]:
    """Check the run about to send; warn, keep the findings, and alert the operator. Never
    raises: the check must not be what stops a send."""
    try:
        found = check(figures(store, settings, now=now, run=run), settings.health)
        for anomaly in found:
            log.warning("health: %s: %s", anomaly.kind, anomaly.message)
        store.set_meta(
            LATEST_KEY,
            json.dumps({"at": now.isoformat(), "anomalies": [a.as_dict(now) for a in found]}),
        )
        if run.digests:  # the history the next runs are compared with
            store.add_run(RunSize(now, run.digests, run.papers), keep=settings.health.recent_runs)
        if found and settings.site.operator_email:
            alert_operator(store, settings, found, now=now, transport_factory=transport_factory)
        return found
    except Exception:
        log.exception("the send-health check failed (sending goes on)")
        return []


def alert_operator(
    store: Store,
    settings: Settings,
    found: Sequence[Anomaly],
    *,
    now: datetime,
    transport_factory: Callable[[Settings], Transport],
) -> bool:
    """Mail the anomalies of kinds not mailed in the last day to the operator; True if sent."""
    fresh = [a for a in found if _due_for_alert(store.get_meta(ALERTED_KEY + a.kind), now)]
    if not fresh:
        return False
    transport = transport_factory(settings)
    try:
        transport.send(_alert_message(settings, fresh, now))
    except Exception as exc:
        log.warning("health: cannot mail the operator %s: %s", settings.site.operator_email, exc)
        return False  # tried again at the next check
    finally:
        transport.close()
    for anomaly in fresh:
        store.set_meta(ALERTED_KEY + anomaly.kind, now.isoformat())
    log.info("health: mailed %d anomaly(ies) to %s", len(fresh), settings.site.operator_email)
    return True


def _due_for_alert(last: str | None, now: datetime) -> bool:
    if not last:
        return True
    try:
        then = datetime.fromisoformat(last)
    except ValueError:
        return True
    return now - then >= ALERT_EVERY or then > now  # a clock set back does not mute alerts


def _alert_message(settings: Settings, found: Sequence[Anomaly], now: datetime) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail.from_addr
    msg["To"] = settings.site.operator_email
    kinds = ", ".join(a.kind for a in found)
    msg["Subject"] = f"[{settings.site.title}] send health: {kinds}"
    msg["Date"] = format_datetime(now.astimezone(UTC))
    domain = parseaddr(settings.mail.from_addr)[1].rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid("health", domain=domain)
    lines = [f"The send-health check of {now:%Y-%m-%d %H:%M} UTC found:", ""]
    lines += [f"- {a.kind}: {a.message}" for a in found]
    lines += ["", "Each kind is mailed at most once a day. `digest status` shows the latest check."]
    msg.set_content("\n".join(lines) + "\n")
    return msg


# --- what `digest status` and the dashboard show -------------------------------------------------


def current(store: Store, settings: Settings, *, now: datetime) -> list[dict[str, Any]]:
    """The anomalies to show now: the store-only rules evaluated now, plus the run rules'
    findings of the last check if it was less than a day ago."""
    shown = {
        a.kind: a.as_dict(now) for a in check(figures(store, settings, now=now), settings.health)
    }
    raw = store.get_meta(LATEST_KEY)
    if raw:
        try:
            latest = json.loads(raw)
            at = datetime.fromisoformat(latest["at"])
            if now - at < ALERT_EVERY:
                for item in latest["anomalies"]:
                    if item["kind"] not in LIVE_KINDS:
                        shown.setdefault(item["kind"], item)
        except (ValueError, KeyError, TypeError):
            log.warning("health: the kept findings (%s) are unreadable; ignored", LATEST_KEY)
    return sorted(shown.values(), key=lambda a: list(AnomalyKind).index(AnomalyKind(a["kind"])))
