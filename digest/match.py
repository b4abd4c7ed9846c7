"""The batch matching engine: every subscriber's topics against a batch of papers at once.

The batch is indexed once (sorted (word, paper) and (word pair, paper) tables with counts).
match_profiles flattens every distinct query (AND of clauses, OR of conjunctions of literals),
evaluates them all at once on numpy uint64 bitset rows, scores each (query, paper) pair by a
popcount-rank lookup into per-leaf BM25F weights and ranks with one composite int64 sort per
chunk; there is no loop over (subscriber, paper) pairs. Match objects (with matched words and
highlight spans) are built lazily, only for the items a caller reads. match_query (previews)
keeps the simpler path: memoised Python int bitsets per query node.

Ranking: BM25F over the query's positive words present in the paper (title hits weigh
TITLE_WEIGHT times an abstract hit), ties broken by upvotes, then publication date, then id.
A subscriber with several topics gets each paper once, scored by its best topic; the topics
that matched are listed best first.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TypeVar, cast

import numba
import numpy as np

from digest import text as textmod
from digest.arrays import ranges
from digest.errors import QueryError
from digest.gcutil import gc_paused
from digest.highlight import indexed_spans, merge_spans, positions
from digest.models import Match, StoredPaper, Topic
from digest.query import (
    LEAVES,
    MOST_SHARE,
    Node,
    Query,
    compile_query,
    decode_queries,
    describe_node,
    encode_query,
    leaf_id,
    most_needed,
    on_forget_leaves,
    positive_terms,
)

log = logging.getLogger(__name__)

TITLE_WEIGHT = 3.0
K1 = 1.2
B = 0.75

_BYTE_BITS = tuple(tuple(b for b in range(8) if v >> b & 1) for v in range(256))
_Ranked = list[tuple[float, int]]


def bit_indices(x: int) -> list[int]:
    """The positions of the set bits of x, ascending."""
    if x.bit_count() <= 48:
        out = []
        while x:
            low = x & -x
            out.append(low.bit_length() - 1)
            x ^= low
        return out
    out = []
    for k, byte in enumerate(x.to_bytes((x.bit_length() + 7) // 8, "little")):
        if byte:
            base = k << 3
            out.extend([base + b for b in _BYTE_BITS[byte]])
    return out


K = TypeVar("K")


def _build_bits(postings: Mapping[K, list[int]]) -> dict[K, int]:
    """Each key's postings (ascending paper positions) as one bitset int."""
    out: dict[K, int] = {}
    for key, idx in postings.items():
        buf = bytearray((idx[-1] >> 3) + 1)
        for i in idx:
            buf[i >> 3] |= 1 << (i & 7)
        out[key] = int.from_bytes(buf, "little")
    return out


_FIELDS = {None: 0, "title": 1, "abstract": 2}


def _papers_bits(papers: np.ndarray) -> int:
    """Batch positions as one bitset int."""
    if not len(papers):
        return 0
    mask = np.zeros(int(papers[-1]) + 1, dtype=np.bool_)
    mask[papers] = True
    return int.from_bytes(np.packbits(mask, bitorder="little").tobytes(), "little")


class _WordBits:
    """A field's stem -> bitset of papers, read from the index's (word, paper) table on first
    use of each stem (the batch matcher never asks for most of them)."""

    __slots__ = ("_got", "_index", "_table")

    def __init__(self, index: PaperIndex, table: int) -> None:
        self._index = index
        self._table = table
        self._got: dict[str, int] = {}

    def get(self, word: str, default: int = 0) -> int:
        """The bitset of papers whose field holds the stem (default if none)."""
        got = self._got.get(word)
        if got is None:
            index = self._index
            k = index._vocab.get(word)
            if k is None:
                return default
            n = max(1, index.size)
            keys = index._words[self._table][0]
            lo, hi = np.searchsorted(keys, [k * n, (k + 1) * n])
            got = self._got[word] = _papers_bits(keys[lo:hi] - k * n)
        return got if got else default


def _field_tables(
    tkeys: np.ndarray, ttf: np.ndarray, akeys: np.ndarray, atf: np.ndarray
) -> tuple[tuple[np.ndarray, ...], ...]:
    """Sorted keys with title and abstract counts: for either field, title only, abstract only."""
    # sorted and deduplicated by a sort: numpy >= 2.3's np.union1d hashes, ~30x slower here
    keys = np.concatenate([tkeys, akeys])
    keys.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
    if len(keys):
        keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
    both_t = np.zeros(len(keys))
    both_a = np.zeros(len(keys))
    both_t[np.searchsorted(keys, tkeys)] = ttf
    both_a[np.searchsorted(keys, akeys)] = atf
    zt, za = np.zeros(len(tkeys)), np.zeros(len(akeys))
    return (
        (keys, both_t, both_a),
        (tkeys, ttf.astype(np.float64), zt),
        (akeys, za, atf.astype(np.float64)),
    )


def _count_phrase(stems: tuple[str, ...], phrase: tuple[str, ...]) -> int:
    first, n, count, p = phrase[0], len(phrase), 0, -1
    try:
        while True:
            p = stems.index(first, p + 1)
            if stems[p : p + n] == phrase:
                count += 1
    except ValueError:
        return count


