"""Email messages and transports: build a digest's MIME message, hand it to Maildir, SMTP or
a dry run. Pure of the database: the send ledger calls these and records the outcomes.

Messages are assembled directly as bytes (CRLF, quoted-printable parts) instead of through
`email.message.EmailMessage`, which costs more than rendering the digest. Every header value goes
through `_header_text`/`_address`, which remove control characters (CR, LF, NUL, U+2028...) and
encode anything non-ASCII or looking like an encoded word, so no value can start a new header.

Outcomes the ledger needs:

* `send()` returns a `SendResult` when the server took the message for at least one recipient,
  or refused every recipient at RCPT; refused recipients are in `result.refused`, each a
  `TemporaryDeliveryError` (4xx) or `PermanentDeliveryError` (5xx) with code and address.
* `send()` raises `TemporaryDeliveryError` for 4xx answers to MAIL/DATA, a dropped connection or
  a timeout (`maybe_delivered` is set when the drop came after the message data was sent),
  `PermanentDeliveryError` for a 5xx answer to DATA, and `TransportError` when our own side is
  wrong (login refused, TLS failure, sender refused, a 5xx greeting): stop sending, nobody
  bounced.
* `ServerUnavailable` (a `TemporaryDeliveryError`) when the server cannot be reached or is not
  accepting mail before any message (refused, unreachable, dropped, a 4xx greeting): nothing was
  sent and no digest is to blame, so a delivery pass stops and gives its digests back untouched.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import itertools
import logging
import mailbox
import os
import re
import smtplib
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, parseaddr
from pathlib import Path
from typing import IO, Protocol

from digest.config import Settings, SmtpSettings
from digest.errors import DeliveryError, ValidationError
from digest.links import Links
from digest.models import Digest
from digest.render import RenderedDigest
from digest.text import clean_text, one_line

log = logging.getLogger(__name__)

CRLF = "\r\n"


class _SendError(DeliveryError):
    """A failed send: the server's reply code and the address it concerns, when known."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        address: str | None = None,
        maybe_delivered: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.address = address
        self.maybe_delivered = maybe_delivered


class TemporaryDeliveryError(_SendError):
    """Try again later: a 4xx answer, a dropped connection, a timeout."""


class ServerUnavailable(TemporaryDeliveryError):
    """The SMTP server cannot be reached at all (refused, unreachable, dropped before its
    greeting): nothing was sent, and it is no digest's fault, so a delivery pass stops and
    gives its digests back untouched instead of spending their retries (see outbox)."""


class PermanentDeliveryError(_SendError):
    """The server refused for good (5xx): a bounce; do not retry."""


class TransportError(_SendError):
    """Our side is misconfigured (login, TLS, sender, missing password): stop, nobody bounced."""


# --- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A complete message ready for the wire: envelope plus RFC 5322 bytes with CRLF endings."""

    message_id: str
    envelope_from: str
    recipients: tuple[str, ...]
    data: bytes
    subject: str = ""
    smtputf8: bool = False
    eight_bit: bool = False  # a part is 8bit: needs a server with 8BITMIME (else re-encoded)

    def as_email(self) -> EmailMessage:
        """Parse the bytes back into an EmailMessage (for tests and previews)."""
        return BytesParser(policy=policy.default).parsebytes(self.data)

    @classmethod
    def from_email(cls, msg: EmailMessage, envelope_from: str | None = None) -> OutgoingMessage:
        """Wrap an EmailMessage built elsewhere; envelope from its From/To/Cc headers."""
        sender = envelope_from or parseaddr(str(msg.get("From", "")))[1]
        rcpts = tuple(
            a
            for _, a in getaddresses(
                [str(v) for v in msg.get_all("To", []) + msg.get_all("Cc", [])]
            )
            if a
        )
        if not rcpts:
            raise ValidationError("message has no To or Cc address")
        data = msg.as_bytes(policy=policy.SMTP)
        return cls(str(msg.get("Message-ID", "")), sender, rcpts, data, str(msg.get("Subject", "")))


def make_message_id(digest_id: int, settings: Settings) -> str:
    """The Message-ID of a digest, derived from its id: a repeat send is recognisable."""
    salt = f"{settings.site.list_id}\0{settings.site.base_url}\0{digest_id}".encode()
    digest_hash = hashlib.sha256(salt).hexdigest()[:16]
    domain = _id_domain(settings.mail.from_addr, settings.site.list_id)
    return f"<digest-{int(digest_id)}-{digest_hash}@{domain}>"


@functools.lru_cache(maxsize=16)
def _id_domain(from_addr: str, list_id: str) -> str:
    # parsed once, not once per digest recorded (profiled: most of make_message_id)
    return _safe_token(_domain_of(from_addr) or _one_line(list_id) or "localhost")


