"""The `digest` command line (see ../shared/CONTRACT.md): parses arguments, runs one command.

Every DigestError is caught once here and printed to stderr (exit 1); wrong usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from digest import __version__
from digest.config import Settings, default_settings_text, find_settings_file, load_settings
from digest.errors import DigestError

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

    def print_json(self, data: object) -> None:
        json.dump(data, self.out, indent=2, ensure_ascii=False, default=str)
        self.out.write("\n")


# --- commands -------------------------------------------------------------------------------


def cmd_init(ctx: Context, args: argparse.Namespace) -> int:
    """Create DIR with a commented settings.toml whose defaults keep everything inside DIR."""
    target = Path(args.dir)
    settings_file = target / "settings.toml"
    if settings_file.exists():
        raise DigestError(f"{settings_file}: already exists; refusing to overwrite it")
    if target.exists() and not target.is_dir():
        raise DigestError(f"{target}: exists and is not a folder")
    target.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(default_settings_text(), encoding="utf-8")
    settings = load_settings(settings_file)
    for folder in (
        settings.inbox.dir,
        settings.inbox.processed_dir,
        settings.inbox.failed_dir,
        settings.mail.maildir,
        settings.feeds.public_dir,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    ctx.print(f"created {settings_file}")
    ctx.print(f"drop dumps into {settings.inbox.dir} (write NAME.part, then rename), then run:")
    ctx.print(f"  digest --config {settings_file} ingest")
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
    for failure in report.failures:
        print(f"error: {failure}", file=ctx.err)
    ctx.print(report.summary())
    return 1 if report.failures else 0


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

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `digest` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
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
    finally:
        ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
