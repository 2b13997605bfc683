"""Rate limits per API key on /predict and on every state-changing request, counted in Redis (the `limits`
package) so that they hold across API processes."""

from __future__ import annotations

import logging
import math
import time

from fastapi import Request
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.auth import Actor
from app.config import Settings
from app.errors import TooManyRequests

log = logging.getLogger("visiontune.ratelimit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NAMESPACE = "visiontune"


class RateLimiter:
    """Moving-window limits: `rate_limit_predict` for /predict, `rate_limit_write` for other writes, per key."""

    def __init__(self, settings: Settings) -> None:
        url = settings.rate_limit_storage_url or settings.broker_redis_url()
        if url is None:  # e.g. a RabbitMQ broker and no Redis named for the counters
            log.warning("rate limits are counted per API process: set VISIONTUNE_RATE_LIMIT_STORAGE_URL to Redis")
            url = "memory://"
        options = {"socket_timeout": 2, "socket_connect_timeout": 2} if url.startswith("redis") else {}
        self.storage = storage_from_string(url, **options)
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.predict: RateLimitItem = parse(settings.rate_limit_predict)
        self.write: RateLimitItem = parse(settings.rate_limit_write)

    def check(self, caller: Actor, request: Request) -> None:
        """429 with Retry-After when the caller's key is over its limit for this kind of request."""
        if request.method not in WRITE_METHODS:
            return
        kind, item = ("predict", self.predict) if request.url.path == "/predict" else ("write", self.write)
        who = str(caller.key_id) if caller.key_id else f"ip:{request.client.host if request.client else '-'}"
        try:
            allowed = self.strategy.hit(item, NAMESPACE, kind, who)
            if allowed:
                return
            reset = self.strategy.get_window_stats(item, NAMESPACE, kind, who).reset_time
        except Exception as exc:  # counters unreachable: serve (and say so) rather than refuse everyone
            log.warning("rate-limit storage unavailable (%s); request let through", exc.__class__.__name__)
            return
        retry = max(1, math.ceil(reset - time.time()))
        raise TooManyRequests(
            f"rate limit reached: {item} for {kind} requests per key (VISIONTUNE_RATE_LIMIT_{kind.upper()}); "
            f"retry in {retry} s",
            retry_after=retry,
        )
