"""Signed links to a subscriber's pages: manage, unsubscribe, confirm, archive (itsdangerous).

A link carries the subscriber's random token, signed with the site secret and a salt per purpose,
so a manage link cannot be replayed as an unsubscribe link and a tampered link fails the signature.
Every failure (bad signature, other purpose, expired, garbage) raises the same `LinkError`, so a
caller cannot tell them apart and neither can an attacker probing the endpoints.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from itsdangerous import BadData, Signer, URLSafeTimedSerializer

from digest.config import Settings
from digest.errors import DigestError, ValidationError

if TYPE_CHECKING:
    from digest.store import Store

PURPOSES = ("manage", "unsubscribe", "confirm", "archive")
# Signed without a timestamp (itsdangerous Signer): only a confirmation link expires. Every
# email signs a manage, an unsubscribe and an archive link, and the timed serializer's JSON,
# zlib attempt and timestamp were most of a sender's link cost (a zlib stream set up per link:
# profiled at 7-9% of a worker). Their salts differ from the timed tokens' (see LEGACY_TIMED).
UNTIMED = {
    "manage": "digest.manage.untimed",
    "unsubscribe": "digest.unsubscribe.untimed",
    "archive": "digest.archive",
}
# Emails sent before manage and unsubscribe links were untimed carry timed tokens (salt
# digest.<purpose>): still read, so those links keep working.
LEGACY_TIMED = ("manage", "unsubscribe")
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
            if purpose not in UNTIMED or purpose in LEGACY_TIMED
        }
        self._signers = {p: Signer(secret, salt=salt) for p, salt in UNTIMED.items()}
        self.feedback_key = feedback_key(secret)

    def make_token(self, purpose: str, subscriber_token: str) -> str:
        """A URL-safe signed token for this purpose carrying the subscriber's token."""
        signer = self._signers.get(purpose)
        if signer is not None:
            return signer.sign(subscriber_token).decode("ascii")
        return self._serializer(purpose).dumps(subscriber_token)

    def read_token(self, purpose: str, token: str, max_age: int | None = None) -> str:
        """The subscriber token inside a signed token; LinkError on any kind of failure."""
        try:
            value: Any = self._read(purpose, token, max_age)
        except (BadData, UnicodeError):
            raise LinkError("this link is not valid (it may be mistyped or expired)") from None
        if not isinstance(value, str) or not value:
            raise LinkError("this link is not valid (it may be mistyped or expired)")
        return value

    def _read(self, purpose: str, token: str, max_age: int | None) -> Any:
        signer = self._signers.get(purpose)
        if signer is None:
            return self._serializer(purpose).loads(token, max_age=max_age)
        if max_age is not None:
            # an untimed token cannot expire: silently ignoring the age would let new links
            # outlive old ones
            raise DigestError(f"{purpose} links are signed without a time: no max_age")
        try:
            return signer.unsign(token).decode("utf-8")
        except BadData:
            if purpose not in LEGACY_TIMED:
                raise
        return self._serializer(purpose).loads(token)  # an email's link from before

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


def archive_path(signed: str) -> str:
    """Path of the subscriber's archive of sent digests."""
    return f"/archive/{signed}"


def digest_page_path(signed: str, digest_id: int) -> str:
    """Path of one sent digest's web page: under the archive link, so one signature serves
    both the page and the archive (signed once per message)."""
    return f"/archive/{signed}/{int(digest_id)}"


def unsubscribe_mailto(settings: Settings) -> str:
    """The mailto: of List-Unsubscribe: site.unsubscribe_mailto, else unsubscribe@<From domain>."""
    return _mailto(settings.site.unsubscribe_mailto, settings.mail.from_addr)


@functools.lru_cache(maxsize=16)  # the same for every email: parseaddr and quote once
def _mailto(address: str, from_addr: str) -> str:
    if not address:
        domain = parseaddr(from_addr)[1].rpartition("@")[2] or "localhost"
        address = f"unsubscribe@{domain}"
    return "mailto:" + quote(address, safe="@.+-_") + "?subject=unsubscribe"


