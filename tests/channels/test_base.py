"""The channel protocol: every registered channel is exactly one kind, and the registry is passed in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.outlets import MatrixError, load_matrix
from bot.regions import RegionTable
from channels import CHANNELS, AlertChannel, Exchanging, Pulling, Pushing


def test_every_channel_is_pushing_exchanging_or_pulling_and_only_feeds_pull() -> None:
    kinds = {name: [isinstance(c, Exchanging), isinstance(c, Pushing) and not isinstance(c, Exchanging),
                    isinstance(c, Pulling)] for name, c in CHANNELS.items()}
    assert all(sum(k) == 1 for k in kinds.values()), kinds
    assert [n for n, k in kinds.items() if k[2]] == ["feed"]
    assert [n for n, k in kinds.items() if k[0]] == ["wechat_mp"]
    assert not hasattr(CHANNELS["feed"], "build") and not hasattr(CHANNELS["feed"], "classify")
    assert {n for n, c in CHANNELS.items() if isinstance(c, AlertChannel)} == {
        "webhook", "dingtalk", "wecom", "feishu", "lark"}


def test_the_channels_import_nothing_of_the_outlet_matrix() -> None:
    # the circle was: channels imported RateLimit from bot.outlets, which imports the channel registry
    code = "import sys, channels; print('bot.outlets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "False"


def test_the_matrix_is_checked_against_the_registry_it_is_given(tmp_path: Path, regions: RegionTable) -> None:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [
        {"id": "f", "name": "订阅", "tier": "other", "channel": "feed"}]}, allow_unicode=True), encoding="utf-8")
    assert load_matrix(path, regions, environ={}).channels is CHANNELS
    only_webhooks = {"webhook": CHANNELS["webhook"]}
    with pytest.raises(MatrixError, match="unknown channel 'feed'; known: webhook"):
        load_matrix(path, regions, environ={}, channels=only_webhooks)
