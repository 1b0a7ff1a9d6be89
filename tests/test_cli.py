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
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(good)))[0] == 0
    del env["TEST_SECRET_0001"]
    os.environ.pop("TEST_SECRET_0001", None)

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
