"""The JSON API through httpx's ASGI transport, on both backends: every endpoint, its refusals (401, 403, 404, 409,
413, 422), its audit rows, and no outlet URL or secret in any answer at any role."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.intake import NoticesRefused, check_notices
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Actor, AttemptRecord, Role, Store
from bot.web import PROBLEM, Site, create_app
from tests.conftest import notice_data, whsec

API = "/api/v1"

# Outlets whose URLs and secrets are easy to find in an answer, one of each kind of channel.
CANARY_URL = "https://push.cqnews.example/hook/canary-path-6b1f"
OUTLETS = [
    {"id": "city-hualong", "tier": "city", "channel": "webhook", "url": CANARY_URL, "secret_env": "S_HUALONG"},
    {"id": "dist-yuzhong", "tier": "district", "region": "渝中区", "channel": "dingtalk", "secret_env": "S_YUZHONG",
     "options": {"msgtype": "actionCard", "read_more_url": "https://piyao.cq.example/{ref}"}},
    {"id": "dist-nanan", "tier": "district", "region": "南岸区", "channel": "wecom", "secret_env": "S_NANAN"},
    {"id": "n-group", "tier": "other", "channel": "feishu", "secret_env": "S_GROUP"},
    {"id": "n-weibo", "tier": "other", "channel": "weibo", "secret_env": "S_WEIBO",
     "options": {"read_more_url": "https://piyao.cq.example/{ref}", "rip": "203.0.113.10"}},
    {"id": "n-feed", "tier": "other", "channel": "feed"},
]
SECRETS = {
    "S_HUALONG": whsec(),
    "S_YUZHONG": "dingtoken-canary-5d2e7a:SECcanarysigning91b2c4",
    "S_NANAN": "wecomkey-canary-0c4e8f",
    "S_GROUP": "feishuhook-canary-77aa:feishusign-canary-12ff",
    "S_WEIBO": "weibotoken-canary-3e9d",
}


def canaries() -> list[str]:
    """Every outlet URL and secret (and each part of TOKEN:SECRET, and a whsec_ key's base64) of the matrix."""
    found = {CANARY_URL, "canary-path-6b1f"}
    for secret in SECRETS.values():
        found |= {secret, *secret.split(":"), secret.removeprefix("whsec_")}
    return sorted(found)


@dataclass
class Api:
    client: httpx.AsyncClient
    store: Store
    site: Site
    tokens: dict[Role, str]

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def post(self, path: str, role: Role = Role.admin, headers: dict[str, str] | None = None,
                   **kwargs: Any) -> httpx.Response:
        return await self.client.post(API + path, headers=self.auth(role) | (headers or {}), **kwargs)

    async def get(self, path: str, role: Role = Role.admin, **kwargs: Any) -> httpx.Response:
        return await self.client.get(API + path, headers=self.auth(role), **kwargs)

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        return self.store.audit.page(limit=None, **filters).rows


async def serve(store: Store, regions: RegionTable, matrix: OutletMatrix, settings: Settings) -> AsyncIterator[Api]:
    site = Site(settings, store, regions, matrix)
    tokens = {role: store.access.create(f"{role.name}-张三", role, actor=Actor("root", "local", "cli@test"))[0]
              for role in Role}
    transport = httpx.ASGITransport(create_app(site), client=("203.0.113.7", 51234))
    async with httpx.AsyncClient(transport=transport, base_url="http://bot") as client:
        yield Api(client, store, site, tokens)


@pytest.fixture
async def api(tmp_path: Path, store: Store, regions: RegionTable) -> AsyncIterator[Api]:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"name": f"融媒体{o['id']}"} | o for o in OUTLETS]},
                                   allow_unicode=True), encoding="utf-8")
    matrix = load_matrix(path, regions, environ=SECRETS)
    settings = Settings(database_url=str(store.engine.url), outlets=path)
    async for api in serve(store, regions, matrix, settings):
        yield api


def notice(**overrides: Any) -> dict[str, Any]:
    return notice_data(**overrides)


# -- auth ---------------------------------------------------------------------------------------------

