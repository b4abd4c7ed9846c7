"""The subscriber service (digest/subscribers.py) and its store section, SQLite and PostgreSQL."""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import insert

from digest import store as store_mod
from digest import subscribers as subs
from digest.config import Settings, build_settings
from digest.errors import NotFoundError, QueryError, ValidationError
from digest.models import Paper, ParseResult, StatusChange, Topic
from digest.store import Store

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "subscribers"
SAMPLE_CSV = Path(__file__).resolve().parents[1] / "digest" / "samples" / "subscribers.csv"
NOW = datetime(2025, 11, 24, 12, 0, tzinfo=UTC)


@pytest.fixture
def cfg() -> Settings:
    return build_settings(
        {"schedule": {"default_time": "06:15", "default_tz": "Europe/Berlin"}},
        root=Path(tempfile.gettempdir()),
    )


def _ingest(store: Store, titles: list[str], when: datetime = NOW, name: str = "d") -> None:
    papers = tuple(Paper(title=t, abstract=f"About {t.lower()}.") for t in titles)
    store.ingest_dump(name, name.ljust(64, "0"), 10, ParseResult(papers), received_at=when)


def _watermarks(store: Store) -> dict[str, int]:
    """Each active subscriber's paper watermark, as the outbox sees it."""
    return {s.subscriber.email: s.watermark for s in store.subscribers_for_delivery()}


def _add(store: Store, cfg: Settings, email: str, **kw: object) -> object:
    kw.setdefault("topics", [Topic("Speed", "speculative decoding, latency")])
    return subs.add_subscriber(store, cfg, email, now=NOW, **kw)  # type: ignore[arg-type]


# --- single values -------------------------------------------------------------------------------


def test_normalize_email_folds_case_and_domain() -> None:
    assert subs.normalize_email("  Ada.Lovelace@Example.ORG ") == "ada.lovelace@example.org"


@pytest.mark.parametrize(
    "bad",
    ["", "ada", "ada@", "ada@localhost", "a b@example.org", "ada@example.org\r\nBcc: x@y.org"],
)
def test_normalize_email_rejects_with_the_address(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        subs.normalize_email(bad)
    assert repr(bad.strip()) in str(info.value)
    assert info.value.field == "email"


@pytest.mark.parametrize(
    ("text", "want"), [("7:05", "07:05"), ("00:00", "00:00"), ("23:59", "23:59")]
)
def test_check_time_pads(text: str, want: str) -> None:
    assert subs.check_time(text) == want


@pytest.mark.parametrize("bad", ["24:00", "7", "07:60", "7.30", "", "07:00:00", "-1:00"])
def test_check_time_rejects(bad: str) -> None:
    with pytest.raises(ValidationError, match="HH:MM"):
        subs.check_time(bad)


@pytest.mark.parametrize("bad", ["Mars/Base", "", "America", "../etc/passwd", "utc"])
def test_check_tz_rejects(bad: str) -> None:
    with pytest.raises(ValidationError, match="IANA"):
        subs.check_tz(bad)


@pytest.mark.parametrize(
    ("value", "want"), [("mon", 0), ("Sunday", 6), ("fri", 4), ("3", 3), (5, 5), ("TUES", 1)]
)
def test_parse_weekday(value: object, want: int) -> None:
    assert subs.parse_weekday(value) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["monk", "7", "x", 9, -1, "mo"])
def test_parse_weekday_rejects(bad: object) -> None:
    with pytest.raises(ValidationError, match="weekday"):
        subs.parse_weekday(bad)  # type: ignore[arg-type]


def test_topics_round_trip_their_csv_form() -> None:
    topics = (Topic("Speed", 'speculative decoding, "kv cache"'), Topic("Orgs", "org:nvidia"))
    assert subs.parse_topics(subs.format_topics(topics)) == topics


