"""A notice's life from the command line, as an editor and an operator run it: correct, retract, history,
status and backfill, against real loopback outlets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import notice_data
from tests.test_cli import bot_env, debunkbot


async def test_an_editor_corrects_and_retracts_a_notice_and_every_outlet_that_had_it_is_told(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 4, database_url)
    matrix_file = tmp_path / "outlets.yaml"
    everyone = matrix_file.read_text(encoding="utf-8")
    entries = yaml.safe_load(everyone)["outlets"]
    latecomer = entries[-1]["id"]
    matrix_file.write_text(yaml.safe_dump({"outlets": entries[:-1]}, allow_unicode=True), encoding="utf-8")
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(notice)))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0

    corrected = tmp_path / "v2.yaml"
    corrected.write_text(yaml.safe_dump(notice_data(truth="经核实，水位较昨日上涨0.3米。"), allow_unicode=True),
                         encoding="utf-8")
    code, _, err = await debunkbot(env, "submit", str(corrected))
    assert code == 2 and "correct: true" in err  # a known ref with other content is still a conflict
    code, _, err = await debunkbot(env, "correct", "cq-test-001", str(corrected))
    assert code == 2 and "correction_note" in err and str(corrected) in err
    code, out, err = await debunkbot(env, "correct", "cq-test-001", str(corrected), "--note", "水位数据有误")
    assert code == 0, err
    assert "corrected to version 2: 3 deliveries" in out
    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert "version 2" in out and "correction to version 2" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert sorted(p.payload["type"] for p in outlets.posts) == ["notice.corrected"] * 3 + ["notice.published"] * 3

    code, out, err = await debunkbot(env, "retract", "cq-test-001", "--reason", "经复核撤回")
    assert code == 0, err
    assert "0 deliveries cancelled, 3 retractions to send" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert sum(p.payload["type"] == "notice.retracted" for p in outlets.posts) == 3
    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert "retracted" in out and "经复核撤回" in out

    code, out, _ = await debunkbot(env, "history", "cq-test-001", "--json")
    history = json.loads(out)
    assert [v["version"] for v in history["versions"]] == [1, 2]
    assert history["versions"][1]["correction_note"] == "水位数据有误"
    assert history["retraction"]["reason"] == "经复核撤回"
    assert {tuple(a["carries"] for a in o["attempts"]) for o in history["outlets"]} == {
        ("notice", "correction", "retraction")}
    code, out, _ = await debunkbot(env, "history", "cq-test-001")
    assert code == 0 and "truth" in out and "经复核撤回" in out
    assert (await debunkbot(env, "retract", "nope", "--reason", "x"))[0] == 2

    # a live notice for the latecomer, which joins the matrix now: backfill sends it that one, not the retracted
    live = tmp_path / "live.yaml"
    live.write_text(yaml.safe_dump(notice_data(ref="cq-live", title="另一条"), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(live)))[0] == 0
    matrix_file.write_text(everyone, encoding="utf-8")
    code, out, err = await debunkbot(env, "backfill", latecomer, "--since", "7d")
    assert code == 0, err
    assert "1 notice" in out and "cq-live" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    (got,) = [p for p in outlets.posts if p.outlet == latecomer]
    assert got.payload["data"]["ref"] == "cq-live"
    code, out, _ = await debunkbot(env, "log", "--attempts", "--json", "--outlet", latecomer)
    assert [json.loads(line)["trigger"] for line in out.splitlines()] == ["backfill"]
    assert (await debunkbot(env, "backfill", latecomer, "--since", "soon"))[0] == 2
