"""One cycle of the digest: ingest -> select & match -> record -> render & deliver -> feeds.

Each step is a function the scheduler and the CLI call on their own; `run_cycle` runs them in order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from digest.config import Settings
from digest.ingest import IngestReport, ingest_inbox
from digest.links import LinkSigner, links_for, secret_key
from digest.mail import MessageBuilder, Transport, make_transport
from digest.models import Digest
from digest.outbox import (
    Clock,
    DeliveryReport,
    QueueReport,
    deliver_queued,
    queue_digests,
    utcnow,
)
from digest.publish import FeedReport, write_feeds
from digest.render import Renderer
from digest.store import Store

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    """What one full cycle did, stage by stage."""

    ingest: IngestReport | None = None
    queue: QueueReport | None = None
    delivery: DeliveryReport | None = None
    feeds: FeedReport | None = None
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            ("ingest", self.ingest),
            ("queue", self.queue),
            ("deliver", self.delivery),
            ("feeds", self.feeds),
        ]
        return "\n".join(f"{name}: {report.summary()}" for name, report in parts if report)


def make_sender(store: Store, settings: Settings, transport: Transport) -> Callable[[Digest], None]:
    """Render a digest and hand it to the transport (templates and CSS prepared once)."""
    renderer = Renderer(settings)
    builder = MessageBuilder(settings)
    signer = LinkSigner(secret_key(store, settings))

    def send_one(digest: Digest) -> None:
        links = links_for(settings, signer, digest.subscriber)
        result = transport.send(builder.build(renderer.render(digest, links), digest, links))
        # One recipient per digest: a refusal inside an accepted session is that one's outcome.
        for error in result.refused.values():
            raise error

    return send_one


def deliver_step(
    store: Store,
    settings: Settings,
    transport: Transport,
    *,
    clock: Clock = utcnow,
    stop: threading.Event | None = None,
    progress: Callable[[int], object] | None = None,
) -> DeliveryReport:
    """Send every queued email digest whose time has come."""
    send_one = make_sender(store, settings, transport)
    return deliver_queued(store, settings, send_one, clock=clock, stop=stop, progress=progress)


def run_cycle(
    store: Store,
    settings: Settings,
    *,
    transport: Transport | None = None,
    clock: Clock = utcnow,
    force: bool = False,
    stop: threading.Event | None = None,
    quiet: bool = False,
) -> CycleReport:
    """Ingest the inbox, queue what is due, deliver it, and refresh the feeds."""
    report = CycleReport()
    report.ingest = ingest_inbox(store, settings, quiet=quiet)
    log.info("ingest: %s", report.ingest.summary())
    report.queue = queue_digests(store, settings, now=clock(), force=force)
    log.info("queue: %s", report.queue.summary())
    own_transport = transport is None
    transport = transport or make_transport(settings)
    try:
        report.delivery = deliver_step(store, settings, transport, clock=clock, stop=stop)
    finally:
        if own_transport:
            transport.close()
    log.info("deliver: %s", report.delivery.summary())
    report.feeds = write_feeds(store, settings)
    log.info("feeds: %s", report.feeds.summary())
    return report
