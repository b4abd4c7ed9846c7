"""What the browser tests share: Debian's chromium through Playwright, a real `digest serve` on a
free loopback port over the samples, pages that collect console errors, and the layout checks.

Skipped with the reason when /usr/bin/chromium or the playwright package is missing, unless
DIGEST_REQUIRE_BROWSER=1 (CI), where that is a failure. With DIGEST_SCREENSHOTS=DIR the tests
save the docs' screenshots into DIR.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from support import free_port, unavailable
from web_support import PASSWORD, PASSWORD_HASH

from digest import subscribers as subs
from digest.config import Settings, load_settings
from digest.ingest import ingest_files
from digest.models import Subscriber, Topic
from digest.store import Store

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SAMPLES = Path(__file__).resolve().parents[1] / "digest" / "samples" / "dumps"
ADA_TOPICS = [Topic("Efficiency", '"sparse attention", speculative decoding')]


def _unavailable(reason: str) -> NoReturn:
    unavailable("browser tests", "DIGEST_REQUIRE_BROWSER", reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Debian chromium, driven by Playwright."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install playwright)")
    from playwright.sync_api import expect

    # Generous waits: CI machines are shared and slow at times; these bound waiting for the page
    # to settle (debounced preview, server round trips), they do not assert speed.
    expect.set_options(timeout=30_000)
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def site_config(tmp_path: Path, *, site: str = "", web: str = "") -> tuple[str, Path, Settings]:
    """A settings.toml for a site on a free loopback port (extra `[site]` and `[web]` lines):
    (base URL, its path, the settings)."""
    base = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "settings.toml"
    config.write_text(
        "[database]\n"
        'url = "sqlite:///digest.db"\n'
        "[site]\n"
        f'base_url = "{base}"\n'
        f"{site}"
        "[web]\n"
        f'admin_password_hash = "{PASSWORD_HASH}"\n'
        "preview_dumps = 5\n"
        f"{web}",
        encoding="utf-8",
    )
    return base, config, load_settings(config, env={})


def seed(store: Store, settings: Settings, tmp_path: Path) -> Subscriber:
    """The sample dumps ingested, and Ada subscribed with ten years of backfill."""
    dumps = tmp_path / "samples"
    shutil.copytree(SAMPLES, dumps)
    ingest_files(store, settings, sorted(dumps.iterdir()), quiet=True)
    return subs.add_subscriber(
        store, settings, "ada@example.org", name="Ada Lovelace", topics=ADA_TOPICS,
        backfill_days=3650,
    )  # fmt: skip


@contextlib.contextmanager
def serving(base: str, config: Path) -> Iterator[None]:
    """`digest serve` in a subprocess on base's port until the block ends."""
    port = base.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digest.cli", "--config", str(config), "serve", "--port", port],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_up(base + "/feeds/all.rss", proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`digest serve` over a seeded database (the samples, Ada): (base URL, settings path)."""
    base, config, settings = site_config(tmp_path)
    with Store.open(settings.database.url) as store:
        seed(store, settings, tmp_path)
    with serving(base, config):
        yield base, config


def _wait_until_up(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):  # a bound on waiting for start-up, not an assertion about speed
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"digest serve exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError(f"digest serve did not answer at {url}")


def new_page(
    browser: Any, width: int, height: int = 900, *, failed_responses: bool = True
) -> tuple[Any, list[str]]:
    """A page of this viewport, and the list its console errors, page errors and (unless
    told not to) responses of 400 and over are collected into."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    if failed_responses:
        page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    return page, problems


def login(page: Any, base: str, path: str = "/admin/") -> None:
    """Log in to the admin through its form, landing on `path`."""
    page.goto(f"{base}/admin/login?next={path}")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base}{path}")


def no_sideways_scroll(page: Any, what: str = "page") -> None:
    """Assert the page is no wider than its viewport."""
    wide, seen = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert wide <= seen, f"{what}: page is {wide}px wide in a {seen}px viewport"


def shots() -> Path | None:
    """Where to save screenshots (DIGEST_SCREENSHOTS), or None."""
    target = os.environ.get("DIGEST_SCREENSHOTS")
    if not target:
        return None
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    return path
