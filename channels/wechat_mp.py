"""WeChat Official Account (微信公众号) drafts: an HTML article, added as a draft for a human to publish.

Facts (https://developers.weixin.qq.com/doc/offiaccount/Basic_Information/getStableAccessToken.html,
https://developers.weixin.qq.com/doc/offiaccount/Draft_Box/Add_draft.html,
https://developers.weixin.qq.com/doc/offiaccount/Publish/Publish.html):
- ``POST /cgi-bin/stable_token`` (getStableAccessToken) with ``{"grant_type": "client_credential", "appid",
  "secret"}`` gives ``access_token`` valid ``expires_in`` (≤ 7,200) seconds. In its normal mode every caller
  gets the same live token, so several workers can each fetch and cache one without invalidating each
  other (the older ``GET /cgi-bin/token`` invalidates the previous token on every call). Cached per appid
  and refreshed a few minutes early; never ``force_refresh`` (20 a day, and it invalidates everyone's);
- ``POST /cgi-bin/draft/add?access_token=…`` with ``{"articles":[{title, author, digest, content,
  content_source_url, thumb_media_id}]}`` answers ``{"media_id": …}``; ``content`` is HTML under 20,000
  characters and under 1 MB, scripts stripped (we strip them too, with nh3); a cover ``thumb_media_id`` is required;
- errcode 40001/42001 (token invalid or expired): fetch a new token once and try again;
  45009 (API quota) and -1 (system busy) are retried later; 45002/45003 (content/title too large) fail;
- ``POST /cgi-bin/draft/update`` with ``{"media_id", "index": 0, "articles": {…}}`` replaces a draft's article
  (a correction or retraction of a draft not yet published); a published draft has left the draft box (40007);
- ``POST /cgi-bin/freepublish/submit`` with the ``media_id`` publishes; only with ``options.publish: true``.
  Its errcode 0 only accepts the task (``publish_id``); ``POST /cgi-bin/freepublish/get`` with the
  ``publish_id`` says how it went (``publish_status`` 0 published, 1 publishing, 2–6 failed). The draft's
  ``media_id`` and the ``publish_id`` are kept with the delivery, so a retry adds no second draft; when
  draft/add's answer was lost, the next try finds the draft (``draft/batchget``, by title and digest).

Outlet: ``secret_env`` holds the AppSecret; ``options.appid`` and ``options.thumb_media_id`` are required;
``url`` is the API base (default https://api.weixin.qq.com).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

import nh3

from bot.render import change_word, form_context, render
from channels.base import NO_OPTIONS, Outcome, RateLimit, Rendered, classify_json
from channels.fit import Form, Limit, cut_to, fit, read_more

if TYPE_CHECKING:
    import httpx

    from bot.http import Answer, Sender
    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt

API = "https://api.weixin.qq.com"
STALE_TOKEN = frozenset({40001, 40014, 42001})
# draft/add (https://developers.weixin.qq.com/doc/offiaccount/Draft_Box/Add_draft.html): 标题总长度不超过32个字,
# author at most 16, digest at most 128; a longer title answers 45003
TITLE = Limit(32, "chars")
AUTHOR = Limit(16, "chars")
DIGEST = Limit(128, "chars")
TITLE_PREFIX = "【辟谣】"
PUBLISH_CHECK_AFTER = 30.0  # seconds before asking freepublish/get again (never sooner than the retry schedule)
# freepublish/get publish_status (https://developers.weixin.qq.com/doc/offiaccount/Publish/Get_status.html)
PUBLISH_FAILED = {2: "原创失败 (originality check failed)", 3: "常规失败 (failed)",
                  4: "平台审核不通过 (refused in review)", 5: "成功后用户删除所有文章 (deleted after publishing)",
                  6: "成功后系统封禁所有文章 (banned after publishing)"}


class WeChatMP:
    name: ClassVar[str] = "wechat_mp"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit(60, 60),)
    limits: ClassVar[tuple[Limit, ...]] = (Limit(19_999, "chars"), Limit(1_000_000 - 1, "bytes"))
    retry_codes: ClassVar[dict[int, str]] = {45009: "API quota reached", -1: "system busy",
                                             **{code: "access token invalid" for code in STALE_TOKEN}}

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}  # (api, appid) -> (token, expires at, monotonic)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        problems = []
        if not outlet.secret_env:
            problems.append(("secret_env", "a wechat_mp outlet needs secret_env naming its AppSecret"))
        for option in ("appid", "thumb_media_id"):
            if not outlet.options.get(option):
                problems.append((f"options.{option}", "required for a wechat_mp draft"))
        if not isinstance(outlet.options.get("publish", False), bool):
            problems.append(("options.publish", "should be true or false"))
        return problems

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        prefix = change_word(change)

        def article(form: Form) -> str:
            html = render("wechat_mp/article.html.j2", form_context(notice, published_at, form, change))
            return nh3.clean(html, link_rel=None)  # scripts and event handlers gone, whatever a template does

        link = read_more(notice, options)
        content, form = fit(article, notice, self.limits, link)
        draft = {
            "title": prefix + cut_to(notice.title, (TITLE,), lambda title: prefix + title),
            "author": cut_to(str(options.get("author", notice.authority)), (AUTHOR,)),
            "digest": cut_to(f"已撤回：{change.note}" if change and change.kind == "retraction" else
                             ("更正｜" if change else "") + f"{notice.verdict.label}：{notice.truth}", (DIGEST,)),
            "content": content,
            "content_source_url": link or "",
            "need_open_comment": 0,
        }
        return Rendered(text=content, body=json.dumps(draft, ensure_ascii=False).encode(), extra=draft, cut=form.cut)

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request:
        """The draft request without a token; ``deliver`` adds one (kept for previews and the Protocol)."""
        return self._draft(rendered, outlet, token="")

    def _draft(self, rendered: Rendered, outlet: Outlet, token: str) -> httpx.Request:
        import httpx  # not at the top (nor bot.http): see channels/__init__.py

        article = dict(rendered.extra) | {"thumb_media_id": outlet.options["thumb_media_id"]}
        return httpx.Request("POST", f"{outlet.url or API}/cgi-bin/draft/add?{urlencode({'access_token': token})}",
                             content=json.dumps({"articles": [article]}, ensure_ascii=False).encode(),
                             headers={"content-type": "application/json; charset=utf-8"})

    async def deliver(
        self, sender: Sender, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime,
        state: Mapping[str, Any],
    ) -> Answer:
        """Deliver one message (``message_id``: a version of the notice, or its retraction). A correction or
        retraction of a notice whose draft this outlet has not published yet updates that draft
        (draft/update, https://developers.weixin.qq.com/doc/offiaccount/Draft_Box/Update_draft.html) instead of
        adding another; once published, WeChat takes it out of the draft box (draft/update answers 40007) and
        the correction is a new draft. The state kept names the message it belongs to."""
        kept = dict(state)
        # state kept before messages were named belongs to the delivery's first message (version 1)
        if kept.get("message_id", message_id.split(".", 1)[0]) != message_id:
            draft = kept.get("media_id") if "publish_id" not in kept else None
            kept = {}
            if draft:
                answer = await self._update_draft(sender, rendered, outlet, secret or "", draft)
                if _json(answer.body).get("errcode") != 40007:  # 40007: the draft is gone (published, deleted)
                    return replace(answer, state={"media_id": draft, "message_id": message_id})
        answer = await self._deliver_message(sender, rendered, outlet, secret, message_id, now, kept)
        return replace(answer, state=(kept if answer.state is None else dict(answer.state)) | {"message_id": message_id})

    async def _update_draft(self, sender: Sender, rendered: Rendered, outlet: Outlet, secret: str, draft: str
                            ) -> Answer:
        """Replace the article of the outlet's unpublished draft with this rendering (once more with a fresh token
        on 40001/42001)."""
        import httpx

        api, appid = outlet.url or API, outlet.options["appid"]
        article = dict(rendered.extra) | {"thumb_media_id": outlet.options["thumb_media_id"]}
        for fresh in (False, True):
            token, refused = await self._token(sender, api, appid, secret, refresh=fresh)
            if token is None:
                return refused
            answer = await sender.send(httpx.Request(
                "POST", f"{api}/cgi-bin/draft/update?{urlencode({'access_token': token})}",
                content=json.dumps({"media_id": draft, "index": 0, "articles": article}, ensure_ascii=False).encode(),
                headers={"content-type": "application/json; charset=utf-8"}))
            if _json(answer.body).get("errcode") not in STALE_TOKEN:
                break
        return answer

    async def _deliver_message(
        self, sender: Sender, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime,
        state: Mapping[str, Any],
    ) -> Answer:
        """Token (cached), draft/add, then with ``publish``: freepublish/submit, and on later tries freepublish/get.

        The draft's ``media_id`` and the ``publish_id`` are kept in the delivery's state as soon as WeChat gives
        them, so a retry never adds a second draft nor submits the same draft twice. errcode 0 from
        freepublish/submit only means the publish task was accepted: ``classify`` counts it delivered once
        freepublish/get says it is published (https://developers.weixin.qq.com/doc/offiaccount/Publish/Publish.html,
        https://developers.weixin.qq.com/doc/offiaccount/Publish/Get_status.html).
        """
        import httpx

        from bot.http import Answer, SendFailed

        api, appid, kept = outlet.url or API, outlet.options["appid"], dict(state)

        async def call(make: Callable[[str], httpx.Request], if_lost: dict[str, Any] | None = None) -> Answer:
            """Send with a token (once more with a fresh one on 40001/42001). ``if_lost``: the call may have
            taken effect although no answer came, so it is WeChat's "busy" with that state kept, not an error."""
            for fresh in (False, True):
                token, refused = await self._token(sender, api, appid, secret or "", refresh=fresh)
                if token is None:
                    return refused  # the token endpoint's own answer, e.g. 40125 wrong AppSecret
                request = make(token)
                try:
                    answer = await sender.send(request)
                except SendFailed as exc:
                    if if_lost is None:
                        raise
                    return _busy(f"to {request.url.path}: {exc}", if_lost)
                if _json(answer.body).get("errcode") not in STALE_TOKEN:
                    break
            return answer

        def endpoint(path: str, token: str, body: dict[str, Any]) -> httpx.Request:
            return httpx.Request("POST", f"{api}/cgi-bin/{path}?{urlencode({'access_token': token})}", json=body)

        if "publish_id" in kept:  # submitted on an earlier try: how did it go?
            answer = await call(lambda t: endpoint("freepublish/get", t, {"publish_id": kept["publish_id"]}))
            return replace(answer, state=kept)
        if "media_id" in kept and not outlet.options.get("publish"):  # drafted by an earlier try: nothing more to do
            return Answer(200, httpx.Headers(), json.dumps({"media_id": kept["media_id"]}).encode(), state=kept)
        if "media_id" not in kept and state.get("drafting"):  # an earlier try's draft/add answer was lost
            found = await self._find_draft(call, endpoint, rendered)
            if found and not outlet.options.get("publish"):  # the draft is all this outlet wants
                return Answer(200, httpx.Headers(), json.dumps({"media_id": found}).encode(), state={"media_id": found})
            if found:
                kept["media_id"] = found
        if "media_id" not in kept:
            # the draft may go in without its answer coming back: the next try looks for it before adding one
            answer = await call(lambda t: self._draft(rendered, outlet, t), if_lost={"drafting": True})
            if answer.state is not None:
                return answer
            media_id = _json(answer.body).get("media_id")
            if not (media_id and outlet.options.get("publish")):  # the draft is kept: a correction updates it
                return replace(answer, state={"media_id": media_id}) if media_id else answer
            kept["media_id"] = media_id
        # the draft is there: if this answer is lost, the retry publishes it and adds no other
        answer = await call(lambda t: endpoint("freepublish/submit", t, {"media_id": kept["media_id"]}), if_lost=kept)
        if answer.state is not None:
            return answer
        publish_id = _json(answer.body).get("publish_id")
        if publish_id and not _json(answer.body).get("errcode"):
            kept["publish_id"] = publish_id
        return replace(answer, state=kept)

    @staticmethod
    async def _find_draft(
        call: Callable[[Callable[[str], httpx.Request]], Awaitable[Answer]],
        endpoint: Callable[[str, str, dict[str, Any]], httpx.Request], rendered: Rendered,
    ) -> str | None:
        """The media_id of a draft an earlier try added (its answer lost): the newest with our title and digest
        (draft/batchget, https://developers.weixin.qq.com/doc/offiaccount/Draft_Box/Get_draft_list.html)."""
        answer = await call(lambda t: endpoint("draft/batchget", t, {"offset": 0, "count": 20, "no_content": 1}))
        for item in _json(answer.body).get("item") or []:
            article = ((item.get("content") or {}).get("news_item") or [{}])[0]
            if (article.get("title"), article.get("digest")) == (rendered.extra["title"], rendered.extra["digest"]):
                return str(item["media_id"])
        return None

    async def _token(
        self, sender: Sender, api: str, appid: str, secret: str, refresh: bool
    ) -> tuple[str, None] | tuple[None, Answer]:
        import httpx

        from bot.http import Answer

        key = (api, appid)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._tokens.get(key)
            if cached and not refresh and cached[1] > time.monotonic():
                return cached[0], None
            answer = await sender.send(httpx.Request("POST", f"{api}/cgi-bin/stable_token", json={
                "grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": False}))
            data = _json(answer.body)
            if not data.get("access_token"):
                status = answer.status if "errcode" in data else 502  # never read a tokenless answer as success
                return None, Answer(status, answer.headers, answer.body)
            expires_in = float(data.get("expires_in", 7200))
            self._tokens[key] = (str(data["access_token"]), time.monotonic() + max(60.0, expires_in - 300))
            return str(data["access_token"]), None

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome:
        # draft/add answers {"media_id": …} with no errcode on success
        outcome = classify_json(status, headers, body, retry=self.retry_codes, missing_is_ok=True)
        data = _json(body)
        if outcome.result != "delivered" or "publish_id" not in data:
            return outcome
        if "publish_status" not in data:  # freepublish/submit: the task is accepted, not yet done
            return Outcome("retry", f"publish task accepted (publish_id {data['publish_id']}); waiting for WeChat "
                           "to publish it", code=0, retry_after=PUBLISH_CHECK_AFTER)
        published = data["publish_status"]
        if published == 0:
            urls = [i.get("article_url") for i in (data.get("article_detail") or {}).get("item", [])]
            return Outcome("delivered", f"published: {', '.join(u for u in urls if u)}" if any(urls) else None, code=0)
        if published == 1:
            return Outcome("retry", f"publishing (publish_id {data['publish_id']})", code=0,
                           retry_after=PUBLISH_CHECK_AFTER)
        reason = PUBLISH_FAILED.get(published, f"publish_status {published}")
        return Outcome("failed", f"WeChat did not publish it: {reason} (publish_status {published}, "
                       f"fail_idx {data.get('fail_idx', [])})", code=published)


def _busy(what: str, state: dict[str, Any]) -> Answer:
    """No answer came to a call whose effect we must remember: WeChat's "system busy" (-1), retried later."""
    import httpx

    from bot.http import Answer

    body = json.dumps({"errcode": -1, "errmsg": f"no answer {what}"}, ensure_ascii=False).encode()
    return Answer(502, httpx.Headers(), body, state=state)


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
