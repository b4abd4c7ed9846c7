"""Feeds: feedparser as the client, stable ids, byte-identical output, caps, hostile text, 304s."""

from __future__ import annotations

import dataclasses
import html.parser
import os
import random
import stat
import threading
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote_plus

import feedparser
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest import feed as feedmod
from digest import fsutil
from digest.errors import DigestError, NotFoundError, ValidationError
from digest.feed import (
    EPOCH,
    FeedDocument,
    FeedEntry,
    build_feed,
    build_feeds,
    conditional_response,
    feed_paths,
    feed_url,
    feed_url_path,
    paper_link,
    paper_tag_id,
    read_feed_file,
    write_feed_atomically,
    write_feeds,
)
from digest.models import Match, StoredPaper, paper_key
from digest.text import clean_text

SITE = "http://papers.example.org:8000"
BASE = datetime(2025, 11, 24, 9, 30, tzinfo=UTC)
ATOM_NS = "{http://www.w3.org/2005/Atom}"


def make_paper(i: int, title: str | None = None, **facts: object) -> StoredPaper:
    """A stored paper; its text cleaned as the parser cleans every field (digest.text policy)."""
    title = clean_text(
        title if title is not None else f"Paper number {i}: sparse attention at scale"
    )
    if isinstance(facts.get("organization"), str):
        facts["organization"] = clean_text(facts["organization"])  # type: ignore[arg-type]
    return StoredPaper(
        id=i,
        key=paper_key(title),
        title=title,
        abstract=clean_text(facts.pop("abstract", f"We study problem {i}. It is hard.")),  # type: ignore[arg-type]
        first_seen=BASE + timedelta(hours=i),
        **facts,  # type: ignore[arg-type]
    )


def make_entries(n: int) -> list[FeedEntry]:
    return [
        FeedEntry(
            make_paper(
                i, authors=i % 7 or None, upvotes=i, organization="NVIDIA" if i % 2 else None
            ),
            topics=("Efficiency",) if i % 3 else ("Efficiency", "Attention"),
            terms=("sparse", "attention"),
            added=BASE + timedelta(hours=i),
        )
        for i in range(n)
    ]


def build(entries, fmt="rss", **overrides) -> FeedDocument:
    args = dict(
        fmt=fmt,
        title="Daily Papers Digest",
        self_url=feed_url(SITE, fmt),
        site_url=SITE,
        description="New papers",
        max_items=100,
        max_bytes=2_000_000,
    )
    args.update(overrides)
    return build_feed(entries, **args)


def parsed(doc: FeedDocument):
    result = feedparser.parse(doc.body)
    assert not result.bozo, result.get("bozo_exception")
    return result