EVERY_CALL = [
    ("POST", "/notices", Role.editor), ("POST", "/notices:preview", Role.editor), ("GET", "/notices", Role.viewer),
    ("GET", "/notices/cq-test-001", Role.viewer), ("GET", "/deliveries", Role.viewer),
    ("GET", "/deliveries/1/attempts", Role.viewer), ("GET", "/attempts", Role.viewer),
    ("POST", "/deliveries:retry", Role.operator),
    ("GET", "/outlets", Role.viewer), ("POST", "/outlets/city-hualong:pause", Role.operator),
    ("POST", "/outlets/city-hualong:resume", Role.operator), ("GET", "/audit", Role.operator),
    ("GET", "/tokens", Role.admin), ("POST", "/tokens", Role.admin), ("POST", "/tokens/1:revoke", Role.admin),
    ("POST", "/matrix:reload", Role.operator),
    ("POST", "/notices/cq-test-001:correct", Role.editor), ("POST", "/notices/cq-test-001:retract", Role.editor),
    ("GET", "/notices/cq-test-001/history", Role.viewer), ("POST", "/outlets/city-hualong:backfill", Role.operator),
]


@pytest.mark.parametrize(("method", "path", "needed"), EVERY_CALL)
async def test_every_call_without_a_token_or_with_a_bad_one_is_401_asking_for_a_bearer_token(
    api: Api, method: str, path: str, needed: Role
) -> None:
    revoked, _ = api.store.access.create("离职的人", Role.admin)
    api.store.access.revoke(api.store.access.all()[-1]["id"])
    for headers in ({}, {"Authorization": "Bearer dbk_not-a-token"}, {"Authorization": f"Bearer {revoked}"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}):
        answer = await api.client.request(method, API + path, headers=headers, json={})
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.headers["content-type"] == PROBLEM
        assert "token" in answer.json()["detail"]


@pytest.mark.parametrize(("method", "path", "needed"), [c for c in EVERY_CALL if c[2] > Role.viewer])
async def test_a_role_below_the_one_a_call_needs_is_403_naming_both_roles(
    api: Api, method: str, path: str, needed: Role
) -> None:
    for role in (r for r in Role if r < needed):
        answer = await api.client.request(method, API + path, headers=api.auth(role), json=notice())
        assert answer.status_code == 403
        assert f"needs the role {needed.name}" in answer.json()["detail"]
        assert f"has the role {role.name}" in answer.json()["detail"]
    assert api.store.log.notice("cq-test-001") is None and api.audit(action="notice.submit") == []


async def test_a_token_records_when_it_was_last_used(api: Api) -> None:
    assert all(t["last_used_at"] is None for t in api.store.access.all())
    await api.get("/outlets", Role.viewer)
    used = {t["name"]: t["last_used_at"] for t in api.store.access.all()}
    assert used["viewer-张三"] is not None and used["admin-张三"] is None


# -- submit ---------------------------------------------------------------------------------------------

async def test_one_notice_is_stored_with_a_delivery_per_outlet_it_concerns_and_audited(api: Api) -> None:
    answer = await api.post("/notices", Role.editor, json=notice(regions=["渝中区"]))
    assert answer.status_code == 201, answer.text
    # citywide outlets and 渝中区's; not 南岸区's
    assert answer.json() == {"notices": [{"ref": "cq-test-001", "created": True, "deliveries": 5, "version": 1}], "deliveries": 5}
    assert {r["outlet"] for r in api.store.log.deliveries(ref="cq-test-001")} == {
        o["id"] for o in OUTLETS if o["id"] != "dist-nanan"}
    (row,) = api.audit(action="notice.submit")
    assert (row["actor"], row["role"], row["subject"], row["source"]) == ("editor-张三", "editor", "cq-test-001",
                                                                          "203.0.113.7")
    assert row["detail"]["deliveries"] == 5


async def test_a_list_is_stored_whole_and_the_same_list_again_changes_nothing(api: Api) -> None:
    batch = [notice(ref="a"), notice(ref="b", title="另一条辟谣", urgency="urgent")]
    first = await api.post("/notices", Role.editor, json=batch)
    assert first.status_code == 201
    assert first.json()["deliveries"] == 12 and [n["ref"] for n in first.json()["notices"]] == ["a", "b"]
    again = await api.post("/notices", Role.editor, json=batch)
    assert again.status_code == 201
    assert again.json() == {"notices": [{"ref": "a", "created": False, "deliveries": 0, "version": 1},
                                        {"ref": "b", "created": False, "deliveries": 0, "version": 1}], "deliveries": 0}
    assert len(api.audit(action="notice.submit")) == 2


