"""Our URL rules, in one module without dependencies so every layer can import it: where a
paper links (email, feeds, web) and where feeds live (files, `digest serve`, the CLI).

The dumps carry no paper id, so a paper links to a search for its title on huggingface.co/papers.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import quote_plus

from digest.errors import ValidationError

FeedFormat = Literal["rss", "atom"]
FORMATS: tuple[FeedFormat, ...] = ("rss", "atom")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")

PAPERS_SEARCH_URL = "https://huggingface.co/papers?q="

# quote_plus for ASCII titles: unreserved characters stay, space is "+".
_URL_QUOTE = {
    i: "+" if i == 0x20 else f"%{i:02X}"
    for i in range(128)
    if not (chr(i).isalnum() or chr(i) in "_.-~")
}
_URL_RESERVED = re.compile(r"[^A-Za-z0-9_.~ -]")


def paper_url(title: str) -> str:
    """A search for the paper's title (white space runs as one space) on huggingface.co/papers."""
    title = " ".join(title.split())
    if not title.isascii():
        return PAPERS_SEARCH_URL + quote_plus(title)
    # quote_plus for ASCII: the few reserved characters of a title (":", "+", "?"...) one by
    # one, then spaces (feeds link thousands of titles; this is 4x faster than quote_plus).
    return PAPERS_SEARCH_URL + _URL_RESERVED.sub(_quote_char, title).replace(" ", "+")


def _quote_char(found: re.Match[str]) -> str:
    return _URL_QUOTE[ord(found.group())]


def feed_url_path(fmt: FeedFormat, token: str | None = None) -> str:
    """The URL path of a feed, the same under a static server and `digest serve`."""
    if token is None:
        return f"/feeds/all.{check_fmt(fmt)}"
    return f"/feeds/s/{check_token(token)}.{check_fmt(fmt)}"


def feed_url(base_url: str, fmt: FeedFormat, token: str | None = None) -> str:
    """The absolute URL of a feed under the site's base URL (its self link)."""
    return base_url.rstrip("/") + feed_url_path(fmt, token)


def check_fmt(fmt: str) -> FeedFormat:
    """`fmt` as a FeedFormat; ValidationError for anything but rss and atom."""
    if fmt not in FORMATS:
        raise ValidationError(f"unknown feed format {fmt!r} (use rss or atom)")
    return fmt  # narrowed by the check above


def check_token(token: str) -> str:
    """A feed token, refused unless URL-safe: it becomes a file name that must stay in feeds/s/."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValidationError("invalid feed token (expected 1-128 characters A-Z a-z 0-9 _ -)")
    return token
