"""Feeds: the bot's web server serves Atom and JSON Feed per outlet; a fetch is the delivery, recorded as an
attempt. Served for real on loopback (uvicorn), as outlets fetch them."""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import read_feed
from bot.web import PROBLEM, Site, create_app
from bot.web.server import WebServer
from tests.conftest import until


class Feeds:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def url(self, outlet_id: str, kind: str = "atom") -> str:
        return f"{self.base_url}/feeds/{outlet_id}.{kind}"


@contextlib.asynccontextmanager
async def serving(store: Store, matrix: OutletMatrix, regions: RegionTable) -> AsyncIterator[Feeds]:
    """The bot's web server on a free loopback port."""
    site = Site(Settings(database_url=str(store.engine.url)), store, regions, matrix)
    async with WebServer(create_app(site), "127.0.0.1:0") as web:
        yield Feeds(web.url)


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

    async with serving(store, matrix, regions) as feeds:
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


ATOM = "{http://www.w3.org/2005/Atom}"
TOKEN = "feed-token-123456"


def _valid_atom(body: bytes) -> ET.Element:
    """RFC 4287's musts: feed id, title, updated (RFC 3339), an author on the feed or every entry; each entry an
    id, title and updated; content or an alternate link; at most one alternate link per type."""
    root = ET.fromstring(body)
    assert root.tag == f"{ATOM}feed"
    for element, where in [(root, "feed"), *((e, "entry") for e in root.iter(f"{ATOM}entry"))]:
        for required in ("id", "title", "updated"):
            assert len(element.findall(f"{ATOM}{required}")) == 1, f"{where} needs one {required}"
        datetime.fromisoformat(element.findtext(f"{ATOM}updated") or "")
        assert (element.findtext(f"{ATOM}id") or "").startswith(("tag:", "http", "urn:"))
        if where == "entry":
            assert element.find(f"{ATOM}author") is not None or root.find(f"{ATOM}author") is not None
            alternate = element.find(f"{ATOM}link[@rel='alternate']")
            assert element.find(f"{ATOM}content") is not None or alternate is not None
        for link in element.findall(f"{ATOM}link"):
            assert link.get("href"), f"{where} link without href"
    return root


def _valid_json_feed(body: bytes) -> dict[str, Any]:
    """JSON Feed 1.1 (https://jsonfeed.org/version/1.1): version, title and items required; each item an id
    (string) and content_html or content_text; optional fields, when present, of their type (no null)."""
    feed = json.loads(body)
    assert feed["version"] == "https://jsonfeed.org/version/1.1" and isinstance(feed["title"], str)
    for key in ("home_page_url", "feed_url", "next_url", "language"):
        assert key not in feed or isinstance(feed[key], str), key
    for item in feed["items"]:
        assert isinstance(item["id"], str) and isinstance(item.get("content_text", item.get("content_html")), str)
        for key in ("url", "title", "summary", "date_published", "content_text"):
            assert key not in item or isinstance(item[key], str), (key, item.get(key))
        assert all(isinstance(a, dict) and isinstance(a.get("name"), str) for a in item.get("authors", []))
        assert isinstance(item.get("tags", []), list)
    return feed


def _feed_matrix(tmp_path: Path, regions: RegionTable) -> Any:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [
        {"id": "n-feed", "name": "合作网站", "tier": "other", "channel": "feed", "secret_env": "FEED_TOKEN"},
    ]}, allow_unicode=True))
    return load_matrix(path, regions, environ={"FEED_TOKEN": TOKEN})


@pytest.mark.parametrize("kind", ["atom", "json"])
async def test_a_feed_is_valid_never_carries_the_readers_token_and_has_no_null_url(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice], kind: str
) -> None:
    matrix = _feed_matrix(tmp_path, regions)
    linked = [{"title": "通报", "url": "https://slj.cq.example/1"}]
    store.queue.add_notices([(make_notice(ref="a", sources=[]), matrix.outlets),
                       (make_notice(ref="b", sources=linked), matrix.outlets)], source="t")
    async with serving(store, matrix, regions) as feeds, httpx.AsyncClient(trust_env=False) as client:
        answer = await client.get(feeds.url("n-feed", kind), params={"token": TOKEN})
    assert answer.status_code == 200 and TOKEN.encode() not in answer.content
    if kind == "json":
        feed = _valid_json_feed(answer.content)
        assert feed["feed_url"] == feeds.url("n-feed", "json")
        assert [("url" in item) for item in feed["items"]] == [True, False]  # b has a source, a has none
    else:
        root = _valid_atom(answer.content)
        assert root.find(f"{ATOM}link[@rel='self']").get("href") == feeds.url("n-feed")  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["atom", "json"])
async def test_sixty_notices_are_paged_and_each_fetch_delivers_exactly_what_it_listed(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice], kind: str
) -> None:
    matrix = _feed_matrix(tmp_path, regions)
    store.queue.add_notices([(make_notice(ref=f"n{i:02d}", title=f"第{i}条"), matrix.outlets) for i in range(60)], source="t")
    headers = {"authorization": f"Bearer {TOKEN}"}

    def statuses() -> dict[str, int]:
        rows = store.log.deliveries()
        return {s: sum(1 for r in rows if r["status"] == s) for s in ("pending", "delivered")}

    async with serving(store, matrix, regions) as feeds, httpx.AsyncClient(trust_env=False, headers=headers) as client:
        first = await client.get(feeds.url("n-feed", kind))
        if kind == "json":
            listed, next_url = _valid_json_feed(first.content)["items"], _valid_json_feed(first.content)["next_url"]
        else:
            root = _valid_atom(first.content)
            listed = root.findall(f"{ATOM}entry")
            next_url = root.find(f"{ATOM}link[@rel='next']").get("href")  # type: ignore[union-attr]
        assert len(listed) == 50 and TOKEN not in next_url
        await until(lambda: statuses() == {"pending": 10, "delivered": 50})
        second = await client.get(next_url)
        await until(lambda: statuses() == {"pending": 0, "delivered": 60})
    if kind == "json":
        last = _valid_json_feed(second.content)
        assert len(last["items"]) == 10 and "next_url" not in last
    else:
        last_page = _valid_atom(second.content)
        assert len(last_page.findall(f"{ATOM}entry")) == 10 and last_page.find(f"{ATOM}link[@rel='next']") is None


