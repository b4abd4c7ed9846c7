"""The whole cycle measured: ingest -> match -> record -> render & deliver, at 10k and 100k
subscribers, on SQLite and PostgreSQL, with 1 and 3 `digest worker` processes.

Each stage runs in a child process of its own, so its peak memory (ru_maxrss from os.wait4) is
that stage's alone. Delivery goes to a minimal asyncio SMTP sink in another process, which
counts the messages and their distinct Message-IDs (every subscriber must get exactly one).

    .venv/bin/python bench/cycle.py                       # 10k and 100k, SQLite and PostgreSQL
    .venv/bin/python bench/cycle.py --sizes 10000 --engines sqlite
    DIGEST_BENCH_POSTGRES_URL=postgresql+psycopg://u:p@host/db .venv/bin/python bench/cycle.py

PostgreSQL: a throwaway cluster (default, durable settings) is started in a temp folder when the
server binaries exist (/usr/lib/postgresql/*/bin), unless DIGEST_BENCH_POSTGRES_URL names a
server where a role may create databases.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import os
import platform
import pwd
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import bench_subscribers, free_port, sink_protocol  # noqa: E402

DUMPS = ROOT.parent / "shared" / "dumps"
T0_OFFSET_HOURS = 1  # digests are queued an hour "ago" so real-clock workers find them due


# --- the SMTP sink -------------------------------------------------------------------------------


def _sink(port: int, ready, counter, ids_out) -> None:
    """The sink process: counts messages and, on request, the distinct Message-IDs seen."""
    import asyncio

    seen: set[bytes] = set()
    protocol = sink_protocol(counter, seen)

    async def serve():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", port)
        ready.set()
        async with server:
            while True:
                await asyncio.sleep(0.2)
                if ids_out.poll():
                    ids_out.recv()
                    ids_out.send(len(seen))
                    seen.clear()

    asyncio.run(serve())


class Sink:
    """The sink process: `count` messages so far, `distinct()` Message-IDs since the last call."""

    def __init__(self) -> None:
        self.port = free_port()
        self.counter = mp.Value("l", 0)
        ready = mp.Event()
        self.pipe, child = mp.Pipe()
        self.proc = mp.Process(
            target=_sink, args=(self.port, ready, self.counter, child), daemon=True
        )
        self.proc.start()
        if not ready.wait(20):
            sys.exit("the SMTP sink did not start")

    @property
    def count(self) -> int:
        return self.counter.value

    def distinct(self) -> int:
        self.pipe.send("ids")
        return self.pipe.recv()

    def stop(self) -> None:
        self.proc.terminate()


# --- PostgreSQL ----------------------------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL cluster with default (durable) settings on a free loopback port."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            sys.exit("no PostgreSQL server binaries; set DIGEST_BENCH_POSTGRES_URL or skip it")
        self.bindir = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="digest-bench-pg-"))
        self.user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.user:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        data = str(self.root / "data")
        self._run(str(self.bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--no-locale")  # fmt: skip
        port = free_port()
        opts = f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=50"
        self._run(str(self.bindir / "pg_ctl"), "-D", data, "-l", str(self.root / "log"),
                  "-o", opts, "-w", "start")  # fmt: skip
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast",
                      "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    name = f"digest_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


# --- stages (each in a child process) ------------------------------------------------------------


def _settings_data(url: str, port: int) -> dict:
    """The settings every stage and worker runs with: the database, SMTP to the sink."""
    return {
        "database": {"url": url},
        "inbox": {"settle_seconds": 0},
        "mail": {"transport": "smtp"},
        "smtp": {"host": "127.0.0.1", "port": port},
    }


def _settings(workdir: Path, url: str, port: int):
    import tomli_w

    from digest.config import build_settings

    data = _settings_data(url, port)
    (workdir / "settings.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
    return build_settings(data, root=workdir)


def stage_ingest(settings, workdir: Path, _n: int) -> dict:
    from digest.ingest import ingest_files
    from digest.store import Store

    files = sorted(DUMPS.glob("*.txt"))
    with Store.open(settings.database.url) as store:
        start = time.perf_counter()
        report = ingest_files(store, settings, files, quiet=True)
        seconds = time.perf_counter() - start
        papers = store.count_papers()
    assert not report.failures, report.failures
    return {"seconds": seconds, "papers": papers, "files": len(files)}


def profiles(n: int, seed: int = 7) -> list[str]:
    """Keyword profiles of 1-4 alternatives whose words each match a few stored papers, drawn
    until the alternatives' paper counts add up to about 10 (so ~10 papers per digest)."""
    from digest.parse import parse_file
    from digest.text import words

    papers = {}
    for path in sorted(DUMPS.glob("*.txt")):
        for p in parse_file(path).papers:
            papers.setdefault(p.key, p)
    df: dict[str, int] = {}
    form: dict[str, str] = {}
    for p in papers.values():
        stems, norms = words(f"{p.title} {p.abstract}")
        for s, w in zip(stems, norms, strict=True):
            if w.isalpha() and len(w) > 3:
                form.setdefault(s, w)
        for s in set(stems):
            df[s] = df.get(s, 0) + 1
    vocab = sorted(s for s, d in df.items() if 2 <= d <= 8 and s in form)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chosen, total = [], 0
        while total < 9 and len(chosen) < 4:
            s = rng.choice(vocab)
            chosen.append(form[s])
            total += df[s]
        out.append(", ".join(chosen))
    return out


