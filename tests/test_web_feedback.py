"""Feedback links (digest/links.py, public.feedback): a GET records nothing, a POST with the CSRF
token records and offers an undo, a bad MAC or foreign link is a 404; private feeds carry the
links; the manage and admin pages list examples with remove buttons."""

from __future__ import annotations

import re

import feedparser
import pytest
from web_support import (
    NOW,
    FakeTransport,
    admin_client,
    csrf_of,
    seeded,
)

from digest import subscribers as subs
from digest.feed import FeedEntry, build_feed
from digest.links import LinkSigner, feedback_urls, links_for
from digest.models import Topic, paper_key
from digest.outbox import queue_digests
from digest.web import create_app


@pytest.fixture
def env(tmp_path):
    settings, store = seeded(tmp_path)
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport([]))
    app.config["TESTING"] = True
    yield settings, store, app
    store.close()


def _setup(env):
    settings, store, app = env
    signer: LinkSigner = app.extensions["digest"].signer
    ann = subs.get_subscriber(store, "ann@example.org")
    paper = store.paper_by_key(paper_key("Sparse Attention for Long Context"))
    assert paper is not None
    like, dislike = feedback_urls(settings, signer, ann, paper.id, "Attention") or ("", "")
    base = settings.site.base_url.rstrip("/")
    return settings, store, app, ann, paper, like.removeprefix(base), dislike.removeprefix(base)


def test_get_records_nothing_post_records_and_undo_removes(env):
    _settings, store, app, ann, paper, like, dislike = _setup(env)
    client = app.test_client()
    page = client.get(like)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="feedback-confirm"' in html
    assert "Sparse Attention for Long Context" in html and "More like this" in html
    assert client.head(like).status_code == 200
    assert store.examples_of(ann.id) == []  # a scanner's GET records nothing
    done = client.post(like, data={"csrf_token": csrf_of(html)})
    assert done.status_code == 200 and 'id="feedback-undo"' in done.get_data(as_text=True)
    assert subs.get_subscriber(store, ann.email).topics[0].likes == (paper.id,)
    # the other link replaces the verdict
    client.post(dislike, data={"csrf_token": csrf_of(html)})
    topic = subs.get_subscriber(store, ann.email).topics[0]
    assert (topic.likes, topic.dislikes) == ((), (paper.id,))
    undone = client.post(dislike, data={"csrf_token": csrf_of(html), "action": "undo"})
    assert "Undone" in undone.get_data(as_text=True)
    assert store.examples_of(ann.id) == []


def test_a_post_without_csrf_and_bad_links_record_nothing(env):
    _settings, store, app, ann, paper, like, _ = _setup(env)
    client = app.test_client()
    assert client.post(like).status_code == 400
    mac = like.rsplit("/", 1)[1]
    bad = like[: -len(mac)] + ("A" if mac[0] != "A" else "B") + mac[1:]
    assert client.get(bad).status_code == 404
    other_paper = like.replace(f"/{paper.id}/", f"/{paper.id + 1}/", 1)
    assert client.get(other_paper).status_code == 404
    other_verdict = like.replace("/like/", "/dislike/")
    assert client.get(other_verdict).status_code == 404
    assert client.get(like.replace("/0/like/", "/5/like/")).status_code == 404  # no topic 5
    assert client.get(like.replace(f"/feedback/{ann.id}/", "/feedback/999/")).status_code == 404
    # an action the page never sends is refused, not taken for the verdict (web check)
    html = client.get(like).get_data(as_text=True)
    assert (
        client.post(like, data={"csrf_token": csrf_of(html), "action": "bogus"}).status_code == 400
    )
    assert store.examples_of(ann.id) == []


def test_a_renamed_topic_keeps_its_examples_and_its_old_links_die(env):
    settings, store, app, ann, paper, like, _ = _setup(env)
    client = app.test_client()
    client.post(like, data={"csrf_token": csrf_of(client.get(like).get_data(as_text=True))})
    subs.edit_subscriber(store, settings, ann.email, topics=[Topic("Sparse", "sparse attention")])
    assert subs.get_subscriber(store, ann.email).topics[0].likes == (paper.id,)
    assert client.get(like).status_code == 404  # the MAC names the old topic