class TagCollector(html.parser.HTMLParser):
    """Collects the element names of an HTML fragment, to prove hostile markup stays text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs.extend(attrs)


def html_tags(fragment: str) -> tuple[set[str], list]:
    collector = TagCollector()
    collector.feed(fragment)
    collector.close()
    return collector.tags, collector.attrs


def raw_items(doc: FeedDocument) -> list[ET.Element]:
    root = ET.fromstring(doc.body)  # strict XML parser: raises on anything malformed
    if doc.fmt == "rss":
        return root.findall("./channel/item")
    return root.findall(f"./{ATOM_NS}entry")


def item_summary(item: ET.Element, fmt: str) -> str:
    return item.findtext("description" if fmt == "rss" else f"{ATOM_NS}summary") or ""


def item_title(item: ET.Element, fmt: str) -> str:
    return item.findtext("title" if fmt == "rss" else f"{ATOM_NS}title") or ""


# --- validity, ids, links, categories -----------------------------------------------------


@pytest.mark.parametrize("fmt,version", [("rss", "rss20"), ("atom", "atom10")])
def test_feedparser_reads_the_feed_without_complaint(fmt, version):
    doc = build(make_entries(5), fmt)
    feed = parsed(doc)
    assert feed.version == version
    assert feed.feed.title == "Daily Papers Digest"
    assert len(feed.entries) == 5
    assert doc.content_type.startswith(f"application/{fmt}+xml")
    assert doc.items == 5


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_items_carry_tag_ids_links_dates_categories_and_facts(fmt):
    entries = make_entries(4)
    feed = parsed(build(entries, fmt))
    newest = entries[-1]
    first = feed.entries[0]
    assert first.id == f"tag:papers.example.org,2025:paper/{newest.paper.key}"
    assert first.id == paper_tag_id(newest.paper.key, SITE)
    assert first.link == paper_link(newest.paper.title)
    assert first.link.startswith("https://huggingface.co/papers?q=Paper+number+3%3A+sparse")
    published = datetime(*first.published_parsed[:6], tzinfo=UTC)
    assert published == newest.added
    assert [t.term for t in first.tags] == list(newest.topics)
    summary = first.summary
    assert "Matched:" in summary and "sparse, attention" in summary
    assert "NVIDIA" in summary and "3 authors" in summary and "3 upvotes" in summary


def test_rss_guid_is_not_a_permalink():
    doc = build(make_entries(2), "rss")
    for item in raw_items(doc):
        guid = item.find("guid")
        assert guid is not None and guid.get("isPermaLink") == "false"
        assert guid.text and guid.text.startswith("tag:papers.example.org,2025:paper/")


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_self_link_is_the_served_url_and_site_link_the_site(fmt):
    self_url = "https://papers.example.org/feeds/s/Tok_en-1." + fmt
    feed = parsed(build(make_entries(1), fmt, self_url=self_url))
    links = {link.rel: link.href for link in feed.feed.links}
    assert links["self"] == self_url
    assert feed.feed.link == SITE


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_ids_are_stable_across_regenerations_and_other_content(fmt):
    entries = make_entries(6)
    before = {e.title: e.id for e in parsed(build(entries, fmt)).entries}
    # Another day: more papers, new upvotes, other topics; the same papers keep their ids.
    later = [
        replace(e, paper=replace(e.paper, upvotes=99), topics=("Other",)) for e in entries
    ] + make_entries(9)[6:]
    after = {e.title: e.id for e in parsed(build(later, fmt)).entries}
    for title, ident in before.items():
        assert after[title] == ident
    assert len(set(after.values())) == 9


def test_ids_follow_the_paper_key_not_the_spelling():
    # The same paper spelled with and without LaTeX markup has one key, hence one id.
    a = make_paper(1, "S$^{2}$FT: Efficient, Scalable and Generalizable LLM Fine-tuning")
    b = make_paper(2, "S^{2}FT: Efficient, Scalable and Generalizable LLM Fine-tuning")
    assert a.key == b.key
    assert paper_tag_id(a.key, SITE) == paper_tag_id(b.key, "https://papers.example.org/x")


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_unchanged_input_gives_byte_identical_output(fmt):
    entries = make_entries(20)
    first = build(entries, fmt)
    shuffled = entries[:]
    random.Random(7).shuffle(shuffled)
    second = build(shuffled, fmt)
    assert first.body == second.body
    assert first.etag == second.etag
    assert first.last_modified == second.last_modified == entries[-1].added


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_feed_date_is_the_newest_item_never_now(fmt):
    entries = make_entries(3)
    feed = parsed(build(entries, fmt))
    stamp = feed.feed.updated_parsed
    assert datetime(*stamp[:6], tzinfo=UTC) == entries[-1].added
    empty = build([], fmt)
    assert empty.last_modified == EPOCH
    assert empty.items == 0
    assert b"1970" in empty.body
    assert parsed(empty).entries == []


def test_dates_are_utc_whole_seconds_whatever_the_input_zone():
    paris = timezone(timedelta(hours=1))
    entry = FeedEntry(make_paper(1), added=datetime(2025, 11, 24, 11, 0, 0, 999_999, tzinfo=paris))
    naive = FeedEntry(make_paper(2), added=datetime(2025, 11, 24, 9, 0))  # SQLite: naive UTC
    doc = build([entry, naive], "rss")
    assert doc.last_modified == datetime(2025, 11, 24, 10, 0, tzinfo=UTC)
    assert b"Mon, 24 Nov 2025 10:00:00 +0000" in doc.body
    assert b"Mon, 24 Nov 2025 09:00:00 +0000" in doc.body


def test_entry_from_a_match():
    paper = make_paper(3)
    match = Match(paper_id=3, score=1.0, topics=("Efficiency",), terms=("sparse",))
    entry = FeedEntry.from_match(paper, match, added=BASE)
    assert entry == FeedEntry(paper, ("Efficiency",), ("sparse",), BASE)


def test_added_defaults_to_first_seen():
    paper = make_paper(5)
    doc = build([FeedEntry(paper)], "atom")
    assert doc.last_modified == paper.first_seen


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_newest_first(fmt):
    entries = make_entries(8)
    random.Random(1).shuffle(entries)
    feed = parsed(build(entries, fmt))
    dates = [e.published_parsed for e in feed.entries]
    assert dates == sorted(dates, reverse=True)


def test_a_paper_listed_twice_is_one_item_with_both_reasons():
    paper = make_paper(1)
    entries = [
        FeedEntry(paper, topics=("A",), terms=("sparse",), added=BASE),
        FeedEntry(paper, topics=("B",), terms=("scale",), added=BASE + timedelta(hours=1)),
    ]
    feed = parsed(build(entries, "atom"))
    assert len(feed.entries) == 1
    assert sorted(t.term for t in feed.entries[0].tags) == ["A", "B"]
    assert datetime(*feed.entries[0].updated_parsed[:6], tzinfo=UTC) == BASE + timedelta(hours=1)


def test_building_both_formats_at_once_gives_the_same_documents():
    entries = make_entries(12)
    urls = {fmt: feed_url(SITE, fmt) for fmt in ("rss", "atom")}
    for cap in (2_000_000, 6_000, 10):
        both = build_feeds(
            entries,
            self_urls=urls,
            title="Daily Papers Digest",
            site_url=SITE,
            description="New papers",
            max_items=100,
            max_bytes=cap,
        )
        assert both["rss"] == build(entries, "rss", max_bytes=cap)
        assert both["atom"] == build(entries, "atom", max_bytes=cap)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fast_paths_agree_with_the_plain_definitions(text):
    text = clean_text(text)
    expected = " ".join(text.split()) or "(untitled paper)"
    assert paper_link(text) == "https://huggingface.co/papers?q=" + quote_plus(expected)


# --- caps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_item_count_is_capped_keeping_the_newest(fmt):
    entries = make_entries(30)
    doc = build(entries, fmt, max_items=10)
    feed = parsed(doc)
    assert doc.items == len(feed.entries) == 10
    kept = {e.id for e in feed.entries}
    assert kept == {paper_tag_id(e.paper.key, SITE) for e in entries[-10:]}


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_size_cap_drops_the_oldest_items_until_it_fits(fmt):
    entries = make_entries(30)
    full = build(entries, fmt)
    cap = len(full.body) // 2
    doc = build(entries, fmt, max_bytes=cap)
    assert len(doc.body) <= cap
    feed = parsed(doc)
    assert 0 < doc.items == len(feed.entries) < 30
    kept = [e.id for e in feed.entries]
    assert kept == [paper_tag_id(e.paper.key, SITE) for e in reversed(entries)][: doc.items]
    # Nothing more would fit: one more item goes over the cap.
    one_more = build(entries, fmt, max_items=doc.items + 1)
    assert len(one_more.body) > cap


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=0, max_value=12),
    fraction=st.floats(min_value=0.0, max_value=1.2),
    fmt=st.sampled_from(["rss", "atom"]),
)
def test_size_cut_equals_serialising_fewer_entries(n, fraction, fmt):
    entries = make_entries(n)
    full = build(entries, fmt)
    cap = int(len(full.body) * fraction)
    doc = build(entries, fmt, max_bytes=cap)
    fewer = build(entries, fmt, max_items=doc.items)
    assert doc.body == fewer.body
    assert doc.last_modified == fewer.last_modified
    assert len(doc.body) <= cap or doc.items == 0


def test_header_alone_over_the_cap_gives_an_empty_valid_feed():
    doc = build(make_entries(3), "rss", max_bytes=10)
    assert doc.items == 0 and doc.last_modified == EPOCH
    assert parsed(doc).entries == []


def test_negative_caps_are_refused():
    with pytest.raises(ValidationError):
        build(make_entries(1), max_items=-1)


def test_runaway_abstract_is_shortened():
    paper = make_paper(1, abstract="word " * 5_000)
    summary = parsed(build([FeedEntry(paper)], "rss")).entries[0].summary
    assert len(summary) < 5_200 and summary.rstrip("</p>").endswith("…")


# --- hostile text -------------------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "]]><script>alert(2)</script><![CDATA[",
    "a\x00b\x01c\x08d\x0be\x0cf\x0eg\x1fh",
    "fine \ufffe\uffff end",
    "\u202eevil override\u202c and \u2067isolate\u2069",
    "שלום עולם and مرحبا بالعالم \u200f mark",
    "&amp; &lt;b&gt; &#x3c;script&#x3e; &nonsense;",
    "lone \ud800 surrogate",
    'javascript:alert("x")',
]


@pytest.mark.parametrize("fmt", ["rss", "atom"])
@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_parses_cleanly_and_stays_inert(fmt, text):
    paper = make_paper(
        1, f"Title {text}", abstract=f"Abstract {text}", organization=f"Org {text}", authors=2
    )
    topics, terms = (clean_text(f"Topic {text}"),), (clean_text(f"term {text}"),)
    entry = FeedEntry(paper, topics=topics, terms=terms, added=BASE)
    doc = build([entry], fmt, title=f"Feed {text}", description=f"Desc {text}")
    feed = parsed(doc)
    assert len(feed.entries) == 1
    (item,) = raw_items(doc)
    expected = " ".join(clean_text(f"Title {text}").split())
    assert item_title(item, fmt) == expected
    # The description is HTML built by us: only our own elements, no attributes; the hostile
    # markup is text inside it.
    summary = item_summary(item, fmt)
    tags, attrs = html_tags(summary)
    assert tags <= {"p", "strong"} and attrs == []
    assert "Abstract" in summary and "Org" in summary and "Topic" in summary and "term" in summary
    for bad in "\x00\x01\x0b\x1f\ufffe\u202e\u2067":
        assert bad not in doc.body.decode("utf-8")


def test_right_to_left_letters_survive_and_overrides_do_not():
    text = "\u202eשלום\u202c مرحبا \u200f"
    assert clean_text(text) == "שלום مرحبا \u200f"
    (item,) = raw_items(build([FeedEntry(make_paper(1, text))], "atom"))
    assert item_title(item, "atom") == "שלום مرحبا \u200f".strip()


@settings(max_examples=60, deadline=None)
@given(
    title=st.text(min_size=1, max_size=60),
    abstract=st.text(max_size=200),
    topic=st.text(max_size=20),
    fmt=st.sampled_from(["rss", "atom"]),
)
def test_any_text_gives_a_well_formed_feed(title, abstract, topic, fmt):
    paper = make_paper(1, title, abstract=abstract, organization=topic or None)
    topic = clean_text(topic)
    doc = build([FeedEntry(paper, topics=(topic,) if topic else (), terms=(topic,))], fmt)
    (item,) = raw_items(doc)  # ElementTree is strict: this proves well-formedness
    assert item_title(item, fmt) == (" ".join(clean_text(title).split()) or "(untitled paper)")
    tags, attrs = html_tags(item_summary(item, fmt))
    assert tags <= {"p", "strong"} and attrs == []
    assert not feedparser.parse(doc.body).bozo


_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=80) | st.sampled_from(
    ["<script>alert(1)</script>", "]]>", "a\r\nb\tc", "x\"y'z & w", "\u202eevil", "\x0b\x85"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.tuples(_ANY_TEXT, _ANY_TEXT, st.lists(_ANY_TEXT, max_size=3)), max_size=4),
    fmt=st.sampled_from(["rss", "atom"]),
)
def test_items_are_written_exactly_as_feedgen_writes_them(texts, fmt):
    entries = [
        FeedEntry(
            make_paper(i, f"{title} {i}", abstract=abstract, upvotes=i),
            topics=tuple(map(clean_text, topics)),
            terms=tuple(map(clean_text, topics[:1])),
        )
        for i, (title, abstract, topics) in enumerate(texts)
    ]
    args = {"fmt": fmt, "title": "T <&>", "self_url": feed_url(SITE, fmt), "site_url": SITE,
            "description": "New papers"}  # fmt: skip
    reference = feedmod.reference_document(entries, **args)
    assert build_feed(entries, max_items=100, max_bytes=1 << 30, **args).body == reference


def test_site_url_without_a_host_is_refused():
    with pytest.raises(ValidationError, match="no host"):
        build(make_entries(1), site_url="/relative")


def test_unknown_format_is_refused():
    with pytest.raises(ValidationError, match="unknown feed format"):
        build(make_entries(1), fmt="json")


# --- layout and writing -------------------------------------------------------------------


def test_layout_under_public(tmp_path):
    paths = feed_paths(tmp_path)
    assert paths.all("rss") == tmp_path / "feeds" / "all.rss"
    assert paths.all("atom") == tmp_path / "feeds" / "all.atom"
    assert paths.subscriber("AbC_-9", "atom") == tmp_path / "feeds" / "s" / "AbC_-9.atom"
    assert feed_url_path("rss") == "/feeds/all.rss"
    assert feed_url_path("atom", "tok") == "/feeds/s/tok.atom"
    assert feed_url("https://x.org/", "rss", "tok") == "https://x.org/feeds/s/tok.rss"


@pytest.mark.parametrize("token", ["../etc/passwd", "a/b", "", "a.b", "x" * 200, "é"])
def test_tokens_that_could_escape_the_folder_are_refused(tmp_path, token):
    with pytest.raises(ValidationError, match="invalid feed token"):
        feed_paths(tmp_path).subscriber(token, "rss")
    with pytest.raises(ValidationError):
        feed_url_path("rss", token)


def test_write_is_atomic_and_skipped_when_unchanged(tmp_path):
    path = feed_paths(tmp_path).all("rss")
    doc = build(make_entries(3))
    assert write_feed_atomically(path, doc) is True
    assert path.read_bytes() == doc.body
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    old = 1_000_000_000
    os.utime(path, (old, old))
    assert write_feed_atomically(path, build(make_entries(3))) is False
    assert path.stat().st_mtime == old  # untouched, so static servers keep their ETag
    newer = build(make_entries(4))
    assert write_feed_atomically(path, newer) is True
    assert path.read_bytes() == newer.body
    assert sorted(p.name for p in path.parent.iterdir()) == ["all.rss"]  # no temp file left


def test_a_failed_write_keeps_the_old_feed_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = feed_paths(tmp_path).all("atom")
    old = build(make_entries(2), "atom")
    write_feed_atomically(path, old)

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", broken_replace)
    with pytest.raises(DigestError, match=r"all\.atom: cannot write the feed"):
        write_feed_atomically(path, build(make_entries(5), "atom"))
    assert path.read_bytes() == old.body
    assert sorted(p.name for p in path.parent.iterdir()) == ["all.atom"]


def test_write_feeds_writes_both_formats_with_matching_self_links(tmp_path):
    common = dict(base_url=SITE, title="T", description="D", max_items=50, max_bytes=1_000_000)
    changed = write_feeds(tmp_path, make_entries(3), **common)
    assert changed == {"rss": True, "atom": True}
    assert write_feeds(tmp_path, make_entries(3), **common) == {"rss": False, "atom": False}
    write_feeds(tmp_path, make_entries(2), token="secretTOKEN", **common)
    paths = feed_paths(tmp_path)
    for fmt in ("rss", "atom"):
        private = feedparser.parse(paths.subscriber("secretTOKEN", fmt).read_bytes())
        assert not private.bozo
        self_links = [link.href for link in private.feed.links if link.rel == "self"]
        assert self_links == [f"{SITE}/feeds/s/secretTOKEN.{fmt}"]
        assert paths.all(fmt).exists()


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_a_written_feed_reads_back_with_the_same_validators(tmp_path, fmt):
    doc = build(make_entries(4), fmt)
    path = feed_paths(tmp_path).all(fmt)
    write_feed_atomically(path, doc)
    again = read_feed_file(path)
    assert (again.etag, again.last_modified, again.items, again.fmt) == (
        doc.etag,
        doc.last_modified,
        doc.items,
        fmt,
    )
    empty = build([], fmt)
    write_feed_atomically(path, empty)
    assert read_feed_file(path).last_modified == EPOCH
    with pytest.raises(NotFoundError, match="no such feed"):
        read_feed_file(tmp_path / "missing.rss")


# --- conditional GET ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> FeedDocument:
    return build(make_entries(3))


def http_date(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def test_etag_is_strong_and_headers_are_complete(doc):
    assert doc.etag.startswith('"') and doc.etag.endswith('"') and not doc.etag.startswith("W/")
    headers = doc.headers()
    assert headers["ETag"] == doc.etag
    assert headers["Last-Modified"] == "Mon, 24 Nov 2025 11:30:00 GMT"
    assert headers["Content-Type"] == "application/rss+xml; charset=utf-8"


@pytest.mark.parametrize(
    "inm_template,expected",
    [
        ("{etag}", True),
        ("W/{etag}", True),
        ('"other", {etag}', True),
        ('"a",W/{etag} , "b"', True),
        ("*", True),
        ('"other"', False),
        ('"other", W/"nope"', False),
        ("{bare}", True),  # a client that lost the quotes
        ("garbage", False),
    ],
)
def test_if_none_match(doc, inm_template, expected):
    header = inm_template.format(etag=doc.etag, bare=doc.etag.strip('"'))
    assert conditional_response(doc, header, None) is expected


@pytest.mark.parametrize(
    "offset,expected",
    [(timedelta(0), True), (timedelta(seconds=1), True), (timedelta(seconds=-1), False)],
)
def test_if_modified_since(doc, offset, expected):
    assert conditional_response(doc, None, http_date(doc.last_modified + offset)) is expected


def test_if_modified_since_in_the_old_formats(doc):
    assert conditional_response(doc, None, "Monday, 24-Nov-25 11:30:00 GMT") is True
    assert conditional_response(doc, None, "Mon Nov 24 11:30:00 2025") is True
    assert conditional_response(doc, None, "Mon Nov 24 11:29:59 2025") is False


def test_if_none_match_takes_precedence_over_if_modified_since(doc):
    fresh_date = http_date(doc.last_modified + timedelta(days=1))
    assert conditional_response(doc, '"stale"', fresh_date) is False
    assert conditional_response(doc, doc.etag, http_date(EPOCH)) is True


@pytest.mark.parametrize("header", [None, "", "   ", "not a date", "Mon, 99 Nov 2025 10:00:00 GMT"])
def test_missing_or_invalid_validators_mean_a_full_response(doc, header):
    assert conditional_response(doc, header, header) is False


@settings(max_examples=50, deadline=None)
@given(
    others=st.lists(st.text("abcdef0123456789", min_size=1, max_size=8), max_size=4),
    weak=st.booleans(),
    position=st.integers(min_value=0, max_value=4),
    spaces=st.sampled_from(["", " ", "  "]),
)
def test_our_etag_anywhere_in_a_list_matches(doc, others, weak, position, spaces):
    tags = [f'"{o}"' for o in others]
    tags.insert(min(position, len(tags)), ("W/" if weak else "") + doc.etag)
    assert conditional_response(doc, f"{spaces},{spaces}".join(tags), None) is True
    assert conditional_response(doc, ", ".join(f'"{o}"' for o in others) or '"x"', None) is False


class _FeedHandler(BaseHTTPRequestHandler):
    """A minimal server of a written feed, the way the web app is meant to use this module."""

    feed_file: Path

    def do_GET(self):
        doc = read_feed_file(self.feed_file)
        inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
        status = 304 if conditional_response(doc, inm, ims) else 200
        self.send_response(status)
        for name, value in doc.headers().items():
            self.send_header(name, value)
        if status == 200:
            self.send_header("Content-Length", str(len(doc.body)))
        self.end_headers()
        if status == 200:
            self.wfile.write(doc.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_feedparser_repoll_gets_304_until_the_feed_changes(tmp_path, fmt):
    path = feed_paths(tmp_path).all(fmt)
    write_feed_atomically(path, build(make_entries(3), fmt))
    handler = type("Handler", (_FeedHandler,), {"feed_file": path})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/feeds/all.{fmt}"
        first = feedparser.parse(url)
        assert first.status == 200 and not first.bozo and len(first.entries) == 3
        again = feedparser.parse(url, etag=first.etag, modified=first.modified)
        assert again.status == 304 and again.entries == []
        only_date = feedparser.parse(url, modified=first.modified)
        assert only_date.status == 304
        write_feed_atomically(path, build(make_entries(4), fmt))
        changed = feedparser.parse(url, etag=first.etag, modified=first.modified)
        assert changed.status == 200 and len(changed.entries) == 4
        assert {e.id for e in first.entries} < {e.id for e in changed.entries}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- real papers --------------------------------------------------------------------------


def test_a_realistic_paper_reads_as_expected():
    paper = make_paper(
        1,
        "Nemotron-Flash: Towards Latency-Optimal Hybrid Small Language Models",
        abstract="Efficient deployment of small language models (SLMs) is essential...",
        organization="NVIDIA",
        organization_id="nvidia",
        published=date(2025, 11, 24),
        upvotes=2,
    )
    entry = FeedEntry(paper, topics=("Efficiency",), terms=("latency",), added=BASE)
    item = parsed(build([entry], "rss")).entries[0]
    assert item.title == paper.title
    assert "NVIDIA · 2 upvotes · published 2025-11-24" in item.summary
    assert "authors" not in item.summary
    assert item.link == (
        "https://huggingface.co/papers?q=Nemotron-Flash%3A+Towards+Latency-Optimal+Hybrid"
        "+Small+Language+Models"
    )


DUMPS = Path(__file__).resolve().parents[2] / "shared" / "dumps"


@pytest.mark.skipif(not DUMPS.is_dir(), reason=f"shared dumps not found at {DUMPS}")
@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_the_shared_dumps_make_one_item_per_unique_paper(fmt):
    from digest.parse import parse_file

    entries = []
    for day, path in enumerate(sorted(DUMPS.glob("*.txt"))):
        for p in parse_file(path).papers:
            stored = StoredPaper(
                id=len(entries),
                key=p.key,
                title=p.title,
                abstract=p.abstract,
                first_seen=BASE + timedelta(days=day),
                authors=p.authors,
                organization=p.organization,
                organization_id=p.organization_id,
                published=p.published,
                upvotes=p.upvotes,
            )
            entries.append(FeedEntry(stored))
    doc = build(entries, fmt, max_items=10_000, max_bytes=10_000_000)
    feed = parsed(doc)
    assert doc.items == len(feed.entries) == 361  # the README's count of unique papers
    assert len({e.id for e in feed.entries}) == 361
    assert build(list(reversed(entries)), fmt, max_items=10_000, max_bytes=10_000_000) == doc
    nemotron = [e for e in feed.entries if e.title.startswith("Nemotron-Flash")]
    assert len(nemotron) == 1 and "NVIDIA" in nemotron[0].summary


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_rows_stored_before_the_text_policy_still_give_a_valid_feed(fmt):
    # Older versions stored text the parser now cleans: form feeds, U+FFFE, bidi overrides.
    dirty = "old \x0c row \ufffe with \u202eoverride"
    paper = dataclasses.replace(
        make_paper(1), title=f"Title {dirty}", abstract=f"Abstract {dirty}.", organization=dirty
    )
    entry = FeedEntry(paper, topics=(f"Topic {dirty}",), terms=("row",), added=BASE)
    doc = build([entry], fmt)
    assert len(parsed(doc).entries) == 1  # parsed() also checks feedparser saw no error
    assert "\ufffe" not in doc.body.decode() and "\x0c" not in doc.body.decode()
    args = {"fmt": fmt, "title": "Daily Papers Digest", "self_url": feed_url(SITE, fmt),
            "site_url": SITE, "description": "New papers"}  # fmt: skip
    assert doc.body == feedmod.reference_document([entry], **args)  # feedgen's bytes