def stage_subscribers(settings, workdir: Path, n: int) -> dict:
    from datetime import UTC, datetime, timedelta

    from digest.models import StatusChange
    from digest.store import Store

    since = datetime.now(UTC) - timedelta(days=2)
    start = time.perf_counter()
    queries = profiles(n)
    subs = bench_subscribers(queries, since)
    with Store.open(settings.database.url) as store:
        for chunk in range(0, n, 20_000):
            store.insert_subscribers(subs[chunk : chunk + 20_000], how=StatusChange.IMPORT)
    return {"seconds": time.perf_counter() - start}


def stage_queue(settings, workdir: Path, _n: int) -> dict:
    """queue_digests as the scheduler runs it; record_plans timed apart (the rest is matching)."""
    from datetime import UTC, datetime, timedelta

    from digest.outbox import queue_digests
    from digest.store import Store

    now = datetime.now(UTC) - timedelta(hours=T0_OFFSET_HOURS)
    with Store.open(settings.database.url) as store:
        record = [0.0, 0, 0]  # seconds, digests, papers
        inner = store.record_plans

        def timed_record(plans, **kwargs):
            start = time.perf_counter()
            try:
                return inner(plans, **kwargs)
            finally:
                record[0] += time.perf_counter() - start
                record[1] += sum(1 for p in plans if p.items)
                record[2] += sum(len(p.items) for p in plans)

        store.record_plans = timed_record  # type: ignore[method-assign]
        start = time.perf_counter()
        report = queue_digests(store, settings, now=now, force=True)
        total = time.perf_counter() - start
    return {
        "match_seconds": total - record[0],
        "record_seconds": record[0],
        "digests": report.queued,
        "papers_per_digest": record[2] / max(1, record[1]),
    }


def stage_render(settings, workdir: Path, n: int) -> dict:
    """Render (and build) a sample of recorded digests without sending: the render share."""
    from digest.links import LinkSigner, links_for, secret_key
    from digest.mail import MessageBuilder
    from digest.outbox import build_digest
    from digest.render import Renderer
    from digest.store import Store

    with Store.open(settings.database.url) as store:
        ids = store.digest_ids_by_status("queued")[:n]
        records = store.digest_records(ids)
        renderer, builder = Renderer(settings), MessageBuilder(settings)
        signer = LinkSigner(secret_key(store, settings))
        start = time.perf_counter()
        for i in ids:
            digest = build_digest(store, i, records[i])
            links = links_for(settings, signer, digest.subscriber)
            builder.build(renderer.render(digest, links), digest, links)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "messages": len(ids)}


