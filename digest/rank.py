"""Learned ranking per topic: a linear model on paper text, trained from the topic's examples.

A topic may hold example papers: liked ("more like this") and disliked ("not for me"). Each
distinct set of examples gets one model, shared by every topic holding the same examples:

- features are tf-idf (sublinear tf, l2-normalised) of word stems - the title's counted twice -
  and of adjacent stem pairs, hashed into a fixed space (scikit-learn's HashingVectorizer, so no
  vocabulary has to be kept or grown) with the idf of the stored papers;
- the model is linear, from the liked papers against the disliked ones and the background of
  other stored papers: Rocchio's closed form by default, a LinearSVC (arxiv-sanity-lite's
  method) when MODEL is "svm" - they rank the same on the judged profiles (bench/relevance.py);
- a batch of papers is scored for every model at once: one sparse matrix product.

Its ranking is fused with the keyword ranking by reciprocal rank fusion; a few papers the
keywords missed but the model ranks high join as "suggested" (their why names the liked paper
they are most like). A topic without examples is ranked by its keywords alone, unchanged.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from digest import text as textmod
from digest.match import (
    Matches,
    MatchList,
    PaperIndex,
    Reason,
    match_profiles,
    matched_terms,
    passed_conditions,
)
from digest.models import Match, StoredPaper, Topic
from digest.query import STOP_WORDS

N_FEATURES = 1 << 18
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
DISLIKE_WEIGHT = 3.0  # a dislike says more than a background paper the reader never saw
BACKGROUND = 2_000  # most stored papers a model trains against (the newest)
# "Suggested" papers per topic list: a share of the keyword matches, at least enough to fill a
# short list to SUGGEST_FILL, within SUGGEST_MIN..MAX. More than the first round's 2-5: a few
# likes place the model's best above the keywords' weakest (bench/relevance.py, P@10 with 3
# likes 0.69 -> 0.72, the dev five and the other eight alike).
SUGGEST_MIN, SUGGEST_SHARE, SUGGEST_MAX, SUGGEST_FILL = 5, 0.2, 10, 10
# A paper is "like the examples" when its rescaled decision value (0: the background's median,
# 1: its 99th percentile) reaches this: what a topic of examples alone delivers, and where
# suggestions come from.
LIKENESS = 0.8
SVM_C = 0.01  # strong regularisation: a few likes must not be memorised
MODEL = "rocchio"  # measured equal to the SVM (bench/relevance.py), ~100x cheaper to train
MODEL_WEIGHT = 1.0  # the model's share in the fusion, the keywords' being 1
ROCCHIO_BG, ROCCHIO_DIS = 1.0, 1.0  # the background's and the dislikes' weights


def _stems(text: str) -> list[str]:
    # what the matcher indexes (words, then hyphenated pairs joined), so a paper's features
    # are the same whether they come from a PaperIndex or from its text
    stems, norms = textmod.index_words(text)
    return [s for s, n in zip(stems, norms, strict=True) if n not in STOP_WORDS]


def paper_features(paper: StoredPaper) -> list[str]:
    """A paper's features: title stems twice, abstract stems, and adjacent stem pairs."""
    return _features(_stems(paper.title), _stems(paper.abstract))


def _features_of(
    title: tuple[Sequence[str], Sequence[str]], abstract: tuple[Sequence[str], Sequence[str]]
) -> list[str]:
    """paper_features from a field's (stems, norms) as the PaperIndex holds them."""
    return _features(
        *(
            [s for s, n in zip(stems, norms, strict=True) if n not in STOP_WORDS]
            for stems, norms in (title, abstract)
        )
    )


def _features(title: list[str], abstract: list[str]) -> list[str]:
    pairs = [f"{a} {b}" for part in (title, abstract) for a, b in itertools.pairwise(part)]
    return title + title + abstract + pairs


