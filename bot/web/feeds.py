"""The feeds: outlets that pull get an Atom feed and a JSON Feed of their notices.

``GET /feeds/{outlet}.atom`` and ``GET /feeds/{outlet}.json`` list the outlet's released notices, newest
first, 50 a page; ``?page=2`` and on list older ones, and each page links the next (Atom
``<link rel="next">``, RFC 5005 paged feeds; JSON Feed ``next_url``). Once a GET's body has been sent, the
pending deliveries that page listed are marked delivered and the fetch is recorded as their attempt (trigger
``fetch``): a fetch is a delivery, of exactly what it listed. A HEAD delivers nothing. An outlet with
``secret_env`` wants its token as ``Authorization: Bearer …`` or ``?token=…``; the token is never written
into a feed (its self and next links leave it out). These need no API token: the outlet's own token, if any,
is the credential.

    >>> (await client.get("/feeds/n-piyao-feed.atom", params={"token": token})).status_code  # doctest: +SKIP
    200
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from bot.receipts import ReceiptLinks, receipt_for
from bot.render import render
from bot.store import STORE_FAULTS, describe_fault
from bot.web import PROBLEM, Problem, problem, site_of
from channels import CHANNELS, Pulling

log = logging.getLogger("debunkbot")

JSON_FEED = "https://jsonfeed.org/version/1.1"
PAGE_SIZE = 50
MAX_PAGE = 1000  # 50,000 notices back: deeper pages are refused rather than read whole

router = APIRouter(tags=["feeds"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": what, "content": {PROBLEM: {"schema": {"type": "object"}}}}
    for status, what in [(401, "the feed wants its token, and none or a wrong one was given"),
                         (404, "no feed outlet of the matrix has this id"),
                         (422, "page is not a number from 1 to 1000"),
                         (503, "the store is unavailable; nothing was delivered")]
}
Page = Query(1, ge=1, le=MAX_PAGE, description="1 is the newest 50 notices; each page links the next")
Token = Query(None, description="the outlet's reader token, if it has one (or send Authorization: Bearer …)")


def _route(kind: str, content_type: str, summary: str) -> Any:
    """GET, and HEAD (the headers only, delivering nothing), each with its own operation id."""
    answers: dict[int | str, dict[str, Any]] = {
        200: {"content": {content_type: {"schema": {"type": "object" if kind == "json" else "string"}}},
              "description": "the page's notices, newest first"}, **_PROBLEMS}

    def register(handler: Any) -> Any:
        path = f"/feeds/{{outlet}}.{kind}"
        router.get(path, response_class=Response, summary=f"{summary} (a GET delivers what it lists)",
                   operation_id=f"{kind}_feed", responses=answers)(handler)
        router.head(path, response_class=Response, summary=f"{summary}: the headers only, delivering nothing",
                    operation_id=f"{kind}_feed_head", responses=answers)(handler)
        return handler

    return register


@_route("atom", "application/atom+xml", "A feed outlet's notices as Atom")
async def atom_feed(request: Request, outlet: str, page: int = Page, token: str | None = Token) -> Response:
    return await _feed(request, outlet, "atom", page, token)


@_route("json", "application/feed+json", "A feed outlet's notices as JSON Feed 1.1")
async def json_feed(request: Request, outlet: str, page: int = Page, token: str | None = Token) -> Response:
    return await _feed(request, outlet, "json", page, token)


async def _feed(request: Request, outlet_id: str, kind: Literal["atom", "json"], page: int,
                token: str | None) -> Response:
    started = time.perf_counter()
    site = site_of(request)
    matrix = site.matrix
    outlet = matrix.by_id.get(outlet_id)
    channel = CHANNELS[outlet.channel] if outlet is not None else None
    if outlet is None or not isinstance(channel, Pulling):
        raise Problem(404, "no such feed")
    secret = matrix.secret_for(outlet.id)
    offered = request.headers.get("authorization", "").removeprefix("Bearer ") or token or ""
    if secret and not hmac.compare_digest(offered.encode(), secret.encode()):
        return problem(401, "this feed wants its token: Authorization: Bearer …, or ?token=…",
                       headers={"WWW-Authenticate": 'Bearer realm="feeds"'})
    # the store lists newest first with a limit; one more than this page tells whether a next page exists
    listed = await run_in_threadpool(site.store.log.feed_entries, outlet.id, page * PAGE_SIZE + 1)
    entries = listed[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    links = ReceiptLinks.from_settings(site.settings)
    items = [channel.feed_item(notice, published_at, outlet.options, change, receipt_for(
                 links, outlet.channel, delivery_id, change.version if change else 1,
                 change.kind if change else "notice"))
             for delivery_id, _, notice, published_at, change in entries]
    title = f"重庆辟谣 · {outlet.name}"
    # the links a reader follows, without the reader's token: a credential never goes into a document
    query = {k: v for k, v in request.query_params.items() if k not in ("token", "page")}

    def link(to_page: int | None) -> str:
        return str(request.url.replace(query=urlencode(query | ({"page": str(to_page)} if to_page else {}))))

    self_url = link(page if page > 1 else None)
    next_url = link(page + 1) if len(listed) > page * PAGE_SIZE else None
    if kind == "json":
        feed = {"version": JSON_FEED, "title": title, "feed_url": self_url, "language": "zh-CN", "items": items}
        body = json.dumps(feed | ({"next_url": next_url} if next_url else {}), ensure_ascii=False).encode()
        content_type = "application/feed+json"
    else:
        updated = max((datetime.fromisoformat(item["date_modified"]) for item in items), default=datetime.now(UTC))
        body = render("feed/atom.xml.j2", {
            "feed_id": f"tag:debunkbot,2026:{outlet.id}", "feed_title": title, "self_url": self_url,
            "next_url": next_url, "updated": updated.isoformat(), "entries": items,
        }).encode()
        content_type = "application/atom+xml"
    # what the feed showed of each pending delivery: a correction or retraction made before the recording below
    # is not counted as delivered by this fetch
    pending = {delivery_id: (change.version if change else 1, change is not None and change.kind == "retraction")
               for delivery_id, status, _, _, change in entries if status == "pending"}

    async def delivered() -> None:  # runs once the body has been sent: what it listed counts as delivered
        latency = (time.perf_counter() - started) * 1000
        try:
            await run_in_threadpool(site.store.queue.record_fetch, outlet.id, pending, latency)
        except STORE_FAULTS as exc:
            log.warning("the fetch of %s by %s was not recorded: %s; they stay pending, and its next fetch lists "
                        "them again", _n(len(pending)), outlet.id, describe_fault(exc))

    # a HEAD gets the headers only, and delivers nothing
    record = BackgroundTask(delivered) if pending and request.method == "GET" else None
    return Response(body, media_type=f"{content_type}; charset=utf-8", background=record)


def _n(count: int) -> str:
    return f"{count} delivery" if count == 1 else f"{count} deliveries"
