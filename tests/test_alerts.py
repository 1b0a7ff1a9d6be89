"""Operator alerts: raised by the store, posted through a channel to the operators, a few per bad night."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.alerts import Alerter
from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import MatrixError, OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import ChaosOutlets
from bot.testing.chaos import Status
from tests.conftest import whsec


def write_matrix(tmp_path: Path, regions: RegionTable, urls: dict[str, str], secrets: dict[str, str],
                 operators: list[dict[str, Any]]) -> OutletMatrix:
    entries = [{"id": o, "name": f"站点{o}", "tier": "district", "region": "全市", "channel": "webhook",
                "url": url, "secret_env": f"S_{o.upper()}"} for o, url in urls.items()]
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries, "operators": operators}, allow_unicode=True), encoding="utf-8")
    return load_matrix(path, regions, environ={f"S_{o.upper()}": s for o, s in secrets.items()})


async def send(store: Store, matrix: OutletMatrix, settings: Settings, notice: Notice) -> None:
    store.queue.add_notices([(notice, matrix.concerned_by(notice))], source="test")
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        await dispatcher.run(until_idle=True)
        await dispatcher.close()


async def test_a_bad_night_reaches_the_operators_as_one_digest_and_repeats_are_deduplicated(
    tmp_path: Path, store: Store, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    secrets = {o: whsec() for o in ("bad", "gone", "good", "ops")}
    async with ChaosOutlets(secrets, {"bad": [Status(502)] * 100, "gone": [Status(410)]}) as chaos:
        matrix = write_matrix(tmp_path, regions, {o: chaos.url(o) for o in ("bad", "gone", "good")}, secrets,
                              [{"id": "ops", "name": "值班群", "channel": "webhook", "url": chaos.url("ops"),
                                "secret_env": "S_OPS"}])
        assert [o.id for o in matrix.operators] == ["ops"] and "ops" not in matrix.by_id
        settings = Settings(database_url=str(store.engine.url), retry_schedule="0.01,0.01", retry_jitter=0,
                            http_timeout=1, scan_interval=0.05, breaker_threshold=100, alert_interval=3600)
        for n in range(3):  # three notices: "bad" exhausts its retries on each
            await send(store, matrix, settings, make_notice(ref=f"n{n}", title=f"第{n}条"))
        assert store.log.counts()["failed"] == 4  # bad x3, gone x1 (gone's later notices are held)

        async with make_sender(settings) as client:
            alerter = Alerter(store, matrix, settings, client)
            assert await alerter.tick() == 2
            # a new alert inside the interval waits: one message per interval at most
            released = datetime.now(UTC) - timedelta(minutes=settings.urgent_deadline + 1)
            store.queue.add_notices([(make_notice(ref="u", title="紧急", urgency="urgent"), matrix.outlets)],
                                    source="t", now=released)
            assert await alerter.tick() == 0
            assert [a["kind"] for a in store.outbox.unsent()] == ["urgent-late"]

    (post,) = chaos.seen("ops")
    assert post.verified and post.message_id
    body = json.loads(post.body)
    assert body["type"] == "operator.alert"
    assert "2 alert(s)" in body["data"]["title"]
    text = body["data"]["text"]
    # one exhausted alert for three exhausted deliveries: same outlet, same run of failures
    assert text.count("[exhausted]") == 1 and "outlet bad: retries exhausted" in text
    assert "debunkbot retry --outlet bad" in text
    assert text.count("[paused]") == 1 and "outlet gone paused" in text


async def test_an_alert_the_operator_channel_did_not_take_is_sent_again_later(
    tmp_path: Path, store: Store, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    secrets = {"gone": whsec(), "ops": whsec()}
    async with ChaosOutlets(secrets, {"gone": [Status(410)], "ops": [Status(503)]}) as chaos:
        operators = [{"id": "ops", "name": "值班群", "channel": "webhook", "url": chaos.url("ops"),
                      "secret_env": "S_OPS"}]
        matrix = write_matrix(tmp_path, regions, {"gone": chaos.url("gone")}, secrets, operators)
        settings = Settings(database_url=str(store.engine.url), http_timeout=1, alert_interval=0, scan_interval=0.01)
        await send(store, matrix, settings, make_notice())
        async with make_sender(settings) as client:
            alerter = Alerter(store, matrix, settings, client)
            assert await alerter.tick() == 0 and len(store.outbox.unsent()) == 1  # 503: kept
            assert await Alerter(store, matrix, settings, client).tick() == 1  # a restart, say: no back-off
    first, second = chaos.seen("ops")
    assert first.message_id == second.message_id  # the resend dedupes at the receiver


def test_an_operator_channel_that_cannot_carry_alerts_refuses_start_up(tmp_path: Path, regions: RegionTable) -> None:
    with pytest.raises(MatrixError, match="operator 'ops' field 'url'"):
        write_matrix(tmp_path, regions, {"a": "http://127.0.0.1:1/a"}, {"a": whsec(), "ops": whsec()},
                     [{"id": "ops", "name": "值班群", "channel": "webhook", "secret_env": "S_OPS"}])



async def test_with_two_operator_channels_only_the_failing_one_is_retried(
    tmp_path: Path, store: Store, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    secrets = {"gone": whsec(), "ops1": whsec(), "ops2": whsec()}
    async with ChaosOutlets(secrets, {"gone": [Status(410)], "ops2": [Status(503), Status(503)]}) as chaos:
        operators = [{"id": o, "name": f"值班群{o}", "channel": "webhook", "url": chaos.url(o),
                      "secret_env": f"S_{o.upper()}"} for o in ("ops1", "ops2")]
        matrix = write_matrix(tmp_path, regions, {"gone": chaos.url("gone")}, secrets, operators)
        settings = Settings(database_url=str(store.engine.url), http_timeout=1, alert_interval=0, scan_interval=0.01)
        await send(store, matrix, settings, make_notice())
        async with make_sender(settings) as client:
            assert await Alerter(store, matrix, settings, client).tick() == 0  # ops2: 503
            assert [a["kind"] for a in store.outbox.unsent("ops2")] == ["paused"] and store.outbox.unsent("ops1") == []
            assert await Alerter(store, matrix, settings, client).tick() == 0  # ops2: 503 again; ops1 not resent
            assert await Alerter(store, matrix, settings, client).tick() == 1  # ops2 takes it: sent everywhere
            assert await Alerter(store, matrix, settings, client).tick() == 0
    assert len(chaos.seen("ops1")) == 1
    tries = chaos.seen("ops2")
    assert len(tries) == 3 and len({t.message_id for t in tries}) == 1
    assert store.outbox.unsent() == []