@dataclass(frozen=True, slots=True)
class Examples:
    """A topic's examples: the liked and the disliked paper ids (sorted)."""

    likes: tuple[int, ...]
    dislikes: tuple[int, ...]

    @classmethod
    def of(cls, topic: Topic) -> Examples:
        """The examples of a topic."""
        return cls(tuple(sorted(topic.likes)), tuple(sorted(topic.dislikes)))


class Learner:
    """Models from examples, over the stored papers as features' idf and negative background."""

    def __init__(
        self,
        background: Sequence[StoredPaper],
        known: Mapping[int, StoredPaper],
        index: PaperIndex | None = None,
    ) -> None:
        # scikit-learn is imported here: only a process that ranks with examples pays for it
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

        self._hasher = HashingVectorizer(
            analyzer=self._analyze, n_features=N_FEATURES, alternate_sign=False, norm=None
        )
        # The index being ranked has tokenised and stemmed its papers already: reuse them
        self._index_pos = {p.id: i for i, p in enumerate(index.papers)} if index else {}
        self._index = index
        self._background = list(background)[-BACKGROUND:]
        self._known = dict(known)  # id -> paper, for every liked and disliked paper
        first = list(dict.fromkeys([*self._background, *self._known.values()]))
        counts = self._hasher.transform(first)
        fit = counts[: len(self._background)] if self._background else counts
        self._tfidf = TfidfTransformer(sublinear_tf=True).fit(fit)
        self._x = self._tfidf.transform(counts).tocsr()  # every paper seen, one row each
        self._pos = {p.id: k for k, p in enumerate(first)}
        self._bg_ids = [p.id for p in self._background]
        self._bg = self._x[: len(self._background)]
        self._models: dict[Examples, tuple[Any, float] | None] = {}
        self._bg_mean = np.asarray(self._bg.mean(axis=0)).ravel() if self._bg.shape[0] else None
        self._bg_set = set(self._bg_ids)
        # (examples, paper id) -> the liked paper it is most like: the subscribers sharing a
        # set of examples share its model, so mostly its suggestions too
        self._nearest: dict[tuple[Examples, int], StoredPaper | None] = {}
        self._like_col: dict[int, int] = {}
        self._like_rows: Any = None
        self._sims: np.ndarray | None = None

    def unknown(self, ids: Iterable[int]) -> set[int]:
        """The ids among these that are no known example paper."""
        return {i for i in ids if i not in self._known}

    def add_known(self, papers: Mapping[int, StoredPaper]) -> None:
        """Know more example papers (a later page's): their rows join with the same idf; the
        models and suggestions of examples naming them are made again when next asked for."""
        new = {i: p for i, p in papers.items() if i not in self._known}
        if not new:
            return
        self._known.update(new)
        self.features(list(new.values()))

        def stale(ex: Examples) -> bool:
            return any(i in new for i in (*ex.likes, *ex.dislikes))

        self._models = {ex: m for ex, m in self._models.items() if not stale(ex)}
        self._nearest = {k: v for k, v in self._nearest.items() if not stale(k[0])}
        self._like_rows, self._sims = None, None

    def _analyze(self, paper: StoredPaper) -> list[str]:
        i = self._index_pos.get(paper.id)
        if i is None or self._index is None:
            return paper_features(paper)
        # the index's own (stems, norms) per field: the same textmod.words as _stems reads
        (ts, as_), (tn, an) = self._index.field_words(i)
        return _features_of((ts, tn), (as_, an))

    def features(self, papers: Sequence[StoredPaper]) -> Any:
        """The papers' tf-idf rows (a sparse matrix); each paper is tokenised once."""
        from scipy import sparse

        missing = [p for p in dict.fromkeys(papers) if p.id not in self._pos]
        if missing:
            rows = self._tfidf.transform(self._hasher.transform(missing))
            base = self._x.shape[0]
            self._pos.update((p.id, base + k) for k, p in enumerate(missing))
            self._x = sparse.vstack([self._x, rows]).tocsr()
        return self._x[[self._pos[p.id] for p in papers]]

    def model(self, ex: Examples) -> tuple[Any, float] | None:
        """The (weights, intercept) of a set of examples; None when no liked paper is known."""
        got = self._models.get(ex)
        if got is None and ex not in self._models:
            got = self._models[ex] = self._train(ex)
        return got

    def _train(self, ex: Examples) -> tuple[Any, float] | None:
        from scipy import sparse
        from sklearn.svm import LinearSVC

        liked = [self._known[i] for i in ex.likes if i in self._known]
        if not liked:
            return None
        disliked = [self._known[i] for i in ex.dislikes if i in self._known]
        if self._rocchio_ok():
            (ids, combo, scale), r_icpt = self._rocchio([ex])
            return (ids, combo, float(scale[0])), float(r_icpt[0])
        own = set(ex.likes) | set(ex.dislikes)
        keep = [k for k, pid in enumerate(self._bg_ids) if pid not in own]
        parts = [self.features(liked)]
        if disliked:
            parts.append(self.features(disliked))
        parts.append(self._bg[keep])
        x = sparse.vstack(parts).tocsr()
        y = np.r_[np.ones(len(liked)), np.zeros(len(disliked) + len(keep))]
        w = np.r_[np.ones(len(liked)), np.full(len(disliked), DISLIKE_WEIGHT), np.ones(len(keep))]
        if len(set(y.tolist())) < 2:  # nothing to learn against: rank by likeness to the likes
            centroid = sparse.csr_matrix(x[: len(liked)].mean(axis=0))
            return centroid.T.tocsc() * (1 / max(1e-9, centroid.multiply(centroid).sum())), 0.0
        svm = LinearSVC(C=SVM_C, class_weight="balanced", max_iter=5_000)
        svm.fit(x, y, sample_weight=w)
        coef_v, icpt = svm.coef_.ravel(), float(svm.intercept_[0])
        # Rescaled so that the background's median is 0 and its 99th percentile 1 (the liked
        # papers themselves are memorised, far above): the same threshold (LIKENESS) then means
        # the same for every model.
        raw = x[len(liked) + len(disliked) :] @ coef_v + icpt
        lo, hi = float(np.median(raw)), float(np.quantile(raw, 0.99))
        scale = 1.0 / (hi - lo) if hi > lo else 1.0
        coef = sparse.csc_matrix((coef_v * scale).reshape(-1, 1))
        return coef, (icpt - lo) * scale

    def _rocchio_ok(self) -> bool:
        return MODEL == "rocchio" and self._bg_mean is not None

    def _example_rows(self, keys: Sequence[Examples]) -> tuple[list[int], Any, np.ndarray]:
        """The distinct known example papers' rows, and Rocchio's combination of them per model
        (examples x models: +1/likes for a like, -ROCCHIO_DIS/dislikes for a dislike); the
        models' liked-paper counts (0: no model)."""
        from scipy import sparse

        ids: dict[int, int] = {}
        r, c, v = [], [], []
        nlikes = np.zeros(len(keys))
        for m, ex in enumerate(keys):
            liked = [i for i in ex.likes if i in self._known]
            disliked = [i for i in ex.dislikes if i in self._known]
            nlikes[m] = len(liked)
            if not liked:
                continue
            for group, weight in ((liked, 1.0), (disliked, -ROCCHIO_DIS)):
                for i in group:
                    r.append(ids.setdefault(i, len(ids)))
                    c.append(m)
                    v.append(weight / len(group))
        combo = sparse.csr_matrix((v, (r, c)), shape=(len(ids), len(keys)))
        return list(ids), combo, nlikes

    def _rocchio(self, keys: Sequence[Examples]) -> tuple[Any, np.ndarray]:
        """Rocchio's models, the liked papers' mean tf-idf vector minus the disliked ones' and
        the background's, kept in factored form: a paper's decision value is its mean cosine
        with the likes minus that with the dislikes and its dot with the background mean, so
        every model scores a batch through one product with the example papers (no dense
        weight vector per model). Returns (combination, intercepts), rescaled so that the
        background's median is 0 and its 99th percentile 1 (the examples left out of it)."""
        ids, combo, _ = self._example_rows(keys)
        ex_rows = self.features([self._known[i] for i in ids])
        assert self._bg_mean is not None  # checked by _rocchio_ok
        raw = ((self._bg @ ex_rows.T) @ combo).toarray() - ROCCHIO_BG * (self._bg @ self._bg_mean)[
            :, None
        ]
        raw = np.asarray(raw, dtype=np.float64)
        own_rows = {pid: k for k, pid in enumerate(self._bg_ids)}
        for m, ex in enumerate(keys):  # the examples themselves are not the background's scale
            for pid in (*ex.likes, *ex.dislikes):
                k = own_rows.get(pid)
                if k is not None:
                    raw[k, m] = np.nan
        with warnings.catch_warnings():  # a background of examples alone: no scale (0, 0)
            warnings.simplefilter("ignore", RuntimeWarning)
            lo = np.nanmedian(raw, axis=0) if raw.shape[0] else np.zeros(len(keys))
            hi = np.nanquantile(raw, 0.99, axis=0) if raw.shape[0] else np.zeros(len(keys))
        lo, hi = np.nan_to_num(lo), np.nan_to_num(hi)
        scale = np.where(hi > lo, 1.0 / np.where(hi > lo, hi - lo, 1.0), 1.0)
        return (ids, combo, scale), -lo * scale

    def scores(self, x: Any, keys: Sequence[Examples]) -> np.ndarray:
        """Decision values of every model for every row of x: (rows, models), -inf for a model
        without a known liked paper."""
        from scipy import sparse

        out = np.empty((x.shape[0], len(keys)))
        if self._rocchio_ok():
            # every Rocchio model at once: one product with the distinct example papers
            todo = [ex for ex in keys if ex not in self._models]
            if todo:
                (ids, combo, scale), icpt = self._rocchio(todo)
                for m, ex in enumerate(todo):
                    col = combo[:, [m]]
                    self._models[ex] = (
                        None if not col.nnz else ((ids, col, float(scale[m])), float(icpt[m]))
                    )
            models = [self._models[ex] for ex in keys]
            ids_all: dict[int, int] = {}
            r, c, v = [], [], []
            sc, ic = np.ones(len(keys)), np.full(len(keys), -math.inf)
            for m, got in enumerate(models):
                if got is None:
                    continue
                (ids, col, s), b = got
                coo = col.tocoo()
                for k, w in zip(coo.row.tolist(), coo.data.tolist(), strict=True):
                    r.append(ids_all.setdefault(ids[k], len(ids_all)))
                    c.append(m)
                    v.append(w)
                sc[m], ic[m] = s, b
            combo_all = sparse.csr_matrix((v, (r, c)), shape=(len(ids_all), len(keys)))
            assert self._bg_mean is not None
            ex_rows = self.features([self._known[i] for i in ids_all])
            raw = ((x @ ex_rows.T) @ combo_all).toarray()
            raw = raw - ROCCHIO_BG * np.asarray(x @ self._bg_mean)[:, None]
            out[:] = raw * sc[None, :] + ic[None, :]
            return out
        cols: list[Any] = []
        icpts: list[float] = []
        for ex in keys:
            got = self.model(ex)
            if got is None:
                cols.append(sparse.csc_matrix((N_FEATURES, 1)))
                icpts.append(-math.inf)
            else:
                cols.append(got[0])
                icpts.append(got[1])
        w = sparse.hstack(cols).tocsc()
        return np.asarray((x @ w).todense()) + np.asarray(icpts)[None, :]

    def nearest_like(self, paper: StoredPaper, ex: Examples) -> StoredPaper | None:
        """The liked paper most like a paper (cosine of tf-idf rows)."""
        key = (ex, paper.id)
        if key in self._nearest:
            return self._nearest[key]
        liked = [self._known[i] for i in ex.likes if i in self._known]
        got = None
        if liked:
            sims = self._like_sims(paper)
            got = liked[int(np.argmax(sims[[self._like_col[p.id] for p in liked]]))]
        self._nearest[key] = got
        return got

    def _like_sims(self, paper: StoredPaper) -> np.ndarray:
        """A paper's cosine with every known example paper (by _like_col): one product of
        every row seen with the examples, made once and again only when rows are added."""
        if paper.id not in self._pos:
            self.features([paper])  # its row added
        k = self._pos[paper.id]
        if self._sims is None or k >= self._sims.shape[0]:
            if self._like_rows is None:
                known = list(self._known.values())
                self._like_col = {p.id: c for c, p in enumerate(known)}
                self._like_rows = self.features(known) if known else None
            if self._like_rows is None:
                return np.zeros(0)
            self._sims = np.asarray((self._x @ self._like_rows.T).todense())
        return self._sims[k]


