"""Tokenisation and stemming shared by papers and queries, so both sides see the same words.

Decisions (pinned by tests/test_text.py):
- words are runs of Unicode letters and digits; everything else separates words, so
  "low-latency" is the two adjacent words "low" "latency" (a phrase for the matcher);
- a dot joins digits ("2.5", "qwen2.5", "1.9x"); an apostrophe joins letters ("model's"),
  and the stemmer then drops the possessive;
- LaTeX markup is glue, not a separator: "$", "^", "{", "}", "_{" and a backslash before a
  command vanish, and "\\cmd{" wrappers are dropped, so "S$^{2}$FT", "S^{2}FT" and "S2FT" are
  the one word "s2ft", and "$\\alpha$" is "alpha";
- every Greek letter is a word of its own, spelled out ("α-divergence" is "alpha divergence");
- words are NFKC-normalised and casefolded, then stemmed with the Snowball English stemmer
  (words holding a digit are not stemmed).

The text policy: `clean_text(s, multiline=...)` is applied ONCE, where text comes in (every field
of a parsed Paper in digest.parse; subscriber names, topic names and queries in
digest.subscribers, which the CLI, CSV import and the web forms all go through). Every later stage
(render, feed, mail, CLI output) trusts it and only escapes for its output (HTML, XML, headers,
terminal). What it does, character class by class:

| characters                                             | single-line | multiline  |
| ------------------------------------------------------ | ----------- | ---------- |
| CR LF and a lone CR                                    | one space   | LF         |
| LF                                                     | space       | kept       |
| TAB                                                    | space       | kept       |
| U+2028 LINE / U+2029 PARAGRAPH SEPARATOR               | space       | LF         |
| other C0 controls U+0000-001F, DEL U+007F, C1 U+0080-009F | space    | space      |
| private use U+E000-F8FF, planes 15 and 16              | dropped     | dropped    |
| bidi embeddings/overrides U+202A-202E, isolates U+2066-2069 | dropped | dropped    |
| zero-width space U+200B, word joiner U+2060, BOM U+FEFF | dropped    | dropped    |
| unpaired surrogates U+D800-DFFF                        | dropped     | dropped    |
| noncharacters U+FDD0-FDEF and U+nFFFE/U+nFFFF          | dropped     | dropped    |
| everything else                                        | kept        | kept       |

then the result is NFC-normalised. Controls become a space rather than vanishing because they
separate words ("A\x1bTitle" stays two words); the invisible formats vanish because they sit
inside words. Kept on purpose: ZWNJ U+200C and ZWJ U+200D (Persian, Indic scripts, emoji
sequences), the bidi marks LRM/RLM/ALM (U+200E, U+200F, U+061C: they open no scope that could
reorder the text around them), soft hyphens, plane-14 tags (emoji flag sequences), and unassigned
code points (a later Unicode may assign them). Nothing left can break HTML or XML 1.0 or move a
terminal's cursor; `is_clean` tells whether a text is already in this form.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import Stemmer

# Glue that joins two word runs into one token: LaTeX markup and intra-word apostrophes.
_GLUE = r"(?:[$^{}'’]|_(?=\{)|\\(?=[A-Za-z]))+"
# A single letter followed by ++ or # is one word (C++, C#, F#), not the letter alone.
_TOKEN_RE = re.compile(
    r"(?<![^\W_])[A-Za-z](?:\+\+|#)(?![^\W_])"
    r"|\\?[^\W_]+(?:(?:" + _GLUE + r"|(?<=\d)\.(?=\d))[^\W_]+)*"
)
_GREEK = "\u0370-\u03ff\u1f00-\u1fff"
_HAS_GREEK = re.compile(f"[{_GREEK}]")
_GREEK_SPLIT = re.compile(f"[{_GREEK}]|[^{_GREEK}]+")
_LATEX_WRAPPER = re.compile(r"\\[A-Za-z]+\{")
_MARKUP = re.compile(r"[\\$^{}_]")
_HAS_DIGIT = re.compile(r"\d")

_GREEK_NAMES = {
    "α": "alpha", "β": "beta", "γ": "gamma", "δ": "delta", "ε": "epsilon", "ϵ": "epsilon",
    "ζ": "zeta", "η": "eta", "θ": "theta", "ϑ": "theta", "ι": "iota", "κ": "kappa",
    "λ": "lambda", "μ": "mu", "ν": "nu", "ξ": "xi", "ο": "omicron", "π": "pi", "ϖ": "pi",
    "ρ": "rho", "ϱ": "rho", "σ": "sigma", "ς": "sigma", "τ": "tau", "υ": "upsilon",
    "φ": "phi", "ϕ": "phi", "χ": "chi", "ψ": "psi", "ω": "omega",
}  # fmt: skip


class Token(NamedTuple):
    """One word of a text: its stem, its normalised (unstemmed) form and its character span."""

    stem: str
    norm: str
    start: int
    end: int


# PyStemmer: the C build of the Snowball stemmers, the same results as the pure-Python
# snowballstemmer (tests/test_text.py compares them) at C speed
_STEMMER = Stemmer.Stemmer("english")
STEMMER_VERSION: str = Stemmer.version()  # part of query.FORM_KEY: new stems, new forms

# --- the text policy (see the module docstring) ----------------------------------------------

_NONCHARACTERS = "\ufdd0-\ufdef" + "".join(
    f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(15)
)
# Dropped in every mode: planes 15 and 16 are all private use or noncharacters.
_DROPPED = (
    "\u200b\u2060\ufeff\u202a-\u202e\u2066-\u2069\ud800-\udfff\ue000-\uf8ff"
    + _NONCHARACTERS
    + "\U000f0000-\U0010ffff"
)
_CONTROL_CLASS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_POLICY = re.compile(f"[{_DROPPED}]+|([{_CONTROL_CLASS}])")
_LINE_SEPARATORS = "\n\u2028\u2029"
# What a terminal must not receive (the CLI's escaping of text it prints): every control.
TERMINAL_CONTROLS = {c: " " for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}


def _single(m: re.Match[str]) -> str:
    return " " if m.group(1) else ""


def _multi(m: re.Match[str]) -> str:
    c = m.group(1)
    if not c:
        return ""
    if c in _LINE_SEPARATORS:
        return "\n"
    return "\t" if c == "\t" else " "


def clean_text(text: str, *, multiline: bool = False) -> str:
    """Text as the project keeps it: the policy of the module docstring, then NFC."""
    if text.isascii():
        if text.isprintable():
            return text  # the common case: nothing to do
    elif text.isprintable() and unicodedata.is_normalized("NFC", text):
        return text  # no control, format, private-use, surrogate or separator character
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _POLICY.sub(_multi if multiline else _single, text)
    return text if text.isascii() else unicodedata.normalize("NFC", text)


# What clean text cannot hold: for one line, every control; for several, all but LF and TAB.
_DIRTY_LINE = re.compile(f"[{_DROPPED}{_CONTROL_CLASS}]")
_DIRTY_LINES = re.compile(f"[{_DROPPED}\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f\\u2028\\u2029]")


def one_line(text: str) -> str:
    """Text on one line: runs of white space (line breaks included) as one space, trimmed."""
    return " ".join(text.split())


def is_clean(text: str, *, multiline: bool = False) -> bool:
    """Whether clean_text would return text unchanged (a regex scan: for checks and tests)."""
    dirty = _DIRTY_LINES if multiline else _DIRTY_LINE
    return dirty.search(text) is None and (text.isascii() or unicodedata.is_normalized("NFC", text))


# --- spelling and stemming (see docs/guide/queries.md, "Words") --------------------------------

# British -ise/-isation spellings fold to -ize/-ization, except words whose -ise is not that suffix
# (promise, noise, advise, otherwise, expertise, surprise...): matched on their ending.
_ISE = re.compile(r"(?<=\w{3})is(ation|ations|e|ed|es|ing|er|ers)\Z")
_PROMISE_LIKE = frozenset(
    [
        "promise",
        "compromise",
        "premise",
        "demise",
        "surmise",
        "expertise",
        "advertise",
        "chastise",
        "merchandise",
        "paradise",
        "franchise",
        "precise",
        "concise",
        "incise",
        "excise",
        "exercise",
        "enterprise",
        "surprise",
        "comprise",
        "reprise",
        "arise",
        "rise",
        "sunrise",
        "uprise",
        "treatise",
        "anise",
    ]
)
_YSE = re.compile(r"(?<=\w)ys(e|ed|es|ing|er|ers)\Z")
_OUR = re.compile(
    r"(behavio|colo|favo|flavo|hono|humo|labo|neighbo|rumo|vapo|harbo|odo|armo|endeavo|vigo|rigo"
    r"|savo|tumo|clamo|parlo|splendo)ur"
)
_RE_ENDINGS = {"centre": "center", "metre": "meter", "fibre": "fiber", "litre": "liter",
               "theatre": "theater", "calibre": "caliber", "spectre": "specter"}  # fmt: skip
_OGUE = re.compile(r"(catalog|dialog|analog|prolog|epilog|monolog)ue")
# -ize words keep their "iz": Snowball joins generalization with general, optimization with
# optimal, normalization with normal, regularization with regular.
_IZE = re.compile(r"(\w{3,}iz)(e|ed|es|ing|er|ers|ation|ations|able)\Z")
_NO_VOWEL = re.compile(r"[^aeiouy]{2,}s\Z")
# Words Snowball cuts to one stem with unrelated ones, kept to a stem of their own by prefix:
# experience/experiment (experi), continual/continuous/continue (continu), informal/
# information (inform); probably (a hedge) is not probability (probabl).
_APART = (
    ("experienc", "experienc"),
    ("experiment", "experiment"),
    ("continual", "continual"),
    ("continuous", "continuous"),
    ("informal", "informal"),
)
_APART_HEADS = frozenset(prefix[:2] for prefix, _ in _APART)  # a cheap first test
_OWN_STEMS = frozenset({"probably"})  # words that are their own stem


def american(norm: str) -> str:
    """Fold British spellings of a normalised word to American (optimisation -> optimization)."""
    if len(norm) < 5 or not norm.isalpha():
        return norm
    if "is" in norm and (m := _ISE.search(norm)) is not None:
        base = norm[: m.start()] + "is" + ("e" if m.group(1)[:1] in ("e", "i") else "")
        if base not in _PROMISE_LIKE and not base.endswith(_KEEP_ENDINGS):
            norm = norm[: m.start()] + "iz" + m.group(1)
    if "ys" in norm:
        norm = _YSE.sub(r"yz\1", norm)
    if "our" in norm:
        norm = _OUR.sub(r"\1r", norm)
    if norm.endswith("ogue") or norm.endswith("ogues"):
        norm = _OGUE.sub(r"\1", norm)
    for british, us in _RE_ENDINGS.items():
        if british in norm:
            norm = norm.replace(british, us)
    return norm


_KEEP_ENDINGS = ("wise", "vise", "oise", "aise", "uise", "cise", "dise", "hise", "prise")


def snowball(norm: str) -> str:
    """The Snowball English stem of a normalised word (PyStemmer, the C build); words with
    digits stay as they are. stem() folds spellings around it."""
    if _HAS_DIGIT.search(norm):
        return norm
    return _STEMMER.stemWord(norm)


@functools.lru_cache(maxsize=1 << 17)
def stem(norm: str) -> str:
    """Stem one normalised word: American spelling, then Snowball English, with -ize words
    kept apart from their roots and acronym plurals folded (llms -> llm); words with digits
    stay as they are."""
    if _HAS_DIGIT.search(norm):
        return norm
    norm = american(norm)
    if "iz" in norm and (m := _IZE.match(norm)) is not None:
        return m.group(1)
    if norm in _OWN_STEMS:
        return norm
    if norm[:2] in _APART_HEADS:
        for prefix, own in _APART:
            if norm.startswith(prefix):
                return own
    out = snowball(norm)
    if len(out) >= 3 and _NO_VOWEL.fullmatch(out):  # an acronym's plural: llms, gnns, vlms
        return out[:-1]
    return out


@functools.lru_cache(maxsize=1 << 17)
def normalize(raw: str) -> str:
    """Fold one raw word: drop LaTeX glue, NFKC, casefold, spell out a lone Greek letter."""
    if "\\" in raw or "$" in raw or "^" in raw or "{" in raw or "}" in raw or "_" in raw:
        raw = _MARKUP.sub("", _LATEX_WRAPPER.sub("", raw))
    if len(raw) >= 3 and raw[-1] == "s" and raw[-2].isupper() and raw[0].isupper():
        raw = raw[:-1]  # an acronym's plural: LLMs, GPUs, LoRAs, MoEs are llm, gpu, lora, moe
    word = unicodedata.normalize("NFKC", raw).casefold().replace("’", "'")
    return _GREEK_NAMES.get(word, word)


def _pieces(text: str) -> Iterator[tuple[str, int, int]]:
    """Yield (raw, start, end) word pieces of text, Greek letters split out one by one."""
    for m in _TOKEN_RE.finditer(text):
        raw = m.group()
        if _HAS_GREEK.search(raw) is None:
            yield raw, m.start(), m.end()
            continue
        base = m.start()
        for sub in _GREEK_SPLIT.finditer(raw):
            piece = sub.group()
            if _TOKEN_RE.search(piece):
                yield piece, base + sub.start(), base + sub.end()


def tokenize(text: str) -> list[Token]:
    """All words of text with stems and character offsets (the offsets index into text)."""
    out = []
    for raw, start, end in _pieces(text):
        norm = normalize(raw)
        if norm:
            out.append(Token(stem(norm), norm, start, end))
    return out


# A hyphen between two words: each pair of a chain (the lookahead lets pairs overlap)
_HYPHENED = re.compile(r"(?<![^\W_])([^\W\d_][^\W_]*)-(?=([^\W_]+)(?![^\W_]))")


@functools.lru_cache(maxsize=1 << 16)
def joined(first: str, second: str) -> str:
    """The normalised word two hyphenated or spaced words make when written together
    (fine + tuning: finetuning), or "" when the pair does not join (digits first, Greek)."""
    norm = normalize(first + second)
    if not norm.isalnum() or norm[:1].isdigit() or _HAS_GREEK.search(norm):
        return ""
    return norm


def compounds(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The stems and normalised forms of text's hyphenated pairs written together
    (fine-tuning: finetun, pre-training: pretrain, GPT-4: gpt4), in order."""
    if "-" not in text:
        return (), ()
    norms = tuple(filter(None, itertools.starmap(joined, hyphen_pairs(text))))
    return tuple(map(stem, norms)), norms


_ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def hyphen_pairs(text: str) -> list[tuple[str, str]]:
    """The (word, next word) pairs of text's hyphen chains: _HYPHENED.findall(text). On ASCII
    text without "_" (where the regex's word runs are [A-Za-z0-9]+) they are read at each
    hyphen, the run of letters and digits before it (starting with a letter) and after it,
    by str.split and strip: the regex tries its look-behind at every character, ~4x slower
    (tests/test_text.py compares the two)."""
    if not text.isascii() or "_" in text:
        return _HYPHENED.findall(text)
    out = []
    alnum = _ASCII_ALNUM
    for left, right in itertools.pairwise(text.split("-")):
        a = left[len(left.rstrip(alnum)) :]
        if a and a[0].isalpha():
            b = right[: len(right) - len(right.lstrip(alnum))]
            if b:
                out.append((a, b))
    return out


def index_words(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the matcher indexes of a text: its words (see words), then its compounds, so
    `finetuning` finds *fine-tuning* (a phrase never spans the two parts: they are apart)."""
    s, n = words(text)
    if "-" not in text:
        return s, n
    cs, cn = compounds(text)
    return s + cs, n + cn


def words(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The stems and the normalised forms of text's words, in order (the indexer's fast path)."""
    if _HAS_GREEK.search(text) is None:
        # no Greek letter to split out: the pieces are the token matches themselves, found
        # without a match object each (normalize and stem are cached: C-level hits mostly)
        raws: list[str] = _TOKEN_RE.findall(text)
    else:
        raws = [raw for raw, _, _ in _pieces(text)]
    norms = tuple(filter(None, map(normalize, raws)))
    return tuple(map(stem, norms)), norms


# ASCII text without LaTeX glue, apostrophes joining letters or C++/C#: its words are the runs of
# letters and digits, with a dot joining two digits; str.translate and str.split find them at C
# speed (the regex costs ~50 ns a character; tests/test_text.py compares the two on every dump)
_SEPARATE = {c: " " for c in range(128) if not chr(c).isalnum() and chr(c) not in ".'"}
_GLUE_CHARS = tuple("$^{}_\\+#")


def _raw_words(text: str) -> list[str]:
    """The raw word pieces of text, as _pieces gives them (without their offsets)."""
    if not text.isascii() or any(c in text for c in _GLUE_CHARS):
        if text.isascii() or _HAS_GREEK.search(text) is None:
            return _TOKEN_RE.findall(text)
        return [raw for raw, _, _ in _pieces(text)]
    s = text.translate(_SEPARATE)
    if "." in s:
        parts = s.split(".")
        out = [parts[0]]
        for nxt in parts[1:]:
            # a dot joins two digits ("2.5", "qwen2.5"); any other dot separates
            out.append("." if out[-1][-1:].isdigit() and nxt[:1].isdigit() else " ")
            out.append(nxt)
        s = "".join(out)
    got = s.split()
    if "'" in s:  # an apostrophe joins letters or digits ("model's"), else it separates
        got = [w for w in (x.strip("'") for x in got) if w]
    return got


def index_table(texts: Sequence[str]) -> tuple[list[str], list[str], list[int], list[int]]:
    """word_table(texts) with each text's compounds after its words: index_words for a batch."""
    norms, stems, lens, flat = word_table(texts)
    if not any("-" in t for t in texts):
        return norms, stems, lens, flat
    norm_id = {w: k for k, w in enumerate(norms)}
    out_flat: list[int] = []
    out_lens: list[int] = []
    pos = 0
    for text, n in zip(texts, lens, strict=True):
        out_flat.extend(flat[pos : pos + n])
        pos += n
        extra = [norm_id.setdefault(w, len(norm_id)) for w in compounds(text)[1]]
        out_flat.extend(extra)
        out_lens.append(n + len(extra))
    new = list(norm_id)
    return new, stems + [stem(w) for w in new[len(norms) :]], out_lens, out_flat


def word_table(texts: Sequence[str]) -> tuple[list[str], list[str], list[int], list[int]]:
    """Every word of a batch of texts at once: the distinct normalised words, their stems, each
    text's word count, and all texts' words in order as indices into the distinct words.

    The same words as words() on each text (tests/test_text.py compares them), but each
    distinct raw word is normalised and stemmed once for the batch rather than once per use.
    """
    per_text = list(map(_raw_words, texts))
    norm_id: dict[str, int] = {}
    # an empty normalised word is no word (words() drops it): -1, filtered out below
    raw_id = {
        raw: norm_id.setdefault(norm, len(norm_id)) if (norm := normalize(raw)) else -1
        for raw in dict.fromkeys(itertools.chain.from_iterable(per_text))
    }
    get = raw_id.__getitem__
    flat = list(map(get, itertools.chain.from_iterable(per_text)))
    lens = list(map(len, per_text))
    if len(norm_id) < len(raw_id) and -1 in raw_id.values():
        lens = [sum(get(r) >= 0 for r in raws) for raws in per_text]
        flat = [k for k in flat if k >= 0]
    norms = list(norm_id)
    return norms, list(map(stem, norms)), lens, flat
