"""Benchmark how fast, and in how much memory, `digest ingest` refuses a junk dump.

Writes files of short junk lines (what a wrong file in the inbox looks like), then runs the real
CLI on each in a fresh process and prints its wall time and peak RSS, next to the file's size and
the floor of a process that only reads the file and splits its lines.

Run: .venv/bin/python bench/junk.py [SIZE_MBxLINE_BYTES ...]   (default: 10x2 10x10 20x2 20x80)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = "import sys; data = open(sys.argv[1], encoding='utf-8').read(); lines = data.split('\\n')"


def _child(cmd: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB; ru_maxrss is KiB on Linux) and exit status of one child."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest so far
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss / 1024, proc.returncode


def main(cases: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([sys.executable, "-m", "digest.cli", "init", str(site)], check=True,
                       capture_output=True)  # fmt: skip
        config = str(site / "settings.toml")
        print(f"{'file':>26} | {'floor s':>7} {'MB':>5} | {'ingest s':>8} {'MB':>5} | exit")
        for case in cases:
            size_mb, width = (int(x) for x in case.split("x"))
            junk = Path(tmp) / f"junk-{case}.txt"
            junk.write_text(("x" * (width - 1) + "\n") * (size_mb * 1_000_000 // width))
            floor_s, floor_mb, _ = _child([sys.executable, "-c", FLOOR, str(junk)])
            cmd = [sys.executable, "-m", "digest.cli", "--config", config, "-q", "ingest"]
            ingest_s, ingest_mb, status = _child([*cmd, str(junk)])
            label = f"{size_mb} MB of {width}-byte lines"
            print(f"{label:>26} | {floor_s:7.1f} {floor_mb:5.0f} | {ingest_s:8.1f} "
                  f"{ingest_mb:5.0f} | {status}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "cases", nargs="*", default=["10x2", "10x10", "20x2", "20x80"],
        help="SIZE_MBxLINE_BYTES, e.g. 10x2 (default: 10x2 10x10 20x2 20x80)",
    )  # fmt: skip
    main(parser.parse_args().cases)
