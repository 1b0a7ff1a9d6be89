"""The newsroom's pages: server-rendered Jinja2 (``templates/web/``), htmx and Server-Sent Events, no build step.

A person logs in with an API token (``debunkbot token create``); the server gives a session cookie (HttpOnly,
SameSite=Strict, Secure over TLS) that names the token, so revoking the token ends its sessions. The token's
role decides what each page shows and allows, as in the API. Every form that changes something carries a CSRF
token; a page handler states its role and gets a ``Visitor``::

    @router.get("/outlets")
    def outlets(request: Request, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
        return render(request, visitor, "outlets.html", rows=...)

    @router.post("/outlets/{outlet_id}:pause")
    def pause(..., visitor: Visitor = form_page(Role.operator)) -> Response:   # checks the CSRF token
        ...
        return see_other(request, "/outlets")

Every answer carries a Content-Security-Policy without inline scripts: the app's scripts are files under
``/static`` (htmx and its SSE extension are vendored there; ``bot/web/static/VENDORED.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool

from bot.regions import CHONGQING
from bot.settings import ROOT, Settings
from bot.store import Actor, Role
from bot.web import site_of
from bot.web.pages.i18n import LANGUAGES, N_, Translations, choose, translations

STATIC = Path(__file__).resolve().parent.parent / "static"
TEMPLATES = ROOT / "templates" / "web"
SESSION_COOKIE = "debunkbot_session"
LOGIN_COOKIE = "debunkbot_login"  # a random value the login form's CSRF token is bound to
LANGUAGE_COOKIE = "debunkbot_lang"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

router = APIRouter(include_in_schema=False)

ROLE_WORDS = {"viewer": N_("Viewer"), "editor": N_("Editor"), "reviewer": N_("Reviewer"),
              "operator": N_("Operator"), "admin": N_("Admin")}


@dataclass(frozen=True)
class Visitor:
    """A person on the pages: who (as the store audits them), their role, their session's CSRF token and the
    language the page speaks."""

    name: str
    role: Role
    actor: Actor
    csrf: str
    t: Translations

    def may(self, role: Role) -> bool:
        return self.role >= role


class LoginNeeded(Exception):
    """No session, or the session's token was revoked: the page sends the person to the login form."""


