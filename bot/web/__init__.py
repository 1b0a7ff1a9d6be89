"""The one HTTP server: the JSON API for editors and operators, the outlets' feeds, health and metrics.

``debunkbot run`` serves it next to the dispatcher on ``DEBUNKBOT_HTTP_BIND``; ``debunkbot web`` serves it
alone. Each part is a router in its own module, included here; every handler reaches the store, the region
table and the live matrix through ``request.app.state.site``.

    >>> app = create_app(Site(settings, store, regions, matrix))          # doctest: +SKIP
    >>> transport = httpx.ASGITransport(app)                               # doctest: +SKIP
    >>> async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:  # doctest: +SKIP
    ...     (await client.get("/readyz")).json()
    {'status': 'ready'}

Errors are RFC 9457 problem details (``application/problem+json``): ``raise Problem(404, "…")``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.matrix import LiveMatrix
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import STORE_FAULTS, Store, describe_fault
from bot.web import metrics

PROBLEM = "application/problem+json"


@dataclass
class Site:
    """What the server's handlers share. ``live`` is the live matrix (an OutletMatrix given here is made live):
    a reload replaces ``site.matrix`` whole, for the daemon in the same process too when they share it."""

    settings: Settings
    store: Store
    regions: RegionTable
    live: LiveMatrix  # an OutletMatrix given here is made live

    def __post_init__(self) -> None:
        self.live = LiveMatrix.of(self.live)
        self.store.review.stages = self.settings.review_stages  # submitted notices are drafts when reviewed

    @property
    def matrix(self) -> OutletMatrix:
        return self.live.matrix


class Problem(Exception):
    """An RFC 9457 problem: ``status``, a one-line ``detail`` a person can act on, and any extra members
    (``errors`` for refused fields: ``[{"field": "notices[2].verdict", "message": "…"}]``)."""

    def __init__(self, status: int, detail: str, **members: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.members = members


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **members: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail, **members}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def site_of(request: Request) -> Site:
    site: Site = request.app.state.site
    return site


def no_nul_in_parameters(request: Request) -> None:
    """A NUL character in a path or query parameter is refused (422): no ref, id or filter holds one, and
    PostgreSQL cannot even compare text with one."""
    for where, parameters in (("path", request.path_params.items()), ("query", request.query_params.multi_items())):
        for name, value in parameters:
            if "\x00" in str(value):
                raise Problem(422, f"{where} parameter {name!r} holds a NUL character (U+0000); remove it",
                              errors=[{"field": f"{where}.{name}", "message": "holds a NUL character (U+0000)"}])


def create_app(site: Site) -> FastAPI:
    """The ASGI app over one store and one live matrix."""
    app = FastAPI(title="debunkbot", version="1", summary="Push verified debunk notices (辟谣通报) to every outlet "
                  "of the 5+41+N matrix, and read who has them.", dependencies=[Depends(no_nul_in_parameters)])
    app.state.site = site

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.detail, **exc.members)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "message": e["msg"]}
                  for e in exc.errors()]
        return problem(422, "; ".join(f"{e['field']}: {e['message']}" for e in errors), errors=errors)

    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        return problem(503, f"{describe_fault(exc)}; nothing was changed, try again", headers={"Retry-After": "5"})

    for fault in STORE_FAULTS:
        app.add_exception_handler(fault, _store_down)

    @app.exception_handler(sa.exc.DataError)
    async def _unstorable(request: Request, exc: sa.exc.DataError) -> JSONResponse:
        # a value the database cannot hold (a NUL character in a body's text, on PostgreSQL): the request's
        # transaction was rolled back whole; the driver's first line says what, never the values
        what = str(exc.orig).splitlines()[0] if exc.orig else "a value the store cannot hold"
        return problem(422, f"the request holds a value the store cannot hold ({what}); nothing was changed")

    from bot.web import feeds, matrix, receipts

    app.include_router(feeds.router)
    app.include_router(matrix.router)
    app.include_router(receipts.router)

    @app.get("/healthz", tags=["health"], summary="The process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The store is reachable",
             responses={503: {"description": "the store is not reachable"}})
    async def readyz() -> Any:
        def ping() -> None:
            with site.store.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))

        try:
            await asyncio.get_running_loop().run_in_executor(None, ping)
        except STORE_FAULTS as exc:
            return problem(503, describe_fault(exc))
        return {"status": "ready"}

    app.include_router(metrics.router)

    from bot.web import api, pages

    api.install(app)
    pages.install(app)
    return app
