"""The JSON API under ``/api/v1``: notices in, who has them, deliveries, retries, outlets, the audit trail.

Every call needs a bearer token (``bot.web.auth``); what each role may do is on each route. Every answer is
one of the models below, so ``/openapi.json`` describes it; none of them has a field for an outlet's URL,
secret or options, and text that came back from an outlet (errors, answers) is scrubbed of both on the way
out. What the CLI shows, the API shows from the same code (``bot.desk``, the store's parts).

    >>> auth = {"Authorization": f"Bearer {token}"}                                  # doctest: +SKIP
    >>> await client.post("/api/v1/notices", json=notice, headers=auth)               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from bot import desk
from bot.intake import (
    MAX_FILE_BYTES,
    IntakeError,
    NoticesRefused,
    check_notices,
    correction_of,
    parse_json,
    store_notices,
)
from bot.logs import Redactor
from bot.model import Notice, Urgency
from bot.outlets import Outlet, OutletMatrix
from bot.outlets import reach as matrix_reach
from bot.regions import CITYWIDE, Tier
from bot.roles import RoleName
from bot.store import Actor, NotCorrectable, RefConflict, ReviewConflict, ReviewRefused, ReviewState, Role
from bot.web import PROBLEM, Problem, Site, problem, site_of
from bot.web.auth import admin, editor, operator, reviewer, viewer


def _iso_time(value: Any) -> Any:
    """A time as people write it (ISO 8601), not a number of seconds since 1970."""
    if isinstance(value, datetime) or value is None:
        return value
    if not isinstance(value, str) or not value[:4].isdigit() or "-" not in value:
        raise ValueError("an ISO 8601 time with its offset, e.g. 2026-11-27T08:00:00+08:00")
    return value


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_time)]
MAX_BODY = MAX_FILE_BYTES  # a request holds what a notice file may: 1 MiB
PAGE = 50
MAX_PAGE = 500



# -- answers ------------------------------------------------------------------------------------------

class ProblemDoc(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="each refused field, by its path")


class FieldError(BaseModel):
    field: str | None = Field(None, description="where, e.g. notices[2].verdict (absent: the whole document)")
    outlet: str | None = Field(None, description="the outlet whose entry is wrong (a refused matrix reload)")
    message: str = Field(description="what is wrong, in the words `debunkbot submit` uses")


ProblemDoc.model_rebuild()


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    words = {401: "no token, or an unknown or revoked one", 403: "the token's role is too low",
             404: "not found", 409: "conflicts with what is stored", 413: "the body is over 1 MiB",
             422: "refused input: each field named", 503: "the store is unavailable; nothing was changed",
             400: "the body is not JSON"}
    return {s: {"description": words[s]} for s in (401, 403, 422, 503, *statuses)}


class Created(BaseModel):
    ref: str
    created: bool = Field(description="false: the identical notice was already stored, nothing changed")
    deliveries: int = Field(description="deliveries created for it: one per outlet it concerns (a correction: the "
                                        "deliveries it makes)")
    version: int = Field(1, description="2 and on: stored as a correction (correct: true with a correction_note)")
    draft: bool | None = Field(None, description="true: kept as a draft for review (DEBUNKBOT_REVIEW_STAGES > 0), no "
                               "delivery until its stages are signed (GET /notices/{ref}/review); absent otherwise")


class Submitted(BaseModel):
    notices: list[Created]
    deliveries: int = Field(description="deliveries created in all")


class OutletPreview(BaseModel):
    outlet: str
    name: str
    channel: str
    tier: Tier
    text: str = Field(description="what readers see")
    body: str = Field(description="what would be sent (JSON for most channels), before signing")
    shortened: bool = Field(description="the editor's text was cut to fit the platform's limit")
    reached: bool = Field(description="the notice would go to this outlet (its targeting), as `submit --dry-run` says")
    why: str = Field(description="why it would or would not, e.g. 'for 万州区 only, not its region 渝中区'")


class Preview(BaseModel):
    ref: str
    outlets: list[OutletPreview]


class NoticeState(StrEnum):
    held = "held"
    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    cancelled = "cancelled"
    retracted = "retracted"


class Counts(BaseModel):
    delivered: int
    pending: int
    held: int
    failed: int
    cancelled: int


class NoticeRow(BaseModel):
    ref: str
    title: str
    verdict: str
    urgency: Urgency
    category: str | None
    regions: list[str]
    state: NoticeState = Field(description="held (embargoed), failed (an outlet's delivery failed), pending "
                                           "(an outlet does not have it yet), cancelled (it expired before some "
                                           "outlet had it) or delivered (everywhere)")
    submitted_at: datetime
    publish_at: datetime | None
    released_at: datetime | None
    deliveries: Counts


class NoticePage(BaseModel):
    notices: list[NoticeRow]
    next: int | None = Field(description="pass as `after` for the next page; null: this was the last")


class PublishedMark(BaseModel):
    version: int = Field(description="the version it confirmed")
    at: datetime
    url: str | None = Field(description="where it republished it, when it said")
    current: bool = Field(description="it confirmed the notice's latest version (not one a correction replaced)")


class DeliveryRow(BaseModel):
    id: int
    notice: str
    outlet: str
    tier: Tier
    status: NoticeState
    reason: str | None = Field(description="why it is held (embargo, outlet paused, removed from matrix, breaker "
                               "open, rate limit) or cancelled (expired)")
    attempts: int
    http_status: int | None
    error: str | None
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    message_id: str = Field(description="the webhook-id every try of this delivery carried")
    published: PublishedMark | None = Field(None, description="the outlet's receipt (回执): it confirmed it "
                                            "republished the notice; null until it does")


class ReportLine(BaseModel):
    outlet: str
    name: str
    region: str
    received: int = Field(description="notices released in the period that reached it")
    published: int = Field(description="of those, confirmed republished")
    median_minutes: float | None = Field(description="median minutes from delivery to confirmation")
    reminded: int = Field(description="how many needed a reminder (提醒)")


class Report(BaseModel):
    since: datetime
    districts: list[ReportLine]


class TierSummary(BaseModel):
    tier: Tier
    outlets: int
    delivered: int
    pending: int
    held: int
    failed: int
    cancelled: int
    published: int = Field(0, description="delivered outlets that confirmed they republished the current version")
    waiting: list[DeliveryRow] = Field(description="this tier's deliveries not yet delivered, held ones with why")


class Retraction(BaseModel):
    at: datetime
    by: str
    reason: str


class NoticeDetail(BaseModel):
    notice: Notice
    state: NoticeState
    submitted_at: datetime
    released_at: datetime | None
    deliveries: int
    tiers: list[TierSummary]
    version: int = Field(1, description="the current version: 2 and on are corrections (更正)")
    retraction: Retraction | None = Field(None, description="set once the notice is retracted (撤回)")


class RetractBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="why, as the outlets will read it")


class Retracted(BaseModel):
    ref: str
    cancelled: int = Field(description="deliveries not yet made, now cancelled with reason retracted")
    retractions: int = Field(description="outlets that received the notice and will get the retraction")
    draft: bool | None = Field(None, description="true: the retraction waits for review (DEBUNKBOT_REVIEW_STAGES > 0), "
                               "nothing changes until its stages are signed; absent otherwise")


class Corrected(BaseModel):
    ref: str
    version: int
    deliveries: int = Field(description="deliveries to make: corrections, and the latest version to those waiting")
    draft: bool | None = Field(None, description="true: the correction waits for review (DEBUNKBOT_REVIEW_STAGES > 0); "
                               "absent otherwise")


class ReviewDecision(BaseModel):
    round: int = Field(description="a send-back or an edit starts a new round; only the current round's count")
    stage: int
    stage_name: str = Field(description="初审, 复审, 终审 (from the message catalogue)")
    decision: Literal["sign", "return", "release", "urgent-release"]
    actor: str
    role: str
    at: datetime
    comment: str | None
    content_hash: str = Field(description="SHA-256 of the content the person saw")
    counts: bool = Field(description="a decision of the current round (an earlier round's were voided)")


class ReviewDoc(BaseModel):
    ref: str
    kind: Literal["notice", "correction", "retraction"]
    state: Literal["draft", "returned", "released", "withdrawn"]
    stages: int
    waiting_for: int | None = Field(description="the stage it waits for; null once released")
    waiting_for_name: str | None
    round: int
    content_hash: str = Field(description="SHA-256 of what the reviewers read now")
    authors: list[str] = Field(description="who submitted or edited it: they sign no stage")
    submitted_at: datetime
    waiting_since: datetime
    released_at: datetime | None
    released_by: str | None
    urgent: bool = Field(description="released by an operator before every stage was signed (紧急发布)")
    urgent_reason: str | None
    notice: Notice | None = Field(description="the notice (a correction: its new version; a retraction: as stored)")
    retraction_reason: str | None
    decisions: list[ReviewDecision]


class History(BaseModel):
    ref: str
    version: int
    versions: list[dict[str, Any]] = Field(description="each version: at, by, correction_note, its changes")
    retraction: Retraction | None
    outlets: list[dict[str, Any]] = Field(description="each outlet's status, the version it has, every try")
    reviews: list[ReviewDoc] = Field(default_factory=list, description="its reviews (DEBUNKBOT_REVIEW_STAGES > 0): "
                                     "the notice's, its corrections' and retraction's, urgent releases marked")


class BackfillBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str = Field("7d", max_length=40, description="how far back: an age (7d, 12h) or an ISO 8601 time")
    dry_run: bool = False


class Backfilled(BaseModel):
    outlet: str
    notices: list[str] = Field(description="the refs queued (or, dry run, that would be), oldest first")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryRow]
    next: int | None = Field(description="pass as `after` for the next page; null: this was the last")


class AttemptRow(BaseModel):
    id: int
    attempt: int
    trigger: str = Field(description="scheduled, manual (a retry) or fetch (a feed)")
    started_at: datetime
    latency_ms: float
    outcome: str = Field(description="delivered, retry or failed")
    http_status: int | None
    platform_code: str | None
    error: str | None
    response: str | None = Field(description="the start of the outlet's answer, credentials redacted")


class Attempts(BaseModel):
    delivery: int
    notice: str
    outlet: str
    attempts: list[AttemptRow]


class LoggedAttempt(AttemptRow):
    notice: str
    outlet: str


class AttemptPage(BaseModel):
    attempts: list[LoggedAttempt]
    next: int | None = Field(description="pass as `after` for the next page; null: this was the last")


class RetryFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    notice: str | None = Field(None, description="only this notice ref")
    outlet: str | None = Field(None, description="only this outlet id")
    since: IsoTime | None = Field(None, description="only deliveries that failed since then")
    status: Literal["failed"] = Field("failed", description="only failed deliveries are requeued")
    dry_run: bool = Field(False, strict=True, description="say what would be requeued, change nothing")


class Requeued(BaseModel):
    id: int
    notice: str
    outlet: str
    attempts: int
    error: str | None
    note: str | None = Field(description="why it still waits: its outlet is paused or its breaker open")


class HeldOutlet(BaseModel):
    outlet: str
    why: str
    deliveries: int


class RetryAnswer(BaseModel):
    dry_run: bool
    requeued: int = Field(description="deliveries requeued (dry run: that would be)")
    deliveries: list[Requeued]
    held: list[HeldOutlet] = Field(description="outlets whose requeued deliveries wait: resume them to send now")


class OutletRow(BaseModel):
    outlet: str
    name: str | None = Field(description="null: no longer in the matrix, still in the store")
    tier: Tier | None
    region: str | None
    channel: str | None
    in_matrix: bool
    status: str = Field(description="ok, degraded (failing, breaker maybe open) or paused")
    consecutive_failures: int
    last_success_at: datetime | None
    last_failure_at: datetime | None
    breaker_open_until: datetime | None
    pending: int
    failed: int
    paused_reason: str | None


class Outlets(BaseModel):
    outlets: list[OutletRow]


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500, description="why, for the other operators")


class Paused(BaseModel):
    outlet: str
    status: str
    held: int = Field(description="its deliveries now held until it is resumed")


class Resumed(BaseModel):
    outlet: str
    status: str
    due: int = Field(description="its held deliveries, due now")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="who holds it: a person or a system")
    role: RoleName


class TokenRow(BaseModel):
    id: int
    name: str
    role: RoleName
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewToken(TokenRow):
    token: str = Field(description="the token, shown this once: only its hash is kept")


class Tokens(BaseModel):
    tokens: list[TokenRow]


class AuditRow(BaseModel):
    id: int
    at: datetime
    actor: str
    role: str
    action: str
    subject: str | None
    source: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    audit: list[AuditRow]
    next: int | None = Field(description="pass as `after` for the next page; null: this was the last")


# -- what no answer may carry -------------------------------------------------------------------------

_scrubbers: dict[int, tuple[OutletMatrix, Redactor, list[str]]] = {}


def scrub(site: Site, text: str | None) -> str | None:
    """Text an outlet sent back (an error, an answer), without any outlet's URL or secret."""
    if not text:
        return text
    matrix = site.matrix
    cached = _scrubbers.get(id(matrix))
    if cached is None or cached[0] is not matrix:
        outlets = (*matrix.outlets, *matrix.operators)
        urls = sorted({u for o in outlets if o.url for u in (o.url, o.url.split("?", 1)[0])}, key=len, reverse=True)
        cached = (matrix, Redactor(matrix.secret_for(o.id) for o in outlets), urls)
        _scrubbers.clear()
        _scrubbers[id(matrix)] = cached
    _, redactor, urls = cached
    for url in urls:
        text = text.replace(url, "[outlet url]")
    return redactor.redact(text)