def test_manage_and_admin_pages_list_examples_and_remove_them(env):
    settings, store, app, ann, paper, _, _ = _setup(env)
    store.record_feedback(ann.id, "Attention", paper.id, "like")
    signer = app.extensions["digest"].signer
    manage = links_for(settings, signer, ann).manage_url.removeprefix(
        settings.site.base_url.rstrip("/")
    )
    client = app.test_client()
    page = client.get(manage).get_data(as_text=True)
    assert "more like this" in page and 'value="remove_example"' in page
    assert "Sparse Attention for Long Context" in page
    token = csrf_of(page)
    form = {"csrf_token": token, "action": "remove_example", "topic": "Attention"}
    done = client.post(manage, data={**form, "paper_id": str(paper.id)})
    assert "Example removed" in done.get_data(as_text=True)
    assert store.examples_of(ann.id) == []
    # the admin page
    store.record_feedback(ann.id, "Attention", paper.id, "dislike")
    admin = admin_client(app)
    page = admin.get(f"/admin/subscribers/{ann.id}").get_data(as_text=True)
    assert "not for me" in page and "Sparse Attention for Long Context" in page
    url = f"/admin/subscribers/{ann.id}/examples/remove"
    assert (
        admin.post(url, data={"topic": "Attention", "paper_id": str(paper.id)}).status_code == 400
    )
    gone = admin.post(
        url, data={"csrf_token": csrf_of(page), "topic": "Attention", "paper_id": str(paper.id)}
    )
    assert gone.status_code == 302 and store.examples_of(ann.id) == []


def test_a_topic_of_examples_alone_is_saved_from_the_manage_page(env):
    settings, store, app, ann, _, _, _ = _setup(env)
    signer = app.extensions["digest"].signer
    manage = links_for(settings, signer, ann).manage_url.removeprefix(
        settings.site.base_url.rstrip("/")
    )
    client = app.test_client()
    token = csrf_of(client.get(manage).get_data(as_text=True))
    data = {
        "csrf_token": token,
        "action": "save",
        "topic_name": ["Attention", "Mine"],
        "topic_query": ["sparse attention", ""],
        "cadence": "daily",
        "time": "07:00",
        "tz": "UTC",
        "weekday": "0",
    }
    assert client.post(manage, data=data).status_code == 200
    assert [t.query for t in subs.get_subscriber(store, ann.email).topics] == [
        "sparse attention",
        "",
    ]
    queue_digests(store, settings, now=NOW, force=True)  # an empty query crashes nothing


def test_private_feeds_carry_feedback_links_feedparser_reads(env):
    settings, store, app, ann, paper, like, dislike = _setup(env)
    subs.edit_subscriber(store, settings, ann.email, cadence="feed")
    queue_digests(store, settings, now=NOW, force=True)
    client = app.test_client()
    parsed = feedparser.parse(client.get(f"/feeds/s/{ann.token}.atom").data)
    assert not parsed.bozo
    summary = parsed.entries[0].summary
    hrefs = re.findall(r'href="([^"]+)"', summary)
    base = settings.site.base_url.rstrip("/")
    assert [h.removeprefix(base) for h in hrefs] == [like, dislike]
    doc = build_feed(
        [FeedEntry(paper=paper, feedback=("https://x.test/a?b=1&c=<2>", "https://x.test/d"))],
        fmt="rss",
        title="t",
        self_url="https://x.test/f.rss",
        site_url="https://x.test/",
        description="d",
        max_items=10,
        max_bytes=100_000,
    )
    entry = feedparser.parse(doc.body).entries[0]
    assert 'href="https://x.test/a?b=1&amp;c=&lt;2&gt;"' in entry.summary
