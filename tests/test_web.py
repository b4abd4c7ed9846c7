"""The web app through Flask's test client: admin pages, subscriber pages, sign-up, feeds."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from datetime import timedelta
from email.utils import format_datetime

import feedparser
import pytest
from web_support import (
    NOW,
    FakeTransport,
    admin_client,
    csrf_of,
    login,
    make_settings,
    seeded,
    submit,
)
from werkzeug.security import check_password_hash

from digest import subscribers as subs
from digest.links import LinkSigner, links_for, secret_key
from digest.models import StatusChange, Topic, paper_key
from digest.outbox import queue_digests
from digest.store import Store
from digest.web import create_app


@pytest.fixture
def env(tmp_path):
    settings, store = seeded(tmp_path)
    sent: list = []
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    app.config["TESTING"] = True
    yield settings, store, app, sent
    store.close()


def _path(url: str, settings) -> str:
    return url.removeprefix(settings.site.base_url.rstrip("/"))


def _history(store, email):
    """A subscriber's status history as (old, new, how) triples."""
    sub = store.subscriber_by_email(email)
    return [(e.old_status, e.new_status, e.how) for e in store.subscriber_events(sub.id)]


def _ann(store):
    return subs.get_subscriber(store, "ann@example.org")


# --- admin -----------------------------------------------------------------------------------


def test_login_then_dashboard_shows_statuses_dumps_and_failures(env):
    _settings, store, app, _ = env
    store.record_failed_dump("broken.txt", "f" * 64, 9, "broken.txt:1: not UTF-8", NOW)
    client = app.test_client()
    assert client.get("/admin/").status_code == 302
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    page = client.get("/admin/").get_data(as_text=True)
    assert "2025-11-23.txt" in page and "broken.txt" in page
    assert "not UTF-8" in page  # the failure's reason is shown
    assert re.search(r'<span class="n">1</span> <span class="badge badge-active">', page)


def test_a_subscriber_id_past_64_bits_is_404_not_500(env):
    _, _, app, _ = env
    client = app.test_client()
    login(client)
    for sid in (2**63, 10**30, 0):
        assert client.get(f"/admin/subscribers/{sid}").status_code == 404


def test_login_redirects_back_to_next_but_never_off_site(env):
    _, _, app, _ = env
    client = app.test_client()
    response = client.get("/admin/subscribers?q=ann")
    assert response.headers["Location"].startswith("/admin/login?next=")
    token = csrf_of(client.get("/admin/login").get_data(as_text=True))
    for target, expected in (
        ("/admin/subscribers?q=ann", "/admin/subscribers?q=ann"),
        ("//evil.example/admin", "/admin/"),
        ("https://evil.example/admin", "/admin/"),
    ):
        client.get("/admin/login")
        done = client.post(
            "/admin/login", data={"csrf_token": token, "password": "x" * 0 + "", "next": target}
        )
        assert done.status_code == 401
        login_page = client.get("/admin/login").get_data(as_text=True)
        ok = client.post(
            "/admin/login",
            data={
                "csrf_token": csrf_of(login_page),
                "password": "correct horse battery",
                "next": target,
            },
        )
        assert ok.headers["Location"] == expected
        token = csrf_of(client.get("/admin/login").get_data(as_text=True))


def test_subscriber_list_searches_and_pages(env):
    settings, store, app, _ = env
    for i in range(30):
        subs.add_subscriber(store, settings, f"user{i:02d}@example.org", name=f"User {i}")
    client = admin_client(app)
    first = client.get("/admin/subscribers").get_data(as_text=True)
    assert "Page 1 of 2" in first and "(31)" in first
    second = client.get("/admin/subscribers?page=2").get_data(as_text=True)
    assert "Page 2 of 2" in second
    shown = set(re.findall(r"user\d\d@example.org", first)) | set(
        re.findall(r"user\d\d@example.org", second)
    )
    assert len(shown) == 30
    found = client.get("/admin/subscribers?q=user07").get_data(as_text=True)
    assert "user07@example.org" in found and "user08@example.org" not in found
    paused = client.get("/admin/subscribers?status=paused").get_data(as_text=True)
    assert "No subscriber matches" in paused


