"""The store's schema on SQLite and PostgreSQL: migrations, the pinned schema, engine setup.

Migrations are frozen SQL files (digest/store/migrations/); the tables of digest/store/schema.py
must describe what they create, and a database upgraded step by step must equal a fresh one.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, insert, inspect, select, text

from digest.errors import StoreError
from digest.models import StatusChange, SubscriberStatus, paper_key
from digest.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Migration,
    Store,
    deliveries,
    digests,
    dumps,
    metadata,
    migrate,
    papers,
    schema_version,
    sightings,
    subscribers,
    topics,
)
from digest.store.migrate import current_version

T0 = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PINNED = FIXTURES / "schema_latest.sqlite.sql"
MIGRATION_DIR = resources.files("digest.store") / "migrations"

# Released migration files never change (a database that ran one would not see an edit): their
# hashes are pinned here. UPDATE_SCHEMA=1 adds the hashes of new files, never changes old ones.
HASHES = FIXTURES / "migrations.sha256"


def sha(n: int) -> str:
    return f"{n:064x}"


def schema_of(engine: Any) -> dict[str, Any]:
    """What a database's tables look like, as the inspector reflects them (both engines)."""
    found = inspect(engine)
    out: dict[str, Any] = {}
    for name in sorted(found.get_table_names()):
        if name.startswith("apscheduler"):
            continue  # the scheduler's own job table, created by APScheduler
        out[name] = {
            # By name: ALTER TABLE appends columns, a table definition may list them anywhere.
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in found.get_columns(name)
            ),
            "primary key": found.get_pk_constraint(name)["constrained_columns"],
            "foreign keys": sorted(
                (
                    tuple(f["constrained_columns"]),
                    f["referred_table"],
                    tuple(f["referred_columns"]),
                    str(f.get("options", {}).get("ondelete")),
                )
                for f in found.get_foreign_keys(name)
            ),
            "indexes": sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    _options(i),
                )
                for i in found.get_indexes(name)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in found.get_unique_constraints(name)),
            "checks": sorted(
                (c["name"], " ".join(c["sqltext"].split()))
                for c in found.get_check_constraints(name)
            ),
        }
    return out


def _options(index: Any) -> str:
    """An index's dialect options (a partial index's WHERE) as text."""
    options = index.get("dialect_options") or {}
    return repr(sorted((k, " ".join(str(v).split())) for k, v in options.items()))


def schema_of_url(url: str) -> dict[str, Any]:
    engine = create_engine(url)
    try:
        return schema_of(engine)
    finally:
        engine.dispose()


# --- migrations ---------------------------------------------------------------------------------


def test_open_migrates_once_and_reopen_is_a_no_op(store_url: str) -> None:
    with Store.open(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.migrate() == []
    with Store.open(store_url) as store:
        assert store.migrate() == []
        with store.engine.connect() as conn:
            versions = conn.execute(select(schema_version.c.version)).scalars().all()
        assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_tables_describe_what_the_migrations_create(store_url: str, other_store_url: str) -> None:
    """The SQLAlchemy tables queries use agree with the migrated database: a table or column
    changed in digest/store/schema.py without a migration (or the reverse) fails here."""
    with Store.open(store_url):
        migrated = schema_of_url(store_url)
    engine = create_engine(other_store_url)
    try:
        metadata.create_all(engine)
        described = schema_of(engine)
    finally:
        engine.dispose()
    assert set(migrated) == set(described)
    for name in migrated:
        assert migrated[name] == described[name], name


def test_migration_files_are_listed_and_frozen() -> None:
    """Every file of the migrations folder is a step (one file for both engines or one per
    engine), and released files keep their content: change the schema by adding a step."""
    names = sorted(p.name for p in MIGRATION_DIR.iterdir() if p.name.endswith(".sql"))
    used = sorted({name for m in MIGRATIONS for name in m.files().values()})
    assert names == used
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    now = {name: hashlib.sha256((MIGRATION_DIR / name).read_bytes()).hexdigest() for name in names}
    pinned = dict(
        reversed(line.split()) for line in HASHES.read_text(encoding="utf-8").splitlines() if line
    )
    changed = sorted(n for n in pinned if now.get(n) != pinned[n])
    assert changed == [], f"released migrations changed or removed: {changed}; add a new one"
    new = sorted(set(now) - set(pinned))
    if new and os.environ.get("UPDATE_SCHEMA") == "1":
        with HASHES.open("a", encoding="utf-8") as out:
            out.writelines(f"{now[n]}  {n}\n" for n in new)
        new = []
    assert new == [], f"new migration files {new}: pin them with UPDATE_SCHEMA=1"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"0001_a.sql": "-- Migration 1: a\n", "0003_c.sql": "-- Migration 3: c\n"}, "numbered"),
        ({"0001_a.sqlite.sql": "-- Migration 1: a\n"}, "no SQL for postgresql"),
        ({"0001_a.sql": "CREATE TABLE a (x INTEGER);\n"}, "first line"),
        ({"0001_a.sql": "-- Migration 1: a\n", "0001_b.sql": "-- Migration 1: b\n"}, "several"),
    ],
)
def test_inconsistent_migration_files_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], message: str
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    monkeypatch.setattr(migrate, "_FOLDER", tmp_path)
    with pytest.raises(StoreError, match=message):
        migrate._discover()


