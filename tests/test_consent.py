"""Consent: unsubscribed is terminal for admins; only the person comes back, by double opt-in.
Their data: export everything about one person, wipe them keeping only a suppression entry."""

from __future__ import annotations

import json
import re
import tempfile
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from web_support import NOW, FakeTransport, admin_client, csrf_of, seeded, submit

from digest import subscribers as subs
from digest.cli import main
from digest.config import Settings, build_settings, load_settings
from digest.errors import ConsentError
from digest.models import StatusChange, Topic
from digest.outbox import queue_digests
from digest.store import Store, feedback, metadata, suppressions
from digest.web import create_app

LEFT = re.compile(
    r"^ann@example\.org unsubscribed on \d{4}-\d{2}-\d{2} by one-click; only they can "
    r"subscribe again \(sign-up with double opt-in\)$"
)


@pytest.fixture
def cfg() -> Settings:
    return build_settings({}, root=Path(tempfile.gettempdir()))


def _ann_left(store: Store, cfg: Settings) -> object:
    sub = subs.add_subscriber(store, cfg, "ann@example.org", topics=[Topic("T", "attention")])
    assert store.unsubscribe_token(sub.token, how=StatusChange.ONE_CLICK)
    return sub


def _history(store: Store, email: str) -> list[tuple[object, object, object]]:
    sub = store.subscriber_by_email(email)
    assert sub is not None
    return [(e.old_status, e.new_status, e.how) for e in store.subscriber_events(sub.id)]


# --- consent: the service, on both engines ----------------------------------------------------


def test_no_admin_path_brings_back_someone_who_unsubscribed(store: Store, cfg: Settings) -> None:
    _ann_left(store, cfg)
    before = _history(store, "ann@example.org")
    for status, how in (("active", StatusChange.CLI), ("paused", StatusChange.ADMIN)):
        with pytest.raises(ConsentError) as refused:
            subs.set_status(store, "ann@example.org", status, how=how)
        assert LEFT.match(str(refused.value)), str(refused.value)
    with pytest.raises(ConsentError, match=LEFT.pattern):
        subs.edit_subscriber(store, cfg, "ann@example.org", name="Ann")
    with pytest.raises(ConsentError, match=LEFT.pattern):  # not "already subscribed"
        subs.add_subscriber(store, cfg, "Ann@Example.org", how=StatusChange.ADMIN)
    assert subs.get_subscriber(store, "ann@example.org").status == "unsubscribed"
    assert _history(store, "ann@example.org") == before
    # removing them is allowed, but it leaves a suppression: removal is no way to re-add them
    subs.remove_subscriber(store, "ann@example.org")
    with pytest.raises(ConsentError, match=r"ann@example\.org was erased on .*by one-click"):
        subs.add_subscriber(store, cfg, "ann@example.org", how=StatusChange.ADMIN)


def test_an_admin_cannot_activate_an_unconfirmed_sign_up(store: Store, cfg: Settings) -> None:
    subs.add_subscriber(store, cfg, "p@example.org", status="pending", how=StatusChange.SIGNUP)
    with pytest.raises(ConsentError, match="has not confirmed"):
        subs.set_status(store, "p@example.org", "active", how=StatusChange.ADMIN)
    # nor in two steps (found by the web acceptance check): pausing them, then resuming
    for how in (StatusChange.ADMIN, StatusChange.CLI, StatusChange.IMPORT):
        with pytest.raises(ConsentError, match="has not confirmed"):
            subs.set_status(store, "p@example.org", "paused", how=how)
    assert subs.get_subscriber(store, "p@example.org").status == "pending"
    subs.set_status(store, "p@example.org", "active", how=StatusChange.CONFIRM)
    assert subs.get_subscriber(store, "p@example.org").status == "active"


def test_csv_import_rejects_reactivating_rows_naming_file_and_line(
    store: Store, cfg: Settings, tmp_path: Path
) -> None:
    _ann_left(store, cfg)
    csv_file = tmp_path / "people.csv"
    csv_file.write_text(
        "email,status\nbob@example.org,active\nann@example.org,active\nann2@example.org,\n"
    )
    for dry_run in (True, False):
        report = subs.import_csv(store, cfg, csv_file, dry_run=dry_run)
        assert report.added == 2 and len(report.errors) == 1
        (error,) = report.errors
        assert str(error).startswith(f"{csv_file}:3: ann@example.org unsubscribed on ")
    assert subs.get_subscriber(store, "ann@example.org").status == "unsubscribed"


# --- consent: the CLI -------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["init", str(tmp_path / "site")]) == 0
    capsys.readouterr()
    return str(tmp_path / "site" / "settings.toml")