class MessageBuilder:
    """Builds digest messages; the settings-only headers are encoded once, at construction."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        from_name, from_addr = _split_address(settings.mail.from_addr, "mail.from_addr")
        self.from_addr, self.from_utf8 = _checked_address(from_addr, "mail.from_addr")
        self.from_header = _fold("From", _address(from_name, self.from_addr))
        self.reply_to_header = ""
        if settings.mail.reply_to.strip():
            rt_name, rt_addr = _split_address(settings.mail.reply_to, "mail.reply_to")
            rt_addr, _ = _checked_address(rt_addr, "mail.reply_to")
            self.reply_to_header = _fold("Reply-To", _address(rt_name, rt_addr))
        list_id = _safe_token(_one_line(settings.site.list_id)) or "digest.localhost"
        self.list_id_header = _fold("List-Id", f"{_phrase(settings.site.title)} <{list_id}>")

    def build(
        self,
        rendered: RenderedDigest,
        digest: Digest,
        links: Links,
        *,
        sent_at: datetime | None = None,
    ) -> OutgoingMessage:
        """The digest as a multipart/alternative message (text, then HTML) with list headers;
        `Date:` is `sent_at` (the moment it is handed to the transport), else when it was made."""
        to_addr, to_utf8 = _checked_address(digest.subscriber.email, "subscriber email")
        created = (sent_at or digest.created_at).replace(microsecond=0)
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        message_id = _message_id_value(digest.message_id)
        boundary = f"=_digest_{hashlib.sha1(message_id.encode()).hexdigest()[:20]}"
        unsubscribe = f"<{_url(links.unsubscribe_url)}>, <{_url(links.unsubscribe_mailto)}>"
        headers = [self.from_header, _fold("To", _address(digest.subscriber.name, to_addr))]
        if self.reply_to_header:
            headers.append(self.reply_to_header)
        headers += [
            _fold("Subject", _header_text(rendered.subject)),
            "Date: " + _date_header(created.astimezone(UTC)),
            "Message-ID: " + message_id,
            self.list_id_header,
            _fold("List-Unsubscribe", unsubscribe),
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ]
        if links.page_url:  # RFC 5064 and RFC 2369: where this digest and its archive live
            headers.append(_fold("Archived-At", f"<{_url(links.page_url)}>"))
        if links.archive_url:
            headers.append(_fold("List-Archive", f"<{_url(links.archive_url)}>"))
        headers += [
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            "",
        ]
        text_cte, text_body = _encode_text(rendered.text)
        html_cte, html_body = _encode_html(rendered.html)
        data = b"".join(
            (
                "\r\n".join(headers).encode("ascii" if not to_utf8 else "utf-8"),
                f'--{boundary}\r\nContent-Type: text/plain; charset="utf-8"\r\n'
                f"Content-Transfer-Encoding: {text_cte}\r\n\r\n".encode("ascii"),
                text_body,
                f'\r\n--{boundary}\r\nContent-Type: text/html; charset="utf-8"\r\n'
                f"Content-Transfer-Encoding: {html_cte}\r\n\r\n".encode("ascii"),
                html_body,
                f"\r\n--{boundary}--\r\n".encode("ascii"),
            )
        )
        return OutgoingMessage(
            message_id=message_id,
            envelope_from=self.from_addr,
            recipients=(to_addr,),
            data=data,
            subject=rendered.subject,
            smtputf8=to_utf8 or self.from_utf8,
            eight_bit="8bit" in (text_cte, html_cte),
        )


@functools.lru_cache(maxsize=256)
def _date_header(created: datetime) -> str:
    # messages sent within one second share it (UTC, so equal instants print alike)
    return format_datetime(created)


def build_message(
    rendered: RenderedDigest, digest: Digest, links: Links, settings: Settings
) -> OutgoingMessage:
    """The digest as a complete message; for many messages keep one MessageBuilder instead."""
    return MessageBuilder(settings).build(rendered, digest, links)


def _encode_text(text: str) -> tuple[str, bytes]:
    """Plain text: 7bit or 8bit (RFC 6152) when lines are short, else quoted-printable.

    8bit, not quoted-printable, for non-ASCII text: binascii's QP encoder costs more than the
    whole rendering, and every current MTA takes 8BITMIME; SmtpTransport re-encodes for one
    that does not.
    """
    raw, fits, ascii_only = _crlf(text)
    if fits:
        return ("7bit" if ascii_only else "8bit"), raw
    return "quoted-printable", binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False)


def _encode_html(html: str) -> tuple[str, bytes]:
    """HTML: 7bit/8bit when lines stay short (the renderer keeps it ASCII), else base64."""
    raw, fits, ascii_only = _crlf(html)
    if fits:
        return ("7bit" if ascii_only else "8bit"), raw
    b64 = binascii.b2a_base64(raw, newline=False)
    return "base64", b"\r\n".join([b64[i : i + 76] for i in range(0, len(b64), 76)])


def _crlf(text: str) -> tuple[bytes, bool, bool]:
    """Text as UTF-8 with CRLF line ends, whether every line fits SMTP's limit, and whether it
    is ASCII."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    raw = text.encode("utf-8")
    return raw.replace(b"\n", b"\r\n"), lines_fit(raw), len(raw) == len(text)


