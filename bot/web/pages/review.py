"""The review pages (先审后发): each reviewer's queue, a draft's review page, and its 审批表 (the review sheet).

- ``/review``: what waits for review, with the stage each draft waits for, the ones waiting too long flagged;
- ``/review/{ref}``: the draft's content, what every outlet would show (the API's preview code), its decisions,
  and the sign and send-back forms (CSRF); an operator's urgent release for an urgent draft;
- ``/review/{ref}/sheet``: the 审批表, printable from the browser as one A4 page; ``debunkbot review-sheet REF``
  writes the same page (``sheet_html``), or a PDF of it through headless Chromium.

    >>> html = sheet_html(store.review.get("cq-1"), translations("zh_Hans"), standalone=True)   # doctest: +SKIP
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from bot.store import ReviewConflict, ReviewRefused, ReviewState, Role
from bot.web import site_of
from bot.web.pages import STATIC, PageRefused, Visitor, environment, form_page, page, render, see_other
from bot.web.pages.i18n import Translations
from bot.web.pages.stages import DECISION_WORDS, KIND_WORDS, REVIEW_STATES, stage_name

router = APIRouter(include_in_schema=False)
SHEET_CSS = STATIC / "review-sheet.css"


def _words(t: Translations) -> dict[str, Any]:
    return {"stage_name": lambda stages, stage: stage_name(stages, stage, t), "decision_words": DECISION_WORDS,
            "review_states": REVIEW_STATES, "kind_words": KIND_WORDS}


def sheet_html(state: ReviewState, t: Translations, standalone: bool = False) -> str:
    """The 审批表 of a review as one HTML document: the notice, each stage (who, when, comment, the hash they
    saw), the release (marked 紧急发布 when urgent). ``standalone``: its stylesheet inlined (a file, a PDF);
    else linked from /static (the page: the CSP allows no inline style)."""
    return environment().get_template("review/sheet.html").render(
        _=t.gettext, gettext=t.gettext, ngettext=t.ngettext, t=t, review=state,
        css=SHEET_CSS.read_text(encoding="utf-8") if standalone else None, printed_at=datetime.now(UTC),
        **_words(t))


def sheet_pdf(html: str, pdf: Path, chromium: str = "/usr/bin/chromium") -> None:
    """Print ``html`` to ``pdf`` (A4) with headless Chromium, as the browser's own print does."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "sheet.html"
        page_file.write_text(html, encoding="utf-8")
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
             f"--user-data-dir={Path(tmp) / 'profile'}", f"--print-to-pdf={pdf.resolve()}", page_file.as_uri()],
            capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not pdf.exists():
        raise RuntimeError(f"{chromium} could not print the sheet (exit {done.returncode}): "
                           f"{done.stderr.strip()[-400:]}")


def _state(request: Request, ref: str, t: Translations) -> ReviewState:
    found = site_of(request).store.review.get(ref)
    if found is None:
        raise PageRefused(404, t.gettext("{ref} has no review.").format(ref=ref))
    return found


@router.get("/review", response_class=HTMLResponse)
async def queue(request: Request, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    site = site_of(request)
    after = timedelta(minutes=site.settings.review_alert_after)
    waiting = await run_in_threadpool(site.store.review.waiting)
    flagged = await run_in_threadpool(site.store.review.flagged, after, datetime.now(UTC))
    mine = [w for w in waiting if visitor.may(Role.reviewer) and visitor.name not in w.authors
            and all(d.actor != visitor.name for d in w.signed) and w.state == "draft"]
    return render(request, visitor, "review/queue.html", waiting=waiting, mine={w.id for w in mine},
                  flagged=flagged, **_words(visitor.t))


@router.get("/review/{ref}", response_class=HTMLResponse)
async def review_page(request: Request, ref: str, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    site = site_of(request)
    state = await run_in_threadpool(_state, request, ref, visitor.t)
    previews: list[Any] = []
    if state.notice is not None:
        from bot.web.api import render_previews

        matrix = site.matrix
        previews = await run_in_threadpool(render_previews, matrix, state.notice, list(matrix.outlets))
    may_sign = (state.state in ("draft", "returned") and visitor.may(Role.reviewer)
                and visitor.name not in state.authors and all(d.actor != visitor.name for d in state.signed))
    may_release = (state.state == "draft" and visitor.may(Role.operator) and state.urgent and bool(state.signed)
                   and visitor.name not in state.authors)
    return render(request, visitor, "review/notice.html", review=state, previews=previews, may_sign=may_sign,
                  may_release=may_release, error=request.query_params.get("error"), **_words(visitor.t))


@router.get("/review/{ref}/sheet", response_class=HTMLResponse)
async def sheet(request: Request, ref: str, visitor: Visitor = page(Role.viewer)) -> HTMLResponse:
    state = await run_in_threadpool(_state, request, ref, visitor.t)
    return HTMLResponse(sheet_html(state, visitor.t))


async def _decide(request: Request, ref: str, visitor: Visitor, call: Any, *args: Any) -> Response:
    try:
        await run_in_threadpool(call, *args)
    except (ReviewRefused, ReviewConflict, LookupError, ValueError) as exc:
        status = 403 if isinstance(exc, ReviewRefused) else 404 if isinstance(exc, LookupError) else 409
        raise PageRefused(status, str(exc).strip("'\"")) from None
    return see_other(request, f"/review/{ref}")


@router.post("/review/{ref}/sign")
async def sign(request: Request, ref: str, stage: int = Form(...), comment: str = Form(""),
               content_hash: str = Form(""), visitor: Visitor = form_page(Role.reviewer)) -> Response:
    site = site_of(request)
    return await _decide(request, ref, visitor, site.store.review.sign, ref, stage, visitor.actor, comment,
                         site.matrix.concerned_by, content_hash or None)


@router.post("/review/{ref}/return")
async def send_back(request: Request, ref: str, stage: int = Form(...), comment: str = Form(""),
                    content_hash: str = Form(""), visitor: Visitor = form_page(Role.reviewer)) -> Response:
    site = site_of(request)
    return await _decide(request, ref, visitor, site.store.review.return_, ref, visitor.actor, comment, stage,
                         content_hash or None)


@router.post("/review/{ref}/release")
async def release(request: Request, ref: str, reason: str = Form(""),
                  visitor: Visitor = form_page(Role.operator)) -> Response:
    site = site_of(request)
    return await _decide(request, ref, visitor, site.store.review.release, ref, visitor.actor, reason,
                         site.matrix.concerned_by)
