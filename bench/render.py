"""Benchmark: complete digest messages per second, and SMTP throughput to a loopback receiver.

    .venv/bin/python bench/render.py [--subscribers 10000] [--naive 1000] [--smtp 4000]
                                     [--connections 4] [--receivers 2]

Our path: templates loaded with CSS inlined once (Renderer), per-paper views cached, the message
assembled directly as bytes (MessageBuilder). The naive path, measured in the same run on the
same digests: render the un-inlined templates, run css_inline on every email, build an
`email.message.EmailMessage` and serialise it. Papers come from ../shared/dumps when present
(else synthetic); each subscriber gets about 10 of them with highlights, ranked, under 1-3 topics.

SMTP: an aiosmtpd receiver in separate processes on 127.0.0.1 (SO_REUSEPORT, so several
processes share the port and the receiver is not the bottleneck), counting messages; our
SmtpTransport with 1 connection, then SmtpPool with N.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing as mp
import random
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import css_inline  # noqa: E402
from _common import free_port, sink_protocol  # noqa: E402

from digest import templates  # noqa: E402
from digest.config import SmtpSettings, build_settings  # noqa: E402
from digest.highlight import merge_spans  # noqa: E402
from digest.links import LinkSigner, links_for  # noqa: E402
from digest.mail import MessageBuilder, SmtpPool, SmtpTransport  # noqa: E402
from digest.models import Digest, DigestItem, Match, StoredPaper, Subscriber, Topic  # noqa: E402
from digest.render import Renderer  # noqa: E402

DUMPS = ROOT.parent / "shared" / "dumps"
TOPICS = [
    "Sparse attention",
    "Speculative decoding",
    "Quantization",
    "Diffusion models",
    "Agents",
    "Reasoning",
    "Multimodal",
    "Robotics",
]
WORD = re.compile(r"[A-Za-z]{5,}")


def load_papers() -> list[StoredPaper]:
    """Papers from the shared dumps (via the project's parser), else synthetic ones."""
    papers: list[StoredPaper] = []
    if DUMPS.is_dir():
        from digest.parse import parse_file

        seen = set()
        for path in sorted(DUMPS.glob("*.txt")):
            for p in parse_file(path).papers:
                if p.key in seen:
                    continue
                seen.add(p.key)
                papers.append(
                    StoredPaper(
                        id=len(papers) + 1,
                        key=p.key,
                        title=p.title,
                        abstract=p.abstract,
                        first_seen=datetime(2025, 11, 24, tzinfo=UTC),
                        authors=p.authors,
                        organization=p.organization,
                        organization_id=p.organization_id,
                        published=p.published,
                        upvotes=p.upvotes,
                    )
                )
    if not papers:
        rng = random.Random(1)
        words = [
            "sparse",
            "attention",
            "latency",
            "model",
            "decoding",
            "draft",
            "quantization",
            "agent",
        ]
        for i in range(300):
            title = " ".join(rng.choice(words).title() for _ in range(8))
            abstract = ". ".join(" ".join(rng.choices(words, k=14)) for _ in range(6)) + "."
            papers.append(
                StoredPaper(
                    i + 1,
                    f"k{i}",
                    title,
                    abstract.capitalize(),
                    datetime(2025, 11, 24, tzinfo=UTC),
                    authors=rng.choice([None, 3, 12]),
                    organization=rng.choice([None, "NVIDIA", "Meta"]),
                    published=date(2025, 11, 24),
                    upvotes=rng.randint(0, 90),
                )
            )
    return papers


def spans(text: str, words: list[str]) -> tuple[tuple[int, int], ...]:
    """Every occurrence of the words, sorted and merged as the matcher gives them."""
    found = [(m.start(), m.end()) for w in words for m in re.finditer(re.escape(w), text)]
    return merge_spans(found)


def make_digests(n: int, papers: list[StoredPaper], rng: random.Random) -> list[Digest]:
    """n subscribers, each with about 10 ranked papers, highlighted words and 1-3 topics."""
    digests = []
    for i in range(n):
        names = rng.sample(TOPICS, rng.randint(1, 3))
        sub = Subscriber(
            id=i,
            email=f"reader{i}@example.org",
            name=f"Reader {i}",
            status="active",
            cadence="daily",
            time="07:00",
            tz="Europe/Paris",
            weekday=0,
            created_at=datetime(2025, 11, 1, tzinfo=UTC),
            token=f"token{i:08d}",
            topics=tuple(Topic(t, t.lower()) for t in names),
        )
        items = []
        for rank, paper in enumerate(rng.sample(papers, rng.randint(8, 12))):
            words = rng.sample(WORD.findall(paper.title + " " + paper.abstract)[:40], 2)
            match = Match(
                paper_id=paper.id,
                score=100.0 - rank,
                topics=tuple(rng.sample(names, rng.randint(1, len(names)))),
                terms=tuple(words),
                title_spans=spans(paper.title, words),
                abstract_spans=spans(paper.abstract, words),
            )
            items.append(DigestItem(paper, match))
        digests.append(
            Digest(
                id=i + 1,
                subscriber=sub,
                created_at=datetime(2025, 11, 24, 6, tzinfo=UTC),
                message_id=f"<digest-{i + 1}-0123456789abcdef@example.org>",
                items=items,
            )
        )
    return digests


def messages(settings, digests) -> Iterator:
    """Each digest as a complete message, as a sender builds it: signed links, render, bytes
    (the Renderer and MessageBuilder are prepared when the first message is asked for)."""
    renderer = Renderer(settings)
    builder = MessageBuilder(settings)
    signer = LinkSigner("bench secret")
    yield None  # prepared
    for digest in digests:
        links = links_for(settings, signer, digest.subscriber)
        yield builder.build(renderer.render(digest, links), digest, links)


def our_path(settings, digests) -> tuple[float, int]:
    """Seconds for every message and the bytes built; each message is dropped once built, as a
    sender hands it on."""
    built = messages(settings, digests)
    next(built)
    start = time.process_time()
    size = sum(len(msg.data) for msg in built)
    return time.process_time() - start, size


def build_messages(settings, digests) -> list:
    """Complete messages for the SMTP runs (built outside any timing)."""
    return list(messages(settings, digests))[1:]


def naive_path(settings, digests) -> float:
    """Seconds for render (templates not inlined) + css_inline per email + EmailMessage."""
    renderer = Renderer(settings)
    env = templates.make_environment(settings)  # the plain loader: no CSS inlined at load
    from digest.render import wrap

    env.filters["wrap"] = wrap
    renderer.html_template = templates.html_template(env, "email/digest.html")
    css, _ = templates.template_source(env, "email/style.css")
    inliner = css_inline.CSSInliner(load_remote_stylesheets=False, extra_css=css)
    signer = LinkSigner("bench secret")
    start = time.process_time()
    for digest in digests:
        links = links_for(settings, signer, digest.subscriber)
        rendered = renderer.render(digest, links)
        html = inliner.inline(rendered.html)
        msg = EmailMessage()
        msg["From"] = settings.mail.from_addr
        msg["To"] = f"{digest.subscriber.name} <{digest.subscriber.email}>"
        msg["Subject"] = rendered.subject
        msg["Date"] = digest.created_at
        msg["Message-ID"] = digest.message_id
        msg["List-Id"] = f"{settings.site.title} <{settings.site.list_id}>"
        msg["List-Unsubscribe"] = f"<{links.unsubscribe_url}>, <{links.unsubscribe_mailto}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        msg.set_content(rendered.text)
        msg.add_alternative(html, subtype="html")
        msg.as_bytes()
    return time.process_time() - start


# --- SMTP ------------------------------------------------------------------------------------


def _receiver(port: int, ready, counter) -> None:
    from aiosmtpd.controller import Controller

    class Counting:
        async def handle_DATA(self, server, session, envelope):
            with counter.get_lock():
                counter.value += 1
            return "250 OK"

    class SharedPort(Controller):
        # Several receiver processes listen on one port; the kernel spreads the connections.
        def _create_server(self):
            return self.loop.create_server(
                self._factory_invoker, host=self.hostname, port=self.port, reuse_port=True
            )

    controller = SharedPort(Counting(), hostname="127.0.0.1", port=port, ready_timeout=3)
    # A readiness probe may land on a sibling process sharing the port; this one is up anyway.
    with contextlib.suppress(TimeoutError):
        controller.start()

    ready.set()
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


def _sink(port: int, ready, counter) -> None:
    """A minimal SMTP sink (asyncio, DATA read in bulk): shows the sender's own limit."""
    import asyncio

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            sink_protocol(counter), "127.0.0.1", port, reuse_port=True
        )
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def start_receivers(n: int, target=_receiver):
    port = free_port()
    counter = mp.Value("l", 0)
    procs = []
    for _ in range(n):
        ready = mp.Event()
        p = mp.Process(target=target, args=(port, ready, counter), daemon=True)
        p.start()
        procs.append(p)
        if not ready.wait(20):
            for q in procs:
                q.terminate()
            sys.exit("the SMTP receiver did not start")
    return port, counter, procs


