"""Rendering: template lookup, autoescaping, CSS inlined at load, content, hostile text, golden."""

from __future__ import annotations

import dataclasses
import functools
import html
import itertools
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import markupsafe
import pytest
from email_samples import HOSTILE, email_settings, make_digest, make_paper, make_subscriber
from hypothesis import example, given, settings
from hypothesis import strategies as st

from digest import templates
from digest.errors import ValidationError
from digest.highlight import bounds, segments
from digest.links import LinkSigner, links_for
from digest.mail import build_message
from digest.models import Paper
from digest.parse import format_dump, parse_text
from digest.render import (
    EmptyDigestError,
    Links,
    Renderer,
    make_links,
    shorten_at_sentence,
    wrap,
)
from digest.text import clean_text

ROOT = Path(__file__).resolve().parents[1]
PRIVATE_USE = {0xE000: None, 0xE001: None}
GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden" / "digest.eml"


@functools.cache
def shared_renderer() -> Renderer:
    return Renderer(email_settings())


@pytest.fixture
def renderer() -> Renderer:
    return shared_renderer()


def render(renderer: Renderer, digest=None):
    digest = digest or make_digest()
    return renderer.render(digest, make_links(renderer.settings, digest.subscriber))


# --- templates and autoescaping --------------------------------------------------------------


def test_every_html_template_is_autoescaped():
    env = templates.make_environment(email_settings())
    names = [p.relative_to(ROOT / "templates").as_posix() for p in ROOT.glob("templates/**/*.*")]
    html_names = [n for n in names if n.endswith((".html", ".htm"))]
    assert "email/digest.html" in html_names and "email/base.html" in html_names
    for name in html_names:
        assert env.autoescape(name), name
    # Names select_autoescape(["html"]) would miss are escaped too; only .txt is plain.
    for name in ("x.html.j2", "x.xhtml", "x.htm", "x", "x.eml"):
        assert templates.autoescape_for(name)
    assert not templates.autoescape_for("email/digest.txt")


def test_html_template_refuses_an_environment_without_autoescape():
    env = jinja2.Environment(loader=jinja2.DictLoader({"a.html": "{{ x }}"}), autoescape=False)
    with pytest.raises(templates.TemplateError, match="autoescaping is off"):
        templates.html_template(env, "a.html")


@given(st.text(alphabet=st.sampled_from("ab &<>\"'\u00e9\n")))
def test_escape_fast_paths_escape_exactly_like_markupsafe(text):
    expected = str(markupsafe.escape(text))
    assert templates.escape_html(text) == expected
    env = templates.make_environment(email_settings())
    assert env.from_string("{{ x }}").render(x=text) == expected


def test_override_dir_comes_first(tmp_path):
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "digest.txt").write_text("CUSTOM {{ count_label }}\n")
    settings = email_settings(templates={"override_dir": str(tmp_path)})
    assert templates.template_dirs(settings)[0] == tmp_path
    out = Renderer(settings).render(make_digest(), make_links(settings, make_subscriber()))
    assert out.text == "CUSTOM 4 new papers\n"
    assert "Nemotron" in out.html  # digest.html still found in the project's templates


def test_an_override_can_use_jinja_globals_and_filters(tmp_path):
    # The renderer copies template globals into a plain dict at load; they must all be there.
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "digest.txt").write_text(
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}"
        "{{ ns.n }} {{ dict(a=1)['a'] }} {{ 'x y' | wrap(2) | replace('\n', '/') }}\n"
    )
    settings = email_settings(templates={"override_dir": str(tmp_path)})
    out = Renderer(settings).render(make_digest(), make_links(settings, make_subscriber()))
    assert out.text == "3 1 x/y\n"


def test_missing_override_dir_is_an_error_naming_it(tmp_path):
    settings = email_settings(templates={"override_dir": str(tmp_path / "nope")})
    with pytest.raises(templates.TemplateError, match="nope"):
        templates.template_dirs(settings)


def test_strict_undefined_in_an_override_names_the_problem(tmp_path):
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "digest.txt").write_text("{{ no_such_variable }}\n")
    settings = email_settings(templates={"override_dir": str(tmp_path)})
    with pytest.raises(templates.TemplateError, match="no_such_variable"):
        Renderer(settings).render(make_digest(), make_links(settings, make_subscriber()))


