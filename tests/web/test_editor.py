"""The editor's form through the ASGI transport: fields, refusals next to their input in intake's words, the
per-channel preview (shortened where a platform has to), and a submit stored as the visitor."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

from bot.store import Role
from tests.conftest import notice_data
from tests.web.conftest import Newsroom, csrf_of


def form_of(**changes: str) -> dict[str, str]:
    data = notice_data()
    return {"ref": data["ref"], "title": data["title"], "rumour": data["rumour"], "truth": data["truth"],
            "verdict": data["verdict"], "authority": data["authority"], "urgency": "normal"} | changes


async def test_the_form_offers_every_field_and_the_regions_of_today_grouped(newsroom: Newsroom) -> None:
    editor = await newsroom.login(Role.editor)
    page = await editor.get("/notices/new")
    assert page.status_code == 200
    for name in ("ref", "title", "rumour", "verdict", "truth", "authority", "category", "urgency", "publish_at",
                 "expires_at", "source_title_0", "source_url_0", "correct", "correction_note"):
        assert f'name="{name}"' in page.text, name
    assert 'value="渝中区"' in page.text and 'value="两江新区"' in page.text
    assert 'value="江北区"' not in page.text  # abolished on 2026-01-25: not offered today
    assert "重庆时间" in page.text  # the embargo picker says whose clock it is
    assert (await (await newsroom.login(Role.viewer)).get("/notices/new")).status_code == 403


async def test_a_refused_field_shows_the_apis_words_next_to_its_input_and_nothing_is_stored(
        newsroom: Newsroom) -> None:
    editor = await newsroom.login(Role.editor)
    csrf = csrf_of(await editor.get("/notices/new"))
    answer = await editor.post("/notices/new", data=form_of(csrf=csrf, title="", source_title_1="市水利局通报",
                                                            source_url_1="not a url"))
    assert answer.status_code == 200  # the form again, with its messages
    api = await editor.post("/api/v1/notices", json=notice_data(title="", sources=[{"title": "市水利局通报",
                                                                                       "url": "not a url"}]),
                            headers={"Authorization": f"Bearer {newsroom.tokens[Role.editor]}"})
    words = {e["field"]: e["message"] for e in api.json()["errors"]}
    page = unescape(answer.text)
    assert f'id="title-error" class="error field-error">notice.title: {words["notice.title"]}<' in page
    assert f'id="source_url_1-error" class="error field-error">notice.sources[0].url: {words["notice.sources[0].url"]}' \
           in page  # the second row was the first source: the message sits by the row the editor filled
    assert re.search(r'id="title"[^>]*aria-invalid="true"', page)
    assert 'value="市水利局通报"' in page  # what was typed comes back
    assert newsroom.store.log.notices(limit=5).rows == []


async def test_a_good_notice_is_stored_as_the_editor_and_the_browser_goes_to_its_matrix(newsroom: Newsroom) -> None:
    editor = await newsroom.login(Role.editor)
    csrf = csrf_of(await editor.get("/notices/new"))
    answer = await editor.post("/notices/new", data=form_of(csrf=csrf, regions="渝中区", publish_at="2030-01-01T08:00"
                                                            ) | {"publish_at": ""})
    assert answer.status_code == 303 and answer.headers["location"] == "/notices/cq-test-001"
    (row,) = newsroom.store.log.notices(limit=5).rows
    assert row["notice"].regions == ("渝中区",)
    audit = newsroom.store.audit.page(action="notice.submit", limit=5).rows
    assert [(a["actor"], a["source"]) for a in audit][-1][0] == "editor-李四"


async def test_add_another_source_brings_the_form_back_a_row_longer_and_a_notice_keeps_every_row(
        newsroom: Newsroom) -> None:
    editor = await newsroom.login(Role.editor)
    csrf = csrf_of(await editor.get("/notices/new"))
    typed = form_of(csrf=csrf, source_rows="3", source_title_2="市水利局通报", source_url_2="https://slj.cq.gov.cn/1")
    longer = await editor.post("/notices/new", data=typed | {"more_sources": "1"})  # no JavaScript: the form again
    assert longer.status_code == 200 and newsroom.store.log.notices(limit=5).rows == []  # nothing checked, stored
    page = unescape(longer.text)
    assert 'name="source_rows" value="4"' in page and re.search(r'id="source_title_3"[^>]*autofocus', page)
    assert 'value="市水利局通报"' in page and f'value="{typed["title"]}"' in page and "field-error" not in page
    assert page.count('name="source_title_') == 4

    sources = {f"source_{part}_{row}": f"来源{row}" if part == "title" else f"https://cq.example/{row}"
               for row in range(20) for part in ("title", "url")}
    full = await editor.post("/notices/new", data=typed | {"source_rows": "20"} | sources | {"more_sources": "1"})
    assert unescape(full.text).count('name="source_title_') == 20  # a notice holds at most 20: no 21st row
    assert "more_sources" not in full.text
    stored = await editor.post("/notices/new", data=typed | {"source_rows": "20"} | sources)
    assert stored.status_code == 303
    (row,) = newsroom.store.log.notices(limit=5).rows
    assert [s.title for s in row["notice"].sources] == [f"来源{n}" for n in range(20)]


async def test_the_embargo_is_read_as_chongqing_time(newsroom: Newsroom) -> None:
    editor = await newsroom.login(Role.editor)
    csrf = csrf_of(await editor.get("/notices/new"))
    local = (datetime.now(UTC) + timedelta(days=2, hours=8)).strftime("%Y-%m-%dT%H:%M")
    answer = await editor.post("/notices/new", data=form_of(csrf=csrf, publish_at=local))
    assert answer.status_code == 303, answer.text
    (row,) = newsroom.store.log.notices(limit=5).rows
    assert row["notice"].publish_at.utcoffset() == timedelta(hours=8)
    assert row["notice"].publish_at.strftime("%Y-%m-%dT%H:%M") == local


async def test_the_preview_shows_one_form_per_channel_and_marks_the_wecom_form_shortened_by_how_much(
        newsroom: Newsroom) -> None:
    editor = await newsroom.login(Role.editor)
    csrf = csrf_of(await editor.get("/notices/new"))
    long_truth = "经核实，长江重庆段水位平稳，未出现暴涨。" * 200  # 4,000 characters, 12,000 bytes
    answer = await editor.post("/notices/new/preview", data=form_of(truth=long_truth, title="<script>x</script>"),
                               headers={"HX-Request": "true", "X-CSRF-Token": csrf})
    assert answer.status_code == 200
    kinds = re.findall(r'data-channel="([a-z_]+)"', answer.text)
    assert sorted(kinds) == ["dingtalk", "feishu", "webhook", "wecom"]
    wecom = answer.text.split('data-channel="wecom"')[1].split("</article>")[0]
    assert "已缩短" in wecom and "4,096" in wecom
    full, size, cut = (int(n.replace(",", "")) for n in re.findall(r"([\d,]+)", wecom.split("完整通报为")[1])[:3])
    assert size <= 4096 < full and cut == full - size  # by how much, in the platform's unit
    webhook = answer.text.split('data-channel="webhook"')[1].split("</article>")[0]
    assert "已缩短" not in webhook
    assert "<script>x</script>" not in answer.text and "&lt;script&gt;x&lt;/script&gt;" in answer.text
    refused = await editor.post("/notices/new/preview", data=form_of(), headers={"HX-Request": "true"})
    assert refused.status_code == 403  # no CSRF token: nothing rendered
