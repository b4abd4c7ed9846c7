"""Security of the web app: passwords, throttling, CSRF, signed links, XSS, headers, cookies."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer
from web_support import (
    XSS,
    FakeTransport,
    admin_client,
    csrf_of,
    login,
    make_settings,
    seeded,
)

from digest import subscribers as subs
from digest.errors import DigestError
from digest.links import LEGACY_TIMED, PURPOSES, LinkError, LinkSigner, links_for, secret_key
from digest.models import Topic
from digest.store import Store
from digest.web import create_app
from digest.web.security import LoginThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path):
    settings_, store = seeded(tmp_path, signup_enabled=True)
    app = create_app(settings_, store, transport_factory=lambda s: FakeTransport([]))
    yield settings_, store, app
    store.close()


def _ann(store):
    return subs.get_subscriber(store, "ann@example.org")


# --- admin password and sessions ---------------------------------------------------------------


def test_wrong_password_is_refused(env):
    _, _, app = env
    client = app.test_client()
    response = login(client, password="wrong")
    assert response.status_code == 401 and "Wrong password" in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def test_failed_logins_lock_the_address_out_exponentially_per_app(tmp_path):
    settings_, store = seeded(tmp_path)
    clock = FakeClock()
    app = create_app(settings_, store, throttle=LoginThrottle(free=3, clock=clock))
    client = app.test_client()
    for _ in range(3):
        assert login(client, password="nope").status_code == 401
    assert login(client, password="nope").status_code == 401  # the 4th earns a 1 s lockout
    locked = login(client)  # even the right password is not checked while locked out
    assert locked.status_code == 429 and locked.headers["Retry-After"] == "1"
    clock.now += 1
    assert login(client, password="nope").status_code == 401  # 5th: 2 s
    clock.now += 1.5
    assert login(client).status_code == 429
    clock.now += 0.5
    assert login(client).status_code == 302  # success clears the record
    # another app instance keeps its own memory
    other = create_app(settings_, store).test_client()
    assert login(other).status_code == 302
    store.close()


def test_throttle_delays_grow_and_are_capped():
    clock = FakeClock()
    throttle = LoginThrottle(free=2, base_seconds=1, max_seconds=8, clock=clock)
    delays = [throttle.failed("a") for _ in range(8)]
    assert delays == [0, 0, 1, 2, 4, 8, 8, 8]
    assert throttle.wait_seconds("b") == 0
    throttle.succeeded("a")
    assert throttle.wait_seconds("a") == 0


def test_admin_disabled_without_a_password_hash(tmp_path):
    settings_ = make_settings(tmp_path, admin_password_hash="")
    app = create_app(settings_)
    client = app.test_client()
    assert client.get("/admin/login").status_code == 503
    assert client.get("/admin/").status_code == 302
    with client.session_transaction() as sess:  # even a forged-looking session gets nothing
        sess["admin"] = True
    assert client.get("/admin/").status_code == 302


ADMIN_GETS = [
    "/admin/",
    "/admin/subscribers",
    "/admin/subscribers/new",
    "/admin/subscribers/{sid}",
    "/admin/subscribers/{sid}/remove",
]
ADMIN_POSTS = [
    "/admin/logout",
    "/admin/subscribers/new",
    "/admin/subscribers/{sid}",
    "/admin/subscribers/{sid}/preview",
    "/admin/subscribers/{sid}/status",
    "/admin/subscribers/{sid}/remove",
]


def test_admin_pages_are_unreachable_without_a_session(env):
    _, store, app = env
    sid = _ann(store).id
    client = app.test_client()
    for path in ADMIN_GETS:
        response = client.get(path.format(sid=sid))
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login")
    for path in ADMIN_POSTS:
        if path == "/admin/logout":
            continue
        response = client.post(path.format(sid=sid), data={"action": "pause"})
        assert response.status_code in (401, 400), path
    assert _ann(store).status == "active"


def test_session_cookie_flags(tmp_path):
    for base, secure in (("http://localhost:8000", False), ("https://digest.example", True)):
        settings_ = make_settings(tmp_path / base[:5], site={"base_url": base})
        app = create_app(settings_)
        client = app.test_client()
        page = client.get("/admin/login")
        cookie = page.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure


# --- CSRF ---------------------------------------------------------------------------------------


def _forms(settings_, store, app):
    sub = _ann(store)
    signer = app.extensions["digest"].signer
    sid = sub.id
    return [
        f"/admin/subscribers/{sid}",
        f"/admin/subscribers/{sid}/preview",
        f"/admin/subscribers/{sid}/status",
        f"/admin/subscribers/{sid}/remove",
        "/admin/subscribers/new",
        "/admin/logout",
        f"/manage/{signer.make_token('manage', sub.token)}",
        f"/unsubscribe/{signer.make_token('unsubscribe', sub.token)}",
        f"/confirm/{signer.make_token('confirm', sub.token)}",
        "/signup",
    ]


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_form_without_the_right_csrf_token_gets_400(env, token):
    settings_, store, app = env
    client = admin_client(app)
    data = {
        "action": "pause",
        "topic_name": ["T"],
        "topic_query": ["x"],
        "email": "e@example.org",
        "keywords": "x",
    }
    if token:
        data["csrf_token"] = token
    for path in _forms(settings_, store, app):
        response = client.post(path, data=data)
        assert response.status_code == 400, path
    assert _ann(store).status == "active"
    assert store.subscriber_by_email("e@example.org") is None
    # the login form itself
    fresh = app.test_client()
    fresh.get("/admin/login")
    assert fresh.post("/admin/login", data={"password": "x"}).status_code == 400


# --- signed links -------------------------------------------------------------------------------


def _link_pages(signer, token):
    return {
        "manage": [f"/manage/{signer.make_token('manage', token)}"],
        "unsubscribe": [
            f"/unsubscribe/{signer.make_token('unsubscribe', token)}",
            f"/unsubscribe/{signer.make_token('unsubscribe', token)}/one-click",
        ],
        "confirm": [f"/confirm/{signer.make_token('confirm', token)}"],
    }


def test_tampered_foreign_and_garbage_tokens_are_rejected_alike(env):
    _, store, app = env
    signer = app.extensions["digest"].signer
    sub = _ann(store)
    client = app.test_client()
    forged_signer = LinkSigner("another secret")
    bodies = set()
    for purpose, paths in _link_pages(signer, sub.token).items():
        for path in paths:
            assert client.get(path).status_code == 200, path
            signed = path.split("/")[2]
            other = "manage" if purpose != "manage" else "unsubscribe"
            variants = [
                signed[:-2] + ("AA" if not signed.endswith("AA") else "BB"),  # tampered signature
                signer.make_token(other, sub.token),  # another purpose's valid token
                forged_signer.make_token(purpose, sub.token),  # signed with another secret
                "garbage",
                signer.make_token(purpose, "no-such-subscriber-token"),
            ]
            for bad in variants:
                bad_path = path.replace(signed, bad)
                for method in ("get", "post"):
                    response = getattr(client, method)(bad_path, data={})
                    assert response.status_code == 404, (bad_path, method)
                    bodies.add(response.get_data(as_text=True))
    assert len(bodies) == 1  # the same answer whatever was wrong
    assert _ann(store).status == "active"


# Subscriber tokens are secrets.token_urlsafe: these characters only (an untimed token
# carries its subscriber token as it is, so other text is not what it signs).
_URLSAFE = string.ascii_letters + string.digits + "-_"


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet=_URLSAFE, max_size=60) | st.just("a" * 200),
    st.sampled_from(["manage", "unsubscribe", "confirm", "archive"]),
)
def test_every_token_reads_back_for_its_own_purpose_only(token, purpose):
    signer = LinkSigner("k")
    signed = signer.make_token(purpose, token)
    if token:
        assert signer.read_token(purpose, signed) == token
        for other in PURPOSES:
            if other != purpose:
                with pytest.raises(LinkError):
                    signer.read_token(other, signed)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=_URLSAFE, min_size=1, max_size=60), st.sampled_from(LEGACY_TIMED))
def test_timed_manage_and_unsubscribe_links_of_earlier_emails_still_work(token, purpose):
    signer = LinkSigner("k")
    old = URLSafeTimedSerializer("k", salt=f"digest.{purpose}").dumps(token)
    assert signer.read_token(purpose, old) == token
    # an untimed token is no timed one and the reverse: each read gives the token, never the
    # other format's payload (the timed "value.timestamp" signed by the same key)
    assert signer.read_token(purpose, signer.make_token(purpose, token)) == token
    for other in PURPOSES:
        if other != purpose:
            with pytest.raises(LinkError):
                signer.read_token(other, old)


def test_manage_and_unsubscribe_links_are_untimed_and_cheap():
    signer = LinkSigner("k")
    for purpose in ("manage", "unsubscribe", "archive"):
        signed = signer.make_token(purpose, "tok")
        assert signed.startswith("tok.")  # no JSON, no timestamp: the itsdangerous Signer
        assert signed.count(".") == 1
    assert signer.make_token("confirm", "tok").count(".") == 2  # timed: it expires
    with pytest.raises(DigestError, match="no max_age"):
        signer.read_token("manage", signer.make_token("manage", "tok"), max_age=60)


def test_read_token_raises_one_error_for_every_failure():
    signer = LinkSigner("k")
    good = signer.make_token("manage", "tok")
    for purpose, token in (
        ("unsubscribe", good),
        ("manage", good + "x"),
        ("manage", "not.a.token"),
    ):
        with pytest.raises(LinkError) as info:
            signer.read_token(purpose, token)
        assert str(info.value) == "this link is not valid (it may be mistyped or expired)"
    old = URLSafeTimedSerializer("k", salt="digest.confirm").dumps("tok")
    with pytest.raises(LinkError):
        signer.read_token("confirm", old, max_age=-1)


@settings(max_examples=50, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=300))
def test_any_token_text_is_rejected_cleanly(secret, token):
    with pytest.raises(LinkError):
        LinkSigner(secret).read_token("manage", token)


def test_links_for_uses_the_one_click_path(tmp_path):
    settings_ = make_settings(tmp_path)
    with Store.open(settings_.database.url) as store:
        signer = LinkSigner(secret_key(store, settings_))
        sub = subs.add_subscriber(store, settings_, "z@example.org")
        links = links_for(settings_, signer, sub)
    assert links.unsubscribe_url.startswith("http://localhost:8000/unsubscribe/")
    assert links.unsubscribe_url.endswith("/one-click")
    assert links.manage_url.startswith("http://localhost:8000/manage/")
    assert links.unsubscribe_mailto.startswith("mailto:unsubscribe@localhost")


# --- XSS ----------------------------------------------------------------------------------------


def _assert_inert(body: str, where: str) -> None:
    assert "<script>alert" not in body, where
    assert "<img src=x" not in body, where
    for tag in re.findall(r"<script\b[^>]*>", body):
        assert "src=" in tag, f"{where}: inline script {tag}"


def test_xss_payloads_are_inert_on_every_page(env):
    settings_, store, app = env
    subs.edit_subscriber(
        store,
        settings_,
        "ann@example.org",
        name=f"Ann {XSS}",
        topics=[Topic(f"T {XSS}"[:100].replace(":", ""), f'attention, "{XSS}"')],
    )
    sub = _ann(store)
    signer = app.extensions["digest"].signer
    client = admin_client(app)
    pages = {
        "dashboard": client.get("/admin/"),
        "list": client.get("/admin/subscribers?q=" + "%3Cscript%3E"),
        "list-all": client.get("/admin/subscribers"),
        "subscriber": client.get(f"/admin/subscribers/{sub.id}"),
        "remove": client.get(f"/admin/subscribers/{sub.id}/remove"),
        "manage": client.get(f"/manage/{signer.make_token('manage', sub.token)}"),
        "unsubscribe": client.get(f"/unsubscribe/{signer.make_token('unsubscribe', sub.token)}"),
        "confirm": client.get(f"/confirm/{signer.make_token('confirm', sub.token)}"),
        "feed": client.get("/feeds/all.rss"),
        "atom": client.get("/feeds/all.atom"),
    }
    token = csrf_of(pages["subscriber"].get_data(as_text=True))
    preview = client.post(
        f"/admin/subscribers/{sub.id}/preview",
        data={"csrf_token": token, "topic_name": [XSS], "topic_query": ["attention"]},
    ).get_json()
    bad_query = client.post(
        f"/admin/subscribers/{sub.id}/preview",
        data={"csrf_token": token, "topic_name": ["T"], "topic_query": [f"({XSS}"]},
    ).get_json()
    saved_bad = client.post(
        f"/admin/subscribers/{sub.id}",
        data={"csrf_token": token, "topic_name": [XSS], "topic_query": [f'"{XSS}']},
    )
    signup = client.post(
        "/signup", data={"csrf_token": token, "email": XSS, "name": XSS, "keywords": XSS}
    )
    texts = {name: r.get_data(as_text=True) for name, r in pages.items()}
    texts["preview"] = preview["html"]
    texts["preview-errors"] = " ".join(bad_query["errors"].values()) + bad_query["html"]
    texts["saved-bad"] = saved_bad.get_data(as_text=True)
    texts["signup"] = signup.get_data(as_text=True)
    for name, body in texts.items():
        _assert_inert(body, name)
    # the payloads were rendered (escaped), so the check above had something to catch
    assert "&lt;script&gt;alert(&#34;x&#34;)" in texts["subscriber"]
    assert "&lt;script&gt;" in texts["preview"]  # the hostile paper title matched "attention"
    assert "&lt;script&gt;" in texts["dashboard"] or "&lt;script&gt;" in texts["list-all"]


def test_security_headers_on_pages_and_feeds(env):
    _, _, app = env
    client = app.test_client()
    for path in ("/", "/admin/login", "/signup", "/feeds/all.rss", "/nope"):
        response = client.get(path)
        csp = response.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert "script-src 'self'" in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert client.get("/admin/login").headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("huge", [2**63, 10**30])
def test_an_id_past_what_the_store_holds_is_a_404_on_every_route(env, huge):
    # Found by the web acceptance check: /admin/papers/9223372036854775808 overflowed SQLite's
    # INTEGER inside the view (a 500). Every route's int segments now stop at the 64-bit range.
    from werkzeug.routing import IntegerConverter

    _, _, app = env
    client = admin_client(app)
    checked = 0
    for rule in app.url_map.iter_rules():
        ints = {n for n, c in rule._converters.items() if isinstance(c, IntegerConverter)}
        if not ints:
            continue
        path = re.sub(
            r"<(?:[^:>]+:)?([^>]+)>",
            lambda m, ints=ints: str(huge) if m[1] in ints else "x",
            rule.rule,
        )
        response = client.open(path, method="GET" if "GET" in rule.methods else "POST")
        assert response.status_code == 404, (rule.rule, path, response.status_code)
        checked += 1
    assert checked >= 10
    # the largest id itself still reaches the view, which answers 404 for no such row
    assert client.get(f"/admin/papers/{2**63 - 1}").status_code == 404
