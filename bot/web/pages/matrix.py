"""The matrix page of one notice: the 5 city platforms, the district units by the city's three groups
(主城都市区, 渝东北, 渝东南: the region table's ``group``), then N. Each cell is a delivery: its state by colour and
by a word and a symbol; it updates live over Server-Sent Events (``bot.web.pages.live``, at most 4 updates a
second); a click shows its attempts, and an operator can retry a failed cell or resume its paused outlet there.

    GET  /notices/{ref}                           the page
    GET  /notices/{ref}/events                    its cells as they change (text/event-stream, event "cells")
    GET  /notices/{ref}/cells/{id}                one cell's attempts (an htmx fragment, or a page without JS)
    POST /notices/{ref}/cells/{id}/retry          requeue it when failed (operator; desk.retry, as the API)
    POST /notices/{ref}/cells/{id}/resume         resume its outlet (operator; as POST /api/v1/outlets/{id}:resume)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from bot import desk
from bot.regions import Tier
from bot.store import Role
from bot.web import Site, site_of
from bot.web.api import scrub
from bot.web.pages import PageRefused, Visitor, chongqing_time, environment, form_page, page, render, see_other
from bot.web.pages.i18n import N_, Translations
from bot.web.pages.live import MARGIN, CellWatch
from bot.web.pages.notices import NOTICE_STATES

router = APIRouter(include_in_schema=False)

Ref = Path(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
DeliveryId = Path(ge=1, le=2**31 - 1)

# A cell's state: its CSS class is ``state-<name>``; a word and a symbol say it without colour. "published" is
# for the receipts (an outlet confirmed it is online): the class and the word are here for it.
STATES = {
    "delivered": ("✓", N_("Delivered")),
    "published": ("★", N_("Published")),
    "pending": ("…", N_("Pending")),
    "held": ("⏸", N_("Held")),
    "failed": ("✗", N_("Failed")),
    "cancelled": ("⊘", N_("Cancelled")),
}
OUTCOMES = {"delivered": N_("Delivered"), "retry": N_("Will retry"), "failed": N_("Failed")}
TIERS = {"city": N_("City platforms (5)"), "district": N_("District media centres (41)"), "other": N_("Others (N)")}
GROUPS = ("主城都市区", "渝东北", "渝东南")
GROUP_WORDS = {"主城都市区": N_("Main urban metropolitan area (主城都市区)"),
               "渝东北": N_("North-east Chongqing (渝东北)"), "渝东南": N_("South-east Chongqing (渝东南)"),
               None: N_("Other district units")}
REASONS = {"embargo": N_("embargo"), "outlet paused": N_("outlet paused"), "breaker open": N_("breaker open"),
           "rate limit": N_("rate limit"), "removed from matrix": N_("removed from matrix"),
           "expired": N_("expired"), "retracted": N_("retracted"), "retraction": N_("a retraction")}
UNTIL = N_("{what} until {time}")
PAUSED_WHY = N_("outlet paused: {why}")
CORRECTION = N_("correction to version {version}")


def reason_words(reason: str | None, t: Translations) -> str:
    """A store reason (``breaker open until 2026-11-28T12:00:00+00:00``) in the page's language, times in
    Chongqing time; a reason not known here is shown as it is."""
    if not reason:
        return ""
    if found := re.fullmatch(r"(embargo|breaker open|rate limit) until (\S+)", reason):
        try:
            when = chongqing_time(datetime.fromisoformat(found[2]), seconds=True)
        except ValueError:
            when = found[2]
        return t.gettext(UNTIL).format(what=t.gettext(REASONS[found[1]]), time=when)
    if reason.startswith("outlet paused: "):
        return t.gettext(PAUSED_WHY).format(why=reason.removeprefix("outlet paused: "))
    if found := re.fullmatch(r"correction to version (\d+)", reason):
        return t.gettext(CORRECTION).format(version=found[1])
    return t.gettext(REASONS[reason]) if reason in REASONS else reason


@dataclass
class Cell:
    id: int
    outlet: str
    name: str
    region: str | None
    status: str
    reason: str
    attempts: int


@dataclass
class Block:
    """A tier on the page, its cells in groups (one group, without a title, for the city and N)."""

    tier: str
    title: str
    groups: list[tuple[str | None, list[Cell]]] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return [c for _, cells in self.groups for c in cells]


def cell_of(site: Site, row: dict[str, Any], t: Translations) -> Cell:
    outlet = site.matrix.by_id.get(row["outlet"])
    status = row["status"] if row["status"] in STATES else "pending"
    if status == "delivered" and row.get("published_at") is not None:  # its receipt came back: 已转载
        status = "published"
    return Cell(row["id"], row["outlet"], outlet.name if outlet else row["outlet"],
                outlet.region if outlet and outlet.tier == Tier.district else None, status,
                reason_words(scrub(site, row["reason"]), t), row["attempts"])


def layout(site: Site, rows: list[dict[str, Any]], t: Translations) -> list[Block]:
    """The cells as a Chongqing operator reads them: city, the districts by group and region-table order, N;
    within each, the matrix file's order (outlets no longer in the matrix last)."""
    position = {o.id: i for i, o in enumerate(site.matrix.outlets)}
    table = {r.name: (i, r.group) for i, r in enumerate(site.regions.regions)}
    rows = sorted(rows, key=lambda r: (position.get(r["outlet"], len(position)), r["id"]))
    blocks = {tier.value: Block(tier.value, TIERS[tier.value]) for tier in Tier}
    districts: dict[str | None, list[tuple[int, Cell]]] = {}
    for row in rows:
        cell = cell_of(site, row, t)
        tier = row["tier"] if row["tier"] in blocks else "other"
        if tier == "district":
            order, group = table.get(cell.region or "", (len(table), None))
            districts.setdefault(group if group in GROUPS else None, []).append((order, cell))
        elif blocks[tier].groups:
            blocks[tier].groups[0][1].append(cell)
        else:
            blocks[tier].groups.append((None, [cell]))
    for group in (*GROUPS, None):
        if group in districts:
            cells = [c for _, c in sorted(districts[group], key=lambda pair: pair[0])]
            blocks["district"].groups.append((GROUP_WORDS[group], cells))
    return [b for b in blocks.values() if b.groups]


