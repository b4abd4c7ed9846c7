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
