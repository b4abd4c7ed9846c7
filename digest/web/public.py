"""Public pages: subscriber self-service by signed links, optional sign-up, feeds over HTTP."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, abort, jsonify, render_template, request, url_for

from digest import subscribers as subs
from digest.errors import DigestError, NotFoundError
from digest.feed import (
    EPOCH,
    STYLESHEET_FILE,
    STYLESHEET_PATH,
    FeedEntry,
    build_feed,
    conditional_response,
)
from digest.feedback import VERDICT_LABELS, examples_by_topic, give_feedback
from digest.links import (
    CONFIRM_MAX_AGE,
    LinkError,
    archive_url,
    check_feedback_mac,
    feedback_links,
    links_for,
)
from digest.models import CADENCES, StatusChange, Subscriber, SubscriberStatus, Topic
from digest.publish import tag_authority
from digest.urls import FeedFormat, feed_url
from digest.web import STATIC_DIR, state
from digest.web.admin import (
    WEEKDAYS,
    _submitted_form,
    _topic_rows,
    coverage_index,
    field_errors,
    form_warnings,
    remove_example_from_form,
    time_zones,
    warnings_json,
)
from digest.web.mailer import ConfirmationJob
from digest.web.preview import backtest, parse_topic_rows, row_warnings
from digest.web.security import check_csrf

log = logging.getLogger(__name__)
bp = Blueprint("public", __name__)

BAD_LINK = "This link is not valid. It may be mistyped, or no longer in use."
FEED_MAX_AGE = 300  # seconds a reader may reuse a feed without asking again


@bp.get("/")
def index() -> Any:
    """A small landing page: feeds, sign-up (when enabled), admin."""
    st = state()
    base = st.settings.site.base_url
    return render_template(
        "web/index.html",
        feeds=_alternates(base, None, st.settings.site.title),
        signup=st.settings.web.signup_enabled,
        feed_rss=feed_url(base, "rss"),
        feed_atom=feed_url(base, "atom"),
    )


def _alternates(base: str, token: str | None, title: str) -> list[tuple[str, str, str]]:
    """(MIME type, title, URL) of a feed pair, for <link rel="alternate"> autodiscovery."""
    return [
        ("application/rss+xml", f"{title} (RSS)", feed_url(base, "rss", token)),
        ("application/atom+xml", f"{title} (Atom)", feed_url(base, "atom", token)),
    ]


def _from_link(purpose: str, signed: str, max_age: int | None = None) -> Subscriber:
    """The subscriber a signed link names; 404 alike for tampered, foreign or stale links."""
    st = state()
    try:
        token = st.signer.read_token(purpose, signed, max_age=max_age)
        sub = subs.subscriber_by_token(st.store, token)
    except (LinkError, NotFoundError):
        abort(404, description=BAD_LINK)
    if sub is None:
        abort(404, description=BAD_LINK)
    return sub


# --- manage ---------------------------------------------------------------------------------


@bp.route("/manage/<signed>", methods=["GET", "POST"])
def manage(signed: str) -> Any:
    """The subscriber's own page: topics, cadence, time and zone; resubscribe."""
    sub = _from_link("manage", signed)
    st = state()
    message = ""
    notes: list[str] = []  # warnings of the topics just saved (they never block saving)
    errors: list = []
    topics = list(sub.topics)
    form = {
        "name": sub.name,
        "cadence": sub.cadence,
        "time": sub.time,
        "tz": sub.tz,
        "weekday": str(sub.weekday),
    }
    status = 200
    if request.method == "POST":
        check_csrf()
        action = request.form.get("action", "save")
        if action not in ("save", "remove_example", "resubscribe"):
            abort(400, description=f"unknown action {action[:40]!r}")
        if action == "remove_example":
            if remove_example_from_form(st.store, sub):
                message = "Example removed."
            else:
                message = "That example was already removed."
        elif action == "resubscribe":
            # A new double opt-in: a confirmation email, whose link (POST) brings them back.
            if sub.status == SubscriberStatus.UNSUBSCRIBED:
                wait = st.signup_limiter.hit_address(sub.email)
                if wait:
                    return _too_many(wait)
                if not st.mailer.submit(ConfirmationJob(email=sub.email)):
                    return _busy()
            # as the sign-up says it: within confirm_interval_minutes no second one is sent
            message = (
                f"A confirmation email is on its way to {sub.email} (at most one an hour). "
                "Follow its link and press Confirm to subscribe again."
            )
        else:
            topics, errors = parse_topic_rows(
                request.form.getlist("topic_name"), request.form.getlist("topic_query")
            )
            form = {**_submitted_form(), "name": sub.name}
            if not errors:
                try:
                    sub = subs.edit_subscriber(
                        st.store,
                        st.settings,
                        sub.email,
                        name=sub.name,
                        topics=topics,
                        cadence=form["cadence"] or sub.cadence,
                        time=form["time"] or sub.time,
                        tz=form["tz"] or sub.tz,
                        weekday=form["weekday"].strip() or None,  # checked by edit
                    )
                    sub = subs.get_subscriber(st.store, sub.email)
                    message = "Saved. Your next digest follows the new settings."
                    notes = subs.topic_notes(topics, coverage_index())
                    if not topics:
                        notes.insert(0, "You have no topics now: no digest is sent until you "
                                        "add one.")  # fmt: skip
                except DigestError as exc:
                    message = str(exc)
                    status = 400
            else:
                status = 400
    links = links_for(st.settings, st.signer, sub)
    page = render_template(
        "web/manage.html",
        sub=sub,
        form=form,
        rows=_topic_rows(topics, errors),
        errors=errors,
        message=message,
        notes=notes,
        ok=status == 200,
        cadences=CADENCES,
        weekdays=WEEKDAYS,
        signed=signed,
        unsubscribe_url=url_for(
            "public.unsubscribe",
            signed=st.signer.make_token("unsubscribe", sub.token),
        ),
        feed_rss=feed_url(st.settings.site.base_url, "rss", sub.token),
        feed_atom=feed_url(st.settings.site.base_url, "atom", sub.token),
        manage_url=links.manage_url,
        archive_url=archive_url(st.settings, st.signer, sub),
        # a sign-up not confirmed yet has no feed (it answers 404)
        feeds=[]
        if sub.status == SubscriberStatus.PENDING
        else _alternates(st.settings.site.base_url, sub.token, "Your papers"),
        examples=examples_by_topic(st.store, sub),
    )
    return page, status


