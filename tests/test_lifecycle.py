"""A notice's life: corrections reach every outlet that had the original, retractions, backfill, history."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import OutletMatrix
from bot.settings import Settings
from bot.store import AttemptRecord, Store, deliveries
from bot.store.lifecycle import settle, webhook_id
from bot.store.queue import RefConflict
from channels.base import RateLimit
from tests.conftest import chaos_matrix, until, whsec


@pytest.fixture
def loopback_free_matrix(tmp_path: Any, regions: Any) -> OutletMatrix:
    """Two webhook outlets for store-level tests (nothing is sent to them)."""
    return chaos_matrix(tmp_path, regions, {"a": "http://127.0.0.1:9/a", "b": "http://127.0.0.1:9/b"},
                        {"a": whsec(), "b": whsec()})


def correction(make_notice: Callable[..., Notice], **changes: Any) -> Notice:
    return make_notice(correct=True, correction_note="水位数据有误，已按水文站最新数据更正。",
                       truth="经核实，长江重庆段水位平稳，较昨日上涨0.3米。", **changes)


async def dispatch_until(store: Store, matrix: OutletMatrix, settings: Settings, done: Callable[[], bool],
                         timeout: float = 15.0) -> None:
    """Run a dispatcher until ``done()`` holds (polled with a deadline), then stop it."""
    stop = asyncio.Event()
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        task = asyncio.create_task(dispatcher.run(stop))
        await until(lambda: done() or task.done(), timeout, what="the dispatcher to get there")
        assert done(), task
        stop.set()
        await task
        await dispatcher.close()


def due_now(store: Store, outlet_id: str) -> None:
    """The retry scheduled for this outlet comes due (the clock moves on)."""
    with store.db.tx() as conn:
        conn.execute(deliveries.update().where(deliveries.c.outlet_id == outlet_id, deliveries.c.status == "pending")
                     .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))


async def test_a_correction_after_partial_delivery_corrects_those_that_had_it_and_sends_the_rest_only_the_latest(
    store: Store, tmp_path: Any, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    settings = Settings(database_url=str(store.engine.url), retry_schedule="60", retry_jitter=0, http_timeout=2,
                        scan_interval=0.05, outlets=tmp_path / "outlets.yaml")
    outlets, matrix = await loopback(4, script={"outlet-0003": [503]})
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    store.health.pause("outlet-0002", "on hold for the test")  # pending
    await dispatch_until(store, matrix, settings, lambda: len(outlets.posts) == 2 and outlets.tries["outlet-0003"] == 1)
    first = {p.outlet: p for p in outlets.posts}
    assert set(first) == {"outlet-0000", "outlet-0001"}  # on v1; outlet-0003 waits for its retry

    (added,) = store.queue.add_notices([(correction(make_notice), matrix.outlets)], source="test")
    assert added.version == 2
    store.health.resume("outlet-0002")
    due_now(store, "outlet-0003")
    await dispatch_until(store, matrix, settings, lambda: len(outlets.posts) == 6)

    by_outlet: dict[str, list[Any]] = {}
    for post in outlets.posts:
        by_outlet.setdefault(post.outlet, []).append(post)
    for had_v1 in ("outlet-0000", "outlet-0001"):
        v1, v2 = by_outlet[had_v1]
        assert v1.payload["type"] == "notice.published" and v2.payload["type"] == "notice.corrected"
        assert v2.message_id == webhook_id(v1.message_id, 2, "correction") != v1.message_id
        data = v2.payload["data"]
        assert data["version"] == 2 and data["previous_webhook_id"] == v1.message_id
        assert data["changed"] == ["truth"] and data["truth"].endswith("上涨0.3米。")
        assert data["claim_review"]["correction"]["@type"] == "CorrectionComment"
        assert "水位数据有误" in data["claim_review"]["correction"]["text"]
        assert data["text"].startswith("【更正】") and "事实已更正" in data["text"]
    for never_had_it in ("outlet-0002", "outlet-0003"):
        (only,) = by_outlet[never_had_it]
        assert only.payload["type"] == "notice.published" and only.payload["data"]["truth"].endswith("上涨0.3米。")
        assert only.payload["data"]["text"].startswith("【辟谣】")
    rows = {r["outlet"]: r for r in store.log.deliveries()}
    assert {r["status"] for r in rows.values()} == {"delivered"}
    history = store.lifecycle.history("cq-test-001")
    assert history is not None and [v["version"] for v in history["versions"]] == [1, 2]
    assert history["versions"][1]["changes"][0]["field"] == "truth"
    assert {o["received_version"] for o in history["outlets"]} == {2}


def test_a_known_ref_with_other_content_and_no_correct_flag_is_still_a_conflict(
    store: Store, make_notice: Callable[..., Notice]
) -> None:
    store.queue.add_notices([(make_notice(), [])], source="test")
    with pytest.raises(RefConflict):
        store.queue.add_notices([(make_notice(truth="别的说法。"), [])], source="test")
    with pytest.raises(ValueError, match="correction_note"):
        make_notice(correct=True, truth="别的说法。")


def test_a_send_of_v1_in_flight_when_v2_arrives_is_followed_by_the_correction_and_never_by_v1(
    store: Store, make_notice: Callable[..., Notice], loopback_free_matrix: OutletMatrix
) -> None:
    matrix = loopback_free_matrix
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    claims = store.queue.claim(10, 2, timedelta(seconds=60))
    assert {c.version for c in claims} == {1}
    store.queue.add_notices([(correction(make_notice), matrix.outlets)], source="test")
    now = datetime.now(UTC)
    delivered, retried = claims
    store.queue.record([
        AttemptRecord(delivered.delivery_id, delivered.outlet_id, 1, now, 1.0, "delivered", version=1),
        AttemptRecord(retried.delivery_id, retried.outlet_id, 1, now, 1.0, "retry", next_attempt_at=now, version=1),
    ])
    again = {c.outlet_id: c for c in store.queue.claim(10, 2, timedelta(seconds=60))}
    assert (again[delivered.outlet_id].version, again[delivered.outlet_id].carries) == (2, "correction")
    assert again[delivered.outlet_id].sent_version == 1
    assert (again[retried.outlet_id].version, again[retried.outlet_id].carries) == (2, "notice")


def test_settling_a_try_never_moves_an_outlet_back_to_an_older_version() -> None:
    assert settle("delivered", 2, "correction", 2, 1, False).sent_version == 2
    assert settle("delivered", 1, "notice", 3, 2, False).sent_version == 2  # a late v1 does not undo v2
    assert settle("pending", 1, "notice", 1, None, True).status == "cancelled"
    # a failed correction of v2 is followed by the correction to v3; a v1 the outlet never got stays failed
    assert settle("failed", 2, "correction", 3, 1, False).status == "pending"
    assert settle("failed", 1, "notice", 2, None, False).status == "failed"
    assert settle("delivered", 1, "notice", 1, None, True).carries == "retraction"


async def test_a_retraction_while_retries_are_scheduled_cancels_them_and_takes_the_notice_back_where_it_went(
    store: Store, tmp_path: Any, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    settings = Settings(database_url=str(store.engine.url), retry_schedule="60", retry_jitter=0, http_timeout=2,
                        scan_interval=0.05, outlets=tmp_path / "outlets.yaml")
    outlets, matrix = await loopback(3, script={"outlet-0001": [503]})
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    store.health.pause("outlet-0002", "on hold for the test")
    await dispatch_until(store, matrix, settings, lambda: len(outlets.posts) == 1 and outlets.tries["outlet-0001"] == 1)

    assert store.lifecycle.retract("cq-test-001", "通报所涉事件经复核存在出入", None) == {
        "cancelled": 2, "retractions": 1}
    assert store.lifecycle.retract("cq-test-001", "again", None) == {"cancelled": 0, "retractions": 0}
    store.health.resume("outlet-0002")
    await dispatch_until(store, matrix, settings, lambda: len(outlets.posts) == 2)
    await asyncio.sleep(0.2)  # nothing more may arrive

    first, retraction = outlets.posts
    assert first.outlet == retraction.outlet == "outlet-0000" and len(outlets.posts) == 2
    assert retraction.payload["type"] == "notice.retracted"
    assert retraction.message_id == webhook_id(first.message_id, 1, "retraction")
    assert retraction.payload["data"]["retraction_reason"] == "通报所涉事件经复核存在出入"
    assert retraction.payload["data"]["text"].startswith("【撤回】")
    rows = {r["outlet"]: r for r in store.log.deliveries()}
    assert rows["outlet-0000"]["status"] == "delivered"
    assert {rows[o]["status"] for o in ("outlet-0001", "outlet-0002")} == {"cancelled"}
    history = store.lifecycle.history("cq-test-001")
    assert history is not None and history["retraction"]["reason"] == "通报所涉事件经复核存在出入"


def test_backfill_sends_the_live_notices_oldest_first_within_a_20_a_minute_rate_limit(
    store: Store, make_notice: Callable[..., Notice], loopback_free_matrix: OutletMatrix
) -> None:
    outlet = loopback_free_matrix.outlets[0]
    start = datetime.now(UTC) - timedelta(days=2)
    for i in range(25):
        store.queue.add_notices([(make_notice(ref=f"n-{i:02d}", title=f"第{i}条"), [])], source="test",
                                now=start + timedelta(minutes=i))
    store.queue.add_notices([(make_notice(ref="gone", title="撤回的"), [])], source="test", now=start)
    store.lifecycle.retract("gone", "撤回", None)
    added = store.lifecycle.backfill(outlet, datetime.now(UTC) - timedelta(days=7), lambda n, o: True, None)
    assert added == [f"n-{i:02d}" for i in range(25)]

    limits = {outlet.id: (RateLimit(20, 60),)}
    now = datetime.now(UTC)
    sent: list[str] = []
    for step in range(4):  # each claim takes what the rate window leaves; the 21st waits a minute
        at = now + timedelta(seconds=step)
        claims = store.queue.claim(100, 100, timedelta(seconds=30), now=at, rate_limits=limits)
        store.queue.record([AttemptRecord(c.delivery_id, c.outlet_id, 1, at, 1.0, "delivered", trigger=c.trigger)
                            for c in claims], now=at)
        sent += [c.notice_id for c in claims]  # type: ignore[misc]
        assert all(c.trigger == "backfill" for c in claims)
    assert len(sent) == 20
    assert store.queue.claim(100, 100, timedelta(seconds=30), now=now + timedelta(seconds=59),
                             rate_limits=limits) == []
    later = store.queue.claim(100, 100, timedelta(seconds=30), now=now + timedelta(seconds=61), rate_limits=limits)
    assert len(later) == 5
    with store.engine.connect() as conn:
        refs = dict(conn.execute(sa.text("SELECT id, ref FROM notices")).all())
    assert [refs[i] for i in sent + [c.notice_id for c in later]] == [f"n-{i:02d}" for i in range(25)]
    assert {t["trigger"] for t in store.log.attempts(outlet_id=outlet.id)} == {"backfill"}


def test_a_correction_of_an_embargoed_notice_moves_its_embargo_and_an_urgent_one_takes_the_urgent_lane(
    store: Store, make_notice: Callable[..., Notice], loopback_free_matrix: OutletMatrix
) -> None:
    later = datetime.now(UTC) + timedelta(hours=2)
    store.queue.add_notices([(make_notice(publish_at=later.isoformat()), loopback_free_matrix.outlets)], source="t")
    assert store.queue.release_due() == 0
    store.queue.add_notices([(correction(make_notice, urgency="urgent"), loopback_free_matrix.outlets)], source="t")
    assert store.queue.release_due() == 2  # the correction has no embargo: published at once
    claims = store.queue.claim(10, 2, timedelta(seconds=30))
    assert {(c.version, c.carries, c.urgent) for c in claims} == {(2, "notice", True)}
