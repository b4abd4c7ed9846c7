"""Feedback on papers: the service behind `digest feedback`, the feedback links and the examples
listed on the manage and admin pages.

A verdict ("like": more like this, "dislike": not for me) belongs to one subscriber, one topic (by
name) and one paper; a new verdict replaces the other. The learned ranker reads them as the
topic's `likes` and `dislikes` (models.Topic), filled whenever topics are loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from digest.errors import NotFoundError, ValidationError
from digest.models import StoredPaper, Subscriber
from digest.store import FeedbackRecord, Store

VERDICT_LABELS: Mapping[str, str] = {"like": "More like this", "dislike": "Not for me"}


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    """What `give_feedback` did: the paper, the topic, the verdict and whether anything changed."""

    paper: StoredPaper
    topic: str
    verdict: str
    undo: bool
    changed: bool

    def summary(self, email: str) -> str:
        """One line for the CLI."""
        title = self.paper.title
        if self.undo:
            done = "removed" if self.changed else "there was no"
            return f"{email}: {done} {self.verdict} of {title!r} under topic {self.topic!r}"
        done = "recorded" if self.changed else "already recorded"
        return f"{email}: {done} {self.verdict} of {title!r} under topic {self.topic!r}"


def find_paper(store: Store, ref: str) -> StoredPaper:
    """The stored paper `ref` names: its id or its exact title; NotFoundError / ValidationError
    (ambiguous: an id of one paper and the title of another) naming it."""
    found = store.papers_by_ref(ref)
    if not found:
        raise NotFoundError(f"no stored paper with id or title {ref!r}")
    if len(found) > 1:
        raise ValidationError(
            f"{ref!r} is ambiguous: the id of {found[0].title!r} and the title of another "
            "paper; give the other paper's id instead"
        )
    return found[0]


def default_topic(store: Store, sub: Subscriber, paper_id: int) -> str:
    """The topic the paper was delivered under, if it still exists, else the first topic."""
    names = [t.name for t in sub.topics]
    if not names:
        raise ValidationError(f"{sub.email} has no topic to give feedback under")
    delivered = store.delivered_topic(sub.id, paper_id)
    return delivered if delivered in names else names[0]


def check_topic(sub: Subscriber, topic: str) -> str:
    """The subscriber's topic of this name (exact, else case-insensitive); ValidationError."""
    names = [t.name for t in sub.topics]
    if topic in names:
        return topic
    folded = {n.casefold(): n for n in names}
    if topic.casefold() in folded:
        return folded[topic.casefold()]
    listed = ", ".join(repr(n) for n in names) or "none"
    raise ValidationError(f"{sub.email} has no topic {topic!r} (topics: {listed})")


def give_feedback(
    store: Store,
    sub: Subscriber,
    paper: StoredPaper,
    verdict: str,
    *,
    topic: str | None = None,
    undo: bool = False,
) -> FeedbackOutcome:
    """Record (or with `undo` remove) a verdict on a paper under a topic (default: the topic
    it was delivered under, else the first)."""
    if verdict not in VERDICT_LABELS:
        raise ValidationError(f"verdict {verdict!r}: must be like or dislike")
    name = check_topic(sub, topic) if topic is not None else default_topic(store, sub, paper.id)
    if undo:
        changed = store.verdict_of(sub.id, name, paper.id) == verdict and store.remove_feedback(
            sub.id, name, paper.id
        )
    else:
        changed = store.record_feedback(sub.id, name, paper.id, verdict)
    return FeedbackOutcome(paper, name, verdict, undo, changed)


def examples_by_topic(store: Store, sub: Subscriber) -> dict[str, list[FeedbackRecord]]:
    """Each of the subscriber's topics (in order) with its verdicts, by title."""
    found: dict[str, list[FeedbackRecord]] = {t.name: [] for t in sub.topics}
    for record in store.examples_of(sub.id):
        if record.topic in found:
            found[record.topic].append(record)
    return found


def topics_json(store: Store, sub: Subscriber) -> list[dict[str, Any]]:
    """The subscriber's topics as CONTRACT.md shows them: name, query, likes and dislikes
    (lists of paper titles, by title)."""
    titles: dict[int, str] = {}
    ids = {i for t in sub.topics for i in (*t.likes, *t.dislikes)}
    if ids:
        titles = {i: p.title for i, p in store.papers_by_ids(ids).items()}
    return [
        {
            "name": t.name,
            "query": t.query,
            "likes": sorted(titles[i] for i in t.likes if i in titles),
            "dislikes": sorted(titles[i] for i in t.dislikes if i in titles),
        }
        for t in sub.topics
    ]
