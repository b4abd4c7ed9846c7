"""Helpers shared by the web tests: settings, a seeded store, login and CSRF from real pages."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from werkzeug.security import generate_password_hash

from digest import subscribers as subs
from digest.config import Settings, build_settings
from digest.models import Paper, ParseResult, Topic
from digest.store import Store

PASSWORD = "correct horse battery"
# A cheap hash keeps the tests fast; production hashes come from `digest admin-password`.
PASSWORD_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_settings(root: Path, **web: Any) -> Settings:
    """Settings keeping everything under `root`, with an admin password and overrides."""
    site = web.pop("site", {})
    return build_settings(
        {
            "database": {"url": "sqlite:///digest.db"},
            "web": {"admin_password_hash": PASSWORD_HASH, **web},
            "site": {"base_url": "http://localhost:8000", **site},
        },
        root=root,
    )


def add_dump(store: Store, name: str, papers: list[Paper], when: datetime) -> None:
    """Store one dump of these papers, received at `when`."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    store.ingest_dump(name, digest, 100, ParseResult(papers=tuple(papers)), received_at=when)


def paper(title: str, abstract: str, **facts: Any) -> Paper:
    """A parsed paper with optional facts."""
    return Paper(title=title, abstract=abstract, **facts)


NOW = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)

PAPERS_OLD = [
    paper(
        "Sparse Attention for Long Context", "We make attention sparse to cut latency.", upvotes=12
    ),
    paper("Speculative Decoding at Scale", "A draft model speeds up decoding.", upvotes=30),
    paper("Diffusion Models for Video", "Video generation with diffusion and low latency."),
]
PAPERS_NEW = [
    paper("Pruning Large Language Models", "We prune weights; latency drops by half.", upvotes=3),
    paper(f"Hostile {XSS} title", f"An abstract with {XSS} and ]]> inside, about attention."),
]


def seeded(root: Path, **web: Any) -> tuple[Settings, Store]:
    """Settings plus a store holding two dumps and one subscriber (ann@example.org)."""
    settings = make_settings(root, **web)
    store = Store.open(settings.database.url)
    add_dump(store, "2025-11-22.txt", PAPERS_OLD, NOW - timedelta(days=2))
    add_dump(store, "2025-11-23.txt", PAPERS_NEW + PAPERS_OLD[:1], NOW - timedelta(days=1))
    subs.add_subscriber(
        store,
        settings,
        "ann@example.org",
        name="Ann",
        topics=[Topic("Attention", "sparse attention")],
        backfill_days=30,
        now=NOW,
    )
    return settings, store


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(html)
    assert found, "page has no CSRF field"
    return found.group(1)


def login(client: Any, password: str = PASSWORD) -> Any:
    """Log the test client in as admin through the real form; returns the POST response."""
    token = csrf_of(client.get("/admin/login").get_data(as_text=True))
    return client.post("/admin/login", data={"csrf_token": token, "password": password})


def admin_client(app: Any) -> Any:
    """A Flask test client already logged in as admin."""
    client = app.test_client()
    login(client)
    return client


def submit(client: Any, url: str, data: dict[str, Any]) -> Any:
    """GET the form at `url`, then POST `data` to it with the page's CSRF token."""
    token = csrf_of(client.get(url).get_data(as_text=True))
    return client.post(url, data={"csrf_token": token, **data})


class FakeTransport:
    """Keeps sent messages in a list shared by every instance the factory makes."""

    parallel = 1

    def __init__(self, sent: list[EmailMessage]) -> None:
        self.sent = sent

    def send(self, msg: EmailMessage) -> None:
        self.sent.append(msg)

    def close(self) -> None:
        pass