def test_edit_topics_saves_what_a_fresh_store_reads(env):
    settings, store, app, _ = env
    client = admin_client(app)
    sid = _ann(store).id
    page = client.get(f"/admin/subscribers/{sid}").get_data(as_text=True)
    assert "sparse attention" in page
    response = client.post(
        f"/admin/subscribers/{sid}",
        data={
            "csrf_token": csrf_of(page),
            "name": "Ann B",
            "cadence": "weekly",
            "time": "18:30",
            "tz": "Europe/Paris",
            "weekday": "4",
            "topic_name": ["Attention", "Decoding", ""],
            "topic_query": ["sparse attention", '"speculative decoding"', ""],
            "action": "save",
        },
    )
    assert response.status_code == 302
    with Store.open(settings.database.url) as fresh:
        sub = subs.get_subscriber(fresh, "ann@example.org")
    assert sub.topics == (
        Topic("Attention", "sparse attention"),
        Topic("Decoding", '"speculative decoding"'),
    )
    assert (sub.name, sub.cadence, sub.time, sub.tz, sub.weekday) == (
        "Ann B",
        "weekly",
        "18:30",
        "Europe/Paris",
        4,
    )


def test_query_error_is_shown_at_its_column_and_nothing_is_saved(env):
    _, store, app, _ = env
    response = submit(
        admin_client(app),
        f"/admin/subscribers/{_ann(store).id}",
        {
            "topic_name": ["Attention"],
            "topic_query": ['latency\nsparse "attention'],
            "action": "save",
        },
    )
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert "Line 2, column 8:" in body
    caret = re.search(r'<pre class="caret"[^>]*>(.*?)</pre>', body, re.S).group(1)
    line, marker = caret.split("\n")
    assert line == "sparse &#34;attention" and marker == " " * 7 + "^"
    assert 'aria-invalid="true"' in body
    assert _ann(store).topics == (Topic("Attention", "sparse attention"),)


def _preview(client, sid: int, names: list[str], queries: list[str]):
    """POST a live-preview request for these topic rows, as the subscriber page's script does."""
    token = csrf_of(client.get(f"/admin/subscribers/{sid}").get_data(as_text=True))
    return client.post(
        f"/admin/subscribers/{sid}/preview",
        data={"csrf_token": token, "topic_name": names, "topic_query": queries},
    )


def test_preview_reports_added_removed_and_kept(env):
    _, store, app, _ = env
    client = admin_client(app)
    sid = _ann(store).id
    # saved: "sparse attention" matches only the first paper; "latency" matches three.
    response = _preview(client, sid, ["Attention"], ["latency"])
    assert response.status_code == 200
    html = response.get_json()["html"]
    assert "+2 added" in html and "−0 removed" in html and "1 unchanged" in html
    assert "Pruning Large Language Models" in html and "<mark>latency</mark>" not in html
    none = _preview(client, sid, ["Attention"], ["video"]).get_json()["html"]
    assert "+1 added" in none and "−1 removed" in none and "0 unchanged" in none
    bad = _preview(client, sid, ["A", "B"], ["ok", "(x"]).get_json()
    assert list(bad["errors"]) == ["1"] and "column" in bad["errors"]["1"]


def test_preview_shows_topics_per_digest_and_collapses_unchanged(env):
    _, store, app, _ = env
    client = admin_client(app)
    html = _preview(client, _ann(store).id, ["Attention"], ["latency"]).get_json()["html"]
    # The unchanged paper is a count, not a list; each topic's own gains are shown.
    assert "Still matched" not in html and "1 unchanged paper not listed" in html
    assert "data-preview-topics" in html and "+2 gained" in html
    assert "papers per digest" in html and "mail.max_papers" in html


def test_preview_considers_only_the_last_dumps(tmp_path):
    settings, store = seeded(tmp_path, preview_dumps=1)
    client = admin_client(create_app(settings, store))
    html = _preview(client, _ann(store).id, ["T"], ["decoding"]).get_json()["html"]
    # "Speculative Decoding" was only in the older dump, so the backtest does not see it.
    assert "Over the 3 papers of the last 1 dumps" in html and "+0 added" in html
    store.close()


