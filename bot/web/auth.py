"""Bearer tokens with a role, checked on every API call.

    >>> @router.post("/outlets/{outlet_id}:pause")                            # doctest: +SKIP
    ... def pause(outlet_id: str, caller: Actor = Depends(require(Role.operator))): ...

A missing, unknown or revoked token gets 401 (with ``WWW-Authenticate: Bearer``), a role too low 403; both
say what is wrong. The caller comes back as the ``Actor`` the store audits: the token's name and role, and the
client's address.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from bot.store import Actor, Role
from bot.web import site_of

bearer = HTTPBearer(auto_error=False, description="a token from `debunkbot token create --role R --name NAME`")


def _unauthorized(detail: str, error: str = "invalid_token") -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": f'Bearer realm="debunkbot", error="{error}"'})


def require(role: Role) -> Callable[..., Actor]:
    """A dependency that lets through callers whose token has ``role`` or a higher one."""

    def caller(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Actor:
        if credentials is None:
            raise HTTPException(401, "this call needs a token: send the header `Authorization: Bearer TOKEN` "
                                     "(an admin makes one with `debunkbot token create`)",
                                headers={"WWW-Authenticate": 'Bearer realm="debunkbot"'})
        found = site_of(request).store.access.authenticate(credentials.credentials)
        if found is None:
            raise _unauthorized("the token is unknown or revoked; ask an admin for a new one (`debunkbot token list`)")
        if found.role < role:
            raise HTTPException(403, f"this call needs the role {role.name} or higher; the token of "
                                     f"{found.name!r} has the role {found.role.name}")
        return Actor(found.name, found.role.name, request.client.host if request.client else "unknown")

    return caller


# what routes take as their caller: ``def retry(..., caller: Actor = operator)``
viewer = Depends(require(Role.viewer))
editor = Depends(require(Role.editor))
reviewer = Depends(require(Role.reviewer))
operator = Depends(require(Role.operator))
admin = Depends(require(Role.admin))
