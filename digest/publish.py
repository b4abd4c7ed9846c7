"""The feeds step: write the public feed and the private feeds whose ledger grew, under public/."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from digest import feed
from digest.config import Settings
from digest.links import FeedbackLinks, feedback_key, feedback_links, secret_key
from digest.store import Store

_MARK = "feeds_written_through"
AUTHORITY_META_KEY = "feeds.tag_authority"


def tag_authority(store: Store, settings: Settings) -> str:
    """The tag authority of feed entry ids: feeds.tag_authority, else the host of the first
    site.base_url it was derived from (kept in the meta table, so a new base_url keeps it)."""
    if settings.feeds.tag_authority:
        return settings.feeds.tag_authority
    cached = store.get_meta(AUTHORITY_META_KEY)
    if cached:
        return cached
    return store.meta_setdefault(AUTHORITY_META_KEY, feed._tag_authority(settings.site.base_url))


@dataclass
class FeedReport:
    """What one feeds pass wrote."""

    public_changed: bool = False
    private_written: int = 0
    private_changed: int = 0

    def summary(self) -> str:
        public = "public feed updated" if self.public_changed else "public feed unchanged"
        return (
            f"{public}, {self.private_written} private feeds written "
            f"({self.private_changed} changed)"
        )


def private_entries(
    store: Store, subscriber_id: int, limit: int, links: FeedbackLinks | None = None
) -> list[feed.FeedEntry]:
    """A subscriber's ledger as feed entries: topics as categories, matched words, date added,
    and with `links` each paper's feedback links (under the topic it was delivered under)."""
    return [
        feed.FeedEntry(
            paper=e.paper,
            topics=e.item.topics,
            terms=e.item.terms,
            added=e.delivered_at,
            rising=e.item.rising,
            feedback=links.urls(e.paper.id, (e.item.topics or (None,))[0]) if links else None,
        )
        for e in store.ledger_entries(subscriber_id, limit)
    ]


def public_entries(store: Store, limit: int) -> list[feed.FeedEntry]:
    """The newest stored papers as feed entries, dated when first stored."""
    return [feed.FeedEntry(paper=p, added=p.first_seen) for p in store.recent_papers(limit)]


def write_feeds(store: Store, settings: Settings, *, full: bool = False) -> FeedReport:
    """Rewrite the public feed and every private feed whose ledger grew since the last pass."""
    report = FeedReport()
    options: dict[str, Any] = {
        "base_url": settings.site.base_url,
        "max_items": settings.feeds.max_items,
        "max_bytes": settings.feeds.max_bytes,
        "authority": tag_authority(store, settings),
    }
    changed = feed.write_feeds(
        settings.feeds.public_dir,
        public_entries(store, settings.feeds.max_items),
        title=settings.site.title,
        description=f"New papers stored by {settings.site.title}",
        **options,
    )
    report.public_changed = any(changed.values())
    # Read the ledger's high-water mark first: deliveries recorded meanwhile are caught next time.
    through = store.latest_delivery_time()
    done = None if full else store.get_meta(_MARK)
    since = datetime.fromisoformat(done) if done else None
    key = feedback_key(secret_key(store, settings))
    for sub in store.subscribers_with_deliveries_since(since):
        links = feedback_links(settings, key, sub)
        changed = feed.write_feeds(
            settings.feeds.public_dir,
            private_entries(store, sub.id, settings.feeds.max_items, links),
            title=f"{settings.site.title}: {sub.name or 'your papers'}",
            description="Papers matched by your keyword profile",
            token=sub.token,
            **options,
        )
        report.private_written += 1
        report.private_changed += any(changed.values())
    if through is not None:
        store.set_meta(_MARK, through.isoformat())
    return report
