"""Web security pieces: CSRF tokens, the admin login check and throttle, response headers."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Response, abort, request, session
from werkzeug.security import check_password_hash

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

# No inline script or style anywhere: the preview script and the stylesheet are static files.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


def csrf_token() -> str:
    """The session's CSRF token, created on first use (a form or the preview script sends it)."""
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_FIELD] = token
    return token


def check_csrf() -> None:
    """Abort with 400 unless the request carries the session's CSRF token (form or header)."""
    expected = session.get(CSRF_FIELD)
    sent = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not isinstance(expected, str) or not expected or not hmac.compare_digest(sent, expected):
        abort(400, description="The form has expired or did not come from this site; reload it.")


def password_ok(password_hash: str, password: str) -> bool:
    """Whether the password matches the configured werkzeug hash (False when none is set)."""
    if not password_hash or not password:
        return False
    try:
        return check_password_hash(password_hash, password)
    except (ValueError, TypeError):
        return False  # a malformed hash in the settings never lets anyone in


@dataclass
class LoginThrottle:
    """Failed logins per client address: after `free` failures each further one locks the
    address out for an exponentially growing time (capped). Kept in the app instance's memory:
    a restart forgets it, which is fine for slowing down guessing.
    """

    free: int = 3
    base_seconds: float = 1.0
    max_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_seconds(self, client: str) -> float:
        """How long this client must wait before its next attempt is even checked."""
        with self._lock:
            _, until = self._failures.get(client, (0, 0.0))
        return max(0.0, until - self.clock())

    def failed(self, client: str) -> float:
        """Record a failure; returns the lockout it earned (0 while within the free tries)."""
        with self._lock:
            count, _ = self._failures.get(client, (0, 0.0))
            count += 1
            delay = 0.0
            if count > self.free:
                delay = min(self.max_seconds, self.base_seconds * 2 ** (count - self.free - 1))
            self._failures[client] = (count, self.clock() + delay)
            if len(self._failures) > 10_000:  # bound memory under a spray of addresses
                self._failures.pop(next(iter(self._failures)))
            return delay

    def succeeded(self, client: str) -> None:
        """Forget the client's failures."""
        with self._lock:
            self._failures.pop(client, None)


def security_headers(response: Response) -> Response:
    """Add CSP, nosniff, frame and referrer headers to every response."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # Signed links live in URLs: never hand them to another site in a Referer header.
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if "Cache-Control" not in response.headers and response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response
