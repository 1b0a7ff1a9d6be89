"""Receipts (回执), end to end in one process: real loopback webhook outlets, the real dispatcher, the real web
app (httpx's ASGI transport) and a real store on both backends. The daemon's reminders and escalations across
processes are in tests/test_receipts_daemon.py."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.outlets import OutletMatrix
from bot.receipts import ReceiptLinks
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Role, Store, Windows
from bot.store.tables import audit, receipts
from bot.web import Site, create_app
from tests.conftest import until

KEY = "receipt-key-for-tests-0123456789abcdef"
PUBLIC = "https://piyao.example.gov.cn"


def receipt_settings(settings: Settings, **extra: Any) -> Settings:
    return Settings(**settings.model_dump(exclude={"receipt_key"}) | {"public_url": PUBLIC, "receipt_key": KEY, **extra})


async def deliver(store: Store, matrix: OutletMatrix, settings: Settings) -> None:
    async with make_sender(settings) as client:
        await Dispatcher(store, matrix, settings, client).run(until_idle=True)


def app_client(store: Store, settings: Settings, regions: RegionTable, matrix: OutletMatrix) -> httpx.AsyncClient:
    app = create_app(Site(settings, store, regions, matrix))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=("203.0.113.7", 5000)), base_url=PUBLIC)


def path_of(url: str) -> str:
    assert url.startswith(PUBLIC + "/r/"), url
    return url.removeprefix(PUBLIC)


def snapshot(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return [*conn.execute(sa.select(receipts).order_by(receipts.c.delivery_id)),
                *conn.execute(sa.select(audit.c.action, audit.c.actor))]


@pytest.fixture
async def delivered(loopback: Any, store: Store, settings: Settings, make_notice: Callable[..., Notice],
                    regions: RegionTable) -> Any:
    outlets, matrix = await loopback(4)
    settings = receipt_settings(settings)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    await deliver(store, matrix, settings)
    links = {p.outlet: p.payload["data"]["receipt_url"] for p in outlets.posts}
    return outlets, matrix, settings, links


async def test_every_webhook_post_carries_its_own_receipt_url_under_the_public_url(delivered: Any) -> None:
    outlets, matrix, _, links = delivered
    assert set(links) == {o.id for o in matrix.outlets}
    assert len(set(links.values())) == len(links)
    assert all(url.startswith(PUBLIC + "/r/") for url in links.values())


async def test_without_a_public_url_no_post_carries_a_receipt_link(
    loopback: Any, store: Store, settings: Settings, make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix = await loopback(2)
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    await deliver(store, matrix, settings)
    assert len(outlets.posts) == 2
    assert all("receipt_url" not in p.payload["data"] for p in outlets.posts)


async def test_a_district_confirms_by_the_page_and_the_log_shows_published_with_time_and_link(
    delivered: Any, store: Store, regions: RegionTable
) -> None:
    _, matrix, settings, links = delivered
    async with app_client(store, settings, regions, matrix) as client:
        page = await client.get(path_of(links["outlet-0001"]))
        assert page.status_code == 200 and "确认已转载" in page.text and "长江重庆段水位" in page.text
        assert page.headers["referrer-policy"] == "no-referrer" and page.headers["cache-control"] == "no-store"
        assert snapshot(store) == [], "opening the page changes nothing"
        done = await client.post(path_of(links["outlet-0001"]), data={"published_url": "https://yz.example/a/1"})
    assert done.status_code == 200 and "已确认转载" in done.text
    marks = store.receipts.published_outlets("cq-test-001")
    assert set(marks) == {"outlet-0001"}
    assert marks["outlet-0001"].url == "https://yz.example/a/1" and marks["outlet-0001"].current
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(audit)).one()
    assert (row.action, row.actor, row.role, row.source) == ("receipt.confirm", "outlet-0001", "receipt", "203.0.113.7")


async def test_a_confirmed_receipt_turns_its_matrix_cell_to_republished_and_the_live_poll_sees_it(
    delivered: Any, store: Store, regions: RegionTable
) -> None:
    _, matrix, settings, links = delivered
    token, _ = store.access.create("值班员", Role.viewer)
    before = store.db.clock()
    assert store.log.cells("cq-test-001", updated_since=before) == []
    async with app_client(store, settings, regions, matrix) as client:
        form = await client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)[1]  # type: ignore[index]
        assert (await client.post("/login", data={"token": token, "csrf": csrf})).status_code == 303
        page = await client.get("/notices/cq-test-001")
        assert "state-published" not in page.text and page.text.count("state-delivered") >= 4
        assert (await client.post(path_of(links["outlet-0002"]), json={})).status_code == 200
        page = await client.get("/notices/cq-test-001")
    changed = store.log.cells("cq-test-001", updated_since=before)
    assert [(c["outlet"], c["published_at"] is not None) for c in changed] == [("outlet-0002", True)]
    assert "已转载" in page.text
    assert re.findall(r'<li id="cell-(\d+)" class="cell state-published"', page.text) == [str(changed[0]["id"])]


async def test_a_receiver_confirms_by_posting_json_and_an_empty_body_confirms_without_a_link(
    delivered: Any, store: Store, regions: RegionTable
) -> None:
    _, matrix, settings, links = delivered
    async with app_client(store, settings, regions, matrix) as client:
        with_url = await client.post(path_of(links["outlet-0002"]), json={"published_url": "https://cs.example/p/9"})
        without = await client.post(path_of(links["outlet-0003"]), json={})
    assert with_url.status_code == 200
    assert with_url.json() | {"published_at": None} == {"notice": "cq-test-001", "outlet": "outlet-0002", "version": 1,
                                                          "published_at": None, "published_url": "https://cs.example/p/9"}
    assert without.status_code == 200 and without.json()["published_url"] is None
    assert set(store.receipts.published_outlets("cq-test-001")) == {"outlet-0002", "outlet-0003"}


async def test_a_replayed_token_is_a_409_that_changes_nothing(delivered: Any, store: Store, regions: RegionTable) -> None:
    _, matrix, settings, links = delivered
    async with app_client(store, settings, regions, matrix) as client:
        assert (await client.post(path_of(links["outlet-0001"]), json={})).status_code == 200
        before = snapshot(store)
        again = await client.post(path_of(links["outlet-0001"]), json={"published_url": "https://other.example/x"})
        page = await client.get(path_of(links["outlet-0001"]))
    assert again.status_code == 409 and "works once" in again.json()["detail"]
    assert page.status_code == 409 and "无法重复确认" in page.text
    assert snapshot(store) == before


async def test_a_forged_token_is_a_400_and_an_expired_one_a_410_and_neither_changes_anything(
    delivered: Any, store: Store, regions: RegionTable
) -> None:
    _, matrix, settings, links = delivered
    token = path_of(links["outlet-0001"]).removeprefix("/r/")
    forged_key = ReceiptLinks(PUBLIC, "another-key-" + KEY, timedelta(days=7)).token(1, 1)
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    expired_settings = receipt_settings(settings, receipt_ttl="1s")
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).timestamp()
    expired_token = ReceiptLinks(PUBLIC, KEY, timedelta(days=7), clock=lambda: an_hour_ago).token(1, 1)
    async with app_client(store, settings, regions, matrix) as client:
        answers = [await client.post(f"/r/{t}", json={}) for t in (forged_key, tampered, "nonsense")]
        page = await client.get(f"/r/{tampered}")
    async with app_client(store, expired_settings, regions, matrix) as client:
        expired = await client.post(f"/r/{expired_token}", json={})
        expired_page = await client.get(f"/r/{expired_token}")
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert all("not valid" in a.json()["detail"] and "nothing was recorded" in a.json()["detail"] for a in answers)
    assert page.status_code == 400 and "链接无效" in page.text
    assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    assert expired_page.status_code == 410 and "链接已失效" in expired_page.text
    assert snapshot(store) == []


async def test_a_published_url_that_is_not_an_address_is_a_422_and_records_nothing(
    delivered: Any, store: Store, regions: RegionTable
) -> None:
    _, matrix, settings, links = delivered
    async with app_client(store, settings, regions, matrix) as client:
        bad = await client.post(path_of(links["outlet-0001"]), json={"published_url": "javascript:alert(1)"})
        form = await client.post(path_of(links["outlet-0001"]), data={"published_url": "不是网址"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "published_url"
    assert form.status_code == 422 and "转载链接格式不正确" in form.text
    assert snapshot(store) == []


async def test_after_a_correction_a_version_1_link_is_refused_and_the_correction_carries_a_link_that_works(
    delivered: Any, store: Store, regions: RegionTable, make_notice: Callable[..., Notice]
) -> None:
    outlets, matrix, settings, links = delivered
    async with app_client(store, settings, regions, matrix) as client:
        assert (await client.post(path_of(links["outlet-0001"]), json={})).status_code == 200
        store.queue.add_notices([(make_notice(truth="经核实，水位平稳，较昨日上涨0.3米。", correct=True,
                                              correction_note="水位数据有误"), matrix.outlets)], source="test")
        await deliver(store, matrix, settings)
        corrections = {p.outlet: p.payload["data"] for p in outlets.posts if p.payload["type"] == "notice.corrected"}
        assert set(corrections) == {o.id for o in matrix.outlets}
        before = snapshot(store)
        old = await client.post(path_of(links["outlet-0002"]), json={})
        old_page = await client.get(path_of(links["outlet-0002"]))
        assert old.status_code == 409 and "corrected (更正) to version 2" in old.json()["detail"]
        assert old_page.status_code == 409
        assert snapshot(store) == before
        marks = store.receipts.published_outlets("cq-test-001")
        assert not marks["outlet-0001"].current, "a confirmed version 1 does not count for version 2"
        new = await client.post(path_of(corrections["outlet-0001"]["receipt_url"]), json={})
    assert new.status_code == 200 and new.json()["version"] == 2
    assert store.receipts.published_outlets("cq-test-001")["outlet-0001"].current


async def test_a_retracted_notices_link_is_a_410(delivered: Any, store: Store, regions: RegionTable) -> None:
    from bot.store import Actor

    outlets, matrix, settings, links = delivered
    store.lifecycle.retract("cq-test-001", "核实有误", Actor("编辑", "editor", "test"))
    async with app_client(store, settings, regions, matrix) as client:
        answer = await client.post(path_of(links["outlet-0001"]), json={})
    assert answer.status_code == 410 and "retracted" in answer.json()["detail"]
    assert snapshot(store)[-1].action == "notice.retract" and len(snapshot(store)) == 1


async def test_a_reminder_is_claimed_once_and_an_escalation_raised_once_per_notice(
    delivered: Any, store: Store
) -> None:
    _, matrix, settings, _ = delivered
    with store.engine.connect() as conn:
        released = conn.execute(sa.text("SELECT released_at FROM notices")).scalar_one()
    released = released if isinstance(released, datetime) else datetime.fromisoformat(released)
    released = released.replace(tzinfo=UTC) if released.tzinfo is None else released
    windows = Windows(timedelta(hours=2), timedelta(minutes=30))
    districts = [o.id for o in matrix.outlets if o.tier.value == "district"]
    assert store.receipts.claim_reminders(windows, districts, now=released + timedelta(minutes=59)) == []
    first = store.receipts.claim_reminders(windows, districts, now=released + timedelta(minutes=61))
    again = store.receipts.claim_reminders(windows, districts, now=released + timedelta(minutes=62))
    assert sorted(r.outlet_id for r in first) == districts and again == []
    assert store.receipts.escalate(windows, districts, now=released + timedelta(minutes=119)) == 0
    assert store.receipts.escalate(windows, districts, now=released + timedelta(minutes=121)) == 1
    assert store.receipts.escalate(windows, districts, now=released + timedelta(minutes=122)) == 0
    [alert] = store.outbox.unsent()
    assert alert["kind"] == "unpublished" and all(d in alert["text"] for d in districts)


async def test_the_report_api_csv_and_cli_give_each_districts_figures_as_the_deliveries_and_receipts_say(
    loopback: Any, store: Store, settings: Settings, make_notice: Callable[..., Notice], regions: RegionTable,
    tmp_path: Path, database_url: str
) -> None:
    import csv
    import io

    from bot.store import Actor, Role
    from tests.test_cli import debunkbot

    outlets, matrix = await loopback(6)  # outlet-0002, -0003 and -0004 are districts
    settings = receipt_settings(settings, outlets=tmp_path / "outlets.yaml")
    store.queue.add_notices([(make_notice(ref="cq-r-1"), matrix.outlets)], source="test")
    store.queue.add_notices([(make_notice(ref="cq-r-2", title="网传“地铁停运”系谣言"), matrix.outlets)], source="test")
    await deliver(store, matrix, settings)
    links = {(p.payload["data"]["ref"], p.outlet): p.payload["data"]["receipt_url"] for p in outlets.posts}
    token = store.access.create("科室", Role.viewer, Actor.local())[0]
    async with app_client(store, settings, regions, matrix) as client:
        for ref, outlet in (("cq-r-1", "outlet-0002"), ("cq-r-2", "outlet-0002"), ("cq-r-1", "outlet-0003")):
            assert (await client.post(path_of(links[ref, outlet]), json={})).status_code == 200
        windows = Windows(timedelta(hours=1), timedelta(hours=1))
        later = datetime.now(UTC) + timedelta(minutes=31)  # past half of both notices' windows, before their end
        reminded = store.receipts.claim_reminders(windows, ["outlet-0002", "outlet-0003", "outlet-0004"], now=later)
        as_json = (await client.get("/api/v1/report", params={"since": "1d"},
                                    headers={"Authorization": f"Bearer {token}"})).json()
        as_csv = await client.get("/api/v1/report", params={"since": "1d", "format": "csv"},
                                  headers={"Authorization": f"Bearer {token}"})
    assert sorted((r.outlet_id, r.ref) for r in reminded) == [("outlet-0003", "cq-r-2"), ("outlet-0004", "cq-r-1"),
                                                              ("outlet-0004", "cq-r-2")]
    with store.engine.connect() as conn:
        rows = list(conn.execute(sa.select(receipts.c.delivery_id, receipts.c.published_at, receipts.c.delivered_at)
                                 .where(receipts.c.published_at.is_not(None))))
    by_outlet = {d["outlet"]: d for d in as_json["districts"]}
    assert list(by_outlet) == ["outlet-0002", "outlet-0003", "outlet-0004"]
    assert [(d["received"], d["published"], d["reminded"]) for d in by_outlet.values()] == [(2, 2, 0), (2, 1, 1), (2, 0, 2)]
    deliveries = {r["id"]: r["outlet"] for r in store.log.deliveries()}
    minutes = sorted((r.published_at - r.delivered_at).total_seconds() / 60 for r in rows
                     if deliveries[r.delivery_id] == "outlet-0002")
    assert by_outlet["outlet-0002"]["median_minutes"] == round(sum(minutes) / 2, 1)
    assert by_outlet["outlet-0004"]["median_minutes"] is None
    assert as_csv.headers["content-type"].startswith("text/csv") and as_csv.content.startswith("\ufeff".encode())
    table = list(csv.reader(io.StringIO(as_csv.content.decode("utf-8-sig"))))
    assert table[0][0] == "区县融媒体中心" and [row[3:5] + row[6:] for row in table[1:]] == [
        ["2", "2", "0"], ["2", "1", "1"], ["2", "0", "2"]]
    env = {"DEBUNKBOT_DATABASE_URL": database_url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"), "COLUMNS": "200"}
    code, out, err = await debunkbot(env, "report", "--since", "1d", "--json")
    assert code == 0, err
    assert [(line["outlet"], line["published"], line["reminded"]) for line in map(__import__("json").loads, out.splitlines())] == [
        ("outlet-0002", 2, 0), ("outlet-0003", 1, 1), ("outlet-0004", 0, 2)]
    code, out, err = await debunkbot(env, "status", "cq-r-1")
    assert code == 0 and "district delivered 3 / published 2" in out, out + err


def test_each_channel_shows_the_receipt_link_in_its_own_form_and_a_retraction_or_public_post_none(
    make_notice: Callable[..., Notice]
) -> None:
    import json

    from bot.receipts import Receipt, receipt_for
    from channels import CHANNELS

    notice = make_notice(sources=[{"title": "水利局通报", "url": "https://slj.example/1"}])
    url = PUBLIC + "/r/eyJkIjoxfQ.Zz_x-y.abc_DEF-ghi"
    receipt = Receipt(url)
    now = datetime.now(UTC)
    dingtalk = json.loads(CHANNELS["dingtalk"].render(notice, now, receipt=receipt).body)
    assert dingtalk["markdown"]["text"].endswith("[确认已转载](https://piyao.example.gov.cn/r/eyJkIjoxfQ.Zz%5Fx-y.abc%5FDEF-ghi)"
                                                 "（转载后点此确认，可填写转载链接）")
    card = json.loads(CHANNELS["dingtalk"].render(notice, now, {"msgtype": "actionCard"}, receipt=receipt).body)
    assert card["actionCard"]["btns"] == [{"title": "阅读全文", "actionURL": "https://slj.example/1"},
                                          {"title": "确认已转载", "actionURL": url}]
    assert "确认已转载" not in card["actionCard"]["text"]
    wecom = json.loads(CHANNELS["wecom"].render(notice, now, receipt=receipt).body)
    assert "[确认已转载](https://piyao.example.gov.cn/r/eyJkIjoxfQ.Zz%5Fx-y" in wecom["markdown"]["content"]
    feishu = json.loads(CHANNELS["feishu"].render(notice, now, receipt=receipt).body)
    assert [{"tag": "a", "text": "确认已转载", "href": url}] in feishu["content"]["post"]["zh_cn"]["content"]
    webhook = json.loads(CHANNELS["webhook"].render(notice, now, receipt=receipt).body)
    assert webhook["data"]["receipt_url"] == url and webhook["type"] == "notice.published"
    assert CHANNELS["feed"].feed_item(notice, now, {}, receipt=receipt)["_debunkbot"]["receipt_url"] == url
    reminder = json.loads(CHANNELS["webhook"].render(notice, now, receipt=Receipt(url, remind_by=now)).body)
    assert reminder["type"] == "notice.reminder" and "【提醒】" in reminder["data"]["text"]
    links = ReceiptLinks(PUBLIC, KEY, timedelta(days=7))
    assert receipt_for(links, "webhook", 1, 1, "retraction") is None
    assert receipt_for(links, "weibo", 1, 1, "notice") is None and receipt_for(links, "wechat_mp", 1, 1, "notice") is None
    assert receipt_for(None, "webhook", 1, 1, "notice") is None


async def test_an_atom_feed_entry_links_its_receipt(
    store: Store, settings: Settings, regions: RegionTable, make_notice: Callable[..., Notice], tmp_path: Path
) -> None:
    import yaml

    from bot.outlets import load_matrix

    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"id": "n-open", "name": "公开订阅", "tier": "district",
                                                 "region": "全市", "channel": "feed"}]}, allow_unicode=True))
    matrix = load_matrix(path, regions, environ={})
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    async with app_client(store, receipt_settings(settings), regions, matrix) as client:
        atom = (await client.get("/feeds/n-open.atom")).text
        link = atom.split('<link rel="related" title="确认已转载" href="')[1].split('"')[0]
        assert (await client.post(path_of(link.replace("&amp;", "&")), json={})).status_code == 200
    assert set(store.receipts.published_outlets("cq-test-001")) == {"n-open"}


async def test_in_a_browser_a_district_opens_its_receipt_link_confirms_and_sees_it_confirmed(
    delivered: Any, store: Store, regions: RegionTable
) -> None:
    import asyncio
    import socket

    import uvicorn
    from playwright.async_api import async_playwright

    _, matrix, settings, links = delivered
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Site(settings, store, regions, matrix)), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started, what="the web server")
        link = f"http://127.0.0.1:{port}" + path_of(links["outlet-0002"])
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = await browser.new_page(locale="zh-CN")
            await page.goto(link)
            assert await page.locator("h1").inner_text() == "确认已转载"
            await page.fill("#published_url", "https://yz.example/a/7")
            await page.click("button[type=submit]")
            await page.wait_for_selector("[role=status]")
            assert "已确认转载" in await page.locator("[role=status]").inner_text()
            await page.goto(link)  # the link worked once
            assert "无法重复确认" in await page.locator("[role=alert]").inner_text()
            await browser.close()
    finally:
        server.should_exit = True
        await serving
    assert store.receipts.published_outlets("cq-test-001")["outlet-0002"].url == "https://yz.example/a/7"


def test_notices_released_before_receipts_were_switched_on_get_no_reminder_and_no_escalation(
    store: Store, make_notice: Callable[..., Notice], regions: RegionTable, tmp_path: Path
) -> None:
    from bot.outlets import load_matrix

    path = tmp_path / "outlets.yaml"
    path.write_text("outlets:\n  - {id: d1, name: 区县, tier: district, region: 全市, channel: feed}\n", encoding="utf-8")
    matrix = load_matrix(path, regions, environ={})
    store.queue.add_notices([(make_notice(ref="cq-old"), matrix.outlets)], source="test")
    on = store.receipts.switched_on(now=datetime.now(UTC) + timedelta(seconds=1))
    assert store.receipts.switched_on(now=datetime.now(UTC) + timedelta(hours=1)) == on, "the first time stays"
    store.queue.add_notices([(make_notice(ref="cq-new", title="网传“封城”系谣言"), matrix.outlets)], source="test")
    with store.engine.begin() as conn:  # as if released after the switch
        conn.execute(sa.text("UPDATE notices SET released_at = :at WHERE ref = 'cq-new'"), {"at": on + timedelta(seconds=1)})
    windows = Windows(timedelta(minutes=10), timedelta(minutes=10))
    later = on + timedelta(minutes=11)
    assert store.receipts.escalate(windows, ["d1"], now=later, since=on) == 1
    [alert] = [a for a in store.outbox.unsent() if a["kind"] == "unpublished"]
    assert "cq-new" in alert["text"] and "cq-old" not in alert["text"]
