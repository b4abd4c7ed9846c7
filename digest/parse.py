"""The dump parser: saved "Daily Papers" pages to Paper records, deciding layout by structure.

How a dump is read (the README documents it for users):

1. Lines are split on LF after CRLF/CR are folded; each line is cleaned by the project's one text
   policy (`digest.text.clean_text`: controls become spaces; private-use, bidi-override and
   zero-width characters are dropped; NFC) and stripped, so every field of a Paper is clean.
2. Every non-blank line is one token: page chrome ("Subscribe", "Daily Papers"...), a metadata line
   ("• 5 authors", "·", a date such as "Nov 24, 2025 2") or text.
3. Text lines pair up as (title, abstract). Structure decides, not the file name: blank lines are
   only noted (for the layout description), metadata closes an entry, and the alternation title,
   abstract is checked against the shape of each line (a title is at most 300 characters and does
   not end with a period; an abstract ends a sentence or is longer than any title). When the shape
   contradicts the alternation, a small dynamic programme finds the cheapest reading and every line
   it skips or doubts becomes a warning with its line number: never a silent guess.
4. An organization line ("nvidia NVIDIA": hub id, then display name) is recognised by position: it
   sits in a metadata group, just before the "·" or the date line.
"""

from __future__ import annotations

import codecs
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from itertools import compress
from pathlib import Path

from digest.errors import ParseError
from digest.models import Paper, ParseResult, ParseWarning
from digest.text import clean_text

TITLE_MAX = 300  # longest line that can be a title; real titles stay under 200
_ORG_MAX = 120  # longest line that can be an organization line
_META_MAX = 40  # metadata lines are short; longer lines skip the metadata regex

_CHROME = frozenset(
    {
        "new",
        "Get trending papers in your email inbox!",
        "Get trending papers in your email inbox once a day!",
        "Subscribe",
        "Daily Papers",
        "byAK and the research community",
    }
)
_GLUED_CHROME = "Subscribe"
_SHORT_MAX = max(_META_MAX, *map(len, _CHROME))  # lines longer than this are always text

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_META_RE = re.compile(
    r"(?:[•∙]\s*)?(?P<n>\d{1,5})\s+authors?"
    r"|(?P<dot>[·•∙])"
    r"|(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+(?P<day>\d{1,2})"
    r"(?:(?P<comma>,)\s*(?P<year>\d{4}))?(?:\s+(?P<up>\d{1,7}))?"
)
# Hub ids are letters, digits, "-", "_" and "."; the display name is free text.
_ORG_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s+(\S.*)")

# Token kinds.
_TEXT, _CHROME_K, _AUTH, _DOT, _DATE = range(5)
_META_KINDS = (_AUTH, _DOT, _DATE)

_SENTENCE_END = frozenset(".!?")
_SKIP = 3.0  # cost of leaving a line out of every record
_INF = float("inf")
# Viterbi moves of _pair_slow: their names and the state each leaves from.
_M_SKIP, _M_TITLE, _M_ABSTRACT, _M_SKIP_MID, _M_RETITLE = range(1, 6)
_MOVES = {1: "skip", 2: "title", 3: "abstract", 4: "skip-mid", 5: "retitle"}
_MOVE_FROM = {1: 0, 2: 0, 3: 1, 4: 1, 5: 1}
# More problems than this, beyond one per paper read so far, and the file is not a dump: refused
# at once, not after a full parse (a long archive with a few odd lines per page still parses).
MAX_PROBLEMS = 1_000
_STRAYS = "text lines that pair into no title and abstract"


def _strays_left(lines: int, stray: int) -> int:
    """The fewest warnings pairing `lines` text lines can give when `stray` of them end no
    sentence: each line outside a pair with a sentence-like abstract costs one warning, or half
    of one (a pair whose abstract ends no sentence)."""
    return (2 * stray - lines) // 2