def test_css_is_inlined_into_the_template_source_once():
    source = (
        '{% extends "x" %}{% block b %}<table class="t"><tbody>{% for r in rows %}'
        '<tr><td class="c" title="{{ r }}">{{ r }}</td></tr>{% endfor %}</tbody></table>'
        "{% endblock %}"
    )
    out = templates.inline_template_source(source, ".c { color: red } .t { width: 100% }")
    assert '{% for r in rows %}<tr><td class="c" title="{{ r }}" style="color: red;">' in out
    assert '<table class="t" style="width: 100%;">' in out
    assert out.index("{% for r in rows %}") < out.index("{% endfor %}")
    # The inlined source still renders as a template.
    env = jinja2.Environment(loader=jinja2.DictLoader({"x": "{% block b %}{% endblock %}"}))
    rendered = env.from_string(out).render(rows=["a", "b"])
    assert rendered.count('style="color: red;"') == 2


def test_jinja_tag_as_attribute_name_is_refused():
    with pytest.raises(templates.TemplateError, match="attribute"):
        templates.inline_template_source("<p {{ attrs }}>x</p>", "p { color: red }")


def test_rendered_html_has_inline_styles_and_keeps_media_queries_in_head(renderer):
    out = render(renderer)
    head, body = out.html.split("</head>", 1)
    assert "@media (prefers-color-scheme: dark)" in head
    assert "max-width: 620px" in head
    assert '<meta name="color-scheme" content="light dark">' in head
    assert 'class="container" ' in body and "max-width: 600px" in body
    assert "<style" not in body
    assert 'role="presentation"' in body


