"""No credential reaches the delivery log: real sends, with the query strings the channels really build, to a
leaky outlet that echoes the request (its target, query included, and headers) back in its answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

import pytest
import yaml

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import ChaosOutlets
from bot.testing.chaos import ECHO
from tests.channels.conftest import DINGTALK, FEISHU, WECOM

CASES = {  # channel -> (secret as the environment holds it, the credentials that must not show)
    "dingtalk": (":".join(DINGTALK), list(DINGTALK)),
    "dingtalk-url": (f"https://oapi.dingtalk.com/robot/send?access_token={DINGTALK[0]} {DINGTALK[1]}", list(DINGTALK)),
    "wecom": (WECOM, [WECOM]),
    "feishu": (":".join(FEISHU), list(FEISHU)),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_tokens_keys_and_signatures_never_reach_the_delivery_log(
    tmp_path: Path, store: Store, regions: RegionTable, make_notice: Callable[..., Notice], case: str
) -> None:
    channel = case.removesuffix("-url")
    secret, credentials = CASES[case]
    async with ChaosOutlets(script={"o": [ECHO], FEISHU[0]: [ECHO]}) as chaos:
        url = chaos.url("o") + ("/" if channel == "feishu" else "")  # feishu: the hook prefix; the token follows
        path = tmp_path / "outlets.yaml"
        path.write_text(yaml.safe_dump({"outlets": [{"id": "o", "name": "机器人", "tier": "district",
                                                     "channel": channel, "url": url, "secret_env": "S"}]}))
        matrix = load_matrix(path, regions, environ={"S": secret})
        store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
        settings = Settings(database_url=str(store.engine.url), retry_schedule="0.01", retry_jitter=0,
                            http_timeout=5, scan_interval=0.05)
        async with make_sender(settings) as client:
            dispatcher = Dispatcher(store, matrix, settings, client)
            await dispatcher.run(until_idle=True)
            await dispatcher.close()
    (first, *_) = chaos.requests
    sent = parse_qs(urlsplit(first.path).query)
    signature = sent.get("sign", [])  # DingTalk's timestamp=…&sign=…
    assert (channel == "dingtalk") == bool(signature)
    if channel == "feishu":  # Feishu signs in the body, which the outlet echoes too
        signature = [json.loads(first.body)["sign"]]
    echoed = store.log.attempts()[0]["response"]
    assert "path" in echoed  # the outlet did echo the request back
    stored = json.dumps([store.log.attempts(), store.log.deliveries()], default=str, ensure_ascii=False)
    for leak in [*credentials, *signature]:
        for form in {leak, quote_plus(leak), quote(leak), quote(leak, safe=""), json.dumps(leak)[1:-1]}:
            assert form not in stored, f"{leak[:4]}… in the delivery log"
    assert [unquote(v) for v in re.findall(r"sign=([^&\"\s]+)", stored) if unquote(v) in signature] == []
