"""A subscriber's digests on the web: each sent digest's page and their archive (signed links).

Both live under `/archive/<signed>` (the "archive" purpose of digest.links): an email signs that
one token once and links its page (`Archived-At`, "View in browser") and the archive
(`List-Archive`) with it. A digest's page lists all its matches: the papers the email carried,
then those the cap left out (recorded with the digest, `digest_extras`). The archive pages by
keyset (`?before=<digest id>`): one query per page however many digests a subscriber has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, render_template, request, url_for

from digest.links import feedback_urls
from digest.render import make_paper_view
from digest.store import LedgerEntry
from digest.web import state
from digest.web.public import BAD_LINK, _from_link

bp = Blueprint("pages", __name__)

ARCHIVE_PAGE = 50  # digests per archive page
_WHOLE_ABSTRACT = 1_000_000  # a web page shows the abstract uncut


@dataclass(frozen=True, slots=True)
class PaperRow:
    """One paper on a digest page: numbered, linked, with why it matched."""

    number: int
    paper_id: int
    title: str
    url: str
    facts: str
    abstract: str
    topic: str
    topics: tuple[str, ...]
    terms: tuple[str, ...]
    fields: str = ""  # the matched words field by field: "title: a, b; abstract: c"
    why: str = ""  # the conditions that passed, or the liked paper a suggestion is most like


@dataclass(frozen=True, slots=True)
class PaperGroup:
    """Papers under one heading: a topic of the email, or those the email left out."""

    title: str
    rows: list[PaperRow]


def _rows(entries: list[LedgerEntry], start: int) -> list[PaperRow]:
    rows = []
    for number, entry in enumerate(entries, start):
        view = make_paper_view(entry.paper, _WHOLE_ABSTRACT)
        topics = entry.item.topics
        best = topics[0] if topics else ""
        row = PaperRow(number, entry.paper.id, view.title, view.url, view.facts, view.abstract,
                       best, topics, entry.item.terms,
                       words_by_field(entry.paper.title, entry.paper.abstract, entry.item.terms),
                       entry.item.why)  # fmt: skip
        rows.append(row)
    return rows


def words_by_field(title: str, abstract: str, terms: tuple[str, ...]) -> str:
    """The matched words field by field ("title: a; abstract: b"), as `digest match` says it.
    The ledger keeps the words as they appear in the paper, not their field, so each is found
    again in the text; a word in both fields is listed in both."""
    found = []
    distinct: dict[str, str] = {}
    for term in terms:
        distinct.setdefault(term.casefold(), term)  # one spelling a word: the first
    for name, text in (("title", title), ("abstract", abstract)):
        words = [t for t in distinct.values() if _contains(text, t)]
        if words:
            found.append(f"{name}: {', '.join(words)}")
    return "; ".join(found)


def _contains(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE) is not None


def _by_topic(rows: list[PaperRow]) -> list[PaperGroup]:
    """Rows grouped under their best topic, groups in the order of their best row."""
    groups: dict[str, list[PaperRow]] = {}
    for row in rows:
        groups.setdefault(row.topic, []).append(row)
    return [PaperGroup(topic or "Other", items) for topic, items in groups.items()]


def _private(page: str, status: int = 200) -> Any:
    # A personal page: not cached by shared caches, not indexed by search engines.
    return page, status, {"Cache-Control": "private, max-age=300", "X-Robots-Tag": "noindex"}


@bp.get("/archive/<signed>")
def archive(signed: str) -> Any:
    """The subscriber's sent digests, newest first, a page at a time (`?before=<id>`)."""
    sub = _from_link("archive", signed)
    st = state()
    raw = request.args.get("before", "")
    before = int(raw) if raw.isdigit() and len(raw) < 19 else None
    if raw and before is None:
        abort(404, description="No such archive page.")
    found = st.store.archive_page(sub.id, before=before, limit=ARCHIVE_PAGE + 1)
    shown, more = found[:ARCHIVE_PAGE], len(found) > ARCHIVE_PAGE
    older = url_for("pages.archive", signed=signed, before=shown[-1].id) if more else None
    page = render_template(
        "web/archive.html",
        sub=sub,
        digests=shown,
        signed=signed,
        older=older,
        newest=url_for("pages.archive", signed=signed) if before is not None else None,
    )
    return _private(page)


@bp.get("/archive/<signed>/<int:digest_id>")
def digest_page(signed: str, digest_id: int) -> Any:
    """One sent digest with all its matches: those the email carried, then those it left out."""
    sub = _from_link("archive", signed)
    st = state()
    found = st.store.digest_page(sub.id, digest_id) if digest_id < 2**62 else None
    if found is None:
        abort(404, description=BAD_LINK)
    carried = _rows(found.items, 1)
    left_out = _rows(found.extras, len(carried) + 1)
    page = render_template(
        "web/digest.html",
        sub=sub,
        digest=found,
        groups=_by_topic(carried),
        left_out=left_out,
        shown=len(carried),
        matched=found.matched,
        archive_url=url_for("pages.archive", signed=signed),
        feedback_urls=lambda paper_id, topic: feedback_urls(
            st.settings, st.signer, sub, paper_id, topic or None
        ),
    )
    return _private(page)