class _Balance(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.stack.append(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.errors.append(f"event handler attribute {name}")
            if value and value.strip().lower().startswith("javascript:"):
                self.errors.append(f"javascript URL in {name}")
        if tag in ("script", "img", "iframe", "object"):
            self.errors.append(f"<{tag}> element")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


def check_html(markup: str) -> list[str]:
    """Tag balance and no active content (scripts, handlers, javascript: URLs)."""
    parser = _Balance()
    # MSO conditional comments hold a deliberately unclosed Outlook wrapper table.
    parser.feed(re.sub(r"<!--\[if mso\]>.*?<!\[endif\]-->", "", markup, flags=re.S))
    parser.close()
    return parser.errors + ([f"unclosed {parser.stack}"] if parser.stack else [])


# --- content ---------------------------------------------------------------------------------


def test_content_header_sections_items_footer(renderer):
    digest = make_digest()
    out = render(renderer, digest)
    assert out.subject == "4 new papers on Sparse attention, Speculative decoding, Quantization"
    assert out.preheader.startswith("Top pick: Nemotron-Flash")
    assert check_html(out.html) == []
    body = out.html
    assert "Monday, 24 November 2025" in body and "4 new papers" in body
    # One section per best topic, in the order of their best paper.
    titles = re.findall(r'class="section-title"[^>]*>([^<]+)<', body)
    assert [t.strip() for t in titles] == [
        "Sparse attention",
        "Speculative decoding",
        "Quantization",
    ]
    # Paper 4's best topic is Quantization: it sits in that section only.
    assert body.count("-Aware ") == 1
    assert body.index("-Aware ") > body.rindex("section-title")
    assert 'href="https://huggingface.co/papers?q=Nemotron-Flash%3A+Towards+Latency-Optimal' in body
    assert "NVIDIA &#183; Nov 24, 2025 &#183; 2 upvotes" in body
    assert "5 authors" in body and "1 author " not in body and "1 author<" in body
    assert "41 upvotes" in body and "1 upvote<" in body
    assert (
        "matched: <strong>Sparse attention, Quantization</strong> (sparse, attention, latency)"
        in body
    )
    assert "https://digest.example.org/manage/tok-ada-123" in body
    assert "https://digest.example.org/unsubscribe/tok-ada-123/one-click" in body
    assert "ada@example.org subscribed to Daily Papers Digest" in body
    # Non-ASCII text becomes character references: the HTML part stays ASCII.
    assert out.html.isascii() and "&#220;n&#239;c&#246;d&#233;" in body


def test_highlights_are_styled_spans(renderer):
    out = render(renderer)
    hl = re.findall(
        r'<span class="hl"\s+style="[^"]*background-color[^"]*">([^<]*)</span>', out.html
    )
    assert "Latency" in hl and "sparse" in hl and "attention" in hl
    assert "Speculative" in hl and "Decoding" in hl


def test_abstract_is_shortened_at_a_sentence_and_highlights_clipped():
    settings = email_settings(mail={"abstract_chars": 100})
    r = Renderer(settings)
    words = ("sparse", "released")  # "released" is in the last sentence, cut away
    paper = make_paper(1, "A title")
    digest = make_digest([(paper, ("T",), words)])
    out = r.render(digest, make_links(settings, digest.subscriber))
    text = " ".join(out.text.split())
    assert "We study sparse attention for long-context inference. \u2026 matched" in text
    assert out.html.count("released") == 1  # only in "matched: T (sparse, released)"
    assert out.html.count('<span class="hl"') == 1


def test_highlight_spans_beyond_the_cut_do_not_reach_the_ellipsis():
    r = Renderer(email_settings(mail={"abstract_chars": 100}))
    paper = make_paper(1, "T")
    view = r.paper_view(paper)
    markup = r.highlight(paper.abstract[: view.cut] + view.suffix, ((view.cut - 3, 999),), view.cut)
    assert markup.endswith("</span> &#8230;")


def test_text_part_is_complete_and_wrapped(renderer):
    out = render(renderer)
    text = out.text
    for needle in (
        "Daily Papers Digest: 4 new papers",
        "== Sparse attention (2) ==",
        "1.  Nemotron-Flash: Towards Latency-Optimal Hybrid Small Language Models",
        "NVIDIA \u00b7 Nov 24, 2025 \u00b7 2 upvotes",
        "https://huggingface.co/papers?q=Speculative+Decoding+with+Tiny+Drafts",
        "matched: Speculative decoding (speculative, decoding)",
        "https://digest.example.org/unsubscribe/tok-ada-123",
        "Ünïcödé",
    ):
        assert needle in text, needle
    assert_wrapped(text)


def assert_wrapped(text: str) -> None:
    for line in text.splitlines():
        # A URL longer than a line cannot be broken; it stands alone on its line.
        if len(line) > 72:
            assert re.fullmatch(r"\s*\S+", line) and "://" in line, line


def test_empty_digest_is_refused(renderer):
    digest = make_digest([])
    with pytest.raises(EmptyDigestError):
        renderer.render(digest, make_links(renderer.settings, digest.subscriber))


def test_more_than_99_papers_keeps_numbers_aligned(renderer):
    papers = [(make_paper(i, f"Paper number {i} " * 5), ("T",), ("paper",)) for i in range(105)]
    out = render(renderer, make_digest(papers))
    assert "\n105. Paper number 104" in out.text
    assert_wrapped(out.text)


# --- hostile text ----------------------------------------------------------------------------


def hostile_digest():
    sub = make_subscriber(name=HOSTILE, topics=(HOSTILE, "Safe"))
    paper = make_paper(
        1,
        f"Title {HOSTILE} <b>bold</b>",
        abstract=f"Abstract {HOSTILE} sparse text. \ue000 marker \ue001 chars. " * 3,
        organization=HOSTILE,
    )
    return make_digest([(paper, (HOSTILE, "Safe"), ("script", "onerror", "sparse", "]]>"))], sub)


def test_hostile_text_is_inert_in_html(renderer):
    digest = hostile_digest()
    out = render(renderer, digest)
    assert check_html(out.html) == []
    assert "<script" not in out.html and "<img" not in out.html and "<b>bold" not in out.html
    assert "&lt;script&gt;" in out.html
    # Highlights inside hostile text still escape each piece.
    assert '<span class="hl"' in out.html
    assert "\ue000" not in out.html and "\ue001" not in out.html


def test_admin_note_markdown_is_sanitised():
    note = (
        "**Welcome**, see [our site](https://example.org/x?a=1&b=2).\n\n"
        f"{HOSTILE}\n\n[click](javascript:alert(1)) <a href='javascript:alert(4)'>x</a>"
        '<iframe src="https://evil"></iframe>'
    )
    settings = email_settings(mail={"admin_note": note})
    r = Renderer(settings)
    out = r.render(make_digest(), make_links(settings, make_subscriber()))
    assert check_html(out.html) == []
    assert "<strong>Welcome</strong>" in out.html
    assert 'href="https://example.org/x?a=1&amp;b=2"' in out.html
    assert "javascript:" not in out.html.lower().replace("javascript:alert(3)", "")
    assert "<iframe" not in out.html and "<script" not in out.html
    assert "Welcome" in out.text


def test_links_must_be_http_urls():
    with pytest.raises(ValidationError, match="manage_url"):
        Links("javascript:alert(1)", "https://x/u", "mailto:u@x")
    with pytest.raises(ValidationError, match="unsubscribe_url"):
        Links("https://x/m", "https://x/u\r\nBcc: a@b", "mailto:u@x")
    with pytest.raises(ValidationError, match="mailto"):
        Links("https://x/m", "https://x/u", "https://not-mailto")


def test_make_links_quotes_tokens_and_derives_the_mailto():
    settings = email_settings()
    links = make_links(settings, make_subscriber(), unsubscribe_token="a/b c")
    assert links.unsubscribe_url == "https://digest.example.org/unsubscribe/a%2Fb%20c/one-click"
    assert links.unsubscribe_mailto == "mailto:unsubscribe@example.org?subject=unsubscribe"
    custom = email_settings(site={"unsubscribe_mailto": "leave@lists.example.org"})
    assert make_links(custom, make_subscriber()).unsubscribe_mailto.startswith(
        "mailto:leave@lists.example.org?"
    )


def test_senders_links_are_make_links_with_signed_tokens():
    # One builder: what pipeline, preview and the web app send is make_links with signed tokens.
    settings, sub = email_settings(), make_subscriber()
    signer = LinkSigner("a secret for the test")
    sent = links_for(settings, signer, sub)
    token = sent.manage_url.rpartition("/")[2]
    assert signer.read_token("manage", token) == sub.token
    unsub = sent.unsubscribe_url.removesuffix("/one-click").rpartition("/")[2]
    assert signer.read_token("unsubscribe", unsub) == sub.token
    assert sent == make_links(settings, sub, manage_token=token, unsubscribe_token=unsub)


# --- helpers, property-tested ----------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120)


_HL_TAG = re.compile(r"(<span class=\"hl\"\s+style=\"[^\"]*\">|</span>)")


@settings(max_examples=300, deadline=None)
@given(
    _TEXT,
    st.lists(st.tuples(st.integers(-5, 130), st.integers(-5, 130)), max_size=6)
    | st.lists(st.integers(0, 130), max_size=12).map(
        lambda xs: list(zip(sorted(xs)[::2], sorted(xs)[1::2], strict=False))  # the usual shape
    ),
    st.none() | st.integers(0, 130),
)
@example("abcdef", [(1, 4)], 3)
@example("é<b>", [(0, 1), (2, 4)], None)
def test_highlight_round_trips_to_the_text(text, spans, limit):
    text = clean_text(text)  # what reaches the renderer: parsed, so cleaned
    r = shared_renderer()
    markup = str(r.highlight(text, tuple(spans), limit))
    assert markup.isascii()
    # Walk the markup: exactly the characters inside the clipped, merged spans are marked.
    marked, at, inside, plain = set(), 0, False, []
    for piece in _HL_TAG.split(markup):
        if _HL_TAG.fullmatch(piece):
            inside = not piece.startswith("</")
            continue
        assert "<" not in piece
        chars = html.unescape(piece)
        if inside:
            marked.update(range(at, at + len(chars)))
        at += len(chars)
        plain.append(chars)
    assert "".join(plain) == text
    end = len(text) if limit is None else limit
    assert marked == {i for s, e in spans for i in range(max(s, 0), min(e, end, len(text)))}
    assert markup.count("<span") == sum(hit for *_, hit in bounds(spans, len(text), end))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(alphabet="abcdefghij:/.", min_size=1, max_size=90), max_size=40),
    st.integers(10, 80),
)
def test_wrap_keeps_words_and_width(words, width):
    text = " ".join(words)
    out = wrap(text, width, "  ", "    ")
    assert out.split() == text.split()
    for line in out.splitlines():
        assert len(line) <= width or len(line.split()) == 1


