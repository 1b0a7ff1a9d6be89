"""The notices page: newest first, filtered by state, urgency, region, category and the day submitted (in
Chongqing), a page at a time; each with its state and how many outlets of each tier have it, linking to its
matrix (``bot.web.pages.matrix``)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from bot.regions import CHONGQING, CITYWIDE
from bot.store import Role
from bot.web import Site, site_of
from bot.web.pages import Visitor, page, render
from bot.web.pages.i18n import N_

router = APIRouter(include_in_schema=False)

NOTICE_STATES = {"held": N_("Held"), "pending": N_("Pending"), "delivered": N_("Delivered"),
                 "failed": N_("Failed"), "cancelled": N_("Cancelled"), "retracted": N_("Retracted")}
URGENCIES = {"normal": N_("Normal"), "urgent": N_("Urgent")}
TIER_SHORT = {"city": N_("City"), "district": N_("Districts"), "other": N_("N")}
PAGE = 50


def day(text: str | None) -> date | None:
    """A filter's day (``2026-11-28``); anything else is no filter."""
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def start_of(value: date) -> datetime:
    """The first moment of a Chongqing day."""
    return datetime.combine(value, time(), tzinfo=CHONGQING)


def cursor(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) < 10 else None


def _notices(site: Site, filters: dict[str, Any], after: int | None) -> dict[str, Any]:
    since, until = day(filters["from"]), day(filters["to"])
    found = site.store.log.notices(
        state=filters["state"] or None, urgency=filters["urgency"] or None, region=filters["region"] or None,
        category=filters["category"] or None, since=start_of(since) if since else None,
        until=start_of(until + timedelta(days=1)) if until else None, after=after, limit=PAGE, newest_first=True)
    tiers = site.store.log.tier_counts([r["id"] for r in found.rows])
    regions = [CITYWIDE, *(u.name for u in site.regions.units_on(datetime.now(CHONGQING).date()))]
    urgent_released = site.store.review.urgent_releases([r["ref"] for r in found.rows])
    return {"rows": found.rows, "next": found.next, "tiers": tiers, "regions": regions,
            "urgent_released": urgent_released}


@router.get("/notices", response_class=HTMLResponse)
async def notices(request: Request, state: str = "", urgency: str = "", region: str = "", category: str = "",
                  after: str = "", visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    query = request.query_params
    filters = {"state": state if state in NOTICE_STATES else "", "urgency": urgency if urgency in URGENCIES else "",
               "region": region[:50], "category": category[:40], "from": query.get("from", "")[:10],
               "to": query.get("to", "")[:10]}
    found = await run_in_threadpool(_notices, site_of(request), filters, cursor(after))
    return render(request, visitor, "notices.html", states=NOTICE_STATES, urgencies=URGENCIES,
                  tier_words=TIER_SHORT, filters=filters, query=query_of(filters), after=after, **found)


def query_of(filters: dict[str, Any]) -> list[tuple[str, str]]:
    """The filters that are set, for the pager's links."""
    return [(k, v) for k, v in filters.items() if v]
