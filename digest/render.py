"""Rendering a digest to its subject, HTML and plain-text parts; pure, no database, no network.

`Renderer(settings)` loads the templates once (CSS inlined into the template source at that
moment) and renders any number of digests: `renderer.render(digest, links)`. Links to the
subscriber's pages are passed in (`Links`), so rendering never depends on how tokens are signed.
An empty digest is an error (`EmptyDigestError`): no email is ever sent for an empty digest.

Templates are plain Jinja with stock autoescaping: `email/digest.html` and `email/digest.txt` loop
over `sections` and their `items` and `{% include %}` `email/paper.html` / `email/paper.txt` for
each `item` (an `ItemView`; `item.paper` is the `PaperView`). What does not depend on the
subscriber (URL, facts, shortened and wrapped abstract, the escaped title and abstract) is computed
once per paper and cached; per digest only the highlights, the matched line and the number are
made. Text reaching the renderer is clean (digest.text policy, applied at parse and entry): the
renderer only escapes it.
"""

from __future__ import annotations

import contextlib
import functools
import re
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import css_inline
import markdown
import nh3
from markupsafe import Markup

from digest import highlight, templates
from digest.config import Settings
from digest.errors import DigestError
from digest.links import Links, make_links
from digest.models import Digest, DigestItem, Match, StoredPaper
from digest.text import clean_text, one_line
from digest.urls import paper_url

__all__ = ["Links", "make_links", "paper_url"]  # re-exported: their home is below this module

TEXT_WIDTH = 72
_SUBJECT_MAX = 110
# Invisible filler after the preheader, so clients do not pull body text into the inbox preview.
_PREHEADER_PAD = Markup("&#847;&zwnj;&nbsp;" * 30)


def _escape_ascii(text: str) -> str:
    # Character references keep the HTML part ASCII: smaller, faster, 7bit-safe.
    html = templates.escape_html(text)
    return html if html.isascii() else html.encode("ascii", "xmlcharrefreplace").decode("ascii")


_NOTE_TAGS = {
    "p",
    "br",
    "strong",
    "em",
    "b",
    "i",
    "a",
    "ul",
    "ol",
    "li",
    "code",
    "pre",
    "blockquote",
}
# A sentence ends at . ! or ? (plus closing quotes/brackets), then space, then a capital or digit;
# "3.5" and "e.g. LongBench" (a known abbreviation before the dot) do not end a sentence.
_ABBREVIATIONS = ("e.g", "i.e", "et al", "cf", "vs", "Fig", "Eq", "Sec", "Tab", "approx", "resp")
_SENTENCE_END = re.compile(
    "".join(rf"(?<!\b{re.escape(a)})" for a in _ABBREVIATIONS)
    + r"[.!?][\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c(\[]?[A-Z0-9])"
)


class EmptyDigestError(DigestError):
    """A digest with no paper was given to the renderer; no email is sent for an empty digest."""


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """A rendered digest: what build_message turns into an email."""

    subject: str
    html: str
    text: str
    preheader: str


@dataclass(frozen=True, slots=True)
class PaperView:
    """What every digest shows of one paper, whoever receives it (computed once per paper)."""

    title: str
    url: str
    facts: str
    facts_html: Markup
    abstract: str  # shortened at a sentence end, with an ellipsis when cut
    cut: int  # abstract[:cut] of the original is shown; highlight spans are clipped to it
    suffix: str
    text_title: str  # wrapped for the text part, indented 4, first line left free for "N. "
    text_facts: str
    text_abstract: str
    title_escaped: EscapedText
    abstract_escaped: EscapedText  # of abstract (with the suffix)


@dataclass(slots=True)  # not frozen: frozen dataclasses set each field through object.__setattr__
class ItemView:
    """One paper in one digest: the shared PaperView plus this subscriber's highlights."""

    number: int
    paper: PaperView
    text_title: str  # "N. " and the wrapped title
    title_html: Markup  # escaped HTML; matched words in <span class="hl" style=...>
    abstract_html: Markup
    matched_html: Markup  # <strong>topics</strong> (words)
    text_matched: str  # "matched: topics (words)", wrapped and indented
    match: Match
    rising: bool = False  # back once because its upvotes jumped
    # ("more like this", "not for me") URLs under the paper's best topic, made once for both
    # parts (None without feedback links); links.feedback_urls gives the same for any topic.
    feedback: tuple[str, str] | None = None

    @property
    def topics_label(self) -> str:
        return _labels(self.match.topics, self.match.terms)[0]

    @property
    def words_label(self) -> str:
        return _labels(self.match.topics, self.match.terms)[1]