@dataclass(frozen=True, slots=True)
class Ranked:
    """One paper of a topic's fused list: batch index, fused score, and where its keyword
    match is (its position in the keyword list, -1 for a suggestion)."""

    i: int
    score: float
    keyword: int
    topic: str


def fuse(
    keyword: np.ndarray, model_rank: np.ndarray, order: np.ndarray, decision: np.ndarray,
    *, has_query: bool,
) -> list[tuple[int, float, int]]:  # fmt: skip
    """Reciprocal rank fusion of a keyword ranking (batch indices, best first) with a model's
    (`model_rank[i]`: paper i's place, `order`: the papers best first): (index, fused score,
    position in the keyword list or -1 for a suggestion), best first.

    The keyword matches all stay; a few papers the keywords missed join as suggested when the
    model places them near the liked papers (decision >= LIKENESS). A topic of examples alone
    takes every paper that near.
    """
    idx, score, kw = _fuse(keyword, model_rank, order, decision, has_query=has_query)
    return list(zip(idx.tolist(), score.tolist(), kw.tolist(), strict=True))


def suggestions(keyword_hits: int) -> int:
    """How many suggested papers join a topic list of this many keyword matches: a share of
    them, and enough to fill a short list up to SUGGEST_FILL (within SUGGEST_MIN..MAX)."""
    want = max(math.ceil(SUGGEST_SHARE * keyword_hits), SUGGEST_FILL - keyword_hits)
    return min(SUGGEST_MAX, max(SUGGEST_MIN, want))


