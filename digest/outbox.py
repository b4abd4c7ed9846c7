"""The send ledger: record each digest before sending it, then claim, send and mark it.

Recording a digest writes its papers to the delivery ledger, its Message-ID and status `queued` in
one transaction, so a paper is never put in two digests for one subscriber. A sender then claims
digests (a lease), sends them and marks them sent. After a crash nothing is skipped and nothing
marked sent is sent again: only a digest whose claim expired mid-send is sent once more, under the
same Message-ID, so receivers recognise the repeat.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from digest.config import Settings
from digest.errors import DigestError, QueryError, RenderError
from digest.gcutil import gc_paused
from digest.highlight import highlight_spans
from digest.mail import (
    PermanentDeliveryError,
    ServerUnavailable,
    TemporaryDeliveryError,
    make_message_id,
)
from digest.models import (
    Cadence,
    Digest,
    DigestItem,
    DigestKind,
    Match,
    StoredPaper,
    Subscriber,
    Topic,
)
from digest.query import Query, compile_query
from digest.schedule import latest_slot, next_slot
from digest.store import DeliveryState, DigestRecord, LedgerItem, PlanProgress, Store

if TYPE_CHECKING:
    from digest.match import MatchList, PaperIndex
    from digest.rank import Learner, RankedList

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The real clock; everything that schedules takes a clock so tests can control time."""
    return datetime.now(UTC)


@dataclass
class QueueReport:
    """What one queueing pass decided."""

    due: int = 0
    queued: int = 0
    feed_items: int = 0
    papers: int = 0
    queued_papers: int = 0  # papers in the queued email digests
    # planned digests dropped at recording: another pass (a concurrent send) recorded them
    # first, or their subscribers paused or left meanwhile
    dropped: int = 0

    def summary(self) -> str:
        text = (
            f"{self.due} subscribers due, {self.queued} digests queued, "
            f"{self.feed_items} feed items recorded, {self.papers} candidate papers"
        )
        if self.dropped:
            text += (f", {self.dropped} dropped (recorded by another pass, or the subscriber "
                     "paused or left, meanwhile)")  # fmt: skip
        return text


@dataclass(frozen=True, slots=True)
class Plan:
    """What one due subscriber gets now: their new matches (maybe none) and their progress."""

    state: DeliveryState
    items: list[LedgerItem]
    watermark: int
    slot: datetime
    extra: list[LedgerItem] = field(default_factory=list)  # matched, left out by the cap
    matched: int | None = None  # how many pending papers matched (None: not capped)

    @property
    def kind(self) -> DigestKind:
        return self.state.subscriber.cadence.digest_kind

    def progress(self) -> PlanProgress:
        """What `Store.record_plans` takes: who, what, and when they are next due."""
        sub = self.state.subscriber
        upcoming = _next_slot(sub, self.slot) if sub.cadence.is_scheduled else None
        return PlanProgress(
            sub.id, self.kind, self.items, self.watermark, self.slot, upcoming,
            was_watermark=self.state.watermark, was_slot=self.state.last_slot,
            extra=self.extra, matched=self.matched,
        )  # fmt: skip


def plan_digests(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    force: bool = False,
    only: Sequence[int] | None = None,
) -> tuple[list[Plan], dict[int, StoredPaper]]:
    """Match every due subscriber's profile against their pending papers, recording nothing.

    Pending: stored after the subscriber's watermark, first seen at or after their `since`, and
    not in their ledger. All profiles are matched against the batch at once.
    """
    states, _ = _due_states(store, now=now, force=force, only=only)
    if not states:
        return [], {}
    papers = store.papers_after(min(s.watermark for s in states))
    index = _paper_index(papers)
    by_id = {p.id: p for p in papers}
    return _plan_states(store, settings, states, papers, by_id, index, now), by_id


def _paper_index(papers: Sequence[StoredPaper]) -> PaperIndex | None:
    """The matching index of the pending papers, None when there are none."""
    # Imported here, not at the top: the matching engine loads numpy and numba (~120 MB),
    # which a send worker (deliver_queued only) never needs.
    from digest.match import PaperIndex

    return PaperIndex(papers) if papers else None


def _due_states(
    store: Store,
    *,
    now: datetime,
    force: bool,
    only: Sequence[int] | None = None,
    cadences: Sequence[Cadence] | None = None,
    after_id: int = 0,
    limit: int | None = None,
) -> tuple[list[DeliveryState], int | None]:
    """Who is due now (everyone with news when `force`), from one page of subscribers; and the
    page's last id (None when the page is empty: no more subscribers)."""
    page = store.subscribers_for_delivery(
        due_at=None if force else now, after_id=after_id, limit=limit, cadences=cadences, ids=only
    )
    states = [s for s in page if force or _is_due(s.subscriber, now, s.last_slot)]
    return states, page[-1].subscriber.id if page else None