async def test_refused_fields_are_named_by_path_in_the_words_of_submit_and_nothing_is_stored(
    api: Api, regions: RegionTable
) -> None:
    batch = [notice(ref="ok-1"), notice(ref="ok-2"),
             notice(ref="bad", verdict="maybe", sources=[{"title": "通报", "url": "not a url"}]),
             notice(ref="ok-1"), "just text"]
    answer = await api.post("/notices", Role.editor, json=batch)
    assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
    errors = answer.json()["errors"]
    assert [e["field"] for e in errors] == ["notices[2].verdict", "notices[2].sources[0].url", "notices[3].ref",
                                            "notices[4]"]
    with pytest.raises(NoticesRefused) as cli:  # what `debunkbot submit` says of the same notices
        check_notices(batch, "file.json", regions)
    assert [e["message"] for e in errors] == [r.message for r in cli.value.refusals]
    assert "notice 3 (ref 'bad') field 'verdict'" in answer.json()["detail"]
    assert api.store.log.notice("ok-1") is None and api.audit(action="notice.submit") == []


async def test_a_body_that_is_not_json_or_holds_no_notice_is_422_saying_what_is_wrong(api: Api) -> None:
    for body, words in ((b"{\"ref\": 1,", "invalid JSON at line 1"), (b"[]", "no notices in request"),
                        (b'{"ref": "a", "ref": "b"}', "key 'ref' written twice"), (b"\xff\xfe", "not UTF-8")):
        answer = await api.post("/notices", Role.editor, content=body)
        assert answer.status_code == 422 and words in answer.json()["detail"], answer.text
    assert api.audit(action="notice.submit") == []


async def test_a_known_ref_with_other_content_is_409_and_nothing_of_the_request_is_stored(api: Api) -> None:
    assert (await api.post("/notices", Role.editor, json=notice())).status_code == 201
    answer = await api.post("/notices", Role.editor, json=[notice(ref="new-one"), notice(truth="改过的内容。")])
    assert answer.status_code == 409
    assert "'cq-test-001' is already stored with different content" in answer.json()["detail"]
    assert answer.json()["errors"][0]["field"] == "notices[1].ref"
    assert api.store.log.notice("new-one") is None
    assert [r["subject"] for r in api.audit(action="notice.submit")] == ["cq-test-001"]


async def test_a_body_over_1_mib_is_413_before_it_is_read_whole(api: Api) -> None:
    said_big = await api.post("/notices", Role.editor, content=b"x",
                              headers={"content-length": str(5 * 1024 * 1024)})
    assert said_big.status_code == 413

    sent = 0

    async def twenty_mib() -> AsyncIterator[bytes]:  # no content-length: chunked, as a client streaming it
        nonlocal sent
        for _ in range(320):
            sent += 1
            yield b"[" + b" " * (64 * 1024 - 1)

    answer = await api.post("/notices", Role.editor, content=twenty_mib())
    assert answer.status_code == 413 and "1,048,576-byte limit" in answer.json()["detail"]
    assert sent < 40  # it stopped reading just past the limit
    assert api.audit(action="notice.submit") == []


# -- preview --------------------------------------------------------------------------------------------

async def test_preview_renders_for_every_outlet_says_what_was_shortened_and_stores_nothing(api: Api) -> None:
    long = notice(truth="经核实，目前长江重庆段水位平稳，各水文站监测数据正常。" * 30)
    answer = await api.post("/notices:preview", Role.editor, json=long)
    assert answer.status_code == 200, answer.text
    shown = {o["outlet"]: o for o in answer.json()["outlets"]}
    assert set(shown) == {o["id"] for o in OUTLETS}
    assert shown["n-weibo"]["shortened"] and "阅读全文" in shown["n-weibo"]["text"]  # 140 characters
    assert not shown["city-hualong"]["shortened"] and long["truth"] in json.loads(shown["city-hualong"]["body"])[
        "data"]["truth"]
    assert shown["dist-yuzhong"]["channel"] == "dingtalk" and '"actionCard"' in shown["dist-yuzhong"]["body"]
    assert api.store.log.notice("cq-test-001") is None and api.audit() == [
        r for r in api.audit() if r["action"] == "token.create"]

    one = await api.post("/notices:preview", Role.editor, json=notice(), params={"outlet": "dist-nanan"})
    assert [o["outlet"] for o in one.json()["outlets"]] == ["dist-nanan"]
    missing = await api.post("/notices:preview", Role.editor, json=notice(), params={"outlet": "nowhere"})
    assert missing.status_code == 404 and "'nowhere'" in missing.json()["detail"]


