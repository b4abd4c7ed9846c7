"""Benchmark feed generation: 10,000-entry RSS and Atom feeds against plain serialisers.

Entries are the distinct papers of ../shared/dumps (synthetic ones when absent), repeated with
varied titles, facts, topics and matched words up to N entries. Timed in this process, best of R
rounds (every case runs once per round, so all share a busy machine alike), wall and CPU time,
for each format:

- build_feed: digest.feed.build_feed (sort, sanitise, description HTML, feedgen head, items,
  hash), uncapped (max_items = N, max_bytes unlimited) and with the default 2 MB size cap;
- build_feeds: both formats in one call (entries prepared and handed to feedgen once), per feed;
- of which prep: our per-entry text work alone (clean_text, description HTML, link);
- serialise: the document alone from ready items (feedgen's head, our item writer);
- baseline feedgen: digest.feed.reference_document, every item handed to feedgen (FeedEntry
  objects, lxml tree, rss_str / atom_str), as build_feed did before it wrote items itself: the
  same bytes;
- baseline etree: the same items (same prepared text) built with xml.etree.ElementTree and
  serialised with ElementTree.tostring;
- baseline strings: the same items as f-strings with xml.sax.saxutils.escape, joined.

Run: .venv/bin/python bench/feed.py [--entries N] [--repeat R]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digest import feed as feedmod  # noqa: E402
from digest.feed import FeedEntry, build_feed, build_feeds, paper_link  # noqa: E402
from digest.models import StoredPaper, paper_key  # noqa: E402
from digest.text import clean_text  # noqa: E402

DUMPS = ROOT.parent / "shared" / "dumps"
SITE = "https://papers.example.org"
BASE = datetime(2025, 11, 24, 8, 0, tzinfo=UTC)
TOPICS = ("Efficiency", "Attention", "Speech", "Agents", "Diffusion", "Reasoning")


def source_papers() -> list[tuple[str, str]]:
    """(title, abstract) of every distinct paper of the shared dumps, or synthetic ones."""
    try:
        from digest.parse import parse_file

        seen: set[str] = set()
        out: list[tuple[str, str]] = []
        for path in sorted(DUMPS.glob("*.txt")):
            for p in parse_file(path).papers:
                if p.key not in seen:
                    seen.add(p.key)
                    out.append((p.title, p.abstract))
        if out:
            return out
    except Exception as exc:  # the bench still runs without the dumps or the parser
        print(f"(no shared dumps: {exc}; using synthetic papers)")
    sentence = "We propose a sparse attention method that reduces latency at scale. "
    return [(f"Synthetic paper {i} on efficient inference", sentence * 18) for i in range(300)]


def make_entries(n: int) -> list[FeedEntry]:
    """N entries with distinct keys, realistic text and varied facts and reasons."""
    sources = source_papers()
    entries = []
    for i in range(n):
        title, abstract = sources[i % len(sources)]
        if i >= len(sources):
            title = f"{title} (variant {i // len(sources)})"
        paper = StoredPaper(
            id=i,
            key=paper_key(title),
            title=title,
            abstract=abstract,
            first_seen=BASE + timedelta(minutes=i),
            authors=(i % 9) or None,
            organization="NVIDIA" if i % 4 == 0 else None,
            organization_id="nvidia" if i % 4 == 0 else None,
            published=date(2025, 11, 1) + timedelta(days=i % 28),
            upvotes=i % 50,
        )
        topics = (TOPICS[i % 6],) if i % 3 else (TOPICS[i % 6], TOPICS[(i + 1) % 6])
        words = title.split()
        entries.append(FeedEntry(paper, topics, tuple(words[:2]), paper.first_seen))
    return entries


def interleaved(rounds: int, cases: dict[str, Callable[[], object]]) -> dict[str, tuple]:
    """Best wall and CPU time per case over `rounds` rounds, each round running every case once.

    Interleaving gives every case the same share of a busy machine's quiet moments; CPU time of
    this process is printed too, as it is less disturbed by other processes than wall time.
    """
    best: dict[str, list] = {name: [float("inf"), float("inf"), None] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            result = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            slot = best[name]
            slot[0], slot[1], slot[2] = min(slot[0], wall), min(slot[1], cpu), result
    return {name: tuple(v) for name, v in best.items()}


def prepare(entries: list[FeedEntry]) -> list[tuple]:
    """Our per-entry text work, shared by build_feed and both baselines."""
    out = []
    for e in entries:
        p = e.paper
        out.append(
            (
                feedmod.paper_tag_id(p.key, SITE),
                " ".join(clean_text(p.title).split()),
                paper_link(p.title),
                feedmod._summary_html(e),
                [clean_text(t) for t in e.topics],
                e.added,
            )
        )
    return out


def baseline_etree(entries: list[FeedEntry], fmt: str) -> bytes:
    """The same items with xml.etree.ElementTree (no sort/merge/caps, text prepared as ours)."""
    items = prepare(entries)
    if fmt == "rss":
        root = ET.Element("rss", version="2.0")
        channel = ET.SubElement(root, "channel")
        ET.SubElement(channel, "title").text = "Daily Papers Digest"
        ET.SubElement(channel, "lastBuildDate").text = format_datetime(items[0][5])
        for ident, title, link, summary, topics, added in items:
            item = ET.SubElement(channel, "item")
            ET.SubElement(item, "title").text = title
            ET.SubElement(item, "link").text = link
            ET.SubElement(item, "description").text = summary
            ET.SubElement(item, "guid", isPermaLink="false").text = ident
            for t in topics:
                ET.SubElement(item, "category").text = t
            ET.SubElement(item, "pubDate").text = format_datetime(added)
    else:
        root = ET.Element("feed", xmlns="http://www.w3.org/2005/Atom")
        ET.SubElement(root, "title").text = "Daily Papers Digest"
        ET.SubElement(root, "updated").text = items[0][5].isoformat()
        for ident, title, link, summary, topics, added in items:
            entry = ET.SubElement(root, "entry")
            ET.SubElement(entry, "id").text = ident
            ET.SubElement(entry, "title").text = title
            ET.SubElement(entry, "updated").text = added.isoformat()
            ET.SubElement(entry, "link", href=link)
            ET.SubElement(entry, "summary", type="html").text = summary
            for t in topics:
                ET.SubElement(entry, "category", term=t)
            ET.SubElement(entry, "published").text = added.isoformat()
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def baseline_strings(entries: list[FeedEntry], fmt: str) -> bytes:
    """The same items as escaped f-strings joined: the floor for any serialiser."""
    items = prepare(entries)
    parts = []
    if fmt == "rss":
        parts.append('<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>')
        for ident, title, link, summary, topics, added in items:
            cats = "".join(f"<category>{escape(t)}</category>" for t in topics)
            parts.append(
                f"<item><title>{escape(title)}</title><link>{escape(link)}</link>"
                f"<description>{escape(summary)}</description>"
                f'<guid isPermaLink="false">{escape(ident)}</guid>{cats}'
                f"<pubDate>{format_datetime(added)}</pubDate></item>"
            )
        parts.append("</channel></rss>")
    else:
        parts.append(
            '<?xml version="1.0" encoding="UTF-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
        )
        for ident, title, link, summary, topics, added in items:
            cats = "".join(f"<category term={quoteattr(t)}/>" for t in topics)
            stamp = added.isoformat()
            parts.append(
                f"<entry><id>{escape(ident)}</id><title>{escape(title)}</title>"
                f"<updated>{stamp}</updated><link href={quoteattr(link)}/>"
                f'<summary type="html">{escape(summary)}</summary>{cats}'
                f"<published>{stamp}</published></entry>"
            )
        parts.append("</feed>")
    return "".join(parts).encode("utf-8")


def main() -> None:
    """Time build_feed and the baselines, print figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    entries = make_entries(args.entries)
    n = len(entries)
    target = 0.25 * n / 10_000
    kept = feedmod._newest_first(entries)
    items = feedmod._items(kept, "papers.example.org", 1 << 40)
    head = feedmod._FeedHead("papers.example.org", "Daily Papers Digest", SITE, "New papers")

    about = {"title": "Daily Papers Digest", "site_url": SITE, "description": "New papers"}

    def ours(fmt: str, cap: int = 1 << 40) -> object:
        return build_feed(
            entries,
            fmt=fmt,
            self_url=f"{SITE}/feeds/all.{fmt}",
            max_items=n,
            max_bytes=cap,
            **about,
        )

    def pair() -> object:
        urls = {fmt: f"{SITE}/feeds/all.{fmt}" for fmt in ("rss", "atom")}
        return build_feeds(entries, self_urls=urls, max_items=n, max_bytes=1 << 40, **about)

    cases: dict[str, Callable[[], object]] = {
        "prep": lambda: prepare(entries),
        "entries": lambda: feedmod._items(kept, "papers.example.org", 1 << 40),
        "pair": pair,
    }
    for fmt in ("rss", "atom"):
        cases[f"{fmt} ours"] = lambda fmt=fmt: ours(fmt)
        cases[f"{fmt} serialise"] = lambda fmt=fmt: feedmod._serialise(
            items, fmt, head, f"{SITE}/feeds/all.{fmt}", kept[0][0]
        )
        cases[f"{fmt} feedgen"] = lambda fmt=fmt: feedmod.reference_document(
            entries, fmt=fmt, self_url=f"{SITE}/feeds/all.{fmt}", **about
        )
        cases[f"{fmt} cap"] = lambda fmt=fmt: ours(fmt, 2_000_000)
        cases[f"{fmt} etree"] = lambda fmt=fmt: baseline_etree(entries, fmt)
        cases[f"{fmt} strings"] = lambda fmt=fmt: baseline_strings(entries, fmt)
    t = interleaved(args.repeat, cases)

    def ms(name: str) -> str:
        return f"{t[name][0] * 1000:7.1f} ms wall {t[name][1] * 1000:7.1f} ms cpu"

    print(
        f"{n:,} entries, best of {args.repeat} interleaved rounds, Python {sys.version.split()[0]}"
    )
    print(f"  our text work alone (clean, link, HTML)  {ms('prep')}")
    print(f"  + items (shared by formats)              {ms('entries')}")
    pair_wall, pair_cpu, docs = t["pair"]
    print(
        f"  build_feeds RSS + Atom together          {ms('pair')}"
        f"  = {pair_wall * 500:.1f} ms wall / {pair_cpu * 500:.1f} ms cpu per feed: target "
        f"<= {target * 1000:.0f} ms {'met' if pair_wall / 2 <= target else 'MISSED'}"
    )
    for fmt in ("rss", "atom"):
        wall, cpu, doc = t[f"{fmt} ours"]
        assert doc == docs[fmt]
        capped = t[f"{fmt} cap"][2]
        print(f"\n{fmt}: {doc.items:,} items, {len(doc.body) / 1e6:.1f} MB")
        print(
            f"  build_feed                  {ms(f'{fmt} ours')}  {n / wall:7,.0f} entries/s"
            f"  target <= {target * 1000:.0f} ms: {'met' if wall <= target else 'MISSED'}"
        )
        print(f"    of which serialise        {ms(f'{fmt} serialise')}")
        print(
            f"  build_feed, 2 MB cap        {ms(f'{fmt} cap')}  ({capped.items:,} items kept, "
            f"{len(capped.body) / 1e6:.2f} MB)"
        )
        assert t[f"{fmt} feedgen"][2] == doc.body, "feedgen's items differ from ours"
        for label, name in (("feedgen items", "feedgen"), ("xml.etree", "etree"),
                            ("f-strings", "strings")):  # fmt: skip
            base_wall, base_cpu, body = t[f"{fmt} {name}"]
            print(
                f"  baseline {label:18s} {ms(f'{fmt} {name}')}  ours/{name} = "
                f"{wall / base_wall:.2f}x wall, {cpu / base_cpu:.2f}x cpu "
                f"({len(body) / 1e6:.1f} MB)"
            )


if __name__ == "__main__":
    main()
