"""The one send path (bot/http.py) against a chaos server on loopback: the same rules for every caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from bot.http import READ_CAP, Sender, SendFailed, make_sender
from bot.outlets import Outlet
from bot.settings import Settings
from bot.testing import ChaosOutlets
from bot.testing.chaos import RESET, Drip, Huge, redirect, refused_url
from channels import CHANNELS, Rendered

TIMEOUT = 1.0


@pytest.fixture
async def sender() -> AsyncIterator[Sender]:
    async with make_sender(Settings(database_url="sqlite://", http_timeout=TIMEOUT)) as sender:
        yield sender


def post(url: str) -> httpx.Request:
    return httpx.Request("POST", url, content=b"{}")


async def test_at_most_64_kb_of_an_answer_is_read(sender: Sender) -> None:
    async with ChaosOutlets(script={"o": [Huge(32 * 1024 * 1024)]}) as chaos:
        answer = await sender.send(post(chaos.url("o")))
    assert answer.status == 200 and len(answer.body) == READ_CAP == 64 * 1024


async def test_an_answer_that_drips_is_cut_off_at_the_total_deadline_keeping_its_status(sender: Sender) -> None:
    async with ChaosOutlets(script={"o": [Drip(0.05)]}) as chaos:
        with pytest.raises(SendFailed, match=f"timed out after {TIMEOUT:g}s") as failed:
            await sender.send(post(chaos.url("o")))
    assert (failed.value.kind, failed.value.status) == ("timeout", 200)


async def test_a_redirect_is_an_answer_and_is_not_followed(sender: Sender) -> None:
    async with ChaosOutlets(script={"r": [redirect("/o/target", 302)]}) as chaos:
        answer = await sender.send(post(chaos.url("r")))
    assert answer.status == 302 and chaos.tries["target"] == 0


@pytest.mark.parametrize("where", ["refused", "reset"])
async def test_no_answer_at_all_raises_send_failed_named_by_the_underlying_error(sender: Sender, where: str) -> None:
    async with ChaosOutlets(script={"o": [RESET]}) as chaos:
        url = refused_url() if where == "refused" else chaos.url("o")
        with pytest.raises(SendFailed) as failed:
            await sender.send(post(url))
    assert failed.value.kind.startswith(("ClientConnectorError", "ClientOSError", "ServerDisconnected"))
    assert failed.value.status is None


async def test_wechat_token_calls_go_through_the_same_deadline(sender: Sender) -> None:
    # the token endpoint drips: WeChat's extra request is cut off like any send, not left to hang
    async with ChaosOutlets(script={"stable_token": [Drip(0.05)]}) as chaos:
        api = chaos.url("x").removesuffix("/o/x")
        outlet = Outlet(id="mp", name="公众号", tier="city", channel="wechat_mp", url=api, secret_env="MP",
                        options={"appid": "wx1", "thumb_media_id": "t"})
        rendered = Rendered(text="x", body=b"{}", extra={"title": "t"})
        with pytest.raises(SendFailed, match="timed out"):
            await CHANNELS["wechat_mp"].deliver(sender, rendered, outlet, "secret", "msg", datetime.now(UTC), {})  # type: ignore[attr-defined]
    assert chaos.tries["stable_token"] == 1
