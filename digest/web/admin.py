"""Admin pages: login, dashboard, subscriber list, subscriber page with live preview."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask import (
    Response as FlaskResponse,
)
from werkzeug.wrappers import Response

from digest import subscribers as subs
from digest.errors import ConsentError, DigestError
from digest.feedback import examples_by_topic
from digest.health import current as current_health
from digest.links import links_for
from digest.models import (
    CADENCES,
    STATUSES,
    Cadence,
    DigestStatus,
    StatusChange,
    Subscriber,
    SubscriberStatus,
    Topic,
)
from digest.urls import feed_url
from digest.web import state
from digest.web.preview import Preview, TopicError, backtest, parse_topic_rows
from digest.web.security import check_csrf, password_ok

bp = Blueprint("admin", __name__)

PAGE_SIZE = 25
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _admin_hash() -> str:
    return state().settings.web.admin_password_hash


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Pages need an admin session: GETs go to the login page, anything else gets 401."""

    @wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if session.get("admin") is not True or not _admin_hash():
            if request.method in ("GET", "HEAD"):
                return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
            abort(401, description="Log in first.")
        if request.method == "POST":
            check_csrf()
        return view(*args, **kwargs)

    return wrapped


def _safe_next(target: str | None) -> str:
    """Only same-site admin paths: `next` must never send the admin to another site."""
    if target:
        parts = urlsplit(target)
        local = not parts.scheme and not parts.netloc and not target.startswith("//")
        if local and target.startswith("/admin") and "\\" not in target:
            return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The admin login form; failures are throttled per client address."""
    if not _admin_hash():
        return render_template("web/login.html", disabled=True, error="", next=""), 503
    nxt = request.values.get("next", "")
    if request.method != "POST":  # GET and HEAD only show the page
        return render_template("web/login.html", disabled=False, error="", next=nxt)
    check_csrf()
    throttle = state().throttle
    client = request.remote_addr or "?"
    wait = throttle.wait_seconds(client)
    if wait > 0:
        error = f"Too many failed attempts. Try again in {math.ceil(wait)} seconds."
        page = render_template("web/login.html", disabled=False, error=error, next=nxt)
        return page, 429, {"Retry-After": str(math.ceil(wait))}
    if not password_ok(_admin_hash(), request.form.get("password", "")):
        throttle.failed(client)
        page = render_template("web/login.html", disabled=False, error="Wrong password.", next=nxt)
        return page, 401
    throttle.succeeded(client)
    session.clear()  # a fresh session (and CSRF token) after login: no fixation
    session["admin"] = True
    session.permanent = True
    return redirect(_safe_next(nxt))


@bp.post("/logout")
def logout() -> Response:
    """End the admin session."""
    check_csrf()
    session.clear()
    return redirect(url_for("admin.login"))


@bp.get("/")
@login_required
def dashboard() -> Any:
    """Subscribers by status, recent dumps (failures with reasons), digests and bounces."""
    st = state()
    store = st.store
    counts = subs.status_counts(store)
    return render_template(
        "web/dashboard.html",
        counts=[(s, counts.get(s, 0)) for s in STATUSES],
        total=sum(counts.values()),
        papers=store.count_papers(),
        dumps=store.recent_dumps(10),
        digests=store.recent_digests(10),
        bounced=store.recent_digests(10, status=DigestStatus.BOUNCED),
        bouncing=subs.list_subscribers(store, status=SubscriberStatus.BOUNCING, offset=0, limit=10),
        health=current_health(store, st.settings, now=datetime.now(UTC)),
    )


@bp.get("/subscribers")
@login_required
def subscriber_list() -> Any:
    """Subscribers, searchable by email or name, filterable by status, in pages."""
    store = state().store
    search = request.args.get("q", "").strip()[:200]
    status = request.args.get("status", "")
    if status not in STATUSES:
        status = ""
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    total = subs.count_subscribers(store, search=search or None, status=status or None)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(page, pages)
    rows = subs.list_subscribers(
        store,
        search=search or None,
        status=status or None,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return render_template(
        "web/subscribers.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        q=search,
        status=status,
        statuses=STATUSES,
    )


def _subscriber(sid: int) -> Subscriber:
    sub = state().store.subscriber_by_id(sid)
    if sub is None:
        abort(404, description="No such subscriber.")
    return sub


def _form_topics() -> tuple[list[Topic], list[TopicError]]:
    return parse_topic_rows(request.form.getlist("topic_name"), request.form.getlist("topic_query"))


def _preview(saved: list[Topic], edited: list[Topic]) -> Preview:
    st = state()
    n = st.settings.web.preview_dumps
    stored = sum(1 for d in st.store.recent_dumps(4 * n) if d.status == "stored")
    return backtest(st.store.papers_of_recent_dumps(n), saved, edited, dumps=min(n, stored))


def remove_example_from_form(store: Any, sub: Subscriber) -> bool:
    """Remove the example a remove button names (form fields topic, paper_id); False if none."""
    raw = request.form.get("paper_id", "")
    if not raw.isdigit() or not 0 < int(raw) < 2**31:
        abort(400, description="No such example.")
    return bool(store.remove_feedback(sub.id, request.form.get("topic", ""), int(raw)))


def _render_subscriber(
    sub: Subscriber,
    *,
    topics: list[Topic] | None = None,
    errors: list[TopicError] | None = None,
    form: dict[str, str] | None = None,
    message: str = "",
    status: int = 200,
) -> Any:
    st = state()
    shown = list(sub.topics) if topics is None else topics
    preview = None if errors else _preview(list(sub.topics), shown)
    links = links_for(st.settings, st.signer, sub)
    left = subs.departure(st.store, sub) if sub.status is SubscriberStatus.UNSUBSCRIBED else None
    page = render_template(
        "web/subscriber.html",
        sub=sub,
        history=st.store.subscriber_events(sub.id),
        left=left,
        topics=shown,
        rows=_topic_rows(shown, errors or []),
        errors=errors or [],
        form=form or _form_of(sub),
        preview=preview,
        message=message,
        cadences=CADENCES,
        weekdays=WEEKDAYS,
        manage_url=links.manage_url,
        feed_rss=feed_url(st.settings.site.base_url, "rss", sub.token),
        examples=examples_by_topic(st.store, sub),
    )
    return page, status


def _topic_rows(topics: list[Topic], errors: list[TopicError]) -> list[dict[str, Any]]:
    """Form rows: the topics (or the submitted rows, when they had errors) plus a blank row."""
    if errors:
        by_index = {e.index: e for e in errors}
        submitted = zip(
            request.form.getlist("topic_name"), request.form.getlist("topic_query"), strict=False
        )
        rows = [
            {"name": n, "query": q, "error": by_index.get(i)}
            for i, (n, q) in enumerate(submitted)
            if n.strip() or q.strip()
        ]
    else:
        rows = [{"name": t.name, "query": t.query, "error": None} for t in topics]
    rows.append({"name": "", "query": "", "error": None})
    return rows


def _form_of(sub: Subscriber) -> dict[str, str]:
    return {
        "name": sub.name,
        "cadence": sub.cadence,
        "time": sub.time,
        "tz": sub.tz,
        "weekday": str(sub.weekday),
    }


def _submitted_form() -> dict[str, str]:
    return {
        k: request.form.get(k, "").strip() for k in ("name", "cadence", "time", "tz", "weekday")
    }


def _weekday(value: str) -> int | None:
    try:
        day = int(value)
    except ValueError:
        return None
    return day if 0 <= day <= 6 else None


@bp.route("/subscribers/<int:sid>", methods=["GET", "POST"])
@login_required
def subscriber(sid: int) -> Any:
    """A subscriber's profile: edit topics (with live preview), cadence, time and zone."""
    sub = _subscriber(sid)
    if request.method != "POST":  # GET and HEAD only show the page
        return _render_subscriber(sub)
    topics, errors = _form_topics()
    form = _submitted_form()
    if errors:
        return _render_subscriber(sub, topics=topics, errors=errors, form=form, status=400)
    if request.form.get("action") == "preview":  # the no-JavaScript preview button
        return _render_subscriber(sub, topics=topics, form=form)
    st = state()
    try:
        subs.edit_subscriber(
            st.store,
            st.settings,
            sub.email,
            name=form["name"],
            topics=topics,
            cadence=form["cadence"] or sub.cadence,
            time=form["time"] or sub.time,
            tz=form["tz"] or sub.tz,
            weekday=_weekday(form["weekday"]),
        )
    except ConsentError as exc:
        return _render_subscriber(sub, topics=topics, form=form, message=str(exc), status=409)
    except DigestError as exc:
        return _render_subscriber(sub, topics=topics, form=form, message=str(exc), status=400)
    flash("Saved. The new profile applies to the next digests.")
    return redirect(url_for("admin.subscriber", sid=sid))


