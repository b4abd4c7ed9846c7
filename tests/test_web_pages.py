"""Digest pages and the archive: signed links in the email headers, every match listed."""

from __future__ import annotations

import mailbox
import re
from dataclasses import replace
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from web_support import NOW, XSS, add_dump, make_settings, paper

from digest import subscribers as subs
from digest.models import Topic
from digest.pipeline import Cycle
from digest.store import Store
from digest.web import create_app, pages

# Five papers match "latency"; with max_papers = 2 an email carries two of them.
LATENCY = [
    paper(f"Paper {n} on latency", f"Latency result number {n}. " + "latency " * n)
    for n in range(5)
]


def _world(tmp_path: Path, max_papers: int = 2) -> tuple[Any, Store]:
    settings = make_settings(tmp_path, site={"base_url": "https://papers.example.org"})
    settings = replace(settings, mail=replace(settings.mail, max_papers=max_papers))
    store = Store.open(settings.database.url)
    add_dump(store, "d1.txt", [*LATENCY, paper(f"Other {XSS}", "latency " + XSS)], NOW)
    for email in ("ann@example.org", "bob@example.org"):
        subs.add_subscriber(
            store, settings, email, topics=[Topic("Speed", "latency")], backfill_days=30,
            now=NOW,
        )  # fmt: skip
    return settings, store


def _send(settings: Any, store: Store, when: Any = NOW) -> list[EmailMessage]:
    cycle = Cycle(store, settings, clock=lambda: when)
    cycle.queue(force=True)
    cycle.deliver()
    box = mailbox.Maildir(settings.mail.maildir, create=False)
    return [
        message_from_bytes(box.get_bytes(key), policy=policy.default)  # type: ignore[misc]
        for key in sorted(box.keys())
    ]


def _for(messages: list[EmailMessage], email: str) -> list[EmailMessage]:
    return [m for m in messages if email in str(m["To"])]


def _url(header: str) -> str:
    found = re.fullmatch(r"<(https://papers\.example\.org(/\S+))>", header.strip())
    assert found, header
    return found.group(2)


def _manage(msg: EmailMessage) -> str:
    """The manage page's path, from the text part's footer."""
    text, _ = _parts(msg)
    return _url("<" + text.split("Manage preferences:")[1].split()[0] + ">")


def _parts(msg: EmailMessage) -> tuple[str, str]:
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


@pytest.fixture
def world(tmp_path: Path):
    settings, store = _world(tmp_path)
    messages = _send(settings, store)
    app = create_app(settings, store)
    app.config["TESTING"] = True
    yield settings, store, app.test_client(), messages
    store.close()


def test_headers_name_the_digest_page_and_archive_which_answer(world) -> None:
    _, _, client, messages = world
    msg = _for(messages, "ann@example.org")[0]
    page, archive = _url(msg["Archived-At"]), _url(msg["List-Archive"])
    assert page.startswith(archive + "/")
    assert client.get(page).status_code == 200
    listing = client.get(archive)
    assert listing.status_code == 200
    assert page in listing.get_data(as_text=True)
    assert "noindex" in client.get(page).headers["X-Robots-Tag"]


def test_capped_email_says_n_of_m_in_both_parts_and_links_the_page(world) -> None:
    _, _, _, messages = world
    msg = _for(messages, "ann@example.org")[0]
    page = _url(msg["Archived-At"])
    text, html = _parts(msg)
    assert "2 of 6 matches" in text
    assert "2 of 6 matches" in html
    assert "View in browser" in text and "View in browser" in html
    assert page in text and page in html


def test_digest_page_lists_every_match_carried_then_left_out(world) -> None:
    _, store, client, messages = world
    msg = _for(messages, "ann@example.org")[0]
    body = client.get(_url(msg["Archived-At"])).get_data(as_text=True)
    for p in LATENCY:
        assert p.title in body
    assert "left out of the email" in body
    assert "2 of 6" in body.replace("showed ", "")
    assert XSS not in body and "&lt;script&gt;" in body  # untrusted titles escaped
    # The left-out papers are not in the ledger: they were never delivered.
    sub = subs.get_subscriber(store, "ann@example.org")
    assert len(store.ledger_entries(sub.id, 100)) == 2


def test_an_uncapped_digest_has_no_note_and_no_left_out_section(tmp_path: Path) -> None:
    settings, store = _world(tmp_path, max_papers=30)
    msg = _for(_send(settings, store), "ann@example.org")[0]
    text, html = _parts(msg)
    assert " of 6 matches" not in text and " of 6 matches" not in html
    client = create_app(settings, store).test_client()
    body = client.get(_url(msg["Archived-At"])).get_data(as_text=True)
    assert "left out" not in body and LATENCY[4].title in body
    store.close()


