"""The dispatcher against real webhook outlets on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bot.dispatch import Dispatcher, RetryPolicy
from bot.http import Sender, make_sender
from bot.model import Notice
from bot.outlets import Outlet, OutletMatrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import HANG, ChaosOutlets, chaos
from tests.conftest import chaos_matrix, until, whsec


async def fan_out(store: Store, matrix: Any, settings: Settings, *notices: Notice) -> None:
    store.queue.add_notices([(n, matrix.concerned_by(n)) for n in notices], source="test")
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        await dispatcher.run(until_idle=True)
        await dispatcher.close()


async def test_every_outlet_gets_a_verified_post_and_the_log_says_so(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(30)
    await fan_out(store, matrix, settings, make_notice(ref="a"), make_notice(ref="b", title="另一条"))

    assert outlets.refused == []
    assert {o: len(ids) for o, ids in outlets.delivered().items()} == {o.id: 2 for o in matrix.outlets}
    rows = store.log.deliveries()
    assert len(rows) == 60 and {r["status"] for r in rows} == {"delivered"}
    assert all(r["attempts"] == 1 and r["http_status"] == 200 and r["delivered_at"] for r in rows)


async def test_an_outlet_that_fails_twice_is_retried_and_then_delivered(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(3, script={"outlet-0001": [503, 502]})
    await fan_out(store, matrix, settings, make_notice())

    tries = store.log.attempts(outlet_id="outlet-0001")
    assert [(t["outcome"], t["http_status"]) for t in tries] == [("retry", 503), ("retry", 502), ("delivered", 200)]
    assert [t["attempt"] for t in tries] == [1, 2, 3]
    (row,) = store.log.deliveries(outlet_id="outlet-0001")
    assert row["status"] == "delivered" and row["attempts"] == 3
    # every try carried the same webhook-id, so the receiver could dedupe
    assert outlets.tries["outlet-0001"] == 3
    assert {p.message_id for p in outlets.posts if p.outlet == "outlet-0001"} == {row["message_id"]}


async def test_a_410_outlet_fails_at_once_and_is_paused(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(3, script={"outlet-0002": [410, 410, 410]})
    await fan_out(store, matrix, settings, make_notice(ref="first"))

    (row,) = store.log.deliveries(outlet_id="outlet-0002")
    assert row["status"] == "failed" and row["attempts"] == 1 and row["http_status"] == 410
    assert outlets.tries["outlet-0002"] == 1
    assert "outlet-0002" in store.health.paused()

    # a later notice is held for the paused outlet, not sent and not dropped
    await fan_out(store, matrix, settings, make_notice(ref="second", title="第二条"))
    assert outlets.tries["outlet-0002"] == 1
    assert store.log.deliveries(ref="second", outlet_id="outlet-0002")[0]["status"] == "held"  # reason: outlet paused
    assert {r["status"] for r in store.log.deliveries(ref="second") if r["outlet"] != "outlet-0002"} == {"delivered"}


async def test_other_4xx_is_a_permanent_failure_without_retries(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(2, script={"outlet-0000": [400]})
    await fan_out(store, matrix, settings, make_notice())
    (row,) = store.log.deliveries(outlet_id="outlet-0000")
    assert (row["status"], row["attempts"], row["http_status"]) == ("failed", 1, 400)
    assert outlets.tries["outlet-0000"] == 1


async def test_a_delivery_fails_when_the_schedule_is_exhausted(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(2, script={"outlet-0000": [500] * 10})
    await fan_out(store, matrix, settings, make_notice())
    (row,) = store.log.deliveries(outlet_id="outlet-0000")
    # three delays in the schedule: four tries, then failed
    assert (row["status"], row["attempts"]) == ("failed", 4)
    assert "retries exhausted after 4 attempts" in row["error"]
    assert outlets.tries["outlet-0000"] == 4


async def test_a_hanging_outlet_does_not_hold_up_the_others(
    store: Store, tmp_path: Any, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    settings = Settings(database_url=str(store.engine.url), retry_schedule="60", http_timeout=30,
                        concurrency=4, scan_interval=0.05, shutdown_grace=0.1)
    outlets, matrix = await loopback(12, script={"outlet-0000": [HANG], "outlet-0001": [HANG]})
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    stop = asyncio.Event()

    def stop_when_the_rest_are_delivered(records: Any) -> None:
        if store.log.counts().get("delivered", 0) == 10:
            stop.set()

    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client, on_recorded=stop_when_the_rest_are_delivered)
        run = asyncio.create_task(dispatcher.run(stop))
        await asyncio.wait_for(stop.wait(), timeout=20)  # far below the 30 s the hung sends hold their slots
        pending = {r["outlet"] for r in store.log.deliveries(status="pending")}
        await run  # stop is set: the hung sends are abandoned after the grace period
        await dispatcher.close()
    # with concurrency 4, two slots were held by hung outlets the whole time
    assert pending == {"outlet-0000", "outlet-0001"}
    # and their claims were given back, so a restarted bot sends them at once
    assert all(r["status"] == "pending" for r in store.log.deliveries(status="pending"))
    assert store.queue.claim(10, 2, timedelta(seconds=5)) != []


async def test_hung_sends_move_to_the_slow_lane_so_they_cannot_take_every_slot(
    store: Store, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    settings = Settings(database_url=str(store.engine.url), retry_schedule="60", http_timeout=30,
                        concurrency=2, slow_send_after=0.1, scan_interval=0.05, shutdown_grace=0.1)
    outlets, matrix = await loopback(8, script={"outlet-0000": [HANG], "outlet-0001": [HANG]})
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    stop = asyncio.Event()

    def stop_when_the_rest_are_delivered(records: Any) -> None:
        if store.log.counts().get("delivered", 0) == 6:
            stop.set()

    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client, on_recorded=stop_when_the_rest_are_delivered)
        run = asyncio.create_task(dispatcher.run(stop))
        # both slots go to the hung outlets first; without the slow lane nothing else moves for 30 s
        await asyncio.wait_for(stop.wait(), timeout=20)
        await run
        await dispatcher.close()
    assert {r["outlet"] for r in store.log.deliveries(status="pending")} == {"outlet-0000", "outlet-0001"}


async def test_a_notice_stored_by_another_process_is_sent_without_waiting_for_the_poll(
    store: Store, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    settings = Settings(database_url=str(store.engine.url), scan_interval=60, wake_poll_interval=0.01)
    outlets, matrix = await loopback(3)
    stop = asyncio.Event()

    def stop_when_delivered(records: Any) -> None:
        if store.log.counts().get("delivered", 0) == 3:
            stop.set()

    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client, on_recorded=stop_when_delivered)
        run = asyncio.create_task(dispatcher.run(stop))
        await asyncio.sleep(0.1)  # the dispatcher has looked, found nothing, and waits for the 60 s poll
        other = Store.open(str(store.engine.url))  # `debunkbot submit` in another process
        other.queue.add_notices([(make_notice(), matrix.outlets)], source="cli")
        other.close()
        await asyncio.wait_for(stop.wait(), timeout=20)  # far below scan_interval
        await run
        await dispatcher.close()
    assert outlets.refused == [] and len(outlets.delivered()) == 3


async def test_connection_refused_is_retried_and_recorded(
    store: Store, settings: Settings, tmp_path: Any, regions: Any, make_notice: Callable[..., Notice]
) -> None:
    import socket

    import yaml

    from bot.outlets import load_matrix

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"id": "dead", "name": "关停的站点", "tier": "other", "channel": "webhook",
                                                 "url": f"http://127.0.0.1:{port}/hook", "secret_env": "S"}]}))
    matrix = load_matrix(path, regions, environ={"S": "whsec_" + "A" * 32})
    await fan_out(store, matrix, settings, make_notice())
    tries = store.log.attempts()
    assert len(tries) == 4 and {t["outcome"] for t in tries[:3]} == {"retry"} and tries[-1]["outcome"] == "failed"
    assert all(t["http_status"] is None and "Connect" in t["error"] for t in tries)


def test_the_retry_schedule_is_svix_like_with_jitter_and_ends() -> None:
    policy = RetryPolicy(Settings().retry_delays, jitter=0.2)
    assert Settings().retry_delays == (5, 300, 1800, 7200, 18000, 36000, 36000)
    for attempt, base in enumerate(Settings().retry_delays, start=1):
        delay = policy.delay_after(attempt, retry_after=None)
        assert delay is not None and base * 0.8 <= delay <= base * 1.2
    assert policy.delay_after(8, retry_after=None) is None


def test_retry_after_is_honoured_within_bounds() -> None:
    policy = RetryPolicy((5, 300), jitter=0, retry_after_max=600)
    assert policy.delay_after(1, retry_after=120) == 120
    assert policy.delay_after(1, retry_after=1) == 5  # never sooner than the schedule
    assert policy.delay_after(1, retry_after=86400) == 600  # capped


async def test_redirects_are_not_followed_and_count_as_failures(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    _, matrix = await loopback(1)
    calls: list[str] = []

    def redirecting(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://elsewhere.example/"})

    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    async with Sender(httpx.MockTransport(redirecting), settings.http_timeout) as sender:
        dispatcher = Dispatcher(store, matrix, settings, sender)
        await dispatcher.run(until_idle=True)
        await dispatcher.close()
    (row,) = store.log.deliveries()
    assert len(calls) == 1 and row["status"] == "failed" and "302" in row["error"] and "not followed" in row["error"]


async def test_a_render_failure_mid_fan_out_fails_that_outlet_with_the_reason_and_the_run_ends(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(4)
    # A Weibo outlet whose read-more link alone is over Weibo's 140 (a link counts 10 only up to its first
    # character that is not ASCII; the 150 Chinese characters after it count one each): every rendering fails.
    # Built here, not loaded, since the matrix check may refuse such a link at start-up: whatever makes a
    # rendering fail, the dispatcher must record it.
    weibo = Outlet.model_validate({"id": "weibo-bad", "name": "微博", "tier": "city", "channel": "weibo",
                                   "url": "http://127.0.0.1:9/", "secret_env": "WEIBO_TOKEN",
                                   "options": {"read_more_url": "https://example.gov.cn/" + "阅" * 150,
                                               "rip": "203.0.113.10"}})
    matrix = OutletMatrix((*matrix.outlets[:2], weibo, *matrix.outlets[2:]),
                          {**matrix._secrets, "weibo-bad": "token"})
    await asyncio.wait_for(fan_out(store, matrix, settings, make_notice()), 120)  # returns: nothing left pending

    (bad,) = store.log.attempts(outlet_id="weibo-bad")
    assert bad["outcome"] == "failed" and bad["http_status"] is None
    assert "could not render" in bad["error"] and "DoesNotFit" in bad["error"]
    assert store.log.deliveries(outlet_id="weibo-bad")[0]["status"] == "failed"  # not retried on the schedule
    assert {o: len(ids) for o, ids in outlets.delivered().items()} == {f"outlet-{i:04d}": 1 for i in range(4)}


async def test_claims_in_hand_keep_their_notices_when_more_notices_are_in_flight_than_the_cache_holds(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    # 1,200 notices to one outlet at concurrency 600: one claim takes 1,200 deliveries of 1,200 notices,
    # more than the notice cache keeps (1,000)
    outlets, matrix = await loopback(1)
    # a long send deadline: on a loaded machine 1,200 sends at once may take seconds, and a timed-out send that
    # arrived would be sent again, which is not what this test is about
    settings = settings.model_copy(update={"concurrency": 600, "per_outlet_concurrency": 1200, "http_timeout": 60})
    notices = [make_notice(ref=f"n{i}", title=f"通报{i}") for i in range(1200)]
    await asyncio.wait_for(fan_out(store, matrix, settings, *notices), 300)
    assert store.log.counts() == {"delivered": 1200}
    # a claim whose notice was forgotten failed with an internal error (KeyError) and was sent again
    assert not [t["error"] for t in store.log.attempts() if "internal error" in (t["error"] or "")]
    assert len(outlets.delivered()["outlet-0000"]) == 1200


async def test_a_claim_that_waited_for_a_slot_has_its_lease_renewed_before_it_is_sent(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    # One slot, the documented minimum lease (timeout + 2 s): "a" is claimed ahead while "h" hangs for the
    # whole timeout, so when "a" leaves the queue its lease has too little left for a send
    secrets = {"h": whsec(), "a": whsec()}
    async with ChaosOutlets(secrets, {"h": [chaos.HANG]}, latency=0.3) as outlets:
        matrix = chaos_matrix(tmp_path, regions, {o: outlets.url(o) for o in secrets}, secrets)
        settings = Settings(database_url=str(store.engine.url), http_timeout=1.5, lease_seconds=3.5, concurrency=1,
                            slow_send_after=100, retry_schedule="0.05", retry_jitter=0, scan_interval=0.05)
        leases: list[Any] = []
        looking = True

        def watch() -> None:  # every lease "a" has had, as another process would see it
            d = sa.table("deliveries", sa.column("outlet_id"), sa.column("lease_expires_at"))
            while looking:
                with store.engine.connect() as conn:
                    lease = conn.execute(sa.select(d.c.lease_expires_at).where(d.c.outlet_id == "a")).scalar()
                if lease is not None and lease not in leases:
                    leases.append(lease)
                time.sleep(0.01)

        watcher = asyncio.create_task(asyncio.to_thread(watch))
        try:
            await fan_out(store, matrix, settings, make_notice())
        finally:
            looking = False
            await watcher
    assert store.log.counts() == {"delivered": 2} and len(outlets.seen("a")) == 1
    first, renewed = (datetime.fromisoformat(str(lease)) for lease in leases)  # claimed, renewed when sent
    assert (renewed - first).total_seconds() >= 1.0


# -- urgent lanes ---------------------------------------------------------------------------------------

async def test_an_urgent_notice_overtakes_a_backlog_of_10000_normal_deliveries_within_one_claim_cycle(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(20, delay=0.005)
    for batch in range(5):
        store.queue.add_notices([(make_notice(ref=f"old{batch}-{n}", title=f"旧{n}"), matrix.outlets)
                                 for n in range(100)], source="test")
    assert store.log.counts() == {"pending": 10_000}
    stop = asyncio.Event()
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        run = asyncio.create_task(dispatcher.run(stop))
        await until(lambda: len(outlets.posts) >= 200, what="the backlog being worked through")
        await asyncio.to_thread(store.queue.add_notices, [(make_notice(ref="urgent", title="紧急", urgency="urgent"),
                                                           matrix.outlets)], "test")
        mark = len(outlets.posts)  # the urgent notice is stored: from here the claims can see it
        dispatcher.wake()
        await until(lambda: len({p.outlet for p in outlets.posts[mark:] if p.payload["data"]["ref"] == "urgent"}) == 20,
                    what="the urgent notice at every outlet")
        stop.set()
        await run
        await dispatcher.close()

    assert store.log.counts("urgent") == {"delivered": 20}
    assert store.log.counts()["pending"] > 5_000  # the backlog was still there: the urgent notice overtook it
    cap = settings.per_outlet_concurrency
    for outlet in matrix.outlets:
        after = [p.payload["data"]["ref"] for p in outlets.posts[mark:] if p.outlet == outlet.id]
        # before the urgent post: only what the outlet had in flight or claimed when the notice was stored, and
        # what a claim running at that moment took (one claim cycle), never the backlog waiting longer
        assert after.index("urgent") <= 2 * cap, (outlet.id, after[:10])


async def test_urgent_deliveries_retry_on_the_urgent_schedule(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(1, script={"outlet-0000": [503, 503]})
    settings = settings.model_copy(update={"retry_schedule": "600", "urgent_retry_schedule": "0.05,0.05"})
    store.queue.add_notices([(make_notice(ref="normal"), matrix.outlets)], source="test")
    store.queue.add_notices([(make_notice(ref="urgent", title="紧急", urgency="urgent"), matrix.outlets)],
                            source="test")
    stop = asyncio.Event()
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        run = asyncio.create_task(dispatcher.run(stop))
        await until(lambda: store.log.counts("urgent") == {"delivered": 1}, 30, what="the urgent notice delivered")
        stop.set()
        await run
        await dispatcher.close()

    urgent = store.log.attempts(ref="urgent")
    assert [t["outcome"] for t in urgent] == ["retry", "delivered"]  # claimed first: it took the first 503
    (normal_try,) = store.log.attempts(ref="normal")
    (normal,) = store.log.deliveries(ref="normal")
    assert normal_try["outcome"] == "retry" and normal["status"] == "pending"
    assert normal["next_attempt_at"] - normal_try["started_at"] >= timedelta(seconds=599)  # the normal schedule
    assert urgent[1]["started_at"] - urgent[0]["started_at"] < timedelta(seconds=30)


# -- expiry ---------------------------------------------------------------------------------------------

async def test_an_expired_notices_retries_never_reach_the_outlet(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(2, script={"outlet-0001": [503] * 1000})  # outlet-0001 is down
    settings = settings.model_copy(update={"retry_schedule": ",".join(["0.1"] * 1000)})
    expires = datetime.now(UTC) + timedelta(seconds=2)
    store.queue.add_notices([(make_notice(expires_at=expires.isoformat()), matrix.outlets)], source="test")

    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        await asyncio.wait_for(dispatcher.run(until_idle=True), timeout=60)  # idle: nothing left to retry
        await dispatcher.close()

    up, down = store.log.deliveries()
    assert (up["status"], down["status"], down["reason"]) == ("delivered", "cancelled", "expired")
    tries = store.log.attempts(outlet_id="outlet-0001")
    assert tries and all(t["outcome"] == "retry" and t["started_at"] < expires for t in tries)
    assert outlets.tries["outlet-0001"] == len(tries)  # every request it received is a try begun before expiry
    assert down["attempts"] == len(tries) and down["error"] == "HTTP 503"
    (post,) = outlets.posts  # the receiver is told when the notice expires, in the payload and its ClaimReview
    data = post.payload["data"]
    assert datetime.fromisoformat(data["expires_at"]) == expires
    assert datetime.fromisoformat(data["claim_review"]["expires"]) == expires


async def test_a_claimed_delivery_whose_notice_expires_before_its_send_starts_is_cancelled_not_sent(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice]
) -> None:
    # one send at a time to a slow outlet: the second claim waits its turn, and its notice expires meanwhile
    outlets, matrix = await loopback(1, delay=3.0)
    settings = settings.model_copy(update={"concurrency": 1, "per_outlet_concurrency": 2, "slow_send_after": 60,
                                           "http_timeout": 10})
    store.queue.add_notices([(make_notice(ref="lasting"), matrix.outlets)], source="test")
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    store.queue.add_notices([(make_notice(ref="brief", title="短", expires_at=expires.isoformat()),
                              matrix.outlets)], source="test")

    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        await asyncio.wait_for(dispatcher.run(until_idle=True), timeout=60)
        await dispatcher.close()

    assert [p.payload["data"]["ref"] for p in outlets.posts] == ["lasting"]
    assert outlets.tries["outlet-0000"] == 1
    (brief,) = store.log.deliveries(ref="brief")
    assert (brief["status"], brief["reason"], brief["attempts"]) == ("cancelled", "expired", 0)
    assert store.log.attempts(ref="brief") == []