def test_one_file_serves_both_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "0001_a.sqlite.sql").write_text("-- Migration 1: a.\nSELECT 1;\n")
    (tmp_path / "0001_a.postgresql.sql").write_text("-- Migration 1: a.\nSELECT 2;\n")
    (tmp_path / "0002_b.sql").write_text("-- Migration 2: add b\nCREATE TABLE b (x TEXT);\n")
    monkeypatch.setattr(migrate, "_FOLDER", tmp_path)
    one, two = migrate._discover()
    assert (one.description, two.description) == ("a", "add b")
    assert [one.statements(d) for d in migrate.DIALECTS] == [["SELECT 1"], ["SELECT 2"]]
    assert two.statements("sqlite") == two.statements("postgresql") == ["CREATE TABLE b (x TEXT)"]


def test_the_latest_schema_is_pinned(tmp_path: Path) -> None:
    """The schema a new database gets, as SQLite keeps it; re-pin with UPDATE_SCHEMA=1 after
    adding a migration (and review the diff)."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with Store.open(url) as store, store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
            "ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, name"
        ).all()
    blocks = [f"-- The schema of a new database at version {SCHEMA_VERSION} (SQLite)."]
    blocks += [f"{sql.strip()};" for _type, _name, sql in rows]
    text_now = "\n\n".join(blocks) + "\n"
    if os.environ.get("UPDATE_SCHEMA") == "1":
        PINNED.write_text(text_now, encoding="utf-8")
    assert PINNED.exists(), "pinned schema missing: run with UPDATE_SCHEMA=1 and review it"
    assert text_now == PINNED.read_text(encoding="utf-8"), (
        "the schema changed: if a new migration intends it, rerun with UPDATE_SCHEMA=1 and "
        "review the diff"
    )


def test_migration_statements_split_at_line_ending_semicolons() -> None:
    step = Migration(9, "test", "0001_initial")
    statements = step.statements("sqlite")
    assert all(not s.startswith("--") and not s.endswith(";") for s in statements)
    assert sum(s.startswith("CREATE TABLE") for s in statements) == 8
    assert sum(s.startswith(("CREATE INDEX", "CREATE UNIQUE INDEX")) for s in statements) == 11
    with pytest.raises(StoreError, match="no migrations for the mysql engine"):
        step.sql("mysql")


def _fill_v1(store: Store) -> dict[str, int]:
    """Data in every v1 table, written with raw inserts of v1 columns only (the store's methods
    use the latest schema)."""
    with store.engine.begin() as conn:
        dump_id = conn.execute(
            insert(dumps).values(
                name="d1", sha256=sha(1), size=10, received_at=T0, status="stored", papers=2,
                new_papers=2, layout="test",
            )
        ).inserted_primary_key[0]  # fmt: skip
        paper_ids = [
            conn.execute(
                insert(papers).values(
                    key=paper_key(title),
                    title=title,
                    abstract="a",
                    upvotes=3,
                    first_seen=T0,
                    first_dump_id=dump_id,
                    updated_at=T0,
                )
            ).inserted_primary_key[0]
            for title in ("Alpha", "Beta")
        ]
        conn.execute(
            insert(sightings),
            [{"paper_id": p, "dump_id": dump_id, "upvotes": 3} for p in paper_ids],
        )
        paper_id = paper_ids[0]
        sid = conn.execute(
            insert(subscribers).values(
                email="old@example.org", name="Old", status="active", cadence="daily",
                time="07:00", tz="UTC", created_at=T0, token="t" * 32, updated_at=T0,
            )
        ).inserted_primary_key[0]  # fmt: skip
        conn.execute(
            insert(topics),
            [
                {"subscriber_id": sid, "position": 0, "name": "Speed", "query": "fast"},
                {"subscriber_id": sid, "position": 1, "name": "Size", "query": "small"},
            ],
        )
        did = conn.execute(
            insert(digests).values(
                subscriber_id=sid, kind="email", message_id="<1@x>", status="sent",
                created_at=T0, sent_at=T0, attempts=1,
            )
        ).inserted_primary_key[0]  # fmt: skip
        conn.execute(
            insert(deliveries).values(
                subscriber_id=sid, paper_id=paper_id, digest_id=did, topic="Speed",
                delivered_at=T0, topics='["Speed"]', terms='["fast"]', score=2.5,
            )
        )  # fmt: skip
    store.set_meta("secret", "s")
    return {"subscriber": sid, "digest": did, "paper": paper_id}


def test_a_v1_database_with_data_upgrades_to_the_latest(
    store_url: str, other_store_url: str
) -> None:
    with Store.open(store_url, migrate=False) as store:
        assert store.migrate(target=1) == [1]
        ids = _fill_v1(store)
        found = inspect(store.engine).get_table_names()
        assert "subscriber_events" not in found and "feedback" not in found
    with Store.open(store_url) as store:  # opening upgrades
        assert store.schema_version() == SCHEMA_VERSION
        assert store.count_papers() == 2
        assert [h.upvotes for h in store.upvote_history(ids["paper"])] == [3]
        sub = store.subscriber_by_email("old@example.org")
        assert sub is not None and sub.id == ids["subscriber"]
        assert [t.name for t in sub.topics] == ["Speed", "Size"]
        record = store.digest_record(ids["digest"])
        assert [e.item.terms for e in record.items] == [("fast",)]
        assert [h.message_id for h in store.subscriber_history(sub.id)] == ["<1@x>"]
        assert store.get_meta("secret") == "s"
        assert store.subscriber_events(sub.id) == []  # no history from before v2
        store.set_subscriber_status(sub.id, SubscriberStatus.PAUSED, how=StatusChange.CLI)
        assert [e.new_status for e in store.subscriber_events(sub.id)] == ["paused"]
    with Store.open(other_store_url):
        fresh = schema_of_url(other_store_url)
    assert schema_of_url(store_url) == fresh


def test_a_failing_migration_leaves_the_previous_version(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The steps run in one transaction: a step failing half-way leaves no trace of itself."""
    with Store.open(store_url, migrate=False) as store:
        store.migrate(target=1)
    before = schema_of_url(store_url)
    real = Migration.statements

    def broken(self: Migration, dialect: str) -> list[str]:
        found = real(self, dialect)
        last = self.version == SCHEMA_VERSION
        return [*found, "CREATE TABLE broken (x NOSUCHTYPE("] if last else found

    monkeypatch.setattr(Migration, "statements", broken)
    with pytest.raises(StoreError):
        Store.open(store_url)
    monkeypatch.setattr(Migration, "statements", real)
    assert schema_of_url(store_url) == before
    with Store.open(store_url, migrate=False) as store:
        assert store.schema_version() == 1
        assert store.migrate() == list(range(2, SCHEMA_VERSION + 1))


