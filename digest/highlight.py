"""Where query words occur in a text: character spans for highlighting.

Kept apart from the matching engine (numpy, numba) so that a send worker, which highlights
recorded terms but never matches, does not load it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from digest import text as textmod
from digest.query import Node, Query, compile_query


def merge_spans(spans: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Overlapping or touching spans joined, in order."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return tuple(out)


def bounds(
    spans: Iterable[tuple[int, int]], length: int, limit: int | None = None
) -> list[tuple[int, int, bool]]:
    """[0, length) cut at the spans: (start, end, highlighted) pieces in order, none empty.

    Spans are clipped to [0, limit] (default: length), sorted, and overlapping or touching ones
    joined: the one way highlight spans become pieces, for every output (`segments` for text,
    digest.render for the email's pre-escaped HTML, which maps the offsets itself).
    """
    end = length if limit is None else max(0, min(limit, length))
    out: list[tuple[int, int, bool]] = []
    pos = previous = 0
    for start, stop in spans:
        if start < previous or stop <= start:
            # Unsorted, overlapping, touching or empty: not what the matcher gives, so clip and
            # merge them first (the merged spans take this loop's straight path).
            merged = merge_spans((max(s, 0), min(e, end)) for s, e in spans if s < e)
            return bounds([(s, e) for s, e in merged if s < e], length, end)
        previous = stop
        if start >= end:
            continue  # past the limit
        if stop > end:
            stop = end
        if start > pos or not out:
            if start > pos:
                out.append((pos, start, False))
            out.append((start, stop, True))
        else:  # touches the previous span (start == pos): one highlight
            out[-1] = (out[-1][0], stop, True)
        pos = stop
    if pos < length:
        out.append((pos, length, False))
    return out


def segments(
    text: str, spans: Iterable[tuple[int, int]], limit: int | None = None
) -> list[tuple[str, bool]]:
    """Text cut into (piece, highlighted) parts; formatters (HTML, terminal, web) escape each."""
    return [(text[s:e], hit) for s, e, hit in bounds(spans, len(text), limit)]


def leaf_spans(leaf: Node, toks: Sequence[textmod.Token]) -> list[tuple[int, int]]:
    """Character spans in one field's tokens where a word/phrase/prefix leaf occurs."""
    kind = leaf.kind
    if kind == "t":
        return [(t.start, t.end) for t in toks if t.stem == leaf.word]
    if kind == "x":
        return [(t.start, t.end) for t in toks if t.norm.startswith(leaf.word)]
    phrase = leaf.words
    n = len(phrase)
    stems = [t.stem for t in toks]
    return [
        (toks[p].start, toks[p + n - 1].end)
        for p in range(len(stems) - n + 1)
        if stems[p] == phrase[0] and tuple(stems[p : p + n]) == phrase
    ]


def positions(toks: Sequence[textmod.Token]) -> dict[str, list[int]]:
    """Where each stem occurs among the tokens (token indices, ascending)."""
    out: dict[str, list[int]] = {}
    for k, t in enumerate(toks):
        lst = out.get(t.stem)
        if lst is None:
            out[t.stem] = [k]
        else:
            lst.append(k)
    return out


def indexed_spans(
    leaf: Node, toks: Sequence[textmod.Token], where: dict[str, list[int]]
) -> list[tuple[int, int]]:
    """leaf_spans, with a word or phrase found through the stems' positions, not a scan."""
    if leaf.kind == "t":
        return [(toks[k].start, toks[k].end) for k in where.get(leaf.word, ())]
    if leaf.kind == "p" and leaf.words[0] not in where:
        return []
    return leaf_spans(leaf, toks)


# Digests highlight the same few papers for many subscribers, each with their own words:
# tokenising the abstract again for each was the largest cost of a send worker (profiled), and
# then scanning its tokens once per word (so the stems' positions are kept with them).
@functools.lru_cache(maxsize=4096)
def _indexed(text: str) -> tuple[tuple[textmod.Token, ...], dict[str, list[int]]]:
    toks = tuple(textmod.tokenize(text))
    return toks, positions(toks)


def highlight_spans(
    text: str, queries: Query | str | Iterable[Query | str], field: str | None = None
) -> tuple[tuple[int, int], ...]:
    """Character spans in text of the queries' positive words (field: title or abstract)."""
    if isinstance(queries, (Query, str)):
        queries = (queries,)
    toks, where = _indexed(text)
    spans: list[tuple[int, int]] = []
    for q in queries:
        if isinstance(q, str) and not q.strip():
            continue  # a topic of examples alone has no words to highlight
        compiled = compile_query(q) if isinstance(q, str) else q
        for leaf in compiled.terms:
            if leaf.field is None or field is None or leaf.field == field:
                spans.extend(indexed_spans(leaf, toks, where))
    return merge_spans(spans)
