"""The batch matching engine against a straightforward reference evaluator and the shared dumps."""

from __future__ import annotations

import functools
import math
import operator
import re
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import QueryError
from digest.highlight import highlight_spans
from digest.match import PaperIndex, bit_indices, match_profiles, match_query
from digest.models import StoredPaper, Topic
from digest.query import Node, compile_query
from digest.text import index_words, tokenize

DUMPS = Path(__file__).resolve().parents[2] / "shared" / "dumps"
_OPS = {"<": operator.lt, "<=": operator.le, "=": operator.eq, ">=": operator.ge, ">": operator.gt}


# ---------------------------------------------------------------- reference evaluator


def _has_run(seq: list[str], run: tuple[str, ...]) -> bool:
    n = len(run)
    return any(tuple(seq[k : k + n]) == run for k in range(len(seq) - n + 1))


@functools.lru_cache(maxsize=4096)
def _tokens(text: str) -> list:
    return tokenize(text)


def reference_match(node: Node, paper: StoredPaper, corpus: tuple[StoredPaper, ...] = ()) -> bool:
    """Evaluate a query tree on one paper directly: no index, no bitsets, no memo; corpus is
    the papers matched against (the idf of a forgiving alternative's words)."""
    # the words the index holds: each field's words, then its hyphenated pairs joined
    fields = {"title": index_words(paper.title), "abstract": index_words(paper.abstract)}
    chosen = [fields[node.field]] if node.field else list(fields.values())
    if node.kind == "t":
        return any(node.arg in stems for stems, _ in chosen)
    if node.kind == "p":
        return any(_has_run(list(stems), node.arg) for stems, _ in chosen)
    if node.kind == "x":
        return any(w.startswith(node.arg) for _, norms in chosen for w in norms)
    if node.kind == "n":
        name, op, value = node.arg
        fact = getattr(paper, name)
        return fact is not None and _OPS[op](fact, value)
    if node.kind == "o":
        names = [paper.organization_id, paper.organization]
        return any(v and _has_run([t.norm for t in tokenize(v)], node.arg) for v in names)
    if node.kind == "not":
        return not reference_match(node.arg, paper, corpus)
    if node.kind == "and":
        return all(reference_match(c, paper, corpus) for c in node.arg)
    if node.kind == "m":
        # most of the words, and the words held carry half their idf mass (BM25's idf)
        n, held, total = len(corpus), 0.0, 0.0
        count = 0
        for c in node.children:
            df = _DF.get(c)
            if df is None:
                df = _DF[c] = sum(reference_match(c, p, corpus) for p in corpus)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            total += idf
            if reference_match(c, paper, corpus):
                held += idf
                count += 1
        need = (
            -(-2 * len(node.children) // 3) if len(node.children) <= 8 else len(node.children) - 2
        )
        return count >= need and held >= total / 2 - 1e-9
    return any(reference_match(c, paper, corpus) for c in node.arg)


_DF: dict[Node, int] = {}  # document frequencies in the corpus reference_ids is evaluating


def reference_ids(query: str, papers: list[StoredPaper]) -> set[int]:
    root = compile_query(query).root
    _DF.clear()
    corpus = tuple(papers)
    return {p.id for p in papers if reference_match(root, p, corpus)}


def stored(i: int, title: str, abstract: str, **facts) -> StoredPaper:
    return StoredPaper(
        id=i, key=f"k{i}", title=title, abstract=abstract, first_seen=datetime(2026, 1, 1), **facts
    )


# ---------------------------------------------------------------- hand-written papers

PAPERS = [
    stored(1, "Speculative Decoding for Low-Latency LLM Serving",
           "We speculatively decode with a draft model; latency drops.", upvotes=12, authors=4,
           organization="NVIDIA", organization_id="nvidia", published=date(2025, 11, 24)),
    stored(2, "Diffusion Models at Low Latency",
           "A latency study of diffusion samplers.", upvotes=30, authors=9),
    stored(3, "Pruning Vision Transformers",
           "Structured pruning of ViT blocks; pruned models keep accuracy.", upvotes=12,
           authors=5, organization="Google DeepMind", organization_id="google",
           published=date(2025, 12, 1)),
    stored(4, "S$^{2}$FT: Efficient Fine-Tuning",
           "Sparse fine-tuning with α-divergence regularisation.", published=date(2024, 1, 1)),
    stored(5, "Latency-aware Sparse Attention",
           "Sparse attention kernels for long context; no diffusion here."),
]  # fmt: skip


@pytest.fixture(scope="module")
def index() -> PaperIndex:
    return PaperIndex(PAPERS)


def ids(matches) -> list[int]:
    return [m.paper_id for m in matches]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('"speculative decoding"', {1}),
        ("speculative decoding", {1}),  # AND of stems: "speculatively decode" counts too
        ("low-latency", {1, 2}),
        ('"low latency"', {1, 2}),
        ("latency", {1, 2, 5}),
        ("latency, -diffusion", {1}),  # paper 5 mentions diffusion in its abstract
        ("latency -diffusion, pruning", {1, 3}),
        ("prun*", {3}),
        ("title:latency", {1, 2, 5}),
        ("abstract:latency", {1, 2}),
        ("title:(sparse attention)", {5}),
        ("org:nvidia", {1}),
        ('org:"google deepmind"', {3}),
        ("org:deepmind", {3}),
        ("upvotes>=12", {1, 2, 3}),
        ("upvotes>12", {2}),
        ("upvotes=12", {1, 3}),
        ("upvotes<12 latency", set()),  # papers without upvotes fail the condition
        ("authors<=5", {1, 3}),
        ("S2FT", {4}),
        ("S^{2}FT", {4}),
        ("alpha-divergence", {4}),
        ("(pruning OR sparse) NOT attention", {3, 4}),
        ("latency AND NOT diffusion", {1}),
    ],
)
def test_language_on_hand_written_papers(index, query, expected):
    assert set(ids(match_query(index, query))) == expected
    assert reference_ids(query, PAPERS) == expected


