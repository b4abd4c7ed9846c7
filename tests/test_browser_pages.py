"""Browser tests of a subscriber's digest page and archive (Chromium at 1280 and 390 px).

Fixtures from tests/browser_support.py (a real `digest serve` over the samples);
with DIGEST_SCREENSHOTS=DIR the docs' screenshots of both pages are saved into DIR.
"""

from __future__ import annotations

import mailbox
from dataclasses import replace
from email import message_from_bytes, policy

import pytest
from browser_support import new_page, no_sideways_scroll, shots

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
def test_digest_page_and_archive_read_well(browser, server, width):
    from playwright.sync_api import expect

    _, config = server
    page_url, archive_url = _sent_links(config)
    page, problems = new_page(browser, width)
    page.goto(page_url)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Your digest of")
    expect(page.locator("p.muted").first).to_contain_text("the email showed 3 of")
    expect(page.locator("#left-out")).to_be_visible()
    assert page.locator("article.paper").count() > 3
    expect(page.locator("[data-why]").first).to_contain_text("matched: Models (")
    no_sideways_scroll(page)
    target = shots()
    if target:
        name = "digest-page.png" if width == 1280 else "digest-page-phone.png"
        page.screenshot(path=str(target / name), full_page=False)
    page.get_by_role("link", name="all your digests").click()
    expect(page.get_by_role("heading", name="Your past digests")).to_be_visible()
    expect(page.locator("li.archive-item")).to_have_count(1)
    assert page.url == archive_url
    no_sideways_scroll(page)
    if target and width == 390:
        page.screenshot(path=str(target / "archive-phone.png"), full_page=False)
    page.locator("li.archive-item a").first.click()
    assert page.url == page_url
    assert problems == []
