"""The `digest` command line (see ../shared/CONTRACT.md): parses arguments, runs one command.

Every DigestError is caught once here and printed to stderr (exit 1); wrong usage exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from digest import __version__
from digest.config import Settings, find_settings_file, init_folder, load_settings
from digest.errors import DigestError, UsageError
from digest.models import CADENCES, Cadence, DigestStatus, SubscriberStatus

if TYPE_CHECKING:  # imported lazily by the commands that ingest
    from digest.ingest import IngestReport

log = logging.getLogger("digest")

Handler = Callable[["Context", argparse.Namespace], int]


@dataclass
class Context:
    """What a command needs: settings and store, opened lazily (`init` needs neither)."""

    config_path: str | None
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    quiet: bool = False
    _settings: Settings | None = None
    _store: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def store(self) -> Any:
        if self._store is None:
            from digest.store import Store

            self._store = Store.open(self.settings.database.url)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def print(self, *args: object) -> None:
        print(*args, file=self.out)

    def warn(self, *args: object) -> None:
        print(*args, file=self.err)

    def print_json(self, data: object) -> None:
        json.dump(data, self.out, indent=2, ensure_ascii=False, default=str)
        self.out.write("\n")


# --- commands -------------------------------------------------------------------------------


def cmd_init(ctx: Context, args: argparse.Namespace) -> int:
    """Create DIR with a commented settings.toml whose defaults keep everything inside DIR."""
    settings = init_folder(Path(args.dir))
    ctx.print(f"created {settings.source}")
    ctx.print(f"drop dumps into {settings.inbox.dir} (write NAME.part, then rename), then run:")
    ctx.print(f"  digest --config {settings.source} ingest")
    return 0


def cmd_parse(ctx: Context, args: argparse.Namespace) -> int:
    """Parse dumps without touching the store; --json prints every paper of every good file."""
    from digest.parse import paper_to_json, parse_file

    papers: list[dict[str, Any]] = []
    failed = 0
    max_bytes = _max_bytes_if_configured(ctx)
    for name in args.files:
        try:
            result = parse_file(Path(name), max_bytes=max_bytes)
        except DigestError as exc:
            print(f"error: {exc}", file=ctx.err)
            failed += 1
            continue
        for warning in result.warnings:
            print(f"warning: {name}:{warning.line}: {warning.message}", file=ctx.err)
        if args.json:
            papers.extend(paper_to_json(p) for p in result.papers)
        else:
            ctx.print(f"{name}: {len(result.papers)} papers ({result.layout})")
            for p in result.papers:
                ctx.print(f"  - {p.title}")
    if args.json:
        ctx.print_json(papers)
    return 1 if failed else 0


def _max_bytes_if_configured(ctx: Context) -> int | None:
    """`parse` works without a settings file; when one exists its size cap applies."""
    if find_settings_file(ctx.config_path).exists():
        return ctx.settings.inbox.max_bytes
    return None


def cmd_ingest(ctx: Context, args: argparse.Namespace) -> int:
    """Store the given dumps, or every complete dump waiting in the inbox."""
    from digest.ingest import ingest_files, ingest_inbox

    if args.files:
        report = ingest_files(
            ctx.store, ctx.settings, [Path(f) for f in args.files], quiet=ctx.quiet
        )
    else:
        report = ingest_inbox(ctx.store, ctx.settings, quiet=ctx.quiet)
    _say_ingest(ctx, report)
    ctx.print(report.summary())
    return 1 if report.failures else 0


def _say_ingest(ctx: Context, report: IngestReport) -> None:
    """An ingest report's doubts and failures on stderr, a line each."""
    for warning in report.warnings:
        print(f"warning: {warning}", file=ctx.err)
    for failure in report.failures:
        print(f"error: {failure}", file=ctx.err)


# --- subscribers, match, history ------------------------------------------------------------


def _explains_queries(handler: Handler) -> Handler:
    """Print a bad query with a caret under the column at fault (exit 1), not just the message."""

    import functools

    from digest.errors import QueryError

    @functools.wraps(handler)
    def wrapped(ctx: Context, args: argparse.Namespace) -> int:
        try:
            return handler(ctx, args)
        except QueryError as exc:
            from digest.query import describe_error

            print(f"error: {exc}", file=ctx.err)
            # describe_error ends with the message printed above; keep the query and the caret.
            for line in describe_error(exc.query, exc).splitlines()[:-1]:
                print(f"  {line}", file=ctx.err)
            return 1

    return wrapped


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _weekday_arg(text: str) -> int:
    from digest.subscribers import parse_weekday

    try:
        return parse_weekday(text)
    except DigestError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _topics_from_args(args: argparse.Namespace) -> list[Any] | None:
    """--keywords (a topic named "Keywords") then each --topic NAME QUERY; None if neither."""
    from digest.models import Topic
    from digest.subscribers import KEYWORDS_TOPIC

    if args.keywords is None and not args.topic:
        return None
    found = [Topic(KEYWORDS_TOPIC, args.keywords)] if args.keywords is not None else []
    found.extend(Topic(name, query) for name, query in args.topic or ())
    return found