@functools.cache
def _subsets(n: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The subsets of n words a forgiving alternative may be met by (most_needed(n) words or
    more) as (bit mask, word positions), smallest first."""
    out = [
        (sum(1 << k for k in ks), ks)
        for size in range(most_needed(n), n + 1)
        for ks in itertools.combinations(range(n), size)
    ]
    return tuple(out)


class PaperIndex:
    """A batch of papers indexed for boolean matching, ranking and highlighting."""

    def __init__(self, papers: Sequence[StoredPaper]) -> None:
        # the build allocates a few hundred thousand small objects (words, stems, tuples):
        # cyclic GC passes over a process's live objects (a queue stage's subscribers and
        # compiled queries) during it cost as much as the build itself
        with gc_paused():
            self._build(papers)

    def _build(self, papers: Sequence[StoredPaper]) -> None:
        self.papers: tuple[StoredPaper, ...] = tuple(papers)
        n = len(self.papers)
        self.size = n
        self.all = (1 << n) - 1
        # every title, then every abstract, tokenised in one batch: each distinct word is
        # normalised and stemmed once, and the rest runs on arrays of word ids; each text's
        # words are followed by its compounds (textmod.index_words)
        norms, stems, lens, flat = textmod.index_table(
            [p.title for p in self.papers] + [p.abstract for p in self.papers]
        )
        vocab: dict[str, int] = {}
        stem_of = np.fromiter((vocab.setdefault(x, len(vocab)) for x in stems), np.int64,
                              len(stems))  # fmt: skip
        self._vocab = vocab  # stem -> id
        self._stem_list = list(vocab)
        self._norm_list = norms
        tok_norm = np.asarray(flat, dtype=np.int64)
        tok_stem = stem_of[tok_norm] if len(tok_norm) else tok_norm
        lens_arr = np.asarray(lens, dtype=np.int64)
        split = int(lens_arr[:n].sum())
        # per field: the word ids in text order, and each paper's word count
        self._tok = ((tok_stem[:split], tok_norm[:split]), (tok_stem[split:], tok_norm[split:]))
        self._lens = (lens_arr[:n], lens_arr[n:])
        grams = [self._gram_tables(self._tok[s][0], self._lens[s], len(vocab)) for s in (0, 1)]
        # (word, paper) and (word pair, paper) tables: title only, abstract only, either field
        self._words = _field_tables(grams[0][0], grams[0][1], grams[1][0], grams[1][1])
        self._pairs = _field_tables(grams[0][2], grams[0][3], grams[1][2], grams[1][3])
        self._bits = {"title": _WordBits(self, 1), "abstract": _WordBits(self, 2)}
        tlen = np.maximum(1, self._lens[0]).astype(np.float64)
        alen = np.maximum(1, self._lens[1]).astype(np.float64)
        self._avg_t = float(tlen.mean()) if n else 1.0
        self._avg_a = float(alen.mean()) if n else 1.0
        self._tnorm = 1 - B + B * tlen / self._avg_t
        self._anorm = 1 - B + B * alen / self._avg_a
        # tie-break rank: more upvotes, then newer, then lower id first
        order = sorted(
            range(n),
            key=lambda i: (
                -(self.papers[i].upvotes or 0),
                -(self.papers[i].published or date.min).toordinal(),
                self.papers[i].id,
            ),
        )
        self.rank = [0] * n
        for r, i in enumerate(order):
            self.rank[i] = r
        self._by_rank = np.asarray(order, dtype=np.int64)
        # the papers' ids by batch position: a subscriber's ranked ids in one numpy take
        self.ids = np.fromiter((p.id for p in self.papers), np.int64, n)
        self._rank_arr = np.asarray(self.rank, dtype=np.int64)
        # per-index memos: bounded by this batch's papers and the queries run against it
        self._memo: dict[Node, int] = {}
        self._idf: dict[int, float] = {}  # document frequency -> idf
        self._weights: dict[Node, dict[int, float]] = {}
        self._ranked: dict[tuple[Node, int | None], _Ranked] = {}
        self._bigrams: tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]] = ({}, {})
        self.texts = PaperTexts(self.papers)
        self._by_org: dict[tuple[str | None, str | None], int] | None = None

    # Built on first use: the batch matcher needs none of these for words and two-word phrases.

    @functools.cached_property
    def _stems(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Each paper's (title, abstract) stems, in order."""
        return self._per_paper(0, self._stem_list)

    @functools.cached_property
    def _norms(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """Each paper's (title, abstract) normalised words, in order."""
        return self._per_paper(1, self._norm_list)

    def field_words(
        self, i: int
    ) -> tuple[tuple[tuple[str, ...], tuple[str, ...]], tuple[tuple[str, ...], tuple[str, ...]]]:
        """Paper i's words as the index holds them: ((title stems, abstract stems), (title
        normalised words, abstract normalised words)), in text order (what rank's features
        read, so a paper is tokenised and stemmed once)."""
        return self._stems[i], self._norms[i]

    def _per_paper(
        self, kind: int, names: list[str]
    ) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        fields = []
        for slot in (0, 1):
            seq = list(map(names.__getitem__, self._tok[slot][kind].tolist()))
            ends = np.cumsum(self._lens[slot])
            bounds = zip((ends - self._lens[slot]).tolist(), ends.tolist(), strict=True)
            fields.append([tuple(seq[a:b]) for a, b in bounds])
        return list(zip(fields[0], fields[1], strict=True))

    @functools.cached_property
    def _norm_vocab(self) -> dict[str, list[str]]:
        """Per field, the sorted normalised words it holds (prefix search)."""
        out = {}
        for slot, fld in ((0, "title"), (1, "abstract")):
            present = np.unique(self._tok[slot][1]).tolist()
            out[fld] = sorted(map(self._norm_list.__getitem__, present))
        return out

    @functools.cached_property
    def _norm_bits(self) -> dict[str, dict[str, int]]:
        """Per field, each normalised word's bitset of papers."""
        n = max(1, self.size)
        out = {}
        for slot, fld in ((0, "title"), (1, "abstract")):
            tok = self._tok[slot][1]
            pap = np.repeat(np.arange(len(self._lens[slot]), dtype=np.int64), self._lens[slot])
            keys = np.unique(tok * n + pap)
            word, papers = keys // n, keys % n
            cut = np.flatnonzero(np.r_[True, word[1:] != word[:-1]][: len(keys)])
            ends = np.r_[cut[1:], len(keys)][: len(cut)]
            out[fld] = {
                self._norm_list[w]: _papers_bits(papers[a:b])
                for w, a, b in zip(word[cut].tolist(), cut.tolist(), ends.tolist(), strict=True)
            }
        return out

    @functools.cached_property
    def _numbers(self) -> dict[str, tuple[list[int], list[int], int]]:
        """Per number field, see _cumulative."""
        return {name: self._cumulative(name) for name in ("upvotes", "authors")}

    def _gram_tables(self, tok: np.ndarray, lens: np.ndarray, nvocab: int) -> tuple:
        """Sorted (word, paper) and (word pair, paper) keys of one field with their counts."""
        n = max(1, self.size)
        pap = np.repeat(np.arange(len(lens), dtype=np.int64), lens)
        uni, uni_tf = np.unique(tok * n + pap, return_counts=True)
        same = pap[:-1] == pap[1:]
        pairs = (tok[:-1][same] * nvocab + tok[1:][same]) * n + pap[:-1][same]
        bi, bi_tf = np.unique(pairs, return_counts=True)
        return uni, uni_tf, bi, bi_tf

    def prime_phrases(self, phrases: Iterable[tuple[str, ...]]) -> None:
        """Index the adjacent word pairs of these phrases in one pass over the papers.

        A two-word phrase is then a single bitset lookup, and a longer one is only verified on
        papers holding all its pairs; without priming, phrases are checked paper by paper.
        """
        wanted = {bg for ph in phrases for bg in itertools.pairwise(ph)} - self._bigrams[0].keys()
        if not wanted:
            return
        posts: tuple[dict[tuple[str, str], list[int]], ...] = ({}, {})
        for i, pair in enumerate(self._stems):
            for slot in (0, 1):
                seq = pair[slot]
                for bg in wanted.intersection(itertools.pairwise(seq)):
                    posts[slot].setdefault(bg, []).append(i)
        for slot in (0, 1):
            built = _build_bits(posts[slot])
            for bg in wanted:
                self._bigrams[slot][bg] = built.get(bg, 0)

    def _cumulative(self, name: str) -> tuple[list[int], list[int], int]:
        """Sorted distinct values, bitset of papers with value <= each, and all with a value."""
        by_value: dict[int, int] = {}
        for i, p in enumerate(self.papers):
            v = getattr(p, name)
            if v is not None:
                by_value[v] = by_value.get(v, 0) | (1 << i)
        values = sorted(by_value)
        acc, le = 0, []
        for v in values:
            acc |= by_value[v]
            le.append(acc)
        return values, le, acc

    # ------------------------------------------------------------ boolean evaluation

    def bits(self, node: Node) -> int:
        """The bitset of papers matching a query node (memoised for this index)."""
        r = self._memo.get(node)
        if r is not None:
            return r
        kind = node.kind
        if kind == "and":
            r = self.all
            for c in sorted(node.children, key=_cheap_first):
                r &= self.bits(c)
                if not r:
                    break
        elif kind == "or":
            r = 0
            for c in node.children:
                r |= self.bits(c)
        elif kind == "not":
            r = self.all & ~self.bits(node.child)
        elif kind == "t":
            r = self._field_bits(self._bits, node.field, node.word)
        elif kind == "p":
            r = self._phrase_bits(node)
        elif kind == "x":
            r = self._prefix_bits(node)
        elif kind == "n":
            r = self._number_bits(*node.condition)
        elif kind == "o":
            r = self._org_bits(node.words)
        elif kind == "m":
            r = self._most_bits(node)
        else:
            raise ValueError(f"unknown query node {kind!r}")
        self._memo[node] = r
        return r

    def _field_bits(
        self, table: Mapping[str, _WordBits | dict[str, int]], fld: str | None, word: str
    ) -> int:
        if fld is not None:
            return table[fld].get(word, 0)
        return table["title"].get(word, 0) | table["abstract"].get(word, 0)

    def idf(self, df: int) -> float:
        """BM25's idf of a word held by df of this index's papers (the ranking's own)."""
        return math.log(1.0 + (self.size - df + 0.5) / (df + 0.5))

    def _most_bits(self, node: Node) -> int:
        """Papers holding most words of an `m` node (see query.most_needed) whose words found
        carry at least MOST_SHARE of the words' total idf (see query._loose)."""
        # the order of the words does not change the result: no sort (this runs once per
        # distinct forgiving alternative of a batch, ~100k at 100k subscribers)
        parts = tuple(node.children)
        bits = [self.bits(c) for c in parts]
        idf = self._idf
        w = []
        for b in bits:
            df = b.bit_count()
            got = idf.get(df)
            if got is None:
                got = idf[df] = self.idf(df)
            w.append(got)
        n = len(parts)
        # a hair below the share, so that equal weights meet it exactly
        need = MOST_SHARE * sum(w) * (1 - 1e-9)
        if n > 8:  # past 256 subsets: count and sum the weights paper by paper
            acc = np.zeros(self.size)
            held = np.zeros(self.size, dtype=np.int64)
            for b, wk in zip(bits, w, strict=True):
                idx = bit_indices(b)
                acc[idx] += wk
                held[idx] += 1
            hit = np.flatnonzero((acc >= need) & (held >= most_needed(n))).tolist()
            return _build_bits({0: hit})[0] if hit else 0
        if n == 3:  # the common case, unrolled: two of three, or all three
            b0, b1, b2 = bits
            w0, w1, w2 = w
            r = (b0 & b1 if w0 + w1 >= need else 0) | (b0 & b2 if w0 + w2 >= need else 0)
            r |= b1 & b2 if w1 + w2 >= need else 0
            # no pair enough (it takes three equal words to get here: never, or a weight 0)
            return (
                r if r or (w0 + w1 >= need or w0 + w2 >= need or w1 + w2 >= need) else b0 & b1 & b2
            )
        r = 0
        enough: list[int] = []
        # sets of enough words, fewest first; a superset of one already taken adds no paper
        for mask, ks in _subsets(n):
            if sum([w[k] for k in ks]) < need or any(mask & e == e for e in enough):
                continue
            enough.append(mask)
            sub = bits[ks[0]]
            for k in ks[1:]:
                sub &= bits[k]
            r |= sub
        return r

    def _phrase_bits(self, node: Node) -> int:
        phrase = node.words
        r = 0
        for slot, fld in enumerate(("title", "abstract")):
            if node.field not in (None, fld):
                continue
            cand = self.all
            primed = self._bigrams[slot]
            pairs = list(itertools.pairwise(phrase))
            if all(bg in primed for bg in pairs):
                for bg in pairs:
                    cand &= primed[bg]
                if len(phrase) == 2:
                    r |= cand  # adjacency is exactly what the pair bitset records
                    continue
            else:
                for w in set(phrase):
                    cand &= self._bits[fld].get(w, 0)
                    if not cand:
                        break
            for i in bit_indices(cand):
                if _count_phrase(self._stems[i][slot], phrase):
                    r |= 1 << i
        return r

    def _prefix_bits(self, node: Node) -> int:
        prefix = node.word
        r = 0
        for fld in ("title", "abstract"):
            if node.field not in (None, fld):
                continue
            vocab, table = self._norm_vocab[fld], self._norm_bits[fld]
            for k in range(bisect_left(vocab, prefix), len(vocab)):
                if not vocab[k].startswith(prefix):
                    break
                r |= table[vocab[k]]
        return r

    def _number_bits(self, name: str, op: str, value: int) -> int:
        values, le, has = self._numbers[name]

        def at_most(j: int) -> int:
            return le[j] if j >= 0 else 0

        if op == "<=":
            return at_most(bisect_right(values, value) - 1)
        if op == "<":
            return at_most(bisect_left(values, value) - 1)
        if op == ">=":
            return has & ~at_most(bisect_left(values, value) - 1)
        if op == ">":
            return has & ~at_most(bisect_right(values, value) - 1)
        return at_most(bisect_right(values, value) - 1) & ~at_most(bisect_left(values, value) - 1)

    def _org_bits(self, words: tuple[str, ...]) -> int:
        if self._by_org is None:  # a batch has few organizations: test each one once
            self._by_org = {}
            for i, p in enumerate(self.papers):
                key = (p.organization_id, p.organization)
                self._by_org[key] = self._by_org.get(key, 0) | 1 << i
        r = 0
        for (org_id, org), bits in self._by_org.items():
            if org_matches(words, org_id, org):
                r |= bits
        return r

    # ------------------------------------------------------------ ranking

    def weights(self, leaf: Node) -> dict[int, float]:
        """BM25F weight of a positive word/phrase/prefix leaf in every paper holding it."""
        ws = self._weights.get(leaf)
        if ws is None:
            _ptr, papers, w = self.postings([leaf])
            ws = self._weights[leaf] = dict(zip(papers.tolist(), w.tolist(), strict=True))
        return ws

    def postings(self, leaves: Sequence[Node]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Word/phrase/prefix leaves as CSR: offsets, papers (ascending) and BM25F weights.

        Words and two-word phrases are looked up for all leaves at once in the sorted (word,
        paper) and (word pair, paper) tables; longer phrases and prefixes are counted paper by
        paper on the papers their bitset names.
        """
        n, nl = max(1, self.size), len(leaves)
        nv, vocab = len(self._vocab), self._vocab
        # per table (words, pairs) and field (either, title, abstract): leaf positions, keys
        found: dict[tuple[int, str | None], tuple[list[int], list[int]]] = {}
        slow: list[tuple[int, Node]] = []
        for j, leaf in enumerate(leaves):
            kind = leaf.kind
            if kind == "t":
                key = vocab.get(leaf.word)
                table = 0
            elif kind == "p" and len(leaf.words) == 2:
                a, b = vocab.get(leaf.words[0]), vocab.get(leaf.words[1])
                key = None if a is None or b is None else a * nv + b
                table = 1
            else:
                slow.append((j, leaf))
                continue
            if key is not None:
                got = found.setdefault((table, leaf.field), ([], []))
                got[0].append(j)
                got[1].append(key)
        # (leaf positions, counts, papers, title tf, abstract tf)
        groups: list[tuple[np.ndarray, ...]] = []
        for (table, fld), (lj, keys) in found.items():
            tkeys, ttf, atf = (self._words, self._pairs)[table][_FIELDS[fld]]
            k = np.asarray(keys, dtype=np.int64) * n
            lo = np.searchsorted(tkeys, k)
            cnt = np.searchsorted(tkeys, k + n) - lo
            idx = ranges(lo, cnt)
            papers = tkeys[idx] - np.repeat(k, cnt)
            groups.append((np.asarray(lj, dtype=np.int64), cnt, papers, ttf[idx], atf[idx]))
        if slow:
            groups.append(self._slow_counts(slow))
        # every leaf's entries at their CSR place, with no sort: each leaf is in one group
        per_leaf = np.zeros(nl, dtype=np.int64)
        for leaf_pos, counts, *_ in groups:
            per_leaf[leaf_pos] = counts
        ptr = np.r_[0, np.cumsum(per_leaf)]
        papers = np.empty(int(ptr[-1]), dtype=np.int64)
        tt = np.empty(len(papers), dtype=np.float64)
        ta = np.empty(len(papers), dtype=np.float64)
        for leaf_pos, counts, gp, gt, ga in groups:
            dest = ranges(ptr[leaf_pos], counts)
            papers[dest], tt[dest], ta[dest] = gp, gt, ga
        leaf_of = np.repeat(np.arange(nl, dtype=np.int64), per_leaf)
        size = self.size
        idf = np.log(1.0 + (size - per_leaf + 0.5) / (per_leaf + 0.5))
        tfw = TITLE_WEIGHT * tt / self._tnorm[papers] + ta / self._anorm[papers]
        w = idf[leaf_of] * tfw * (K1 + 1) / (K1 + tfw)
        return ptr, papers, w

    def _slow_counts(self, slow: list[tuple[int, Node]]) -> tuple[np.ndarray, ...]:
        """Long phrases and prefixes counted in Python: leaf positions, their paper counts,
        then per (leaf, paper) the paper and its title and abstract counts."""
        lj: list[int] = []
        cnt: list[int] = []
        out: tuple[list[int], list[int], list[int]] = ([], [], [])
        for j, leaf in slow:
            kind, fld = leaf.kind, leaf.field
            c0 = len(out[0])
            for i in bit_indices(self.bits(leaf)):
                pair = (self._stems if kind == "p" else self._norms)[i]
                tf = [0, 0]
                for slot, name in ((0, "title"), (1, "abstract")):
                    if fld not in (None, name):
                        continue
                    seq = pair[slot]
                    if kind == "p":
                        tf[slot] = _count_phrase(seq, leaf.words)
                    else:
                        tf[slot] = sum(1 for x in seq if x.startswith(leaf.word))
                if tf[0] or tf[1]:
                    out[0].append(i)
                    out[1].append(tf[0])
                    out[2].append(tf[1])
            lj.append(j)
            cnt.append(len(out[0]) - c0)
        i64 = functools.partial(np.asarray, dtype=np.int64)
        f64 = functools.partial(np.asarray, dtype=np.float64)
        return i64(lj), i64(cnt), i64(out[0]), f64(out[1]), f64(out[2])

    def weight(self, leaf: Node, i: int) -> float:
        """BM25F weight of one positive leaf in paper i (0 if absent)."""
        return self.weights(leaf).get(i, 0.0)

    def score(self, query: Query, i: int) -> float:
        """The query's BM25F score for paper i: the sum over its positive words present."""
        return sum(self.weight(leaf, i) for leaf in query.terms)

    def ranked(self, query: Query, limit: int | None = None) -> _Ranked:
        """The query's matching papers as (score, index), best first, at most limit."""
        key = (query.root, limit)
        got = self._ranked.get(key)
        if got is not None:
            return got
        matched = self.bits(query.root)
        if not matched:
            got = []
        elif len(query.terms) == 1 and not matched & ~self.bits(query.terms[0]):
            # every matched paper holds the one word: walk its precomputed ranking
            full = self._leaf_ranking(query.terms[0])
            if matched == self.bits(query.terms[0]):
                got = full[:limit] if limit is not None else full
            else:
                got = []
                for entry in full:
                    if matched >> entry[1] & 1:
                        got.append(entry)
                        if limit is not None and len(got) >= limit:
                            break
        else:
            rank = self.rank
            idx = bit_indices(matched)
            zero = itertools.repeat(0.0)
            total: list[float] = [0.0] * len(idx)
            for leaf in query.terms:  # summed leaf by leaf with C-level map, not per paper
                total = list(map(operator.add, total, map(self.weights(leaf).get, idx, zero)))
            scored = list(zip(total, idx, strict=True))
            if limit is not None and len(scored) > 4 * limit:
                got = heapq.nsmallest(limit, scored, key=lambda e: (-e[0], rank[e[1]]))
            else:
                scored.sort(key=lambda e: (-e[0], rank[e[1]]))
                got = scored[:limit] if limit is not None else scored
        self._ranked[key] = got
        return got

    def _leaf_ranking(self, leaf: Node) -> _Ranked:
        key = (leaf, None)
        got = self._ranked.get(key)
        if got is None:
            rank = self.rank
            ws = self.weights(leaf)
            got = [(ws.get(i, 0.0), i) for i in bit_indices(self.bits(leaf))]
            got.sort(key=lambda e: (-e[0], rank[e[1]]))
            self._ranked[key] = got
        return got


_Highlights = tuple[tuple[str, ...], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]
# What a ledger row keeps of a match: topic names, matched words, score, why.
Reason = tuple[tuple[str, ...], tuple[str, ...], float, str]
# A query's positive words; its alternatives' papers and words (None: a single one); whether
# any alternative has a condition.
_WordPlan = tuple[frozenset[Node], list[tuple[int, frozenset[Node]]] | None, bool]


class PaperTexts:
    """Where a batch's matched words stand in each paper's title and abstract (for highlights),
    tokenised on demand and cached per paper and per (word, paper)."""

    def __init__(self, papers: Sequence[StoredPaper]) -> None:
        self.papers = papers
        self._tokens: dict[int, tuple[list[textmod.Token], list[textmod.Token]]] = {}
        self._positions: dict[int, tuple[dict[str, list[int]], dict[str, list[int]]]] = {}
        self._spans: dict[tuple[Node, int], tuple[list, list]] = {}
        self._found: dict[tuple[tuple[Node, ...], int], _Highlights] = {}

    def tokens(self, i: int) -> tuple[list[textmod.Token], list[textmod.Token]]:
        """Title and abstract tokens of paper i with character offsets (computed on demand)."""
        got = self._tokens.get(i)
        if got is None:
            p = self.papers[i]
            got = self._tokens[i] = (textmod.tokenize(p.title), textmod.tokenize(p.abstract))
        return got

    def leaf_spans(self, leaf: Node, i: int) -> tuple[list, list]:
        """Title and abstract spans of one leaf in paper i."""
        key = (leaf, i)
        got = self._spans.get(key)
        if got is None:
            toks = self.tokens(i)
            pos = self._positions.get(i)
            if pos is None:
                pos = self._positions[i] = (positions(toks[0]), positions(toks[1]))
            pair: list[list[tuple[int, int]]] = []
            for slot, name in ((0, "title"), (1, "abstract")):
                if leaf.field not in (None, name):
                    pair.append([])
                else:
                    pair.append(indexed_spans(leaf, toks[slot], pos[slot]))
            got = self._spans[key] = (pair[0], pair[1])
        return got

    def highlights(
        self, leaves: Iterable[Node], i: int
    ) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        """Matched words (as they appear), title spans and abstract spans of leaves in paper i."""
        # Built once per (leaves found in the paper, paper): the queue stage asks this for every
        # kept match of every subscriber, and profiles sharing a word share its result
        # (profiled at 100k subscribers: a third of the queue stage before).
        found = tuple(leaf for leaf in leaves if any(self.leaf_spans(leaf, i)))
        got = self._found.get((found, i))
        if got is None:
            got = self._found[(found, i)] = self._highlights(found, i)
        return got

    def _highlights(self, leaves: Iterable[Node], i: int) -> _Highlights:
        t_spans: list[tuple[int, int]] = []
        a_spans: list[tuple[int, int]] = []
        for leaf in leaves:
            ts, as_ = self.leaf_spans(leaf, i)
            t_spans.extend(ts)
            a_spans.extend(as_)
        tm, am = merge_spans(t_spans), merge_spans(a_spans)
        p = self.papers[i]
        seen: dict[str, str] = {}
        for src, spans in ((p.title, tm), (p.abstract, am)):
            for s, e in spans:
                word = src[s:e]
                seen.setdefault(word.casefold(), word)
        return tuple(seen.values()), tm, am


def alternatives(root: Node) -> list[Node]:
    """The positive alternatives of a compiled query's root (exclusions set aside)."""
    parts = root.children if root.kind == "and" else (root,)
    return [a for c in parts if c.kind != "not" for a in (c.children if c.kind == "or" else (c,))]


# An alternative as "why" reads it: its node, its positive words and its conditions described.
_Part = tuple[Node, frozenset[Node], tuple[str, ...]]


@functools.lru_cache(maxsize=1 << 14)
def _parts(root: Node) -> tuple[tuple[_Part, ...], bool]:
    """A query root's alternatives for matched_terms and passed_conditions, and whether any has
    a condition: built once per query, not once per matched paper (the queue stage asks for
    every kept match of every subscriber, and a subscriber's matches are asked together)."""
    parts = tuple(map(_part, alternatives(root)))
    return parts, any(conds for _, _, conds in parts)


# Distinct queries (~100k at 100k subscribers) share far fewer distinct alternatives: each
# alternative's words and conditions are worked out once (sorting its leaves by repr is slow).
@functools.lru_cache(maxsize=1 << 16)
def _part(alt: Node) -> _Part:
    conds = tuple(describe_node(x) for x in positive_leaves(alt) if x.kind in ("o", "n"))
    return alt, frozenset(positive_terms(alt)), conds


def matched_terms(index: PaperIndex, query: Query, i: int) -> list[Node]:
    """The query's positive words, phrases and prefixes of the alternatives paper i matches:
    a word of an alternative that did not match is not a matched word."""
    parts, _ = _parts(query.root)
    if len(parts) == 1:
        return list(query.terms)
    hit: set[Node] = set()
    for alt, terms, _conds in parts:
        if index.bits(alt) >> i & 1:
            hit |= terms
    return [leaf for leaf in query.terms if leaf in hit]


def passed_conditions(index: PaperIndex, query: Query, i: int) -> list[str]:
    """The org and number conditions of the alternatives paper i matches (upvotes>=10, ...)."""
    parts, any_conditions = _parts(query.root)
    if not any_conditions:
        return []
    out: list[str] = []
    for alt, _terms, conds in parts:
        if conds and index.bits(alt) >> i & 1:
            out += conds
    # sorted: the alternatives (a conjunction's clauses among them) come in the order of a
    # frozenset, which differs from process to process
    return sorted(set(out))


def positive_leaves(node: Node) -> Iterable[Node]:
    """The leaves of a node not under a NOT, in a fixed order."""
    if node.kind in ("and", "or", "m"):
        for c in sorted(node.children, key=repr):
            yield from positive_leaves(c)
    elif node.kind != "not":
        yield node


def _leaves(node: Node) -> Iterable[Node]:
    if node.kind in ("and", "or", "m"):
        for c in node.children:
            yield from _leaves(c)
    elif node.kind == "not":
        yield from _leaves(node.child)
    else:
        yield node


def _cheap_first(node: Node) -> int:
    # evaluate plain words before phrases and negations so an empty AND stops early
    return 0 if node.kind == "t" else 1 if node.kind != "not" else 2


def org_matches(words: tuple[str, ...], org_id: str | None, org: str | None) -> bool:
    """Whether org: words name an organization (its hub id, or words of its name)."""
    for value in (org_id, org):
        if not value:
            continue
        norms = [t.norm for t in textmod.tokenize(value)]
        n = len(words)
        if any(tuple(norms[k : k + n]) == words for k in range(len(norms) - n + 1)):
            return True
    return False


# Compiled topics, process-wide: a long-running scheduler compiles each distinct stored query
# once (charged to the cycle that first meets it) and later cycles only look it up. Bounded so a
# process that sees many one-off queries cannot grow without end (~0.4 KB per entry, so the
# bound is ~100 MB; 100k subscribers' topics fit); cleared whole when it overflows.
_COMPILED: dict[str, Query] = {}
_COMPILED_MAX = 1 << 18


# Texts the batch matcher compiled because their stored form was missing or stale: the queue
# stage rewrites those topics' forms (forms_to_save). Kept when _COMPILED is cleared (by its
# bound or by forget_leaves): forms_to_save compiles again what it needs.
_UNSTORED: set[str] = set()
on_forget_leaves(_COMPILED.clear)  # its queries' programs hold the forgotten leaf ids


def cached_query(text: str) -> Query:
    """compile_query(text), kept for the process (the batch matcher's cache)."""
    got = _COMPILED.get(text)
    if got is None:
        got = compile_query(text)
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()  # _UNSTORED stays: its texts' forms are still to be written
        _COMPILED[text] = got
    return got


def load_queries(profiles: Mapping[int, Sequence[Topic]]) -> None:
    """What match_profiles does first: put the profiles' queries in the process cache, those
    not there yet decoded from the forms stored with their topics (or, failing that, left for
    cached_query to compile)."""
    # as in match_profiles: cyclic GC passes over the many new small objects cost more than
    # the decoding itself
    with gc_paused():
        _load_forms(profiles, None)


def _load_forms(profiles: Mapping[int, Sequence[Topic]], texts: Iterable[str] | None) -> None:
    """load_queries for the profiles' distinct texts (None: read them from the profiles); a
    text whose form does not decode (query.decode_queries) is noted in _UNSTORED."""
    forms: dict[str, bytes | None] | None = None
    if texts is None:
        forms = {t.query: t.compiled for topics in profiles.values() for t in topics}
        texts = forms
    cold = [x for x in texts if x not in _COMPILED and x.strip()]
    if not cold:  # a running scheduler's cycles after its first
        return
    if forms is None:
        forms = {t.query: t.compiled for topics in profiles.values() for t in topics}
    if len(_UNSTORED) > _COMPILED_MAX:
        _UNSTORED.clear()  # its bound: texts whose topics a queue stage has not met since
    if len(_COMPILED) + len(cold) > _COMPILED_MAX:
        _COMPILED.clear()
        # the bound holds; cached_query compiles the rest, whose forms are then rewritten
        _UNSTORED.update(cold[_COMPILED_MAX:])
        cold = cold[:_COMPILED_MAX]
    # a fresh process's first batch keeps every text: the forms are the map's values in order
    given = list(forms.values()) if texts is forms and len(cold) == len(forms) else None
    decoded = decode_queries(cold, given or [forms.get(x) for x in cold])
    for text, query in zip(cold, decoded, strict=True):
        if query is None:
            _UNSTORED.add(text)
        else:
            _COMPILED[text] = query


def forms_to_save(profiles: Mapping[int, Sequence[Topic]]) -> list[tuple[int, int, str, bytes]]:
    """(subscriber id, position, query, form) of these profiles' topics whose stored form the
    matcher could not use (missing, stale, damaged), their query compiled this process."""
    if not _UNSTORED:
        return []
    rows = []
    fresh: dict[str, bytes | None] = {}  # text -> its form now (None: it does not compile)
    for sid, topics in profiles.items():
        for pos, topic in enumerate(topics):
            if topic.query not in _UNSTORED:
                continue
            if topic.query not in fresh:
                try:
                    fresh[topic.query] = encode_query(cached_query(topic.query))
                except QueryError:
                    fresh[topic.query] = None  # a bad stored query has no form: it stays NULL
            form = fresh[topic.query]
            # any form but this one is rewritten: missing, stale, or damaged past its header
            if form is not None and topic.compiled != form:
                rows.append((sid, pos, topic.query, form))
    return rows


def _compile(text: str) -> Query | None:
    if not text.strip():
        return None  # a topic of examples alone: no keyword part, nothing to warn about
    try:
        return cached_query(text)
    except QueryError as exc:
        # profiles are validated when saved; a bad stored one must not stop everyone's digest
        log.warning("skipping unparsable topic query %r: %s", text, exc)
        return None


_SCORE_BITS = 32  # scores are ranked in micro-units (Match.score keeps 6 decimals)
_SCORE_MAX = (1 << _SCORE_BITS) - 1
_BLOCKS = 64  # query blocks per kernel call, shared out among the threads


def _debruijn_table() -> np.ndarray:
    # the lowest set bit of a word times this constant puts a unique 6-bit code at the top
    table = np.zeros(64, dtype=np.int64)
    for b in range(64):
        table[((1 << b) * _DEBRUIJN & (1 << 64) - 1) >> 58] = b
    return table


_DEBRUIJN = 0x03F79D71B4CB0A89
_DB_TABLE = _debruijn_table()


# Both kernels rank (paper, score) entries by one int64 sort key: best score first, then the
# paper's tie-break rank (more upvotes, newer, lower id), so an ascending sort is best first.
@numba.njit(nogil=True, inline="always")
def _sort_key(micro, rank, rank_bits):
    return ((np.int64(_SCORE_MAX) - micro) << rank_bits) | rank


@numba.njit(nogil=True, inline="always")
def _key_rank(key, rank_bits):
    return key & ((np.int64(1) << rank_bits) - 1)


@numba.njit(nogil=True, inline="always")
def _key_micro(key, rank_bits):
    return np.int64(_SCORE_MAX) - (key >> rank_bits)


@numba.njit(nogil=True, inline="always")
def _block(n, blk, blocks):
    """Items [lo, hi) of block blk when n items are shared out among `blocks` blocks."""
    return n * blk // blocks, n * (blk + 1) // blocks


@numba.njit(cache=True, nogil=True)
def _select(buf, count, k):
    """Reorder buf[:count] in place so that its k smallest come first (quickselect; unlike
    np.partition it allocates nothing, which matters in the kernel's parallel loop)."""
    lo, hi, want = 0, count - 1, k - 1
    while lo < hi:
        pivot = buf[(lo + hi) >> 1]
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            return


@numba.njit(cache=True, parallel=True, nogil=True)
def _run_queries(rows, all_mask, prog, qstart, row_of, ptr, papers, weights, rank, by_rank,
                 db_table, rank_bits, count_only, out_off, cap, out_paper, out_micro,
                 out_total):  # fmt: skip
    """Evaluate every query: its bitset program, then its matches' BM25F scores (summed leaf by
    leaf over the leaves' postings); write its best cap[q] papers, best first (score, then
    paper rank), with their micro-scores at out_off[q], and its match count to out_total[q]."""
    nq = len(qstart) - 1
    nw = rows.shape[1]
    n = rank.shape[0]
    one = np.uint64(1)
    zero = np.uint64(0)
    db = np.uint64(_DEBRUIJN)
    s58 = np.uint64(58)
    m63 = np.uint64(63)
    score_max = np.int64(_SCORE_MAX)
    blocks = min(nq, _BLOCKS)
    for blk in numba.prange(blocks):
        lo, hi = _block(nq, blk, blocks)
        res = np.empty(nw, dtype=np.uint64)
        cl = np.empty(nw, dtype=np.uint64)
        cj = np.empty(nw, dtype=np.uint64)
        acc = np.zeros(n, dtype=np.float64)
        buf = np.empty(n, dtype=np.int64)
        for q in range(lo, hi):
            # the query's program (see Query.program): positive words, then the clauses
            tpos = qstart[q] + 1
            nterms = prog[tpos - 1]
            pos = tpos + nterms + 1
            res[:] = all_mask
            nonempty = True
            for _c in range(prog[pos - 1]):
                cl[:] = zero
                nconj = prog[pos]
                pos += 1
                for _j in range(nconj):
                    cj[:] = ~zero
                    nlits = prog[pos]
                    pos += 1
                    for li in range(pos, pos + nlits):
                        r = row_of[prog[li] >> 1]
                        neg = ~zero if prog[li] & 1 else zero
                        for w in range(nw):
                            cj[w] &= rows[r, w] ^ neg
                    pos += nlits
                    for w in range(nw):
                        cl[w] |= cj[w]
                anyset = zero
                for w in range(nw):
                    res[w] &= cl[w]
                    anyset |= res[w]
                if anyset == zero:
                    nonempty = False
                    break
            count = 0
            if not nonempty:
                out_total[q] = 0
                continue
            if count_only:
                for w in range(nw):
                    x = res[w]
                    while x:
                        x &= x - one
                        count += 1
                out_total[q] = count
                continue
            # scores: each positive leaf's weight added on the matched papers that hold it
            for t in range(tpos, tpos + nterms):
                leaf = row_of[prog[t]]
                for k in range(ptr[leaf], ptr[leaf + 1]):
                    p = papers[k]
                    if (res[p >> 6] >> (np.uint64(p) & m63)) & one:
                        acc[p] += weights[k]
            for w in range(nw):
                x = res[w]
                base = w << 6
                while x:
                    low = x & (~x + one)
                    p = base + db_table[(low * db) >> s58]
                    m = np.int64(np.rint(acc[p] * 1e6))
                    acc[p] = 0.0
                    if m < 0:
                        m = np.int64(0)
                    elif m > score_max:
                        m = score_max
                    buf[count] = _sort_key(m, rank[p], rank_bits)
                    count += 1
                    x ^= low
            out_total[q] = count
            k = min(count, cap[q])
            if k <= 0:
                continue
            if count > k:
                _select(buf, count, k)
            best = buf[:k]
            best.sort()
            o = out_off[q]
            for j in range(k):
                out_paper[o + j] = by_rank[_key_rank(best[j], rank_bits)]
                out_micro[o + j] = _key_micro(best[j], rank_bits)


@numba.njit(cache=True, nogil=True)
def _walk_programs(prog, nq, seen):
    """Where each of nq concatenated programs starts (programs are self-delimiting); sets
    seen[id] for every leaf id they use."""
    out = np.empty(nq + 1, dtype=np.int64)
    pos = 0
    for q in range(nq):
        out[q] = pos
        nterms = prog[pos]
        for t in range(pos + 1, pos + 1 + nterms):
            seen[prog[t]] = True
        pos += nterms + 1
        nclauses = prog[pos]
        pos += 1
        for _c in range(nclauses):
            nconj = prog[pos]
            pos += 1
            for _j in range(nconj):
                nlits = prog[pos]
                for li in range(pos + 1, pos + 1 + nlits):
                    seen[prog[li] >> 1] = True
                pos += nlits + 1
    out[nq] = pos
    return out


def _bitset_rows(ptr: np.ndarray, papers: np.ndarray, words: int) -> np.ndarray:
    """One row of uint64 bitset words per CSR row."""
    nrows = len(ptr) - 1
    out = np.zeros(nrows * words, dtype=np.uint64)
    if len(papers):
        row = np.repeat(np.arange(nrows, dtype=np.int64), np.diff(ptr))
        word = row * words + (papers >> 6)
        bit = np.left_shift(np.uint64(1), (papers & 63).astype(np.uint64))
        starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]])
        out[word[starts]] = np.bitwise_or.reduceat(bit, starts)
    return out.reshape(nrows, words)


