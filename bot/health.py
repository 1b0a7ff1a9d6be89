"""Outlet health: a circuit breaker per outlet, and auto-pause after a long run of failures.

Pure rules over a row of the store's ``outlet_health`` table; the store applies them in the
transaction that records the attempts, so every worker and every restart sees the same state.

- Every failed try counts; a delivered try resets the count.
- After ``breaker_threshold`` failures in a row the breaker opens: no sends to the outlet for
  ``breaker_cooldown``, then one probe. A failed probe opens it again, a delivered one closes it.
- An outlet that has done nothing but fail for ``auto_pause_after`` is paused (as is one that
  answered 410): its deliveries are held, never dropped, until ``debunkbot outlets resume ID``.

    >>> policy = HealthPolicy(breaker_threshold=2)
    >>> h, _ = after_attempt(Health("o"), delivered=False, now=T0, policy=policy)   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.settings import Settings


@dataclass(frozen=True)
class HealthPolicy:
    breaker_threshold: int = 5
    breaker_cooldown: timedelta = timedelta(minutes=5)
    auto_pause_after: timedelta = timedelta(hours=24)

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthPolicy:
        return cls(settings.breaker_threshold, timedelta(seconds=settings.breaker_cooldown),
                   timedelta(seconds=settings.auto_pause_after))


@dataclass(frozen=True)
class Health:
    """One outlet's health, as stored."""

    outlet_id: str
    status: str = "ok"  # ok | degraded | paused
    consecutive_failures: int = 0
    failing_since: datetime | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    open_until: datetime | None = None
    paused_at: datetime | None = None
    paused_reason: str | None = None


@dataclass(frozen=True)
class HealthEvent:
    """Something an operator hears about: ``paused`` or ``recovered``."""

    kind: str
    outlet_id: str
    text: str
    at: datetime


def after_attempt(
    health: Health, delivered: bool, now: datetime, policy: HealthPolicy, pause_reason: str | None = None
) -> tuple[Health, list[HealthEvent]]:
    """The outlet's health after one try, and the events it raised."""
    if delivered:
        recovered = health.open_until is not None and health.paused_at is None
        healed = replace(health, consecutive_failures=0, failing_since=None, last_success_at=now, open_until=None,
                         status="paused" if health.paused_at else "ok")
        events = [HealthEvent("recovered", health.outlet_id,
                              f"outlet {health.outlet_id} recovered: delivered again after "
                              f"{health.consecutive_failures} failed tries in a row", now)] if recovered else []
        return healed, events
    failures = health.consecutive_failures + 1
    since = health.failing_since or now
    failed = replace(health, consecutive_failures=failures, failing_since=since, last_failure_at=now,
                     status="paused" if health.paused_at else "degraded")
    if health.paused_at:
        return failed, []
    if pause_reason is None and now - since >= policy.auto_pause_after:
        pause_reason = (f"auto-paused: failing since {since.isoformat(timespec='seconds')} "
                        f"({failures} failed tries in a row, window {_span(policy.auto_pause_after)})")
    if pause_reason is not None:
        paused = replace(failed, status="paused", paused_at=now, paused_reason=pause_reason, open_until=None)
        return paused, [HealthEvent("paused", health.outlet_id, f"outlet {health.outlet_id} paused, its deliveries "
                                    f"are held: {pause_reason}. Resume with `debunkbot outlets resume "
                                    f"{health.outlet_id}`", now)]
    if failures >= policy.breaker_threshold:
        failed = replace(failed, open_until=now + policy.breaker_cooldown)
    return failed, []


def resumed(health: Health) -> Health:
    """An operator resumed the outlet: a clean slate, its held deliveries go out at once."""
    return Health(health.outlet_id, last_success_at=health.last_success_at, last_failure_at=health.last_failure_at)


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"
