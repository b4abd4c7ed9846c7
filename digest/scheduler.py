"""The scheduler daemon (`digest run`): inbox polling, due digests, feeds and housekeeping.

Four APScheduler jobs, whatever the number of subscribers: the "due digests" job runs every minute
and asks the ledger who is due (each subscriber's slot in their own time zone, digest.schedule), so
a million subscribers cost one job, not a million. The jobs live in the digest's own database
(table `apscheduler_jobs`) with stable ids; their stored next run times survive restarts, so a run
missed while the daemon was down happens once at restart (coalesced) and is logged.

APScheduler pickles a job as a reference to a module-level function plus its arguments, so the job
functions here take only a key naming the running daemon's `Runtime` in `_RUNTIMES`. The Runtime
carries the store, the settings, the clock and the stop event, which tests control.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from digest.config import Settings
from digest.daemon_lock import DaemonLock, daemon_lock, database_label, holder_text
from digest.errors import DigestError
from digest.ingest import IngestReport
from digest.mail import Transport, make_transport
from digest.outbox import Clock, DeliveryReport, QueueReport, utcnow
from digest.pipeline import Cycle, CycleReport
from digest.publish import FeedReport
from digest.store import Store

log = logging.getLogger(__name__)

JOBS_TABLE = "apscheduler_jobs"
JOB_INBOX = "digest-inbox"
JOB_DUE = "digest-due"
JOB_FEEDS = "digest-feeds"
JOB_HOUSEKEEPING = "digest-housekeeping"
HOUSEKEEPING_AT = (3, 30)  # UTC hour and minute of the daily housekeeping run

TransportFactory = Callable[[Settings], Transport]

# Running daemons by key: the only link from a pickled job reference to live objects.
_RUNTIMES: dict[str, Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


# --- what the jobs do -------------------------------------------------------------------------


@dataclass
class Runtime:
    """What the job bodies need: the daemon's `Cycle` and its lock; each step callable directly."""

    settings: Settings
    store: Store
    clock: InitVar[Clock] = utcnow  # both go to the Cycle, which tests may reach into
    transport_factory: InitVar[TransportFactory] = make_transport
    stop: threading.Event = field(default_factory=threading.Event)
    lock: DaemonLock | None = None
    lost_lock: bool = False
    cycle: Cycle = field(init=False)
    _busy: int = field(default=0, repr=False)
    _idle: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def __post_init__(self, clock: Clock, transport_factory: TransportFactory) -> None:
        self.cycle = Cycle(self.store, self.settings, clock, transport_factory, self.stop)

    def run_job(self, job_id: str) -> None:
        """Run one job body unless stopping; log its failure as one line and keep the daemon up."""
        step = {
            JOB_INBOX: self.inbox_step,
            JOB_DUE: self.due_step,
            JOB_FEEDS: self.feeds_step,
            JOB_HOUSEKEEPING: self.housekeeping_step,
        }[job_id]
        # Checked under the same lock `wait_idle` waits on: a job either counts as busy before
        # the stop, or sees the stop and never touches the store.
        with self._idle:
            if self.stop.is_set():
                return
            self._busy += 1
        try:
            step()
        except (DigestError, SQLAlchemyError, OSError) as exc:
            log.error("%s failed: %s (retried at its next run)", job_id, _first_line(exc))
        except Exception:
            log.exception("%s failed unexpectedly (retried at its next run)", job_id)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no job body runs; False if one still runs after `timeout` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def inbox_step(self) -> IngestReport:
        """Ingest settled dumps; new papers go to instant subscribers and the feeds at once."""
        report = self.cycle.ingest(wait=False, quiet=True, progress=False)
        for warning in report.warnings:
            log.warning("ingest: %s", warning)
        for failure in report.failures:
            log.warning("ingest: %s", failure)
        _stage(
            "ingest",
            report.files or report.waiting,
            files=report.files,
            stored=len(report.stored),
            papers=report.papers,
            new_papers=report.new_papers,
            duplicates=len(report.duplicates),
            failed=len(report.failed),
            waiting=len(report.waiting),
        )
        if report.new_papers and not self.stop.is_set():
            # Instant subscribers are always due, so the ordinary due step serves them now.
            self.due_step()
            self.feeds_step()
        return report

    def due_step(self) -> tuple[QueueReport, DeliveryReport | None]:
        """Queue every digest whose slot has come, then deliver what is queued."""
        if self.lock is not None and not self.lock.alive():
            self.lost_lock = True
            log.error(
                "lost the daemon lock for %s (its database session dropped); stopping so that "
                "a second daemon cannot send alongside this one",
                database_label(self.settings.database.url),
            )
            self.stop.set()
            return QueueReport(), None
        with self.cycle.sending():
            return self._queue_and_deliver()

    def _queue_and_deliver(self) -> tuple[QueueReport, DeliveryReport | None]:
        queued = self.cycle.queue()
        _stage(
            "queue",
            queued.queued or queued.feed_items,
            due=queued.due,
            queued=queued.queued,
            feed_items=queued.feed_items,
            candidate_papers=queued.papers,
        )
        # early helpers may have sent everything already: deliver() still collects their report
        if self.stop.is_set() or not (self.cycle.has_early_helpers() or self.cycle.pending()):
            return queued, None
        delivery = self.cycle.deliver()
        for error in delivery.errors:
            log.warning("deliver: %s", error)
        if delivery.unavailable:
            # nothing lost: the digests wait in the queue, and the next due run tries again
            log.error(
                "deliver: %s; the digests not sent wait for the next run", delivery.unavailable
            )
        _stage(
            "deliver",
            True,
            sent=delivery.sent,
            retry=delivery.retried,
            failed=delivery.failed,
            bounced=delivery.bounced,
            stopped=int(self.stop.is_set()),
        )
        return queued, delivery

    def feeds_step(self) -> FeedReport:
        """Rewrite the public feed and the private feeds whose ledger grew (the due job, every
        minute, records feed-only subscribers' items)."""
        report = self.cycle.feeds(record=False)
        _stage(
            "feeds",
            report.public_changed or report.private_changed,
            public_changed=int(report.public_changed),
            private_written=report.private_written,
            private_changed=report.private_changed,
        )
        return report

    def housekeeping_step(self) -> dict[str, int]:
        """Daily: log what is stored and queued, and warn about digests that need attention."""
        counts: dict[str, int] = {"papers": self.store.count_papers()}
        for status, n in self.store.subscriber_status_counts().items():
            counts[f"subscribers_{status}"] = n
        for status, n in self.store.digest_status_counts().items():
            counts[f"digests_{status}"] = n
        _stage("housekeeping", True, **counts)
        if counts.get("digests_failed"):
            log.warning(
                "%d digest(s) failed after every retry; see `digest status` and the SMTP settings",
                counts["digests_failed"],
            )
        return counts