def _describe_schedule(sub: Any) -> str:
    from digest.subscribers import WEEKDAYS

    if sub.cadence == Cadence.FEED:
        return "feed only (no email)"
    if sub.cadence == Cadence.INSTANT:
        return "instant (after each ingest)"
    if sub.cadence == Cadence.WEEKLY:
        return f"weekly on {WEEKDAYS[sub.weekday]} at {sub.time} {sub.tz}"
    return f"daily at {sub.time} {sub.tz}"


@_explains_queries
def cmd_subscriber_add(ctx: Context, args: argparse.Namespace) -> int:
    """Add an active subscriber with their topics."""
    from digest.subscribers import add_subscriber

    sub = add_subscriber(
        ctx.store,
        ctx.settings,
        args.email,
        name=args.name or "",
        topics=_topics_from_args(args) or (),
        cadence=args.cadence or Cadence.DAILY,
        time=args.time,
        tz=args.tz,
        weekday=args.weekday if args.weekday is not None else 0,
        backfill_days=args.backfill,
    )
    _warn_topics(ctx, sub.topics)
    ctx.print(f"added {sub.email}: {_describe_schedule(sub)}, {len(sub.topics)} topic(s)")
    if not sub.topics:
        print(
            f"warning: {sub.email} has no topic and will receive nothing until one is added "
            f"(digest subscriber edit {sub.email} --topic NAME QUERY)",
            file=ctx.err,
        )
    return 0


def cmd_subscriber_list(ctx: Context, args: argparse.Namespace) -> int:
    """List subscribers, optionally filtered by a search string and a status."""
    from digest.subscribers import list_subscribers, subscriber_to_json

    subs = list_subscribers(ctx.store, search=args.search, status=args.status)
    if args.json:
        ctx.print_json([subscriber_to_json(s, ctx.settings, ctx.store) for s in subs])
        return 0
    rows = [("EMAIL", "STATUS", "DELIVERY", "TOPICS", "NAME")]
    rows += [
        (s.email, s.status, _describe_schedule(s), str(len(s.topics)), _safe(s.name)) for s in subs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        ctx.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[4])
    ctx.print(f"{len(subs)} subscriber(s)")
    return 0


def cmd_subscriber_show(ctx: Context, args: argparse.Namespace) -> int:
    """Show one subscriber with their topics and private feed."""
    from digest.subscribers import feed_url, get_subscriber, history_to_json, subscriber_to_json

    sub = get_subscriber(ctx.store, args.email)
    events = ctx.store.subscriber_events(sub.id)
    if args.json:
        ctx.print_json(
            {**subscriber_to_json(sub, ctx.settings, ctx.store), "history": history_to_json(events)}
        )
        return 0
    ctx.print(f"email:    {sub.email}")
    ctx.print(f"name:     {_safe(sub.name)}")
    ctx.print(f"status:   {sub.status}")
    ctx.print(f"delivery: {_describe_schedule(sub)}")
    ctx.print(f"since:    {(sub.since or sub.created_at).isoformat(timespec='seconds')}")
    ctx.print(f"feed:     {feed_url(sub, ctx.settings)}")
    ctx.print("topics:" if sub.topics else "topics:   none")
    for t in sub.topics:
        ctx.print(f"  {_safe(t.name)}: {_safe(t.query)}")
    ctx.print("history:" if events else "history:  none recorded")
    for e in events:
        was = e.old_status or "(new)"
        ctx.print(f"  {e.at.isoformat(timespec='seconds')}  {was} -> {e.new_status}  by {e.how}")
    return 0


@_explains_queries
def cmd_subscriber_edit(ctx: Context, args: argparse.Namespace) -> int:
    """Change the given fields of a subscriber; --keywords/--topic replace all topics."""
    from digest.subscribers import edit_subscriber

    sub = edit_subscriber(
        ctx.store,
        ctx.settings,
        args.email,
        name=args.name,
        topics=_topics_from_args(args),
        cadence=args.cadence,
        time=args.time,
        tz=args.tz,
        weekday=args.weekday,
        new_email=args.new_email,
    )
    _warn_topics(ctx, sub.topics)
    ctx.print(f"updated {sub.email}: {_describe_schedule(sub)}, {len(sub.topics)} topic(s)")
    return 0


def cmd_subscriber_remove(ctx: Context, args: argparse.Namespace) -> int:
    """Delete a subscriber with their topics and delivery history."""
    from digest.subscribers import remove_subscriber

    remove_subscriber(ctx.store, args.email)
    ctx.print(f"removed {args.email.strip()}")
    return 0