def test_title_hits_rank_above_abstract_hits(index):
    assert ids(match_query(index, "latency"))[0] in (1, 2, 5)
    ranked = match_query(index, "pruning, speculative")
    assert ranked[0].score >= ranked[-1].score


def test_ties_break_by_upvotes_then_date():
    a = stored(1, "Graph networks", "x", upvotes=3, published=date(2025, 1, 1))
    b = stored(2, "Graph networks", "x", upvotes=9, published=date(2024, 1, 1))
    c = stored(3, "Graph networks", "x", upvotes=9, published=date(2025, 6, 1))
    d = stored(4, "Graph networks", "x")
    assert ids(match_query(PaperIndex([a, b, c, d]), "graph")) == [3, 2, 1, 4]


def test_match_carries_terms_and_spans(index):
    (m,) = match_query(index, '"speculative decoding", serving')
    title = PAPERS[0].title
    assert [title[s:e] for s, e in m.title_spans] == ["Speculative Decoding", "Serving"]
    assert m.terms == ("Speculative Decoding", "Serving", "speculatively decode")
    abstract = PAPERS[0].abstract
    assert [abstract[s:e] for s, e in m.abstract_spans] == ["speculatively decode"]


def test_spans_of_stemmed_and_latex_words(index):
    (m,) = match_query(index, "s2ft alpha")
    assert [PAPERS[3].title[s:e] for s, e in m.title_spans] == ["S$^{2}$FT"]
    assert [PAPERS[3].abstract[s:e] for s, e in m.abstract_spans] == ["α"]
    assert m.terms == ("S$^{2}$FT", "α")


def test_highlight_spans_helper():
    text = "Pruning vision transformers; pruned."
    assert highlight_spans(text, "prune") == ((0, 7), (29, 35))
    assert highlight_spans(text, ["vision", compile_query('"vision transformers"')]) == ((8, 27),)
    assert highlight_spans(text, "title:vision", field="abstract") == ()


def test_match_profiles_ranks_per_subscriber_and_lists_topics(index):
    profiles = {
        10: [Topic("Latency", "latency"), Topic("Pruning", "pruning")],
        11: [Topic("Diffusion", "diffusion -latency")],  # nothing matches
        12: [Topic("Latency", "latency")],
        13: [Topic("Latency", "latency")],
        14: [],
    }
    got = match_profiles(index, profiles)
    assert set(got) == {10, 12, 13}
    assert set(ids(got[10])) == {1, 2, 3, 5}
    assert all(m.topics == ("Latency",) for m in got[12])
    assert ids(got[12]) == ids(got[13]) and got[12] is not got[13]
    by_id = {m.paper_id: m for m in got[10]}
    assert by_id[3].topics == ("Pruning",)
    scores = [m.score for m in got[10]]
    assert scores == sorted(scores, reverse=True)