# A subscriber's slots depend on their schedule alone (cadence, time, zone, weekday), which a
# page of thousands of subscribers shares among a few: each is worked out once per instant
# (profiled at 100k subscribers: two slots per subscriber were a twentieth of the queue stage).
_SLOTS: dict[tuple[Any, ...], datetime] = {}
_SLOTS_MAX = 1 << 14


def _cached_slot(sub: Subscriber, now: datetime, after: bool) -> datetime:
    """next_slot (after) or latest_slot of the subscriber, shared by identical schedules."""
    key = (sub.cadence, sub.time, sub.tz, sub.weekday, now, after)
    got = _SLOTS.get(key)
    if got is None:
        if len(_SLOTS) >= _SLOTS_MAX:
            _SLOTS.clear()
        got = _SLOTS[key] = next_slot(sub, now) if after else latest_slot(sub, now)
    return got


def _latest_slot(sub: Subscriber, now: datetime) -> datetime:
    return _cached_slot(sub, now, False) if sub.cadence.is_scheduled else now


def _next_slot(sub: Subscriber, now: datetime) -> datetime:
    return _cached_slot(sub, now, True)


def _is_due(sub: Subscriber, now: datetime, last_slot: datetime | None) -> bool:
    """schedule.is_due, with the slot shared by identical schedules."""
    if not sub.status.receives_mail:
        return False
    if not sub.cadence.is_scheduled:
        return True
    return _latest_slot(sub, now) > (last_slot or sub.created_at)


def _plan_states(
    store: Store,
    settings: Settings,
    states: Sequence[DeliveryState],
    papers: Sequence[StoredPaper],
    by_id: dict[int, StoredPaper],
    index: PaperIndex | None,
    now: datetime,
    learners: Learners | None = None,
) -> list[Plan]:
    from digest.rank import rank_profiles  # see _paper_index

    top = papers[-1].id if papers else 0
    profiles = {s.subscriber.id: s.subscriber.topics for s in states if s.subscriber.topics}
    learner = (learners or Learners(store, index)).for_profiles(profiles)
    # Only each subscriber's best 2 x max_papers are ranked (exact top-k); the lists whose head
    # is filtered out below (older or delivered papers) are ranked in full afterwards, together.
    limit, most = 2 * settings.mail.max_papers, settings.mail.max_papers
    results: Mapping[int, Any] = (
        rank_profiles(index, profiles, limit=limit, learner=learner)
        if index is not None and profiles
        else {}
    )
    # One ledger read for the whole batch, of the rows a plan can meet: a paper at or below a
    # subscriber's watermark is never taken, so only delivered papers above it are looked up.
    # (Reading per subscriber whose list was cut, over the whole ranking, made one backfilled
    # subscriber, whose old watermark widens everyone's index, slow planning for all: see
    # bench/backfill.py.)
    marks = {s.subscriber.id: s.watermark for s in states if s.subscriber.id in results}
    delivered = store.delivered_above(marks) if marks else set()
    picked: dict[int, list[LedgerItem]] = {}
    # A capped digest's web page lists every match: the pending matches past the cap are
    # kept too (`extra`, at most EXTRA_MAX) and counted (`matched`, the "N of M" of the email).
    extras: dict[int, list[LedgerItem]] = {}
    beyond: dict[int, int] = {}  # pending matches past the cap and past EXTRA_MAX
    resume: dict[int, int] = {}  # subscriber id -> rank where their cut list ran out
    shared: Shared = {}
    for s in states:
        found = results.get(s.subscriber.id)
        if found is None:
            continue
        sid = s.subscriber.id
        items = picked[sid] = []
        extra = extras[sid] = []
        rank = _pick(s, found, 0, items, most, by_id, delivered, shared)
        if len(items) == most:
            rank, beyond[sid] = _pick_extra(s, found, rank, extra, by_id, delivered, shared)
        if found.cut:
            resume[sid] = rank
    if resume:
        assert index is not None  # results come from the index
        # The whole ranking of every list that ran out, in one batch (its head is the cut list).
        full = rank_profiles(index, {sid: profiles[sid] for sid in resume}, learner=learner)
        for s in states:
            sid = s.subscriber.id
            rank = resume.get(sid, -1)
            if rank < 0:
                continue
            if len(picked[sid]) < most:
                rank = _pick(s, full[sid], rank, picked[sid], most, by_id, delivered, shared)
            if len(picked[sid]) == most:
                _, more = _pick_extra(s, full[sid], rank, extras[sid], by_id, delivered, shared)
                beyond[sid] = beyond.get(sid, 0) + more
    _add_rising(store, settings, states, profiles, picked, by_id, now)
    return [
        Plan(
            s,
            picked.get(s.subscriber.id, []),
            max(top, s.watermark),
            _latest_slot(s.subscriber, now),
            extras.get(s.subscriber.id, []),
            _matched(picked, extras, beyond, s.subscriber.id),
        )
        for s in states
    ]


