"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, port chosen at run time.

Use the `smtp_server` fixture (import it into the test module). Its handler records every
message and can be told to answer 4xx/5xx for chosen recipients, to answer DATA with a given
reply, or to drop the connection during DATA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from support import free_port

from digest.config import SmtpSettings


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    session: int  # which connection carried it


@dataclass
class RecordingHandler:
    """aiosmtpd handler: records messages; refuses or drops on request."""

    messages: list[Received] = field(default_factory=list)
    temp_fail: set[str] = field(default_factory=set)  # RCPT answered 450
    perm_fail: set[str] = field(default_factory=set)  # RCPT answered 550
    data_reply: str | None = None  # e.g. "451 4.3.0 try later" instead of 250
    drop_during_data: int = 0  # drop the connection on the next N DATA commands
    record: bool = True
    count: int = 0
    sessions: dict[int, Any] = field(default_factory=dict)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.temp_fail:
            return "450 4.2.1 mailbox busy, try later"
        if address in self.perm_fail:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.sessions[id(session)] = server
        if self.drop_during_data:
            self.drop_during_data -= 1
            server.transport.close()
            return "250 never seen"
        if self.data_reply:
            return self.data_reply
        self.count += 1
        if self.record:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, id(session))
            )
        return "250 Message accepted"


@dataclass
class SmtpServer:
    """A running test server."""

    host: str
    port: int
    handler: RecordingHandler
    controller: Controller

    def settings(self, **overrides: Any) -> SmtpSettings:
        """SmtpSettings pointing at this server."""
        values = {"host": self.host, "port": self.port, "timeout_seconds": 5.0}
        values.update(overrides)
        return SmtpSettings(**values)

    def disconnect_all(self) -> None:
        """Close every client connection from the server side (an idle timeout, a restart)."""
        loop = self.controller.loop

        async def close() -> None:
            for server in list(self.handler.sessions.values()):
                if server.transport is not None:
                    server.transport.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)


class _PipeliningSMTP(SMTP):
    """aiosmtpd, which reads pipelined commands one by one, offering PIPELINING in its EHLO."""

    async def push(self, status: Any) -> None:
        if status == "250-8BITMIME":
            await super().push("250-PIPELINING")
        await super().push(status)


class _PipeliningController(Controller):
    def factory(self) -> SMTP:
        return _PipeliningSMTP(self.handler, **self.SMTP_kwargs)


def start_server(
    handler: RecordingHandler | None = None, *, pipelining: bool = False, **kwargs: Any
) -> SmtpServer:
    """Start an aiosmtpd server on a free loopback port (stop it with .controller.stop());
    `pipelining`: it offers PIPELINING, so clients send MAIL, RCPT and DATA in one group."""
    handler = handler or RecordingHandler()
    port = free_port()
    kind = _PipeliningController if pipelining else Controller
    controller = kind(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return SmtpServer("127.0.0.1", port, handler, controller)


@pytest.fixture(params=["one-by-one", "pipelining"])
def smtp_server(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """A recording aiosmtpd server on 127.0.0.1 for the test's duration, once without and
    once with PIPELINING (every SMTP outcome must be the same both ways)."""
    server = start_server(pipelining=request.param == "pipelining")
    try:
        yield server
    finally:
        server.controller.stop()
