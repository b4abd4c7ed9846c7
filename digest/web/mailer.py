"""Confirmation emails of the public sign-up, sent by a background thread of the web app.

A sign-up request only validates, rate-limits and enqueues a job here, so it answers alike, in
the same time, whether the address is known or new (no database work, no SMTP in the request).
The thread does the rest (subscribers.prepare_confirmation: create the pending subscriber, or
decide an unsubscribed or pending one is due a mail, at most one per
web.confirm_interval_minutes) and sends the mail with the app's transport.

Why a thread in `digest serve` rather than a queue the daemon drains: sign-up works with the web
app alone (no `digest run` needed) and the email arrives in seconds, not at the next daemon
cycle. What must survive a restart is in the database (pending rows and when the last
confirmation was sent); a crash loses only jobs still queued, and the person signs up again.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from flask import Flask, render_template

from digest import subscribers as subs
from digest.errors import DigestError
from digest.links import CONFIRM_MAX_AGE, confirm_path
from digest.models import Subscriber, Topic

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000  # jobs waiting at most; beyond, sign-ups are refused with 503


@dataclass(frozen=True, slots=True)
class ConfirmationJob:
    """A sign-up or re-subscribe request, validated, waiting for the sender thread."""

    email: str
    name: str = ""
    topics: tuple[Topic, ...] = ()
    # The schedule chosen at sign-up (None: the defaults); applies to a new address only.
    schedule: dict[str, str] | None = None


class ConfirmationMailer:
    """A queue and the one daemon thread that works it (started on the first job)."""

    def __init__(self, app: Flask, maxsize: int = QUEUE_SIZE) -> None:
        self.app = app
        self.jobs: queue.Queue[ConfirmationJob] = queue.Queue(maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: ConfirmationJob) -> bool:
        """Queue a job; False if the queue is full (the caller answers 503)."""
        self._start()
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def wait(self) -> None:
        """Block until every queued job is done (tests, shutdown)."""
        self.jobs.join()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="digest-confirmations", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                with self.app.app_context():
                    self.handle(job)
            except Exception:  # one bad job never stops the sender
                log.exception("confirmation email to %s failed", job.email)
            finally:
                self.jobs.task_done()

    def handle(self, job: ConfirmationJob) -> None:
        """Do one job now (inside an app context). Real time, not the app clock: the status
        history it is compared with (subscribers.can_confirm) is kept in real time."""
        st = self.app.extensions["digest"]
        sub = subs.prepare_confirmation(
            st.store,
            st.settings,
            job.email,
            name=job.name,
            topics=job.topics,
            schedule=job.schedule,
        )
        if sub is None:
            return
        try:
            _send(st, sub)
        except DigestError as exc:
            # No mail went out: the next sign-up of this address may try again at once.
            log.warning("confirmation email to %s failed: %s", sub.email, exc)
            subs.confirmation_failed(st.store, sub)


def _send(st: Any, sub: Subscriber) -> None:
    settings = st.settings
    link = settings.site.base_url.rstrip("/") + confirm_path(
        st.signer.make_token("confirm", sub.token)
    )
    msg = EmailMessage()
    msg["From"] = settings.mail.from_addr
    msg["To"] = sub.email
    msg["Subject"] = f"Confirm your subscription to {settings.site.title}"
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=settings.site.list_id or None)
    msg.set_content(
        render_template(
            "web/confirm_email.txt",
            link=link,
            title=settings.site.title,
            days=CONFIRM_MAX_AGE // 86400,
        )
    )
    transport = st.transport_factory(settings)
    try:
        transport.send(msg)
    finally:
        close = getattr(transport, "close", None)
        if close is not None:
            close()
