"""The dump parser: shared dumps pinned, hand-written layouts, rejections, round-trip properties."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from datetime import date, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from digest.errors import ParseError
from digest.models import Paper, paper_key
from digest.parse import (
    _CHROME,
    _META_RE,
    LAYOUTS,
    MAX_PROBLEMS,
    format_dump,
    paper_to_json,
    parse_bytes,
    parse_file,
    parse_text,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "dumps"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "dumps"
COUNTS = {
    "000_665cc354fccebe46.txt": 42,
    "001_2d0e8b92b6beec24.txt": 37,
    "002_211ddbbea3b829a0.txt": 219,
    "003_48b46adb6a0b1368.txt": 117,
}
CAPTURE = date(2026, 5, 1)

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared dumps not found at {SHARED}")


def shared(name: str) -> str:
    return (SHARED / name).read_text(encoding="utf-8")


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def by_title(result, prefix: str) -> Paper:
    found = [p for p in result.papers if p.title.startswith(prefix)]
    assert len(found) == 1, [p.title for p in found]
    return found[0]


# --- the shared dumps -------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(("name", "count"), sorted(COUNTS.items()))
def test_shared_dump_counts_without_warnings(name, count):
    result = parse_file(SHARED / name)
    assert len(result.papers) == count
    assert result.warnings == ()
    assert all(p.title and p.abstract for p in result.papers)


@needs_shared
def test_shared_dumps_hold_361_unique_papers():
    keys = set()
    for name in COUNTS:
        keys |= {p.key for p in parse_file(SHARED / name).papers}
    assert len(keys) == 361


@needs_shared
def test_nemotron_flash_in_000():
    result = parse_text(shared("000_665cc354fccebe46.txt"), capture_date=CAPTURE)
    p = by_title(result, "Nemotron-Flash: Towards Latency-Optimal")
    assert (p.organization, p.organization_id) == ("NVIDIA", "nvidia")
    assert (p.published, p.upvotes, p.authors) == (date(2025, 11, 24), 2, None)
    assert p.line == 69
    assert p.abstract.startswith("Efficient deployment of small language models")
    assert p.abstract.endswith("respectively.")


@needs_shared
def test_000_page_date_and_yearless_dates():
    result = parse_text(shared("000_665cc354fccebe46.txt"), capture_date=CAPTURE)
    assert result.capture_date == date(2026, 4, 16)
    assert result.layout == "blocks, metadata on 41 of 42 papers"
    first = result.papers[0]
    assert first.title.startswith("FastEmit: Low-latency Streaming ASR")
    assert (first.authors, first.published, first.upvotes, first.line) == (
        11,
        date(2021, 2, 2),
        None,
        13,
    )
    compress = by_title(result, "Compress the Easy, Explore the Hard")
    assert (compress.authors, compress.published) == (7, date(2026, 2, 26))
    fudan = by_title(result, "Sparser Block-Sparse Attention")
    assert (fudan.organization_id, fudan.organization) == ("Fudan-University", "Fudan University")
    assert (fudan.published, fudan.upvotes) == (date(2025, 10, 24), 1)
    # The one entry without metadata.
    assert sum(p.published is None for p in result.papers) == 1


@needs_shared
def test_001_organizations_with_spaces():
    result = parse_text(shared("001_2d0e8b92b6beec24.txt"), capture_date=CAPTURE)
    assert result.capture_date == date(2026, 1, 7)
    orgs = {(p.organization_id, p.organization) for p in result.papers if p.organization}
    assert orgs == {
        ("nvidia", "NVIDIA"),
        ("nyu-visionx", "VISIONx @ NYU"),
        ("MicrosoftResearch", "Microsoft Research"),
    }
    assert all(p.published is not None for p in result.papers)


@needs_shared
def test_002_compact_with_glued_subscribe():
    result = parse_text(shared("002_211ddbbea3b829a0.txt"), capture_date=CAPTURE)
    assert result.layout == "compact, no metadata"
    assert result.capture_date == CAPTURE  # no page date line
    first = result.papers[0]
    assert first.title == "An Efficiency Study for SPLADE Models"
    assert first.line == 3
    assert first.abstract.startswith("Latency and efficiency issues are often overlooked")
    assert all(paper_to_json(p)["published"] is None for p in result.papers)
    assert result.papers[-1].line == 439


@needs_shared
def test_003_blocks_without_metadata():
    result = parse_text(shared("003_48b46adb6a0b1368.txt"), capture_date=CAPTURE)
    assert result.layout == "blocks, no metadata"
    assert result.papers[0].title == "Token-Efficient Long Video Understanding for Multimodal LLMs"
    assert result.papers[-1].title.startswith("Streaming DiLoCo with overlapping communication")


@needs_shared
def test_s2ft_is_one_paper_across_002_and_003():
    a = by_title(parse_file(SHARED / "002_211ddbbea3b829a0.txt"), "S^{2}FT: Efficient")
    b = by_title(parse_file(SHARED / "003_48b46adb6a0b1368.txt"), "S$^{2}$FT: Efficient")
    assert a.title != b.title
    assert a.key == b.key == paper_key(b.title)
    assert a.abstract == b.abstract


@needs_shared
def test_shared_dump_with_crlf_and_bom_parses_the_same():
    data = (SHARED / "000_665cc354fccebe46.txt").read_bytes()
    plain = parse_bytes(data, mtime=datetime(2026, 5, 1).timestamp())
    crlf = parse_bytes(b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"), mtime=CAPTURE_TS)
    assert crlf.papers == plain.papers
    assert crlf.warnings == ()


CAPTURE_TS = datetime(2026, 5, 1, 12).timestamp()


# --- hand-written layouts ---------------------------------------------------------------------


def test_blocks_fixture_with_every_kind_of_metadata():
    result = parse_text(fixture("blocks.txt"), name="blocks.txt", capture_date=date(2026, 3, 10))
    assert result.warnings == ()
    assert result.capture_date == date(2026, 3, 3)  # the page date "Mar 3"
    assert result.layout == "blocks, metadata on 3 of 4 papers"
    tiny, org, one, bare = result.papers
    assert (tiny.title, tiny.line) == ("Tiny Models: Small Is Beautiful", 13)
    assert (tiny.authors, tiny.published, tiny.upvotes) == (4, date(2026, 2, 26), None)
    assert (org.organization_id, org.organization) == ("deep-mind-lab", "DeepMind Lab @ London")
    assert (org.published, org.upvotes, org.authors) == (date(2025, 11, 24), 12, None)
    # "Mar 1 3": a yearless date with upvotes; "1 author" is singular.
    assert (one.authors, one.published, one.upvotes) == (1, date(2026, 3, 1), 3)
    assert bare == Paper("No Metadata Here", "This entry has no metadata at all.", line=37)


def test_compact_fixture_splits_glued_subscribe():
    result = parse_text(fixture("compact.txt"), capture_date=CAPTURE)
    assert result.warnings == ()
    assert result.layout == "compact, no metadata"
    assert [(p.title, p.line) for p in result.papers] == [
        ("Alpha: First Compact Paper", 3),
        ("Beta: Second Compact Paper", 5),
        ("Gamma: Third Compact Paper", 7),
    ]
    assert result.papers[2].abstract == "The third abstract!"


def test_subscribe_is_not_stripped_after_a_standalone_subscribe_line():
    text = "Subscribe\n\nSubscribeNet: A Title\n\nAn abstract.\n"
    assert parse_text(text).papers[0].title == "SubscribeNet: A Title"


def test_glued_subscribe_before_lower_case_is_kept_and_warned():
    result = parse_text("Subscribers in the Wild\nAn abstract.\n")
    assert result.papers[0].title == "Subscribers in the Wild"
    assert [w.line for w in result.warnings] == [1]


def test_mixed_fixture_decided_by_structure():
    result = parse_text(fixture("mixed.txt"), capture_date=date(2026, 3, 10))
    assert result.warnings == ()
    assert result.layout.startswith("mixed")
    one, two, three = result.papers
    assert (one.authors, one.published, one.upvotes) == (3, date(2024, 7, 1), 5)
    assert (two.title, two.published) == ("Entry Two", None)
    # Page "Jul 4" before 2026-03-10 is 2025-07-04, so "Jun 30" is 2025-06-30.
    assert result.capture_date == date(2025, 7, 4)
    assert (three.organization_id, three.organization) == ("acme", "Acme Corp")
    assert three.published == date(2025, 6, 30)


def test_unknown_short_lines_are_warned_never_glued():
    result = parse_text(fixture("unknown.txt"))
    assert [p.title for p in result.papers] == [
        "Good Paper One",
        "Good Paper Two",
        "Good Paper Three",
    ]
    assert [p.abstract for p in result.papers] == [
        "Its abstract ends here.",
        "Another abstract ends here.",
        "Third abstract.",
    ]
    assert result.papers[2].authors == 2
    assert [w.line for w in result.warnings] == [9, 23]
    assert "Show more" in result.warnings[0].message


def test_unknown_line_in_compact_layout():
    text = "T One\nAbstract one.\nShare\nT Two\nAbstract two.\nT Three\nAbstract three.\n"
    result = parse_text(text)
    assert [(p.title, p.abstract) for p in result.papers] == [
        ("T One", "Abstract one."),
        ("T Two", "Abstract two."),
        ("T Three", "Abstract three."),
    ]
    assert [(w.line, "Share" in w.message) for w in result.warnings] == [(3, True)]


def test_truncated_file_keeps_complete_entries():
    result = parse_text(fixture("truncated.txt"))
    assert [p.title for p in result.papers] == ["Complete Paper"]
    assert result.papers[0].authors == 2
    (w,) = result.warnings
    assert w.line == 11 and "incomplete entry at line 11" in w.message


def test_file_cut_inside_last_abstract_is_warned():
    cut = "An abstract that was long enough to be trusted as one, " * 3 + "and then the fi"
    text = f"Title One\n\nA whole abstract.\n\nTitle Two\n\n{cut}"
    result = parse_text(text)
    assert [p.abstract for p in result.papers] == ["A whole abstract.", cut]
    assert {w.line for w in result.warnings} == {7}
    assert any("cut short" in w.message for w in result.warnings)


@pytest.mark.parametrize(
    ("ending", "cut"),
    [
        ("and then the fi", True),  # mid-word
        ("we compare against,", True),
        ("Code: https://github.com/acme/model", False),  # about one abstract in eleven ends so
        ("Project page: acme.github.io", False),
        ("a batch of 512", False),
        ('what we call "lazy decoding"', False),
        ("the curves [Fig. 3]", False),
        ("a speedup of 2x}", False),
    ],
)
def test_a_last_abstract_is_taken_as_cut_only_when_it_stops_mid_word_or_mid_clause(
    ending: str, cut: bool
) -> None:
    # Three of the four shared dumps end without a newline: a link, a number, a quote or a
    # bracket at the end of the last abstract is no sign of a cut (the contract check).
    last = "An abstract that was long enough to be trusted as one, " * 3 + ending
    result = parse_text(f"Title One\n\nA whole abstract.\n\nTitle Two\n\n{last}")
    assert [p.abstract for p in result.papers] == ["A whole abstract.", last]
    assert any("cut short" in w.message for w in result.warnings) == cut


def test_short_text_without_sentence_end_is_not_an_abstract():
    text = "Title One\n\nA whole abstract.\n\nTitle Two\n\nAn abstract cut in the mid"
    result = parse_text(text)
    assert [p.title for p in result.papers] == ["Title One"]
    assert [w.line for w in result.warnings] == [5, 7]


def test_second_abstract_paragraph_is_skipped_with_warning():
    long_para = "Second paragraph " * 20
    text = f"A Title\n\nFirst paragraph.\n\n{long_para}\n\nNext Title\n\nNext abstract.\n"
    result = parse_text(text)
    assert [p.title for p in result.papers] == ["A Title", "Next Title"]
    assert [w.line for w in result.warnings] == [5]


def test_concatenated_pages_do_not_lend_their_date_to_a_paper():
    page = "Subscribe\n\nDaily Papers\n\nApr 16\n\nPaper {n}\n\nAbstract {n}.\n"
    text = page.format(n=1) + page.format(n=2)
    result = parse_text(text, capture_date=CAPTURE)
    assert [p.title for p in result.papers] == ["Paper 1", "Paper 2"]
    assert all(p.published is None for p in result.papers)
    lines = {w.line for w in result.warnings}
    assert {10, 12, 14} <= lines  # chrome lines and the stray date, each named


def test_ambiguous_year_or_upvotes_is_warned():
    text = "A Title\n\nAn abstract.\n\n  • 2 authors\n·\nFeb 26 2025\n"
    result = parse_text(text, capture_date=CAPTURE)
    p = result.papers[0]
    assert (p.published, p.upvotes) == (date(2025, 2, 26), None)
    assert [w.line for w in result.warnings] == [7]


def test_invalid_date_is_warned_and_dropped():
    text = "A Title\n\nAn abstract.\n\n  • 2 authors\n·\nFeb 30, 2025 4\n"
    result = parse_text(text, capture_date=CAPTURE)
    assert (result.papers[0].authors, result.papers[0].published) == (2, None)
    assert [w.line for w in result.warnings] == [7]


def test_whitespace_tabs_and_trailing_spaces():
    text = (
        "  A\tTitle  \t\n\n\tAn\xa0abstract with   three spaces.   \n\n"
        "\t• 3 authors \n ·\nMar 1, 2024 7  \n"
    )
    p = parse_text(text).papers[0]
    assert p.title == "A Title"
    assert p.abstract == "An abstract with   three spaces."
    assert (p.authors, p.published, p.upvotes) == (3, date(2024, 3, 1), 7)


# --- bytes, files, capture dates --------------------------------------------------------------


def test_page_date_takes_the_year_of_the_mtime_not_later():
    text = (
        "Daily Papers\n\nDec 30\n\nA Title\n\nAn abstract.\n\n·\nDec 31\n\n"
        "B Title\n\nB abstract.\n\n·\nJan 2\n"
    ).encode()
    result = parse_bytes(text, mtime=datetime(2026, 1, 5, 12).timestamp())
    assert result.capture_date == date(2025, 12, 30)
    # Dec 31 would be later than the page date, so it is the year before; Jan 2 is 2025.
    assert [p.published for p in result.papers] == [date(2024, 12, 31), date(2025, 1, 2)]


def test_capture_date_without_page_date_is_the_mtime(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("A Title\nAn abstract.\n·\nFeb 29\n", encoding="utf-8")
    ts = datetime(2025, 3, 1, 12).timestamp()
    os.utime(path, (ts, ts))
    result = parse_file(path)
    assert result.capture_date == date(2025, 3, 1)
    assert result.papers[0].published == date(2024, 2, 29)  # the last Feb 29 before it


def test_bom_and_crlf_and_cr(tmp_path):
    text = fixture("blocks.txt").encode()
    ref = parse_bytes(text, mtime=CAPTURE_TS)
    for variant in (
        b"\xef\xbb\xbf" + text,
        text.replace(b"\n", b"\r\n"),
        text.replace(b"\n", b"\r"),
    ):
        got = parse_bytes(variant, mtime=CAPTURE_TS)
        assert got.papers == ref.papers
        assert got.warnings == ()


@pytest.mark.parametrize(
    ("data", "reason", "line"),
    [
        (b"", "file is empty", None),
        (b" \n\t\r\n  ", "only white space", None),
        (b"Title\n\nAbstract.\n\x00\x01\x02", "binary file (NUL byte at offset 17)", 4),
        (bytes(range(1, 9)) * 50 + b"text", "binary file", None),
        (b"Title\n\nAbstract \xe9t\xe9.\n", "not UTF-8: invalid byte 0xe9 at byte offset 16", 3),
        (b"\xff\xfeT\x00i\x00", "UTF-16", 1),
        (b"new\n\nSubscribe\n\nDaily Papers\n", "no paper found", None),
    ],
)
def test_rejections_name_file_and_line(data, reason, line):
    with pytest.raises(ParseError) as err:
        parse_bytes(data, name="bad.txt")
    assert reason in err.value.reason
    assert err.value.file == "bad.txt"
    assert err.value.line == line
    assert str(err.value).startswith("bad.txt")


def test_size_cap_in_bytes_and_file(tmp_path):
    data = fixture("blocks.txt").encode()
    with pytest.raises(ParseError, match="over the limit of 100"):
        parse_bytes(data, name="big.txt", max_bytes=100)
    path = tmp_path / "big.txt"
    path.write_bytes(data)
    with pytest.raises(ParseError, match="over the limit") as err:
        parse_file(path, max_bytes=len(data) - 1)
    assert err.value.file == str(path)
    assert len(parse_file(path, max_bytes=len(data)).papers) == 4


def test_chrome_only_file_has_no_paper():
    with pytest.raises(ParseError, match="no paper found"):
        parse_file(FIXTURES / "chrome_only.txt")


def test_unreadable_paths(tmp_path):
    with pytest.raises(ParseError, match="cannot read"):
        parse_file(tmp_path / "missing.txt")
    with pytest.raises(ParseError, match="directory"):
        parse_file(tmp_path)


def test_stray_control_characters_are_replaced_and_warned():
    result = parse_bytes(b"A\x1bTitle\n\nAn abstract.\n" + b"x" * 100)
    assert result.papers[0].title == "A Title"
    assert result.warnings[0].line == 1


# --- JSON -------------------------------------------------------------------------------------


def test_paper_to_json_shape():
    p = Paper("T", "A.", 3, "NVIDIA", "nvidia", date(2025, 11, 24), 2, line=9)
    assert paper_to_json(p) == {
        "title": "T",
        "abstract": "A.",
        "authors": 3,
        "organization": "NVIDIA",
        "organization_id": "nvidia",
        "published": "2025-11-24",
        "upvotes": 2,
    }
    bare = paper_to_json(Paper("T", "A."))
    assert list(bare) == list(paper_to_json(p))
    assert bare["published"] is None and bare["authors"] is None


def test_format_dump_rejects_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout"):
        format_dump([], layout="tabular")


# --- round trip -------------------------------------------------------------------------------

_LETTERS = st.characters(categories=("Lu", "Ll", "Lo", "Nd"), exclude_characters="\x00")
# Words in the text policy's form (NFC: the parser normalises, e.g. CJK compatibility ideographs).
_WORD = st.text(_LETTERS, min_size=1, max_size=10).map(lambda w: unicodedata.normalize("NFC", w))
_PUNCT = st.sampled_from(["", ":", ",", "-", "?", "!", "'s", "$^{2}$"])


@st.composite
def titles(draw) -> str:
    words = draw(st.lists(st.tuples(_WORD, _PUNCT), min_size=1, max_size=14))
    title = " ".join(w + p for w, p in words)[:300].strip()
    assume(title and not title.endswith(".") and title not in _CHROME)
    assume(_META_RE.fullmatch(title) is None)
    return title


@st.composite
def abstracts(draw) -> str:
    sentences = draw(st.lists(st.lists(_WORD, min_size=1, max_size=40), min_size=1, max_size=6))
    end = draw(st.sampled_from([".", "!", "?"]))
    return ". ".join(" ".join(s) for s in sentences) + end


@st.composite
def papers(draw) -> Paper:
    published = draw(st.none() | st.dates(date(2015, 1, 1), CAPTURE_PAGE))
    org_id = draw(st.none() | st.from_regex(r"[a-z0-9][a-z0-9._-]{0,14}", fullmatch=True))
    org = None
    if org_id is not None:
        org = " ".join(draw(st.lists(_WORD, min_size=1, max_size=3)))
    return Paper(
        title=draw(titles()),
        abstract=draw(abstracts()),
        authors=draw(st.none() | st.integers(1, 300)),
        organization=org,
        organization_id=org_id,
        published=published,
        upvotes=draw(st.none() | st.integers(0, 999)) if published else None,
    )


CAPTURE_PAGE = date(2026, 4, 16)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(papers(), min_size=1, max_size=8), st.sampled_from(LAYOUTS))
def test_round_trip_in_every_layout(records, layout):
    assume(layout != "compact" or not records[0].title[0].islower())
    text = format_dump(records, layout=layout, page_date="Apr 16", capture_date=CAPTURE_PAGE)
    result = parse_text(text, capture_date=CAPTURE_PAGE)
    assert result.warnings == ()
    got = [dataclasses.replace(p, line=0) for p in result.papers]
    assert got == list(records)
    lines = text.split("\n")
    assert all(lines[p.line - 1].endswith(p.title) for p in result.papers)


@settings(max_examples=40, deadline=None)
@given(st.lists(papers(), min_size=1, max_size=5), st.sampled_from(LAYOUTS))
def test_round_trip_survives_crlf_bom_and_trailing_spaces(records, layout):
    assume(layout != "compact" or not records[0].title[0].islower())
    text = format_dump(records, layout=layout, page_date="Apr 16", capture_date=CAPTURE_PAGE)
    noisy = "\ufeff" + text.replace("\n", " \t\r\n")
    result = parse_bytes(noisy.encode("utf-8"), mtime=datetime(2026, 4, 16, 12).timestamp())
    assert result.warnings == ()
    assert [dataclasses.replace(p, line=0) for p in result.papers] == list(records)


GOOD_ENTRY = "A Title About Sparse Attention\nWe study sparse attention. It is fast.\n"


@pytest.mark.parametrize(
    "junk",
    [
        "x\n" * 50_000,  # one block of lines that pair into nothing: refused before pairing
        "x\n\n" * 5_000,  # blank-line separated: each block warns; refused at the cap
        GOOD_ENTRY + "\n" + "stray line\n" * (2 * MAX_PROBLEMS + 10),
    ],
)
def test_a_junk_file_is_refused_once_it_has_too_many_problems(junk: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_text(junk, name="junk.txt")
    message = str(info.value)
    assert message.startswith("junk.txt: more than 1,000 problems, not a dump? (first at line ")


def test_up_to_the_problem_cap_a_file_still_parses() -> None:
    text = GOOD_ENTRY + "\n" + "stray line\n\n" * (MAX_PROBLEMS - 5) + GOOD_ENTRY.replace("A", "B")
    result = parse_text(text, name="ok.txt")
    assert len(result.papers) == 2 and len(result.warnings) == MAX_PROBLEMS - 5


def test_a_long_archive_with_a_few_odd_lines_per_page_still_parses() -> None:
    # 3,000 papers, each followed by a stray line: 3,000 problems, but fewer than papers + cap.
    entry = "A Title About Sparse Attention {n}\nWe study sparse attention {n}. It is fast.\n"
    text = "".join(entry.format(n=n) + f"\nstray {n}\n\n" for n in range(3000))
    result = parse_text(text, name="archive.txt")
    assert len(result.papers) == 3000 and len(result.warnings) == 3000
