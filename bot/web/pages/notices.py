"""The notices page: what was submitted, its state, and how many outlets have it."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from bot.store import Role
from bot.web import site_of
from bot.web.pages import Visitor, page, render
from bot.web.pages.i18n import N_

router = APIRouter(include_in_schema=False)

NOTICE_STATES = {"held": N_("Held"), "pending": N_("Pending"), "delivered": N_("Delivered"),
                 "failed": N_("Failed"), "cancelled": N_("Cancelled"), "retracted": N_("Retracted")}


@router.get("/notices", response_class=HTMLResponse)
async def notices(request: Request, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    found = await run_in_threadpool(site_of(request).store.log.notices, limit=50)
    return render(request, visitor, "notices.html", rows=list(reversed(found.rows)), states=NOTICE_STATES)
