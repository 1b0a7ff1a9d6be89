"""The outlets page: each outlet's health, breaker, last success and failure and what waits for it; an operator
pauses and resumes one here (the store calls ``POST /api/v1/outlets/{id}:pause`` and ``:resume`` make)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, Path, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from bot import desk
from bot.store import Role
from bot.web import Site, site_of
from bot.web.api import scrub
from bot.web.pages import PageRefused, Visitor, form_page, page, render, see_other
from bot.web.pages.i18n import N_
from bot.web.pages.notices import TIER_SHORT

router = APIRouter(include_in_schema=False)
OutletId = Path(max_length=64)
HEALTH = {"ok": N_("OK"), "degraded": N_("Degraded"), "paused": N_("Paused")}
HEALTH_CLASS = {"ok": "delivered", "degraded": "failed", "paused": "paused"}
NO_OUTLET = N_("No outlet {id} in the matrix; nothing was changed.")


def _outlets(site: Site) -> list[dict[str, Any]]:
    matrix = site.matrix
    now = site.store.db.clock()
    rows = []
    for row in desk.outlet_rows(site.store, matrix):
        entry = matrix.by_id.get(row["outlet"])
        until = row["breaker_open_until"]
        rows.append(row | {"name": entry.name if entry else None, "region": entry.region if entry else None,
                           "channel": entry.channel if entry else None, "in_matrix": entry is not None,
                           "breaker_open": until is not None and until > now,
                           "paused_reason": scrub(site, row["paused_reason"])})
    return rows


@router.get("/outlets", response_class=HTMLResponse)
async def outlets(request: Request, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    rows = await run_in_threadpool(_outlets, site_of(request))
    return render(request, visitor, "outlets.html", rows=rows, health=HEALTH, health_class=HEALTH_CLASS,
                  tier_words=TIER_SHORT)


def _known(site: Site, outlet_id: str, visitor: Visitor) -> None:
    if outlet_id not in site.matrix.by_id and outlet_id not in site.store.health.all():
        raise PageRefused(404, visitor.t.gettext(NO_OUTLET).format(id=outlet_id))


@router.post("/outlets/{outlet_id}/pause")
async def pause(request: Request, outlet_id: str = OutletId, reason: str = Form(""),
                visitor: Visitor = form_page(Role.operator)) -> Response:
    site = site_of(request)
    await run_in_threadpool(_known, site, outlet_id, visitor)
    await run_in_threadpool(site.store.health.pause, outlet_id, reason[:500], None, visitor.actor)
    return see_other(request, "/outlets")


@router.post("/outlets/{outlet_id}/resume")
async def resume(request: Request, outlet_id: str = OutletId, visitor: Visitor = form_page(Role.operator)
                 ) -> Response:
    site = site_of(request)
    await run_in_threadpool(_known, site, outlet_id, visitor)
    await run_in_threadpool(site.store.health.resume, outlet_id, None, visitor.actor)
    return see_other(request, "/outlets")
