"""Rate limits of the public sign-up: per client address and per email address.

The `limits` library does the counting (moving windows, in this process's memory): rates are
written as operators read them ("5 per minute; 30 per hour") and it is maintained, typed and
storage-agnostic, should the app ever need a shared (Redis) store. A restart forgets the counts;
what must survive one (one confirmation email per address per period) is kept in the database.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from digest.errors import ConfigError


def parse_rates(key: str, text: str) -> list[RateLimitItem]:
    """The rates of a setting; ConfigError naming the key if they do not parse."""
    try:
        rates = parse_many(text)
    except ValueError:
        rates = []
    if not rates:
        raise ConfigError(
            f"{key}: {text!r} is not a list of rates such as '5 per minute; 30 per hour'"
        )
    return rates


class SignupLimiter:
    """Counts sign-ups per client and per address; `hit` says how long to wait when over."""

    def __init__(self, per_client: str, per_address: str) -> None:
        self.per_client = parse_rates("web.signup_limit_per_client", per_client)
        self.per_address = parse_rates("web.signup_limit_per_address", per_address)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit_client(self, client: str) -> int:
        """Count one sign-up of this client address; 0 if allowed, else seconds to wait."""
        return self._hit("client", client, self.per_client)

    def hit_address(self, address: str) -> int:
        """Count one sign-up for this (normalised) email address; 0 or seconds to wait. Kept
        by hash: no address is held in memory."""
        key = hashlib.sha256(address.encode("utf-8")).hexdigest()
        return self._hit("address", key, self.per_address)

    def _hit(self, scope: str, key: str, rates: list[RateLimitItem]) -> int:
        # A refused request is not counted against the other rates: hammering the per-minute
        # limit does not also use up the per-hour one.
        wait = 0
        for rate in rates:
            if not self._limiter.test(rate, scope, key):
                stats = self._limiter.get_window_stats(rate, scope, key)
                wait = max(wait, 1, math.ceil(stats.reset_time - time.time()))
        if wait:
            return wait
        for rate in rates:
            self._limiter.hit(rate, scope, key)
        return 0
