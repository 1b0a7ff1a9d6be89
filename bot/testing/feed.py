"""A loopback feed reader: what an outlet that pulls does. Fetches and parses Atom or JSON Feed.

    >>> titles = await read_feed(f"{web.url}/feeds/n-feed.atom", token)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import httpx

ATOM = "{http://www.w3.org/2005/Atom}"


async def read_feed(url: str, token: str | None = None) -> list[dict[str, str]]:
    """The entries of the feed at ``url`` as ``{"id", "title", "content", "updated"}``; raises on a bad answer or bad
    XML/JSON."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.get(url, headers=headers)
    answer.raise_for_status()
    if url.endswith(".json"):
        items = json.loads(answer.content)["items"]
        return [{"id": i["id"], "title": i["title"], "content": i["content_text"], "updated": i["date_modified"]}
                for i in items]
    root = ET.fromstring(answer.content)
    return [{"id": e.findtext(f"{ATOM}id") or "", "title": e.findtext(f"{ATOM}title") or "",
             "content": e.findtext(f"{ATOM}content") or "", "updated": e.findtext(f"{ATOM}updated") or ""}
            for e in root.iter(f"{ATOM}entry")]
