"""The matrix page of a notice: its cells by tier and district group, each cell's attempts, retry and resume
from there, and its live stream of changed cells."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx

from bot.store import Role
from bot.web.pages import SESSION_COOKIE
from bot.web.pages.live import CellWatch
from bot.web.server import WebServer
from tests.conftest import until
from tests.web.conftest import Newsroom, csrf_of

DEADLINE = 10.0


async def test_the_matrix_shows_city_then_districts_by_group_then_n_each_cell_by_word_and_symbol(
        newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    newsroom.attempt("city-hualong", "delivered", http_status=200)
    newsroom.attempt("dist-nanan", "failed", error="HTTP 400: errcode 93000")
    viewer = await newsroom.login(Role.viewer)
    page = await viewer.get(f"/notices/{ref}")
    assert page.status_code == 200, page.text
    text = page.text
    order = [text.index(word) for word in ("市级平台", "区县融媒体中心", "主城都市区", "其他")]
    assert order == sorted(order)
    assert re.search(r'class="cell state-delivered".*?✓</span> 已送达', text, re.S)
    assert re.search(r'class="cell state-failed".*?✗</span> 失败', text, re.S)
    assert f'hx-ext="sse" sse-connect="/notices/{ref}/events?since=' in text


async def test_a_cell_shows_its_attempts_in_chongqing_time_and_an_operator_retries_it_there(
        newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    failed = newsroom.attempt("dist-nanan", "failed", error="HTTP 400: errcode 93000 <b>x</b>", platform_code="93000")
    viewer = await newsroom.login(Role.viewer)
    detail = await viewer.get(f"/notices/{ref}/cells/{failed}", headers={"HX-Request": "true"})
    assert detail.status_code == 200
    assert "<html" not in detail.text  # a fragment for htmx
    assert "93000" in detail.text and "&lt;b&gt;x&lt;/b&gt;" in detail.text and "12.5" not in detail.text
    assert "13 ms" in detail.text or "12 ms" in detail.text
    assert "/retry" not in detail.text  # a viewer sees no retry
    assert (await viewer.get(f"/notices/{ref}/cells/{failed}")).text.startswith("<!doctype html>")  # without JS
    refused = await viewer.post(f"/notices/{ref}/cells/{failed}/retry",
                                data={"csrf": csrf_of(await viewer.get(f"/notices/{ref}"))})
    assert refused.status_code == 403

    operator = await newsroom.login(Role.operator)
    detail = await operator.get(f"/notices/{ref}/cells/{failed}", headers={"HX-Request": "true"})
    assert f"/notices/{ref}/cells/{failed}/retry" in detail.text
    forged = await operator.post(f"/notices/{ref}/cells/{failed}/retry", data={"csrf": "forged"})
    assert forged.status_code == 403 and newsroom.store.log.delivery(failed)["status"] == "failed"
    page = await operator.get(f"/notices/{ref}")
    done = await operator.post(f"/notices/{ref}/cells/{failed}/retry",
                               headers={"HX-Request": "true", "X-CSRF-Token": csrf_of(page)})
    assert done.status_code == 200 and "已重新排队" in done.text
    assert newsroom.store.log.delivery(failed)["status"] == "pending"
    assert newsroom.store.audit.page(action="deliveries.retry").rows[-1]["actor"] == "operator-李四"


async def test_an_operator_resumes_a_paused_outlet_from_its_cell(newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    newsroom.store.health.pause("dist-yuzhong", "维护中 <script>alert(1)</script>")
    delivery = newsroom.store.log.page(ref=ref, outlet_id="dist-yuzhong").rows[0]
    operator = await newsroom.login(Role.operator)
    page = await operator.get(f"/notices/{ref}")
    assert "渠道已暂停：维护中 &lt;script&gt;" in page.text and "<script>alert" not in page.text
    detail = await operator.get(f"/notices/{ref}/cells/{delivery['id']}")
    assert "/resume" in detail.text
    done = await operator.post(f"/notices/{ref}/cells/{delivery['id']}/resume", data={"csrf": csrf_of(detail)})
    assert done.status_code == 303
    assert newsroom.store.health.paused() == {}
    assert newsroom.store.audit.page(action="outlet.resume").rows[-1]["subject"] == "dist-yuzhong"


async def test_an_unknown_notice_or_a_cell_of_another_notice_is_a_clear_404(newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    other = newsroom.submit(ref="cq-test-002")
    cell = newsroom.store.log.page(ref=other).rows[0]["id"]
    viewer = await newsroom.login(Role.viewer)
    assert (await viewer.get("/notices/cq-none")).status_code == 404
    answer = await viewer.get(f"/notices/{ref}/cells/{cell}")
    assert answer.status_code == 404 and "没有编号为" in answer.text


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """The (event, data) pairs of a text/event-stream, as an EventSource reads them."""
    name, data = "message", []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def states_in(html: str) -> dict[int, str]:
    return {int(i): s for i, s in re.findall(r'<li id="cell-(\d+)" class="cell state-(\w+)" hx-swap-oob="true"', html)}


async def test_the_stream_sends_a_cell_when_its_delivery_changes_and_coalesces_many_changes_into_few_updates(
        newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    ids = {r["outlet"]: r["id"] for r in newsroom.store.log.page(ref=ref).rows}
    viewer = await newsroom.login(Role.viewer)
    cookie = viewer.cookies[SESSION_COOKIE]
    watch = newsroom.app.state.cells = CellWatch(newsroom.store, interval=0.5)  # type: ignore[attr-defined]
    async with WebServer(newsroom.app, "127.0.0.1:0") as web, httpx.AsyncClient(
            base_url=web.url, cookies={SESSION_COOKIE: cookie}, timeout=DEADLINE) as browser:
        async with browser.stream("GET", f"/notices/{ref}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            reader = events(stream)
            name, first = await asyncio.wait_for(anext(reader), DEADLINE)
            assert name == "cells" and states_in(first) == dict.fromkeys(ids.values(), "pending")
            assert 'hx-get="/notices/' in first

            await asyncio.to_thread(newsroom.attempt, "city-hualong", "delivered", None, 200)
            name, update = await asyncio.wait_for(anext(reader), DEADLINE)
            assert states_in(update) == {ids["city-hualong"]: "delivered"}  # only the cell that changed
            counts = re.search(r'<span id="counts" hx-swap-oob="true">(.*?)</span>$', update)
            assert counts, "the summary above the cells follows in the same update"
            assert "已送达 1" in counts[1] and f"待送达 {len(ids) - 1}" in counts[1]

            # three deliveries change within one interval: the viewer gets them together
            for outlet in ("dist-yuzhong", "dist-nanan", "n-group"):
                await asyncio.to_thread(newsroom.attempt, outlet, "failed")
            seen: dict[int, str] = {}
            updates = 0
            while len(seen) < 3:
                name, update = await asyncio.wait_for(anext(reader), DEADLINE)
                seen |= states_in(update)
                updates += 1
            assert seen == {ids[o]: "failed" for o in ("dist-yuzhong", "dist-nanan", "n-group")}
            assert updates < 3
            assert len(watch.feeds) == 1  # one poller for the notice, however many viewers
    await until(lambda: watch.feeds == {}, 5, what="the poller to end once the viewer left")


async def test_the_matrix_speaks_english_when_the_person_chose_it(newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    viewer = await newsroom.login(Role.viewer)
    await viewer.get("/language/en")
    page = (await viewer.get(f"/notices/{ref}")).text
    assert '<html lang="en">' in page
    assert "City platforms (5)" in page and "Main urban metropolitan area (主城都市区)" in page
    assert '<span aria-hidden="true">…</span> Pending' in page