def _fuse(
    keyword: np.ndarray, model_rank: np.ndarray, order: np.ndarray, decision: np.ndarray,
    *, has_query: bool, near_count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """fuse() on arrays: (indices, fused scores, keyword positions), best first
    (`near_count`: how many papers reach LIKENESS, when the caller has counted them)."""
    kw = keyword.astype(np.int64)
    fused = 1 / (RRF_K + np.arange(1, len(kw) + 1)) + MODEL_WEIGHT / (RRF_K + model_rank[kw] + 1)
    most = suggestions(len(kw)) if has_query else len(order)
    if near_count is None:
        near_count = int(np.count_nonzero(decision >= LIKENESS))
    # decision[order] falls: the papers near the likes are a prefix of the model's order
    near = order[:near_count]
    if len(kw) and len(near):
        taken = np.zeros(len(order), dtype=np.bool_)  # cheaper than np.isin per topic
        taken[kw] = True
        near = near[~taken[near]]
    near = near[:most]
    idx = np.concatenate([kw, near])
    score = np.concatenate([fused, MODEL_WEIGHT / (RRF_K + model_rank[near] + 1)])
    pos = np.concatenate([np.arange(len(kw), dtype=np.int64), np.full(len(near), -1, np.int64)])
    best = np.lexsort((idx, -score))
    return idx[best], score[best], pos[best]


@dataclass(frozen=True, slots=True)
class _Lists:
    """Ranked items as arrays, best first: batch index, fused score, keyword position (-1: a
    suggestion) and topic label (an index into the builder's labels)."""

    idx: np.ndarray
    score: np.ndarray
    kw: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.idx)

    def head(self, n: int) -> _Lists:
        return _Lists(self.idx[:n], self.score[:n], self.kw[:n], self.label[:n])