def _other_rows(index: PaperIndex, others: list[Node], rows: np.ndarray, row_of: np.ndarray,
                seen: np.ndarray, nw: int) -> np.ndarray:  # fmt: skip
    """Bitset rows of the literals that are not words: forgiving alternatives of three words
    all at once from their words' rows (there are ~70k distinct ones at 100k subscribers),
    every other literal from index.bits."""
    out = np.empty((len(others), nw), dtype=np.uint64)
    cand: list[int] = []
    flat: list[int] = []
    for k, x in enumerate(others):
        if x.kind == "m" and len(x.children) == 3 and all(c.kind in "tp" for c in x.children):
            cand.append(k)
            flat.extend(map(leaf_id, x.children))
        else:
            out[k] = _int_row(index.bits(x), nw)
    ids = np.asarray(flat, dtype=np.int64).reshape(-1, 3)
    # only words and phrases have rows yet; one under a NOT has none
    has_row = ((ids < len(seen)) & seen[np.minimum(ids, len(seen) - 1)]).all(axis=1)
    for k in np.asarray(cand, dtype=np.int64)[~has_row].tolist():
        out[k] = _int_row(index.bits(others[k]), nw)
    three = np.asarray(cand, dtype=np.int64)[has_row].tolist()
    kids = row_of[ids[has_row]].ravel()
    if three:
        r = rows[np.asarray(kids, dtype=np.int64)].reshape(len(three), 3, nw)
        df = np.bitwise_count(r).sum(axis=2, dtype=np.int64)
        w = np.log(1.0 + (index.size - df + 0.5) / (df + 0.5))
        # the same rule as PaperIndex._most_bits: pairs holding enough of the idf mass
        need = MOST_SHARE * w.sum(axis=1) * (1 - 1e-9)
        full = np.uint64(0xFFFFFFFFFFFFFFFF)
        got = np.zeros((len(three), nw), dtype=np.uint64)
        some = np.zeros(len(three), dtype=np.bool_)
        for a, b in ((0, 1), (0, 2), (1, 2)):
            ok = w[:, a] + w[:, b] >= need
            some |= ok
            got |= r[:, a] & r[:, b] & np.where(ok, full, np.uint64(0))[:, None]
        got[~some] = r[~some, 0] & r[~some, 1] & r[~some, 2]
        out[np.asarray(three, dtype=np.int64)] = got
    return out


