"""The daemon's log: no credential anywhere in what it writes, one line per thing that happened, ISO times."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from bot.logs import PROCESS_NAME_ENV, Redactor, setup_logging
from bot.processes import default_processes
from bot.testing import DingTalkRobots, WebhookOutlets, WeChatMPAPI, WeComRobots
from tests.conftest import notice_data, whsec

DINGTALK = ("dt9f8e7d6c5b4a", "SECfedcba9876543210fedcba9876543210")
WECOM = "5b1c0e3a-4d2f-4e6b-9a8c-7f6e5d4c3b2a"
WECHAT = ("wx0fedcba987654321", "wechat-app-secret-9876543210")
THUMB = "thumb-media-0002"


def logged(secrets: list[str], emit: object) -> str:
    out = io.StringIO()
    handler = setup_logging(verbose=True, secrets=secrets, stream=out)
    try:
        emit()  # type: ignore[operator]
    finally:
        logging.getLogger().removeHandler(handler)
    return out.getvalue()


def test_credentials_are_redacted_in_messages_library_lines_and_tracebacks() -> None:
    key = whsec()
    dingtalk_url = (f"http://127.0.0.1:1/robot/send?access_token={DINGTALK[0]}&timestamp=1764300000000"
                    "&sign=kq3%2BZ0xq8yq7Yl9hF3lGxq%2F4u0Hn3q1bXQ0oJk1g%3D")

    def emit() -> None:
        logging.getLogger("httpx").warning("HTTP Request: POST %s \"HTTP/1.1 200 OK\"", dingtalk_url)
        logging.getLogger("debunkbot").info("wecom at https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=%s", WECOM)
        logging.getLogger("debunkbot").info('feishu body {"timestamp": "1764300000", "sign": "c2lnbmF0dXJlLXZhbHVl"}')
        logging.getLogger("debunkbot").info("store at postgresql+psycopg://bot:hunter2-pass@db:5432/bot")
        try:
            raise RuntimeError(f"draft/add?access_token=ACCESS-TOKEN-123456 failed with {key} and {WECHAT[1]}")
        except RuntimeError:
            logging.getLogger("debunkbot").exception("send failed")

    text = logged([":".join(DINGTALK), WECOM, WECHAT[1], key], emit)
    for secret in (*DINGTALK, WECOM, WECHAT[1], key, key.removeprefix("whsec_"), "ACCESS-TOKEN-123456",
                   "kq3%2BZ0xq8", "c2lnbmF0dXJlLXZhbHVl", "hunter2-pass"):
        assert secret not in text, f"{secret!r} in the log:\n{text}"
    assert "Traceback (most recent call last)" in text and "RuntimeError" in text  # the traceback stays, redacted
    assert "access_token=[redacted]" in text and "sign=[redacted]" in text


def test_a_log_that_is_not_a_terminal_gets_one_unwrapped_line_per_record_with_an_iso_time_and_zone() -> None:
    long = "outlet " + "测试融媒体中心" * 40
    text = logged([], lambda: logging.getLogger("debunkbot").warning("%s", long))
    (line,) = text.splitlines()
    assert line.endswith(long)
    stamp = line.split(" ", 1)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", stamp), stamp


def test_a_secret_learned_from_a_reloaded_matrix_is_redacted_and_the_old_ones_still_are() -> None:
    redactor = Redactor(["SECold0123456789"])
    redactor.learn(["TOKENnew:SECnew0123456789"])
    assert redactor.redact("SECold0123456789 TOKENnew SECnew0123456789") == "[secret] [secret] [secret]"


def test_short_or_empty_secrets_do_not_redact_ordinary_words() -> None:
    assert Redactor(["", None, "abc"]).redact("abc delivered") == "abc delivered"


async def daemon_output(tmp_path: Path, *args: str, **settings: str) -> tuple[str, str, set[str]]:
    """Run `python -m bot run --until-idle` against four real loopback platforms (one failing once, one for good):
    its stdout, its stderr, and every credential it held (the platforms' and the WeChat tokens it was given)."""
    key = whsec()
    async with (
        DingTalkRobots({DINGTALK[0]: DINGTALK[1]}) as dingtalk,
        WeComRobots({WECOM}, script={WECOM: [503]}) as wecom,  # one failed try, logged with its reason
        WeChatMPAPI({WECHAT[0]: WECHAT[1]}, {THUMB}) as wechat,
        WebhookOutlets({"hook": key}, script={"hook": [400]}) as webhook,  # fails for good, logged
    ):
        entries = [
            {"id": "dt", "name": "钉钉群", "tier": "city", "region": "全市", "channel": "dingtalk",
             "url": dingtalk.url, "secret_env": "S_DT"},
            {"id": "wc", "name": "企业微信群", "tier": "city", "region": "全市", "channel": "wecom",
             "url": wecom.url, "secret_env": "S_WC"},
            {"id": "mp", "name": "公众号", "tier": "city", "region": "全市", "channel": "wechat_mp",
             "url": wechat.url, "secret_env": "S_MP", "options": {"appid": WECHAT[0], "thumb_media_id": THUMB}},
            {"id": "hook", "name": "融媒体中心", "tier": "district", "region": "全市", "channel": "webhook",
             "url": webhook.url("hook"), "secret_env": "S_HOOK"},
        ]
        (tmp_path / "outlets.yaml").write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), "utf-8")
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        (inbox / "n.yaml").write_text(yaml.safe_dump(notice_data(ref="cq-log-001"), allow_unicode=True), "utf-8")
        env = os.environ | {
            "S_DT": ":".join(DINGTALK), "S_WC": WECOM, "S_MP": WECHAT[1], "S_HOOK": key,
            "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}",
            "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"), "DEBUNKBOT_INBOX": str(inbox),
            "DEBUNKBOT_SCAN_INTERVAL": "0.2", "DEBUNKBOT_RETRY_SCHEDULE": "0.1", "DEBUNKBOT_RETRY_JITTER": "0",
        } | {f"DEBUNKBOT_{name.upper()}": value for name, value in settings.items()}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", "--until-idle", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, out.decode() + err.decode()
        tokens = {*wechat.tokens, *wechat.current.values()}
        assert wechat.drafts, "the WeChat outlet got its draft (so a token was used in a URL)"
    return out.decode(), err.decode(), {*DINGTALK, WECOM, WECHAT[1], key, key.removeprefix("whsec_"), *tokens}


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "-v"])
async def test_nothing_the_daemon_writes_contains_a_credential_of_any_channel(tmp_path: Path, verbose: bool) -> None:
    out, err, secrets = await daemon_output(tmp_path, *(["-v"] if verbose else []))
    text = out + err

    for secret in secrets:
        assert secret not in text, f"{secret!r} in the daemon's output:\n{text}"
    assert "sign=" not in text.replace("sign=[redacted]", "")
    assert "HTTP Request" not in text, "httpx's per-request lines are silenced"
    lines = text.splitlines()
    assert [line for line in lines if "cq-log-001 fanned out to 4 outlet(s)" in line]
    assert [line for line in lines if "cq-log-001 to wc: attempt 1 failed: HTTP 503" in line]
    assert [line for line in lines if "cq-log-001 to hook: delivery failed after 1 attempt(s): HTTP 400" in line]
    delivered = [line for line in lines if ": attempt" in line and "delivered" in line]
    assert len(delivered) == (3 if verbose else 0), "-v adds one line per attempt"
    # -v: each process says once that its start-up is built and the garbage collector runs again (bot.cli)
    settled = [line for line in lines if "start-up done:" in line and "garbage collector" in line]
    leader = [line for line in settled if "debunkbot: start-up done" in line]
    assert (len(leader), len(settled)) == ((1, default_processes()) if verbose else (0, 0)), settled
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d ", line) for line in lines), text