class RankedList(Sequence[Match]):
    """A subscriber's matches when a topic has examples: the same reading interface as a
    MatchList (paper_ids, cut, full); a Match (words, spans, why) is built only when read."""

    def __init__(self, items: _Lists, build: _Builder, cut: bool = False) -> None:
        self._items = items
        self._build = build  # Ranked -> Match
        self._cut = cut
        self._cache: dict[int, Match] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        got = self._cache.get(k)
        if got is None:
            it = self._items
            r = Ranked(int(it.idx[k]), float(it.score[k]), int(it.kw[k]),
                       self._build.labels[int(it.label[k])])  # fmt: skip
            got = self._cache[k] = self._build(r)
        return got

    def reason(self, k: int) -> Reason:
        """Item k's topic names, matched words, score and why (what the ledger keeps)."""
        m = self[k]
        return m.topics, m.terms, m.score, m.why

    def reasons(self, ks: Sequence[int]) -> list[Reason]:
        """reason(k) for each k of `ks`."""
        return [self.reason(k) for k in ks]

    def paper_ids(self) -> list[int]:
        """The matched papers' ids, best first."""
        return self._build.index.ids[self._items.idx].tolist()

    def scores(self) -> list[float]:
        """The matches' scores, best first."""
        return self._items.score.tolist()

    @property
    def cut(self) -> bool:
        """Whether the list was cut at the limit (the rest is ranked on request)."""
        return self._cut

    def full(self) -> RankedList:
        """The whole ranking (this list, when not cut)."""
        return self


