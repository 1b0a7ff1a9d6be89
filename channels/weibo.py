"""Weibo (微博) ``statuses/share``: a short post with a link to the full notice.

Facts (https://open.weibo.com/wiki/2/statuses/share and https://open.weibo.com/wiki/Error_code):
- ``POST https://api.weibo.com/2/statuses/share.json`` form-encoded: ``access_token``, ``status``, ``rip``;
- the status is at most 140 characters as Weibo counts them (two ASCII characters as one, a link as 10, an
  emoji as two: ``channels.fit.weibo_length``) and must carry a link on the app's safe domain;
- errors come as ``{"error_code": N, "error": "..."}``, mostly with HTTP 4xx; 10022/10023/10024 are rate
  limits and 20016 posting too often (retry later); 20032 posted but the server was slow (delivered);
  20017/20019 similar/identical content (on a retry: an earlier try landed); 10016 a required parameter
  is missing. The codes are from the public wiki's error table (https://open.weibo.com/wiki/Error_code).

Outlet: ``secret_env`` holds the access token; ``options.read_more_url`` (required, on the safe domain,
``{ref}`` filled in) is the link; ``options.rip`` (or DEBUNKBOT_PUBLIC_IP) the caller's public IP, which the
current statuses/share documentation marks required (10016 "miss required parameter" without it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlencode

from bot.model import Verdict
from bot.render import form_context, render
from channels.base import NO_OPTIONS, Outcome, RateLimit, Rendered, classify_json
from channels.fit import WEIBO_URL_LENGTH, Limit, fit, read_more, weibo_length

if TYPE_CHECKING:
    import httpx

    from bot.model import Change, Notice
    from bot.outlets import Outlet
    from bot.receipts import Receipt

ENDPOINT = "https://api.weibo.com/2/statuses/share.json"


class Weibo:
    name: ClassVar[str] = "weibo"
    rate_limits: ClassVar[tuple[RateLimit, ...]] = (RateLimit(30, 3600),)  # Weibo publishes no figure; be modest
    limits: ClassVar[tuple[Limit, ...]] = (Limit(140, "weibo"),)  # counted as Weibo counts: channels.fit.weibo_length
    retry_codes: ClassVar[dict[int, str]] = {10022: "IP rate limit", 10023: "user rate limit", 10024: "API rate limit",
                                             20016: "posting too often"}
    # 20017 similar / 20019 identical content: on a retry, the earlier try whose answer was lost went up
    already_posted: ClassVar[dict[int, str]] = {20017: "similar content", 20019: "identical content"}

    sends_public_ip: ClassVar[bool] = True  # DEBUNKBOT_PUBLIC_IP fills options.rip (bot.outlets.load_matrix)

    def check_outlet(self, outlet: Outlet) -> list[tuple[str, str]]:
        problems = []
        if problem := _rip_problem(outlet.options.get("rip")):
            problems.append(("options.rip", problem))
        if not outlet.secret_env:
            problems.append(("secret_env", "a weibo outlet needs secret_env naming its access token"))
        link = str(outlet.options.get("read_more_url", ""))
        if not link.startswith(("https://", "http://")):
            problems.append(("options.read_more_url", "a weibo post must link to the full notice on the app's safe "
                                                      "domain, e.g. https://piyao.example.cn/{ref}"))
        elif (room := self.limits[0].size - weibo_length(_shortest_post(link))) < MIN_TITLE_ROOM:
            problems.append(("options.read_more_url", f"too long to ever fit: the shortest post with this link leaves "
                                                      f"{max(room, 0)} of Weibo's 140 characters for the title "
                                                      f"(needs {MIN_TITLE_ROOM}); a link counts as "
                                                      f"{WEIBO_URL_LENGTH} only up to its first non-ASCII character"))
        return problems

    def render(self, notice: Notice, published_at: datetime, options: Mapping[str, Any] = NO_OPTIONS,
               change: Change | None = None, receipt: Receipt | None = None) -> Rendered:
        status, form = fit(lambda form: render("weibo/status.j2", form_context(notice, published_at, form, change)),
                           notice, self.limits, read_more(notice, options))
        return Rendered(text=status, body=status.encode(), cut=form.cut)

    def build(
        self, rendered: Rendered, outlet: Outlet, secret: str | None, message_id: str, now: datetime
    ) -> httpx.Request:
        import httpx  # not at the top: see channels/__init__.py

        form = {"access_token": secret or "", "status": rendered.text, "rip": str(outlet.options.get("rip", ""))}
        return httpx.Request("POST", outlet.url or ENDPOINT, content=urlencode(form).encode(), headers={
            "content-type": "application/x-www-form-urlencoded", "user-agent": "debunkbot/0.1"})

    def classify(self, status: int, headers: httpx.Headers, body: bytes, attempt: int = 1) -> Outcome:
        """Weibo's answer; ``attempt`` (1 for the first try) tells a retry's "already posted" from a refusal.

        20032: posted although the server was slow, so delivered. 20017/20019 on a retry: the earlier try went up and only its answer was lost, so delivered with a
        note; on a first try they are Weibo refusing a repeat, so failed.
        """
        outcome = classify_json(status, headers, body, code_keys=("error_code",), retry=self.retry_codes,
                                missing_is_ok=True)
        if outcome.code == 20032:
            return replace(outcome, result="delivered", error=f"{outcome.error} (posted; Weibo was slow to answer)")
        if outcome.code in self.already_posted and attempt > 1:
            return replace(outcome, result="delivered", error=f"{outcome.error} (already posted by an earlier try "
                                                              "whose answer was lost)")
        return outcome


MIN_TITLE_ROOM = 12  # characters a post keeps for the title and authority, at least


def _shortest_post(link: str) -> str:
    """The shortest status the template makes with ``link`` (an urgent one, the longest verdict, a 64-character ref)."""
    longest_verdict = max((v.sentence for v in Verdict), key=weibo_length)
    return f"【紧急】【辟谣】{longest_verdict}（） 阅读全文：{link.replace('{ref}', 'r' * 64)}"


_LAN = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))


def _rip_problem(rip: object) -> str | None:
    """Why ``rip`` cannot be the caller's real public IP that statuses/share requires, if it cannot."""
    if rip in (None, ""):
        return ("Weibo's statuses/share requires rip, this machine's public IP: set options.rip, or "
                "DEBUNKBOT_PUBLIC_IP for every weibo outlet")
    try:
        address = ipaddress.ip_address(str(rip))
    except ValueError:
        return f"{rip!r} is not an IP address"
    if (address.is_loopback or address.is_unspecified or address.is_link_local or address.is_multicast
            or any(address in net for net in _LAN)):
        return f"{rip} is not a public address; Weibo wants the machine's public IP"
    return None