def test_shorten_at_sentence():
    text = "First sentence here. Second one, e.g. With an abbreviation. Third 3.5 value. Tail"
    assert shorten_at_sentence(text, 200) == (len(text), "")
    cut, suffix = shorten_at_sentence(text, 50)
    assert text[:cut] == "First sentence here." and suffix == " \u2026"
    cut, suffix = shorten_at_sentence(text, 64)
    assert text[:cut] == "First sentence here. Second one, e.g. With an abbreviation."
    cut, suffix = shorten_at_sentence("word " * 100, 50)
    assert cut <= 50 and suffix == "\u2026"


def test_bounds_cut_the_text_at_the_clipped_merged_spans():
    spans = [(5, 8), (0, 2), (1, 3), (8, 9), (20, 30), (-3, 0)]
    assert bounds(spans, 28, 25) == [
        (0, 3, True),
        (3, 5, False),
        (5, 9, True),
        (9, 20, False),
        (20, 25, True),
        (25, 28, False),
    ]
    assert segments("sparse attention", [(0, 6)]) == [("sparse", True), (" attention", False)]


@given(
    st.lists(st.tuples(st.integers(-5, 40), st.integers(-5, 40)), max_size=12),
    st.integers(0, 35),
    st.none() | st.integers(0, 40),
)
def test_bounds_cover_the_text_and_exactly_the_clipped_spans(spans, length, limit):
    pieces = bounds(spans, length, limit)
    end = length if limit is None else min(limit, length)
    starts = [s for s, _, _ in pieces]
    assert starts == [0, *(e for _, e, _ in pieces[:-1])][: len(pieces)]  # contiguous from 0...
    assert (pieces[-1][1] if pieces else 0) == length  # ...to the end, no empty piece
    assert all(s < e for s, e, _ in pieces)
    covered = {i for start, stop in spans for i in range(max(start, 0), min(stop, end))}
    assert {i for s, e, hit in pieces if hit for i in range(s, e)} == covered
    assert not any(a[2] and b[2] for a, b in itertools.pairwise(pieces))  # hits never touch


