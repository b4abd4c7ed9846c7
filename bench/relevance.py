"""Ranking quality on judged profiles: precision@10, recall and precision of the delivered set.

    python bench/relevance.py [--draws N] [--profiles FILE...] [--variants]

For every judged profile (../shared/relevance/dev.json and tests/fixtures/relevance/*.json):
- ours, plain query: `digest match`'s ranking (rank.preview_topic) of the profile's plain query
  over every paper of the shared dumps; the delivered set is every paper it returns;
- ours, plain query + 3 liked papers: liked papers drawn from the relevant ones (N random draws,
  the liked papers left out of the scoring);
- BM25 (rank_bm25's BM25Okapi on the same words, our tokenizer): ranking by score, the delivered
  set every paper with a score above 0;
- SVM on tf-idf (arxiv-sanity-lite's method: scikit-learn LinearSVC on word and word-pair tf-idf,
  the 3 likes against every other paper), ranking only.
--variants instead measures the plain query's rules one by one, on the dev five and on the other
profiles apart (a rule tuned to one set would show it on the other): the forgiving alternatives'
idf share (0: count only; 1/2: ours; 2/3), and the stemmer (Snowball alone against ours).
P@10 is relevant papers in the first 10 / 10 (trec_eval's P_10); "P@10 (of possible)" divides by
min(10, relevant), so a profile with 3 relevant papers can reach 1. Means are over profiles.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import statistics
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digest.models import StoredPaper, paper_key  # noqa: E402
from digest.parse import parse_file  # noqa: E402
from digest.query import STOP_WORDS  # noqa: E402
from digest.rank import preview_topic  # noqa: E402
from digest.text import tokenize  # noqa: E402

SHARED = ROOT.parent / "shared"
PROFILES = [
    SHARED / "relevance" / "dev.json",
    *sorted((ROOT / "tests/fixtures/relevance").glob("*.json")),
]


def load_papers() -> list[StoredPaper]:
    """Every distinct paper of the shared dumps, through our parser, ids from 1."""
    seen: dict[str, StoredPaper] = {}
    for f in sorted((SHARED / "dumps").glob("*.txt")):
        for p in parse_file(f).papers:
            key = paper_key(p.title)
            if key not in seen:
                seen[key] = StoredPaper(
                    id=len(seen) + 1, key=key, title=p.title, abstract=p.abstract,
                    first_seen=datetime(2026, 1, 1), authors=p.authors,
                    organization=p.organization, organization_id=p.organization_id,
                    published=p.published, upvotes=p.upvotes,
                )  # fmt: skip
    return list(seen.values())


def measures(ranked: list[int], relevant: set[int], delivered: bool = True) -> dict[str, float]:
    """P@10, P@10 of possible, and (for a delivered set) its recall and precision."""
    top = sum(i in relevant for i in ranked[:10])
    out = {"p10": top / 10, "p10_possible": top / max(1, min(10, len(relevant)))}
    if delivered:
        hit = sum(i in relevant for i in ranked)
        out["recall"] = hit / len(relevant)
        out["precision"] = hit / len(ranked) if ranked else 0.0
    return out


def words(text: str) -> list[str]:
    return [t.stem for t in tokenize(text) if t.norm not in STOP_WORDS]


class Baselines:
    """BM25 and tf-idf SVM over the same papers."""

    def __init__(self, papers: list[StoredPaper]) -> None:
        from rank_bm25 import BM25Okapi
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.papers = papers
        docs = [words(p.title + " " + p.abstract) for p in papers]
        self.bm25 = BM25Okapi(docs)
        vec = TfidfVectorizer(sublinear_tf=True, analyzer=lambda s: s)
        self.x = vec.fit_transform([d + [f"{a} {b}" for a, b in itertools.pairwise(d)]
                                    for d in docs])  # fmt: skip

    def bm25_ranked(self, query: str) -> list[int]:
        scores = self.bm25.get_scores(words(query.replace(",", " ")))
        order = sorted(range(len(scores)), key=lambda k: -scores[k])
        return [self.papers[k].id for k in order if scores[k] > 0]

    def svm_ranked(self, likes: list[int]) -> list[int]:
        import numpy as np
        from sklearn.svm import LinearSVC

        y = np.zeros(len(self.papers))
        pos = {p.id: k for k, p in enumerate(self.papers)}
        y[[pos[i] for i in likes]] = 1
        svm = LinearSVC(C=0.01, class_weight="balanced", max_iter=10_000).fit(self.x, y)
        d = svm.decision_function(self.x)
        return [self.papers[k].id for k in np.argsort(-d)]


def plain_only(papers: list[StoredPaper], profiles: list[tuple[str, dict]]) -> None:
    """The plain query's measures per set of profiles, under each variant of its rules."""
    from digest import match as matchmod
    from digest import query as querymod
    from digest import text as textmod

    by_title = {p.title: p.id for p in papers}
    ours_stem = textmod.stem

    def clear() -> None:  # every per-process cache of tokens, alternatives and queries
        for cached in (querymod._tokens, querymod._alternative, querymod.compile_query,
                       matchmod._parts):  # fmt: skip
            cached.cache_clear()
        matchmod._COMPILED.clear()

    variants = [
        ("ours (share 1/2, our stemmer)", 0.5, ours_stem),
        ("count only (share 0)", 0.0, ours_stem),
        ("share 2/3", 2 / 3, ours_stem),
        ("Snowball alone (no folding)", 0.5, functools.lru_cache(maxsize=None)(textmod.snowball)),
    ]

    def report(name: str, ranked_of: Callable[[str], list[int]]) -> None:
        for group in sorted({g for g, _ in profiles}):
            ms = []
            for g, prof in profiles:
                if g == group:
                    relevant = {by_title[t] for t in prof["relevant_titles"] if t in by_title}
                    ms.append(measures(ranked_of(prof["query"]), relevant))
            mean = {k: statistics.mean(m[k] for m in ms) for k in ms[0]}
            print(f"{name:32} {group:6} {mean['p10']:6.2f} {mean['recall']:7.2f} "
                  f"{mean['precision']:10.2f}")  # fmt: skip

    def plain(query: str) -> list[int]:
        return [m.paper_id for m in preview_topic(papers, query).matches]

    print(f"\n{'variant':32} {'set':6} {'P@10':>6} {'recall':>7} {'precision':>10}")
    for name, share, stem in variants:
        querymod.MOST_SHARE = matchmod.MOST_SHARE = share
        textmod.stem = stem
        clear()
        report(name, plain)
    querymod.MOST_SHARE = matchmod.MOST_SHARE = 0.5
    textmod.stem = ours_stem
    clear()

    # Pseudo-relevance feedback, not built: the plain query's best K matches taken as liked
    # papers, the model's suggestions appended after the keyword list (measured, see README)
    def pseudo_feedback(k: int) -> Callable[[str], list[int]]:
        def ranked(query: str) -> list[int]:
            found = plain(query)
            got = preview_topic(papers, query, likes=found[:k]).matches
            return found + [m.paper_id for m in got if m.paper_id not in found]

        return ranked

    for k in (3, 10):
        report(f"pseudo-feedback, top {k} (not built)", pseudo_feedback(k))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--draws", type=int, default=5, help="random draws of 3 liked papers (5)")
    ap.add_argument("--profiles", nargs="*", type=Path, default=PROFILES)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--variants", action="store_true", help="the plain query's rules one by one")
    args = ap.parse_args()
    papers = load_papers()
    if args.variants:
        sets = [
            ("dev" if f.parent == SHARED / "relevance" else "others", p)
            for f in args.profiles
            if f.exists()
            for p in json.loads(f.read_text())["profiles"]
        ]
        plain_only(papers, sets)
        return 0
    by_title = {p.title: p.id for p in papers}
    base = Baselines(papers)
    rng = random.Random(args.seed)
    rows: dict[str, list[dict[str, float]]] = {}

    def add(name: str, m: dict[str, float]) -> None:
        rows.setdefault(name, []).append(m)

    profiles = [
        p for f in args.profiles if f.exists() for p in json.loads(f.read_text())["profiles"]
    ]
    print(f"{len(papers)} papers, {len(profiles)} judged profiles from "
          f"{', '.join(f.name for f in args.profiles if f.exists())}")  # fmt: skip
    for prof in profiles:
        relevant = {by_title[t] for t in prof["relevant_titles"] if t in by_title}
        query = prof["query"]
        ours = [m.paper_id for m in preview_topic(papers, query).matches]
        add("ours: plain query", measures(ours, relevant))
        bm25 = base.bm25_ranked(query)
        add("BM25 (rank_bm25), same words", measures(bm25, relevant))
        if len(relevant) < 4:
            continue
        for _ in range(args.draws):
            likes = rng.sample(sorted(relevant), 3)
            rest = relevant - set(likes)
            known = {p.id: p for p in papers if p.id in likes}
            got = preview_topic(papers, query, likes=likes, known=known).matches
            add(
                "ours: plain query + 3 likes",
                measures([m.paper_id for m in got if m.paper_id not in likes], rest),
            )
            # the same draw without the likes: the plain query on the same (smaller) truth
            same = [i for i in ours if i not in likes]
            add("ours: plain query, same draws", measures(same, rest))
            add("BM25, same words, same draws", measures([i for i in bm25 if i not in likes], rest))
            alone = preview_topic(papers, "", likes=likes, known=known).matches
            add("ours: 3 likes alone", measures([m.paper_id for m in alone], rest))
            svm = [i for i in base.svm_ranked(likes) if i not in likes]
            add("SVM on tf-idf, 3 likes", measures(svm, rest, delivered=False))
        m = rows["ours: plain query"][-1]
        print(f"  {prof['name']} ({query!r}): {len(relevant)} relevant; ours {len(ours)} "
              f"delivered, recall {m['recall']:.2f}, precision {m['precision']:.2f}")  # fmt: skip
    print(f"\n{'method':34} {'P@10':>6} {'P@10/possible':>14} {'recall':>7} {'precision':>10}")
    for name, ms in rows.items():
        mean = {k: statistics.mean(m[k] for m in ms) for k in ms[0]}
        cells = [f"{mean['p10']:6.2f}", f"{mean['p10_possible']:14.2f}"]
        cells += [f"{mean[k]:7.2f}" if k in mean else f"{'-':>7}" for k in ("recall",)]
        cells += [f"{mean['precision']:10.2f}" if "precision" in mean else f"{'-':>10}"]
        print(f"{name:34} {' '.join(cells)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
