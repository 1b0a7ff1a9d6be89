"""A loopback WeChat Official Account API: access tokens, drafts and publishing, as WeChat documents.

- ``POST /cgi-bin/stable_token``: 40013 unknown appid, 40125 wrong AppSecret, else the live token
  (the same one to every caller while it lives; a fresh one when none lives or on force_refresh);
- ``POST /cgi-bin/draft/add``: 40001 unknown or expired token (``expire_tokens()`` expires them all),
  40007 unknown thumb_media_id, 45003 title over 32 characters (draft/add: 标题总长度不超过32个字),
  45110 author over 16 characters, 45004 digest over 128 characters (codes from WeChat's global return
  code table), 45002 content of 20,000 characters or 1 MB or more; else ``{"media_id": …}``. Drafts keep
  their article; ``scripts`` counts any that carried a ``<script``;
- ``POST /cgi-bin/draft/update`` with ``{"media_id", "index": 0, "articles": {…}}``: replaces the draft's article
  (``updates`` lists them); 40007 for an unknown draft or one published (it has left the draft box);
- ``POST /cgi-bin/freepublish/submit``: accepts a publish task for a draft by media_id, answering
  ``{"errcode": 0, "publish_id": …}`` (40007 unknown media_id); ``submit_errors`` scripts errcodes for the
  next submits (-1 system busy);
- ``POST /cgi-bin/draft/batchget`` with ``{"offset", "count", "no_content"}``: ``{"total_count", "item_count",
  "item": [{"media_id", "content": {"news_item": [article]}, "update_time"}]}``, newest first;
  ``lose_draft_answers`` makes the next draft/add calls store the draft and drop the connection;
- ``POST /cgi-bin/freepublish/get`` with the ``publish_id``: ``{"publish_id", "publish_status", "article_id",
  "article_detail": {"count", "item": [{"idx", "article_url"}]}, "fail_idx"}``; each check of a task takes
  the next of ``publish_statuses`` (default: published at once; 1 publishing, 2–6 failed), the last one stays.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from aiohttp import web

from bot.testing.platform import LoopbackPlatform, Received


class WeChatMPAPI(LoopbackPlatform):
    def __init__(self, accounts: dict[str, str], thumbs: set[str], script: dict[str, list[int]] | None = None) -> None:
        super().__init__(script)
        self.accounts = accounts  # appid -> AppSecret
        self.thumbs = thumbs
        self.tokens: dict[str, str] = {}  # live token -> appid
        self.current: dict[str, str] = {}  # appid -> the token stable_token hands out while it lives
        self.tokens_issued = 0
        self.drafts: dict[str, dict[str, Any]] = {}
        self.published: list[str] = []  # media_ids whose publish task was accepted
        self.submit_errors: list[int] = []  # errcodes the next freepublish/submit calls answer
        self.publish_statuses: list[int] = [0]  # what successive freepublish/get checks of a task say
        self.tasks: dict[str, tuple[str, int]] = {}  # publish_id -> (media_id, checks so far)
        self.lose_draft_answers = 0  # the next draft/add calls store the draft, then drop the connection
        self.scripts = 0
        self.updates: list[str] = []  # media_ids draft/update replaced

    @property
    def url(self) -> str:
        return self.base

    def expire_tokens(self) -> None:
        self.tokens.clear()
        self.current.clear()

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/cgi-bin/stable_token", self._token)
        app.router.add_post("/cgi-bin/draft/add", self._draft)
        app.router.add_post("/cgi-bin/freepublish/submit", self._publish)
        app.router.add_post("/cgi-bin/freepublish/get", self._publish_status)
        app.router.add_post("/cgi-bin/draft/batchget", self._drafts)
        app.router.add_post("/cgi-bin/draft/update", self._update)

    def _error(self, key: str, errcode: int, errmsg: str) -> web.Response:
        self.refused.append((key, errcode))
        return web.json_response({"errcode": errcode, "errmsg": errmsg})

    async def _token(self, request: web.Request) -> web.Response:
        """getStableAccessToken: in normal mode the live token again; force_refresh replaces it."""
        body = json.loads(await request.read() or b"{}")
        appid, secret = str(body.get("appid", "")), str(body.get("secret", ""))
        if body.get("grant_type") != "client_credential":
            return self._error(appid, 40002, "invalid grant_type")
        if appid not in self.accounts:
            return self._error(appid, 40013, "invalid appid")
        if secret != self.accounts[appid]:
            return self._error(appid, 40125, "invalid appsecret")
        live = self.current.get(appid)
        if live is None or body.get("force_refresh") is True:
            if live is not None:
                self.tokens.pop(live, None)
            live = self.current[appid] = secrets.token_urlsafe(24)
            self.tokens[live] = appid
            self.tokens_issued += 1
        return web.json_response({"access_token": live, "expires_in": 7200})

    async def _draft(self, request: web.Request) -> web.Response:
        appid = self.tokens.get(request.query.get("access_token", ""))
        if appid is None:
            return self._error("?", 40001, "invalid credential, access_token is invalid or not latest")
        step = self.scripted(appid)
        if step is not None:
            return self._error(appid, step, "scripted") if step >= 1000 else web.json_response({}, status=step)
        (article,) = json.loads(await request.read())["articles"]
        content = article["content"]
        if article.get("thumb_media_id") not in self.thumbs:
            return self._error(appid, 40007, "invalid media_id")
        if len(article["title"]) > 32:
            return self._error(appid, 45003, "title size out of limit")
        if len(article.get("author", "")) > 16:
            return self._error(appid, 45110, "author size out of limit")
        if len(article.get("digest", "")) > 128:
            return self._error(appid, 45004, "description size out of limit")
        if len(content) >= 20_000 or len(content.encode()) >= 1_000_000:
            return self._error(appid, 45002, "content size out of limit")
        self.scripts += "<script" in content.lower()
        media_id = secrets.token_hex(8)
        self.drafts[media_id] = article
        self.received.append(Received(appid, article, time.monotonic()))
        if self.lose_draft_answers:
            self.lose_draft_answers -= 1
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)  # never reaches the caller: the connection is gone
        return web.json_response({"media_id": media_id})

    async def _update(self, request: web.Request) -> web.Response:
        """draft/update: {"media_id", "index", "articles": {…}} replaces a draft's article; a published draft has
        left the draft box (40007)."""
        appid = self.tokens.get(request.query.get("access_token", ""))
        if appid is None:
            return self._error("?", 40001, "invalid credential")
        asked = json.loads(await request.read())
        media_id, article = asked.get("media_id"), asked.get("articles") or {}
        if media_id not in self.drafts or media_id in self.published:
            return self._error(appid, 40007, "invalid media_id")
        if asked.get("index") != 0 or article.get("thumb_media_id") not in self.thumbs:
            return self._error(appid, 40007, "invalid media_id")
        if len(article.get("title", "")) > 32:
            return self._error(appid, 45003, "title size out of limit")
        self.drafts[media_id] = article
        self.updates.append(media_id)
        self.received.append(Received(appid, article, time.monotonic()))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _drafts(self, request: web.Request) -> web.Response:
        """draft/batchget: {"offset", "count" (1–20), "no_content"} -> the newest drafts first."""
        appid = self.tokens.get(request.query.get("access_token", ""))
        if appid is None:
            return self._error("?", 40001, "invalid credential")
        asked = await request.json()
        offset, count = int(asked.get("offset", 0)), int(asked.get("count", 20))
        if not 1 <= count <= 20:
            return self._error(appid, 40035, "invalid args")
        newest = list(reversed(self.drafts.items()))[offset:offset + count]
        items = [{"media_id": media_id, "update_time": int(time.time()), "content": {"news_item": [
            {k: v for k, v in article.items() if not (asked.get("no_content") and k == "content")}]}}
            for media_id, article in newest]
        return web.json_response({"total_count": len(self.drafts), "item_count": len(items), "item": items})

    async def _publish(self, request: web.Request) -> web.Response:
        appid = self.tokens.get(request.query.get("access_token", ""))
        if appid is None:
            return self._error("?", 40001, "invalid credential")
        media_id = (await request.json()).get("media_id")
        if media_id not in self.drafts:
            return self._error(appid, 40007, "invalid media_id")
        if self.submit_errors:
            return self._error(appid, self.submit_errors.pop(0), "scripted")
        self.published.append(media_id)
        publish_id = secrets.token_hex(6)
        self.tasks[publish_id] = (media_id, 0)
        return web.json_response({"errcode": 0, "errmsg": "ok", "publish_id": publish_id})

    async def _publish_status(self, request: web.Request) -> web.Response:
        appid = self.tokens.get(request.query.get("access_token", ""))
        if appid is None:
            return self._error("?", 40001, "invalid credential")
        publish_id = (await request.json()).get("publish_id")
        if publish_id not in self.tasks:
            return self._error(appid, 40007, "invalid publish_id")
        media_id, checks = self.tasks[publish_id]
        self.tasks[publish_id] = (media_id, checks + 1)
        status = self.publish_statuses[min(checks, len(self.publish_statuses) - 1)]
        answer: dict[str, Any] = {"publish_id": publish_id, "publish_status": status, "fail_idx": []}
        if status == 0:
            answer |= {"article_id": f"a_{media_id}", "article_detail": {"count": 1, "item": [
                {"idx": 1, "article_url": f"https://mp.weixin.qq.com/s/{media_id}"}]}}
        elif status >= 2:
            answer["fail_idx"] = [1]
        return web.json_response(answer)
