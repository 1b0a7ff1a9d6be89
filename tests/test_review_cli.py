"""Review before release from the command line, as a team without the web runs it: each reviewer acts with their
own token (DEBUNKBOT_TOKEN) or as a local user given a role (DEBUNKBOT_LOCAL_ROLES); the 审批表 as HTML and PDF."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bot.model import Notice
from bot.regions import RegionTable
from bot.store import Actor, Role, Store
from tests.conftest import notice_data
from tests.test_cli import bot_env, debunkbot


async def test_reviewers_sign_from_the_cli_and_the_notice_reaches_the_outlets_only_after_the_last_stage(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url)
    env["DEBUNKBOT_REVIEW_STAGES"] = "2"
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(urgency="urgent"), allow_unicode=True), encoding="utf-8")
    code, out, err = await debunkbot(env, "submit", str(notice))
    assert code == 0, err
    assert "cq-test-001 kept as a draft for review" in out
    code, out, err = await debunkbot(env, "status", "cq-test-001")  # a draft is a notice all the same
    assert code == 0 and "cq-test-001 is a draft (waiting for stage 1 of 2)" in out, err
    store = Store.open(database_url)
    try:
        first = store.access.create("审核甲", Role.reviewer)[0]
        second = store.access.create("审核乙", Role.reviewer)[0]
    finally:
        store.close()

    code, out, err = await debunkbot(env, "review", "list")
    assert code == 0 and "cq-test-001" in out and "初审 (1/2)" in out
    code, _, err = await debunkbot(env, "review", "sign", "cq-test-001", "--stage", "1")
    assert code == 2 and "has local" in err and "reviewer or higher" in err  # the local user has no role
    code, out, err = await debunkbot(env | {"DEBUNKBOT_TOKEN": first}, "review", "sign", "cq-test-001",
                                     "--stage", "1", "--comment", "文字无误")
    assert code == 0, err
    assert "waiting for stage 2 of 2" in (await debunkbot(env, "status", "cq-test-001"))[1]
    code, _, err = await debunkbot(env | {"DEBUNKBOT_TOKEN": first}, "review", "sign", "cq-test-001", "--stage", "2")
    assert code == 2 and "signed stage 1 of cq-test-001 already" in err
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert outlets.posts == [] and not outlets.tries  # nothing before release

    code, _, err = await debunkbot(env | {"DEBUNKBOT_TOKEN": second}, "review", "return", "cq-test-001",
                                   "--comment", "")
    assert code == 2 and "needs a comment" in err
    code, out, err = await debunkbot(env | {"DEBUNKBOT_TOKEN": second}, "review", "sign", "cq-test-001",
                                     "--stage", "2", "--comment", "同意发布")
    assert code == 0 and "released to the outlets" in out, err
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert len(outlets.delivered()) == 3

    code, out, _ = await debunkbot(env, "review", "show", "cq-test-001")
    assert "审核甲" in out and "文字无误" in out and "终审 (2/2)" in out and "release" in out
    code, out, _ = await debunkbot(env, "review-sheet", "cq-test-001")
    assert code == 0 and "辟谣通报审批表" in out and "初审" in out and "终审" in out and "同意发布" in out
    pdf = tmp_path / "sheet.pdf"
    code, _, err = await debunkbot(env, "review-sheet", "cq-test-001", "--pdf", str(pdf))
    assert code == 0, err
    assert pdf.read_bytes().startswith(b"%PDF") and b"/Count 1" in pdf.read_bytes()  # one A4 page


async def test_a_local_user_given_the_operator_role_releases_an_urgent_draft_with_a_reason(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str, regions: RegionTable
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 2, database_url)
    env["DEBUNKBOT_REVIEW_STAGES"] = "3"
    store = Store.open(database_url)
    try:
        store.review.stages = 3
        store.review.submit([Notice.model_validate(notice_data(urgency="urgent"), context={"regions": regions})],
                            "api:编辑王五", Actor("编辑王五", "editor", "203.0.113.7"))
    finally:
        store.close()
    assert (await debunkbot(env, "review", "sign", "cq-test-001", "--stage", "1"))[0] == 2  # no role: refused
    local_operator = env | {"DEBUNKBOT_LOCAL_ROLES": f"{getpass.getuser()}=operator"}
    assert (await debunkbot(local_operator, "review", "sign", "cq-test-001", "--stage", "1"))[0] == 0
    code, _, err = await debunkbot(local_operator, "release", "cq-test-001", "--reason", "")
    assert code == 2 and "needs a reason" in err
    code, out, err = await debunkbot(local_operator, "release", "cq-test-001", "--reason", "汛情紧急")
    assert code == 0 and "紧急发布" in out, err
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert len(outlets.delivered()) == 2
    code, out, _ = await debunkbot(env, "review", "show", "cq-test-001")
    assert "紧急发布 urgent release by" in out and "汛情紧急" in out
    code, out, _ = await debunkbot(env, "history", "cq-test-001")
    assert code == 0 and "紧急发布 urgent release after 1 of 3 stage(s): 汛情紧急" in out
