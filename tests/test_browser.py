"""Browser tests: Playwright drives Debian's chromium against a real `digest serve` process.

Skipped with the reason when /usr/bin/chromium or the playwright package is missing, unless
DIGEST_REQUIRE_BROWSER=1 (CI), where that is a failure. With DIGEST_SCREENSHOTS=DIR the test also
saves the README screenshots (admin subscriber page, unsubscribe page) into DIR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from support import free_port, unavailable
from web_support import PASSWORD, PASSWORD_HASH

from digest import subscribers as subs
from digest.cli import main as cli_main
from digest.config import load_settings
from digest.ingest import ingest_files
from digest.links import LinkSigner, feedback_urls, links_for, secret_key
from digest.models import StatusChange, Topic
from digest.store import Store
from digest.web.preview import backtest

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

pytestmark = pytest.mark.browser


def _unavailable(reason: str) -> NoReturn:
    unavailable("browser tests", "DIGEST_REQUIRE_BROWSER", reason)


@pytest.fixture
def browser() -> Iterator[object]:
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


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path]]:
    """`digest serve` in a subprocess on a free loopback port, over a seeded database."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = tmp_path / "settings.toml"
    config.write_text(
        "[database]\n"
        'url = "sqlite:///digest.db"\n'
        "[site]\n"
        f'base_url = "{base}"\n'
        "[web]\n"
        f'admin_password_hash = "{PASSWORD_HASH}"\n'
        "preview_dumps = 5\n",
        encoding="utf-8",
    )
    settings = load_settings(config, env={})
    dumps = tmp_path / "samples"
    shutil.copytree(SAMPLES, dumps)
    with Store.open(settings.database.url) as store:
        ingest_files(store, settings, sorted(dumps.iterdir()), quiet=True)
        subs.add_subscriber(
            store,
            settings,
            "ada@example.org",
            name="Ada Lovelace",
            topics=[Topic("Efficiency", '"sparse attention", speculative decoding')],
            backfill_days=3650,
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "digest.cli", "--config", str(config), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_until_up(base + "/feeds/all.rss", proc)
        yield base, config
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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


def _shots() -> Path | None:
    target = os.environ.get("DIGEST_SCREENSHOTS")
    if not target:
        return None
    path = Path(target)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _expected_summary(config: Path, query: str) -> str:
    settings = load_settings(config, env={})
    with Store.open(settings.database.url) as store:
        sub = subs.get_subscriber(store, "ada@example.org")
        papers = store.papers_of_recent_dumps(settings.web.preview_dumps)
    result = backtest(papers, list(sub.topics), [Topic("Efficiency", query)], dumps=5)
    counts = result.counts
    assert counts["added"] > 0 and counts["removed"] > 0, "pick a query that changes the set"
    return f"+{counts['added']} added −{counts['removed']} removed {counts['kept']} unchanged"


@pytest.mark.slow
def test_admin_edits_a_topic_with_live_preview_and_saves(browser, server):
    from playwright.sync_api import expect

    base, config = server
    new_query = "video, latency -draft"
    expected = _expected_summary(config, new_query)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(base + "/admin/")
    expect(page).to_have_url(base + "/admin/login?next=/admin/")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    page.get_by_role("navigation", name="Admin").get_by_role("link", name="Subscribers").click()
    page.get_by_role("link", name="ada@example.org").click()
    summary = page.locator("[data-preview-summary]")
    expect(summary).to_contain_text("+0 added")

    query = page.get_by_label("Keywords (query)").first
    query.fill('latency "unclosed')  # a typing mistake: the error appears at its column
    error = page.locator("#topic-error-0")
    expect(error).to_contain_text("column 9")
    expect(error.locator("pre.caret")).to_contain_text("^")
    expect(query).to_have_attribute("aria-invalid", "true")

    query.fill(new_query)
    expect(error).to_be_empty()
    expect(summary).to_contain_text(expected.split(" removed")[0])
    text = " ".join(summary.inner_text().split())
    assert expected.replace(" ", "") in text.replace(" ", ""), text
    expect(page.locator(".tag-added").first).to_be_visible()
    if shots := _shots():
        page.screenshot(path=str(shots / "admin-subscriber.png"), full_page=False)

    page.get_by_role("button", name="Save profile").click()
    expect(page.get_by_text("Saved.")).to_be_visible()
    settings = load_settings(config, env={})
    with Store.open(settings.database.url) as fresh:
        sub = subs.get_subscriber(fresh, "ada@example.org")
    assert sub.topics == (Topic("Efficiency", new_query),)
    # The next digest follows the saved profile: `digest preview` renders it.
    out = config.parent / "preview"
    assert cli_main(["--config", str(config), "preview", "ada@example.org", "--out", str(out)]) == 0
    text = next(out.glob("*.txt")).read_text(encoding="utf-8")
    assert "Video Diffusion Models with Temporal Token Merging" in text
    assert "Draft Trees Revisited" not in text  # excluded by -draft


def test_subscriber_unsubscribes_through_their_link(browser, server):
    from playwright.sync_api import expect

    _, config = server
    settings = load_settings(config, env={})
    with Store.open(settings.database.url) as store:
        sub = subs.get_subscriber(store, "ada@example.org")
        links = links_for(settings, LinkSigner(secret_key(store, settings)), sub)
    page = browser.new_page(viewport={"width": 420, "height": 720})
    page.set_default_timeout(30_000)
    page.goto(links.unsubscribe_url)  # the footer link: a GET only shows the page
    expect(page.get_by_role("heading", name="Unsubscribe?")).to_be_visible()
    with Store.open(settings.database.url) as store:
        assert subs.get_subscriber(store, "ada@example.org").status == "active"
    if shots := _shots():
        page.screenshot(path=str(shots / "unsubscribe.png"), full_page=True)
    page.keyboard.press("Tab")  # keyboard use: skip link, then the button
    page.get_by_role("button", name="Unsubscribe").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    with Store.open(settings.database.url) as store:
        assert subs.get_subscriber(store, "ada@example.org").status == "unsubscribed"


@pytest.mark.parametrize("width", [1280, 390])
def test_admin_consent_page_shows_when_and_how_they_left(browser, server, width):
    from playwright.sync_api import expect

    base, config = server
    settings = load_settings(config, env={})
    with Store.open(settings.database.url) as store:
        sub = subs.get_subscriber(store, "ada@example.org")
        store.unsubscribe_token(sub.token, how=StatusChange.ONE_CLICK)
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    page.goto(base + "/admin/login?next=/admin/subscribers")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="ada@example.org").click()
    notice = page.locator("#consent")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("by one-click")
    expect(notice).to_contain_text("Only they can subscribe again")
    expect(page.get_by_role("button", name="Resume")).to_have_count(0)
    history = page.locator("#history")
    expect(history).to_be_visible()
    expect(history.locator("tbody tr")).to_have_count(2)
    expect(history.locator("tbody tr").last).to_contain_text("one-click")
    expect(page.get_by_role("link", name="Export data")).to_be_visible()
    _assert_no_sideways_scroll(page)
    page.get_by_role("link", name="Wipe…").click()
    expect(page.get_by_role("button", name="Wipe for good")).to_be_visible()
    _assert_no_sideways_scroll(page)
    assert problems == []