# --- golden ----------------------------------------------------------------------------------


def normalise(data: bytes) -> str:
    """The message with Date, Message-ID and MIME boundaries replaced by fixed text."""
    text = data.decode("utf-8")
    text = re.sub(r"(?m)^Date: .*$", "Date: <DATE>", text)
    text = re.sub(r"(?m)^Message-ID: .*$", "Message-ID: <MESSAGE-ID>", text)
    for boundary in set(re.findall(r'boundary="([^"]+)"', text)):
        text = text.replace(boundary, "BOUNDARY")
    return text.replace("\r\n", "\n")


def test_golden_message(renderer):
    digest = make_digest()
    links = make_links(renderer.settings, digest.subscriber)
    msg = build_message(renderer.render(digest, links), digest, links, renderer.settings)
    got = normalise(msg.data)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got, encoding="utf-8")
    assert GOLDEN.exists(), "golden file missing: run with UPDATE_GOLDEN=1 and review it"
    assert got == GOLDEN.read_text(encoding="utf-8"), (
        "rendered digest differs from tests/fixtures/golden/digest.eml; if the change is "
        "intended, rerun with UPDATE_GOLDEN=1 and review the diff"
    )


def test_paper_view_is_made_once_per_paper_and_redone_when_the_paper_changes():
    r = Renderer(email_settings())
    digest = make_digest()
    links = make_links(r.settings, digest.subscriber)
    r.render(digest, links)
    r.render(digest, links)
    assert len(r._papers) == len(digest.items)  # cached per paper, not per digest
    first = digest.items[0]
    more_upvotes = dataclasses.replace(first.paper, upvotes=(first.paper.upvotes or 0) + 5)
    assert r.paper_view(first.paper).facts != r.paper_view(more_upvotes).facts  # not stale


def test_a_paper_template_override_fails_with_its_name(tmp_path):
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "paper.html").write_text("<p>{{ item.nothing_here }}</p>")
    settings = email_settings(templates={"override_dir": str(tmp_path)})
    digest = make_digest()
    with pytest.raises(templates.TemplateError, match="nothing_here"):
        Renderer(settings).render(digest, make_links(settings, digest.subscriber))


