"""Every admin and sign-up page in Chromium at 1280 and 390 px: no sideways scroll, no console
error, and the layout fixes (query error width, preview next to the field, bounded backtest,
hidden Preview button). Fixtures and helpers from tests/browser_support.py.
With DIGEST_SCREENSHOTS=DIR the pages shown in docs/guide/web.md are saved into DIR.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import login, new_page, no_sideways_scroll, seed, serving, shots, site_config

from digest import subscribers as subs
from digest.config import load_settings
from digest.mail import SendResult
from digest.models import Topic
from digest.pipeline import Cycle
from digest.store import Store

pytestmark = pytest.mark.browser

WIDTHS = [1280, 390]
BROAD = "model, data, learning, language, training"  # matches most papers: a long backtest


class _Accepting:
    """A transport that takes every message (to record sent digests before serving)."""

    parallel = 1

    def send(self, msg):
        return SendResult(msg.message_id, tuple(msg.recipients))

    def close(self) -> None:
        pass


@pytest.fixture
def site(tmp_path) -> Iterator[tuple[str, Path, dict[str, int]]]:
    """`digest serve` with sign-up on, an operator address, and one digest sent to Ada."""
    base, config, settings = site_config(
        tmp_path, site='operator_email = "op@example.org"\n', web="signup_enabled = true\n"
    )
    with Store.open(settings.database.url) as store:
        ada = seed(store, settings, tmp_path)
        for i in range(30):  # enough rows for the list to need its narrow layout
            subs.add_subscriber(
                store,
                settings,
                f"reader-with-a-long-address-{i}@research.example.org",
                topics=[Topic("Agents", "agent")],
            )
        cycle = Cycle(store, settings)
        cycle.queue(force=True)
        cycle.deliver(_Accepting())
        digest_id = store.delivery_history(ada.id, limit=1)[0].id
        paper_id = store.papers_page(limit=1)[0].id
    ids = {"ada": ada.id, "digest": digest_id, "paper": paper_id}
    with serving(base, config):
        yield base, config, ids


# The screenshots docs/guide/web.md shows (name-width); the other pages are checked, not shot.
SHOTS = {
    "admin-dashboard-1280",
    "admin-dashboard-390",
    "admin-subscriber-1280",
    "admin-digest-1280",
    "admin-papers-390",
    "admin-new-1280",
    "admin-preview-390",
    "signup-1280",
    "signup-390",
}


def _shot(page, name: str, width: int) -> None:
    if (target := shots()) and f"{name}-{width}" in SHOTS:
        page.screenshot(path=str(target / f"{name}-{width}.png"), full_page=False)


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_every_admin_page_fits_and_has_no_console_error(browser, site, width):
    base, _, ids = site
    page, problems = new_page(browser, width, failed_responses=False)
    login(page, base)
    sid, did, pid = ids["ada"], ids["digest"], ids["paper"]
    pages = {
        "dashboard": "/admin/",
        "subscribers": "/admin/subscribers",
        "subscriber": f"/admin/subscribers/{sid}",
        "digest": f"/admin/subscribers/{sid}/digests/{did}",
        "new": "/admin/subscribers/new",
        "import": "/admin/subscribers/import",
        "papers": "/admin/papers",
        "paper-search": "/admin/papers?q=attention",
        "paper-error": "/admin/papers?q=" + "latency%20%22" + "x" * 80,
        "paper": f"/admin/papers/{pid}",
        "remove": f"/admin/subscribers/{sid}/remove",
        "wipe": f"/admin/subscribers/{sid}/wipe",
    }
    for name, path in pages.items():
        page.goto(base + path)
        page.wait_for_load_state("networkidle")
        no_sideways_scroll(page, name)
        if name in ("dashboard", "subscriber", "digest", "papers", "new", "subscribers"):
            _shot(page, f"admin-{name}", width)
    # the bulk remove confirmation (a POST page)
    page.goto(base + "/admin/subscribers")
    page.locator("input[name=sid]").nth(0).check()
    page.locator("input[name=sid]").nth(1).check()
    page.get_by_role("button", name="Remove…").click()
    page.get_by_role("button", name="Remove 2").wait_for()
    no_sideways_scroll(page, "bulk remove")
    assert problems == [], problems


@pytest.mark.parametrize("width", WIDTHS)
def test_live_preview_layout_on_the_subscriber_page(browser, site, width):
    from playwright.sync_api import expect

    base, _, ids = site
    page, problems = new_page(browser, width, failed_responses=False)
    login(page, base)
    page.goto(base + f"/admin/subscribers/{ids['ada']}")
    # the no-JavaScript Preview button is hidden (CSS [hidden] beats .button's display)
    expect(page.locator("[data-nojs-preview]")).to_be_hidden()
    query = page.get_by_label("Keywords (query)").first
    query.fill('latency "unclosed quote that goes on and on for quite a few words here')
    expect(page.locator("#topic-error-0")).to_contain_text("column")
    no_sideways_scroll(page, "query error")
    query.fill("sparse and attention")  # a warning, live beside the field; the error is gone
    expect(page.locator("#topic-warning-0")).to_contain_text("lower-case 'and' is ignored")
    expect(page.locator("#topic-error-0")).to_be_empty()
    no_sideways_scroll(page, "query warning")
    query.fill(BROAD)
    summary = page.locator("[data-preview-summary]")
    expect(summary).to_contain_text("added")
    panel = page.locator("#h-preview")
    field_box = query.bounding_box()
    panel_box = panel.bounding_box()
    assert field_box and panel_box
    if width < 900:  # stacked: the preview comes just below the field being typed in
        gap = panel_box["y"] - (field_box["y"] + field_box["height"])
        assert 0 <= gap < 300, f"preview starts {gap}px below the field"
    else:  # side by side: the preview's top is level with the form, not below it
        assert panel_box["x"] > field_box["x"] + field_box["width"]
        assert panel_box["y"] < field_box["y"] + field_box["height"]
    # a broad profile's backtest scrolls inside its own box
    for box in page.locator(".preview-list").all():
        assert box.evaluate("e => e.clientHeight") <= 28 * 16 + 2
    section_height = page.locator("section.preview").evaluate("e => e.offsetHeight")
    assert section_height < 2000, f"preview section is {section_height}px tall"
    no_sideways_scroll(page, "broad preview")
    _shot(page, "admin-preview", width)
    assert problems == [], problems


@pytest.mark.parametrize("width", WIDTHS)
def test_add_form_adds_topic_rows_and_shows_all_errors(browser, site, width):
    from playwright.sync_api import expect

    base, _, _ = site
    page, problems = new_page(browser, width, failed_responses=False)
    login(page, base)
    page.goto(base + "/admin/subscribers/new")
    before = page.locator("[data-topic]").count()
    page.get_by_role("button", name="Add a topic").click()
    expect(page.locator("[data-topic]")).to_have_count(before + 1)
    page.locator("#topic-query-0").fill("sparse attention")
    expect(page.locator("[data-preview-summary]")).to_contain_text("would have brought")
    page.get_by_label("Email").fill("not-an-address")
    page.locator("#tz").fill("Mars/Olympus")
    page.evaluate("document.getElementById('email').removeAttribute('required')")
    page.evaluate("document.getElementById('email').type = 'text'")
    assert problems == [], problems
    page.get_by_role("button", name="Add subscriber").click()
    expect(page.locator("#email-error")).to_be_visible()
    expect(page.locator("#tz-error")).to_be_visible()
    no_sideways_scroll(page, "add form errors")
    # the page itself answers 400 (Chromium logs that); nothing else may fail
    assert all("status of 400" in p for p in problems), problems


@pytest.mark.parametrize("width", WIDTHS)
def test_signup_with_example_preview_and_browser_zone(browser, site, width):
    from playwright.sync_api import expect

    base, config, _ = site
    context = browser.new_context(
        viewport={"width": width, "height": 900}, timezone_id="Europe/Paris"
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(base + "/signup")
    expect(page.locator("#tz")).to_have_value("Europe/Paris")  # the browser's zone
    expect(page.locator("#first-digest")).to_contain_text("added after you confirm")
    page.get_by_role("button", name="LLM inference").click()
    expect(page.locator("#topic-query-0")).to_have_value(
        "speculative decoding, KV cache, quantization"
    )
    expect(page.locator("[data-preview-summary]")).to_contain_text("would have brought")
    no_sideways_scroll(page, "sign-up with preview")
    _shot(page, "signup", width)
    page.locator("#topic-query-1").fill("robot and manipulation")  # a warning, not an error
    expect(page.locator("#topic-warning-1")).to_contain_text("lower-case 'and' is ignored")
    no_sideways_scroll(page, "sign-up with a warning")
    page.get_by_label("Email").fill(f"new-{width}@example.org")
    page.get_by_label("How often").select_option("weekly")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    expect(page.locator(".flash-warn")).to_contain_text("lower-case 'and' is ignored")
    no_sideways_scroll(page, "sign-up sent")
    settings = load_settings(config, env={})
    for _ in range(200):  # the confirmation sender works in the background: wait for it
        with Store.open(settings.database.url) as store:
            sub = store.subscriber_by_email(f"new-{width}@example.org")
        if sub is not None:
            break
        page.wait_for_timeout(50)
    assert sub is not None and sub.status == "pending"
    assert (sub.cadence, sub.tz) == ("weekly", "Europe/Paris") and len(sub.topics) == 2
    assert problems == [], problems
    context.close()
