"""RSS and Atom feeds of papers: building (feedgen), atomic writing, layout and HTTP revalidation.

This is the only module that imports feedgen. A feed is a pure function of its entries and its
settings: item dates are when a paper was first stored and the feed's own date is the newest item's,
never "now", so an unchanged input gives byte-identical output (stable ETag, no rewrite, no
needless re-download by feed readers).

feedgen writes each document's head (channel or feed elements, namespaces, self link); the items
are written here, in exactly the bytes feedgen would write for them: reference_document hands
every item to feedgen, and tests/test_feed.py compares the two on random hostile entries.
feedgen builds an lxml element per item field, which made a 10,000-item feed cost ~550 ms;
writing the same items directly takes ~0.2 s with all the text work.
"""

from __future__ import annotations

import hashlib
import html
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from feedgen.entry import FeedEntry as FeedGenEntry
from feedgen.feed import FeedGenerator

from digest.errors import DigestError, NotFoundError, ValidationError
from digest.fsutil import atomic_write
from digest.models import Match, StoredPaper
from digest.text import clean_text, one_line
from digest.urls import (  # noqa: F401 - FORMATS, feed_url_path: part of this module's API
    FORMATS,
    FeedFormat,
    check_fmt,
    check_token,
    feed_url,
    feed_url_path,
    paper_url,
)

CONTENT_TYPES: dict[str, str] = {
    "rss": "application/rss+xml; charset=utf-8",
    "atom": "application/atom+xml; charset=utf-8",
}

# The feed date when there is no item: fixed, so an empty feed is byte-identical too.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Year of the `tag:` URIs (RFC 4151). Part of every item id: never change it, or every reader
# shows every paper again.
TAG_YEAR = "2025"

GENERATOR = "Daily Papers Digest"
UNTITLED = "(untitled paper)"

_SPACES = re.compile(r"\s+")

# feedgen formats RSS dates by switching the process locale to C and back (setlocale is process
# wide): two threads doing it at once can leave the process in the wrong locale. The web app
# serves feeds from threads, so serialisation takes turns.
_FEEDGEN_LOCK = threading.Lock()

# A feed summary is not the place for a runaway abstract; real ones are under 3,000 characters.
_MAX_ABSTRACT = 5_000


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One paper in a feed, with why it is there (topics, matched words) and when it was added."""

    paper: StoredPaper
    topics: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()
    added: datetime | None = None  # when first stored / delivered; None means paper.first_seen
    # A private feed's ("more like this", "not for me") URLs (links.FeedbackLinks); None: none.
    feedback: tuple[str, str] | None = None
    rising: bool = False  # back once because its upvotes jumped: an item of its own

    @property
    def item_key(self) -> str:
        """What the item id is made of: a rising item must not replace the paper's first one."""
        return self.paper.key + "/rising" if self.rising else self.paper.key

    @classmethod
    def from_match(
        cls, paper: StoredPaper, match: Match, added: datetime | None = None
    ) -> FeedEntry:
        """An entry for a subscriber's feed from a matching-engine result."""
        return cls(paper, tuple(match.topics), tuple(match.terms), added)


@dataclass(frozen=True, slots=True)
class FeedDocument:
    """A serialised feed with what HTTP needs to serve and revalidate it."""

    body: bytes
    etag: str  # strong: a hash of the body, quoted
    last_modified: datetime  # newest item's time (UTC, whole seconds), EPOCH when empty
    content_type: str
    fmt: FeedFormat = "rss"
    items: int = 0  # items kept after the caps

    def headers(self) -> dict[str, str]:
        """HTTP response headers for this document (ETag, Last-Modified, Content-Type)."""
        return {
            "Content-Type": self.content_type,
            "ETag": self.etag,
            "Last-Modified": format_datetime(self.last_modified, usegmt=True),
        }


@dataclass(frozen=True, slots=True)
class FeedPaths:
    """Where the static feeds live under the public folder."""

    root: Path  # PUBLIC/feeds

    def all(self, fmt: FeedFormat) -> Path:
        """The public feed of all new papers."""
        return self.root / f"all.{check_fmt(fmt)}"

    def subscriber(self, token: str, fmt: FeedFormat) -> Path:
        """A subscriber's private feed, named by their secret token."""
        return self.root / "s" / f"{check_token(token)}.{check_fmt(fmt)}"


