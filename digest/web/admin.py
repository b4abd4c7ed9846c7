"""Admin pages: login, dashboard, subscriber list, subscriber page with live preview."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

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
from digest.errors import ConsentError, DigestError, QueryError
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
from digest.rank import BACKGROUND
from digest.schedule import next_slot
from digest.urls import feed_url
from digest.web import state
from digest.web.charts import CHART_DAYS, daily_chart
from digest.web.preview import (
    Preview,
    TopicError,
    _located,
    backtest,
    parse_topic_rows,
    row_warnings,
)
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
    """Health warnings, next deliveries, recent failures, a per-day chart, subscribers by status,
    recent dumps, digests and bounces."""
    st = state()
    store = st.store
    counts = subs.status_counts(store)
    now = st.clock()
    days = daily_chart(store.daily_counts(now - timedelta(days=CHART_DAYS - 1)), now, CHART_DAYS)
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
        upcoming=store.next_deliveries(10),
        failures=store.recent_failures(10),
        chart=days,
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
    after = request.args.get("after", "")[:320] or None
    if after is not None:  # keyset pages (the Next links); ?page= still works for old links
        found = store.subscribers_after(
            search=search or None, status=status or None, after=after, limit=PAGE_SIZE + 1
        )
        rows = found[:PAGE_SIZE]
        page = 0
    else:
        page = min(page, pages)
        rows = subs.list_subscribers(
            store,
            search=search or None,
            status=status or None,
            offset=(page - 1) * PAGE_SIZE,
            limit=PAGE_SIZE + 1,
        )
        found, rows = rows, rows[:PAGE_SIZE]
    next_after = rows[-1].email if len(found) > PAGE_SIZE else None
    return render_template(
        "web/subscribers.html",
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        next_after=next_after,
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


def coverage_index() -> Any:
    """The index of the stored papers that coverage warnings count against (or None)."""
    st = state()
    return st.coverage.get(st.store)


def form_warnings() -> dict[int, list[str]]:
    """The warnings of the submitted topic rows, by row index."""
    names, queries = request.form.getlist("topic_name"), request.form.getlist("topic_query")
    return row_warnings(names, queries, coverage_index())


def warnings_json(warnings: dict[int, list[str]]) -> dict[str, str]:
    """A live preview's warnings: each row's HTML fragment, by row index (as errors are)."""
    return {
        str(i): render_template("web/_topic_warning.html", warnings=notes)
        for i, notes in warnings.items()
    }


def flash_warnings(topics: list[Topic]) -> None:
    """Flash the warnings of topics just saved: they never block saving, but are said."""
    for note in subs.topic_notes(topics, coverage_index()):
        flash(f"Warning: {note}", "warning")


def _preview(saved: list[Topic], edited: list[Topic]) -> Preview:
    st = state()
    n = st.settings.web.preview_dumps
    stored = sum(1 for d in st.store.recent_dumps(4 * n) if d.status == "stored")
    # examples are read (with their models' background, as the queue stage reads it) only
    # when a topic has some: a preview of keywords alone never loads scikit-learn
    ids = {i for t in [*saved, *edited] for i in (*t.likes, *t.dislikes)}
    return backtest(
        st.store.papers_of_recent_dumps(n),
        saved,
        edited,
        dumps=min(n, stored),
        max_papers=st.settings.mail.max_papers,
        known=st.store.papers_by_ids(ids) if ids else None,
        background=st.store.recent_papers(limit=BACKGROUND) if ids else None,
    )


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
    before = _int_arg("before")
    sent = st.store.delivery_history(sub.id, before=before, limit=PAGE_SIZE + 1)
    page = render_template(
        "web/subscriber.html",
        sub=sub,
        deliveries=sent[:PAGE_SIZE],
        deliveries_next=sent[PAGE_SIZE - 1].id if len(sent) > PAGE_SIZE else None,
        deliveries_before=before,
        next_delivery=_next_delivery(sub, st.clock()),
        operator=st.settings.site.operator_email,
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
        zones=time_zones(),
        manage_url=links.manage_url,
        feed_rss=feed_url(st.settings.site.base_url, "rss", sub.token),
        examples=examples_by_topic(st.store, sub),
    )
    return page, status


def _int_arg(name: str) -> int | None:
    """A positive whole-number query argument (a keyset bound), or None."""
    value = request.args.get(name, "")
    return int(value) if value.isdigit() and 0 < int(value) < 2**63 else None


def _next_delivery(sub: Subscriber, now: datetime) -> str:
    """When the subscriber's next digest goes out, in words for the admin."""
    if not sub.status.receives_mail:
        return f"none while {sub.status}"
    if not sub.cadence.is_scheduled:
        return "as papers arrive" if sub.cadence.sends_email else "feed only, no email"
    try:
        slot = next_slot(sub, now)
    except (ValueError, KeyError):  # a zone the system no longer knows
        return "unknown (time zone not found)"
    return f"{_format_time_local(slot, sub.tz)} ({slot:%Y-%m-%d %H:%M} UTC)"


