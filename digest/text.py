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
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple

import snowballstemmer

# Glue that joins two word runs into one token: LaTeX markup and intra-word apostrophes.
_GLUE = r"(?:[$^{}'’]|_(?=\{)|\\(?=[A-Za-z]))+"
_TOKEN_RE = re.compile(r"\\?[^\W_]+(?:(?:" + _GLUE + r"|(?<=\d)\.(?=\d))[^\W_]+)*")
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


_STEMMER = snowballstemmer.stemmer("english")


@functools.lru_cache(maxsize=1 << 17)
def stem(norm: str) -> str:
    """Stem one normalised word (Snowball English); words with digits stay as they are."""
    if _HAS_DIGIT.search(norm):
        return norm
    return _STEMMER.stemWord(norm)


@functools.lru_cache(maxsize=1 << 17)
def normalize(raw: str) -> str:
    """Fold one raw word: drop LaTeX glue, NFKC, casefold, spell out a lone Greek letter."""
    if "\\" in raw or "$" in raw or "^" in raw or "{" in raw or "}" in raw or "_" in raw:
        raw = _MARKUP.sub("", _LATEX_WRAPPER.sub("", raw))
    word = unicodedata.normalize("NFKC", raw).casefold().replace("’", "'")
    return _GREEK_NAMES.get(word, word)


def _pieces(text: str):
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


def words(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The stems and the normalised forms of text's words, in order (the indexer's fast path)."""
    norms = [n for n in (normalize(raw) for raw, _, _ in _pieces(text)) if n]
    return tuple(map(stem, norms)), tuple(norms)