def cmd_subscriber_status(ctx: Context, args: argparse.Namespace) -> int:
    """Pause or resume a subscriber."""
    from digest.subscribers import set_status

    sub = set_status(ctx.store, args.email, args.new_status)
    ctx.print(f"{sub.email}: {sub.status}")
    return 0


def _warn_topics(ctx: Context, topics: Any) -> None:
    """Print the probable mistakes of saved topics, and those matching none or most papers."""
    from digest.subscribers import topic_notes

    for note in topic_notes(topics, _coverage_index(ctx) if topics else None):
        ctx.warn(f"warning: {note}")


def _coverage_index(ctx: Context) -> Any:
    """The recent stored papers a topic's coverage warning counts against (None: too few to
    say a topic matches almost all or none of them)."""
    from digest.match import PaperIndex

    papers = ctx.store.recent_papers(limit=2_000)
    return PaperIndex(papers) if len(papers) >= 20 else None


def cmd_subscriber_import(ctx: Context, args: argparse.Namespace) -> int:
    """Add or update subscribers from a CSV file; bad rows are reported, good ones applied."""
    from digest.subscribers import import_csv

    report = import_csv(
        ctx.store, ctx.settings, args.file, dry_run=args.dry_run, index=_coverage_index(ctx)
    )
    for error in report.errors:
        print(f"error: {error}", file=ctx.err)
    for warning in report.warnings:
        print(f"warning: {warning}", file=ctx.err)
    prefix = "dry run, nothing changed: " if args.dry_run else ""
    ctx.print(f"{prefix}{report.summary()}")
    return 1 if report.errors else 0


def cmd_subscriber_export(ctx: Context, args: argparse.Namespace) -> int:
    """Write every subscriber as CSV (the import format) to FILE or stdout."""
    import io

    from digest.fsutil import atomic_write
    from digest.subscribers import export_csv

    if not args.file or args.file == "-":
        export_csv(ctx.store, ctx.out)
        return 0
    target = Path(args.file)
    buffer = io.StringIO()
    count = export_csv(ctx.store, buffer)
    # Temp file + rename: a crash never leaves a half-written export under the real name.
    try:  # 0600: an export holds every subscriber's address
        atomic_write(target, buffer.getvalue().encode("utf-8"), mode=0o600)
    except OSError as exc:
        raise DigestError(f"{target}: cannot write: {exc.strerror or exc}") from None
    ctx.print(f"exported {count} subscriber(s) to {target}")
    return 0


