"""`digest subscriber ...`, `digest match` and `digest history` through digest.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from digest.cli import excerpt, highlight, main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "subscribers"
SAMPLE_CSV = Path(__file__).resolve().parents[1] / "digest" / "samples" / "subscribers.csv"


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """A settings file made by `digest init` in a temp folder."""
    assert main(["init", str(tmp_path / "site")]) == 0
    capsys.readouterr()
    return str(tmp_path / "site" / "settings.toml")


def run(config: str, *args: str) -> int:
    return main(["--config", config, *args])


def out_json(capsys: pytest.CaptureFixture[str]) -> object:
    return json.loads(capsys.readouterr().out)


def test_add_show_list_json_shapes(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(
            config,
            "subscriber",
            "add",
            "Ada@Example.org",
            "--name",
            "Ada",
            "--keywords",
            "speculative decoding, latency",
            "--topic",
            "Pruning",
            "prune*",
            "--cadence",
            "weekly",
            "--weekday",
            "fri",
            "--time",
            "8:30",
            "--tz",
            "Europe/London",
        )
        == 0
    )
    assert "added ada@example.org: weekly on fri at 08:30 Europe/London" in capsys.readouterr().out
    assert run(config, "subscriber", "show", "ada@example.org", "--json") == 0
    shown = out_json(capsys)
    assert isinstance(shown, dict)
    token_url = shown.pop("feed_url")
    assert token_url.startswith("http://localhost:8000/feeds/s/") and token_url.endswith(".atom")
    # an added key (the contract allows them): the status history, oldest first
    assert [(h["from"], h["to"], h["how"]) for h in shown.pop("history")] == [
        (None, "active", "cli")
    ]
    assert shown == {
        "email": "ada@example.org",
        "name": "Ada",
        "status": "active",
        "cadence": "weekly",
        "time": "08:30",
        "tz": "Europe/London",
        "topics": [
            {
                "name": "Keywords",
                "query": "speculative decoding, latency",
                "likes": [],
                "dislikes": [],
            },
            {"name": "Pruning", "query": "prune*", "likes": [], "dislikes": []},
        ],
    }
    assert run(config, "subscriber", "list", "--json") == 0
    listed = out_json(capsys)
    assert isinstance(listed, list) and len(listed) == 1
    assert listed[0] == {**shown, "feed_url": token_url}
    assert run(config, "subscriber", "list") == 0
    text = capsys.readouterr().out
    assert "ada@example.org" in text and "1 subscriber(s)" in text
    assert run(config, "subscriber", "show", "ada@example.org") == 0
    assert "Pruning: prune*" in capsys.readouterr().out


def test_add_without_topic_warns(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "subscriber", "add", "x@example.org") == 0
    assert "has no topic" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-an-email"], "'not-an-email' is not a valid email address"),
        (["x@example.org", "--tz", "Mars/Base"], "x@example.org: time zone 'Mars/Base'"),
        (["x@example.org", "--time", "24:30"], "x@example.org: time '24:30'"),
        (["x@example.org", "--backfill", "-3"], "backfill"),
    ],
)
def test_add_validation_errors_exit_1(
    config: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert run(config, "subscriber", "add", *args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_bad_query_prints_caret_under_column(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "subscriber", "add", "x@example.org", "--keywords", "latency, title:(") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: x@example.org: topic 'Keywords': column ")
    column = int(err[0].split("column ")[1].split(":")[0])
    assert err[1] == "  latency, title:("
    assert err[2] == "  " + " " * (column - 1) + "^"
    assert "hint" in err[0]


@pytest.mark.parametrize(
    "args",
    [
        ["subscriber", "add"],
        ["subscriber", "add", "x@example.org", "--cadence", "hourly"],
        ["subscriber", "add", "x@example.org", "--weekday", "someday"],
        ["subscriber", "add", "x@example.org", "--topic", "OnlyName"],
        ["subscriber"],
        ["match", "x", "--limit", "0"],
        ["history"],
    ],
)
def test_wrong_usage_exits_2(config: str, args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(config, *args)
    assert info.value.code == 2


def test_match_without_query_or_example_is_wrong_usage(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stored, "match") == 2
    assert "give a QUERY, or --like PAPER" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["subscriber"],
        *[
            ["subscriber", a]
            for a in (
                "add",
                "list",
                "show",
                "edit",
                "remove",
                "pause",
                "resume",
                "import",
                "export",
            )
        ],
        ["match"],
        ["history"],
    ],
)
def test_every_command_has_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    assert "usage: digest" in capsys.readouterr().out


def test_edit_pause_resume_remove(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, "subscriber", "add", "ada@example.org", "--keywords", "latency", "--name", "Ada")
    assert (
        run(
            config,
            "subscriber",
            "edit",
            "ada@example.org",
            "--topic",
            "A",
            "prune*",
            "--topic",
            "B",
            "org:nvidia",
            "--email",
            "ada@new.org",
            "--cadence",
            "feed",
        )
        == 0
    )
    capsys.readouterr()
    run(config, "subscriber", "show", "ada@new.org", "--json")
    shown = out_json(capsys)
    assert isinstance(shown, dict)
    assert shown["topics"] == [
        {"name": "A", "query": "prune*", "likes": [], "dislikes": []},
        {"name": "B", "query": "org:nvidia", "likes": [], "dislikes": []},
    ]
    assert (shown["name"], shown["cadence"]) == ("Ada", "feed")
    assert run(config, "subscriber", "pause", "ada@new.org") == 0
    assert "ada@new.org: paused" in capsys.readouterr().out
    assert run(config, "subscriber", "list", "--status", "paused", "--json") == 0
    assert len(out_json(capsys)) == 1  # type: ignore[arg-type]
    assert run(config, "subscriber", "resume", "ada@new.org") == 0
    assert "ada@new.org: active" in capsys.readouterr().out
    assert run(config, "subscriber", "edit", "ada@new.org", "--tz", "Nowhere/City") == 1
    assert "ada@new.org: time zone 'Nowhere/City'" in capsys.readouterr().err
    assert run(config, "subscriber", "remove", "ada@new.org") == 0
    assert run(config, "subscriber", "show", "ada@new.org") == 1
    assert "no subscriber ada@new.org" in capsys.readouterr().err
    assert run(config, "subscriber", "pause", "ghost@example.org") == 1


def test_search_list(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, "subscriber", "import", str(SAMPLE_CSV))
    capsys.readouterr()
    assert run(config, "subscriber", "list", "--search", "TURING", "--json") == 0
    assert [s["email"] for s in out_json(capsys)] == ["alan@example.org"]  # type: ignore[union-attr]


def test_import_export_round_trip(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "subscriber", "import", str(SAMPLE_CSV)) == 0
    assert "3 added, 0 updated" in capsys.readouterr().out
    assert run(config, "subscriber", "export") == 0
    exported = capsys.readouterr().out
    assert exported.splitlines()[0] == "email,name,status,cadence,time,tz,weekday,topics"
    assert len(exported.splitlines()) == 4
    target = tmp_path / "out.csv"
    assert run(config, "subscriber", "export", str(target)) == 0
    assert target.read_text(encoding="utf-8") == exported
    assert "exported 3 subscriber(s)" in capsys.readouterr().out
    assert run(config, "subscriber", "import", str(target)) == 0
    assert "0 added, 0 updated, 3 unchanged" in capsys.readouterr().out


def test_import_with_bad_rows_reports_and_exits_1(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = FIXTURES / "bad_rows.csv"
    assert run(config, "subscriber", "import", str(path)) == 1
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert f"error: {path}:4: badtz@example.org: column tz: time zone 'Mars/Base'" in "\n".join(
        errors
    )
    assert len(errors) == 7
    assert "2 added" in captured.out and "7 rows rejected" in captured.out
    assert run(config, "subscriber", "import", str(path), "--dry-run") == 1
    assert "dry run" in capsys.readouterr().out


@pytest.fixture
def stored(config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The settings file with the fixture dump ingested (3 papers)."""
    dump = tmp_path / "dump.txt"
    dump.write_bytes((FIXTURES / "dump.txt").read_bytes())
    assert run(config, "ingest", str(dump)) == 0
    capsys.readouterr()
    return config