def stage_floor(settings, workdir: Path, _n: int) -> dict:
    """The Maildir floor: the stdlib `mailbox` writing the messages `send --now` wrote."""
    import mailbox

    written = sorted((workdir / "maildir" / "new").iterdir())
    messages = [path.read_bytes() for path in written]  # read first: not timed
    target = workdir / "floor-maildir"
    start = time.perf_counter()
    box = mailbox.Maildir(target, factory=None, create=True)
    for data in messages:
        box.add(data)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "messages": len(messages)}


STAGES = {
    "ingest": stage_ingest,
    "subscribers": stage_subscribers,
    "queue": stage_queue,
    "render": stage_render,
    "floor": stage_floor,
}


def run_child(stage: str, workdir: Path, url: str, port: int, n: int) -> dict:
    """Run one stage in a child process; its JSON result plus its peak memory (MB)."""
    cmd = [sys.executable, __file__, "--stage", stage, "--workdir", str(workdir), "--url", url,
           "--port", str(port), "--n", str(n)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode:
        sys.exit(f"stage {stage} failed:\n{done.stderr.decode()[-3000:]}")
    # The child reports its own ru_maxrss (RUSAGE_SELF) on its last line.
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    result["peak_mb"] = result.pop("maxrss_kb") / 1024
    return result


PROCESSES: int | None = None  # --processes


def _code_env(source: str | None) -> dict[str, str]:
    """The environment that makes `python -m digest.cli` import the digest package of
    `source` (an exported tree), or of this tree. The child also runs in another folder: with
    `-m`, the working folder comes first on sys.path, so a run started from a checkout imported
    that checkout's package whatever PYTHONPATH said (every --baseline row before 2026-12-02
    16:00 ran this tree's code on both sides)."""
    env = {**os.environ, "PYTHONPATH": source or str(ROOT)}
    if PROCESSES is not None:  # mail.processes for the CLI children (older trees ignore it)
        env["DIGEST_MAIL_PROCESSES"] = str(PROCESSES)
    found = subprocess.run(
        [sys.executable, "-c", "import digest; print(digest.__file__)"], env=env,
        cwd=tempfile.gettempdir(), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(found).resolve().is_relative_to(Path(source or ROOT).resolve()):
        sys.exit(f"the child would import {found}, not the package of {source or ROOT}")
    return env


def run_workers(
    workdir: Path,
    count: int,
    expected: int,
    sink: Sink,
    batch: int,
    *,
    source: str | None = None,
    profile: str | None = None,
) -> dict:
    """Start `count` workers with --idle-exit; wall time to the last exit and each one's peak.

    `source`: run the digest package found in that folder instead (PYTHONPATH), e.g. an
    exported older commit, for before/after runs interleaved on one store. `profile`: run the
    (single) worker under py-spy, writing a speedscope profile there."""
    before = sink.count
    cmd = [sys.executable, "-m", "digest.cli", "-q", "--config",
           str(workdir / "settings.toml"), "worker", "--idle-exit", "--poll", "0.2", "--batch",
           str(batch)]  # fmt: skip
    if profile:
        spy = Path(sys.executable).with_name("py-spy")
        fmt = "raw" if profile.endswith(".txt") else "speedscope"  # raw: collapsed stacks
        # every process of the worker: its helpers too
        cmd = [str(spy), "record", "-f", fmt, "--threads", "--subprocesses", "-o", profile,
               "-r", "200", "--", *cmd]  # fmt: skip
    env = _code_env(source)
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env, cwd=workdir)
             for _ in range(count)]  # fmt: skip
    peaks: list[float] = []
    cpu: list[float] = []
    for proc in procs:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            sys.exit(f"a worker exited with status {proc.returncode}")
        peaks.append(usage.ru_maxrss / 1024)
        cpu.append(usage.ru_utime + usage.ru_stime)
    seconds = time.perf_counter() - start
    time.sleep(0.3)  # the sink's counter lags the last 250 by a hair
    sent = sink.count - before
    distinct = sink.distinct()
    if sent != expected or distinct != expected:
        print(f"  WARNING: expected {expected} messages, sink got {sent} ({distinct} distinct ids)")
    return {
        "seconds": seconds,
        "sent": sent,
        "distinct": distinct,
        "peaks_mb": peaks,
        "cpu_seconds": cpu,
    }


