"""Hand-written digests for the email tests: small, deterministic, with optional hostile text."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from digest.config import Settings, build_settings
from digest.models import Digest, DigestItem, Match, StoredPaper, Subscriber, Topic

ABSTRACT = (
    "We study sparse attention for long-context inference. Our method reduces latency by 2.5x "
    "on standard benchmarks, e.g. LongBench and RULER. Speculative decoding further cuts the "
    "cost of generation while keeping quality. We also analyse quantization effects on the "
    "draft model, finding that 4-bit drafts are sufficient. Experiments on 7B and 70B models "
    "confirm the results across many tasks and settings. Code and models are released."
)
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> ]]> javascript:alert(3)'


def email_settings(**sections: dict[str, Any]) -> Settings:
    """Settings with deterministic site values, overridable per section."""
    data: dict[str, dict[str, Any]] = {
        "site": {"title": "Daily Papers Digest", "base_url": "https://digest.example.org"},
        "mail": {"from_addr": "Daily Papers <digest@example.org>"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return build_settings(data)


def make_subscriber(
    name: str = "Ada Lovelace", email: str = "ada@example.org", topics: tuple[str, ...] = ()
) -> Subscriber:
    """An active daily subscriber with the given topic names."""
    names = topics or ("Sparse attention", "Speculative decoding", "Quantization")
    return Subscriber(
        id=7,
        email=email,
        name=name,
        status="active",
        cadence="daily",
        time="07:00",
        tz="Europe/Paris",
        weekday=0,
        created_at=datetime(2025, 11, 1, tzinfo=UTC),
        token="tok-ada-123",
        topics=tuple(Topic(n, n.lower()) for n in names),
    )


def make_paper(pid: int, title: str, abstract: str = ABSTRACT, **facts: Any) -> StoredPaper:
    """A stored paper with optional facts (organization, authors, published, upvotes)."""
    return StoredPaper(
        id=pid,
        key=f"key{pid}",
        title=title,
        abstract=abstract,
        first_seen=datetime(2025, 11, 24, tzinfo=UTC),
        **facts,
    )


def spans_of(text: str, *words: str) -> tuple[tuple[int, int], ...]:
    """The character spans of each word's first occurrence (case-insensitive)."""
    low = text.lower()
    out = []
    for w in words:
        i = low.find(w.lower())
        if i >= 0:
            out.append((i, i + len(w)))
    return tuple(out)


def make_digest(
    papers: list[tuple[StoredPaper, tuple[str, ...], tuple[str, ...]]] | None = None,
    subscriber: Subscriber | None = None,
    digest_id: int = 42,
) -> Digest:
    """A digest of (paper, topics, matched words); spans computed from the words."""
    if papers is None:
        papers = default_papers()
    items = []
    for rank, (paper, topics, words) in enumerate(papers):
        match = Match(
            paper_id=paper.id,
            score=100.0 - rank,
            topics=topics,
            terms=words,
            title_spans=spans_of(paper.title, *words),
            abstract_spans=spans_of(paper.abstract, *words),
        )
        items.append(DigestItem(paper, match))
    return Digest(
        id=digest_id,
        subscriber=subscriber or make_subscriber(),
        created_at=datetime(2025, 11, 24, 6, 0, tzinfo=UTC),
        message_id=f"<digest-{digest_id}-0123456789abcdef@example.org>",
        items=items,
    )


def default_papers() -> list[tuple[StoredPaper, tuple[str, ...], tuple[str, ...]]]:
    """Four papers over three topics, facts present and absent."""
    return [
        (
            make_paper(
                1,
                "Nemotron-Flash: Towards Latency-Optimal Hybrid Small Language Models",
                organization="NVIDIA",
                organization_id="nvidia",
                published=date(2025, 11, 24),
                upvotes=2,
            ),
            ("Sparse attention", "Quantization"),
            ("sparse", "attention", "latency"),
        ),
        (
            make_paper(
                2,
                "Speculative Decoding with Tiny Drafts",
                authors=5,
                published=date(2025, 11, 23),
                upvotes=41,
            ),
            ("Speculative decoding",),
            ("speculative", "decoding"),
        ),
        (
            make_paper(3, "Sparse Mixture of Attention Heads at Scale", authors=1),
            ("Sparse attention",),
            ("sparse", "attention"),
        ),
        (
            make_paper(4, "Quantization-Aware Draft Models: Ünïcödé and Ω tests", upvotes=1),
            ("Quantization", "Speculative decoding"),
            ("quantization", "draft"),
        ),
    ]
