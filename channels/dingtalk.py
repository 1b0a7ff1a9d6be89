"""DingTalk custom robot (钉钉自定义机器人): markdown or actionCard, signed, read by errcode.

Facts (DingTalk's 自定义机器人 pages: https://open.dingtalk.com/document/orgapp/custom-robots-send-group-messages
and https://open.dingtalk.com/document/robots/customize-robot-security-settings):
- ``POST https://oapi.dingtalk.com/robot/send?access_token=TOKEN&timestamp=MS&sign=SIGN`` where
  SIGN = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{MS}\\n{secret}"))), MS within 1 h of DingTalk's clock;
- the message is at most 20,000 bytes (we count the whole JSON body in UTF-8 bytes);
- 20 messages a minute per robot, else errcode 130101 and the robot is throttled ~10 minutes;
- HTTP 200 with ``errcode`` != 0 is a failure.

Outlet: ``secret_env`` holds ``ACCESS_TOKEN:SEC…`` (or just the token for an unsigned robot);
``url`` defaults to DingTalk's endpoint; ``options.msgtype`` is ``markdown`` (default) or
``actionCard`` (a 阅读全文 button when the notice has a full-text link).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote_plus

from bot.render import change_word, form_context, markdown_escape, render
from channels.base import NO_OPTIONS, Outcome, RateLimit, Rendered, classify_json, token_and_key
from channels.credentials import robot_token, token_problem
from channels.fit import Form, Limit, cut_to, fit, read_more

if TYPE_CHECKING:
    import httpx

    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt

ENDPOINT = "https://oapi.dingtalk.com/robot/send"
MSGTYPES = ("markdown", "actionCard")


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature, already urlencoded, as the ``sign`` query parameter wants it."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


class DingTalk:
    name: ClassVar[str] = "dingtalk"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit(20, 60),)
    limits: ClassVar[tuple[Limit, ...]] = (Limit(20_000, "bytes"),)
    retry_codes: ClassVar[dict[int, str]] = {130101: "sending too fast: the robot is throttled ~10 minutes"}

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        problems = []
        if not outlet.secret_env:
            problems.append(("secret_env", "a dingtalk outlet needs secret_env naming ACCESS_TOKEN:SEC… (or the token)"))
        if outlet.url and "?" in outlet.url:
            problems.append(("url", "the robot's access_token belongs in the environment (secret_env), not the matrix"))
        if outlet.options.get("msgtype", "markdown") not in MSGTYPES:
            problems.append(("options.msgtype", f"should be one of {', '.join(MSGTYPES)}"))
        return problems

    def read_secret(self, raw: str) -> str:
        """``ACCESS_TOKEN``, ``ACCESS_TOKEN:SEC…`` or the robot's webhook URL (``…/robot/send?access_token=…``),
        optionally followed by a space and the ``SEC…`` signing secret; see channels.credentials."""
        shape = "ACCESS_TOKEN:SEC… or https://oapi.dingtalk.com/robot/send?access_token=… SEC…"
        token, key = robot_token(raw, query="access_token", shape=shape)
        if problem := token_problem(token, shape):
            raise ValueError(problem)
        if key is not None and not key.startswith("SEC"):
            raise ValueError(f"holds a signing secret that does not start with SEC (DingTalk's 加签 secrets do); "
                             f"expected {shape}")
        return f"{token}:{key}" if key else token

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        msgtype = options.get("msgtype", "markdown")
        link = read_more(notice, options)
        buttons = [(title, url) for title, url in (("阅读全文", link), ("确认已转载", receipt and receipt.url)) if url]
        if msgtype == "actionCard" and not buttons:
            msgtype = "markdown"  # a card's button needs somewhere to go
        card = msgtype == "actionCard"

        def markdown(form: Form) -> str:
            # an actionCard shows the receipt as its button, a markdown message as a link line
            shown = None if card else receipt
            return render("dingtalk/markdown.j2", form_context(notice, published_at, form, change, shown))

        def body(form: Form) -> str:
            title = f"{'【提醒】' if receipt and receipt.remind_by else ''}{change_word(change)}{form.title}"
            text = markdown(form)
            message: dict[str, Any] = {"title": title, "text": text}
            if card and len(buttons) == 1:
                message |= {"btnOrientation": "0", "singleTitle": buttons[0][0], "singleURL": buttons[0][1]}
            elif card:
                message |= {"btnOrientation": "1", "btns": [{"title": t, "actionURL": u} for t, u in buttons]}
            return json.dumps({"msgtype": msgtype, msgtype: message}, ensure_ascii=False, separators=(",", ":"))

        text, form = fit(body, notice, self.limits, link)
        return Rendered(text=markdown(form), body=text.encode(), cut=form.cut)

    def render_alert(self, title: str, text: str, now: datetime) -> Rendered:
        """An operator alert as markdown, cut to fit the 20,000 bytes."""

        def body(cut_text: str) -> str:
            markdown = f"#### {markdown_escape(title)}\n\n" + markdown_escape(cut_text).replace("\n", "\n\n")
            message = {"title": title, "text": markdown}
            return json.dumps({"msgtype": "markdown", "markdown": message}, ensure_ascii=False, separators=(",", ":"))

        return Rendered(text=f"{title}\n{text}", body=body(cut_to(text, self.limits, body)).encode())

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request:
        import httpx  # not at the top: see channels/__init__.py

        token, key = token_and_key(secret)
        url = f"{outlet.url or ENDPOINT}?access_token={quote_plus(token)}"
        if key:
            timestamp = int(now.timestamp() * 1000)
            url += f"&timestamp={timestamp}&sign={sign(key, timestamp)}"
        return httpx.Request("POST", url, content=rendered.body,
                             headers={"content-type": "application/json; charset=utf-8", "user-agent": "debunkbot/0.1"})

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome:
        outcome = classify_json(status, headers, body, retry=self.retry_codes)
        if outcome.code == 130101:
            return replace(outcome, retry_after=max(outcome.retry_after or 0, 600))
        return outcome
