"""Dumps and papers on SQLite and PostgreSQL: paper identity, upserts, upvote history, time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import StoreError
from digest.models import Paper, ParseResult, paper_key
from digest.store import Store

T0 = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


def result(*found: Paper) -> ParseResult:
    return ParseResult(papers=tuple(found), layout="test")


def sha(n: int) -> str:
    return f"{n:064x}"


# --- timestamps ---------------------------------------------------------------------------------


def test_timestamps_come_back_aware_utc(store: Store) -> None:
    plus2 = datetime(2026, 3, 3, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    store.ingest_dump("a.txt", sha(1), 10, result(Paper("A", "a")), received_at=plus2)
    (paper,) = store.recent_papers(5)
    assert paper.first_seen == plus2
    assert paper.first_seen.tzinfo == UTC
    assert paper.first_seen.hour == 7
    (dump,) = store.recent_dumps(5)
    assert dump.received_at.tzinfo == UTC and dump.received_at == plus2


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.ingest_dump("a", sha(1), 1, result(Paper("A", "a")), received_at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        store.papers_first_seen_since(datetime(2026, 1, 1))


# --- ingesting dumps ----------------------------------------------------------------------------


def test_ingest_counts_new_papers_and_repeats_are_recorded_no_ops(store: Store) -> None:
    first = store.ingest_dump(
        "a.txt", sha(1), 100, result(Paper("A", "a"), Paper("B", "b")), received_at=T0
    )
    assert (first.status, first.papers, first.new_papers) == ("stored", 2, 2)
    again = store.ingest_dump(
        "copy.txt", sha(1), 100, result(Paper("A", "a"), Paper("B", "b")), received_at=T0
    )
    assert (again.status, again.papers, again.new_papers) == ("duplicate", 0, 0)
    assert again.duplicate_of == first.dump_id
    assert store.count_papers() == 2
    assert [(d.name, d.status) for d in store.recent_dumps(10)] == [
        ("copy.txt", "duplicate"),
        ("a.txt", "stored"),
    ]
    assert store.dump_by_sha256(sha(1)).id == first.dump_id  # the stored one wins
    assert store.dump_by_sha256(sha(2)) is None


def test_identity_folds_latex_markup_and_keeps_the_first_title(store: Store) -> None:
    latex = (
        "S$^{2}$FT: Efficient, Scalable and Generalizable LLM Fine-tuning by Structured Sparsity"
    )
    plain = "S^{2}FT: Efficient, Scalable and Generalizable LLM Fine-tuning by Structured Sparsity"
    assert paper_key(latex) == paper_key(plain)
    store.ingest_dump("003", sha(3), 1, result(Paper(latex, "x")), received_at=T0)
    out = store.ingest_dump(
        "002", sha(2), 1, result(Paper(plain, "x")), received_at=T0 + timedelta(days=1)
    )
    assert out.new_papers == 0
    assert store.count_papers() == 1
    (stored,) = store.recent_papers(5)
    assert stored.title == latex and stored.key == paper_key(plain)
    assert store.paper_by_key(paper_key(plain)) == stored


def test_seen_again_keeps_first_seen_updates_facts_and_keeps_upvote_history(store: Store) -> None:
    t1, t2, t3 = T0, T0 + timedelta(days=1), T0 + timedelta(days=2)
    first = store.ingest_dump(
        "d1", sha(1), 1, result(Paper("P", "p", upvotes=3), Paper("Q", "q")), received_at=t1
    )
    store.ingest_dump(
        "d2",
        sha(2),
        1,
        result(Paper("p", "p", authors=5, organization="Acme", organization_id="acme")),
        received_at=t2,
    )
    store.ingest_dump(
        "d3",
        sha(3),
        1,
        result(Paper("P", "p", upvotes=7, published=date(2026, 3, 1)), Paper("R", "r")),
        received_at=t3,
    )
    p = store.paper_by_key(paper_key("P"))
    assert p.first_seen == t1
    assert (p.upvotes, p.authors, p.organization, p.organization_id) == (7, 5, "Acme", "acme")
    assert p.published == date(2026, 3, 1)
    history = store.upvote_history(p.id)
    assert [(h.dump_name, h.upvotes, h.received_at) for h in history] == [
        ("d1", 3, t1),
        ("d2", None, t2),
        ("d3", 7, t3),
    ]
    assert history[0].dump_id == first.dump_id
    assert [x.title for x in store.papers_first_seen_since(t2)] == ["R"]
    assert [x.title for x in store.papers_first_seen_since(t1)] == ["P", "Q", "R"]
    assert [x.title for x in store.recent_papers(2)] == ["R", "Q"]
    assert [d.new_papers for d in store.recent_dumps(3)] == [1, 0, 2]


def test_a_key_twice_in_one_dump_is_one_paper_with_the_later_facts(store: Store) -> None:
    out = store.ingest_dump(
        "d",
        sha(1),
        1,
        result(Paper("Same Title", "a", upvotes=1), Paper("same  title!", "b", upvotes=4)),
        received_at=T0,
    )
    assert (out.papers, out.new_papers) == (1, 1)
    (p,) = store.recent_papers(5)
    assert (p.title, p.abstract, p.upvotes) == ("Same Title", "a", 4)
    assert [h.upvotes for h in store.upvote_history(p.id)] == [4]


def test_a_failing_ingest_stores_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Store._upsert_papers

    def half_then_boom(self: Store, *args: object, **kwargs: object) -> int:
        real(self, *args, **kwargs)
        raise RuntimeError("crash after the papers were written")

    monkeypatch.setattr(Store, "_upsert_papers", half_then_boom)
    with pytest.raises(RuntimeError):
        store.ingest_dump("d", sha(1), 1, result(Paper("A", "a")), received_at=T0)
    assert store.count_papers() == 0
    assert store.recent_dumps(5) == []
    monkeypatch.setattr(Store, "_upsert_papers", real)
    assert store.ingest_dump("d", sha(1), 1, result(Paper("A", "a")), received_at=T0).new_papers


def test_failed_dumps_are_recorded_and_do_not_block_the_content_later(store: Store) -> None:
    fid = store.record_failed_dump("bad.txt", sha(9), 5, "bad.txt:3: no paper", T0)
    (row,) = store.recent_dumps(5)
    assert (row.id, row.status, row.error, row.papers) == (fid, "failed", "bad.txt:3: no paper", 0)
    assert store.dump_by_sha256(sha(9)).status == "failed"
    out = store.ingest_dump("bad.txt", sha(9), 5, result(Paper("A", "a")), received_at=T0)
    assert out.status == "stored"
    assert store.dump_by_sha256(sha(9)).status == "stored"


def test_record_duplicate_needs_a_stored_dump(store: Store) -> None:
    with pytest.raises(StoreError, match="no stored dump"):
        store.record_duplicate_dump("x", sha(5), 1, T0)
    store.ingest_dump("a", sha(5), 1, result(Paper("A", "a")), received_at=T0)
    assert store.record_duplicate_dump("b", sha(5), 1, T0).status == "duplicate"


def test_bulk_dump_and_papers_by_ids(store: Store) -> None:
    many = [Paper(f"Paper number {i}", f"abstract {i}", upvotes=i) for i in range(1200)]
    out = store.ingest_dump("big", sha(1), 1, result(*many), received_at=T0)
    assert (out.papers, out.new_papers) == (1200, 1200)
    more = [Paper(f"Paper number {i}", "x", upvotes=i + 1) for i in range(600, 1800)]
    out = store.ingest_dump("big2", sha(2), 1, result(*more), received_at=T0 + timedelta(hours=1))
    assert (out.papers, out.new_papers) == (1200, 600)
    assert store.count_papers() == 1800
    ids = [p.id for p in store.recent_papers(2000)]
    found = store.papers_by_ids([*ids, 10**9])
    assert set(found) == set(ids)
    by_title = {p.title: p for p in found.values()}
    assert by_title["Paper number 700"].upvotes == 701
    assert by_title["Paper number 700"].abstract == "abstract 700"
    assert by_title["Paper number 5"].upvotes == 5


def test_shared_dumps_any_order_twice_store_361_papers(
    store: Store, shared_dumps: list[Path]
) -> None:
    from digest.parse import parse_file

    parsed = [(f, parse_file(f)) for f in shared_dumps]
    for pass_no, order in enumerate((parsed[::-1], parsed[1:] + parsed[:1])):
        for i, (f, res) in enumerate(order):
            out = store.ingest_dump(
                f.name, sha(100 + shared_dumps.index(f)), f.stat().st_size, res,
                received_at=T0 + timedelta(hours=10 * pass_no + i),
            )  # fmt: skip
            assert out.status == ("stored" if pass_no == 0 else "duplicate")
        assert store.count_papers() == 361
    stored = [d for d in store.recent_dumps(20) if d.status == "stored"]
    assert sum(d.new_papers for d in stored) == 361
    assert sorted(d.papers for d in stored) == [37, 42, 117, 219]


# --- property: the store agrees with a dictionary model ----------------------------------------

titles = st.sampled_from(
    ["Alpha", "alpha!", "Beta", "GAMMA ray", "Gamma-Ray", "Δelta", "S$^{2}$FT"]
)
papers_st = st.builds(
    lambda t, u: Paper(t, "abstract", upvotes=u), titles, st.none() | st.integers(0, 500)
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(papers_st, min_size=1, max_size=6), min_size=1, max_size=5))
def test_property_store_matches_a_simple_model(dumps_in: list[list[Paper]]) -> None:
    store = Store.open("sqlite:///:memory:")
    try:
        model: dict[str, dict[str, object]] = {}
        for i, found in enumerate(dumps_in):
            at = T0 + timedelta(minutes=i)
            store.ingest_dump(f"d{i}", sha(i), 1, result(*found), received_at=at)
            for p in found:
                entry = model.setdefault(p.key, {"first_seen": at, "title": p.title, "up": None})
                if p.upvotes is not None:
                    entry["up"] = p.upvotes
        stored = {p.key: p for p in store.recent_papers(1000)}
        assert set(stored) == set(model)
        for key, entry in model.items():
            assert stored[key].first_seen == entry["first_seen"]
            assert stored[key].title == entry["title"]
            assert stored[key].upvotes == entry["up"]
    finally:
        store.close()


def test_every_paper_fact_is_a_column_kept_and_read_back(store: Store) -> None:
    """A field added to models.Paper and StoredPaper needs only its column in store/papers.py."""
    from dataclasses import fields

    from digest.models import StoredPaper
    from digest.store import papers

    facts = [f.name for f in fields(Paper) if f.name not in ("title", "abstract", "line")]
    assert set(facts) <= {f.name for f in fields(StoredPaper)} <= set(papers.c.keys())
    full = Paper("T", "t", authors=3, organization="Org", organization_id="org",
                 published=date(2026, 3, 1), upvotes=9)  # fmt: skip
    store.ingest_dump("d1", sha(1), 1, result(full), received_at=T0)
    # later known facts replace stored ones; unknown ones (None, or "" within a dump) do not
    later = Paper("T", "", organization="Org2", authors=4)
    blank = Paper("t!", "x", organization="", upvotes=None)
    store.ingest_dump("d2", sha(2), 1, result(later, blank), received_at=T0)
    got = store.paper_by_key(full.key)
    assert got is not None
    assert {f: getattr(got, f) for f in facts} == {
        "authors": 4, "organization": "Org2", "organization_id": "org",
        "published": date(2026, 3, 1), "upvotes": 9,
    }  # fmt: skip
