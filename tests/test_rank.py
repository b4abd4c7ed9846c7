"""Learned ranking: models from examples, fusion with keywords, suggestions and why."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np

from digest.match import PaperIndex
from digest.models import StoredPaper, Topic
from digest.rank import (
    Examples,
    Learner,
    explain,
    fuse,
    paper_features,
    preview_topic,
    rank_profiles,
    suggestions,
)

T0 = datetime(2026, 1, 1)

TOPICS = {
    "robot": ("Robot grasping with visuomotor policies",
              "A robot arm learns to grasp objects by visuomotor imitation and tactile sensing."),
    "speech": ("Streaming speech recognition",
               "An acoustic model transcribes speech with low word error rate on noisy audio."),
    "video": ("Video diffusion for long clips",
              "A diffusion model generates temporally coherent video frames from text prompts."),
}  # fmt: skip


def papers(per_topic: int = 6) -> list[StoredPaper]:
    out = []
    for k in range(per_topic):
        for name, (title, abstract) in TOPICS.items():
            pid = len(out) + 1
            out.append(
                StoredPaper(pid, f"{name}{k}", f"{title} {k}", f"{abstract} Variant {k}.", T0)
            )
    return out


def ids_of(ps: list[StoredPaper], name: str) -> list[int]:
    return [p.id for p in ps if p.key.startswith(name)]


def test_features_are_stems_title_twice_and_pairs() -> None:
    p = StoredPaper(1, "k", "Sparse Attention", "Fast kernels.", T0)
    assert paper_features(p) == ["spars", "attent", "spars", "attent", "fast", "kernel",
                                 "spars attent", "fast kernel"]  # fmt: skip


def test_a_topic_of_examples_alone_finds_papers_like_its_likes() -> None:
    ps = papers()
    robots = ids_of(ps, "robot")
    got = preview_topic(ps, "", likes=robots[:2]).matches
    found = [m.paper_id for m in got]
    assert found and set(found) <= set(robots[2:])  # like the likes, never the likes themselves
    assert all(m.why.startswith('suggested: like "Robot grasping') for m in got)


def test_dislikes_push_papers_down() -> None:
    ps = papers()
    robots, speech = ids_of(ps, "robot"), ids_of(ps, "speech")
    learner = Learner(ps, {p.id: p for p in ps})
    x = learner.features(ps)
    plain, disliked = learner.scores(x, [Examples((robots[0],), ()),
                                         Examples((robots[0],), (speech[0],))]).T  # fmt: skip
    k = speech[1] - 1
    assert disliked[k] < plain[k]


def test_models_are_shared_by_identical_examples() -> None:
    ps = papers()
    learner = Learner(ps, {p.id: p for p in ps})
    ex = Examples((1, 4), ())
    assert learner.model(ex) is learner.model(Examples((1, 4), ()))
    assert learner.model(Examples((999,), ())) is None  # an unknown liked paper: no model


def _model(decision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-decision, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return order, rank


def test_fusion_keeps_keyword_matches_and_adds_few_suggestions() -> None:
    # papers 1..12 are near the likes (decision >= LIKENESS), the model's best first
    decision = np.r_[0.0, np.linspace(3.0, 0.9, 12), -1.0]
    order, rank = _model(decision)
    fused = fuse(np.array([0, 13]), rank, order, decision, has_query=True)
    kept = {i for i, _, k in fused if k >= 0}
    suggested = [i for i, _, k in fused if k < 0]
    assert kept == {0, 13}
    assert suggested == list(range(1, 9))  # a short list is filled up to 10, best first
    # the keyword list's order counts: the first keyword match outranks the second
    scores = {i: s for i, s, _ in fused}
    assert scores[0] > scores[13]
    # without a query every paper near the likes (decision >= LIKENESS) is taken
    alone = fuse(np.zeros(0, np.int64), rank, order, decision, has_query=False)
    assert [i for i, _, _ in alone] == list(range(1, 13))


def test_suggestions_fill_short_lists_and_are_a_share_of_long_ones() -> None:
    assert [suggestions(n) for n in (0, 3, 8, 30, 40, 100)] == [10, 7, 5, 6, 8, 10]


def test_without_examples_the_ranking_is_the_keyword_ranking() -> None:
    ps = papers()
    index = PaperIndex(ps)
    learner = Learner(ps, {})
    topics = {7: [Topic("Video", "video diffusion")]}
    ranked = rank_profiles(index, topics, learner=learner)
    from digest.match import match_profiles

    assert ranked[7].paper_ids() == match_profiles(index, topics)[7].paper_ids()


def test_a_liked_topic_ranks_through_its_model_in_planning_shape() -> None:
    ps = papers()
    index = PaperIndex(ps)
    robots = ids_of(ps, "robot")
    learner = Learner(ps, {p.id: p for p in ps})
    topic = Topic("Robots", "grasping", likes=(robots[0],))
    got = rank_profiles(index, {1: [topic], 2: [Topic("Speech", "speech")]}, learner=learner)
    assert not got[1].cut and got[1].full() is got[1]
    assert robots[0] not in got[1].paper_ids()
    assert set(got[1].paper_ids()) == set(robots[1:])
    assert got[1][0].topics == ("Robots",)
    assert set(got[2].paper_ids()) == set(ids_of(ps, "speech"))


def test_explain_lists_only_what_matched() -> None:
    ps = [StoredPaper(1, "a", "Pruning LLMs", "We prune weights. upvotes", T0, upvotes=12,
                      organization="NVIDIA", organization_id="nvidia")]  # fmt: skip
    index = PaperIndex(ps)
    why = explain(index, "pruning upvotes>=10, quantization, org:nvidia distillation", 0)
    assert why == "title: Pruning; abstract: prune; upvotes>=10"
    # `digest match` joins these words to the match's own why, which names the conditions
    # too: each is said once (found by the query check: "org:nvidia; org:nvidia")
    (m,) = preview_topic(ps, "pruning upvotes>=10 org:nvidia").matches
    assert m.why == "title: Pruning; abstract: prune; org:nvidia; upvotes>=10"  # sorted


def test_feedback_reaches_the_digest_through_planning(tmp_path, capsys, shared_dumps) -> None:
    # the whole path: a like recorded by `digest feedback` -> topic examples loaded -> the
    # planner's learner -> a suggested paper in the next digest, with its why, in both parts
    from digest.cli import main

    dumps = shared_dumps[:2]
    site = tmp_path / "site"
    assert main(["init", str(site)]) == 0
    cfg = ["--config", str(site / "settings.toml")]
    assert main([*cfg, "ingest", *map(str, dumps)]) == 0
    assert main([*cfg, "subscriber", "add", "ada@example.org", "--topic", "Mine", "",
                 "--backfill", "3650"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*cfg, "match", "quantization", "--json", "--limit", "2"]) == 0
    liked = [m["id"] for m in json.loads(capsys.readouterr().out)]
    for pid in liked:
        assert main([*cfg, "feedback", "ada@example.org", str(pid), "--like"]) == 0
    out = tmp_path / "preview"
    assert main([*cfg, "preview", "ada@example.org", "--out", str(out)]) == 0
    text = next(out.glob("*.txt")).read_text(encoding="utf-8")
    html = next(out.glob("*.html")).read_text(encoding="utf-8")
    assert "suggested: like" in " ".join(text.split())
    assert "suggested: like" in html


def test_factored_rocchio_equals_the_dense_weight_vector() -> None:
    # liked mean - disliked mean - background mean, as one vector, ranks papers the same
    ps = papers()
    robots, speech = ids_of(ps, "robot"), ids_of(ps, "speech")
    learner = Learner(ps, {p.id: p for p in ps})
    x = learner.features(ps)
    ex = Examples((robots[0], robots[1]), (speech[0],))
    got = learner.scores(x, [ex])[:, 0]
    by_id = {p.id: p for p in ps}
    liked = learner.features([by_id[i] for i in ex.likes]).mean(axis=0)
    disliked = learner.features([by_id[i] for i in ex.dislikes]).mean(axis=0)
    vec = np.asarray(liked - disliked - x.mean(axis=0)).ravel()
    dense = x @ vec
    # the same up to the model's rescaling (a positive affine map)
    slope = (got[1] - got[0]) / (dense[1] - dense[0])
    assert slope > 0
    assert np.allclose(got, got[0] + slope * (dense - dense[0]))


def test_features_from_the_index_are_the_papers_own() -> None:
    extra = StoredPaper(99, "ft", "Fine-tuning pre-trained multi-modal models", "Self-play RL.", T0)
    ps = [*papers(), extra]
    alone, shared = Learner(ps, {}), Learner(ps, {}, PaperIndex(ps))
    assert (alone.features(ps) != shared.features(ps)).nnz == 0


def test_a_learned_list_cut_at_the_limit_says_so() -> None:
    ps = papers()
    index = PaperIndex(ps)
    robots = ids_of(ps, "robot")
    learner = Learner(ps, {p.id: p for p in ps}, index)
    topic = {1: [Topic("Robots", "grasping", likes=(robots[0],))]}
    whole = rank_profiles(index, topic, learner=learner)[1]
    cut = rank_profiles(index, topic, limit=2, learner=learner)[1]
    assert len(whole) > 2 and not whole.cut
    assert cut.cut and cut.paper_ids() == whole.paper_ids()[:2]


def test_nearest_like_is_the_liked_paper_of_highest_cosine() -> None:
    ps = papers()
    mixed = [StoredPaper(100, "mix", "Robot speech", "A robot arm transcribes speech.", T0)]
    learner = Learner(ps, {p.id: p for p in ps})
    sets = [Examples((*ids_of(ps, n)[:2], ids_of(ps, m)[0]), ())
            for n, m in (("robot", "speech"), ("video", "robot"), ("speech", "video"))]  # fmt: skip
    for ex in sets:
        liked = [p for p in ps if p.id in ex.likes]
        for paper in [*ps, *mixed]:  # `mixed` is new to the learner: its row is added on use
            x = learner.features([*liked, paper])
            cos = (x[:-1] @ x[-1].T).toarray().ravel()
            assert learner.nearest_like(paper, ex) == liked[int(np.argmax(cos))]


def test_topics_alike_in_name_and_query_keep_their_own_examples() -> None:
    # two subscribers' topics "Mine" with no words, liking different papers: each list and
    # each suggestion's why follow that subscriber's own likes
    ps = papers()
    robot, speech = ids_of(ps, "robot")[0], ids_of(ps, "speech")[0]
    learner = Learner(ps, {p.id: p for p in ps})
    got = rank_profiles(
        PaperIndex(ps),
        {1: [Topic("Mine", "", likes=(robot,))], 2: [Topic("Mine", "", likes=(speech,))]},
        learner=learner,
    )
    assert got[1] and got[2]
    assert {m.why for m in got[1]} == {
        'suggested: like "Robot grasping with visuomotor policies 0"'
    }
    assert {m.why for m in got[2]} == {'suggested: like "Streaming speech recognition 0"'}
    assert set(m.paper_id for m in got[1]) <= set(ids_of(ps, "robot"))
    assert set(m.paper_id for m in got[2]) <= set(ids_of(ps, "speech"))


def test_features_from_the_index_equal_those_from_the_text(shared_dumps) -> None:
    # the learner reads a paper's words from the keyword index (PaperIndex.field_words) when
    # the index holds it: the features must be what tokenising the text again gives
    from digest.parse import parse_file

    parsed = [p for f in shared_dumps for p in parse_file(f).papers]
    ps = [StoredPaper(k + 1, f"k{k}", p.title, p.abstract, T0) for k, p in enumerate(parsed)]
    ps.append(StoredPaper(len(ps) + 1, "odd", "C++ & LLMs: fine-tuning “quoted” Ünïcode",
                          "Self-supervised $\\alpha$-blending; well-known GNNs.", T0))  # fmt: skip
    learner = Learner(ps, {}, PaperIndex(ps))
    for p in ps:
        assert learner._analyze(p) == paper_features(p), p.title
