"""``debunkbot render REF --outlet ID`` shows what each channel would send."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from bot.cli import app
from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.store import Store

OUTLETS = [
    {"id": "city-hualong", "channel": "webhook", "url": "https://push.cqnews.example/debunk", "secret_env": "S1"},
    {"id": "dist-yuzhong", "channel": "dingtalk", "secret_env": "S2", "options": {"msgtype": "actionCard",
                                                                     "read_more_url": "https://piyao.cq.example/{ref}"}},
    {"id": "dist-nanan", "channel": "wecom", "secret_env": "S3"},
    {"id": "n-group", "channel": "feishu", "secret_env": "S4"},
    {"id": "n-lark", "channel": "lark", "secret_env": "S4"},
    {"id": "n-weibo", "channel": "weibo", "secret_env": "S5", "options": {"read_more_url": "https://piyao.cq.example/{ref}",
                                                                  "rip": "203.0.113.10"}},
    {"id": "n-wechat", "channel": "wechat_mp", "secret_env": "S6", "options": {"appid": "wx1", "thumb_media_id": "t"}},
    {"id": "n-feed", "channel": "feed"},
]
ENV = {"S1": "whsec_" + "A" * 32, "S2": "tok:SECx", "S3": "key", "S4": "hook:sec", "S5": "tok", "S6": "appsecret"}
SHOWS = {"webhook": '"notice.published"', "dingtalk": '"actionCard"', "wecom": '"markdown"', "feishu": '"post"',
         "lark": '"post"', "weibo": "阅读全文：https://piyao.cq.example/cq-test-001", "wechat_mp": '"content_source_url"',
         "feed": '"date_published"'}


@pytest.fixture
def previews(tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]) -> Callable[[str], str]:
    path = tmp_path / "outlets.yaml"
    entries = [{"name": o["id"], "tier": "other"} | o for o in OUTLETS]
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True))
    matrix = load_matrix(path, regions, environ=ENV)
    store = Store.open(f"sqlite:///{tmp_path / 'bot.sqlite3'}")
    store.queue.add_notices([(make_notice(title="网传“长江水位暴涨”系谣言 *x* @all"), matrix.outlets)], source="test")
    store.close()
    env = ENV | {"DEBUNKBOT_OUTLETS": str(path), "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}",
                 "COLUMNS": "200"}

    def preview(outlet: str) -> str:
        result = CliRunner().invoke(app, ["render", "cq-test-001", "--outlet", outlet], env=env)
        assert result.exit_code == 0, result.output
        return result.output

    return preview


@pytest.mark.parametrize("outlet", [o["id"] for o in OUTLETS])
def test_render_previews_each_channels_text_and_body(previews: Callable[[str], str], outlet: str) -> None:
    channel = next(o["channel"] for o in OUTLETS if o["id"] == outlet)
    output = previews(outlet)
    assert f"· {channel}" in output and "长江水位暴涨" in output and SHOWS[channel] in output



@pytest.mark.parametrize(("outlet", "secret"), [
    ("dist-yuzhong", "dt-token-7f3a:NOTSEC-signing-secret-91b2"),  # a DingTalk secret not starting with SEC
    ("dist-yuzhong", "https://oapi.dingtalk.com/robot/send?access_token=dt-token-7f3a NOTSEC-signing-secret-91b2"),
    ("city-hualong", "whsec_c2hvcnQtc2VjcmV0LTkxYjI="),  # decodes to 17 bytes
])
def test_a_preview_refused_for_a_bad_credential_names_the_outlet_but_never_shows_the_secret(
    tmp_path: Path, outlet: str, secret: str
) -> None:
    """The preview loads the matrix, secrets included: its refusal is where a secret could leak."""
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"name": o["id"], "tier": "other"} | o for o in OUTLETS]},
                                   allow_unicode=True))
    env = ENV | {"S1" if outlet == "city-hualong" else "S2": secret, "DEBUNKBOT_OUTLETS": str(path),
                 "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}", "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["render", "cq-test-001", "--outlet", outlet], env=env)
    assert result.exit_code == 2 and f"outlet {outlet!r} field 'secret_env'" in " ".join(result.output.split())
    for part in ("dt-token-7f3a", "NOTSEC-signing-secret-91b2", "c2hvcnQtc2VjcmV0LTkxYjI"):
        assert part not in result.output