async def test_preview_says_which_outlets_a_notice_reaches_and_why_not_the_others(api: Api) -> None:
    answer = await api.post("/notices:preview", Role.editor, json=notice(regions=["南岸区"]))
    reach = {o["outlet"]: (o["reached"], o["why"]) for o in answer.json()["outlets"]}
    assert reach["dist-nanan"] == (True, "names its region 南岸区")
    assert reach["dist-yuzhong"] == (False, "for 南岸区 only, not its region 渝中区")
    assert reach["city-hualong"] == (True, "citywide outlet: takes every notice")
    citywide = await api.post("/notices:preview", Role.editor, json=notice())
    assert all(o["reached"] for o in citywide.json()["outlets"])


# -- reading ------------------------------------------------------------------------------------------

async def test_notices_are_filtered_by_state_time_region_category_and_urgency_and_paged(api: Api) -> None:
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    batch = [notice(ref=f"n{i}", title=f"第{i}条", category="交通" if i % 2 else "食品",
                    regions=["渝中区"] if i < 3 else ["全市"], urgency="urgent" if i == 4 else "normal")
             for i in range(6)] + [notice(ref="embargoed", title="禁发", publish_at=later)]
    assert (await api.post("/notices", Role.editor, json=batch)).status_code == 201

    async def refs(**params: Any) -> list[str]:
        answer = await api.get("/notices", Role.viewer, params=params)
        assert answer.status_code == 200, answer.text
        return [n["ref"] for n in answer.json()["notices"]]

    assert await refs(state="held") == ["embargoed"]
    assert await refs(state="pending") == [f"n{i}" for i in range(6)]
    assert await refs(region="渝中") == ["n0", "n1", "n2"]  # an alias resolves to its unit
    assert await refs(category="交通") == ["n1", "n3", "n5"]
    assert await refs(urgency="urgent") == ["n4"]
    assert await refs(until=datetime(2020, 1, 1, tzinfo=UTC).isoformat()) == []
    assert len(await refs(since=(datetime.now(UTC) - timedelta(hours=1)).isoformat())) == 7

    seen, after = [], None
    while True:
        params = {"limit": 3} | ({"after": after} if after else {})
        page = (await api.get("/notices", Role.viewer, params=params)).json()
        seen += [n["ref"] for n in page["notices"]]
        if (after := page["next"]) is None:
            break
    assert seen == [f"n{i}" for i in range(6)] + ["embargoed"]

    for bad in ("0.5", "2026-11-27T08:00:00"):  # seconds since 1970, a time without its offset
        refused = await api.get("/notices", Role.viewer, params={"since": bad})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "query.since", refused.text
    unknown = await api.get("/notices", Role.viewer, params={"region": "火星"})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "region"


async def test_a_notice_shows_per_tier_who_has_it_and_why_the_others_wait(api: Api) -> None:
    later = datetime.now(UTC) + timedelta(hours=3)
    await api.post("/notices", Role.editor, json=notice(publish_at=later.isoformat()))
    answer = await api.get("/notices/cq-test-001", Role.viewer)
    assert answer.status_code == 200
    body = answer.json()
    assert body["notice"]["ref"] == "cq-test-001" and body["state"] == "held" and body["deliveries"] == 6
    tiers = {t["tier"]: t for t in body["tiers"]}
    assert (tiers["city"]["outlets"], tiers["city"]["held"], tiers["district"]["held"], tiers["other"]["held"]) == (
        1, 1, 2, 3)
    assert all(w["reason"].startswith("embargo until") for t in body["tiers"] for w in t["waiting"])

    assert (await api.get("/notices/nothing-here", Role.viewer)).status_code == 404