def _write_atomically(target: Path, text: str) -> None:
    """Temp file + rename: a crash never leaves a half-written file under the real name."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        raise DigestError(f"{target}: cannot write: {exc.strerror or exc}") from None


def cmd_subscriber_export_data(ctx: Context, args: argparse.Namespace) -> int:
    """Everything stored about one person as JSON, to --out FILE or stdout."""
    from digest.subscribers import export_data

    data = export_data(ctx.store, ctx.settings, args.email)
    if not args.out or args.out == "-":
        ctx.print_json(data)
        return 0
    text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    _write_atomically(Path(args.out), text)
    ctx.print(f"wrote the data of {data['profile']['email']} to {args.out}")
    return 0


def cmd_subscriber_wipe(ctx: Context, args: argparse.Namespace) -> int:
    """Erase a person, keeping only a suppression entry; asks unless --yes."""
    from digest.subscribers import get_subscriber, wipe_subscriber

    sub = get_subscriber(ctx.store, args.email)
    if not args.yes:
        if not _stdin_is_terminal():
            raise DigestError(
                f"wipe {sub.email}: give --yes to confirm (standard input is not a terminal)"
            )
        answer = input(
            f"Erase {sub.email}: profile, topics, deliveries, digests and history? "
            "This cannot be undone. [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            ctx.print(f"kept {sub.email}")
            return 1
    entry = wipe_subscriber(ctx.store, sub.email)
    ctx.print(
        f"wiped {sub.email}; kept only a suppression entry (sha256 {entry.email_hash[:12]}...) "
        "so no import or admin add re-adds them"
    )
    return 0


@_explains_queries
def cmd_match(ctx: Context, args: argparse.Namespace) -> int:
    """Preview a topic (a query and/or example papers) against the stored papers, best first."""
    from digest.query import coverage_warning, query_warnings
    from digest.rank import preview_topic
    from digest.subscribers import resolve_papers

    query = args.query or ""
    if not query.strip() and not args.like:
        raise UsageError("give a QUERY, or --like PAPER (a topic of examples), or both")
    likes = resolve_papers(ctx.store, args.like or ())
    dislikes = resolve_papers(ctx.store, args.dislike or ())
    total = ctx.store.count_papers()
    papers = ctx.store.recent_papers(limit=args.recent or max(total, 1))
    known = {p.id: p for p in [*likes, *dislikes]}
    limit = args.limit if args.limit is not None or args.json else 20
    found = preview_topic(
        papers, query, likes=[p.id for p in likes], dislikes=[p.id for p in dislikes],
        known=known, limit=limit,
    )  # fmt: skip
    for warning in query_warnings(query):
        ctx.warn(f"warning: {warning}")
    if query.strip() and (cover := coverage_warning(found.hits, len(papers))):
        ctx.warn(f"warning: {cover}")
    matches = found.matches
    by_id = {p.id: p for p in found.papers}
    if args.json:
        ctx.print_json([_match_to_json(m, by_id[m.paper_id]) for m in matches])
        return 0
    color = _use_color(args.color, ctx.out)
    for rank, m in enumerate(matches, 1):
        paper = by_id[m.paper_id]
        facts = [
            f"id {paper.id}",
            paper.organization or "",
            paper.published.isoformat() if paper.published else "",
            f"{paper.upvotes} upvotes" if paper.upvotes is not None else "",
            f"score {m.score:.2f}",
        ]
        ctx.print(f"{rank:>3}. {highlight(paper.title, m.title_spans, color)}")
        ctx.print("     " + " · ".join(_safe(f) for f in facts if f))
        ctx.print("     why: " + _safe(m.why))
        snippet, spans = excerpt(paper.abstract, m.abstract_spans)
        ctx.print("     " + highlight(snippet, spans, color))
    more = f"; showing the {len(matches)} best (--limit)" if len(matches) < found.hits else ""
    ctx.print(f"{found.hits} of {len(papers)} stored papers match{more}")
    return 0


def _match_to_json(m: Any, paper: Any) -> dict[str, Any]:
    return {
        "id": paper.id,
        "title": paper.title,
        "score": m.score,
        "topics": list(m.topics),
        "terms": list(m.terms),
        "why": m.why,
        "published": paper.published.isoformat() if paper.published else None,
        "upvotes": paper.upvotes,
        "organization": paper.organization,
    }


def cmd_feedback(ctx: Context, args: argparse.Namespace) -> int:
    """Record (or with --undo remove) a subscriber's verdict on a paper, as the digest links do."""
    from digest.feedback import find_paper, give_feedback
    from digest.subscribers import get_subscriber

    sub = get_subscriber(ctx.store, args.email)
    paper = find_paper(ctx.store, args.paper)
    verdict = "like" if args.like else "dislike"
    outcome = give_feedback(ctx.store, sub, paper, verdict, topic=args.topic, undo=args.undo)
    ctx.print(_safe(outcome.summary(sub.email)))
    return 0


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    """Digests delivered to a subscriber, newest first."""
    from digest.subscribers import get_subscriber, history

    entries = history(ctx.store, args.email)
    if args.json:
        ctx.print_json(entries)
        return 0
    if not entries:
        ctx.print(f"no digest sent to {get_subscriber(ctx.store, args.email).email} yet")
    for e in entries:
        ctx.print(f"{e['sent_at']}  {len(e['papers'])} paper(s)  {e['message_id']}")
        for p in e["papers"]:
            topic = f"  [{_safe(p['topic'])}]" if p["topic"] else ""
            ctx.print(f"  - {_safe(p['title'])}{topic}")
    return 0


# Terminal highlighting: ANSI bold yellow on a terminal, [brackets] when piped or redirected.
_HL_ON, _HL_OFF = "\x1b[1;33m", "\x1b[0m"


def _safe(text: str) -> str:
    """Terminal-safe printing: stored text is clean (digest.text policy), and whatever a store
    written before that policy holds, no control character (ANSI escape...) reaches the terminal;
    each becomes one space, so character spans stay valid."""
    from digest.text import TERMINAL_CONTROLS

    return text.translate(TERMINAL_CONTROLS)


def _stdin_is_terminal() -> bool:
    # None when the process was started with its standard input closed (0<&-)
    return sys.stdin is not None and sys.stdin.isatty()


