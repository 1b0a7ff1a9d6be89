"""``POST /api/v1/matrix:reload``: read outlets.yaml again without a restart, in every process (bot.matrix).

    >>> await client.post("/api/v1/matrix:reload")                          # doctest: +SKIP
    200 {"generation": 3, "outlets": 47, "added": ["dist-yubei"], "removed": [], "changed": []}
    422 {"detail": "outlet matrix refused, …", "errors": [{"outlet": "dist-yubei", "field": "url", …}]}

The answer names outlets by id only: never a URL or a secret, not even one from the refused file.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel

from bot.outlets import IncompleteMatrix, MatrixError
from bot.store import Actor
from bot.web import Problem, site_of
from bot.web.auth import operator

router = APIRouter(prefix="/api/v1", tags=["matrix"])

# load_matrix's lines: "outlet 'dist-yubei' field 'url': …", "operator 'ops' field …", "outlet #3 field …"
_PROBLEM = re.compile(r"^(?:outlet|operator) (?:'(?P<id>[^']*)'|(?P<index>#\d+)) field '(?P<field>[^']*)': (?P<msg>.*)$")
_URL = re.compile(r"'?\b[a-z][a-z0-9+.-]*://[^\s']+'?", re.IGNORECASE)


class MatrixReloaded(BaseModel):
    generation: int  # the store's reload number; every process follows it
    outlets: int  # how many outlets the matrix has now
    added: list[str]  # outlet ids; an added outlet gets the notices submitted from now on, not older ones
    removed: list[str]  # their pending deliveries are held, "removed from matrix", until they come back
    changed: list[str]


@router.post(
    "/matrix:reload", summary="Reload the outlet matrix (outlets.yaml) in every process", response_model=MatrixReloaded,
    responses={422: {"description": "the file has an error: nothing changed; each problem by outlet and field"},
               503: {"description": "the store is not reachable: nothing changed"}},
)
async def reload_matrix(request: Request, caller: Actor = operator) -> MatrixReloaded:
    site = site_of(request)
    try:
        changes = await site.live.reload(site.store, caller)
    except MatrixError as exc:
        said = "; ".join([str(exc).splitlines()[0].rstrip(":"), *exc.problems]) if len(exc.problems) > 1 else str(exc)
        raise Problem(422, _without_urls(f"outlet matrix refused, still running with the matrix as it was: {said}"),
                      errors=[_problem(line) for line in exc.problems] or [{"field": "matrix", "message": _without_urls(str(exc))}],
                      incomplete=isinstance(exc, IncompleteMatrix)) from None
    return MatrixReloaded(generation=site.live.generation or 0, outlets=len(site.matrix), **changes.as_dict())


def _problem(line: str) -> dict[str, Any]:
    match = _PROBLEM.match(line)
    if match is None:
        return {"message": _without_urls(line)}
    outlet = match["id"] or match["index"]
    return {"outlet": outlet, "field": match["field"], "message": _without_urls(match["msg"])}


def _without_urls(text: str) -> str:
    """An outlet URL may carry its credential (a DingTalk access_token): never echoed, even from a bad file."""
    return _URL.sub("the url", text)