@pytest.mark.parametrize(
    ("topics", "message"),
    [
        ([Topic(" ", "x")], "has no name"),
        ([Topic("A", "x"), Topic("a", "y")], "used twice"),
        ([Topic("A: b", "x")], "':'"),
        ([Topic("A", "x | y")], "'|'"),
    ],
)
def test_check_topics_rejects(topics: list[Topic], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        subs.check_topics(topics)


def test_bad_topic_query_gives_topic_column_and_hint() -> None:
    with pytest.raises(QueryError) as info:
        subs.check_topics([Topic("Fine", "latency"), Topic("Broken", "sparse (attention")])
    err = info.value
    assert isinstance(err, subs.TopicQueryError)
    assert (err.topic, err.index, err.query) == ("Broken", 1, "sparse (attention")
    assert err.column == 8 and err.hint
    assert str(err).startswith("topic 'Broken': column 8:")


# --- add, get, list ----------------------------------------------------------------------------


def test_add_uses_defaults_and_returns_stored_subscriber(store: Store, cfg: Settings) -> None:
    sub = _add(store, cfg, "Ada@Example.org", name=" Ada ")
    assert sub.id > 0
    assert (sub.email, sub.name, sub.status, sub.cadence) == (
        "ada@example.org",
        "Ada",
        "active",
        "daily",
    )
    assert (sub.time, sub.tz, sub.weekday) == ("06:15", "Europe/Berlin", 0)
    assert sub.created_at == NOW and sub.since == NOW
    assert len(sub.token) >= 32
    assert subs.get_subscriber(store, "ADA@example.org ") == sub
    assert subs.subscriber_by_token(store, sub.token) == sub
    assert subs.subscriber_by_token(store, "nope") is None


def test_add_with_backfill_moves_since_back(store: Store, cfg: Settings) -> None:
    sub = _add(store, cfg, "b@example.org", backfill_days=3)
    assert sub.since == NOW - timedelta(days=3)
    with pytest.raises(ValidationError, match="backfill"):
        _add(store, cfg, "c@example.org", backfill_days=-1)


def test_tokens_differ(store: Store, cfg: Settings) -> None:
    tokens = {_add(store, cfg, f"u{i}@example.org").token for i in range(5)}
    assert len(tokens) == 5


def test_duplicate_email_in_any_case_is_refused(store: Store, cfg: Settings) -> None:
    _add(store, cfg, "ada@example.org")
    with pytest.raises(ValidationError, match=r"ada@example\.org: already subscribed"):
        _add(store, cfg, "ADA@example.org")


@pytest.mark.parametrize(
    ("kw", "field", "message"),
    [
        ({"tz": "Mars/Base"}, "tz", "Mars/Base"),
        ({"time": "25:00"}, "time", "25:00"),
        ({"cadence": "hourly"}, "cadence", "hourly"),
        ({"status": "deleted"}, "status", "deleted"),
        ({"name": "two\nlines"}, "name", "one line"),
    ],
)
def test_add_rejects_bad_values_naming_address_and_field(
    store: Store, cfg: Settings, kw: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        _add(store, cfg, "x@example.org", **kw)
    assert info.value.field == field
    assert str(info.value).startswith("x@example.org: ")
    assert message in str(info.value)
    assert subs.count_subscribers(store) == 0


def test_add_rejects_bad_query_with_column(store: Store, cfg: Settings) -> None:
    with pytest.raises(QueryError) as info:
        _add(store, cfg, "x@example.org", topics=[Topic("T", '"unclosed phrase')])
    assert info.value.column == 1
    assert "x@example.org: topic 'T'" in str(info.value)
    assert subs.count_subscribers(store) == 0


def test_max_paper_id_and_watermark(store: Store, cfg: Settings) -> None:
    assert store.max_paper_id() == 0
    _ingest(store, ["One", "Two"])
    top = store.max_paper_id()
    assert top >= 2
    late = _add(store, cfg, "late@example.org")
    back = _add(store, cfg, "back@example.org", backfill_days=1)
    assert _watermarks(store) == {late.email: top, back.email: 0}


def test_list_search_status_pages_and_counts(store: Store, cfg: Settings) -> None:
    for email, name in [
        ("ada@example.org", "Ada Lovelace"),
        ("alan@example.org", "Alan Turing"),
        ("grace@navy.mil", "Grace Hopper"),
        ("under_score@example.org", "U"),
    ]:
        _add(store, cfg, email, name=name)
    subs.set_status(store, "alan@example.org", "paused")
    emails = [s.email for s in subs.list_subscribers(store)]
    assert emails == sorted(emails) and len(emails) == 4
    assert [s.email for s in subs.list_subscribers(store, search="HOPPER")] == ["grace@navy.mil"]
    assert {s.email for s in subs.list_subscribers(store, search="example")} == {
        "ada@example.org",
        "alan@example.org",
        "under_score@example.org",
    }
    # LIKE wildcards in the search are literal characters
    assert [s.email for s in subs.list_subscribers(store, search="_")] == [
        "under_score@example.org"
    ]
    assert [s.email for s in subs.list_subscribers(store, status="paused")] == ["alan@example.org"]
    assert [s.email for s in subs.list_subscribers(store, offset=1, limit=2)] == emails[1:3]
    assert subs.count_subscribers(store, search="example") == 3
    assert subs.count_subscribers(store, status="active") == 3
    counts = subs.status_counts(store)
    assert counts == {"pending": 0, "active": 3, "paused": 1, "unsubscribed": 0, "bouncing": 0}
    with pytest.raises(ValidationError, match="status"):
        subs.list_subscribers(store, status="nonsense")


def test_get_unknown_subscriber(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"no subscriber nobody@example\.org"):
        subs.get_subscriber(store, "Nobody@example.org")


# --- edit, status, remove ------------------------------------------------------------------------


def test_edit_changes_only_given_fields(store: Store, cfg: Settings) -> None:
    before = _add(store, cfg, "ada@example.org", name="Ada", tz="Europe/London")
    after = subs.edit_subscriber(store, cfg, "ada@example.org", cadence="weekly", weekday="fri")
    assert (after.cadence, after.weekday) == ("weekly", 4)
    assert (after.name, after.tz, after.time, after.topics, after.token) == (
        before.name,
        before.tz,
        before.time,
        before.topics,
        before.token,
    )
    new_topics = [Topic("Pruning", "prune*"), Topic("Orgs", "org:nvidia")]
    after = subs.edit_subscriber(store, cfg, "ada@example.org", topics=new_topics)
    assert after.topics == tuple(new_topics)
    after = subs.edit_subscriber(store, cfg, "ada@example.org", new_email="Ada@New.org")
    assert after.email == "ada@new.org" and after.id == before.id
    with pytest.raises(NotFoundError):
        subs.get_subscriber(store, "ada@example.org")


def test_edit_validates_and_keeps_old_values_on_error(store: Store, cfg: Settings) -> None:
    _add(store, cfg, "ada@example.org")
    _add(store, cfg, "bob@example.org")
    with pytest.raises(ValidationError, match="already subscribed"):
        subs.edit_subscriber(store, cfg, "ada@example.org", new_email="BOB@example.org")
    with pytest.raises(QueryError):
        subs.edit_subscriber(store, cfg, "ada@example.org", name="X", topics=[Topic("T", "a OR")])
    with pytest.raises(ValidationError, match="IANA"):
        subs.edit_subscriber(store, cfg, "ada@example.org", tz="Nowhere/City")
    unchanged = subs.get_subscriber(store, "ada@example.org")
    assert unchanged.name == "" and unchanged.tz == "Europe/Berlin"
    with pytest.raises(NotFoundError):
        subs.edit_subscriber(store, cfg, "ghost@example.org", name="x")


def test_pause_resume_unsubscribe(store: Store, cfg: Settings) -> None:
    sub = _add(store, cfg, "ada@example.org")
    assert subs.set_status(store, sub.email, "paused").status == "paused"
    _ingest(store, ["Paper during the pause"])
    assert subs.set_status(store, sub.email, "active", how=StatusChange.ADMIN).status == "active"
    # the papers stored during the pause are not pending after the resume
    assert _watermarks(store) == {sub.email: store.max_paper_id()}
    assert subs.unsubscribe_by_token(store, sub.token, how=StatusChange.LINK) is True
    assert subs.unsubscribe_by_token(store, sub.token, how=StatusChange.LINK) is True  # idempotent
    assert subs.get_subscriber(store, sub.email).status == "unsubscribed"
    assert subs.unsubscribe_by_token(store, "not-a-token", how=StatusChange.LINK) is False
    assert subs.unsubscribe_by_token(store, "", how=StatusChange.LINK) is False
    with pytest.raises(ValidationError):
        subs.set_status(store, sub.email, "gone")
    history = [(e.old_status, e.new_status, e.how) for e in store.subscriber_events(sub.id)]
    assert history == [
        (None, "active", "cli"),
        ("active", "paused", "cli"),
        ("paused", "active", "admin"),
        ("active", "unsubscribed", "link"),
    ]


def _sent_digest(
    store: Store,
    sub_id: int,
    message_id: str,
    sent_at: datetime | None,
    papers: list[tuple[int, str]],
    *,
    kind: str = "email",
    status: str = "sent",
) -> None:
    """Record a digest and its ledger rows directly (the outbox has its own tests)."""
    with store.engine.begin() as conn:
        digest_id = conn.execute(
            insert(store_mod.digests).values(
                subscriber_id=sub_id,
                kind=kind,
                message_id=message_id,
                status=status,
                created_at=sent_at or NOW,
                sent_at=sent_at,
            )
        ).inserted_primary_key[0]
        for paper_id, topic in papers:
            conn.execute(
                insert(store_mod.deliveries).values(
                    subscriber_id=sub_id,
                    paper_id=paper_id,
                    digest_id=digest_id,
                    topic=topic,
                    delivered_at=sent_at or NOW,
                )
            )


def test_history_newest_first_only_sent_email(store: Store, cfg: Settings) -> None:
    _ingest(store, ["Alpha Paper", "Beta Paper", "Gamma Paper", "Delta Paper"])
    ids = {p.title: p.id for p in store.recent_papers(10)}
    sub = _add(store, cfg, "ada@example.org")
    other = _add(store, cfg, "bob@example.org")
    day1, day2 = NOW + timedelta(days=1), NOW + timedelta(days=2)
    _sent_digest(store, sub.id, "<1@x>", day1, [(ids["Alpha Paper"], "Speed")])
    _sent_digest(
        store, sub.id, "<2@x>", day2, [(ids["Beta Paper"], "Speed"), (ids["Gamma Paper"], "Other")]
    )
    _sent_digest(store, sub.id, "<3@x>", None, [(ids["Delta Paper"], "Speed")], status="queued")
    _sent_digest(store, other.id, "<4@x>", day1, [(ids["Alpha Paper"], "Speed")])
    got = subs.history(store, "ADA@example.org")
    assert [e["message_id"] for e in got] == ["<2@x>", "<1@x>"]
    assert got[1] == {
        "message_id": "<1@x>",
        "sent_at": day1.isoformat(),
        "papers": [{"title": "Alpha Paper", "topic": "Speed"}],
    }
    assert sorted(p["title"] for p in got[0]["papers"]) == ["Beta Paper", "Gamma Paper"]
    assert subs.history(store, "bob@example.org")[0]["message_id"] == "<4@x>"
    with pytest.raises(NotFoundError):
        subs.history(store, "ghost@example.org")
    # removing a subscriber takes their digests and ledger along, not other people's
    subs.remove_subscriber(store, "ada@example.org")
    with pytest.raises(NotFoundError):
        subs.get_subscriber(store, "ada@example.org")
    assert len(subs.history(store, "bob@example.org")) == 1
    with pytest.raises(NotFoundError):
        subs.remove_subscriber(store, "ada@example.org")


def test_subscriber_to_json_shape(store: Store, cfg: Settings) -> None:
    sub = _add(store, cfg, "ada@example.org", name="Ada", topics=[Topic("Speed", "latency")])
    data = subs.subscriber_to_json(sub, cfg)
    assert data == {
        "email": "ada@example.org",
        "name": "Ada",
        "status": "active",
        "cadence": "daily",
        "time": "06:15",
        "tz": "Europe/Berlin",
        "topics": [{"name": "Speed", "query": "latency", "likes": [], "dislikes": []}],
        "feed_url": f"http://localhost:8000/feeds/s/{sub.token}.atom",
    }


# --- CSV -----------------------------------------------------------------------------------------


def test_import_sample_then_export_round_trips(store: Store, cfg: Settings, tmp_path: Path) -> None:
    report = subs.import_csv(store, cfg, SAMPLE_CSV)
    assert (report.added, report.updated, report.errors) == (3, 0, [])
    grace = subs.get_subscriber(store, "grace@example.org")
    assert grace.topics[1] == Topic("Retrieval", 'retrieval-augmented, "question answering"')
    assert (grace.cadence, grace.time, grace.tz) == ("weekly", "08:30", "America/New_York")
    subs.set_status(store, "alan@example.org", "paused")
    subs.edit_subscriber(store, cfg, "grace@example.org", weekday="thu", name='Grace "Amazing", H.')

    out = io.StringIO()
    assert subs.export_csv(store, out) == 3
    exported = tmp_path / "export.csv"
    exported.write_text(out.getvalue(), encoding="utf-8")

    fresh = Store.open(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        again = subs.import_csv(fresh, cfg, exported)
        assert (again.added, again.errors) == (3, [])

        def shape(s: Store) -> list[dict[str, object]]:
            return [
                {**subs.subscriber_to_json(x, cfg), "feed_url": None, "weekday": x.weekday}
                for x in subs.list_subscribers(s)
            ]

        assert shape(fresh) == shape(store)
        # importing the same file again changes nothing
        third = subs.import_csv(fresh, cfg, exported)
        assert (third.added, third.updated, third.unchanged) == (0, 0, 3)
    finally:
        fresh.close()


def test_import_reports_each_bad_row_by_line_and_column(store: Store, cfg: Settings) -> None:
    report = subs.import_csv(store, cfg, FIXTURES / "bad_rows.csv")
    found = {(e.line, e.column) for e in report.errors}
    assert found == {
        (3, "email"),  # not-an-address
        (4, "tz"),  # Mars/Base
        (5, "topics"),  # unbalanced parenthesis
        (6, "email"),  # good@example.org again
        (7, "-"),  # too few cells
        (8, "time"),  # 25:00
        (9, "name"),  # a two-line name (the record spans lines 9-10)
    }
    by_line = {e.line: e for e in report.errors}
    assert "Mars/Base" in str(by_line[4])
    # each row named by file, line and the address it holds, then the column at fault
    assert str(by_line[4]).startswith(
        f"{FIXTURES / 'bad_rows.csv'}:4: badtz@example.org: column tz:"
    )
    assert str(by_line[3]).split(": column")[0].endswith(":3: not-an-address")
    assert str(by_line[7]).endswith(":7: short@example.org: 2 cells but the header has 6 columns")
    assert "topic 'Broken': column 1" in by_line[5].message
    assert "already on line 2" in by_line[6].message
    # the good rows went in, with defaults where cells are empty
    assert (report.added, report.updated) == (2, 0)
    second = subs.get_subscriber(store, "second@example.org")
    assert (second.cadence, second.time, second.tz) == ("instant", "06:15", "Europe/Berlin")
    assert subs.count_subscribers(store) == 2


def test_import_updates_known_and_dry_run_changes_nothing(
    store: Store, cfg: Settings, tmp_path: Path
) -> None:
    _add(store, cfg, "ada@example.org", name="Ada")
    csv_file = tmp_path / "in.csv"
    csv_file.write_text(
        "email,name,status,tz,topics\n"
        "ada@example.org,,paused,Asia/Tokyo,Compression: quantiz*\n"
        "new@example.org,New,,,Speed: latency\n",
        encoding="utf-8",
    )
    dry = subs.import_csv(store, cfg, csv_file, dry_run=True)
    assert (dry.added, dry.updated, dry.errors) == (1, 1, [])
    assert subs.count_subscribers(store) == 1
    assert subs.get_subscriber(store, "ada@example.org").tz == "Europe/Berlin"
    done = subs.import_csv(store, cfg, csv_file)
    assert (done.added, done.updated) == (1, 1)
    ada = subs.get_subscriber(store, "ada@example.org")
    assert (ada.name, ada.status, ada.tz) == ("Ada", "paused", "Asia/Tokyo")
    assert ada.topics == (Topic("Compression", "quantiz*"),)
    # the status history says how: the service's default (the CLI), then the import
    history = [(e.old_status, e.new_status, e.how) for e in store.subscriber_events(ada.id)]
    assert history == [(None, "active", "cli"), ("active", "paused", "import")]
    new = subs.get_subscriber(store, "new@example.org")
    assert [e.how for e in store.subscriber_events(new.id)] == ["import"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"mail,name\nx@example.org,X\n", "header must name 'email'"),
        (b"email,timezone\nx@example.org,UTC\n", "timezone"),
        (b"email,name\nx@example.org,Caf\xe9\n", "not UTF-8"),
    ],
)
def test_import_rejects_unusable_files(
    store: Store, cfg: Settings, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match=message) as info:
        subs.import_csv(store, cfg, path)
    assert str(path) in str(info.value)
    with pytest.raises(ValidationError, match="cannot read"):
        subs.import_csv(store, cfg, tmp_path / "missing.csv")


_name_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30
).map(str.strip)
_topic_name = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs"), blacklist_characters=":|"
    ),
    min_size=1,
    max_size=20,
)
_word = st.sampled_from(
    [
        "sparse",
        "attention",
        "latency",
        "prune*",
        '"kv cache"',
        "-diffusion",
        "org:nvidia",
        "upvotes>=10",
        "title:video",
        "Ωmega",
        "S$^{2}$FT",
    ]
)
_query = st.lists(
    st.lists(_word, min_size=1, max_size=3).map(" ".join), min_size=1, max_size=3
).map(", ".join)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=_name_text,
    topics=st.lists(
        st.tuples(_topic_name, _query), min_size=0, max_size=3, unique_by=lambda t: t[0].casefold()
    ),
    cadence=st.sampled_from(["instant", "daily", "weekly", "feed"]),
    weekday=st.integers(0, 6),
)
def test_csv_round_trip_property(
    name: str, topics: list[tuple[str, str]], cadence: str, weekday: int
) -> None:
    checked = []
    for topic_name, query in topics:
        try:
            checked.append(subs.check_topics([Topic(topic_name, query)])[0])
        except (QueryError, ValidationError):
            continue  # an exclusion-only query; the property is about what can be stored
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = Settings()
        src = Store.open(f"sqlite:///{root / 'a.db'}")
        dst = Store.open(f"sqlite:///{root / 'b.db'}")
        try:
            subs.add_subscriber(
                src,
                cfg,
                "p@example.org",
                name=name,
                topics=checked,
                cadence=cadence,
                weekday=weekday,
            )
            out = io.StringIO()
            subs.export_csv(src, out)
            (root / "x.csv").write_text(out.getvalue(), encoding="utf-8")
            report = subs.import_csv(dst, cfg, root / "x.csv")
            assert report.errors == []
            a = subs.get_subscriber(src, "p@example.org")
            b = subs.get_subscriber(dst, "p@example.org")
            assert (a.name, a.topics, a.cadence, a.weekday, a.time, a.tz) == (
                b.name,
                b.topics,
                b.cadence,
                b.weekday,
                b.time,
                b.tz,
            )
        finally:
            src.close()
            dst.close()


def test_names_topics_and_queries_are_cleaned_once_where_they_come_in():
    # The text policy (digest.text.clean_text): bidi overrides, private use and zero-width
    # characters dropped, controls as spaces, NFC; a query keeps its line breaks.
    assert subs.check_name("\u202eAda\u202c Love\u200blace\ue000") == "Ada Lovelace"
    (topic,) = subs.check_topics([Topic("Spe\u0301cial\x1b", "latency\r\nsparse\u2066 attention")])
    assert topic == Topic("Spécial", "latency\nsparse attention")