class Learners:
    """The models' trainer of one queue pass, built when a page first has examples and kept
    for the pass's later pages (over the same index): training it reads the background and
    tokenises it, so one per page of subscribers cost a second each."""

    def __init__(self, store: Store, index: PaperIndex | None) -> None:
        self.store = store
        self.index = index
        self.learner: Learner | None = None

    def for_profiles(self, profiles: Mapping[int, Sequence[Topic]]) -> Learner | None:
        """The trainer knowing every example paper of these profiles (None: none has any)."""
        ids = {i for topics in profiles.values() for t in topics for i in (*t.likes, *t.dislikes)}
        if not ids:
            return None
        from digest.rank import BACKGROUND, Learner

        if self.learner is None:
            # the index's papers are tokenised already: the Learner takes their stems from it
            self.learner = Learner(
                self.store.recent_papers(limit=BACKGROUND), self.store.papers_by_ids(ids),
                self.index,
            )  # fmt: skip
        elif missing := self.learner.unknown(ids):
            self.learner.add_known(self.store.papers_by_ids(missing))
        return self.learner


# A capped digest keeps this many of its left-out matches for its web page (and counts all).
EXTRA_MAX = 1_000


def _matched(
    picked: dict[int, list[LedgerItem]],
    extras: dict[int, list[LedgerItem]],
    beyond: dict[int, int],
    sid: int,
) -> int | None:
    """How many pending papers matched, when more than the digest carries (else None)."""
    left_out = len(extras.get(sid, ())) + beyond.get(sid, 0)
    return len(picked[sid]) + left_out if left_out else None


def _pending(state: DeliveryState, pid: int, by_id: dict[int, StoredPaper],
             delivered: set[tuple[int, int]]) -> bool:  # fmt: skip
    """A paper the subscriber may still receive: new to them, stored after they joined."""
    sub = state.subscriber
    return (
        pid > state.watermark
        and by_id[pid].first_seen >= (sub.since or sub.created_at)
        and (sub.id, pid) not in delivered
    )


def _pick_extra(
    state: DeliveryState,
    found: MatchList | RankedList,
    rank: int,
    extra: list[LedgerItem],
    by_id: dict[int, StoredPaper],
    delivered: set[tuple[int, int]],
    shared: Shared,
) -> tuple[int, int]:
    """The pending matches past the cap, from `rank`: up to EXTRA_MAX kept in `extra`, the
    rest only counted; the rank reached (the list's end) and how many were only counted."""
    room = EXTRA_MAX - len(extra)
    if room > 0:
        rank = _pick(state, found, rank, extra, EXTRA_MAX, by_id, delivered, shared)
    ranked = found.paper_ids()
    counted = sum(1 for pid in ranked[rank:] if _pending(state, pid, by_id, delivered))
    return len(ranked), counted


def _add_rising(
    store: Store,
    settings: Settings,
    states: Sequence[DeliveryState],
    profiles: Mapping[int, Sequence[Topic]],
    picked: dict[int, list[LedgerItem]],
    by_id: dict[int, StoredPaper],
    now: datetime,
) -> None:
    """Add to each plan, after its new papers and within mail.max_papers, the papers whose
    upvotes jumped lately that the subscriber already received or that matched them but were
    cut: those at or below their watermark (planned for them before) that their topics match,
    first seen since they subscribed, and never given back to them as rising before."""
    from digest.match import PaperIndex, match_profiles  # see _paper_index

    if not profiles:
        return
    found = store.rising_since(now - timedelta(days=settings.rank.rising_days))
    if not found:
        return
    rising_by_id = {r.paper.id: r.paper for r in found}
    results = match_profiles(PaperIndex(list(rising_by_id.values())), profiles)
    if not results:
        return
    given = store.rising_delivered(list(results), list(rising_by_id))
    most = settings.mail.max_papers
    for s in states:
        sub, matches = s.subscriber, results.get(s.subscriber.id)
        if matches is None:
            continue
        since = sub.since or sub.created_at
        items = picked.setdefault(sub.id, [])
        taken = {i.paper_id for i in items}
        for m in matches:
            if len(items) >= most:
                break  # the rest wait for a later digest (within rising_days)
            paper = rising_by_id[m.paper_id]
            if (
                paper.id <= s.watermark  # above it, the paper is simply new for them
                and paper.first_seen >= since
                and (sub.id, paper.id) not in given
                and paper.id not in taken
            ):
                items.append(LedgerItem(paper.id, m.topics, m.terms, m.score, rising=True))
                by_id.setdefault(paper.id, paper)  # previews build from by_id


