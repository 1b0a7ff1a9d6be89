"""Loopback outlets that behave like real receivers, for the demo, the tests and the benches.

Each simulated outlet is its own HTTP server on 127.0.0.1 that verifies every post with the
reference ``standardwebhooks`` library, exactly as a district's receiver would, and can be
told to misbehave for its first tries.

    >>> async with WebhookOutlets({"dist-yuzhong": secret}, script={"dist-yuzhong": [503, 503]}) as outlets:
    ...     url = outlets.url("dist-yuzhong")                                  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

# What an outlet may be scripted to do on a try: an HTTP status, or one of these.
HANG = "hang"  # accept the connection and never answer


@dataclass(frozen=True)
class Post:
    outlet: str
    message_id: str
    payload: dict[str, Any]
    headers: dict[str, str]
    received_at: float = 0.0


@dataclass
class WebhookOutlets:
    secrets: dict[str, str]
    script: dict[str, list[int | str]] = field(default_factory=dict)
    host: str = "127.0.0.1"
    delay: float = 0.0  # seconds each answer takes, like a real server across a network
    posts: list[Post] = field(default_factory=list)  # every verified post, duplicates included
    refused: list[tuple[str, str]] = field(default_factory=list)  # (outlet, why) for posts that failed to verify
    tries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_at_once: int = 0  # the most posts being answered at one moment, all outlets together
    _answering: int = 0
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _ports: dict[str, int] = field(default_factory=dict)

    def url(self, outlet_id: str) -> str:
        return f"http://{self.host}:{self._ports[outlet_id]}/hook/{outlet_id}"

    def delivered(self) -> dict[str, set[str]]:
        """outlet id -> the distinct webhook-ids it has verified."""
        seen: dict[str, set[str]] = defaultdict(set)
        for post in self.posts:
            seen[post.outlet].add(post.message_id)
        return seen

    async def __aenter__(self) -> WebhookOutlets:
        app = web.Application()
        app.router.add_post("/hook/{outlet}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        for outlet_id in self.secrets:
            site = web.TCPSite(self._runner, self.host, 0, reuse_address=True)
            await site.start()
            self._ports[outlet_id] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()  # hung answers end now, so shutting down does not wait for them
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._answering += 1
        self.most_at_once = max(self.most_at_once, self._answering)
        try:
            return await self._answer(request)
        finally:
            self._answering -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        outlet = request.match_info["outlet"]
        body = await request.read()
        self.tries[outlet] += 1
        steps = self.script.get(outlet, [])
        step = steps[self.tries[outlet] - 1] if self.tries[outlet] <= len(steps) else 200
        if step == HANG:
            await self._closing.wait()
            raise ConnectionResetError("outlet closed")
        secret = self.secrets.get(outlet)
        if secret is None:
            return web.json_response({"error": "unknown outlet"}, status=404)
        try:
            payload = Webhook(secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.refused.append((outlet, str(exc)))
            return web.json_response({"error": f"signature: {exc}"}, status=401)
        if self.delay:
            await asyncio.sleep(self.delay)
        if step != 200:
            return web.json_response({"error": "scripted failure"}, status=int(step))
        self.posts.append(Post(outlet, request.headers["webhook-id"], payload, dict(request.headers), time.time()))
        return web.Response(text=json.dumps({"ok": True}), content_type="application/json")
