"""The editor's form (``/notices/new``): every field of a notice, and beside it how the notice will look on each
channel of the matrix, updated as the editor types.

The form is read into the same data a notice file or an API request holds and checked by intake's
``check_notices``, so a refused field carries the words ``debunkbot submit`` and the API use, shown next to its
input (``notice.sources[1].url`` → the second source's address). A good notice is stored by ``store_notices``
as the visitor (audited), and the browser goes to its matrix page. Without JavaScript the form still posts and
comes back with its messages; with it, htmx posts the form to ``/notices/new/preview`` half a second after the
last keystroke and swaps in the preview: one per kind of channel (and its options), the outlets of that kind
listed with whether the notice reaches them, rendered by the API's preview code (``render_previews``).

    GET  /notices/new                the form (editor)
    POST /notices/new                store it, or the form again with each refused field's message; with
                                     ``more_sources`` (the "add another source" button) the form again with one
                                     more source row, nothing checked or stored
    POST /notices/new/preview        the preview fragment (htmx; CSRF in the X-CSRF-Token header)
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from bot.intake import IntakeError, NoticesRefused, check_notices, store_notices
from bot.model import Notice, Urgency, Verdict
from bot.outlets import OutletMatrix
from bot.outlets import reach as matrix_reach
from bot.regions import CHONGQING, CITYWIDE, RegionTable, chongqing_today
from bot.store import NotCorrectable, RefConflict, Role
from bot.web import site_of
from bot.web.api import render_previews
from bot.web.pages import Visitor, form_page, page, render, see_other
from bot.web.pages.i18n import N_
from channels.fit import Limit

router = APIRouter(include_in_schema=False)

SOURCE_ROWS = 3  # source rows the form offers at first; "add another source" adds one, up to MAX_SOURCES
MAX_SOURCES = 20  # as many as a notice may hold (Notice.sources)
VERDICT_WORDS = {"false": N_("False (谣言)"), "misleading": N_("Misleading (不实)"),
                 "misconception": N_("Misconception (误区)"), "unproven": N_("Unproven (未经证实)")}
URGENCY_WORDS = {"normal": N_("Normal"), "urgent": N_("Urgent")}
KIND_WORDS = {"district": N_("Districts"), "county": N_("Counties"), "autonomous_county": N_("Autonomous counties"),
              "functional_area": N_("Functional areas")}
CHANNEL_WORDS = {"dingtalk": N_("DingTalk markdown"), "wecom": N_("WeCom robot"), "feishu": N_("Feishu card"),
                 "lark": N_("Lark card"), "weibo": N_("Weibo post"), "wechat_mp": N_("WeChat official account"),
                 "webhook": N_("Webhook JSON"), "feed": N_("Atom feed")}
UNIT_WORDS = {"bytes": N_("bytes"), "chars": N_("characters"), "weibo": N_("characters, as Weibo counts")}
TIME_FIELDS = ("publish_at", "expires_at")


@dataclass
class Draft:
    """What the editor typed, as the form shows it again, and the notice data intake checks."""

    values: dict[str, Any]
    data: dict[str, Any]
    source_rows: list[int] = field(default_factory=list)  # data["sources"][i] came from form row source_rows[i]


def read_form(form: FormData) -> Draft:
    """The form's fields as notice data: empty optional fields omitted, times typed in Chongqing time."""
    text = {name: str(form.get(name) or "").strip() for name in (
        "ref", "title", "rumour", "truth", "verdict", "authority", "category", "urgency", "correction_note",
        *TIME_FIELDS)}
    regions = [str(r) for r in form.getlist("regions") if str(r).strip()]
    values: dict[str, Any] = text | {"regions": regions, "correct": form.get("correct") == "on"}
    data: dict[str, Any] = {k: text[k] for k in ("ref", "title", "rumour", "truth", "verdict", "authority")}
    if text["category"]:
        data["category"] = text["category"]
    data["urgency"] = text["urgency"] or "normal"
    if regions:
        data["regions"] = regions
    for name in TIME_FIELDS:
        if text[name]:
            data[name] = chongqing_input(text[name])
    sources, rows = [], []
    shown = str(form.get("source_rows") or "")
    values["source_rows"] = min(max(int(shown) if shown.isdigit() else 0, SOURCE_ROWS), MAX_SOURCES)
    for row in range(values["source_rows"]):
        title = str(form.get(f"source_title_{row}") or "").strip()
        url = str(form.get(f"source_url_{row}") or "").strip()
        values[f"source_title_{row}"], values[f"source_url_{row}"] = title, url
        if title or url:
            sources.append({"title": title, "url": url})
            rows.append(row)
    if sources:
        data["sources"] = sources
    if values["correct"]:
        data["correct"] = True
    if text["correction_note"]:
        data["correction_note"] = text["correction_note"]
    return Draft(values, data, rows)


