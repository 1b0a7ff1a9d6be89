"""Credentials as people copy them: a robot's whole webhook URL in secret_env, and wrong shapes refused at start-up."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.model import Notice
from bot.outlets import MatrixError, load_matrix
from bot.regions import RegionTable
from tests.channels.conftest import DINGTALK, FEISHU, WECOM, Platforms, render_for, send


def _load(tmp_path: Path, regions: RegionTable, entry: dict[str, Any], secret: str) -> Any:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"id": "o", "name": "机器人", "tier": "district", "secret_env": "S"}
                                                | entry]}, allow_unicode=True), encoding="utf-8")
    return load_matrix(path, regions, environ={"S": secret})


@pytest.mark.parametrize(("channel", "copied"), [
    ("dingtalk", f"https://oapi.dingtalk.com/robot/send?access_token={DINGTALK[0]} {DINGTALK[1]}"),
    ("dingtalk", f"https://oapi.dingtalk.com/robot/send?access_token={DINGTALK[0]}\n{DINGTALK[1]}\n"),
    ("wecom", f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={WECOM}"),
    ("feishu", f"https://open.feishu.cn/open-apis/bot/v2/hook/{FEISHU[0]} {FEISHU[1]}"),
])
async def test_a_robots_whole_webhook_url_in_secret_env_delivers(
    platforms: Platforms, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice],
    channel: str, copied: str,
) -> None:
    outlet, _ = platforms.outlet(channel)
    matrix = _load(tmp_path, regions, {"channel": channel, "url": outlet.url}, copied)
    loaded = matrix.outlets[0]
    outcome = await send(loaded, matrix.secret_for("o") or "", render_for(loaded, make_notice()))
    assert outcome.result == "delivered", outcome.error
    assert "https://" not in (matrix.secret_for("o") or "")  # stored as TOKEN[:SECRET], as the redactor reads it


WHSEC = "whsec_" + base64.b64encode(b"k" * 24).decode()


@pytest.mark.parametrize(("channel", "secret", "says"), [
    ("dingtalk", f"{DINGTALK[0]}:0123456789abcdef", "does not start with SEC"),
    ("dingtalk", "https://oapi.dingtalk.com/robot/send?foo=1 SECabc", "without the robot's token"),
    ("dingtalk", "token with spaces:SECabc", "characters a robot token never has"),
    ("wecom", f"{WECOM}:extra", "no signing secret"),
    ("feishu", "https://open.feishu.cn/open-apis/bot/v2/other", "without the robot's token"),
    ("webhook", "s3cret-0123456789", "does not start with whsec_"),
    ("webhook", "whsec_" + base64.b64encode(b"k" * 16).decode(), "decodes to 16 bytes"),
    ("webhook", "whsec_" + base64.b64encode(b"k" * 65).decode(), "decodes to 65 bytes"),
    ("webhook", "whsec_not*base64", "not valid base64"),
])
def test_a_credential_of_the_wrong_shape_is_refused_at_start_up_naming_the_outlet_and_the_shape(
    tmp_path: Path, regions: RegionTable, channel: str, secret: str, says: str
) -> None:
    entry = {"channel": channel} | ({"url": "https://push.example/hook"} if channel == "webhook" else {})
    with pytest.raises(MatrixError) as refused:
        _load(tmp_path, regions, entry, secret)
    message = str(refused.value)
    assert "outlet 'o' field 'secret_env': S " in message and says in message and "expected" in message
    assert secret.split(":")[-1] not in message or len(secret.split(":")[-1]) < 6  # the secret is never shown


@pytest.mark.parametrize("secret", [WHSEC, "whsec_" + base64.b64encode(b"k" * 64).decode()])
def test_a_standard_webhooks_secret_of_24_to_64_bytes_is_taken(
    tmp_path: Path, regions: RegionTable, secret: str
) -> None:
    matrix = _load(tmp_path, regions, {"channel": "webhook", "url": "https://push.example/hook"}, secret)
    assert matrix.secret_for("o") == secret


@pytest.mark.parametrize("channel", ["dingtalk", "wecom"])
def test_a_token_written_in_the_matrix_url_is_still_refused(
    tmp_path: Path, regions: RegionTable, channel: str
) -> None:
    url = {"dingtalk": "https://oapi.dingtalk.com/robot/send?access_token=abc",
           "wecom": "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"}[channel]
    with pytest.raises(MatrixError, match=r"field 'url': the robot's .* belongs in the environment \(secret_env\)"):
        _load(tmp_path, regions, {"channel": channel, "url": url}, "abc")
