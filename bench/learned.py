"""Benchmark: ranking with learned models against keywords alone, at 100k subscribers.

    .venv/bin/python bench/learned.py [--subs 100000] [--papers 2000] [--share 0.1]
                                      [--distinct 1000] [--repeat 3]

The papers and profiles are bench/match.py's (synthetic, from the shared dumps' vocabulary).
A share of the subscribers also hold 3 liked papers and 1 disliked one on their first topic,
drawn from `--distinct` example sets (readers of one field like the same papers; models are
shared by identical examples). Both runs keep each subscriber's best 2 x 30 (the planner's
limit) and read every subscriber's ranked ids, as planning does; the learned run also pays
for the Learner (idf over the stored papers, features from the index's stems) and every
model's training. The runs are interleaved and the ratio is the median of the pairs'. It is
the ranking's share of the queue stage's extra cost: the rest of the stage (loading the
subscribers, planning, recording) is the same work in both, so the stage's ratio is lower.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _dumps import load_papers
from match import make_papers, make_profiles, rss_mb, vocabulary

from digest.match import PaperIndex, match_profiles
from digest.rank import Learner, rank_profiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--subs", type=int, default=100_000)
    ap.add_argument("--papers", type=int, default=2_000)
    ap.add_argument("--share", type=float, default=0.1, help="subscribers with examples")
    ap.add_argument("--distinct", type=int, default=1_000, help="distinct example sets")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved pairs of runs")
    args = ap.parse_args()
    base = list(load_papers().values())
    vocab = vocabulary(base)
    papers = make_papers(base, args.papers, vocab[0], seed=1)
    profiles = make_profiles(args.subs, vocab, seed=2)
    rng = random.Random(3)
    background = papers[: len(papers) // 2]  # stored earlier: the examples come from these
    sets = [tuple(rng.sample(background, 4)) for _ in range(args.distinct)]
    learned = dict(profiles)
    chosen = rng.sample(sorted(profiles), int(args.share * len(profiles)))
    for sid in chosen:
        ex = rng.choice(sets)
        first, *rest = profiles[sid]
        liked = tuple(sorted(p.id for p in ex[:3]))
        learned[sid] = [replace(first, likes=liked, dislikes=(ex[3].id,)), *rest]
    index = PaperIndex(papers)
    match_profiles(index, dict(list(profiles.items())[:100]), limit=60)  # jit and compile once

    def run_keywords() -> float:
        t0 = time.perf_counter()
        res = match_profiles(PaperIndex(papers), profiles, limit=60)
        for sid in res:
            res[sid].paper_ids()
        return time.perf_counter() - t0

    def run_learned() -> float:
        t0 = time.perf_counter()
        known = {p.id: p for ex in sets for p in ex}
        index = PaperIndex(papers)
        learner = Learner(background, known, index)
        res = rank_profiles(index, learned, limit=60, learner=learner)
        for sid in res:
            res[sid].paper_ids()
        return time.perf_counter() - t0

    # Interleaved and repeated: on a shared machine the load drifts, so each learned run is
    # compared with the keyword run just before it and the median of those ratios is shown.
    pairs = [(run_keywords(), run_learned()) for _ in range(args.repeat)]
    kw = min(k for k, _ in pairs)
    le = min(v for _, v in pairs)
    ratio = statistics.median(v / k for k, v in pairs)
    print(f"{args.subs} subscribers x {args.papers} papers; {len(chosen)} with examples from "
          f"{args.distinct} distinct sets")  # fmt: skip
    print(f"keywords alone: {kw:.2f} s; with learned ranking: {le:.2f} s (best of "
          f"{args.repeat}): {le / kw:.2f}x; median of interleaved pairs {ratio:.2f}x "
          f"(target <= 1.5x); pairs {[(round(k, 1), round(v, 1)) for k, v in pairs]}; "
          f"peak RSS {rss_mb():.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
