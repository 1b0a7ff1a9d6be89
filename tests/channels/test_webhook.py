"""The webhook channel: Standard Webhooks signing and the ClaimReview payload."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from standardwebhooks import Webhook as Verifier
from standardwebhooks import WebhookVerificationError

from bot.model import Notice
from bot.outlets import Outlet
from channels.webhook import Webhook
from tests.conftest import whsec

NOW = datetime.now(UTC)
OUTLET = Outlet(id="city-hualong", name="华龙网", tier="city", channel="webhook",
                url="https://push.cqnews.example/debunk", secret_env="S")


def test_a_post_verifies_with_the_reference_library_and_fails_under_another_secret(
    make_notice: Callable[..., Notice],
) -> None:
    secret, now = whsec(), datetime.now(UTC)  # the verifier allows 5 minutes: not the module's import time
    channel = Webhook()
    request = channel.build(channel.render(make_notice(), now), OUTLET, secret, "msg_abc", now)
    headers = dict(request.headers)
    payload = Verifier(secret).verify(request.content, headers)
    assert payload["type"] == "notice.published"
    assert headers["webhook-id"] == "msg_abc"
    with pytest.raises(WebhookVerificationError):
        Verifier(whsec()).verify(request.content, headers)


@pytest.mark.parametrize("url", ["https://push.cqnews.example/debunk", "https://Push.CQNews.example:443/d",
                                 "http://127.0.0.1:8080/d?x=1", "http://[::1]:9000/d", "https://融媒体.重庆.example/d"])
def test_each_post_names_its_host_as_httpx_itself_would(make_notice: Callable[..., Notice], url: str) -> None:
    """The Host header, worked out once per outlet URL: lowercase, IDNA, the default port left out."""
    channel, outlet = Webhook(), OUTLET.model_copy(update={"url": url})
    request = channel.build(channel.render(make_notice(), NOW), outlet, whsec(), "msg_abc", NOW)
    assert request.headers.get_list("host") == [httpx.Request("POST", url).headers["host"]]
    assert request.url == httpx.URL(url)


def test_the_payload_carries_the_notice_the_text_and_a_claim_review(make_notice: Callable[..., Notice]) -> None:
    notice = make_notice(sources=[{"title": "水利局通报", "url": "https://slj.example/1"}], regions=["渝中"])
    body = json.loads(Webhook().render(notice, NOW).body)
    data = body["data"]
    assert set(body) == {"type", "timestamp", "data"}
    assert data["ref"] == notice.ref and data["verdict"] == "false" and data["regions"] == ["渝中区"]
    assert data["text"].startswith("【辟谣】")
    review = data["claim_review"]
    assert review["@type"] == "ClaimReview" and review["claimReviewed"] == notice.rumour
    assert review["reviewRating"]["alternateName"] == "谣言"
    assert review["author"] == {"@type": "Organization", "name": "重庆市水利局"}
    assert review["datePublished"] == NOW.date().isoformat()
    assert review["itemReviewed"]["appearance"][0]["url"] == "https://slj.example/1"
    assert review["url"] == "https://slj.example/1"


def test_chinese_text_travels_as_utf8_not_escapes(make_notice: Callable[..., Notice]) -> None:
    body = Webhook().render(make_notice(), NOW).body
    assert "长江重庆段".encode() in body and b"\\u" not in body


@pytest.mark.parametrize(("status", "result"), [
    (200, "delivered"), (204, "delivered"), (301, "failed"), (400, "failed"), (404, "failed"),
    (408, "retry"), (410, "failed"), (425, "retry"), (429, "retry"), (500, "retry"), (503, "retry"),
])
def test_statuses_are_read_as_standard_webhooks_says(status: int, result: str) -> None:
    outcome = Webhook().classify(status, httpx.Headers({"retry-after": "30"}), b"")
    assert outcome.result == result
    assert outcome.pause_outlet == (status == 410)
    if result == "retry":
        assert outcome.retry_after == 30
