"""The admin's live preview: backtest an edited profile on recent papers against the saved one."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from digest import highlight
from digest.errors import QueryError
from digest.match import PaperIndex
from digest.models import Match, StoredPaper, Topic
from digest.query import compile_query, query_warnings
from digest.rank import Learner, explain, rank_profiles
from digest.subscribers import coverage_note
from digest.text import clean_text, one_line
from digest.urls import paper_url

MAX_TOPICS = 20
MAX_QUERY_CHARS = 2_000
MAX_ROWS = 60  # per change kind shown; the counts are always complete
COVERAGE_PAPERS = 2_000  # a topic's coverage counts against as many recent papers as the CLI's


@dataclass(frozen=True, slots=True)
class TopicError:
    """A topic's query error, with the line and caret position for showing it at the column."""

    index: int
    message: str
    column: int | None = None
    hint: str = ""
    line_text: str = ""
    caret: int = 0  # 0-based offset of the caret within line_text
    line_no: int = 1


@dataclass(frozen=True, slots=True)
class PreviewRow:
    """One paper of the preview: whether the edit adds, removes or keeps it, and highlights."""

    paper: StoredPaper
    change: str  # "added", "removed" or "kept"
    topics: tuple[str, ...]
    title_parts: tuple[tuple[str, bool], ...]
    terms: tuple[str, ...]
    url: str = ""  # where the paper links (urls.paper_url, as in emails and feeds)
    # Why, topic by topic: (topic, its words field by field and the conditions that passed).
    why: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class TopicDiff:
    """One topic's own effect: the papers it gains and loses, and how many it keeps."""

    name: str
    change: str  # "new", "deleted", "edited" or "unchanged" (its query, by topic name)
    before: int  # papers the saved topic matches
    after: int  # papers the edited topic matches
    gained: list[PreviewRow] = field(default_factory=list)
    lost: list[PreviewRow] = field(default_factory=list)
    gained_count: int = 0
    lost_count: int = 0
    unchanged: int = 0  # matched before and after: a count, never listed


@dataclass(frozen=True, slots=True)
class Move:
    """A paper the edit moves between topics: it leaves `left` and joins `joined`."""

    row: PreviewRow
    left: tuple[str, ...]
    joined: tuple[str, ...]