@dataclass(slots=True)
class SectionView:
    """The papers whose best topic is `topic`, in rank order."""

    topic: str
    items: list[ItemView]

    @property
    def count(self) -> int:
        return len(self.items)


class Renderer:
    """Renders digests with templates loaded and CSS-inlined once, at construction.

    What a paper looks like whoever receives it (URL, facts, shortened and wrapped abstract, its
    escaped title and abstract) is kept in a bounded per-renderer cache: one batch of digests
    shares the same few papers.
    """

    cache_size = 20_000

    def __init__(self, settings: Settings, *, inline_includes: bool = True) -> None:
        """`inline_includes`: paste plain includes in at load (templates.IncludeInliner, the
        same output); False renders them as stock includes (the tests compare the two)."""
        self.settings = settings
        env = templates.make_environment(settings)
        css, _ = templates.template_source(env, "email/style.css")
        assert env.loader is not None  # make_environment always sets one
        env.loader = templates.InliningLoader(env.loader, css)
        if inline_includes:
            # Over the CSS inliner, file by file: a pasted paper never meets the digest's
            # selectors, so its styles are the ones it gets on its own.
            env.loader = templates.IncludeInliner(env.loader)
        env.filters["wrap"] = wrap
        self.env = env
        self.html_template = templates.html_template(env, "email/digest.html")
        self.text_template = templates.load_template(env, "email/digest.txt")
        # Included per item; loaded here so that a broken override fails at start, named.
        templates.html_template(env, "email/paper.html")
        templates.load_template(env, "email/paper.txt")
        self.admin_note_html, self.admin_note_text = _admin_note(settings.mail.admin_note, css)
        self.abstract_chars = settings.mail.abstract_chars
        # The highlight tag with the .hl styles inlined, built once like the templates.
        probe = templates.inline_template_source('<span class="hl">x</span>', css)
        # A line break inside the tag (HTML whitespace, invisible) keeps lines short: a
        # message line may not pass 998 characters, and many highlights would otherwise.
        self.highlight_open = probe[: probe.index(">") + 1].replace(" style=", "\nstyle=", 1)
        self._papers: dict[int, tuple[StoredPaper, PaperView]] = {}

    def render(self, digest: Digest, links: Links) -> RenderedDigest:
        """Render one digest; raises EmptyDigestError when it holds no paper."""
        if not digest.items:
            raise EmptyDigestError(f"digest {digest.id}: no paper, so no email")
        sub = digest.subscriber
        sections, topic_order = self.sections(digest.items, links)
        count = len(digest.items)
        count_label = f"{count} new paper{'s' if count != 1 else ''}"
        topics_label = _join_limited(topic_order, 3)
        subject = one_line(f"{count_label} on {topics_label}")
        if len(subject) > _SUBJECT_MAX:
            subject = subject[: _SUBJECT_MAX - 1].rstrip() + "\u2026"
        first = digest.items[0].paper
        preheader = one_line(f"Top pick: {first.title}")[:140]
        all_topics = [t.name for t in sub.topics] or topic_order
        # A capped digest says so ("30 of 151 matches") and points at its page, which has all.
        matched = max(digest.matched or 0, count)
        capped_label = f"{count} of {matched} matches" if matched > count else ""
        context = {
            "subject": subject,
            "preheader": preheader,
            "preheader_pad": _PREHEADER_PAD,
            "site_title": self.settings.site.title,
            "count_label": count_label,
            "date_label": _date_label(digest.created_at, sub.tz),
            "topics_label": ", ".join(topic_order),
            "all_topics_label": ", ".join(all_topics),
            "sections": sections,
            "email": sub.email,
            "name": sub.name,
            "links": links,
            "capped_label": capped_label,
            "admin_note": self.admin_note_html,
            "admin_note_text": self.admin_note_text,
        }
        try:
            html = self.html_template.render(context)
            text = self.text_template.render(context)
        except Exception as exc:  # a user's override template can fail in any way
            raise templates.TemplateError(f"rendering digest {digest.id} failed: {exc}") from exc
        return RenderedDigest(subject=subject, html=html, text=text, preheader=preheader)

    def sections(
        self, items: list[DigestItem], links: Links
    ) -> tuple[list[SectionView], list[str]]:
        """Items grouped under their best topic; sections ordered by their best item."""
        by_topic: dict[str, SectionView] = {}
        for item in items:
            topics = item.match.topics or ("Other",)
            section = by_topic.get(topics[0])
            if section is None:
                section = by_topic[topics[0]] = SectionView(topics[0], [])
            # Numbered within the section, as read (a global rank would jump: 1 2 3 6 7, 4 5).
            section.items.append(self.item(len(section.items) + 1, item, links))
        return list(by_topic.values()), list(by_topic)

    def paper_view(self, paper: StoredPaper) -> PaperView:
        """The subscriber-independent view of a paper, from the cache when seen before."""
        cached = self._papers.get(paper.id)
        # A batch shares one StoredPaper per paper; a changed one (more upvotes) is redone.
        if cached is not None and (cached[0] is paper or cached[0] == paper):
            return cached[1]
        if len(self._papers) >= self.cache_size:
            self._papers.clear()
        view = make_paper_view(paper, self.abstract_chars)
        self._papers[paper.id] = (paper, view)
        return view

    def item(self, number: int, item: DigestItem, links: Links) -> ItemView:
        """One paper of one digest, with this subscriber's highlights, reasons and feedback
        URLs."""
        view = self.paper_view(item.paper)
        match = item.match
        title = self._mark(view.title_escaped, match.title_spans, len(view.title))
        abstract = self._mark(view.abstract_escaped, match.abstract_spans, view.cut)
        matched_html, text_matched = _matched_line(match.topics, match.terms, match.why)
        if number < 100:  # "N. " fits the 4-column indent the title was wrapped with
            text_title = f"{number}. {view.text_title[3 if number < 10 else 4 :]}"
        else:
            text_title = wrap(view.title, TEXT_WIDTH, f"{number}. ", "    ")
        feedback = links.feedback_urls(match.paper_id, match.topics[0] if match.topics else None)
        return ItemView(
            number, view, text_title, title, abstract, matched_html, text_matched, match,
            item.rising, feedback,
        )  # fmt: skip

    def highlight(
        self, text: str, spans: tuple[tuple[int, int], ...], limit: int | None = None
    ) -> Markup:
        """Text as HTML with the spans (clipped to `limit`) highlighted; hostile text stays text."""
        end = len(text) if limit is None else min(limit, len(text))
        return self._mark(escape_text(text), spans, end)

    def _mark(self, esc: EscapedText, spans: tuple[tuple[int, int], ...], limit: int) -> Markup:
        # The HTML formatter of highlight.bounds: tags go between slices of the text escaped
        # once per paper (offsets maps raw positions into it); they never come from the text.
        html = esc.html
        if not spans:
            return Markup(html)
        pos, open_tag = esc.offsets, self.highlight_open
        out: list[str] = []
        for start, end, hit in highlight.bounds(spans, esc.length, limit):
            if pos is not None:
                start, end = pos[start], pos[end]
            out += (open_tag, html[start:end], "</span>") if hit else (html[start:end],)
        return Markup("".join(out))


