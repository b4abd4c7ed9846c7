"""Messages and transports, against a real aiosmtpd server on a loopback port."""

from __future__ import annotations

import collections
import dataclasses
import email
import io
import mailbox
import os
import re
import smtplib
import socket
import threading
from email import policy
from email.message import EmailMessage

import pytest
from email_samples import email_settings, make_digest, make_paper, make_subscriber
from hypothesis import example, given
from hypothesis import strategies as st
from smtp_helpers import RecordingHandler, SmtpServer, smtp_server, start_server
from support import free_port

from digest.errors import DeliveryError, ValidationError
from digest.mail import (
    DryRunTransport,
    MaildirTransport,
    MessageBuilder,
    OutgoingMessage,
    PermanentDeliveryError,
    RateLimiter,
    ServerUnavailable,
    SmtpPool,
    SmtpTransport,
    TemporaryDeliveryError,
    TransportError,
    build_message,
    lines_fit,
    make_message_id,
    make_transport,
    to_seven_bit,
)
from digest.render import Renderer, make_links

__all__ = ["smtp_server"]  # the fixture, imported for pytest

SETTINGS = email_settings(mail={"reply_to": "Help Desk <help@example.org>"})
RENDERER = Renderer(SETTINGS)


def digest_message(digest=None, settings=SETTINGS) -> OutgoingMessage:
    digest = digest or make_digest()
    links = make_links(settings, digest.subscriber)
    return build_message(RENDERER.render(digest, links), digest, links, settings)


def message_to(address: str, digest_id: int = 42) -> OutgoingMessage:
    return digest_message(
        make_digest(subscriber=make_subscriber(email=address), digest_id=digest_id)
    )


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


# --- the message -----------------------------------------------------------------------------