def _int_row(x: int, words: int) -> np.ndarray:
    return np.frombuffer(x.to_bytes(words * 8, "little"), dtype=np.uint64)


class _Batch:
    """Every distinct query of a batch evaluated at once: its best (paper, score) pairs.

    With a limit, each query keeps only its best `limit` matches (exact top-k: selected by
    score, then paper rank, inside the kernel), so the batch never holds every matching pair;
    `total` still counts them all, so a caller can tell a cut list from a complete one.
    """

    def __init__(self, index: PaperIndex, queries: list[Query], limit: int | None) -> None:
        self.index = index
        self.queries = queries
        n = index.size
        nw = max(1, (n + 63) >> 6)
        # every query's program (see Query.program) in one array, literals by leaf id
        programs = list(map(operator.attrgetter("program"), queries))
        prog = np.frombuffer(b"".join(programs), np.int64)
        nl = len(LEAVES)  # other threads may add leaves meanwhile; ours are all below
        seen = np.zeros(nl, dtype=np.bool_)
        qstart = _walk_programs(prog, len(programs), seen)
        gid = np.flatnonzero(seen)  # the batch's distinct leaves, by id
        nodes = [LEAVES[i] for i in gid.tolist()]
        is_leaf = np.fromiter((x.kind in "tpx" for x in nodes), np.bool_, len(nodes))
        # rows: word/phrase/prefix leaves first (from the CSR postings), then other literals
        order = np.r_[np.flatnonzero(is_leaf), np.flatnonzero(~is_leaf)]
        row_of = np.zeros(nl, dtype=np.int64)
        row_of[gid[order]] = np.arange(len(order))
        leaves = [nodes[k] for k in order[: int(is_leaf.sum())].tolist()]
        others = [nodes[k] for k in order[len(leaves) :].tolist()]
        nested = [leaf for x in others for leaf in _leaves(x) if leaf.kind == "p"]
        index.prime_phrases(leaf.words for leaf in nested)
        ptr, papers, weights = index.postings(leaves)
        rows = _bitset_rows(ptr, papers, nw)
        if others:
            extra = _other_rows(index, others, rows, row_of, seen, nw)
            rows = np.concatenate([rows, extra])
        if not len(rows):
            rows = np.zeros((1, nw), dtype=np.uint64)
        all_mask = _int_row(index.all, nw).copy()
        rank_bits = max(1, (n - 1).bit_length())
        program = (rows, all_mask, prog, qstart, row_of, ptr, papers, weights, index._rank_arr,
                   index._by_rank, _DB_TABLE, rank_bits)  # fmt: skip
        nq = len(queries)
        total = np.zeros(nq, dtype=np.int64)
        if limit is None:
            # count first, then write every match at its exact place
            none = np.zeros(0, dtype=np.int64)
            _run_queries(*program, True, none, none, none.astype(np.int32),
                         none.astype(np.uint32), total)  # fmt: skip
            cap = total.copy()
            start = np.cumsum(total) - total
        else:
            # each query's best `limit` in a slot of its own (no compaction pass)
            cap = np.full(nq, max(0, limit), dtype=np.int64)
            start = np.arange(nq, dtype=np.int64) * max(0, limit)
        size = int(cap.sum())
        self.paper = np.empty(size, dtype=np.int32)  # index of the paper in the batch
        self.micro = np.empty(size, dtype=np.uint32)  # its score in micro-units
        _run_queries(*program, False, start, cap, self.paper, self.micro, total)
        self.total = total
        self.kept = np.minimum(total, cap)
        self.more = total > self.kept  # lists cut at the limit (more papers match)
        self.start = start

    def entries(self, qid: int) -> tuple[np.ndarray, np.ndarray]:
        """The query's kept papers (batch indices) and micro-scores, best first."""
        a = int(self.start[qid])
        b = a + int(self.kept[qid])
        return self.paper[a:b], self.micro[a:b]

    def cut(self, qid: int) -> bool:
        """Whether the query's list was cut at the limit (it has more matches)."""
        return bool(self.more[qid])

    def score_of(self, qid: int, i: int) -> int | None:
        """The micro-score of paper i for query qid, or None if it does not match."""
        papers, micro = self.entries(qid)
        hits = np.flatnonzero(papers == i)
        if len(hits):
            return int(micro[hits[0]])
        query, index = self.queries[qid], self.index
        if not self.cut(qid) or not index.bits(query.root) >> i & 1:
            return None
        # beyond the kept ones: the same sum, leaf by leaf, as the kernel's
        return min(_SCORE_MAX, max(0, int(np.rint(index.score(query, i) * 1e6))))


