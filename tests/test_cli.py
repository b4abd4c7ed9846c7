"""The `digest` command as an operator runs it: one-line errors, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

from digest.config import load_settings
from digest.ingest import ingest_files
from digest.models import Subscriber, Topic
from digest.store import Store

DUMPS = Path(__file__).resolve().parents[2] / "shared" / "dumps"
OWN_DUMPS = Path(__file__).resolve().parent / "fixtures" / "dumps"


def digest(*args: str, cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digest.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, **kwargs,
    )  # fmt: skip


def site(tmp_path: Path) -> Path:
    assert digest("init", str(tmp_path / "site"), cwd=tmp_path).returncode == 0
    return tmp_path / "site" / "settings.toml"


def test_serve_on_a_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    config = site(tmp_path)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = digest("--config", str(config), "serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    )
    assert "Traceback" not in result.stderr
    assert "serving" not in result.stdout  # it never claimed to serve


def test_serve_on_an_unknown_host_is_a_one_line_error(tmp_path: Path) -> None:
    config = site(tmp_path)
    args = ("serve", "--host", "no-such-host.invalid", "--port", "8")
    result = digest("--config", str(config), *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "error: cannot listen on no-such-host.invalid:8: " in result.stderr
    assert "Traceback" not in result.stderr


def test_json_piped_into_head_stops_quietly(tmp_path: Path) -> None:
    # Far more than a pipe buffer: the reader is gone long before the writer is done.
    dumps = sorted(DUMPS.glob("*.txt")) or sorted(OWN_DUMPS.glob("*.txt"))
    cmd = [sys.executable, "-m", "digest.cli", "parse", "--json", *map(str, dumps * 20)]
    writer = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.read(10)  # `head -c 10`
    writer.stdout.close()
    err = writer.stderr.read().decode()
    writer.wait(60)
    writer.stderr.close()
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert writer.returncode == 1


def test_two_sends_at_once_give_everyone_one_digest_and_no_traceback(
    tmp_path: Path, store_url: str
) -> None:
    config = site(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        'url = "sqlite:///digest.db"', f'url = "{store_url}"'
    )
    config.write_text(text, encoding="utf-8")
    settings = load_settings(config, env={})
    people = [f"r{n:04d}@example.org" for n in range(400)]
    with Store.open(store_url) as store:
        yesterday = datetime.now(UTC) - timedelta(days=1)
        subs = [
            Subscriber(
                id=0,
                email=email,
                name="",
                status="active",
                cadence="daily",
                time="07:00",
                tz="UTC",
                weekday=0,
                created_at=yesterday,
                token=f"t{email}",
                topics=(Topic("Mine", "sparse, latency, speculative"),),
                since=yesterday,
            )
            for email in people
        ]
        store.insert_subscribers(subs, how="import")
        ingest_files(store, settings, [OWN_DUMPS / "ingest_day1.txt"], quiet=True)
    # Overlapping cron runs: both plan, record and deliver at the same time.
    cmd = [sys.executable, "-m", "digest.cli", "--config", str(config), "-q", "send", "--now"]
    runs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=120) for run in runs]
    for run, (_out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0 and "Traceback" not in err, err
    received = Counter()
    for path in (settings.mail.maildir / "new").iterdir():
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        received[str(msg["To"])] += 1
    assert sorted(received) == people and set(received.values()) == {1}


def _ready_site(tmp_path: Path) -> Path:
    """A site holding the project's own dumps and one subscriber with papers pending."""
    config = site(tmp_path)
    dumps = sorted(map(str, OWN_DUMPS.glob("*.txt")))
    assert digest("--config", str(config), "ingest", *dumps, cwd=tmp_path).returncode in (0, 1)
    add = ("subscriber", "add", "a@example.org", "--topic", "T", "model", "--backfill", "3650")
    assert digest("--config", str(config), *add, cwd=tmp_path).returncode == 0
    return config


def _file_where_a_folder_goes(folder: Path) -> Path:
    if folder.exists():
        folder.rename(folder.with_name(folder.name + ".moved"))
    folder.write_text("a file, not a folder\n")
    return folder


def test_a_file_where_a_folder_belongs_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    # Folders the settings or options name that cannot be made or written: the path and
    # why, exit 1, never a traceback (found by running every command against CONTRACT.md).
    config = _ready_site(tmp_path)
    root = config.parent
    blocker = root / "not-a-folder"
    blocker.write_text("x\n")
    cases = [
        (("preview", "a@example.org", "--out", str(blocker / "out")), {}, str(blocker)),
        (("status",), {"DIGEST_DATABASE_URL": f"sqlite:///{blocker}/x.db"}, str(blocker)),
    ]
    for args, env, named in cases:
        result = digest("--config", str(config), *args, cwd=tmp_path, env={**_env(), **env})
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        assert result.returncode == 1 and last.startswith("error: ") and named in last, (
            args, result.stderr)  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr

    public = _file_where_a_folder_goes(root / "public")
    result = digest("--config", str(config), "feeds", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {public}" in result.stderr

    processed = _file_where_a_folder_goes(root / "processed")
    (root / "inbox" / "late.txt").write_bytes(sorted(OWN_DUMPS.glob("*.txt"))[0].read_bytes())
    env = {**_env(), "DIGEST_INBOX_SETTLE_SECONDS": "0"}
    result = digest("--config", str(config), "ingest", cwd=tmp_path, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {processed}" in result.stderr


def test_prompting_commands_with_standard_input_closed_say_so(tmp_path: Path) -> None:
    # `0<&-` leaves sys.stdin None: no prompt can be asked, and no traceback either.
    import os

    config = _ready_site(tmp_path)
    for args, said in [
        (("admin-password",), "no standard input"),
        (("subscriber", "wipe", "a@example.org"), "give --yes"),
    ]:
        result = digest(
            "--config", str(config), *args, cwd=tmp_path, preexec_fn=lambda: os.close(0)
        )
        assert result.returncode == 1 and said in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_ingest_prints_what_it_doubted_and_each_failure_once(tmp_path: Path) -> None:
    config = site(tmp_path)
    whole = (OWN_DUMPS / "ingest_day1.txt").read_bytes()
    cut = tmp_path / "cut.txt"
    cut.write_bytes(whole[: whole.index(b"Speculative decoding trades") + 100])
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "bad.txt"
    bad.write_bytes(b"")
    # named as given on the command line (the folder too), as `digest parse` names them
    result = digest("--config", str(config), "ingest", "cut.txt", "in/bad.txt", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # bad.txt failed
    lines = result.stderr.splitlines()
    assert any(x.startswith("warning: cut.txt:") and "cut short" in x for x in lines), lines
    assert [x for x in lines if "bad.txt" in x] == ["error: in/bad.txt: file is empty"], lines
    assert "3 papers (3 new)" in result.stdout
