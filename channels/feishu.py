"""Feishu custom bot (飞书自定义机器人), and Lark (the same bot on larksuite.com): post or card, signed in the body.

Facts (Feishu's 自定义机器人使用指南, https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot; Lark's
at https://open.larksuite.com):
- ``POST https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN`` (Lark: ``open.larksuite.com``);
- signed bots put ``timestamp`` (seconds, within 1 h) and ``sign`` = base64(HMAC-SHA256(
  key=f"{timestamp}\\n{secret}", msg=b"")) in the JSON body; the key and message are DingTalk's the other way round;
- the request body is at most 20 KB (we count the whole signed body, as UTF-8 bytes, against 20,000);
- 100 a minute and 5 a second per bot; ``code`` 11232 is rate-limited (retry), any other non-zero ``code`` fails.

Outlet: ``secret_env`` holds ``HOOK_TOKEN:SIGNING_SECRET`` (or just the token for an unsigned bot);
``url`` defaults to the platform's hook prefix; ``options.msg_type`` is ``post`` (default) or ``interactive``.
Editor text goes in plain-text elements only, which Feishu never parses as markup or mentions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

from bot.render import change_word, form_context, render
from channels.base import NO_OPTIONS, Outcome, RateLimit, Rendered, classify_json, token_and_key
from channels.credentials import robot_token, token_problem
from channels.fit import Form, Limit, cut_to, fit, read_more

if TYPE_CHECKING:
    import httpx

    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt

MSG_TYPES = ("post", "interactive")
# The signature's size, so a body is measured exactly as it will be sent (10-digit seconds, 44-char base64).
SIGNATURE_PLACEHOLDER = {"timestamp": "0" * 10, "sign": "0" * 44}


def sign(secret: str, timestamp: int) -> str:
    """Feishu's signature: the HMAC key is ``timestamp\\nsecret`` and the message is empty."""
    return base64.b64encode(hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()).decode()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Feishu:
    name: ClassVar[str] = "feishu"
    endpoint: ClassVar[str] = "https://open.feishu.cn/open-apis/bot/v2/hook/"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit(5, 1), RateLimit(100, 60))
    limits: ClassVar[tuple[Limit, ...]] = (Limit(20_000, "bytes"),)
    retry_codes: ClassVar[dict[int, str]] = {11232: "rate-limited"}

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        problems = []
        if not outlet.secret_env:
            problems.append(("secret_env", f"a {self.name} outlet needs secret_env naming HOOK_TOKEN:SIGNING_SECRET"))
        if outlet.url and not outlet.url.endswith("/"):
            problems.append(("url", "give the hook prefix ending in '/'; the hook token belongs in the environment"))
        if outlet.options.get("msg_type", "post") not in MSG_TYPES:
            problems.append(("options.msg_type", f"should be one of {', '.join(MSG_TYPES)}"))
        return problems

    def read_secret(self, raw: str) -> str:
        """``HOOK_TOKEN:SIGNING_SECRET``, the token alone, or the bot's webhook URL (``…/open-apis/bot/v2/hook/TOKEN``)
        optionally followed by a space and the signing secret; see channels.credentials."""
        shape = "HOOK_TOKEN:SIGNING_SECRET or https://open.feishu.cn/open-apis/bot/v2/hook/TOKEN SIGNING_SECRET"
        token, key = robot_token(raw, path_after="/hook/", shape=shape)
        if problem := token_problem(token, shape):
            raise ValueError(problem)
        return f"{token}:{key}" if key else token

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        link = read_more(notice, options)
        msg_type = options.get("msg_type", "post")

        def text(form: Form) -> str:
            return render("feishu/post.j2", form_context(notice, published_at, form, change, receipt))

        def message(form: Form) -> dict[str, Any]:
            title = (("【提醒】" if receipt and receipt.remind_by else "") + ("【紧急】" if notice.urgency.value == "urgent" else "")
                     + f"{change_word(change)}{form.title}")
            if msg_type == "post":
                paragraphs: list[list[dict[str, str]]] = [[{"tag": "text", "text": line}] for line in text(form).split("\n")]
                if form.read_more and (form.cut or not form.sources):
                    paragraphs.append([{"tag": "a", "text": "阅读全文", "href": form.read_more}])
                if receipt is not None:
                    paragraphs.append([{"tag": "a", "text": "确认已转载", "href": receipt.url}])
                return {"msg_type": "post", "content": {"post": {"zh_cn": {"title": title, "content": paragraphs}}}}
            elements: list[dict[str, Any]] = [{"tag": "div", "text": {"tag": "plain_text", "content": text(form)}}]
            actions = [{"tag": "button", "type": kind, "url": url, "text": {"tag": "plain_text", "content": label}}
                       for label, url, kind in (("阅读全文", form.read_more, "primary"),
                                                ("确认已转载", receipt and receipt.url, "default")) if url]
            if actions:
                elements.append({"tag": "action", "actions": actions})
            header = {"template": "red", "title": {"tag": "plain_text", "content": title}}
            return {"msg_type": "interactive", "card": {"header": header, "elements": elements}}

        _, form = fit(lambda f: _dumps(SIGNATURE_PLACEHOLDER | message(f)), notice, self.limits, link)
        return Rendered(text=text(form), body=_dumps(message(form)).encode(), cut=form.cut)

    def render_alert(self, title: str, text: str, now: datetime) -> Rendered:
        """An operator alert as a post, cut to fit the body limit (signature included)."""

        def message(cut_text: str) -> dict[str, Any]:
            paragraphs = [[{"tag": "text", "text": line}] for line in cut_text.split("\n")]
            return {"msg_type": "post", "content": {"post": {"zh_cn": {"title": title, "content": paragraphs}}}}

        fitted = cut_to(text, self.limits, lambda t: _dumps(SIGNATURE_PLACEHOLDER | message(t)))
        return Rendered(text=f"{title}\n{fitted}", body=_dumps(message(fitted)).encode())

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request:
        import httpx  # not at the top: see channels/__init__.py

        token, key = token_and_key(secret)
        body = rendered.body
        if key:
            timestamp = int(now.timestamp())
            body = _dumps({"timestamp": str(timestamp), "sign": sign(key, timestamp)} | json.loads(body)).encode()
        return httpx.Request("POST", (outlet.url or self.endpoint) + quote(token, safe=""), content=body,
                             headers={"content-type": "application/json; charset=utf-8", "user-agent": "debunkbot/0.1"})

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome:
        return classify_json(status, headers, body, code_keys=("code", "StatusCode"), retry=self.retry_codes)


class Lark(Feishu):
    """The same custom bot on Lark, Feishu's international edition."""

    name: ClassVar[str] = "lark"
    endpoint: ClassVar[str] = "https://open.larksuite.com/open-apis/bot/v2/hook/"