def _format_time_local(moment: datetime, tz: str) -> str:
    try:
        return moment.astimezone(ZoneInfo(tz)).strftime("%a %Y-%m-%d %H:%M ") + tz
    except (ValueError, KeyError):
        return moment.strftime("%Y-%m-%d %H:%M UTC")


def _topic_rows(topics: list[Topic], errors: list[TopicError]) -> list[dict[str, Any]]:
    """Form rows: the topics (or the submitted rows, when they had errors) plus a blank row,
    each with its error and its warnings."""
    index = coverage_index()
    if errors:
        by_index = {e.index: e for e in errors}
        names, queries = request.form.getlist("topic_name"), request.form.getlist("topic_query")
        warned = row_warnings(names, queries, index)
        rows = [
            {"name": n, "query": q, "error": by_index.get(i), "warnings": warned.get(i, [])}
            for i, (n, q) in enumerate(zip(names, queries, strict=False))
            if n.strip() or q.strip()
        ]
    else:
        warned = row_warnings([t.name for t in topics], [t.query for t in topics], index)
        rows = [
            {"name": t.name, "query": t.query, "error": None, "warnings": warned.get(i, [])}
            for i, t in enumerate(topics)
        ]
    rows.append({"name": "", "query": "", "error": None, "warnings": []})
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
            weekday=form["weekday"].strip() or None,  # subs.parse_weekday checks it
        )
    except ConsentError as exc:
        return _render_subscriber(sub, topics=topics, form=form, message=str(exc), status=409)
    except DigestError as exc:
        return _render_subscriber(sub, topics=topics, form=form, message=str(exc), status=400)
    flash("Saved. The new profile applies to the next digests.")
    flash_warnings(topics)
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
        warnings=warnings_json(form_warnings()),
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


NEW_TOPIC_ROWS = 3  # blank topic rows the add form offers (more are added by the script)


def field_errors(form: dict[str, str], *, email: bool = True) -> dict[str, str]:
    """Every field error of a profile form at once, by field name (empty when all is well)."""
    checks: list[tuple[str, Callable[[str], Any]]] = [
        ("name", subs.check_name),
        ("cadence", subs.check_cadence),
        ("time", subs.check_time),
        ("tz", subs.check_tz),
    ]
    if email:
        checks.insert(0, ("email", subs.normalize_email))
    found: dict[str, str] = {}
    for key, check in checks:
        try:
            check(form.get(key, ""))
        except DigestError as exc:
            found[key] = str(exc)
    if form.get("weekday", "0") and _weekday(form.get("weekday", "0")) is None:
        found["weekday"] = "weekday must be one of Monday..Sunday"
    return found


@functools.lru_cache(maxsize=1)
def time_zones() -> list[str]:
    """The IANA zone names the picker offers (what check_tz accepts), sorted."""
    from zoneinfo import available_timezones

    return sorted(z for z in available_timezones() if "/" in z or z == "UTC")