def test_cli_resume_and_edit_refuse_in_one_line_and_show_the_history(
    config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["--config", config, "subscriber", "add", "ann@example.org", "--keywords", "x"]) == 0
    )
    settings = load_settings(config)
    with Store.open(settings.database.url) as store:
        sub = subs.get_subscriber(store, "ann@example.org")
        store.unsubscribe_token(sub.token, how=StatusChange.ONE_CLICK)
    capsys.readouterr()
    for argv in (["resume", "ann@example.org"], ["edit", "ann@example.org", "--name", "A"]):
        assert main(["--config", config, "subscriber", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert LEFT.match(err.removeprefix("error: ").rstrip("\n")), err
    assert main(["--config", config, "subscriber", "show", "ann@example.org"]) == 0
    text = capsys.readouterr().out
    assert re.search(
        r"history:\n  \S+  \(new\) -> active  by cli\n  \S+  active -> unsubscribed  by one-click",
        text,
    )
    assert main(["--config", config, "subscriber", "show", "ann@example.org", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "unsubscribed" and "topics" in shown  # the contract's keys stay
    assert [(h["from"], h["to"], h["how"]) for h in shown["history"]] == [
        (None, "active", "cli"),
        ("active", "unsubscribed", "one-click"),
    ]
    assert all(datetime.fromisoformat(h["at"]).tzinfo for h in shown["history"])


# --- consent: the web -------------------------------------------------------------------------


@pytest.fixture
def web(tmp_path: Path):
    settings, store = seeded(tmp_path, signup_enabled=True)
    sent: list = []
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    ann = subs.get_subscriber(store, "ann@example.org")
    store.unsubscribe_token(ann.token, how=StatusChange.ONE_CLICK)
    yield settings, store, app, sent
    store.close()


def test_admin_status_post_and_add_form_refuse_with_409(web) -> None:
    _settings, store, app, _sent = web
    client = admin_client(app)
    sid = subs.get_subscriber(store, "ann@example.org").id
    page = client.get(f"/admin/subscribers/{sid}").get_data(as_text=True)
    assert 'value="resume"' not in page  # the page offers no button...
    assert re.search(r"Unsubscribed on \d{4}-\d{2}-\d{2} \d\d:\d\d UTC by one-click", page)
    row = r"<td[^>]*>active</td><td[^>]*><span class=\"badge badge-unsubscribed\">"
    assert re.search(row, page)
    for action in ("resume", "pause"):  # ...and a hand-made POST is refused
        answer = client.post(
            f"/admin/subscribers/{sid}/status",
            data={"csrf_token": csrf_of(page), "action": action},
        )
        assert answer.status_code == 409
        assert "only they can subscribe again" in answer.get_data(as_text=True)
    answer = submit(
        client,
        "/admin/subscribers/new",
        {"email": "ann@example.org", "topic_name": "K", "topic_query": "x", "cadence": "daily"},
    )
    assert answer.status_code == 409 and "unsubscribed on" in answer.get_data(as_text=True)
    assert subs.get_subscriber(store, "ann@example.org").status == "unsubscribed"


def test_public_sign_up_of_an_unsubscribed_address_is_a_new_double_opt_in(web) -> None:
    _settings, store, app, sent = web
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    answer = client.post(
        "/signup", data={"csrf_token": csrf_of(page), "email": "ann@example.org", "keywords": "x"}
    )
    assert answer.status_code == 200
    app.extensions["digest"].mailer.wait()
    assert len(sent) == 1 and sent[0]["To"] == "ann@example.org"
    assert subs.get_subscriber(store, "ann@example.org").status == "unsubscribed"
    link = re.search(r"http://localhost:8000(/confirm/\S+)", sent[0].get_content()).group(1)
    confirm = client.get(link).get_data(as_text=True)
    assert subs.get_subscriber(store, "ann@example.org").status == "unsubscribed"
    client.post(link, data={"csrf_token": csrf_of(confirm)})
    assert subs.get_subscriber(store, "ann@example.org").status == "active"
    assert _history(store, "ann@example.org")[-1] == ("unsubscribed", "active", "confirm")


# --- their data: export and wipe --------------------------------------------------------------


def _with_everything(store: Store, settings: Settings) -> int:
    """Ann with deliveries, a digest and feedback; returns her id."""
    ann = subs.get_subscriber(store, "ann@example.org")
    queue_digests(store, settings, now=NOW, force=True)
    paper = store.recent_papers(10)[0]
    with store.engine.begin() as conn:
        conn.execute(
            insert(feedback).values(
                subscriber_id=ann.id, topic="Attention", paper_id=paper.id, verdict="like", at=NOW
            )
        )
    return ann.id


def test_export_data_holds_everything_about_one_person(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    _with_everything(store, settings)
    data = subs.export_data(store, settings, "ANN@example.org")
    assert data["profile"]["email"] == "ann@example.org" and data["profile"]["name"] == "Ann"
    assert data["topics"] == [
        {
            "name": "Attention",
            "query": "sparse attention",
            "likes": ['Hostile <script>alert("x")</script><img src=x onerror=alert(1)> title'],
            "dislikes": [],
        }
    ]
    assert [(h["from"], h["to"], h["how"]) for h in data["history"]] == [(None, "active", "cli")]
    titles = {d["title"] for d in data["deliveries"]}
    assert "Sparse Attention for Long Context" in titles
    assert all(d["delivered_at"] for d in data["deliveries"])
    assert data["feedback"][0]["verdict"] == "like" and data["feedback"][0]["title"]
    assert isinstance(data["digests"], list)
    json.dumps(data)  # JSON as it is
    store.close()


def test_wipe_leaves_only_a_suppression_that_admin_paths_respect(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path, signup_enabled=True)
    ann_id = _with_everything(store, settings)
    subs.wipe_subscriber(store, "ann@example.org")
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            if "subscriber_id" in table.c:
                assert not list(conn.execute(select(table).where(table.c.subscriber_id == ann_id)))
        (row,) = list(conn.execute(select(suppressions)))
    assert row.email_hash == subs.email_hash("ann@example.org") and "ann" not in row.reason
    assert store.subscriber_by_email("ann@example.org") is None
    with pytest.raises(ConsentError, match=r"ann@example\.org was erased on "):
        subs.add_subscriber(store, settings, "ann@example.org", how=StatusChange.ADMIN)
    subs.add_subscriber(store, settings, "other@example.org")
    with pytest.raises(ConsentError, match=r"ann@example\.org was erased on "):  # nor a rename
        subs.edit_subscriber(store, settings, "other@example.org", new_email="ann@example.org")
    csv_file = tmp_path / "again.csv"
    csv_file.write_text("email\nann@example.org\n")
    for dry_run in (True, False):
        report = subs.import_csv(store, settings, csv_file, dry_run=dry_run)
        assert str(report.errors[0]).startswith(f"{csv_file}:2: ann@example.org was erased")
        assert report.added == 0
    # their own sign-up is allowed and lifts the suppression once confirmed
    sent: list = []
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport(sent))
    client = app.test_client()
    page = client.get("/signup").get_data(as_text=True)
    client.post(
        "/signup", data={"csrf_token": csrf_of(page), "email": "ann@example.org", "keywords": "x"}
    )
    app.extensions["digest"].mailer.wait()
    assert subs.get_subscriber(store, "ann@example.org").status == "pending"
    assert store.suppression(subs.email_hash("ann@example.org")) is not None  # until confirmed
    link = re.search(r"http://localhost:8000(/confirm/\S+)", sent[0].get_content()).group(1)
    client.post(link, data={"csrf_token": csrf_of(client.get(link).get_data(as_text=True))})
    assert subs.get_subscriber(store, "ann@example.org").status == "active"
    assert store.suppression(subs.email_hash("ann@example.org")) is None
    store.close()


def test_cli_export_data_and_wipe(
    config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert (
        main(["--config", config, "subscriber", "add", "ann@example.org", "--keywords", "x"]) == 0
    )
    out = tmp_path / "ann.json"
    assert (
        main(
            ["--config", config, "subscriber", "export-data", "ann@example.org", "--out", str(out)]
        )
        == 0
    )
    assert json.loads(out.read_text())["profile"]["email"] == "ann@example.org"
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["--config", config, "subscriber", "wipe", "ann@example.org"]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == "error: wipe ann@example.org: give --yes to confirm (standard input is not a terminal)\n"
    )
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["--config", config, "subscriber", "wipe", "ann@example.org"]) == 1
    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert main(["--config", config, "subscriber", "wipe", "ann@example.org"]) == 0
    assert "wiped ann@example.org" in capsys.readouterr().out
    assert main(["--config", config, "subscriber", "add", "ann@example.org"]) == 1
    assert "ann@example.org was erased on " in capsys.readouterr().err


def test_admin_export_and_wipe_behind_a_confirmation_page(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    sid = _with_everything(store, settings)
    app = create_app(settings, store, transport_factory=lambda s: FakeTransport([]))
    client = admin_client(app)
    page = client.get(f"/admin/subscribers/{sid}").get_data(as_text=True)
    assert (
        f"/admin/subscribers/{sid}/data.json" in page and f"/admin/subscribers/{sid}/wipe" in page
    )
    download = client.get(f"/admin/subscribers/{sid}/data.json")
    assert download.status_code == 200 and "attachment" in download.headers["Content-Disposition"]
    assert download.get_json()["profile"]["email"] == "ann@example.org"
    confirm = client.get(f"/admin/subscribers/{sid}/wipe")
    assert confirm.status_code == 200 and "Wipe for good" in confirm.get_data(as_text=True)
    assert store.subscriber_by_id(sid) is not None  # the GET only asks
    assert client.post(f"/admin/subscribers/{sid}/wipe").status_code == 400  # no CSRF token
    done = client.post(
        f"/admin/subscribers/{sid}/wipe",
        data={"csrf_token": csrf_of(confirm.get_data(as_text=True))},
    )
    assert done.status_code == 302 and store.subscriber_by_id(sid) is None
    assert store.suppression(subs.email_hash("ann@example.org")) is not None
    store.close()
