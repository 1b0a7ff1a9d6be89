"""The feed server: outlets that pull get an Atom feed and a JSON Feed of their notices.

``GET /feeds/{outlet}.atom`` and ``GET /feeds/{outlet}.json`` list the outlet's released notices
(newest 50). Once the answer has been written, the pending deliveries it listed are marked delivered
and the fetch is recorded as their attempt (trigger ``fetch``): a fetch is a delivery. An outlet with
``secret_env`` wants its token as ``Authorization: Bearer …`` or ``?token=…``.

    >>> async with FeedServer(store, matrix) as feeds:                  # doctest: +SKIP
    ...     feeds.url("n-piyao-feed")                                   # http://127.0.0.1:PORT/feeds/n-piyao-feed.atom
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from datetime import UTC, datetime

from aiohttp import web

from bot.outlets import OutletMatrix
from bot.render import render
from bot.store import Store
from channels import CHANNELS, Pulling

JSON_FEED = "https://jsonfeed.org/version/1.1"


class FeedServer:
    def __init__(self, store: Store, matrix: OutletMatrix, host: str = "127.0.0.1", port: int = 0) -> None:
        self.store = store
        self.matrix = matrix
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def url(self, outlet_id: str, kind: str = "atom") -> str:
        return f"http://{self.host}:{self.port}/feeds/{outlet_id}.{kind}"

    async def __aenter__(self) -> FeedServer:
        app = web.Application()
        app.router.add_get("/feeds/{outlet}.{kind:atom|json}", self._feed)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        outlet = self.matrix.by_id.get(request.match_info["outlet"])
        channel = CHANNELS[outlet.channel] if outlet is not None else None
        if outlet is None or not isinstance(channel, Pulling):
            raise web.HTTPNotFound(text="no such feed")
        secret = self.matrix.secret_for(outlet.id)
        offered = request.headers.get("authorization", "").removeprefix("Bearer ") or request.query.get("token", "")
        if secret and not hmac.compare_digest(offered.encode(), secret.encode()):
            raise web.HTTPUnauthorized(text="this feed wants its token")
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(None, self.store.log.feed_entries, outlet.id)
        items = [channel.feed_item(notice, published_at, outlet.options) for _, _, notice, published_at in entries]
        title = f"重庆辟谣 · {outlet.name}"
        if request.match_info["kind"] == "json":
            body = json.dumps({"version": JSON_FEED, "title": title, "feed_url": str(request.url),
                               "language": "zh-CN", "items": items}, ensure_ascii=False).encode()
            content_type = "application/feed+json"
        else:
            updated = entries[0][3] if entries else datetime.now(UTC)
            body = render("feed/atom.xml.j2", {
                "feed_id": f"tag:debunkbot,2026:{outlet.id}", "feed_title": title, "self_url": str(request.url),
                "updated": updated.isoformat(), "entries": items,
            }).encode()
            content_type = "application/atom+xml"
        response = web.StreamResponse(headers={"content-type": f"{content_type}; charset=utf-8"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body)
        await response.write_eof()
        pending = [delivery_id for delivery_id, status, _, _ in entries if status == "pending"]
        if pending:  # answered: what it listed counts as delivered
            latency = (time.perf_counter() - started) * 1000
            await loop.run_in_executor(None, self.store.queue.record_fetch, outlet.id, pending, latency)
        return response
