"""The dashboard's small chart: papers ingested and digests sent per day, as inline SVG geometry.

No JavaScript library: the template draws the bars from these numbers (SVG presentation
attributes, so the Content-Security-Policy's ban on inline styles still holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from digest.store.admin import DayCount

CHART_DAYS = 14
HEIGHT = 100  # drawing units of the bars' area; the SVG scales to its box


@dataclass(frozen=True, slots=True)
class ChartDay:
    """One day of the chart: the counts and the bars' heights (0..HEIGHT)."""

    day: date
    papers: int
    digests: int
    papers_h: float
    digests_h: float


@dataclass(frozen=True, slots=True)
class Chart:
    """The days shown, oldest first, and the largest count (the top of the scale)."""

    days: tuple[ChartDay, ...]
    peak: int
    height: int = HEIGHT


def daily_chart(counts: Sequence[DayCount], now: datetime, days: int) -> Chart:
    """Every one of the last `days` UTC days up to `now`'s, zero where nothing happened."""
    by_day = {c.day: c for c in counts}
    today = now.date()
    span = [today - timedelta(days=days - 1 - i) for i in range(days)]
    rows = [
        (d, by_day[d].papers if d in by_day else 0, by_day[d].digests if d in by_day else 0)
        for d in span
    ]
    peak = max([1, *(max(p, s) for _, p, s in rows)])
    return Chart(
        days=tuple(
            ChartDay(d, p, s, round(HEIGHT * p / peak, 2), round(HEIGHT * s / peak, 2))
            for d, p, s in rows
        ),
        peak=peak,
    )
