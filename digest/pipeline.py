"""One cycle of the digest: ingest -> queue -> deliver -> feeds, defined once.

Every entry point runs these steps and nothing else: `digest run --once` (`Cycle.run`), the
daemon's jobs (digest.scheduler), `digest send`, `digest feeds` and `digest worker`. Each step is a
method of `Cycle`, which carries the store, the settings, the clock and the stop event (tests
control all four). Delivering always starts by giving back the claims of dead senders of this
host, so a killed `send` never strands its batch for the whole lease.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

from digest.config import Settings
from digest.errors import DigestError, RenderError
from digest.health import Anomaly, ThisRun, sentinel
from digest.ingest import IngestReport, ingest_inbox
from digest.links import LinkSigner, links_for, secret_key
from digest.mail import DryRunTransport, MessageBuilder, Transport, make_transport
from digest.models import Digest, DigestKind, DigestStatus, Subscriber
from digest.outbox import (
    Clock,
    DeliveryReport,
    QueueReport,
    build_digest,
    deliver_queued,
    digest_from_plan,
    plan_digests,
    queue_digests,
    release_dead_claims,
    utcnow,
)
from digest.publish import FeedReport, write_feeds
from digest.render import RenderedDigest, Renderer
from digest.store import Store

log = logging.getLogger(__name__)

TransportFactory = Callable[[Settings], Transport]
SendOne = Callable[[Digest], None]

DEFAULT_BATCH = 50  # digests claimed per transaction
DEFAULT_LEASE = timedelta(minutes=10)  # how long a claim holds before another sender may take it


@dataclass
class CycleReport:
    """What one full cycle did, stage by stage."""

    ingest: IngestReport | None = None
    queue: QueueReport | None = None
    delivery: DeliveryReport | None = None
    feeds: FeedReport | None = None

    def summary(self) -> str:
        """One line per stage that ran."""
        parts = [
            ("ingest", self.ingest),
            ("queue", self.queue),
            ("deliver", self.delivery),
            ("feeds", self.feeds),
        ]
        return "\n".join(f"{name}: {report.summary()}" for name, report in parts if report)


@dataclass
class Cycle:
    """The steps of one cycle over one store; `run` performs them in order."""

    store: Store
    settings: Settings
    clock: Clock = utcnow
    transport_factory: TransportFactory = make_transport
    stop: threading.Event = field(default_factory=threading.Event)
    # the helper processes sending() started, until deliver() takes them over
    _early: _Helpers | None = field(default=None, init=False, repr=False, compare=False)

    def run(self, *, force: bool = False, quiet: bool = False) -> CycleReport:
        """Ingest the inbox, queue what is due, deliver it, and refresh the feeds."""
        report = CycleReport()
        report.ingest = self.ingest(quiet=quiet)
        with self.sending(force=force):
            report.queue = self.queue(force=force)
            report.delivery = self.deliver()
        # feeds need no SMTP server: written even when delivery stopped for want of one
        report.feeds = self.feeds(record=False)  # the queue step just recorded feed items
        return report

    def ingest(
        self, *, wait: bool = True, quiet: bool = False, progress: bool | None = None
    ) -> IngestReport:
        """Store every complete dump waiting in the inbox."""
        report = ingest_inbox(self.store, self.settings, wait=wait, quiet=quiet, progress=progress)
        log.debug("ingest: %s", report.summary())
        return report

    def queue(self, *, force: bool = False, feeds_only: bool = False) -> QueueReport:
        """Record every due digest (and feed-only subscribers' new items) in the ledger; when
        some were due, check the run against recent ones (before anything is sent, unless
        sending() started helpers, which send each page as it is recorded)."""
        now = self.clock()
        report = queue_digests(
            self.store, self.settings, now=now, force=force, feeds_only=feeds_only
        )
        log.debug("queue: %s", report.summary())
        if report.due and not feeds_only:
            self.health(report, now=now)
        return report

    def health(self, queued: QueueReport, *, now: datetime) -> list[Anomaly]:
        """The send-health check of a run about to send (digest.health); never raises."""
        run = ThisRun(queued.due, queued.queued, queued.queued_papers, queued.papers,
                      queued.feed_items, queued.dropped)  # fmt: skip
        return sentinel(self.store, self.settings, run, now=now,
                        transport_factory=self.transport_factory)  # fmt: skip

    @contextlib.contextmanager
    def sending(self, *, force: bool = False) -> Iterator[None]:
        """One send, `queue` then `deliver` inside the block: when enough subscribers may be
        due for helper processes (see helper_count), they start first and send each page of
        digests as soon as the queue stage records it, so their start-up and the queue stage
        overlap the sending. They stop when `deliver` has sent everything, or with the block."""
        due = 0
        if self.settings.mail.processes != 1 and self._may_have_helpers():
            due = self.store.count_may_be_due(due_at=None if force else self.clock())
        team = _Helpers.start(self, DEFAULT_BATCH, DEFAULT_LEASE, expect=due, early=True)
        self._early = team
        try:
            yield
        except BaseException:
            if team is not None:
                team.stop()
            raise
        finally:
            self._early = None
            if team is not None and not team.finished:  # deliver never ran: nothing to wait for
                team.stop()
                team.finish(None, None)

    def _may_have_helpers(self) -> bool:
        # a test's own transport or clock cannot be shared with a new process
        return self.transport_factory is make_transport and self.clock is utcnow

    def has_early_helpers(self) -> bool:
        """Whether helpers sending() started are running: deliver() must still take them over
        (and report what they sent), even when they have already emptied the queue."""
        return self._early is not None

    def helped(self) -> int:
        """Digests the early helpers (see sending) have sent so far."""
        return sum(self._early.sent) if self._early is not None else 0

    def deliver(
        self,
        transport: Transport | None = None,
        *,
        worker: str | None = None,
        batch: int = DEFAULT_BATCH,
        lease: timedelta = DEFAULT_LEASE,
        progress: Callable[[int], object] | None = None,
        helpers: bool = True,
    ) -> DeliveryReport:
        """Give back dead local senders' claims, then send every queued digest now due, with
        up to `mail.processes - 1` helper processes beside this one when the queue is long
        (`helpers=False`: this process alone; a helper's own pass is one)."""
        requeued = release_dead_claims(self.store)
        if requeued:
            log.warning(
                "requeued %d digest(s) a sender that is no longer running left in flight; "
                "they are sent now under their own Message-ID",
                requeued,
            )
        # Templates and settings are read afresh for each delivery (a few ms), so a daemon
        # picks up an edited template override without a restart.
        self.__dict__.pop("_message_parts", None)
        own = transport is None
        team: _Helpers | None = None
        used: Transport | None = transport
        try:
            if helpers:
                # the helpers of sending() if they run (the queue is recorded now: they send
                # until it is empty), else those this queue is long enough for
                team = self._early
                if team is not None:
                    team.recorded()
                else:
                    team = _Helpers.start(self, batch, lease)
            used = transport or self.transport_factory(self.settings)
            # A transport that delivers in groups (the Maildir: one disk sync per group)
            # writes each message at once and delivers the group at `flush`, before marking.
            flush = getattr(used, "flush", None)
            report = deliver_queued(
                self.store,
                self.settings,
                prepare=self.preparer(used, deferred=flush is not None),
                clock=self.clock,
                worker=worker,
                batch=batch,
                lease=lease,
                stop=self.stop,
                progress=team.with_helpers(progress) if team is not None else progress,
                parallel=used.parallel,
                overlap=getattr(used, "overlap", False),
                flush=flush,
            )
        except BaseException:
            if team is not None:
                team.stop()  # we are failing or being stopped: so are they
            raise
        finally:
            if own and used is not None:
                used.close()
            if team is not None:
                team.finish(progress, self.stop)
        if team is not None:
            team.add_to(report)
        log.debug("deliver: %s", report.summary())
        return report

    def feeds(self, *, record: bool = True, full: bool = False) -> FeedReport:
        """Rewrite the feeds; first record feed-only subscribers' new matches (`record`)."""
        if record:
            self.queue(feeds_only=True)
        report = write_feeds(self.store, self.settings, full=full)
        log.debug("feeds: %s", report.summary())
        return report

    def dry_run(self, out: IO[str] | None, *, force: bool = False) -> int:
        """Render and print what `deliver` would send now, recording nothing; how many."""
        now = self.clock()
        plans, papers = plan_digests(self.store, self.settings, now=now, force=force)
        send_one = self.sender(DryRunTransport(out))
        emails = [plan for plan in plans if plan.items and plan.kind == DigestKind.EMAIL]
        for plan in emails:
            send_one(digest_from_plan(plan, papers, now))
        return len(emails)

    def preview(self, subscriber: Subscriber) -> tuple[RenderedDigest, Digest] | None:
        """The subscriber's next digest rendered as it would be sent, recording nothing; None
        when no pending paper matches their topics."""
        now = self.clock()
        plans, papers = plan_digests(
            self.store, self.settings, now=now, force=True, only=[subscriber.id]
        )
        if not plans or not plans[0].items:
            return None
        digest = digest_from_plan(plans[0], papers, now)
        renderer, _, signer = self._message_parts
        return renderer.render(digest, links_for(self.settings, signer, subscriber)), digest

    def last_sent(self, subscriber: Subscriber) -> tuple[RenderedDigest, Digest] | None:
        """The subscriber's last sent email digest rendered again, with its own links (its
        page and archive); None when nothing was sent to them yet."""
        last = self.store.archive_page(subscriber.id, limit=1)
        if not last:
            return None
        digest = build_digest(self.store, last[0].id)
        renderer, _, signer = self._message_parts
        links = links_for(self.settings, signer, subscriber, digest.id)
        return renderer.render(digest, links), digest

    def pending(self) -> bool:
        """True while an email digest is queued or in flight: something a sender could take.

        A digest another sender holds counts: if that sender dies its claim lapses, and an
        idle-exit worker must still be there to take it.
        """
        counts = self.store.digest_status_counts()
        return any(counts[status] for status in DigestStatus if status.in_flight)

    def sender(self, transport: Transport) -> SendOne:
        """Render a digest and hand it to `transport` (one recipient per digest)."""
        prepare = self.preparer(transport)

        def send_one(digest: Digest) -> None:
            prepare(digest)()

        return send_one

    def preparer(
        self, transport: Transport, *, deferred: bool = False
    ) -> Callable[[Digest], Callable[[], None]]:
        """Render a digest now (RenderError when it cannot be); what it returns hands the
        message to `transport`, in whatever thread runs it (`deferred`: through its
        `send_deferred`, delivered at its next `flush`)."""
        renderer, builder, signer = self._message_parts

        def prepare(digest: Digest) -> Callable[[], None]:
            try:
                links = links_for(self.settings, signer, digest.subscriber, digest.id)
                rendered = renderer.render(digest, links)
                message = builder.build(rendered, digest, links, sent_at=self.clock())
            except DigestError as exc:
                raise RenderError(f"cannot render: {exc}") from exc
            except Exception as exc:  # a template override or text we did not foresee
                log.exception("digest %d cannot be rendered", digest.id)
                raise RenderError(f"cannot render: {type(exc).__name__}: {exc}") from exc

            deliver = transport.send_deferred if deferred else transport.send  # type: ignore[attr-defined]

            def send() -> None:
                result = deliver(message)
                # One recipient per digest: a refusal inside an accepted session is its outcome.
                for error in result.refused.values():
                    raise error

            return send

        return prepare

    @functools.cached_property
    def _message_parts(self) -> tuple[Renderer, MessageBuilder, LinkSigner]:
        # Templates, CSS and the signing key: loaded once per delivery, not once per message.
        return (
            Renderer(self.settings),
            MessageBuilder(self.settings),
            LinkSigner(secret_key(self.store, self.settings)),
        )


# --- helper processes ----------------------------------------------------------------------------
#
# Rendering is CPU in Python: one process renders on one core. With `mail.processes` > 1 a
# delivery starts helper processes that claim and send batches from the same queue, each a
# sender of its own (own claims, own Message-IDs already fixed in the ledger), so what a crash
# can repeat stays what it is for one sender (docs/guide/delivery.md). They are started only
# when the queue holds enough to pay for their start (about a second each).

HELPER_MIN_QUEUED = 400  # queued digests per helper process worth starting
HELPER_POLL_SECONDS = 0.25  # how often an early helper looks for newly recorded digests


def helper_count(settings: Settings, queued: int) -> int:
    """How many helper processes a delivery of `queued` digests starts beside itself (none
    under a rate limit, which binds every process: more of them would gain nothing)."""
    if settings.smtp.rate_per_second > 0:
        return 0
    wanted = settings.mail.processes or min(os.cpu_count() or 1, 4)
    return max(0, min(wanted - 1, queued // HELPER_MIN_QUEUED))


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread (a daemon's job): its signals are not ours
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _helper_main(
    settings: Settings,
    batch: int,
    lease: timedelta,
    sent: Any,
    slot: int,
    results: Any,
    level: int,
    parent: int,
    recording: Any | None,
) -> None:  # pragma: no cover - runs in a spawned process (tests/test_pipeline.py starts it)
    """A helper process: send queued digests until none is left, then report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides (also from a thread)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=level, format="%(levelname)s digest helper: %(message)s")

    def orphaned() -> None:
        # A parent killed outright (kill -9, os._exit) never asks: its helpers stop too.
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()

    def count(n: int) -> None:
        sent[slot] += n  # this helper's own slot: no lock shared with the others

    try:
        with Store.open(settings.database.url) as store:
            cycle = Cycle(store, settings, stop=stop)
            report = DeliveryReport()
            while True:
                # Started early (Cycle.sending), it sends each page the queue stage records;
                # one last pass after the parent says the queue is recorded empties it.
                last = recording is None or not recording.is_set()
                report.add(cycle.deliver(batch=batch, lease=lease, progress=count,
                                         helpers=False))  # fmt: skip
                if last or stop.is_set() or report.unavailable:
                    break
                stop.wait(HELPER_POLL_SECONDS)
        _tell(results, ("done", report))
    except Exception as exc:  # its own store or transport failing: the parent says so
        _tell(results, ("failed", f"{type(exc).__name__}: {exc}"))
    finally:
        results.close()


def _tell(results: Any, message: tuple[str, Any]) -> None:
    """Send a helper's outcome to its parent; a parent already gone (killed, or ended by
    its own error) has nobody to tell, and a helper must not print a traceback for that."""
    with contextlib.suppress(OSError):  # BrokenPipeError, ConnectionResetError
        results.send(message)


@dataclass
class _Helpers:
    """The helper processes of one delivery, and what they did."""

    procs: list[Any]
    pipes: list[Any]
    sent: Any  # messages each helper sent (one slot each), for the progress bar
    recording: Any | None = None  # set while the queue stage records (early helpers)
    reports: list[tuple[Any, ...]] = field(default_factory=list)
    shown: int = 0
    stopped: bool = False
    finished: bool = False

    @classmethod
    def start(
        cls, cycle: Cycle, batch: int, lease: timedelta, *, expect: int = 0, early: bool = False
    ) -> _Helpers | None:
        """Start the helpers this delivery should have (none for a test's own transport or
        clock, which a new process cannot share). `early`: before the queue stage, for the
        `expect` digests it may record; the helpers then wait for recorded()."""
        if not cycle._may_have_helpers():
            return None
        if cycle.settings.mail.processes == 1:
            return None  # spares the count query
        if not early:
            expect = cycle.store.digest_status_counts()[DigestStatus.QUEUED]
        count = helper_count(cycle.settings, expect)
        if not count:
            return None
        context = multiprocessing.get_context("spawn")  # no inherited connections or threads
        sent = context.Array("q", count, lock=False)
        recording = context.Event() if early else None
        if recording is not None:
            recording.set()
        procs: list[Any] = []
        pipes: list[Any] = []
        level = logging.getLogger().getEffectiveLevel()
        # Started with SIGINT ignored (kept across exec): a Ctrl-C reaches the whole process
        # group, and only the parent decides; it asks the helpers to stop (SIGTERM).
        team = cls(procs, pipes, sent, recording)
        try:
            with _sigint_ignored():
                for slot in range(count):
                    mine, theirs = context.Pipe(duplex=False)
                    proc = context.Process(
                        target=_helper_main,
                        args=(cycle.settings, batch, lease, sent, slot, theirs, level,
                              os.getpid(), recording),
                        name="digest-helper", daemon=True,
                    )  # fmt: skip
                    proc.start()
                    theirs.close()
                    procs.append(proc)
                    pipes.append(mine)
        except BaseException:
            team.stop()
            team.finish(None, None)
            raise
        log.info("deliver: %d helper process(es) started%s", count,
                 " (sending as the queue is recorded)" if early else "")  # fmt: skip
        return team

    def recorded(self) -> None:
        """The queue stage is over: each helper empties the queue and ends."""
        if self.recording is not None:
            self.recording.clear()

    def stop(self) -> None:
        """Ask every helper to stop (SIGTERM): the message in flight finishes, the rest of
        its batch goes back to the queue."""
        if not self.stopped:
            self.stopped = True
            for proc in self.procs:
                if proc.is_alive():
                    proc.terminate()

    def finish(
        self, progress: Callable[[int], object] | None, stop: threading.Event | None
    ) -> None:
        """Wait for every helper, showing their sends on the progress bar as they go; when
        `stop` is set (now or while waiting), ask them to stop first."""
        waiting = dict(zip(self.pipes, self.procs, strict=True))
        while waiting:
            if stop is not None and stop.is_set():
                self.stop()
            # A pipe is ready when its helper reported or ended: read as they come, so a long
            # report never blocks a helper's exit.
            ready: list[Any] = multiprocessing.connection.wait(list(waiting), timeout=0.2)
            for pipe in ready:
                proc = waiting.pop(pipe)
                try:
                    got = pipe.recv()
                except EOFError:
                    proc.join()
                    got = ("failed", f"it ended with status {proc.exitcode} before reporting")
                    if self.stopped and proc.exitcode == -signal.SIGTERM:
                        got = ("stopped",)  # asked to stop before it could start: no fault
                self.reports.append(got)
            self._show(progress)
        for proc in self.procs:
            proc.join()
        for pipe in self.pipes:
            pipe.close()
        self.finished = True

    def with_helpers(
        self, progress: Callable[[int], object] | None
    ) -> Callable[[int], object] | None:
        """The parent's progress callback, also showing the helpers' sends as they go."""
        if progress is None:
            return None

        def both(n: int) -> None:
            progress(n)
            self._show(progress)

        return both

    def _show(self, progress: Callable[[int], object] | None) -> None:
        total = sum(self.sent)
        if progress is not None and total > self.shown:
            progress(total - self.shown)
        self.shown = total

    def add_to(self, report: DeliveryReport) -> None:
        """Fold the helpers' outcomes into this process's report."""
        for got in self.reports:
            if got[0] == "stopped":
                continue
            if got[0] == "done":
                report.add(got[1])
            else:
                # Its claims are its own: a dead helper's go back at the next delivery (see
                # release_dead_claims), sent then under their own Message-IDs.
                report.helpers_failed += 1
                report.errors.append(f"a helper process failed: {got[1]}")
        helped = sum(got[1].sent for got in self.reports if got[0] == "done")
        log.info("deliver: the helper processes sent %d", helped)
