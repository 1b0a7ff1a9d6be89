"""WeCom: the key stays out of the matrix, errcode is read in an HTTP 200, 40058 is never retried."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from bot.model import Notice
from channels.wecom import WeCom
from tests.channels.conftest import WECOM, Platforms, render_for, send


async def test_markdown_and_news_reach_the_robot_with_editor_markup_inert(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    notice = make_notice(title="<@all> [x](y) **重要**", sources=[{"title": "通报", "url": "https://slj.cq.example/1"}])
    for msgtype in ("markdown", "news"):
        outlet, secret = platforms.outlet("wecom", msgtype=msgtype)
        assert (await send(outlet, secret, render_for(outlet, notice))).result == "delivered"
    markdown, news = platforms.wecom.by(WECOM)
    assert r"<＠all> \[x\](y) \*\*重要\*\*" in markdown["markdown"]["content"]  # no <@mention>, no link
    (article,) = news["news"]["articles"]
    assert article["url"] == "https://slj.cq.example/1" and notice.title in article["description"]


@pytest.mark.parametrize(("errcode", "result"), [(0, "delivered"), (45009, "retry"), (40058, "failed"),
                                                 (93000, "failed")])
def test_errcode_in_an_http_200_decides_the_outcome(errcode: int, result: str) -> None:
    outcome = WeCom().classify(200, httpx.Headers(), json.dumps({"errcode": errcode, "errmsg": "x"}).encode())
    assert outcome.result == result
    if errcode == 40058:
        assert "never retried" in (outcome.error or "")


async def test_the_fake_answers_40058_for_content_over_4096_bytes_in_an_http_200(platforms: Platforms) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{platforms.wecom.url}?key={WECOM}",
                                   json={"msgtype": "markdown", "markdown": {"content": "字" * 1366}})
    assert answer.status_code == 200 and answer.json()["errcode"] == 40058
    assert WeCom().classify(answer.status_code, answer.headers, answer.content).result == "failed"
