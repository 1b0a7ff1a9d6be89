"""WeChat Official Account: a cached token, a draft with scripts stripped, one token refresh, publish on request."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from bot.http import Sender
from bot.model import Notice
from bot.settings import Settings
from bot.store import Store
from channels.wechat_mp import WeChatMP
from tests.channels.conftest import WECHAT, Platforms, render_for, send


async def test_a_draft_is_added_with_a_cached_token_and_without_scripts(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("wechat_mp")
    notice = make_notice(truth="第一段<script>alert(1)</script>\n第二段 <img src=x onerror=alert(1)>")
    for ref in ("a", "b"):
        assert (await send(outlet, secret, render_for(outlet, make_notice(ref=ref)))).result == "delivered"
    assert (await send(outlet, secret, render_for(outlet, notice))).result == "delivered"
    assert platforms.wechat_mp.tokens_issued == 1  # one token served three drafts
    article = platforms.wechat_mp.by(WECHAT[0])[-1]
    assert platforms.wechat_mp.scripts == 0 and "<img" not in article["content"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in article["content"]
    assert "<p>第一段&lt;script&gt;alert(1)&lt;/script&gt;</p>" in article["content"]  # inert and readable
    assert article["thumb_media_id"] == "thumb-media-0001" and platforms.wechat_mp.published == []


async def test_an_expired_token_is_refreshed_once_and_the_draft_goes_through(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("wechat_mp", publish=True)
    assert (await send(outlet, secret, render_for(outlet, make_notice(ref="a")))).result == "retry"  # publishing
    platforms.wechat_mp.expire_tokens()
    assert (await send(outlet, secret, render_for(outlet, make_notice(ref="b")))).result == "retry"
    assert platforms.wechat_mp.tokens_issued == 2
    assert [code for _, code in platforms.wechat_mp.refused] == [40001]
    assert len(platforms.wechat_mp.published) == 2  # publish: true submits each draft for publishing


async def test_a_wrong_app_secret_fails_with_the_token_endpoints_errcode(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, _ = platforms.outlet("wechat_mp")
    channel = WeChatMP()  # its own token cache: nothing shared with the registry's instance
    async with Sender(httpx.AsyncHTTPTransport(), timeout=10) as sender:
        answer = await channel.deliver(sender, render_for(outlet, make_notice()), outlet, "not-the-secret", "m",
                                       datetime.now(UTC), {})
    outcome = channel.classify(answer.status, answer.headers, answer.body)
    assert outcome.result == "failed" and outcome.code == 40125


def test_a_wechat_outlet_needs_its_appid_and_cover() -> None:
    from bot.outlets import Outlet

    outlet = Outlet(id="w", name="w", tier="other", channel="wechat_mp", secret_env="S", options={"publish": "yes"})
    assert [f for f, _ in WeChatMP().check_outlet(outlet)] == ["options.appid", "options.thumb_media_id", "options.publish"]


@pytest.mark.parametrize(("answer", "result"), [
    ({"media_id": "m"}, "delivered"), ({"errcode": 0, "publish_id": "p"}, "retry"),
    ({"publish_id": "p", "publish_status": 0}, "delivered"), ({"publish_id": "p", "publish_status": 1}, "retry"),
    ({"publish_id": "p", "publish_status": 4, "fail_idx": [1]}, "failed"),
    ({"errcode": 45009, "errmsg": "quota"}, "retry"), ({"errcode": 42001, "errmsg": "expired"}, "retry"),
    ({"errcode": 45002, "errmsg": "too large"}, "failed"),
])
def test_errcode_decides_the_outcome(answer: dict[str, object], result: str) -> None:
    assert WeChatMP().classify(200, httpx.Headers(), json.dumps(answer).encode()).result == result


async def test_several_workers_each_fetching_a_token_do_not_invalidate_each_other(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("wechat_mp")
    workers = [WeChatMP(), WeChatMP(), WeChatMP()]  # three processes, three token caches
    async with Sender(httpx.AsyncHTTPTransport(), timeout=10) as sender:
        for round_ in range(2):
            for n, worker in enumerate(workers):
                rendered = worker.render(make_notice(ref=f"w{round_}{n}"), datetime(2026, 11, 27, tzinfo=UTC))
                answer = await worker.deliver(sender, rendered, outlet, secret, "msg", datetime.now(UTC), {})
                assert worker.classify(answer.status, answer.headers, answer.body).result == "delivered"
    assert platforms.wechat_mp.refused == []  # no 40001: the stable token is the same for everyone
    assert len(platforms.wechat_mp.by(WECHAT[0])) >= 6


async def test_a_long_title_author_and_digest_are_fitted_to_wechats_limits_whole_emoji_and_prefix_kept(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    # a 120-character title with an emoji family (one character as people see it, five code points) at the cut
    title = "网传主城区今晚停水" * 2 + "👨‍👩‍👧" + "系谣言" * 32
    outlet, secret = platforms.outlet("wechat_mp", author="重庆市互联网违法和不良信息举报中心联合辟谣平台")
    notice = make_notice(title=title[:120], truth="经核实，供水正常。" * 30)
    outcome = await send(outlet, secret, render_for(outlet, notice))
    assert outcome.result == "delivered", outcome.error
    (article,) = platforms.wechat_mp.by(WECHAT[0])
    assert article["title"].startswith("【辟谣】网传主城区今晚停水") and len(article["title"]) <= 32
    assert "\u200d" not in article["title"][-3:] and article["title"].endswith("…")  # no half family left
    assert len(article["author"]) <= 16 and article["author"].startswith("重庆市互联网")
    assert len(article["digest"]) <= 128 and article["digest"].endswith(("。", "…"))


async def test_the_fake_refuses_a_title_over_32_characters(platforms: Platforms) -> None:
    outlet, secret = platforms.outlet("wechat_mp")
    async with httpx.AsyncClient() as client:
        token = (await client.post(f"{outlet.url}/cgi-bin/stable_token", json={
            "grant_type": "client_credential", "appid": WECHAT[0], "secret": secret})).json()["access_token"]
        answer = await client.post(f"{outlet.url}/cgi-bin/draft/add?access_token={token}", json={"articles": [
            {"title": "标" * 33, "content": "<p>x</p>", "thumb_media_id": "thumb-media-0001"}]})
    assert answer.json()["errcode"] == 45003


async def test_a_publish_counts_only_once_wechat_says_it_is_published(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("wechat_mp", publish=True)
    platforms.wechat_mp.publish_statuses = [1, 0]  # still publishing at the first check
    rendered, state = render_for(outlet, make_notice()), {}
    accepted = await send(outlet, secret, rendered, state=state)
    assert accepted.result == "retry" and "publish task accepted" in (accepted.error or "")
    assert set(state) == {"media_id", "publish_id", "message_id"} and not any(WECHAT[1] in str(v) for v in state.values())
    assert (await send(outlet, secret, rendered, attempt=2, state=state)).result == "retry"  # publishing
    published = await send(outlet, secret, rendered, attempt=3, state=state)
    assert published.result == "delivered" and "https://mp.weixin.qq.com/s/" in (published.error or "")
    assert len(platforms.wechat_mp.drafts) == 1 and len(platforms.wechat_mp.published) == 1


async def test_a_publish_wechat_refuses_fails_with_its_reason(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("wechat_mp", publish=True)
    platforms.wechat_mp.publish_statuses = [4]  # 平台审核不通过
    rendered, state = render_for(outlet, make_notice()), {}
    assert (await send(outlet, secret, rendered, state=state)).result == "retry"
    refused = await send(outlet, secret, rendered, attempt=2, state=state)
    assert refused.result == "failed" and refused.code == 4 and "平台审核不通过" in (refused.error or "")


async def test_a_publish_call_that_fails_after_the_draft_was_added_is_retried_without_a_second_draft(
    platforms: Platforms, make_notice: Callable[..., Notice]
) -> None:
    outlet, secret = platforms.outlet("wechat_mp", publish=True)
    platforms.wechat_mp.submit_errors = [-1]  # system busy, once, after draft/add went through
    rendered, state = render_for(outlet, make_notice()), {}
    assert (await send(outlet, secret, rendered, state=state)).result == "retry"
    assert set(state) == {"media_id", "message_id"}
    assert (await send(outlet, secret, rendered, attempt=2, state=state)).result == "retry"  # accepted now
    assert (await send(outlet, secret, rendered, attempt=3, state=state)).result == "delivered"
    assert len(platforms.wechat_mp.drafts) == 1 and platforms.wechat_mp.published == list(platforms.wechat_mp.drafts)


async def test_the_dispatcher_keeps_the_draft_and_the_publish_task_in_the_store_between_tries(
    platforms: Platforms, store: Store, settings: Settings, make_notice: Callable[..., Notice]
) -> None:
    """The real dispatcher and store, both backends: the publish call fails once after the draft went in,
    then WeChat is still publishing at the first check. One draft, one publish, delivered at the end."""
    from bot.dispatch import Dispatcher
    from bot.http import make_sender
    from bot.outlets import OutletMatrix

    outlet, secret = platforms.outlet("wechat_mp", publish=True)
    platforms.wechat_mp.submit_errors = [-1]
    platforms.wechat_mp.publish_statuses = [1, 0]
    matrix = OutletMatrix((outlet,), {outlet.id: secret})
    settings = settings.model_copy(update={"retry_schedule": "0.05,0.05,0.05,0.05,0.05", "retry_after_max": 0.05})
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    async with make_sender(settings) as sender:
        dispatcher = Dispatcher(store, matrix, settings, sender)
        await dispatcher.run(until_idle=True)
        await dispatcher.close()

    tries = store.log.attempts()
    assert [t["outcome"] for t in tries] == ["retry", "retry", "retry", "delivered"]
    assert "publish task accepted" in tries[1]["error"] and "https://mp.weixin.qq.com/s/" in tries[3]["error"]
    assert store.log.counts() == {"delivered": 1}
    assert len(platforms.wechat_mp.drafts) == 1 and len(platforms.wechat_mp.published) == 1


@pytest.mark.parametrize("publish", [False, True])
async def test_an_answer_lost_after_the_draft_went_in_adds_no_second_draft(
    platforms: Platforms, make_notice: Callable[..., Notice], publish: bool
) -> None:
    outlet, secret = platforms.outlet("wechat_mp", publish=publish)
    platforms.wechat_mp.lose_draft_answers = 1  # draft/add stores the draft, then the connection drops
    rendered, state = render_for(outlet, make_notice()), {}
    lost = await send(outlet, secret, rendered, state=state)
    assert lost.result == "retry" and len(platforms.wechat_mp.drafts) == 1
    again = await send(outlet, secret, rendered, attempt=2, state=state)  # finds that draft (draft/batchget)
    assert again.result == ("retry" if publish else "delivered")  # with publish: the task is accepted now
    assert len(platforms.wechat_mp.drafts) == 1 and state["media_id"] in platforms.wechat_mp.drafts
    assert platforms.wechat_mp.published == ([state["media_id"]] if publish else [])