def _delivery(site: Site, row: dict[str, Any]) -> DeliveryRow:
    return DeliveryRow.model_validate({k: row.get(k) for k in DeliveryRow.model_fields}
                                      | {"error": scrub(site, row["error"]), "reason": scrub(site, row["reason"])})


MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
After = Annotated[int | None, Query(ge=0, le=MAX_ID, description="the cursor: `next` of the page before")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="rows a page")]


# -- routes -------------------------------------------------------------------------------------------

router = APIRouter(prefix="/api/v1")

NOTICE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "oneOf": [{"$ref": "#/components/schemas/NoticeIn"},
              {"type": "array", "items": {"$ref": "#/components/schemas/NoticeIn"}, "minItems": 1}]}}}}}


async def _read_notices(request: Request, site: Site) -> tuple[list[Notice], bool]:
    """The request's notices, validated as `debunkbot submit` validates a file; the body is read up to 1 MiB."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise Problem(413, f"the body is {int(length):,} bytes, over the {MAX_BODY:,}-byte limit; "
                           "send fewer notices at a time")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, f"the body is over the {MAX_BODY:,}-byte limit; send fewer notices at a time")
    try:
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Problem(422, f"body: not UTF-8 text (invalid byte at offset {exc.start})",
                      errors=[{"field": "body", "message": "not UTF-8 text"}]) from None

    def read() -> tuple[Any, list[Notice]]:  # a thousand notices take a while to check: off the event loop
        raw = parse_json(text, "body")
        return raw, check_notices(raw, "body", site.regions, datetime.now(UTC), site.settings.max_notices_per_file,
                                  container="request")

    try:
        raw, notices = await run_in_threadpool(read)
    except NoticesRefused as exc:
        raise Problem(422, str(exc), errors=[{"field": r.path(exc.many), "message": r.message}
                                             for r in exc.refusals]) from None
    except IntakeError as exc:
        raise Problem(422, str(exc), errors=[{"field": "body", "message": str(exc).removeprefix("body: ")}]) from None
    return notices, isinstance(raw, list)


@router.post("/notices", status_code=201, response_model=Submitted, response_model_exclude_none=True, tags=["notices"],
             summary="Submit one notice or a list (editor): all are stored, or none",
             openapi_extra=NOTICE_BODY, responses=_problems(409, 413, 422))
async def submit(request: Request, caller: Actor = editor) -> Submitted:
    site = site_of(request)
    notices, many = await _read_notices(request, site)
    try:
        added = await run_in_threadpool(store_notices, notices, site.store, site.matrix, f"api:{caller.name}", caller)
    except ReviewConflict as exc:
        raise Problem(409, f"{exc}; nothing of this request was stored") from None
    except (RefConflict, NotCorrectable) as exc:
        index = next(i for i, n in enumerate(notices) if n.ref == exc.ref)
        field = f"notices[{index}].ref" if many else "notice.ref"
        raise Problem(409, f"{field}: {exc}; nothing of this request was stored",
                      errors=[{"field": field, "message": str(exc)}]) from None
    return Submitted(notices=[Created(ref=a.ref, created=a.created, deliveries=a.deliveries, version=a.version,
                                      draft=a.draft or None) for a in added],
                     deliveries=sum(a.deliveries for a in added))


@router.post("/notices:preview", response_model=Preview, tags=["notices"],
             summary="Render a notice for every outlet of the matrix, or one, without storing it (editor)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "$ref": "#/components/schemas/NoticeIn"}}}}}, responses=_problems(404, 413, 422))
async def preview(request: Request, caller: Actor = editor,
                  outlet: Annotated[str | None, Query(description="only this outlet id")] = None) -> Preview:
    site = site_of(request)
    notices, many = await _read_notices(request, site)
    if many:
        raise Problem(422, "body: a preview renders one notice; send one object, not a list",
                      errors=[{"field": "body", "message": "one notice, not a list"}])
    (notice,) = notices
    matrix = site.matrix
    if outlet is not None and outlet not in matrix.by_id:
        raise Problem(404, f"no outlet {outlet!r} in the matrix (GET /api/v1/outlets lists them)")
    targets = [matrix.by_id[outlet]] if outlet else list(matrix.outlets)
    return Preview(ref=notice.ref, outlets=await run_in_threadpool(render_previews, matrix, notice, targets))


def render_previews(matrix: OutletMatrix, notice: Notice, targets: list[Outlet]) -> list[OutletPreview]:
    """How ``notice`` looks at each of ``targets``, and whether it would go there: the API's preview, the
    editor's form and the review page show this. Rendering never adds an outlet's URL or secret (``build()`` does)."""
    published_at = notice.publish_at or datetime.now(UTC)
    shown = []
    for target in targets:
        rendered = matrix.channels[target.channel].render(notice, published_at, target.options)
        reach = matrix_reach(target, notice)
        shown.append(OutletPreview(outlet=target.id, name=target.name, channel=target.channel, tier=target.tier,
                                   text=rendered.text, body=rendered.body.decode("utf-8", "replace"),
                                   shortened=rendered.cut, reached=reach.reached, why=reach.why))
    return shown


@router.get("/notices", response_model=NoticePage, tags=["notices"], summary="Notices, newest last, paged (viewer)",
            responses=_problems(422))
def notices(
    request: Request, caller: Actor = viewer,
    state: Annotated[NoticeState | None, Query(description="held, pending, delivered or failed")] = None,
    since: Annotated[IsoTime | None, Query(description="submitted at or after (ISO 8601, with its offset)")] = None,
    until: Annotated[IsoTime | None, Query(description="submitted before (ISO 8601, with its offset)")] = None,
    region: Annotated[str | None, Query(min_length=1, description="a region the notice names (全市: citywide ones)")
                      ] = None,
    category: Annotated[str | None, Query(max_length=40)] = None,
    urgency: Urgency | None = None, after: After = None, limit: Limit = PAGE,
) -> NoticePage:
    site = site_of(request)
    if region is not None:
        try:
            region = site.regions.resolve(region, datetime.now(UTC).date())
        except ValueError as exc:
            raise Problem(422, f"region: {exc}", errors=[{"field": "region", "message": str(exc)}]) from None
    page = site.store.log.notices(state=state.value if state else None, since=since, until=until,
                                  urgency=urgency.value if urgency else None, region=region, category=category,
                                  after=after, limit=limit)
    return NoticePage(notices=[_notice_row(row) for row in page.rows], next=page.next)


def _notice_row(row: dict[str, Any]) -> NoticeRow:
    notice: Notice = row["notice"]
    return NoticeRow(ref=notice.ref, title=notice.title, verdict=notice.verdict.value, urgency=notice.urgency,
                     category=notice.category, regions=list(notice.regions), state=row["state"],
                     submitted_at=row["submitted_at"], publish_at=notice.publish_at, released_at=row["released_at"],
                     deliveries=Counts(**{s: row[s] for s in desk.STATES}))


@router.post("/notices/{ref}:correct", response_model=Corrected, response_model_exclude_none=True, tags=["notices"],
             summary="Correct a notice (editor): the body is its new version, with correction_note",
             openapi_extra=NOTICE_BODY, responses=_problems(404, 409, 413, 422))
async def correct(request: Request, ref: Annotated[str, Path(max_length=64)], caller: Actor = editor) -> Corrected:
    site = site_of(request)
    notices, _ = await _read_notices(request, site)
    try:
        notice = correction_of(notices, ref, "body", None)
    except IntakeError as exc:
        raise Problem(422, str(exc), errors=[{"field": "notice", "message": str(exc).removeprefix("body: ")}]) from None
    try:
        (added,) = await run_in_threadpool(store_notices, [notice], site.store, site.matrix, f"api:{caller.name}",
                                           caller)
    except NotCorrectable as exc:
        raise Problem(404 if "no notice" in str(exc) else 409, str(exc)) from None
    except ReviewConflict as exc:
        raise Problem(409, str(exc)) from None
    return Corrected(ref=ref, version=added.version, deliveries=added.deliveries, draft=added.draft or None)


@router.post("/notices/{ref}:retract", response_model=Retracted, response_model_exclude_none=True, tags=["notices"],
             summary="Retract a notice (editor): cancel what is unsent, send the retraction where it went",
             responses=_problems(400, 404))
def retract(request: Request, ref: Annotated[str, Path(max_length=64)], body: RetractBody,
            caller: Actor = editor) -> Retracted:
    site = site_of(request)
    try:
        if site.store.review.stages:
            waits = site.store.review.request_retraction(ref, body.reason, caller)
            return Retracted(ref=ref, cancelled=0, retractions=0, draft=waits or None)
        done = site.store.lifecycle.retract(ref, body.reason, caller)
    except ReviewConflict as exc:
        raise Problem(409, str(exc)) from None
    except LookupError:
        raise Problem(404, f"no notice with ref {ref!r}") from None
    except ValueError as exc:
        raise Problem(422, f"reason: {exc}", errors=[{"field": "reason", "message": str(exc)}]) from None
    return Retracted(ref=ref, **done)


@router.get("/notices/{ref}/history", response_model=History, tags=["notices"],
            summary="A notice's versions and their differences, its retraction, each outlet's timeline (viewer)",
            responses=_problems(404))
def notice_history(request: Request, ref: Annotated[str, Path(max_length=64)], caller: Actor = viewer) -> History:
    store = site_of(request).store
    found = store.lifecycle.history(ref)
    if found is None:
        raise Problem(404, f"no notice with ref {ref!r}")
    return History(**found, reviews=[review_doc(s) for s in store.review.all_of(ref)])


@router.post("/outlets/{outlet_id}:backfill", response_model=Backfilled, tags=["outlets"],
             summary="Send an outlet the live notices of a period it has not had, oldest first (operator)",
             responses=_problems(400, 404))
def backfill(request: Request, outlet_id: Annotated[str, Path(max_length=64)], body: BackfillBody,
             caller: Actor = operator) -> Backfilled:
    site = site_of(request)
    matrix = site.matrix
    outlet = matrix.by_id.get(outlet_id)
    if outlet is None:
        raise Problem(404, f"no outlet {outlet_id!r} in the matrix")
    try:
        since = desk.since(body.since)
    except ValueError as exc:
        raise Problem(422, f"since: {exc}", errors=[{"field": "since", "message": str(exc)}]) from None
    refs = site.store.lifecycle.backfill(outlet, since, lambda n, o: matrix_reach(o, n).reached, caller,
                                         dry_run=body.dry_run)
    return Backfilled(outlet=outlet_id, notices=refs)


@router.get("/notices/{ref}", response_model=NoticeDetail, tags=["notices"],
            summary="A notice and who has it, tier by tier (viewer)", responses=_problems(404))
def notice(request: Request, ref: Annotated[str, Path(max_length=64)], caller: Actor = viewer) -> NoticeDetail:
    site = site_of(request)
    status = desk.notice_status(site.store, ref)
    if status is None:
        draft = site.store.review.get(ref) if site.store.review.stages else None
        if draft is not None and draft.kind == "notice" and draft.state in ("draft", "returned"):
            raise Problem(404, f"{ref!r} is a draft waiting for review, not yet released: GET "
                               f"/api/v1/notices/{ref}/review shows it")
        raise Problem(404, f"no notice with ref {ref!r}")
    row = site.store.log.notice_row(ref)
    return NoticeDetail(
        version=status.version, retraction=status.retraction,
        notice=status.notice, state=row["state"], submitted_at=row["submitted_at"], released_at=row["released_at"],
        deliveries=status.deliveries,
        tiers=[TierSummary(tier=t.tier, outlets=t.outlets, delivered=t.delivered, pending=t.pending, held=t.held,
                           failed=t.failed, cancelled=t.cancelled, published=t.published,
                           waiting=[_delivery(site, r) for r in status.missing if r["tier"] == t.tier])
               for t in status.tiers])


@router.get("/deliveries", response_model=DeliveryPage, tags=["deliveries"],
            summary="The delivery log, one row per notice x outlet, paged (viewer)", responses=_problems(422))
def deliveries(
    request: Request, caller: Actor = viewer,
    notice: Annotated[str | None, Query(description="only this notice ref")] = None,
    outlet: Annotated[str | None, Query(description="only this outlet id")] = None,
    tier: Tier | None = None, state: NoticeState | None = None, after: After = None, limit: Limit = PAGE,
) -> DeliveryPage:
    site = site_of(request)
    page = site.store.log.page(ref=notice, outlet_id=outlet, tier=tier.value if tier else None,
                               status=state.value if state else None, after=after, limit=limit)
    rows = desk.with_receipts(site.store, page.rows)
    return DeliveryPage(deliveries=[_delivery(site, r) for r in rows], next=page.next)


@router.get("/report", response_model=Report, tags=["receipts"], responses=_problems(422) | {
                200: {"content": {"text/csv": {}},
                      "description": "JSON, or with ?format=csv a CSV (UTF-8 with a BOM)"}},
            summary="Receipts (回执) per district: received, published, median time to publish, reminders (viewer)")
def receipt_report(
    request: Request, caller: Actor = viewer,
    since: Annotated[str, Query(description="notices released since: an age (7d) or an ISO 8601 time")] = "7d",
    format: Annotated[Literal["json", "csv"], Query(description="json, or csv for a spreadsheet")] = "json",
) -> Any:
    site = site_of(request)
    try:
        start = desk.since(since)
    except ValueError as exc:
        raise Problem(422, f"since: {exc}", errors=[{"field": "query.since", "message": str(exc)}]) from None
    lines = desk.receipt_report(site.store, site.matrix, start)
    if format == "csv":
        return Response(desk.report_csv(lines).encode("utf-8"), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="receipts-{start:%Y%m%d}.csv"'})
    return Report(since=start, districts=[ReportLine(**dataclasses.asdict(line)) for line in lines])


@router.get("/deliveries/{delivery_id}/attempts", response_model=Attempts, tags=["deliveries"],
            summary="Every HTTP try of one delivery (viewer)", responses=_problems(404, 422))
def attempts(request: Request, delivery_id: Annotated[int, Path(ge=1, le=MAX_ID)], caller: Actor = viewer
             ) -> Attempts:
    site = site_of(request)
    found = site.store.log.delivery(delivery_id)
    if found is None:
        raise Problem(404, f"no delivery {delivery_id}")
    rows = site.store.log.attempts(delivery_id=delivery_id)
    return Attempts(delivery=delivery_id, notice=found["notice"], outlet=found["outlet"],
                    attempts=[_attempt(site, r, AttemptRow) for r in rows])


@router.get("/attempts", response_model=AttemptPage, tags=["deliveries"], responses=_problems(),
            summary="Every HTTP try, oldest first, paged, as `debunkbot log --attempts` (viewer)")
def all_attempts(
    request: Request, caller: Actor = viewer,
    notice: Annotated[str | None, Query(description="only this notice ref")] = None,
    outlet: Annotated[str | None, Query(description="only this outlet id")] = None,
    after: After = None, limit: Limit = PAGE,
) -> AttemptPage:
    site = site_of(request)
    rows = site.store.log.attempts(ref=notice, outlet_id=outlet, after=after, limit=limit + 1)
    more = len(rows) > limit
    return AttemptPage(attempts=[_attempt(site, r, LoggedAttempt) for r in rows[:limit]],
                       next=rows[limit - 1]["id"] if more else None)


def _attempt(site: Site, row: dict[str, Any], model: type[AttemptRow]) -> Any:
    return model.model_validate({k: row[k] for k in model.model_fields}
                                | {"error": scrub(site, row["error"]), "response": scrub(site, row["response"])})


@router.post("/deliveries:retry", response_model=RetryAnswer, tags=["deliveries"],
             summary="Requeue failed deliveries with a fresh retry schedule, or say which would be (operator)",
             responses=_problems(400, 422))
def retry(request: Request, body: RetryFilter, caller: Actor = operator) -> RetryAnswer:
    site = site_of(request)
    done = desk.retry(site.store, ref=body.notice, outlet_id=body.outlet, since=body.since, status=body.status,
                      dry_run=body.dry_run, actor=caller)

    def why(hold: desk.Hold) -> str:
        return "outlet paused" if hold.paused else f"breaker open until {hold.until.isoformat(timespec='seconds')}" \
            if hold.until else "breaker open"

    return RetryAnswer(
        dry_run=body.dry_run, requeued=len(done.rows),
        deliveries=[Requeued(id=r["id"], notice=r["notice"], outlet=r["outlet"], attempts=r["attempts"],
                             error=scrub(site, r["error"]),
                             note=f"held: {why(done.held[r['outlet']])}" if r["outlet"] in done.held else None)
                    for r in done.rows],
        held=[HeldOutlet(outlet=h.outlet, why=why(h), deliveries=h.deliveries) for h in done.held.values()])


@router.get("/outlets", response_model=Outlets, tags=["outlets"],
            summary="Every outlet with its health (viewer); never a URL or a secret", responses=_problems())
def outlets(request: Request, caller: Actor = viewer) -> Outlets:
    site = site_of(request)
    matrix = site.matrix
    rows = []
    for row in desk.outlet_rows(site.store, matrix):
        entry = matrix.by_id.get(row["outlet"])
        rows.append(OutletRow(**row | {"paused_reason": scrub(site, row["paused_reason"])}, in_matrix=entry is not None,
                              name=entry.name if entry else None, region=entry.region if entry else None,
                              channel=entry.channel if entry else None))
    return Outlets(outlets=rows)


OutletId = Annotated[str, Path(max_length=64, description="the outlet's id")]


def _known_outlet(site: Site, outlet_id: str) -> None:
    if outlet_id not in site.matrix.by_id and outlet_id not in site.store.health.all():
        raise Problem(404, f"no outlet {outlet_id!r} in the matrix (GET /api/v1/outlets lists them)")


@router.post("/outlets/{outlet_id}:pause", response_model=Paused, tags=["outlets"],
             summary="Pause an outlet: its deliveries are held until it is resumed (operator)",
             responses=_problems(400, 404, 409, 422))
def pause(request: Request, outlet_id: OutletId, body: PauseRequest, caller: Actor = operator) -> Paused:
    site = site_of(request)
    _known_outlet(site, outlet_id)
    held = site.store.health.pause(outlet_id, body.reason, actor=caller)
    if held is None:
        raise Problem(409, f"outlet {outlet_id!r} is already paused; nothing changed")
    return Paused(outlet=outlet_id, status="paused", held=held)


@router.post("/outlets/{outlet_id}:resume", response_model=Resumed, tags=["outlets"],
             summary="Resume a paused outlet (or close its open breaker): what it held goes out now (operator)",
             responses=_problems(404, 409, 422))
def resume(request: Request, outlet_id: OutletId, caller: Actor = operator) -> Resumed:
    site = site_of(request)
    _known_outlet(site, outlet_id)
    due = site.store.health.resume(outlet_id, actor=caller)
    if due is None:
        raise Problem(409, f"outlet {outlet_id!r} is not paused and its breaker is closed; nothing changed")
    return Resumed(outlet=outlet_id, status="ok", due=due)


@router.get("/tokens", response_model=Tokens, tags=["tokens"], responses=_problems(),
            summary="Every token made, revoked ones too, never the token itself (admin)")
def tokens(request: Request, caller: Actor = admin) -> Tokens:
    return Tokens(tokens=[TokenRow(**row) for row in site_of(request).store.access.all()])


@router.post("/tokens", status_code=201, response_model=NewToken, tags=["tokens"], responses=_problems(400, 422),
             summary="Make a token; the answer holds it, once (admin)")
def create_token(request: Request, body: TokenRequest, caller: Actor = admin) -> NewToken:
    try:
        token, row = site_of(request).store.access.create(body.name, Role[body.role.value], actor=caller)
    except ValueError as exc:
        raise Problem(422, f"name: {exc}", errors=[{"field": "name", "message": str(exc)}]) from None
    return NewToken(**row, token=token)


@router.post("/tokens/{token_id}:revoke", response_model=TokenRow, tags=["tokens"], responses=_problems(404, 422),
             summary="Revoke a token: every call with it is refused from now on (admin)")
def revoke_token(request: Request, token_id: Annotated[int, Path(ge=1, le=MAX_ID)], caller: Actor = admin) -> TokenRow:
    row = site_of(request).store.access.revoke(token_id, actor=caller)
    if row is None:
        raise Problem(404, f"no token {token_id} that is not already revoked (GET /api/v1/tokens lists them)")
    return TokenRow(**row)


@router.get("/audit", response_model=AuditPage, tags=["audit"],
            summary="Who changed what, when and from where, oldest first, paged (operator)", responses=_problems(422))
def audit(
    request: Request, caller: Actor = operator,
    actor: Annotated[str | None, Query(description="only this token name or local user")] = None,
    action: Annotated[str | None, Query(description="notice.submit, deliveries.retry, outlet.pause, …")] = None,
    subject: Annotated[str | None, Query(description="only this notice ref, outlet id or token id")] = None,
    after: After = None, limit: Limit = PAGE,
) -> AuditPage:
    page = site_of(request).store.audit.page(actor=actor, action=action, subject=subject, after=after, limit=limit)
    site = site_of(request)
    return AuditPage(audit=[AuditRow(**row | {"detail": _scrubbed(site, row["detail"])}) for row in page.rows],
                     next=page.next)


def _scrubbed(site: Site, detail: dict[str, Any]) -> dict[str, Any]:
    """An audit row's detail without an outlet URL or secret (a pause reason may quote one)."""
    text = json.dumps(detail, ensure_ascii=False, default=str)
    clean = scrub(site, text) or "{}"
    try:
        value = json.loads(clean)
    except ValueError:
        return {"scrubbed": clean}
    return value if isinstance(value, dict) else {"scrubbed": clean}