class MatchList(Sequence[Match]):
    """One subscriber's matches, best first; Match objects (with words and spans) are built
    only for the items read, so a caller that reads the first few pays for those alone."""

    __slots__ = ("_cache", "_micro", "_more", "_papers", "_qids", "_res", "_topics")

    def __init__(self, res: Matches, papers: np.ndarray, micro: np.ndarray,
                 topics: Sequence[Topic], qids: tuple[int, ...], more: bool) -> None:  # fmt: skip
        self._res = res
        self._more = more
        self._papers = papers
        self._micro = micro
        self._topics = topics
        self._qids = qids
        self._cache: dict[int, Match] = {}

    def __len__(self) -> int:
        return len(self._papers)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(k)
        got = self._cache.get(k)
        if got is None:
            got = self._cache[k] = self._res.build(self, k)
        return got

    def reason(self, k: int) -> Reason:
        """Item k's topic names, matched words, score and why (see Matches.reasons)."""
        return self.reasons([k])[0]

    def reasons(self, ks: Sequence[int]) -> list[Reason]:
        """reason(k) for each k of `ks`, in one call (the queue stage asks for ~1M)."""
        missing = [k for k in ks if k not in self._cache]
        got = dict(zip(missing, self._res.reasons(self, missing), strict=True))
        return [
            got[k] if (m := self._cache.get(k)) is None else (m.topics, m.terms, m.score, m.why)
            for k in ks
        ]

    def paper_ids(self) -> list[int]:
        """The matched papers' ids, best first (no Match objects built)."""
        return self._res.index.ids[self._papers].tolist()

    def scores(self) -> list[float]:
        """The matches' scores, best first."""
        return (self._micro / 1e6).tolist()

    @property
    def cut(self) -> bool:
        """Whether the list stops at the limit while more papers match (see full())."""
        return self._more

    def full(self) -> MatchList:
        """The whole ranking (this list if it is not cut): the first items are the same."""
        if not self.cut:
            return self
        got = match_profiles(self._res.index, {0: self._topics}).get(0)
        assert got is not None  # a cut list has matches
        return got

    def __repr__(self) -> str:
        return f"MatchList({list(self)!r})"