class Ranking(Mapping[int, "MatchList | RankedList"]):
    """Ranked matches per subscriber: keyword-only subscribers from the batch engine, the
    others fused with their topics' models."""

    def __init__(self, plain: Matches, learned: dict[int, RankedList]) -> None:
        self._plain = plain
        self._learned = learned

    def __getitem__(self, sid: int) -> MatchList | RankedList:
        got = self._learned.get(sid)
        return got if got is not None else self._plain[sid]

    def __iter__(self) -> Iterator[int]:
        yield from self._plain
        yield from self._learned

    def __len__(self) -> int:
        return len(self._plain) + len(self._learned)

    def __contains__(self, sid: object) -> bool:
        return sid in self._learned or sid in self._plain


def rank_profiles(
    index: PaperIndex,
    profiles: Mapping[int, Sequence[Topic]],
    *,
    limit: int | None = None,
    learner: Learner | None = None,
) -> Ranking:
    """Ranked matches per subscriber id; topics with examples are fused with their model
    (`learner` holds the example papers and the background; without one, keywords alone)."""
    learned_ids = [sid for sid, topics in profiles.items() if any(t.has_examples for t in topics)]
    if learner is None or not learned_ids:
        return Ranking(match_profiles(index, profiles, limit=limit), {})
    chosen = set(learned_ids)
    plain = match_profiles(
        index, {s: t for s, t in profiles.items() if s not in chosen}, limit=limit
    )
    topics = list(dict.fromkeys(t for sid in learned_ids for t in profiles[sid]))
    lists, build = _rank_topics(index, topics, learner)
    learned: dict[int, RankedList] = {}
    for sid in learned_ids:
        merged = _merge(profiles[sid], lists)
        cut = limit is not None and len(merged) > limit
        if cut and limit is not None:  # the rest is ranked again, in full, when asked for
            merged = merged.head(limit)
        if len(merged):
            learned[sid] = RankedList(merged, build, cut)
    return Ranking(plain, learned)


def rank_topics(
    index: PaperIndex, topics: Sequence[Topic], learner: Learner | None
) -> dict[Topic, list[Match]]:
    """Each topic's whole ranked list over the index (keywords fused with its model)."""
    lists, build = _rank_topics(index, topics, learner)
    return {t: list(RankedList(lists[t], build)) for t in topics}