# -- review before release (先审后发) ------------------------------------------------------------------------

class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: int = Field(ge=1, le=3, description="the stage signed or sent back: the one the notice waits for")
    decision: Literal["sign", "return"]
    comment: str | None = Field(None, max_length=2000, description="required to send back: what to change")
    content_hash: str | None = Field(None, min_length=64, max_length=64, description="the content_hash of the "
                                     "review you read (GET …/review): refused (409) if the draft changed since")


class ReleaseBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=2000, description="why it cannot wait for every stage (紧急发布)")


class ReviewQueue(BaseModel):
    reviews: list[ReviewDoc]


def review_doc(state: ReviewState) -> ReviewDoc:
    from bot.web.pages.i18n import translations
    from bot.web.pages.stages import stage_name

    zh = translations("zh_Hans")
    waiting = state.waiting_for
    return ReviewDoc(
        ref=state.ref, kind=state.kind, state=state.state, stages=state.stages,  # type: ignore[arg-type]
        waiting_for=waiting, waiting_for_name=stage_name(state.stages, waiting, zh) if waiting else None,
        round=state.round, content_hash=state.content_hash, authors=list(state.authors),
        submitted_at=state.created_at, waiting_since=state.waiting_since, released_at=state.released_at,
        released_by=state.released_by, urgent=state.urgent_reason is not None, urgent_reason=state.urgent_reason,
        notice=state.notice, retraction_reason=state.reason,
        decisions=[ReviewDecision(round=d.round, stage=d.stage, stage_name=stage_name(state.stages, d.stage, zh),
                                  decision=d.decision, actor=d.actor, role=d.role, at=d.at,  # type: ignore[arg-type]
                                  comment=d.comment, content_hash=d.content_hash, counts=d.counts)
                   for d in state.decisions])