def _use_color(mode: str, out: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def highlight(text: str, spans: Sequence[tuple[int, int]], color: bool) -> str:
    """Text with the spans marked: ANSI bold colour, or [brackets] for plain output."""
    from digest.highlight import segments

    on, off = (_HL_ON, _HL_OFF) if color else ("[", "]")
    return "".join(f"{on}{_safe(p)}{off}" if hit else _safe(p) for p, hit in segments(text, spans))


def excerpt(
    text: str, spans: Sequence[tuple[int, int]], width: int = 280
) -> tuple[str, list[tuple[int, int]]]:
    """About `width` characters of text around its first span, cut at spaces, spans shifted."""
    if len(text) <= width:
        return text, list(spans)
    first = min((s for s, _e in spans), default=0)
    start = max(0, first - width // 4)
    if start:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < first else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > start else end
    head = "…" if start else ""
    tail = "…" if end < len(text) else ""
    shift = len(head) - start
    kept = [(s + shift, e + shift) for s, e in spans if s >= start and e <= end]
    return head + text[start:end] + tail, kept


def _add_profile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", metavar="N", help="display name")
    p.add_argument("--keywords", metavar="QUERY", help='one topic named "Keywords" with this query')
    p.add_argument(
        "--topic",
        nargs=2,
        action="append",
        metavar=("NAME", "QUERY"),
        help="a named topic; repeat for several",
    )
    p.add_argument("--cadence", choices=CADENCES)
    p.add_argument("--time", metavar="HH:MM", help="delivery time in --tz")
    p.add_argument("--tz", metavar="ZONE", help="IANA time zone, e.g. Europe/London")
    p.add_argument(
        "--weekday", type=_weekday_arg, metavar="mon..sun", help="day of the weekly digest"
    )


def _add_subscriber_parsers(sub: Any) -> None:
    """The `subscriber`, `match` and `history` commands."""
    s = sub.add_parser(
        "subscriber", help="add, list, show, edit, remove, pause, resume, import, wipe"
    )
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("add", help="add an active subscriber")
    p.add_argument("email", metavar="EMAIL")
    _add_profile_options(p)
    p.add_argument(
        "--backfill",
        type=int,
        metavar="DAYS",
        help="also deliver matching papers stored in the last DAYS days",
    )
    p.set_defaults(handler=cmd_subscriber_add)

    p = actions.add_parser("list", help="list subscribers")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--search", metavar="S", help="part of the email or name, any case")
    p.add_argument("--status", metavar="S", help="only this status")
    p.set_defaults(handler=cmd_subscriber_list)

    p = actions.add_parser("show", help="show one subscriber")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_subscriber_show)

    p = actions.add_parser("edit", help="change a subscriber; --keywords/--topic replace topics")
    p.add_argument("email", metavar="EMAIL")
    _add_profile_options(p)
    p.add_argument("--email", dest="new_email", metavar="NEW", help="change the address")
    p.set_defaults(handler=cmd_subscriber_edit)

    p = actions.add_parser("remove", help="delete a subscriber and their history")
    p.add_argument("email", metavar="EMAIL")
    p.set_defaults(handler=cmd_subscriber_remove)

    for action, status, text in (
        ("pause", SubscriberStatus.PAUSED, "stop deliveries until resumed"),
        (
            "resume",
            SubscriberStatus.ACTIVE,
            "deliver again (papers stored while paused are skipped)",
        ),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("email", metavar="EMAIL")
        p.set_defaults(handler=cmd_subscriber_status, new_status=status)

    p = actions.add_parser("import", help="add or update subscribers from a CSV file")
    p.add_argument("file", metavar="FILE.csv")
    p.add_argument("--dry-run", action="store_true", help="check every row, change nothing")
    p.set_defaults(handler=cmd_subscriber_import)

    p = actions.add_parser("export", help="write subscribers as CSV (the import format)")
    p.add_argument("file", metavar="FILE", nargs="?", help="default: standard output")
    p.set_defaults(handler=cmd_subscriber_export)

    p = actions.add_parser(
        "export-data",
        help="everything stored about one person, as JSON",
        description="Writes everything stored about one person as one JSON object: profile, "
        "topics, status history, deliveries (paper titles and dates), digests sent and "
        "feedback. For a data-access request; nothing is changed.",
    )
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--out", metavar="FILE", help="write to FILE (default: standard output)")
    p.set_defaults(handler=cmd_subscriber_export_data)

    p = actions.add_parser(
        "wipe",
        help="erase a person, keeping only a suppression entry",
        description="Deletes the subscriber with their topics, delivery ledger, digests, "
        "status history and feedback, keeping only a suppression entry (a sha256 of the "
        "normalised address, when and why), so no CSV import or admin add re-adds them. "
        "Their own sign-up (double opt-in) lifts it once confirmed. Asks for confirmation "
        "on a terminal; elsewhere --yes is required.",
    )
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--yes", action="store_true", help="do not ask; needed when not on a terminal")
    p.set_defaults(handler=cmd_subscriber_wipe)

    p = sub.add_parser(
        "match", help="preview a topic (a query and/or example papers) against the stored papers"
    )
    p.add_argument("query", metavar="QUERY", nargs="?", default="", help="a keyword query")
    p.add_argument(
        "--like", action="append", metavar="PAPER",
        help="a liked example paper: its id (as in --json) or exact title; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--dislike", action="append", metavar="PAPER",
        help="a disliked example paper: its id or exact title; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--limit", type=_positive_int, metavar="N",
        help="at most N papers (default: every match with --json, the best 20 otherwise)",
    )  # fmt: skip
    p.add_argument(
        "--recent", type=_positive_int, metavar="N", help="only the N most recently stored papers"
    )
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="highlight with colour (auto: when writing to a terminal); else [brackets]",
    )
    p.set_defaults(handler=cmd_match)

    p = sub.add_parser(
        "feedback",
        help="record a subscriber's feedback on a paper, as their digest's links do",
        description="Records that a subscriber wants more papers like PAPER (--like) or none "
        'like it (--dislike) under one of their topics, as the "More like this" / "Not for '
        'me" links of their digest do. A like replaces a dislike of the same paper and topic '
        "and vice versa. PAPER is a paper's id (as in `digest match --json`) or its exact "
        "title. The topic defaults to the one the paper was delivered under, else the first.",
    )
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("paper", metavar="PAPER", help="a paper id or exact title")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--like", action="store_true", help="more like this")
    verdict.add_argument("--dislike", action="store_true", help="not for me")
    p.add_argument("--topic", metavar="NAME", help="the subscriber's topic (default: see above)")
    p.add_argument("--undo", action="store_true", help="remove this verdict instead")
    p.set_defaults(handler=cmd_feedback)

    p = sub.add_parser("history", help="digests delivered to a subscriber, newest first")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(handler=cmd_history)


# --- web -----------------------------------------------------------------------------------


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    """Run the web app (admin UI, subscriber links, feeds) with the waitress WSGI server."""
    from waitress.server import create_server

    from digest.web import create_app

    settings = ctx.settings
    host = args.host or settings.web.host
    port = args.port if args.port is not None else settings.web.port
    app = create_app(settings, ctx.store, log_requests=True)
    if not settings.web.admin_password_hash:
        print(
            "warning: no admin password set; the admin pages are disabled "
            "(run `digest admin-password` and set web.admin_password_hash)",
            file=ctx.err,
        )
    try:
        # Bound before saying "serving": a busy port or an unknown host is a one-line error.
        server = create_server(app, host=host, port=port, threads=args.threads, ident="digest")
    except (OSError, ValueError) as exc:  # waitress: ValueError for a host it cannot resolve
        reason = getattr(exc, "strerror", None) or str(exc)
        raise DigestError(f"cannot listen on {host}:{port}: {reason}") from None
    ctx.print(f"serving http://{host}:{port}/ (admin: /admin/, feeds: /feeds/all.rss)")
    try:
        server.run()
    finally:
        server.close()
    return 0


def cmd_admin_password(ctx: Context, args: argparse.Namespace) -> int:
    """Print a password hash for web.admin_password_hash; the password is read, never an arg."""
    import getpass

    from werkzeug.security import generate_password_hash

    if _stdin_is_terminal():
        password = getpass.getpass("Admin password: ")
        if getpass.getpass("Again: ") != password:
            raise DigestError("the two passwords differ; nothing printed")
    elif sys.stdin is None:  # started with standard input closed (0<&-)
        raise DigestError("no standard input to read the password from; nothing printed")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise DigestError("the admin password must have at least 8 characters")
    ctx.print(generate_password_hash(password))
    print(
        'put it in settings.toml as [web] admin_password_hash = "..." '
        "or in the environment as DIGEST_WEB_ADMIN_PASSWORD_HASH",
        file=ctx.err,
    )
    return 0


def _port_arg(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return port


def _add_web_parsers(sub: Any) -> None:
    p = sub.add_parser("serve", help="the web app: admin UI, subscriber links, feeds over HTTP")
    p.add_argument("--host", metavar="H", help="address to listen on (default: web.host)")
    p.add_argument(
        "--port", metavar="P", type=_port_arg, help="port to listen on (default: web.port)"
    )
    p.add_argument("--threads", type=_positive_int, default=8, help="worker threads (default 8)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "admin-password",
        help="print a hash of the admin password (read from the terminal or stdin)",
    )
    p.set_defaults(handler=cmd_admin_password)


# --- delivery commands ----------------------------------------------------------------------


def cmd_send(ctx: Context, args: argparse.Namespace) -> int:
    """Build and deliver every digest that is due (--now: every active subscriber with news)."""
    from digest.pipeline import Cycle
    from digest.progress import progress_bar

    cycle = Cycle(ctx.store, ctx.settings)
    if args.retry_failed and not args.dry_run:
        requeued = ctx.store.requeue_failed(now=cycle.clock())
        ctx.print(f"requeued {requeued} failed digest(s)")
    if args.dry_run:
        count = cycle.dry_run(ctx.out, force=args.now)
        ctx.print(f"dry run: {count} digests would be sent; nothing was recorded")
        return 0
    with cycle.sending(force=args.now):
        # what this send delivers: what waited, and what the queue stage records, some of it
        # sent by the helpers sending() started before deliver() begins (read before the
        # stage: a count after it would also hold what they sent meanwhile)
        helped = cycle.helped()
        counts = ctx.store.digest_status_counts()
        waiting = counts[DigestStatus.QUEUED] + counts[DigestStatus.SENDING] + helped
        queued = cycle.queue(force=args.now)
        ctx.print(f"queue: {queued.summary()}")
        total = waiting + queued.queued
        with progress_bar(total, unit="email", quiet=ctx.quiet, desc="sending") as bar:
            report = cycle.deliver(progress=bar.update)
    for error in report.errors:
        print(f"error: {error}", file=ctx.err)
    ctx.print(f"deliver: {report.summary()}")
    _say_unsent(ctx, report.unavailable)
    failed = report.failed or report.bounced or report.helpers_failed or report.unavailable
    return 1 if failed else 0


def _say_unsent(ctx: Context, unavailable: str) -> None:
    """The one line of a delivery stopped because the SMTP server could not be reached."""
    if unavailable:
        print(f"error: {unavailable}; the digests not sent stay queued", file=ctx.err)


def cmd_preview(ctx: Context, args: argparse.Namespace) -> int:
    """Render a subscriber's next digest (--last: the last one sent) to files, recording and
    sending nothing."""
    from digest.pipeline import Cycle
    from digest.subscribers import get_subscriber

    sub = get_subscriber(ctx.store, args.email)
    cycle = Cycle(ctx.store, ctx.settings)
    found = cycle.last_sent(sub) if args.last else cycle.preview(sub)
    if found is None:
        if args.last:
            ctx.print(f"{sub.email}: no digest was sent to them yet; nothing to preview")
        else:
            ctx.print(f"{sub.email}: no pending papers match their topics; nothing to preview")
        return 0
    rendered, digest = found
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = ("last-" if args.last else "preview-") + "".join(
        c if c.isalnum() else "_" for c in sub.email
    )
    (out / f"{stem}.html").write_text(rendered.html, encoding="utf-8")
    (out / f"{stem}.txt").write_text(rendered.text, encoding="utf-8")
    ctx.print(f"subject: {rendered.subject}")
    ctx.print(f"{len(digest.items)} papers; wrote {out / stem}.html and {out / stem}.txt")
    return 0


def cmd_feeds(ctx: Context, args: argparse.Namespace) -> int:
    """Record feed-only subscribers' new matches, then write the static feeds under public/."""
    from digest.pipeline import Cycle

    report = Cycle(ctx.store, ctx.settings).feeds(full=args.all)
    ctx.print(f"feeds: {report.summary()} in {ctx.settings.feeds.public_dir / 'feeds'}")
    return 0


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    """What is stored, queued, failed and scheduled."""
    from digest.status import collect_status, format_status

    data = collect_status(ctx.store, ctx.settings)
    if args.json:
        ctx.print_json(data)
    else:
        ctx.print(format_status(data))
    return 0


def cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    """Build a demo folder with sample dumps and subscribers, run one cycle, say where to look."""
    from digest.demo import run_demo

    return run_demo(Path(args.dir), out=ctx.out, quiet=ctx.quiet)


def _add_delivery_parsers(sub: Any) -> None:
    p = sub.add_parser("send", help="build and deliver every digest that is due")
    p.add_argument(
        "--now", action="store_true", help="treat every active subscriber with news as due"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be sent; record nothing"
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="first put failed digests back in the queue (after fixing what failed them)",
    )
    p.set_defaults(handler=cmd_send)

    p = sub.add_parser("preview", help="render a subscriber's next digest to HTML and text files")
    p.add_argument("email", metavar="EMAIL")
    p.add_argument("--out", metavar="DIR", default=".", help="folder for the files (default: .)")
    p.add_argument(
        "--last",
        action="store_true",
        help="render the last digest sent to them instead of the next one",
    )
    p.set_defaults(handler=cmd_preview)

    p = sub.add_parser(
        "feeds",
        help="write the static RSS/Atom feeds under public/",
        description="First records the new matches of feed-only subscribers, so their private "
        "feeds are current without a `send` or `run`.",
    )
    p.add_argument(
        "--all", action="store_true", help="rewrite every private feed, not only changed ones"
    )
    p.set_defaults(handler=cmd_feeds)

    p = sub.add_parser("status", help="what is stored, queued, failed and scheduled")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "demo", help="create a demo folder with sample data and run one full cycle in it"
    )
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=cmd_demo)


