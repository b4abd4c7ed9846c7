"""Benchmark the dump parser against merely reading a file and splitting its lines.

Builds one dump of >= 20,000 papers per layout from ../shared/dumps (each paper repeated with a
varied title, upvotes and author count), then times, best of several runs in this process:

- floor: read the bytes, decode UTF-8, splitlines();
- parse: digest.parse.parse_file on the same file (read, checks, decode, parse, Paper records).

Run: .venv/bin/python bench/parse.py [--papers N] [--repeat R]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from digest.parse import LAYOUTS, format_dump, parse_file  # noqa: E402

DUMPS = ROOT.parent / "shared" / "dumps"
CAPTURE = date(2026, 4, 16)


def source_papers() -> list:
    """Every distinct paper of the shared dumps, as parsed."""
    seen, papers = set(), []
    for path in sorted(DUMPS.glob("*.txt")):
        for p in parse_file(path).papers:
            if p.key not in seen:
                seen.add(p.key)
                papers.append(p)
    return papers


def varied(papers: list, total: int) -> list:
    """Repeat papers up to `total`, each copy with its own title and facts."""
    out = []
    i = 0
    while len(out) < total:
        p = papers[i % len(papers)]
        copy = i // len(papers)
        out.append(
            dataclasses.replace(
                p,
                title=f"{p.title} (variant {copy})" if copy else p.title,
                upvotes=(p.upvotes or 0) + copy if p.published else None,
                authors=(p.authors + copy % 3) if p.authors else p.authors,
            )
        )
        i += 1
    return out


def best_pair(floor_fn, parse_fn, repeat: int) -> tuple[float, float]:
    """Best time of each, alternating the two so both see the same machine load."""
    t_floor = t_parse = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        floor_fn()
        t1 = time.perf_counter()
        parse_fn()
        t2 = time.perf_counter()
        t_floor, t_parse = min(t_floor, t1 - t0), min(t_parse, t2 - t1)
    return t_floor, t_parse


def floor(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(fh.read().decode("utf-8").splitlines())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    if not DUMPS.is_dir():
        print(f"no shared dumps at {DUMPS}", file=sys.stderr)
        return 1
    papers = varied(source_papers(), args.papers)
    print(f"{len(papers):,} papers per dump, best of {args.repeat} runs\n")
    header = f"{'layout':<8} {'MB':>6} {'floor ms':>9} {'parse ms':>9} {'papers/s':>10} "
    print(header + f"{'MB/s':>7} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            path = Path(tmp) / f"big-{layout}.txt"
            text = format_dump(papers, layout=layout, page_date="Apr 16", capture_date=CAPTURE)
            path.write_text(text, encoding="utf-8")
            result = parse_file(path)
            if len(result.papers) != len(papers) or result.warnings:
                print(
                    f"{layout}: parsed {len(result.papers)} papers, {len(result.warnings)} "
                    "warnings: the benchmark dump is not clean",
                    file=sys.stderr,
                )
                return 1
            mb = path.stat().st_size / 1e6
            t_floor, t_parse = best_pair(
                lambda p=path: floor(p), lambda p=path: parse_file(p), args.repeat
            )
            print(
                f"{layout:<8} {mb:>6.1f} {t_floor * 1e3:>9.1f} {t_parse * 1e3:>9.1f} "
                f"{len(papers) / t_parse:>10,.0f} {mb / t_parse:>7.1f} {t_parse / t_floor:>5.2f}x"
            )
    print("\ntarget: >= 50,000 papers/s and ratio <= 3x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