# Ledger items by profile (a subscriber's topics) and paper id: subscribers with the same topics
# get the same item for the same paper (the ranking, words and why depend on nothing else), so
# each is built once per page however many share the profile.
Shared = dict[tuple[Topic, ...], dict[int, LedgerItem]]


def _pick(
    state: DeliveryState,
    found: MatchList | RankedList,
    rank: int,
    items: list[LedgerItem],
    most: int,
    by_id: dict[int, StoredPaper],
    delivered: set[tuple[int, int]],
    shared: Shared,
) -> int:
    """Take into `items` the subscriber's pending papers from `found`, best first, from `rank`
    until `most` are taken or the list ends; return the rank reached."""
    sub = state.subscriber
    since = sub.since or sub.created_at
    ranked = found.paper_ids()
    built = shared.setdefault(sub.topics, {})
    taken: list[int] = []  # the ranks of the pending papers taken, in order
    room = most - len(items)
    while len(taken) < room and rank < len(ranked):
        pid = ranked[rank]
        if (
            pid > state.watermark
            and by_id[pid].first_seen >= since
            and (sub.id, pid) not in delivered
        ):
            taken.append(rank)
        rank += 1
    # The matched words and why are built only for what is kept, in one call per list, each
    # paper's from its first rank (a list holds a paper once; the old per-item loop's rule).
    first: dict[int, int] = {}  # paper id -> rank, of the papers no item is built for yet
    for k in taken:
        if ranked[k] not in built:
            first.setdefault(ranked[k], k)
    if first:
        for pid, reason in zip(first, found.reasons(list(first.values())), strict=True):
            built[pid] = LedgerItem(pid, *reason)
    items.extend(built[ranked[k]] for k in taken)
    return rank


# Subscribers loaded, matched and recorded at a time by queue_digests: bounds its memory
# (profiled at 100k subscribers: all states at once held ~150 MB, all match results ~1 GB;
# pages of 10k peaked at 488 MB, of 5k at 442 MB, for 10% more matching time).
QUEUE_CHUNK = 5_000


def queue_digests(
    store: Store,
    settings: Settings,
    *,
    now: datetime,
    force: bool = False,
    feeds_only: bool = False,
) -> QueueReport:
    """Plan the due digests and record them (ledger, Message-ID, status queued) atomically,
    a page of subscribers at a time against one index of the pending papers (`feeds_only`:
    only feed-only subscribers' new items, as `digest feeds` records them)."""
    report = QueueReport()
    cadences = [Cadence.FEED] if feeds_only else None
    # the queue stage's many small objects: see digest.gcutil; cycles collected per page
    with gc_paused():
        _queue_pages(store, settings, report, now=now, force=force, cadences=cadences)
    return report


def _queue_pages(
    store: Store,
    settings: Settings,
    report: QueueReport,
    *,
    now: datetime,
    force: bool,
    cadences: Sequence[Cadence] | None,
) -> None:
    """queue_digests' pages: load, plan and record each in turn, counting into `report`."""
    after_id, loaded_from = 0, None
    papers: list[StoredPaper] = []
    by_id: dict[int, StoredPaper] = {}
    index: PaperIndex | None = None
    learners = Learners(store, None)
    while True:
        states, last = _due_states(
            store, now=now, force=force, cadences=cadences, after_id=after_id, limit=QUEUE_CHUNK
        )
        if last is None:
            break
        after_id = last
        if not states:
            continue
        lowest = min(s.watermark for s in states)
        if loaded_from is None or lowest < loaded_from:
            # Usually once: every page's subscribers wait for the same new papers.
            papers = store.papers_after(lowest)
            by_id = {p.id: p for p in papers}
            index = _paper_index(papers)
            learners = Learners(store, index)
            loaded_from = lowest
        report.due += len(states)
        report.papers = len(by_id)
        _queue_page(store, settings, report, states, papers, by_id, index, now, learners)
        del states
        # The page's cyclic objects (measured at 100k: ~260 a page, SQLAlchemy statements;
        # 6.5k on the first) are few; the cost (~0.05 s a page) is walking the page's young
        # survivors (~64k: the queries decoded for it) once, which a later collection would
        # otherwise do instead. Only the young generations: not the index and older queries.
        gc.collect(1)