def test_paper_templates_may_place_the_item_fields_in_any_order(tmp_path):
    digest = make_digest()
    (tmp_path / "email").mkdir()
    (tmp_path / "email" / "paper.txt").write_text(
        "[{{ item.text_matched }}] {{ item.paper.url }} [{{ item.text_title }}]\n"
    )
    (tmp_path / "email" / "paper.html").write_text(
        "<i>{{ item.matched_html }}</i><b>{{ item.abstract_html }}</b><u>{{ item.title_html }}</u>"
    )
    settings = email_settings(templates={"override_dir": str(tmp_path)})
    links = make_links(settings, digest.subscriber)
    renderer = Renderer(settings)
    out = renderer.render(digest, links)
    first = renderer.sections(digest.items[:1], links)[0][0].items[0]
    assert first.text_title.startswith("1.  Nemotron-Flash")  # numbers align in 4 columns
    assert f"[{first.text_matched}] {first.paper.url} [{first.text_title}]\n" in out.text
    html_part = f"<i>{first.matched_html}</i><b>{first.abstract_html}</b><u>{first.title_html}</u>"
    assert html_part in out.html


@pytest.mark.parametrize("marker", ["\ue0000\ue001", "x \ue0002\ue001 y", "\ue000\ue001"])
def test_an_abstract_shaped_like_a_fragment_marker_renders(renderer, marker):
    # Private-use characters once reached the renderer, whose slot markers were made of them: an
    # abstract holding a marker's shape made its whole digest fail to render.
    digest = make_digest()
    first = digest.items[0]
    hostile = dataclasses.replace(first.paper, abstract=first.paper.abstract + " " + marker)
    digest.items[0] = dataclasses.replace(first, paper=hostile)
    render(renderer, digest)  # the email's structure never depends on the text
    # And such text never gets that far: the parser drops private-use characters.
    parsed = parse_text(format_dump([make_paper_record(hostile)])).papers[0]
    assert parsed.abstract == (first.paper.abstract + " " + marker.translate(PRIVATE_USE)).strip()
    digest.items[0] = dataclasses.replace(
        first, paper=dataclasses.replace(hostile, abstract=parsed.abstract)
    )
    out = render(renderer, digest)
    assert "\ue000" not in out.html + out.text and "&#57344;" not in out.html


def make_paper_record(paper) -> Paper:
    return Paper(paper.title, paper.abstract, None, None, None, None, None, 1)


_FIELD = st.text(st.characters(codec="utf-8") | st.sampled_from(list("\ue000\ue001\u202e\x1b\n")))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_FIELD, _FIELD, _FIELD), min_size=1, max_size=4), _FIELD)
def test_a_dump_with_random_text_in_every_field_parses_and_renders(fields, topic):
    from digest.errors import ParseError
    from digest.feed import FeedEntry, build_feed
    from digest.highlight import highlight_spans

    records = [
        Paper(f"T {title}", f"A {abstract}.", 3, org or None, "org" if org else None, None, None)
        for title, abstract, org in fields
    ]
    try:
        parsed = parse_text(format_dump(records)).papers
    except ParseError:
        return  # text that leaves no title/abstract pair is refused, named: fine
    topic = clean_text(topic).strip() or "Topic"
    papers = [
        (make_paper(i + 1, p.title, p.abstract, organization=p.organization), (topic,), ("t", "a"))
        for i, p in enumerate(parsed)
    ]
    digest = make_digest(papers)
    for k, item in enumerate(digest.items):  # spans as the matcher finds them, parsed text
        match = dataclasses.replace(
            item.match,
            title_spans=highlight_spans(item.paper.title, "a OR t"),
            abstract_spans=highlight_spans(item.paper.abstract, "a OR t"),
        )
        digest.items[k] = dataclasses.replace(item, match=match)
    out = render(shared_renderer(), digest)
    assert "\ue000" not in out.html + out.text and "\u202e" not in out.html + out.text
    links = make_links(shared_renderer().settings, digest.subscriber)
    build_message(out, digest, links, shared_renderer().settings)
    build_feed(
        [FeedEntry(p) for p, _, _ in papers],
        fmt="atom",
        title="T",
        self_url="https://digest.example.org/feeds/all.atom",
        site_url="https://digest.example.org",
        description="D",
        max_items=10,
        max_bytes=1_000_000,
    )


