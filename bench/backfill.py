"""One backfilled subscriber among many: does planning slow down for everyone?

A store with `--days` days of papers (one dump a day, built from the shared dumps' papers with a
day mark in each title, so every day's papers are new), `--subscribers` daily subscribers who
joined `--cycles` days ago and had a digest recorded on each of those days (their ledger), then
one more day of papers. `send --now --dry-run` is timed the way the CLI runs it
(`Cycle.dry_run`: plan, render, build, no sending), and planning alone (`plan_digests`), first
as is, then with one subscriber added by `subscriber add --backfill N` (watermark 0: every stored
paper is pending for them, so the paper index covers all the days).

Both are timed with the planner of this tree ("after") and with the planner as it was before the
fix (`_plan_states_before` below, kept verbatim: a ledger read and a full re-ranking per
subscriber whose ranked head was filtered out), in the same run, on the same store; the two
must give the same plans (checked).

    .venv/bin/python bench/backfill.py                      # 3,000 subscribers, SQLite
    .venv/bin/python bench/backfill.py --engine postgresql  # a throwaway cluster
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import bench_subscribers  # noqa: E402
from _dumps import load_papers  # noqa: E402
from cycle import Cluster, fresh_database  # noqa: E402

T_END = datetime(2026, 3, 31, 6, 0, tzinfo=UTC)  # the last dump; the dry run is at 08:30


def write_dumps(folder: Path, days: int, per_day: int) -> list[Path]:
    """One dump per day in the layout of the site's page; each day's titles marked as its own."""
    base = list(load_papers().values())
    out = []
    for d in range(days):
        lines = ["Daily Papers", "", f"Mar {d + 1}", ""]
        for k in range(per_day):
            p = base[(d * per_day + k) % len(base)]
            lines += [f"{p.title} (day {d + 1}, {k})", "", p.abstract, "", "·",
                      f"Mar {d + 1}, 2026 {p.upvotes or 0}", ""]  # fmt: skip
        path = folder / f"day{d + 1:02d}.txt"
        path.write_text("\n".join(lines), encoding="utf-8")
        out.append(path)
    return out


def profiles(n: int, per_day: int, per_digest: float, seed: int = 7) -> list[str]:
    """Keyword profiles of 1-6 alternatives whose words' counts in the base papers add up to
    what gives about `per_digest` matching papers a day at `per_day` new papers a day."""
    from digest.text import words

    base = list(load_papers().values())
    df: dict[str, int] = {}
    form: dict[str, str] = {}
    for p in base:
        stems, norms = words(f"{p.title} {p.abstract}")
        for stem, w in zip(stems, norms, strict=True):
            if w.isalpha() and len(w) > 3:
                form.setdefault(stem, w)
        for stem in set(stems):
            df[stem] = df.get(stem, 0) + 1
    target = per_digest * len(base) / per_day
    vocab = sorted(s for s, d in df.items() if 3 <= d <= max(4, target) and s in form)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chosen, total = [], 0
        while total < target and len(chosen) < 6:
            stem = rng.choice(vocab)
            chosen.append(form[stem])
            total += df[stem]
        out.append(", ".join(chosen))
    return out


def build_store(url: str, workdir: Path, args: argparse.Namespace):
    """The store with its ledger; returns (store, settings)."""
    from digest.config import build_settings
    from digest.ingest import ingest_files
    from digest.models import StatusChange
    from digest.outbox import queue_digests
    from digest.store import Store

    settings = build_settings(
        {"database": {"url": url}, "inbox": {"settle_seconds": 0}}, root=workdir
    )
    store = Store.open(url)
    dumps = write_dumps(workdir, args.days, args.per_day)
    day0 = T_END - timedelta(days=args.days - 1)

    def ingest(path: Path, at: datetime) -> None:
        report = ingest_files(store, settings, [path], quiet=True, clock=at.timestamp)
        assert not report.failures, report.failures

    joined = args.days - 1 - args.cycles  # subscribers join after this many days of papers
    for d in range(joined):
        ingest(dumps[d], day0 + timedelta(days=d))
    since = day0 + timedelta(days=joined - 1, hours=1)
    subs = bench_subscribers(profiles(args.subscribers, args.per_day, args.per_digest), since)
    store.insert_subscribers(subs, watermark=store.max_paper_id(), how=StatusChange.IMPORT)
    recorded = 0
    for d in range(joined, args.days):
        at = day0 + timedelta(days=d)
        ingest(dumps[d], at)
        if d < args.days - 1:  # the last day's papers stay pending: the dry run plans them
            recorded += queue_digests(
                store, settings, now=at + timedelta(hours=2), force=True
            ).queued
    return store, settings, recorded


def _plan_states_before(store, settings, states, papers, by_id, index, now):
    """digest.outbox._plan_states before the fix, verbatim (the reference and the baseline)."""
    from digest.match import match_profiles
    from digest.outbox import Plan
    from digest.schedule import latest_slot
    from digest.store import LedgerItem

    top = papers[-1].id if papers else 0
    profiles = {s.subscriber.id: s.subscriber.topics for s in states if s.subscriber.topics}
    limit = 2 * settings.mail.max_papers
    results = match_profiles(index, profiles, limit=limit) if index is not None and profiles else {}
    matched = sorted({pid for found in results.values() for pid in found.paper_ids()})
    delivered = store.delivered_pairs(sorted(results), matched) if results else set()
    plans = []
    for s in states:
        sub = s.subscriber
        since = sub.since or sub.created_at
        found = results.get(sub.id)
        items: list[LedgerItem] = []
        ranked, rank = found.paper_ids() if found else [], 0
        while len(items) < settings.mail.max_papers:
            if rank == len(ranked):
                if found is None or not found.cut:
                    break
                found = found.full()
                ranked = found.paper_ids()
                delivered |= store.delivered_pairs([sub.id], ranked[rank:])
            pid = ranked[rank]
            if (
                pid > s.watermark
                and by_id[pid].first_seen >= since
                and (sub.id, pid) not in delivered
            ):
                m = found[rank]
                items.append(
                    LedgerItem(paper_id=pid, topics=m.topics, terms=m.terms, score=m.score)
                )
            rank += 1
        plans.append(Plan(s, items, max(top, s.watermark), latest_slot(sub, now)))
    return plans


def _key(plans: Sequence) -> list:
    return [(p.state.subscriber.id, p.items, p.watermark, p.slot) for p in plans]


def measure(store, settings, now: datetime, repeat: int) -> dict[str, float]:
    """Median seconds of planning alone and of the whole dry run, over `repeat` runs."""
    from digest.outbox import plan_digests
    from digest.pipeline import Cycle

    plan_s, dry_s = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        plans, _ = plan_digests(store, settings, now=now, force=True)
        plan_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        count = Cycle(store, settings, lambda: now).dry_run(None, force=True)
        dry_s.append(time.perf_counter() - start)
    return {
        "plan": statistics.median(plan_s),
        "dry_run": statistics.median(dry_s),
        "digests": count,
        "items": sum(len(p.items) for p in plans),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=3000)
    ap.add_argument("--days", type=int, default=31, help="days of papers stored (one dump each)")
    ap.add_argument("--per-day", type=int, default=50, help="new papers per day")
    ap.add_argument("--per-digest", type=float, default=8.0, help="matches a day per profile")
    ap.add_argument("--cycles", type=int, default=5, help="daily digests already recorded")
    ap.add_argument("--backfill", type=int, default=30, help="days of the backfilled subscriber")
    ap.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-before", action="store_true", help="time the current planner only")
    args = ap.parse_args()

    import digest.outbox as outbox
    from digest.models import Topic
    from digest.outbox import plan_digests
    from digest.subscribers import add_subscriber

    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{platform.platform()}; engine {args.engine}")  # fmt: skip
    workdir = Path(tempfile.mkdtemp(prefix="digest-backfill-"))
    cluster = None
    try:
        if args.engine == "sqlite":
            url = f"sqlite:///{workdir / 'digest.db'}"
        else:
            server = os.environ.get("DIGEST_BENCH_POSTGRES_URL")
            if not server:
                cluster = Cluster()
                server = cluster.start()
            url = fresh_database(server)
        start = time.perf_counter()
        store, settings, recorded = build_store(url, workdir, args)
        print(f"setup {time.perf_counter() - start:.1f} s: {store.count_papers():,} papers, "
              f"{args.subscribers:,} subscribers, {recorded:,} digests recorded over "
              f"{args.cycles} days")  # fmt: skip
        now = T_END + timedelta(hours=2, minutes=30)
        current = outbox._plan_states
        planners = [("after", current)] + (
            [] if args.skip_before else [("before", _plan_states_before)]
        )
        rows: dict[tuple[str, str], dict[str, float]] = {}
        plans: dict[tuple[str, str], list] = {}
        for case in ("plain", "backfill"):
            if case == "backfill":
                query = profiles(1, args.per_day, args.per_digest, seed=11)[0]
                add_subscriber(store, settings, "late@example.org",
                               topics=[Topic("Interests", query)], cadence="daily",
                               backfill_days=args.backfill,
                               now=T_END + timedelta(hours=1))  # fmt: skip
            measure(store, settings, now, 1)  # warm: numba kernels, query cache
            for name, planner in planners:
                outbox._plan_states = planner  # type: ignore[assignment]  # the baseline, swapped in
                try:
                    rows[(name, case)] = measure(store, settings, now, args.repeat)
                    print(f"  measured {name}, {case}: {rows[(name, case)]}", flush=True)
                    plans[(name, case)] = _key(
                        plan_digests(store, settings, now=now, force=True)[0]
                    )
                finally:
                    outbox._plan_states = current
        print("| planner | case | plan s | dry run s | digests | papers |")
        print("| --- | --- | --- | --- | --- | --- |")
        for (name, case), r in rows.items():
            print(f"| {name} | {case} | {r['plan']:.3f} | {r['dry_run']:.3f} | "
                  f"{r['digests']:,} | {r['items']:,} |")  # fmt: skip
        for name, _ in planners:
            plain, back = rows[(name, "plain")], rows[(name, "backfill")]
            print(f"{name}: one backfilled subscriber makes planning "
                  f"{back['plan'] / plain['plan']:.1f}x and the dry run "
                  f"{back['dry_run'] / plain['dry_run']:.1f}x as slow")  # fmt: skip
        if not args.skip_before:
            for case in ("plain", "backfill"):
                same = plans[("after", case)] == plans[("before", case)]
                print(f"{case}: same plans before and after: {same}")
                if not same:
                    sys.exit("the plans differ")
            b, a = rows[("before", "backfill")], rows[("after", "backfill")]
            print(f"with the backfill, after vs before: planning {b['plan'] / a['plan']:.1f}x, "
                  f"dry run {b['dry_run'] / a['dry_run']:.1f}x faster")  # fmt: skip
        store.close()
    finally:
        if cluster:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