def _queue_page(
    store: Store,
    settings: Settings,
    report: QueueReport,
    states: Sequence[DeliveryState],
    papers: Sequence[StoredPaper],
    by_id: dict[int, StoredPaper],
    index: PaperIndex | None,
    now: datetime,
    learners: Learners,
) -> None:
    """Plan and record one page of due subscribers, counting into `report`."""
    plans = _plan_states(store, settings, states, papers, by_id, index, now, learners)
    created = store.record_plans(
        [plan.progress() for plan in plans],
        now=now,
        message_id=lambda digest_id: make_message_id(digest_id, settings),
    )
    if index is not None:
        _save_forms(store, states)
    for plan in plans:
        if plan.state.subscriber.id not in created:
            # nothing new, or (items planned) recorded by another pass or paused meanwhile
            report.dropped += bool(plan.items)
            continue
        if plan.kind == DigestKind.FEED:
            report.feed_items += len(plan.items)
        else:
            report.queued += 1
            report.queued_papers += len(plan.items)


def _save_forms(store: Store, states: Sequence[DeliveryState]) -> None:
    """Rewrite the compiled forms the matcher could not use (missing or of another compiler),
    so the next process decodes them instead of parsing (see query.encode_query)."""
    from digest.match import forms_to_save  # see _paper_index

    store.save_topic_forms(forms_to_save({s.subscriber.id: s.subscriber.topics for s in states}))


def digest_from_plan(plan: Plan, papers: dict[int, StoredPaper], now: datetime) -> Digest:
    """An unrecorded digest for previews and dry runs (id 0, no Message-ID of its own)."""
    return Digest(
        id=0,
        subscriber=plan.state.subscriber,
        created_at=now,
        message_id="<preview@localhost>",
        items=[_item(papers[i.paper_id], i) for i in plan.items],
        matched=plan.matched,
    )


@functools.lru_cache(maxsize=4096)
def _term_queries(terms: tuple[str, ...]) -> tuple[Query, ...]:
    """The ledger's matched words as phrase queries, for highlighting (odd ones skipped)."""
    found = []
    for term in terms:
        try:
            found.append(compile_query('"' + term.replace('"', " ") + '"'))
        except QueryError:
            continue
    return tuple(found)


