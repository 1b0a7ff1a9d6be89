"""Feeds: outlets that prefer to pull. The bot serves each feed outlet an Atom feed and a JSON Feed.

Nothing is pushed: a feed is ``channels.base.Pulling``, and the dispatcher never claims its deliveries. The web server
(bot/web/feeds.py) lists the outlet's released notices, and once a fetch has been answered it marks the
listed deliveries delivered, recording the fetch as the attempt (trigger ``fetch``). JSON Feed 1.1
(https://jsonfeed.org/version/1.1) and Atom (RFC 4287, https://www.rfc-editor.org/rfc/rfc4287) carry the
same entries.

Outlet: ``secret_env`` (optional) names a token the reader must send as ``Authorization: Bearer …``
or ``?token=…``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from bot.render import change_word, form_context, printable, render
from channels.base import NO_OPTIONS, RateLimit, Rendered
from channels.fit import Form, cut, read_more

if TYPE_CHECKING:
    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt


class Feed:
    name: ClassVar[str] = "feed"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        return [("url", "a feed outlet fetches from the bot; it has no url")] if outlet.url else []

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        sources = tuple({"title": s.title, "url": str(s.url)} for s in notice.sources)
        form = Form(notice.title, notice.authority, notice.rumour, notice.truth, sources, read_more=read_more(notice, options))
        text = render("feed/entry.j2", form_context(notice, published_at, form, change))
        item = {
            "id": f"tag:debunkbot,{published_at.date().isoformat()}:{notice.ref}",
            "title": ("【紧急】" if notice.urgency.value == "urgent" else "") + f"{change_word(change)}{' '.join(printable(notice.title).split())}",
            "summary": cut(f"已撤回：{printable(change.note)}" if change and change.kind == "retraction" else
                           ("更正｜" if change else "") + f"{notice.verdict.label}：{printable(notice.truth)}", 140),
            "content_text": text,
            "date_published": published_at.isoformat(),
            "date_modified": (change.at if change else published_at).isoformat(),
            "authors": [{"name": printable(notice.authority)}],
            "tags": [notice.verdict.label, *([notice.category] if notice.category else [])],
        }
        if form.read_more:  # JSON Feed 1.1: url is a string when present, never null
            item["url"] = form.read_more
        if receipt is not None:  # a JSON Feed extension (an underscore key); Atom shows it as a rel="related" link
            item["_debunkbot"] = {"receipt_url": receipt.url, "about": "确认已转载: open, or POST {\"published_url\": …}"}
        return Rendered(text=text, body=json.dumps(item, ensure_ascii=False).encode(), extra=item)

    def feed_item(self, notice: Notice, published_at: datetime, options: Mapping[str, Any],
                  change: Change | None = None, receipt: Receipt | None = None) -> dict[str, Any]:
        """The notice as one JSON Feed item (the Atom template reads the same). A corrected or retracted notice
        keeps its entry's id; the entry shows the correction or the retraction, updated when it was made."""
        item: dict[str, Any] = self.render(notice, published_at, options, change, receipt).extra
        return item
