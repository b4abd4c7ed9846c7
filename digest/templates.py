"""Finding templates and the one Jinja2 environment every renderer (email, web) uses.

Templates are looked up, first match wins, in:

1. `settings.templates.override_dir` (same layout as the project's `templates/`), if set;
2. the installed package's `digest/_templates` (the wheel build copies the top-level `templates/`
   there, so an installed digest works from any folder);
3. the source checkout's top-level `templates/` (running from a clone).

Autoescaping is decided by file name with a deny-list, not an allow-list: every template is
escaped unless its name ends in `.txt`, so `digest.html.j2`, `x.htm` or `x.xhtml` cannot slip
through the way they would with `select_autoescape(["html"])`. `html_template()` asserts it.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import css_inline
import jinja2
import markupsafe

from digest.config import Settings
from digest.errors import DigestError

PACKAGE_DIR = Path(__file__).resolve().parent
_PLAIN_SUFFIXES = (".txt",)


class TemplateError(DigestError):
    """A template is missing, malformed, or fails to render; the message names the template."""


def template_dirs(settings: Settings) -> list[Path]:
    """The folders searched for templates, highest precedence first (only those that exist)."""
    candidates: list[Path] = []
    override = settings.templates.override_dir
    if override is not None:
        if not override.is_dir():
            raise TemplateError(
                f"templates.override_dir: {override} is not a folder (fix or remove the setting)"
            )
        candidates.append(override)
    candidates.append(PACKAGE_DIR / "_templates")
    candidates.append(PACKAGE_DIR.parent / "templates")
    dirs = [d for d in candidates if d.is_dir()]
    if not dirs:
        raise TemplateError(
            "no templates folder found (expected digest/_templates in the installed package "
            "or templates/ in the source checkout)"
        )
    return dirs


def autoescape_for(name: str | None) -> bool:
    """Whether a template is HTML-escaped: always, unless its name ends in .txt."""
    return name is None or not name.endswith(_PLAIN_SUFFIXES)


HTML_SPECIAL = "&<>\"'"  # what HTML escaping replaces (markupsafe's five)
_HTML_SPECIAL = re.compile(f"[{HTML_SPECIAL}]")


def escape_html(text: str) -> str:
    """markupsafe.escape() as a str (the same rule as autoescaping) for HTML built in code."""
    if _HTML_SPECIAL.search(text) is None:
        return text
    return str(markupsafe.escape(text))


def make_environment(settings: Settings) -> jinja2.Environment:
    """A Jinja2 environment over `template_dirs`, autoescaping, with StrictUndefined."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(settings)]),
        autoescape=autoescape_for,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        cache_size=-1,  # a handful of templates: a plain dict, not an LRU with a lock per lookup
    )
    return env


def html_template(env: jinja2.Environment, name: str) -> jinja2.Template:
    """Load an HTML template, refusing one the environment would not autoescape."""
    escapes = env.autoescape(name) if callable(env.autoescape) else env.autoescape
    if not escapes:
        raise TemplateError(f"template {name}: autoescaping is off for an HTML template")
    return load_template(env, name)


def load_template(env: jinja2.Environment, name: str) -> jinja2.Template:
    """Load a template, turning Jinja2's errors into a TemplateError naming file and line."""
    try:
        return env.get_template(name)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"template {name} not found in {_searched(env)}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"template {exc.filename or name}:{exc.lineno}: {exc.message}"
        ) from None


def template_source(env: jinja2.Environment, name: str) -> tuple[str, str | None]:
    """The raw source of a template and the file it came from."""
    assert env.loader is not None
    try:
        source, filename, _ = env.loader.get_source(env, name)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"template {name} not found in {_searched(env)}") from None
    return source, filename


def _searched(env: jinja2.Environment) -> str:
    loader = env.loader
    if isinstance(loader, jinja2.FileSystemLoader):
        return ", ".join(str(p) for p in loader.searchpath)
    return "the template folders"


# --- CSS inlining on template sources -------------------------------------------------------
#
# Email clients ignore most <style> sheets, so styles must sit in style="" attributes. Inlining
# every email costs more than rendering it, so the inliner runs once per template file, on the
# Jinja source. Jinja tags are swapped for placeholders the HTML parser keeps in place: an HTML
# comment between elements (text there would be foster-parented out of a <table>), a bare token
# inside a tag or in <title>/<style>. Every placeholder must come back exactly once, or the
# template is refused with its name.

_JINJA_TAG = re.compile(r"\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", re.DOTALL)
_RAW_ELEMENT = re.compile(r"<(/?)(title|style|script|textarea)\b", re.IGNORECASE)
_MARK = "zzjinja"