def _new_page(
    form: dict[str, str], rows: list[dict[str, Any]], fields: dict[str, str], message: str
) -> str:
    return render_template(
        "web/new.html",
        form=form,
        rows=rows,
        fields=fields,
        message=message,
        cadences=CADENCES,
        weekdays=WEEKDAYS,
        zones=time_zones(),
        preview=None,
        errors=[],
    )


@bp.route("/subscribers/new", methods=["GET", "POST"])
@login_required
def new_subscriber() -> Any:
    """Add an active subscriber: several topics, live preview, every error shown at once."""
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
    blank = {"name": "", "query": "", "error": None}
    if request.method != "POST":  # GET and HEAD only show the page
        fresh: list[dict[str, Any]] = [{"name": "Keywords", "query": "", "error": None}]
        fresh += [dict(blank) for _ in range(NEW_TOPIC_ROWS - 1)]
        return _new_page(defaults, fresh, {}, "")
    form = {k: request.form.get(k, v).strip() for k, v in defaults.items()}
    topics, errors = _form_topics()
    fields = field_errors(form)
    try:
        backfill = int(form["backfill"] or "0")
        if backfill < 0:
            raise ValueError
    except ValueError:
        fields["backfill"] = "Backfill must be a whole number of days (0 or more)."
        backfill = 0
    if not topics and not errors:
        fields["topics"] = "Give at least one topic with keywords."
    message = ""
    status = 400
    if not errors and not fields:
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
            flash_warnings(topics)
            return redirect(url_for("admin.subscriber", sid=sub.id))
    names = request.form.getlist("topic_name")
    queries = request.form.getlist("topic_query")
    by_index = {e.index: e for e in errors}
    warned = form_warnings()
    rows: list[dict[str, Any]] = [
        {"name": n, "query": q, "error": by_index.get(i), "warnings": warned.get(i, [])}
        for i, (n, q) in enumerate(zip(names, queries, strict=False))
    ] or [{"name": "Keywords", "query": "", "error": None}]
    count = len(errors) + len(fields) + (1 if message else 0)
    if count > 1 and not message:
        message = f"{count} problems to fix; each is shown at its field."
    return _new_page(form, rows, fields, message), status


@bp.post("/subscribers/new/preview")
@login_required
def new_preview() -> Any:
    """The add form's live preview: what the topics would have matched (nothing saved yet)."""
    topics, errors = _form_topics()
    result = None if errors else _preview([], topics)
    html = render_template("web/_preview.html", preview=result, errors=errors, fresh=True)
    return jsonify(
        html=html,
        errors={str(e.index): render_template("web/_topic_error.html", error=e) for e in errors},
        warnings=warnings_json(form_warnings()),
    )


# --- sent digests, test sends -------------------------------------------------------------


def _rendered(digest: Any) -> Any:
    """A digest rendered as its email (HTML and text), with the subscriber's real links."""
    from digest.render import Renderer

    st = state()
    return Renderer(st.settings).render(
        digest, links_for(st.settings, st.signer, digest.subscriber)
    )


def _digest_of(sid: int, did: int) -> Any:
    """The recorded digest `did` of subscriber `sid`, or 404."""
    from digest.outbox import build_digest

    st = state()
    if st.store.digest_owner(did) != sid:
        abort(404, description="No such digest for this subscriber.")
    return build_digest(st.store, did)


@bp.get("/subscribers/<int:sid>/digests/<int:did>")
@login_required
def digest_view(sid: int, did: int) -> Any:
    """A sent (or queued) digest, read-only: its details, text part and a framed HTML part."""
    sub = _subscriber(sid)
    digest = _digest_of(sid, did)
    row = next(iter(state().store.delivery_history(sid, before=did + 1, limit=1)), None)
    rendered = _rendered(digest) if digest.items else None
    return render_template(
        "web/admin_digest.html", sub=sub, digest=digest, row=row, rendered=rendered
    )