async def test_a_head_request_delivers_nothing(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    matrix = _feed_matrix(tmp_path, regions)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="t")
    async with serving(store, matrix, regions) as feeds, httpx.AsyncClient(trust_env=False) as client:
        head = await client.head(feeds.url("n-feed"), headers={"authorization": f"Bearer {TOKEN}"})
        assert head.status_code == 200
        # the same connection's next request is handled after the HEAD's handler has finished, recording included
        assert (await client.get(feeds.url("n-feed"))).status_code == 401
        assert {r["status"] for r in store.log.deliveries()} == {"pending"} and store.log.attempts() == []
        await read_feed(feeds.url("n-feed"), token=TOKEN)
        await until(lambda: {r["status"] for r in store.log.deliveries()} == {"delivered"})


async def test_a_wrong_token_an_outlet_that_is_no_feed_and_a_page_out_of_range_are_problems_that_deliver_nothing(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    matrix = _feed_matrix(tmp_path, regions)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="t")
    async with serving(store, matrix, regions) as feeds, httpx.AsyncClient(trust_env=False) as client:
        wrong = await client.get(feeds.url("n-feed"), params={"token": "not-the-token"})
        unknown = await client.get(feeds.url("no-such-outlet", "json"))
        too_deep = await client.get(feeds.url("n-feed"), params={"token": TOKEN, "page": "1001"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert unknown.status_code == 404 and too_deep.status_code == 422
    for answer in (wrong, unknown, too_deep):
        assert answer.headers["content-type"] == PROBLEM and answer.json()["status"] == answer.status_code
    assert "page" in too_deep.json()["detail"]
    assert {r["status"] for r in store.log.deliveries()} == {"pending"} and store.log.attempts() == []


def open_feed_matrix(tmp_path: Path, regions: RegionTable) -> OutletMatrix:
    """A matrix of one open feed outlet, n-open."""
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"id": "n-open", "name": "公开订阅", "tier": "other",
                                                 "channel": "feed"}]}, allow_unicode=True))
    return load_matrix(path, regions, environ={})


async def test_a_fetch_recorded_after_a_correction_does_not_count_the_correction_as_delivered(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    matrix = open_feed_matrix(tmp_path, regions)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="t")
    (listed,) = [(delivery_id, change) for delivery_id, status, _, _, change in store.log.feed_entries("n-open")]
    assert listed[1] is None  # the feed shows version 1
    store.queue.add_notices([(make_notice(truth="经核实，水位上涨0.3米。", correct=True, correction_note="数据有误"),
                              matrix.outlets)], source="t")
    assert store.queue.record_fetch("n-open", {listed[0]: (1, False)}) == 0  # it listed v1; the outlet lacks v2
    (row,) = store.log.deliveries()
    assert row["status"] == "pending" and store.log.attempts() == []
    assert store.queue.record_fetch("n-open", {listed[0]: (2, False)}) == 1
    assert store.log.deliveries()[0]["status"] == "delivered"


async def test_a_correction_updates_the_feed_entry_in_place_and_a_retraction_replaces_it(
    store: Store, tmp_path: Path, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    matrix = open_feed_matrix(tmp_path, regions)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="t")
    async with serving(store, matrix, regions) as feeds:
        (first,) = await read_feed(feeds.url("n-open"))
        await until(lambda: store.log.deliveries()[0]["status"] == "delivered")  # recorded after the answer
        store.queue.add_notices([(make_notice(truth="经核实，水位上涨0.3米。", correct=True,
                                              correction_note="数据有误"), matrix.outlets)], source="t")
        (row,) = store.log.deliveries()
        assert row["status"] == "pending"  # the correction waits for the next fetch
        (corrected,) = await read_feed(feeds.url("n-open"))
        (as_json,) = await read_feed(feeds.url("n-open", "json"))
        await until(lambda: store.log.deliveries()[0]["status"] == "delivered")
        store.lifecycle.retract("cq-test-001", "经复核撤回", None)
        (retracted,) = await read_feed(feeds.url("n-open"))
        await until(lambda: store.log.deliveries()[0]["status"] == "delivered")
    assert corrected["id"] == first["id"] == retracted["id"] == as_json["id"]
    assert corrected["title"].startswith("【更正】") and "水位上涨0.3米" in corrected["content"]
    assert "数据有误" in corrected["content"]
    assert datetime.fromisoformat(corrected["updated"]) > datetime.fromisoformat(first["updated"])
    assert retracted["title"].startswith("【撤回】") and "经复核撤回" in retracted["content"]
    assert "上涨0.3米" not in retracted["content"]  # the retraction, not the notice
    history = store.lifecycle.history("cq-test-001")
    assert history is not None
    (outlet,) = history["outlets"]
    assert [(a["version"], a["carries"]) for a in outlet["attempts"]] == [(1, "notice"), (2, "correction"),
                                                                          (2, "retraction")]