# --- feedback links -------------------------------------------------------------------------


@bp.route(
    "/feedback/<int:subscriber_id>/<int:paper_id>/<int:topic_index>/<verdict>/<mac>",
    methods=["GET", "POST"],
)
def feedback(subscriber_id: int, paper_id: int, topic_index: int, verdict: str, mac: str) -> Any:
    """A paper's "More like this" / "Not for me" link. GET (and HEAD) only shows the paper and
    one button, since mail scanners fetch every link; the POST (CSRF-checked) records, and its
    page offers an undo (another POST)."""
    st = state()
    sub = st.store.subscriber_by_id(subscriber_id)
    if sub is None:
        abort(404, description=BAD_LINK)
    try:
        topic = check_feedback_mac(st.signer.feedback_key, sub, paper_id, topic_index, verdict, mac)
    except LinkError:
        abort(404, description=BAD_LINK)
    paper = st.store.papers_by_ids([paper_id]).get(paper_id)
    if paper is None:
        abort(404, description=BAD_LINK)
    step = "confirm"
    if request.method == "POST":
        check_csrf()
        action = request.form.get("action", "")
        if action not in ("", "undo"):
            abort(400, description=f"unknown action {action[:40]!r}")
        undo = action == "undo"
        give_feedback(st.store, sub, paper, verdict, topic=topic, undo=undo)
        step = "undone" if undo else "recorded"
    manage = st.signer.make_token("manage", sub.token)
    return render_template(
        "web/feedback.html",
        paper=paper,
        topic=topic,
        verdict=verdict,
        label=VERDICT_LABELS[verdict],
        step=step,
        action=request.path,
        manage_url=url_for("public.manage", signed=manage),
    ), {"Cache-Control": "no-store"}


# --- unsubscribe ----------------------------------------------------------------------------


def _unsubscribe_page(sub: Subscriber, signed: str) -> str:
    return render_template(
        "web/unsubscribe.html",
        sub=sub,
        action=url_for("public.unsubscribe", signed=signed),
        manage_url=url_for("public.manage", signed=state().signer.make_token("manage", sub.token)),
    )


