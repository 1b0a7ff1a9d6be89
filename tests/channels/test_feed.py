"""Feeds: the bot serves Atom and JSON Feed per outlet; a fetch is the delivery, recorded as an attempt."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from bot.dispatch import Dispatcher
from bot.feed import FeedServer
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import read_feed


async def test_a_fetch_delivers_what_it_lists_and_the_dispatcher_never_sends_to_a_feed(
    store: Store, settings: Settings, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [
        {"id": "n-feed", "name": "合作网站", "tier": "other", "channel": "feed", "secret_env": "FEED_TOKEN"},
        {"id": "n-open", "name": "公开订阅", "tier": "other", "channel": "feed"},
    ]}, allow_unicode=True))
    matrix = load_matrix(path, regions, environ={"FEED_TOKEN": "feed-token-123456"})
    notice = make_notice(title="<script>x</script> & 标题 😀", truth="真相 ]]> <b>")
    store.queue.add_notices([(notice, matrix.outlets), (make_notice(ref="b", title="第二条"), matrix.outlets)], source="t")
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, matrix, settings, client)
        await dispatcher.run(until_idle=True)  # nothing to push: returns at once, nothing attempted
        await dispatcher.close()
    assert store.log.attempts() == [] and {r["status"] for r in store.log.deliveries()} == {"pending"}

    async with FeedServer(store, matrix) as feeds:
        with pytest.raises(httpx.HTTPStatusError):
            await read_feed(feeds.url("n-feed"), token="wrong")
        atom = await read_feed(feeds.url("n-feed"), token="feed-token-123456")
        as_json = await read_feed(feeds.url("n-open", "json"))
    assert [e["title"] for e in atom] == ["【辟谣】第二条", "【辟谣】<script>x</script> & 标题 😀"]
    assert [e["title"] for e in as_json] == [e["title"] for e in atom]
    assert "真相 ]]> <b>" in atom[1]["content"]
    rows = store.log.deliveries()
    assert {r["status"] for r in rows} == {"delivered"}
    assert {(t["trigger"], t["outcome"], t["http_status"]) for t in store.log.attempts()} == {("fetch", "delivered", 200)}
    assert len(store.log.attempts()) == 4