class _Builder:
    """Builds the Match of a Ranked item: keyword words and spans from the keyword list, the
    why of a suggestion (the liked paper it is most like)."""

    def __init__(self, index: PaperIndex, keyword: dict[str, Any], learner: Learner | None,
                 examples: dict[str, Examples], labels: list[str]) -> None:  # fmt: skip
        self.index = index
        self.keyword = keyword  # query text -> its MatchList (or None)
        self.learner = learner
        self.examples = examples  # label -> examples, for suggestions' why
        self.labels = labels  # "topic name\0query\0number", by label number

    def __call__(self, r: Ranked) -> Match:
        pid = int(self.index.ids[r.i])
        score = round(r.score * 1000, 6)
        topic, query, _ = r.topic.split("\0")
        if r.keyword >= 0:
            m = self.keyword[query][r.keyword]
            if r.topic not in self.examples:  # keywords alone: their own score
                score = m.score
            return Match(pid, score, (topic,), m.terms, m.title_spans, m.abstract_spans, m.why)
        ex = self.examples.get(r.topic)
        why = "suggested"
        if ex is not None and self.learner is not None:
            like = self.learner.nearest_like(self.index.papers[r.i], ex)
            why = f'suggested: like "{like.title}"' if like is not None else why
        return Match(pid, score, (topic,), why=why)


def _rank_topics(
    index: PaperIndex, topics: Sequence[Topic], learner: Learner | None
) -> tuple[dict[Topic, _Lists], _Builder]:
    queries = sorted({t.query for t in topics if t.query.strip()})
    found = match_profiles(index, {k: [Topic(q, q)] for k, q in enumerate(queries)})
    keyword = {q: found.get(k) for k, q in enumerate(queries)}
    keys = sorted({Examples.of(t) for t in topics if t.has_examples}, key=repr)
    column = {ex: c for c, ex in enumerate(keys)}
    decision = None
    if learner is not None and keys:
        decision = learner.scores(learner.features(index.papers), keys)
    per_model: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    examples: dict[str, Examples] = {}
    labels: list[str] = []
    where = {pid: i for i, pid in enumerate(index.ids.tolist())}
    out: dict[Topic, _Lists] = {}
    for t in topics:
        got = keyword.get(t.query)
        kw = got._papers.astype(np.int64) if got is not None else np.zeros(0, np.int64)
        ex = Examples.of(t)
        # one label per topic: subscribers' topics alike in name and query may differ in
        # examples, so each keeps its own (for the why of its suggestions and its scale)
        lab = len(labels)
        label = f"{t.name}\0{t.query}\0{lab}"
        labels.append(label)
        c = column.get(ex, -1)
        if decision is None or c < 0 or not math.isfinite(decision[0, c]):
            # keyword ranks on the fused scale, so a subscriber's topics compare
            n = len(kw)
            out[t] = _Lists(kw, 1 / (RRF_K + np.arange(1, n + 1)), np.arange(n, dtype=np.int64),
                            np.full(n, lab, np.int64))  # fmt: skip
            continue
        if c not in per_model:
            order = np.argsort(-decision[:, c], kind="stable")
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            per_model[c] = (order, rank, int(np.count_nonzero(decision[:, c] >= LIKENESS)))
        order, rank, near = per_model[c]
        examples[label] = ex
        idx, score, pos = _fuse(kw, rank, order, decision[:, c],
                                has_query=bool(t.query.strip()), near_count=near)  # fmt: skip
        own = [where[i] for i in (*ex.likes, *ex.dislikes) if i in where]
        if own:  # an example is not news (a mask: np.isin per topic cost more than the fusion)
            drop = np.zeros(index.size, dtype=np.bool_)
            drop[own] = True
            keep = ~drop[idx]
            idx, score, pos = idx[keep], score[keep], pos[keep]
        out[t] = _Lists(idx, score, pos, np.full(len(idx), lab, np.int64))
    return out, _Builder(index, keyword, learner, examples, labels)