def _labels(topics: tuple[str, ...], terms: tuple[str, ...]) -> tuple[str, str]:
    """The topics, and the distinct matched words, each joined with ", "."""
    return ", ".join(topics), ", ".join(dict.fromkeys(terms))


def _matched_line(
    topics: tuple[str, ...], terms: tuple[str, ...], why: str = ""
) -> tuple[Markup, str]:
    """An item's "matched: topics (words); why" line, as HTML and as wrapped text."""
    topics_label, words_label = _labels(topics, terms)
    if words_label:
        html = f"<strong>{_escape_ascii(topics_label)}</strong> ({_escape_ascii(words_label)})"
        matched = f"matched: {topics_label} ({words_label})"
    else:
        html = f"<strong>{_escape_ascii(topics_label)}</strong>"
        matched = f"matched: {topics_label}"
    if why:  # e.g. 'suggested: like "A liked paper"', or the conditions that passed
        html += f"; {_escape_ascii(why)}"
        matched += f"; {why}"
    if len(matched) <= TEXT_WIDTH - 4 and matched.isprintable():
        return Markup(html), "    " + matched
    return Markup(html), wrap(matched, TEXT_WIDTH, "    ", "      ")


@dataclass(frozen=True, slots=True)
class EscapedText:
    """Text escaped for HTML (ASCII, non-ASCII as references) with a map of raw offsets."""

    html: str
    offsets: list[int] | None  # offsets[i]: where raw character i starts; None: the same
    length: int  # of the raw text


def escape_text(text: str) -> EscapedText:
    """Escape text for HTML once: non-ASCII as character references, long lines broken."""
    html = _escape_ascii(text)
    if len(html) > _LINE_CHUNK:
        html = _break_lines(html)
    if len(html) == len(text):
        return EscapedText(html, None, len(text))  # nothing grew: every offset is unchanged
    offsets = [0]
    n = 0
    for c in text:
        n += len(c) if c.isascii() and c not in _SPECIAL_HTML else _escaped_len(c)
        offsets.append(n)
    if n != len(html):  # pragma: no cover - would mean escape() changed its rules
        raise AssertionError("escaped length mismatch")
    return EscapedText(html, offsets, len(text))