async def test_deliveries_are_filtered_and_paged_and_attempts_listed(api: Api) -> None:
    await api.post("/notices", Role.editor, json=[notice(ref="a"), notice(ref="b", title="第二条")])
    district = (await api.get("/deliveries", Role.viewer, params={"tier": "district", "notice": "b"})).json()
    assert {d["outlet"] for d in district["deliveries"]} == {"dist-yuzhong", "dist-nanan"}
    assert (await api.get("/deliveries", Role.viewer, params={"outlet": "n-feed"})).json()["deliveries"][0]["notice"] \
        == "a"
    assert (await api.get("/deliveries", Role.viewer, params={"state": "failed"})).json()["deliveries"] == []
    first = (await api.get("/deliveries", Role.viewer, params={"limit": 5})).json()
    rest = (await api.get("/deliveries", Role.viewer, params={"limit": 50, "after": first["next"]})).json()
    assert len(first["deliveries"]) == 5 and len(rest["deliveries"]) == 7 and rest["next"] is None

    delivery = first["deliveries"][0]["id"]
    record_failure(api.store, "boom")
    tries = (await api.get(f"/deliveries/{delivery}/attempts", Role.viewer)).json()
    assert tries["delivery"] == delivery and [t["outcome"] for t in tries["attempts"]] == ["failed"]
    assert (await api.get("/deliveries/999999/attempts", Role.viewer)).status_code == 404
    record_failure(api.store, "boom again")
    logged = (await api.get("/attempts", Role.viewer, params={"limit": 1})).json()
    assert len(logged["attempts"]) == 1 and logged["next"] is not None
    rest = (await api.get("/attempts", Role.viewer, params={"after": logged["next"]})).json()
    assert len(rest["attempts"]) == 1 and rest["next"] is None
    by_outlet = (await api.get("/attempts", Role.viewer, params={"outlet": rest["attempts"][0]["outlet"]})).json()
    assert {a["outlet"] for a in by_outlet["attempts"]} == {rest["attempts"][0]["outlet"]}


def record_failure(store: Store, error: str, outlet_id: str | None = None) -> int:
    """Claim one due delivery (of ``outlet_id``) and record a failed try of it, as the dispatcher would."""
    claims = [c for c in store.queue.claim(100, per_outlet=10, lease=timedelta(minutes=1))
              if outlet_id is None or c.outlet_id == outlet_id]
    claim = claims[0]
    store.queue.record([AttemptRecord(claim.delivery_id, claim.outlet_id, claim.attempt, datetime.now(UTC), 12.5,
                                      "failed", http_status=400, error=error, response=error)])
    store.queue.release_claims()
    return claim.delivery_id


# -- changes ------------------------------------------------------------------------------------------

async def test_retry_dry_run_changes_nothing_and_retry_requeues_with_a_note_for_a_paused_outlet(api: Api) -> None:
    await api.post("/notices", Role.editor, json=notice())
    failed = record_failure(api.store, "HTTP 400", outlet_id="dist-yuzhong")
    before = len(api.audit())

    dry = await api.post("/deliveries:retry", Role.operator, json={"outlet": "dist-yuzhong", "dry_run": True})
    assert dry.status_code == 200 and dry.json()["requeued"] == 1 and dry.json()["dry_run"]
    assert api.store.log.delivery(failed)["status"] == "failed" and len(api.audit()) == before

    assert (await api.post("/outlets/dist-yuzhong:pause", Role.operator, json={"reason": "维护中"})).status_code == 200
    done = await api.post("/deliveries:retry", Role.operator, json={"notice": "cq-test-001"})
    assert done.json()["requeued"] == 1
    assert done.json()["deliveries"][0]["note"] == "held: outlet paused"
    assert done.json()["held"] == [{"outlet": "dist-yuzhong", "why": "outlet paused", "deliveries": 1}]
    row = api.store.log.delivery(failed)
    assert row["status"] == "held" and row["reason"] == "outlet paused: 维护中"
    (audited,) = api.audit(action="deliveries.retry")
    assert (audited["actor"], audited["subject"], audited["detail"]["outlets"]) == (
        "operator-张三", "cq-test-001", ["dist-yuzhong"])

    nothing = await api.post("/deliveries:retry", Role.operator, json={})
    assert nothing.json()["requeued"] == 0 and len(api.audit(action="deliveries.retry")) == 1
    bad = await api.post("/deliveries:retry", Role.operator, json={"status": "delivered"})
    assert bad.status_code == 422