@bp.post("/subscribers/<int:sid>/examples/remove")
@login_required
def remove_example(sid: int) -> Any:
    """Remove one of a subscriber's examples (a like or dislike of a paper under a topic)."""
    sub = _subscriber(sid)
    if remove_example_from_form(state().store, sub):
        flash("Example removed.")
    return redirect(url_for("admin.subscriber", sid=sid))


@bp.post("/subscribers/<int:sid>/preview")
@login_required
def preview(sid: int) -> Any:
    """The live preview (called by preview.js): JSON with an HTML fragment and topic errors."""
    sub = _subscriber(sid)
    topics, errors = _form_topics()
    result = None if errors else _preview(list(sub.topics), topics)
    html = render_template("web/_preview.html", preview=result, errors=errors)
    return jsonify(
        html=html,
        errors={str(e.index): render_template("web/_topic_error.html", error=e) for e in errors},
    )


@bp.post("/subscribers/<int:sid>/status")
@login_required
def change_status(sid: int) -> Any:
    """Pause or resume a subscriber; someone who unsubscribed is refused (409), whatever the
    form sends: only they can come back (double opt-in)."""
    sub = _subscriber(sid)
    action = request.form.get("action")
    target = {"pause": SubscriberStatus.PAUSED, "resume": SubscriberStatus.ACTIVE}.get(action or "")
    if target is None:
        abort(400, description="Unknown action.")
    try:
        subs.set_status(state().store, sub.email, target, how=StatusChange.ADMIN)
    except ConsentError as exc:
        return _render_subscriber(sub, message=str(exc), status=409)
    except DigestError as exc:
        flash(str(exc), "error")
    else:
        flash("Resumed." if target.receives_mail else "Paused.")
    return redirect(url_for("admin.subscriber", sid=sid))


