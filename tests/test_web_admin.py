"""The admin's story pages through Flask's test client: delivery history, a sent digest,
test sends, dashboard, paper browser, bulk actions, CSV import/export, the add form."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

import pytest
from web_support import (
    NOW,
    XSS,
    FakeTransport,
    add_dump,
    admin_client,
    csrf_of,
    paper,
    seeded,
)

from digest import subscribers as subs
from digest.mail import SendResult
from digest.models import Topic
from digest.pipeline import Cycle
from digest.web import create_app


@pytest.fixture
def sent_env(tmp_path):
    """A store where ann received one digest, with an operator address set."""
    settings, store = seeded(tmp_path, site={"operator_email": "op@example.org"})
    cycle = Cycle(store, settings, clock=lambda: NOW)
    cycle.queue(force=True)
    cycle.deliver(_Accepting([]))
    sent: list = []
    app = create_app(
        settings, store, transport_factory=lambda s: FakeTransport(sent), clock=lambda: NOW
    )
    app.config["TESTING"] = True
    yield settings, store, app, sent
    store.close()


class _Accepting(FakeTransport):
    """Takes every message (the cycle's sender wants the server's answer)."""

    def send(self, msg):  # type: ignore[override]
        self.sent.append(msg)
        return SendResult(msg.message_id, tuple(msg.recipients))


def _ann(store):
    return subs.get_subscriber(store, "ann@example.org")


def test_subscriber_page_lists_deliveries_and_shows_a_sent_digest(sent_env):
    _, store, app, _ = sent_env
    client = admin_client(app)
    ann = _ann(store)
    page = client.get(f"/admin/subscribers/{ann.id}").get_data(as_text=True)
    assert 'id="deliveries"' in page and "Next delivery:" in page
    link = re.search(rf'href="(/admin/subscribers/{ann.id}/digests/(\d+))"', page)
    assert link, "the history links to the sent digest"
    view = client.get(link.group(1))
    text = view.get_data(as_text=True)
    assert view.status_code == 200 and "Sparse Attention for Long Context" in text
    assert "<script>alert" not in text  # the hostile title is escaped in the text part too
    html = client.get(link.group(1) + "/email.html")
    assert html.status_code == 200 and "sandbox" in html.headers["Content-Security-Policy"]
    # another subscriber's digest id under ann's URL is 404, not someone else's mail
    bob = subs.add_subscriber(store, app.extensions["digest"].settings, "bob@example.org")
    assert client.get(f"/admin/subscribers/{bob.id}/digests/{link.group(2)}").status_code == 404


def test_delivery_history_pages_by_keyset(sent_env, monkeypatch):
    settings, store, app, _ = sent_env
    from digest.web import admin

    later = NOW + timedelta(hours=2)
    add_dump(store, "2025-11-24.txt", [paper("More Sparse Attention", "sparse attention")], later)
    cycle = Cycle(store, settings, clock=lambda: later)
    cycle.queue(force=True)
    cycle.deliver(_Accepting([]))
    monkeypatch.setattr(admin, "PAGE_SIZE", 1)
    ann = _ann(store)
    client = admin_client(app)
    first = client.get(f"/admin/subscribers/{ann.id}").get_data(as_text=True)
    newest = re.findall(r"view #(\d+)", first)
    older = re.search(r'href="([^"]+before=\d+)#deliveries" rel="next"', first)
    assert len(newest) == 1 and older
    second = client.get(older.group(1).replace("&amp;", "&")).get_data(as_text=True)
    rest = re.findall(r"view #(\d+)", second)
    assert len(rest) == 1 and int(rest[0]) < int(newest[0])
    assert 'rel="next"' not in second


def test_send_a_test_goes_to_the_operator_and_is_not_recorded(sent_env):
    _, store, app, sent = sent_env
    client = admin_client(app)
    ann = _ann(store)
    before = store.delivery_history(ann.id)
    page = client.get(f"/admin/subscribers/{ann.id}").get_data(as_text=True)
    response = client.post(f"/admin/subscribers/{ann.id}/test", data={"csrf_token": csrf_of(page)})
    assert response.status_code == 302
    assert len(sent) == 1 and sent[0].recipients == ("op@example.org",)
    assert b"[test for ann@example.org]" in sent[0].data
    assert store.delivery_history(ann.id) == before  # no digest, no delivery recorded
    # without the CSRF token: refused
    assert client.post(f"/admin/subscribers/{ann.id}/test").status_code == 400


def test_dashboard_shows_next_deliveries_failures_and_chart(sent_env):
    _, _store, app, _ = sent_env
    client = admin_client(app)
    page = client.get("/admin/").get_data(as_text=True)
    assert 'id="next-deliveries"' in page and 'id="failures"' in page
    assert "<svg" in page and 'class="bar-papers"' in page
    assert re.search(r"\d+ digests sent</title>", page)
    assert "ann@example.org" in page  # ann is due next


def test_paper_browser_searches_and_shows_who_received(sent_env):
    _, _store, app, _ = sent_env
    client = admin_client(app)
    page = client.get("/admin/papers").get_data(as_text=True)
    assert "Pruning Large Language Models" in page
    assert "<script>alert" not in page
    found = client.get("/admin/papers?q=sparse+attention").get_data(as_text=True)
    assert "Sparse Attention for Long Context" in found and "Pruning" not in found
    bad = client.get("/admin/papers?q=a+(b")
    assert bad.status_code == 200 and "column" in bad.get_data(as_text=True)
    pid = re.search(r'href="/admin/papers/(\d+)">Sparse', found).group(1)
    detail = client.get(f"/admin/papers/{pid}").get_data(as_text=True)
    assert "ann@example.org" in detail
    assert client.get("/admin/papers/999999").status_code == 404


def _list_page(client):
    return client.get("/admin/subscribers").get_data(as_text=True)


def test_bulk_pause_resume_and_remove_with_confirmation(sent_env):
    settings, store, app, _ = sent_env
    bob = subs.add_subscriber(store, settings, "bob@example.org", topics=[Topic("x", "x")])
    ann = _ann(store)
    client = admin_client(app)
    token = csrf_of(_list_page(client))
    ids = [str(ann.id), str(bob.id)]
    client.post(
        "/admin/subscribers/bulk", data={"csrf_token": token, "action": "pause", "sid": ids}
    )
    assert {_ann(store).status, store.subscriber_by_id(bob.id).status} == {"paused"}
    client.post(
        "/admin/subscribers/bulk", data={"csrf_token": token, "action": "resume", "sid": ids}
    )
    assert {_ann(store).status, store.subscriber_by_id(bob.id).status} == {"active"}
    ask = client.post(
        "/admin/subscribers/bulk", data={"csrf_token": token, "action": "remove", "sid": ids}
    )
    assert ask.status_code == 200 and "cannot be undone" in ask.get_data(as_text=True)
    assert store.subscriber_by_id(bob.id) is not None  # nothing removed before confirming
    client.post(
        "/admin/subscribers/bulk",
        data={"csrf_token": token, "action": "remove", "confirm": "yes", "sid": [str(bob.id)]},
    )
    assert store.subscriber_by_id(bob.id) is None and _ann(store) is not None
    no_csrf = client.post("/admin/subscribers/bulk", data={"action": "pause", "sid": ids})
    assert no_csrf.status_code == 400
    assert app.test_client().post("/admin/subscribers/bulk").status_code == 401


def test_csv_export_then_import_round_trips(sent_env, tmp_path):
    _settings, store, app, _ = sent_env
    client = admin_client(app)
    exported = client.get("/admin/subscribers.csv")
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(exported.get_data(as_text=True))))
    assert rows[0][0] == "email" and rows[1][0] == "ann@example.org"
    text = (
        exported.get_data(as_text=True) + "new@example.org,New,active,weekly,08:00,UTC,mon,X: x\n"
    )
    text += "not-an-email,,,,,,,\n"
    token = csrf_of(client.get("/admin/subscribers/import").get_data(as_text=True))
    answer = client.post(
        "/admin/subscribers/import",
        data={"csrf_token": token, "file": (io.BytesIO(text.encode()), "subs.csv")},
        content_type="multipart/form-data",
    )
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400  # one row was rejected, and says where
    assert "1 added" in page and "1 unchanged" in page and "upload.csv:4" in page
    assert "/tmp" not in page  # the server's temp path is not shown
    assert store.subscriber_by_email("new@example.org").cadence == "weekly"
    again = client.get("/admin/subscribers.csv").get_data(as_text=True)
    assert "new@example.org,New,active,weekly,08:00,UTC,mon,X: x" in again


def test_add_form_shows_every_error_at_once_and_keeps_the_rows(sent_env):
    _, store, app, _ = sent_env
    client = admin_client(app)
    page = client.get("/admin/subscribers/new").get_data(as_text=True)
    assert page.count('name="topic_query"') == 3 and 'list="tz-zones"' in page
    response = client.post(
        "/admin/subscribers/new",
        data={
            "csrf_token": csrf_of(page),
            "email": "nope",
            "time": "25:00",
            "tz": "Mars/Olympus",
            "cadence": "daily",
            "topic_name": ["A", "B"],
            "topic_query": ["a (b", "fine words"],
        },
    )
    text = response.get_data(as_text=True)
    assert response.status_code == 400
    for field in ("email-error", "time-error", "tz-error", "topic-error-0"):
        assert f'id="{field}"' in text
    assert "4 problems to fix" in text and "fine words" in text
    assert store.subscriber_by_email("nope") is None


def test_add_form_live_preview(sent_env):
    _, _, app, _ = sent_env
    client = admin_client(app)
    token = csrf_of(client.get("/admin/subscribers/new").get_data(as_text=True))
    answer = client.post(
        "/admin/subscribers/new/preview",
        data={"csrf_token": token, "topic_name": ["T"], "topic_query": ["latency"]},
    ).get_json()
    assert "would have brought" in answer["html"] and "Pruning" in answer["html"]
    broken = client.post(
        "/admin/subscribers/new/preview",
        data={"csrf_token": token, "topic_name": ["T"], "topic_query": ["a (b"]},
    ).get_json()
    assert "0" in broken["errors"]


def test_hostile_names_are_escaped_on_every_new_page(sent_env):
    settings, store, app, _ = sent_env
    evil = subs.add_subscriber(
        store, settings, "evil@example.org", name=XSS[:60], topics=[Topic("t", "attention")]
    )
    client = admin_client(app)
    for url in ("/admin/papers", f"/admin/subscribers/{evil.id}", "/admin/"):
        assert XSS not in client.get(url).get_data(as_text=True)


# --- sign-up ---------------------------------------------------------------------------------


@pytest.fixture
def signup_env(tmp_path):
    settings, store = seeded(tmp_path, signup_enabled=True)
    sent: list = []
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    yield settings, store, app, sent
    store.close()


def test_signup_page_offers_examples_schedule_zone_and_the_first_digest_note(signup_env):
    _, _, app, _ = signup_env
    page = app.test_client().get("/signup").get_data(as_text=True)
    assert "data-example-query=" in page and 'name="cadence"' in page
    assert 'name="time"' in page and 'list="tz-zones"' in page and "data-browser-tz" in page
    assert 'value="UTC"' in page  # the server's default until the browser's zone replaces it
    assert "added after you confirm" in page


def test_signup_keeps_the_chosen_schedule_and_topics(signup_env):
    _, store, app, sent = signup_env
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    answer = client.post(
        "/signup",
        data={
            "csrf_token": csrf_of(page),
            "email": "eve@example.org",
            "topic_name": ["Inference", "Agents"],
            "topic_query": ["speculative decoding", "agent*"],
            "cadence": "weekly",
            "time": "18:30",
            "tz": "Europe/Paris",
            "weekday": "4",
        },
    )
    assert answer.status_code == 200
    app.extensions["digest"].mailer.wait()
    eve = subs.get_subscriber(store, "eve@example.org")
    assert (eve.status, eve.cadence, eve.time, eve.tz, eve.weekday) == (
        "pending",
        "weekly",
        "18:30",
        "Europe/Paris",
        4,
    )
    assert [t.name for t in eve.topics] == ["Inference", "Agents"] and len(sent) == 1


def test_signup_shows_every_error_at_once(signup_env):
    _, store, app, _ = signup_env
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    answer = client.post(
        "/signup",
        data={
            "csrf_token": csrf_of(page),
            "email": "nope",
            "tz": "Nowhere/Land",
            "time": "7pm",
            "topic_name": ["A"],
            "topic_query": ["a (b"],
        },
    )
    text = answer.get_data(as_text=True)
    assert answer.status_code == 400 and "4 problems to fix" in text
    for field in ("email-error", "tz-error", "time-error", "topic-error-0"):
        assert f'id="{field}"' in text
    assert store.subscriber_by_email("nope") is None


def test_signup_preview_is_a_backtest_and_needs_the_csrf_token(signup_env):
    _, _, app, _ = signup_env
    client = app.test_client()
    token = csrf_of(client.get("/signup").get_data(as_text=True))
    answer = client.post(
        "/signup/preview",
        data={"csrf_token": token, "topic_name": ["x"], "topic_query": ["latency"]},
    )
    data = answer.get_json()
    assert "would have brought" in data["html"] and "Pruning Large Language Models" in data["html"]
    assert "<script>alert" not in data["html"]
    assert client.post("/signup/preview", data={"topic_query": ["x"]}).status_code == 400


def test_signup_preview_is_404_while_signup_is_off(tmp_path):
    settings, store = seeded(tmp_path)
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport([]))
    assert app.test_client().post("/signup/preview").status_code == 404
    store.close()


def test_subscriber_list_next_links_are_keyset_pages(sent_env):
    settings, store, app, _ = sent_env
    for i in range(30):
        subs.add_subscriber(store, settings, f"user{i:02d}@example.org")
    client = admin_client(app)
    first = client.get("/admin/subscribers").get_data(as_text=True)
    nxt = re.search(r'href="([^"]*after=[^"]+)" rel="next"', first)
    assert nxt and "page=" not in nxt.group(1)
    second = client.get(nxt.group(1).replace("&amp;", "&")).get_data(as_text=True)
    seen = re.findall(r">([a-z0-9]+@example\.org)</a>", first + second)
    assert len(seen) == len(set(seen)) == 31  # ann and 30 users, none twice, none missed
    assert 'rel="next"' not in second


def test_the_subscriber_page_refuses_a_weekday_that_is_no_day(sent_env):
    # the admin twin of the manage page's check: both hand the field to subs.parse_weekday
    _, store, app, _ = sent_env
    client = admin_client(app)
    ann = _ann(store)
    page = client.get(f"/admin/subscribers/{ann.id}").get_data(as_text=True)
    data = {"csrf_token": csrf_of(page), "name": ann.name, "cadence": "weekly", "time": "07:00",
            "tz": "UTC", "topic_name": ["T"], "topic_query": ["prune"]}  # fmt: skip
    for bad in ("9", "abc"):
        response = client.post(f"/admin/subscribers/{ann.id}", data={**data, "weekday": bad})
        assert response.status_code == 400 and "is not one of" in response.get_data(as_text=True)
    assert _ann(store) == ann
    client.post(f"/admin/subscribers/{ann.id}", data={**data, "weekday": "wed"})
    assert _ann(store).weekday == 2