def deliver_rows(args) -> list[dict]:
    """One worker delivering the same queued store again and again (a copy of it each run), to
    the sink; with --baseline, runs of that source tree interleaved with this one's."""
    import tomli_w

    sizes = [int(s) for s in args.sizes.split(",")]
    sources = [("this tree", None)]
    if args.baseline:
        sources.insert(0, ("baseline", str(Path(args.baseline).resolve())))
    sink = Sink()
    rows = []
    try:
        for size in sizes:
            workdir = Path(tempfile.mkdtemp(prefix="digest-deliver-"))
            try:
                url = f"sqlite:///{workdir / 'digest.db'}"
                connections = max(1, args.connections)
                data = _settings_data(url, sink.port)
                data["smtp"]["connections"] = connections
                (workdir / "settings.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
                run_child("ingest", workdir, url, sink.port, size)
                run_child("subscribers", workdir, url, sink.port, size)
                queued = run_child("queue", workdir, url, sink.port, size)["digests"]
                snapshot = workdir / "queued.db"
                shutil.copyfile(workdir / "digest.db", snapshot)
                for rep in range(args.repeat):
                    for label, source in sources:
                        shutil.copyfile(snapshot, workdir / "digest.db")
                        for extra in ("-wal", "-shm"):
                            (workdir / f"digest.db{extra}").unlink(missing_ok=True)
                        profile = args.profile if (rep == 0 and source is None) else None
                        got = run_workers(workdir, 1, queued, sink, args.batch, source=source,
                                          profile=profile)  # fmt: skip
                        row = {"subscribers": size, "code": label, "run": rep + 1}
                        row |= {"connections": connections, "deliver": got}
                        row["load"] = os.getloadavg()[0]
                        rows.append(row)
                        print(show_deliver(row), flush=True)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        sink.stop()
    return rows


DELIVER_HEADER = (
    "| subscribers | code | smtp.connections | run | deliver s | msg/s | worker CPU s "
    "| peak MB | load |\n|" + " --- |" * 9
)


def show_deliver(row: dict) -> str:
    d = row["deliver"]
    return (
        f"| {row['subscribers']:,} | {row['code']} | {row['connections']} | {row['run']} "
        f"| {d['seconds']:.2f} | {d['sent'] / d['seconds']:,.0f} | {sum(d['cpu_seconds']):.2f} "
        f"| {max(d['peaks_mb']):.0f} | {row['load']:.1f} |"
    )


def run_send_now(workdir: Path, source: str | None = None) -> dict:
    """`digest send --now` through the CLI (queue + deliver to the Maildir): wall time, peak,
    and its deliver part: from the first message file written to the last (their mtimes)."""
    cmd = [sys.executable, "-m", "digest.cli", "-q", "--config",
           str(workdir / "send-settings.toml"), "send", "--now"]  # fmt: skip
    env = _code_env(source)
    wall = time.time()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env, cwd=workdir)
    _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"digest send --now exited with status {os.waitstatus_to_exitcode(status)}")
    stamps = sorted(path.stat().st_mtime for path in (workdir / "maildir" / "new").iterdir())
    return {
        "seconds": seconds,
        "messages": len(stamps),
        "peak_mb": usage.ru_maxrss / 1024,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "queue_seconds": stamps[0] - wall if stamps else 0.0,
        "deliver_seconds": stamps[-1] - stamps[0] if stamps else 0.0,
    }


