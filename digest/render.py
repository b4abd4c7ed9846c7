"""Rendering a digest to its subject, HTML and plain-text parts; pure, no database, no network.

`Renderer(settings)` loads the templates once (CSS inlined into the template source at that
moment) and renders any number of digests: `renderer.render(digest, links)`. Links to the
subscriber's pages are passed in (`Links`), so rendering never depends on how tokens are signed.
An empty digest is an error (`EmptyDigestError`): no email is ever sent for an empty digest.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import css_inline
import markdown
import nh3
from markupsafe import Markup

from digest import templates
from digest.config import Settings
from digest.errors import DigestError, ValidationError
from digest.models import Digest, DigestItem, Subscriber

PAPERS_SEARCH_URL = "https://huggingface.co/papers?q="
TEXT_WIDTH = 72
# Invisible filler after the preheader, so clients do not pull body text into the inbox preview.
_PREHEADER_PAD = "\u034f\u200c\u00a0" * 40

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
# A sentence ends at . ! or ? (plus closing quotes/brackets), then space, then a capital or digit:
# "e.g. the" and "3.5" do not end a sentence.
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s+[\"'\u201c(\[]?[A-Z0-9])")


class EmptyDigestError(DigestError):
    """A digest with no paper was given to the renderer; no email is sent for an empty digest."""


@dataclass(frozen=True, slots=True)
class Links:
    """The subscriber's links shown in the footer and in the List-Unsubscribe header."""

    manage_url: str
    unsubscribe_url: str  # the RFC 8058 one-click target: a POST there unsubscribes
    unsubscribe_mailto: str  # "mailto:unsubscribe@example.org?subject=..."

    def __post_init__(self) -> None:
        for name in ("manage_url", "unsubscribe_url"):
            value = getattr(self, name)
            if not value.startswith(("https://", "http://")) or _has_control(value):
                raise ValidationError(f"links.{name}: must be an http(s) URL, got {value!r}")
        if not self.unsubscribe_mailto.startswith("mailto:") or _has_control(
            self.unsubscribe_mailto
        ):
            raise ValidationError(
                f"links.unsubscribe_mailto: must be a mailto: URL, got {self.unsubscribe_mailto!r}"
            )


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """A rendered digest: what build_message turns into an email."""

    subject: str
    html: str
    text: str
    preheader: str


@dataclass(slots=True)
class _ItemView:
    number: int
    title: str
    url: str
    facts: str
    title_parts: list[tuple[str, bool]]
    abstract: str
    abstract_parts: list[tuple[str, bool]]
    topics_label: str
    words_label: str


@dataclass(slots=True)
class _SectionView:
    topic: str
    count: int
    items: list[_ItemView]


def unsubscribe_address(settings: Settings) -> str:
    """The mailbox that takes mailto unsubscribes: the setting, else unsubscribe@<From domain>."""
    if settings.site.unsubscribe_mailto:
        return settings.site.unsubscribe_mailto
    domain = settings.mail.from_addr.rpartition("@")[2].strip(" >")
    return f"unsubscribe@{domain or 'localhost'}"


def make_links(
    settings: Settings,
    subscriber: Subscriber,
    *,
    manage_token: str | None = None,
    unsubscribe_token: str | None = None,
) -> Links:
    """The subscriber's links: <base>/manage/TOKEN, <base>/unsubscribe/TOKEN and a mailto.

    The web app passes signed tokens (a salt per purpose); without them the subscriber's own
    random token is used.
    """
    base = settings.site.base_url.rstrip("/")
    manage = quote(manage_token or subscriber.token, safe="")
    unsub = quote(unsubscribe_token or subscriber.token, safe="")
    mailto = f"mailto:{unsubscribe_address(settings)}?subject={quote('unsubscribe ' + unsub)}"
    return Links(f"{base}/manage/{manage}", f"{base}/unsubscribe/{unsub}", mailto)