def test_forged_foreign_or_other_purpose_links_are_404(world) -> None:
    _, _, client, messages = world
    ann, bob = _for(messages, "ann@example.org")[0], _for(messages, "bob@example.org")[0]
    page, archive = _url(ann["Archived-At"]), _url(ann["List-Archive"])
    bob_id = _url(bob["Archived-At"]).rsplit("/", 1)[1]
    signed = archive.rsplit("/", 1)[1]
    forged = signed[:-3] + ("AAA" if not signed.endswith("AAA") else "BBB")
    assert client.get(f"/archive/{forged}").status_code == 404
    assert client.get(page.replace(signed, forged)).status_code == 404
    assert client.get(f"{archive}/{bob_id}").status_code == 404  # Bob's digest, Ann's link
    assert client.get(f"{archive}/99999999999999999999999").status_code == 404
    assert client.get(f"{archive}?before=x").status_code == 404
    manage_signed = _manage(ann).rsplit("/", 1)[1]
    assert client.get(f"/archive/{manage_signed}").status_code == 404  # another purpose
    assert client.get(f"/archive/{bob_id}").status_code == 404


def test_archive_pages_by_keyset_newest_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pages, "ARCHIVE_PAGE", 3)
    settings, store = _world(tmp_path, max_papers=30)
    when = NOW
    for n in range(7):
        when = NOW + timedelta(hours=n + 1)
        add_dump(store, f"n{n}.txt", [paper(f"Fresh {n} latency", "latency")], when)
        _send(settings, store, when + timedelta(minutes=1))
    box = mailbox.Maildir(settings.mail.maildir, create=False)
    msgs = [message_from_bytes(box.get_bytes(k), policy=policy.default) for k in box.keys()]  # noqa: SIM118 - keys, not messages
    ann = _for(msgs, "ann@example.org")  # type: ignore[arg-type]
    assert len(ann) == 7
    archive = _url(ann[0]["List-Archive"])
    assert all(_url(m["List-Archive"]) for m in ann)
    client = create_app(settings, store).test_client()
    seen: list[str] = []
    url: str | None = archive
    pages_read = 0
    while url:
        body = client.get(url).get_data(as_text=True)
        pages_read += 1
        seen += re.findall(r'href="/archive/[^/"]+/(\d+)"', body)
        more = re.search(r'href="([^"]+)" rel="next"', body)
        url = more.group(1).replace("&amp;", "&") if more else None
    assert pages_read == 3
    assert [int(i) for i in seen] == sorted({int(i) for i in seen}, reverse=True)
    assert len(seen) == 7
    store.close()


def test_manage_page_links_the_archive(world) -> None:
    _, _, client, messages = world
    msg = _for(messages, "ann@example.org")[0]
    body = client.get(_manage(msg)).get_data(as_text=True)
    assert _url(msg["List-Archive"]).rsplit("/", 1)[0] + "/" in body
    assert "Your past digests" in body


@pytest.mark.parametrize("cap", [2, 4])  # 2: the top-k list (2 x cap) is cut; 4: it holds all
def test_left_out_matches_are_kept_whether_or_not_the_ranking_was_cut(tmp_path, cap) -> None:
    settings, store = _world(tmp_path, max_papers=cap)
    msg = _for(_send(settings, store), "ann@example.org")[0]
    text, _ = _parts(msg)
    assert f"{cap} of 6 matches" in text
    client = create_app(settings, store).test_client()
    body = client.get(_url(msg["Archived-At"])).get_data(as_text=True)
    assert body.count('class="card paper"') == 6
    store.close()


def test_preview_last_renders_the_last_sent_digest_with_its_links(tmp_path: Path, capsys) -> None:
    from digest.cli import main

    config = tmp_path / "settings.toml"
    config.write_text(
        '[database]\nurl = "sqlite:///digest.db"\n[site]\nbase_url = "https://papers.example.org"\n'
        "[mail]\nmax_papers = 2\n",
        encoding="utf-8",
    )
    settings, store = _world(tmp_path)
    out = tmp_path / "out"
    assert (
        main(["--config", str(config), "preview", "ann@example.org", "--last", "--out", str(out)])
        == 0
    )
    assert "no digest was sent" in capsys.readouterr().out
    msg = _for(_send(settings, store), "ann@example.org")[0]
    assert (
        main(["--config", str(config), "preview", "ann@example.org", "--last", "--out", str(out)])
        == 0
    )
    text = (out / "last-ann_example_org.txt").read_text(encoding="utf-8")
    # The same digest, links and all; manage and unsubscribe tokens carry the time of signing.
    timed = re.compile(r"/(manage|unsubscribe)/\S+")
    assert timed.sub("/\\1/T", _parts(msg)[0]).strip() == timed.sub("/\\1/T", text).strip()
    assert _url(msg["Archived-At"]) in text
    assert "2 of 6 matches" in text
    store.close()


def test_removing_a_subscriber_removes_their_left_out_matches(world) -> None:
    _, store, client, messages = world
    page = _url(_for(messages, "ann@example.org")[0]["Archived-At"])
    subs.remove_subscriber(store, "ann@example.org")
    with store.engine.connect() as conn:
        left = conn.exec_driver_sql("SELECT count(*) FROM digest_extras").scalar()
        digests = conn.exec_driver_sql("SELECT count(*) FROM digests").scalar()
    assert digests == 1  # Bob's
    assert left == 4  # Bob's four left out; Ann's went with her digest
    assert client.get(page).status_code == 404