def test_a_paper_without_facts_has_no_byline_and_numbers_restart_per_section():
    bare = make_paper(1, "Bare Paper About Sparse Things")
    other = make_paper(2, "Second Sparse Paper", organization="Acme")
    third = make_paper(3, "A Paper On Latency", upvotes=3)
    digest = make_digest(
        [(bare, ("Sparse",), ("Sparse",)), (third, ("Latency",), ("Latency",)),
         (other, ("Sparse",), ("Sparse",))]
    )  # fmt: skip
    settings = email_settings()
    rendered = Renderer(settings).render(digest, make_links(settings, digest.subscriber))
    for part in (rendered.text, rendered.html):
        assert "Hugging Face Daily Papers" not in part
    assert '<p class="facts"></p>' not in rendered.html
    text = rendered.text
    # Sections in the order of their best paper; numbers as read within each section.
    assert (
        text.index("1.  Bare Paper") < text.index("2.  Second Sparse") < text.index("1.  A Paper")
    )
    bare_block = text[text.index("1.  Bare Paper") : text.index("2.  Second Sparse")]
    assert bare_block.splitlines()[1].strip().startswith("https://")  # no empty byline line


def test_why_beyond_the_words_is_in_both_parts(renderer: Renderer) -> None:
    digest = make_digest()
    first = digest.items[0]
    why = 'suggested: like "A <liked> paper"'
    digest.items[0] = dataclasses.replace(first, match=dataclasses.replace(first.match, why=why))
    out = render(renderer, digest)
    assert "; suggested: like &#34;A &lt;liked&gt; paper&#34;" in out.html or (
        "; suggested: like &quot;A &lt;liked&gt; paper&quot;" in out.html
    )
    assert why in " ".join(out.text.split())


def test_each_paper_carries_its_two_feedback_links_in_both_parts(renderer: Renderer):
    from digest.links import check_feedback_mac

    settings, sub = email_settings(), make_subscriber()
    signer = LinkSigner("a secret for the test")
    digest = make_digest(subscriber=sub)
    out = renderer.render(digest, links_for(settings, signer, sub))
    base = settings.site.base_url.rstrip("/")
    found = re.findall(re.escape(base) + r"(/feedback/[^\s\"<]+)", out.text)
    hrefs = re.findall(r'href="' + re.escape(base) + r'(/feedback/[^"]+)"', out.html)
    assert len(found) == len(hrefs) == 2 * len(digest.items)
    assert sorted(found) == sorted(html.unescape(h) for h in hrefs)
    assert "More like this" in out.text and "Not for me" in out.html
    for item in digest.items:
        topic = item.match.topics[0]
        like, dislike = links_for(settings, signer, sub).feedback_urls(item.paper.id, topic) or ()
        assert like.removeprefix(base) in found and dislike.removeprefix(base) in found
        sid, pid, index, verdict, mac = like.removeprefix(base + "/feedback/").split("/")
        named = check_feedback_mac(signer.feedback_key, sub, int(pid), int(index), verdict, mac)
        assert (int(sid), int(pid), named, verdict) == (sub.id, item.paper.id, topic, "like")
    # without a signer (fixtures, the golden file) no feedback link is made
    plain = renderer.render(digest, make_links(settings, sub))
    assert "/feedback/" not in plain.text + plain.html


# --- includes pasted in at load (templates.IncludeInliner) against stock includes -------------


def _both_ways(settings, digests) -> None:
    """Every digest renders to the same subject, HTML and text with includes pasted in as with
    Jinja's own {% include %}, links with feedback URLs included."""
    pasted, stock = Renderer(settings), Renderer(settings, inline_includes=False)
    signer = LinkSigner("a-secret-for-the-tests")
    for digest in digests:
        links = links_for(settings, signer, digest.subscriber, digest.id)
        assert pasted.render(digest, links) == stock.render(digest, links)


def _rising(digest):
    items = [dataclasses.replace(item, rising=(i % 2 == 1)) for i, item in enumerate(digest.items)]
    return dataclasses.replace(digest, items=items)