def test_a_newer_schema_is_refused(store_url: str) -> None:
    with Store.open(store_url) as store, store.engine.begin() as conn:
        conn.execute(
            insert(schema_version).values(version=999, description="future", applied_at=T0)
        )
    with pytest.raises(StoreError, match="newer than this digest"):
        Store.open(store_url)


def test_engine_fixture_sanity(tmp_path: Path) -> None:
    """A database not made by Store.open has no schema_version until migrated."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    create_engine(url).dispose()
    with Store.open(url, migrate=False) as store:
        assert store.schema_version() == 0
        with store.engine.connect() as conn:
            assert current_version(conn) == 0
        assert store.migrate() == list(range(1, SCHEMA_VERSION + 1))


# --- engines ------------------------------------------------------------------------------------


def test_bad_urls_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="only sqlite and postgresql"):
        Store.open("mysql://localhost/x")
    with pytest.raises(StoreError, match="not valid"):
        Store.open("::nonsense::")


def test_unreachable_postgresql_names_the_url_without_password() -> None:
    with pytest.raises(StoreError) as caught:
        Store.open("postgresql+psycopg://u:secret@127.0.0.1:1/none?connect_timeout=2")
    assert "127.0.0.1:1" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'd.db'}"
    with Store.open(url) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_foreign_keys_are_enforced_and_topics_cascade(store: Store) -> None:
    row = {
        "email": "a@example.org",
        "name": "A",
        "status": "active",
        "cadence": "daily",
        "time": "07:00",
        "tz": "UTC",
        "created_at": T0,
        "token": "t" * 32,
        "updated_at": T0,
    }
    with store.engine.begin() as conn:
        sid = conn.execute(insert(subscribers).values(**row)).inserted_primary_key[0]
        conn.execute(insert(topics).values(subscriber_id=sid, position=0, name="x", query="y"))
    with store.engine.begin() as conn:
        conn.execute(delete(subscribers).where(subscribers.c.id == sid))
        assert conn.execute(select(topics)).all() == []
    with pytest.raises(Exception, match=r"(?i)foreign key"), store.engine.begin() as conn:
        conn.execute(insert(topics).values(subscriber_id=12345, position=0, name="x", query="y"))


def test_check_constraints_reject_unknown_statuses(store: Store) -> None:
    with pytest.raises(Exception, match=r"(?i)check"), store.engine.begin() as conn:
        conn.execute(
            insert(dumps).values(
                name="x", sha256=sha(1), size=1, received_at=T0, status="weird", papers=0
            )
        )


@pytest.mark.postgres
def test_store_works_with_a_plain_postgresql_url(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with Store.open(plain) as store:
        assert store.dialect == "postgresql"
        assert store.schema_version() == SCHEMA_VERSION
        with store.engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1


def test_no_sql_outside_the_store_package() -> None:
    """SQL stays in digest/store/: no other module of digest imports sqlalchemy's query API."""
    root = Path(__file__).resolve().parents[1] / "digest"
    allowed = re.compile(r"^from sqlalchemy\.(exc|engine) import (SQLAlchemyError|make_url)$")
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if "store" in path.relative_to(root).parts[:1]:
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            if stripped.startswith(("import sqlalchemy", "from sqlalchemy")) and not allowed.match(
                stripped
            ):
                offenders.append(f"{path.relative_to(root)}: {stripped}")
    assert offenders == []