def test_multi_topic_paper_once_with_both_topics_best_first(index):
    got = match_profiles(index, {1: [Topic("A", "decoding"), Topic("B", "speculative serving")]})
    (m,) = got[1]
    assert set(m.topics) == {"A", "B"}
    assert m.topics[0] == "B"  # two words present outscore one
    assert {t.lower() for t in m.terms} == {"decoding", "speculative", "serving", "decode",
                                            "speculatively"}  # fmt: skip


def test_limit_keeps_the_best(index):
    full = match_profiles(index, {1: [Topic("L", "latency, pruning")]})[1]
    top = match_profiles(index, {1: [Topic("L", "latency, pruning")]}, limit=2)[1]
    assert ids(top) == ids(full)[:2]


def test_bad_stored_query_matches_nothing_without_stopping_others(index):
    got = match_profiles(index, {1: [Topic("bad", '"open')], 2: [Topic("ok", "pruning")]})
    assert set(got) == {2}


def test_a_bad_stored_topic_is_skipped_and_the_subscribers_other_topics_still_match(index):
    bad = Topic("bad", '"open')
    good = {
        1: [Topic("L", "latency")],
        2: [Topic("L", "latency"), Topic("P", "pruning")],
        3: [Topic("D", "decoding"), Topic("S", "speculative serving"), Topic("P", "pruning")],
    }
    with_bad = {1: [bad, *good[1]], 2: [good[2][0], bad, good[2][1]], 3: [*good[3], bad], 4: [bad]}
    for limit in (None, 1):
        want = match_profiles(index, good, limit=limit)
        got = match_profiles(index, with_bad, limit=limit)
        assert set(got) == {1, 2, 3}
        for sid in good:
            assert list(got[sid]) == list(want[sid]), sid
            assert got[sid].cut == want[sid].cut


def test_match_query_raises_on_bad_query(index):
    with pytest.raises(QueryError):
        match_query(index, "title:")


def test_empty_index():
    assert match_query(PaperIndex([]), "latency") == []


def test_bit_indices_dense_and_sparse():
    assert bit_indices(0) == []
    assert bit_indices(0b1011) == [0, 1, 3]
    dense = sum(1 << i for i in range(0, 500, 3))
    assert bit_indices(dense) == list(range(0, 500, 3))


# ---------------------------------------------------------------- differential: engine == reference

WORDS = ["sparse", "attention", "latency", "low", "pruning", "pruned", "model", "models",
         "diffusion", "α", "S$^{2}$FT", "decoding", "speculative", "vision"]  # fmt: skip
QWORDS = ["sparse", "attention", "latency", "low", "prune", "model", "diffusion", "alpha",
          "s2ft", "decoding", "vision", "mod*", "prun*", "lat*"]  # fmt: skip


def _text(draw, n):
    ws = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=n))
    seps = draw(
        st.lists(st.sampled_from([" ", "-", ", ", " "]), min_size=len(ws), max_size=len(ws))
    )
    return "".join(w + s for w, s in zip(ws, seps, strict=True)).strip(" ,-")


@st.composite
def papers_strategy(draw):
    out = []
    for i in range(draw(st.integers(0, 12))):
        facts = {
            "upvotes": draw(st.none() | st.integers(0, 20)),
            "authors": draw(st.none() | st.integers(1, 9)),
        }
        if draw(st.booleans()):
            facts["organization_id"], facts["organization"] = draw(
                st.sampled_from([("nvidia", "NVIDIA"), ("google", "Google DeepMind")])
            )
        out.append(stored(i + 1, _text(draw, 5), _text(draw, 12), **facts))
    return out