def send_now_row(size: int, baseline: str | None = None, repeat: int = 1) -> list[dict]:
    """`send --now` for `size` subscribers on the embedded defaults (SQLite + Maildir), then
    the stdlib-mailbox floor writing the same messages, in one fresh folder; with `baseline`
    (a source tree), its runs interleaved with this tree's on copies of the same store."""
    import tomli_w

    workdir = Path(tempfile.mkdtemp(prefix="digest-send-now-"))
    rows = []
    try:
        url = f"sqlite:///{workdir / 'digest.db'}"
        _settings(workdir, url, 25)  # for the setup stages (no SMTP is used)
        data = {"database": {"url": url}, "inbox": {"settle_seconds": 0},
                "mail": {"transport": "maildir", "maildir": str(workdir / "maildir")}}  # fmt: skip
        (workdir / "send-settings.toml").write_text(tomli_w.dumps(data), encoding="utf-8")
        run_child("ingest", workdir, url, 25, size)
        run_child("subscribers", workdir, url, 25, size)
        shutil.copyfile(workdir / "digest.db", workdir / "setup.db")
        sources = [("this tree", None)]
        if baseline:
            sources.insert(0, ("baseline", str(Path(baseline).resolve())))
        for rep in range(repeat):
            for label, source in sources:
                shutil.copyfile(workdir / "setup.db", workdir / "digest.db")
                for extra in ("-wal", "-shm"):
                    (workdir / f"digest.db{extra}").unlink(missing_ok=True)
                for folder in ("maildir", "floor-maildir"):
                    shutil.rmtree(workdir / folder, ignore_errors=True)
                sent = run_send_now(workdir, source)
                floor = run_child("floor", workdir, url, 25, size)
                if sent["messages"] != size or floor["messages"] != size:
                    print(f"  WARNING: {size} subscribers, {sent['messages']} messages written")
                row = {"subscribers": size, "code": label, "run": rep + 1}
                row |= {"send_now": sent, "floor": floor, "load": os.getloadavg()[0]}
                rows.append(row)
                print(show_send_now(row), flush=True)
        return rows
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


SEND_NOW_HEADER = (
    "| subscribers | code | run | send --now s | queue s | deliver s | CPU s | messages/s "
    "| peak MB | mailbox floor s | ratio | deliver / floor | load |\n|" + " --- |" * 13
)


def show_send_now(row: dict) -> str:
    s, f = row["send_now"], row["floor"]
    return (
        f"| {row['subscribers']:,} | {row['code']} | {row['run']} | {s['seconds']:.1f} "
        f"| {s['queue_seconds']:.1f} | {s['deliver_seconds']:.1f} | {s['cpu_seconds']:.1f} "
        f"| {s['messages'] / s['seconds']:,.0f} | {s['peak_mb']:.0f} | {f['seconds']:.2f} "
        f"| {s['seconds'] / f['seconds']:.2f}x | {s['deliver_seconds'] / f['seconds']:.2f}x "
        f"| {row['load']:.1f} |"
    )


# --- driver --------------------------------------------------------------------------------------


def one_cycle(engine: str, size: int, workers: int, server: str | None, sink: Sink, args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="digest-cycle-"))
    try:
        url = f"sqlite:///{workdir / 'digest.db'}" if engine == "sqlite" else fresh_database(server)
        _settings(workdir, url, sink.port)
        row: dict = {"engine": engine, "subscribers": size, "workers": workers}
        row["ingest"] = run_child("ingest", workdir, url, sink.port, size)
        row["subscribers_setup"] = run_child("subscribers", workdir, url, sink.port, size)
        row["queue"] = run_child("queue", workdir, url, sink.port, size)
        row["render"] = run_child("render", workdir, url, sink.port, args.render_sample)
        row["deliver"] = run_workers(workdir, workers, row["queue"]["digests"], sink, args.batch)
        return row
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def show(row: dict) -> str:
    q, d, r = row["queue"], row["deliver"], row["render"]
    rate = d["sent"] / d["seconds"]
    total = row["ingest"]["seconds"] + q["match_seconds"] + q["record_seconds"] + d["seconds"]
    peaks = [row["ingest"]["peak_mb"], q["peak_mb"], r["peak_mb"], *d["peaks_mb"]]
    return (
        f"| {row['engine']} | {row['subscribers']:,} | {row['workers']} "
        f"| {row['ingest']['seconds']:.2f} | {q['match_seconds']:.2f} | {q['record_seconds']:.2f} "
        f"| {r['messages'] / r['seconds']:,.0f} | {d['seconds']:.1f} | {rate:,.0f} "
        f"| {total:.1f} | {q['papers_per_digest']:.1f} "
        f"| {row['ingest']['peak_mb']:.0f} / {q['peak_mb']:.0f} / "
        f"{'+'.join(f'{m:.0f}' for m in d['peaks_mb'])} | {max(peaks):.0f} |"
    )