def chongqing_input(value: str) -> str:
    """A ``datetime-local`` value (``2026-11-28T20:30``) read as Chongqing time, in ISO 8601 with its offset;
    anything else is passed on as typed, for the model to refuse in its own words."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=CHONGQING)
    return moment.isoformat()


def field_of(draft: Draft, loc: tuple[Any, ...] | None) -> str:
    """The input a refusal belongs to: ``("sources", 1, "url")`` → ``source_url_2`` when the form's second
    filled row was its third; ``("regions", 0)`` → ``regions``; a whole-notice refusal → ``notice``."""
    if not loc:
        return "notice"
    if loc[0] == "sources" and len(loc) >= 2 and isinstance(loc[1], int) and loc[1] < len(draft.source_rows):
        part = loc[2] if len(loc) > 2 else "title"
        return f"source_{part}_{draft.source_rows[loc[1]]}"
    return str(loc[0])


def check(draft: Draft, regions: RegionTable) -> tuple[Notice | None, dict[str, list[str]]]:
    """The notice, or each refused input's messages in intake's words (API path first: ``notice.title``)."""
    try:
        (notice,) = check_notices(draft.data, "form", regions, datetime.now(UTC), container="form")
    except NoticesRefused as exc:
        errors: dict[str, list[str]] = {}
        for refusal in exc.refusals:
            errors.setdefault(field_of(draft, refusal.field), []).append(
                f"{refusal.path(False)}: {refusal.message}")
        return None, errors
    except IntakeError as exc:
        return None, {"notice": [str(exc)]}
    return notice, {}


@dataclass(frozen=True)
class ChannelPreview:
    """One kind of channel (with its options): how the notice looks there, whether and by how much it was
    shortened, and its outlets with whether the notice reaches each."""

    channel: str
    options: dict[str, Any]
    text: str
    body: str
    shortened: bool
    limit: Limit | None
    full_size: int | None  # the full form's size in the limit's unit
    size: int | None  # the shortened form's
    outlets: list[tuple[str, str, bool, str]]  # id, name, reached, why

    @property
    def reached(self) -> int:
        return sum(1 for o in self.outlets if o[2])


def channel_previews(matrix: OutletMatrix, notice: Notice) -> list[ChannelPreview]:
    """One preview per kind of channel of the matrix: the shortened ones first, then in the matrix's order."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for outlet in matrix.outlets:
        groups.setdefault((outlet.channel, json.dumps(outlet.options, sort_keys=True, default=str)), []).append(outlet)
    shown = []
    for (channel, _), outlets in groups.items():
        (rendered,) = render_previews(matrix, notice, outlets[:1])
        limit = first_limit(matrix.channels[channel], outlets[0].options)
        full_size = size = None
        if rendered.shortened and limit is not None:
            full = unlimited(matrix.channels[channel]).render(notice, notice.publish_at or datetime.now(UTC),
                                                              outlets[0].options)
            full_size, size = limit.measure(full.text), limit.measure(rendered.text)
        reaches = [matrix_reach(o, notice) for o in outlets]
        shown.append(ChannelPreview(channel, outlets[0].options, rendered.text, _pretty(rendered.body),
                                    rendered.shortened, limit, full_size, size,
                                    [(r.outlet.id, r.outlet.name, r.reached, r.why) for r in reaches]))
    return sorted(shown, key=lambda p: not p.shortened)  # what had to be cut first: that is what to check