def _reviewed(call: Any, *args: Any) -> ReviewState:
    """A review decision, its refusals as problems: 403 (who), 409 (when), 404, 422 (a missing comment)."""
    try:
        found: ReviewState = call(*args)
    except ReviewRefused as exc:
        raise Problem(403, str(exc)) from None
    except ReviewConflict as exc:
        raise Problem(409, str(exc)) from None
    except LookupError as exc:
        raise Problem(404, str(exc).strip("'\"")) from None
    except ValueError as exc:
        raise Problem(422, str(exc), errors=[{"field": "comment", "message": str(exc)}]) from None
    return found


@router.post("/notices/{ref}/review", status_code=201, response_model=ReviewDoc, tags=["review"],
             summary="Sign a review stage of a draft, or send it back with a comment (reviewer); the last stage "
                     "releases it", responses=_problems(400, 404, 409))
def review(request: Request, ref: Annotated[str, Path(max_length=64)], body: ReviewBody,
           caller: Actor = reviewer) -> ReviewDoc:
    site = site_of(request)
    if body.decision == "sign":
        state = _reviewed(site.store.review.sign, ref, body.stage, caller, body.comment, site.matrix.concerned_by,
                          body.content_hash)
    else:
        state = _reviewed(site.store.review.return_, ref, caller, body.comment or "", body.stage, body.content_hash)
    return review_doc(state)