@bp.route("/unsubscribe/<signed>", methods=["GET", "POST"])
def unsubscribe(signed: str) -> Any:
    """GET shows a confirm button (link scanners fetch URLs); POST unsubscribes."""
    sub = _from_link("unsubscribe", signed)
    if request.method != "POST":  # GET and HEAD only show the page
        return _unsubscribe_page(sub, signed)
    check_csrf()
    subs.unsubscribe_by_token(state().store, sub.token, how=StatusChange.LINK)
    return _done_page(sub)


def _done_page(sub: Subscriber) -> str:
    manage = state().signer.make_token("manage", sub.token)
    return render_template(
        "web/unsubscribed.html", sub=sub, manage_url=url_for("public.manage", signed=manage)
    )


@bp.route("/unsubscribe/<signed>/one-click", methods=["GET", "POST"])
def one_click(signed: str) -> Any:
    """RFC 8058 one-click: a POST unsubscribes (no CSRF token, no redirect, idempotent 200).

    The signed link is the capability; mail clients POST `List-Unsubscribe=One-Click` here
    without cookies. A GET only shows the confirm page, since scanners fetch every URL.
    """
    sub = _from_link("unsubscribe", signed)
    if request.method != "POST":  # GET and HEAD only show the page
        return _unsubscribe_page(sub, signed)
    subs.unsubscribe_by_token(state().store, sub.token, how=StatusChange.ONE_CLICK)
    return Response(
        "You are unsubscribed.\n", status=200, mimetype="text/plain", headers=_no_store()
    )


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store"}


# --- sign-up with double opt-in -------------------------------------------------------------


def _signup_enabled() -> None:
    if not state().settings.web.signup_enabled:
        abort(404, description="Sign-up is not open on this site.")


# Topics a newcomer can pick and edit: plain words first, then one of each query feature.
EXAMPLE_TOPICS = (
    ("LLM inference", "speculative decoding, KV cache, quantization"),
    ("Diffusion models", '"diffusion model" AND (image OR video)'),
    ("Robotics", "robot*, manipulation, embodied"),
    ("Agents", "agent* AND (tool OR planning) AND NOT survey"),
    ("Retrieval", "RAG, retrieval-augmented, title:retrieval"),
)
SIGNUP_TOPIC_ROWS = 2


def _signup_page(
    form: dict[str, str],
    rows: list[dict[str, Any]],
    fields: dict[str, str],
    message: str = "",
) -> str:
    st = state()
    return render_template(
        "web/signup.html",
        form=form,
        rows=rows,
        fields=fields,
        message=message,
        examples=EXAMPLE_TOPICS,
        cadences=[c for c in CADENCES if c != "feed"] + ["feed"],
        weekdays=WEEKDAYS,
        zones=time_zones(),
        default_tz=st.settings.schedule.default_tz,
    )


