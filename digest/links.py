"""Signed links to a subscriber's pages: manage, unsubscribe, confirm (itsdangerous).

A link carries the subscriber's random token, signed with the site secret and a salt per purpose,
so a manage link cannot be replayed as an unsubscribe link and a tampered link fails the signature.
Every failure (bad signature, other purpose, expired, garbage) raises the same `LinkError`, so a
caller cannot tell them apart and neither can an attacker probing the endpoints.
"""

from __future__ import annotations

import functools
import json
import secrets
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from itsdangerous import BadData, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

from digest.config import Settings
from digest.errors import DigestError

if TYPE_CHECKING:
    from digest.render import Links
    from digest.store import Store

PURPOSES = ("manage", "unsubscribe", "confirm")
SECRET_META_KEY = "web.secret_key"
# A confirmation email that sat unanswered this long is stale; sign up again.
CONFIRM_MAX_AGE = 7 * 24 * 3600


class LinkError(DigestError):
    """A signed link is invalid, expired or meant for another purpose (deliberately vague)."""


class LinkSigner:
    """Signs and reads subscriber tokens, one salt per purpose."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise DigestError("web.secret_key: an empty secret cannot sign links")
        self._serializers = {
            purpose: URLSafeTimedSerializer(secret, salt=f"digest.{purpose}")
            for purpose in PURPOSES
        }
        self._signers = {p: s.make_signer(s.salt) for p, s in self._serializers.items()}

    def make_token(self, purpose: str, subscriber_token: str) -> str:
        """A URL-safe signed token for this purpose carrying the subscriber's token."""
        self._serializer(purpose)  # an unknown purpose is an error
        # What the serializer's dumps() writes for a str, without its zlib attempt (a random
        # token never compresses): that attempt was four fifths of the cost of every email's
        # two links. loads() reads both forms.
        payload = base64_encode(
            json.dumps(subscriber_token, ensure_ascii=False, separators=(",", ":"))
        )
        return self._signers[purpose].sign(payload).decode("ascii")

    def read_token(self, purpose: str, token: str, max_age: int | None = None) -> str:
        """The subscriber token inside a signed token; LinkError on any kind of failure."""
        try:
            value: Any = self._serializer(purpose).loads(token, max_age=max_age)
        except BadData:
            raise LinkError("this link is not valid (it may be mistyped or expired)") from None
        if not isinstance(value, str) or not value:
            raise LinkError("this link is not valid (it may be mistyped or expired)")
        return value

    def _serializer(self, purpose: str) -> URLSafeTimedSerializer:
        try:
            return self._serializers[purpose]
        except KeyError:
            raise DigestError(f"unknown link purpose {purpose!r}") from None


def secret_key(store: Store, settings: Settings) -> str:
    """settings.web.secret_key, else a random one generated once and kept in the database."""
    if settings.web.secret_key:
        return settings.web.secret_key
    return store.meta_setdefault(SECRET_META_KEY, secrets.token_urlsafe(48))


# URL paths of the subscriber pages; digest.web routes them, emails link to them.
def manage_path(signed: str) -> str:
    """Path of the manage-preferences page."""
    return f"/manage/{signed}"


def unsubscribe_path(signed: str) -> str:
    """Path of the unsubscribe page (GET: a confirm button; POST: unsubscribe)."""
    return f"/unsubscribe/{signed}"


def one_click_path(signed: str) -> str:
    """Path of the RFC 8058 one-click endpoint (POST unsubscribes; GET shows the page)."""
    return f"/unsubscribe/{signed}/one-click"


def confirm_path(signed: str) -> str:
    """Path of the sign-up confirmation page."""
    return f"/confirm/{signed}"


def unsubscribe_mailto(settings: Settings) -> str:
    """The mailto: of List-Unsubscribe: site.unsubscribe_mailto, else unsubscribe@<From domain>."""
    return _mailto(settings.site.unsubscribe_mailto, settings.mail.from_addr)


@functools.lru_cache(maxsize=16)  # the same for every email: parseaddr and quote once
def _mailto(address: str, from_addr: str) -> str:
    if not address:
        domain = parseaddr(from_addr)[1].rpartition("@")[2] or "localhost"
        address = f"unsubscribe@{domain}"
    return "mailto:" + quote(address, safe="@.+-_") + "?subject=unsubscribe"


def links_for(settings: Settings, signer: LinkSigner, subscriber: Any) -> Links:
    """The manage / one-click unsubscribe / mailto links of one subscriber's emails."""
    from digest.render import make_links  # render imports this module

    return make_links(
        settings,
        subscriber,
        manage_token=signer.make_token("manage", subscriber.token),
        unsubscribe_token=signer.make_token("unsubscribe", subscriber.token),
    )