class PageRefused(Exception):
    """The role is too low or the form's CSRF token is wrong: a page that says so, with its status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Sessions:
    """Signs and reads session cookies with the key ``DEBUNKBOT_SESSION_SECRET`` (without it, a random key:
    sessions then end when the server restarts, and a second web process does not know the first's)."""

    def __init__(self, secret: str | None, max_age: float) -> None:
        self.key = (secret or secrets.token_urlsafe(32)).encode()
        self.max_age = max_age
        self.signer = URLSafeTimedSerializer(self.key, salt="debunkbot-session")

    def issue(self, token_id: int) -> str:
        return self.signer.dumps({"token": token_id, "nonce": secrets.token_urlsafe(16)})

    def read(self, cookie: str | None) -> dict[str, Any] | None:
        if not cookie:
            return None
        try:
            value = self.signer.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        return value if isinstance(value, dict) and isinstance(value.get("token"), int) else None

    def csrf(self, nonce: str) -> str:
        return hmac.new(self.key, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_matches(self, nonce: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(nonce), given or "")


def sessions_of(request: Request) -> Sessions:
    found: Sessions = request.app.state.sessions
    return found


def language_of(request: Request) -> Translations:
    default = site_of(request).settings.language
    return translations(choose(request.cookies.get(LANGUAGE_COOKIE), request.headers.get("accept-language"),
                               default))


def _visitor(request: Request, role: Role) -> Visitor:
    t = language_of(request)
    session = sessions_of(request).read(request.cookies.get(SESSION_COOKIE))
    token = site_of(request).store.access.get(session["token"]) if session else None
    if session is None or token is None or token["revoked_at"] is not None:
        raise LoginNeeded()
    have = Role[token["role"]]
    if have < role:
        raise PageRefused(403, t.gettext("This page needs the role {need} or higher; you are {have}.").format(
            need=t.gettext(ROLE_WORDS.get(role.name, role.name)),
            have=t.gettext(ROLE_WORDS.get(have.name, have.name))))
    client = request.client.host if request.client else "unknown"
    return Visitor(token["name"], have, Actor(token["name"], have.name, client),
                   sessions_of(request).csrf(session["nonce"]), t)


def page(role: Role) -> Any:
    """A page handler's caller: ``visitor: Visitor = page(Role.viewer)``. Not logged in → the login form;
    role too low → 403."""

    async def visitor(request: Request) -> Visitor:
        return await run_in_threadpool(_visitor, request, role)

    return Depends(visitor)


def form_page(role: Role) -> Any:
    """As ``page``, for a POST: the form field ``csrf`` (or the header ``X-CSRF-Token``, which the app's script
    adds to htmx requests) must match the session's, or nothing is done (403)."""

    async def visitor(request: Request, csrf: str | None = Form(None)) -> Visitor:
        found = await run_in_threadpool(_visitor, request, role)
        given = csrf or request.headers.get("x-csrf-token")
        if not (given and hmac.compare_digest(found.csrf, given)):
            raise PageRefused(403, found.t.gettext("The form has expired or did not come from this site; "
                                                   "nothing was changed. Reload the page and try again."))
        return found

    return Depends(visitor)


def chongqing_time(value: datetime | None, seconds: bool = False) -> str:
    """A time as Chongqing's clocks show it: ``2026-11-28 20:31``; naive values are UTC, as the store keeps them."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(CHONGQING).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


@cache
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, autoescape=select_autoescape(
        enabled_extensions=("html",), default=True), extensions=["jinja2.ext.i18n"], trim_blocks=True,
        lstrip_blocks=True)
    env.filters["cqtime"] = chongqing_time
    return env


def render(request: Request, visitor: Visitor | None, template: str, status: int = 200, **context: Any
           ) -> HTMLResponse:
    """A page (or an htmx fragment) in the visitor's language. ``_``/``gettext``/``ngettext`` translate;
    ``visitor``, ``Role``, ``csrf`` and ``path`` are always there."""
    t = visitor.t if visitor else language_of(request)
    html = environment().get_template(template).render(
        _=t.gettext, gettext=t.gettext, ngettext=t.ngettext, t=t, visitor=visitor, Role=Role,
        csrf=visitor.csrf if visitor else context.pop("csrf", ""), path=request.url.path,
        languages=LANGUAGES, role_words=ROLE_WORDS, **context)
    return HTMLResponse(html, status_code=status)


def see_other(request: Request, to: str) -> Response:
    """After a form: 303 to ``to`` (a plain form), or ``HX-Redirect`` for an htmx request."""
    if request.headers.get("hx-request"):
        return Response(status_code=204, headers={"HX-Redirect": to})
    return RedirectResponse(to, status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a path on this site: never ``//host``, ``/\\host`` (browsers read it as ``//``) or ``https://…``."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(c) < 0x20 for c in value) or urlsplit(value).netloc):
        return "/"
    return value


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    return RedirectResponse("/notices", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str | None = None) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    answer = render(request, None, "login.html", csrf=sessions_of(request).csrf(nonce), next=_safe_next(next),
                    error=None)
    _set_cookie(request, answer, LOGIN_COOKIE, nonce, max_age=3600)
    return answer


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, token: str = Form(""), csrf: str = Form(""), next: str = Form("/")) -> Response:
    sessions = sessions_of(request)
    t = language_of(request)
    nonce = request.cookies.get(LOGIN_COOKIE) or ""
    if not sessions.csrf_matches(nonce, csrf):
        raise PageRefused(403, t.gettext("The form has expired or did not come from this site; nothing was "
                                         "changed. Reload the page and try again."))
    found = await run_in_threadpool(site_of(request).store.access.authenticate, token.strip())
    if found is None:
        return render(request, None, "login.html", status=401, csrf=csrf, next=_safe_next(next),
                      error=t.gettext("The token is unknown or revoked. Ask an admin for a token "
                                      "(debunkbot token create)."))
    answer = RedirectResponse(_safe_next(next), status_code=303)
    _set_cookie(request, answer, SESSION_COOKIE, sessions.issue(found.token_id), max_age=int(sessions.max_age))
    answer.delete_cookie(LOGIN_COOKIE, path="/")
    return answer


@router.post("/logout")
async def logout(request: Request, visitor: Visitor = form_page(Role.viewer)) -> Response:
    answer = RedirectResponse("/login", status_code=303)
    answer.delete_cookie(SESSION_COOKIE, path="/")
    return answer


@router.get("/language/{language}")
async def set_language(request: Request, language: str, next: str | None = None) -> Response:
    """The language switch in the page's header: remembered in a cookie for a year."""
    answer = RedirectResponse(_safe_next(next), status_code=303)
    if language in LANGUAGES:
        _set_cookie(request, answer, LANGUAGE_COOKIE, language, max_age=365 * 86400, http_only=False)
    return answer


def _set_cookie(request: Request, answer: Response, name: str, value: str, max_age: int,
                http_only: bool = True) -> None:
    answer.set_cookie(name, value, max_age=max_age, path="/", httponly=http_only, samesite="strict",
                      secure=request.url.scheme == "https")


def install(app: FastAPI) -> None:
    """Mount the pages, their static files, the CSP header and the handlers that turn a missing login or a
    refused role into a page."""
    settings = app.state.site.settings
    app.state.sessions = Sessions(_secret(settings), settings.session_hours * 3600)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    from bot.web.pages import audit, editor, log, matrix, notices, outlets, review

    app.include_router(editor.router)  # before the matrix's /notices/{ref}: /notices/new is not a ref
    app.include_router(review.router)
    for part in (notices, matrix, log, outlets, audit):
        app.include_router(part.router)

    @app.exception_handler(LoginNeeded)
    async def _login(request: Request, exc: LoginNeeded) -> Response:
        to = "/login?next=" + quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": to})
        return RedirectResponse(to, status_code=303)

    @app.exception_handler(PageRefused)
    async def _refused(request: Request, exc: PageRefused) -> Response:
        return render(request, None, "error.html", status=exc.status, message=exc.message)

    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Adds the CSP and its companions to every answer (a plain ASGI middleware: streams stay streams)."""

    HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"same-origin")]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((n, v) for n, v in self.HEADERS if n not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)


def _secret(settings: Settings) -> str | None:
    secret = settings.session_secret
    return secret.get_secret_value() if secret is not None else None
