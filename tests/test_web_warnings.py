"""Warnings, not errors, in every web form that takes a topic query (issue 13 item 3), and why
each paper is there in the admin preview and on digest pages (item 4)."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from markupsafe import escape
from web_support import NOW, XSS, FakeTransport, add_dump, admin_client, csrf_of, paper, seeded

from digest import subscribers as subs
from digest.links import links_for
from digest.models import Topic
from digest.web import create_app
from digest.web.pages import words_by_field
from digest.web.preview import CoverageIndex, backtest

# Enough papers for the coverage warning (it needs 20); none of them says "zebra".
FILLER = [paper(f"Filler paper {n} on graphs", f"Graph result {n}.") for n in range(20)]
LOWER_AND = "and&#39; is ignored as a common word"  # autoescaped: the quote is &#39;
NONE_OF = "matches none of the 25 stored papers"
EVIL = XSS[:40]  # a hostile topic name: every warning names its topic


@pytest.fixture
def env(tmp_path):
    settings, store = seeded(tmp_path, signup_enabled=True)
    add_dump(store, "2025-11-21.txt", FILLER, NOW - timedelta(days=3))
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport([]))
    app.config["TESTING"] = True
    yield settings, store, app
    store.close()


def _topics(*pairs: tuple[str, str]) -> dict[str, list[str]]:
    return {"topic_name": [n for n, _ in pairs], "topic_query": [q for _, q in pairs]}


def _escaped_only(text: str) -> None:
    assert XSS[:20] not in text and escape(XSS[:20]) in text


def _warning_slot(page: str, i: int) -> str:
    found = re.search(rf'id="topic-warning-{i}"[^>]*>(.*?)</div>\s*</div>', page, re.S)
    assert found, f"no warning slot {i}"
    return found.group(1)


def test_admin_add_saves_despite_warnings_and_flashes_them_escaped(env):
    _, store, app = env
    client = admin_client(app)
    page = client.get("/admin/subscribers/new").get_data(as_text=True)
    data = {"csrf_token": csrf_of(page), "email": "new@example.org", "cadence": "daily",
            "time": "08:00", "tz": "UTC", "weekday": "0", "backfill": "0",
            **_topics((EVIL, "sparse and attention"), ("Zebra", "zebra"))}  # fmt: skip
    answer = client.post("/admin/subscribers/new", data=data, follow_redirects=True)
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "Added new@example.org" in text
    assert store.subscriber_by_email("new@example.org") is not None  # a warning never blocks
    assert text.count("flash-warn") == 2 and LOWER_AND in text and NONE_OF in text
    _escaped_only(text)
    # The saved page keeps the warnings beside their fields.
    assert LOWER_AND in _warning_slot(text, 0) and NONE_OF in _warning_slot(text, 1)


def test_admin_add_with_an_error_shows_the_other_rows_warnings(env):
    _, store, app = env
    client = admin_client(app)
    page = client.get("/admin/subscribers/new").get_data(as_text=True)
    data = {"csrf_token": csrf_of(page), "email": "new@example.org",
            **_topics(("A", "a (b"), ("B", "pruning OR -diffusion"))}  # fmt: skip
    text = client.post("/admin/subscribers/new", data=data).get_data(as_text=True)
    assert "OR with a negation" in _warning_slot(text, 1)
    assert store.subscriber_by_email("new@example.org") is None  # the error does block


def test_admin_edit_saves_and_flashes_warnings(env):
    _, store, app = env
    client = admin_client(app)
    sid = store.subscriber_by_email("ann@example.org").id
    url = f"/admin/subscribers/{sid}"
    data = {"csrf_token": csrf_of(client.get(url).get_data(as_text=True)), "action": "save",
            **_topics((EVIL, "pruning OR -diffusion"))}  # fmt: skip
    answer = client.post(url, data=data, follow_redirects=True)
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "Saved." in text
    assert subs.get_subscriber(store, "ann@example.org").topics[0].query == "pruning OR -diffusion"
    assert "flash-warn" in text and "OR with a negation" in text
    _escaped_only(text)


@pytest.mark.parametrize("where", ["edit", "new", "signup"])
def test_live_previews_answer_warnings_by_row_next_to_errors(env, where):
    _, store, app = env
    client = admin_client(app)
    sid = store.subscriber_by_email("ann@example.org").id
    form, url = {
        "edit": (f"/admin/subscribers/{sid}", f"/admin/subscribers/{sid}/preview"),
        "new": ("/admin/subscribers/new", "/admin/subscribers/new/preview"),
        "signup": ("/signup", "/signup/preview"),
    }[where]
    token = csrf_of(client.get(form).get_data(as_text=True))
    data = {"csrf_token": token, **_topics(("Ok", "latency"), (EVIL, "graph and zebra"))}
    answer = client.post(url, data=data).get_json()
    assert set(answer["warnings"]) == {"1"} and answer["errors"] == {}
    assert LOWER_AND in answer["warnings"]["1"]
    assert "data-preview-summary" in answer["html"]  # the preview itself is still there
    broken = client.post(url, data={**data, "topic_query": ["a (b", "zebra"]}).get_json()
    assert set(broken["errors"]) == {"0"} and NONE_OF in broken["warnings"]["1"]


def test_web_csv_import_names_each_rows_line_and_address(env):
    _, store, app = env
    client = admin_client(app)
    token = csrf_of(client.get("/admin/subscribers/import").get_data(as_text=True))
    rows = ("email,topics\n"
            "ok@example.org,Fine: latency\n"
            f'zed@example.org,"{EVIL.replace(chr(34), chr(34) * 2)}: zebra"\n'
            "low@example.org,Low: sparse and attention\n")  # fmt: skip
    answer = client.post(
        "/admin/subscribers/import",
        data={"csrf_token": token, "file": (io.BytesIO(rows.encode()), "subs.csv")},
        content_type="multipart/form-data",
    )
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "3 added" in text  # warnings reject no row
    listed = re.search(r'<ul id="import-warnings">(.*?)</ul>', text, re.S)
    assert listed
    items = re.findall(r"<li>(.*?)</li>", listed.group(1))
    assert len(items) == 2
    assert items[0].startswith("upload.csv:3: zed@example.org: topic ") and NONE_OF in items[0]
    assert items[1].startswith("upload.csv:4: low@example.org: topic ") and LOWER_AND in items[1]
    _escaped_only(text)
    assert store.subscriber_by_email("zed@example.org") is not None


def test_manage_page_saves_and_shows_warnings(env):
    settings, store, app = env
    ann = subs.get_subscriber(store, "ann@example.org")
    manage = links_for(settings, app.extensions["digest"].signer, ann).manage_url
    url = manage.removeprefix(settings.site.base_url)
    client = app.test_client()
    page = client.get(url).get_data(as_text=True)
    data = {"csrf_token": csrf_of(page), "action": "save", "cadence": "daily", "time": "08:00",
            "tz": "UTC", "weekday": "0", **_topics((EVIL, "zebra"))}  # fmt: skip
    answer = client.post(url, data=data)
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200 and "Saved." in text
    assert subs.get_subscriber(store, "ann@example.org").topics[0].query == "zebra"
    assert "flash-warn" in text and NONE_OF in text and NONE_OF in _warning_slot(text, 0)
    _escaped_only(text)


def test_signup_takes_the_topics_and_says_the_warnings(env):
    _, store, app = env
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    data = {"csrf_token": csrf_of(page), "email": "eve@example.org", "cadence": "daily",
            "time": "08:00", "tz": "UTC", "weekday": "0",
            **_topics((EVIL, "robot and manipulation"))}  # fmt: skip
    answer = client.post("/signup", data=data)
    text = answer.get_data(as_text=True)
    app.extensions["digest"].mailer.wait()
    assert answer.status_code == 200 and "Check your inbox" in text
    assert LOWER_AND in text and "flash-warn" in text
    _escaped_only(text)
    eve = subs.get_subscriber(store, "eve@example.org")
    assert eve.topics[0].query == "robot and manipulation"
    # With an error elsewhere the form comes back, the warning beside its field.
    again = client.post("/signup", data={**data, "email": "nope"}).get_data(as_text=True)
    assert LOWER_AND in _warning_slot(again, 0)


def test_coverage_index_is_rebuilt_only_when_the_papers_change(env):
    _, store, _ = env
    cache = CoverageIndex()
    first = cache.get(store)
    assert first is not None and len(first.papers) == 25
    assert cache.get(store) is first
    add_dump(store, "2025-11-24.txt", [paper("Zebra stripes", "Zebra.")], NOW)
    assert len(cache.get(store).papers) == 26


# --- why this paper --------------------------------------------------------------------------


def test_preview_rows_say_why_from_the_alternatives_that_matched(env):
    _, store, _ = env
    papers = store.papers_of_recent_dumps(5)
    topic = Topic("Speed", "latency AND upvotes>=10, speculative decoding, zebra")
    found = backtest(papers, [], [topic], dumps=3)
    why = {r.paper.title: r.why for r in found.added}
    assert why["Sparse Attention for Long Context"] == (
        ("Speed", "abstract: latency; upvotes>=10"),
    )
    assert why["Speculative Decoding at Scale"] == (
        ("Speed", "title: Speculative, Decoding; abstract: decoding"),
    )
    assert "Diffusion Models for Video" not in why  # latency, but under 10 upvotes


def test_admin_preview_html_shows_the_why(env):
    _, store, app = env
    client = admin_client(app)
    sid = store.subscriber_by_email("ann@example.org").id
    token = csrf_of(client.get(f"/admin/subscribers/{sid}").get_data(as_text=True))
    data = {"csrf_token": token, **_topics(("Speed", "latency AND upvotes>=10, zebra"))}
    html = client.post(f"/admin/subscribers/{sid}/preview", data=data).get_json()["html"]
    assert "matched: <strong>Speed</strong> (abstract: latency; upvotes&gt;=10)" in html
    assert "zebra" not in html


def test_words_by_field_lists_each_word_where_it_is():
    got = words_by_field("Low latency KV cache", "Latency drops; the cache wins", ("latency", "KV",
                         "cache", "Latency"))  # fmt: skip
    assert got == "title: latency, KV, cache; abstract: latency, cache"
    assert words_by_field("Pruning", "nothing", ("Pruning",)) == "title: Pruning"
    assert words_by_field("Caches", "cache", ("cache",)) == "abstract: cache"  # whole words


def test_digest_page_says_why_as_the_email_does(tmp_path):
    import mailbox
    from email import message_from_bytes, policy

    from web_support import make_settings

    from digest.pipeline import Cycle
    from digest.store import Store

    settings = make_settings(tmp_path, site={"base_url": "https://papers.example.org"})
    store = Store.open(settings.database.url)
    add_dump(store, "d.txt", [
        paper("Latency of Sparse Attention", "Attention with low latency.", upvotes=40),
        paper("Zebra crossings", "Latency of zebras.", upvotes=1),
    ], NOW)  # fmt: skip
    subs.add_subscriber(store, settings, "ann@example.org", backfill_days=30, now=NOW,
                        topics=[Topic("Speed", "latency AND upvotes>=10, pruning")])  # fmt: skip
    cycle = Cycle(store, settings, clock=lambda: NOW)
    cycle.queue(force=True)
    cycle.deliver()
    box = mailbox.Maildir(settings.mail.maildir, create=False)
    (key,) = box.keys()
    msg = message_from_bytes(box.get_bytes(key), policy=policy.default)  # type: ignore[arg-type]
    email_text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "matched: Speed (Latency); upvotes>=10" in email_text
    page_url = msg["Archived-At"].strip("<>").removeprefix("https://papers.example.org")
    body = create_app(settings, store).test_client().get(page_url).get_data(as_text=True)
    line = re.search(r"<p [^>]*data-why>(.*?)</p>", body, re.S)
    assert line and line.group(1) == (
        "matched: <strong>Speed</strong> (title: Latency; abstract: Latency); upvotes&gt;=10"
    )
    assert "pruning" not in body.lower() and "Zebra" not in body
    store.close()
