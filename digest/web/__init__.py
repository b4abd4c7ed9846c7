"""The web app (`digest serve`): admin UI, subscriber pages reached by signed links, feeds.

`create_app(settings, store=None)` returns a Flask app; production serves it with waitress
(`digest serve`). Pages are rendered on the server from `templates/web/` through the project's
template search path (overrides first), autoescaped, with StrictUndefined. The only script is a
static file (the live preview), so the Content-Security-Policy forbids inline scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from flask import Flask, current_app, render_template
from werkzeug.exceptions import HTTPException
from werkzeug.routing import IntegerConverter

from digest import templates as templatemod
from digest.config import Settings
from digest.links import LinkSigner, secret_key
from digest.store.base import MAX_ID
from digest.web.preview import CoverageIndex
from digest.web.security import LoginThrottle, csrf_token, security_headers

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

TransportFactory = Callable[[Settings], Any]


class _StoreId(IntegerConverter):
    """`<int:...>` in our routes: at most the largest id the store can hold."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(map, *args, **kwargs)


def _default_transport(settings: Settings) -> Any:
    from digest.mail import make_transport

    return make_transport(settings)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class WebState:
    """What the views share, kept on the app (never module-global)."""

    settings: Settings
    store: Any
    signer: LinkSigner
    transport_factory: TransportFactory = _default_transport
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    clock: Callable[[], datetime] = _utcnow
    owns_store: bool = False
    # The stored papers a topic's coverage warning counts against, indexed once per change.
    coverage: CoverageIndex = field(default_factory=CoverageIndex)
    # Set by create_app: the sign-up rate limits and the confirmation sender thread.
    signup_limiter: Any = None
    mailer: Any = None


def _format_time(moment: datetime | None) -> str:
    """A stored time as the admin reads it: UTC, to the minute."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _log_request(response: Any) -> Any:
    """One line per request. The route's pattern stands for the path: paths hold signed
    tokens and feed tokens, which a log must not keep (anyone reading it could use them)."""
    from flask import request

    rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
    length = response.calculate_content_length()
    log.info(
        "%s %s %d %s %s",
        request.method,
        rule,
        response.status_code,
        "-" if length is None else f"{length}B",
        request.remote_addr or "-",
    )
    return response


def state() -> WebState:
    """The WebState of the app handling the current request."""
    return current_app.extensions["digest"]


def create_app(
    settings: Settings,
    store: Any = None,
    *,
    transport_factory: TransportFactory | None = None,
    throttle: LoginThrottle | None = None,
    clock: Callable[[], datetime] | None = None,
    log_requests: bool = False,
) -> Flask:
    """Build the Flask app; opens the settings' database unless a store is given
    (`log_requests`: one log line per request, as `digest serve` writes them)."""
    owns = store is None
    if store is None:
        from digest.store import Store

        store = Store.open(settings.database.url)
    secret = secret_key(store, settings)
    app = Flask(
        "digest.web",
        static_folder=str(STATIC_DIR),
        static_url_path="/static",
        template_folder=None,
    )
    https = settings.site.base_url.startswith("https://")
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="digest_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=256 * 1024,  # forms are small; refuse anything bigger
        SEND_FILE_MAX_AGE_DEFAULT=3600,
        # No Set-Cookie on every response: feeds and static files stay cacheable.
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    # One template search path for email and web (override_dir first); autoescape everything
    # but .txt, and fail loudly on a missing variable instead of rendering an empty string.
    app.jinja_options = {
        **app.jinja_options,
        "autoescape": templatemod.autoescape_for,
        "undefined": jinja2.StrictUndefined,
    }
    app.jinja_env.loader = jinja2.FileSystemLoader(
        [str(d) for d in templatemod.template_dirs(settings)]
    )
    app.jinja_env.globals.update(csrf_token=csrf_token, site_title=settings.site.title)
    app.jinja_env.filters["dt"] = _format_time
    app.extensions["digest"] = WebState(
        settings=settings,
        store=store,
        signer=LinkSigner(secret),
        transport_factory=transport_factory or _default_transport,
        throttle=throttle or LoginThrottle(),
        clock=clock or _utcnow,
        owns_store=owns,
    )

    from digest.web import admin, pages, public
    from digest.web.mailer import ConfirmationMailer
    from digest.web.ratelimit import SignupLimiter

    web_state = app.extensions["digest"]
    web_state.signup_limiter = SignupLimiter(
        settings.web.signup_limit_per_client, settings.web.signup_limit_per_address
    )
    web_state.mailer = ConfirmationMailer(app)

    # Ids in paths past what the store holds (64-bit) are no page: 404, not an overflow's 500.
    app.url_map.converters["int"] = _StoreId
    app.register_blueprint(public.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(admin.bp, url_prefix="/admin")
    app.after_request(security_headers)
    if log_requests:
        app.after_request(_log_request)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        if exc.code is None or exc.code < 400:
            return exc
        page = render_template(
            "web/error.html", code=exc.code, title=exc.name, message=exc.description or ""
        )
        # the exception's own headers but its text/plain type: a 405's Allow (RFC 9110)
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return page, exc.code, headers

    return app
