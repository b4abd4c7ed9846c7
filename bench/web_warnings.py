"""What topic warnings cost a live-preview request (POST /admin/subscribers/new/preview).

`python bench/web_warnings.py [--papers N] [--dumps D] [--repeats R]`: a SQLite store of N
papers (the shared dumps' papers, copied with numbered titles up to N) in D dumps, the preview
backtesting the last 3 (`web.preview_dumps`); the admin add form's preview endpoint timed
through Flask's test client, interleaved round by round, in four modes:

- **bare**: the backtest alone, no why and no warnings (both patched out), the baseline;
- **why**: with each listed paper's why (rank.explain), no warnings;
- **cached**: as shipped, why and warnings; the coverage index of the 2,000 most recent stored
  papers is built once per change of the stored papers (two counts per request decide);
- **cold**: as shipped but the coverage index rebuilt on every request (what the cache saves).

Prints the median milliseconds per request of each mode and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _dumps import load_papers
from werkzeug.security import generate_password_hash

from digest.config import build_settings
from digest.models import Paper, ParseResult
from digest.store import Store
from digest.web import admin as admin_views
from digest.web import create_app
from digest.web.preview import CoverageIndex, Why

PASSWORD = "bench"
QUERY = "speculative decoding, KV cache, quantization and latency"


def _papers(n: int) -> list[Paper]:
    base = list(load_papers().values())
    out = []
    for k in range(n):
        p = base[k % len(base)]
        copy = k // len(base)
        title = p.title if copy == 0 else f"{p.title} ({copy})"
        out.append(Paper(title=title, abstract=p.abstract, upvotes=p.upvotes))
    return out


def main() -> None:
    """Run the three modes interleaved and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--papers", type=int, default=2_000)
    ap.add_argument("--dumps", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = build_settings(
            {
                "database": {"url": "sqlite:///digest.db"},
                "web": {
                    "admin_password_hash": generate_password_hash(
                        PASSWORD, method="pbkdf2:sha256:1000"
                    ),
                    "preview_dumps": 3,
                },
            },
            root=root,
        )
        store = Store.open(settings.database.url)
        papers = _papers(args.papers)
        now = datetime.now(UTC)
        size = len(papers) // args.dumps + 1
        for d in range(args.dumps):
            chunk = tuple(papers[d * size : (d + 1) * size])
            store.ingest_dump(f"d{d}.txt", f"{d:064x}", 100, ParseResult(papers=chunk),
                              received_at=now - timedelta(days=args.dumps - d))  # fmt: skip
        app = create_app(settings, store)
        client = app.test_client()
        with client.session_transaction() as sess:
            sess["admin"] = True
            sess["csrf_token"] = "bench"
        data = {"csrf_token": "bench", "topic_name": ["T"], "topic_query": [QUERY]}
        st = app.extensions["digest"]
        real, real_why = admin_views.form_warnings, Why.__call__

        def once(mode: str) -> float:
            bare = mode in ("bare", "why")
            admin_views.form_warnings = (lambda: {}) if bare else real  # type: ignore[assignment]
            Why.__call__ = (lambda self, m: ()) if mode == "bare" else real_why  # type: ignore[method-assign]
            if mode == "cold":
                st.coverage = CoverageIndex()
            start = time.perf_counter()
            answer = client.post("/admin/subscribers/new/preview", data=data)
            took = time.perf_counter() - start
            assert answer.status_code == 200, answer.status_code
            assert ("0" in answer.get_json()["warnings"]) == (not bare)
            return took * 1000

        modes = ("bare", "why", "cached", "cold")
        for mode in modes:  # warm: templates, the compile cache, the coverage index
            once(mode)
        once("cached")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode in modes:
                times[mode].append(once(mode))
        admin_views.form_warnings = real  # type: ignore[assignment]
        Why.__call__ = real_why  # type: ignore[method-assign]
        store.close()
    base = statistics.median(times["bare"])
    print(f"{args.papers} stored papers in {args.dumps} dumps (preview: the last 3), "
          f"{args.repeats} interleaved rounds, median ms/request:")  # fmt: skip
    for mode in modes:
        med = statistics.median(times[mode])
        print(f"  {mode:>7}: {med:8.1f} ms  ({med / base:.2f}x bare; "
              f"min {min(times[mode]):.1f}, max {max(times[mode]):.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