@bp.route("/subscribers/<int:sid>/remove", methods=["GET", "POST"])
@login_required
def remove(sid: int) -> Any:
    """Confirm, then remove a subscriber with their topics and ledger."""
    sub = _subscriber(sid)
    if request.method != "POST":  # GET and HEAD only show the page
        return render_template("web/remove.html", sub=sub)
    subs.remove_subscriber(state().store, sub.email)
    flash(f"Removed {sub.email}.")
    return redirect(url_for("admin.subscriber_list"))


@bp.get("/subscribers/<int:sid>/data.json")
@login_required
def export_data(sid: int) -> Any:
    """Everything stored about the subscriber, as a JSON download (a data-access request)."""
    st = state()
    sub = _subscriber(sid)
    data = subs.export_data(st.store, st.settings, sub.email)
    body = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", sub.email)
    return FlaskResponse(
        body,
        mimetype="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="digest-data-{name}.json"',
            "Cache-Control": "no-store",
        },
    )


@bp.route("/subscribers/<int:sid>/wipe", methods=["GET", "POST"])
@login_required
def wipe(sid: int) -> Any:
    """Confirm, then erase a person, keeping only a suppression entry (hash of the address)."""
    sub = _subscriber(sid)
    if request.method != "POST":  # GET and HEAD only show the page
        return render_template("web/wipe.html", sub=sub)
    subs.wipe_subscriber(state().store, sub.email)
    flash(f"Wiped {sub.email}: only a suppression entry is kept, so no import or add re-adds them.")
    return redirect(url_for("admin.subscriber_list"))


@bp.route("/subscribers/new", methods=["GET", "POST"])
@login_required
def new_subscriber() -> Any:
    """Add an active subscriber."""
    st = state()
    defaults = {
        "email": "",
        "name": "",
        "cadence": Cadence.DAILY,
        "time": st.settings.schedule.default_time,
        "tz": st.settings.schedule.default_tz,
        "weekday": "0",
        "backfill": "0",
    }
    if request.method != "POST":  # GET and HEAD only show the page
        return render_template(
            "web/new.html",
            form=defaults,
            rows=[{"name": "Keywords", "query": "", "error": None}],
            message="",
            cadences=CADENCES,
            weekdays=WEEKDAYS,
        )
    form = {k: request.form.get(k, v).strip() for k, v in defaults.items()}
    topics, errors = _form_topics()
    message = ""
    status = 400
    if not errors:
        try:
            backfill = int(form["backfill"] or "0")
            if backfill < 0:
                raise ValueError
        except ValueError:
            message = "Backfill must be a whole number of days (0 or more)."
        else:
            try:
                sub = subs.add_subscriber(
                    st.store,
                    st.settings,
                    form["email"],
                    name=form["name"],
                    topics=topics,
                    cadence=form["cadence"],
                    time=form["time"],
                    tz=form["tz"],
                    weekday=_weekday(form["weekday"]) or 0,
                    backfill_days=backfill or None,
                    status=SubscriberStatus.ACTIVE,
                    now=st.clock(),
                    how=StatusChange.ADMIN,
                )
            except ConsentError as exc:
                message, status = str(exc), 409
            except DigestError as exc:
                message = str(exc)
            else:
                flash(f"Added {sub.email}.")
                return redirect(url_for("admin.subscriber", sid=sub.id))
    names = request.form.getlist("topic_name")
    queries = request.form.getlist("topic_query")
    by_index = {e.index: e for e in errors}
    rows = [
        {"name": n, "query": q, "error": by_index.get(i)}
        for i, (n, q) in enumerate(zip(names, queries, strict=False))
    ] or [{"name": "Keywords", "query": "", "error": None}]
    page = render_template(
        "web/new.html",
        form=form,
        rows=rows,
        message=message,
        cadences=CADENCES,
        weekdays=WEEKDAYS,
    )
    return page, status
