"""Browser tests: Playwright drives Debian's chromium against a real `digest serve` process
(tests/browser_support.py: the browser and server fixtures, skips, screenshots). With
DIGEST_SCREENSHOTS=DIR the docs' screenshots (admin subscriber page, unsubscribe page) are saved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import new_page, no_sideways_scroll, shots
from web_support import PASSWORD

from digest import subscribers as subs
from digest.cli import main as cli_main
from digest.config import load_settings
from digest.links import LinkSigner, feedback_urls, links_for, secret_key
from digest.models import StatusChange, Topic
from digest.store import Store
from digest.web.preview import backtest

pytestmark = pytest.mark.browser


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
    page, _ = new_page(browser, 1280)
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
    if target := shots():
        page.screenshot(path=str(target / "admin-subscriber.png"), full_page=False)

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
    page, _ = new_page(browser, 420, 720)
    page.goto(links.unsubscribe_url)  # the footer link: a GET only shows the page
    expect(page.get_by_role("heading", name="Unsubscribe?")).to_be_visible()
    with Store.open(settings.database.url) as store:
        assert subs.get_subscriber(store, "ada@example.org").status == "active"
    if target := shots():
        page.screenshot(path=str(target / "unsubscribe.png"), full_page=True)
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
    page, problems = new_page(browser, width)
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
    no_sideways_scroll(page)
    page.get_by_role("link", name="Wipe…").click()
    expect(page.get_by_role("button", name="Wipe for good")).to_be_visible()
    no_sideways_scroll(page)
    assert problems == []


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
    page, problems = new_page(browser, width)
    page.goto(urls[0])  # a GET only asks
    expect(page.get_by_role("heading", name="More like this?")).to_be_visible()
    expect(page.locator("#feedback-paper")).to_have_text(paper.title)
    no_sideways_scroll(page)
    with Store.open(settings.database.url) as store:
        assert store.examples_of(sub.id) == []
    page.get_by_role("button", name="More like this").click()
    expect(page.get_by_role("heading", name="Recorded")).to_be_visible()
    no_sideways_scroll(page)
    with Store.open(settings.database.url) as store:
        assert [e.paper_id for e in store.examples_of(sub.id)] == [paper.id]
    page.get_by_role("button", name="Undo").click()
    expect(page.get_by_role("heading", name="Undone")).to_be_visible()
    with Store.open(settings.database.url) as store:
        assert store.examples_of(sub.id) == []
    assert problems == []
