"""Pieces the benchmarks share: a free loopback port, a minimal SMTP sink protocol, and the
benchmark subscribers."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable
from datetime import datetime
from typing import Any

_MESSAGE_ID = re.compile(rb"\r\nMessage-ID: *(<[^>\r\n]*>)", re.I)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sink_protocol(counter: Any, seen: set[bytes] | None = None) -> type[asyncio.Protocol]:
    """A minimal SMTP server protocol: 250 to everything, DATA read in bulk, `counter` (a
    multiprocessing Value) counts messages; with `seen`, each message's Message-ID lands there."""

    class Sink(asyncio.Protocol):
        def connection_made(self, transport):
            self.t, self.buf, self.in_data, self.scan = transport, b"", False, 0
            transport.write(b"220 sink ESMTP\r\n")

        def data_received(self, chunk):
            self.buf += chunk
            while True:
                if self.in_data:
                    end = self.buf.find(b"\r\n.\r\n", self.scan)
                    if end < 0:
                        self.scan = max(0, len(self.buf) - 4)
                        return
                    if seen is not None:
                        found = _MESSAGE_ID.search(self.buf, 0, min(end, 4096))
                        seen.add(found.group(1) if found else b"?")
                    self.buf, self.in_data, self.scan = self.buf[end + 5 :], False, 0
                    with counter.get_lock():
                        counter.value += 1
                    self.t.write(b"250 OK\r\n")
                    continue
                eol = self.buf.find(b"\r\n")
                if eol < 0:
                    return
                verb, self.buf = self.buf[:4].upper(), self.buf[eol + 2 :]
                if verb == b"EHLO":
                    self.t.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                elif verb == b"DATA":
                    self.in_data = True
                    self.t.write(b"354 go ahead\r\n")
                elif verb == b"QUIT":
                    self.t.write(b"221 bye\r\n")
                    self.t.close()
                    return
                else:
                    self.t.write(b"250 OK\r\n")

    return Sink


def bench_subscribers(queries: Iterable[str], since: datetime) -> list[Any]:
    """Active daily subscribers (08:00 UTC), one topic each, reader000000@example.org on."""
    from digest.models import Subscriber, Topic

    return [
        Subscriber(
            id=0,
            email=f"reader{i:06d}@example.org",
            name=f"Reader {i}",
            status="active",
            cadence="daily",
            time="08:00",
            tz="UTC",
            weekday=0,
            created_at=since,
            token=f"bench-token-{i:06d}",
            topics=(Topic("Interests", q),),
            since=since,
        )
        for i, q in enumerate(queries)
    ]
