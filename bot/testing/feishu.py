"""A loopback Feishu (or Lark): custom bots that check the signature in the body, size and rate.

- ``POST /open-apis/bot/v2/hook/{token}``; an unknown token answers code 19001;
- a signed bot wants ``timestamp`` (seconds) within 1 hour and ``sign`` = base64(HMAC-SHA256(
  key=f"{timestamp}\\n{secret}", msg=b"")), else code 19021;
- a body over 20 KB answers 9499; more than 5 a second or 100 a minute answers 11232.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from bot.testing.platform import LoopbackPlatform, Received, Window


class FeishuBots(LoopbackPlatform):
    def __init__(
        self, bots: dict[str, str | None], *, per_second: int = 5, per_minute: int = 100,
        script: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__(script)
        self.bots = bots  # hook token -> signing secret (None: unsigned)
        self.windows = (Window(per_second, 1.0), Window(per_minute, 60.0))

    @property
    def url(self) -> str:
        return f"{self.base}/open-apis/bot/v2/hook/"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/open-apis/bot/v2/hook/{token}", self._send)

    def _answer(self, token: str, code: int, msg: str, status: int = 200) -> web.Response:
        if code:
            self.refused.append((token, code))
        return web.json_response({"code": code, "data": {}, "msg": msg}, status=status)

    async def _send(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        body = await request.read()
        step = self.scripted(token)
        if step is not None and step < 1000:
            return self._answer(token, -1, "scripted", status=step)
        if token not in self.bots:
            return self._answer(token, 19001, "param invalid: incoming webhook access token invalid")
        if len(body) > 20 * 1024:
            return self._answer(token, 9499, "Bad Request: body over 20 KB")
        try:
            payload: Any = json.loads(body)
            assert payload["msg_type"] in ("text", "post", "interactive")
        except (ValueError, KeyError, TypeError, AssertionError):
            return self._answer(token, 9499, "Bad Request")
        secret = self.bots[token]
        if secret is not None:
            timestamp, signature = str(payload.get("timestamp", "")), str(payload.get("sign", ""))
            expected = base64.b64encode(hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest())
            if (not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 3600
                    or not hmac.compare_digest(signature.encode(), expected)):
                return self._answer(token, 19021, "sign match fail or timestamp is not within one hour from current time")
        if not all(window.admit(token) for window in self.windows):
            return self._answer(token, 11232, "frequency limited")
        if step is not None:
            return self._answer(token, step, "scripted")
        self.received.append(Received(token, payload, time.monotonic()))
        return self._answer(token, 0, "success")
