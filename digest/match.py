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
import gc
import heapq
import itertools
import logging
import math
import operator
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import date

import numpy as np

from digest import text as textmod
from digest.errors import QueryError
from digest.models import Match, StoredPaper, Topic
from digest.query import Node, Query, compile_query

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


def _build_bits(postings: dict[str, list[int]]) -> dict[str, int]:
    out = {}
    for key, idx in postings.items():
        buf = bytearray((idx[-1] >> 3) + 1)
        for i in idx:
            buf[i >> 3] |= 1 << (i & 7)
        out[key] = int.from_bytes(buf, "little")
    return out


def _ranges(lo: np.ndarray, cnt: np.ndarray) -> np.ndarray:
    """The concatenation of arange(lo[k], lo[k] + cnt[k]) for every k."""
    total = int(cnt.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(cnt) - cnt
    return np.arange(total, dtype=np.int64) - np.repeat(starts - lo, cnt)


def _merge_spans(spans: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return tuple(out)


def _leaf_spans(leaf: Node, toks: Sequence[textmod.Token]) -> list[tuple[int, int]]:
    """Character spans in one field's tokens where a word/phrase/prefix leaf occurs."""
    kind, arg = leaf.kind, leaf.arg
    if kind == "t":
        return [(t.start, t.end) for t in toks if t.stem == arg]
    if kind == "x":
        return [(t.start, t.end) for t in toks if t.norm.startswith(arg)]  # type: ignore[arg-type]
    phrase: tuple[str, ...] = arg  # type: ignore[assignment]
    n = len(phrase)
    stems = [t.stem for t in toks]
    return [
        (toks[p].start, toks[p + n - 1].end)
        for p in range(len(stems) - n + 1)
        if stems[p] == phrase[0] and tuple(stems[p : p + n]) == phrase
    ]


def _positions(toks: Sequence[textmod.Token]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for k, t in enumerate(toks):
        lst = out.get(t.stem)
        if lst is None:
            out[t.stem] = [k]
        else:
            lst.append(k)
    return out


def _count_phrase(stems: tuple[str, ...], phrase: tuple[str, ...]) -> int:
    first, n, count, p = phrase[0], len(phrase), 0, -1
    try:
        while True:
            p = stems.index(first, p + 1)
            if stems[p : p + n] == phrase:
                count += 1
    except ValueError:
        return count


class PaperIndex:
    """A batch of papers indexed for boolean matching, ranking and highlighting."""

    def __init__(self, papers: Sequence[StoredPaper]) -> None:
        self.papers: tuple[StoredPaper, ...] = tuple(papers)
        n = len(self.papers)
        self.size = n
        self.all = (1 << n) - 1
        self._stems: list[tuple[tuple[str, ...], tuple[str, ...]]] = []  # (title, abstract)
        vocab: dict[str, int] = {}
        ids: tuple[list[int], list[int]] = ([], [])
        lens: tuple[list[int], list[int]] = ([], [])
        self._norms: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
        posts: tuple[dict[str, list[int]], ...] = ({}, {}, {}, {})  # t stem, a stem, t/a norm
        # term frequencies aligned with the stem postings, for whole-vector BM25 weights
        self._tf: tuple[dict[str, list[int]], dict[str, list[int]]] = ({}, {})
        for i, p in enumerate(self.papers):
            ts, tn = textmod.words(p.title)
            as_, an = textmod.words(p.abstract)
            self._stems.append((ts, as_))
            self._norms.append((tn, an))
            for slot, seq in ((0, ts), (1, as_)):
                for w in seq:
                    if w not in vocab:
                        vocab[w] = len(vocab)
                ids[slot].extend(map(vocab.__getitem__, seq))
                lens[slot].append(len(seq))
            for slot, seq in ((0, ts), (1, as_)):
                d, tfd = posts[slot], self._tf[slot]
                for w, c in Counter(seq).items():
                    lst = d.get(w)
                    if lst is None:
                        d[w] = [i]
                        tfd[w] = [c]
                    else:
                        lst.append(i)
                        tfd[w].append(c)
            for d, seq in ((posts[2], tn), (posts[3], an)):
                for w in set(seq):
                    lst = d.get(w)
                    if lst is None:
                        d[w] = [i]
                    else:
                        lst.append(i)
        self._post = (posts[0], posts[1])
        self._bits = {
            f: _build_bits(d) for f, d in zip(("title", "abstract"), posts[:2], strict=True)
        }
        self._norm_bits = {
            f: _build_bits(d) for f, d in zip(("title", "abstract"), posts[2:], strict=True)
        }
        self._norm_vocab = {f: sorted(d) for f, d in self._norm_bits.items()}
        self._tlen = [max(1, len(s[0])) for s in self._stems]
        self._alen = [max(1, len(s[1])) for s in self._stems]
        self._avg_t = sum(self._tlen) / n if n else 1.0
        self._avg_a = sum(self._alen) / n if n else 1.0
        self._numbers = {name: self._cumulative(name) for name in ("upvotes", "authors")}
        self._vocab = vocab
        self._grams = tuple(self._gram_tables(ids[s], lens[s], len(vocab)) for s in (0, 1))
        self._tnorm = 1 - B + B * np.asarray(self._tlen, dtype=np.float64) / self._avg_t
        self._anorm = 1 - B + B * np.asarray(self._alen, dtype=np.float64) / self._avg_a
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
        self._rank_arr = np.asarray(self.rank, dtype=np.int64)
        # per-index memos: bounded by this batch's papers and the queries run against it
        self._memo: dict[Node, int] = {}
        self._weights: dict[Node, dict[int, float]] = {}
        self._idf: dict[Node, float] = {}
        self._ranked: dict[tuple[Node, int | None], _Ranked] = {}
        self._tokens: dict[int, tuple[list[textmod.Token], list[textmod.Token]]] = {}
        self._positions: dict[int, tuple[dict[str, list[int]], dict[str, list[int]]]] = {}
        self._bigrams: tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]] = ({}, {})
        self._spans: dict[tuple[Node, int], tuple[list, list]] = {}

    def _gram_tables(self, ids: list[int], lens: list[int], nvocab: int) -> tuple:
        """Sorted (word, paper) and (word pair, paper) keys of one field with their counts."""
        n = max(1, self.size)
        tok = np.asarray(ids, dtype=np.int64)
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
            built = _build_bits(posts[slot])  # type: ignore[arg-type]
            for bg in wanted:
                self._bigrams[slot][bg] = built.get(bg, 0)  # type: ignore[call-overload]

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
            for c in sorted(node.arg, key=_cheap_first):  # type: ignore[attr-defined]
                r &= self.bits(c)
                if not r:
                    break
        elif kind == "or":
            r = 0
            for c in node.arg:  # type: ignore[attr-defined]
                r |= self.bits(c)
        elif kind == "not":
            r = self.all & ~self.bits(node.arg)  # type: ignore[arg-type]
        elif kind == "t":
            r = self._field_bits(self._bits, node.field, node.arg)  # type: ignore[arg-type]
        elif kind == "p":
            r = self._phrase_bits(node)
        elif kind == "x":
            r = self._prefix_bits(node)
        elif kind == "n":
            r = self._number_bits(*node.arg)  # type: ignore[misc]
        elif kind == "o":
            r = self._org_bits(node.arg)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown query node {kind!r}")
        self._memo[node] = r
        return r

    def _field_bits(self, table: dict[str, dict[str, int]], fld: str | None, word: str) -> int:
        if fld is not None:
            return table[fld].get(word, 0)
        return table["title"].get(word, 0) | table["abstract"].get(word, 0)

    def _phrase_bits(self, node: Node) -> int:
        phrase: tuple[str, ...] = node.arg  # type: ignore[assignment]
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
        prefix: str = node.arg  # type: ignore[assignment]
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
        r = 0
        for i, p in enumerate(self.papers):
            if org_matches(words, p):
                r |= 1 << i
        return r

    # ------------------------------------------------------------ ranking

    def _idf_of(self, leaf: Node) -> float:
        idf = self._idf.get(leaf)
        if idf is None:
            df = self.bits(leaf).bit_count()
            idf = math.log(1.0 + (self.size - df + 0.5) / (df + 0.5))
            self._idf[leaf] = idf
        return idf

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
        leaf_parts, pap_parts, tf_parts, slot_parts = [], [], [], []
        slow = [
            (j, x)
            for j, x in enumerate(leaves)
            if x.kind == "x" or (x.kind == "p" and len(x.arg) > 2)  # type: ignore[arg-type]
        ]
        for slot, name in ((0, "title"), (1, "abstract")):
            uni, uni_tf, bi, bi_tf = self._grams[slot]
            wl: list[int] = []
            wk: list[int] = []
            pl: list[int] = []
            pk: list[int] = []
            for j, leaf in enumerate(leaves):
                if leaf.field not in (None, name):
                    continue
                kind, arg = leaf.kind, leaf.arg
                if kind == "t":
                    tid = vocab.get(arg)  # type: ignore[call-overload]
                    if tid is not None:
                        wl.append(j)
                        wk.append(tid)
                elif kind == "p" and len(arg) == 2:  # type: ignore[arg-type]
                    a, b = vocab.get(arg[0]), vocab.get(arg[1])  # type: ignore[index]
                    if a is not None and b is not None:
                        pl.append(j)
                        pk.append(a * nv + b)
            for lj, keys, table, tf in ((wl, wk, uni, uni_tf), (pl, pk, bi, bi_tf)):
                if not lj:
                    continue
                k = np.asarray(keys, dtype=np.int64) * n
                lo = np.searchsorted(table, k)
                cnt = np.searchsorted(table, k + n) - lo
                idx = _ranges(lo, cnt)
                leaf_parts.append(np.repeat(np.asarray(lj, dtype=np.int64), cnt))
                pap_parts.append(table[idx] - np.repeat(k, cnt))
                tf_parts.append(tf[idx])
                slot_parts.append(np.full(len(idx), slot, dtype=np.int8))
        if slow:
            sl, sp, st, ss = self._slow_counts(slow)
            leaf_parts.append(sl)
            pap_parts.append(sp)
            tf_parts.append(st)
            slot_parts.append(ss)
        if not leaf_parts:
            return np.zeros(nl + 1, dtype=np.int64), np.zeros(0, np.int64), np.zeros(0)
        leaf = np.concatenate(leaf_parts)
        keys, inv = np.unique(leaf * n + np.concatenate(pap_parts), return_inverse=True)
        tf = np.concatenate(tf_parts).astype(np.float64)
        title = np.concatenate(slot_parts) == 0
        tt = np.bincount(inv, weights=np.where(title, tf, 0.0), minlength=len(keys))
        ta = np.bincount(inv, weights=np.where(title, 0.0, tf), minlength=len(keys))
        leaf_of, papers = np.divmod(keys, n)
        ptr = np.searchsorted(leaf_of, np.arange(nl + 1))
        df = np.diff(ptr).tolist()
        size = self.size
        idf = np.asarray([math.log(1.0 + (size - d + 0.5) / (d + 0.5)) for d in df])
        tfw = TITLE_WEIGHT * tt / self._tnorm[papers] + ta / self._anorm[papers]
        w = idf[leaf_of] * tfw * (K1 + 1) / (K1 + tfw)
        return ptr, papers, w

    def _slow_counts(self, slow: list[tuple[int, Node]]) -> tuple[np.ndarray, ...]:
        """(leaf, paper, count, slot) rows for long phrases and prefixes, counted in Python."""
        out: tuple[list[int], list[int], list[int], list[int]] = ([], [], [], [])
        for j, leaf in slow:
            kind, arg, fld = leaf.kind, leaf.arg, leaf.field
            for i in bit_indices(self.bits(leaf)):
                pair = (self._stems if kind == "p" else self._norms)[i]
                for slot, name in ((0, "title"), (1, "abstract")):
                    if fld not in (None, name):
                        continue
                    seq = pair[slot]
                    if kind == "p":
                        c = _count_phrase(seq, arg)  # type: ignore[arg-type]
                    else:
                        c = sum(1 for x in seq if x.startswith(arg))  # type: ignore[arg-type]
                    if c:
                        for lst, v in zip(out, (j, i, c, slot), strict=True):
                            lst.append(v)
        return tuple(np.asarray(x, dtype=np.int64) for x in out)

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

    # ------------------------------------------------------------ highlighting

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
                pos = self._positions[i] = (_positions(toks[0]), _positions(toks[1]))
            pair: list[list[tuple[int, int]]] = []
            for slot, name in ((0, "title"), (1, "abstract")):
                ft = toks[slot]
                if leaf.field not in (None, name):
                    pair.append([])
                elif leaf.kind == "t":
                    where = pos[slot].get(leaf.arg, ())  # type: ignore[call-overload]
                    pair.append([(ft[k].start, ft[k].end) for k in where])
                elif leaf.kind == "p" and leaf.arg[0] not in pos[slot]:  # type: ignore[index]
                    pair.append([])
                else:
                    pair.append(_leaf_spans(leaf, ft))
            got = self._spans[key] = (pair[0], pair[1])
        return got

    def highlights(
        self, leaves: Iterable[Node], i: int
    ) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        """Matched words (as they appear), title spans and abstract spans of leaves in paper i."""
        t_spans: list[tuple[int, int]] = []
        a_spans: list[tuple[int, int]] = []
        for leaf in leaves:
            ts, as_ = self.leaf_spans(leaf, i)
            t_spans.extend(ts)
            a_spans.extend(as_)
        tm, am = _merge_spans(t_spans), _merge_spans(a_spans)
        p = self.papers[i]
        seen: dict[str, str] = {}
        for src, spans in ((p.title, tm), (p.abstract, am)):
            for s, e in spans:
                word = src[s:e]
                seen.setdefault(word.casefold(), word)
        return tuple(seen.values()), tm, am


def _leaves(node: Node) -> Iterable[Node]:
    if node.kind in ("and", "or"):
        for c in node.arg:  # type: ignore[attr-defined]
            yield from _leaves(c)
    elif node.kind == "not":
        yield from _leaves(node.arg)  # type: ignore[arg-type]
    else:
        yield node


def _cheap_first(node: Node) -> int:
    # evaluate plain words before phrases and negations so an empty AND stops early
    return 0 if node.kind == "t" else 1 if node.kind != "not" else 2


def org_matches(words: tuple[str, ...], paper: StoredPaper) -> bool:
    """Whether org: words name the paper's organization (its id, or words of its name)."""
    for value in (paper.organization_id, paper.organization):
        if not value:
            continue
        norms = [t.norm for t in textmod.tokenize(value)]
        n = len(words)
        if any(tuple(norms[k : k + n]) == words for k in range(len(norms) - n + 1)):
            return True
    return False


def _compile(text: str) -> Query | None:
    try:
        return compile_query(text)
    except QueryError as exc:
        # profiles are validated when saved; a bad stored one must not stop everyone's digest
        log.warning("skipping unparsable topic query %r: %s", text, exc)
        return None


_SCORE_BITS = 32  # scores are ranked in micro-units (Match.score keeps 6 decimals)
_SCORE_MAX = (1 << _SCORE_BITS) - 1
_LIT_BUDGET = 1 << 21  # literal bitset words gathered per chunk (16 MB; bounds pair arrays too)


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


def _int_row(x: int, words: int) -> np.ndarray:
    return np.frombuffer(x.to_bytes(words * 8, "little"), dtype=np.uint64)


def _set_bits(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, bit position) of every set bit of a matrix of uint64 words, in no fixed order."""
    ri, wi = np.nonzero(rows)
    w = rows[ri, wi]
    base = wi.astype(np.int64) << 6
    out_r, out_p = [], []
    one = np.uint64(1)
    while len(w):  # peel the lowest set bit of every word still holding one
        low = w & (~w + one)
        out_r.append(ri)
        out_p.append(base + np.bitwise_count(low - one).astype(np.int64))
        w = w ^ low
        keep = w != 0
        ri, base, w = ri[keep], base[keep], w[keep]
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_r).astype(np.int64), np.concatenate(out_p)


def _rank_sort(group: np.ndarray, micro: np.ndarray, rank: np.ndarray, rank_bits: int):
    """Sort entries by (group, score descending, paper rank) with one int64 sort per chunk.

    group must be ascending-chunkable: entries are split by group ranges so the group, the
    score and the rank fit one 63-bit key. Returns (group, micro score, rank), sorted.
    """
    if not len(group):
        return group, micro, rank
    gbits = 63 - _SCORE_BITS - rank_bits
    if gbits < 1:
        order = np.lexsort((rank, -micro, group))
        return group[order], micro[order], rank[order]
    span = 1 << gbits
    score = _SCORE_MAX - np.clip(micro, 0, _SCORE_MAX)
    chunk = group // span
    outs = []
    bounds = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
    if not np.all(chunk[1:] >= chunk[:-1]):
        order = np.argsort(chunk, kind="stable")
        group, score, rank, chunk = group[order], score[order], rank[order], chunk[order]
        bounds = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
    shift = _SCORE_BITS + rank_bits
    for a, b in itertools.pairwise(bounds.tolist()):
        base = int(chunk[a]) * span
        key = ((group[a:b] - base) << shift) | (score[a:b] << rank_bits) | rank[a:b]
        key.sort()
        outs.append(key)
    if not outs:
        z = np.zeros(0, np.int64)
        return z, z, z
    key = np.concatenate(outs)
    chunk_base = np.repeat(chunk[bounds[:-1]] * span, np.diff(bounds)) if len(bounds) > 1 else 0
    g = (key >> shift) + chunk_base
    return g, _SCORE_MAX - ((key >> rank_bits) & _SCORE_MAX), key & ((1 << rank_bits) - 1)


class _Batch:
    """Every distinct query of a batch evaluated at once: ranked (paper, score) per query."""

    def __init__(self, index: PaperIndex, queries: list[Query]) -> None:
        self.index = index
        self.queries = queries
        n = index.size
        nw = max(1, (n + 63) >> 6)
        # rows: word/phrase/prefix leaves first (from the CSR postings), then other literals
        lits = list(itertools.chain.from_iterable(q.literals for q in queries))
        pos = list(itertools.chain.from_iterable(q.terms for q in queries))
        distinct = dict.fromkeys(itertools.chain(lits, pos))
        leaves = [x for x in distinct if x.kind in ("t", "p", "x")]
        others = [x for x in distinct if x.kind not in ("t", "p", "x")]
        nested = [leaf for x in others for leaf in _leaves(x) if leaf.kind == "p"]
        index.prime_phrases(leaf.arg for leaf in nested)  # type: ignore[misc]
        rowmap = {x: k for k, x in enumerate(itertools.chain(leaves, others))}
        ptr, papers, weights = index.postings(leaves)
        rows = _bitset_rows(ptr, papers, nw)
        if others:
            extra = np.stack([_int_row(index.bits(x), nw) for x in others])
            rows = np.concatenate([rows, extra])
        all_mask = _int_row(index.all, nw)
        # the literal program of every query, flattened
        lit_rows = np.fromiter(map(rowmap.__getitem__, lits), np.int64, len(lits))
        negs = np.fromiter(
            itertools.chain.from_iterable(q.negated for q in queries), np.bool_, len(lits)
        )
        conj = np.fromiter(itertools.chain.from_iterable(q.conj_sizes for q in queries), np.int64)
        clause = np.fromiter(
            itertools.chain.from_iterable(q.clause_sizes for q in queries), np.int64
        )
        qclauses = np.fromiter((len(q.clause_sizes) for q in queries), np.int64, len(queries))
        lit_start = np.r_[0, np.cumsum(conj)]  # per conjunction
        conj_start = np.r_[0, np.cumsum(clause)]  # per clause
        clause_start = np.r_[0, np.cumsum(qclauses)]  # per query
        q_lit = lit_start[conj_start[clause_start]]  # first literal of each query (and end)
        # positive leaves of every query, for scoring
        pcount = np.fromiter((len(q.terms) for q in queries), np.int64, len(queries))
        pleaf = np.fromiter(map(rowmap.__getitem__, pos), np.int64, len(pos))
        pstart = np.r_[0, np.cumsum(pcount)]
        leaf_rows = rows[: len(leaves)]
        cum = np.cumsum(np.bitwise_count(leaf_rows), axis=1, dtype=np.int64)
        cum -= np.bitwise_count(leaf_rows)
        w_pad = np.r_[weights, 0.0]
        rank_bits = max(1, (n - 1).bit_length())
        neg_word = np.where(negs, ~np.uint64(0), np.uint64(0))
        q_parts, s_parts, p_parts = [], [], []
        qa, nq = 0, len(queries)
        qspan = 1 << max(1, 63 - _SCORE_BITS - rank_bits)
        while qa < nq:
            # as many queries as fit the gather budget (at least one)
            qb = int(np.searchsorted(q_lit, q_lit[qa] + max(1, _LIT_BUDGET // nw), "right")) - 1
            qb = min(max(qb, qa + 1), nq, qa + qspan)
            la, lb = int(q_lit[qa]), int(q_lit[qb])
            ca, cb = int(conj_start[clause_start[qa]]), int(conj_start[clause_start[qb]])
            ka, kb = int(clause_start[qa]), int(clause_start[qb])
            g = rows[lit_rows[la:lb]]
            g ^= neg_word[la:lb, None]
            t = np.bitwise_and.reduceat(g, lit_start[ca:cb] - la, axis=0)
            del g
            c = np.bitwise_or.reduceat(t, conj_start[ka:kb] - ca, axis=0)
            del t
            qbits = np.bitwise_and.reduceat(c, clause_start[qa:qb] - ka, axis=0)
            del c
            qbits &= all_mask
            pq, pp = _set_bits(qbits)
            del qbits
            # score: the sum of the query's positive leaf weights in the paper
            npos = pcount[pq + qa]
            rep = np.repeat(np.arange(len(pq), dtype=np.int64), npos)
            leaf = pleaf[_ranges(pstart[pq + qa], npos)]
            p = pp[rep]
            word = leaf_rows[leaf, p >> 6]
            bitpos = (p & 63).astype(np.uint64)
            present = (word >> bitpos) & np.uint64(1)
            below = np.bitwise_count(word & ((np.uint64(1) << bitpos) - np.uint64(1)))
            at = ptr[leaf] + cum[leaf, p >> 6] + below
            at = np.where(present.astype(bool), at, len(weights))
            score = np.bincount(rep, weights=w_pad[at], minlength=len(pq))
            micro = np.rint(score * 1e6).astype(np.int64)
            # pq < qspan: one composite key sort ranks the whole chunk
            g_, m_, r_ = _rank_sort(pq, micro, index._rank_arr[pp], rank_bits)
            q_parts.append(g_ + qa)
            s_parts.append(m_)
            p_parts.append(index._by_rank[r_])
            qa = qb
        self.q = np.concatenate(q_parts) if q_parts else np.zeros(0, np.int64)
        self.micro = np.concatenate(s_parts) if s_parts else np.zeros(0, np.int64)
        self.paper = np.concatenate(p_parts) if p_parts else np.zeros(0, np.int64)
        self.ptr = np.searchsorted(self.q, np.arange(nq + 1))

    def score_of(self, qid: int, i: int) -> int | None:
        """The micro-score of paper i for query qid, or None if it does not match."""
        a, b = int(self.ptr[qid]), int(self.ptr[qid + 1])
        hits = np.flatnonzero(self.paper[a:b] == i)
        return int(self.micro[a + hits[0]]) if len(hits) else None


class MatchList(Sequence[Match]):
    """One subscriber's matches, best first; Match objects (with words and spans) are built
    only for the items read, so a caller that reads the first few pays for those alone."""

    __slots__ = ("_cache", "_micro", "_papers", "_qids", "_res", "_topics")

    def __init__(self, res: Matches, papers: np.ndarray, micro: np.ndarray,
                 topics: Sequence[Topic], qids: tuple[int, ...]) -> None:  # fmt: skip
        self._res = res
        self._papers = papers
        self._micro = micro
        self._topics = topics
        self._qids = qids
        self._cache: dict[int, Match] = {}

    def __len__(self) -> int:
        return len(self._papers)

    def __getitem__(self, k):  # type: ignore[override]
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

    def paper_ids(self) -> list[int]:
        """The matched papers' ids, best first (no Match objects built)."""
        papers = self._res.index.papers
        return [papers[i].id for i in self._papers.tolist()]

    def scores(self) -> list[float]:
        """The matches' scores, best first."""
        return (self._micro / 1e6).tolist()

    def __repr__(self) -> str:
        return f"MatchList({list(self)!r})"


class Matches(Mapping[int, MatchList]):
    """Ranked matches per subscriber id (subscribers with no match are left out)."""

    def __init__(self, index: PaperIndex, batch: _Batch | None, limit: int | None) -> None:
        self.index = index
        self.batch = batch
        self.limit = limit
        self._single: dict[int, tuple[int, Sequence[Topic], tuple[int, ...]]] = {}
        self._multi: dict[int, tuple[int, int, Sequence[Topic], tuple[int, ...]]] = {}
        self.multi_paper = np.zeros(0, np.int64)
        self.multi_micro = np.zeros(0, np.int64)

    def __getitem__(self, sid: int) -> MatchList:
        got = self._single.get(sid)
        batch = self.batch
        if got is not None and batch is not None:
            qid, topics, qids = got
            a, b = int(batch.ptr[qid]), int(batch.ptr[qid + 1])
            if self.limit is not None:
                b = min(b, a + self.limit)
            return MatchList(self, batch.paper[a:b], batch.micro[a:b], topics, qids)
        m = self._multi.get(sid)
        if m is None:
            raise KeyError(sid)
        a, b, topics, qids = m
        return MatchList(self, self.multi_paper[a:b], self.multi_micro[a:b], topics, qids)

    def __iter__(self):
        return itertools.chain(self._single, self._multi)

    def __len__(self) -> int:
        return len(self._single) + len(self._multi)

    def __contains__(self, sid: object) -> bool:
        return sid in self._single or sid in self._multi

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
        leaves = dict.fromkeys(leaf for h in hits for leaf in batch.queries[h[3]].terms)
        terms, ts, as_ = index.highlights(leaves, i)
        return Match(index.papers[i].id, micro / 1e6, names, terms, ts, as_)


def match_profiles(
    index: PaperIndex, profiles: Mapping[int, Sequence[Topic]], *, limit: int | None = None
) -> Matches:
    """Ranked matches per subscriber id (subscribers with no match are left out)."""
    # the batch allocates many small acyclic objects; cyclic GC passes over them cost more
    # than the matching itself, so pause it for the batch
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _match_all(index, profiles, limit)
    finally:
        if was_enabled:
            gc.enable()


def _match_all(
    index: PaperIndex, profiles: Mapping[int, Sequence[Topic]], limit: int | None
) -> Matches:
    qid_of: dict[str, int | None] = {}
    queries: list[Query] = []
    subs: list[tuple[int, list[Topic], tuple[int, ...]]] = []
    for sid, topics in profiles.items():
        used, qids = [], []
        for t in topics:
            qid = qid_of.get(t.query, -1)
            if qid == -1:
                q = _compile(t.query)
                qid = None
                if q is not None:
                    qid = len(queries)
                    queries.append(q)
                qid_of[t.query] = qid
            if qid is not None:
                used.append(t)
                qids.append(qid)
        if qids:
            subs.append((sid, used, tuple(qids)))
    if not index.size or not queries:
        return Matches(index, None, limit)
    batch = _Batch(index, queries)
    res = Matches(index, batch, limit)
    counts = np.diff(batch.ptr)
    multi: list[tuple[int, list[Topic], tuple[int, ...]]] = []
    single = res._single
    for sid, used, qids in subs:
        if len(qids) == 1:
            if counts[qids[0]]:
                single[sid] = (qids[0], used, qids)
        else:
            multi.append((sid, used, qids))
    if multi:
        _merge_multi(res, batch, multi, limit)
    return res


def _merge_multi(res: Matches, batch: _Batch, multi: list, limit: int | None) -> None:
    """Each multi-topic subscriber's papers once, at their best topic's score, ranked."""
    index = res.index
    n = max(1, index.size)
    sub_of = np.fromiter(
        itertools.chain.from_iterable(itertools.repeat(k, len(m[2])) for k, m in enumerate(multi)),
        np.int64,
    )
    qids = np.fromiter(itertools.chain.from_iterable(m[2] for m in multi), np.int64)
    a = batch.ptr[qids]
    cnt = batch.ptr[qids + 1] - a
    idx = _ranges(a, cnt)
    sub = np.repeat(sub_of, cnt)
    paper = batch.paper[idx]
    micro = batch.micro[idx]
    key = sub * n + paper
    order = np.argsort(key, kind="stable")
    key, micro = key[order], micro[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, int)
    best = np.maximum.reduceat(micro, starts) if len(key) else micro
    sub, paper = np.divmod(key[starts], n) if len(key) else (key, key)
    rank_bits = max(1, (index.size - 1).bit_length())
    g, m, r = _rank_sort(sub, best, index._rank_arr[paper], rank_bits)
    res.multi_paper = index._by_rank[r]
    res.multi_micro = m
    bounds = np.searchsorted(g, np.arange(len(multi) + 1)).tolist()
    for k, (sid, used, q) in enumerate(multi):
        lo, hi = bounds[k], bounds[k + 1]
        if limit is not None:
            hi = min(hi, lo + limit)
        if hi > lo:
            res._multi[sid] = (lo, hi, used, q)


def match_query(index: PaperIndex, query_text: str, limit: int | None = None) -> list[Match]:
    """Preview one query against the index, best first; raises QueryError if it is malformed."""
    query = compile_query(query_text)
    out = []
    for score, i in index.ranked(query, limit):
        terms, ts, as_ = index.highlights(query.terms, i)
        out.append(Match(index.papers[i].id, round(score, 6), (), terms, ts, as_))
    return out


# Digests highlight the same few papers for many subscribers, each with their own words:
# tokenising the abstract again for each was the largest cost of a send worker (profiled).
@functools.lru_cache(maxsize=4096)
def _highlight_tokens(text: str) -> tuple[textmod.Token, ...]:
    return tuple(textmod.tokenize(text))


def highlight_spans(
    text: str, queries: Query | str | Iterable[Query | str], field: str | None = None
) -> tuple[tuple[int, int], ...]:
    """Character spans in text of the queries' positive words (field: title or abstract)."""
    if isinstance(queries, (Query, str)):
        queries = (queries,)
    toks = _highlight_tokens(text)
    spans: list[tuple[int, int]] = []
    for q in queries:
        compiled = compile_query(q) if isinstance(q, str) else q
        for leaf in compiled.terms:
            if leaf.field is None or field is None or leaf.field == field:
                spans.extend(_leaf_spans(leaf, toks))
    return _merge_spans(spans)