async def test_with_log_format_json_every_line_is_an_object_and_attempts_carry_their_fields(tmp_path: Path) -> None:
    out, err, secrets = await daemon_output(tmp_path, "-v", log_format="json")

    records = [json.loads(line) for line in err.splitlines()]  # every line parses, or this fails on it
    assert records and out == ""
    for secret in secrets:  # neither in the text nor in any decoded field
        assert secret not in err and all(secret not in json.dumps(r, ensure_ascii=False) for r in records), secret
    assert all(r.keys() >= {"time", "level", "logger", "message"} for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", r["time"]) for r in records)
    tries = [r for r in records if "attempt" in r]
    by_try = {(r["outlet_id"], r["attempt"]): r for r in tries}
    assert set(by_try) == {("dt", 1), ("wc", 1), ("wc", 2), ("mp", 1), ("hook", 1)}
    for r in tries:
        assert r["notice_ref"] == "cq-log-001" and r["trigger"] == "scheduled"
        assert isinstance(r["delivery_id"], int) and isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0
    assert (by_try["wc", 1]["outcome"], by_try["wc", 1]["http_status"], by_try["wc", 1]["level"]) == (
        "retry", 503, "WARNING")
    assert (by_try["hook", 1]["outcome"], by_try["hook", 1]["http_status"]) == ("failed", 400)
    assert by_try["wc", 1]["delivery_id"] == by_try["wc", 2]["delivery_id"] != by_try["dt", 1]["delivery_id"]
    (fanned,) = [r for r in records if "fanned out" in r["message"]]
    assert fanned["notice_ref"] == "cq-log-001" and fanned["duration_ms"] > 0


def test_a_secret_in_a_structured_field_is_redacted_like_the_message() -> None:
    url = f"https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key={WECOM}"
    out = io.StringIO()
    handler = setup_logging(verbose=True, secrets=[WECHAT[1]], stream=out, log_format="json")
    try:
        logging.getLogger("debunkbot").warning("posting", extra={"outlet_id": url, "reason": {"answer": WECHAT[1]}})
    finally:
        logging.getLogger().removeHandler(handler)
    (record,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert WECOM not in out.getvalue() and WECHAT[1] not in out.getvalue()
    assert record["outlet_id"].endswith("key=[redacted]") and "[secret]" in record["reason"]


async def test_an_unknown_log_format_is_refused_at_start_naming_the_setting(tmp_path: Path) -> None:
    from tests.test_cli import debunkbot

    code, _, err = await debunkbot({"DEBUNKBOT_LOG_FORMAT": "xml",
                                    "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}"},
                                   "run", "--until-idle")
    assert code == 2
    assert "bad setting" in err and "log_format" in err and "'text' or 'json'" in err


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_named_process_says_whose_line_it_is_in_either_format(
    monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    # `run --processes N` names its send-only processes: they share the leading process's stderr
    monkeypatch.setenv(PROCESS_NAME_ENV, "send-only process 2")
    out = io.StringIO()
    handler = setup_logging(verbose=False, stream=out, log_format=log_format)
    try:
        logging.getLogger("debunkbot").info("stopped (%s)", "vm-1-ab")
    finally:
        logging.getLogger().removeHandler(handler)
    line = out.getvalue().strip()
    if log_format == "json":
        record = json.loads(line)
        assert (record["process_name"], record["message"]) == ("send-only process 2", "stopped (vm-1-ab)")
    else:
        assert line.endswith(" INFO debunkbot [send-only process 2]: stopped (vm-1-ab)")