SMTP_LINE_LIMIT = 998  # bytes per line without its CRLF (RFC 5321, 4.5.3.1.6)


def lines_fit(raw: bytes, limit: int = SMTP_LINE_LIMIT) -> bool:
    """Whether no LF-separated line of `raw` is longer than `limit` bytes.

    One rfind per window of limit + 1 bytes rather than an object per line: a digest's
    200 short lines cost a few window steps instead of a split (the costliest step of a
    message before).
    """
    start, end = 0, len(raw)
    while end - start > limit:
        newline = raw.rfind(b"\n", start, start + limit + 1)
        if newline < 0:
            return False  # limit + 1 bytes without a line end
        start = newline + 1
    return True


def to_seven_bit(data: bytes) -> bytes:
    """Re-encode every 8bit part as quoted-printable, for a server without 8BITMIME."""
    msg = BytesParser(policy=policy.SMTP).parsebytes(data)
    for part in msg.walk():
        if str(part.get("Content-Transfer-Encoding", "")).lower() != "8bit":
            continue
        content = part.get_content()
        subtype = part.get_content_subtype()
        del part["Content-Transfer-Encoding"]
        part.set_content(content, subtype=subtype, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes(policy=policy.SMTP)


def _message_id_value(value: str) -> str:
    inner = _safe_token(_one_line(value).strip("<>"))
    if "@" not in inner:
        raise ValidationError(f"Message-ID {value!r}: must look like <id@domain>")
    return f"<{inner}>"


def _safe_token(text: str) -> str:
    """Keep only characters that are safe inside <...> header tokens."""
    if _SAFE_TOKEN.fullmatch(text):
        return text
    return "".join(c for c in text if 32 < ord(c) < 127 and c not in '<>()[]\\,;:"')


_SAFE_TOKEN = re.compile(r'[^\x00-\x20\x7f-\U0010ffff<>()\[\]\\,;:"]*')


def _url(url: str) -> str:
    cleaned = _one_line(url)
    if "<" in cleaned or ">" in cleaned or " " in cleaned or not cleaned.isascii():
        raise ValidationError(
            f"URL for List-Unsubscribe {url!r}: must be ASCII without <, >, space"
        )
    return cleaned


def _domain_of(address: str) -> str:
    return parseaddr(_one_line(address))[1].rpartition("@")[2]


def _split_address(value: str, key: str) -> tuple[str, str]:
    name, addr = parseaddr(_one_line(value))
    if not addr:
        raise ValidationError(f"{key}: not an email address: {value!r}")
    return name, addr


def _checked_address(addr: str, key: str) -> tuple[str, bool]:
    """The address if it is one plain addr-spec; idna-encodes a non-ASCII domain.

    Returns (address, needs SMTPUTF8). Anything that could break out of the header (space,
    control characters, <, >, comma) is refused rather than repaired.
    """
    addr = addr.strip()
    local, _, domain = addr.rpartition("@")
    if _BAD_ADDRESS_CHAR.search(addr) or not addr.isprintable() or not local or not domain:
        raise ValidationError(f"{key}: {addr!r} is not a valid email address")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValidationError(f"{key}: {addr!r} has an invalid domain") from None
    return f"{local}@{domain}", not local.isascii()


_BAD_ADDRESS_CHAR = re.compile(r'[\s<>,;"()\\]')


def _address(name: str, addr: str) -> str:
    name = _one_line(name)
    if not name:
        return addr
    return f"{_phrase(name)} <{addr}>"


_SPECIAL_CHAR = re.compile(r'[()<>\[\]:;@\\,."]')


def _phrase(text: str) -> str:
    """A display name: plain, quoted, or RFC 2047 encoded, never able to break the header."""
    text = _one_line(text)
    if not text.isascii() or "=?" in text:
        return _encoded_words(text)
    if _SPECIAL_CHAR.search(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def _one_line(text: str) -> str:
    """Header-safe text: one line (controls and line separators as spaces, by the text policy),
    runs of white space as one space. Values from settings are checked here, where they become
    header bytes."""
    return one_line(clean_text(text))


def _header_text(text: str) -> str:
    """Unstructured header text (a subject): one line, encoded when not plain ASCII."""
    text = _one_line(text)
    if not text.isascii() or "=?" in text:
        return _encoded_words(text)
    return text


def _encoded_words(text: str) -> str:
    """RFC 2047 base64 encoded words of at most 39 UTF-8 bytes (64 characters) each."""
    words = []
    chunk: list[str] = []
    size = 0
    for c in text:
        n = len(c.encode("utf-8"))
        if size + n > 39:
            words.append(chunk)
            chunk, size = [], 0
        chunk.append(c)
        size += n
    if chunk:
        words.append(chunk)
    return " ".join(
        "=?utf-8?b?" + base64.b64encode("".join(w).encode("utf-8")).decode("ascii") + "?="
        for w in words
    )


def _fold(name: str, value: str) -> str:
    """`Name: value`, folded at spaces to keep lines near 78 characters."""
    line = f"{name}: {value}"
    if len(line) <= 78:
        return line
    out: list[str] = []
    current = f"{name}:"
    for word in value.split(" "):
        if not word:
            continue
        if len(current) + 1 + len(word) > 78 and current != f"{name}:":
            out.append(current)
            current = ""
        current += " " + word
    out.append(current)
    return CRLF.join(out)


# --- transports ------------------------------------------------------------------------------


@dataclass(slots=True)
class SendResult:
    """What the server did with one message: who took it, who refused it and why."""

    message_id: str
    accepted: tuple[str, ...]
    refused: dict[str, DeliveryError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every recipient accepted the message."""
        return not self.refused


@dataclass(slots=True)
class Delivery:
    """One message of `send_many` with its result, or the error that stopped it."""

    message: OutgoingMessage
    result: SendResult | None = None
    error: DeliveryError | None = None


class Transport(Protocol):
    """Something that delivers messages; tests and the ledger pass one in."""

    parallel: int  # how many `send` calls may run at once from different threads

    def send(self, msg: OutgoingMessage | EmailMessage) -> SendResult:
        """Deliver one message; raise a DeliveryError subclass for whole-message failures."""
        ...

    def send_many(self, messages: Iterable[OutgoingMessage]) -> Iterator[Delivery]:
        """Deliver many messages, yielding one Delivery each, in order."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


def _outgoing(msg: OutgoingMessage | EmailMessage) -> OutgoingMessage:
    return msg if isinstance(msg, OutgoingMessage) else OutgoingMessage.from_email(msg)


class _BaseTransport:
    parallel = 1
    # Sends wait on I/O (a disk, a server): worth running in a thread while the next digest
    # renders. Transports that only keep messages in memory do it inline.
    overlap = False

    def send(self, msg: OutgoingMessage | EmailMessage) -> SendResult:  # pragma: no cover
        raise NotImplementedError

    def send_many(self, messages: Iterable[OutgoingMessage]) -> Iterator[Delivery]:
        """Deliver messages one after another, yielding each outcome."""
        for msg in messages:
            yield _attempt(self, msg)

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self) -> _BaseTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attempt(transport: Transport, msg: OutgoingMessage) -> Delivery:
    try:
        return Delivery(msg, result=transport.send(msg))
    except DeliveryError as exc:
        return Delivery(msg, error=exc)


class MaildirTransport(_BaseTransport):
    """Writes each message into a Maildir (created if missing); the default transport.

    Two messages may be in flight: a sender renders the next digest while the previous one is
    written (which releases the GIL), so rendering and writing overlap.

    `send` stores one message durably (the stdlib `mailbox`: tmp/, fsync, then new/).
    `send_deferred` + `flush` do the same for a group: each message is written to tmp/ at
    once, and `flush` syncs the group's files, moves them into new/ and syncs new/, so a
    group costs one wait on the disk instead of one per message (profiled: an fsync per
    message was most of a Maildir delivery's time). A deferred message is delivered only when
    `flush` returns; a crash before that leaves it in tmp/, where no reader looks (and which
    Maildir readers clean), never in new/.
    """

    parallel = 2
    overlap = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._pending: list[str] = []  # unique names written to tmp/, not yet delivered
        self._broken = ""  # why a flush failed: no more deferred sends until close()
        self._lock = threading.Lock()
        self._host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._count = itertools.count(1)
        try:
            # Made here, tolerating each folder already there: two senders starting at once
            # (overlapping cron runs) race to create them, which mailbox's own creation fails.
            for folder in ("tmp", "new", "cur"):
                (self.path / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
            self.maildir = mailbox.Maildir(self.path, factory=None, create=False)
        except OSError as exc:
            raise TransportError(f"maildir {self.path}: cannot create: {exc}") from None

    def send(self, msg: OutgoingMessage | EmailMessage) -> SendResult:
        """Store the message in new/ (written to tmp/ first, then renamed: atomic)."""
        out = _outgoing(msg)
        data = out.data.replace(b"\r\n", b"\n")
        try:
            try:
                self.maildir.add(data)
            except mailbox.ExternalClashError:
                # Two threads picked the same unique name (same microsecond): a fresh one.
                self.maildir.add(data)
        except (OSError, mailbox.ExternalClashError) as exc:
            raise TemporaryDeliveryError(f"maildir {self.path}: cannot write: {exc}") from None
        return SendResult(out.message_id, out.recipients)

    def send_deferred(self, msg: OutgoingMessage | EmailMessage) -> SendResult:
        """Write the message to tmp/ as `send` would, unsynced and not yet delivered: the
        next `flush` delivers it (see the class docstring). Safe from several threads."""
        if self._broken:
            raise TransportError(self._broken)
        out = _outgoing(msg)
        data = out.data.replace(b"\r\n", b"\n")
        now = time.time()
        # The unique name of the Maildir spec, as mailbox.Maildir makes it, plus a counter.
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._count)}.{self._host}"
        path = self.path / "tmp" / name
        try:
            # 0o666 less the umask, as mailbox creates its files.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(path)
            raise TemporaryDeliveryError(f"maildir {self.path}: cannot write: {exc}") from None
        with self._lock:
            self._pending.append(name)
        return SendResult(out.message_id, out.recipients)

    def flush(self) -> None:
        """Deliver every deferred message: sync their files, move them into new/ and sync
        new/. On a disk error, TransportError: what is still in tmp/ is removed, later
        deferred sends fail until `close`, and the caller must not count the group as
        delivered (files already moved stay in new/; see docs/guide/delivery.md)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if self._broken:  # written while that flush failed: not delivered either
            for name in pending:
                with contextlib.suppress(OSError):
                    os.remove(self.path / "tmp" / name)
            raise TransportError(self._broken)
        if not pending:
            return
        tmp, new = self.path / "tmp", self.path / "new"
        left = list(pending)
        try:
            # After the group's writes: the first sync writes them all out, the others find
            # little or nothing left to write.
            for name in pending:
                fd = os.open(tmp / name, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            while left:
                # link + remove, as mailbox does: never replaces a message already in new/.
                os.link(tmp / left[-1], new / left[-1])
                os.remove(tmp / left.pop())
            folder = os.open(new, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            for name in left:
                with contextlib.suppress(OSError):
                    os.remove(tmp / name)
            self._broken = f"maildir {self.path}: cannot deliver a group: {exc}"
            raise TransportError(self._broken) from None

    def close(self) -> None:
        """Drop deferred messages never flushed: not delivered, so not left in tmp/ either."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._broken = ""
        for name in pending:
            with contextlib.suppress(OSError):
                os.remove(self.path / "tmp" / name)


class DryRunTransport(_BaseTransport):
    """Sends nothing: keeps the messages in `.messages` and prints one line per message."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream
        self.messages: list[OutgoingMessage] = []

    def send(self, msg: OutgoingMessage | EmailMessage) -> SendResult:
        """Record the message; print what would be sent."""
        out = _outgoing(msg)
        self.messages.append(out)
        if self.stream is not None:
            print(
                f"dry-run: would send {out.message_id} to {', '.join(out.recipients)}: "
                f"{out.subject} ({len(out.data)} bytes)",
                file=self.stream,
            )
        return SendResult(out.message_id, out.recipients)


class RateLimiter:
    """At most `rate` acquisitions per second, shared by threads; rate 0 means no limit."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait for the next slot."""
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


class SmtpTransport(_BaseTransport):
    """One persistent SMTP connection, opened on first use and reopened when found dropped.

    When the server offers PIPELINING (RFC 2920), MAIL FROM, RCPT TO and DATA go out in one
    write and their replies are read together: two round trips per message instead of four.
    """

    overlap = True

    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        password: str | None = None,
        env: Mapping[str, str] | None = None,
        limiter: RateLimiter | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.smtp = smtp
        self.password = password
        if smtp.user and password is None:
            env = os.environ if env is None else env
            self.password = env.get(smtp.password_env)
            if self.password is None:
                raise TransportError(
                    f"smtp.user is set but the environment variable {smtp.password_env} "
                    "(smtp.password_env) holding the password is not"
                )
        self.limiter = limiter or RateLimiter(smtp.rate_per_second)
        self.ssl_context = ssl_context
        self._conn: smtplib.SMTP | None = None
        self.connects = 0  # how many connections were opened, for tests and logs

    @property
    def where(self) -> str:
        return f"{self.smtp.host}:{self.smtp.port}"

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out dropped on next use)."""
        return self._conn is not None

    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        s = self.smtp
        try:
            if s.security == "tls":
                conn: smtplib.SMTP = smtplib.SMTP_SSL(
                    s.host, s.port, timeout=s.timeout_seconds, context=self._context()
                )
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout_seconds)
            _greeted(conn.ehlo(), conn)
            if s.security == "starttls":
                conn.starttls(context=self._context())
                _greeted(conn.ehlo(), conn)
            if s.user:
                conn.login(s.user, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise TransportError(
                f"smtp {self.where}: login as {s.user!r} refused: {exc.smtp_code} "
                f"{_text(exc.smtp_error)}",
                code=exc.smtp_code,
            ) from None
        except (ssl.SSLError, smtplib.SMTPNotSupportedError) as exc:
            raise TransportError(f"smtp {self.where}: TLS failed: {exc}") from None
        except smtplib.SMTPResponseException as exc:
            # Refused before any message (a 421 greeting, a 454 to STARTTLS, a 4xx to EHLO):
            # the server's state, not any digest's. 4xx: it is busy, try the queue later;
            # 5xx: it will not take our mail at all (our address blocked?): ours to fix.
            reply = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            if exc.smtp_code >= 500:
                raise TransportError(
                    f"smtp {self.where}: refused the connection: {reply}", code=exc.smtp_code
                ) from None
            raise ServerUnavailable(
                f"smtp {self.where}: not accepting mail now: {reply}", code=exc.smtp_code
            ) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            raise ServerUnavailable(
                f"smtp {self.where}: cannot connect: {exc or type(exc).__name__}"
            ) from None
        except smtplib.SMTPException as exc:  # e.g. no authentication method both know
            raise TransportError(f"smtp {self.where}: {exc or type(exc).__name__}") from None
        self.connects += 1
        return conn

    def send(self, msg: OutgoingMessage | EmailMessage) -> SendResult:
        """Send over the open connection; a connection found dead before MAIL is reopened once."""
        out = _outgoing(msg)
        self.limiter.acquire()
        for _ in range(2):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._connect()
            try:
                return self._transaction(self._conn, out)
            except _StaleConnection as exc:
                self._drop()
                if not reused:
                    raise TemporaryDeliveryError(
                        f"smtp {self.where}: connection lost before MAIL FROM: {exc}"
                    ) from None
        raise TemporaryDeliveryError(f"smtp {self.where}: connection keeps dropping")

    def _transaction(self, conn: smtplib.SMTP, out: OutgoingMessage) -> SendResult:
        where = f"smtp {self.where}"
        options = ["SMTPUTF8", "BODY=8BITMIME"] if out.smtputf8 else []
        data = out.data
        if out.eight_bit and not out.smtputf8:
            if conn.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
            else:
                data = to_seven_bit(data)
        if not out.smtputf8 and conn.has_extn("pipelining"):
            return self._pipelined(conn, out, options, data)
        try:
            code, reply = conn.mail(out.envelope_from, options)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _StaleConnection(str(exc) or type(exc).__name__) from None
        try:
            if code != 250:
                raise self._sender_refused(code, reply, out, where)
            # lazily: a 421 stops the RCPTs still to send
            replies = ((rcpt, conn.rcpt(rcpt)) for rcpt in out.recipients)
            accepted, refused = self._recipients(replies, where)
            if not accepted:
                self._reset_or_drop(0)
                return SendResult(out.message_id, (), refused)
            try:
                code, reply = _send_data(conn, data)
            except smtplib.SMTPDataError as exc:  # no 354: nothing was transferred
                self._reset_or_drop(exc.smtp_code)
                raise _classify(exc.smtp_code, exc.smtp_error, _one(accepted), where) from None
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                raise self._lost_in_data(exc, accepted, where) from None
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost(exc, out, where) from None
        return self._finish(code, reply, out, accepted, refused, where)

    def _pipelined(
        self, conn: smtplib.SMTP, out: OutgoingMessage, options: list[str], data: bytes
    ) -> SendResult:
        """The transaction of `_transaction` with MAIL, RCPT and DATA sent as one group (RFC
        2920); every outcome is classified the same way, by the same helpers."""
        where = f"smtp {self.where}"
        tail = (" " + " ".join(options)) if options else ""
        group = [f"MAIL FROM:{_quoted_sender(out.envelope_from)}{tail}"]
        group += [f"RCPT TO:{smtplib.quoteaddr(rcpt)}" for rcpt in out.recipients]
        group.append("DATA")
        try:
            conn.send(("\r\n".join(group) + "\r\n").encode("ascii"))
            code, reply = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # Nothing of the message itself was sent: as a stale connection in `_transaction`.
            raise _StaleConnection(str(exc) or type(exc).__name__) from None
        try:
            rcpt_replies = [conn.getreply() for _ in out.recipients]
            data_code, data_reply = conn.getreply()
            if code != 250:
                self._end_empty_data(conn, data_code)
                raise self._sender_refused(code, reply, out, where)
            pairs = zip(out.recipients, rcpt_replies, strict=True)
            accepted, refused = self._recipients(pairs, where)
            if not accepted:
                self._end_empty_data(conn, data_code)
                self._reset_or_drop(0)
                return SendResult(out.message_id, (), refused)
            if data_code != 354:  # nothing was transferred
                self._reset_or_drop(data_code)
                raise _classify(data_code, data_reply, _one(accepted), where)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost(exc, out, where) from None
        try:
            code, reply = _send_body(conn, data)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise self._lost_in_data(exc, accepted, where) from None
        return self._finish(code, reply, out, accepted, refused, where)

    # The outcomes both transactions share, so that pipelining classifies as one by one does.

    def _sender_refused(
        self, code: int, reply: bytes, out: OutgoingMessage, where: str
    ) -> DeliveryError:
        """MAIL FROM refused: reset (or drop on 421) and the error to raise."""
        self._reset_or_drop(code)
        if code >= 500:
            return TransportError(
                f"{where}: sender {out.envelope_from} refused: {code} {_text(reply)}",
                code=code,
                address=out.envelope_from,
            )
        return _classify(code, reply, out.envelope_from, where)

    def _recipients(
        self, replies: Iterable[tuple[str, tuple[int, bytes]]], where: str
    ) -> tuple[list[str], dict[str, DeliveryError]]:
        """The accepted recipients and the refused ones with why; a 421 drops and raises."""
        accepted: list[str] = []
        refused: dict[str, DeliveryError] = {}
        for rcpt, (code, reply) in replies:
            if code in (250, 251):
                accepted.append(rcpt)
            elif code == 421:
                self._drop()
                raise _classify(code, reply, rcpt, where)
            else:
                refused[rcpt] = _classify(code, reply, rcpt, where)
        return accepted, refused

    def _lost(self, exc: BaseException, out: OutgoingMessage, where: str) -> DeliveryError:
        self._drop()
        return TemporaryDeliveryError(
            f"{where}: connection lost: {exc or type(exc).__name__}",
            address=_one(out.recipients),
        )

    def _lost_in_data(self, exc: BaseException, accepted: list[str], where: str) -> DeliveryError:
        self._drop()
        return TemporaryDeliveryError(
            f"{where}: connection lost during DATA for {', '.join(accepted)} "
            f"({exc or type(exc).__name__}); the server may have taken it",
            address=_one(accepted),
            maybe_delivered=True,
        )

    def _finish(
        self,
        code: int,
        reply: bytes,
        out: OutgoingMessage,
        accepted: list[str],
        refused: dict[str, DeliveryError],
        where: str,
    ) -> SendResult:
        """The end of DATA: the result, or the error a refusal there means."""
        if code != 250:
            if code == 421:
                self._drop()
            raise _classify(code, reply, _one(accepted), where)
        return SendResult(out.message_id, tuple(accepted), refused)

    @staticmethod
    def _end_empty_data(conn: smtplib.SMTP, data_code: int) -> None:
        # A server that said 354 although the transaction failed waits for a message: an
        # empty one, which it refuses for want of a sender or recipients (RFC 2920, 3.1).
        if data_code == 354:
            conn.send(b".\r\n")
            conn.getreply()

    def _reset_or_drop(self, code: int) -> None:
        if code == 421 or self._conn is None:
            self._drop()
            return
        try:
            self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Say QUIT and close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.quit()
            with contextlib.suppress(Exception):
                conn.close()


def _send_data(conn: smtplib.SMTP, data: bytes) -> tuple[int, bytes]:
    """DATA with the message dot-stuffed by one bytes.replace.

    smtplib's data() runs a multiline regex over the whole message, which costs more than the
    rest of a send; our messages always have CRLF line endings, so one replace is the same.
    """
    code, reply = conn.docmd("data")
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    return _send_body(conn, data)


def _send_body(conn: smtplib.SMTP, data: bytes) -> tuple[int, bytes]:
    """The message after a 354, dot-stuffed, its final dot, and the server's reply."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    conn.send(stuffed + b".\r\n")
    return conn.getreply()


