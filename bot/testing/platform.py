"""What every loopback platform fake shares: one aiohttp server on 127.0.0.1, scripted failures,
and sliding-window rate limits that answer the way the platform does.

    >>> async with DingTalkRobots({"token": "SECret"}) as dingtalk:        # doctest: +SKIP
    ...     url = dingtalk.url                                              # the outlet's url
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Window:
    """At most ``count`` requests per credential in any ``seconds``; ``throttle`` seconds of refusals after."""

    count: int
    seconds: float
    throttle: float = 0.0
    _seen: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _blocked_until: dict[str, float] = field(default_factory=dict)

    def admit(self, key: str) -> bool:
        now = time.monotonic()
        if self._blocked_until.get(key, 0.0) > now:
            return False
        seen = self._seen[key]
        while seen and seen[0] <= now - self.seconds:
            seen.popleft()
        if len(seen) >= self.count:
            if self.throttle:
                self._blocked_until[key] = now + self.throttle
            return False
        seen.append(now)
        return True


@dataclass
class Received:
    """One request the fake accepted: which robot or account, what it carried, and when (monotonic)."""

    key: str
    payload: Any
    at: float


class LoopbackPlatform:
    """Base for the fakes: subclasses add routes in ``routes`` and fill ``received`` and ``refused``."""

    host = "127.0.0.1"

    def __init__(self, script: dict[str, list[int]] | None = None) -> None:
        self.script = script or {}  # credential -> steps for its first tries: an HTTP status (< 1000) or a code
        self.tries: dict[str, int] = defaultdict(int)
        self.received: list[Received] = []
        self.refused: list[tuple[str, Any]] = []  # (credential, code) for every answer that was not success
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def scripted(self, key: str) -> int | None:
        """This try's scripted answer for ``key``, if any (counting every try)."""
        self.tries[key] += 1
        steps = self.script.get(key, [])
        return steps[self.tries[key] - 1] if self.tries[key] <= len(steps) else None

    def by(self, key: str) -> list[Any]:
        return [r.payload for r in self.received if r.key == key]

    async def __aenter__(self) -> Any:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        self.routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner:
            await self._runner.cleanup()


def now_ms() -> int:
    return int(time.time() * 1000)
