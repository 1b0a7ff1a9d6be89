"""What every channel is: something that renders a notice, builds a request and reads the answer.

A channel is one module in channels/ with its templates in templates/<name>/, registered in
channels/__init__.py. Rendering happens once per notice x channel; signing once per outlet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import httpx

if TYPE_CHECKING:
    from bot.model import Notice
    from bot.outlets import Outlet, RateLimit

Result = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class Outcome:
    """How one answer from an outlet counts."""

    result: Result
    error: str | None = None
    retry_after: float | None = None  # seconds the outlet asked us to wait
    pause_outlet: bool = False  # the outlet asked to be disabled (410 Gone)


@dataclass(frozen=True)
class Rendered:
    """A notice rendered for one channel: the text people read and the channel's body."""

    text: str
    body: bytes
    extra: Any = None


class Channel(Protocol):
    name: ClassVar[str]
    rate_limits: ClassVar[tuple[RateLimit, ...]]  # the platform's, per outlet; an outlet may override

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        """Problems with an outlet entry for this channel, as (field, message)."""
        ...

    def render(self, notice: Notice, published_at: datetime) -> Rendered: ...

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request: ...

    def classify(self, status: int, headers: httpx.Headers, body: bytes) -> Outcome: ...


class AlertChannel(Channel, Protocol):
    """A channel that can also carry operator alerts (an entry under ``operators:`` in the matrix).

    ``render_alert`` makes the alert's body; ``build`` signs and addresses it and ``classify`` reads the
    answer exactly as for a notice.
    """

    def render_alert(self, title: str, text: str, now: datetime) -> Rendered: ...


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