# A worker sends the same few papers to many subscribers, often for the same words: tokenising
# an abstract for highlights was a tenth of a worker's time before this cache (profiled).
@functools.lru_cache(maxsize=8192)
def _spans(text: str, terms: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    return tuple(highlight_spans(text, list(_term_queries(terms))))


def _item(paper: StoredPaper, item: LedgerItem) -> DigestItem:
    return DigestItem(
        rising=item.rising,
        paper=paper,
        match=Match(
            paper_id=paper.id,
            score=item.score,
            topics=item.topics,
            terms=item.terms,
            title_spans=_spans(paper.title, item.terms),
            abstract_spans=_spans(paper.abstract, item.terms),
            why=item.why,
        ),
    )


def build_digest(store: Store, digest_id: int, record: DigestRecord | None = None) -> Digest:
    """Load a recorded digest with its papers, ranked, and recompute highlight spans
    (from `record` when the caller loaded it already, e.g. with the rest of a batch)."""
    record = record or store.digest_record(digest_id)
    return Digest(
        id=record.id,
        subscriber=record.subscriber,
        created_at=record.created_at,
        message_id=record.message_id,
        items=[_item(entry.paper, entry.item) for entry in record.items],
        matched=record.matched,
    )


def worker_name() -> str:
    """Who holds a claim: host, PID namespace and process, for the claimed_by column and logs.

    The namespace tells containers that share a host name apart: a PID is only checked (and
    its claims given back when it is dead) by senders that see the same processes.
    """
    return f"{_this_host()}:{os.getpid()}"


@functools.cache
def _this_host() -> str:
    try:
        namespace = os.readlink("/proc/self/ns/pid").partition("[")[2].rstrip("]")
    except OSError:  # not Linux: the host name alone
        namespace = ""
    return f"{socket.gethostname()}/{namespace}" if namespace else socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def release_dead_claims(store: Store) -> int:
    """Requeue at once the digests held by senders of this host that are no longer running.

    A crashed sender on another machine cannot be checked from here: its claims wait for their
    lease to lapse, so a live worker's message is never sent twice by a restarting daemon.
    """
    host = _this_host()
    released = 0
    for holder in store.claim_holders():
        name, _, pid = holder.rpartition(":")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            released += store.release_claims_of(holder)
    return released


@dataclass
class DeliveryReport:
    """What one delivery pass did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    bounced: int = 0
    errors: list[str] = field(default_factory=list)
    helpers_failed: int = 0  # helper processes that could not finish (see pipeline._Helpers)
    # Why the pass stopped early because the SMTP server could not be reached ("" when it
    # did not): the digests not sent went back to the queue untouched.
    unavailable: str = ""

    def add(self, other: DeliveryReport) -> None:
        """Fold another sender's pass (a helper process's) into this one."""
        self.sent += other.sent
        self.retried += other.retried
        self.failed += other.failed
        self.bounced += other.bounced
        self.errors.extend(other.errors)
        self.helpers_failed += other.helpers_failed
        self.unavailable = self.unavailable or other.unavailable

    def summary(self) -> str:
        return (
            f"{self.sent} sent, {self.retried} to retry, {self.failed} failed, "
            f"{self.bounced} bounced"
        )


SendOne = Callable[[Digest], None]
# Two-phase sending: render and build a digest's message now (in the calling thread), and
# return what hands it to the transport (run in a send thread, while the next one renders).
Prepare = Callable[[Digest], Callable[[], None]]


def deliver_queued(
    store: Store,
    settings: Settings,
    send_one: SendOne | None = None,
    *,
    prepare: Prepare | None = None,
    clock: Clock = utcnow,
    worker: str | None = None,
    batch: int = 50,
    lease: timedelta = timedelta(minutes=10),
    stop: threading.Event | None = None,
    progress: Callable[[int], object] | None = None,
    parallel: int = 1,
    overlap: bool = False,
    flush: Callable[[], None] | None = None,
) -> DeliveryReport:
    """Claim queued email digests in batches and send them, up to `parallel` at once (one per
    SMTP connection); accepted ones are marked sent in groups (see MARK_EVERY_SECONDS).

    With `prepare` (render now, send later) and `overlap` (the transport waits on I/O), sends
    run in `parallel` threads while this thread renders the next digest. `flush` (a
    transport's that delivers in groups) runs before each group is marked sent."""
    if prepare is None:
        if send_one is None:
            raise TypeError("deliver_queued needs send_one or prepare")
        prepare = functools.partial(functools.partial, send_one)
    threaded = parallel > 1 or overlap
    sender = _BatchSender(store, settings, prepare, clock, worker or worker_name(), lease,
                          stop or threading.Event(), progress, max(1, batch),
                          threaded=threaded, flush=flush)  # fmt: skip
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="send") as pool:
        while not sender.stop.is_set():
            now = clock()
            claimed = store.claim_digests(
                sender.worker, limit=batch, lease_until=now + lease, now=now
            )
            if not claimed:
                break
            window = max(1, parallel) + (READ_AHEAD if threaded else 0)
            try:
                sender.send_batch(pool, window, claimed, now + lease)
            except ServerUnavailable as exc:
                # The server cannot be reached: send_batch gave the rest of the batch back
                # untouched. The pass stops, with what it did so far; the caller decides
                # (a worker waits and tries again, send exits 1, the daemon's next run).
                sender.report.unavailable = str(exc)
                break
    return sender.report


# Digests rendered ahead of the send threads (beyond one per connection): enough that a
# thread finishing a send finds the next message ready, few enough to hold little memory.
READ_AHEAD = 4


class _Withheld(Exception):
    """A message handed to a send thread that had not started when the pass stopped."""


# A pass whose first renders all fail this many times, with none rendered, is our own fault (a
# broken template override or setting): it stops, giving everything back, rather than failing
# every digest in the queue one by one.
SYSTEMIC_RENDER_FAILURES = 3

# Accepted digests are marked sent in groups, one transaction per group rather than a durable
# commit per message (profiled: a fifth of a sender's time). A group is committed when it holds
# a whole claimed batch, when its oldest message was accepted this long ago, and whenever the
# sender stops, so a crash repeats at most that group, each message under its own Message-ID.
MARK_EVERY_SECONDS = 1.0