async def test_pause_and_resume_are_audited_and_refused_ones_leave_no_row(api: Api) -> None:
    await api.post("/notices", Role.editor, json=notice())
    paused = await api.post("/outlets/city-hualong:pause", Role.operator, json={"reason": "对方系统升级"})
    assert paused.json() == {"outlet": "city-hualong", "status": "paused", "held": 1}
    assert (await api.post("/outlets/city-hualong:pause", Role.operator, json={"reason": "again"})).status_code == 409
    assert (await api.post("/outlets/nowhere:pause", Role.operator, json={"reason": "x"})).status_code == 404
    no_reason = await api.post("/outlets/city-hualong:pause", Role.operator, json={})
    assert no_reason.status_code == 422 and no_reason.json()["errors"][0]["field"] == "reason"
    outlets = {o["outlet"]: o for o in (await api.get("/outlets", Role.viewer)).json()["outlets"]}
    assert outlets["city-hualong"]["status"] == "paused" and outlets["city-hualong"]["paused_reason"] == "对方系统升级"

    resumed = await api.post("/outlets/city-hualong:resume", Role.operator)
    assert resumed.json() == {"outlet": "city-hualong", "status": "ok", "due": 1}
    assert (await api.post("/outlets/city-hualong:resume", Role.operator)).status_code == 409
    assert [(r["action"], r["subject"], r["actor"]) for r in api.audit(subject="city-hualong")] == [
        ("outlet.pause", "city-hualong", "operator-张三"), ("outlet.resume", "city-hualong", "operator-张三")]
    assert api.audit(subject="city-hualong")[0]["detail"]["reason"] == "对方系统升级"


async def test_outlets_list_the_matrix_with_health_and_the_audit_is_for_operators(api: Api) -> None:
    outlets = (await api.get("/outlets", Role.viewer)).json()["outlets"]
    assert [o["outlet"] for o in outlets] == [o["id"] for o in OUTLETS]
    assert all(o["in_matrix"] and o["status"] == "ok" for o in outlets)
    assert (await api.get("/audit", Role.editor)).status_code == 403
    trail = (await api.get("/audit", Role.operator, params={"action": "token.create"})).json()
    assert [r["detail"]["role"] for r in trail["audit"]] == [r.name for r in Role]


