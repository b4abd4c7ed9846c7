"""Dumps and papers: ingesting a parsed dump in one transaction, and reading papers back.

A paper's identity is its key (models.paper_key); a dump seen again is recorded as a duplicate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from digest.errors import StoreError
from digest.models import Paper, ParseResult, StoredPaper
from digest.store.base import PG_LOCK_INGEST, StoreBase, chunks, inserted_id, utc
from digest.store.records import DumpRecord, IngestOutcome, RisingRule, Sighting
from digest.store.schema import UtcDateTime, in_list, metadata

DUMP_STATUSES = ("stored", "failed", "duplicate")

dumps = Table(
    "dumps",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("papers", Integer, nullable=False, server_default="0"),
    Column("new_papers", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("layout", Text),
    Column("captured_on", Date),
    CheckConstraint(f"status IN ({in_list(DUMP_STATUSES)})", name="ck_dumps_status"),
)
# One *stored* dump per content; failed attempts and duplicates are recorded beside it.
Index(
    "ux_dumps_sha256_stored",
    dumps.c.sha256,
    unique=True,
    sqlite_where=dumps.c.status == "stored",
    postgresql_where=dumps.c.status == "stored",
)
Index("ix_dumps_sha256", dumps.c.sha256)
Index("ix_dumps_received_at", dumps.c.received_at)

papers = Table(
    "papers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("title", Text, nullable=False),
    Column("abstract", Text, nullable=False),
    Column("authors", Integer),
    Column("organization", Text),
    Column("organization_id", Text),
    Column("published", Date),
    Column("upvotes", Integer),
    Column("first_seen", UtcDateTime, nullable=False),
    Column("first_dump_id", Integer, ForeignKey("dumps.id"), nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
Index("ix_papers_first_seen", papers.c.first_seen)

sightings = Table(
    "sightings",
    metadata,
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    Column("dump_id", Integer, ForeignKey("dumps.id"), primary_key=True),
    Column("upvotes", Integer),
)
Index("ix_sightings_dump_id", sightings.c.dump_id)


# The facts of a paper beyond its identity (title, abstract): a later dump may change them, and the
# latest known value is kept. Every field of models.Paper is a column of the papers table.
_PAPER_FACTS = tuple(f.name for f in fields(Paper) if f.name not in ("title", "abstract", "line"))
_STORED_FIELDS = tuple(f.name for f in fields(StoredPaper))


def _known(value: Any) -> bool:
    return value is not None and value != ""


def _merge_by_key(found: Iterable[Paper]) -> dict[str, Paper]:
    """One record per key in dump order: first title and abstract, later known facts win."""
    merged: dict[str, Paper] = {}
    for paper in found:
        key = paper.key
        old = merged.get(key)
        if old is None:
            merged[key] = paper
            continue
        merged[key] = Paper(
            title=old.title,
            abstract=old.abstract or paper.abstract,
            line=old.line,
            **{
                f: getattr(paper, f) if _known(getattr(paper, f)) else getattr(old, f)
                for f in _PAPER_FACTS
            },
        )
    return merged


def stored_paper(row: Any) -> StoredPaper:
    """A StoredPaper from a row holding the papers table's columns."""
    return StoredPaper(**{name: getattr(row, name) for name in _STORED_FIELDS})


def dump_record(row: Any) -> DumpRecord:
    """A DumpRecord from a row of the dumps table."""
    return DumpRecord(**{name: getattr(row, name) for name in DumpRecord.__dataclass_fields__})