def _assert_no_sideways_scroll(page) -> None:
    wide, seen = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert wide <= seen, f"page is {wide}px wide in a {seen}px viewport"


@pytest.mark.parametrize("width", [1280, 390])
def test_feedback_link_asks_then_records_with_undo(browser, server, width):
    from playwright.sync_api import expect

    _, config = server
    settings = load_settings(config, env={})
    with Store.open(settings.database.url) as store:
        sub = subs.get_subscriber(store, "ada@example.org")
        paper = store.recent_papers(1)[0]
        urls = feedback_urls(settings, LinkSigner(secret_key(store, settings)), sub, paper.id, None)
    assert urls is not None
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    page.goto(urls[0])  # a GET only asks
    expect(page.get_by_role("heading", name="More like this?")).to_be_visible()
    expect(page.locator("#feedback-paper")).to_have_text(paper.title)
    _assert_no_sideways_scroll(page)
    with Store.open(settings.database.url) as store:
        assert store.examples_of(sub.id) == []
    page.get_by_role("button", name="More like this").click()
    expect(page.get_by_role("heading", name="Recorded")).to_be_visible()
    _assert_no_sideways_scroll(page)
    with Store.open(settings.database.url) as store:
        assert [e.paper_id for e in store.examples_of(sub.id)] == [paper.id]
    page.get_by_role("button", name="Undo").click()
    expect(page.get_by_role("heading", name="Undone")).to_be_visible()
    with Store.open(settings.database.url) as store:
        assert store.examples_of(sub.id) == []
    assert problems == []