def test_message_headers_and_parts():
    msg = digest_message().as_email()
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == "Daily Papers <digest@example.org>"
    assert msg["To"] == "Ada Lovelace <ada@example.org>"
    assert msg["Reply-To"] == "Help Desk <help@example.org>"
    assert msg["Subject"] == "4 new papers on Sparse attention, Speculative decoding, Quantization"
    assert msg["Date"] == "Mon, 24 Nov 2025 06:00:00 +0000"
    assert msg["Message-ID"] == "<digest-42-0123456789abcdef@example.org>"
    assert msg["List-Id"] == "Daily Papers Digest <daily-papers.localhost>"
    assert msg["List-Unsubscribe"] == (
        "<https://digest.example.org/unsubscribe/tok-ada-123/one-click>, "
        "<mailto:unsubscribe@example.org?subject=unsubscribe>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    assert re.search(r'<span class="hl"[^>]*>Latency</span>', html)
    assert "Ünïcödé" in text and "&#220;n&#239;c&#246;d&#233;" in html


def test_lines_are_crlf_and_short():
    data = digest_message().data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_a_line_too_long_for_smtp_falls_back_to_an_encoding_that_keeps_it():
    word = "Ünïcödé" + "x" * 2_000  # one word: no place to break the line
    paper = make_paper(1, f"Title {word}", f"An abstract.\rWith a bare CR and {word}.")
    data = digest_message(make_digest([(paper, ("T",), ("abstract",))])).data
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = parse(data)
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert html["Content-Transfer-Encoding"] == "base64"
    assert word in text.get_content()
    assert "x" * 2_000 in html.get_content()


@given(st.integers(1, 6), st.lists(st.integers(0, 14), max_size=10))
@example(998, [998, 998, 12])
@example(998, [12, 999])
@example(998, [1996])
def test_lines_fit_agrees_with_measuring_every_line(limit, lengths):
    raw = b"\n".join(b"x" * n for n in lengths)
    assert lines_fit(raw, limit) == (max(map(len, raw.split(b"\n"))) <= limit)


def test_message_id_is_derived_from_the_digest_id():
    a = make_message_id(42, SETTINGS)
    assert a == make_message_id(42, SETTINGS)
    assert a != make_message_id(43, SETTINGS)
    assert re.fullmatch(r"<digest-42-[0-9a-f]{16}@example\.org>", a)
    other = email_settings(site={"list_id": "other.example.org"})
    assert make_message_id(42, other) != a


def test_long_and_non_ascii_subjects_and_names_are_encoded():
    sub = make_subscriber(name="Zoë Ωmega, Jr.", topics=("Ünïcödé " * 12,))
    digest = make_digest(subscriber=sub)
    papers = [(i.paper, ("Ünïcödé " * 12,), ("sparse",)) for i in digest.items]
    msg = digest_message(make_digest(papers, sub))
    raw = msg.data.split(b"\r\n\r\n", 1)[0]
    assert raw.isascii()
    # Folded at 78 wherever a space allows; only one unbreakable item (a signed URL) may pass it.
    assert all(len(line) <= 78 or line.strip().count(b" ") <= 1 for line in raw.split(b"\r\n"))
    assert max(map(len, raw.split(b"\r\n"))) <= 998
    parsed = msg.as_email()
    assert parsed["To"].addresses[0].display_name == "Zoë Ωmega, Jr."
    assert parsed["Subject"].startswith("4 new papers on Ünïcödé Ünïcödé")


HOSTILE_HEADER_VALUES = [
    "Eve\r\nBcc: victim@example.org",
    "Eve\nBcc: victim@example.org",
    "Eve\rBcc: victim@example.org",
    "=?utf-8?q?a=0D=0ABcc:_victim@example.org?=",
    "=?utf-8?b?YQ0KQmNjOiB2aWN0aW1AZXhhbXBsZS5vcmc=?=",
    "Eve\u2028Bcc: victim@example.org\x00\x85",
]


@pytest.mark.parametrize("value", HOSTILE_HEADER_VALUES)
def test_no_header_injection_through_names_subjects_or_settings(value):
    settings = email_settings(site={"title": value})
    # Start-up validation refuses such addresses; the message builder must hold on its own.
    hostile_mail = dataclasses.replace(
        settings.mail,
        from_addr=f"{value} <digest@example.org>",
        reply_to=f"{value} <r@example.org>",
    )
    settings = dataclasses.replace(settings, mail=hostile_mail)
    sub = make_subscriber(name=value, topics=(value,))
    digest = make_digest(
        [(i.paper, (value,), i.match.terms) for i in make_digest().items], subscriber=sub
    )
    links = make_links(settings, sub)
    rendered = Renderer(settings).render(digest, links)
    msg = build_message(rendered, digest, links, settings)
    head = msg.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    names = [line.split(":", 1)[0] for line in head.split("\r\n") if not line[:1].isspace()]
    assert "Bcc" not in names and len(names) == len(set(names))
    parsed = msg.as_email()
    assert parsed["Bcc"] is None
    for key in ("From", "To", "Reply-To", "Subject", "List-Id"):
        assert "\r" not in str(parsed[key]) and "\n" not in str(parsed[key]), key
    assert parsed["To"].addresses[0].addr_spec == "ada@example.org"
    assert len(parsed["To"].addresses) == 1


@pytest.mark.parametrize(
    "address",
    ["ada@example.org\r\nBcc: victim@example.org", "ada@example.org, eve@example.org", "<a@b>", ""],
)
def test_bad_recipient_addresses_are_refused_not_repaired(address):
    with pytest.raises(ValidationError, match="subscriber email"):
        digest_message(make_digest(subscriber=make_subscriber(email=address)))


def test_idn_domain_is_punycoded_and_utf8_local_part_asks_for_smtputf8():
    assert message_to("ada@exämple.org").recipients == ("ada@xn--exmple-cua.org",)
    msg = message_to("zoë@example.org")
    assert msg.smtputf8 and msg.recipients == ("zoë@example.org",)


def test_seven_bit_fallback_keeps_the_content():
    msg = digest_message()
    assert msg.eight_bit
    again = parse(to_seven_bit(msg.data))
    for part in again.iter_parts():
        assert part["Content-Transfer-Encoding"] in ("7bit", "quoted-printable")
    original = msg.as_email()
    assert again.get_body(("plain",)).get_content() == original.get_body(("plain",)).get_content()
    assert again["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_builder_reuse_gives_identical_bytes():
    digest = make_digest()
    links = make_links(SETTINGS, digest.subscriber)
    rendered = RENDERER.render(digest, links)
    builder = MessageBuilder(SETTINGS)
    assert (
        builder.build(rendered, digest, links).data == builder.build(rendered, digest, links).data
    )


# --- SMTP against aiosmtpd -------------------------------------------------------------------


def test_smtp_delivers_a_digest_that_parses_back(smtp_server: SmtpServer):
    with SmtpTransport(smtp_server.settings()) as transport:
        result = transport.send(digest_message())
    assert result.ok and result.accepted == ("ada@example.org",)
    [got] = smtp_server.handler.messages
    assert got.mail_from == "digest@example.org" and got.rcpt_tos == ["ada@example.org"]
    msg = parse(got.data)
    assert msg["Message-ID"] == "<digest-42-0123456789abcdef@example.org>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg.get_body(("plain",)) is not None
    assert '<span class="hl"' in msg.get_body(("html",)).get_content()


def test_smtp_reuses_one_connection(smtp_server: SmtpServer):
    with SmtpTransport(smtp_server.settings()) as transport:
        for i in range(5):
            transport.send(message_to(f"r{i}@example.org", digest_id=i))
        assert transport.connects == 1
    messages = smtp_server.handler.messages
    assert len(messages) == 5 and len({m.session for m in messages}) == 1


def test_smtp_reopens_a_connection_the_server_dropped(smtp_server: SmtpServer):
    with SmtpTransport(smtp_server.settings()) as transport:
        transport.send(message_to("a@example.org", 1))
        smtp_server.disconnect_all()
        result = transport.send(message_to("b@example.org", 2))
        assert result.ok and transport.connects == 2
    assert [m.rcpt_tos for m in smtp_server.handler.messages] == [
        ["a@example.org"],
        ["b@example.org"],
    ]


def test_recipient_4xx_and_5xx_are_per_recipient_outcomes(smtp_server: SmtpServer):
    handler = smtp_server.handler
    handler.temp_fail.add("busy@example.org")
    handler.perm_fail.add("gone@example.org")
    base = message_to("ok@example.org")
    msg = OutgoingMessage(
        base.message_id,
        base.envelope_from,
        ("ok@example.org", "busy@example.org", "gone@example.org"),
        base.data,
    )
    with SmtpTransport(smtp_server.settings()) as transport:
        result = transport.send(msg)
        assert result.accepted == ("ok@example.org",) and not result.ok
        busy, gone = result.refused["busy@example.org"], result.refused["gone@example.org"]
        assert isinstance(busy, TemporaryDeliveryError) and busy.code == 450
        assert "busy@example.org" in str(busy) and "450" in str(busy)
        assert isinstance(gone, PermanentDeliveryError) and gone.code == 550
        assert gone.address == "gone@example.org" and "550" in str(gone)
        # Every recipient refused: nothing sent, the session stays usable.
        only = transport.send(message_to("gone@example.org"))
        assert only.accepted == () and isinstance(
            only.refused["gone@example.org"], PermanentDeliveryError
        )
        assert transport.send(message_to("ok@example.org")).ok
    assert [m.rcpt_tos for m in handler.messages] == [["ok@example.org"], ["ok@example.org"]]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("451 4.3.0 local problem, try later", TemporaryDeliveryError),
        ("554 5.7.1 message rejected as spam", PermanentDeliveryError),
    ],
)
def test_data_answers_are_classified(smtp_server: SmtpServer, reply, error):
    smtp_server.handler.data_reply = reply
    with SmtpTransport(smtp_server.settings()) as transport:
        with pytest.raises(error) as info:
            transport.send(digest_message())
        assert info.value.code == int(reply[:3])
        assert "ada@example.org" in str(info.value) and reply[:3] in str(info.value)
        smtp_server.handler.data_reply = None
        assert transport.send(digest_message()).ok  # same connection still works
        assert transport.connects == 1


