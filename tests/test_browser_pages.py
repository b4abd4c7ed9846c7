"""Browser tests of a subscriber's digest page and archive (Chromium at 1280 and 390 px).

Same set-up as tests/test_browser.py (its fixtures: a real `digest serve` over the samples);
with DIGEST_SCREENSHOTS=DIR the docs' screenshots of both pages are saved into DIR.
"""

from __future__ import annotations

import mailbox
from dataclasses import replace
from email import message_from_bytes, policy

import pytest
from test_browser import _assert_no_sideways_scroll, _shots, browser, server  # noqa: F401

from digest import subscribers as subs
from digest.config import load_settings
from digest.models import Topic
from digest.pipeline import Cycle
from digest.store import Store

pytestmark = pytest.mark.browser


def _sent_links(config) -> tuple[str, str]:
    """Send a broad subscriber's digest capped at 3 papers; its Archived-At and List-Archive."""
    settings = load_settings(config, env={})
    settings = replace(settings, mail=replace(settings.mail, max_papers=3))
    with Store.open(settings.database.url) as store:
        broad = [Topic("Models", "model*, learn*")]
        subs.add_subscriber(store, settings, "bo@example.org", topics=broad, backfill_days=3650)
        cycle = Cycle(store, settings)
        cycle.queue(force=True)
        assert cycle.deliver().sent == 2
    box = mailbox.Maildir(settings.mail.maildir, create=False)
    found = [message_from_bytes(box.get_bytes(k), policy=policy.default) for k in box.keys()]  # noqa: SIM118
    (msg,) = [m for m in found if "bo@example.org" in str(m["To"])]
    return str(msg["Archived-At"]).strip("<>"), str(msg["List-Archive"]).strip("<>")


@pytest.mark.parametrize("width", [1280, 390])
def test_digest_page_and_archive_read_well(browser, server, width):  # noqa: F811
    from playwright.sync_api import expect

    _, config = server
    page_url, archive_url = _sent_links(config)
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("response", lambda r: problems.append(r.url) if r.status >= 400 else None)
    page.goto(page_url)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Your digest of")
    expect(page.locator("p.muted").first).to_contain_text("the email showed 3 of")
    expect(page.locator("#left-out")).to_be_visible()
    assert page.locator("article.paper").count() > 3
    expect(page.locator("[data-why]").first).to_contain_text("matched: Models (")
    _assert_no_sideways_scroll(page)
    shots = _shots()
    if shots:
        name = "digest-page.png" if width == 1280 else "digest-page-phone.png"
        page.screenshot(path=str(shots / name), full_page=False)
    page.get_by_role("link", name="all your digests").click()
    expect(page.get_by_role("heading", name="Your past digests")).to_be_visible()
    expect(page.locator("li.archive-item")).to_have_count(1)
    assert page.url == archive_url
    _assert_no_sideways_scroll(page)
    if shots and width == 390:
        page.screenshot(path=str(shots / "archive-phone.png"), full_page=False)
    page.locator("li.archive-item a").first.click()
    assert page.url == page_url
    assert problems == []