def _signup_rows() -> tuple[list[Topic], list[Any], list[dict[str, Any]]]:
    """The submitted topics, their errors, and the rows to show again; the old single
    `keywords` field still works (a topic named Keywords)."""
    names = request.form.getlist("topic_name")
    queries = request.form.getlist("topic_query")
    if not any(q.strip() for q in queries) and request.form.get("keywords", "").strip():
        names, queries = ["Keywords"], [request.form.get("keywords", "")]
    topics, errors = parse_topic_rows(names, queries)
    by_index = {e.index: e for e in errors}
    warned = row_warnings(names, queries, coverage_index())
    rows = [
        {"name": n, "query": q, "error": by_index.get(i), "warnings": warned.get(i, [])}
        for i, (n, q) in enumerate(zip(names, queries, strict=False))
        if n.strip() or q.strip() or i in by_index
    ]
    rows += [{"name": "", "query": "", "error": None}] * max(1, SIGNUP_TOPIC_ROWS - len(rows))
    return topics, errors, rows


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> Any:
    """Public sign-up (off unless web.signup_enabled): pending until the email is confirmed.

    The request only validates, rate-limits (per client, per address) and queues the work for
    the confirmation sender (web/mailer.py): known and new addresses get the same answer after
    the same work, and no mail is sent inside the request.
    """
    _signup_enabled()
    st = state()
    form = {
        "email": "",
        "name": "",
        "cadence": "daily",
        "time": st.settings.schedule.default_time,
        "tz": st.settings.schedule.default_tz,
        "weekday": "0",
    }
    if request.method != "POST":  # GET and HEAD only show the page
        rows = [{"name": "", "query": "", "error": None} for _ in range(SIGNUP_TOPIC_ROWS)]
        return _signup_page(form, rows, {})
    check_csrf()
    wait = st.signup_limiter.hit_client(request.remote_addr or "?")
    if wait:
        return _too_many(wait)
    form = {k: request.form.get(k, v).strip() for k, v in form.items()}
    form["tz_chosen"] = "1"  # shown again as submitted: the script must not replace it
    topics, errors, rows = _signup_rows()
    fields = field_errors({**form, "name": form["name"][:100]})
    if not topics and not errors:
        fields["topics"] = "Give at least one topic with keywords (pick an example to start)."
    if errors or fields:
        count = len(errors) + len(fields)
        message = f"{count} problem{'s' if count != 1 else ''} to fix; each is shown at its field."
        return _signup_page(form, rows, fields, message), 400
    email = subs.normalize_email(form["email"])
    wait = st.signup_limiter.hit_address(email)
    if wait:
        return _too_many(wait)
    schedule = {k: form[k] for k in ("cadence", "time", "tz", "weekday")}
    job = ConfirmationJob(
        email=email, name=form["name"][:100], topics=tuple(topics), schedule=schedule
    )
    if not st.mailer.submit(job):
        return _busy()
    # The same page whether or not the address was known: sign-up reveals no subscriber.
    notes = subs.topic_notes(topics, coverage_index())
    return render_template("web/signup_sent.html", email=email, notes=notes)


@bp.post("/signup/preview")
def signup_preview() -> Any:
    """The sign-up form's live preview: what these topics would have brought over the last
    dumps (the same backtest as the admin's). CSRF-checked; it reads, never writes."""
    _signup_enabled()
    check_csrf()
    st = state()
    topics, errors, _ = _signup_rows()
    result = None
    if not errors:
        n = st.settings.web.preview_dumps
        stored = sum(1 for d in st.store.recent_dumps(4 * n) if d.status == "stored")
        result = backtest(st.store.papers_of_recent_dumps(n), [], topics, dumps=min(n, stored))
    html = render_template("web/_preview.html", preview=result, errors=errors, fresh=True)
    return jsonify(
        html=html,
        errors={str(e.index): render_template("web/_topic_error.html", error=e) for e in errors},
        warnings=warnings_json(form_warnings()),  # by form row index, as the errors
    )


def _too_many(wait: int) -> Any:
    """429 with Retry-After and a page saying when to try again."""
    at = state().clock() + timedelta(seconds=wait)
    minutes = math.ceil(wait / 60)
    after = f"{wait} seconds" if wait < 120 else f"{minutes} minutes"
    page = render_template(
        "web/error.html",
        code=429,
        title="Too many requests",
        message=f"Too many sign-up requests. Try again in {after} (after {at:%H:%M} UTC).",
    )
    return page, 429, {"Retry-After": str(wait)}


def _busy() -> Any:
    page = render_template(
        "web/error.html",
        code=503,
        title="Busy",
        message="Too many sign-ups are waiting to be handled. Try again in a minute.",
    )
    return page, 503, {"Retry-After": "60"}


@bp.route("/confirm/<signed>", methods=["GET", "POST"])
def confirm(signed: str) -> Any:
    """GET shows a confirm button (mail scanners fetch GETs); POST activates the pending
    subscription, or brings back someone who unsubscribed and asked for this new link."""
    sub = _from_link("confirm", signed, max_age=CONFIRM_MAX_AGE)
    st = state()
    if request.method == "POST":
        check_csrf()
        subs.confirm(st.store, sub)
        sub = subs.get_subscriber(st.store, sub.email)
    manage = url_for("public.manage", signed=st.signer.make_token("manage", sub.token))
    return render_template(
        "web/confirm.html",
        sub=sub,
        can_confirm=subs.can_confirm(st.store, sub),
        action=url_for("public.confirm", signed=signed),
        manage_url=manage,
    )


