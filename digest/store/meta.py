"""The meta table: small named values such as the generated secret key and the daemon holder."""

from __future__ import annotations

from sqlalchemy import Column, String, Table, Text, select

from digest.store.base import StoreBase
from digest.store.schema import metadata

meta = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)


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
