"""The records and enums of digest/models.py: the cadence and status rules live on the enums."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from digest.models import (
    CADENCES,
    STATUSES,
    Cadence,
    DigestKind,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
)


def test_scheduled_cadences_are_daily_and_weekly() -> None:
    assert [c for c in Cadence if c.is_scheduled] == [Cadence.DAILY, Cadence.WEEKLY]


def test_every_cadence_but_feed_sends_email_and_its_digest_kind_follows() -> None:
    assert [c for c in Cadence if not c.sends_email] == [Cadence.FEED]
    assert {c: c.digest_kind for c in Cadence} == {
        Cadence.INSTANT: DigestKind.EMAIL,
        Cadence.DAILY: DigestKind.EMAIL,
        Cadence.WEEKLY: DigestKind.EMAIL,
        Cadence.FEED: DigestKind.FEED,
    }


def test_only_active_subscribers_receive_mail() -> None:
    assert [s for s in SubscriberStatus if s.receives_mail] == [SubscriberStatus.ACTIVE]


def test_queued_and_sending_digests_are_in_flight() -> None:
    assert [s for s in DigestStatus if s.in_flight] == [DigestStatus.QUEUED, DigestStatus.SENDING]


def test_the_values_are_the_strings_the_database_and_cli_use() -> None:
    assert CADENCES == ("instant", "daily", "weekly", "feed")
    assert STATUSES == ("pending", "active", "paused", "unsubscribed", "bouncing")
    assert [s.value for s in DigestStatus] == ["queued", "sending", "sent", "failed", "bounced"]
    assert all(type(c) is str for c in (*CADENCES, *STATUSES))  # plain: argparse shows repr()
    # StrEnum members print, format and serialise as their values.
    assert json.dumps({"status": SubscriberStatus.ACTIVE, DigestStatus.SENT: 1}) == (
        '{"status": "active", "sent": 1}'
    )
    assert f"{Cadence.WEEKLY}|{Cadence.FEED!s}" == "weekly|feed"


def test_a_subscriber_holds_enums_whatever_it_was_given() -> None:
    sub = Subscriber(
        id=1, email="a@example.org", name="", status="paused", cadence="weekly", time="07:00",
        tz="UTC", weekday=2, created_at=datetime(2026, 1, 1, tzinfo=UTC), token="t",
    )  # fmt: skip
    assert type(sub.status) is SubscriberStatus and type(sub.cadence) is Cadence
    moved = replace(sub, cadence="feed")
    assert moved.cadence is Cadence.FEED and not moved.cadence.sends_email
    with pytest.raises(ValueError):
        replace(sub, status="deleted")