def _stage(stage: str, notable: Any, **counts: int) -> None:
    """One structured log line per stage: INFO when something happened, DEBUG otherwise."""
    fields = " ".join(f"{k}={v}" for k, v in counts.items())
    log.log(logging.INFO if notable else logging.DEBUG, "stage=%s %s", stage, fields)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- job entry points (module level: the job store keeps references to them) ---------------------


def _dispatch(key: str, job_id: str) -> None:
    with _RUNTIMES_LOCK:
        runtime = _RUNTIMES.get(key)
    if runtime is None:
        log.warning("%s: no running daemon for key %s; run skipped", job_id, key)
        return
    runtime.run_job(job_id)


def inbox_job(key: str) -> None:
    """Poll the inbox; after new papers, deliver to instant subscribers and refresh feeds."""
    _dispatch(key, JOB_INBOX)


def due_job(key: str) -> None:
    """Queue and deliver every digest whose slot has come."""
    _dispatch(key, JOB_DUE)


def feeds_job(key: str) -> None:
    """Rewrite the static feeds."""
    _dispatch(key, JOB_FEEDS)


def housekeeping_job(key: str) -> None:
    """Log daily counts."""
    _dispatch(key, JOB_HOUSEKEEPING)


@dataclass(frozen=True)
class JobSpec:
    """One job as registered: id, entry point, trigger, and whether it runs at start."""

    id: str
    name: str
    func: Callable[[str], None]
    trigger: BaseTrigger
    run_at_start: bool


def job_specs(settings: Settings) -> list[JobSpec]:
    """The daemon's jobs for these settings (feeds_minutes = 0: feeds only after ingests)."""
    specs = [
        JobSpec(
            JOB_INBOX,
            "poll the inbox",
            inbox_job,
            IntervalTrigger(seconds=max(settings.inbox.poll_seconds, 1.0), timezone=UTC),
            True,
        ),
        # On the minute, so a 07:00 digest leaves at 07:00:00 rather than some seconds later.
        JobSpec(JOB_DUE, "send due digests", due_job, CronTrigger(second=0, timezone=UTC), True),
    ]
    if settings.schedule.feeds_minutes > 0:
        interval = IntervalTrigger(minutes=settings.schedule.feeds_minutes, timezone=UTC)
        specs.append(JobSpec(JOB_FEEDS, "refresh feeds", feeds_job, interval, True))
    hour, minute = HOUSEKEEPING_AT
    daily = CronTrigger(hour=hour, minute=minute, timezone=UTC)
    specs.append(JobSpec(JOB_HOUSEKEEPING, "housekeeping", housekeeping_job, daily, False))
    return specs


