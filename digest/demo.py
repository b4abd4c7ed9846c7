"""`digest demo DIR`: a working folder with the project's own sample data, one cycle run in it."""

from __future__ import annotations

import os
import shutil
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
        imported = import_csv(store, settings, samples / "subscribers.csv")
        print(f"sample subscribers: {imported.summary()}", file=out)
        for dump in sorted((samples / "dumps").glob("*.txt")):
            _drop_into_inbox(dump, settings.inbox.dir, settings.inbox.settle_seconds)
        # --now semantics: the demo shows digests at once rather than at 07:00 tomorrow.
        report = Cycle(store, settings).run(force=True, quiet=quiet)
    print(report.summary(), file=out)
    maildir = settings.mail.maildir
    messages = sorted((maildir / "new").glob("*")) if (maildir / "new").is_dir() else []
    feeds = settings.feeds.public_dir / "feeds"
    config = f"--config {settings_file}"
    print(
        "\nWhere to look:\n"
        f"  emails (Maildir): {maildir}/new  ({len(messages)} messages)\n"
        + (
            f"    e.g. open {messages[0]} in a mail client, or: less {messages[0]}\n"
            if messages
            else ""
        )
        + f"    or render one to HTML: digest {config} preview ada@example.org --out {target}\n"
        f"  feeds: {feeds}/all.atom, {feeds}/all.rss and private feeds in {feeds}/s/\n"
        f"  status: digest {config} status\n"
        f"  web app: digest {config} serve  ->  http://127.0.0.1:{settings.web.port}/admin "
        f"(password: {DEMO_PASSWORD})\n"
        f"  daemon: digest {config} run",
        file=out,
    )
    return 0
