"""Where one message's CPU goes on the worker's path, in process, without a transport.

    .venv/bin/python bench/deliver_parts.py [--n 10000] [--keep DIR]

Builds (or reuses, with --keep) a SQLite store of N queued digests as bench/cycle.py does
(the shared papers, bench subscribers, one queueing run), then walks the claimed batches the
way a worker does: read the batch (`Store.digest_records`), build each `Digest`, its links, the
render, the message bytes; prints each part's CPU per message and its share, and the whole
against the worker's message rate. Nothing is sent or marked, so the store can be reused.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import cycle  # noqa: E402


def build(workdir: Path, n: int) -> None:
    """A queued store of n subscribers in workdir (each stage in its own process)."""
    url = f"sqlite:///{workdir / 'digest.db'}"
    cycle._settings(workdir, url, 2525)
    for stage in ("ingest", "subscribers", "queue"):
        cycle.run_child(stage, workdir, url, 2525, n)


def measure(workdir: Path, batch: int) -> dict[str, float]:
    """CPU seconds of each part over every queued digest, claimed batch by batch."""
    from digest.links import LinkSigner, links_for, secret_key
    from digest.mail import MessageBuilder
    from digest.outbox import build_digest
    from digest.render import Renderer
    from digest.store import Store

    url = f"sqlite:///{workdir / 'digest.db'}"
    settings = cycle._settings(workdir, url, 2525)
    parts = dict.fromkeys(("read batch", "build digest", "links", "render", "message"), 0.0)
    clock = time.process_time
    with Store.open(url) as store:
        ids = store.digest_ids_by_status("queued")
        renderer, builder = Renderer(settings), MessageBuilder(settings)
        signer = LinkSigner(secret_key(store, settings))
        papers: dict = {}
        for start in range(0, len(ids), batch):
            t0 = clock()
            records = store.digest_records(ids[start : start + batch], papers)
            parts["read batch"] += clock() - t0
            for i, record in records.items():
                t0 = clock()
                digest = build_digest(store, i, record)
                t1 = clock()
                links = links_for(settings, signer, digest.subscriber, digest.id)
                t2 = clock()
                rendered = renderer.render(digest, links)
                t3 = clock()
                builder.build(rendered, digest, links)
                t4 = clock()
                parts["build digest"] += t1 - t0
                parts["links"] += t2 - t1
                parts["render"] += t3 - t2
                parts["message"] += t4 - t3
    parts["messages"] = len(ids)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="subscribers (default 10,000)")
    ap.add_argument("--batch", type=int, default=50, help="digests per claimed batch")
    ap.add_argument("--keep", metavar="DIR", help="build the store here once, reuse it after")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the store (best kept)")
    args = ap.parse_args()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="digest-parts-"))
    try:
        if not (workdir / "digest.db").exists():
            workdir.mkdir(parents=True, exist_ok=True)
            build(workdir, args.n)
        runs = [measure(workdir, args.batch) for _ in range(args.rounds)]
        best = min(runs, key=lambda r: sum(v for k, v in r.items() if k != "messages"))
        n = int(best.pop("messages"))
        total = sum(best.values())
        print(f"{n:,} digests, best of {args.rounds} passes (CPU, one process)")
        print("| part | µs a message | share |\n| --- | --- | --- |")
        for name, seconds in best.items():
            print(f"| {name} | {seconds / n * 1e6:.0f} | {seconds / total:.0%} |")
        print(f"| **all** | **{total / n * 1e6:.0f}** | {n / total:,.0f} messages/s on one core |")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