@st.composite
def item_strategy(draw, depth=0):
    kind = draw(st.sampled_from(["w", "w", "w", "phrase", "not", "field", "num", "org", "group"]))
    if kind == "w":
        return draw(st.sampled_from(QWORDS))
    if kind == "phrase":
        return (
            '"'
            + " ".join(draw(st.lists(st.sampled_from(QWORDS[:10]), min_size=1, max_size=3)))
            + '"'
        )
    if kind == "not":
        return "-" + draw(st.sampled_from(QWORDS))
    if kind == "field":
        return draw(st.sampled_from(["title:", "abstract:"])) + draw(st.sampled_from(QWORDS))
    if kind == "num":
        return (
            draw(st.sampled_from(["upvotes", "authors"]))
            + draw(st.sampled_from(["<", "<=", "=", ">=", ">"]))
            + str(draw(st.integers(0, 12)))
        )
    if kind == "org":
        return draw(st.sampled_from(["org:nvidia", 'org:"google deepmind"', "org:deepmind"]))
    if depth >= 1:
        return draw(st.sampled_from(QWORDS))
    inner = draw(st.lists(item_strategy(depth + 1), min_size=1, max_size=3))
    return "(" + draw(st.sampled_from([" OR ", " ", " AND "])).join(inner) + ")"


@st.composite
def query_strategy(draw):
    alts = draw(st.lists(st.lists(item_strategy(), min_size=1, max_size=3), min_size=1, max_size=3))
    return ", ".join(" ".join(a) for a in alts)


def _valid(queries: list[str]) -> list[str]:
    """The queries that compile (a random alternative may be made only of exclusions)."""
    compiled = []
    for q in queries:
        try:
            compile_query(q)
        except QueryError:
            continue
        compiled.append(q)
    return compiled


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(papers_strategy(), st.lists(query_strategy(), min_size=1, max_size=4))
def test_engine_agrees_with_reference(papers, queries):
    compiled = _valid(queries)
    index = PaperIndex(papers)
    profiles = {k: [Topic(f"t{k}", q)] for k, q in enumerate(compiled)}
    profiles[len(compiled)] = [Topic(f"t{k}", q) for k, q in enumerate(compiled)]
    got = match_profiles(index, profiles)
    union: set[int] = set()
    for k, q in enumerate(compiled):
        want = reference_ids(q, papers)
        union |= want
        assert set(ids(got.get(k, []))) == want, q
        assert set(ids(match_query(index, q))) == want, q
    assert set(ids(got.get(len(compiled), []))) == union
    for matches in got.values():
        assert len(ids(matches)) == len(set(ids(matches)))
        keys = [(-m.score) for m in matches]
        assert keys == sorted(keys)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(papers_strategy(), st.lists(query_strategy(), min_size=1, max_size=4), st.integers(1, 4))
def test_limited_lists_are_the_full_rankings_cut(papers, queries, limit):
    compiled = []
    for q in queries:
        try:
            compile_query(q)
        except QueryError:
            continue
        compiled.append(q)
    profiles = {k: [Topic(f"t{k}", q)] for k, q in enumerate(compiled)}
    profiles[len(compiled)] = [Topic(f"t{k}", q) for k, q in enumerate(compiled)]
    full = match_profiles(PaperIndex(papers), profiles)
    top = match_profiles(PaperIndex(papers), profiles, limit=limit)
    assert set(top) == set(full)
    # every list's ids read in one pass are each list's own paper_ids()
    for got in (full, top):
        assert got.ranked_ids() == {sid: got[sid].paper_ids() for sid in got}
    for sid, whole in full.items():
        cut = top[sid]
        # exact top-k: the same papers, scores, topics and words as the head of the full list
        assert list(cut) == list(whole)[:limit]
        assert cut.paper_ids() == whole.paper_ids()[:limit]
        assert cut.cut == (len(whole) > limit)
        assert list(cut.full()) == list(whole)
        assert not whole.cut and whole.full() is whole


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(papers_strategy(), st.lists(query_strategy(), min_size=1, max_size=5))
def test_reasons_are_the_built_matches_words_and_why(papers, queries):
    # What the ledger records (MatchList.reasons, words shared across queries by matched
    # words and paper) is what a built Match carries, for every item of every list.
    compiled = _valid(queries)
    profiles = {k: [Topic(f"t{k}", q)] for k, q in enumerate(compiled)}
    profiles[len(compiled)] = [Topic(f"t{k}", q) for k, q in enumerate(compiled)]
    # the same query twice (another subscriber), and in reverse order under other names
    profiles[len(compiled) + 1] = [Topic(f"u{k}", q) for k, q in enumerate(compiled)][::-1]
    fresh = match_profiles(PaperIndex(papers), profiles, limit=3)
    batched = match_profiles(PaperIndex(papers), profiles, limit=3)
    mixed = match_profiles(PaperIndex(papers), profiles, limit=3)
    built = match_profiles(PaperIndex(papers), profiles, limit=3)
    assert set(fresh) == set(built) == set(batched) == set(mixed)
    for sid, whole in built.items():
        want = [(m.topics, m.terms, m.score, m.why) for m in whole]
        assert [fresh[sid].reason(k) for k in range(len(whole))] == want, profiles[sid]
        # a list's items asked for at once (the queue stage), last first: the same
        every = list(range(len(whole)))[::-1]
        assert batched[sid].reasons(every) == want[::-1], profiles[sid]
        # and from a list whose first item was read as a Match already
        one = mixed[sid]
        assert len(one) == 0 or one[0] is not None
        assert one.reasons(every) == want[::-1], profiles[sid]