def first_limit(channel: Any, options: dict[str, Any]) -> Limit | None:
    """The length limit a channel fits its text to (WeCom's depends on the outlet's ``msgtype``)."""
    limits = getattr(channel, "limits", None)
    if isinstance(limits, dict):
        limits = limits.get(options.get("msgtype", "markdown")) or next(iter(limits.values()))
    return limits[0] if limits else None


def unlimited(channel: Any) -> Any:
    """A copy of ``channel`` whose limits are out of reach: what it would show if nothing had to be cut."""
    wide = copy.copy(channel)
    limits = channel.limits
    if isinstance(limits, dict):
        wide.limits = {k: tuple(Limit(10**12, x.unit) for x in v) for k, v in limits.items()}
    else:
        wide.limits = tuple(Limit(10**12, x.unit) for x in limits)
    return wide


def _pretty(body: str) -> str:
    try:
        return json.dumps(json.loads(body), ensure_ascii=False, indent=2)
    except ValueError:
        return body


def region_groups(regions: RegionTable) -> list[tuple[str, list[Any]]]:
    """Today's units (in Chongqing), grouped by kind in the table's order: what the region picker offers."""
    units = regions.units_on(chongqing_today())
    return [(KIND_WORDS[kind], [u for u in units if u.kind == kind]) for kind in KIND_WORDS
            if any(u.kind == kind for u in units)]


def _form(request: Request, visitor: Visitor, draft: Draft, errors: dict[str, list[str]],
          previews: list[ChannelPreview] | None = None) -> HTMLResponse:
    site = site_of(request)
    return render(request, visitor, "editor.html", values=draft.values, errors=errors,
                  region_groups=region_groups(site.regions), citywide=CITYWIDE, verdicts=VERDICT_WORDS,
                  urgencies=URGENCY_WORDS, source_rows=range(draft.values.get("source_rows", SOURCE_ROWS)),
                  max_sources=MAX_SOURCES, previews=previews,
                  channel_words=CHANNEL_WORDS, unit_words=UNIT_WORDS,
                  verdict_values=[v.value for v in Verdict], urgency_values=[u.value for u in Urgency])


@router.get("/notices/new", response_class=HTMLResponse)
async def new_notice(request: Request, visitor: Visitor = page(Role.editor)) -> HTMLResponse:
    draft = Draft({"regions": [], "correct": False, "urgency": "normal", "verdict": "false"}, {})
    return _form(request, visitor, draft, {})


@router.post("/notices/new", response_class=HTMLResponse)
async def submit_notice(request: Request, visitor: Visitor = form_page(Role.editor)) -> Response:
    site = site_of(request)
    form = await request.form()
    draft = read_form(form)
    if form.get("more_sources"):  # "add another source": the same form, a row longer, the new row in focus
        draft.values["source_rows"] = min(draft.values["source_rows"] + 1, MAX_SOURCES)
        draft.values["focus"] = f"source_title_{draft.values['source_rows'] - 1}"
        return _form(request, visitor, draft, {})
    notice, errors = await run_in_threadpool(check, draft, site.regions)
    if notice is None:
        return _form(request, visitor, draft, errors)  # 200: a 4xx page is a console error in browsers
    try:
        await run_in_threadpool(store_notices, [notice], site.store, site.matrix, f"web:{visitor.name}",
                                visitor.actor)
    except (RefConflict, NotCorrectable) as exc:
        return _form(request, visitor, draft, {"ref": [f"notice.ref: {exc}; nothing was stored"]})
    return see_other(request, f"/notices/{notice.ref}")


@router.post("/notices/new/preview", response_class=HTMLResponse)
async def preview(request: Request, visitor: Visitor = form_page(Role.editor)) -> HTMLResponse:
    site = site_of(request)
    draft = read_form(await request.form())
    notice, errors = await run_in_threadpool(check, draft, site.regions)
    if notice is None and set(errors) == {"ref"}:  # readers barely see the ref: preview before it is right
        notice, _ = await run_in_threadpool(check, Draft(draft.values, draft.data | {"ref": "preview"}, draft.source_rows),
                                            site.regions)
    previews = await run_in_threadpool(channel_previews, site.matrix, notice) if notice else None
    return render(request, visitor, "preview.html", previews=previews, errors=errors,
                  channel_words=CHANNEL_WORDS, unit_words=UNIT_WORDS)
