"""When a subscriber's digest is due: their delivery slots in their own time zone.

A slot is identified by the subscriber's local calendar day (daily) or week (weekly), so a digest
goes out exactly once per day even on the days clocks change: a local time that does not exist
(spring forward) is taken one hour later; one that exists twice (fall back) is taken the first time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from digest.models import Cadence, Subscriber


def _local_time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _resolve(day: datetime, at: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on local `day`, resolving DST gaps and folds."""
    naive = datetime.combine(day.date(), at)
    first = naive.replace(tzinfo=tz, fold=0)
    # A wall time inside a spring-forward gap does not survive a round trip through UTC.
    roundtrip = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if roundtrip != naive:
        first = (naive + timedelta(hours=1)).replace(tzinfo=tz, fold=0)
    return first.astimezone(UTC)


def _slots(subscriber: Subscriber, now: datetime, step: int) -> Iterator[datetime]:
    """Delivery slots (UTC) of a daily or weekly subscriber, from the local day of `now`."""
    tz = ZoneInfo(subscriber.tz)
    at = _local_time(subscriber.time)
    day = now.astimezone(tz)
    for _ in range(9):  # a weekly slot always falls within 8 days of any day
        if subscriber.cadence == Cadence.DAILY or day.weekday() == subscriber.weekday:
            yield _resolve(day, at, tz)
        day += timedelta(days=step)


def latest_slot(subscriber: Subscriber, now: datetime) -> datetime:
    """The latest delivery slot at or before `now` (UTC); instant and feed cadences: `now`."""
    if not subscriber.cadence.is_scheduled:
        return now
    return next(slot for slot in _slots(subscriber, now, -1) if slot <= now)


def next_slot(subscriber: Subscriber, now: datetime) -> datetime:
    """The first delivery slot strictly after `now` (UTC), for status displays."""
    if not subscriber.cadence.is_scheduled:
        return now
    return next(slot for slot in _slots(subscriber, now, 1) if slot > now)


def is_due(subscriber: Subscriber, now: datetime, last_slot: datetime | None) -> bool:
    """True when a slot has come since the last one handled (or since they subscribed)."""
    if not subscriber.status.receives_mail:
        return False
    if not subscriber.cadence.is_scheduled:
        return True
    slot = latest_slot(subscriber, now)
    handled = last_slot or subscriber.created_at
    return slot > handled