# ---------------------------------------------------------------- the shared dumps


def _dump_papers() -> list[StoredPaper]:
    """Title/abstract pairs of the shared dumps: an abstract is a long line after its title."""
    if not DUMPS.is_dir():
        pytest.skip(f"shared dumps not found at {DUMPS}")
    seen: dict[str, StoredPaper] = {}
    for f in sorted(DUMPS.glob("*.txt")):
        lines = [s.strip() for s in f.read_text(encoding="utf-8-sig").splitlines() if s.strip()]
        for k in range(1, len(lines)):
            if len(lines[k]) >= 300:
                title = lines[k - 1].removeprefix("Subscribe") or lines[k - 1]
                seen.setdefault(title, stored(len(seen) + 1, title, lines[k]))
    return list(seen.values())


@pytest.fixture(scope="module")
def dump_papers() -> list[StoredPaper]:
    return _dump_papers()


@pytest.fixture(scope="module")
def dump_index(dump_papers) -> PaperIndex:
    return PaperIndex(dump_papers)


def _regex_ids(papers, pattern: str) -> set[int]:
    rx = re.compile(pattern, re.IGNORECASE)
    return {p.id for p in papers if rx.search(p.title) or rx.search(p.abstract)}


def test_dumps_are_loaded(dump_papers):
    assert len(dump_papers) > 300


def test_dump_phrase_speculative_decoding(dump_index, dump_papers):
    # stemmed phrase: both words adjacent, in order, any inflection (speculatively decodes...)
    want = _regex_ids(dump_papers, r"\bspeculative(?:ly)?[\s-]+decod(?:e|es|ed|ing|er|ers)\b")
    got = {m.paper_id for m in match_query(dump_index, '"speculative decoding"')}
    assert want and got == want


def test_dump_exclusion_never_returns_diffusion(dump_index, dump_papers):
    got = {m.paper_id for m in match_query(dump_index, "latency, -diffusion")}
    with_latency = _regex_ids(dump_papers, r"\blatenc(?:y|ies)\b")
    with_diffusion = _regex_ids(dump_papers, r"diffus")
    assert got and not got & with_diffusion
    assert got == with_latency - with_diffusion


def test_dump_prefix_and_field(dump_index, dump_papers):
    got = {m.paper_id for m in match_query(dump_index, "title:prun*")}
    want = {p.id for p in dump_papers if re.search(r"\bprun", p.title, re.IGNORECASE)}
    assert want and got == want


def test_dump_spans_point_at_the_words(dump_index, dump_papers):
    by_id = {p.id: p for p in dump_papers}
    for m in match_query(dump_index, '"speculative decoding", latency'):
        p = by_id[m.paper_id]
        for s, e in m.abstract_spans:
            assert re.fullmatch(r"(?i)speculative(ly)?\s+decod\w*|latenc\w*", p.abstract[s:e])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(query_strategy(), min_size=1, max_size=3))
def test_engine_agrees_with_reference_on_dumps(dump_index, dump_papers, queries):
    for q in queries:
        try:
            want = reference_ids(q, dump_papers)
        except QueryError:
            continue
        assert {m.paper_id for m in match_query(dump_index, q)} == want, q