async def test_an_admin_makes_a_token_that_works_at_once_lists_it_without_itself_and_revokes_it(api: Api) -> None:
    made = await api.post("/tokens", Role.admin, json={"name": "王五", "role": "editor"})
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["id"]
    assert (await api.client.get(API + "/notices", headers={"Authorization": f"Bearer {token}"})).status_code == 200
    listed = (await api.get("/tokens", Role.admin)).text
    assert "王五" in listed and token not in listed
    assert (await api.post(f"/tokens/{token_id}:revoke", Role.admin)).json()["revoked_at"] is not None
    assert (await api.client.get(API + "/notices", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    assert (await api.post(f"/tokens/{token_id}:revoke", Role.admin)).status_code == 404
    assert (await api.post("/tokens", Role.admin, json={"name": "x", "role": "root"})).status_code == 422
    assert [(r["action"], r["actor"]) for r in api.audit(subject=str(token_id))] == [
        ("token.create", "admin-张三"), ("token.revoke", "admin-张三")]
    assert token not in json.dumps(api.audit(), default=str)


# -- nothing leaks --------------------------------------------------------------------------------------

async def test_no_answer_at_any_role_holds_an_outlet_url_or_secret(api: Api) -> None:
    await api.post("/notices", Role.editor, json=[notice(), notice(ref="two", title="第二条")])
    # outlets that echo what they were sent: their URL and credentials reach the store's error and answer
    echo = f"POST {CANARY_URL}?key={SECRETS['S_NANAN']} sign={SECRETS['S_YUZHONG']} {SECRETS['S_HUALONG']}"
    failed = [record_failure(api.store, echo, o) for o in ("city-hualong", "dist-yuzhong", "dist-nanan")]
    # and an operator who quoted one when pausing an outlet
    api.store.health.pause("n-group", f"moved to {CANARY_URL}", actor=Actor("root", "local", "cli@test"))
    answers: list[httpx.Response] = [await api.client.get("/openapi.json")]
    for role in Role:
        for path in ("/notices", "/notices/cq-test-001", "/deliveries", "/deliveries?state=failed", "/outlets",
                     "/attempts",
                     "/audit", "/tokens", *(f"/deliveries/{d}/attempts" for d in failed)):
            answers.append(await api.get(path, role))
        answers.append(await api.post("/notices:preview", role, json=notice(ref="p")))
        answers.append(await api.post("/deliveries:retry", role, json={"dry_run": True}))
        answers.append(await api.post("/outlets/dist-nanan:pause", role, json={"reason": "检查"}))
        answers.append(await api.post("/outlets/dist-nanan:resume", role))
        answers.append(await api.post("/notices", role, json=notice(ref="x", verdict="nope")))
    assert {a.status_code for a in answers} >= {200, 403, 422}
    for answer in answers:
        for canary in canaries():
            assert canary not in answer.text, (answer.request.url, canary)
    assert any("[outlet url]" in a.text for a in answers)  # the echo was there, and scrubbed


# -- end to end -----------------------------------------------------------------------------------------

async def test_a_notice_posted_through_the_api_reaches_real_outlets_and_its_audit_trail_is_complete(
    store: Store, settings: Settings, regions: RegionTable, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(6)
    async for api in serve(store, regions, matrix, settings):
        answer = await api.post("/notices", Role.editor, json=notice(urgency="urgent"))
        assert answer.json()["deliveries"] == 6
        assert (await api.post("/outlets/outlet-0002:pause", Role.operator, json={"reason": "演练"})).status_code == 200

        async def dispatch() -> None:
            async with make_sender(settings) as client:
                dispatcher = Dispatcher(store, matrix, settings, client)
                await dispatcher.run(until_idle=True)
                await dispatcher.close()

        await dispatch()
        held = (await api.get("/notices/cq-test-001", Role.viewer)).json()
        assert held["state"] == "pending"
        assert [w["outlet"] for t in held["tiers"] for w in t["waiting"]] == ["outlet-0002"]
        assert (await api.post("/outlets/outlet-0002:resume", Role.operator)).json()["due"] == 1
        await dispatch()

        shown = (await api.get("/notices/cq-test-001", Role.viewer)).json()
        assert shown["state"] == "delivered"
        assert all(t["delivered"] == t["outlets"] and t["waiting"] == [] for t in shown["tiers"])
        assert sum(t["outlets"] for t in shown["tiers"]) == 6
        assert set(outlets.delivered()) == {o.id for o in matrix.outlets} and outlets.refused == []

        trail = (await api.get("/audit", Role.operator)).json()["audit"]
        assert [(r["action"], r["actor"], r["subject"]) for r in trail if r["action"] != "token.create"] == [
            ("notice.submit", "editor-张三", "cq-test-001"), ("outlet.pause", "operator-张三", "outlet-0002"),
            ("outlet.resume", "operator-张三", "outlet-0002")]
        assert all(r["source"] == "203.0.113.7" for r in trail if r["action"] != "token.create")
        assert trail[-3]["detail"]["deliveries"] == 6 and trail[-1]["detail"]["due"] == 1


async def test_a_method_a_path_does_not_take_is_405_listing_every_method_it_does(api: Api) -> None:
    answer = await api.client.request("DELETE", API + "/notices", headers=api.auth(Role.admin))
    assert answer.status_code == 405 and answer.headers["content-type"] == PROBLEM
    assert answer.headers["allow"] == "GET, POST"


async def test_openapi_describes_every_error_as_a_problem_and_a_submitted_notice_with_its_regions(api: Api) -> None:
    document = (await api.client.get("/openapi.json")).json()
    submit = document["paths"][API + "/notices"]["post"]
    assert set(submit["responses"]) >= {"201", "401", "403", "409", "413", "422"}
    assert all(list(answer["content"]) == [PROBLEM] for status, answer in submit["responses"].items()
               if status[0] == "4")
    regions = document["components"]["schemas"]["NoticeIn"]["properties"]["regions"]["items"]["enum"]
    assert {"全市", "渝中区", "两江新区"} <= set(regions)


# -- a notice's life ------------------------------------------------------------------------------------

async def test_a_correction_and_a_retraction_through_the_api_are_audited_and_show_in_the_detail_and_history(
    api: Api
) -> None:
    assert (await api.post("/notices", json=notice(), role=Role.editor)).status_code == 201
    changed = notice(truth="经核实，长江重庆段水位平稳，较昨日上涨0.3米。")
    conflict = await api.post("/notices", json=changed, role=Role.editor)
    assert conflict.status_code == 409 and "correct: true" in conflict.json()["detail"]
    no_note = await api.post("/notices/cq-test-001:correct", json=changed, role=Role.editor)
    assert no_note.status_code == 422 and "correction_note" in no_note.json()["detail"]
    other_ref = await api.post("/notices/cq-other:correct", json=changed | {"correction_note": "x"}, role=Role.editor)
    assert other_ref.status_code == 422 and "keeps its ref" in other_ref.json()["detail"]

    answer = await api.post("/notices/cq-test-001:correct", json=changed | {"correction_note": "水位数据有误"},
                            role=Role.editor)
    assert answer.status_code == 200, answer.text
    assert answer.json()["version"] == 2
    (row,) = api.audit(action="notice.correct")
    assert row["subject"] == "cq-test-001" and row["actor"] == "editor-张三"

    # correct: true in the body of an ordinary submit does the same
    third = await api.post("/notices", json=changed | {"title": "第三版标题", "correct": True, "correction_note": "标题"},
                           role=Role.editor)
    assert third.status_code == 201 and third.json()["notices"][0]["version"] == 3
    new_ref = await api.post("/notices", json=notice(ref="cq-new", correct=True, correction_note="x"), role=Role.editor)
    assert new_ref.status_code == 409 and "no notice is stored" in new_ref.json()["detail"]

    retracted = await api.post("/notices/cq-test-001:retract", json={"reason": "复核有误"}, role=Role.editor)
    assert retracted.status_code == 200 and retracted.json()["cancelled"] >= 1
    assert len(api.audit(action="notice.retract")) == 1
    detail = (await api.get("/notices/cq-test-001", role=Role.viewer)).json()
    assert detail["version"] == 3 and detail["retraction"]["reason"] == "复核有误" and detail["state"] == "retracted"
    listed = (await api.get("/notices", role=Role.viewer, params={"state": "retracted"})).json()["notices"]
    assert [n["ref"] for n in listed] == ["cq-test-001"]
    history = (await api.get("/notices/cq-test-001/history", role=Role.viewer)).json()
    assert [v["version"] for v in history["versions"]] == [1, 2, 3]
    assert history["versions"][1]["changes"][0]["field"] == "truth"
    assert {o["status"] for o in history["outlets"]} == {"cancelled"}
    again = await api.post("/notices/cq-test-001:correct", json=changed | {"title": "再改", "correction_note": "x"},
                           role=Role.editor)
    assert again.status_code == 409 and "retracted" in again.json()["detail"]
    assert (await api.post("/notices/nope:retract", json={"reason": "x"}, role=Role.editor)).status_code == 404


async def test_an_operator_backfills_an_outlet_with_the_live_notices_it_has_not_had_oldest_first(
    api: Api, regions: RegionTable
) -> None:
    from bot.model import Notice

    def stored(**fields: Any) -> Notice:
        return Notice.model_validate(notice_data(**fields), context={"regions": regions})

    earlier = datetime.now(UTC) - timedelta(days=2)
    api.store.queue.add_notices([(stored(ref="old", title="旧的"), [])], source="t", now=earlier)
    api.store.queue.add_notices([(stored(ref="new", title="新的"), [])], source="t")
    api.store.queue.add_notices([(stored(ref="nanan", title="南岸", regions=["南岸区"]), [])], source="t")
    api.store.queue.add_notices([(stored(ref="gone", title="撤回的"), [])], source="t")
    api.store.lifecycle.retract("gone", "撤回", None)
    dry = await api.post("/outlets/dist-yuzhong:backfill", json={"since": "7d", "dry_run": True}, role=Role.operator)
    assert dry.status_code == 200 and dry.json() == {"outlet": "dist-yuzhong", "notices": ["old", "new"]}
    assert api.store.log.deliveries(outlet_id="dist-yuzhong") == [] and api.audit(action="outlet.backfill") == []
    done = await api.post("/outlets/dist-yuzhong:backfill", json={"since": "1d"}, role=Role.operator)
    assert done.json()["notices"] == ["new"]  # the district's targeting holds: 南岸区's notice is not its
    (row,) = api.audit(action="outlet.backfill")
    assert row["subject"] == "dist-yuzhong"
    assert (await api.post("/outlets/nope:backfill", json={}, role=Role.operator)).status_code == 404
    bad = await api.post("/outlets/dist-yuzhong:backfill", json={"since": "soon"}, role=Role.operator)
    assert bad.status_code == 422 and "since" in bad.json()["detail"]