@router.post("/notices/{ref}:release", response_model=ReviewDoc, tags=["review"],
             summary="Release an urgent draft before every stage is signed, with a reason (operator; 紧急发布)",
             responses=_problems(400, 404, 409))
def release(request: Request, ref: Annotated[str, Path(max_length=64)], body: ReleaseBody,
            caller: Actor = operator) -> ReviewDoc:
    site = site_of(request)
    return review_doc(_reviewed(site.store.review.release, ref, caller, body.reason, site.matrix.concerned_by))


@router.get("/notices/{ref}/review", response_model=ReviewDoc, tags=["review"],
            summary="A notice's review: what waits (or was released), every sign-off, send-back and release (viewer)",
            responses=_problems(404))
def review_of(request: Request, ref: Annotated[str, Path(max_length=64)], caller: Actor = viewer) -> ReviewDoc:
    found = site_of(request).store.review.get(ref)
    if found is None:
        raise Problem(404, f"{ref!r} has no review (it was submitted with DEBUNKBOT_REVIEW_STAGES at 0, or not at all)")
    return review_doc(found)


@router.get("/reviews", response_model=ReviewQueue, tags=["review"],
            summary="Every draft waiting for review or sent back, the longest waiting first (viewer)",
            responses=_problems())
def reviews(request: Request, caller: Actor = viewer) -> ReviewQueue:
    return ReviewQueue(reviews=[review_doc(s) for s in site_of(request).store.review.waiting()])