def test_pasted_includes_render_as_stock_includes():
    many = [
        (make_paper(100 + i, f"Paper {i} on sparse attention", upvotes=i), ("Sparse attention",),
         ("sparse",))
        for i in range(120)
    ]  # fmt: skip
    digests = [make_digest(), hostile_digest(), _rising(make_digest()), make_digest(many)]
    _both_ways(email_settings(), digests)
    # The loader really pasted them: no include is left in the email templates' source.
    env = shared_renderer().env
    source, _, _ = env.loader.get_source(env, "email/digest.html")
    assert "include" not in source and "{% with +%}" in source


def _overrides(tmp_path, **files: str):
    """Settings whose override folder holds these email templates (name: source)."""
    (tmp_path / "email").mkdir()
    for name, source in files.items():
        (tmp_path / "email" / name.replace("_", ".", 1)).write_text(source)
    return email_settings(templates={"override_dir": str(tmp_path)})


@pytest.mark.parametrize(
    "paper_txt",
    [
        # its own {% set %} must not leak into the next paper or the digest
        "{{ n is defined }}{% set n = 1 %}{{ n }} {{ item.text_title }} {{ section.topic }}\n",
        # whitespace at both ends, a loop inside, the includer's loop variable
        "\n  {{ item.match.paper_id }}\n{% for w in item.match.terms %}  {{ w }}\n{% endfor %}   ",
        # a stock include sees no `loop` of the includer's for: such a template stays one
        "{% if loop is defined %}L{% endif %}{{ item.text_title }}\n",
        "{{ item.text_title }}",  # no trailing newline
        "  {% if item.rising %}R{% endif %}{{ item.text_title }}\n",  # lstripped first tag
        # what cannot be pasted stays a stock include: a macro, a nested include
        "{% macro m(x) %}<{{ x }}>{% endmacro %}{{ m(item.text_title) }}\n",
        '{% include "email/extra.txt" %}|{{ item.text_title }}\n',
    ],
)
def test_an_override_paper_template_renders_the_same_pasted(tmp_path, paper_txt):
    settings = _overrides(
        tmp_path,
        paper_txt=paper_txt,
        extra_txt="extra {{ item.match.paper_id }}",
        paper_html="{% set fb = 1 %}<p>{{ item.title_html }} {{ fb }}</p>\n"
        "  {% if item.rising %}R{% endif %}\n",
    )
    _both_ways(settings, [make_digest(), _rising(make_digest()), hostile_digest()])


def test_a_broken_paper_override_is_named_at_start_not_pasted(tmp_path):
    settings = _overrides(tmp_path, paper_html="<p>{% if item.rising %}never closed</p>\n")
    with pytest.raises(templates.TemplateError, match=r"email/paper\.html"):
        Renderer(settings)


def test_a_pasted_include_keeps_its_sets_to_itself_outside_a_loop(tmp_path):
    settings = _overrides(
        tmp_path,
        digest_txt='{% set item = sections[0].items[0] %}{% include "email/paper.txt" %}'
        "|{{ n is defined }}\n",
        paper_txt="{% set n = 1 %}{{ n }}",
    )
    _both_ways(settings, [make_digest()])
    out = Renderer(settings).render(make_digest(), make_links(settings, make_subscriber()))
    assert out.text == "1|False\n"


def test_a_text_partial_included_from_html_keeps_its_own_escaping(tmp_path):
    settings = _overrides(
        tmp_path,
        paper_html='{% include "email/title.txt" %}<p>{{ item.title_html }}</p>\n',
        title_txt="{{ item.paper.title }}",
    )
    _both_ways(settings, [hostile_digest()])  # a title with <b>bold</b>: not escaped in .txt


@pytest.mark.parametrize(
    "includer",
    [
        '{%- raw %}{% include "b" %}{% endraw %}',
        '{% autoescape false %}{% include "b" %}{% endautoescape %}',
    ],
)
def test_includes_in_raw_or_autoescape_sections_stay_includes(includer):
    loader = jinja2.DictLoader({"a.html": includer, "b": "<{{ x }}>"})
    env = jinja2.Environment(loader=templates.IncludeInliner(loader), autoescape=True)
    source, _, _ = env.loader.get_source(env, "a.html")
    assert source == includer
