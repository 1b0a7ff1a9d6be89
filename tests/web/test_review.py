"""Review before release (先审后发) end to end through the API, on both backends: drafts reach no outlet (the loopback
outlets' own logs are read, not only the store), three reviewers release a notice, and every refusal says why."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Actor, Role, Store, alerts, deliveries
from bot.testing.webhook import WebhookOutlets
from bot.web import Site, create_app
from tests.conftest import notice_data

API = "/api/v1"
PEOPLE = {"编辑王五": Role.editor, "审核甲": Role.reviewer, "审核乙": Role.reviewer, "审核丙": Role.reviewer,
          "值班赵六": Role.operator, "访客": Role.viewer}


@dataclass
class Desk:
    client: httpx.AsyncClient
    store: Store
    settings: Settings
    matrix: OutletMatrix
    outlets: WebhookOutlets
    tokens: dict[str, str]

    async def post(self, who: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(API + path, headers={"Authorization": f"Bearer {self.tokens[who]}"}, **kwargs)

    async def get(self, who: str, path: str) -> httpx.Response:
        return await self.client.get(API + path, headers={"Authorization": f"Bearer {self.tokens[who]}"})

    async def sign(self, who: str, stage: int, ref: str = "cq-test-001", comment: str = "同意") -> httpx.Response:
        return await self.post(who, f"/notices/{ref}/review", json={"stage": stage, "decision": "sign",
                                                                    "comment": comment})

    async def dispatch(self) -> None:
        """Run the dispatcher until nothing is due: whatever it may send, it sends now."""
        async with make_sender(self.settings) as sender:
            dispatcher = Dispatcher(self.store, self.matrix, self.settings, sender)
            await dispatcher.run(until_idle=True)
            await dispatcher.close()

    def nothing_sent(self) -> bool:
        return not self.outlets.posts and not self.outlets.tries and not self.outlets.refused


@pytest.fixture
async def review_desk(store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any]
                      ) -> AsyncIterator[Desk]:
    outlets, matrix = await loopback(3)
    settings = settings.model_copy(update={"review_stages": 3})
    site = Site(settings, store, regions, matrix)
    tokens = {name: store.access.create(name, role, actor=Actor("root", "local", "cli@test"))[0]
              for name, role in PEOPLE.items()}
    transport = httpx.ASGITransport(create_app(site), client=("203.0.113.7", 51234))
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
        yield Desk(client, store, settings, matrix, outlets, tokens)


async def submit(desk: Desk, **overrides: Any) -> httpx.Response:
    answer = await desk.post("编辑王五", "/notices", json=notice_data(**overrides))
    assert answer.status_code == 201, answer.text
    return answer


async def test_three_stages_by_three_reviewers_release_the_notice_and_only_then_it_reaches_the_outlets(
    review_desk: Desk,
) -> None:
    desk = review_desk
    created = (await submit(desk)).json()["notices"][0]
    assert created["draft"] is True and created["deliveries"] == 0
    for stage, who in enumerate(["审核甲", "审核乙"], start=1):
        assert (await desk.sign(who, stage)).status_code == 201
        await desk.dispatch()
        assert desk.nothing_sent(), "an outlet heard of a notice before its release"
    assert (await desk.get("访客", "/notices/cq-test-001")).status_code == 404  # not stored as a notice yet

    signed = await desk.sign("审核丙", 3, comment="导向正确，同意发布")
    assert signed.status_code == 201
    shown = signed.json()
    assert shown["state"] == "released" and shown["released_by"] == "审核丙" and shown["urgent"] is False
    assert [(d["stage_name"], d["actor"], d["decision"]) for d in shown["decisions"]] == [
        ("初审", "审核甲", "sign"), ("复审", "审核乙", "sign"), ("终审", "审核丙", "sign"), ("终审", "审核丙", "release")]
    await desk.dispatch()
    assert set(desk.outlets.delivered()) == {o.id for o in desk.matrix.outlets} and desk.outlets.refused == []

    trail = desk.store.audit.page(subject="cq-test-001", limit=None).rows
    assert [(r["action"], r["actor"], r["detail"].get("stage")) for r in trail] == [
        ("notice.submit", "编辑王五", None), ("review.sign", "审核甲", 1), ("review.sign", "审核乙", 2),
        ("review.sign", "审核丙", 3), ("notice.release", "审核丙", 3)]
    digest = shown["notice"] and shown["content_hash"]
    assert all(r["detail"].get("content_hash") == digest for r in trail)
    assert trail[3]["detail"]["comment"] == "导向正确，同意发布"


async def test_the_same_person_signing_a_second_stage_is_refused_with_a_clear_403(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    assert (await desk.sign("审核甲", 1)).status_code == 201
    again = await desk.sign("审核甲", 2)
    assert again.status_code == 403
    assert "审核甲 signed stage 1 of cq-test-001 already" in again.json()["detail"]
    assert "nothing was recorded" in again.json()["detail"]
    assert len((await desk.get("访客", "/notices/cq-test-001/review")).json()["decisions"]) == 1


async def test_the_author_signing_is_refused_and_a_role_below_reviewer_too(review_desk: Desk) -> None:
    desk = review_desk
    desk.tokens["作者审核"] = desk.store.access.create("作者审核", Role.reviewer)[0]
    answer = await desk.post("作者审核", "/notices", json=notice_data())
    assert answer.status_code == 201
    mine = await desk.sign("作者审核", 1)
    assert mine.status_code == 403 and "an author signs no stage" in mine.json()["detail"]
    low = await desk.sign("编辑王五", 1)
    assert low.status_code == 403 and "needs the role reviewer or higher" in low.json()["detail"]


async def test_a_stage_out_of_order_is_409_saying_which_stage_it_waits_for(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    early = await desk.sign("审核乙", 2)
    assert early.status_code == 409 and "waits for stage 1 of 3" in early.json()["detail"]


async def test_a_send_back_needs_a_comment_and_voids_the_sign_offs(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    assert (await desk.sign("审核甲", 1)).status_code == 201
    bare = await desk.post("审核乙", "/notices/cq-test-001/review", json={"stage": 2, "decision": "return"})
    assert bare.status_code == 422 and "needs a comment" in bare.json()["detail"]
    back = await desk.post("审核乙", "/notices/cq-test-001/review",
                           json={"stage": 2, "decision": "return", "comment": "来源需补充区水利局原文链接"})
    assert back.status_code == 201
    shown = back.json()
    assert shown["state"] == "returned" and shown["waiting_for"] == 1 and shown["round"] == 2
    assert [(d["decision"], d["counts"]) for d in shown["decisions"]] == [("sign", False), ("return", False)]
    # the earlier sign-off no longer counts: stage 2 is out of order again, and 甲 may sign stage 1 anew
    assert (await desk.sign("审核丙", 2)).status_code == 409
    assert (await desk.sign("审核甲", 1)).status_code == 201
    await desk.dispatch()
    assert desk.nothing_sent()


async def test_an_edit_after_one_sign_off_voids_it_and_the_notice_starts_again(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    assert (await desk.sign("审核甲", 1)).status_code == 201
    edited = await submit(desk, truth="经核实，目前长江重庆段水位平稳，未见异常上涨。")
    assert edited.json()["notices"][0] == {"ref": "cq-test-001", "created": True, "deliveries": 0,
                                           "version": 1, "draft": True}
    shown = (await desk.get("访客", "/notices/cq-test-001/review")).json()
    assert shown["waiting_for"] == 1 and shown["round"] == 2 and shown["state"] == "draft"
    assert [d["counts"] for d in shown["decisions"]] == [False]
    assert shown["decisions"][0]["content_hash"] != shown["content_hash"]
    for stage, who in enumerate(["审核乙", "审核甲", "审核丙"], start=1):
        assert (await desk.sign(who, stage)).status_code == 201
    stored = (await desk.get("访客", "/notices/cq-test-001")).json()["notice"]
    assert stored["truth"] == "经核实，目前长江重庆段水位平稳，未见异常上涨。"
    assert [r["action"] for r in desk.store.audit.page(subject="cq-test-001", limit=None).rows][:3] == [
        "notice.submit", "review.sign", "review.edit"]


async def test_a_reviewer_who_read_an_older_draft_is_told_it_changed(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    read = (await desk.get("审核甲", "/notices/cq-test-001/review")).json()["content_hash"]
    await submit(desk, title="网传“长江重庆段水位今晚暴涨”系谣言")
    stale = await desk.post("审核甲", "/notices/cq-test-001/review",
                            json={"stage": 1, "decision": "sign", "content_hash": read})
    assert stale.status_code == 409 and "changed since you read it" in stale.json()["detail"]


async def test_the_urgent_path_releases_after_one_stage_with_a_reason_and_is_marked(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk, urgency="urgent")
    bare = await desk.post("值班赵六", "/notices/cq-test-001:release", json={"reason": "汛情紧急"})
    assert bare.status_code == 409 and "no stage signed yet" in bare.json()["detail"]
    assert (await desk.sign("审核甲", 1)).status_code == 201
    low = await desk.post("审核乙", "/notices/cq-test-001:release", json={"reason": "汛情紧急"})
    assert low.status_code == 403
    released = await desk.post("值班赵六", "/notices/cq-test-001:release", json={"reason": "汛情紧急，谣言扩散快"})
    assert released.status_code == 200, released.text
    shown = released.json()
    assert shown["state"] == "released" and shown["urgent"] is True and shown["urgent_reason"] == "汛情紧急，谣言扩散快"
    assert shown["decisions"][-1].items() >= {"decision": "urgent-release", "actor": "值班赵六", "stage": 1}.items()
    await desk.dispatch()
    assert set(desk.outlets.delivered()) == {o.id for o in desk.matrix.outlets}
    (release,) = desk.store.audit.page(action="notice.release", limit=None).rows
    assert release["detail"]["comment"] == "汛情紧急，谣言扩散快" and release["actor"] == "值班赵六"
    assert (await desk.get("访客", "/notices/cq-test-001/review")).json()["urgent"] is True


async def test_only_an_urgent_notice_may_be_released_early(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    await desk.sign("审核甲", 1)
    answer = await desk.post("值班赵六", "/notices/cq-test-001:release", json={"reason": "想快点"})
    assert answer.status_code == 409 and "not urgency: urgent" in answer.json()["detail"]


async def test_an_embargo_counts_from_release_and_one_already_past_goes_at_once(review_desk: Desk) -> None:
    desk = review_desk
    soon = datetime.now(UTC) + timedelta(seconds=2)
    await submit(desk, publish_at=soon.isoformat())
    desk.store.review.sign("cq-test-001", 1, Actor("审核甲", "reviewer", "t"), None, desk.matrix.concerned_by)
    desk.store.review.sign("cq-test-001", 2, Actor("审核乙", "reviewer", "t"), None, desk.matrix.concerned_by)
    later = soon + timedelta(minutes=5)  # released after its publish_at
    desk.store.review.sign("cq-test-001", 3, Actor("审核丙", "reviewer", "t"), None, desk.matrix.concerned_by,
                           now=later)
    with desk.store.engine.connect() as conn:
        states = conn.execute(sa.select(deliveries.c.status, deliveries.c.next_attempt_at)).all()
    assert {s.status for s in states} == {"pending"} and all(s.next_attempt_at == later for s in states)


async def test_a_correction_and_a_retraction_wait_for_review_too(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    for stage, who in enumerate(["审核甲", "审核乙", "审核丙"], start=1):
        await desk.sign(who, stage)
    await desk.dispatch()
    sent = len(desk.outlets.posts)
    fixed = notice_data(truth="经核实，长江重庆段水位平稳，较昨日下降0.3米。", correct=True, correction_note="补充水位数据")
    answer = await desk.post("编辑王五", "/notices/cq-test-001:correct", json=fixed)
    assert answer.status_code == 200 and answer.json()["draft"] is True
    await desk.dispatch()
    assert len(desk.outlets.posts) == sent  # the correction waits
    for stage, who in enumerate(["审核丙", "审核甲", "审核乙"], start=1):
        assert (await desk.sign(who, stage)).status_code == 201
    await desk.dispatch()
    assert len(desk.outlets.posts) == sent + 3
    assert (await desk.get("访客", "/notices/cq-test-001")).json()["version"] == 2

    retract = await desk.post("编辑王五", "/notices/cq-test-001:retract", json={"reason": "信息来源有误"})
    assert retract.json()["draft"] is True
    await desk.dispatch()
    assert len(desk.outlets.posts) == sent + 3
    for stage, who in enumerate(["审核乙", "审核丙", "审核甲"], start=1):
        assert (await desk.sign(who, stage)).status_code == 201
    await desk.dispatch()
    assert len(desk.outlets.posts) == sent + 6
    assert (await desk.get("访客", "/notices/cq-test-001")).json()["retraction"]["reason"] == "信息来源有误"


async def test_a_draft_waiting_too_long_alerts_the_operators_once(review_desk: Desk) -> None:
    desk = review_desk
    await submit(desk)
    later = datetime.now(UTC) + timedelta(hours=5)
    assert desk.store.review.flag_waiting(timedelta(hours=4), now=later) == 1
    assert desk.store.review.flag_waiting(timedelta(hours=4), now=later + timedelta(hours=1)) == 0
    with desk.store.engine.connect() as conn:
        (text,) = conn.execute(sa.select(alerts.c.text).where(alerts.c.kind == "review-waiting")).scalars()
    assert "cq-test-001" in text and "debunkbot review show cq-test-001" in text
    queue = (await desk.get("访客", "/reviews")).json()["reviews"]
    assert [(r["ref"], r["waiting_for_name"]) for r in queue] == [("cq-test-001", "初审")]


async def test_the_alerter_tells_the_operators_once_of_a_draft_waiting_too_long(
    review_desk: Desk, regions: RegionTable, caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.alerts import Alerter
    from bot.model import Notice

    desk = review_desk
    long_ago = datetime.now(UTC) - timedelta(hours=5)
    notice = Notice.model_validate(notice_data(), context={"regions": regions})
    desk.store.review.submit([notice], "api:编辑王五", Actor("编辑王五", "editor", "t"), now=long_ago)
    settings = desk.settings.model_copy(update={"alert_interval": 0, "review_alert_after": 240.0})
    async with make_sender(settings) as sender:  # no operator channel: alerts go to the log
        for _ in range(2):
            await Alerter(desk.store, desk.matrix, settings, sender).tick()
    said = [r.getMessage() for r in caplog.records if "has waited for review" in r.getMessage()]
    assert len(said) == 1 and "cq-test-001 has waited for review" in said[0]

