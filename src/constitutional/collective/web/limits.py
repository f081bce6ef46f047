"""Per-client rate limits: a sliding window of recent events per IP address, in memory.

In memory is enough for one server process: a restart forgets the windows, which only ever lets
a client in sooner. Behind a reverse proxy the address is the one the proxy reports (uvicorn
trusts `X-Forwarded-For` from `--forwarded-allow-ips`, 127.0.0.1 by default).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from constitutional.collective.web.security import client_ip
from constitutional.errors import UserError

UNITS = {"s": 1, "m": 60, "h": 3600}
RATE_RE = re.compile(r"(\d+)/(\d*)([smh])")
MAX_CLIENTS = 100_000  # addresses tracked at once per limit; beyond it the stalest are forgotten


@dataclass(frozen=True)
class Rate:
    """At most `events` per `seconds`; `events == 0` means no limit."""

    events: int
    seconds: float

    def __str__(self) -> str:
        return "off" if self.events == 0 else f"{self.events}/{self.seconds:g}s"


def parse_rate(text: str, option: str) -> Rate:
    """`"30/h"` → 30 per hour, `"600/10m"` → 600 per 10 minutes, `"off"` or `"0"` → no limit."""
    if text.strip().lower() in ("off", "0"):
        return Rate(0, 1)
    found = RATE_RE.fullmatch(text.strip().lower())
    if not found or int(found[1]) == 0 or found[2] == "0":
        raise UserError(
            f"{option} must be N/PERIOD such as 30/h, 600/10m or 5/30s, or off; got {text!r}"
        )
    return Rate(int(found[1]), int(found[2] or 1) * UNITS[found[3]])


@dataclass(frozen=True)
class Limits:
    """Per-IP limits of the voting app. The defaults let a person (or a few behind one NAT) take
    part at any human pace and stop a script from inventing voters or flooding the moderators."""

    participants: Rate = Rate(
        30, 3600
    )  # new participants (first vote or statement of a new cookie)
    votes: Rate = Rate(600, 600)  # votes and re-votes
    statements: Rate = Rate(10, 600)  # statements submitted for moderation
    logins: Rate = Rate(10, 600)  # admin login attempts


class SlidingWindow:
    """Counts each key's events in the last `rate.seconds`; refuses the one over `rate.events`."""

    def __init__(
        self, rate: Rate, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_CLIENTS
    ):
        self.rate, self.clock, self.max_keys = rate, clock, max_keys
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Count one event for `key`: None if allowed, else the seconds until one would be."""
        if self.rate.events == 0:
            return None
        now = self.clock()
        with self._lock:
            events = self._events.pop(key, None) or deque()
            while events and events[0] <= now - self.rate.seconds:
                events.popleft()
            self._events[key] = events  # re-inserted: the dict stays ordered by last use
            if len(events) >= self.rate.events:
                return max(events[0] + self.rate.seconds - now, 0.001)
            events.append(now)
            if len(self._events) > self.max_keys:
                self._events.pop(next(iter(self._events)))
            return None


def limit(request: Request, name: str, what: str) -> None:
    """Count one `name` event for this client's address; 429 with Retry-After when over the limit."""
    wait = request.app.state.limiters[name].hit(client_ip(request))
    if wait is not None:
        seconds = str(math.ceil(wait))
        raise HTTPException(
            429,
            f"too many {what} from your address: try again in {seconds} s",
            headers={"Retry-After": seconds},
        )
