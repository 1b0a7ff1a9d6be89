"""A loopback DingTalk: custom robots that check signatures, length and rate as DingTalk documents.

- ``POST /robot/send?access_token=T[&timestamp=MS&sign=S]``; an unknown token answers errcode 300001;
- a signed robot wants MS within 1 hour of its clock and S = base64(HMAC-SHA256(secret, f"{MS}\\n{secret}"))
  (sent urlencoded), else errcode 310000;
- a body over 20,000 bytes answers 460101; markdown/actionCard without title or text answer 40035;
- more than 20 a minute answers 130101 and throttles the robot (``throttle`` seconds; DingTalk: ~10 min).

    >>> async with DingTalkRobots({"tok": "SECabc"}) as dingtalk:          # doctest: +SKIP
    ...     dingtalk.url  # the outlet's url; its secret is "tok:SECabc"
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from aiohttp import web

from bot.testing.platform import LoopbackPlatform, Received, Window, now_ms


class DingTalkRobots(LoopbackPlatform):
    def __init__(
        self, robots: dict[str, str | None], *, per_minute: int = 20, window: float = 60.0, throttle: float = 600.0,
        max_bytes: int = 20_000, script: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__(script)
        self.robots = robots  # access_token -> SEC signing secret (None: a keyword/IP robot, unsigned)
        self.window = Window(per_minute, window, throttle)
        self.max_bytes = max_bytes

    @property
    def url(self) -> str:
        return f"{self.base}/robot/send"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/robot/send", self._send)

    def _answer(self, token: str, errcode: int, errmsg: str, status: int = 200) -> web.Response:
        if errcode:
            self.refused.append((token, errcode))
        return web.json_response({"errcode": errcode, "errmsg": errmsg}, status=status)

    async def _send(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        body = await request.read()
        step = self.scripted(token)
        if step is not None and step < 1000:
            return self._answer(token, -1, "scripted", status=step)
        if token not in self.robots:
            return self._answer(token, 300001, "token is not exist")
        secret = self.robots[token]
        if secret is not None:
            timestamp, signature = request.query.get("timestamp", ""), request.query.get("sign", "")
            expected = base64.b64encode(hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(),
                                                 hashlib.sha256).digest()).decode()
            if not timestamp.isdigit() or abs(now_ms() - int(timestamp)) > 3_600_000:
                return self._answer(token, 310000, "sign not match, timestamp is more than 1 hour off")
            if not hmac.compare_digest(signature, expected):
                return self._answer(token, 310000, "sign not match")
        if len(body) > self.max_bytes:
            return self._answer(token, 460101, "message too long, exceed 20000 bytes")
        try:
            payload: Any = json.loads(body)
            message = payload[payload["msgtype"]]
            assert message["title"] and message["text"]
        except (ValueError, KeyError, TypeError, AssertionError):
            return self._answer(token, 40035, "缺少参数 json")
        if not self.window.admit(token):
            return self._answer(token, 130101, "send too fast, exceed 20 times per minute")
        if step is not None:
            return self._answer(token, step, "scripted")
        self.received.append(Received(token, payload, time.monotonic()))
        return self._answer(token, 0, "ok")