# --- feedback links ------------------------------------------------------------------------------
#
# Every paper of a digest carries two feedback links, so a digest of 30 papers has 60; an
# itsdangerous dumps (HMAC-SHA1 plus JSON and base64, ~20 us) per link would cost more than the
# rest of the rendering. A feedback link is instead /feedback/SID/PAPER/TOPIC/VERDICT/MAC where MAC
# is a keyed BLAKE2b (one C call, ~1 us) over the subscriber's id and secret token, the paper, the
# topic's NAME and the verdict. The token makes a link die with the subscriber (a wiped and
# re-created id gets a new token); the name makes a link die when its topic is renamed or removed
# (TOPIC is only the topic's position). Feedback links do not expire: a verdict is harmless, and
# a GET never records one (the page asks for a button press).

VERDICT_PATHS = ("like", "dislike")
_FEEDBACK_MAC_BYTES = 12  # 96 bits: 16 URL characters, far beyond guessing over HTTP


def feedback_key(secret: str) -> bytes:
    """The BLAKE2b key of feedback links, derived from the site secret (its own purpose)."""
    return hashlib.blake2b(
        secret.encode("utf-8"), digest_size=32, person=b"digest.feedback"
    ).digest()


def feedback_mac(
    key: bytes, subscriber_id: int, token: str, paper_id: int, topic: str, verdict: str
) -> str:
    """The MAC of one feedback link, URL-safe base64 without padding."""
    message = f"{subscriber_id}\0{token}\0{paper_id}\0{topic}\0{verdict}".encode()
    mac = hashlib.blake2b(message, key=key, digest_size=_FEEDBACK_MAC_BYTES).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii")


def feedback_path(
    subscriber_id: int, paper_id: int, topic_index: int, verdict: str, mac: str
) -> str:
    """Path of a feedback link's page (GET: a confirm button; POST: records)."""
    return f"/feedback/{subscriber_id}/{paper_id}/{topic_index}/{verdict}/{mac}"


def check_feedback_mac(
    key: bytes, subscriber: Any, paper_id: int, topic_index: int, verdict: str, mac: str
) -> str:
    """The topic name a feedback link names; LinkError if it is not valid for this subscriber."""
    names = [t.name for t in subscriber.topics]
    if verdict not in VERDICT_PATHS or not 0 <= topic_index < len(names):
        raise LinkError("this link is not valid (it may be mistyped or expired)")
    topic = names[topic_index]
    want = feedback_mac(key, subscriber.id, subscriber.token, paper_id, topic, verdict)
    if not hmac.compare_digest(want, mac):
        raise LinkError("this link is not valid (it may be mistyped or expired)")
    return topic


