"""What every channel is: something that renders a notice for an outlet, and then one of three kinds:

- ``Pushing``: builds one signed request per delivery and reads the answer (webhook, DingTalk, WeCom, ...);
- ``Exchanging``: makes several requests per delivery itself, through the one ``Sender`` (wechat_mp: token,
  draft, publish), and reads the last answer;
- ``Pulling``: outlets fetch (feeds); the dispatcher never sends to them, the web server serves them (bot/web/feeds.py).

A channel that can also carry operator alerts is an ``AlertChannel`` (a Pushing one with ``render_alert``).
A channel is one module in channels/ with its templates in templates/<name>/, registered in
channels/__init__.py. Rendering happens once per notice x channel; signing once per outlet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import httpx

    from bot.http import Answer, Sender
    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt

Result = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` sends to one outlet in any ``seconds``-long window.

    >>> RateLimit.parse("20/min")
    RateLimit(count=20, seconds=60.0)
    """

    count: int
    seconds: float

    UNITS: ClassVar[dict[str, float]] = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        match = re.fullmatch(r"(\d+)/(\d+(?:\.\d+)?)?(s|sec|min|h)", text.replace(" ", ""))
        if not match or int(match[1]) < 1:
            raise ValueError(f"rate limit {text!r} should look like '20/min', '5/s' or '100/10min'")
        return cls(int(match[1]), float(match[2] or 1) * cls.UNITS[match[3]])


@dataclass(frozen=True)
class Outcome:
    """How one answer from an outlet counts."""

    result: Result
    error: str | None = None
    code: int | None = None  # the platform's answer code (errcode, error_code, code), when it sent one
    retry_after: float | None = None  # seconds the outlet asked us to wait
    pause_outlet: bool = False  # the outlet asked to be disabled (410 Gone)


@dataclass(frozen=True)
class Rendered:
    """A notice rendered for one channel: the text people read and the channel's body."""

    text: str
    body: bytes
    extra: Any = None
    cut: bool = False  # the editor's text was shortened to fit the platform's limit (channels.fit)


NO_OPTIONS: Mapping[str, Any] = {}


class Channel(Protocol):
    """What every channel has; a channel is also one of Pushing, Exchanging or Pulling."""

    name: ClassVar[str]
    rate_limits: ClassVar[tuple[RateLimit, ...]]  # the platform's, per outlet; an outlet may override

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        """Problems with an outlet entry for this channel, as (field, message)."""
        ...

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        """Render once per notice version x channel x outlet options (e.g. ``msgtype``); cached by the dispatcher.
        ``change``: render the correction (更正) or the retraction (撤回) instead of an ordinary post.
        ``receipt``: the delivery's receipt link (确认已转载) to show, the way the platform shows links best, and
        for a reminder (提醒) its deadline; public channels (weibo, wechat_mp) ignore it (bot.receipts)."""
        ...


@runtime_checkable
class Pushing(Channel, Protocol):
    """One request per delivery: the dispatcher sends what ``build`` makes and ``classify`` reads the answer."""

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request: ...

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome: ...


@runtime_checkable
class Exchanging(Channel, Protocol):
    """Several requests per delivery (wechat_mp: token, draft, publish), each through ``sender``.

    The dispatcher calls ``deliver`` under one total deadline and classifies the answer it returns.
    """

    async def deliver(
        self, sender: Sender, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime,
        state: Mapping[str, Any],
    ) -> Answer:
        """``state`` is what the ``Answer.state`` of this delivery's earlier tries kept (empty at first)."""
        ...

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome: ...


@runtime_checkable
class Pulling(Channel, Protocol):
    """Outlets that fetch (feeds): never sent to; bot/web/feeds.py lists ``feed_item`` for each of their notices."""

    def feed_item(self, notice: Notice, published_at: datetime, options: Mapping[str, Any],
                  change: Change | None = None, receipt: Receipt | None = None) -> dict[str, Any]: ...


@runtime_checkable
class AlertChannel(Pushing, Protocol):
    """A pushing channel that can also carry operator alerts (an entry under ``operators:`` in the matrix).

    ``render_alert`` makes the alert's body; ``build`` signs and addresses it and ``classify`` reads the
    answer exactly as for a notice.
    """

    def render_alert(self, title: str, text: str, now: datetime) -> Rendered: ...


AnyChannel = Pushing | Exchanging | Pulling


RETRYABLE = frozenset({408, 425, 429})


def classify_http(status: int, headers: httpx.Headers) -> Outcome:
    """The HTTP reading shared by every channel (Standard Webhooks' rules).

    2xx delivered; 408, 425, 429 and 5xx retry (honouring Retry-After); 3xx is a failure, never
    followed; 410 fails and pauses the outlet; any other 4xx fails.
    """
    if 200 <= status < 300:
        return Outcome("delivered")
    if status in RETRYABLE or status >= 500:
        return Outcome("retry", f"HTTP {status}", retry_after=_retry_after(headers.get("retry-after")))
    if 300 <= status < 400:
        return Outcome("failed", f"HTTP {status} redirect to {headers.get('location', '?')!s:.200} (not followed)")
    if status == 410:
        return Outcome("failed", "HTTP 410 Gone: the outlet asked to be disabled; outlet paused", pause_outlet=True)
    return Outcome("failed", f"HTTP {status}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC

    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def classify_json(
    status: int, headers: httpx.Headers, body: bytes, *, code_keys: tuple[str, ...] = ("errcode",),
    retry: Mapping[int, str] = NO_OPTIONS, missing_is_ok: bool = False,
) -> Outcome:
    """The platforms' reading: HTTP first, then the JSON answer's code, since most answer errors in a 200.

    A code in ``retry`` (rate limits: DingTalk 130101, Feishu 11232, WeCom 45009) is retried, never
    dropped, whatever the HTTP status; any other non-zero code fails. A 2xx without a readable code
    is retried (a proxy's page is not the platform's answer) unless ``missing_is_ok``.

    >>> classify_json(200, httpx.Headers(), b'{"errcode":130101,"errmsg":"send too fast"}', retry={130101: "x"}).result
    'retry'
    """
    http = classify_http(status, headers)
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        answer = None
    code: Any = None
    message = ""
    if isinstance(answer, dict):
        code = next((answer[k] for k in code_keys if k in answer), None)
        message = str(answer.get("errmsg") or answer.get("msg") or answer.get("error") or answer.get("StatusMessage") or "")
    if isinstance(code, str) and code.lstrip("-").isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    said = f"{code_keys[0]} {code}: {message}"[:300] if code not in (None, 0) else ""
    if code is not None and code in retry:
        return Outcome("retry", f"{said} ({retry[code]})", code=code, retry_after=http.retry_after)
    if http.result != "delivered":
        return Outcome(http.result, f"{http.error}; {said}" if said else http.error, code=code,
                       retry_after=http.retry_after, pause_outlet=http.pause_outlet)
    if code == 0 or (code is None and missing_is_ok):
        return Outcome("delivered", code=code)
    if code is None:
        return Outcome("retry", f"HTTP {status} without the platform's JSON answer")
    return Outcome("failed", said, code=code)


def token_and_key(secret: str | None) -> tuple[str, str | None]:
    """A robot's credentials from its one environment variable: ``TOKEN`` or ``TOKEN:SIGNING_SECRET``.

    The token (DingTalk's access_token, Feishu's hook token) and the signing secret both stay out of
    the outlet matrix; the dispatcher redacts both from the delivery log.

    >>> token_and_key("abc123:SECxyz")
    ('abc123', 'SECxyz')
    """
    token, _, key = (secret or "").partition(":")
    return token, key or None