# Browsers apply it to a feed opened directly (same origin only): a readable page saying what
# the feed is and how to subscribe. Served by `digest serve` and written beside the static feeds.
STYLESHEET_PATH = "/feeds/feed.xsl"
STYLESHEET_FILE = Path(__file__).resolve().parent / "static" / "feed.xsl"


def write_stylesheet(root: Path) -> None:
    """Put feed.xsl beside the static feeds (PUBLIC/feeds), when missing or out of date."""
    target = root / "feed.xsl"
    data = STYLESHEET_FILE.read_bytes()
    if not target.exists() or target.read_bytes() != data:
        root.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".xsl.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)


def feed_paths(public_dir: Path) -> FeedPaths:
    """The feed layout under public/: feeds/all.rss|atom and feeds/s/TOKEN.rss|atom."""
    return FeedPaths(Path(public_dir) / "feeds")


def paper_tag_id(key: str, site_url: str) -> str:
    """The permanent id of a paper in our feeds: tag:HOST,2025:paper/KEY (RFC 4151)."""
    return f"tag:{_tag_authority(site_url)},{TAG_YEAR}:paper/{key}"


def paper_link(title: str) -> str:
    """Where an item links: a search for the paper's title on huggingface.co/papers."""
    return paper_url(one_line(title) or UNTITLED)


def build_feed(
    entries: Sequence[FeedEntry],
    *,
    fmt: FeedFormat,
    title: str,
    self_url: str,
    site_url: str,
    description: str,
    max_items: int,
    max_bytes: int,
    authority: str | None = None,
    stylesheet: str | None = None,
) -> FeedDocument:
    """Serialise entries as an RSS 2.0 or Atom feed: newest first, capped, deterministic."""
    return build_feeds(
        entries,
        self_urls={fmt: self_url},
        title=title,
        site_url=site_url,
        description=description,
        max_items=max_items,
        max_bytes=max_bytes,
        authority=authority,
        stylesheet=stylesheet,
    )[fmt]


def build_feeds(
    entries: Sequence[FeedEntry],
    *,
    self_urls: Mapping[FeedFormat, str],
    title: str,
    site_url: str,
    description: str,
    max_items: int,
    max_bytes: int,
    authority: str | None = None,
    stylesheet: str | None = None,
) -> dict[FeedFormat, FeedDocument]:
    """Build one feed in several formats ({"rss": self_url, "atom": ...}), sharing the entry work.

    Each document is exactly what build_feed gives for its format; building both at once prepares
    and hands every entry to feedgen once instead of twice. `authority` is the tag authority of
    the entry ids (default: the site URL's host); `stylesheet` the href of an XSLT stylesheet
    that browsers apply (`<?xml-stylesheet?>`), so a feed opened in a browser reads as a page.
    """
    for fmt in self_urls:
        check_fmt(fmt)
    if max_items < 0 or max_bytes < 0:
        raise ValidationError(
            f"feed caps must not be negative (max_items={max_items}, max_bytes={max_bytes})"
        )
    authority = authority or _tag_authority(site_url)
    kept = _newest_first(entries)[:max_items]
    items = _items(kept, authority, max_bytes)
    head = _FeedHead(authority, title, site_url, description)
    docs: dict[FeedFormat, FeedDocument] = {}
    for fmt, self_url in self_urls.items():
        newest = kept[0][0] if items else EPOCH
        body = _styled(_serialise(items, fmt, head, self_url, newest), stylesheet)
        count = len(items)
        if len(body) > max_bytes and count:
            body, count = _cap_bytes(body, fmt, max_bytes)
            if count == 0:
                # The header still has the dropped newest item's date; an empty feed says EPOCH.
                newest = EPOCH
                body = _styled(_serialise([], fmt, head, self_url, newest), stylesheet)
        docs[fmt] = FeedDocument(
            body=body,
            etag=_etag(body),
            last_modified=newest,
            content_type=CONTENT_TYPES[fmt],
            fmt=fmt,
            items=count,
        )
    return docs


