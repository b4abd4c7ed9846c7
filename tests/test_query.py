"""The keyword query language: compiled forms and error messages with columns."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.errors import QueryError
from digest.match import PaperIndex, match_query
from digest.models import StoredPaper
from digest.query import (
    MAX_DEPTH,
    Node,
    Query,
    compile_query,
    decode_queries,
    decode_query,
    describe_error,
    describe_node,
    positive_terms,
)


def stored_paper(i: int, title: str, abstract: str) -> StoredPaper:
    return StoredPaper(
        id=i, key=f"k{i}", title=title, abstract=abstract, first_seen=datetime(2026, 1, 1)
    )


def shape(text: str) -> str:
    return describe_node(compile_query(text).root)


def test_commas_and_newlines_separate_alternatives():
    q = compile_query("sparse attention, speculative decoding\nlatency")
    assert q.root.kind == "or"
    assert shape("sparse attention, speculative decoding\nlatency") == (
        "((attent AND spars) OR (decod AND specul) OR latenc)"
    )


def test_words_are_stemmed_and_case_folded():
    assert compile_query("PRUNING") == compile_query("pruned")


def test_order_of_words_and_alternatives_does_not_matter():
    assert compile_query("a b, c") == compile_query("c,\nb a")
    assert hash(compile_query("a b, c")) == hash(compile_query("c, b a"))


def test_quoted_phrase_and_hyphenated_word_are_phrases():
    assert compile_query('"low latency"').root == Node("p", None, ("low", "latenc"))
    # a hyphenated word is the phrase, or the words written together (see test_compounds_meet)
    assert shape("low-latency") == '("low latenc" OR lowlat)'
    assert shape('"low-latency"') == '"low latenc"'  # quotes stay strict


def test_prefix_is_on_the_unstemmed_word():
    assert compile_query("Prun*").root == Node("x", None, "prun")


def test_exclusion_inside_an_alternative():
    assert shape("latency -diffusion, pruning") == "((NOT diffus AND latenc) OR prune)"


def test_exclusion_only_alternative_excludes_from_the_whole_topic():
    assert shape("latency, pruning, -diffusion") == "((latenc OR prune) AND NOT diffus)"
    assert shape('latency, -"image generation" -gan') == (
        '(NOT "imag generat" AND NOT gan AND latenc)'
    )


def test_fields_numbers_and_org():
    assert shape("title:(sparse attention) upvotes>=10") == (
        "(title:attent AND title:spars AND upvotes>=10)"
    )
    assert shape('abstract:"low rank" authors<=5') == '(abstract:"low rank" AND authors<=5)'
    assert shape('org:"Google DeepMind"') == "org:google deepmind"
    assert shape("ORG:nvidia") == "org:nvidia"


def test_explicit_operators_and_precedence():
    assert shape("a AND b OR c") == "((a AND b) OR c)"
    assert shape("a (b OR c) NOT d") == "((b OR c) AND NOT d AND a)"
    assert shape("NOT NOT a") == "a"
    assert shape("(a, b) c") == "((a OR b) AND c)"


def test_lowercase_operators_are_words():
    assert shape("not and") == "(and AND not)"


def test_terms_are_the_positive_words_only():
    terms = compile_query('sparse "low rank" prun* -diffusion NOT gan, title:x').terms
    assert {describe_node(t) for t in terms} == {"spars", '"low rank"', "prun*", "title:x"}


def test_blank_lines_are_ignored():
    assert compile_query("a\n\n\nb\n") == compile_query("a, b")
    assert compile_query("a,\nb") == compile_query("a, b")


@pytest.mark.parametrize(
    ("text", "column", "fragment"),
    [
        ('latency "sparse attention', 9, "unbalanced quote"),
        ("(sparse attention", 1, "unbalanced parenthesis"),
        ("sparse attention)", 17, "unbalanced parenthesis"),
        ("a,,b", 3, "empty alternative"),
        (", a", 1, "empty alternative"),
        ("a, b,", 5, "empty alternative"),
        ("a, foo:bar", 4, "unknown field 'foo'"),
        ("upvotes>=ten", 10, "bad number 'ten'"),
        ("authors<=", 10, "bad number ''"),
        ("citations>=5", 1, "unknown number field"),
        ("latency AND", 9, "AND needs a term after it"),
        ("OR latency", 1, "OR needs a term before it"),
        ("a OR", 3, "OR needs a term after it"),
        ("a NOT", 3, "NOT needs a term after it"),
        ("a - b", 3, "'-' excludes"),
        ("-diffusion", 1, "only excludes"),
        ("()", 1, "empty parentheses"),
        ('""', 1, "empty phrase"),
        ("a*b", 2, "* only goes at the end"),
        ('"prun* x"', 1, "* is not allowed inside a phrase"),
        ("low-lat*", 1, "needs exactly one word"),
        ("title:", 1, "needs a word"),
        ("title:(abstract:x)", 8, "inside a title: group"),
        ("org:(a b)", 5, "org: takes a name"),
        ("&", 1, "no letters or digits"),
        ("", 1, "empty query"),
        ("   \n ", 1, "empty query"),
    ],
)
def test_errors_name_the_column_and_give_a_hint(text, column, fragment):
    with pytest.raises(QueryError) as info:
        compile_query(text)
    err = info.value
    assert err.column == column
    assert fragment in str(err)
    assert err.hint
    assert str(err).startswith(f"column {column}: ")


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("(" * 200 + "a" + ")" * 200, MAX_DEPTH + 1),
        ("NOT " * 5000 + "a", 4 * MAX_DEPTH + 1),
        ("-" * 5000 + "a", MAX_DEPTH + 1),
        ("b, " + "(NOT " * 20 + "a" + ")" * 20, 3 + 5 * 16 + 1),
    ],
)
def test_deep_nesting_is_refused_at_the_column_not_by_recursion(text, column):
    with pytest.raises(QueryError) as info:
        compile_query(text)
    assert info.value.column == column
    assert f"nested more than {MAX_DEPTH} levels deep" in str(info.value)


def test_nesting_up_to_the_limit_compiles():
    assert compile_query("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH).terms
    assert compile_query("NOT " * (MAX_DEPTH - 1) + "a, b").terms


def test_describe_error_puts_a_caret_under_the_column():
    text = 'latency "sparse attention'
    with pytest.raises(QueryError) as info:
        compile_query(text)
    lines = describe_error(text, info.value).splitlines()
    assert lines[0] == text
    assert lines[1] == " " * 8 + "^"
    assert "unbalanced quote" in lines[2]


def test_describe_error_on_a_later_line():
    text = "latency\nfoo:bar"
    with pytest.raises(QueryError) as info:
        compile_query(text)
    lines = describe_error(text, info.value).splitlines()
    assert lines[0] == "line 2: foo:bar"
    assert lines[1].index("^") == len("line 2: ")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab -",()*:\nANDORTt=>1', max_size=25))
def test_any_text_compiles_or_raises_query_error(text):
    try:
        q = compile_query(text)
    except QueryError as err:
        assert 1 <= err.column <= len(text) + 1
        describe_error(text, err)
    else:
        assert hash(q) == hash(compile_query(text))


# --- forgiving plain words (issue 13) ---------------------------------------------------------


def test_plain_words_of_three_or_more_need_most_not_all() -> None:
    # 2 of 3: a paper missing one word still matches
    assert shape("efficient LLM inference") == "MOST(effici, infer, llm)"
    assert shape("title:(efficient LLM inference)") == (
        "MOST(title:effici, title:infer, title:llm)"
    )
    # quotes and AND keep the strict meaning
    assert shape('"efficient llm inference"') == '"effici llm infer"'
    assert shape("efficient AND LLM AND inference") == "(effici AND infer AND llm)"
    # two words stay both required
    assert shape("robot manipulation") == "(manipul AND robot)"


def test_most_of_n_counts() -> None:
    from digest.query import most_needed

    for n, need in ((3, 2), (4, 3), (5, 4), (6, 4), (8, 6), (10, 8)):
        assert most_needed(n) == need


def test_stop_words_are_ignored_outside_quotes() -> None:
    assert shape("mixture of experts") == "(expert AND mixtur)"
    assert shape('"mixture of experts"') == '"mixtur of expert"'
    assert shape("the") == "the"  # nothing but stop words: searched as written


def test_an_exclusion_means_the_same_inside_parentheses() -> None:
    assert shape("(pruning, -diffusion)") == shape("pruning, -diffusion")
    assert shape("title:(pruning, -diffusion)") == "(NOT title:diffus AND title:prune)"


def test_an_exclusion_beside_plain_words_keeps_them_forgiving() -> None:
    # Found by the query check: `a b c -x` made every word required (27 papers of 108 for
    # `efficient LLM inference -xyzzy`), though `a b c, -x` kept them forgiving.
    # stop words beside a phrase or a number condition go too, as they did (review)
    assert shape('"speculative decoding" for LLMs') == '("specul decod" AND llm)'
    assert shape("the upvotes>=10") == "upvotes>=10"
    for words in ("efficient LLM inference", "mixture of experts", "fine tuning", "prune* latency"):
        assert shape(f"{words} -xyzzy") == shape(f"({words}) -xyzzy"), words
        assert shape(f"{words} NOT xyzzy") == shape(f"({words}) -xyzzy"), words
    assert shape("efficient -xyzzy LLM inference") == shape("efficient LLM inference -xyzzy")
    # the strict forms stay strict
    assert shape("efficient AND LLM inference -xyzzy").count("AND") == 3
    papers = [
        stored_paper(1, "Efficient inference", "Serving LLMs fast."),  # 2 of 3 words
        stored_paper(2, "Efficient inference", "Diffusion models."),
        stored_paper(3, "Sorting", "Nothing of the kind."),
    ]
    for query in ("efficient LLM inference -diffusion", "efficient LLM inference, -diffusion"):
        assert {m.paper_id for m in match_query(PaperIndex(papers), query)} == {1}, query


def test_org_prefix_is_an_error_not_silently_dropped() -> None:
    with pytest.raises(QueryError, match=r"org: does not take \*"):
        compile_query("org:micro*")


def test_numbers_with_spaces_around_the_operator() -> None:
    assert compile_query("upvotes >= 10") == compile_query("upvotes>=10")
    assert compile_query("llm authors <= 5") == compile_query("llm authors<=5")
    # found by the query check: misleading hints for an unknown field or a split operator
    with pytest.raises(QueryError, match="'>=' compares only upvotes and authors"):
        compile_query("llm citations >= 5")
    # a name before a spaced sign and a number is searched, as before (review)
    assert compile_query("quantization <4 bit") == compile_query("quantization 4 bit")
    with pytest.raises(QueryError, match="a space inside a comparison operator") as split:
        compile_query("upvotes > = 3")
    assert "upvotes>=3" in str(split.value.hint)
    # a comparison sign before words, not a number, is no condition: searched as before
    assert compile_query("latency <10ms") == compile_query("latency 10ms")


def test_c_plus_plus_is_a_word() -> None:
    assert shape("C++") == "c++"
    assert shape("C# code") == "(c# AND code)"


def test_warnings_for_probable_mistakes() -> None:
    from digest.query import coverage_warning, query_warnings

    assert "lower-case 'or'" in query_warnings("pruning or quantization")[0]
    assert "OR with a negation" in query_warnings("(pruning OR -diffusion)")[0]
    assert "OR with a negation" in query_warnings("pruning OR NOT diffusion")[0]
    assert query_warnings("pruning, -diffusion") == []
    assert query_warnings('"a or b"') == []  # inside quotes it is a phrase word
    assert coverage_warning(0, 100) == "matches none of the 100 stored papers"
    assert "almost everything" in (coverage_warning(80, 100) or "")
    assert coverage_warning(10, 100) is None


@pytest.mark.parametrize("query", ["fine-tuning", "finetuning", "fine tuning", "Fine-Tuning"])
def test_compounds_meet_written_joined_hyphenated_or_apart(query: str) -> None:
    papers = [
        stored_paper(1, "Efficient fine-tuning", "x"),
        stored_paper(2, "Finetuning at scale", "x"),
        stored_paper(3, "Fine tuning recipes", "x"),
        stored_paper(4, "Fine wine and tuning forks", "x"),  # apart, not adjacent
        stored_paper(5, "Tuning", "x"),
    ]
    got = {m.paper_id for m in match_query(PaperIndex(papers), query)}
    assert got == ({1, 2, 3, 4} if query == "fine tuning" else {1, 2, 3})


def test_compound_rules() -> None:
    assert shape("pre-training, multimodal") == (
        '("multi modal" OR "pre train" OR multimod OR pretrain)'
    )
    # two words join only after a compound prefix; other pairs stay both required
    assert shape("self supervised") == "((self AND supervis) OR selfsupervis)"
    assert shape("robot manipulation") == "(manipul AND robot)"
    assert shape('"fine tuning"') == '"fine tune"'  # quotes stay strict
    assert shape("GPT-4") == '("gpt 4" OR gpt4)'
    assert shape("2-3") == '"2 3"'  # digits first do not join


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z]{2,6}-[a-z]{2,8}", fullmatch=True))
def test_a_hyphenated_word_finds_itself_joined_and_hyphenated(word: str) -> None:
    a, b = word.split("-")
    papers = [stored_paper(1, f"On {a}-{b}", "x"), stored_paper(2, f"On {a}{b}", "x")]
    got = {m.paper_id for m in match_query(PaperIndex(papers), word)}
    assert got == {1, 2}
    assert {m.paper_id for m in match_query(PaperIndex(papers), a + b)} == {1, 2}


# --- the fast path: top-level alternatives parsed one by one and cached -------------------------


def _same_compiled(text: str) -> None:
    from digest.query import _compile, _parse, _parse_fast

    fast = _parse_fast(text)
    try:
        full = _parse(text)
    except QueryError:
        assert fast is None, text  # an error is always the full parser's to report
        return
    if fast is not None:
        assert fast == full, text
    # the whole compiled form (terms, program) is the one the full parser's root gives
    q = _compile(text)
    assert q.root == full
    assert q.terms == positive_terms(full)


_PLAIN_ITEMS = ["latency", '"sparse attention"', "-diffusion", "title:llm", "of", "a b c d",
                "mixture of experts", "NOT x", "a OR b", "upvotes>=5", "prun*", "org:nvidia",
                ""]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab c-",“”()*:\n\tANDORTt=>1', max_size=30)
       | st.lists(st.sampled_from(_PLAIN_ITEMS), max_size=4).map(", ".join))  # fmt: skip
def test_fast_path_builds_the_full_parsers_root(text):
    _same_compiled(text)


def test_fast_path_is_taken_for_plain_queries():
    from digest.query import _parse_fast

    for text in ["latency", 'speculative decoding, "sparse attention" -vision, title:llm',
                 "a b c, -diffusion\nquantization"]:  # fmt: skip
        assert _parse_fast(text) is not None, text
    for text in ["(a, b) c", 'a, "b, c"', "a,, b", "“curly” quote"]:
        assert _parse_fast(text) is None, text


# --- the stored compiled form: decoded, it is the query a fresh compile gives ------------------


def _same_decoded(text: str) -> None:
    from digest.query import _compile, decode_query, encode_query

    try:
        fresh = _compile(text)
    except QueryError:
        return
    got = decode_query(text, encode_query(fresh))
    assert got is not None, text
    for name in Query.FIELDS:  # every field, the process's leaf ids in the program too
        assert getattr(got, name) == getattr(fresh, name), (text, name)


_FORM_ITEMS = [*_PLAIN_ITEMS, "(a, b) c", "NOT (x OR y)", "title:(a b, c)", "fine-tuning",
               "finetuning", 'abstract:"low rank"', "upvotes<3", "authors=2", "org:\"meta ai\"",
               "a AND NOT b", "x -(y z)"]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab c-",“”()*:\n\tANDORTt=>1', max_size=30)
       | st.lists(st.sampled_from(_FORM_ITEMS), max_size=5).map(", ".join)
       | st.lists(st.sampled_from(_FORM_ITEMS), max_size=4).map(" ".join))  # fmt: skip
def test_a_decoded_form_is_the_compiled_query(text):
    _same_decoded(text)


def test_the_benchmarks_queries_decode_to_their_compiled_form():
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        import match as bench_match
        from _dumps import load_papers
    finally:
        sys.path.remove(str(bench))
    base = list(load_papers().values())
    vocab = bench_match.vocabulary(base)
    for plain in (True, False):
        profiles = bench_match.make_profiles(1500, vocab, seed=7, plain=plain)
        for text in {t.query for ts in profiles.values() for t in ts}:
            _same_decoded(text)


def test_a_decoded_query_builds_its_tree_only_when_read():
    # the batch matcher reads only the program: a fresh process matching 100k stored topics
    # must not build 100k trees it never reads
    from digest.query import _compile, decode_queries, encode_query

    texts = ['speculative decoding, "sparse attention" -vision', "title:llm prun*, upvotes>=5"]
    fresh = [_compile(t) for t in texts]
    got = decode_queries(texts, [encode_query(q) for q in fresh])
    for q, want in zip(got, fresh, strict=True):
        assert q is not None and q.program == want.program
        assert isinstance(q._tree, bytes)  # not built yet
        assert q.root == want.root and q.terms == want.terms
        assert isinstance(q._tree, tuple)  # built once, kept
    with pytest.raises(AttributeError):
        got[0].text = "other"  # type: ignore[misc, union-attr]


def test_a_damaged_tree_layer_falls_back_to_the_text():
    from digest.query import assemble_form, compile_query, decode_query, encode_query, form_layers

    text = "mixture of experts, -vision"
    layers = form_layers(encode_query(compile_query(text)))
    assert layers is not None
    q = decode_query(text, assemble_form(layers._replace(tree=b"not a marshal")))
    assert q is not None
    assert q.root == compile_query(text).root and q.terms == compile_query(text).terms


def test_a_cold_batch_meets_each_new_key_once(monkeypatch):
    # keys new to the process (as in a fresh process) recur across the batch's forms: each is
    # made a leaf once, and every form's program gets the same ids a compile gives
    from digest import query as querymod

    texts = ["alpha beta", "beta gamma", "alpha, -gamma", "alpha beta gamma delta", "beta"]
    fresh = [querymod._compile(t) for t in texts]
    forms = [querymod.encode_query(q) for q in fresh]
    monkeypatch.setattr(querymod, "_WORD_IDS", {})
    monkeypatch.setattr(querymod, "_HASH_IDS", {})
    read: list[bytes] = []
    real = querymod.marshal.loads
    monkeypatch.setattr(querymod.marshal, "loads", lambda b: read.append(bytes(b)) or real(b))
    got = querymod.decode_queries(texts, forms)
    assert [q.program for q in got if q is not None] == [q.program for q in fresh]
    keys = {k for q in fresh for k in (*map(querymod._key, q.terms),
                                       *map(querymod._key, q.literals))}  # fmt: skip
    assert len(querymod._HASH_IDS) == len(keys)
    assert set(querymod._WORD_IDS) == {k for k in keys if isinstance(k, str)}
    # a form's keys read once, and only by a form that brings a key first
    seen: set[object] = set()
    bringing = 0
    for q in fresh:
        mine = {*map(querymod._key, q.terms), *map(querymod._key, q.literals)}
        bringing += not mine <= seen
        seen |= mine
    assert len(read) == bringing < len(keys)
    read.clear()
    again = querymod.decode_queries(texts, forms)  # all known now: no form's keys read
    assert [q.program for q in again if q is not None] == [q.program for q in fresh]
    assert read == []


@pytest.fixture
def own_leaves():
    """The process's leaf ids as they were once the test is done: a test that forgets them
    must not leave the other tests of its xdist worker holding ids that now name other leaves."""
    from digest import query as querymod

    saved = (list(querymod.LEAVES), dict(querymod._LEAF_IDS),
             dict(querymod._WORD_IDS), dict(querymod._HASH_IDS))  # fmt: skip
    yield
    querymod.forget_leaves()
    with querymod._LEAF_LOCK:
        querymod.LEAVES.extend(saved[0])
        querymod._LEAF_IDS.update(saved[1])
        querymod._WORD_IDS.update(saved[2])
        querymod._HASH_IDS.update(saved[3])


def test_a_decoded_tree_shares_the_process_s_leaves(own_leaves):
    # a tree read from a form holds the very leaf nodes the process numbered (words, phrases,
    # prefixes, fields), not equal copies: 100k trees would otherwise each hold their own
    from digest import query as querymod

    texts = ['kv cache, "sparse attention" -vision', "title:llm prun*", "mixture of experts"]
    forms = [querymod.encode_query(querymod._compile(t)) for t in texts]
    querymod.forget_leaves()
    got = querymod.decode_queries(texts, forms)
    for q in got:
        assert q is not None
        for leaf in (*q.terms, *q.literals):
            if leaf.kind in ("t", "p", "x"):
                assert leaf is querymod.LEAVES[querymod.leaf_id(leaf)], leaf


def test_forgetting_leaves_forgets_the_compiled_queries_that_hold_their_ids(own_leaves):
    # a cached Query's program names leaves by id: kept past forget_leaves, it would name
    # whatever leaf the next compile numbers (a whole worker's later matches went wrong in CI)
    from digest import match as matchmod
    from digest import query as querymod

    before = compile_query("latency serving")
    held = matchmod.cached_query("latency serving")
    querymod.forget_leaves()
    compile_query("other words first")  # new leaves take the old ids
    fresh = decode_query(
        "latency serving", querymod.encode_query(querymod._compile("latency serving"))
    )
    assert fresh is not None
    for again in (compile_query("latency serving"), matchmod.cached_query("latency serving")):
        assert again is not before and again is not held
        assert again.program == fresh.program


def test_a_key_that_is_not_its_hash_s_is_refused_and_stands_for_nothing(monkeypatch):
    # the first form that brings a hash names its key for the whole process: a form (sound
    # CRC, a buggy writer's) whose keys are not its hashes' must not make every later form
    # holding that hash mean another word
    import marshal

    from digest import query as querymod
    from digest.query import assemble_form, encode_query, form_layers

    monkeypatch.setattr(querymod, "_WORD_IDS", {})
    monkeypatch.setattr(querymod, "_HASH_IDS", {})
    layers = form_layers(encode_query(compile_query("alpha")))
    assert layers is not None
    liar = assemble_form(layers._replace(keys=marshal.dumps(("gamma", "gamma"), 4)))
    got = decode_queries(["alpha", "gamma beta"],
                         [liar, encode_query(compile_query("gamma beta"))])  # fmt: skip
    assert got[0] is None and got[1] is not None
    again = decode_query("alpha", encode_query(compile_query("alpha")))
    assert again is not None and again.program == compile_query("alpha").program


def test_the_hash_map_is_written_under_the_leaf_lock(monkeypatch):
    # forget_leaves clears LEAVES and the maps under the lock: an entry written outside it
    # could outlive the clear and name whatever leaf is made next
    from digest import query as querymod

    class Guarded(dict):
        def __setitem__(self, key, value):
            assert querymod._LEAF_LOCK.locked()
            super().__setitem__(key, value)

    monkeypatch.setattr(querymod, "_WORD_IDS", Guarded())
    monkeypatch.setattr(querymod, "_HASH_IDS", Guarded())
    texts = ["alpha beta", '"kv cache" -vision', "title:llm prun*"]
    got = decode_queries(texts, [querymod.encode_query(compile_query(t)) for t in texts])
    assert all(q is not None for q in got) and len(querymod._HASH_IDS) >= 5


def test_one_unsound_form_does_not_send_its_whole_batch_form_by_form(monkeypatch):
    from digest import query as querymod
    from digest.query import assemble_form, encode_query, form_layers

    texts = [f"word{k} topic{k}" for k in range(64)]
    forms = [encode_query(compile_query(t)) for t in texts]
    layers = form_layers(forms[37])
    assert layers is not None
    forms[37] = assemble_form(layers._replace(keys=b"not a marshal"))
    monkeypatch.setattr(querymod, "_WORD_IDS", {})
    monkeypatch.setattr(querymod, "_HASH_IDS", {})
    batches = []
    real = querymod._decode_batch
    monkeypatch.setattr(querymod, "_decode_batch", lambda *a: batches.append(1) or real(*a))
    got = decode_queries(texts, forms)
    assert [k for k, q in enumerate(got) if q is None] == [37]
    assert len(batches) <= 2 * 6 + 1  # halves down to the one form, not 64 batches of one


def test_a_form_of_no_text_or_no_program_is_refused():
    import zlib

    from digest.query import FORM_KEY

    body = FORM_KEY + bytes(24)  # every size 0, then padding to 4 short of a multiple of 8
    empty = body + zlib.crc32(body).to_bytes(4, "little")
    assert len(empty) % 8 == 0
    assert decode_queries(["", "a ("], [empty, empty]) == [None, None]


def test_a_form_written_in_one_process_decodes_in_another():
    # the key hashes stand for the keys across processes: a forgiving alternative's key holds
    # a frozenset, whose order changes with the string hash seed
    import array
    import os
    import subprocess
    import sys

    from digest.query import form_layers

    text = "efficient llm inference, speculative decoding -vision, title:kv cache"
    code = ("import sys; from digest.query import encode_query, compile_query; "
            f"sys.stdout.write(encode_query(compile_query({text!r})).hex())")  # fmt: skip
    env = dict(os.environ)
    want = compile_query(text)
    hashes = set()
    for seed in ("1", "2", "3"):
        env["PYTHONHASHSEED"] = seed
        form = bytes.fromhex(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                            capture_output=True, text=True).stdout)  # fmt: skip
        layers = form_layers(form)
        assert layers is not None
        hashes.add(frozenset(layers.hashes[k : k + 8] for k in range(0, len(layers.hashes), 8)))
        got = decode_query(text, form)
        assert got is not None and got.root == want.root
        # the writer's order of equal children (the frozensets'), the same query
        assert set(got.terms) == set(want.terms) and len(got.terms) == len(want.terms)
        pairs = set(zip(got.literals, got.negated, strict=True))
        assert pairs == set(zip(want.literals, want.negated, strict=True))
        program = list(array.array("q", got.program))
        assert sorted(program) == sorted(array.array("q", want.program))
    assert len(hashes) == 1  # each key's hash the same whatever the process


def test_a_sound_crc_around_an_unsound_body_fails_that_form_alone():
    # a buggy writer's form passes the CRC: each layer's frame is checked, and the rest of
    # the batch decodes
    from digest.query import assemble_form, encode_query, form_layers

    texts = ["alpha beta", "gamma, -delta", "epsilon", "zeta eta", "theta", "iota kappa"]
    layers = [form_layers(encode_query(compile_query(t))) for t in texts]
    assert all(x is not None for x in layers)
    bad = [
        layers[0]._replace(template=layers[0].template + b"\xff" * 4),  # one blank too many
        layers[1]._replace(flags=b"\x01" + layers[1].flags[1:]),  # no such code
        layers[2]._replace(text=b"epsiloN"),  # a form of another text, of the same length
        layers[3]._replace(keys=b"not a marshal"),  # keys that do not decode
        layers[4]._replace(hashes=layers[4].hashes[:-1]),  # part of a hash
    ]
    forms = [assemble_form(x) for x in bad] + [assemble_form(layers[5])]  # type: ignore[arg-type]
    got = decode_queries(texts, forms)
    assert got[:5] == [None] * 5
    assert got[5] is not None and got[5].program == compile_query(texts[5]).program


def test_a_form_of_another_text_compiler_or_damaged_is_not_used():
    from digest.query import FORM_KEY, compile_query, decode_queries, encode_query

    form = encode_query(compile_query("sparse attention, -vision"))
    assert decode_query("sparse attention, -vision", form) == compile_query(
        "sparse attention, -vision"
    )
    assert decode_query("sparse attention, -vision ", form) is None  # another text
    assert decode_query("sparse attention, -vision", None) is None
    other = bytes(a ^ 1 for a in FORM_KEY) + form[4:]
    assert decode_query("sparse attention, -vision", other) is None  # another compiler
    assert decode_query("sparse attention, -vision", form[:-3]) is None  # truncated
    assert decode_query("sparse attention, -vision", form[:4] + b"\x00" * 20) is None
    # one damaged form in a batch: the others still decode
    got = decode_queries(["latency", "x", "b c"],
                         [encode_query(compile_query("latency")), b"junk",
                          encode_query(compile_query("b c"))])  # fmt: skip
    assert got[0] == compile_query("latency") and got[1] is None and got[2] is not None


def test_form_is_current():
    from digest.query import compiled_form, form_is_current

    assert compiled_form("") is None and form_is_current("", None)
    assert compiled_form("a (") is None  # an invalid query keeps no form
    form = compiled_form("latency")
    assert form is not None and form_is_current("latency", form)
    assert not form_is_current("latency", None)
    assert not form_is_current("latenzy", form)


def test_the_form_key_covers_the_compiler_s_own_source():
    # an edit of the parser or of text.py's words makes every stored form stale by itself
    from pathlib import Path

    import digest.query as query
    import digest.text as text

    source = query._compiler_source()
    assert (
        Path(query.__file__).read_bytes() in source and Path(text.__file__).read_bytes() in source
    )
    assert (
        query.hashlib.blake2b(
            f"{query.FORM_VERSION}|{text.STEMMER_VERSION}|{query.unicodedata.unidata_version}|"
            f"{query.sys.version_info[0]}.{query.sys.version_info[1]}|{query.marshal.version}".encode()
            + source,
            digest_size=4,
        ).digest()
        == query.FORM_KEY
    )


def test_a_damaged_byte_anywhere_in_a_form_is_refused_never_unmarshalled():
    # marshal is not safe on damaged bytes (a flipped byte can build a tuple holding itself,
    # whose hash overflows the C stack, or turn a layer's type): the CRC refuses them first
    from digest.query import compile_query, decode_queries, encode_query

    text = "sparse attention, speculative decoding, -vision"
    form = encode_query(compile_query(text))
    damaged = [form[:i] + bytes([form[i] ^ x]) + form[i + 1 :]
               for i in range(len(form)) for x in (0x01, 0x40, 0xFF)]  # fmt: skip
    assert decode_queries([text] * len(damaged), damaged) == [None] * len(damaged)


def test_a_sealed_form_with_keys_of_the_wrong_type_is_refused_alone(monkeypatch):
    # a form whose CRC is sound but whose keys are not what the batch reads (a buggy
    # writer): refused alone, the batch's other forms decode. (A form's keys are read only
    # for keys new to the process; a known hash stands for its key whatever the keys layer.)
    import marshal

    from digest import query as querymod
    from digest.query import assemble_form, compile_query, decode_queries, encode_query, form_layers

    good = ["latency", "b c"]
    text = "mixture of experts, -vision"
    layers = form_layers(encode_query(compile_query(text)))
    assert layers is not None
    keys = marshal.loads(layers.keys)
    for wrong in ([list(k) if isinstance(k, tuple) else [k] for k in keys],  # unhashable
                  ([1],) * len(keys), (1,) * len(keys), (), "abc"):  # fmt: skip
        bad = assemble_form(layers._replace(keys=marshal.dumps(wrong, 4)))
        monkeypatch.setattr(querymod, "_WORD_IDS", {})
        monkeypatch.setattr(querymod, "_HASH_IDS", {})
        got = decode_queries([good[0], text, good[1]],
                             [encode_query(compile_query(good[0])), bad,
                              encode_query(compile_query(good[1]))])  # fmt: skip
        assert got[1] is None, wrong
        assert got[0] == compile_query(good[0]) and got[2] == compile_query(good[1])


def test_a_query_pickles_and_copies_as_its_text():
    import copy
    import pickle

    from digest.query import compile_query, decode_query, encode_query

    text = "mixture of experts, -vision"
    decoded = decode_query(text, encode_query(compile_query(text)))
    assert decoded is not None
    for q in (compile_query(text), decoded):
        for twin in (pickle.loads(pickle.dumps(q)), copy.copy(q), copy.deepcopy(q)):
            assert twin == compile_query(text) and twin.program == compile_query(text).program