def test_batch_compiles_each_query_once_per_process(index, monkeypatch):
    from digest import match as engine

    calls: list[str] = []

    def counting(text: str):
        calls.append(text)
        return compile_query(text)

    monkeypatch.setattr(engine, "compile_query", counting)
    monkeypatch.setattr(engine, "_COMPILED", {})
    profiles = {1: [Topic("a", "latency")], 2: [Topic("b", "latency"), Topic("c", "pruning x")]}
    first = match_profiles(index, profiles)
    again = match_profiles(PaperIndex(index.papers), profiles)
    assert sorted(calls) == ["latency", "pruning x"]  # the second batch only looked them up
    assert {s: again[s].paper_ids() for s in again} == {s: first[s].paper_ids() for s in first}


def test_compiled_cache_is_bounded(monkeypatch):
    from digest import match as engine

    monkeypatch.setattr(engine, "_COMPILED", {})
    monkeypatch.setattr(engine, "_COMPILED_MAX", 3)
    for w in ("alpha", "beta", "gamma", "delta"):
        assert engine.cached_query(w) == compile_query(w)
    assert len(engine._COMPILED) <= 3


def test_a_rare_word_of_a_forgiving_alternative_is_required() -> None:
    # two common words must not carry a three-word topic: "spiking" is what it is about
    common = [stored(k, f"Neural networks {k}", "Deep neural networks.") for k in range(1, 9)]
    spiking = [
        stored(20, "Spiking neural networks", "Neuromorphic."),
        stored(21, "Spiking networks on chips", "Energy."),
        stored(22, "Spiking neurons", "Neural coding."),
    ]
    papers = common + spiking
    got = {m.paper_id for m in match_query(PaperIndex(papers), "spiking neural networks")}
    assert got == {20, 21, 22}
    assert got == reference_ids("spiking neural networks", papers)
    # the batch engine computes the same rule on its bitset rows
    batch = match_profiles(PaperIndex(papers), {1: [Topic("t", "spiking neural networks")]})
    assert {m.paper_id for m in batch[1]} == got


def test_words_of_equal_weight_need_two_of_three() -> None:
    papers = [
        stored(1, "alpha beta", "x"),
        stored(2, "beta gamma", "x"),
        stored(3, "alpha gamma", "x"),
        stored(4, "alpha", "x"),
        stored(5, "beta", "x"),
        stored(6, "gamma", "x"),
        stored(7, "alpha beta gamma", "x"),
    ]
    got = {m.paper_id for m in match_query(PaperIndex(papers), "alpha beta gamma")}
    assert got == {1, 2, 3, 7}


def test_forgiving_alternatives_with_compounds_in_a_batch() -> None:
    # a compound is an OR inside the alternative; the same OR stands alone in another topic
    papers = [
        stored(1, "Fine-tuning LLM inference", "x"),
        stored(2, "Finetuning for inference", "x"),
        stored(3, "LLM inference", "x"),
        stored(4, "Fine tuning", "llm"),
        *[stored(k, f"Other paper {k}", "x") for k in range(5, 12)],
    ]
    queries = ["fine-tuning llm inference", "(fine-tuning) llm", "fine-tuning"]
    got = match_profiles(PaperIndex(papers), {k: [Topic("t", q)] for k, q in enumerate(queries)})
    for k, q in enumerate(queries):
        assert {m.paper_id for m in got.get(k, [])} == reference_ids(q, papers), q


def test_index_tables_agree_with_per_paper_words(dump_index, dump_papers):
    # the batch-built index (one tokenizer pass, word-id arrays) against each paper's own words
    from digest.text import index_words as words  # each text's words, then its compounds

    ref: dict[tuple[str, str, str], int] = {}
    for i, p in enumerate(dump_papers):
        for fld, text in (("title", p.title), ("abstract", p.abstract)):
            stems = words(text)[0]
            for s in stems:
                ref[("t", fld, s)] = ref.get(("t", fld, s), 0) | 1 << i
        assert dump_index._stems[i] == (words(p.title)[0], words(p.abstract)[0])
        assert dump_index._norms[i] == (words(p.title)[1], words(p.abstract)[1])
    assert len(ref) > 5000
    prefixes = sorted({w[:3] for ns in dump_index._norms for f in ns for w in f})[::20]
    for pre in prefixes:
        for slot, fld in ((0, "title"), (1, "abstract")):
            ref[("x", fld, pre)] = sum(
                1 << i for i, ns in enumerate(dump_index._norms)
                if any(w.startswith(pre) for w in ns[slot])
            )  # fmt: skip
    for (kind, fld, arg), bits in ref.items():
        assert dump_index.bits(Node(kind, fld, arg)) == bits, (kind, fld, arg)
    assert dump_index.bits(Node("t", None, "no-such-stem")) == 0


