"""Receipt links (回执, bot.receipts): ``GET /r/{token}`` shows a district the one notice its link names and a
field for where it republished it; ``POST /r/{token}`` confirms, from that page's form (an HTML answer) or from a
receiver's code with JSON ``{"published_url": "https://…"}`` (a JSON answer). No login: the signed token is the
permission, for that delivery and version only, once, until it expires.

    >>> await client.post(receipt_url, json={"published_url": "https://yz.example/a/1"})     # doctest: +SKIP
    200 {"notice": "cq-1", "outlet": "dist-yuzhong", "version": 1, "published_at": "…", "published_url": "…"}
    409 {"detail": "this receipt was already confirmed on …: a receipt link works once; nothing was changed"}

A forged or damaged token answers 400, an expired one 410, a second confirmation 409, a version a correction
replaced 409, a retracted notice 410: each with a message that says so, and nothing recorded. A GET changes
nothing (chat apps open links to preview them).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from bot.receipts import ReceiptLinks, Ticket, TokenRefused
from bot.store import ReceiptRefused
from bot.web import pages, problem, site_of
from bot.web.pages.i18n import N_

router = APIRouter(tags=["receipts"], include_in_schema=False)  # pages for districts, as the pages are (README)

URL_MAX = 2000
BODY_MAX = 16 * 1024
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token never leaves in a Referer
    "X-Robots-Tag": "noindex, nofollow",
}
# What the page says for each refusal the district may meet (msgids: the catalogue has them in Chinese).
SAID = {
    400: N_("This link is not valid: it is incomplete or was not sent by this system. Copy the whole link from "
            "the notice's message and try again."),
    404: N_("This link is not valid: there is no such delivery."),
    409: N_("This cannot be confirmed again: the receipt was already confirmed, or the notice was corrected since "
            "(confirm with the link in the correction's message)."),
    410: N_("This link no longer works: it has expired, or the notice was retracted (do not republish a "
            "retracted notice)."),
    422: N_("The address is not a web address: give the whole address starting with http:// or https://, or "
            "leave it empty."),
}


def _links(request: Request) -> ReceiptLinks:
    links = ReceiptLinks.from_settings(site_of(request).settings)
    if links is None:  # without DEBUNKBOT_PUBLIC_URL no link was ever sent
        raise TokenRefused(404, "receipts are off on this server (DEBUNKBOT_PUBLIC_URL is not set); nothing was "
                           "recorded")
    return links


def _page(request: Request, status: int, **context: Any) -> HTMLResponse:
    context = {"notice": None, "version": 1, "done": None, "refused": None, "error": None,
               "published_url": ""} | context
    answer = pages.render(request, None, "receipt.html", status=status, **context)
    answer.headers.update(HEADERS)
    return answer


def _refused(request: Request, status: int, message: str, html: bool) -> Response:
    if html:
        return _page(request, status, refused=SAID.get(status, SAID[400]), detail=message)
    answer = problem(status, message)
    answer.headers.update(HEADERS)
    return answer


ANSWERS: dict[int | str, dict[str, Any]] = {
    400: {"description": "forged or damaged link, or a body that is not a JSON object; nothing recorded"},
    404: {"description": "receipts are off (no DEBUNKBOT_PUBLIC_URL), or no such delivery; nothing recorded"},
    409: {"description": "already confirmed (a link works once), or a version a correction replaced; nothing changed"},
    410: {"description": "expired, or the notice was retracted; nothing recorded"},
    413: {"description": "a body over 16 KiB; nothing recorded"},
    422: {"description": "published_url is not an http(s) address; nothing recorded"},
}


@router.get("/r/{token}", response_class=HTMLResponse, summary="A receipt link: the notice and a form to confirm it",
            responses=ANSWERS)
async def receipt_page(request: Request, token: str) -> Response:
    site = site_of(request)
    try:
        ticket = _links(request).read(token)
    except TokenRefused as exc:
        return _refused(request, exc.status, exc.message, html=True)
    shown = await run_in_threadpool(_shown, site.store, ticket)
    if isinstance(shown, ReceiptRefused):
        return _refused(request, shown.status, shown.message, html=True)
    return _page(request, 200, **shown)


@router.post("/r/{token}", summary="Confirm a receipt: the outlet republished the notice",
             responses=ANSWERS)
async def confirm_receipt(request: Request, token: str) -> Response:
    site = site_of(request)
    html = "application/json" not in request.headers.get("content-type", "")
    length = request.headers.get("content-length", "0")
    if not length.isdigit() or int(length) > BODY_MAX:  # a URL and a button: never more than this
        return _refused(request, 413, f"the body is over {BODY_MAX} bytes; nothing was recorded", html)
    try:
        ticket = _links(request).read(token)
    except TokenRefused as exc:
        return _refused(request, exc.status, exc.message, html)
    if html:
        form = await request.form()
        raw = form.get("published_url")
        url: Any = raw if isinstance(raw, str) else None
    else:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _refused(request, 400, 'the body must be a JSON object, {"published_url": "https://…"} or {}; '
                            "nothing was recorded", html)
        url = body.get("published_url")
        if url is not None and not isinstance(url, str):
            return _refused(request, 422, "published_url must be a string (or null); nothing was recorded", html)
    url = (url or "").strip() or None
    if url is not None and (problem_with := url_problem(url)):
        if html:
            shown = await run_in_threadpool(_shown, site.store, ticket)
            context = shown if isinstance(shown, dict) else {}
            return _page(request, 422, **context | {"error": SAID[422], "published_url": url[:URL_MAX]})
        answer = problem(422, f"published_url {problem_with}; nothing was recorded",
                         errors=[{"field": "published_url", "message": problem_with}])
        answer.headers.update(HEADERS)
        return answer
    client = request.client.host if request.client else "unknown"
    try:
        confirmed = await run_in_threadpool(
            site.store.receipts.confirm, ticket.delivery_id, ticket.version, url, "page" if html else "post", client)
    except ReceiptRefused as exc:
        return _refused(request, exc.status, exc.message, html)
    if html:
        shown = await run_in_threadpool(_shown, site.store, ticket, True)
        return _page(request, 200, **(shown if isinstance(shown, dict) else {}) | {"done": confirmed.published_at})
    return JSONResponse({"notice": confirmed.ref, "outlet": confirmed.outlet_id, "version": confirmed.version,
                         "published_at": confirmed.published_at.isoformat(), "published_url": confirmed.published_url},
                        headers=HEADERS)


def url_problem(url: str) -> str | None:
    """Why ``url`` is not a published article's address (None: it is)."""
    from urllib.parse import urlsplit

    if len(url) > URL_MAX:
        return f"is longer than {URL_MAX} characters"
    if any(ord(c) < 0x21 or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029\u200b\u202e\ufeff" for c in url):
        return "holds a space, a control or an invisible character"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// address"
    return None


def _shown(store: Any, ticket: Ticket, after_confirm: bool = False) -> dict[str, Any] | ReceiptRefused:
    """What the page shows for a ticket, or why it is refused (the same checks a confirmation makes)."""
    found = store.receipts.receipt_notice(ticket.delivery_id)
    if found is None:
        return ReceiptRefused(404, "this receipt link names a delivery the bot does not have")
    ref, _, notice, version, _ = found
    if (store.lifecycle.state(ref) or {}).get("retraction"):
        return ReceiptRefused(410, f"notice {ref} was retracted (撤回): there is nothing to publish")
    if ticket.version < version:
        return ReceiptRefused(409, f"this link confirms version {ticket.version} of notice {ref}, which was corrected "
                              f"(更正) to version {version}: confirm with the link in the 更正 post")
    if not after_confirm:
        mark = store.receipts.of_deliveries([ticket.delivery_id]).get(ticket.delivery_id)
        if mark is not None and mark.version == ticket.version:
            return ReceiptRefused(409, f"this receipt was already confirmed on {mark.at:%Y-%m-%d %H:%M} UTC: a receipt "
                                  "link works once")
    return {"notice": notice, "version": version}