def test_add_pause_resume_remove(env):
    _, store, app, _ = env
    client = admin_client(app)
    response = submit(
        client,
        "/admin/subscribers/new",
        {
            "email": "Bob@Example.org",
            "name": "Bob",
            "cadence": "daily",
            "time": "07:00",
            "tz": "UTC",
            "weekday": "0",
            "backfill": "0",
            "topic_name": ["Keywords"],
            "topic_query": ["pruning"],
        },
    )
    assert response.status_code == 302
    bob = subs.get_subscriber(store, "bob@example.org")
    assert bob.status == "active" and bob.topics == (Topic("Keywords", "pruning"),)
    token = csrf_of(client.get(f"/admin/subscribers/{bob.id}").get_data(as_text=True))
    client.post(
        f"/admin/subscribers/{bob.id}/status", data={"csrf_token": token, "action": "pause"}
    )
    assert subs.get_subscriber(store, "bob@example.org").status == "paused"
    client.post(
        f"/admin/subscribers/{bob.id}/status", data={"csrf_token": token, "action": "resume"}
    )
    assert subs.get_subscriber(store, "bob@example.org").status == "active"
    assert _history(store, "bob@example.org") == [
        (None, "active", "admin"),
        ("active", "paused", "admin"),
        ("paused", "active", "admin"),
    ]
    assert client.get(f"/admin/subscribers/{bob.id}/remove").status_code == 200
    assert subs.get_subscriber(store, "bob@example.org")  # GET only asks
    client.post(f"/admin/subscribers/{bob.id}/remove", data={"csrf_token": token})
    assert store.subscriber_by_email("bob@example.org") is None
    assert client.get(f"/admin/subscribers/{bob.id}").status_code == 404


def test_add_with_a_duplicate_email_shows_the_error(env):
    _, _, app, _ = env
    response = submit(
        admin_client(app),
        "/admin/subscribers/new",
        {"email": "ann@example.org", "topic_name": ["K"], "topic_query": ["x"]},
    )
    assert response.status_code == 400
    assert "already subscribed" in response.get_data(as_text=True)


# --- subscriber pages ------------------------------------------------------------------------


def test_manage_page_edits_topics_cadence_time_and_zone(env):
    settings, store, app, _ = env
    links = links_for(settings, app.extensions["digest"].signer, _ann(store))
    client = app.test_client()
    url = _path(links.manage_url, settings)
    page = client.get(url)
    assert page.status_code == 200 and "sparse attention" in page.get_data(as_text=True)
    response = client.post(
        url,
        data={
            "csrf_token": csrf_of(page.get_data(as_text=True)),
            "cadence": "feed",
            "time": "06:15",
            "tz": "Asia/Tokyo",
            "weekday": "0",
            "topic_name": ["Pruning"],
            "topic_query": ["prune"],
            "action": "save",
        },
    )
    assert response.status_code == 200 and "Saved" in response.get_data(as_text=True)
    sub = _ann(store)
    assert (sub.cadence, sub.time, sub.tz, sub.topics) == (
        "feed",
        "06:15",
        "Asia/Tokyo",
        (Topic("Pruning", "prune"),),
    )


def test_manage_page_refuses_what_its_form_never_sends_and_warns_of_no_topics(env):
    # found by the web acceptance check: weekday=9 was saved as the old day, an unknown
    # action was taken for save, and a profile emptied of topics was "Saved." and nothing more
    settings, store, app, _ = env
    links = links_for(settings, app.extensions["digest"].signer, _ann(store))
    client = app.test_client()
    url = _path(links.manage_url, settings)
    token = csrf_of(client.get(url).get_data(as_text=True))
    before = _ann(store)
    base = {"csrf_token": token, "cadence": "weekly", "time": "07:00", "tz": "UTC",
            "topic_name": ["Pruning"], "topic_query": ["prune"], "action": "save"}  # fmt: skip
    for bad, said in (({"weekday": "9"}, "is not one of"), ({"weekday": "abc"}, "is not one of"),
                      ({"weekday": "1", "action": "explode"}, "unknown action")):  # fmt: skip
        response = client.post(url, data={**base, **bad})
        assert response.status_code == 400 and said in response.get_data(as_text=True), bad
    assert _ann(store) == before
    emptied = client.post(url, data={**base, "weekday": "2", "topic_name": [""],
                                     "topic_query": [""]})  # fmt: skip
    page = emptied.get_data(as_text=True)
    assert emptied.status_code == 200 and "Saved" in page and "no digest is sent" in page
    assert _ann(store).topics == () and _ann(store).weekday == 2


