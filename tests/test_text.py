"""Tokenisation decisions shared by papers and queries."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.text import normalize, stem, tokenize, words


def stems(text: str) -> list[str]:
    return [t.stem for t in tokenize(text)]


def norms(text: str) -> list[str]:
    return [t.norm for t in tokenize(text)]


def test_hyphen_splits_into_adjacent_words():
    assert norms("Low-latency decoding") == ["low", "latency", "decoding"]


def test_case_and_stemming():
    assert stems("Pruning PRUNED prune") == ["prune", "prune", "prune"]


def test_digits_and_decimals_stay_whole():
    assert norms("Qwen2.5-VL reaches 1.9x at 4.4%/8.9% with 150-300 ms") == [
        "qwen2.5", "vl", "reaches", "1.9x", "at", "4.4", "8.9", "with", "150", "300", "ms",
    ]  # fmt: skip
    assert stem("2021") == "2021"


def test_sentence_dot_after_digit_is_not_glue():
    assert norms("in 2021. Then") == ["in", "2021", "then"]


@pytest.mark.parametrize("text", ["S$^{2}$FT", "S^{2}FT", "S2FT", "s2ft"])
def test_latex_markup_is_glue(text):
    assert norms(text) == ["s2ft"]


def test_latex_commands():
    assert norms(r"$\alpha$-divergence") == ["alpha", "divergence"]
    assert norms(r"a \mathbf{W} b") == ["a", "w", "b"]


def test_greek_letters_are_spelled_out_words():
    assert norms("α-divergence") == ["alpha", "divergence"]
    assert norms("μP and Δ") == ["mu", "p", "and", "delta"]


def test_apostrophes():
    assert stems("the model's outputs") == ["the", "model", "output"]
    assert norms("don’t") == ["don't"]
    assert norms("'quoted' words") == ["quoted", "words"]


def test_compatibility_forms_fold():
    assert norms("ﬁne-tuning") == ["fine", "tuning"]
    assert normalize("Straße") == "strasse"


def test_offsets_index_the_original_text():
    text = "S$^{2}$FT: low-latency α"
    assert [text[t.start : t.end] for t in tokenize(text)] == ["S$^{2}$FT", "low", "latency", "α"]


def test_words_agrees_with_tokenize():
    text = "Sparse-attention for S$^{2}$FT models' μP"
    s, n = words(text)
    assert list(s) == stems(text) and list(n) == norms(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_tokenize_never_fails_and_spans_are_in_order(text):
    toks = tokenize(text)
    assert all(0 <= t.start < t.end <= len(text) for t in toks)
    assert all(a.end <= b.start for a, b in itertools.pairwise(toks))
    assert all(t.norm for t in toks)
    assert [t.norm for t in toks] == list(words(text)[1])