@dataclass(slots=True)
class Preview:
    """The backtest of a profile edit over the papers of the last dumps."""

    papers: int
    dumps: int
    added: list[PreviewRow] = field(default_factory=list)
    removed: list[PreviewRow] = field(default_factory=list)
    kept: list[PreviewRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    topics: list[TopicDiff] = field(default_factory=list)
    moved: list[Move] = field(default_factory=list)
    max_papers: int | None = None  # mail.max_papers, when the caller knows it

    @property
    def per_digest(self) -> float:
        """Papers the edited profile matches per dump: what a daily digest would expect."""
        return (self.counts.get("added", 0) + self.counts.get("kept", 0)) / max(1, self.dumps)

    @property
    def over_limit(self) -> bool:
        """True when the expected papers per digest exceed mail.max_papers (the rest are cut)."""
        return self.max_papers is not None and self.per_digest > self.max_papers


def parse_topic_rows(
    names: Sequence[str], queries: Sequence[str]
) -> tuple[list[Topic], list[TopicError]]:
    """Topics from the form's rows (blank rows dropped), and every query error found."""
    topics: list[Topic] = []
    errors: list[TopicError] = []
    for index, name, query in _form_rows(names, queries):
        if not query:  # a named topic of examples alone (its likes); it matches no words
            topics.append(Topic(name, ""))
            continue
        if len(query) > MAX_QUERY_CHARS:
            errors.append(TopicError(index, f"query longer than {MAX_QUERY_CHARS} characters"))
            continue
        try:
            compile_query(query)
        except QueryError as exc:
            errors.append(_located(index, exc, query))
            continue
        topics.append(Topic(name or f"Topic {len(topics) + 1}", query))
    return topics, errors


def _form_rows(names: Sequence[str], queries: Sequence[str]) -> Iterator[tuple[int, str, str]]:
    """(row index, name, query) of the form's non-blank rows, under the form's text policy."""
    rows = list(zip(names, queries, strict=False))[:MAX_TOPICS]
    for index, (raw_name, raw_query) in enumerate(rows):
        # The text policy on form input (subscribers.check_topics applies it again when saving).
        name = one_line(clean_text(raw_name))[:100]
        query = clean_text(raw_query, multiline=True).strip()
        if name or query:
            yield index, name, query


class CoverageIndex:
    """The most recent stored papers, indexed once per change of the stored papers: what a
    topic's "matches none / almost all of the stored papers" warning counts against."""

    def __init__(self, limit: int = COVERAGE_PAPERS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._index: PaperIndex | None = None

    def get(self, store: Any) -> PaperIndex | None:
        """The index of the stored papers (None below the 20 papers a coverage needs)."""
        # Two cheap counts decide whether the papers changed; a preview typed key by key must
        # not read and index 2,000 papers per request.
        key = (store.max_paper_id(), store.count_papers())
        with self._lock:
            if key == self._key:
                return self._index
        papers = store.recent_papers(limit=self.limit)
        index = PaperIndex(papers) if len(papers) >= 20 else None
        with self._lock:
            self._key, self._index = key, index
        return index


def query_notes(query: str, index: PaperIndex | None) -> list[str]:
    """The warnings of one valid query: probable mistakes (query.query_warnings), and matching
    none or almost all of the indexed stored papers (query.coverage_warning)."""
    if not query.strip():
        return []
    notes = query_warnings(query)
    if index is not None and (cover := coverage_note(query, index)) is not None:
        notes.append(cover)
    return notes


def row_warnings(
    names: Sequence[str], queries: Sequence[str], index: PaperIndex | None
) -> dict[int, list[str]]:
    """The warnings of the form's valid topic rows, by row index (rows with none left out)."""
    found: dict[int, list[str]] = {}
    for i, _, query in _form_rows(names, queries):
        if not query or len(query) > MAX_QUERY_CHARS:
            continue
        try:
            notes = query_notes(query, index)
        except QueryError:  # an error of the row, shown as such
            continue
        if notes:
            found[i] = notes
    return found


def _located(index: int, exc: QueryError, query: str) -> TopicError:
    pos = max(0, min(len(query), exc.column - 1))
    start = query.rfind("\n", 0, pos) + 1
    end = query.find("\n", pos)
    line = query[start : end if end != -1 else len(query)]
    message = str(exc).removeprefix(f"column {exc.column}: ")
    if exc.hint:
        message = message.removesuffix(f" (hint: {exc.hint})")
    return TopicError(
        index=index,
        message=message,
        column=exc.column,
        hint=exc.hint,
        line_text=line,
        caret=pos - start,
        line_no=query.count("\n", 0, start) + 1,
    )


def backtest(
    papers: Sequence[StoredPaper],
    saved: Sequence[Topic],
    edited: Sequence[Topic],
    *,
    dumps: int,
    max_papers: int | None = None,
    known: Mapping[int, StoredPaper] | None = None,
    background: Sequence[StoredPaper] | None = None,
) -> Preview:
    """What `edited` matches among `papers`, split into added / removed / kept versus `saved`,
    and topic by topic (gained, lost, moved between topics). Topics with examples are ranked
    as a digest ranks them, suggestions included (`known`: their example papers;
    `background`: the stored papers their models train against, as the queue stage reads
    them; without it, `papers`)."""
    preview = Preview(papers=len(papers), dumps=dumps, max_papers=max_papers)
    kinds: dict[str, list[tuple[Match, Why]]] = {"added": [], "removed": [], "kept": []}
    if papers:
        index = PaperIndex(list(papers))
        edited = keep_examples(saved, edited)
        ranked = _Ranker(index, [*saved, *edited], known, background)
        found = ranked({0: list(saved), 1: list(edited)})
        before = {m.paper_id: m for m in found.get(0, [])}
        after = {m.paper_id: m for m in found.get(1, [])}
        by_id = {p.id: p for p in papers}
        why_saved, why_edited = Why(index, saved), Why(index, edited)
        for match in found.get(1, []):
            kinds["kept" if match.paper_id in before else "added"].append((match, why_edited))
        for match in found.get(0, []):
            if match.paper_id not in after:
                kinds["removed"].append((match, why_saved))
        for kind, matches in kinds.items():
            # Only the rows shown are explained: a broad profile matches thousands.
            rows = [_row(by_id[m.paper_id], m, kind, why) for m, why in matches[:MAX_ROWS]]
            setattr(preview, kind, rows)
        preview.topics, preview.moved = _topic_diffs(ranked, by_id, saved, edited)
    preview.counts = {kind: len(matches) for kind, matches in kinds.items()}
    return preview


def keep_examples(saved: Sequence[Topic], edited: Sequence[Topic]) -> list[Topic]:
    """The edited topics with the examples of the saved topic of the same name: a form holds
    names and queries only, and saving keeps a topic's feedback under its name."""
    old = {t.name: t for t in saved}
    return [
        replace(t, likes=old[t.name].likes, dislikes=old[t.name].dislikes)
        if not t.has_examples and t.name in old
        else t
        for t in edited
    ]


class _Ranker:
    """Profiles ranked over one index as a digest ranks them: keywords alone, or fused with
    the topics' models when some topic has examples (one Learner for the whole preview)."""

    def __init__(
        self,
        index: PaperIndex,
        topics: Sequence[Topic],
        known: Mapping[int, StoredPaper] | None,
        background: Sequence[StoredPaper] | None,
    ) -> None:
        self.index = index
        self.learner = None
        ids = {i for t in topics for i in (*t.likes, *t.dislikes)}
        if ids:
            examples = {p.id: p for p in index.papers if p.id in ids}
            examples.update(known or {})
            self.learner = Learner(
                index.papers if background is None else background, examples, index
            )

    def __call__(self, profiles: Mapping[int, Sequence[Topic]]) -> Mapping[int, Sequence[Match]]:
        """Each profile's ranked matches (a paper a topic likes or dislikes is left out)."""
        return rank_profiles(self.index, profiles, learner=self.learner)


class Why:
    """Why a paper matched, topic by topic, for the topics of one profile (rank.explain)."""

    def __init__(self, index: PaperIndex, topics: Sequence[Topic]) -> None:
        self.index = index
        self.queries = {t.name: t.query for t in topics if t.query.strip()}
        self._pos: dict[int, int] | None = None

    def __call__(self, match: Match) -> tuple[tuple[str, str], ...]:
        """(topic, words field by field and conditions passed) for each topic of the match."""
        if self._pos is None:
            self._pos = {p.id: k for k, p in enumerate(self.index.papers)}
        i = self._pos[match.paper_id]
        out = []
        for name in match.topics:
            query = self.queries.get(name)
            if not match.terms and match.why.startswith("suggested"):
                out.append((name, match.why))  # the model's: the liked paper it is most like
            elif query is not None and (text := explain(self.index, query, i)):
                out.append((name, text))
        return tuple(out)


def _topic_diffs(
    ranked: _Ranker,
    by_id: dict[int, StoredPaper],
    saved: Sequence[Topic],
    edited: Sequence[Topic],
) -> tuple[list[TopicDiff], list[Move]]:
    """Each topic matched alone, before and after: a profile-level diff hides an edit whose
    papers another topic still matches (the paper stays "kept" though the edited topic lost it)."""
    old = {t.name: t for t in saved}
    new = {t.name: t for t in edited}
    names = [t.name for t in edited] + [n for n in old if n not in new]
    profiles: dict[int, list[Topic]] = {}
    for i, name in enumerate(names):
        if name in old:
            profiles[2 * i] = [old[name]]
        if name in new:
            profiles[2 * i + 1] = [new[name]]
    index = ranked.index
    found = ranked(profiles)
    why_old, why_new = Why(index, list(old.values())), Why(index, list(new.values()))
    diffs: list[TopicDiff] = []
    left: dict[int, list[str]] = {}
    joined: dict[int, list[str]] = {}
    matches: dict[int, Match] = {}
    for i, name in enumerate(names):
        before = {m.paper_id: m for m in found.get(2 * i, [])}
        after = {m.paper_id: m for m in found.get(2 * i + 1, [])}
        if name not in old:
            change = "new"
        elif name not in new:
            change = "deleted"
        else:
            change = "unchanged" if old[name].query == new[name].query else "edited"
        diff = TopicDiff(name, change, len(before), len(after))
        for pid, m in after.items():
            if pid not in before:
                diff.gained_count += 1
                joined.setdefault(pid, []).append(name)
                matches.setdefault(pid, m)
                if len(diff.gained) < MAX_ROWS:
                    diff.gained.append(_row(by_id[pid], m, "added", why_new))
        for pid, m in before.items():
            if pid not in after:
                diff.lost_count += 1
                left.setdefault(pid, []).append(name)
                matches.setdefault(pid, m)
                if len(diff.lost) < MAX_ROWS:
                    diff.lost.append(_row(by_id[pid], m, "removed", why_old))
        diff.unchanged = len(before.keys() & after.keys())
        diffs.append(diff)
    moved = [
        Move(_row(by_id[pid], matches[pid], "moved"), tuple(left[pid]), tuple(joined[pid]))
        for pid in sorted(left.keys() & joined.keys())
    ][:MAX_ROWS]
    return diffs, moved


def _row(paper: StoredPaper, match: Match, kind: str, why: Why | None = None) -> PreviewRow:
    return PreviewRow(
        paper=paper,
        change=kind,
        topics=match.topics,
        title_parts=split_spans(paper.title, match.title_spans),
        terms=match.terms,
        url=paper_url(paper.title),
        why=why(match) if why is not None else (),
    )


def split_spans(text: str, spans: Sequence[tuple[int, int]]) -> tuple[tuple[str, bool], ...]:
    """Cut text into (piece, highlighted) parts; the template escapes each piece."""
    return tuple(highlight.segments(text, spans))