class PaperStore(StoreBase):
    """Dumps, papers and sightings (the upvotes each dump showed)."""

    def ingest_dump(
        self,
        name: str,
        sha256: str,
        size: int,
        result: ParseResult,
        *,
        received_at: datetime,
        rising: RisingRule | None = None,
    ) -> IngestOutcome:
        """Store one parsed dump in one transaction; the same content again is a recorded no-op.

        With `rising`, the upvote jumps of known papers are recorded in the same transaction."""
        received_at = utc(received_at)
        merged = _merge_by_key(result.papers)
        try:
            with self._write() as conn:
                self._lock(conn, PG_LOCK_INGEST)
                earlier = self._stored_dump_id(conn, sha256)
                if earlier is not None:
                    return self._insert_duplicate(conn, name, sha256, size, received_at, earlier)
                dump_id = inserted_id(
                    conn,
                    insert(dumps).values(
                        name=name,
                        sha256=sha256,
                        size=size,
                        received_at=received_at,
                        status="stored",
                        papers=len(merged),
                        new_papers=0,
                        layout=result.layout or None,
                        captured_on=result.capture_date,
                    ),
                )
                new_count = self._upsert_papers(conn, dump_id, merged, received_at, rising)
                conn.execute(
                    update(dumps).where(dumps.c.id == dump_id).values(new_papers=new_count)
                )
                return IngestOutcome(dump_id, "stored", len(merged), new_count)
        except IntegrityError:
            # Another process stored the same content between our check and our insert.
            with self._write() as conn:
                earlier = self._stored_dump_id(conn, sha256)
                if earlier is None:
                    raise
                return self._insert_duplicate(conn, name, sha256, size, received_at, earlier)

    def _stored_dump_id(self, conn: Connection, sha256: str) -> int | None:
        return conn.scalar(
            select(dumps.c.id).where(dumps.c.sha256 == sha256, dumps.c.status == "stored")
        )

    def _insert_duplicate(
        self,
        conn: Connection,
        name: str,
        sha256: str,
        size: int,
        received_at: datetime,
        earlier: int,
    ) -> IngestOutcome:
        dump_id = inserted_id(
            conn,
            insert(dumps).values(
                name=name,
                sha256=sha256,
                size=size,
                received_at=received_at,
                status="duplicate",
                papers=0,
                new_papers=0,
                error=f"same content as dump {earlier}",
            ),
        )
        return IngestOutcome(dump_id, "duplicate", 0, 0, duplicate_of=earlier)

    def _upsert_papers(
        self,
        conn: Connection,
        dump_id: int,
        merged: dict[str, Paper],
        now: datetime,
        rising: RisingRule | None = None,
    ) -> int:
        """Insert new papers, update the changing facts of known ones, add the sightings."""
        keys = list(merged)
        existing: dict[str, Any] = {}
        cols = [papers.c.id, papers.c.key, papers.c.abstract, *(papers.c[f] for f in _PAPER_FACTS)]
        for chunk in chunks(keys):
            for row in conn.execute(select(*cols).where(papers.c.key.in_(chunk))):
                existing[row.key] = row
        ids: dict[str, int] = {k: row.id for k, row in existing.items()}

        fresh = [
            {
                "key": key,
                "title": p.title,
                "abstract": p.abstract,
                **{f: getattr(p, f) for f in _PAPER_FACTS},
                "first_seen": now,
                "first_dump_id": dump_id,
                "updated_at": now,
            }
            for key, p in merged.items()
            if key not in existing
        ]
        if fresh:
            # RETURNING gives (id, key) pairs, so row order does not matter (and batches stay big).
            stmt = insert(papers).returning(papers.c.id, papers.c.key)
            for row in conn.execute(stmt, fresh):
                ids[row.key] = row.id

        changes = []
        mended: list[dict[str, Any]] = []
        jumps: list[tuple[int, int, int]] = []
        for key, row in existing.items():
            p = merged[key]
            if len(p.abstract) > len(row.abstract) and p.abstract.startswith(row.abstract):
                # The stored abstract is the start of this one: stored from a dump cut off
                # inside it (the parser warns of that); a complete dump mends it.
                mended.append({"b_id": row.id, "b_now": now, "b_abstract": p.abstract})
            if rising is not None and rising.jumped(row.upvotes, p.upvotes):
                assert p.upvotes is not None and row.upvotes is not None  # jumped() checked
                jumps.append((row.id, row.upvotes, p.upvotes))
            values = {f: getattr(p, f) for f in _PAPER_FACTS}
            new = {f: (values[f] if values[f] is not None else getattr(row, f)) for f in values}
            if any(new[f] != getattr(row, f) for f in new):
                changes.append(
                    {"b_id": row.id, "b_now": now, **{f"b_{f}": v for f, v in new.items()}}
                )
        if changes:
            conn.execute(
                update(papers)
                .where(papers.c.id == bindparam("b_id"))
                .values(
                    updated_at=bindparam("b_now"),
                    **{f: bindparam(f"b_{f}") for f in _PAPER_FACTS},
                ),
                changes,
            )
        if mended:
            conn.execute(
                update(papers)
                .where(papers.c.id == bindparam("b_id"))
                .values(updated_at=bindparam("b_now"), abstract=bindparam("b_abstract")),
                mended,
            )
        if jumps:
            from digest.store.rising import record_jumps  # rising.py reads this module's tables

            record_jumps(conn, dump_id, jumps, now)

        conn.execute(
            insert(sightings),
            [
                {"paper_id": ids[key], "dump_id": dump_id, "upvotes": p.upvotes}
                for key, p in merged.items()
            ],
        )
        return len(fresh)

    def record_failed_dump(
        self, name: str, sha256: str, size: int, error: str, received_at: datetime
    ) -> int:
        """Record a dump that could not be stored, with why; returns its dumps row id."""
        with self._write() as conn:
            return inserted_id(
                conn,
                insert(dumps).values(
                    name=name,
                    sha256=sha256,
                    size=size,
                    received_at=utc(received_at),
                    status="failed",
                    papers=0,
                    new_papers=0,
                    error=error,
                ),
            )

    def record_duplicate_dump(
        self, name: str, sha256: str, size: int, received_at: datetime
    ) -> IngestOutcome:
        """Record that content already stored arrived again (without parsing it again)."""
        with self._write() as conn:
            self._lock(conn, PG_LOCK_INGEST)
            earlier = self._stored_dump_id(conn, sha256)
            if earlier is None:
                raise StoreError(f"dump {name}: no stored dump has sha256 {sha256}")
            return self._insert_duplicate(conn, name, sha256, size, utc(received_at), earlier)

    def dump_by_sha256(self, sha256: str) -> DumpRecord | None:
        """The stored dump with this content if any, else the latest attempt with it, else None."""
        order = (dumps.c.status == "stored").desc(), dumps.c.id.desc()
        with self._read() as conn:
            row = conn.execute(
                select(dumps).where(dumps.c.sha256 == sha256).order_by(*order).limit(1)
            ).first()
        return dump_record(row) if row else None

    def recent_dumps(self, limit: int = 20) -> list[DumpRecord]:
        """The latest dumps received, newest first, whatever became of them."""
        with self._read() as conn:
            rows = conn.execute(select(dumps).order_by(dumps.c.id.desc()).limit(limit))
            return [dump_record(r) for r in rows]

    def count_papers(self) -> int:
        """How many distinct papers are stored."""
        with self._read() as conn:
            return conn.scalar(select(func.count()).select_from(papers)) or 0

    def max_paper_id(self) -> int:
        """The highest paper id stored (0 when there is none): the watermark of a new subscriber."""
        with self._read() as conn:
            return conn.scalar(select(func.max(papers.c.id))) or 0

    def newest_paper_seen_at(self) -> datetime | None:
        """When the newest paper was first stored (None before the first): the health check's
        "nothing ingested for days"."""
        with self._read() as conn:
            return conn.scalar(select(func.max(papers.c.first_seen)))

    def papers_first_seen_since(self, ts: datetime) -> list[StoredPaper]:
        """Papers first stored at or after `ts`, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(papers)
                .where(papers.c.first_seen >= utc(ts))
                .order_by(papers.c.first_seen, papers.c.id)
            )
            return [stored_paper(r) for r in rows]

    def recent_papers(self, limit: int = 100) -> list[StoredPaper]:
        """The most recently first-stored papers, newest first."""
        with self._read() as conn:
            rows = conn.execute(
                select(papers).order_by(papers.c.first_seen.desc(), papers.c.id.desc()).limit(limit)
            )
            return [stored_paper(r) for r in rows]

    def papers_after(self, paper_id: int) -> list[StoredPaper]:
        """Papers with an id above `paper_id` (stored after that one), oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(papers).where(papers.c.id > paper_id).order_by(papers.c.id))
            return [stored_paper(r) for r in rows]

    def papers_by_ids(self, ids: Iterable[int]) -> dict[int, StoredPaper]:
        """The stored papers with these ids, by id (unknown ids are absent)."""
        wanted = sorted(set(ids))
        found: dict[int, StoredPaper] = {}
        with self._read() as conn:
            for chunk in chunks(wanted):
                for row in conn.execute(select(papers).where(papers.c.id.in_(chunk))):
                    found[row.id] = stored_paper(row)
        return found

    def paper_by_key(self, key: str) -> StoredPaper | None:
        """The stored paper with this identity key (see models.paper_key), if any."""
        with self._read() as conn:
            row = conn.execute(select(papers).where(papers.c.key == key)).first()
        return stored_paper(row) if row else None

    def upvote_history(self, paper_id: int) -> list[Sighting]:
        """Every dump that showed this paper, oldest first, with the upvotes it showed."""
        with self._read() as conn:
            rows = conn.execute(
                select(sightings.c.dump_id, dumps.c.name, dumps.c.received_at, sightings.c.upvotes)
                .join(dumps, dumps.c.id == sightings.c.dump_id)
                .where(sightings.c.paper_id == paper_id)
                .order_by(dumps.c.received_at, dumps.c.id)
            )
            return [Sighting(r.dump_id, r.name, r.received_at, r.upvotes) for r in rows]

    def papers_of_recent_dumps(self, dumps_count: int) -> list[StoredPaper]:
        """Every paper seen in the latest `dumps_count` stored dumps, newest first seen first."""
        with self._read() as conn:
            recent = (
                select(dumps.c.id)
                .where(dumps.c.status == "stored")
                .order_by(dumps.c.id.desc())
                .limit(dumps_count)
                .subquery()
            )
            seen = select(sightings.c.paper_id).where(sightings.c.dump_id.in_(select(recent.c.id)))
            rows = conn.execute(
                select(papers)
                .where(papers.c.id.in_(seen))
                .order_by(papers.c.first_seen.desc(), papers.c.id.desc())
            )
            return [stored_paper(r) for r in rows]