def _merge(topics: Sequence[Topic], lists: Mapping[Topic, _Lists]) -> _Lists:
    """A subscriber's topics' lists merged: each paper once, at its best topic's score."""
    got = [lists[t] for t in dict.fromkeys(topics) if t in lists]
    if len(got) == 1:
        return got[0]
    if not got:
        empty = np.zeros(0, np.int64)
        return _Lists(empty, np.zeros(0), empty, empty)
    idx = np.concatenate([g.idx for g in got])
    score = np.concatenate([g.score for g in got])
    kw = np.concatenate([g.kw for g in got])
    label = np.concatenate([g.label for g in got])
    # best first, ties by index then by topic order: a paper's first row is its best topic
    order = np.lexsort((np.arange(len(idx)), idx, -score))
    _, first = np.unique(idx[order], return_index=True)
    take = order[np.sort(first)]
    return _Lists(idx[take], score[take], kw[take], label[take])


def explain(index: PaperIndex, query_text: str, i: int) -> str:
    """Why paper i matches a keyword query: the words found in each field and the conditions
    that passed, from the alternatives that matched (nothing that did not match)."""
    from digest.query import compile_query

    query = compile_query(query_text)
    paper = index.papers[i]
    found: dict[str, list[tuple[int, str]]] = {"title": [], "abstract": []}
    for leaf in matched_terms(index, query, i):
        title, abstract = index.texts.leaf_spans(leaf, i)
        for fld, src, spans in (("title", paper.title, title),
                                ("abstract", paper.abstract, abstract)):  # fmt: skip
            if spans:
                found[fld].append((spans[0][0], src[spans[0][0] : spans[0][1]]))
    out = []
    for fld, words in found.items():
        shown = {w.casefold(): w for _, w in sorted(words, reverse=True)}  # first spelling
        order = dict.fromkeys(w.casefold() for _, w in sorted(words))  # in the paper's order
        if order:
            out.append(f"{fld}: {', '.join(shown[w] for w in order)}")
    return "; ".join(out + passed_conditions(index, query, i))


@dataclass(frozen=True)
class TopicPreview:
    """One topic (a query and/or examples) against a set of papers: the ranked matches, each
    with its why, how many matched in all, and the papers."""

    matches: list[Match]
    hits: int
    papers: tuple[StoredPaper, ...]


def preview_topic(
    papers: Sequence[StoredPaper],
    query: str,
    *,
    likes: Sequence[int] = (),
    dislikes: Sequence[int] = (),
    known: Mapping[int, StoredPaper] | None = None,
    limit: int | None = None,
) -> TopicPreview:
    """`digest match`: a topic's ranked matches among `papers`, best first, the liked and
    disliked papers themselves left out (`known` adds example papers not among `papers`)."""
    from digest.query import compile_query

    if query.strip():
        compile_query(query)  # a malformed query is an error here, not a topic skipped
    index = PaperIndex(papers)
    topic = Topic("match", query, tuple(likes), tuple(dislikes))
    learner = None
    if topic.has_examples:
        examples = {p.id: p for p in papers if p.id in set(likes) | set(dislikes)}
        examples.update(known or {})
        learner = Learner(papers, examples)
    ranked = rank_topics(index, [topic], learner)[topic]
    pos = {p.id: k for k, p in enumerate(index.papers)}
    out = []
    for m in ranked[:limit] if limit is not None else ranked:
        why = m.why
        if query.strip() and m.terms:
            # the words found, then the match's own why; a condition both name is said once
            words = explain(index, query, pos[m.paper_id])
            parts = [p for text in (words, why) if text for p in text.split("; ")]
            why = "; ".join(dict.fromkeys(parts))
        out.append(Match(m.paper_id, m.score, (), m.terms, m.title_spans, m.abstract_spans, why))
    return TopicPreview(out, len(ranked), index.papers)