HEADER = (
    "| engine | subscribers | workers | ingest s | match s | record s | render msg/s (1 core) "
    "| deliver s | deliver msg/s | cycle s | papers/digest | peak MB ingest / queue / workers "
    "| max peak MB |\n|" + " --- |" * 13
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--workers", default="1,3", help="worker counts for PostgreSQL (SQLite: 1)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--render-sample", type=int, default=2000)
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    ap.add_argument(
        "--parts",
        default="cycle,send-now",
        help="cycle (the stage table), send-now (CLI on SQLite + Maildir vs floor), deliver "
        "(one worker to the sink, repeated on one queued store)",
    )
    ap.add_argument("--send-now-sizes", default="10000")
    ap.add_argument("--repeat", type=int, default=3, help="deliver, send-now: runs per code")
    ap.add_argument("--connections", type=int, default=1, help="deliver: smtp.connections")
    ap.add_argument("--baseline", metavar="DIR", help="deliver, send-now: also run this tree")
    ap.add_argument("--profile", metavar="FILE", help="deliver: py-spy the first run here")
    ap.add_argument(
        "--processes", type=int, metavar="N",
        help="deliver, send-now: mail.processes of the CLI (default: the settings' default, 0 = "
        "one per CPU; 1 = one process)",
    )  # fmt: skip
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global PROCESSES
    PROCESSES = args.processes

    if args.stage:  # a child: run one stage, print its figures as the last line
        import resource

        from digest.config import build_settings

        settings = build_settings(_settings_data(args.url, args.port), root=Path(args.workdir))
        result = STAGES[args.stage](settings, Path(args.workdir), args.n)
        result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps(result))
        return

    if not DUMPS.is_dir():
        sys.exit(f"the shared dumps are needed: {DUMPS}")
    sizes = [int(s) for s in args.sizes.split(",")]
    engines = args.engines.split(",")
    counts = [int(c) for c in args.workers.split(",")]
    print(f"machine: {os.cpu_count()} CPUs (nproc), Python {platform.python_version()}, "
          f"{platform.platform()}")  # fmt: skip
    parts = args.parts.split(",")
    rows = []
    if "deliver" in parts:
        print(DELIVER_HEADER)
        rows += deliver_rows(args)
    if "send-now" in parts:
        print(SEND_NOW_HEADER)
        for size in (int(s) for s in args.send_now_sizes.split(",")):
            rows += send_now_row(size, args.baseline, args.repeat if args.baseline else 1)
        print("ratio: send --now time / the stdlib mailbox writing the same messages")
    if "cycle" not in parts:
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    cluster, server = None, os.environ.get("DIGEST_BENCH_POSTGRES_URL")
    if "postgresql" in engines and not server:
        cluster = Cluster()
        server = cluster.start()
    sink = Sink()
    try:
        print(HEADER)
        for size in sizes:
            for engine in engines:
                for workers in counts if engine == "postgresql" else [1]:
                    row = one_cycle(engine, size, workers, server, sink, args)
                    rows.append(row)
                    print(show(row), flush=True)
    finally:
        sink.stop()
        if cluster:
            cluster.stop()
    for size in sizes:
        rate = {
            r["workers"]: r["deliver"]["sent"] / r["deliver"]["seconds"]
            for r in rows
            if r.get("engine") == "postgresql" and r["subscribers"] == size
        }
        if 1 in rate and 3 in rate:
            print(f"PostgreSQL, {size:,} subscribers: 3 workers deliver at "
                  f"{rate[3] / rate[1]:.2f}x one worker")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