def reference_document(entries: Sequence[FeedEntry], **feed: Any) -> bytes:
    """The document with every item handed to feedgen: the bytes build_feed must give for the
    same keyword arguments (fmt, title, self_url, site_url, description; no caps applied).

    Not used to serve feeds (feedgen builds an lxml element per field, 2.5x slower): the tests
    compare build_feed with it on random hostile entries, and bench/feed.py times it.
    """
    kept = _newest_first(entries)
    site_url = feed["site_url"]
    authority = feed.get("authority") or _tag_authority(site_url)
    head = _FeedHead(authority, feed["title"], site_url, feed["description"])
    fmt = check_fmt(feed["fmt"])
    fg = _feed_generator(head, fmt, feed["self_url"], kept[0][0] if kept else EPOCH)
    for when, entry in kept:
        name = one_line(clean_text(entry.paper.title)) or UNTITLED
        fe = FeedGenEntry()
        fe.id(f"tag:{authority},{TAG_YEAR}:paper/{entry.item_key}")
        fe.title(name)
        fe.link(href=paper_url(name))
        fe.summary(_summary_html(entry), type="html")
        topics = [{"term": t} for t in (one_line(clean_text(t)) for t in entry.topics) if t]
        if topics:
            fe.category(topics)
        fe.updated(when)
        fe.published(_published(entry, when))
        fg.add_entry(fe, order="append")
    with _FEEDGEN_LOCK:
        body = fg.atom_str(pretty=False) if fmt == "atom" else fg.rss_str(pretty=False)
    return _styled(body, feed.get("stylesheet"))


def write_feed_atomically(path: Path, doc: FeedDocument) -> bool:
    """Write a feed by temp file + fsync + rename; untouched when the bytes are unchanged.

    Returns True when the file was (re)written. Readers of the path see the old or the new feed,
    never a mix, and an unchanged feed keeps its mtime (static servers derive ETags from it).
    """
    path = Path(path)
    try:
        if path.stat().st_size == len(doc.body) and path.read_bytes() == doc.body:
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise DigestError(f"{path}: cannot read the current feed: {exc.strerror}") from exc
    try:
        atomic_write(path, doc.body)  # 0644: a static web server running as another user reads it
    except OSError as exc:
        raise DigestError(f"{path}: cannot write the feed: {exc.strerror}") from exc
    return True


def write_feeds(
    public_dir: Path,
    entries: Sequence[FeedEntry],
    *,
    base_url: str,
    title: str,
    description: str,
    max_items: int,
    max_bytes: int,
    token: str | None = None,
    authority: str | None = None,
) -> dict[FeedFormat, bool]:
    """Build and write the RSS and Atom versions of one feed (public, or a subscriber's).

    Returns, per format, whether the file changed.
    """
    paths = feed_paths(public_dir)
    docs = build_feeds(
        entries,
        self_urls={fmt: feed_url(base_url, fmt, token) for fmt in FORMATS},
        title=title,
        site_url=base_url,
        description=description,
        max_items=max_items,
        max_bytes=max_bytes,
        authority=authority,
        stylesheet=STYLESHEET_PATH,
    )
    write_stylesheet(paths.root)
    changed: dict[FeedFormat, bool] = {}
    for fmt, doc in docs.items():
        path = paths.all(fmt) if token is None else paths.subscriber(token, fmt)
        changed[fmt] = write_feed_atomically(path, doc)
    return changed


def read_feed_file(path: Path) -> FeedDocument:
    """Load a feed written by write_feed_atomically, with the same ETag and Last-Modified."""
    path = Path(path)
    fmt: FeedFormat = "atom" if path.suffix == ".atom" else "rss"
    try:
        body = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"{path}: no such feed") from exc
    except OSError as exc:
        raise DigestError(f"{path}: cannot read the feed: {exc.strerror}") from exc
    # The feed's own date is the first date element: it precedes every item (see _serialise).
    tag = b"updated" if fmt == "atom" else b"lastBuildDate"
    found = re.search(b"<" + tag + b">([^<]*)</" + tag + b">", body)
    last_modified = EPOCH
    if found:
        text = found.group(1).decode("ascii", "replace")
        parsed = _parse_feed_date(text, fmt)
        if parsed is not None:
            last_modified = parsed
    return FeedDocument(
        body=body,
        etag=_etag(body),
        last_modified=last_modified,
        content_type=CONTENT_TYPES[fmt],
        fmt=fmt,
        items=body.count(b"<entry>" if fmt == "atom" else b"<item>"),
    )


