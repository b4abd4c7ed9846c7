"""`digest status`: what is stored, queued, failed and scheduled, as data and as text."""

from __future__ import annotations

from typing import Any

from digest.config import Settings
from digest.health import current as current_health
from digest.models import DigestStatus
from digest.outbox import utcnow
from digest.schedule import next_slot
from digest.store import Store


def collect_status(store: Store, settings: Settings, *, recent: int = 5) -> dict[str, Any]:
    """The status as JSON-ready data: papers, dumps, subscribers, digests, next deliveries."""
    now = utcnow()
    dumps = store.recent_dumps(recent)
    states = store.subscribers_for_delivery()
    upcoming = sorted(
        (next_slot(s.subscriber, now), s.subscriber.email, s.subscriber.cadence)
        for s in states
        if s.subscriber.cadence.is_scheduled
    )[:recent]
    inbox = settings.inbox.dir
    waiting = (
        sorted(p.name for p in inbox.iterdir() if p.is_file() and not p.name.startswith("."))
        if inbox.is_dir()
        else []
    )
    return {
        "database": store.engine.url.render_as_string(hide_password=True),
        "papers": store.count_papers(),
        "inbox_waiting": waiting,
        "recent_dumps": [
            {
                "name": d.name,
                "status": d.status,
                "received_at": d.received_at.isoformat(),
                "papers": d.papers,
                "new_papers": d.new_papers,
                "error": d.error,
            }
            for d in dumps
        ],
        "subscribers": store.subscriber_status_counts(),
        "digests": store.digest_status_counts(),
        "failed_digests": [
            {
                "id": d.id,
                "email": d.email,
                "created_at": d.created_at.isoformat(),
                "attempts": d.attempts,
                "error": d.last_error,
            }
            for d in store.recent_digests(recent, status=DigestStatus.FAILED)
        ],
        "next_deliveries": [
            {"at": at.isoformat(), "email": email, "cadence": cadence}
            for at, email, cadence in upcoming
        ],
        # Send-health anomalies (digest.health): kind, message, when found; [] when healthy.
        "health": current_health(store, settings, now=now),
    }


def format_status(data: dict[str, Any]) -> str:
    """The status as a few readable lines."""
    subs = ", ".join(f"{n} {s}" for s, n in data["subscribers"].items() if n) or "none"
    digests = ", ".join(f"{n} {s}" for s, n in data["digests"].items() if n) or "none"
    lines = [
        f"database: {data['database']}",
        f"papers stored: {data['papers']}",
        f"inbox: {len(data['inbox_waiting'])} files waiting",
        f"subscribers: {subs}",
        f"email digests: {digests}",
    ]
    health = data.get("health") or []
    lines.append(f"health: {len(health)} warning(s)" if health else "health: ok")
    for a in health:
        lines.append(f"  WARNING {a['kind']} ({a['at'][:16]}): {a['message']}")
    if data["failed_digests"]:
        lines.append("failed digests (newest first; not retried):")
    for f in data["failed_digests"]:
        lines.append(f"  {f['created_at'][:19]}  {f['email']}: {f['error'] or 'no reason kept'}")
    lines.append("recent dumps:")
    for d in data["recent_dumps"]:
        extra = f" ({d['error']})" if d["error"] else ""
        lines.append(
            f"  {d['received_at'][:19]}  {d['status']:<9} {d['name']}: "
            f"{d['papers']} papers, {d['new_papers']} new{extra}"
        )
    if not data["recent_dumps"]:
        lines.append("  none yet")
    lines.append("next scheduled deliveries:")
    for n in data["next_deliveries"]:
        lines.append(f"  {n['at'][:16]} UTC  {n['email']} ({n['cadence']})")
    if not data["next_deliveries"]:
        lines.append("  none scheduled (instant and feed subscribers get news as it arrives)")
    return "\n".join(lines)
