"""Sign-up abuse: rate limits per client and per address, one confirmation mail per address per
period (kept across restarts), the same answer and the same work for known and new addresses,
and no mail sent inside the request."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from web_support import FakeTransport, csrf_of, seeded

from digest import subscribers as subs
from digest.web import create_app


def _app(tmp_path: Path, **web: Any) -> tuple[Any, Any, Any, list]:
    settings, store = seeded(tmp_path, signup_enabled=True, **web)
    sent: list = []
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    return settings, store, app, sent


def _sign_up(client: Any, email: str, client_ip: str = "192.0.2.1") -> Any:
    page = client.get("/signup").get_data(as_text=True)
    return client.post(
        "/signup",
        data={"csrf_token": csrf_of(page), "email": email, "keywords": "attention"},
        environ_base={"REMOTE_ADDR": client_ip},
    )


def test_fifty_sign_ups_of_one_address_send_one_mail_even_across_a_restart(tmp_path):
    # Generous rate limits: what keeps the victim's inbox quiet is the per-address mail rule.
    settings, store, app, sent = _app(
        tmp_path, signup_limit_per_client="1000 per minute", signup_limit_per_address="1000/hour"
    )
    client = app.test_client()
    for i in range(50):
        assert _sign_up(client, "victim@example.org", f"198.51.100.{i}").status_code == 200
    app.extensions["digest"].mailer.wait()
    assert [m["To"] for m in sent] == ["victim@example.org"]
    # a restarted app (new process memory) still knows a confirmation went out
    again = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    assert _sign_up(again.test_client(), "victim@example.org").status_code == 200
    again.extensions["digest"].mailer.wait()
    assert len(sent) == 1
    store.close()


def test_per_address_limit_answers_429(tmp_path):
    _settings, store, app, sent = _app(tmp_path)  # defaults: 3 per hour per address
    client = app.test_client()
    codes = [_sign_up(client, "victim@example.org", f"203.0.113.{i}").status_code for i in range(6)]
    assert codes == [200, 200, 200, 429, 429, 429]
    app.extensions["digest"].mailer.wait()
    assert len(sent) == 1
    store.close()


def test_two_hundred_sign_ups_from_one_client_are_refused_after_the_limit(tmp_path):
    _settings, store, app, sent = _app(tmp_path)  # defaults: 5 per minute per client
    client = app.test_client()
    answers = [_sign_up(client, f"person{i}@example.org") for i in range(200)]
    codes = [a.status_code for a in answers]
    assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
    refused = answers[-1]
    wait = int(refused.headers["Retry-After"])
    assert 0 < wait <= 60
    page = refused.get_data(as_text=True)
    assert re.search(r"Try again in \d+ seconds \(after \d\d:\d\d UTC\)", page)
    app.extensions["digest"].mailer.wait()
    assert len(sent) == 5
    assert subs.count_subscribers(store, status="pending") == 5
    # another client is not affected
    assert _sign_up(client, "other@example.org", "192.0.2.99").status_code == 200
    store.close()


def _comparable(response: Any, email: str) -> tuple[int, dict[str, str], str]:
    headers = {k: v for k, v in response.headers.items() if k != "Set-Cookie"}
    return response.status_code, headers, response.get_data(as_text=True).replace(email, "EMAIL")


def test_known_and_new_addresses_get_the_same_answer_and_no_mail_in_the_request(tmp_path):
    _settings, store, app, sent = _app(tmp_path)
    mailer = app.extensions["digest"].mailer
    queued: list = []
    mailer.submit = lambda job: queued.append(job) or True  # hold the jobs: see the request alone
    client = app.test_client()
    known = _sign_up(client, "ann@example.org")  # seeded, active
    new = _sign_up(client, "bob@example.org")  # same length, never seen
    assert _comparable(known, "ann@example.org") == _comparable(new, "bob@example.org")
    assert known.status_code == 200
    # the request stored nothing and sent nothing: both only queued a job
    assert sent == [] and store.subscriber_by_email("bob@example.org") is None
    assert [j.email for j in queued] == ["ann@example.org", "bob@example.org"]
    # the sender thread does the work later, and only it sends mail
    threads: list[str] = []

    class Recording(FakeTransport):
        def send(self, msg: Any) -> None:
            threads.append(threading.current_thread().name)
            super().send(msg)

    st = app.extensions["digest"]
    st.transport_factory = lambda s: Recording(sent)
    del mailer.submit
    for job in queued:
        assert mailer.submit(job)
    mailer.wait()
    assert [m["To"] for m in sent] == ["bob@example.org"]  # the active subscriber gets nothing
    assert threads == ["digest-confirmations"]
    assert threading.current_thread().name not in threads
    assert subs.get_subscriber(store, "bob@example.org").status == "pending"
    store.close()


def test_bad_rate_settings_name_the_key(tmp_path):
    import pytest

    from digest.errors import ConfigError

    settings, store = seeded(tmp_path, signup_enabled=True, signup_limit_per_client="often")
    with pytest.raises(ConfigError, match=r"web\.signup_limit_per_client: 'often'"):
        create_app(settings, store)
    store.close()
