"""bot.desk: what the CLI prints and the API answers, computed once, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from bot import desk
from bot.model import Notice
from bot.outlets import Outlet, OutletMatrix
from bot.store import Actor, AttemptRecord, Store

OPERATOR = Actor("李四", "operator", "203.0.113.9")


def matrix() -> OutletMatrix:
    return OutletMatrix(tuple(Outlet(id=oid, name=oid, tier=tier, channel="webhook", url="https://x.example/h")
                              for oid, tier in (("city-a", "city"), ("dist-b", "district"), ("dist-c", "district"))))


def fail(store: Store, outlet_id: str) -> None:
    claim = next(c for c in store.queue.claim(10, per_outlet=5, lease=timedelta(minutes=1)) if c.outlet_id == outlet_id)
    store.queue.record([AttemptRecord(claim.delivery_id, outlet_id, claim.attempt, datetime.now(UTC), 5.0, "failed",
                                      http_status=400, error="HTTP 400")])
    store.queue.release_claims()


def test_a_notices_status_counts_each_tier_and_lists_who_waits_and_why(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    outlets = matrix()
    store.queue.add_notices([(make_notice(), outlets.outlets)], source="t")
    fail(store, "dist-b")
    store.health.pause("dist-c", "对方维护")

    status = desk.notice_status(store, "cq-test-001")
    assert status is not None and status.deliveries == 3
    assert [(t.tier, t.outlets, t.pending, t.held, t.failed) for t in status.tiers] == [
        ("city", 1, 1, 0, 0), ("district", 2, 0, 1, 1)]
    assert {r["outlet"]: r["reason"] for r in status.missing} == {
        "city-a": None, "dist-b": None, "dist-c": "outlet paused: 对方维护"}
    assert desk.notice_status(store, "nothing") is None


def test_retry_says_which_outlets_still_hold_what_it_requeued_and_a_dry_run_changes_nothing(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    outlets = matrix()
    store.queue.add_notices([(make_notice(), outlets.outlets)], source="t")
    for outlet_id in ("dist-b", "dist-c"):
        fail(store, outlet_id)
    store.health.pause("dist-c", "对方维护")

    dry = desk.retry(store, dry_run=True, actor=OPERATOR)
    assert [r["outlet"] for r in dry.rows] == ["dist-b", "dist-c"] and dry.dry_run
    assert store.log.counts()["failed"] == 2 and store.audit.page().rows == []

    done = desk.retry(store, actor=OPERATOR)
    assert set(done.held) == {"dist-c"} and done.held["dist-c"].paused and done.held["dist-c"].deliveries == 1
    assert "failed" not in store.log.counts()
    (row,) = store.audit.page().rows
    assert (row["action"], row["actor"], row["detail"]["outlets"]) == ("deliveries.retry", "李四", ["dist-b", "dist-c"])


def test_outlet_rows_list_the_matrix_then_outlets_only_the_store_still_knows(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    outlets = matrix()
    gone = Outlet(id="removed-d", name="d", tier="other", channel="webhook", url="https://x.example/h")
    store.queue.add_notices([(make_notice(), [*outlets.outlets, gone])], source="t")
    rows = desk.outlet_rows(store, outlets)
    assert [r["outlet"] for r in rows] == ["city-a", "dist-b", "dist-c", "removed-d"]
    assert rows[-1]["tier"] == "other" and all(r["pending"] == 1 and r["status"] == "ok" for r in rows)
    assert not any("url" in key for r in rows for key in r)