@dataclass
class _BatchSender:
    """One delivery pass: sends claimed digests (inline, or through a pool when several may be
    in flight), settles each outcome as it completes."""

    store: Store
    settings: Settings
    prepare: Prepare
    clock: Clock
    worker: str
    lease: timedelta
    stop: threading.Event
    progress: Callable[[int], object] | None
    group: int = 50  # accepted digests marked sent per transaction, at most
    threaded: bool = False  # sends run in the pool's threads (else inline, one at a time)
    flush: Callable[[], None] | None = None  # makes accepted messages delivered, before marking
    report: DeliveryReport = field(default_factory=lambda: DeliveryReport())
    rendered: int = 0  # digests this pass rendered (sent or refused by the server)
    unrendered: list[tuple[Digest, RenderError]] = field(default_factory=list)  # held back
    unmarked: list[int] = field(default_factory=list)  # accepted, not yet marked sent
    unmarked_since: float = 0.0  # time.monotonic() when the oldest unmarked was accepted
    attempts: dict[int, int] = field(default_factory=dict)  # digest id -> attempts so far
    # Papers read by this pass's earlier batches (most digests of a pass share them): one pass
    # renders each paper as it was when the pass first read it.
    papers: dict[int, StoredPaper] = field(default_factory=dict)

    def send_batch(
        self, pool: ThreadPoolExecutor, window: int, claimed: list[int], lease_until: datetime
    ) -> None:
        """Send a claimed batch, at most `window` in flight; on a stop, or when our own side
        fails, what has not started goes back to the queue at once, untouched."""
        # One read for the whole batch instead of four per digest (profiled: half the time).
        records = self.store.digest_records(claimed, self.papers)
        self.attempts = {i: r.attempts for i, r in records.items()}  # no re-read per 4xx
        held, waiting = set(claimed), deque(claimed)
        flying: dict[Future[None], Digest] = {}
        # Threaded, up to READ_AHEAD digests more than the connections are rendered and
        # handed to the pool, so a send thread takes the next message without waiting for this
        # one; a handed-over message not yet started when we stop or fail is withheld (given
        # back, never sent), so only what is on the wire finishes.
        withhold = threading.Event()
        try:
            while waiting or flying:
                while waiting and len(flying) < window and not self.stop.is_set():
                    if self.clock() >= lease_until - self.lease / 2:
                        # A slow batch: extend the lease before it lapses, so no other sender
                        # takes (and sends again) what this one still holds.
                        lease_until = self.clock() + self.lease
                        mine = [d.id for d in flying.values()] + list(waiting) + self.unmarked
                        held = self.store.renew_claims(mine, self.worker, lease_until=lease_until)
                    if waiting[0] not in held:
                        waiting.popleft()  # taken over by another sender: our lease lapsed
                        continue
                    digest, job = self._ready(waiting[0], records.get(waiting[0]))
                    if digest is not None:
                        flying[self._launch(pool, job, withhold)] = digest
                    waiting.popleft()  # only now: until here a failure gives it back too
                if self.stop.is_set():
                    withhold.set()
                    if waiting:
                        self.store.release_claims(list(waiting), self.worker)
                        waiting.clear()
                if not flying:
                    break
                done, _ = wait(flying, return_when=FIRST_COMPLETED)
                for future in done:
                    self._settle(flying.pop(future), future.exception())
        except Exception:  # not SystemExit: a dying process leaves its claims to lapse
            # Our side is broken (SMTP login refused, a lost database, every render failing):
            # let what is in flight finish and settle it, give the rest back untouched, report.
            withhold.set()
            for future in as_completed(flying):
                with contextlib.suppress(Exception):
                    self._settle(flying[future], future.exception())
            with contextlib.suppress(Exception):
                self.mark_sent()
            back = [*waiting, *(d.id for d, _ in self.unrendered)]
            self.unrendered.clear()
            with contextlib.suppress(Exception):
                self.store.release_claims(back, self.worker)
            raise
        self._fail_unrendered()
        self.mark_sent()  # the group never outlives its batch: before the next claim

    def mark_sent(self) -> None:
        """Commit the group of accepted digests as sent (see MARK_EVERY_SECONDS)."""
        if not self.unmarked:
            return
        group = self.unmarked
        if self.flush is not None:
            try:
                self.flush()  # never marked sent before it is delivered
            except Exception:
                # Not delivered: never marked sent (not even by the retry of the error path);
                # back to the queue, to go once the transport works again.
                self.unmarked = []
                self.report.sent -= len(group)
                with contextlib.suppress(Exception):
                    self.store.release_claims(group, self.worker)
                raise
        self.store.mark_digests_sent(group, now=self.clock())
        self.unmarked = []

    def _ready(
        self, digest_id: int, record: DigestRecord | None
    ) -> tuple[Digest | None, Callable[[], None] | BaseException]:
        """The digest built and its message prepared (rendered), or why it could not be: a
        failed build is settled here (None); a failed render is returned, settled as a send."""
        try:
            digest = build_digest(self.store, digest_id, record)
        except (DigestError, ValueError, KeyError, TypeError) as exc:
            self._fail(digest_id, None, f"cannot build the digest: {exc}")
            return None, exc
        try:
            return digest, self.prepare(digest)
        except Exception as exc:
            return digest, exc

    def _launch(
        self,
        pool: ThreadPoolExecutor,
        job: Callable[[], None] | BaseException,
        withhold: threading.Event,
    ) -> Future[None]:
        if self.threaded and not isinstance(job, BaseException):

            def send() -> None:
                if withhold.is_set() or self.stop.is_set():
                    raise _Withheld
                job()

            return pool.submit(send)
        # One at a time: sent here, in this thread (a pool hand-off costs more than it gives).
        future: Future[None] = Future()
        try:
            if isinstance(job, BaseException):
                raise job
            job()
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        return future

    def _fail(self, digest_id: int, digest: Digest | None, reason: str) -> None:
        if not self.store.fail_digest(digest_id, reason, now=self.clock(), worker=self.worker):
            return  # another sender holds it now
        self.report.failed += 1
        who = digest.subscriber.email if digest is not None else f"digest {digest_id}"
        self.report.errors.append(f"{who}: {reason}")
        log.warning("digest %d for %s failed: %s", digest_id, who, reason)

    def _fail_unrendered(self) -> None:
        """Digests that could not be rendered fail alone, now that others rendered (or too few
        were tried to tell a broken setup from a few odd digests)."""
        held, self.unrendered = self.unrendered, []
        for digest, error in held:
            self._fail(digest.id, digest, str(error))
            if self.progress:
                self.progress(1)

    def _settle(self, digest: Digest, error: BaseException | None) -> None:
        """Mark one finished send: sent, retry later, failed, bounced; re-raise our own fault."""
        store, settings, email, worker = (
            self.store,
            self.settings,
            digest.subscriber.email,
            self.worker,
        )
        if isinstance(error, _Withheld):
            store.release_claims([digest.id], worker)  # never handed to the transport
            return
        if isinstance(error, RenderError):
            self.unrendered.append((digest, error))
            if self.rendered == 0 and len(self.unrendered) >= SYSTEMIC_RENDER_FAILURES:
                store.release_claims([d.id for d, _ in self.unrendered], worker)
                self.unrendered.clear()
                raise DigestError(
                    f"the first {SYSTEMIC_RENDER_FAILURES} digests of this pass all failed to "
                    f"render, so the fault is ours (a template or a setting), not theirs; nothing "
                    f"was marked failed. Last: {error}"
                )
            if self.rendered:
                self._fail_unrendered()
            return
        self.rendered += 1
        if self.unrendered:
            self._fail_unrendered()
        if error is None:
            if not self.unmarked:
                self.unmarked_since = time.monotonic()
            self.unmarked.append(digest.id)
            self.report.sent += 1
            if (
                len(self.unmarked) >= self.group
                or time.monotonic() - self.unmarked_since >= MARK_EVERY_SECONDS
            ):
                self.mark_sent()
        elif isinstance(error, ServerUnavailable):
            # Nothing was sent and it is not this digest's fault: an SMTP outage must not
            # spend every queued digest's retries (a ten-minute outage used to fail them all).
            # It goes back untouched with the rest of the batch, and the pass stops.
            store.release_claims([digest.id], worker)
            raise error
        elif isinstance(error, TemporaryDeliveryError):
            attempts = self.attempts.get(digest.id, 0) + 1
            if attempts >= settings.mail.retry_attempts:
                if store.fail_digest(digest.id, str(error), now=self.clock(), worker=worker):
                    self.report.failed += 1
            else:
                delay = settings.mail.retry_base_seconds * 2 ** (attempts - 1)
                again = self.clock() + timedelta(seconds=delay)
                if store.retry_digest(digest.id, str(error), next_attempt_at=again, worker=worker):
                    self.report.retried += 1
            self.report.errors.append(f"{email}: {error}")
            log.warning("temporary failure for %s: %s", email, error)
        elif isinstance(error, PermanentDeliveryError):
            store.bounce_digest(
                digest.id, str(error), max_bounces=settings.mail.max_bounces, worker=worker
            )
            self.report.bounced += 1
            self.report.errors.append(f"{email}: {error}")
            log.warning("bounce for %s: %s", email, error)
        else:
            # Not this digest's fault: it goes back to the queue with the rest of the batch.
            store.release_claims([digest.id], worker)
            raise error
        if self.progress:
            self.progress(1)
