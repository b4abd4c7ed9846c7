"""The meta table: small named values such as the generated secret key and the daemon holder."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Column, String, Table, Text, select

from digest.store.base import StoreBase, utc
from digest.store.records import RunSize
from digest.store.schema import metadata

meta = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)


RUNS_KEY = "health.runs"  # the recent queueing runs' sizes, newest first (JSON)


class MetaStore(StoreBase):
    """Key/value settings the application keeps in its database."""

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value kept in the meta table (e.g. a generated secret key), or `default`."""
        with self._read() as conn:
            value = conn.scalar(select(meta.c.value).where(meta.c.key == key))
        return default if value is None else value

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value, replacing any earlier one."""
        stmt = self._dialect_insert(meta).values(key=key, value=value)
        with self._write() as conn:
            conn.execute(
                stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value})
            )

    def meta_setdefault(self, key: str, value: str) -> str:
        """Keep `value` under `key` unless one is there already; return the value that won."""
        stmt = self._dialect_insert(meta).values(key=key, value=value)
        with self._write() as conn:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[meta.c.key]))
            won = conn.scalar(select(meta.c.value).where(meta.c.key == key))
        assert won is not None  # inserted just now, or there already
        return str(won)

    def recent_runs(self, *, since: datetime, limit: int) -> list[RunSize]:
        """The sizes of the recent queueing runs that recorded email digests, newest first,
        from `since` on, at most `limit` (kept by `add_run`: counting them from the ledger
        would read every digest and ledger row of the window at each health check)."""
        raw = self.get_meta(RUNS_KEY)
        try:
            runs = [
                RunSize(datetime.fromisoformat(a), int(d), int(p))
                for a, d, p in json.loads(raw or "[]")
            ]
        except (ValueError, TypeError):
            return []  # unreadable (hand-edited): the history starts again
        since = utc(since)
        return [r for r in runs if utc(r.at) >= since][:limit]

    def add_run(self, run: RunSize, *, keep: int) -> None:
        """Keep one more run's size in the recent-runs history (the `keep` newest are kept)."""
        runs = [
            r
            for r in self.recent_runs(since=datetime.min.replace(tzinfo=UTC), limit=keep)
            if r.at != run.at
        ]
        runs = sorted([run, *runs], key=lambda r: utc(r.at), reverse=True)[:keep]
        self.set_meta(
            RUNS_KEY, json.dumps([[utc(r.at).isoformat(), r.digests, r.papers] for r in runs])
        )