@dataclass(frozen=True, slots=True)
class FeedbackLinks:
    """What one subscriber's feedback links need: built once per message, used per paper."""

    base_url: str  # site.base_url without the trailing slash
    subscriber_id: int
    token: str
    key: bytes
    topics: tuple[str, ...]  # topic names by position
    # The keyed hash fed with this subscriber's part of every MAC, copied per link (cheaper).
    _prefix: Any = field(init=False, repr=False, compare=False)
    # Each paper's pair, made once: an email asks for it in its HTML and its text part.
    _made: dict[tuple[int, int], tuple[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = f"{self.subscriber_id}\0{self.token}\0".encode()
        hasher = hashlib.blake2b(head, key=self.key, digest_size=_FEEDBACK_MAC_BYTES)
        object.__setattr__(self, "_prefix", hasher)
        object.__setattr__(self, "_made", {})

    def urls(self, paper_id: int, topic: str | None = None) -> tuple[str, str] | None:
        """The ("more like this", "not for me") URLs of a paper under a topic (unknown or
        no topic: the first); None when the subscriber has no topic."""
        if not self.topics:
            return None
        index = self.topics.index(topic) if topic in self.topics else 0
        made = self._made.get((paper_id, index))
        if made is not None:
            return made
        head = f"{self.base_url}/feedback/{self.subscriber_id}/{paper_id}/{index}/"
        part = f"{paper_id}\0{self.topics[index]}\0".encode()
        out = []
        for verdict in VERDICT_PATHS:
            hasher = self._prefix.copy()
            hasher.update(part + verdict.encode())
            mac = base64.urlsafe_b64encode(hasher.digest()).decode("ascii")
            out.append(f"{head}{verdict}/{mac}")
        made = self._made[paper_id, index] = (out[0], out[1])
        return made


def feedback_links(settings: Settings, key: bytes, subscriber: Any) -> FeedbackLinks:
    """One subscriber's FeedbackLinks (call `.urls(paper_id, topic)` per paper)."""
    return FeedbackLinks(
        settings.site.base_url.rstrip("/"),
        subscriber.id,
        subscriber.token,
        key,
        tuple(t.name for t in subscriber.topics),
    )


def feedback_urls(
    settings: Settings, signer: LinkSigner, subscriber: Any, paper_id: int, topic: str | None
) -> tuple[str, str] | None:
    """The two feedback URLs of one paper for one subscriber (web pages that show a digest)."""
    return feedback_links(settings, signer.feedback_key, subscriber).urls(paper_id, topic)


@dataclass(frozen=True, slots=True)
class Links:
    """The subscriber's links shown in an email's footer and in its List-Unsubscribe header,
    and per paper the feedback links (`feedback_urls`; none without a signer)."""

    manage_url: str
    unsubscribe_url: str  # the RFC 8058 one-click target: a POST there unsubscribes
    unsubscribe_mailto: str  # "mailto:unsubscribe@example.org?subject=..."
    archive_url: str = ""  # the subscriber's archive (List-Archive); "" in previews
    page_url: str = ""  # this digest's web page (Archived-At, "View in browser"); "" in previews
    feedback: FeedbackLinks | None = field(default=None, compare=False)

    def feedback_urls(self, paper_id: int, topic: str | None = None) -> tuple[str, str] | None:
        """The ("more like this", "not for me") URLs of a paper, or None without them."""
        return self.feedback.urls(paper_id, topic) if self.feedback is not None else None

    def __post_init__(self) -> None:
        for name in ("manage_url", "unsubscribe_url", "archive_url", "page_url"):
            value = getattr(self, name)
            if not value and name in ("archive_url", "page_url"):
                continue
            if not value.startswith(("https://", "http://")) or not _url_chars(value):
                raise ValidationError(f"links.{name}: must be an http(s) URL, got {value!r}")
        if not self.unsubscribe_mailto.startswith("mailto:") or not _url_chars(
            self.unsubscribe_mailto
        ):
            raise ValidationError(
                f"links.unsubscribe_mailto: must be a mailto: URL, got {self.unsubscribe_mailto!r}"
            )


def _url_chars(url: str) -> bool:
    # A URL in a header or an href: printable, no white space (a line break would end a header).
    # isprintable() is False for every white space character but the ASCII space.
    return url.isprintable() and " " not in url


def make_links(
    settings: Settings,
    subscriber: Any,
    *,
    manage_token: str | None = None,
    unsubscribe_token: str | None = None,
    archive_token: str | None = None,
    digest_id: int | None = None,
    feedback_key: bytes | None = None,
) -> Links:
    """The subscriber's links: the manage page, the RFC 8058 one-click target and the mailto.

    Every sender passes tokens signed per purpose (`links_for`); without them the subscriber's
    own random token stands in (fixtures, benchmarks).
    """
    base = settings.site.base_url.rstrip("/")
    manage = quote(manage_token or subscriber.token, safe="")
    unsub = quote(unsubscribe_token or subscriber.token, safe="")
    archive = page = ""
    if digest_id:  # a recorded digest (previews and dry runs have id 0): it has a page
        signed = quote(archive_token or subscriber.token, safe="")
        archive = base + archive_path(signed)
        page = base + digest_page_path(signed, digest_id)
    return Links(
        base + manage_path(manage),
        base + one_click_path(unsub),
        unsubscribe_mailto(settings),
        archive,
        page,
        feedback_links(settings, feedback_key, subscriber) if feedback_key else None,
    )


def links_for(
    settings: Settings, signer: LinkSigner, subscriber: Any, digest_id: int | None = None
) -> Links:
    """The manage / one-click unsubscribe / mailto links of one subscriber's emails; with a
    recorded digest's id also its web page and the archive (one more signature)."""
    return make_links(
        settings,
        subscriber,
        manage_token=signer.make_token("manage", subscriber.token),
        unsubscribe_token=signer.make_token("unsubscribe", subscriber.token),
        archive_token=signer.make_token("archive", subscriber.token) if digest_id else None,
        digest_id=digest_id,
        feedback_key=signer.feedback_key,
    )


def archive_url(settings: Settings, signer: LinkSigner, subscriber: Any) -> str:
    """The absolute URL of a subscriber's archive (the manage page links it)."""
    signed = quote(signer.make_token("archive", subscriber.token), safe="")
    return settings.site.base_url.rstrip("/") + archive_path(signed)
