"""The live preview's backtest: topic by topic, moves, papers per digest, unchanged collapsed."""

from __future__ import annotations

from datetime import datetime

from digest.models import StoredPaper, Topic
from digest.web.preview import backtest


def _paper(i: int, title: str) -> StoredPaper:
    return StoredPaper(id=i, key=f"k{i}", title=title, abstract="", first_seen=datetime(2026, 1, 1))


PAPERS = [
    _paper(1, "Pruning Vision Transformers"),
    _paper(2, "Pruning Diffusion Models"),
    _paper(3, "Diffusion Samplers at Low Latency"),
    _paper(4, "Speculative Decoding"),
]


def _topic(preview, name):
    return next(t for t in preview.topics if t.name == name)


def test_a_topic_edit_shows_though_another_topic_still_matches_its_papers():
    saved = [Topic("Pruning", "pruning"), Topic("Diffusion", "diffusion")]
    edited = [Topic("Pruning", "pruning -diffusion"), Topic("Diffusion", "diffusion")]
    result = backtest(PAPERS, saved, edited, dumps=1)
    # The profile as a whole keeps paper 2 (Diffusion still matches it) ...
    assert result.counts == {"added": 0, "removed": 0, "kept": 3}
    # ... but the edited topic lost it, and the preview says so.
    pruning = _topic(result, "Pruning")
    assert pruning.change == "edited" and (pruning.before, pruning.after) == (2, 1)
    assert [r.paper.id for r in pruning.lost] == [2] and pruning.lost_count == 1
    assert pruning.gained_count == 0 and pruning.unchanged == 1
    diffusion = _topic(result, "Diffusion")
    assert diffusion.change == "unchanged" and diffusion.lost_count == diffusion.gained_count == 0


def test_moves_between_topics_and_new_or_deleted_topics():
    saved = [Topic("Old", "pruning")]
    edited = [Topic("Vision", "vision"), Topic("Latency", "latency")]
    result = backtest(PAPERS, saved, edited, dumps=1)
    assert [(t.name, t.change) for t in result.topics] == [
        ("Vision", "new"), ("Latency", "new"), ("Old", "deleted"),
    ]  # fmt: skip
    assert _topic(result, "Old").lost_count == 2
    moved = {m.row.paper.id: (m.left, m.joined) for m in result.moved}
    assert moved == {1: (("Old",), ("Vision",))}


def test_expected_papers_per_digest_against_max_papers():
    everything = [Topic("All", "pruning, diffusion, decoding")]
    result = backtest(PAPERS, [], everything, dumps=2, max_papers=1)
    assert result.per_digest == 2.0 and result.over_limit
    roomy = backtest(PAPERS, [], everything, dumps=2, max_papers=30)
    assert not roomy.over_limit
    assert not backtest(PAPERS, [], everything, dumps=2).over_limit  # no limit known


def _robots() -> list[StoredPaper]:
    robot = "A robot arm learns to grasp objects by visuomotor imitation and tactile sensing."
    speech = "An acoustic model transcribes speech with low word error rate on noisy audio."
    return [
        StoredPaper(i, f"r{i}", f"Visuomotor grasping {i}", robot, datetime(2026, 1, 1))
        for i in range(1, 7)
    ] + [
        StoredPaper(i, f"s{i}", f"Streaming speech recognition {i}", speech, datetime(2026, 1, 1))
        for i in range(7, 13)
    ]


def test_a_topic_with_examples_previews_its_suggestions_and_keeps_them_on_edit():
    papers = _robots()
    liked = StoredPaper(99, "liked", "Robot grasping", papers[0].abstract, datetime(2026, 1, 1))
    saved = [Topic("Robots", "grasping 1", likes=(99,))]
    # the form sends names and queries only: the topic keeps its examples under its name
    edited = [Topic("Robots", "grasping 1")]
    result = backtest(papers, saved, edited, dumps=1, known={99: liked})
    kept = {r.paper.id: r for r in result.kept}
    assert 1 in kept and kept[1].terms  # the keyword match
    suggested = [r for r in result.kept if not r.terms]
    assert suggested and {r.paper.id for r in suggested} <= set(range(2, 7))
    why = ("Robots", 'suggested: like "Robot grasping"')
    assert all(r.why == (why,) for r in suggested), [r.why for r in suggested]
    assert result.counts["added"] == result.counts["removed"] == 0
    robots = _topic(result, "Robots")
    assert robots.before == robots.after == 1 + len(suggested) and robots.gained_count == 0
    # without its examples the same query finds the keyword match alone
    plain = backtest(papers, [], [Topic("Robots", "grasping 1")], dumps=1)
    assert [r.paper.id for r in plain.added] == [1]


def test_the_models_train_against_the_background_given(monkeypatch):
    # the admin passes the stored papers the queue stage trains against; the preview's own
    # papers are the background only without them
    import digest.web.preview as preview

    seen = []
    real = preview.Learner

    def spy(background, known, index):  # type: ignore[no-untyped-def]
        seen.append([p.id for p in background])
        return real(background, known, index)

    monkeypatch.setattr(preview, "Learner", spy)
    papers = _robots()
    liked = StoredPaper(99, "liked", "Robot grasping", papers[0].abstract, datetime(2026, 1, 1))
    topics = [Topic("Robots", "grasping 1", likes=(99,))]
    backtest(papers, topics, topics, dumps=1, known={99: liked}, background=[liked, *papers[:3]])
    backtest(papers, topics, topics, dumps=1, known={99: liked})
    assert seen == [[99, 1, 2, 3], [p.id for p in papers]]