@dataclass(frozen=True)
class ScheduledJob:
    """A job as the job store holds it (for `digest status`)."""

    id: str
    name: str
    next_run_time: datetime | None


def scheduled_jobs(store: Store) -> list[ScheduledJob]:
    """The daemon's jobs and their next run times as stored; [] before the first `digest run`."""
    jobstore = SQLAlchemyJobStore(engine=store.engine, tablename=JOBS_TABLE)
    jobstore.start(None, "default")  # creates the table if missing; no scheduler needed to read
    return [ScheduledJob(j.id, j.name, j.next_run_time) for j in jobstore.get_all_jobs()]


# --- the daemon ---------------------------------------------------------------------------------


class DigestScheduler(BackgroundScheduler):
    """BackgroundScheduler without its last pass after shutdown.

    APScheduler 3 wakes its loop once more after `shutdown()`; with the executors already shut,
    that pass fails to submit the jobs due then, yet advances their stored next run time, so the
    run is lost instead of happening at the next start. Checking the state under the job store
    lock (which `shutdown` takes too) closes that window.
    """

    def _process_jobs(self) -> float | None:
        with self._jobstores_lock:
            if self.state == STATE_STOPPED:
                return None
            return super()._process_jobs()


class _DropMaxInstancesWarnings(logging.Filter):
    """A delivery longer than a minute makes APScheduler warn on each skipped run; we log that
    ourselves at DEBUG, since the running delivery is doing the work the skipped run would do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in str(record.msg)


class Daemon:
    """`digest run`: hold the lock, run the jobs (the first due run requeues what a crash left in
    flight, as every delivery does)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Clock = utcnow,
        transport_factory: TransportFactory = make_transport,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.lock = DaemonLock(store, settings.database.url)
        self.runtime = Runtime(
            settings,
            store,
            clock=clock,
            transport_factory=transport_factory,
            stop=stop or threading.Event(),
            lock=self.lock,
        )
        self.key = f"{os.getpid()}-{id(self):x}"
        self.scheduler: DigestScheduler | None = None
        self.runs: Counter[str] = Counter()  # finished runs per job id (tests wait on these)
        self._runs_changed = threading.Condition()

    @property
    def stop(self) -> threading.Event:
        return self.runtime.stop

    def start(self) -> None:
        """Take the lock (LockError if another daemon has it), then start the jobs."""
        self.lock.acquire()
        try:
            with _RUNTIMES_LOCK:
                _RUNTIMES[self.key] = self.runtime
            self.scheduler = self._build_scheduler()
            self.scheduler.start(paused=True)
            self._register_jobs(self.scheduler)
            self.scheduler.resume()
        except BaseException:
            if self.scheduler is not None and self.scheduler.running:
                self.scheduler.shutdown(wait=False)
            self._forget()
            self.lock.release()
            raise
        log.info(
            "digest daemon started for %s (%s): inbox every %gs, due digests every minute, "
            "feeds every %g min, housekeeping daily at %02d:%02d UTC",
            database_label(self.settings.database.url),
            holder_text(),
            max(self.settings.inbox.poll_seconds, 1.0),
            self.settings.schedule.feeds_minutes,
            *HOUSEKEEPING_AT,
        )

    def _build_scheduler(self) -> DigestScheduler:
        grace = self.settings.schedule.misfire_grace_seconds
        scheduler = DigestScheduler(
            jobstores={
                "default": SQLAlchemyJobStore(engine=self.store.engine, tablename=JOBS_TABLE)
            },
            # One worker: jobs never overlap, so two queueing passes never race.
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": grace},
            timezone=UTC,
        )
        scheduler.add_listener(
            self._on_event,
            EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )
        noisy = logging.getLogger("apscheduler.scheduler")
        if not any(isinstance(f, _DropMaxInstancesWarnings) for f in noisy.filters):
            noisy.addFilter(_DropMaxInstancesWarnings())
        return scheduler

    def _register_jobs(self, scheduler: DigestScheduler) -> None:
        """Add or replace each job under its stable id, keeping a stored next run time."""
        now = datetime.now(UTC)
        specs = job_specs(self.settings)
        wanted = {s.id for s in specs}
        for job in scheduler.get_jobs():
            if job.id not in wanted:
                log.info("removing job %s no longer used by these settings", job.id)
                scheduler.remove_job(job.id)
        for spec in specs:
            existing = scheduler.get_job(spec.id)
            stored = existing.next_run_time if existing is not None else None
            options: dict[str, Any] = {}
            if stored is not None and stored <= now:
                log.warning(
                    "%s (%s) missed its run due at %s while the daemon was down; "
                    "running it once now",
                    spec.id,
                    spec.name,
                    stored.isoformat(timespec="seconds"),
                )
                options["next_run_time"] = now
            elif spec.run_at_start:
                options["next_run_time"] = now
            elif stored is not None:
                options["next_run_time"] = stored
            # else: APScheduler computes the first run from the trigger.
            scheduler.add_job(
                spec.func,
                spec.trigger,
                args=[self.key],
                id=spec.id,
                name=spec.name,
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=self.settings.schedule.misfire_grace_seconds,
                **options,
            )

    def _on_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            log.warning(
                "%s: the run due at %s was more than %ss late and is skipped; "
                "the next one runs as scheduled",
                event.job_id,
                getattr(event, "scheduled_run_time", "?"),
                self.settings.schedule.misfire_grace_seconds,
            )
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            log.debug("%s: still running, this run skipped", event.job_id)
        else:
            with self._runs_changed:
                self.runs[event.job_id] += 1
                self._runs_changed.notify_all()

    def wait_for_runs(self, job_id: str, count: int, timeout: float) -> bool:
        """Wait until `job_id` has finished `count` runs in this daemon (for tests)."""
        with self._runs_changed:
            return self._runs_changed.wait_for(lambda: self.runs[job_id] >= count, timeout)

    def serve(self) -> None:
        """Block until the stop event is set (by a signal, a lost lock or a caller)."""
        while not self.stop.wait(1.0):
            pass

    def shutdown(self) -> bool:
        """Stop the jobs; wait for the one running (its message in flight) up to
        schedule.shutdown_seconds. True if everything finished and the lock was released."""
        self.stop.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # no new runs; the running job sees the stop
        finished = self.runtime.wait_idle(self.settings.schedule.shutdown_seconds)
        self._forget()
        if not finished:
            log.error(
                "a job was still running %gs after the stop; exiting anyway: a digest in flight "
                "stays claimed and is resent at the next start under the same Message-ID",
                self.settings.schedule.shutdown_seconds,
            )
            return False
        self.lock.release()
        log.info("digest daemon stopped; the ledger is consistent")
        return True

    def _forget(self) -> None:
        with _RUNTIMES_LOCK:
            _RUNTIMES.pop(self.key, None)


