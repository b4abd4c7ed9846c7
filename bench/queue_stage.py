"""The queue stage (plan + record) on one SQLite store, code against code, interleaved.

Builds a store once (the shared dumps and N bench subscribers, as bench/cycle.py does), then
runs `queue_digests` (every subscriber due) on a fresh copy of it for each code tree given,
round after round, each run in a child process of its own. Prints wall and CPU seconds, the
share inside `record_plans`, peak RSS and a hash of the recorded ledger, so two trees can be
checked to record the same digests, items, order, words, why and progress.

    .venv/bin/python bench/queue_stage.py --sizes 100000                      # this checkout
    git archive COMMIT digest | tar -x -C /tmp/before
    .venv/bin/python bench/queue_stage.py --code /tmp/before --code . --rounds 2
    .venv/bin/python bench/queue_stage.py --sizes 100000 --learned 0.1 --rounds 2

`--learned SHARE` runs each round twice on the same subscribers: keywords alone, then with
SHARE of the subscribers holding examples on their first topic (3 likes and 1 dislike, drawn
from `--distinct` example sets of stored papers), and prints the ratio: the issue's "queue
stage with learned ranking within 1.5x of keywords alone".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

NOW = "2026-12-02T00:00:00+00:00"
# Every ledger-side table, in a fixed order; instants normalised to one text form (a whole
# second is stored with or without ".000000" depending on who bound it).
LEDGER = (
    "SELECT subscriber_id, paper_id, digest_id, topic, topics, terms, score, why, delivered_at "
    "FROM deliveries ORDER BY subscriber_id, paper_id",
    "SELECT id, subscriber_id, kind, message_id, status, created_at, next_attempt_at, sent_at, "
    "matched FROM digests ORDER BY id",
    "SELECT digest_id, paper_id, position, topics, terms, score FROM digest_extras "
    "ORDER BY digest_id, position",
    "SELECT id, watermark, last_slot, next_due_at FROM subscribers ORDER BY id",
    "SELECT * FROM rising_deliveries ORDER BY 1, 2",
)
_WHOLE_SECOND = re.compile(r"(\d\d:\d\d:\d\d)\.000000")


def ledger_hash(db: Path) -> str:
    """A hash of everything a queue pass records."""
    digest = hashlib.sha256()
    with sqlite3.connect(db) as con:
        for query in LEDGER:
            for row in con.execute(query):
                digest.update(_WHOLE_SECOND.sub(r"\1", repr(row)).encode())
    return digest.hexdigest()[:16]


def child(db: Path) -> dict:
    """One queue pass on `db` (in this process): the figures."""
    from datetime import datetime

    from digest.config import build_settings
    from digest.outbox import queue_digests
    from digest.store import Store

    url = f"sqlite:///{db}"
    settings = build_settings(
        {"database": {"url": url}, "inbox": {"settle_seconds": 0}}, root=db.parent
    )
    with Store.open(url) as store:
        spent = [0.0, 0.0]
        inner = store.record_plans

        def timed(plans, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return inner(plans, **kwargs)
            finally:
                spent[0] += time.perf_counter() - wall
                spent[1] += time.process_time() - cpu

        store.record_plans = timed  # type: ignore[method-assign]
        wall, cpu = time.perf_counter(), time.process_time()
        report = queue_digests(store, settings, now=datetime.fromisoformat(NOW), force=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "wall": wall, "cpu": cpu, "record_wall": spent[0], "record_cpu": spent[1],
        "queued": report.queued,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def make_store(size: int, folder: Path) -> Path:
    """The shared dumps and `size` bench subscribers in a new SQLite store; its path."""
    import cycle

    url = f"sqlite:///{folder / 'digest.db'}"
    cycle._settings(folder, url, 25)
    cycle.run_child("ingest", folder, url, 25, size)
    cycle.run_child("subscribers", folder, url, 25, size)
    return folder / "digest.db"


def add_examples(template: Path, out: Path, share: float, distinct: int) -> int:
    """A copy of `template` where `share` of the subscribers hold examples on their first
    topic (3 likes, 1 dislike, from `distinct` seeded sets); the number of such subscribers."""
    import random

    shutil.copy(template, out)
    rng = random.Random(13)
    # closed (not only committed) before returning: run() copies the database file alone,
    # which must not leave the rows behind in a -wal file
    with contextlib.closing(sqlite3.connect(out)) as con, con:
        pids = [r[0] for r in con.execute("SELECT id FROM papers ORDER BY id")]
        sets = [rng.sample(pids, 4) for _ in range(distinct)]
        firsts = con.execute(
            "SELECT subscriber_id, name FROM topics WHERE position = "
            "(SELECT MIN(position) FROM topics t WHERE t.subscriber_id = topics.subscriber_id)"
            " ORDER BY subscriber_id"
        ).fetchall()
        step = max(1, round(1 / share))
        chosen = firsts[::step]
        rows = [
            (sid, name, pid, "like" if k < 3 else "dislike", NOW)
            for n, (sid, name) in enumerate(chosen)
            for k, pid in enumerate(sets[n % distinct])
        ]
        con.executemany(
            "INSERT INTO feedback (subscriber_id, topic, paper_id, verdict, at) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    return len(chosen)


def run(code: Path, template: Path) -> dict:
    """A queue pass with the digest package of `code` on a copy of `template`."""
    work = Path(tempfile.mkdtemp(prefix="digest-queue-"))
    try:
        db = work / "digest.db"
        shutil.copy(template, db)
        env = {**os.environ, "PYTHONPATH": str(code.resolve())}
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(db)], env=env, capture_output=True,
            check=False, cwd=work,
        )  # fmt: skip
        if done.returncode:
            sys.exit(f"queue pass with {code} failed:\n{done.stderr.decode()[-3000:]}")
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
        result["hash"] = ledger_hash(db)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000")
    ap.add_argument("--code", action="append", type=Path, help="a tree holding digest/")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument(
        "--learned",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="also run with SHARE of the subscribers holding examples",
    )
    ap.add_argument("--distinct", type=int, default=1000, help="distinct example sets")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    codes = args.code or [ROOT]
    print("| subscribers | code | round | wall s | CPU s | record CPU s | peak MB | ledger |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in (int(s) for s in args.sizes.split(",")):
        folder = Path(tempfile.mkdtemp(prefix="digest-queue-store-"))
        try:
            template = make_store(size, folder)
            stores = [("", template)]
            if args.learned:
                learned = folder / "learned.db"
                n = add_examples(template, learned, args.learned, args.distinct)
                stores.append((f" + {n:,} learned", learned))
            for r in range(1, args.rounds + 1):
                for code in codes:
                    walls = []
                    for label, store in stores:
                        x = run(code, store)
                        walls.append(x["wall"])
                        print(f"| {size:,}{label} | {code} | {r} | {x['wall']:.1f} "
                              f"| {x['cpu']:.1f} | {x['record_cpu']:.1f} | {x['peak_mb']:.0f} "
                              f"| {x['hash']} |", flush=True)  # fmt: skip
                    if len(walls) == 2:
                        print(
                            f"learned / keywords alone, round {r}: {walls[1] / walls[0]:.2f}x",
                            flush=True,
                        )
        finally:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
