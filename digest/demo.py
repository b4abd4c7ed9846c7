"""`digest demo DIR`: a working folder with the project's own sample data, one cycle run in it."""

from __future__ import annotations

import csv
import io
import os
import shlex
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import TextIO

from werkzeug.security import generate_password_hash

from digest.config import init_folder, load_settings
from digest.pipeline import Cycle
from digest.store import Store
from digest.subscribers import import_csv

DEMO_PASSWORD = "demo"


def _samples() -> Path:
    return Path(str(resources.files("digest") / "samples"))


def _drop_into_inbox(source: Path, inbox: Path, settle_seconds: float) -> None:
    """Deliver a dump the documented way: write NAME.part, then rename; old enough to be taken."""
    part = inbox / (source.name + ".part")
    shutil.copyfile(source, part)
    past = time.time() - settle_seconds - 60
    os.utime(part, (past, past))
    part.rename(inbox / source.name)


def digest_command() -> str:
    """How to run digest as typed in any shell: the full path of this environment's `digest`
    script (a venv's bin/ is rarely on PATH right after the demo), else `python -m digest.cli`."""
    script = Path(sys.executable).with_name("digest")
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m digest.cli"


def _new_rows(store: Store, source: Path) -> str:
    """The sample CSV without the subscribers already stored, so a re-run keeps an admin's
    edits to them (a removed one comes back: the demo always has its samples)."""
    rows = list(csv.reader(io.StringIO(source.read_text(encoding="utf-8"))))
    header, body = rows[0], rows[1:]
    at = [h.strip().lower() for h in header].index("email")
    kept = [r for r in body if r and store.subscriber_by_email(r[at].strip()) is None]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *kept])
    return buf.getvalue()


def run_demo(target: Path, *, out: TextIO, quiet: bool = False) -> int:
    """Create (or reuse) the demo folder, load samples, run one full cycle, say where to look."""
    settings_file = target / "settings.toml"
    if settings_file.exists():
        print(f"reusing {target} (delete it for a fresh demo)", file=out)
        settings = load_settings(settings_file)
    else:
        settings = init_folder(target)
        text = settings_file.read_text(encoding="utf-8")
        # A known password so the admin UI can be tried; only ever in the demo folder.
        hashed = generate_password_hash(DEMO_PASSWORD)
        text = text.replace('admin_password_hash = ""', f'admin_password_hash = "{hashed}"')
        settings_file.write_text(text, encoding="utf-8")
        settings = load_settings(settings_file)
        print(f"created {target}", file=out)
    samples = _samples()
    with Store.open(settings.database.url) as store:
        with tempfile.TemporaryDirectory() as tmp:
            rows = Path(tmp) / "subscribers.csv"
            rows.write_text(_new_rows(store, samples / "subscribers.csv"), encoding="utf-8")
            imported = import_csv(store, settings, rows)
        print(f"sample subscribers: {imported.summary()} (stored ones kept as they are)", file=out)
        for dump in sorted((samples / "dumps").glob("*.txt")):
            _drop_into_inbox(dump, settings.inbox.dir, settings.inbox.settle_seconds)
        # --now semantics: the demo shows digests at once rather than at 07:00 tomorrow.
        cycle = Cycle(store, settings)
        report = cycle.run(force=True, quiet=quiet)
        preview = _write_preview(store, cycle, target)
    print(report.summary(), file=out)
    maildir = settings.mail.maildir
    messages = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
    feeds = settings.feeds.public_dir / "feeds"
    config = f"--config {shlex.quote(str(settings_file))}"
    digest = digest_command()
    print(
        "\nWhere to look:\n"
        f"  emails (Maildir): {maildir}/new  ({len(messages)} messages)\n"
        + (
            f"    e.g. open {messages[0]} in a mail client, or: less {messages[0]}\n"
            if messages
            else ""
        )
        + (f"  one rendered as a web page: {preview}\n" if preview else "")
        + f"    render the last one sent again: {digest} {config} preview --last "
        f"ada@example.org --out {shlex.quote(str(target))}\n"
        f"  feeds: {feeds}/all.atom, {feeds}/all.rss and private feeds in {feeds}/s/\n"
        f"  status: {digest} {config} status\n"
        f"  web app: {digest} {config} serve  ->  http://127.0.0.1:{settings.web.port}/admin "
        f"(password: {DEMO_PASSWORD})\n"
        f"  daemon: {digest} {config} run",
        file=out,
    )
    return 0


def _write_preview(store: Store, cycle: Cycle, target: Path) -> Path | None:
    """The first sample subscriber's last sent digest as an HTML file in the demo folder."""
    for email in ("ada@example.org", "grace@example.org"):
        sub = store.subscriber_by_email(email)
        found = cycle.last_sent(sub) if sub is not None else None
        if found is not None:
            path = target / f"digest-{email.split('@')[0]}.html"
            path.write_text(found[0].html, encoding="utf-8")
            return path
    return None
