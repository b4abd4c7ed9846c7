"""`digest worker`: a send-queue worker; run any number of them against one PostgreSQL database.

Each worker loops claim -> render -> send -> mark: it claims a batch of queued email digests with a
lease (on PostgreSQL `SELECT ... FOR UPDATE SKIP LOCKED`, so workers never wait on each other's
rows), renders and sends each one, and marks the outcome in the ledger. A worker killed mid-batch
leaves its claims to lapse with the lease; another worker then takes them. Only the message that
was in flight may be sent twice, under its own Message-ID. The worker never queues digests: the
scheduler (`digest run`, one per database) does that. On SQLite the command works too, as a
single worker (write transactions serialise claimers).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

from digest.config import Settings
from digest.mail import make_transport
from digest.outbox import Clock, DeliveryReport, utcnow, worker_name
from digest.pipeline import Cycle, TransportFactory
from digest.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker claims and when it stops."""

    batch: int = 50  # digests claimed per transaction
    lease: float = 600.0  # seconds a claim holds before another worker may take it
    poll: float = 5.0  # seconds to wait when the queue is empty
    idle_exit: bool = False  # exit once nothing is queued or in flight (tests, cron)


@dataclass
class WorkerReport:
    """What one worker did over its life."""

    name: str
    passes: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    helpers_failed: int = 0  # helper processes that could not finish a pass
    bounced: int = 0
    seconds: float = 0.0
    outages: int = 0  # passes stopped because the SMTP server could not be reached
    gave_up: str = ""  # an idle-exit worker ended by an outage: why

    def add(self, delivery: DeliveryReport) -> None:
        """Fold one delivery pass into the totals."""
        self.passes += 1
        self.sent += delivery.sent
        self.retried += delivery.retried
        self.failed += delivery.failed
        self.bounced += delivery.bounced
        self.helpers_failed += delivery.helpers_failed

    def summary(self) -> str:
        rate = self.sent / self.seconds if self.seconds > 0 else 0.0
        down = f", {self.outages} pass(es) stopped: SMTP server unreachable" if self.outages else ""
        return (
            f"worker {self.name}: {self.sent} sent, {self.retried} to retry, {self.failed} "
            f"failed, {self.bounced} bounced{down} in {self.seconds:.1f} s "
            f"({rate:.0f} messages/s)"
        )


# The longest wait between two attempts to reach an SMTP server that is down.
OUTAGE_MAX_WAIT = 60.0


def run_worker(
    store: Store,
    settings: Settings,
    *,
    options: WorkerOptions = WorkerOptions(),
    stop: threading.Event | None = None,
    clock: Clock = utcnow,
    transport_factory: TransportFactory = make_transport,
    name: str | None = None,
) -> WorkerReport:
    """Claim, render, send and mark queued digests until `stop` is set (or idle, with idle_exit).

    Setting `stop` (SIGTERM/SIGINT in the CLI) lets the message in flight finish and gives the
    rest of the claimed batch back to the queue at once.
    """
    cycle = Cycle(store, settings, clock, transport_factory, stop or threading.Event())
    report = WorkerReport(name=name or worker_name())
    started = time.monotonic()
    transport = transport_factory(settings)
    pause = options.poll
    try:
        while not cycle.stop.is_set():
            delivery = cycle.deliver(
                transport,
                worker=report.name,
                batch=options.batch,
                lease=timedelta(seconds=options.lease),
            )
            report.add(delivery)
            for error in delivery.errors:
                log.warning("%s", error)
            if delivery.unavailable:
                # The server is down: what was not sent went back untouched. A long-running
                # worker waits it out (backing off to OUTAGE_MAX_WAIT); an idle-exit one is a
                # batch job, and ends with the reason.
                report.outages += 1
                if options.idle_exit:
                    report.gave_up = delivery.unavailable
                    break
                log.warning("%s; trying again in %.3g s", delivery.unavailable, pause)
                cycle.stop.wait(pause)
                pause = min(pause * 2, max(options.poll, OUTAGE_MAX_WAIT))
                continue
            pause = options.poll
            if delivery.sent or delivery.retried or delivery.failed or delivery.bounced:
                log.info("pass: %s", delivery.summary())
                continue  # the queue may have grown meanwhile: claim again before waiting
            if options.idle_exit and not cycle.pending():
                break
            # Nothing claimable now: retries not yet due, or claims of other workers whose
            # lease has not lapsed. Wait, but wake at once on a stop.
            cycle.stop.wait(options.poll)
    finally:
        # A TransportError (our own login, TLS or sender is wrong) ends the worker through
        # here; deliver_queued has given the rest of its batch back to the queue already.
        transport.close()
        report.seconds = time.monotonic() - started
    return report
