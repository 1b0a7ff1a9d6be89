"""Outlet health: the breaker's rules, and the breaker and auto-pause as the store keeps them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot.health import Health, HealthPolicy, after_attempt
from bot.model import Notice
from bot.outlets import Outlet
from bot.store import AttemptRecord, Store

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
POLICY = HealthPolicy(breaker_threshold=3, breaker_cooldown=timedelta(minutes=5), auto_pause_after=timedelta(hours=24))
LEASE = timedelta(seconds=30)
OUTLETS = [Outlet(id=f"o{i}", name=f"站点{i}", tier="district", channel="webhook", url="https://x.example/",
                  secret_env="S") for i in range(2)]


def fail(h: Health, at: datetime) -> Health:
    return after_attempt(h, delivered=False, now=at, policy=POLICY)[0]


def test_a_failure_degrades_an_outlet_and_a_success_makes_it_ok_again() -> None:
    h = fail(Health("o"), T0)
    assert (h.status, h.consecutive_failures, h.failing_since, h.open_until) == ("degraded", 1, T0, None)
    h, events = after_attempt(h, delivered=True, now=T0 + timedelta(seconds=1), policy=POLICY)
    assert (h.status, h.consecutive_failures, h.last_success_at) == ("ok", 0, T0 + timedelta(seconds=1))
    assert events == []  # a blip is not news


def test_the_breaker_opens_after_the_threshold_and_a_good_probe_closes_it_with_a_recovery() -> None:
    h = Health("o")
    for i in range(3):
        h = fail(h, T0 + timedelta(seconds=i))
    assert h.open_until == T0 + timedelta(seconds=2) + POLICY.breaker_cooldown
    h = fail(h, T0 + timedelta(minutes=10))  # a failed probe opens it again
    assert h.open_until == T0 + timedelta(minutes=15) and h.consecutive_failures == 4
    h, events = after_attempt(h, delivered=True, now=T0 + timedelta(minutes=20), policy=POLICY)
    assert (h.status, h.open_until) == ("ok", None)
    assert [e.kind for e in events] == ["recovered"] and "4 failed tries" in events[0].text


def test_an_outlet_failing_for_the_whole_window_is_paused_once() -> None:
    h = fail(Health("o"), T0)
    h, events = after_attempt(h, delivered=False, now=T0 + timedelta(hours=23), policy=POLICY)
    assert h.status == "degraded" and events == []
    h, events = after_attempt(h, delivered=False, now=T0 + timedelta(hours=24), policy=POLICY)
    assert (h.status, h.paused_at) == ("paused", T0 + timedelta(hours=24))
    assert [e.kind for e in events] == ["paused"] and "debunkbot outlets resume o" in events[0].text
    h, events = after_attempt(h, delivered=False, now=T0 + timedelta(hours=25), policy=POLICY)
    assert h.status == "paused" and events == []


def record(store: Store, claim_id: int, outlet: str, attempt: int, outcome: str, at: datetime, **kw: object) -> None:
    store.queue.record([AttemptRecord(claim_id, outlet, attempt, at, 5.0, outcome, **kw)],  # type: ignore[arg-type]
                          now=at, policy=POLICY)


def test_an_open_breaker_holds_an_outlet_and_then_lets_exactly_one_probe_through(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    for n in range(3):
        store.queue.add_notices([(make_notice(ref=f"n{n}", title=f"第{n}条"), OUTLETS)], source="t", now=T0)
    now = T0
    for attempt in range(1, 4):  # three failures in a row on o0 open its breaker
        (claim,) = [c for c in store.queue.claim(10, 1, LEASE, now=now) if c.outlet_id == "o0"]
        record(store, claim.delivery_id, "o0", attempt, "retry", now, next_attempt_at=now)
        now += timedelta(seconds=1)
    assert store.health.all()["o0"].open_until is not None
    # open: nothing for o0, the other outlet goes on
    assert {c.outlet_id for c in store.queue.claim(10, 2, LEASE, now=now)} == {"o1"}
    # cooled down: one probe, though three deliveries are due and the per-outlet limit is 2
    later = now + POLICY.breaker_cooldown
    probes = [c for c in store.queue.claim(10, 2, LEASE, now=later) if c.outlet_id == "o0"]
    assert len(probes) == 1
    assert [c for c in store.queue.claim(10, 2, LEASE, now=later) if c.outlet_id == "o0"] == []
    record(store, probes[0].delivery_id, "o0", probes[0].attempt, "delivered", later)
    assert store.health.all()["o0"].status == "ok"
    assert len([c for c in store.queue.claim(10, 2, LEASE, now=later) if c.outlet_id == "o0"]) == 2
    assert [a["kind"] for a in store.outbox.unsent()] == ["recovered"]


def test_auto_paused_deliveries_are_held_not_dropped_until_resumed(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(), OUTLETS[:1])], source="t", now=T0)
    (claim,) = store.queue.claim(10, 1, LEASE, now=T0)
    record(store, claim.delivery_id, "o0", 1, "retry", T0, next_attempt_at=T0)
    (claim,) = store.queue.claim(10, 1, LEASE, now=T0 + timedelta(hours=25))
    record(store, claim.delivery_id, "o0", 2, "retry", T0 + timedelta(hours=25), next_attempt_at=T0)
    assert store.health.all()["o0"].status == "paused"
    assert store.queue.claim(10, 1, LEASE, now=T0 + timedelta(hours=26)) == []
    (row,) = store.log.deliveries()
    assert row["status"] == "held" and row["reason"].startswith("outlet paused: auto-paused")  # held, not failed
    assert [a["kind"] for a in store.outbox.unsent()] == ["paused"]
    assert store.health.resume("o0", now=T0 + timedelta(hours=26)) == 1
    assert store.health.all()["o0"].status == "ok"
    assert len(store.queue.claim(10, 1, LEASE, now=T0 + timedelta(hours=26))) == 1
    assert store.health.resume("o0") is None  # not paused any more
