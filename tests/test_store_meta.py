"""The meta table on SQLite and PostgreSQL: named values kept in the database."""

from __future__ import annotations

from digest.store import Store


def test_meta_values(store: Store) -> None:
    assert store.get_meta("secret") is None
    assert store.get_meta("secret", "d") == "d"
    assert store.meta_setdefault("secret", "s1") == "s1"
    assert store.meta_setdefault("secret", "s2") == "s1"
    store.set_meta("secret", "s3")
    store.set_meta("other", "o")
    assert (store.get_meta("secret"), store.get_meta("other")) == ("s3", "o")
