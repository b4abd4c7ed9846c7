#!/usr/bin/env python3
"""Developer entry points that need nothing but Python 3.11+: `demo` and `test`.

    python3 scripts/dev.py demo [DIR]   install digest, build a demo folder, run one full cycle
    python3 scripts/dev.py test [ARGS]  install digest with its test extra, run the whole test suite
    python3 scripts/dev.py test --fast  the same without the tests marked slow
    python3 scripts/dev.py install      only install digest with its test extra into ./.venv

The demo installs into a virtual environment outside the checkout ($DIGEST_VENV, default
~/.cache/digest/venv) and writes the demo folder outside it too (default $TMPDIR/digest-demo), so
it leaves no file in the checkout. The test suite uses ./.venv (git-ignored) unless $DIGEST_VENV.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _venv(default: Path) -> Path:
    path = Path(os.environ.get("DIGEST_VENV") or default)
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating virtual environment {path}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=path.exists()).create(path)
        _run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    return path


def _run(cmd: list[str], **kwargs: object) -> None:
    result = subprocess.run(cmd, **kwargs)
    if result.returncode != 0:
        sys.exit(result.returncode)


def demo(args: list[str]) -> int:
    """Install the project, then let `digest demo` build and run the demo folder."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by an older python
        sys.exit("digest needs Python 3.11 or newer")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    env_dir = _venv(cache / "digest" / "venv")
    python = env_dir / "bin" / "python"
    print("installing digest (pip install .)", flush=True)
    # pip builds the wheel in a temporary folder, so the checkout stays clean; the second call
    # reinstalls digest itself so local changes count without a version bump.
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    _run([*pip, str(ROOT)])
    _run([*pip, "--force-reinstall", "--no-deps", str(ROOT)])
    target = args[0] if args else str(Path(tempfile.gettempdir()) / "digest-demo")
    return subprocess.call([str(env_dir / "bin" / "digest"), "demo", target, *args[1:]])


def install(args: list[str]) -> int:
    """Install the project editable with its test extra into ./.venv (or $DIGEST_VENV)."""
    env_dir = _venv(ROOT / ".venv")
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]"])
    return 0


def test(args: list[str]) -> int:
    """Install the project editable with its test extra and run pytest (--fast: not slow ones)."""
    install([])
    python = Path(os.environ.get("DIGEST_VENV") or ROOT / ".venv") / "bin" / "python"
    if "--fast" in args:
        args = [a for a in args if a != "--fast"] + ["-m", "not slow"]
    if not any(a.startswith(("-n", "--numprocesses")) for a in args):
        # one pytest-xdist worker per core; the slow subprocess tests overlap the rest
        args = ["-n", "auto", *args]
    return subprocess.call([str(python), "-m", "pytest", *args], cwd=ROOT)


def main() -> int:
    commands = {"demo": demo, "test": test, "install": install}
    if len(sys.argv) < 2 or sys.argv[1] not in commands or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2 if len(sys.argv) >= 2 and sys.argv[1] not in ("-h", "--help") else 0
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