@pytest.mark.parametrize("count", [0, 1, 110, 111, 112, 222, 223, 250])
def test_insert_many_writes_every_row_once_in_order(store: Store, count: int) -> None:
    """Rows split into multi-row statements at SQLite's old parameter limit (111 rows of 9
    columns a statement) all arrive, once each and in order, whatever is left at the end."""
    import sqlite3

    from digest.store.base import SQLITE_MAX_PARAMS, insert_many

    columns = tuple(f"c{k}" for k in range(9))
    assert SQLITE_MAX_PARAMS // len(columns) == 111  # the counts above straddle it
    # descending keys, so the table's insertion order (rowid) is not the keys' order
    rows = [(count - n, *(f"{n}:{k}" for k in range(1, 8)), None) for n in range(count)]
    texts = ", ".join(f"{c} TEXT" for c in columns[1:])
    with store.engine.begin() as conn:
        raw = conn.connection.dbapi_connection
        if isinstance(raw, sqlite3.Connection):  # a build with the old limit, whatever ours is
            limit = raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, SQLITE_MAX_PARAMS)
        conn.execute(text(f"CREATE TABLE many (n SERIAL, c0 INTEGER, {texts})"
                          if store.dialect == "postgresql" else
                          f"CREATE TABLE many (c0 INTEGER, {texts})"))  # fmt: skip
        try:
            insert_many(conn, "many", columns, rows)
            order = "n" if store.dialect == "postgresql" else "rowid"
            back = [
                tuple(r)
                for r in conn.execute(
                    text(f"SELECT {', '.join(columns)} FROM many ORDER BY {order}")
                )
            ]
        finally:
            conn.execute(text("DROP TABLE many"))
            if isinstance(raw, sqlite3.Connection):
                raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    assert back == rows


def test_insert_many_refuses_a_row_of_another_width(store: Store) -> None:
    """Rows are flattened into one statement's parameters: two rows of 8 and 10 values would
    otherwise shift every value after them into the wrong column, silently."""
    from digest.store.base import insert_many

    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE many (a INTEGER, b INTEGER, c INTEGER)"))
        with pytest.raises(ValueError, match="3 columns"):
            insert_many(conn, "many", ("a", "b", "c"), [(1, 2), (3, 4, 5, 6)])
        conn.execute(text("DROP TABLE many"))