def test_connection_dropped_during_data_is_temporary_and_may_be_delivered(
    smtp_server: SmtpServer,
):
    smtp_server.handler.drop_during_data = 1
    with SmtpTransport(smtp_server.settings()) as transport:
        with pytest.raises(TemporaryDeliveryError) as info:
            transport.send(digest_message())
        assert info.value.maybe_delivered
        assert "during DATA" in str(info.value) and "ada@example.org" in str(info.value)
        # The retry (same Message-ID) goes out over a fresh connection.
        assert transport.send(digest_message()).ok
        assert transport.connects == 2
    [got] = smtp_server.handler.messages
    assert parse(got.data)["Message-ID"] == "<digest-42-0123456789abcdef@example.org>"


def test_connection_refused_is_temporary():
    settings = email_settings(smtp={"host": "127.0.0.1", "port": free_port()}).smtp
    with pytest.raises(TemporaryDeliveryError, match="cannot connect"):
        SmtpTransport(settings).send(digest_message())


def _scripted_server(lines: list[bytes]) -> tuple[socket.socket, threading.Thread]:
    """A loopback server that answers one connection with these lines, one per line read
    (the first is the greeting), then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            for k, line in enumerate(lines):
                if k:
                    reader.readline()
                conn.sendall(line + b"\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(
    ("lines", "expected", "words"),
    [
        ([b"421 busy, try later"], ServerUnavailable, "not accepting mail now: 421"),
        ([b"220 hi", b"421 shutting down"], ServerUnavailable, "not accepting mail now: 421"),
        ([b"554 your address is blocked"], TransportError, "refused the connection: 554"),
    ],
    ids=["421-greeting", "421-to-ehlo", "554-greeting"],
)
def test_a_server_refusing_before_any_message_is_the_servers_state_not_a_digests(
    lines: list[bytes], expected: type[Exception], words: str
) -> None:
    # No digest is to blame: a 4xx stops the pass and keeps the queue (ServerUnavailable), a
    # 5xx is ours to fix (TransportError); neither is a retry or a bounce of one digest.
    listener, thread = _scripted_server(lines)
    with listener:
        port = listener.getsockname()[1]
        settings = email_settings(smtp={"host": "127.0.0.1", "port": port}).smtp
        with pytest.raises(expected, match=words) as info:
            SmtpTransport(settings).send(digest_message())
        assert not isinstance(info.value, PermanentDeliveryError)
        thread.join(5)


def test_connection_refused_stops_the_pass_as_server_unavailable():
    settings = email_settings(smtp={"host": "127.0.0.1", "port": free_port()}).smtp
    with pytest.raises(ServerUnavailable, match="cannot connect"):
        SmtpTransport(settings).send(digest_message())


def test_a_silent_server_times_out_as_temporary():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the TCP connection, never greets
        port = listener.getsockname()[1]
        settings = email_settings(
            smtp={"host": "127.0.0.1", "port": port, "timeout_seconds": 0.3}
        ).smtp
        with pytest.raises(TemporaryDeliveryError, match="cannot connect"):
            SmtpTransport(settings).send(digest_message())


def test_login_uses_the_password_from_the_named_environment_variable():
    from aiosmtpd.smtp import AuthResult

    seen: list[tuple[str, str]] = []

    def text(value: str | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else value

    def authenticator(server, session, envelope, mechanism, auth_data):
        seen.append((text(auth_data.login), text(auth_data.password)))
        return AuthResult(success=text(auth_data.password) == "s3cret", handled=False)

    server = start_server(authenticator=authenticator, auth_require_tls=False)
    try:
        settings = server.settings(user="digest", password_env="TEST_SMTP_PW")
        with pytest.raises(TransportError, match="TEST_SMTP_PW"):
            SmtpTransport(settings, env={})
        with pytest.raises(TransportError, match="login as 'digest' refused"):
            SmtpTransport(settings, env={"TEST_SMTP_PW": "wrong"}).send(digest_message())
        with SmtpTransport(settings, env={"TEST_SMTP_PW": "s3cret"}) as transport:
            assert transport.send(digest_message()).ok
        assert seen[-1] == ("digest", "s3cret")
    finally:
        server.controller.stop()


def test_pool_sends_over_n_connections_exactly_once(smtp_server: SmtpServer):
    messages = [message_to(f"r{i}@example.org", digest_id=i) for i in range(40)]
    pool = SmtpPool(smtp_server.settings(connections=4))
    try:
        outcomes = list(pool.send_many(messages))
    finally:
        pool.close()
    assert [o.message for o in outcomes] == messages  # in input order
    assert all(o.result is not None and o.result.ok for o in outcomes)
    got = sorted(r for m in smtp_server.handler.messages for r in m.rcpt_tos)
    assert got == sorted(f"r{i}@example.org" for i in range(40))
    assert 1 < len({m.session for m in smtp_server.handler.messages}) <= 4
    assert sum(t.connects for t in pool.transports) <= 4


def test_pool_goes_on_with_the_connections_the_server_lets_it_open(smtp_server: SmtpServer):
    # a server that refuses some of the pool's connections (a cap per client): their messages
    # go out on the open ones, each once, and the refused ones are tried again later; when no
    # connection opens at all, the server is unavailable
    dead = socket.socket()  # bound, not listening: a connection to it is refused
    dead.bind(("127.0.0.1", 0))
    try:
        settings = smtp_server.settings(connections=4)
        refused = dataclasses.replace(settings, port=dead.getsockname()[1])
        pool = SmtpPool(settings)
        pool.transports[1:3] = [SmtpTransport(refused, limiter=pool.transports[0].limiter)
                                for _ in range(2)]  # fmt: skip
        pool._free = collections.deque(pool.transports)
        messages = [message_to(f"r{i}@example.org", digest_id=i) for i in range(30)]
        try:
            outcomes = list(pool.send_many(messages))
            assert [o.message for o in outcomes] == messages
            assert all(o.result is not None and o.result.ok for o in outcomes), [
                str(o.error) for o in outcomes if o.error
            ]
            got = sorted(r for m in smtp_server.handler.messages for r in m.rcpt_tos)
            assert got == sorted(f"r{i}@example.org" for i in range(30))  # each once
            assert sorted(pool.transports.index(t) for _, t in pool.set_aside) == [1, 2]
            pool.set_aside[0] = (0.0, pool.set_aside[0][1])  # its wait is over
            assert pool.send(message_to("again@example.org", digest_id=99)).ok
            assert len(pool.set_aside) == 2  # tried again, refused again, set aside again
        finally:
            pool.close()
        assert not pool.set_aside and len(pool._free) == 4
        alone = SmtpPool(refused)  # none opens: every message says so, none waits for a retry
        outcomes = list(alone.send_many([message_to(f"x{i}@example.org", i) for i in range(8)]))
        assert all(isinstance(o.error, ServerUnavailable) for o in outcomes)
        assert not alone.set_aside and len(alone._free) == 4  # all back for the next pass
        with pytest.raises(ServerUnavailable):
            alone.send(message_to("x@example.org", digest_id=1))
        alone.close()
    finally:
        dead.close()


def test_send_many_reports_failures_without_stopping(smtp_server: SmtpServer):
    smtp_server.handler.temp_fail.add("r1@example.org")
    smtp_server.handler.drop_during_data = 0
    with SmtpTransport(smtp_server.settings()) as transport:
        outcomes = list(transport.send_many([message_to(f"r{i}@example.org", i) for i in range(3)]))
    assert [bool(o.result and o.result.ok) for o in outcomes] == [True, False, True]


def test_rate_limiter_spaces_sends():
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert sleeps == [0.25, 0.25, 0.25, 0.25]
    unlimited = RateLimiter(0.0, clock=lambda: 0.0, sleep=sleep)
    unlimited.acquire()
    assert len(sleeps) == 4


def test_rate_limiter_is_shared_by_threads():
    lock = threading.Lock()
    now = [0.0]
    slots: list[float] = []

    def sleep(seconds: float) -> None:
        with lock:
            slots.append(seconds)

    limiter = RateLimiter(10.0, clock=lambda: now[0], sleep=sleep)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(round(s, 6) for s in slots) == [round(0.1 * i, 6) for i in range(1, 8)]


# --- Maildir, dry run, factory ---------------------------------------------------------------


def test_maildir_transport_creates_the_maildir_and_stores_the_message(tmp_path):
    path = tmp_path / "deep" / "maildir"
    transport = MaildirTransport(path)
    result = transport.send(digest_message())
    assert result.ok
    [file] = list((path / "new").iterdir())
    data = file.read_bytes()
    assert b"\r\n" not in data  # stored with local line endings
    msg = parse(data)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Ünïcödé" in msg.get_body(("plain",)).get_content()
    assert (path / "cur").is_dir() and (path / "tmp").is_dir()


@pytest.mark.parametrize("made", [(), ("",), ("", "new"), ("", "tmp", "new", "cur")])
def test_maildir_transport_starts_whatever_another_sender_created_already(tmp_path, made):
    # Two senders starting at once race to create the folders: each must take what is there.
    path = tmp_path / "maildir"
    for folder in made:
        (path / folder).mkdir(parents=True, exist_ok=True)
    assert MaildirTransport(path).send(digest_message()).ok
    assert len(list((path / "new").iterdir())) == 1


def test_maildir_deferred_messages_are_delivered_at_flush_as_mailbox_stores_them(tmp_path):
    grouped, single = MaildirTransport(tmp_path / "grouped"), MaildirTransport(tmp_path / "one")
    messages = [digest_message(), digest_message(make_digest(digest_id=43)), digest_message()]
    for msg in messages:
        assert grouped.send_deferred(msg).ok
        assert single.send(msg).ok  # the stdlib mailbox, one durable add per message
    # Written, not delivered: nothing in new/ (a reader sees nothing) until the flush.
    assert not list((tmp_path / "grouped" / "new").iterdir())
    assert len(list((tmp_path / "grouped" / "tmp").iterdir())) == 3
    grouped.flush()
    assert not list((tmp_path / "grouped" / "tmp").iterdir())
    ours = mailbox.Maildir(tmp_path / "grouped", factory=None, create=False)
    theirs = mailbox.Maildir(tmp_path / "one", factory=None, create=False)
    assert sorted(m.as_bytes() for m in ours) == sorted(m.as_bytes() for m in theirs)
    assert {m.get_subdir() for m in ours} == {"new"} and all(not m.get_flags() for m in ours)
    # Named as the Maildir spec says (time, microseconds, process, counter, host).
    assert all(re.fullmatch(r"\d+\.M\d+P\d+Q\d+\..+", key) for key in ours.iterkeys())
    grouped.flush()  # nothing pending: nothing happens
    assert len(ours) == 3


def test_maildir_close_drops_what_was_never_flushed(tmp_path):
    transport = MaildirTransport(tmp_path / "md")
    transport.send_deferred(digest_message())
    transport.close()
    assert not list((tmp_path / "md" / "tmp").iterdir())
    assert not list((tmp_path / "md" / "new").iterdir())


def test_maildir_flush_that_the_disk_refuses_delivers_nothing_and_says_so(tmp_path, monkeypatch):
    transport = MaildirTransport(tmp_path / "md")
    transport.send_deferred(digest_message())
    transport.send_deferred(digest_message())

    def refuse(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(TransportError, match=r"maildir .*md.*cannot deliver a group.*Input/output"):
        transport.flush()
    assert not list((tmp_path / "md" / "new").iterdir())
    assert not list((tmp_path / "md" / "tmp").iterdir())


def test_dry_run_records_and_prints():
    out = io.StringIO()
    transport = DryRunTransport(out)
    transport.send(digest_message())
    assert len(transport.messages) == 1
    assert (
        "would send <digest-42-0123456789abcdef@example.org> to ada@example.org" in out.getvalue()
    )


def test_transports_accept_an_email_message(tmp_path):
    msg = EmailMessage()
    msg["From"] = "a@example.org"
    msg["To"] = "Bee <b@example.org>"
    msg["Message-ID"] = "<x@example.org>"
    msg["Subject"] = "hi"
    msg.set_content("hello")
    transport = DryRunTransport()
    assert transport.send(msg).accepted == ("b@example.org",)
    assert transport.messages[0].envelope_from == "a@example.org"


def test_make_transport_follows_the_settings(tmp_path):
    maildir = email_settings(mail={"maildir": str(tmp_path / "md")})
    assert isinstance(make_transport(maildir), MaildirTransport)
    assert isinstance(make_transport(maildir, dry_run=True), DryRunTransport)
    smtp = email_settings(mail={"transport": "smtp"})
    assert isinstance(make_transport(smtp), SmtpTransport)
    pooled = email_settings(mail={"transport": "smtp"}, smtp={"connections": 3})
    pool = make_transport(pooled)
    assert isinstance(pool, SmtpPool) and pool.size == 3


def test_recording_handler_starts_clean():
    # Guards the helper itself: a fresh handler refuses nobody and drops nothing.
    handler = RecordingHandler()
    assert not (handler.temp_fail or handler.perm_fail or handler.drop_during_data)


def test_lines_starting_with_a_dot_survive_the_trip(smtp_server: SmtpServer):
    base = message_to("ok@example.org")
    head, body = base.data.split(b"\r\n\r\n", 1)
    data = head + b"\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n" + body
    msg = OutgoingMessage(base.message_id, base.envelope_from, base.recipients, data)
    with SmtpTransport(smtp_server.settings()) as transport:
        assert transport.send(msg).ok
    [got] = smtp_server.handler.messages
    assert got.data.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (made with the openssl command line)."""
    import shutil
    import subprocess

    if not shutil.which("openssl"):
        pytest.skip("TLS tests skipped: the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def _contexts(tls_files):
    import ssl

    cert, key = tls_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def test_starttls(tls_files):
    server_ctx, client_ctx = _contexts(tls_files)
    server = start_server(tls_context=server_ctx, require_starttls=True)
    try:
        settings = server.settings(security="starttls")
        with SmtpTransport(settings, ssl_context=client_ctx) as transport:
            assert transport.send(digest_message()).ok
        # A client that does not trust the certificate stops with a TransportError.
        with pytest.raises(TransportError, match="TLS"):
            SmtpTransport(settings).send(digest_message())
        # Without STARTTLS this server refuses: not a recipient's fault, not retried blindly.
        with pytest.raises(DeliveryError):
            SmtpTransport(server.settings()).send(digest_message())
    finally:
        server.controller.stop()
    assert len(server.handler.messages) == 1


def test_implicit_tls(tls_files):
    server_ctx, client_ctx = _contexts(tls_files)
    server = start_server(ssl_context=server_ctx)
    try:
        settings = server.settings(security="tls")
        with SmtpTransport(settings, ssl_context=client_ctx) as transport:
            assert transport.send(digest_message()).ok
    finally:
        server.controller.stop()
    assert len(server.handler.messages) == 1


def test_a_server_offering_pipelining_gets_mail_rcpt_and_data_in_one_write(
    monkeypatch: pytest.MonkeyPatch,
):
    writes: list[bytes] = []
    real = smtplib.SMTP.send

    def counted(self, s):  # type: ignore[no-untyped-def]
        writes.append(s if isinstance(s, bytes) else s.encode())
        return real(self, s)

    monkeypatch.setattr(smtplib.SMTP, "send", counted)
    for pipelining, per_message in ((True, 2), (False, 4)):
        server = start_server(pipelining=pipelining)
        try:
            with SmtpTransport(server.settings()) as transport:
                transport.send(message_to("a@example.org", 1))  # opens: EHLO
                writes.clear()
                for i in range(3):
                    assert transport.send(message_to(f"r{i}@example.org", digest_id=i + 2)).ok
            assert len(writes) - 1 == 3 * per_message  # and the QUIT
            if pipelining:
                assert writes[0].startswith(b"MAIL FROM:") and writes[0].endswith(b"DATA\r\n")
            assert [m.rcpt_tos for m in server.handler.messages][1:] == [
                [f"r{i}@example.org"] for i in range(3)
            ]
        finally:
            server.controller.stop()


def test_smtp_with_an_http_site_warns_once_that_one_click_unsubscribe_is_lost(caplog) -> None:
    # The contract's List-Unsubscribe is an https URL: mail clients offer RFC 8058 one-click
    # only then. The default site (http://localhost, for a laptop's Maildir) says nothing.
    import logging

    from digest import mail

    mail._warn_plain_links.cache_clear()
    plain = email_settings(site={"base_url": "http://digest.example.org"},
                           mail={"transport": "smtp"})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="digest.mail"):
        for _ in range(2):
            mail.make_transport(plain).close()
        mail.make_transport(email_settings(mail={"transport": "smtp"})).close()  # https
        mail.make_transport(email_settings(site={"base_url": "http://localhost:8000"})).close()
    said = [r.getMessage() for r in caplog.records if "one-click" in r.getMessage()]
    assert len(said) == 1 and "http://digest.example.org" in said[0], said
    mail._warn_plain_links.cache_clear()
