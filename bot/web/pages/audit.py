"""The audit page (operators): who changed what, when and from where, filtered by who, what and which notice,
outlet or token, a page at a time; the rows ``GET /api/v1/audit`` gives (``store.audit.page``)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from bot.store import Role
from bot.web import Site, site_of
from bot.web.api import _scrubbed
from bot.web.pages import Visitor, page, render
from bot.web.pages.notices import cursor, query_of

router = APIRouter(include_in_schema=False)
PAGE = 100


def _audit(site: Site, filters: dict[str, str], after: int | None) -> dict[str, Any]:
    found = site.store.audit.page(actor=filters["actor"] or None, action=filters["action"] or None,
                                  subject=filters["subject"] or None, after=after, limit=PAGE)
    rows = [row | {"detail": json.dumps(_scrubbed(site, row["detail"]), ensure_ascii=False, default=str)}
            for row in found.rows]
    return {"rows": rows, "next": found.next}


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, visitor: Visitor = page(Role.operator)) -> HTMLResponse:
    query = request.query_params
    filters = {k: query.get(k, "")[:100].strip() for k in ("actor", "action", "subject")}
    after = query.get("after", "")
    found = await run_in_threadpool(_audit, site_of(request), filters, cursor(after))
    return render(request, visitor, "audit.html", filters=filters, query=query_of(filters), after=after, **found)
