"""WeCom group robot (企业微信群机器人): markdown or news, read by errcode.

Facts (WeCom's 群机器人配置说明, https://developer.work.weixin.qq.com/document/path/91770):
- ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY``; the key is the only credential,
  so it lives in the environment (``secret_env``) and the URL is never logged;
- markdown ``content`` at most 4,096 UTF-8 bytes; news: one article, title at most 128 bytes,
  description at most 512 bytes, with a url;
- 20 messages a minute per robot; errcode 45009 is the frequency limit (retry later);
- errcode 40058 (content too long) is permanent for that body: we render shorter up front instead.

Outlet: ``options.msgtype`` is ``markdown`` (default) or ``news`` (needs a full-text link; the
notice's first source or ``options.read_more_url``, else markdown is sent).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote_plus

from bot.render import change_word, form_context, markdown_escape, render
from channels.base import NO_OPTIONS, Outcome, RateLimit, Rendered, classify_json
from channels.credentials import robot_token, token_problem
from channels.fit import Form, Limit, cut_to, fit, read_more

if TYPE_CHECKING:
    import httpx

    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt

ENDPOINT = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
MSGTYPES = ("markdown", "news")
NEWS_TITLE = Limit(128, "bytes")


class WeCom:
    name: ClassVar[str] = "wecom"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit(20, 60),)
    limits: ClassVar[dict[str, tuple[Limit, ...]]] = {
        "markdown": (Limit(4096, "bytes"),),
        "news": (Limit(512, "bytes"),),  # the description
    }
    retry_codes: ClassVar[dict[int, str]] = {45009: "API frequency limit"}

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        problems = []
        if not outlet.secret_env:
            problems.append(("secret_env", "a wecom outlet needs secret_env naming the robot's key"))
        if outlet.url and "?" in outlet.url:
            problems.append(("url", "the robot's key belongs in the environment (secret_env), not the matrix"))
        if outlet.options.get("msgtype", "markdown") not in MSGTYPES:
            problems.append(("options.msgtype", f"should be one of {', '.join(MSGTYPES)}"))
        return problems

    def read_secret(self, raw: str) -> str:
        """The robot's key, or its webhook URL (``…/cgi-bin/webhook/send?key=…``); see channels.credentials."""
        shape = "the robot's key, or https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…"
        key, extra = robot_token(raw, query="key", shape=shape)
        if problem := token_problem(key, shape):
            raise ValueError(problem)
        if extra:
            raise ValueError(f"holds more than the key (WeCom robots have no signing secret); expected {shape}")
        return key

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        link = read_more(notice, options)
        msgtype = options.get("msgtype", "markdown") if link else "markdown"
        template = f"wecom/{msgtype}.j2"
        if msgtype == "news" and receipt is not None:
            link = receipt.url  # a news card has one link: the receipt page, which shows the notice and its sources

        def content(form: Form) -> str:
            return render(template, form_context(notice, published_at, form, change, receipt))

        text, form = fit(content, notice, self.limits[msgtype], link)
        if msgtype == "markdown":
            body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"content": text}}
        else:
            word = f"{'【提醒】' if receipt and receipt.remind_by else ''}{change_word(change)}"
            title = cut_to(f"{word}{notice.title}", (NEWS_TITLE,))
            body = {"msgtype": "news", "news": {"articles": [{"title": title, "description": text, "url": link}]}}
        return Rendered(text=text, body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(),
                        cut=form.cut)

    def render_alert(self, title: str, text: str, now: datetime) -> Rendered:
        """An operator alert as markdown, cut to fit the 4,096 bytes."""

        def content(body: str) -> str:
            return f"### {markdown_escape(title)}\n{markdown_escape(body)}"

        fitted = content(cut_to(text, self.limits["markdown"], content))
        body = {"msgtype": "markdown", "markdown": {"content": fitted}}
        return Rendered(text=fitted, body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request:
        import httpx  # not at the top: see channels/__init__.py

        url = f"{outlet.url or ENDPOINT}?key={quote_plus(secret or '')}"
        return httpx.Request("POST", url, content=rendered.body,
                             headers={"content-type": "application/json; charset=utf-8", "user-agent": "debunkbot/0.1"})

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome:
        outcome = classify_json(status, headers, body, retry=self.retry_codes)
        if outcome.code == 40058:
            return replace(outcome, result="failed",
                           error=f"{outcome.error} (too long: this body is never retried; render shorter)")
        return outcome
