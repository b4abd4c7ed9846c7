"""Inbox ingestion on both engines: moves, duplicates, bad dumps, half-written files, crashes."""

from __future__ import annotations

import io
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import digest.ingest as ingest_mod
from digest.config import Settings, build_settings
from digest.errors import ParseError
from digest.ingest import IngestReport, ingest_files, ingest_inbox
from digest.models import Paper, ParseResult
from digest.parse import parse_bytes
from digest.store import Store

NOW = 1_800_000_000.0  # the injected clock; files are dated relative to it
FIXTURE_DUMPS = Path(__file__).resolve().parent / "fixtures" / "dumps"
DAY1 = FIXTURE_DUMPS / "ingest_day1.txt"
DAY2 = FIXTURE_DUMPS / "ingest_day2.txt"


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


class Inbox:
    """The inbox, processed/ and failed/ of one test, with a controllable clock."""

    def __init__(self, root: Path, store: Store, **inbox: object) -> None:
        self.settings: Settings = build_settings(
            {"inbox": {"settle_seconds": 5.0, **inbox}}, root=root
        )
        self.dir = self.settings.inbox.dir
        self.processed = self.settings.inbox.processed_dir
        self.failed = self.settings.inbox.failed_dir
        for folder in (self.dir, self.processed, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.now = NOW
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def drop(self, name: str, content: bytes | str | Path, *, age: float = 60.0) -> Path:
        """Write a file into the inbox with an mtime `age` seconds before the clock."""
        if isinstance(content, Path):
            content = content.read_bytes()
        if isinstance(content, str):
            content = content.encode("utf-8")
        path = self.dir / name
        path.write_bytes(content)
        os.utime(path, (self.now - age, self.now - age))
        return path

    def run(self, **kw: object) -> IngestReport:
        kw.setdefault("clock", self.clock)
        kw.setdefault("sleep", self.sleep)
        return ingest_inbox(self.store, self.settings, **kw)

    def names(self, folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def inbox(tmp_path: Path, store: Store) -> Inbox:
    return Inbox(tmp_path, store)


def fake_parse(
    data: bytes, *, name: str, mtime: float | None, max_bytes: int | None
) -> ParseResult:
    """A stand-in parser: one paper per 'Title | abstract' line; 'BAD' anywhere fails at line 1."""
    text = data.decode("utf-8")
    if "BAD" in text:
        raise ParseError("this stand-in dislikes BAD", file=name, line=1)
    found = [Paper(*line.split(" | ", 1)) for line in text.splitlines() if " | " in line]
    return ParseResult(papers=tuple(found), layout="fake")


# --- the ordinary path --------------------------------------------------------------------------


def test_inbox_dumps_are_stored_and_moved_to_processed(inbox: Inbox) -> None:
    inbox.drop("day1.txt", DAY1)
    inbox.drop("day2.txt", DAY2)
    report = inbox.run()
    assert [(o.name, o.status, o.papers, o.new_papers) for o in report.outcomes] == [
        ("day1.txt", "stored", 3, 3),
        ("day2.txt", "stored", 3, 1),
    ]
    assert inbox.names(inbox.dir) == []
    assert inbox.names(inbox.processed) == ["day1.txt", "day2.txt"]
    assert report.summary() == "2 files: 2 stored, 6 papers (4 new), 0 duplicate, 0 failed"
    assert report.failures == [] and inbox.slept == []
    assert inbox.store.count_papers() == 4


def test_identity_first_seen_and_upvote_history_through_real_dumps(inbox: Inbox) -> None:
    inbox.drop("day1.txt", DAY1)
    inbox.run()
    first = {p.title: p for p in inbox.store.recent_papers(10)}
    inbox.now += 86400
    inbox.drop("day2.txt", DAY2)
    inbox.run()
    papers = {p.title: p for p in inbox.store.recent_papers(10)}
    s2ft = papers["S$^{2}$FT: Sparse Fine-Tuning for Tiny Test Models"]  # the first title is kept
    assert "S^{2}FT: Sparse Fine-Tuning for Tiny Test Models" not in papers
    assert s2ft.first_seen == first[s2ft.title].first_seen
    assert (s2ft.upvotes, s2ft.authors) == (8, 5)
    pruned = papers["Pruned Attention Heads Recover Quickly"]
    assert [h.upvotes for h in inbox.store.upvote_history(pruned.id)] == [10, 25]
    assert [h.dump_name for h in inbox.store.upvote_history(pruned.id)] == ["day1.txt", "day2.txt"]


def test_same_content_under_another_name_is_a_recorded_duplicate(inbox: Inbox) -> None:
    inbox.drop("a.txt", DAY1)
    inbox.run()
    inbox.drop("b.txt", DAY1)
    report = inbox.run()
    (outcome,) = report.outcomes
    assert (outcome.status, outcome.reason) == ("duplicate", "same content as a.txt (dump 1)")
    assert inbox.names(inbox.processed) == ["a.txt", "b.txt"]
    assert [(d.name, d.status) for d in inbox.store.recent_dumps(5)] == [
        ("b.txt", "duplicate"),
        ("a.txt", "stored"),
    ]
    assert report.summary() == "1 file: 0 stored, 0 papers (0 new), 1 duplicate, 0 failed"


def test_a_name_clash_in_processed_gets_a_suffix(inbox: Inbox) -> None:
    inbox.drop("day.txt", DAY1)
    inbox.run()
    inbox.drop("day.txt", DAY2)
    inbox.run()
    assert inbox.names(inbox.processed) == ["day-1.txt", "day.txt"]
    assert (inbox.processed / "day-1.txt").read_bytes() == DAY2.read_bytes()
    assert (inbox.processed / "day.txt").read_bytes() == DAY1.read_bytes()


def test_the_parser_is_injectable(inbox: Inbox) -> None:
    inbox.drop("x.txt", "One | first\nTwo | second\n")
    inbox.drop("y.txt", "BAD\n")
    report = inbox.run(parse=fake_parse)
    assert [(o.name, o.status, o.papers) for o in report.outcomes] == [
        ("x.txt", "stored", 2),
        ("y.txt", "failed", 0),
    ]
    assert report.failures == ["y.txt:1: this stand-in dislikes BAD"]


def test_shared_dumps_in_any_order_twice_store_361(
    inbox: Inbox, shared_dumps: list[Path], tmp_path: Path
) -> None:
    # Pass one through the inbox in reverse name order (named so), pass two as named files.
    for i, src in enumerate(reversed(shared_dumps)):
        inbox.drop(f"{i}_{src.name}", src)
    first = inbox.run()
    assert (len(first.stored), first.new_papers, inbox.store.count_papers()) == (4, 361, 361)
    assert sorted(o.papers for o in first.outcomes) == [37, 42, 117, 219]
    order = [shared_dumps[2], shared_dumps[0], shared_dumps[3], shared_dumps[1]]
    second = ingest_files(inbox.store, inbox.settings, order, clock=inbox.clock)
    assert [o.status for o in second.outcomes] == ["duplicate"] * 4
    assert (second.papers, second.new_papers, inbox.store.count_papers()) == (0, 0, 361)
    assert all(o.moved_to is None for o in second.outcomes)  # files outside the inbox stay put
    assert all(p.exists() for p in order)


def test_files_outside_the_inbox_are_stored_but_never_moved(inbox: Inbox, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    good = elsewhere / "good.txt"
    shutil.copy(DAY1, good)
    bad = elsewhere / "bad.txt"
    bad.write_bytes(b"\x00\x01\x02binary")
    for p in (good, bad):
        os.utime(p, (NOW - 60, NOW - 60))
    report = ingest_files(inbox.store, inbox.settings, [good, bad], clock=inbox.clock)
    assert [o.status for o in report.outcomes] == ["stored", "failed"]
    assert good.exists() and bad.exists()
    assert inbox.names(inbox.failed) == [] and inbox.names(inbox.processed) == []


def test_named_files_inside_the_inbox_move_like_inbox_files(inbox: Inbox) -> None:
    path = inbox.drop("day1.txt", DAY1)
    report = ingest_files(inbox.store, inbox.settings, [path], clock=inbox.clock)
    assert report.outcomes[0].moved_to == inbox.processed / "day1.txt"


# --- bad dumps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "binary", id="garbage"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(DAY1.read_bytes().replace(b"tiny", b"t\xe9\xffny"), "UTF-8", id="latin1"),
        pytest.param(b"just one short line\n", "paper", id="no-paper"),
    ],
)
def test_bad_dumps_go_to_failed_with_a_reason(inbox: Inbox, content: bytes, expect: str) -> None:
    inbox.drop("bad.txt", content)
    inbox.drop("good.txt", DAY1)
    report = inbox.run()
    assert [(o.name, o.status) for o in report.outcomes] == [
        ("bad.txt", "failed"),
        ("good.txt", "stored"),
    ]
    assert inbox.names(inbox.failed) == ["bad.txt", "bad.txt.error.txt"]
    assert (inbox.failed / "bad.txt").read_bytes() == content
    note = (inbox.failed / "bad.txt.error.txt").read_text(encoding="utf-8")
    assert note.startswith("file: bad.txt\n")
    assert expect.lower() in note.lower()
    assert "reason: " in note and "sha256: " in note
    failed_row = inbox.store.recent_dumps(5)[1]
    assert (failed_row.name, failed_row.status) == ("bad.txt", "failed")
    assert expect.lower() in failed_row.error.lower()
    assert report.summary().endswith("1 failed")
    assert report.failures[0].startswith("bad.txt:")


def test_a_dump_cut_inside_its_last_abstract_warns_and_a_complete_one_mends_it(
    inbox: Inbox,
) -> None:
    # A dump saved half-way (found by the contract check): its last abstract stops at the end
    # of the file. Its paper is stored (the rule cannot tell every cut from a complete abstract
    # without a full stop), the warning is shown, and a complete dump mends the abstract.
    whole = DAY1.read_bytes()
    complete = parse_bytes(whole, name="day1.txt").papers[-1]
    cut = whole[: whole.index(b"Speculative decoding trades") + 100]  # inside the last abstract
    inbox.drop("cut.txt", cut)
    report = inbox.run()
    assert [(o.name, o.status, o.papers) for o in report.outcomes] == [("cut.txt", "stored", 3)]
    (line,) = [w for w in report.warnings if "cut short" in w]
    assert line.startswith("cut.txt:31: ")
    stored = {p.title: p.abstract for p in inbox.store.papers_after(0)}
    assert stored[complete.title] != complete.abstract
    assert complete.abstract.startswith(stored[complete.title])
    inbox.drop("day1.txt", DAY1)
    assert inbox.run().new_papers == 0
    stored = {p.title: p.abstract for p in inbox.store.papers_after(0)}
    assert stored[complete.title] == complete.abstract


def test_a_later_abstract_that_is_not_a_continuation_changes_nothing(inbox: Inbox) -> None:
    # Only an abstract that starts with the stored one replaces it: another text (a dump of
    # the same title with another abstract) leaves the stored paper as it was.
    inbox.drop("day1.txt", DAY1)
    inbox.run()
    before = {p.title: p.abstract for p in inbox.store.papers_after(0)}
    title = next(iter(before))
    other = DAY1.read_bytes().replace(before[title][:40].encode(), b"Quite another opening")
    inbox.drop("other.txt", other)
    inbox.run()
    assert {p.title: p.abstract for p in inbox.store.papers_after(0)} == before


def test_a_file_s_parser_warnings_are_shown_up_to_five_and_counted() -> None:
    from digest.models import ParseWarning

    result = ParseResult(
        papers=(Paper("T", "abstract"),),
        warnings=tuple(ParseWarning(n, f"odd line {n}") for n in range(1, 9)),
    )
    shown = ingest_mod._shown_warnings("x.txt", result)
    assert shown[:5] == tuple(f"x.txt:{n}: odd line {n}" for n in range(1, 6))
    assert shown[5:] == ("x.txt: 3 more warning(s); `digest parse x.txt` lists them all",)


def test_a_non_utf8_dump_names_the_line(inbox: Inbox) -> None:
    content = DAY1.read_bytes().replace(b"Pruned", b"Pr\xffned")
    inbox.drop("latin.txt", content)
    (outcome,) = inbox.run().outcomes
    line = content[: content.index(b"\xff")].count(b"\n") + 1
    note = (inbox.failed / "latin.txt.error.txt").read_text(encoding="utf-8")
    assert f"line: {line}\n" in note
    assert outcome.status == "failed"


def test_an_oversized_dump_is_refused_without_parsing(tmp_path: Path, store: Store) -> None:
    inbox = Inbox(tmp_path, store, max_bytes=100)
    inbox.drop("big.txt", DAY1)
    calls: list[str] = []

    def parse(data: bytes, **kw: object) -> ParseResult:
        calls.append("called")
        raise AssertionError("an oversized dump must not be parsed")

    (outcome,) = inbox.run(parse=parse).outcomes
    assert outcome.status == "failed" and "inbox.max_bytes" in outcome.reason
    assert calls == []
    assert inbox.names(inbox.failed) == ["big.txt", "big.txt.error.txt"]
    assert inbox.store.recent_dumps(1)[0].size == DAY1.stat().st_size


def test_a_parser_bug_fails_that_dump_only(inbox: Inbox) -> None:
    inbox.drop("a.txt", DAY1)
    inbox.drop("b.txt", DAY2)

    def flaky(data: bytes, *, name: str, **kw: object) -> ParseResult:
        if name == "a.txt":
            raise IndexError("list index out of range")
        return parse_bytes(data, name=name, **kw)  # type: ignore[arg-type]

    report = inbox.run(parse=flaky)
    assert [o.status for o in report.outcomes] == ["failed", "stored"]
    assert "internal parser error: IndexError" in report.outcomes[0].reason


# --- files still being written ------------------------------------------------------------------


def test_part_tmp_and_dotfiles_are_ignored(inbox: Inbox) -> None:
    for name in ("day.txt.part", "day.tmp", ".hidden.txt"):
        inbox.drop(name, DAY1)
    report = inbox.run()
    assert report.outcomes == [] and report.summary().startswith("0 files")
    assert inbox.names(inbox.dir) == [".hidden.txt", "day.tmp", "day.txt.part"]
    assert inbox.store.recent_dumps(5) == []


def test_a_named_part_file_is_left_waiting(inbox: Inbox) -> None:
    path = inbox.drop("day.txt.part", DAY1)
    (outcome,) = ingest_files(inbox.store, inbox.settings, [path], clock=inbox.clock).outcomes
    assert outcome.status == "waiting" and path.exists()


def test_an_unsettled_file_waits_for_the_next_poll(inbox: Inbox) -> None:
    inbox.drop("old.txt", DAY1, age=60)
    inbox.drop("fresh.txt", DAY2, age=1)
    report = inbox.run(wait=False)
    assert [(o.name, o.status) for o in report.outcomes] == [
        ("fresh.txt", "waiting"),
        ("old.txt", "stored"),
    ]
    assert report.summary().endswith(", 1 still being written")
    assert inbox.names(inbox.dir) == ["fresh.txt"] and inbox.slept == []
    inbox.now += 10
    assert [o.status for o in inbox.run(wait=False).outcomes] == ["stored"]


def test_the_command_waits_out_the_settle_interval_once(inbox: Inbox) -> None:
    inbox.drop("fresh.txt", DAY1, age=1)
    report = inbox.run()
    assert inbox.slept == [4.0]
    assert [o.status for o in report.outcomes] == ["stored"]


def test_a_future_mtime_costs_one_interval_at_most(inbox: Inbox) -> None:
    inbox.drop("skewed.txt", DAY1, age=-3600)  # written by a machine whose clock is ahead
    report = inbox.run()
    assert inbox.slept == [5.0]
    assert [o.status for o in report.outcomes] == ["stored"]


def test_a_file_still_growing_after_the_wait_is_left_alone(inbox: Inbox) -> None:
    path = inbox.drop("growing.txt", DAY1.read_bytes()[:300], age=1)

    def writer_keeps_writing(seconds: float) -> None:
        inbox.sleep(seconds)
        with path.open("ab") as fh:
            fh.write(DAY1.read_bytes()[300:])
        os.utime(path, (inbox.now - 0.5, inbox.now - 0.5))

    report = inbox.run(sleep=writer_keeps_writing)
    assert [o.status for o in report.outcomes] == ["waiting"]
    assert inbox.names(inbox.dir) == ["growing.txt"] and inbox.store.recent_dumps(5) == []


# --- refused names ------------------------------------------------------------------------------


def test_symlinks_are_refused_and_their_target_untouched(inbox: Inbox, tmp_path: Path) -> None:
    target = tmp_path / "secret.txt"
    shutil.copy(DAY1, target)
    (inbox.dir / "link.txt").symlink_to(target)
    report = inbox.run()
    (outcome,) = report.outcomes
    assert outcome.status == "refused" and "symbolic link" in outcome.reason
    assert target.read_bytes() == DAY1.read_bytes()
    assert inbox.names(inbox.dir) == []
    assert (inbox.failed / "link.txt").is_symlink()
    assert "symbolic link" in (inbox.failed / "link.txt.error.txt").read_text()
    assert inbox.store.recent_dumps(5) == [] and inbox.store.count_papers() == 0
    assert report.failures == ["link.txt: is a symbolic link; copy the dump instead"]


def test_a_named_symlink_is_refused(inbox: Inbox, tmp_path: Path) -> None:
    link = tmp_path / "link.txt"
    link.symlink_to(DAY1)
    (outcome,) = ingest_files(inbox.store, inbox.settings, [link], clock=inbox.clock).outcomes
    assert outcome.status == "refused" and link.is_symlink()


def test_subfolders_of_the_inbox_are_not_entered(inbox: Inbox) -> None:
    (inbox.dir / "sub").mkdir()
    (inbox.dir / "sub" / "d.txt").write_bytes(DAY1.read_bytes())
    assert inbox.run().outcomes == []


def test_a_missing_inbox_is_reported(tmp_path: Path, store: Store) -> None:
    settings = build_settings({"inbox": {"dir": "nowhere"}}, root=tmp_path)
    report = ingest_inbox(store, settings)
    assert "inbox folder does not exist" in report.failures[0]


# --- crashes ------------------------------------------------------------------------------------


def crash_at(stage: str) -> Callable[[str, Path], None]:
    def hook(at: str, _path: Path) -> None:
        if at == stage:
            raise Crash(stage)

    return hook


@pytest.mark.parametrize("stage", ["parsed", "in-transaction", "stored", "linked", "moved"])
def test_a_crash_at_any_stage_then_a_rerun_ends_right(
    inbox: Inbox, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox.drop("day1.txt", DAY1)
    with monkeypatch.context() as m:
        hook = None
        if stage in ("parsed", "stored", "moved"):
            hook = crash_at(stage)
        elif stage == "in-transaction":
            real = Store._upsert_papers

            def upsert_then_die(self: Store, *a: object, **k: object) -> int:
                real(self, *a, **k)
                raise Crash(stage)

            m.setattr(Store, "_upsert_papers", upsert_then_die)
        else:  # hard-linked into processed/, not yet unlinked from the inbox

            def die(path: object) -> None:
                raise Crash(stage)

            m.setattr(ingest_mod.os, "unlink", die)
        with pytest.raises(Crash):
            inbox.run(hook=hook)

    stored_before = stage in ("stored", "linked", "moved")
    assert inbox.store.count_papers() == (3 if stored_before else 0)
    report = inbox.run()
    assert inbox.store.count_papers() == 3
    assert [(d.name, d.status) for d in inbox.store.recent_dumps(5)] == [("day1.txt", "stored")]
    assert inbox.names(inbox.dir) == []
    assert inbox.names(inbox.processed) == ["day1.txt"]
    assert (inbox.processed / "day1.txt").read_bytes() == DAY1.read_bytes()
    expected = {"parsed": "stored", "in-transaction": "stored", "moved": None}
    status = expected.get(stage, "duplicate")
    assert [o.status for o in report.outcomes] == ([status] if status else [])


def test_a_database_failure_stops_the_run_and_leaves_files(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    inbox.drop("a.txt", DAY1)
    inbox.drop("b.txt", DAY2)

    def down(*a: object, **k: object) -> None:
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(inbox.store, "ingest_dump", down)
    report = inbox.run()
    assert report.aborted == "a.txt: database error: server closed the connection"
    assert report.failures == [f"ingestion stopped: {report.aborted}"]
    assert inbox.names(inbox.dir) == ["a.txt", "b.txt"]
    assert inbox.names(inbox.failed) == []


# --- progress -----------------------------------------------------------------------------------


def test_progress_bar_only_when_asked_or_on_a_terminal(
    inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    inbox.drop("a.txt", DAY1)
    inbox.drop("b.txt", DAY2)
    inbox.run()  # not a terminal: silent
    assert err.getvalue() == ""
    inbox.drop("c.txt", "One | x\n")
    inbox.drop("d.txt", "Two | y\n")
    inbox.run(progress=True, parse=fake_parse)
    assert "/2 [" in err.getvalue() and "dump" in err.getvalue()