# --- daemon --------------------------------------------------------------------------------


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    """The scheduler daemon; --once runs one full cycle (ingest, send what is due, feeds)."""
    from digest.scheduler import run_daemon, run_once

    if not args.once:
        return run_daemon(ctx.settings, ctx.store)
    report = run_once(ctx.settings, ctx.store, quiet=ctx.quiet)
    if report.ingest:
        _say_ingest(ctx, report.ingest)
    failures = report.ingest.failures if report.ingest else []
    for error in report.delivery.errors if report.delivery else []:
        print(f"warning: {error}", file=ctx.err)
    ctx.print(report.summary())
    delivery = report.delivery
    _say_unsent(ctx, delivery.unavailable if delivery else "")
    failed = delivery is not None and bool(delivery.failed or delivery.unavailable)
    return 1 if failures or failed else 0


def _add_daemon_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="the scheduler daemon: poll the inbox, send digests when due, refresh feeds",
        description="Run until SIGTERM/SIGINT (the message in flight finishes first). "
        "One daemon per database: a second one exits with status 1.",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="one full cycle (ingest, send what is due, feeds), then exit: for cron",
    )
    p.set_defaults(handler=cmd_run)


# --- send-queue worker ---------------------------------------------------------------------


def cmd_worker(ctx: Context, args: argparse.Namespace) -> int:
    """Claim, render, send and mark queued digests; several may run against one PostgreSQL."""
    from digest.scheduler import stop_on_signals
    from digest.worker import WorkerOptions, run_worker

    options = WorkerOptions(
        batch=args.batch, lease=args.lease, poll=args.poll, idle_exit=args.idle_exit
    )
    stop = threading.Event()
    with stop_on_signals(stop):
        report = run_worker(ctx.store, ctx.settings, options=options, stop=stop)
    ctx.print(report.summary())
    _say_unsent(ctx, report.gave_up)
    return 1 if report.failed or report.helpers_failed or report.gave_up else 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _add_worker_parser(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="send queued digests; run several against PostgreSQL to scale out",
        description="Claims queued digests in batches (PostgreSQL: FOR UPDATE SKIP LOCKED) with "
        "a lease, renders and sends them. A killed worker's claims lapse with the lease and "
        "another worker takes them. SIGTERM/SIGINT finish the message in flight. Never queues "
        "digests itself: `digest run` (one per database) does. A long queue is shared with "
        "helper processes (mail.processes).",
    )
    p.add_argument(
        "--batch", type=_positive_int, default=50, metavar="N", help="digests per claim (50)"
    )
    p.add_argument(
        "--lease",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="how long a claim holds before another worker may take it (600)",
    )
    p.add_argument(
        "--poll",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="wait this long when nothing is claimable (5)",
    )
    p.add_argument(
        "--idle-exit",
        action="store_true",
        help="exit once nothing is queued or in flight (for tests and cron)",
    )
    p.set_defaults(handler=cmd_worker)