def smtp_rate(smtp: SmtpSettings, messages, connections: int, counter) -> tuple[float, bool, float]:
    before = counter.value
    cpu = time.process_time()
    transport = SmtpPool(smtp, connections=connections) if connections > 1 else SmtpTransport(smtp)
    start = time.perf_counter()
    failures = sum(1 for d in transport.send_many(messages) if d.error or not d.result.ok)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    transport.close()
    time.sleep(0.2)
    got = counter.value - before
    ok = not failures and got == len(messages)
    if not ok:
        print(f"  FAILED: {failures} failures, receiver counted {got} of {len(messages)}")
    return len(messages) / elapsed, ok, cpu / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--naive", type=int, default=1_000, help="digests for the naive path")
    ap.add_argument("--smtp", type=int, default=4_000, help="messages per SMTP run (0: skip)")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--receivers", type=int, default=2, help="receiver processes")
    args = ap.parse_args()

    settings = build_settings(
        {
            "site": {"base_url": "https://digest.example.org"},
            "mail": {"from_addr": "Daily Papers <digest@example.org>"},
        }
    )
    papers = load_papers()
    rng = random.Random(7)
    digests = make_digests(args.subscribers, papers, rng)
    n_items = sum(len(d.items) for d in digests)
    print(
        f"{len(digests)} digests, {n_items / len(digests):.1f} papers each, "
        f"from {len(papers)} papers ({'shared dumps' if DUMPS.is_dir() else 'synthetic'})"
    )

    # The digests are fixtures built up front; freezing them keeps the garbage collector from
    # rescanning 10k digests during the timed loops (a sender streams them instead).
    gc.collect()
    gc.freeze()
    ours_s, size = our_path(settings, digests)
    size /= len(digests)
    ours_rate = len(digests) / ours_s
    print(
        f"our path:   {ours_rate:9,.0f} messages/s  ({ours_s * 1e6 / len(digests):6.1f} us each, "
        f"{size / 1024:.1f} KiB average, CPU time of one core)"
    )
    naive_digests = digests[: args.naive]
    naive_s = naive_path(settings, naive_digests)
    naive_rate = len(naive_digests) / naive_s
    print(
        f"naive path: {naive_rate:9,.0f} messages/s  "
        f"({naive_s * 1e6 / len(naive_digests):6.1f} us each, {len(naive_digests)} digests)"
    )
    print(f"ratio: our path is {ours_rate / naive_rate:.1f}x the naive path")
    print(f"target >= 5,000 messages/s on one core: {'met' if ours_rate >= 5000 else 'NOT met'}")

    if args.smtp:
        batch = build_messages(settings, digests[: args.smtp])
        for label, target in (("aiosmtpd", _receiver), ("minimal asyncio sink", _sink)):
            port, counter, procs = start_receivers(args.receivers, target)
            smtp = SmtpSettings(host="127.0.0.1", port=port, timeout_seconds=30.0)
            one, ok1, busy1 = smtp_rate(smtp, batch, 1, counter)
            many, ok2, busy2 = smtp_rate(smtp, batch, args.connections, counter)
            for p in procs:
                p.terminate()
            print(
                f"SMTP to loopback {label} ({args.receivers} receiver processes), "
                f"{len(batch)} messages:\n"
                f"  1 connection {one:,.0f} msg/s; {args.connections} connections "
                f"{many:,.0f} msg/s ({many / one:.1f}x); sender CPU busy {busy1:.0%} / "
                f"{busy2:.0%} of wall time"
            )
            met = max(one, many) >= 2000 and ok1 and ok2
            print(f"  target >= 2,000 messages/s over SMTP: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