def _greeted(reply: tuple[int, bytes], conn: smtplib.SMTP) -> None:
    """EHLO's reply: a 4xx (busy, shutting down) is raised as smtplib does for a greeting;
    other codes are left to smtplib (a 5xx: no ESMTP, plain SMTP goes on)."""
    code, text = reply
    if 400 <= code < 500:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            conn.close()
        raise smtplib.SMTPResponseException(code, text)


# Every message of a sender has the same envelope sender: parsed once (smtplib.quoteaddr runs
# email.utils.parseaddr, which was a tenth of a pipelined transaction's CPU; profiled).
_quoted_sender = functools.lru_cache(maxsize=16)(smtplib.quoteaddr)


class _StaleConnection(Exception):
    """The reused connection was found closed before anything of this message was sent."""


class SmtpPool(_BaseTransport):
    """N persistent SMTP connections used from N threads, sharing one rate limit.

    A connection the server refuses (ServerUnavailable, e.g. a cap on connections per client)
    while another is open is set aside for ASIDE_SECONDS (or until the pool is closed), and
    its message goes out on another: delivery goes on with fewer connections. Only when none
    can be opened is the server unavailable.
    """

    ASIDE_SECONDS = 60.0

    overlap = True

    def __init__(
        self,
        smtp: SmtpSettings,
        *,
        connections: int | None = None,
        password: str | None = None,
        env: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.size = self.parallel = connections or smtp.connections
        limiter = RateLimiter(smtp.rate_per_second)
        self.transports = [
            SmtpTransport(
                smtp, password=password, env=env, limiter=limiter, ssl_context=ssl_context
            )
            for _ in range(self.size)
        ]
        self._free: deque[SmtpTransport] = deque(self.transports)
        self._cond = threading.Condition()
        # (when to try again, connection) for those refused while others were open
        self.set_aside: deque[tuple[float, SmtpTransport]] = deque()
        # when the pool last found no connection it could open, and why
        self._down: tuple[float, ServerUnavailable] | None = None

    def send(self, msg: OutgoingMessage | EmailMessage) -> SendResult:
        """Send on a free connection (waits for one); safe from many threads."""
        refused_at: float | None = None  # this message's connection was refused then
        while True:
            with self._cond:
                aside = self.set_aside
                while aside and aside[0][0] <= time.monotonic():
                    self._free.appendleft(aside.popleft()[1])  # tried first
                while True:
                    # the server turned out to take no connection after this one was refused:
                    # no retry on the others (each would wait out its own connect)
                    down = self._down
                    if refused_at is not None and down is not None and down[0] >= refused_at:
                        raise ServerUnavailable(str(down[1]))
                    if self._free:
                        break
                    self._cond.wait()
                transport = self._free.popleft()
            try:
                result = transport.send(msg)
            except ServerUnavailable as exc:
                # raised only while connecting, before any of this message went out
                with self._cond:
                    # another open, or in use (its thread may be opening it now): go on with
                    # it; none: the server takes no connection from us at all, and every
                    # connection is given back for the next pass
                    aside_now = {id(t) for _, t in aside}
                    others = [t for t in self.transports
                              if t is not transport and id(t) not in aside_now]  # fmt: skip
                    free = {id(t) for t in self._free}
                    if not any(t.connected or id(t) not in free for t in others):
                        self._down = (time.monotonic(), exc)
                        self._free.append(transport)
                        self._free.extend(t for _, t in aside)
                        aside.clear()
                        self._cond.notify_all()
                        raise
                    refused_at = time.monotonic()
                    aside.append((refused_at + self.ASIDE_SECONDS, transport))
                log.warning("%s; going on with the connections already open", exc)
                continue
            except BaseException:
                with self._cond:
                    self._free.append(transport)
                    self._cond.notify()
                raise
            with self._cond:
                self._free.append(transport)
                self._cond.notify()
            return result

    def send_many(self, messages: Iterable[OutgoingMessage]) -> Iterator[Delivery]:
        """Send over all connections at once; yields outcomes in input order."""
        window: deque[Future[Delivery]] = deque()
        with ThreadPoolExecutor(self.size, thread_name_prefix="smtp") as pool:
            for msg in messages:
                window.append(pool.submit(_attempt, self, msg))
                if len(window) >= self.size * 4:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def close(self) -> None:
        """Close every connection; those set aside are tried again on next use."""
        for t in self.transports:
            t.close()
        with self._cond:
            self._free.extend(t for _, t in self.set_aside)
            self.set_aside.clear()


def make_transport(
    settings: Settings, dry_run: bool = False, stream: IO[str] | None = None
) -> Transport:
    """The transport the settings ask for: Maildir, SMTP (pooled when connections > 1), dry run."""
    if dry_run:
        return DryRunTransport(stream if stream is not None else sys.stdout)
    if settings.mail.transport == "smtp":
        _warn_plain_links(settings.site.base_url)
        if settings.smtp.connections > 1:
            return SmtpPool(settings.smtp)
        return SmtpTransport(settings.smtp)
    return MaildirTransport(settings.mail.maildir)


@functools.cache  # once per process and site, not once per delivery pass
def _warn_plain_links(base_url: str) -> None:
    """Mail going out to people with links they cannot use as intended: say so once."""
    if not base_url.startswith("https://"):
        # Gmail and Yahoo offer RFC 8058 one-click unsubscribe only for an https URL
        log.warning(
            "site.base_url is %s: mail goes out by SMTP with http links, so mail clients will "
            "not offer one-click unsubscribe; set an https URL",
            base_url,
        )


def _classify(
    code: int, reply: bytes | str, address: str | None, where: str
) -> TemporaryDeliveryError | PermanentDeliveryError:
    who = f"{address}: " if address else ""
    if 400 <= code < 500:
        return TemporaryDeliveryError(
            f"{where}: {who}temporary failure {code} {_text(reply)}", code=code, address=address
        )
    return PermanentDeliveryError(
        f"{where}: {who}refused {code} {_text(reply)}", code=code, address=address
    )


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return _one_line(reply)


def _one(addresses: Iterable[str]) -> str | None:
    items = list(addresses)
    return items[0] if len(items) == 1 else None