class Matches(Mapping[int, MatchList]):
    """Ranked matches per subscriber id (subscribers with no match are left out)."""

    def __init__(
        self,
        index: PaperIndex,
        batch: _Batch | None,
        limit: int | None,
        profiles: Mapping[int, Sequence[Topic]],
        qid_of: Mapping[str, int],
    ) -> None:
        self.index = index
        self.batch = batch
        self.limit = limit
        self._profiles = profiles
        self._qid_of = qid_of  # query text -> query id in the batch (-1: unparsable)
        self._single: dict[int, int] = {}  # sid -> query id of their one usable topic
        self._multi: dict[int, int] = {}  # sid -> k: row of the arrays below
        # reason(): per query id, its positive words and alternatives (see _word_plan); per
        # (matched words, paper), the words as the paper spells them
        self._word_plans: dict[int, _WordPlan] = {}
        self._words: dict[tuple[frozenset[Node], int], tuple[str, ...]] = {}
        # multi-topic subscriber k: query ids at multi_qids[multi_qptr[k]:multi_qptr[k + 1]],
        # merged list at multi_paper/multi_micro[multi_lo[k]:multi_hi[k]], cut or not
        self.multi_qids: list[int] = []
        self.multi_qptr: list[int] = []
        self.multi_lo: list[int] = []
        self.multi_hi: list[int] = []
        self.multi_cut: list[bool] = []
        self.multi_paper = np.zeros(0, np.int32)
        self.multi_micro = np.zeros(0, np.uint32)

    def __getitem__(self, sid: int) -> MatchList:
        qid = self._single.get(sid)
        batch = self.batch
        if qid is not None and batch is not None:
            ts = self._profiles[sid]
            # one topic: it is the usable one (the common case, no text lookup)
            topic = ts[0] if len(ts) == 1 else next(t for t in ts if self._qid_of[t.query] == qid)
            papers, micro = batch.entries(qid)
            return MatchList(self, papers, micro, (topic,), (qid,), batch.cut(qid))
        k = self._multi.get(sid)
        if k is None:
            raise KeyError(sid)
        a, b = self.multi_lo[k], self.multi_hi[k]
        qids = tuple(self.multi_qids[self.multi_qptr[k] : self.multi_qptr[k + 1]])
        topics = [t for t in self._profiles[sid] if self._qid_of[t.query] >= 0]
        return MatchList(self, self.multi_paper[a:b], self.multi_micro[a:b], topics, qids,
                         self.multi_cut[k])  # fmt: skip

    def __iter__(self):
        return itertools.chain(self._single, self._multi)

    def __len__(self) -> int:
        return len(self._single) + len(self._multi)

    def __contains__(self, sid: object) -> bool:
        return sid in self._single or sid in self._multi

    def ranked_ids(self) -> dict[int, list[int]]:
        """Every subscriber's matched paper ids, best first, as paper_ids() gives each list,
        in one pass over the batch's arrays (no MatchList per subscriber)."""
        batch = self.batch
        if batch is None:
            return {}
        # 100k new lists would set off full cyclic GC passes over every live compiled query
        with gc_paused():
            return self._ranked_ids(batch)

    def _ranked_ids(self, batch: _Batch) -> dict[int, list[int]]:
        ids = self.index.ids
        kept = batch.kept
        flat = ids[batch.paper[ranges(batch.start, kept)]].tolist()
        off = (np.cumsum(kept) - kept).tolist()
        end = np.cumsum(kept).tolist()
        out = {sid: flat[off[q] : end[q]] for sid, q in self._single.items()}
        if self._multi:
            # past each list's end the arrays hold unwritten slots: only the lists are read
            lo, hi = np.asarray(self.multi_lo), np.asarray(self.multi_hi)
            multi = ids[self.multi_paper[ranges(lo, hi - lo)]].tolist()
            a = (np.cumsum(hi - lo) - (hi - lo)).tolist()
            b = np.cumsum(hi - lo).tolist()
            out.update({sid: multi[a[k] : b[k]] for sid, k in self._multi.items()})
        return out

    def reasons(self, ml: MatchList, ks: Sequence[int]) -> list[Reason]:
        """Items ks' topic names, matched words, score and why, exactly as build() gives them,
        without a Match or spans (the ledger keeps these alone and render recomputes spans)."""
        if len(ml._qids) != 1:
            return [(m.topics, m.terms, m.score, m.why) for m in (self.build(ml, k) for k in ks)]
        # The queue stage asks this for ~1M kept matches at 100k subscribers, almost all from
        # distinct queries that share their alternatives: the words are built once per
        # (matched positive words, paper), whichever query or subscriber meets them; what
        # depends on the query alone is looked up once per list, not per item.
        assert self.batch is not None
        qid = ml._qids[0]
        query = self.batch.queries[qid]
        plan = self._word_plans.get(qid)
        if plan is None:
            plan = self._word_plans[qid] = self._word_plan(qid)
        every, alts, conditions = plan
        name = (ml._topics[0].name,)
        papers, micro, known = ml._papers, ml._micro, self._words
        out: list[Reason] = []
        for k in ks:
            i = int(papers[k])
            found = every if alts is None else frozenset().union(
                *[terms for bits, terms in alts if bits >> i & 1])  # fmt: skip
            words = known.get((found, i))
            if words is None:
                leaves = [leaf for leaf in query.terms if leaf in found]
                words = known[(found, i)] = self.index.texts.highlights(leaves, i)[0]
            why = "; ".join(passed_conditions(self.index, query, i)) if conditions else ""
            out.append((name, words, int(micro[k]) / 1e6, why))
        return out

    def _word_plan(self, qid: int) -> _WordPlan:
        """What matched_terms reads of a query, for all its papers: its positive words, and
        (several alternatives) each alternative's papers and positive words."""
        assert self.batch is not None
        query = self.batch.queries[qid]
        parts, conditions = _parts(query.root)
        every = frozenset(query.terms)
        if len(parts) == 1:
            return every, None, conditions
        alts = [(self.index.bits(alt), terms & every) for alt, terms, _conds in parts]
        return every, alts, conditions

    def build(self, ml: MatchList, k: int) -> Match:
        """The Match for item k of one subscriber's list, with topics, words and spans."""
        index, batch = self.index, self.batch
        assert batch is not None
        i = int(ml._papers[k])
        micro = int(ml._micro[k])
        hits = []
        for pos, (t, qid) in enumerate(zip(ml._topics, ml._qids, strict=True)):
            s = micro if len(ml._qids) == 1 else batch.score_of(qid, i)
            if s is not None:
                hits.append((-s, pos, t.name, qid))
        hits.sort(key=lambda h: (h[0], h[1]))
        names = tuple(dict.fromkeys(h[2] for h in hits))
        leaves = dict.fromkeys(
            leaf for h in hits for leaf in matched_terms(index, batch.queries[h[3]], i)
        )
        terms, ts, as_ = index.texts.highlights(leaves, i)
        why = "; ".join(
            dict.fromkeys(c for h in hits for c in passed_conditions(index, batch.queries[h[3]], i))
        )
        return Match(index.papers[i].id, micro / 1e6, names, terms, ts, as_, why)