def test_stored_forms_are_used_and_keep_the_cache_bounded(monkeypatch):
    from digest import match as engine
    from digest.query import compiled_form

    monkeypatch.setattr(engine, "_COMPILED", {})
    monkeypatch.setattr(engine, "_UNSTORED", set())
    monkeypatch.setattr(engine, "_COMPILED_MAX", 3)
    texts = ["alpha", "beta", "gamma", "delta", "epsilon"]
    profiles = {k: [Topic("t", w, compiled=compiled_form(w))] for k, w in enumerate(texts)}
    profiles[9] = [Topic("t", "zeta", compiled=b"damaged")]
    engine.load_queries(profiles)
    assert len(engine._COMPILED) <= 3
    papers = [stored(k, f"{w} paper", "An abstract.") for k, w in enumerate([*texts, "zeta"], 1)]
    got = match_profiles(PaperIndex(papers), profiles)
    assert {s: got[s].paper_ids() for s in got} == {k: [k + 1] for k in range(5)} | {9: [6]}
    # past the bound, only the damaged form is rewritten: the good ones stay as they are
    assert [(sid, q) for sid, _, q, _ in engine.forms_to_save(profiles)] == [(9, "zeta")]


def _damaged_template(text: str) -> bytes:
    """A sealed form of `text` whose program template holds one blank more than its keys."""
    from digest.query import assemble_form, compiled_form, form_layers

    layers = form_layers(compiled_form(text))
    assert layers is not None
    return assemble_form(layers._replace(template=layers.template + b"\xff" * 4))


def test_damaged_forms_are_compiled_afresh_and_rewritten(monkeypatch):
    # a form whose header is right but whose body is not (undecodable, or a template of
    # part of an int) fails alone: the batch decodes the others, and the queue stage rewrites it
    from digest import match as engine
    from digest.query import compiled_form, decode_queries

    monkeypatch.setattr(engine, "_COMPILED", {})
    monkeypatch.setattr(engine, "_UNSTORED", set())
    texts = ["alpha", "beta gamma", "delta", "epsilon"]
    forms = [compiled_form(texts[0]), _damaged_template(texts[1]),
             compiled_form(texts[2])[:4] + b"junk", compiled_form(texts[3])]  # fmt: skip
    decoded = decode_queries(texts, forms)
    assert [q is not None for q in decoded] == [True, False, False, True]
    assert decoded[3] == compile_query(texts[3]) and decoded[0] == compile_query(texts[0])
    profiles = {
        k: [Topic("t", w, compiled=f)] for k, (w, f) in enumerate(zip(texts, forms, strict=True))
    }
    engine.load_queries(profiles)
    assert {"beta gamma", "delta"} == engine._UNSTORED
    rows = engine.forms_to_save(profiles)
    assert [(sid, q, f) for sid, _, q, f in rows] == [
        (1, "beta gamma", compiled_form("beta gamma")), (2, "delta", compiled_form("delta"))
    ]  # fmt: skip


def test_the_conditions_of_a_why_come_in_one_order_in_every_process() -> None:
    # A conjunction's clauses iterate in a frozenset's order, which follows the process's hash
    # seed: "org:nvidia; upvotes>=10" in one process was "upvotes>=10; org:nvidia" in another.
    import os
    import subprocess
    import sys

    script = (
        "from datetime import datetime\n"
        "from digest.match import PaperIndex, passed_conditions\n"
        "from digest.models import StoredPaper\n"
        "from digest.query import compile_query\n"
        "p = StoredPaper(1, 'a', 'Pruning', 'x', datetime(2026, 1, 1), upvotes=12, authors=3,\n"
        "                organization='NVIDIA', organization_id='nvidia')\n"
        "q = compile_query('pruning upvotes>=10 org:nvidia authors<=5')\n"
        "print(passed_conditions(PaperIndex([p]), q, 0))\n"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (0, 3, 11, 12)
    }
    assert seen == {"['authors<=5', 'org:nvidia', 'upvotes>=10']\n"}, seen
