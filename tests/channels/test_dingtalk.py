"""DingTalk: signed as documented, read by errcode, rate-limited answers retried and never dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import DingTalkRobots
from channels.dingtalk import DingTalk, sign
from tests.channels.conftest import DINGTALK, Platforms, render_for, send


def test_the_signature_is_urlencoded_base64_hmac_of_timestamp_newline_secret() -> None:
    # DingTalk's own Python sample, step by step: hmac(secret, f"{ts}\n{secret}", sha256) -> base64 -> quote_plus
    import base64
    import hashlib
    import hmac
    from urllib.parse import quote_plus

    digest = hmac.new(b"SECxxx", b"1700000000000\nSECxxx", hashlib.sha256).digest()
    assert sign("SECxxx", 1_700_000_000_000) == quote_plus(base64.b64encode(digest)) == (
        "plK5HYD7pW0AMQz3PBPzNXBlZe9ZIHa2a52gMYB3lHs%3D")


async def test_a_signed_post_is_accepted_and_a_stale_or_wrong_signature_is_refused_with_310000(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("dingtalk")
    rendered = render_for(outlet, make_notice())
    assert (await send(outlet, secret, rendered)).result == "delivered"
    stale = await send(outlet, secret, rendered, now=datetime.now(UTC) - timedelta(hours=1, minutes=1))
    wrong = await send(outlet, f"{DINGTALK[0]}:SECnot-the-secret", rendered)
    assert (stale.result, wrong.result) == ("failed", "failed")
    assert "310000" in (stale.error or "") and "310000" in (wrong.error or "")
    assert [code for _, code in platforms.dingtalk.refused] == [310000, 310000]
    (payload,) = platforms.dingtalk.by(DINGTALK[0])
    assert payload["msgtype"] == "markdown" and payload["markdown"]["title"].startswith("【辟谣】")


def test_the_token_and_secret_never_sit_in_the_url_of_the_matrix() -> None:
    from bot.outlets import Outlet

    outlet = Outlet(id="d", name="d", tier="district", channel="dingtalk", secret_env="S",
                    url="https://oapi.dingtalk.com/robot/send?access_token=abc")
    assert [field for field, _ in DingTalk().check_outlet(outlet)] == ["url"]
    request = DingTalk().build(DingTalk().render(Notice.model_validate({
        "ref": "x", "title": "t", "rumour": "r", "truth": "t", "verdict": "false", "authority": "a"}),
        datetime.now(UTC)), outlet.model_copy(update={"url": None}), "tok:SECk", "m", datetime.now(UTC))
    query = parse_qs(urlsplit(str(request.url)).query)
    assert query["access_token"] == ["tok"] and set(query) == {"access_token", "timestamp", "sign"}


@pytest.mark.parametrize(("answer", "result"), [
    ({"errcode": 0, "errmsg": "ok"}, "delivered"),
    ({"errcode": 130101, "errmsg": "send too fast"}, "retry"),
    ({"errcode": 310000, "errmsg": "sign not match"}, "failed"),
    ({"errcode": 460101, "errmsg": "message too long"}, "failed"),
    ({"errcode": 300001, "errmsg": "token is not exist"}, "failed"),
])
def test_errcode_in_an_http_200_decides_the_outcome(answer: dict[str, object], result: str) -> None:
    outcome = DingTalk().classify(200, httpx.Headers(), json.dumps(answer).encode())
    assert outcome.result == result
    if answer["errcode"] == 130101:
        assert outcome.retry_after == 600  # the robot is throttled about ten minutes


def test_a_200_that_is_not_dingtalks_answer_is_retried_not_counted_delivered() -> None:
    assert DingTalk().classify(200, httpx.Headers(), b"<html>proxy</html>").result == "retry"


async def test_action_card_carries_a_read_more_button_and_editor_markup_is_inert(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("dingtalk", msgtype="actionCard")
    notice = make_notice(title="[点我](http://evil.example) *重要* @all {{ 7*7 }} 😀",
                         sources=[{"title": "通报", "url": "https://slj.cq.example/1"}])
    assert (await send(outlet, secret, render_for(outlet, notice))).result == "delivered"
    (payload,) = platforms.dingtalk.by(DINGTALK[0])
    card = payload["actionCard"]
    assert card["singleURL"] == "https://slj.cq.example/1" and card["singleTitle"] == "阅读全文"
    assert r"\[点我\](http://evil.example) \*重要\* ＠all {{ 7\*7 }} 😀" in card["text"]


async def test_a_burst_to_a_rate_limited_robot_is_paced_by_the_store_and_provokes_no_130101(
    store: Store, settings: Settings, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    """30 notices to a robot allowing 20 per window: 20 go now, 10 once the window has moved, none refused.

    The window is 2 s instead of DingTalk's 60 (the fake enforces 2 s, the outlet overrides its limit to
    20 per 2.5 s: a margin for the time a post takes to arrive), so the test takes about 2.5 s.
    """
    async with DingTalkRobots({DINGTALK[0]: DINGTALK[1]}, per_minute=20, window=2.0, throttle=600) as robot:
        path = tmp_path / "outlets.yaml"
        path.write_text(yaml.safe_dump({"outlets": [{
            "id": "dist-yuzhong", "name": "渝中区融媒体中心", "tier": "district", "region": "渝中区",
            "channel": "dingtalk", "url": robot.url, "secret_env": "DT", "rate_limits": ["20/2.5s"]}]},
            allow_unicode=True))
        matrix = load_matrix(path, regions, environ={"DT": ":".join(DINGTALK)})
        burst = [make_notice(ref=f"burst-{i:02d}", title=f"第{i}条") for i in range(30)]
        store.queue.add_notices([(n, matrix.outlets) for n in burst], source="test")
        async with make_sender(settings) as client:
            dispatcher = Dispatcher(store, matrix, settings, client)
            await dispatcher.run(until_idle=True)
            await dispatcher.close()

    assert robot.refused == []  # no 130101, nor anything else
    rows = store.log.deliveries()
    assert len(rows) == 30 and all(r["status"] == "delivered" and r["attempts"] == 1 for r in rows)
    arrivals = sorted(r.at for r in robot.received)
    first = arrivals[0]
    assert sum(at - first < 2.0 for at in arrivals) == 20  # 20 at once
    assert all(at - first >= 2.0 for at in arrivals[20:])  # the other 10 after the window


@pytest.mark.parametrize(("answer", "code", "result"), [
    (b'{"errcode":130101,"errmsg":"send too fast"}', 130101, "retry"),
    (b'{"errcode":1301010,"errmsg":"send too fast?"}', 1301010, "failed"),
    (b'{"errcode":0,"errmsg":"ok"}', 0, "delivered"),
])
def test_the_answer_code_is_a_number_on_the_outcome(answer: bytes, code: int, result: str) -> None:
    import httpx

    from channels.dingtalk import DingTalk

    outcome = DingTalk().classify(200, httpx.Headers(), answer)
    assert (outcome.code, outcome.result) == (code, result)
    assert outcome.retry_after == (600 if result == "retry" else None)
