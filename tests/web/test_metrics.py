"""GET /metrics: real deliveries to real loopback outlets, scraped through the ASGI transport and read back with
prometheus_client's own parser; every figure is checked against the delivery log."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import STORE_FAULTS, Store, make_engine
from bot.store.metrics import BUCKETS
from bot.web import Site, create_app
from tests.conftest import until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(store: Store, matrix: OutletMatrix, regions: RegionTable, settings: Settings) -> Samples:
    """Every sample of one scrape: (name, sorted labels) -> value, as Prometheus would read it."""
    app = create_app(Site(settings, store, regions, matrix))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bot") as client:
        answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in samples.items() if n == name}


async def dispatch(store: Store, matrix: OutletMatrix, settings: Settings, sent: list[Any] | None = None) -> None:
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client, on_recorded=sent.extend if sent is not None else None)
        await dispatcher.run(until_idle=True)
        await dispatcher.close()


def delivery_figures(store: Store) -> dict[tuple[tuple[str, str], ...], float]:
    """What the delivery log says, in the labels of ``debunkbot_deliveries`` (every outlet here is a webhook)."""
    counts = Counter((r["status"], r["tier"]) for r in store.log.deliveries())
    return {(("channel", "webhook"), ("state", state), ("tier", tier)): float(n) for (state, tier), n in counts.items()}


async def test_the_figures_match_the_delivery_log_after_real_deliveries(
    store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any],
    make_notice: Callable[..., Notice],
) -> None:
    outlets, matrix = await loopback(6, script={"outlet-0001": [503], "outlet-0002": [410], "outlet-0003": [400]})
    store.queue.add_notices([(make_notice(ref="a"), matrix.outlets)], source="test")
    await dispatch(store, matrix, settings)
    store.queue.add_notices([(make_notice(ref="b", title="第二条"), matrix.outlets)], source="test")
    await dispatch(store, matrix, settings)  # outlet-0002 is paused now: its delivery of b is held

    samples = await scrape(store, matrix, regions, settings)

    assert series(samples, "debunkbot_deliveries") == delivery_figures(store)
    assert {dict(labels)["state"] for labels in series(samples, "debunkbot_deliveries")} == {
        "delivered", "failed", "held"}
    tries = store.log.attempts()
    assert len(tries) == sum(outlets.tries.values()) == 12  # 6 + 1 retry of a, 5 of b (the paused one is held)
    webhook = (("channel", "webhook"),)
    assert samples["debunkbot_attempt_latency_seconds_count", webhook] == len(tries)
    assert samples["debunkbot_attempt_latency_seconds_sum", webhook] == pytest.approx(
        sum(t["latency_ms"] for t in tries) / 1000)
    buckets = {float(dict(labels)["le"]): value
               for labels, value in series(samples, "debunkbot_attempt_latency_seconds_bucket").items()}
    assert buckets == {le: sum(t["latency_ms"] / 1000 <= le for t in tries) for le in (*BUCKETS, float("inf"))}
    assert samples["debunkbot_outlets_paused", ()] == len(store.health.paused()) == 1
    assert samples["debunkbot_outlets_breaker_open", ()] == 0
    assert samples["debunkbot_queue_depth", webhook] == 1  # b at the paused outlet: released, not delivered
    assert samples["debunkbot_store_up", ()] == 1


async def test_queue_depth_oldest_age_and_late_urgent_notices_come_from_what_is_waiting(
    store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any],
    make_notice: Callable[..., Notice],
) -> None:
    _, matrix = await loopback(4)
    waited = timedelta(minutes=settings.urgent_deadline + 5)
    store.queue.add_notices([(make_notice(ref="u", title="紧急", urgency="urgent"), matrix.outlets)], source="t",
                            now=datetime.now(UTC) - waited)
    store.queue.add_notices([(make_notice(ref="n"), matrix.outlets)], source="t")
    store.queue.add_notices([(make_notice(ref="fresh-urgent", title="刚发布", urgency="urgent"), matrix.outlets)],
                            source="t")

    before = await scrape(store, matrix, regions, settings)
    webhook = (("channel", "webhook"),)
    assert before["debunkbot_queue_depth", webhook] == 12
    assert waited.total_seconds() <= before["debunkbot_queue_oldest_pending_age_seconds", webhook] < (
        waited.total_seconds() + 60)
    assert before["debunkbot_urgent_notices_late", ()] == 1  # the fresh one is within its deadline

    await dispatch(store, matrix, settings)
    after = await scrape(store, matrix, regions, settings)
    assert after["debunkbot_queue_depth", webhook] == after["debunkbot_queue_oldest_pending_age_seconds", webhook] == 0
    assert after["debunkbot_urgent_notices_late", ()] == 0
    assert after["debunkbot_attempt_latency_seconds_count", webhook] == 12


async def test_an_expired_notices_cancelled_deliveries_are_counted_as_cancelled_and_leave_the_queue(
    store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any],
    make_notice: Callable[..., Notice],
) -> None:
    _, matrix = await loopback(3)
    submitted = datetime.now(UTC)
    notice = make_notice(ref="e", expires_at=(submitted + timedelta(hours=1)).isoformat())
    store.queue.add_notices([(notice, matrix.outlets)], source="t", now=submitted)
    assert (await scrape(store, matrix, regions, settings))["debunkbot_queue_depth", (("channel", "webhook"),)] == 3

    assert store.queue.cancel_expired(now=submitted + timedelta(hours=2)) == {"e": 3}
    samples = await scrape(store, matrix, regions, settings)

    counted = series(samples, "debunkbot_deliveries")
    assert counted == delivery_figures(store)
    assert {dict(labels)["state"] for labels in counted} == {"cancelled"} and sum(counted.values()) == 3
    assert samples["debunkbot_queue_depth", (("channel", "webhook"),)] == 0


async def test_two_dispatchers_on_one_store_add_up_to_the_whole_cluster_in_any_scrape(
    database_url: str, settings: Settings, regions: RegionTable, loopback: Callable[..., Any],
    make_notice: Callable[..., Notice],
) -> None:
    outlets, matrix = await loopback(40, script={f"outlet-{i:04d}": [503] for i in range(0, 40, 4)}, delay=0.005)
    one, two, server = Store.open(database_url), Store.open(database_url), Store.open(database_url)
    try:
        one.queue.add_notices([(make_notice(ref=f"n{i}", title=f"第{i}条"), matrix.outlets) for i in range(3)],
                              source="test")
        split = settings.model_copy(update={"concurrency": 8})
        by_one: list[Any] = []
        by_two: list[Any] = []
        await asyncio.gather(dispatch(one, matrix, split, by_one), dispatch(two, matrix, split, by_two))
        samples = await scrape(server, matrix, regions, settings)

        assert by_one and by_two, "both dispatchers sent a share"
        tries = server.log.attempts()
        assert len(tries) == sum(outlets.tries.values()) == 120 + 10  # each retried outlet once
        assert samples["debunkbot_attempt_latency_seconds_count", (("channel", "webhook"),)] == len(tries)
        assert series(samples, "debunkbot_deliveries") == delivery_figures(server)
        assert sum(series(samples, "debunkbot_deliveries").values()) == 120
    finally:
        for store in (one, two, server):
            store.close()


async def test_store_errors_are_counted_where_they_happen_and_summed_in_the_store(
    tmp_path: Path, regions: RegionTable, loopback: Callable[..., Any], make_notice: Callable[..., Notice],
) -> None:
    _, matrix = await loopback(2)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    settings = Settings(database_url=url)
    worker, server = Store.open(url, busy_timeout=0.05), Store.open(url, busy_timeout=0.05)
    try:
        holder = sqlite3.connect(tmp_path / "store.sqlite3", timeout=10, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # a stuck writer in another process
        for store, tries in ((worker, 3), (server, 2)):
            for _ in range(tries):
                with pytest.raises(STORE_FAULTS):
                    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
        with pytest.raises(STORE_FAULTS):
            worker.errors.save()  # still locked: kept, and the failed save is not counted
        holder.execute("COMMIT")
        holder.close()

        assert worker.errors.save() == 3
        assert worker.errors.save() == 0  # nothing left to add: no store call
        samples = await scrape(server, matrix, regions, settings)  # the server adds its own two first
        assert samples["debunkbot_store_errors_total", (("kind", "locked"),)] == 5
        assert samples["debunkbot_store_errors_total", (("kind", "unavailable"),)] == 0
    finally:
        worker.close()
        server.close()


async def test_a_scrape_when_the_store_is_unreachable_says_so_and_counts_the_error(
    tmp_path: Path, regions: RegionTable, loopback: Callable[..., Any],
) -> None:
    _, matrix = await loopback(1)
    with socket.socket() as closed:  # a port nobody listens on: the connection is refused
        closed.bind(("127.0.0.1", 0))
        url = f"postgresql+psycopg://bot@127.0.0.1:{closed.getsockname()[1]}/bot?connect_timeout=2"
        store = Store(make_engine(url))
        try:
            samples = await scrape(store, matrix, regions, Settings(database_url=url))
        finally:
            store.close()
    assert samples == {("debunkbot_store_up", ()): 0.0}
    assert store.errors.unsaved == {"unavailable": 1}  # the read that failed; saved once the store is back


async def test_a_workers_store_errors_reach_any_servers_scrape_once_the_store_is_back(
    tmp_path: Path, regions: RegionTable, loopback: Callable[..., Any], make_notice: Callable[..., Notice],
) -> None:
    from bot.scheduler import Daemon

    _, matrix = await loopback(3)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    settings = Settings(database_url=url, scan_interval=0.05, http_timeout=2)
    worker, server = Store.open(url, busy_timeout=0.05), Store.open(url)
    holder = sqlite3.connect(tmp_path / "store.sqlite3", timeout=10, isolation_level=None)
    stop = asyncio.Event()
    try:
        async with make_sender(settings) as client:
            daemon = Daemon(settings, worker, matrix, regions, client, cluster_jobs=False, stop=stop)
            running = asyncio.create_task(daemon.run())
            holder.execute("BEGIN EXCLUSIVE")  # a stuck writer: the worker's claims fail until it lets go
            await until(lambda: worker.errors.unsaved["locked"] >= 2)
            holder.execute("COMMIT")
            server.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
            await until(lambda: not worker.errors.unsaved and server.log.counts() == {"delivered": 3})
            stop.set()
            await asyncio.wait_for(running, timeout=20)
        samples = await scrape(server, matrix, regions, settings)
        assert samples["debunkbot_store_errors_total", (("kind", "locked"),)] >= 2
        assert samples["debunkbot_attempt_latency_seconds_count", (("channel", "webhook"),)] == 3
    finally:
        holder.close()
        worker.close()
        server.close()


async def test_pruning_old_attempts_never_takes_a_count_back(
    store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any],
    make_notice: Callable[..., Notice],
) -> None:
    _, matrix = await loopback(5)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    await dispatch(store, matrix, settings)
    before = await scrape(store, matrix, regions, settings)

    assert store.queue.prune_attempts(datetime.now(UTC) + timedelta(days=1)) == 5
    after = await scrape(store, matrix, regions, settings)
    latency = {k: v for k, v in before.items() if k[0].startswith("debunkbot_attempt_latency_seconds")}
    assert latency and all(after[key] == value for key, value in latency.items())


async def test_a_feed_fetch_counts_as_an_attempt_of_the_feed_channel(
    store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any],
    make_notice: Callable[..., Notice],
) -> None:
    _, matrix = await loopback(2)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    (row,) = store.log.deliveries(outlet_id="outlet-0000")
    assert store.queue.record_fetch("outlet-0000", {row["id"]: (1, False)}, latency_ms=30.0) == 1

    samples = await scrape(store, matrix, regions, settings)
    feed = (("channel", "feed"),)
    assert samples["debunkbot_attempt_latency_seconds_count", feed] == 1
    assert samples["debunkbot_attempt_latency_seconds_sum", feed] == pytest.approx(0.03)
    assert samples["debunkbot_attempt_latency_seconds_bucket", (("channel", "feed"), ("le", "0.05"))] == 1
