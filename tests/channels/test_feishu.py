"""Feishu and Lark: the signature in the body, code read in an HTTP 200, 11232 retried."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from bot.model import Notice
from channels.feishu import Feishu, Lark, sign
from tests.channels.conftest import FEISHU, LARK, Platforms, render_for, send


def test_the_signature_keys_hmac_with_timestamp_newline_secret_over_an_empty_message() -> None:
    expected = base64.b64encode(hmac.new(b"1700000000\nsecret", b"", hashlib.sha256).digest()).decode()
    assert sign("secret", 1_700_000_000) == expected


@pytest.mark.parametrize("channel", ["feishu", "lark"])
async def test_a_signed_post_and_a_card_are_accepted_and_a_stale_signature_gets_19021(
    platforms: Platforms, make_notice: Callable[..., Notice], channel: str
) -> None:
    notice = make_notice(title="<at user_id=\"all\">所有人</at> {{ x }}",
                         sources=[{"title": "通报", "url": "https://slj.cq.example/1"}])
    for msg_type in ("post", "interactive"):
        outlet, secret = platforms.outlet(channel, msg_type=msg_type)
        assert (await send(outlet, secret, render_for(outlet, notice))).result == "delivered"
    stale = await send(outlet, secret, render_for(outlet, notice), now=datetime.now(UTC) - timedelta(hours=2))
    assert stale.result == "failed" and "19021" in (stale.error or "")
    fake, token = (platforms.feishu, FEISHU[0]) if channel == "feishu" else (platforms.lark, LARK[0])
    post, card = fake.by(token)
    assert post["msg_type"] == "post" and post["content"]["post"]["zh_cn"]["title"].endswith(notice.title)
    texts = [e["text"] for line in post["content"]["post"]["zh_cn"]["content"] for e in line if e["tag"] == "text"]
    assert all("<at" not in t for t in texts)  # editor text only ever travels in plain-text elements
    assert card["card"]["elements"][0]["text"]["tag"] == "plain_text"
    assert card["card"]["elements"][1]["actions"][0]["url"] == "https://slj.cq.example/1"


def test_lark_is_feishu_on_larksuite() -> None:
    assert Lark.endpoint.startswith("https://open.larksuite.com/") and Feishu.endpoint.startswith("https://open.feishu.cn/")


@pytest.mark.parametrize(("answer", "result"), [
    ({"code": 0, "msg": "success"}, "delivered"), ({"StatusCode": 0, "StatusMessage": "success"}, "delivered"),
    ({"code": 11232, "msg": "frequency limited"}, "retry"), ({"code": 19021, "msg": "sign match fail"}, "failed"),
    ({"code": 9499, "msg": "Bad Request"}, "failed"),
])
def test_code_in_an_http_200_decides_the_outcome(answer: dict[str, object], result: str) -> None:
    assert Feishu().classify(200, httpx.Headers(), json.dumps(answer).encode()).result == result


async def test_the_fake_limits_a_bot_to_five_a_second_with_11232(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("feishu")
    rendered = render_for(outlet, make_notice())
    results = [(await send(outlet, secret, rendered)).result for _ in range(6)]
    assert results == ["delivered"] * 5 + ["retry"]
    assert platforms.feishu.refused == [(FEISHU[0], 11232)]