# --- feeds ----------------------------------------------------------------------------------


def _feed_response(entries: list[FeedEntry], fmt: FeedFormat, title: str, token: str | None) -> Any:
    settings = state().settings
    doc = build_feed(
        entries,
        fmt=fmt,
        title=title,
        self_url=feed_url(settings.site.base_url, fmt, token),
        site_url=settings.site.base_url,
        description=f"New papers from {settings.site.title}",
        max_items=settings.feeds.max_items,
        max_bytes=settings.feeds.max_bytes,
        authority=tag_authority(state().store, settings),
        stylesheet=STYLESHEET_PATH,
    )
    gzipped = request.accept_encodings["gzip"] > 0
    if gzipped:
        # Another representation, so another strong ETag; the bytes are made only for a 200.
        doc = dataclasses.replace(doc, etag=doc.etag[:-1] + '-gzip"')
    headers = doc.headers()
    if doc.last_modified == EPOCH:
        del headers["Last-Modified"]  # an empty feed: no date rather than 1970
    scope = "public" if token is None else "private"
    headers["Cache-Control"] = f"{scope}, max-age={FEED_MAX_AGE}"
    headers["Vary"] = "Accept, Accept-Encoding"
    if any(kind == "text/html" for kind in request.accept_mimetypes.values()):
        # A browser navigating to the feed: as application/rss+xml it shows raw text, as XML
        # it applies the feed's stylesheet (a readable page). Readers do not ask for text/html.
        headers["Content-Type"] = "application/xml; charset=utf-8"
    if conditional_response(
        doc, request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
    ):
        headers.pop("Content-Type")
        return Response(status=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
        return Response(gzip.compress(doc.body, mtime=0), status=200, headers=headers)
    return Response(doc.body, status=200, headers=headers)


@bp.get("/favicon.ico")
def favicon() -> Any:
    """The site icon (SVG; browsers that ask /favicon.ico by habit get it too)."""
    icon = STATIC_DIR / "favicon.svg"
    return Response(
        icon.read_bytes(),
        headers={"Content-Type": "image/svg+xml", "Cache-Control": "public, max-age=86400"},
    )


@bp.get(STYLESHEET_PATH)
def feed_stylesheet() -> Any:
    """The XSLT stylesheet the feeds name: a browser shows a feed as a readable page."""
    return Response(
        STYLESHEET_FILE.read_bytes(),
        headers={
            "Content-Type": "text/xsl; charset=utf-8",
            "Cache-Control": "public, max-age=3600",
        },
    )


@bp.get("/feeds/all.<any(rss, atom):fmt>")
def feed_all(fmt: FeedFormat) -> Any:
    """The public feed: the latest papers by when they were first stored."""
    st = state()
    papers = st.store.recent_papers(st.settings.feeds.max_items)
    entries = [FeedEntry(paper=p) for p in papers]
    return _feed_response(entries, fmt, st.settings.site.title, None)


@bp.get("/feeds/s/<token>.<any(rss, atom):fmt>")
def feed_subscriber(token: str, fmt: FeedFormat) -> Any:
    """A subscriber's private feed: the papers of their ledger, the topic as category."""
    st = state()
    try:
        sub = subs.subscriber_by_token(st.store, token)
    except (NotFoundError, DigestError):
        sub = None
    if sub is None and st.store.feed_gone(token):
        abort(410, description="This feed has ended: its subscriber was removed.")
    if sub is None or sub.status == SubscriberStatus.PENDING:  # not subscribed (yet)
        abort(404, description="No such feed.")
    if sub.status == SubscriberStatus.UNSUBSCRIBED:
        # Gone for good: feed readers stop polling on 410, they keep polling a 404.
        abort(410, description="This feed has ended: its subscriber unsubscribed.")
    rows = st.store.ledger_entries(sub.id, st.settings.feeds.max_items)
    links = feedback_links(st.settings, st.signer.feedback_key, sub)
    entries = [
        FeedEntry(
            paper=e.paper,
            topics=e.item.topics,
            terms=e.item.terms,
            added=e.delivered_at,
            feedback=links.urls(e.paper.id, (e.item.topics or (None,))[0]),
        )
        for e in rows
    ]
    return _feed_response(entries, fmt, f"{st.settings.site.title}: your papers", token)
