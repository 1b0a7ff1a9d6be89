"""A loopback WeCom: group robots that enforce length and rate as WeCom documents.

- ``POST /cgi-bin/webhook/send?key=K``; an unknown key answers errcode 93000 (invalid webhook url);
- markdown ``content`` over 4,096 bytes, or a news article with a title over 128 bytes or a description
  over 512 bytes, answers 40058 inside an HTTP 200;
- more than 20 a minute answers 45009.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from bot.testing.platform import LoopbackPlatform, Received, Window


class WeComRobots(LoopbackPlatform):
    def __init__(
        self, keys: set[str], *, per_minute: int = 20, window: float = 60.0, script: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__(script)
        self.keys = keys
        self.window = Window(per_minute, window)

    @property
    def url(self) -> str:
        return f"{self.base}/cgi-bin/webhook/send"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/cgi-bin/webhook/send", self._send)

    def _answer(self, key: str, errcode: int, errmsg: str, status: int = 200) -> web.Response:
        if errcode:
            self.refused.append((key, errcode))
        return web.json_response({"errcode": errcode, "errmsg": errmsg}, status=status)

    async def _send(self, request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        step = self.scripted(key)
        if step is not None and step < 1000:
            return self._answer(key, -1, "scripted", status=step)
        if key not in self.keys:
            return self._answer(key, 93000, "invalid webhook url")
        try:
            payload: Any = json.loads(await request.read())
            msgtype = payload["msgtype"]
            if msgtype == "markdown":
                too_long = len(payload["markdown"]["content"].encode()) > 4096
            elif msgtype == "news":
                (article,) = payload["news"]["articles"]
                too_long = len(article["title"].encode()) > 128 or len(article.get("description", "").encode()) > 512
                assert article["url"]
            else:
                raise KeyError(msgtype)
        except (ValueError, KeyError, TypeError, AssertionError):
            return self._answer(key, 40008, "invalid message type")
        if too_long:
            return self._answer(key, 40058, "content exceed max length")
        if not self.window.admit(key):
            return self._answer(key, 45009, "api freq out of limit")
        if step is not None:
            return self._answer(key, step, "scripted")
        self.received.append(Received(key, payload, time.monotonic()))
        return self._answer(key, 0, "ok")