# --- argument parsing -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; every command has --help."""
    parser = argparse.ArgumentParser(
        prog="digest",
        description="Daily Papers Digest: parse Hugging Face Daily Papers dumps, match keyword "
        "profiles, deliver email digests and feeds.",
    )
    parser.add_argument("--version", action="version", version=f"digest {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="settings file (default: $DIGEST_CONFIG, else ./settings.toml)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only errors; no progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("init", help="create a folder with a commented settings.toml")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("parse", help="parse dumps without touching the store")
    p.add_argument("files", metavar="FILE", nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON array of every paper")
    p.set_defaults(handler=cmd_parse)

    p = sub.add_parser("ingest", help="store the given dumps, or every complete dump in the inbox")
    p.add_argument("files", metavar="FILE", nargs="*")
    p.set_defaults(handler=cmd_ingest)

    _add_subscriber_parsers(sub)
    _add_web_parsers(sub)
    _add_delivery_parsers(sub)
    _add_daemon_parsers(sub)
    _add_worker_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `digest` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands print their own summaries; the long-running ones log what they do as they go.
    daemon = args.command in ("run", "worker", "serve")
    level = logging.INFO if daemon else logging.WARNING
    if args.verbose:
        level = logging.DEBUG if daemon else logging.INFO
    elif args.quiet:
        level = logging.ERROR
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx = Context(config_path=args.config, quiet=args.quiet)
    try:
        return args.handler(ctx, args)
    except DigestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`digest ... --json | head`): stop quietly. Point stdout at
        # /dev/null so the interpreter's own flush at exit cannot raise again.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # A path the settings or options name that cannot be made or written (a file where a
        # folder should be, no permission, a full disk): the path and the reason, no traceback.
        if args.verbose:  # for a bug report
            traceback.print_exc(file=sys.stderr)
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        return 1
    finally:
        ctx.close()


def _os_error(exc: OSError) -> str:
    """An OSError as `path: reason` (both paths of a rename), or its text when it has none."""
    reason = exc.strerror or str(exc)
    if exc.filename is None:
        return reason
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