def test_unsubscribe_page_get_asks_post_unsubscribes(env):
    _settings, store, app, _ = env
    signer = app.extensions["digest"].signer
    client = app.test_client()
    url = f"/unsubscribe/{signer.make_token('unsubscribe', _ann(store).token)}"
    page = client.get(url)
    assert page.status_code == 200 and 'id="unsubscribe"' in page.get_data(as_text=True)
    assert _ann(store).status == "active"
    done = client.post(url, data={"csrf_token": csrf_of(page.get_data(as_text=True))})
    assert done.status_code == 200 and "You are unsubscribed" in done.get_data(as_text=True)
    assert _ann(store).status == "unsubscribed"
    assert _history(store, "ann@example.org")[-1] == ("active", "unsubscribed", "link")


def test_one_click_unsubscribe_is_idempotent_without_redirect_and_get_is_harmless(env):
    settings, store, app, _ = env
    links = links_for(settings, app.extensions["digest"].signer, _ann(store))
    url = _path(links.unsubscribe_url, settings)
    client = app.test_client()
    for _ in range(3):
        assert client.get(url).status_code == 200
        assert client.head(url).status_code == 200
    assert _ann(store).status == "active"
    fresh = app.test_client()  # a mail client: no cookie, no CSRF token
    for _ in range(2):
        response = fresh.post(
            url,
            data="List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 200 and "Location" not in response.headers
        assert _ann(store).status == "unsubscribed"
    changes = [h for h in _history(store, "ann@example.org") if h[0] is not None]
    assert changes == [("active", "unsubscribed", "one-click")]  # once, though posted twice


def test_resubscribe_from_the_manage_page_is_a_new_double_opt_in(env):
    settings, store, app, sent = env
    signer = app.extensions["digest"].signer
    old_confirm = f"/confirm/{signer.make_token('confirm', _ann(store).token)}"
    subs.set_status(store, "ann@example.org", "unsubscribed")
    client = app.test_client()
    links = links_for(settings, signer, _ann(store))
    url = _path(links.manage_url, settings)
    # a confirmation link from before they left does not bring them back
    page = client.get(old_confirm).get_data(as_text=True)
    assert "no longer subscribes" in page
    page = client.get(url).get_data(as_text=True)
    client.post(old_confirm, data={"csrf_token": csrf_of(page)})  # a forged POST neither
    assert _ann(store).status == "unsubscribed"
    assert "Subscribe again" in page
    answer = client.post(url, data={"csrf_token": csrf_of(page), "action": "resubscribe"})
    assert "a confirmation email is on its way" in answer.get_data(as_text=True).lower()
    app.extensions["digest"].mailer.wait()
    assert _ann(store).status == "unsubscribed"  # not at once: only the confirmation link
    assert len(sent) == 1 and sent[0]["To"] == "ann@example.org"
    link = re.search(r"http://localhost:8000(/confirm/\S+)", sent[0].get_content()).group(1)
    confirm_page = client.get(link)
    assert "Subscribe again" in confirm_page.get_data(as_text=True)
    assert _ann(store).status == "unsubscribed"  # GET only asks (mail scanners fetch GETs)
    client.post(link, data={"csrf_token": csrf_of(confirm_page.get_data(as_text=True))})
    assert _ann(store).status == "active"
    assert _history(store, "ann@example.org")[-2:] == [
        ("active", "unsubscribed", "cli"),
        ("unsubscribed", "active", "confirm"),
    ]


# --- sign-up -------------------------------------------------------------------------------


def test_signup_is_off_by_default(env):
    _, _, app, _ = env
    assert app.test_client().get("/signup").status_code == 404


def test_signup_double_opt_in(tmp_path):
    settings, store = seeded(tmp_path, signup_enabled=True)
    sent: list = []
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    response = client.post(
        "/signup",
        data={
            "csrf_token": csrf_of(page),
            "email": "Carol@Example.org",
            "name": "Carol",
            "keywords": "speculative decoding",
        },
    )
    assert response.status_code == 200 and "Check your inbox" in response.get_data(as_text=True)
    app.extensions["digest"].mailer.wait()
    carol = subs.get_subscriber(store, "carol@example.org")
    assert carol.status == "pending"
    assert len(sent) == 1 and sent[0]["To"] == "carol@example.org"
    link = re.search(r"http://localhost:8000(/confirm/\S+)", sent[0].get_content()).group(1)
    confirm_page = client.get(link)
    assert confirm_page.status_code == 200
    assert subs.get_subscriber(store, "carol@example.org").status == "pending"  # GET only asks
    client.post(link, data={"csrf_token": csrf_of(confirm_page.get_data(as_text=True))})
    assert subs.get_subscriber(store, "carol@example.org").status == "active"
    # signing up again with a known address: same answer, no email, no change
    again = client.post(
        "/signup",
        data={"csrf_token": csrf_of(page), "email": "carol@example.org", "keywords": "x"},
    )
    app.extensions["digest"].mailer.wait()
    assert again.status_code == 200 and len(sent) == 1
    assert _history(store, "carol@example.org") == [
        (None, "pending", "signup"),
        ("pending", "active", "confirm"),
    ]
    store.close()


def test_signup_rejects_bad_keywords_with_the_column(tmp_path):
    settings, store = seeded(tmp_path, signup_enabled=True)
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport([]))
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    response = client.post(
        "/signup",
        data={"csrf_token": csrf_of(page), "email": "d@example.org", "keywords": "a (b"},
    )
    assert response.status_code == 400 and "column" in response.get_data(as_text=True)
    assert store.subscriber_by_email("d@example.org") is None
    deep = "(" * 200 + "a" + ")" * 200  # was HTTP 500 (RecursionError)
    page = client.get("/signup").get_data(as_text=True)
    response = client.post(
        "/signup", data={"csrf_token": csrf_of(page), "email": "d@example.org", "keywords": deep}
    )
    assert response.status_code == 400 and "nested more than" in response.get_data(as_text=True)
    store.close()


