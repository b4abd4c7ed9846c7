"""The README's first command, run as a newcomer would: from a clean clone, on the defaults."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    """The commands of the README's first code block (comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
    assert block, "README.md must open with a code block of commands"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    demo, test = _readme_commands()[:2]
    assert "demo" in demo and "test" in test
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci, ".ci/run must call the README's test command"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="git is needed to make a clean clone")
def test_readme_main_command_works_from_a_clean_clone(tmp_path: Path) -> None:
    """Installs into a fresh virtual environment, so it needs the package index (slow-ish)."""
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(checkout)], check=True)
    env = {
        **os.environ,
        "DIGEST_VENV": str(tmp_path / "venv"),
        "TMPDIR": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("DIGEST_CONFIG", None)
    demo = _readme_commands()[0]
    done = subprocess.run(
        demo, shell=True, cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "digest-demo"
    messages = list((folder / "maildir" / "new").iterdir())
    assert len(messages) == 3, done.stdout
    assert (folder / "public" / "feeds" / "all.atom").is_file()
    assert str(folder / "maildir") in done.stdout  # it says where the emails are
    leftovers = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert leftovers == "", f"the demo left files in the checkout:\n{leftovers}"


def test_demo_prints_commands_that_run_writes_a_page_and_keeps_edits(tmp_path: Path) -> None:
    import io
    import shlex

    from digest import subscribers as subs
    from digest.config import load_settings
    from digest.demo import run_demo
    from digest.models import Topic
    from digest.store import Store

    folder = tmp_path / "demo"
    first = io.StringIO()
    assert run_demo(folder, out=first, quiet=True) == 0
    said = first.getvalue()
    page = folder / "digest-ada.html"
    assert f"one rendered as a web page: {page}" in said
    assert "<html" in page.read_text(encoding="utf-8")
    status = next(line for line in said.splitlines() if line.strip().startswith("status:"))
    command = shlex.split(status.split("status:", 1)[1])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env={})
    assert done.returncode == 0, done.stderr  # as typed, with no PATH at all
    settings = load_settings(folder / "settings.toml")
    with Store.open(settings.database.url) as store:
        subs.edit_subscriber(store, settings, "ada@example.org", topics=[Topic("Mine", "my words")])
    run_demo(folder, out=io.StringIO(), quiet=True)
    with Store.open(settings.database.url) as store:
        ada = subs.get_subscriber(store, "ada@example.org")
    assert [t.name for t in ada.topics] == ["Mine"]