def install(app: FastAPI) -> None:
    """Add the API to the app, and describe a notice as it is submitted (``NoticeIn``) in /openapi.json: the
    submit and preview routes read their body themselves, to bound its size and say what is wrong in intake's
    words."""
    app.include_router(router)
    app.add_exception_handler(405, _method_not_allowed)
    make = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = make()
        schema = Notice.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in schema.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas["NoticeIn"] = schema | {"title": "NoticeIn"}
        names = _region_names(site_of_app(app))
        schemas["NoticeIn"]["properties"]["regions"]["items"] = {"type": "string", "enum": names}
        for parameter in document["paths"][f"{router.prefix}/notices"]["get"]["parameters"]:
            if parameter["name"] == "region":
                parameter["schema"] = {"anyOf": [{"type": "string", "enum": names}, {"type": "null"}]}
        schemas["ProblemDoc"] = ProblemDoc.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas["ProblemDoc"].pop("$defs", {}))
        problem = {PROBLEM: {"schema": {"$ref": "#/components/schemas/ProblemDoc"}}}
        for operations in document["paths"].values():  # every error is a problem document, FastAPI's 422 too
            for operation in operations.values():
                for status, answer in operation.get("responses", {}).items():
                    if status[0] in "45":
                        answer["content"] = problem
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 with every method the path takes (Starlette names only the first route's: GET and POST /notices are two)."""
    routes = [*request.app.routes, *router.routes]
    allowed = sorted({method for route in routes if isinstance(route, APIRoute)
                      and route.path_regex.match(request.url.path) for method in route.methods or ()})
    return problem(405, f"{request.method} is not allowed here; allowed: {', '.join(allowed)}",
                   headers={"Allow": ", ".join(allowed)})


def site_of_app(app: FastAPI) -> Site:
    site: Site = app.state.site
    return site


def _region_names(site: Site) -> list[str]:
    """Every name and alias of the units that exist today, and the citywide ones: what `regions` may hold."""
    table = site.regions
    today = datetime.now(UTC).date()
    names = [CITYWIDE, *table.citywide_aliases]
    for unit in table.units_on(today):
        names += [unit.name, *unit.aliases]
    return list(dict.fromkeys(names))