# --- feeds -----------------------------------------------------------------------------------


def test_public_feeds_parse_and_revalidate(env):
    _settings, _store, app, _ = env
    client = app.test_client()
    for fmt in ("rss", "atom"):
        response = client.get(f"/feeds/all.{fmt}")
        assert response.status_code == 200
        assert response.headers["Cache-Control"].startswith("public")
        parsed = feedparser.parse(response.data)
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert len(parsed.entries) == 5
        etag = response.headers["ETag"]
        again = client.get(f"/feeds/all.{fmt}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.data == b""
        since = client.get(
            f"/feeds/all.{fmt}",
            headers={"If-Modified-Since": response.headers["Last-Modified"]},
        )
        assert since.status_code == 304
        before = format_datetime(NOW - timedelta(days=30), usegmt=True)
        stale = client.get(f"/feeds/all.{fmt}", headers={"If-Modified-Since": before})
        assert stale.status_code == 200


def test_subscriber_feed_lists_the_ledger_with_topics(env):
    settings, store, app, _ = env
    subs.edit_subscriber(store, settings, "ann@example.org", cadence="feed")
    ann = _ann(store)
    # A feed-cadence subscriber's matches are recorded in the ledger as delivered.
    queue_digests(store, settings, now=NOW, force=True)
    first = store.paper_by_key(paper_key("Sparse Attention for Long Context"))
    client = app.test_client()
    response = client.get(f"/feeds/s/{ann.token}.atom")
    assert response.status_code == 200
    assert response.headers["Cache-Control"].startswith("private")
    parsed = feedparser.parse(response.data)
    assert not parsed.bozo
    assert [e.title for e in parsed.entries] == [first.title]
    assert parsed.entries[0].tags[0].term == "Attention"
    assert client.get("/feeds/s/not-a-token.rss").status_code == 404
    assert client.get("/feeds/s/../all.rss").status_code == 404


def test_feeds_are_gzipped_when_asked_and_gone_once_unsubscribed(env):
    _settings, store, app, _ = env
    client = app.test_client()
    plain = client.get("/feeds/all.atom")
    assert "Content-Encoding" not in plain.headers and "Accept-Encoding" in plain.headers["Vary"]
    packed = client.get("/feeds/all.atom", headers={"Accept-Encoding": "gzip, deflate"})
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.data) == plain.data
    assert packed.headers["ETag"] != plain.headers["ETag"]  # another representation
    again = client.get(
        "/feeds/all.atom",
        headers={"Accept-Encoding": "gzip", "If-None-Match": packed.headers["ETag"]},
    )
    assert again.status_code == 304
    refused = client.get("/feeds/all.atom", headers={"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in refused.headers
    # An unsubscribed reader's feed is gone for good (readers stop polling on 410).
    ann = _ann(store)
    assert client.get(f"/feeds/s/{ann.token}.atom").status_code == 200
    # A feed with nothing in it yet says no date rather than 1970.
    assert "Last-Modified" not in client.get(f"/feeds/s/{ann.token}.atom").headers  # empty yet
    subs.unsubscribe_by_token(store, ann.token, how=StatusChange.ONE_CLICK)
    assert client.get(f"/feeds/s/{ann.token}.atom").status_code == 410
    # removed (or wiped) altogether: still Gone, though nothing of them is left but a hash
    assert store.delete_subscriber(ann.id)
    assert store.subscriber_by_token(ann.token) is None
    assert client.get(f"/feeds/s/{ann.token}.rss").status_code == 410
    assert client.get("/feeds/s/never-a-token.rss").status_code == 404
    # someone who signed up but has not confirmed has no feed yet (web acceptance check)
    subs.add_subscriber(store, _settings, "p@example.org", status="pending",
                        how=StatusChange.SIGNUP)  # fmt: skip
    pending = subs.get_subscriber(store, "p@example.org")
    assert client.get(f"/feeds/s/{pending.token}.atom").status_code == 404
    # and their manage page offers no feed link that would be that 404
    signer = app.extensions["digest"].signer
    page = client.get(f"/manage/{signer.make_token('manage', pending.token)}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "feeds-after-confirm" in html
    assert f"/feeds/s/{pending.token}" not in html


# --- links, secret, CLI ------------------------------------------------------------------------


def test_signed_links_round_trip_and_secret_is_kept(tmp_path):
    settings = make_settings(tmp_path)
    with Store.open(settings.database.url) as store:
        first = secret_key(store, settings)
        assert first and secret_key(store, settings) == first
    configured = make_settings(tmp_path, secret_key="from-settings")
    with Store.open(configured.database.url) as store:
        assert secret_key(store, configured) == "from-settings"
    signer = LinkSigner("s3cret")
    assert signer.read_token("manage", signer.make_token("manage", "tok")) == "tok"


def test_admin_password_command_reads_stdin_and_prints_a_hash():
    done = subprocess.run(
        [sys.executable, "-m", "digest.cli", "admin-password"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert check_password_hash(done.stdout.strip(), "a long enough password")
    short = subprocess.run(
        [sys.executable, "-m", "digest.cli", "admin-password"],
        input="short\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert short.returncode == 1 and "at least 8" in short.stderr and not short.stdout


def test_create_app_opens_the_settings_database(tmp_path):
    settings = make_settings(tmp_path)
    app = create_app(settings)
    assert app.test_client().get("/feeds/all.rss").status_code == 200
    assert (tmp_path / "digest.db").exists()


def test_a_wrong_method_is_a_405_naming_the_allowed_ones(env):
    # found by the web acceptance check: our error page dropped the exception's Allow header
    _settings, _store, app, _ = env
    client = app.test_client()
    response = client.delete("/")
    assert response.status_code == 405
    assert {"GET", "HEAD"} <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert response.content_type.startswith("text/html")
    assert client.get("/no/such/page").status_code == 404
