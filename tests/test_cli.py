"""The debunkbot command, run as editors and operators run it: a real process, real outlets on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import notice_data

LOG_KEYS = {"notice", "outlet", "status", "attempts", "http_status", "error", "delivered_at"}


async def debunkbot(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, env=os.environ | env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def bot_env(
    tmp_path: Path, loopback: Callable[..., Any], n: int, database_url: str, **script: Any
) -> tuple[Any, dict[str, str]]:
    outlets, matrix = await loopback(n, script=script)
    env = {"DEBUNKBOT_DATABASE_URL": database_url,
           "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
           "DEBUNKBOT_RETRY_SCHEDULE": "0.05,0.05", "DEBUNKBOT_SCAN_INTERVAL": "0.1",
           "COLUMNS": "200"}
    env |= {o.secret_env: matrix.secret_for(o.id) for o in matrix.outlets}
    return outlets, env


async def test_submit_then_run_until_idle_delivers_everywhere_and_the_log_shows_it(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 8, database_url, **{"outlet-0003": [503]})
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")

    code, out, err = await debunkbot(env, "submit", str(notice))
    assert code == 0, err
    assert "cq-test-001 stored, 8 deliveries" in out

    code, _, err = await debunkbot(env, "run", "--until-idle")
    assert code == 0, err
    assert len(outlets.delivered()) == 8 and outlets.refused == []

    code, out, _ = await debunkbot(env, "log", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 8 and all(set(r) == LOG_KEYS for r in rows)
    assert {r["status"] for r in rows} == {"delivered"}
    assert next(r for r in rows if r["outlet"] == "outlet-0003")["attempts"] == 2

    code, out, _ = await debunkbot(env, "log", "--attempts", "--json", "--outlet", "outlet-0003")
    assert [json.loads(line)["http_status"] for line in out.splitlines()] == [503, 200]

    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert code == 0 and "every outlet (8) has cq-test-001" in out


async def test_submit_exits_2_naming_the_bad_file_and_still_stores_the_good_one(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(notice_data(ref="bad", regions=["火星"]), allow_unicode=True), encoding="utf-8")

    code, _, err = await debunkbot(env, "submit", str(good), str(bad))
    assert code == 2
    assert "bad.yaml" in err and "regions" in err and "火星" in err

    code, out, _ = await debunkbot(env, "status", "cq-test-001")
    assert code == 0 and "outlet(s) without cq-test-001" in out
    code, _, err = await debunkbot(env, "status", "bad")
    assert code == 2 and "no notice with ref 'bad'" in err


async def test_a_bad_outlet_matrix_stops_start_up_before_anything_is_sent(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(good)))[0] == 0
    del env["TEST_SECRET_0001"]
    monkeypatch.delenv("TEST_SECRET_0001", raising=False)  # nor from the environment the run inherits

    code, _, err = await debunkbot(env, "run", "--until-idle")
    assert code == 2
    assert "outlet 'outlet-0001' field 'secret_env'" in err
    assert outlets.posts == [] and sum(outlets.tries.values()) == 0


async def test_render_previews_what_an_outlet_would_get(tmp_path: Path, loopback: Callable[..., Any], database_url: str) -> None:
    _, env = await bot_env(tmp_path, loopback, 2, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    await debunkbot(env, "submit", str(good))
    code, out, _ = await debunkbot(env, "render", "cq-test-001", "--outlet", "outlet-0001")
    assert code == 0 and "【辟谣】" in out and "ClaimReview" in out


async def test_the_daemon_takes_inbox_files_and_stops_cleanly_on_sigterm(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 4, database_url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env["DEBUNKBOT_INBOX"] = str(inbox)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", env=os.environ | env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    (inbox / "n.yaml").write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    for _ in range(600):
        if len(outlets.delivered()) == 4 or proc.returncode is not None:
            break
        await asyncio.sleep(0.05)  # polling for an outcome, not timing it
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    assert len(outlets.delivered()) == 4
    assert (inbox / "accepted" / "n.yaml").exists()


async def test_retry_requeues_failed_deliveries_and_their_next_try_is_logged_as_manual(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 4, database_url, **{"outlet-0003": [400]})
    notice = tmp_path / "n.yaml"
    notice.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(notice)))[0] == 0
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0

    code, out, _ = await debunkbot(env, "retry", "--outlet", "outlet-0003", "--since", "1h", "--dry-run")
    assert code == 0 and "would requeue 1 deliveries" in out and "nothing changed" in out
    code, out, _ = await debunkbot(env, "log", "--json", "--status", "failed")
    assert [json.loads(line)["outlet"] for line in out.splitlines()] == ["outlet-0003"]

    code, out, _ = await debunkbot(env, "retry", "--status", "failed")
    assert code == 0 and "requeued 1 deliveries" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    code, out, _ = await debunkbot(env, "log", "--attempts", "--json", "--outlet", "outlet-0003")
    tries = [json.loads(line) for line in out.splitlines()]
    assert [(t["attempt"], t["trigger"], t["http_status"]) for t in tries] == [(1, "scheduled", 400), (2, "manual", 200)]
    assert outlets.tries["outlet-0003"] == 2


async def test_outlets_lists_health_and_resume_sends_what_a_paused_outlet_held(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url, **{"outlet-0001": [410]})
    for ref in ("first", "second"):
        path = tmp_path / f"{ref}.yaml"
        path.write_text(yaml.safe_dump(notice_data(ref=ref, title=ref), allow_unicode=True), encoding="utf-8")
        assert (await debunkbot(env, "submit", str(path)))[0] == 0
        assert (await debunkbot(env, "run", "--until-idle"))[0] == 0

    code, out, _ = await debunkbot(env, "outlets", "--json")
    health = {row["outlet"]: row for row in map(json.loads, out.splitlines())}
    assert code == 0 and set(health) == {"outlet-0000", "outlet-0001", "outlet-0002"}
    paused = health["outlet-0001"]
    assert (paused["status"], paused["consecutive_failures"], paused["pending"], paused["failed"]) == ("paused", 1, 1, 1)
    assert "410" in paused["paused_reason"]
    assert health["outlet-0000"]["status"] == "ok" and health["outlet-0000"]["last_success_at"]
    code, out, _ = await debunkbot(env, "outlets")
    assert code == 0 and "paused" in out and "debunkbot outlets resume ID" in out

    code, out, _ = await debunkbot(env, "outlets", "resume", "outlet-0001")
    assert code == 0 and "1 held deliveries are due now" in out
    assert (await debunkbot(env, "run", "--until-idle"))[0] == 0
    assert outlets.delivered()["outlet-0001"] and outlets.tries["outlet-0001"] == 2
    code, _, err = await debunkbot(env, "outlets", "resume", "outlet-0001")
    assert code == 2 and "is not paused" in err