class Renderer:
    """Renders digests with templates loaded and CSS-inlined once, at construction."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        env = templates.make_environment(settings)
        css, _ = templates.template_source(env, "email/style.css")
        env.loader = templates.InliningLoader(env.loader, css)  # type: ignore[arg-type]
        env.filters["wrap"] = wrap
        self.html_template = templates.html_template(env, "email/digest.html")
        self.text_template = templates.load_template(env, "email/digest.txt")
        self.admin_note_html, self.admin_note_text = _admin_note(settings.mail.admin_note, css)
        self.abstract_chars = settings.mail.abstract_chars

    def render(self, digest: Digest, links: Links) -> RenderedDigest:
        """Render one digest; raises EmptyDigestError when it holds no paper."""
        if not digest.items:
            raise EmptyDigestError(f"digest {digest.id}: no paper, so no email")
        sub = digest.subscriber
        sections, topic_order = self._sections(digest.items)
        count = len(digest.items)
        count_label = f"{count} new paper{'s' if count != 1 else ''}"
        topics_label = _join_limited(topic_order, 3)
        subject = clean_line(f"{count_label} on {topics_label}")
        first = digest.items[0].paper
        preheader = clean_line(f"Top pick: {first.title}")[:140]
        all_topics = [t.name for t in sub.topics] or topic_order
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
            "admin_note": self.admin_note_html,
            "admin_note_text": self.admin_note_text,
        }
        try:
            html = self.html_template.render(context)
            text = self.text_template.render(context)
        except Exception as exc:  # a user's override template can fail in any way
            raise templates.TemplateError(f"rendering digest {digest.id} failed: {exc}") from exc
        return RenderedDigest(subject=subject, html=html, text=text, preheader=preheader)

    def _sections(self, items: list[DigestItem]) -> tuple[list[_SectionView], list[str]]:
        by_topic: dict[str, _SectionView] = {}
        for number, item in enumerate(items, 1):
            topics = item.match.topics or ("Other",)
            section = by_topic.get(topics[0])
            if section is None:
                section = by_topic[topics[0]] = _SectionView(topics[0], 0, [])
            section.items.append(self._item(number, item))
            section.count += 1
        return list(by_topic.values()), list(by_topic)

    def _item(self, number: int, item: DigestItem) -> _ItemView:
        paper, match = item.paper, item.match
        cut, suffix = shorten_at_sentence(paper.abstract, self.abstract_chars)
        abstract = paper.abstract[:cut] + suffix
        abstract_parts = segments(paper.abstract[:cut], match.abstract_spans)
        if suffix:
            abstract_parts.append((suffix, False))
        facts = []
        if paper.organization:
            facts.append(paper.organization)
        if paper.authors is not None:
            facts.append(f"{paper.authors} author{'s' if paper.authors != 1 else ''}")
        if paper.published is not None:
            facts.append(paper.published.strftime("%b %-d, %Y"))
        if paper.upvotes is not None:
            facts.append(f"{paper.upvotes} upvote{'s' if paper.upvotes != 1 else ''}")
        return _ItemView(
            number=number,
            title=paper.title,
            url=paper_url(paper.title),
            facts=" \u00b7 ".join(facts) or "Hugging Face Daily Papers",
            title_parts=segments(paper.title, match.title_spans),
            abstract=abstract,
            abstract_parts=abstract_parts,
            topics_label=", ".join(match.topics),
            words_label=", ".join(dict.fromkeys(match.terms)),
        )


def paper_url(title: str) -> str:
    """A search for the paper on huggingface.co/papers (the dumps carry no paper id)."""
    return PAPERS_SEARCH_URL + quote_plus(" ".join(title.split()))


def segments(text: str, spans: tuple[tuple[int, int], ...] | list) -> list[tuple[str, bool]]:
    """Split text into (piece, highlighted) runs; spans are clipped, sorted and merged."""
    if not spans:
        return [(text, False)] if text else []
    n = len(text)
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        start, end = max(0, start), min(n, end)
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    parts: list[tuple[str, bool]] = []
    pos = 0
    for start, end in merged:
        if start > pos:
            parts.append((text[pos:start], False))
        parts.append((text[start:end], True))
        pos = end
    if pos < n:
        parts.append((text[pos:], False))
    return parts


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
    """Greedy word wrap to `width` columns; a word longer than a line (a URL) stands alone."""
    rest = first if rest is None else rest
    lines: list[str] = []
    line = first
    empty = True
    for word in text.split():
        if empty:
            line += word
            empty = False
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = rest + word
    if not empty:
        lines.append(line)
    return "\n".join(lines)


def clean_line(text: str) -> str:
    """One line of text: every control, line or paragraph separator becomes a space."""
    if _has_control(text):
        text = "".join(" " if _is_control(c) else c for c in text)
    return " ".join(text.split())


def _is_control(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Zl", "Zp") or c == "\x85"


def _has_control(text: str) -> bool:
    return not text.isprintable() and any(_is_control(c) for c in text)


def _join_limited(names: list[str], limit: int) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def _date_label(when: datetime, tz: str) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # A bad zone was refused on input; if one slips through, the UTC date is right enough here.
    with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
        when = when.astimezone(ZoneInfo(tz))
    return when.strftime("%A, %-d %B %Y")


def _admin_note(source: str, css: str) -> tuple[Markup | None, str]:
    """The admin note as sanitised, CSS-inlined HTML and as wrapped text (both once)."""
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
    text = "\n\n".join(wrap(clean_line(p)) for p in paragraphs)
    return Markup(inner), text
