"""Feeds as a site serves them: stable tag ids, autodiscovery, the XSLT page, paper dates."""

from __future__ import annotations

import gzip
import re
from dataclasses import replace
from datetime import date
from pathlib import Path

import feedparser
import pytest
from lxml import etree
from web_support import NOW, add_dump, make_settings, paper, seeded

from digest import subscribers as subs
from digest.feed import STYLESHEET_FILE, STYLESHEET_PATH
from digest.links import links_for
from digest.pipeline import Cycle
from digest.publish import tag_authority
from digest.store import Store
from digest.web import create_app


def _client(settings, store):
    app = create_app(settings, store)
    app.config["TESTING"] = True
    return app.test_client()


def test_tag_authority_is_kept_when_the_site_moves(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    assert tag_authority(store, settings) == "localhost"
    moved = replace(settings, site=replace(settings.site, base_url="https://new.example.org"))
    assert tag_authority(store, moved) == "localhost"
    body = _client(moved, store).get("/feeds/all.atom").get_data(as_text=True)
    ids = re.findall(r"<id>(tag:[^<]+:paper/[^<]+)</id>", body)
    assert ids and all(i.startswith("tag:localhost,2025:paper/") for i in ids)
    assert "https://new.example.org/feeds/all.atom" in body  # links follow the new site
    chosen = replace(moved, feeds=replace(moved.feeds, tag_authority="papers.example.org"))
    assert tag_authority(store, chosen) == "papers.example.org"
    store.close()


def test_home_and_manage_pages_announce_their_feeds(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    client = _client(settings, store)
    home = client.get("/").get_data(as_text=True)
    for fmt, kind in (("rss", "rss"), ("atom", "atom")):
        assert re.search(
            rf'<link rel="alternate" type="application/{kind}\+xml" title="[^"]+" '
            rf'href="http://localhost:8000/feeds/all\.{fmt}">',
            home,
        )
    sub = subs.get_subscriber(store, "ann@example.org")
    signer = create_app(settings, store).extensions["digest"].signer
    manage = links_for(settings, signer, sub).manage_url.removeprefix("http://localhost:8000")
    page = client.get(manage).get_data(as_text=True)
    feed = f"http://localhost:8000/feeds/s/{sub.token}.rss"
    assert f'type="application/rss+xml" title="Your papers (RSS)" href="{feed}"' in page
    store.close()


def test_feeds_name_a_stylesheet_that_renders_a_how_to_subscribe_page(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    client = _client(settings, store)
    xsl = client.get(STYLESHEET_PATH)
    assert xsl.status_code == 200 and xsl.content_type.startswith("text/xsl")
    transform = etree.XSLT(etree.fromstring(xsl.data))
    for fmt in ("rss", "atom"):
        body = client.get(f"/feeds/all.{fmt}").data
        assert f'<?xml-stylesheet type="text/xsl" href="{STYLESHEET_PATH}"?>'.encode() in body
        page = str(transform(etree.fromstring(body)))
        assert "This is a feed" in page
        assert "http://localhost:8000/feeds/all." + fmt in page
        assert "Sparse Attention for Long Context" in page
    # The static copy: the feeds step writes the stylesheet beside the files.
    Cycle(store, settings).feeds()
    written = settings.feeds.public_dir / "feeds" / "feed.xsl"
    assert written.read_bytes() == STYLESHEET_FILE.read_bytes()
    assert b"xml-stylesheet" in (settings.feeds.public_dir / "feeds" / "all.rss").read_bytes()
    store.close()


def test_item_dates_are_the_papers_own_where_known(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    store = Store.open(settings.database.url)
    add_dump(
        store,
        "d.txt",
        [paper("Dated paper", "x", published=date(2025, 3, 4)), paper("Undated paper", "y")],
        NOW,
    )
    client = _client(settings, store)
    parsed = feedparser.parse(client.get("/feeds/all.rss").data)
    by_title = {e.title: e for e in parsed.entries}
    assert by_title["Dated paper"].published_parsed[:3] == (2025, 3, 4)
    assert by_title["Undated paper"].published_parsed[:3] == NOW.timetuple()[:3]
    atom = feedparser.parse(client.get("/feeds/all.atom").data)
    dated = next(e for e in atom.entries if e.title == "Dated paper")
    assert dated.published_parsed[:3] == (2025, 3, 4)
    assert dated.updated_parsed[:3] == NOW.timetuple()[:3]  # when we stored it
    store.close()


@pytest.mark.parametrize("fmt", ["rss", "atom"])
def test_feedparser_reads_every_variant_without_bozo(tmp_path: Path, fmt: str) -> None:
    settings, store = seeded(tmp_path)
    cycle = Cycle(store, settings, clock=lambda: NOW)
    cycle.queue(force=True)
    cycle.deliver()
    cycle.feeds()
    sub = subs.get_subscriber(store, "ann@example.org")
    client = _client(settings, store)
    empty = Store.open(f"sqlite:///{tmp_path / 'empty.db'}")
    variants = {
        "public": client.get(f"/feeds/all.{fmt}").data,
        "private": client.get(f"/feeds/s/{sub.token}.{fmt}").data,
        "gzip": gzip.decompress(
            client.get(f"/feeds/all.{fmt}", headers={"Accept-Encoding": "gzip"}).data
        ),
        "static": (settings.feeds.public_dir / "feeds" / f"all.{fmt}").read_bytes(),
        "static private": (
            settings.feeds.public_dir / "feeds" / "s" / f"{sub.token}.{fmt}"
        ).read_bytes(),
        "empty": _client(settings, empty).get(f"/feeds/all.{fmt}").data,
    }
    for name, body in variants.items():
        parsed = feedparser.parse(body)
        assert not parsed.bozo, (name, parsed.get("bozo_exception"))
        assert parsed.version.startswith(fmt), name
    assert feedparser.parse(variants["private"]).entries
    empty.close()
    store.close()


def test_favicon_is_served_and_linked(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    client = _client(settings, store)
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.content_type == "image/svg+xml"
    assert b"<svg" in icon.data
    assert 'rel="icon" href="/favicon.ico"' in client.get("/").get_data(as_text=True)
    store.close()


def test_serve_logs_one_line_per_request_without_tokens(tmp_path: Path, caplog) -> None:
    settings, store = seeded(tmp_path)
    sub = subs.get_subscriber(store, "ann@example.org")
    app = create_app(settings, store, log_requests=True)
    client = app.test_client()
    with caplog.at_level("INFO", logger="digest.web"):
        client.get("/")
        client.get(f"/feeds/s/{sub.token}.rss")
        client.get("/nowhere")
    lines = [r.getMessage() for r in caplog.records if r.name == "digest.web"]
    assert len(lines) == 3
    assert lines[0].startswith("GET / 200 ")
    assert lines[1].startswith("GET /feeds/s/<token>.<any(rss, atom):fmt> 200 ")
    assert lines[2].startswith("GET (no route) 404 ")
    assert all(sub.token not in line for line in lines)
    store.close()


def test_a_browser_gets_the_feed_as_xml_so_the_stylesheet_applies(tmp_path: Path) -> None:
    settings, store = seeded(tmp_path)
    client = _client(settings, store)
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    for fmt in ("rss", "atom"):
        seen = client.get(f"/feeds/all.{fmt}", headers={"Accept": browser})
        assert seen.content_type == "application/xml; charset=utf-8"
        reader = client.get(f"/feeds/all.{fmt}", headers={"Accept": "*/*"})
        assert reader.content_type == f"application/{fmt}+xml; charset=utf-8"
        assert seen.data == reader.data and "Accept" in reader.headers["Vary"]
    store.close()