_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"
_KEEP_BYTES = bytes(b for b in range(256) if b not in _CONTROL_BYTES)
# Every byte but the ASCII controls clean_text changes on one line, other than TAB (parse's own).
_NOT_ASCII_CONTROL = bytes(b for b in range(256) if not ((b < 32 and b not in (9, 10)) or b == 127))
_BINARY_CONTROL_SHARE = 0.05  # more control bytes than this share means "not a text file"


# ---------------------------------------------------------------------------------------------
# Public API


def parse_text(
    text: str, *, name: str = "<input>", capture_date: date | None = None
) -> ParseResult:
    """Parse one decoded dump; `capture_date` is when it was saved (default today)."""
    return _parse_text(text, name, capture_date, None)


def _parse_text(
    text: str, name: str, capture_date: date | None, ascii_controls: bool | None
) -> ParseResult:
    # ascii_controls: whether the text holds ASCII controls other than TAB and LF (None: look).
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if ascii_controls is None:
        raw = text.encode("utf-8", "surrogatepass")
        ascii_controls = len(raw.translate(None, _NOT_ASCII_CONTROL)) > 0
    return _Parser(name, capture_date or date.today()).run(text, ascii_controls)


def parse_bytes(
    data: bytes,
    *,
    name: str = "<input>",
    mtime: float | None = None,
    max_bytes: int | None = None,
) -> ParseResult:
    """Check, decode and parse one dump's bytes; `mtime` dates a page without a year."""
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise ParseError(f"file is {size:,} bytes, over the limit of {max_bytes:,}", file=name)
    if data.startswith(_UTF16_BOMS):
        raise ParseError("file is UTF-16 text; save it as UTF-8", file=name, line=1)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if not data or data.isspace():
        raise ParseError("file is empty" if not data else "file holds only white space", file=name)
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ParseError(f"binary file (NUL byte at offset {nul})", file=name, line=line)
    controls = len(data.translate(None, _KEEP_BYTES))
    if controls > _BINARY_CONTROL_SHARE * len(data):
        raise ParseError(f"binary file ({controls} control bytes in {len(data)})", file=name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise ParseError(
            f"not UTF-8: invalid byte 0x{bad} at byte offset {exc.start}", file=name, line=line
        ) from None
    extra = _control_warnings(text) if controls else []
    ref = date.fromtimestamp(mtime) if mtime is not None else None
    result = _parse_text(text, name, ref, bool(controls) or b"\x0c" in data)
    if extra:
        warnings = tuple(sorted(extra + list(result.warnings), key=lambda w: w.line))
        result = ParseResult(result.papers, warnings, result.layout, result.capture_date)
    return result


def parse_file(path: Path, *, max_bytes: int | None = None) -> ParseResult:
    """Read and parse one dump file, refusing it before reading when it is over `max_bytes`."""
    name = str(path)
    try:
        st = path.stat()
        if max_bytes is not None and st.st_size > max_bytes:
            raise ParseError(
                f"file is {st.st_size:,} bytes, over the limit of {max_bytes:,}", file=name
            )
        data = path.read_bytes()
    except IsADirectoryError:
        raise ParseError("is a directory, not a dump file", file=name) from None
    except OSError as exc:
        raise ParseError(f"cannot read: {exc.strerror or exc}", file=name) from None
    return parse_bytes(data, name=name, mtime=st.st_mtime, max_bytes=max_bytes)


def paper_to_json(p: Paper) -> dict:
    """The CONTRACT.md JSON shape of one paper."""
    return {
        "title": p.title,
        "abstract": p.abstract,
        "authors": p.authors,
        "organization": p.organization,
        "organization_id": p.organization_id,
        "published": p.published.isoformat() if p.published else None,
        "upvotes": p.upvotes,
    }


LAYOUTS = ("blocks", "compact", "entries")


def format_dump(
    papers: list[Paper] | tuple[Paper, ...],
    *,
    layout: str = "blocks",
    page_date: str | None = None,
    capture_date: date | None = None,
) -> str:
    """Write papers as a dump in a known layout (for tests, benchmarks and sample data).

    blocks: every line its own blank-separated paragraph (dump 000); compact: no blank lines and
    "Subscribe" glued to the first title (dump 002); entries: one blank-separated block per paper.
    A date is written without its year when it falls within the year before `capture_date`.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    out: list[str] = []
    if layout == "compact":
        out += ["Get trending papers in your email inbox once a day!"]
        out += ["Get trending papers in your email inbox!"]
    else:
        out += ["new", "Get trending papers in your email inbox!", "Subscribe", "Daily Papers"]
        out += ["byAK and the research community"]
        if page_date:
            out.append(page_date)
    entries = [_format_entry(p, capture_date) for p in papers]
    if layout == "compact":
        lines = [line for entry in entries for line in entry]
        if lines:
            lines[0] = _GLUED_CHROME + lines[0]
        return "\n".join(out + lines) + "\n"
    if layout == "blocks":
        return "\n\n".join(out + [line for entry in entries for line in entry]) + "\n"
    return "\n\n".join(["\n\n".join(out)] + ["\n".join(entry) for entry in entries]) + "\n"


# ---------------------------------------------------------------------------------------------
# Internals


def _format_entry(p: Paper, capture_date: date | None) -> list[str]:
    lines = [p.title, p.abstract]
    if p.authors is not None:
        lines.append(f"  • {p.authors} author{'' if p.authors == 1 else 's'}")
    if p.organization_id is not None:
        lines.append(f"{p.organization_id} {p.organization or p.organization_id}")
    if p.published is not None:
        lines.append("·")
        d = p.published
        day = f"{d.strftime('%b')} {d.day}"
        yearless = capture_date is not None and _resolve(d.month, d.day, capture_date) == d
        text = day if yearless else f"{day}, {d.year}"
        lines.append(text if p.upvotes is None else f"{text} {p.upvotes}")
    elif p.authors is not None or p.organization_id is not None:
        lines.append("·")
    return lines


_CONTROL_RE = re.compile("[" + re.escape(_CONTROL_BYTES.decode("ascii")) + "]")


def _cut_off(line: str) -> bool:
    """Whether a file's last line, an abstract, looks stopped mid-word or mid-sentence: it
    ends in a letter or a comma-like mark, and its last word is no URL or file name (about
    one abstract in eleven ends in a link, a number, a quote or a bracket, not a full stop)."""
    end = line.rstrip()
    if not end or not (end[-1].isalpha() or end[-1] in ",;:-(–—"):
        return False
    last = end.split()[-1]
    return "/" not in last and "." not in last.rstrip(",;:-(")


def _control_warnings(text: str) -> list[ParseWarning]:
    """One warning per line holding stray control characters (clean_text replaces them)."""
    return [
        ParseWarning(i + 1, "control characters replaced by spaces")
        for i, line in enumerate(text.split("\n"))
        if _CONTROL_RE.search(line)
    ]


def _resolve(month: int, day: int, ref: date) -> date | None:
    """The latest real date with this month and day that is not later than `ref`."""
    for year in range(ref.year, ref.year - 9, -1):  # 8 years back covers every Feb 29
        try:
            d = date(year, month, day)
        except ValueError:
            if not (month == 2 and day == 29):
                return None
            continue
        if d <= ref:
            return d
    return None


def _title_cost(s: str) -> float:
    if len(s) > TITLE_MAX:
        return _INF
    return 2.0 if s[-1] == "." else 0.0


def _abstract_cost(s: str) -> float:
    if len(s) > TITLE_MAX or s[-1] in _SENTENCE_END:
        return 0.0
    # Short text that ends no sentence is more likely a stray line than an abstract.
    return 1.5 if len(s) >= 100 else 7.0


# Tabs and no-break spaces inside a line become one space; plain double spaces are kept as
# written (searching every abstract for them would cost more than the whole parse).
_ODD_SPACE = re.compile(r" *[\t\xa0][ \t\xa0]*")


def _clean(s: str) -> str:
    return _ODD_SPACE.sub(" ", s)


def _quote(s: str) -> str:
    return repr(s if len(s) <= 60 else s[:57] + "...")


@dataclass(slots=True)
class _Meta:
    line: int
    authors: int | None = None
    organization: str | None = None
    organization_id: str | None = None
    published: date | None = None
    upvotes: int | None = None


class _Parser:
    """One parse of one text; holds only per-call state."""

    def __init__(self, name: str, ref: date) -> None:
        self.name = name
        self.ref = ref
        self.capture = ref
        self.warnings: list[ParseWarning] = []
        self.papers: list[Paper] = []
        self.lines: list[str] = []
        self.last_text = -1  # index of the last text line of the file
        self.with_meta = 0
        self.pairing = 0  # while a run of text lines is paired: the most papers it can give
        self.clean = False

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(ParseWarning(line, message))
        if len(self.warnings) > self._allowed():
            first = min(self.warnings, key=lambda w: w.line)
            raise self._refusal(first.line, first.message)

    def _allowed(self) -> int:
        return MAX_PROBLEMS + len(self.papers) + self.pairing

    def _refusal(self, line: int, message: str) -> ParseError:
        return ParseError(
            f"more than {self._allowed():,} problems, not a dump? "
            f"(first at line {line}: {message})",
            file=self.name,
        )

    @staticmethod
    def kind(s: str) -> tuple[int, re.Match | None]:
        """Classify one stripped, non-blank line."""
        if len(s) > _SHORT_MAX:
            return _TEXT, None
        if s in _CHROME:
            return _CHROME_K, None
        if len(s) <= _META_MAX:
            m = _META_RE.fullmatch(s)
            if m is not None:
                return (_AUTH if m["n"] else _DOT if m["dot"] else _DATE), m
        return _TEXT, None

    def run(self, text: str, ascii_controls: bool = True) -> ParseResult:
        self.clean = "\t" in text or "\xa0" in text
        raw = text.split("\n")
        if self.clean:  # tab runs become one space before the policy would make each one a space
            raw = list(map(_clean, raw))
        # The text policy on every line, so on every field of every Paper. Without ASCII
        # controls in the file (known from its bytes), an ASCII line is clean as it is: the
        # policy's own check costs a scan of every character, a third of the parse.
        if ascii_controls:
            lines = [clean_text(s).strip() for s in raw]
        else:
            lines = [s.strip() if s.isascii() else clean_text(s).strip() for s in raw]
        self.lines = lines
        # Positions of the non-blank lines as machine ints: 8 bytes each, not an int object.
        idx = array("q", compress(range(len(lines)), lines))
        n = len(idx)
        kind_of = self.kind
        seg: list[int] = []  # indexes of the text lines of the entries being read
        stray = 0  # lines of seg that end no sentence (see _pair_slow's refusal)
        started = False  # a text line has been seen: chrome and dates are no longer header
        seen_subscribe = False
        page_date_seen = False
        adjacent = separated = 0
        prev_text = -2
        for k in range(n - 1, -1, -1):
            if len(lines[idx[k]]) > _SHORT_MAX or kind_of(lines[idx[k]])[0] == _TEXT:
                self.last_text = idx[k]
                break
        k = 0
        while k < n:
            i = idx[k]
            s = lines[i]
            if len(s) > _SHORT_MAX:
                kind, m = _TEXT, None
            else:
                kind, m = kind_of(s)
            if kind == _TEXT:
                if not started:
                    started = True
                    s = lines[i] = self._unglue(s, i, seen_subscribe)
                if prev_text == k - 1:
                    if i - idx[k - 1] > 1:
                        separated += 1
                    else:
                        adjacent += 1
                prev_text = k
                if (
                    seg
                    and len(seg) % 2 == 0
                    and len(s) <= _ORG_MAX
                    and k + 1 < n
                    and len(lines[idx[k + 1]]) <= _META_MAX
                    and self._org_at(idx, k)
                ):
                    k = self._meta_group(idx, k, seg)
                    seg, stray = [], 0
                    continue
                seg.append(i)
                if len(s) <= TITLE_MAX and s[-1] not in _SENTENCE_END:
                    stray += 1
                    # Each line that ends a sentence may still make a paper: it counts too.
                    left = _strays_left(len(seg), stray)
                    if len(self.warnings) + left > self._allowed() + len(seg) - stray:
                        raise self._refusal(seg[0] + 1, _STRAYS)
                k += 1
            elif kind == _CHROME_K:
                if started:
                    self.warn(i + 1, f"page chrome {_quote(s)} among the entries; skipped")
                    self._emit(seg, None)
                    seg, stray = [], 0
                else:
                    seen_subscribe = seen_subscribe or s == _GLUED_CHROME
                k += 1
            elif not started and kind == _DATE and not page_date_seen:
                page_date_seen = True
                assert m is not None  # a _DATE line always carries its match
                self._page_date(m, i + 1)
                k += 1
            else:
                k = self._meta_group(idx, k, seg)
                seg, stray = [], 0
        self._emit(seg, None)
        if self.papers and not text.endswith("\n"):
            last = lines[idx[-1]]  # the last non-blank line (short ones too, not just long)
            if self.papers[-1].abstract == self._text(last) and _cut_off(last):
                self.warn(
                    idx[-1] + 1,
                    "the file ends without a newline inside this abstract (cut short?)",
                )
        if not self.papers:
            reason = "no paper found (expected title and abstract lines)"
            if self.warnings:
                w = min(self.warnings, key=lambda w: w.line)
                reason += f"; {len(self.warnings)} problem(s), first at line {w.line}: {w.message}"
            raise ParseError(reason, file=self.name)
        self.warnings.sort(key=lambda w: w.line)
        return ParseResult(
            papers=tuple(self.papers),
            warnings=tuple(self.warnings),
            layout=self._layout(adjacent, separated),
            capture_date=self.capture,
        )

    def _text(self, s: str) -> str:
        return _clean(s) if self.clean else s

    def _unglue(self, s: str, i: int, seen_subscribe: bool) -> str:
        # A saved compact page runs the "Subscribe" button into the first title. A lower-case
        # letter after it may be a real word ("Subscribers..."), so that case is only warned.
        g = len(_GLUED_CHROME)
        if seen_subscribe or not s.startswith(_GLUED_CHROME) or len(s) == g:
            return s
        if s[g].islower():
            self.warn(i + 1, f"title {_quote(s)} may have the page's Subscribe glued to it")
            return s
        return s[g:].lstrip()

    def _layout(self, adjacent: int, separated: int) -> str:
        if adjacent and separated:
            shape = f"mixed ({adjacent} adjacent, {separated} blank-separated text lines)"
        elif adjacent:
            shape = "compact"
        else:
            shape = "blocks"
        count = len(self.papers)
        if self.with_meta == 0:
            return f"{shape}, no metadata"
        if self.with_meta == count:
            return f"{shape}, metadata on every paper"
        return f"{shape}, metadata on {self.with_meta} of {count} papers"

    def _page_date(self, m: re.Match, ln: int) -> None:
        month, day = _MONTHS[m["mon"]], int(m["day"])
        if m["year"]:
            try:
                self.capture = date(int(m["year"]), month, day)
            except ValueError:
                self.warn(ln, f"page date {m[0]!r} is not a real date; ignored")
            return
        d = _resolve(month, day, self.ref)
        if d is None:
            self.warn(ln, f"page date {m[0]!r} is not a real date; ignored")
        else:
            self.capture = d

    def _org_at(self, idx: Sequence[int], k: int) -> bool:
        """A text line is an organization line when a metadata line follows and shape fits."""
        if k + 1 >= len(idx) or self.kind(self.lines[idx[k + 1]])[0] not in (_DOT, _DATE):
            return False
        s = self.lines[idx[k]]
        return len(s) <= _ORG_MAX and _ORG_RE.fullmatch(s) is not None

    def _meta_group(self, idx: Sequence[int], k: int, seg: list[int]) -> int:
        """Read the run of metadata lines starting at idx[k], attach it, return the next k."""
        lines = self.lines
        meta = _Meta(idx[k] + 1)
        n = len(idx)
        while k < n:
            i = idx[k]
            s = lines[i]
            kind, m = self.kind(s)
            if kind == _AUTH:
                assert m is not None  # metadata kinds always carry their match
                if meta.authors is not None:
                    self.warn(i + 1, f"second author count {s!r} in one entry; ignored")
                else:
                    meta.authors = int(m["n"])
            elif kind == _DATE:
                assert m is not None
                self._date(meta, m, i + 1)
            elif kind == _TEXT and self._org_at(idx, k):
                om = _ORG_RE.fullmatch(s)
                assert om is not None  # _org_at matched it
                if meta.organization_id is not None:
                    self.warn(i + 1, f"second organization {s!r} in one entry; ignored")
                else:
                    meta.organization_id, meta.organization = om[1], self._text(om[2])
            elif kind != _DOT:
                break
            k += 1
        self._emit(seg, meta)
        return k

    def _date(self, meta: _Meta, m: re.Match, ln: int) -> None:
        if meta.published is not None:
            self.warn(ln, f"second date {m[0]!r} in one entry; ignored")
            return
        month, day = _MONTHS[m["mon"]], int(m["day"])
        year, up = m["year"], m["up"]
        if year is None and up is not None and len(up) == 4 and 1900 <= int(up) <= 2100:
            # "Feb 26 2025": a year without its comma, or 2025 upvotes? Trust the calendar.
            self.warn(ln, f"date {m[0]!r}: read {up} as the year, not as upvotes")
            year, up = up, None
        if year is not None:
            try:
                d = date(int(year), month, day)
            except ValueError:
                d = None
        else:
            d = _resolve(month, day, self.capture)
        if d is None:
            self.warn(ln, f"date {m[0]!r} is not a real date; ignored")
            return
        if d > self.capture:
            self.warn(ln, f"date {m[0]!r} is later than the page's date {self.capture}")
        meta.published = d
        meta.upvotes = int(up) if up is not None else None

    def _emit(self, seg: list[int], meta: _Meta | None) -> None:
        """Turn a run of text lines (and the metadata after it) into papers."""
        if not seg:
            if meta is not None:
                self.warn(meta.line, "metadata that follows no abstract; ignored")
            return
        # The papers this run may yield (at most one per line that ends a sentence, one per
        # two lines) count towards the cap while it is paired.
        sentences = sum(1 for i in seg if not _abstract_cost(self.lines[i]))
        self.pairing = min(len(seg) // 2, sentences)
        try:
            pairs = self._pair(seg)
        finally:
            self.pairing = 0
        lines = self.lines
        last = None
        if meta is not None and pairs and pairs[-1][1] == seg[-1]:
            last = pairs.pop()
        elif meta is not None:
            self.warn(meta.line, "metadata that follows no abstract; ignored")
        if self.clean:
            self.papers += [
                Paper(_clean(lines[t]), _clean(lines[a]), None, None, None, None, None, t + 1)
                for t, a in pairs
            ]
        else:
            self.papers += [
                Paper(lines[t], lines[a], None, None, None, None, None, t + 1) for t, a in pairs
            ]
        if last is not None:
            assert meta is not None  # last is only taken when metadata follows
            t, a = last
            self.with_meta += 1
            self.papers.append(
                Paper(
                    self._text(lines[t]),
                    self._text(lines[a]),
                    meta.authors,
                    meta.organization,
                    meta.organization_id,
                    meta.published,
                    meta.upvotes,
                    t + 1,
                )
            )

    def _pair(self, seg: list[int]) -> list[tuple[int, int]]:
        """Pair text lines as (title, abstract); warn about every line left out or doubted."""
        n = len(seg)
        lines = self.lines
        if n % 2 == 0:
            for k in range(0, n, 2):
                t, a = lines[seg[k]], lines[seg[k + 1]]
                if (
                    len(t) > TITLE_MAX
                    or t[-1] == "."
                    or not (len(a) > TITLE_MAX or a[-1] in _SENTENCE_END)
                ):
                    break
            else:
                it = iter(seg)
                return list(zip(it, it, strict=True))
        return self._pair_slow(seg)

    def _pair_slow(self, seg: list[int]) -> list[tuple[int, int]]:
        # Viterbi over two states: 0 = expecting a title, 1 = holding a title, expecting its
        # abstract. Ties prefer the line just above an abstract as its title (the known layouts).
        # Costs are kept for the current line only and back pointers as one byte per line and
        # state, so a junk file of a million lines costs megabytes, not gigabytes.
        n = len(seg)
        lines = self.lines
        # Enough lines that can only become warnings refuse the file before the pass below.
        stray = sum(1 for i in seg if _abstract_cost(lines[i]))
        if len(self.warnings) + _strays_left(n, stray) > self._allowed():
            raise self._refusal(seg[0] + 1, _STRAYS)
        c0, c1 = 0.0, _INF
        back = bytearray(2 * (n + 1))  # per line and state: the move that reached it
        for j, i in enumerate(seg):
            s = lines[i]
            tc, ac = _title_cost(s), _abstract_cost(s)
            best = [_INF, _INF]
            how = [0, 0]
            # (move, added cost, next state, cost so far); the first of equal costs wins
            for move, add, nxt, base in (
                (_M_SKIP, _SKIP, 0, c0),
                (_M_TITLE, tc, 1, c0),
                (_M_ABSTRACT, ac, 0, c1),
                (_M_SKIP_MID, _SKIP + 0.1, 1, c1),
                (_M_RETITLE, _SKIP + tc, 1, c1),
            ):
                total = base + add
                if total < best[nxt]:
                    best[nxt] = total
                    how[nxt] = move
            c0, c1 = best
            back[2 * (j + 1)], back[2 * (j + 1) + 1] = how
        state = 0 if c0 <= c1 + _SKIP else 1
        actions = []
        for j in range(n, 0, -1):
            move = back[2 * j + state]
            actions.append(_MOVES[move])
            state = _MOVE_FROM[move]
        actions.reverse()
        pairs: list[tuple[int, int]] = []
        title = -1
        for i, action in zip(seg, actions, strict=True):
            s = lines[i]
            if action == "title":
                title = i
                if _title_cost(s):
                    self.warn(i + 1, f"{_quote(s)} taken as a title although it ends with a period")
            elif action == "retitle":
                self._drop_title(title)
                title = i
            elif action == "abstract":
                if _abstract_cost(s):
                    self.warn(
                        i + 1,
                        f"{_quote(s)} taken as the abstract of line {title + 1} although it is "
                        "short and ends no sentence",
                    )
                pairs.append((title, i))
                title = -1
            elif i == self.last_text and not _title_cost(s):
                self._drop_title(i)
            elif len(s) > TITLE_MAX:
                self.warn(
                    i + 1, "paragraph without a title (a second abstract paragraph?); skipped"
                )
            else:
                self.warn(i + 1, f"unknown line skipped: {_quote(s)}")
        if title >= 0:
            self._drop_title(title)
        return pairs

    def _drop_title(self, i: int) -> None:
        s = self.lines[i]
        if i == self.last_text:
            self.warn(
                i + 1,
                f"incomplete entry at line {i + 1}: title without abstract (file cut short?) "
                f"or unknown line; dropped: {_quote(s)}",
            )
        else:
            self.warn(i + 1, f"line with no abstract after it skipped: {_quote(s)}")
