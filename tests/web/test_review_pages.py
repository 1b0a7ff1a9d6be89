"""The review pages: a reviewer's queue with the stage each draft waits for, the draft's page (content, per-outlet
preview, history, sign and send-back forms behind CSRF), the 审批表; and in a real browser (Debian's Chromium through
Playwright), a reviewer signs from the page and the sheet shows every stage (screenshot: docs/review-sheet.png)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.model import Notice
from bot.regions import RegionTable
from bot.store import Actor, Role
from bot.web.server import WebServer
from tests.conftest import notice_data
from tests.web.conftest import Newsroom, csrf_of

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def reviewed(newsroom: Newsroom, regions: RegionTable) -> Newsroom:
    """Three stages of review, a draft written by 编辑王五 waiting for its first."""
    newsroom.site.settings.review_stages = 3
    newsroom.store.review.stages = 3
    notice = Notice.model_validate(notice_data(urgency="urgent"), context={"regions": regions})
    newsroom.store.review.submit([notice], "api:编辑王五", Actor("编辑王五", "editor", "203.0.113.9"))
    return newsroom


def person(room: Newsroom, name: str, role: Role) -> str:
    token = room.store.access.create(name, role)[0]
    return token


async def login_as(room: Newsroom, token: str) -> object:
    client = room.client()
    form = await client.get("/login")
    answer = await client.post("/login", data={"token": token, "csrf": csrf_of(form), "next": "/"})
    assert answer.status_code == 303
    return client


async def test_the_queue_shows_the_stage_each_draft_waits_for_and_the_page_its_preview(reviewed: Newsroom) -> None:
    reviewer = await reviewed.login(Role.reviewer)
    queue = await reviewer.get("/review")
    assert queue.status_code == 200
    assert "cq-test-001" in queue.text and "初审 (1/3)" in queue.text and "待您签批" in queue.text
    page = await reviewer.get("/review/cq-test-001")
    assert "长江重庆段水位今晚将暴涨10米" in page.text and "各发布端预览" in page.text
    assert "融媒体dist-yuzhong" in page.text and 'name="csrf"' in page.text and "签批通过" in page.text


async def test_signing_from_the_page_needs_the_csrf_token_and_records_the_stage(reviewed: Newsroom) -> None:
    reviewer = await reviewed.login(Role.reviewer)
    page = await reviewer.get("/review/cq-test-001")
    digest = re.search(r'name="content_hash" value="([0-9a-f]{64})"', page.text).group(1)  # type: ignore[union-attr]
    forged = await reviewer.post("/review/cq-test-001/sign", data={"stage": "1", "comment": "同意"})
    assert forged.status_code == 403
    assert reviewed.store.review.get("cq-test-001").signed == []  # type: ignore[union-attr]
    signed = await reviewer.post("/review/cq-test-001/sign", data={"csrf": csrf_of(page), "stage": "1",
                                                                   "comment": "文字无误", "content_hash": digest})
    assert signed.status_code == 303
    state = reviewed.store.review.get("cq-test-001")
    assert state is not None and [(d.actor, d.stage, d.comment) for d in state.signed] == [("reviewer-李四", 1, "文字无误")]
    again = await reviewer.post("/review/cq-test-001/sign", data={"csrf": csrf_of(page), "stage": "2"})
    assert again.status_code == 403 and "signed stage 1" in again.text


async def test_an_editor_cannot_sign_and_a_send_back_from_the_page_needs_a_comment(reviewed: Newsroom) -> None:
    editor = await reviewed.login(Role.editor)
    page = await editor.get("/review/cq-test-001")
    assert "签批通过" not in page.text
    refused = await editor.post("/review/cq-test-001/sign", data={"csrf": csrf_of(page), "stage": "1"})
    assert refused.status_code == 403
    operator = await reviewed.login(Role.operator)
    page = await operator.get("/review/cq-test-001")
    bare = await operator.post("/review/cq-test-001/return", data={"csrf": csrf_of(page), "stage": "1", "comment": " "})
    assert bare.status_code == 409 and "needs a comment" in bare.text
    back = await operator.post("/review/cq-test-001/return", data={"csrf": csrf_of(page), "stage": "1",
                                                                   "comment": "请补充来源"})
    assert back.status_code == 303
    assert reviewed.store.review.get("cq-test-001").state == "returned"  # type: ignore[union-attr]


async def test_an_urgent_release_is_marked_in_words_on_the_notices_list_and_on_its_matrix_page(
    reviewed: Newsroom, regions: RegionTable
) -> None:
    concerned = reviewed.site.matrix.concerned_by
    reviewed.store.review.sign("cq-test-001", 1, Actor("审核甲", "reviewer", "203.0.113.8"), None, concerned)
    reviewed.store.review.release("cq-test-001", Actor("值班员", "operator", "203.0.113.8"), "汛情紧急", concerned)
    plain = Notice.model_validate(notice_data(ref="cq-plain", urgency="urgent"), context={"regions": regions})
    reviewed.store.review.submit([plain], "api:编辑王五", Actor("编辑王五", "editor", "203.0.113.9"))
    for stage, name in enumerate(("审核甲", "审核乙", "审核丙"), start=1):  # every stage signed: not urgent
        reviewed.store.review.sign("cq-plain", stage, Actor(name, "reviewer", "203.0.113.8"), None, concerned)
    viewer = await reviewed.login(Role.viewer)

    listed = (await viewer.get("/notices")).text
    rows = {ref: row for row in listed.split("<tr>") for ref in ("cq-test-001", "cq-plain") if f">{ref}<" in row}
    assert "紧急发布" in rows["cq-test-001"] and "紧急" in rows["cq-plain"] and "紧急发布" not in rows["cq-plain"]
    page = (await viewer.get("/notices/cq-test-001")).text
    assert "紧急发布" in page and "未经全部审核环节签批即发布：汛情紧急" in page
    assert "紧急发布" not in (await viewer.get("/notices/cq-plain")).text
    english = await reviewed.login(Role.viewer)
    english.headers["accept-language"] = "en"
    assert "Urgent release" in (await english.get("/notices")).text


@pytest.fixture
async def served(reviewed: Newsroom) -> AsyncIterator[tuple[Newsroom, str]]:
    async with WebServer(reviewed.app, "127.0.0.1:0") as web:  # type: ignore[arg-type]
        yield reviewed, web.url


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
async def test_a_reviewer_signs_from_the_page_in_a_browser_and_the_sheet_renders_every_stage(
    served: tuple[Newsroom, str],
) -> None:
    from playwright.async_api import async_playwright

    room, url = served
    concerned = room.site.matrix.concerned_by
    room.store.review.sign("cq-test-001", 1, Actor("审核甲", "reviewer", "203.0.113.8"), "文字无误", concerned)
    room.store.review.sign("cq-test-001", 2, Actor("审核乙", "reviewer", "203.0.113.8"), "事实与来源已核", concerned)
    final = person(room, "终审丙", Role.reviewer)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page(locale="zh-CN")
            await page.goto(f"{url}/login?next=/review")
            await page.fill("input[name=token]", final)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{url}/review")
            await page.click("text=cq-test-001")
            await page.fill("#sign-comment", "导向正确，同意发布")
            await page.click("#sign")
            await page.wait_for_url(f"{url}/review/cq-test-001")
            assert "已发布" in await page.inner_text("h1")
            await page.goto(f"{url}/review/cq-test-001/sheet")
            sheet = await page.inner_text("body")
            for words in ("辟谣通报审批表", "初审", "审核甲", "文字无误", "复审", "审核乙", "终审", "终审丙",
                          "导向正确，同意发布", "未签批"):
                assert (words in sheet) == (words != "未签批"), words
            await page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
            DOCS.mkdir(exist_ok=True)
            await page.screenshot(path=str(DOCS / "review-sheet.png"), full_page=True)
            pdf = await page.pdf(format="A4")
            assert b"/Count 1" in pdf  # printed from the browser: one A4 page
        finally:
            await browser.close()
    released = room.store.review.get("cq-test-001")
    assert released is not None and released.state == "released" and released.released_by == "终审丙"