def match_profiles(
    index: PaperIndex, profiles: Mapping[int, Sequence[Topic]], *, limit: int | None = None
) -> Matches:
    """Ranked matches per subscriber id (subscribers with no match are left out)."""
    # the batch allocates many small acyclic objects; cyclic GC passes over them cost more
    # than the matching itself, so pause it for the batch
    with gc_paused():
        return _match_all(index, profiles, limit)


def _match_all(
    index: PaperIndex, profiles: Mapping[int, Sequence[Topic]], limit: int | None
) -> Matches:
    # Per-subscriber Python work is what dominates at 100k subscribers, so the profiles are
    # flattened into arrays once and everything after runs on whole arrays.
    sids = np.fromiter(profiles.keys(), np.int64, len(profiles))
    counts = np.fromiter(map(len, profiles.values()), np.int64, len(profiles))
    texts = [t.query for topics in profiles.values() for t in topics]
    position: dict[str, int] = {}  # distinct text -> its position, in order of first use
    slots = [position.setdefault(x, len(position)) for x in texts]
    _load_forms(profiles, position)
    try:
        # An empty query (a topic of examples alone) has no keyword part: None, as if absent.
        compiled: list[Query | None] = [cached_query(x) if x.strip() else None for x in position]
    except QueryError:  # a bad stored profile: find it, and match the others
        compiled = list(map(_compile, position))
    if None not in compiled:
        queries: list[Query] = cast("list[Query]", compiled)  # no None, checked above
        qids = np.asarray(slots, dtype=np.int64)
        qid_of: Mapping[str, int] = position
    else:
        queries = [q for q in compiled if q is not None]
        valid = np.fromiter((q is not None for q in compiled), np.bool_, len(compiled))
        code = np.where(valid, np.cumsum(valid) - 1, -1)  # position -> query id, -1: bad
        qids = code[np.asarray(slots, dtype=np.int64)]
        qid_of = dict(zip(position, code.tolist(), strict=True))
    if not index.size or not queries:
        return Matches(index, None, limit, profiles, qid_of)
    batch = _Batch(index, queries, limit)
    res = Matches(index, batch, limit, profiles, qid_of)
    # each subscriber's usable topics (a bad stored query is skipped, as if absent)
    usable = qids >= 0
    owner = np.repeat(np.arange(len(sids)), counts)[usable]
    qids = qids[usable]
    counts = np.bincount(owner, minlength=len(sids))
    starts = np.cumsum(counts) - counts
    one = counts == 1
    first = qids[starts[one]]
    hit = batch.kept[first] > 0
    res._single.update(zip(sids[one][hit].tolist(), first[hit].tolist(), strict=True))
    several = counts > 1
    if several.any():
        sub_ptr = np.r_[0, np.cumsum(counts[several])]
        _merge_multi(res, batch, sids[several], sub_ptr, qids[np.repeat(several, counts)], limit)
    return res


