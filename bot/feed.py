"""The feed server: outlets that pull get an Atom feed and a JSON Feed of their notices.

``GET /feeds/{outlet}.atom`` and ``GET /feeds/{outlet}.json`` list the outlet's released notices,
newest first, 50 a page; ``?page=2`` and on list older ones, and each page links the next (Atom
``<link rel="next">``, RFC 5005 paged feeds; JSON Feed ``next_url``). Once a GET's body has been written,
the pending deliveries that page listed are marked delivered and the fetch is recorded as their attempt
(trigger ``fetch``): a fetch is a delivery, of exactly what it listed. A HEAD delivers nothing. An outlet
with ``secret_env`` wants its token as ``Authorization: Bearer …`` or ``?token=…``; the token is never
written into a feed (its self and next links leave it out).

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
PAGE_SIZE = 50
MAX_PAGE = 1000  # 50,000 notices back: deeper pages are refused rather than read whole


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
        page_text = request.query.get("page", "1")
        if not page_text.isdigit() or not 1 <= int(page_text) <= MAX_PAGE:
            raise web.HTTPBadRequest(text=f"page must be a number from 1 to {MAX_PAGE}")
        page = int(page_text)
        loop = asyncio.get_running_loop()
        # the store lists newest first with a limit; one more than this page tells whether a next page exists
        listed = await loop.run_in_executor(None, self.store.log.feed_entries, outlet.id, page * PAGE_SIZE + 1)
        entries = listed[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        items = [channel.feed_item(notice, published_at, outlet.options) for _, _, notice, published_at in entries]
        title = f"重庆辟谣 · {outlet.name}"
        # the links a reader follows, without the reader's token: a credential never goes into a document
        query = {k: v for k, v in request.query.items() if k not in ("token", "page")}
        self_url = str(request.url.with_query(query | ({"page": str(page)} if page > 1 else {})))
        more = len(listed) > page * PAGE_SIZE
        next_url = str(request.url.with_query(query | {"page": str(page + 1)})) if more else None
        if request.match_info["kind"] == "json":
            feed = {"version": JSON_FEED, "title": title, "feed_url": self_url, "language": "zh-CN", "items": items}
            body = json.dumps(feed | ({"next_url": next_url} if next_url else {}), ensure_ascii=False).encode()
            content_type = "application/feed+json"
        else:
            updated = entries[0][3] if entries else datetime.now(UTC)
            body = render("feed/atom.xml.j2", {
                "feed_id": f"tag:debunkbot,2026:{outlet.id}", "feed_title": title, "self_url": self_url,
                "next_url": next_url, "updated": updated.isoformat(), "entries": items,
            }).encode()
            content_type = "application/atom+xml"
        response = web.StreamResponse(headers={"content-type": f"{content_type}; charset=utf-8"})
        response.content_length = len(body)
        await response.prepare(request)
        if request.method == "GET":  # a HEAD gets the headers only (a body after them would break the connection)
            await response.write(body)
        await response.write_eof()
        pending = [delivery_id for delivery_id, status, _, _ in entries if status == "pending"]
        if pending and request.method == "GET":  # the body was sent: what it listed counts as delivered
            latency = (time.perf_counter() - started) * 1000
            await loop.run_in_executor(None, self.store.queue.record_fetch, outlet.id, pending, latency)
        return response