def test_match_plain_output_brackets_matched_words(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stored, "match", '"speculative decoding", prune*') == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # captured output is not a terminal
    assert "1. [Speculative Decoding] with Tiny Drafts" in out
    assert "2. Pruning Diffusion Transformers" in out  # prune* is a prefix: not "pruning"
    assert "We [prune] diffusion transformers" in out and "[Pruned] models" in out
    assert "Graph Neural" not in out
    assert "2 of 3 stored papers match" in out
    assert "Acme AI" in out and "41 upvotes" in out


def test_match_color_always_uses_ansi(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(stored, "match", "latency", "--color", "always") == 0
    out = capsys.readouterr().out
    assert "\x1b[1;33mLatency\x1b[0m" in out


def test_match_json_shape_and_limit(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(stored, "match", "diffusion, decoding", "--json", "--limit", "1") == 0
    got = out_json(capsys)
    assert isinstance(got, list) and len(got) == 1
    assert set(got[0]) == {
        "id",
        "title",
        "why",
        "score",
        "topics",
        "terms",
        "published",
        "upvotes",
        "organization",
    }
    assert run(stored, "match", "speculative", "--json") == 0
    (first,) = out_json(capsys)  # type: ignore[misc]
    assert first["title"] == "Speculative Decoding with Tiny Drafts"
    assert (first["published"], first["upvotes"], first["organization"]) == (
        "2025-11-19",
        41,
        "Acme AI",
    )
    assert first["score"] > 0 and "Speculative" in first["terms"]


def test_match_bad_query_caret(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(stored, "match", 'latency, "open phrase') == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: column 10:")
    assert err[1:] == ['  latency, "open phrase', "  " + " " * 9 + "^"]


def test_match_with_no_papers(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(config, "match", "latency", "--json") == 0
    assert out_json(capsys) == []


def test_history_empty_and_unknown(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, "subscriber", "add", "ada@example.org", "--keywords", "latency")
    capsys.readouterr()
    assert run(config, "history", "ada@example.org", "--json") == 0
    assert out_json(capsys) == []
    assert run(config, "history", "ada@example.org") == 0
    assert "no digest sent to ada@example.org yet" in capsys.readouterr().out
    assert run(config, "history", "ghost@example.org") == 1
    assert "no subscriber ghost@example.org" in capsys.readouterr().err


def test_highlight_plain_and_color() -> None:
    assert highlight("Sparse attention rocks", [(0, 6), (7, 16)], False) == (
        "[Sparse] [attention] rocks"
    )
    assert highlight("ab", [(0, 1)], True) == "\x1b[1;33ma\x1b[0mb"
    # overlapping spans never duplicate text
    assert highlight("abcdef", [(0, 4), (2, 5)], False) == "[abcde]f"  # merged, never doubled
    # terminal escapes in paper text are neutralised, offsets kept
    assert highlight("x\x1b[31my", [(6, 7)], False) == "x [31m[y]"


def test_excerpt_keeps_spans_on_their_words() -> None:
    text = (
        " ".join(f"w{i}" for i in range(200)) + " target " + " ".join("z" * 3 for _ in range(200))
    )
    start = text.index("target")
    snippet, spans = excerpt(text, [(start, start + 6)], width=120)
    assert snippet.startswith("…") and snippet.endswith("…") and len(snippet) <= 122
    ((a, b),) = spans
    assert snippet[a:b] == "target"
    short, same = excerpt("tiny", [(0, 4)])
    assert (short, same) == ("tiny", [(0, 4)])


DEEP = "(" * 200 + "latency" + ")" * 200


def test_deeply_nested_queries_are_one_line_errors_everywhere(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "subscriber", "add", "x@example.org", "--keywords", DEEP) == 1
    err = capsys.readouterr().err
    assert "error: x@example.org: topic 'Keywords': column 33: nested more than" in err
    assert run(config, "match", "NOT " * 5000 + "a") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: column 129: nested more than") and "Traceback" not in err
    # A CSV import rejects that row by line and goes on with the others.
    rows = tmp_path / "deep.csv"
    rows.write_text(
        f"email,topics\nok@example.org,Speed: latency\ndeep@example.org,Deep: {DEEP}\n"
        "fine@example.org,Sparse: sparse\n",
        encoding="utf-8",
    )
    assert run(config, "subscriber", "import", str(rows)) == 1
    captured = capsys.readouterr()
    assert (
        f"{rows}:3: deep@example.org: column topics" in captured.err
        and "nested more than" in captured.err
    )
    assert "2 added" in captured.out and "1 rows rejected" in captured.out


def test_match_json_gives_id_and_why_and_every_match(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stored, "match", "prune*, speculative decoding upvotes>=1", "--json") == 0
    items = out_json(capsys)
    assert isinstance(items, list) and len(items) == 2
    by_title = {m["title"]: m for m in items}
    spec = by_title["Speculative Decoding with Tiny Drafts"]
    assert isinstance(spec["id"], int)
    # why names the words found per field and the condition that passed, and nothing else
    assert "title: Speculative, Decoding" in spec["why"] and "upvotes>=1" in spec["why"]
    assert "prun" not in spec["why"].casefold()
    pruning = by_title["Pruning Diffusion Transformers"]
    assert "Speculative" not in pruning["terms"] and "upvotes" not in pruning["why"]


def test_match_like_takes_an_id_or_an_exact_title(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stored, "match", "prune*", "--json") == 0
    (pruning,) = out_json(capsys)
    assert run(stored, "match", "--like", str(pruning["id"]), "--json") == 0
    by_id = out_json(capsys)
    assert run(stored, "match", "--like", pruning["title"], "--json") == 0
    assert out_json(capsys) == by_id
    assert all(m["id"] != pruning["id"] for m in by_id)  # an example is not news


def test_match_unknown_like_names_it(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(stored, "match", "--like", "No Such Paper") == 1
    assert "'No Such Paper'" in capsys.readouterr().err


def test_match_warns_of_lower_case_or_and_of_matching_nothing(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(stored, "match", "pruning or decoding") == 0
    err = capsys.readouterr().err
    assert "lower-case 'or' is ignored" in err


def test_add_and_import_warn_of_probable_mistakes_but_save(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "subscriber", "add", "w@example.org", "--topic", "A", "pruning or x") == 0
    err = capsys.readouterr().err
    assert "warning: topic 'A': column 9: lower-case 'or' is ignored" in err
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("email,topics\nz@example.org,B: x OR -y\n", encoding="utf-8")
    assert run(config, "subscriber", "import", str(csv_file)) == 0
    captured = capsys.readouterr()
    assert f"warning: {csv_file}:2: z@example.org: topic 'B'" in captured.err
    assert "OR with a negation" in captured.err and "1 added" in captured.out
    # a refused row gets its error alone: advice on the topics of a row not saved is noise
    csv_file.write_text("email,topics\nnot-an-address,B: x OR -y\n", encoding="utf-8")
    assert run(config, "subscriber", "import", str(csv_file)) == 1
    err = capsys.readouterr().err
    assert f"error: {csv_file}:2:" in err and "warning" not in err, err


def _ada(stored: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["subscriber", "add", "ada@example.org", "--topic", "Speed", "latency"]
    assert run(stored, *args, "--topic", "Mine", "") == 0  # a topic of examples alone
    capsys.readouterr()


def _show(stored: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert run(stored, "subscriber", "show", "ada@example.org", "--json") == 0
    shown = out_json(capsys)
    assert isinstance(shown, dict)
    return shown["topics"]


def test_feedback_records_replaces_and_undoes(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _ada(stored, capsys)
    assert run(stored, "match", "latency, prune*", "--json") == 0
    papers = out_json(capsys)
    assert isinstance(papers, list) and len(papers) >= 2
    first, second = papers[0]["title"], papers[1]["title"]
    assert run(stored, "feedback", "ada@example.org", first, "--like") == 0
    assert "recorded like" in capsys.readouterr().out
    assert run(stored, "feedback", "ada@example.org", second, "--dislike", "--topic", "mine") == 0
    capsys.readouterr()
    assert _show(stored, capsys) == [
        {"name": "Speed", "query": "latency", "likes": [first], "dislikes": []},
        {"name": "Mine", "query": "", "likes": [], "dislikes": [second]},
    ]
    # a dislike replaces the like; --undo removes it
    assert run(stored, "feedback", "ada@example.org", first, "--dislike") == 0
    capsys.readouterr()
    assert _show(stored, capsys)[0]["dislikes"] == [first]
    assert run(stored, "feedback", "ada@example.org", first, "--dislike", "--undo") == 0
    assert "removed dislike" in capsys.readouterr().out
    assert _show(stored, capsys)[0] == {
        "name": "Speed", "query": "latency", "likes": [], "dislikes": [],
    }  # fmt: skip
    assert run(stored, "subscriber", "export-data", "ada@example.org") == 0
    exported = out_json(capsys)
    assert isinstance(exported, dict)
    assert [f["verdict"] for f in exported["feedback"]] == ["dislike"]
    assert exported["topics"][1]["dislikes"] == [second]


def test_feedback_errors_exit_1_naming_the_problem(
    stored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _ada(stored, capsys)
    assert run(stored, "feedback", "ada@example.org", "No Such Paper Title", "--like") == 1
    assert "'No Such Paper Title'" in capsys.readouterr().err
    assert run(stored, "match", "latency", "--json") == 0
    title = out_json(capsys)[0]["title"]  # type: ignore[index]
    assert run(stored, "feedback", "ada@example.org", title, "--like", "--topic", "Nope") == 1
    assert "no topic 'Nope'" in capsys.readouterr().err
    assert run(stored, "feedback", "ghost@example.org", title, "--like") == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as both:
        run(stored, "feedback", "ada@example.org", title, "--like", "--dislike")
    assert both.value.code == 2
    capsys.readouterr()
