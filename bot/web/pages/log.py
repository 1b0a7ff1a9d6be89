"""The delivery log page: one row per notice × outlet, filtered by notice, outlet, state and how recently it
changed, a page at a time; ``/log.csv`` exports the same filter as CSV (UTF-8 with a byte-order mark, so that
Excel opens the Chinese text as Chinese). Rows as ``GET /api/v1/deliveries`` gives them (``store.log.page``)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from bot import desk
from bot.store import Role
from bot.store.log import STATES
from bot.web import Site, site_of
from bot.web.api import scrub
from bot.web.pages import Visitor, chongqing_time, page, render
from bot.web.pages.i18n import N_, Translations
from bot.web.pages.matrix import STATES as CELL_STATES
from bot.web.pages.matrix import reason_words
from bot.web.pages.notices import cursor, query_of

router = APIRouter(include_in_schema=False)
PAGE = 100
BAD_SINCE = N_("“Since” is neither a time (2026-11-28 08:00, Chongqing time) nor an age such as 30m, 2h or 1d; "
               "the filter was not applied.")
COLUMNS = (N_("Delivery"), N_("Notice"), N_("Outlet"), N_("Outlet name"), N_("Tier"), N_("State"), N_("Reason"),
           N_("Attempts"), N_("HTTP status"), N_("Error"), N_("Delivered at"), N_("Next attempt at"))


def _filters(request: Request) -> dict[str, str]:
    query = request.query_params
    state = query.get("state", "")
    return {"notice": query.get("notice", "")[:64].strip(), "outlet": query.get("outlet", "")[:64].strip(),
            "state": state if state in STATES else "", "since": query.get("since", "")[:40].strip()}


def _rows(site: Site, filters: dict[str, str], after: int | None, limit: int | None, t: Translations
          ) -> dict[str, Any]:
    error = None
    since: datetime | None = None
    if filters["since"]:
        try:
            since = desk.since(filters["since"].replace(" ", "T") if ":" in filters["since"] else filters["since"])
        except ValueError:
            error = t.gettext(BAD_SINCE)
    found = site.store.log.page(ref=filters["notice"] or None, outlet_id=filters["outlet"] or None,
                                status=filters["state"] or None, since=since, after=after, limit=limit)
    rows = []
    for row in found.rows:
        outlet = site.matrix.by_id.get(row["outlet"])
        rows.append(row | {"name": outlet.name if outlet else "", "error": scrub(site, row["error"]),
                           "reason": reason_words(scrub(site, row["reason"]), t)})
    return {"rows": rows, "next": found.next, "error": error}


@router.get("/log", response_class=HTMLResponse)
async def delivery_log(request: Request, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    filters = _filters(request)
    after = request.query_params.get("after", "")
    found = await run_in_threadpool(_rows, site_of(request), filters, cursor(after), PAGE, visitor.t)
    return render(request, visitor, "log.html", filters=filters, states=CELL_STATES, query=query_of(filters),
                  after=after, **found)


@router.get("/log.csv")
async def delivery_log_csv(request: Request, visitor: Visitor = page(Role.viewer)) -> Response:
    """Every row of the filter (not only a page), times in Chongqing time."""
    filters = _filters(request)
    found = await run_in_threadpool(_rows, site_of(request), filters, None, None, visitor.t)
    out = io.StringIO()
    writer = csv.writer(out)
    t = visitor.t
    writer.writerow([t.gettext(c) for c in COLUMNS])
    for r in found["rows"]:
        word = CELL_STATES.get(r["status"], ("", r["status"]))[1]
        writer.writerow([r["id"], r["notice"], r["outlet"], _cell(r["name"]), r["tier"], t.gettext(word),
                         _cell(r["reason"]), r["attempts"], r["http_status"] or "", _cell(r["error"]),
                         chongqing_time(r["delivered_at"], seconds=True) if r["delivered_at"] else "",
                         chongqing_time(r["next_attempt_at"], seconds=True) if r["next_attempt_at"] else ""])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Response("\ufeff" + out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="deliveries-{stamp}.csv"'})


def _cell(text: str | None) -> str:
    """A spreadsheet does not run what an outlet wrote: a leading = + - @ is quoted away."""
    text = text or ""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
