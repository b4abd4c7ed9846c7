"""The batch matching engine: every subscriber's topics against a batch of papers at once.

The batch is indexed once (stem -> bitset of papers per field, numbers as cumulative bitsets).
Each distinct query node is evaluated once per index with Python int bitsets and memoised, so
queries that share words, phrases or whole alternatives share the work; there is no loop over
(subscriber, paper) pairs. Scores, matched words and highlight spans are computed only for the
papers actually returned, and memoised per (query, paper) so identical topics share them.

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
        # per-index memos: bounded by this batch's papers and the queries run against it
        self._memo: dict[Node, int] = {}
        self._weights: dict[Node, dict[int, float]] = {}
        self._idf: dict[Node, float] = {}
        self._ranked: dict[tuple[Node, int | None], _Ranked] = {}
        self._tokens: dict[int, tuple[list[textmod.Token], list[textmod.Token]]] = {}
        self._positions: dict[int, tuple[dict[str, list[int]], dict[str, list[int]]]] = {}
        self._bigrams: tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]] = ({}, {})
        self._spans: dict[tuple[Node, int], tuple[list, list]] = {}

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
        if ws is not None:
            return ws
        tt: dict[int, int] = {}
        ta: dict[int, int] = {}
        kind, arg, fld = leaf.kind, leaf.arg, leaf.field
        if kind == "t":
            for slot, acc, name in ((0, tt, "title"), (1, ta, "abstract")):
                if fld in (None, name):
                    idx = self._post[slot].get(arg)  # type: ignore[call-overload]
                    if idx:
                        acc.update(zip(idx, self._tf[slot][arg], strict=True))  # type: ignore[index]
        else:
            for i in bit_indices(self.bits(leaf)):
                ts, as_ = (self._stems if kind == "p" else self._norms)[i]
                for seq, acc, name in ((ts, tt, "title"), (as_, ta, "abstract")):
                    if fld in (None, name):
                        if kind == "p":
                            c = _count_phrase(seq, arg)  # type: ignore[arg-type]
                        else:
                            c = sum(1 for x in seq if x.startswith(arg))  # type: ignore[arg-type]
                        if c:
                            acc[i] = c
        idf = self._idf_of(leaf)
        tlen, alen, at, aa = self._tlen, self._alen, self._avg_t, self._avg_a
        ws = {}
        for i in tt.keys() | ta.keys():
            tf = TITLE_WEIGHT * tt.get(i, 0) / (1 - B + B * tlen[i] / at) + ta.get(i, 0) / (
                1 - B + B * alen[i] / aa
            )
            ws[i] = idf * tf * (K1 + 1) / (K1 + tf)
        self._weights[leaf] = ws
        return ws

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


def _single_topic(index: PaperIndex, topic: Topic, limit: int | None) -> list[Match]:
    query = _compile(topic.query)
    if query is None:
        return []
    names = (topic.name,)
    papers = index.papers
    out = []
    for score, i in index.ranked(query, limit):
        terms, ts, as_ = index.highlights(query.terms, i)
        out.append(Match(papers[i].id, round(score, 6), names, terms, ts, as_))
    return out


def _multi_topic(index: PaperIndex, topics: Sequence[Topic], limit: int | None) -> list[Match]:
    compiled = [(t, q) for t in topics if (q := _compile(t.query)) is not None]
    best: dict[int, float] = {}
    for _t, q in compiled:
        for score, i in index.ranked(q, limit):
            if score > best.get(i, -1.0):
                best[i] = score
    rank = index.rank
    chosen = sorted(best, key=lambda i: (-best[i], rank[i]))
    if limit is not None:
        chosen = chosen[:limit]
    out = []
    for i in chosen:
        hits = []
        for pos, (t, q) in enumerate(compiled):
            if index.bits(q.root) >> i & 1:
                hits.append((-index.score(q, i), pos, t.name, q))
        hits.sort(key=lambda h: (h[0], h[1]))
        names = tuple(dict.fromkeys(h[2] for h in hits))
        leaves = dict.fromkeys(leaf for h in hits for leaf in h[3].terms)
        terms, ts, as_ = index.highlights(leaves, i)
        out.append(Match(index.papers[i].id, round(best[i], 6), names, terms, ts, as_))
    return out


def match_profiles(
    index: PaperIndex, profiles: Mapping[int, Sequence[Topic]], *, limit: int | None = None
) -> dict[int, list[Match]]:
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
) -> dict[int, list[Match]]:
    texts = {t.query for topics in profiles.values() for t in topics}
    index.prime_phrases(
        leaf.arg  # type: ignore[misc]
        for text in texts
        if (q := _compile(text)) is not None
        for leaf in _leaves(q.root)
        if leaf.kind == "p"
    )
    cache: dict[object, list[Match]] = {}
    out: dict[int, list[Match]] = {}
    for sid, topics in profiles.items():
        if len(topics) == 1:
            t = topics[0]
            key: object = (t.name, t.query)
            got = cache.get(key)
            if got is None:
                got = cache[key] = _single_topic(index, t, limit)
        elif not topics:
            continue
        else:
            key = tuple((t.name, t.query) for t in topics)
            got = cache.get(key)
            if got is None:
                got = cache[key] = _multi_topic(index, topics, limit)
        if got:
            out[sid] = got.copy()  # identical profiles share work, not mutable lists
    return out


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
