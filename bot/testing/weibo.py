"""A loopback Weibo ``2/statuses/share.json``: access tokens, 140 characters, a safe-domain link, rate limits.

Answers as the Weibo wiki documents: HTTP 400 with ``{"error_code": N, "error": …}``: 10016 no ``rip`` (the
caller's real IP, required), 21332 invalid token,
20012 text too long, 20021 no link on the safe domain (our pick; Weibo's code for it is not published),
20019 the same status again, 10023 over the user's rate limit.

Scripted steps (per token, for its first tries): an HTTP status below 1000; ``LOST`` (the post goes up
and the connection is then dropped, so the answer is lost); 20032 (the post goes up and Weibo answers
20032, its "server slow" code); any other code is answered as a refusal without posting.
"""

from __future__ import annotations

import re
import time

from aiohttp import web

from bot.testing.platform import LoopbackPlatform, Received, Window

LOST = 0  # scripted step: accept the post, then drop the connection without answering


class WeiboAPI(LoopbackPlatform):
    def __init__(
        self, tokens: set[str], safe_domain: str, *, per_hour: int = 30, window: float = 3600.0,
        script: dict[str, list[int]] | None = None,
    ) -> None:
        super().__init__(script)
        self.tokens = tokens
        self.safe_domain = safe_domain
        self.window = Window(per_hour, window)

    @property
    def url(self) -> str:
        return f"{self.base}/2/statuses/share.json"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/2/statuses/share.json", self._share)

    def _error(self, token: str, code: int, error: str) -> web.Response:
        self.refused.append((token, code))
        return web.json_response({"error_code": code, "error": error, "request": "/2/statuses/share.json"}, status=400)

    async def _share(self, request: web.Request) -> web.Response:
        form = await request.post()
        token, status = str(form.get("access_token", "")), str(form.get("status", ""))
        step = self.scripted(token)
        if step is not None and 0 < step < 1000:
            return web.json_response({"error": "scripted"}, status=step)
        if not form.get("rip"):  # required in the current statuses/share documentation
            return self._error(token, 10016, "miss required parameter (rip), see doc for more info")
        if token not in self.tokens:
            return self._error(token, 21332, "invalid_access_token")
        if step is not None and step not in (LOST, 20032):
            return self._error(token, step, "scripted")
        if _weibo_count(status) > 140:
            return self._error(token, 20012, "Text too long, please input text less than 140 characters!")
        if f"://{self.safe_domain}" not in status:
            return self._error(token, 20021, "status must contain a link on the app's safe domain")
        if any(r.payload == status for r in self.received if r.key == token):
            return self._error(token, 20019, "repeat content!")
        if not self.window.admit(token):
            return self._error(token, 10023, "User requests out of rate limit!")
        self.received.append(Received(token, status, time.monotonic()))
        if step == LOST:
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)  # never reaches the caller: the connection is gone
        if step == 20032:
            return self._error(token, 20032, "update weibo success, but server slow now, please try later!")
        return web.json_response({"id": len(self.received), "idstr": str(len(self.received)), "text": status})


def _weibo_count(status: str) -> float:
    """Weibo's count, written apart from the channel's: half a character per ASCII character, 10 per link
    (the web client's figure), one per other UTF-16 unit (an emoji is two)."""
    links = re.findall(r"https?://[!-~]+", status)
    rest = re.sub(r"https?://[!-~]+", "", status)
    return 10 * len(links) + sum(0.5 if ord(c) < 128 else len(c.encode("utf-16-le")) // 2 for c in rest)