_LINE_CHUNK = 600


def _break_lines(html: str) -> str:
    """Turn a space into a line break every ~600 characters (the same in HTML, same length)."""
    out = []
    start = 0
    while len(html) - start > _LINE_CHUNK:
        space = html.rfind(" ", start + 1, start + _LINE_CHUNK)
        if space < 0:
            break  # one huge word: the message falls back to base64
        out.append(html[start:space])
        start = space + 1
    out.append(html[start:])
    return "\n".join(out)


_SPECIAL_HTML = frozenset(templates.HTML_SPECIAL)


def _escaped_len(c: str) -> int:
    return len(_escape_ascii(c))


def make_paper_view(paper: StoredPaper, abstract_chars: int) -> PaperView:
    """Compute the subscriber-independent view of a paper."""
    cut, suffix = shorten_at_sentence(paper.abstract, abstract_chars)
    abstract = paper.abstract[:cut] + suffix
    facts_list = []
    if paper.organization:
        facts_list.append(paper.organization)
    if paper.authors is not None:
        facts_list.append(f"{paper.authors} author{'s' if paper.authors != 1 else ''}")
    if paper.published is not None:
        facts_list.append(paper.published.strftime("%b %-d, %Y"))
    if paper.upvotes is not None:
        facts_list.append(f"{paper.upvotes} upvote{'s' if paper.upvotes != 1 else ''}")
    facts = " \u00b7 ".join(facts_list)  # empty when the dump states none: no placeholder
    return PaperView(
        title=paper.title,
        url=paper_url(paper.title),
        facts=facts,
        facts_html=Markup(_escape_ascii(facts)),
        abstract=abstract,
        cut=cut,
        suffix=suffix,
        text_title=wrap(paper.title, TEXT_WIDTH, "    ", "    "),
        text_facts=wrap(facts, TEXT_WIDTH, "    ", "    "),
        text_abstract=wrap(abstract, TEXT_WIDTH, "    ", "    "),
        title_escaped=escape_text(paper.title),
        abstract_escaped=escape_text(abstract),
    )


def shorten_at_sentence(text: str, limit: int) -> tuple[int, str]:
    """Where to cut an abstract near `limit` characters, preferably at a sentence end.

    Returns (cut index, suffix): the shown text is text[:cut] + suffix, the suffix an ellipsis
    when anything was cut. Text up to 20% over the limit is kept whole.
    """
    slack = limit + limit // 5
    if len(text) <= slack:
        return len(text), ""
    best = 0
    for m in _SENTENCE_END.finditer(text, 0, slack):
        best = m.end()
    if best >= limit * 0.4:
        return best, " \u2026"
    space = text.rfind(" ", 0, limit)
    cut = space if space > limit // 2 else limit
    return len(text[:cut].rstrip()), "\u2026"


def wrap(text: str, width: int = TEXT_WIDTH, first: str = "", rest: str | None = None) -> str:
    """Greedy word wrap to `width` columns (textwrap); a word longer than a line stands alone."""
    words = " ".join(text.split())
    if words and len(first) + len(words) <= width:
        return first + words  # what textwrap gives for one line, without its chunking
    return textwrap.fill(
        words,
        width,
        initial_indent=first,
        subsequent_indent=first if rest is None else rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _join_limited(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


# A batch's digests share their creation time and a handful of zones.
@functools.lru_cache(maxsize=1024)
def _date_label(when: datetime, tz: str) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # A bad zone was refused on input; if one slips through, the UTC date is right enough here.
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
        when = when.astimezone(ZoneInfo(tz))
    return when.strftime("%A, %-d %B %Y")


def _admin_note(source: str, css: str) -> tuple[Markup | None, str]:
    """The admin note as sanitised, CSS-inlined HTML and as wrapped text (both once)."""
    source = clean_text(source, multiline=True)  # the text policy, where the note comes in
    if not source.strip():
        return None, ""
    raw = markdown.markdown(source)
    clean = nh3.clean(
        raw,
        tags=_NOTE_TAGS,
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer",
    )
    # Not a template: the note's text may hold "{{", so the inliner runs on it directly.
    inlined = css_inline.inline_fragment(f'<div class="note">{clean}</div>', css)
    inner = inlined.removeprefix(inlined[: inlined.index(">") + 1]).removesuffix("</div>")
    paragraphs = [p for p in re.split(r"\n\s*\n", source) if p.strip()]
    text = "\n\n".join(wrap(p) for p in paragraphs)
    return Markup(inner), text
