"""Operator alerts through the work-group channels an on-call team really reads."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from channels import CHANNELS
from tests.channels.conftest import Platforms, send

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
NIGHT = "\n".join(f"dist-{n:04d}：重试已用尽（HTTP 502），已暂停 [x](y) @all *" for n in range(2000))  # far over any limit


@pytest.mark.parametrize("channel", ["dingtalk", "wecom", "feishu", "lark"])
async def test_a_long_alert_is_cut_to_the_platforms_limit_signed_and_accepted(channel: str, platforms: Platforms) -> None:
    outlet, secret = platforms.outlet(channel)
    rendered = CHANNELS[channel].render_alert("debunkbot: 3 outlets need attention", NIGHT, NOW)  # type: ignore[attr-defined]
    outcome = await send(outlet, secret, rendered)
    assert outcome.result == "delivered", outcome.error
    fake = getattr(platforms, channel)
    assert fake.refused == []
    body = json.loads(rendered.body)
    assert "3 outlets need attention" in json.dumps(body, ensure_ascii=False)
    text = json.dumps(body, ensure_ascii=False)
    assert "0000：重试已用尽" in text and "1999：重试已用尽" not in text  # the head of the digest, cut to fit
    if channel in ("dingtalk", "wecom"):
        assert not re.search(r"(?<!\\)@all", rendered.body.decode())  # escaped: an alert's text mentions no one
