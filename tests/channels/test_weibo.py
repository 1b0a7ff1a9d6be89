"""Weibo: 140 characters with the link counted, the token in the form, error_code read."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bot.http import SendFailed
from bot.model import Notice
from bot.regions import RegionTable
from channels import Rendered
from channels.fit import weibo_length
from channels.weibo import Weibo
from tests.channels.conftest import SAFE_DOMAIN, WEIBO, Platforms, render_for, send


async def test_a_long_notice_becomes_a_140_character_post_that_keeps_the_title_and_links_the_full_text(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("weibo")
    notice = make_notice(truth="经核实，目前长江重庆段水位平稳。" * 40, title="网传#洪水#@所有人 长江水位暴涨系谣言")
    rendered = render_for(outlet, notice)
    assert weibo_length(rendered.text) <= 140
    assert "网传＃洪水＃＠所有人 长江水位暴涨系谣言" in rendered.text  # no topic, no mention
    assert rendered.text.endswith("阅读全文：https://piyao.cq.example/cq-test-001")
    assert (await send(outlet, secret, rendered)).result == "delivered"
    again = await send(outlet, secret, rendered, attempt=2)  # an earlier try that landed: Weibo says "repeat content"
    assert again.result == "delivered" and "20019" in (again.error or "")
    assert platforms.weibo.by(WEIBO) == [rendered.text]


def test_a_weibo_outlet_must_name_its_safe_domain_link() -> None:
    from bot.outlets import Outlet

    outlet = Outlet(id="w", name="w", tier="other", channel="weibo", secret_env="S", options={"rip": "203.0.113.10"})
    assert [field for field, _ in Weibo().check_outlet(outlet)] == ["options.read_more_url"]


@pytest.mark.parametrize(("status", "answer", "result"), [
    (200, {"id": 1, "text": "x"}, "delivered"), (400, {"error_code": 10023, "error": "rate"}, "retry"),
    (400, {"error_code": 20012, "error": "too long"}, "failed"), (400, {"error_code": 21332, "error": "token"}, "failed"),
])
def test_error_code_decides_the_outcome(status: int, answer: dict[str, object], result: str) -> None:
    assert Weibo().classify(status, httpx.Headers(), json.dumps(answer).encode()).result == result


def test_codes_are_matched_as_numbers_not_as_text() -> None:
    answer = json.dumps({"error_code": 200190, "error": "some other refusal"}).encode()
    outcome = Weibo().classify(400, httpx.Headers(), answer, attempt=2)
    assert (outcome.result, outcome.code) == ("failed", 200190)


async def test_posting_too_often_is_retried_later(platforms: Platforms, make_notice: Callable[..., Notice]) -> None:
    outlet, secret = platforms.outlet("weibo")
    platforms.weibo.script[WEIBO] = [20016]
    rendered = render_for(outlet, make_notice())
    outcome = await send(outlet, secret, rendered, attempt=1)
    assert (outcome.result, outcome.code) == ("retry", 20016)
    assert (await send(outlet, secret, rendered, attempt=2)).result == "delivered"
    assert platforms.weibo.by(WEIBO) == [rendered.text]


async def test_a_slow_server_answer_20032_counts_as_delivered_with_a_note(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("weibo")
    platforms.weibo.script[WEIBO] = [20032]
    rendered = render_for(outlet, make_notice())
    outcome = await send(outlet, secret, rendered, attempt=1)
    assert (outcome.result, outcome.code) == ("delivered", 20032) and "slow" in (outcome.error or "")
    assert platforms.weibo.by(WEIBO) == [rendered.text]


@pytest.mark.parametrize("code", [20017, 20019])
async def test_a_retry_after_a_lost_answer_stays_delivered(
    platforms: Platforms, make_notice: Callable[..., Notice], code: int
) -> None:
    from bot.testing.weibo import LOST

    outlet, secret = platforms.outlet("weibo")
    platforms.weibo.script[WEIBO] = [LOST] if code == 20019 else [LOST, code]  # the fake finds identical text itself
    rendered = render_for(outlet, make_notice())
    with pytest.raises(SendFailed):
        await send(outlet, secret, rendered, attempt=1)
    assert platforms.weibo.by(WEIBO) == [rendered.text]  # it went up; only the answer was lost
    again = await send(outlet, secret, rendered, attempt=2)
    assert (again.result, again.code) == ("delivered", code) and "earlier try" in (again.error or "")


async def test_identical_content_on_a_first_try_is_a_refusal(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("weibo")
    rendered = render_for(outlet, make_notice())
    assert (await send(outlet, secret, rendered, attempt=1)).result == "delivered"
    repeat = await send(outlet, secret, rendered, attempt=1)  # another notice that renders the same status
    assert (repeat.result, repeat.code) == ("failed", 20019)


async def test_the_fake_refuses_a_post_without_rip_as_weibo_documents(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("weibo")
    rendered = render_for(outlet, make_notice())
    async with httpx.AsyncClient() as client:
        answer = await client.post(outlet.url or "", data={"access_token": secret, "status": rendered.text})
    assert answer.json()["error_code"] == 10016
    assert (await send(outlet, secret, rendered)).result == "delivered"  # the channel sends rip


@pytest.mark.parametrize(("rip", "refused"), [
    (None, "requires rip"), ("", "requires rip"), ("localhost", "not an IP address"),
    ("127.0.0.1", "not a public address"), ("192.168.1.20", "not a public address"), ("203.0.113.10", None),
    ("2001:db8::1", None),
])
def test_a_weibo_outlet_needs_a_public_rip_at_start_up(rip: str | None, refused: str | None) -> None:
    from bot.outlets import Outlet

    options = {"read_more_url": "https://piyao.cq.example/{ref}"} | ({} if rip is None else {"rip": rip})
    outlet = Outlet(id="w", name="w", tier="other", channel="weibo", secret_env="S", options=options)
    problems = dict(Weibo().check_outlet(outlet))
    assert (refused in problems.get("options.rip", "")) if refused else problems == {}


def test_one_setting_gives_every_weibo_outlet_the_machines_public_ip(tmp_path: Path, regions: RegionTable) -> None:
    from bot.outlets import MatrixError, load_matrix

    matrix = tmp_path / "outlets.yaml"
    matrix.write_text(
        "outlets:\n"
        "  - {id: wb, name: 微博, tier: other, channel: weibo, secret_env: WB,\n"
        "     options: {read_more_url: 'https://piyao.cq.example/{ref}'}}\n"
        "  - {id: wb-own, name: 微博2, tier: other, channel: weibo, secret_env: WB,\n"
        "     options: {read_more_url: 'https://piyao.cq.example/{ref}', rip: 198.51.100.7}}\n", encoding="utf-8")
    with pytest.raises(MatrixError, match=r"outlet 'wb' field 'options.rip': .*DEBUNKBOT_PUBLIC_IP"):
        load_matrix(matrix, regions, environ={"WB": "token"})
    loaded = load_matrix(matrix, regions, environ={"WB": "token"}, public_ip="203.0.113.10")
    assert [o.options["rip"] for o in loaded.outlets] == ["203.0.113.10", "198.51.100.7"]


# 140 as Weibo counts: 100 CJK + 10 emoji (20) + 20 ASCII (10) + one link (10, whatever its length)
AT_LIMIT = "辟" * 100 + "👍" * 10 + "a" * 20 + "https://piyao.cq.example/" + "x" * 80


@pytest.mark.parametrize(("text", "length"), [
    (AT_LIMIT, 140), (AT_LIMIT + " b", 141), ("b" + AT_LIMIT, 141), (AT_LIMIT.replace("a" * 20, "a" * 19), 140),
    (AT_LIMIT.replace("辟", "👍", 1), 141), ("辟" * 140, 140), ("a" * 280, 140), ("a" * 281, 141),
])
def test_weibo_counts_ascii_as_half_a_link_as_ten_and_an_emoji_as_two(text: str, length: int) -> None:
    assert weibo_length(text) == length


@pytest.mark.parametrize(("extra", "result"), [("", "delivered"), ("b", "failed")])
async def test_the_fake_takes_exactly_140_as_weibo_counts(platforms: Platforms, extra: str, result: str) -> None:
    outlet, secret = platforms.outlet("weibo")
    text = extra + AT_LIMIT.replace("https://piyao.cq.example/", f"https://{SAFE_DOMAIN}/")
    outcome = await send(outlet, secret, Rendered(text=text, body=text.encode()))
    assert outcome.result == result and (result == "delivered" or outcome.code == 20012)


async def test_a_notice_full_of_emoji_is_fitted_as_weibo_counts_and_accepted(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("weibo")
    notice = make_notice(title="网传长江👍水位暴涨系谣言", truth="经核实" + "👍🌊" * 100 + "。")
    rendered = render_for(outlet, notice)
    assert weibo_length(rendered.text) <= 140
    assert (await send(outlet, secret, rendered)).result == "delivered"


def test_a_read_more_url_that_can_never_fit_is_refused_at_start_up() -> None:
    from bot.outlets import Outlet

    def problems(link: str) -> dict[str, str]:
        return dict(Weibo().check_outlet(Outlet(id="w", name="w", tier="other", channel="weibo", secret_env="S",
                                                options={"read_more_url": link, "rip": "203.0.113.10"})))

    assert problems("https://piyao.cq.example/" + "a" * 150 + "/{ref}") == {}  # a link counts 10, however long
    refused = problems("https://piyao.cq.example/辟谣通报/" + "辟谣" * 50 + "/{ref}")
    assert "too long to ever fit" in refused["options.read_more_url"]