# --- entry points for the CLI -------------------------------------------------------------------


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (the message in flight finishes); a second one is noted.

    Handlers can only be installed from the main thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: already stopping", name)
            return
        log.warning("%s: finishing the message in flight, then stopping", name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _quiet_apscheduler() -> None:
    """APScheduler logs every run at INFO; keep its warnings unless -v asked for detail."""
    aps = logging.getLogger("apscheduler")
    if aps.level == logging.NOTSET and not log.isEnabledFor(logging.DEBUG):
        aps.setLevel(logging.WARNING)


def run_daemon(
    settings: Settings,
    store: Store,
    *,
    clock: Clock = utcnow,
    transport_factory: TransportFactory = make_transport,
) -> int:
    """`digest run`: serve until SIGTERM/SIGINT; 0 after a clean stop, 1 otherwise."""
    _quiet_apscheduler()
    daemon = Daemon(settings, store, clock=clock, transport_factory=transport_factory)
    with stop_on_signals(daemon.stop):
        daemon.start()
        try:
            daemon.serve()
        finally:
            clean = daemon.shutdown()
    if not clean:
        # A job thread is stuck (e.g. an SMTP server that stopped answering): the interpreter
        # would wait for it at exit, so leave now. The OS frees the file lock, the server the
        # advisory lock; the claimed digest is requeued at the next start.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return 1 if daemon.runtime.lost_lock else 0


def run_once(
    settings: Settings,
    store: Store,
    *,
    clock: Clock = utcnow,
    transport_factory: TransportFactory = make_transport,
    quiet: bool = False,
) -> CycleReport:
    """`digest run --once`: under the daemon lock, one full cycle (ingest, send what is due,
    feeds); SIGTERM/SIGINT finish the message in flight and skip the rest of the sending."""
    cycle = Cycle(store, settings, clock, transport_factory)
    with daemon_lock(store, settings.database.url), stop_on_signals(cycle.stop):
        return cycle.run(quiet=quiet)