def _merge_multi(res: Matches, batch: _Batch, sids: np.ndarray, sub_ptr: np.ndarray,
                 qids: np.ndarray, limit: int | None) -> None:  # fmt: skip
    """Each multi-topic subscriber's papers once, at their best topic's score, ranked
    (subscriber k's query ids are qids[sub_ptr[k]:sub_ptr[k + 1]])."""
    index = res.index
    entries = np.r_[0, np.cumsum(batch.kept[qids])][sub_ptr]
    per_sub = np.diff(entries)  # entries before removing repeats: the most a list can hold
    cap = per_sub if limit is None else np.minimum(per_sub, max(0, limit))
    off = np.r_[0, np.cumsum(cap)]
    res.multi_paper = np.empty(int(off[-1]), dtype=np.int32)
    res.multi_micro = np.empty(int(off[-1]), dtype=np.uint32)
    unique = np.zeros(len(sids), dtype=np.int64)
    rank_bits = max(1, (index.size - 1).bit_length())
    _merge_lists(sub_ptr, qids, batch.start, batch.kept, batch.paper, batch.micro,
                 index._rank_arr, index._by_rank, rank_bits, int(per_sub.max(initial=0)),
                 off, cap, res.multi_paper, res.multi_micro, unique)  # fmt: skip
    # past the limit the merge of cut lists is not exact: it is cut there too
    any_cut = np.add.reduceat(batch.more[qids], sub_ptr[:-1]) > 0
    more = any_cut | (unique > limit if limit is not None else False)
    count = np.minimum(unique, cap)
    found = np.flatnonzero(count)
    res._multi.update(zip(sids[found].tolist(), range(len(found)), strict=True))
    keep = np.zeros(len(sids), dtype=np.bool_)
    keep[found] = True
    res.multi_qids = qids[np.repeat(keep, np.diff(sub_ptr))].tolist()
    res.multi_qptr = np.r_[0, np.cumsum(np.diff(sub_ptr)[found])].tolist()
    res.multi_lo = off[found].tolist()
    res.multi_hi = (off[found] + count[found]).tolist()
    res.multi_cut = more[found].tolist()


@numba.njit(cache=True, parallel=True, nogil=True)
def _merge_lists(sub_ptr, qids, start, kept, paper, micro, rank, by_rank, rank_bits, longest,
                 out_off, cap, out_paper, out_micro, out_unique):  # fmt: skip
    """Per subscriber: the kept lists of their queries merged, each paper once at its best
    score, best first; the first cap[s] written at out_off[s], the distinct count kept."""
    nsub = len(sub_ptr) - 1
    blocks = min(nsub, _BLOCKS)
    for blk in numba.prange(blocks):
        lo, hi = _block(nsub, blk, blocks)
        seen = np.zeros(len(rank), dtype=np.int64)  # s + 1 where subscriber s took the paper
        buf = np.empty(longest, dtype=np.int64)
        for s in range(lo, hi):
            c = 0
            for j in range(sub_ptr[s], sub_ptr[s + 1]):
                q = qids[j]
                for e in range(start[q], start[q] + kept[q]):
                    buf[c] = _sort_key(np.int64(micro[e]), rank[paper[e]], rank_bits)
                    c += 1
            keys = buf[:c]
            keys.sort()  # best first, so a paper's first appearance is its best score
            u = 0
            o = out_off[s]
            for e in range(c):
                p = by_rank[_key_rank(keys[e], rank_bits)]
                if seen[p] != s + 1:
                    seen[p] = s + 1
                    if u < cap[s]:
                        out_paper[o + u] = p
                        out_micro[o + u] = _key_micro(keys[e], rank_bits)
                    u += 1
            out_unique[s] = u


@dataclass(frozen=True)
class QueryPreview:
    """One query against a set of papers: the best matches and how many matched in all."""

    matches: list[Match]
    hits: int
    papers: tuple[StoredPaper, ...]


def preview_query(
    papers: Sequence[StoredPaper], query_text: str, limit: int | None = None
) -> QueryPreview:
    """`digest match`: the query's best `limit` matches among `papers` and the total matched."""
    index = PaperIndex(papers)
    matches = match_query(index, query_text, limit)
    hits = index.bits(compile_query(query_text).root).bit_count()
    return QueryPreview(matches, hits, index.papers)


def match_query(index: PaperIndex, query_text: str, limit: int | None = None) -> list[Match]:
    """Preview one query against the index, best first; raises QueryError if it is malformed."""
    query = compile_query(query_text)
    out = []
    for score, i in index.ranked(query, limit):
        terms, ts, as_ = index.texts.highlights(matched_terms(index, query, i), i)
        out.append(Match(index.papers[i].id, round(score, 6), (), terms, ts, as_))
    return out
