"""The `digest` command as an operator runs it: one-line errors, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

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