def counts_of(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The summary above the cells: how many are in each state (published ones are delivered too)."""
    counts = dict.fromkeys(STATES, 0)
    for row in rows:
        counts[row["status"] if row["status"] in STATES else "pending"] += 1
        counts["published"] += row["status"] == "delivered" and row.get("published_at") is not None
    return counts


def watch_of(request: Request) -> CellWatch:
    """The app's one CellWatch (made on first use, on the server's event loop)."""
    state = request.app.state
    if getattr(state, "cells", None) is None:
        state.cells = CellWatch(site_of(request).store)
    watch: CellWatch = state.cells
    return watch


def _notice(site: Site, ref: str, t: Translations) -> dict[str, Any]:
    row = site.store.log.notice_row(ref)
    if row is None:
        raise PageRefused(404, t.gettext("No notice with the ref {ref}.").format(ref=ref))
    return row


def _matrix(site: Site, ref: str, t: Translations) -> dict[str, Any]:
    notice = _notice(site, ref, t)
    rows = site.store.log.cells(ref)
    latest = max((r["updated_at"] for r in rows), default=datetime.now(UTC))
    return {"row": notice, "blocks": layout(site, rows, t), "counts": counts_of(rows), "total": len(rows),
            "since": (latest - MARGIN).isoformat(), "urgent_release": site.store.review.urgent_releases([ref]).get(ref)}


@router.get("/notices/{ref}", response_class=HTMLResponse)
async def matrix(request: Request, ref: str = Ref, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    found = await run_in_threadpool(_matrix, site_of(request), ref, visitor.t)
    return render(request, visitor, "matrix.html", ref=ref, states=STATES, notice_states=NOTICE_STATES, **found)


@router.get("/notices/{ref}/events")
async def events(request: Request, ref: str = Ref, since: str | None = None,
                 visitor: Visitor = page(Role.viewer)) -> Response:
    """The changed cells as one event ``cells``: each cell's HTML with ``hx-swap-oob``, so htmx's SSE extension
    puts each in its place; at most 4 events a second."""
    site = site_of(request)
    await run_in_threadpool(_notice, site, ref, visitor.t)
    try:
        after = datetime.fromisoformat(since) if since else None
    except ValueError:
        after = None
    if after is not None and after.tzinfo is None:
        after = after.replace(tzinfo=UTC)
    macros = environment().get_template("_cell.html").make_module({"_": visitor.t.gettext})
    watch = watch_of(request)

    async def stream() -> Any:
        async for batch in watch.follow(ref, after):
            html = "".join(str(macros.cell_item(cell_of(site, row, visitor.t), ref, STATES, True)) for row in batch)
            counts = macros.counts_item(counts_of(watch.cells_of(ref)), STATES, True)  # the summary follows
            yield {"event": "cells", "data": html + str(counts)}

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _detail(site: Site, ref: str, delivery_id: int, t: Translations) -> dict[str, Any]:
    found = site.store.log.delivery(delivery_id)
    if found is None or found["notice"] != ref:
        raise PageRefused(404, t.gettext("No delivery {id} of the notice {ref}.").format(id=delivery_id, ref=ref))
    attempts = [a | {"error": scrub(site, a["error"])}
                for a in site.store.log.attempts(delivery_id=delivery_id)]
    health = site.store.health.all().get(found["outlet"])
    now = site.store.db.clock()
    outlet = site.matrix.by_id.get(found["outlet"])
    return {"delivery": found | {"error": scrub(site, found["error"])}, "attempts": attempts,
            "reason": reason_words(scrub(site, found["reason"]), t), "name": outlet.name if outlet else found["outlet"],
            "resumable": health is not None and (health.paused_at is not None
                                                 or (health.open_until is not None and health.open_until > now)),
            "paused_reason": scrub(site, health.paused_reason) if health else None}


async def _show_cell(request: Request, visitor: Visitor, ref: str, delivery_id: int, done: str | None = None
                     ) -> HTMLResponse:
    found = await run_in_threadpool(_detail, site_of(request), ref, delivery_id, visitor.t)
    fragment = bool(request.headers.get("hx-request"))
    return render(request, visitor, "cell.html", ref=ref, states=STATES, outcomes=OUTCOMES, fragment=fragment,
                  done=done, **found)


@router.get("/notices/{ref}/cells/{delivery_id}", response_class=HTMLResponse)
async def cell(request: Request, ref: str = Ref, delivery_id: int = DeliveryId,
               visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    return await _show_cell(request, visitor, ref, delivery_id)


RETRIED = N_("Requeued: it goes out again now.")
RETRIED_HELD = N_("Requeued, but its outlet is paused or its breaker open: resume the outlet to send it now.")
NOT_FAILED = N_("Nothing to retry: this delivery has not failed. Nothing was changed.")
RESUMED = N_("Outlet resumed: {due} waiting deliveries go out now.")
NOT_PAUSED = N_("The outlet is not paused and its breaker is closed; nothing was changed.")


@router.post("/notices/{ref}/cells/{delivery_id}/retry", response_class=HTMLResponse)
async def retry(request: Request, ref: str = Ref, delivery_id: int = DeliveryId,
                visitor: Visitor = form_page(Role.operator)) -> Response:
    site = site_of(request)
    found = await run_in_threadpool(_detail, site, ref, delivery_id, visitor.t)
    outlet = found["delivery"]["outlet"]
    done = await run_in_threadpool(lambda: desk.retry(site.store, ref=ref, outlet_id=outlet, status="failed",
                                                      actor=visitor.actor))
    message = NOT_FAILED if not done.rows else RETRIED_HELD if outlet in done.held else RETRIED
    return await _after(request, visitor, ref, delivery_id, visitor.t.gettext(message))


@router.post("/notices/{ref}/cells/{delivery_id}/resume", response_class=HTMLResponse)
async def resume(request: Request, ref: str = Ref, delivery_id: int = DeliveryId,
                 visitor: Visitor = form_page(Role.operator)) -> Response:
    site = site_of(request)
    found = await run_in_threadpool(_detail, site, ref, delivery_id, visitor.t)
    due = await run_in_threadpool(site.store.health.resume, found["delivery"]["outlet"], None, visitor.actor)
    message = visitor.t.gettext(NOT_PAUSED) if due is None else visitor.t.gettext(RESUMED).format(due=due)
    return await _after(request, visitor, ref, delivery_id, message)


async def _after(request: Request, visitor: Visitor, ref: str, delivery_id: int, message: str) -> Response:
    """htmx: the cell's attempts again, with what was done; a plain form: back to the cell's page."""
    if request.headers.get("hx-request"):
        return await _show_cell(request, visitor, ref, delivery_id, done=message)
    return see_other(request, f"/notices/{ref}/cells/{delivery_id}")
