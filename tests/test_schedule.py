"""Delivery slots: exactly once per local day or week, also on the days clocks change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from digest.models import Subscriber
from digest.schedule import is_due, latest_slot, next_slot


def _sub(
    cadence: str = "daily", at: str = "07:00", tz: str = "UTC", weekday: int = 0
) -> Subscriber:
    return Subscriber(
        id=1,
        email="a@example.org",
        name="A",
        status="active",
        cadence=cadence,
        time=at,
        tz=tz,
        weekday=weekday,
        created_at=datetime(2020, 1, 1, tzinfo=UTC),
        token="t",
    )


def _simulate(
    sub: Subscriber, start: datetime, days: int, step_minutes: int = 10
) -> list[datetime]:
    """Advance a controllable clock; return the UTC times a digest would have been sent."""
    sent: list[datetime] = []
    last: datetime | None = start
    now = start
    while now < start + timedelta(days=days):
        if is_due(sub, now, last):
            last = latest_slot(sub, now)
            sent.append(now)
        now += timedelta(minutes=step_minutes)
    return sent


@pytest.mark.parametrize(
    ("tz", "at", "change_day"),
    [
        ("Europe/London", "01:30", datetime(2026, 3, 29, tzinfo=UTC)),  # 01:30 does not exist
        ("Europe/London", "01:30", datetime(2026, 10, 25, tzinfo=UTC)),  # 01:30 happens twice
        ("America/New_York", "02:30", datetime(2026, 3, 8, tzinfo=UTC)),
        ("America/New_York", "01:30", datetime(2026, 11, 1, tzinfo=UTC)),
        ("Australia/Sydney", "02:30", datetime(2026, 10, 4, tzinfo=UTC)),
    ],
)
def test_daily_digest_goes_out_once_per_local_day_across_clock_changes(tz, at, change_day):
    sub = _sub(at=at, tz=tz)
    start = change_day - timedelta(days=3)
    sent = _simulate(sub, start, days=7)
    local_days = [t.astimezone(ZoneInfo(tz)).date() for t in sent]
    assert len(local_days) == len(set(local_days)), f"a day got two digests: {sent}"
    assert len(sent) in (6, 7)  # one per local day covered by the window
    # Every send happens within one step of its slot, never before it.
    for t in sent:
        slot = latest_slot(sub, t)
        assert timedelta(0) <= t - slot < timedelta(minutes=10)


def test_daily_slot_is_the_local_wall_time():
    sub = _sub(at="07:00", tz="Europe/Berlin")
    now = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert latest_slot(sub, now) == datetime(2026, 7, 1, 5, 0, tzinfo=UTC)
    assert next_slot(sub, now) == datetime(2026, 7, 2, 5, 0, tzinfo=UTC)


def test_weekly_digest_only_on_its_weekday():
    sub = _sub(cadence="weekly", at="08:00", tz="America/New_York", weekday=2)  # Wednesday
    sent = _simulate(sub, datetime(2026, 11, 2, tzinfo=UTC), days=21, step_minutes=30)
    assert len(sent) == 3
    assert all(t.astimezone(ZoneInfo("America/New_York")).weekday() == 2 for t in sent)


def test_missed_slots_while_down_are_sent_once():
    sub = _sub(at="07:00")
    last = datetime(2026, 11, 1, 7, 0, tzinfo=UTC)
    now = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)  # down for four days
    assert is_due(sub, now, last)
    last = latest_slot(sub, now)
    assert not is_due(sub, now + timedelta(hours=1), last)


def test_paused_and_new_subscribers_are_not_due():
    sub = _sub()
    from dataclasses import replace

    paused = replace(sub, status="paused")
    now = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)
    assert not is_due(paused, now, None)
    fresh = replace(sub, created_at=datetime(2026, 11, 5, 8, 0, tzinfo=UTC))
    assert not is_due(fresh, now, None)  # today's 07:00 slot was before they subscribed
    assert is_due(fresh, datetime(2026, 11, 6, 7, 0, tzinfo=UTC), None)


def test_instant_and_feed_cadences_are_always_due_when_active():
    now = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)
    assert is_due(_sub(cadence="instant"), now, now)
    assert is_due(_sub(cadence="feed"), now, now)