def conditional_response(
    doc: FeedDocument, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """True when a GET/HEAD with these request headers should be answered 304 Not Modified.

    RFC 9110 section 13: If-None-Match (a list of entity tags, W/ or not, or *) is compared
    weakly and, when present, If-Modified-Since is ignored; an invalid date is ignored.
    """
    if if_none_match is not None and if_none_match.strip():
        return _etag_listed(doc.etag, if_none_match)
    if if_modified_since is None or not if_modified_since.strip():
        return False
    since = parse_http_date(if_modified_since)
    if since is None:
        return False
    return doc.last_modified.replace(microsecond=0) <= since


def parse_http_date(value: str) -> datetime | None:
    """Parse an HTTP date (IMF-fixdate, RFC 850 or asctime) to aware UTC; None when invalid."""
    text = value.strip()
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None:
        for pattern in ("%A, %d-%b-%y %H:%M:%S GMT", "%a %b %d %H:%M:%S %Y"):
            try:
                parsed = datetime.strptime(_SPACES.sub(" ", text), pattern)
                break
            except ValueError:
                continue
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


# --- internals -----------------------------------------------------------------------------


def _tag_authority(site_url: str) -> str:
    host = urlsplit(site_url).hostname
    if not host:
        raise ValidationError(f"site URL {site_url!r} has no host name (needed for feed ids)")
    return host


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def _utc_seconds(moment: datetime) -> datetime:
    # Naive times come from SQLite as UTC. Whole seconds: HTTP dates have no fractions, and a
    # fraction would make Last-Modified disagree with the date inside the feed.
    if moment.tzinfo is UTC:
        return moment.replace(microsecond=0) if moment.microsecond else moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def _styled(body: bytes, stylesheet: str | None) -> bytes:
    """The document with an xml-stylesheet processing instruction after its XML declaration."""
    if not stylesheet:
        return body
    end = body.index(b"?>") + 2
    pi = f'<?xml-stylesheet type="text/xsl" href="{_xml_attr(stylesheet)}"?>'.encode()
    return body[:end] + pi + body[end:]


def _published(entry: FeedEntry, when: datetime) -> datetime:
    """The item's date: the paper's own publication date where the dump gives it, else `when`
    (when it was stored or delivered; that one orders the feed and dates its updates)."""
    day = entry.paper.published
    if day is None:
        return when
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _when(entry: FeedEntry) -> datetime:
    return _utc_seconds(entry.added if entry.added is not None else entry.paper.first_seen)


def _newest_first(entries: Sequence[FeedEntry]) -> list[tuple[datetime, FeedEntry]]:
    """(date, entry) newest first, ties by key for determinism, repeats of a paper merged."""
    dated = sorted(((_when(e), e) for e in entries), key=_sort_key, reverse=True)
    seen: dict[str, int] = {}
    merged: list[tuple[datetime, FeedEntry]] = []
    for when, entry in dated:
        at = seen.get(entry.item_key)  # a rising item is not a repeat: its own item
        if at is None:
            seen[entry.item_key] = len(merged)
            merged.append((when, entry))
            continue
        first = merged[at][1]  # the newest sighting keeps its date; reasons are united
        merged[at] = (
            merged[at][0],
            FeedEntry(
                paper=first.paper,
                topics=_union(first.topics, entry.topics),
                terms=_union(first.terms, entry.terms),
                added=first.added,
                rising=first.rising,
                feedback=first.feedback,
            ),
        )
    return merged


def _sort_key(pair: tuple[datetime, FeedEntry]) -> tuple[datetime, str]:
    return pair[0], pair[1].item_key


def _union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(a + b))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summary_html(entry: FeedEntry) -> str:
    """The item description: a small HTML fragment in which every piece of paper text is escaped.

    Readers render RSS descriptions and Atom type="html" summaries as HTML, so escaping once for
    XML is not enough: `<script>` in an abstract must reach the reader as the text "<script>".
    """
    head, abstract = _summary_parts(entry)
    return head + "<p>" + html.escape(abstract, quote=False) + "</p>"


def _summary_xml(entry: FeedEntry) -> str:
    """_xml_text(_summary_html(entry)), with the long abstract escaped in one pass, not two."""
    head, abstract = _summary_parts(entry)
    twice = abstract.replace("&", "&amp;amp;").replace("<", "&amp;lt;").replace(">", "&amp;gt;")
    if "\r" in twice:
        twice = twice.replace("\r", "&#13;")
    return _xml_text(head) + "&lt;p&gt;" + twice + "&lt;/p&gt;"


def _escape_content(text: str) -> str:
    """HTML-escape element content (quotes need no escaping there)."""
    return html.escape(text, quote=False)