def inline_template_source(source: str, css: str, *, name: str = "<template>") -> str:
    """Inline `css` into an HTML Jinja template's source, keeping every Jinja tag intact."""
    if _MARK in source:
        raise TemplateError(f"template {name}: contains the reserved text {_MARK!r}")
    tags: list[str] = []
    out: list[str] = []
    in_tag = in_raw = False
    pos = 0
    for m in _JINJA_TAG.finditer(source):
        text = source[pos : m.start()]
        in_tag, in_raw = _scan_state(text, in_tag, in_raw)
        out.append(text)
        pos = m.end()
        if m.group().startswith("{#"):
            continue  # a Jinja comment renders to nothing; drop it here
        token = f"{_MARK}{len(tags)}z"
        tags.append(m.group())
        out.append(token if in_tag or in_raw else f"<!--{token}-->")
    out.append(source[pos:])
    protected = "".join(out)
    try:
        if re.search(r"<html\b", protected, re.IGNORECASE):
            inliner = css_inline.CSSInliner(load_remote_stylesheets=False, extra_css=css)
            inlined = inliner.inline(protected)
        else:
            inliner = css_inline.CSSInliner(load_remote_stylesheets=False)
            inlined = inliner.inline_fragment(protected, css)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError(f"template {name}: CSS inlining failed: {exc}") from None
    if not inlined.isascii():
        # The parser decoded entities like &middot;: make them references again, so the
        # rendered HTML stays ASCII (compact strings, and 7bit-safe in a message).
        inlined = inlined.encode("ascii", "xmlcharrefreplace").decode("ascii")
    for i, tag in enumerate(tags):
        token = f"{_MARK}{i}z"
        if f'{token}=""' in inlined:
            raise TemplateError(
                f"template {name}: Jinja tag {tag!r} stands where an attribute name goes; "
                "put it inside an attribute value or between elements"
            )
        for form in (f"<!--{token}-->", token):
            if inlined.count(form) == 1 and (form != token or inlined.count(token) == 1):
                inlined = inlined.replace(form, tag, 1)
                break
        else:
            raise TemplateError(
                f"template {name}: Jinja tag {tag!r} was moved or lost by the CSS inliner "
                "(keep Jinja statements between elements, and wrap table rows in <tbody>)"
            )
    if _MARK in inlined:
        raise TemplateError(f"template {name}: the CSS inliner duplicated a Jinja tag")
    return inlined


def _scan_state(text: str, in_tag: bool, in_raw: bool) -> tuple[bool, bool]:
    """Whether the end of `text` is inside <...> markup, and inside a raw-text element."""
    lt, gt = text.rfind("<"), text.rfind(">")
    if lt > gt:
        in_tag = True
    elif gt >= 0:
        in_tag = False
    raws = list(_RAW_ELEMENT.finditer(text))
    if raws:
        in_raw = raws[-1].group(1) == ""
    return in_tag, in_raw


class InliningLoader(jinja2.BaseLoader):
    """Wraps a loader: HTML templates whose name starts with `prefix` come back CSS-inlined."""

    def __init__(self, inner: jinja2.BaseLoader, css: str, prefix: str = "email/") -> None:
        self.inner = inner
        self.css = css
        self.prefix = prefix

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, typing.Callable[[], bool] | None]:
        source, filename, uptodate = self.inner.get_source(environment, template)
        if template.startswith(self.prefix) and autoescape_for(template):
            source = inline_template_source(source, self.css, name=filename or template)
        return source, filename, uptodate

    def list_templates(self) -> list[str]:
        return self.inner.list_templates()


# --- include inlining on template sources ---------------------------------------------------
#
# An email includes its paper template once per paper, in both parts; each stock `{% include %}`
# builds a new template context (profiled: a third of rendering a digest). Jinja's own `{% with
# %}` scope gives the same view of the including context and keeps the included template's
# `{% set %}` to itself, so a plain include is pasted in as `{% with +%}source{%+ endwith %}` when
# the environment loads the template. The output is the same (tests/test_render.py renders
# both ways); any include this cannot reproduce exactly stays a stock include.

_INCLUDE_OR_COMMENT = re.compile(r'\{#.*?#\}|\{%\s*include\s+"([^"{}%]+)"\s*%\}', re.DOTALL)
# Included sources that a pasted copy would not reproduce: inheritance, blocks, macros and
# imports (their own namespaces), nested includes and raw sections.
_NOT_PASTED = re.compile(r"\{%[-+]?\s*(extends|block|macro|call|import|from|include|raw)\b")
# Includers whose includes all stay stock: raw sections (an include there is text) and
# autoescape blocks (an include keeps its own name's escaping; a pasted copy would not).
_KEEP_INCLUDES = re.compile(r"\{%[-+]?\s*(raw|autoescape)\b")
_INDENTED_START = re.compile(r"[ \t]+\{[%#]")
# Names an included template sees differently from the includer (a stock include gets no
# `loop` of the includer's for, and its own `self`).
_CONTEXT_NAMES = re.compile(r"\b(loop|self|super|caller|varargs|kwargs)\b")


class IncludeInliner(jinja2.BaseLoader):
    """Wraps a loader: each plain `{% include "name" %}` (a literal name, context passed, no
    whitespace control) comes back as the named template's source in a `{% with %}` scope."""

    def __init__(self, inner: jinja2.BaseLoader) -> None:
        self.inner = inner

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, typing.Callable[[], bool] | None]:
        source, filename, uptodate = self.inner.get_source(environment, template)
        if _KEEP_INCLUDES.search(source):
            return source, filename, uptodate

        def paste(m: re.Match[str]) -> str:
            name = m.group(1)
            if name is None:  # a comment: kept as written
                return m.group()
            try:
                included, _, _ = self.inner.get_source(environment, name)
                environment.parse(included, name)  # a broken one stays an include, named
            except (jinja2.TemplateNotFound, jinja2.TemplateSyntaxError):
                return m.group()
            if (
                autoescape_for(name) != autoescape_for(template)  # escaped as its own name says
                or _NOT_PASTED.search(included)
                or _INDENTED_START.match(included)  # lstrip_blocks on its own first line
                or any(_CONTEXT_NAMES.search(tag) for tag in _JINJA_TAG.findall(included))
            ):
                return m.group()
            # "+" turns off trim_blocks after the opening tag and lstrip_blocks before the
            # closing one: the included source's first newline and last indent stay, as when
            # it renders on its own.
            return "{% with +%}" + included + "{%+ endwith %}"

        return _INCLUDE_OR_COMMENT.sub(paste, source), filename, uptodate

    def list_templates(self) -> list[str]:
        return self.inner.list_templates()