@bp.get("/subscribers/<int:sid>/digests/<int:did>/email.html")
@login_required
def digest_html(sid: int, did: int) -> Any:
    """The digest's HTML part alone, sandboxed: no script, no form, no framing of the admin."""
    digest = _digest_of(sid, did)
    if not digest.items:
        abort(404, description="This digest holds no paper.")
    html = _rendered(digest).html
    return FlaskResponse(
        html,
        mimetype="text/html",
        headers={
            # The email's styles are inline (as mail clients need); the sandbox keeps it inert.
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; "
                "sandbox allow-popups allow-popups-to-escape-sandbox; frame-ancestors 'self'"
            ),
            "X-Frame-Options": "SAMEORIGIN",
        },
    )


@bp.post("/subscribers/<int:sid>/test")
@login_required
def send_test(sid: int) -> Any:
    """Send the subscriber's next digest (else their last one) to the operator, as a test:
    through the configured transport, recorded nowhere."""
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from digest.mail import MessageBuilder, OutgoingMessage
    from digest.outbox import build_digest
    from digest.pipeline import Cycle

    st = state()
    sub = _subscriber(sid)
    to = st.settings.site.operator_email
    if not to:
        flash("Set site.operator_email to send tests to yourself.", "error")
        return redirect(url_for("admin.subscriber", sid=sid))
    found = Cycle(st.store, st.settings).preview(sub)
    if found is None:
        last = st.store.delivery_history(sid, limit=1)
        if not last:
            flash("Nothing to send: no pending paper matches and no digest was sent yet.", "error")
            return redirect(url_for("admin.subscriber", sid=sid))
        rendered = _rendered(build_digest(st.store, last[0].id))
        what = "their last digest"
    else:
        rendered = found[0]
        what = "their next digest"
    builder = MessageBuilder(st.settings)
    msg = EmailMessage()
    msg["From"] = builder.from_addr
    msg["To"] = to
    msg["Subject"] = f"[test for {sub.email}] {rendered.subject}"
    msg["Date"] = format_datetime(st.clock())
    msg["Message-ID"] = make_msgid(domain=builder.from_addr.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(rendered.text)
    msg.add_alternative(rendered.html, subtype="html")
    transport = st.transport_factory(st.settings)
    try:
        transport.send(OutgoingMessage.from_email(msg, builder.from_addr))
    except DigestError as exc:
        flash(f"The test could not be sent: {exc}", "error")
    else:
        flash(f"Sent {what} to {to} as a test (not recorded as a delivery).")
    finally:
        transport.close()
    return redirect(url_for("admin.subscriber", sid=sid))


# --- papers -------------------------------------------------------------------------------

SEARCH_PAPERS = 5_000  # a search looks at this many most recent papers


@bp.get("/papers")
@login_required
def papers() -> Any:
    """The paper browser: newest first in keyset pages, or a query-language search."""
    from digest.match import preview_query

    st = state()
    q = request.args.get("q", "").strip()[:2_000]
    error = None
    hits: list[Any] = []
    total = 0
    before = _int_arg("before")
    nxt = None
    if q:
        try:
            found = preview_query(st.store.recent_papers(SEARCH_PAPERS), q, 100)
        except QueryError as exc:
            error = _located(0, exc, q)
        else:
            total = found.hits
            by_id = {p.id: p for p in found.papers}
            hits = [by_id[m.paper_id] for m in found.matches]
    else:
        page = st.store.papers_page(before=before, limit=PAGE_SIZE + 1)
        hits = page[:PAGE_SIZE]
        nxt = page[PAGE_SIZE - 1].id if len(page) > PAGE_SIZE else None
    received = st.store.recipient_counts([p.id for p in hits])
    return render_template(
        "web/papers.html",
        q=q,
        error=error,
        rows=hits,
        total=total,
        received=received,
        next_before=nxt,
        before=before,
        searched=SEARCH_PAPERS,
    )


@bp.get("/papers/<int:pid>")
@login_required
def paper(pid: int) -> Any:
    """One paper and who received it (keyset pages by subscriber id)."""
    st = state()
    found = st.store.paper_by_id(pid)
    if found is None:
        abort(404, description="No such paper.")
    after = _int_arg("after")
    rows = st.store.paper_recipients(pid, after=after, limit=PAGE_SIZE + 1)
    return render_template(
        "web/paper.html",
        paper=found,
        rows=rows[:PAGE_SIZE],
        next_after=rows[PAGE_SIZE - 1].subscriber_id if len(rows) > PAGE_SIZE else None,
        after=after,
    )


# --- bulk actions, CSV --------------------------------------------------------------------


def _selected_ids() -> list[int]:
    ids = [int(v) for v in request.form.getlist("sid") if v.isdigit()]
    return list(dict.fromkeys(ids))[:1000]


@bp.post("/subscribers/bulk")
@login_required
def bulk() -> Any:
    """Pause, resume or (after a confirmation page) remove the selected subscribers."""
    st = state()
    action = request.form.get("action", "")
    if action not in ("pause", "resume", "remove"):
        abort(400, description="Unknown action.")
    chosen = [s for s in (st.store.subscriber_by_id(i) for i in _selected_ids()) if s]
    if not chosen:
        flash("Select at least one subscriber.", "error")
        return redirect(url_for("admin.subscriber_list"))
    if action == "remove":
        if request.form.get("confirm") != "yes":
            return render_template("web/bulk_remove.html", chosen=chosen)
        for sub in chosen:
            subs.remove_subscriber(st.store, sub.email)
        flash(f"Removed {len(chosen)} subscriber{'s' if len(chosen) != 1 else ''}.")
        return redirect(url_for("admin.subscriber_list"))
    target = SubscriberStatus.PAUSED if action == "pause" else SubscriberStatus.ACTIVE
    done, refused = 0, []
    for sub in chosen:
        if sub.status == target:
            continue
        try:
            subs.set_status(st.store, sub.email, target, how=StatusChange.ADMIN)
        except DigestError:
            refused.append(sub.email)  # an unsubscribed person: only they can come back
        else:
            done += 1
    flash(f"{'Paused' if action == 'pause' else 'Resumed'} {done}.")
    if refused:
        flash(f"Not changed (unsubscribed or not allowed): {', '.join(refused)}", "error")
    return redirect(url_for("admin.subscriber_list"))


@bp.get("/subscribers.csv")
@login_required
def export_subscribers() -> Any:
    """Every subscriber as the CSV `digest subscriber import` reads back."""
    import io

    buffer = io.StringIO()
    subs.export_csv(state().store, buffer)
    return FlaskResponse(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={
            "Content-Disposition": 'attachment; filename="subscribers.csv"',
            "Cache-Control": "no-store",
        },
    )


@bp.route("/subscribers/import", methods=["GET", "POST"])
@login_required
def import_subscribers() -> Any:
    """Upload a CSV (the CLI's format): check only, or add and update; every bad row listed."""
    import tempfile
    from pathlib import Path

    if request.method != "POST":  # GET and HEAD only show the page
        return render_template("web/import.html", report=None, message="", dry_run=True)
    upload = request.files.get("file")
    dry_run = request.form.get("dry_run") == "1"
    if upload is None or not upload.filename:
        page = render_template(
            "web/import.html", report=None, message="Choose a CSV file.", dry_run=dry_run
        )
        return page, 400
    st = state()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.csv"
        upload.save(path)
        try:
            report = subs.import_csv(
                st.store, st.settings, path, dry_run=dry_run, index=coverage_index()
            )
        except DigestError as exc:
            message = str(exc).replace(str(path), "upload.csv")
            page = render_template("web/import.html", report=None, message=message, dry_run=dry_run)
            return page, 400
    # each row is named by its line and address, in the upload's name rather than ours
    errors = [str(replace(e, file="upload.csv")) for e in report.errors]
    warnings = [str(replace(w, file="upload.csv")) for w in report.warnings]
    page = render_template(
        "web/import.html",
        report=report,
        errors=errors,
        warnings=warnings,
        message="",
        dry_run=dry_run,
    )
    return page, 400 if errors else 200