def _summary_parts(entry: FeedEntry) -> tuple[str, str]:
    """The summary's HTML before the abstract, and the abstract as plain (cleaned) text."""
    paper = entry.paper
    esc = _escape_content
    out = "<p><strong>Rising:</strong> its upvotes jumped.</p>" if entry.rising else ""
    if entry.topics or entry.terms:
        out += "<p><strong>Matched:</strong> "
        out += esc(clean_text(", ".join(entry.topics))) if entry.topics else "-"
        if entry.terms:
            out += " (" + esc(clean_text(", ".join(entry.terms))) + ")"
        out += "</p>"
    facts = []
    if paper.organization:
        facts.append(esc(clean_text(paper.organization)))
    if paper.authors is not None:
        facts.append(_plural(paper.authors, "author"))
    if paper.upvotes is not None:
        facts.append(_plural(paper.upvotes, "upvote"))
    if paper.published is not None:
        facts.append("published " + paper.published.isoformat())
    if facts:
        out += "<p>" + " · ".join(facts) + "</p>"
    if entry.feedback is not None:
        like, dislike = (html.escape(u, quote=True) for u in entry.feedback)
        out += f'<p><a href="{like}">More like this</a> · <a href="{dislike}">Not for me</a></p>'
    # Stored text is clean since it was parsed; rows stored by older versions may not be, and
    # one character XML cannot carry would make readers drop the whole feed (cheap when clean).
    abstract = clean_text(paper.abstract).strip()
    if len(abstract) > _MAX_ABSTRACT:
        abstract = abstract[:_MAX_ABSTRACT].rsplit(" ", 1)[0] + " …"
    return out, abstract


@dataclass(frozen=True, slots=True)
class _FeedHead:
    """What every format of one feed shares in its header."""

    authority: str
    title: str
    site_url: str
    description: str


class _Item(NamedTuple):
    """One feed item's text, cleaned and escaped for XML once, shared by both formats."""

    id_xml: str
    title_xml: str
    link: str
    summary_xml: str  # HTML, escaped for HTML and then for XML (readers render it as HTML)
    categories: tuple[str, ...]
    when: datetime  # stored or delivered: orders the feed, Atom's <updated>
    published: datetime  # the paper's own date where known: RSS <pubDate>, Atom <published>


def _items(
    kept: Sequence[tuple[datetime, FeedEntry]], authority: str, max_bytes: int
) -> list[_Item]:
    """One item per entry, good for both formats.

    Stops at the first item that cannot fit: its text alone, with every newer item's, already
    exceeds max_bytes (escaping only lengthens and a character is at least a byte), so neither it
    nor any older item survives the exact cut. A 10,000-entry input under a 2 MB cap thus costs
    what the ~1,000 kept items cost.
    """
    prefix = f"tag:{authority},{TAG_YEAR}:paper/"
    items = []
    floor = 0  # a lower bound of the serialised size of the items so far
    for when, entry in kept:
        paper = entry.paper
        title = one_line(clean_text(paper.title)) or UNTITLED  # feedgen refuses ""
        link = paper_url(title)
        summary = _summary_xml(entry)
        floor += len(title) + len(link) + len(summary)
        if floor > max_bytes:
            break
        topics = tuple(t for t in (one_line(clean_text(t)) for t in entry.topics) if t)
        items.append(
            _Item(
                _xml_text(prefix + entry.item_key),
                _xml_text(title),
                link,
                summary,
                topics,
                when,
                _published(entry, when),
            )
        )
    return items


