"""Standard Webhooks: signed JSON for outlets with their own endpoint.

Headers ``webhook-id`` (stable per notice x outlet, the receiver's dedupe key),
``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``id.timestamp.body`` under the outlet's ``whsec_`` secret). The key is decoded as the reference
``standardwebhooks`` library decodes it, and any receiver using that library verifies every post
(tests/channels/test_webhook.py). Per send only the signature is computed, from an HMAC keyed once per
outlet, and the request is a copy of one built once per outlet and rendering (httpx's ``Request()``
was two thirds of a send's build).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from standardwebhooks import Webhook as Signer

from bot.render import notice_context, render
from channels.base import NO_OPTIONS, Outcome, RateLimit, Rendered, classify_http

if TYPE_CHECKING:
    import httpx

    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt


# hashlib lets go of the GIL to hash 2 KiB or more at once: for a body's 3 µs of hashing the event loop then
# waited for the store's thread to hand the GIL back, 60 µs a send on average (bench/suite.py F1). Fed in pieces
# under 2 KiB, the signature is the same and the loop keeps going.
HASHED_AT_ONCE = 2047


class Webhook:
    name: ClassVar[str] = "webhook"
    event_type: ClassVar[str] = "notice.published"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        problems = []
        if not outlet.url:
            problems.append(("url", "a webhook outlet needs a url"))
        if not outlet.secret_env:
            problems.append(("secret_env", "a webhook outlet needs secret_env naming its whsec_ secret"))
        return problems

    def read_secret(self, raw: str) -> str:
        """A Standard Webhooks secret: ``whsec_`` + base64 of 24 to 64 random bytes
        (https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md)."""
        secret = raw.strip()
        shape = "whsec_ followed by the base64 of 24 to 64 random bytes"
        if not secret.startswith("whsec_"):
            raise ValueError(f"does not start with whsec_; expected {shape}")
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except ValueError:
            raise ValueError(f"is not valid base64 after whsec_; expected {shape}") from None
        if not 24 <= len(key) <= 64:
            raise ValueError(f"decodes to {len(key)} bytes; expected {shape}")
        return secret

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        context = notice_context(notice, published_at, change, receipt)
        text = render("webhook/text.j2", context)
        data = notice.model_dump(mode="json", exclude={"correct", "correction_note"}) | {
            "verdict_label": notice.verdict.label,
            "published_at": published_at.isoformat(),
            "text": text,
            "claim_review": claim_review(notice, published_at, change),
        }
        event, timestamp = self.event_type, published_at
        if change is not None:
            # the receiver replaces (or takes down) what it got under previous_webhook_id
            event, timestamp = f"notice.{'corrected' if change.kind == 'correction' else 'retracted'}", change.at
            data |= {"version": change.version, "previous_version": change.previous_version,
                     "previous_webhook_id": change.previous_message_id}
            data |= ({"correction_note": change.note, "changed": list(change.changed)} if change.kind == "correction"
                     else {"retraction_reason": change.note, "retracted_at": change.at.isoformat()})
        if receipt is not None:
            # POST it {"published_url": "…"} once republished (or open it in a browser)
            data["receipt_url"] = receipt.url
            if receipt.remind_by is not None:
                event = "notice.reminder"
                data["publish_by"] = receipt.remind_by.isoformat()
        payload = {"type": event, "timestamp": timestamp.isoformat(), "data": data}
        return Rendered(text=text, body=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())

    def render_alert(self, title: str, text: str, now: datetime) -> Rendered:
        """An operator alert: ``{"type": "operator.alert", "data": {"title", "text"}}``, signed like a notice."""
        payload = {"type": "operator.alert", "timestamp": now.isoformat(), "data": {"title": title, "text": text}}
        return Rendered(text=f"{title}\n{text}", body=json.dumps(payload, ensure_ascii=False).encode())

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request:
        assert outlet.url and secret  # check_outlet and load_matrix guarantee both
        timestamp = str(int(now.timestamp()))
        mac = _keyed(secret).copy()
        mac.update(f"{message_id}.{timestamp}.".encode())
        body = memoryview(rendered.body)
        for at in range(0, len(body), HASHED_AT_ONCE):
            mac.update(body[at:at + HASHED_AT_ONCE])
        url, host = _target(outlet.url)
        request = _copy(_unsigned(rendered.body), url)
        headers = request.headers
        headers["host"] = host
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = timestamp
        headers["webhook-signature"] = "v1," + base64.b64encode(mac.digest()).decode()
        return request

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome:
        return classify_http(status, headers)


@functools.lru_cache(maxsize=8192)
def _keyed(secret: str) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the outlet's secret, decoded as standardwebhooks does; copied per send."""
    return hmac.new(Signer(secret)._whsecret, digestmod=hashlib.sha256)


@functools.lru_cache(maxsize=64)
def _unsigned(body: bytes) -> httpx.Request:
    """The post of one rendering, without its outlet (URL, Host) and per-send headers: built once per rendering,
    copied per send."""
    import httpx  # not at the top: see channels/__init__.py

    request = httpx.Request("POST", "http://outlet.invalid/", content=body, headers={
        "content-type": "application/json; charset=utf-8", "user-agent": "debunkbot/0.1"})
    del request.headers["host"]
    return request


def _copy(request: httpx.Request, url: httpx.URL) -> httpx.Request:
    """A copy of ``request`` to ``url``, with headers of its own (the body, immutable bytes, is shared)."""
    import httpx

    copy = object.__new__(httpx.Request)
    copy.__dict__.update(request.__dict__)
    copy.url = url
    copy.headers = httpx.Headers(request.headers)
    copy.extensions = dict(request.extensions)
    return copy


@functools.lru_cache(maxsize=8192)
def _target(url: str) -> tuple[httpx.URL, str]:
    """An outlet's URL parsed once, not on every send (httpx's parser is a fifth of building a request), and
    its Host header as httpx's ``Request`` makes it: the URL's netloc, IDNA-encoded, default port left out."""
    import httpx

    parsed = httpx.URL(url)
    return parsed, parsed.netloc.decode("ascii")


def claim_review(notice: Notice, published_at: datetime, change: Change | None = None) -> dict[str, Any]:
    """schema.org ClaimReview JSON-LD, so fact-check aggregators can read the verdict. A correction carries
    CreativeWork's ``correction`` (https://schema.org/correction: a CorrectionComment, its text and date) and
    ``dateModified``; a retraction says so in the same way."""
    review: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "ClaimReview",
        "claimReviewed": notice.rumour,
        "reviewRating": {
            "@type": "Rating",
            "alternateName": notice.verdict.label,
            "name": notice.verdict.english,
        },
        "author": {"@type": "Organization", "name": notice.authority},
        "datePublished": published_at.date().isoformat(),
        "inLanguage": "zh-CN",
        "headline": notice.title,
        "itemReviewed": {
            "@type": "Claim",
            "appearance": [{"@type": "CreativeWork", "url": str(s.url), "name": s.title} for s in notice.sources],
        },
    }
    if notice.sources:
        review["url"] = str(notice.sources[0].url)
    if notice.expires_at:  # schema.org CreativeWork.expires: when the review stops being useful
        review["expires"] = notice.expires_at.isoformat()
    if change is not None:
        word = "更正" if change.kind == "correction" else "撤回"
        review["correction"] = {"@type": "CorrectionComment", "text": f"{word}：{change.note}",
                                "datePublished": change.at.isoformat()}
        review["dateModified"] = change.at.isoformat()
    return review
