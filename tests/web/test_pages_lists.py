"""The notices list, the delivery log with its CSV export, the outlets with pause and resume, and the audit."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

from bot.regions import CHONGQING
from bot.store import Role
from tests.web.conftest import Newsroom, csrf_of


def refs_on(page: str) -> list[str]:
    return re.findall(r'<td><a href="/notices/([^"/]+)">\1</a></td>', page)


async def test_notices_are_newest_first_with_counts_per_tier_filtered_and_paged(newsroom: Newsroom) -> None:
    for i in range(1, 56):
        newsroom.submit(ref=f"cq-{i:03d}", urgency="urgent" if i % 10 == 0 else "normal",
                        regions=["南岸区"] if i == 7 else ["全市"], category="公共安全" if i == 8 else None)
    delivered = newsroom.store.log.delivery(newsroom.attempt("city-hualong", "delivered", http_status=200))
    viewer = await newsroom.login(Role.viewer)
    first = (await viewer.get("/notices")).text
    assert refs_on(first) == [f"cq-{i:03d}" for i in range(55, 5, -1)]
    second = (await viewer.get("/notices?after=6")).text
    assert refs_on(second) == [f"cq-{i:03d}" for i in range(5, 0, -1)]
    assert 'href="/notices?after=6"' in first
    counts = "<span>市级 {}/1</span> · <span>区县 0/2</span> · <span>其他 0/1</span>"
    assert re.search(rf'{delivered["notice"]}<.*?{counts.format(1)}', first + second, re.S)
    assert re.search(rf'cq-001<.*?{counts.format(0)}', second, re.S)
    assert refs_on((await viewer.get("/notices?urgency=urgent")).text) == ["cq-050", "cq-040", "cq-030", "cq-020",
                                                                          "cq-010"]
    assert refs_on((await viewer.get("/notices", params={"region": "南岸区"})).text) == ["cq-007"]
    assert refs_on((await viewer.get("/notices", params={"category": "公共安全"})).text) == ["cq-008"]
    assert refs_on((await viewer.get("/notices?state=delivered")).text) == []
    today = datetime.now(CHONGQING).date()
    assert len(refs_on((await viewer.get(f"/notices?from={today}&to={today}")).text)) == 50
    assert refs_on((await viewer.get(f"/notices?from={today + timedelta(days=1)}")).text) == []
    assert (await viewer.get("/notices?state=nonsense&from=garbage&after=x")).status_code == 200


async def test_the_delivery_log_filters_and_pages_and_exports_the_same_filter_as_csv_excel_opens(
        newsroom: Newsroom) -> None:
    ref = newsroom.submit()
    newsroom.submit(ref="cq-test-002")
    failed = newsroom.attempt("dist-nanan", error="=HYPERLINK(\"http://evil\") 错误")
    viewer = await newsroom.login(Role.viewer)
    page = (await viewer.get("/log", params={"notice": ref, "state": "failed"})).text
    assert f"/notices/{ref}/cells/{failed}" in page and page.count('class="state state-') == 1
    assert "/log.csv?notice=cq-test-001&amp;state=failed" in page
    assert (await viewer.get("/log", params={"since": "not a time"})).text.count("未应用此筛选") == 1
    recent = (await viewer.get("/log", params={"since": "1h"})).text
    assert recent.count('class="state state-') == 8
    later = (datetime.now(UTC) + timedelta(hours=1)).astimezone(CHONGQING).strftime("%Y-%m-%d %H:%M")
    assert (await viewer.get("/log", params={"since": later})).text.count('class="state state-') == 0

    export = await viewer.get("/log.csv", params={"notice": ref})
    assert export.headers["content-type"].startswith("text/csv") and "attachment" in export.headers["content-disposition"]
    assert export.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(export.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["投递", "通报", "渠道"]
    assert len(rows) == 1 + 4 and {r[1] for r in rows[1:]} == {ref}
    nanan = next(r for r in rows if r[2] == "dist-nanan")
    assert nanan[5] == "失败" and nanan[9].startswith("'=HYPERLINK")  # a formula stays text in Excel


async def test_outlets_show_health_and_an_operator_pauses_and_resumes_one(newsroom: Newsroom) -> None:
    newsroom.submit()
    newsroom.attempt("dist-nanan")
    viewer = await newsroom.login(Role.viewer)
    page = (await viewer.get("/outlets")).text
    assert "融媒体dist-nanan" in page and "连续失败 1 次" in page and "/pause" not in page
    operator = await newsroom.login(Role.operator)
    page = await operator.get("/outlets")
    done = await operator.post("/outlets/dist-nanan/pause", data={"csrf": csrf_of(page), "reason": "换群了"})
    assert done.status_code == 303 and done.headers["location"] == "/outlets"
    assert newsroom.store.health.paused() == {"dist-nanan": "换群了"}
    page = await operator.get("/outlets")
    assert "已暂停" in page.text and "换群了" in page.text and "/outlets/dist-nanan/resume" in page.text
    assert (await operator.post("/outlets/dist-nanan/resume", data={"csrf": csrf_of(page)})).status_code == 303
    assert newsroom.store.health.paused() == {}
    missing = await operator.post("/outlets/no-such/pause", data={"csrf": csrf_of(page), "reason": "x"})
    assert missing.status_code == 404 and "未做任何更改" in missing.text


async def test_the_audit_shows_who_did_what_filtered_and_paged_for_operators(newsroom: Newsroom) -> None:
    newsroom.submit()
    operator = await newsroom.login(Role.operator)
    page = await operator.get("/outlets")
    await operator.post("/outlets/dist-nanan/pause", data={"csrf": csrf_of(page), "reason": "测试"})
    audit = (await operator.get("/audit")).text
    assert "notice.submit" in audit and "outlet.pause" in audit and "operator-李四" in audit
    only = (await operator.get("/audit", params={"action": "outlet.pause"})).text
    assert "notice.submit" not in only and "dist-nanan" in only and "203.0.113.7" in only