def _xml_text(text: str) -> str:
    """Escape character data as lxml (libxml2) does: &, <, > and carriage returns."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r", "&#13;") if "\r" in text else text


def _xml_attr(text: str) -> str:
    """Escape an attribute value as lxml does: also quotes, tabs and line ends."""
    text = _xml_text(text).replace('"', "&quot;")
    if "\n" in text or "\t" in text:
        text = text.replace("\n", "&#10;").replace("\t", "&#9;")
    return text


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rss_date(when: datetime) -> str:
    """RFC 2822 date of a UTC time, as feedgen writes it (email.utils would, 4x slower)."""
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} +0000"
    )


def _rss_item(item: _Item) -> str:
    # the element order and form of feedgen's FeedEntry.rss_entry
    cats = "".join(f"<category>{_xml_text(c)}</category>" for c in item.categories)
    return (
        f"<item><title>{item.title_xml}</title><link>{_xml_text(item.link)}</link>"
        f"<description>{item.summary_xml}</description>"
        f'<guid isPermaLink="false">{item.id_xml}</guid>{cats}'
        f"<pubDate>{_rss_date(item.published)}</pubDate></item>"
    )


def _atom_entry(item: _Item) -> str:
    # the element order and form of feedgen's FeedEntry.atom_entry
    cats = "".join(f'<category term="{_xml_attr(c)}"/>' for c in item.categories)
    stamp = item.when.isoformat()
    return (
        f"<entry><id>{item.id_xml}</id><title>{item.title_xml}</title>"
        f'<updated>{stamp}</updated><link href="{_xml_attr(item.link)}"/>'
        f'<summary type="html">{item.summary_xml}</summary>{cats}'
        f"<published>{item.published.isoformat()}</published></entry>"
    )


def _feed_generator(
    head: _FeedHead, fmt: FeedFormat, self_url: str, newest: datetime
) -> FeedGenerator:
    """A feedgen generator holding the feed's own elements, no item yet."""
    fg = FeedGenerator()
    fg.id(f"tag:{head.authority},{TAG_YEAR}:feed{urlsplit(self_url).path}")
    name = one_line(clean_text(head.title)) or GENERATOR
    fg.title(name)
    fg.description(one_line(clean_text(head.description)) or GENERATOR)
    fg.author({"name": name})  # Atom wants a feed author
    fg.link(href=self_url, rel="self", type=CONTENT_TYPES[fmt].split(";")[0])
    fg.link(href=head.site_url, rel="alternate")  # the last link is RSS's channel link
    fg.generator(GENERATOR)
    fg.updated(newest)  # sets both atom:updated and rss:lastBuildDate
    return fg


def _serialise(
    items: Sequence[_Item],
    fmt: FeedFormat,
    head: _FeedHead,
    self_url: str,
    newest: datetime,
) -> bytes:
    """feedgen's document with no item (compact, pretty=False), the items written before its
    closing tags, where feedgen appends them."""
    fg = _feed_generator(head, fmt, self_url, newest)
    with _FEEDGEN_LOCK:
        shell = fg.atom_str(pretty=False) if fmt == "atom" else fg.rss_str(pretty=False)
    close = b"</feed>" if fmt == "atom" else b"</channel></rss>"
    if not shell.endswith(close):  # pragma: no cover - would mean feedgen changed its output
        raise AssertionError(f"unexpected end of feedgen's {fmt} document")
    write = _atom_entry if fmt == "atom" else _rss_item
    body = "".join(map(write, items)).encode("utf-8")
    return shell[: -len(close)] + body + close


def _cap_bytes(body: bytes, fmt: FeedFormat, max_bytes: int) -> tuple[bytes, int]:
    """Drop the oldest items until the document fits, by cutting between serialised items.

    Items are contiguous in the compact output and their text is escaped, so the literal open tag
    only occurs at item starts; the cut document is byte-identical to serialising fewer entries
    (the feed's date is the newest item's, which stays). Tested against a re-serialisation.
    """
    open_tag = b"<entry>" if fmt == "atom" else b"<item>"
    close_tag = b"</entry>" if fmt == "atom" else b"</item>"
    starts: list[int] = []
    at = body.find(open_tag)
    while at != -1:
        starts.append(at)
        at = body.find(open_tag, at + len(open_tag))
    end = body.rfind(close_tag) + len(close_tag)
    head, tail = body[: starts[0]], body[end:]
    bounds = [*starts, end]
    budget = max_bytes - len(head) - len(tail)
    keep = len(starts)
    while keep > 0 and bounds[keep] - bounds[0] > budget:
        keep -= 1
    return head + body[bounds[0] : bounds[keep]] + tail, keep


def _etag_listed(etag: str, header: str) -> bool:
    ours = _opaque(etag)
    for match in re.finditer(r'(W/)?"([^"]*)"|([^\s,]+)', header):
        if match.group(3) is not None:
            token = match.group(3)
            if token == "*":
                return True
            # Lenient: some clients drop the quotes.
            if _opaque(token) == ours:
                return True
        elif match.group(2) == ours:
            return True
    return False


def _opaque(tag: str) -> str:
    tag = tag.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    return tag.strip('"')


def _parse_feed_date(text: str, fmt: FeedFormat) -> datetime | None:
    if fmt == "atom":
        try:
            return _utc_seconds(datetime.fromisoformat(text))
        except ValueError:
            return None
    return parse_http_date(text)
