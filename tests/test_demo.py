"""The demo, and `make try` (`debunkbot demo --keep`): a newcomer's first hour, as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys
from pathlib import Path

import httpx

from bot.settings import CONFIG
from tests.conftest import until
from tests.test_cli import debunkbot


async def test_try_leaves_a_running_setup_that_takes_a_notice_from_its_inbox_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    work = tmp_path / "try"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "demo", "--keep", str(work), env=os.environ | {"COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    said = ""
    try:
        while "Ctrl-C stops it" not in said:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=120)
            assert line, said
            said += line.decode()
        while "debunkbot outlets" not in said:
            said += (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        assert "here it is 5+39+6" in said and "江北区 and 渝北区 merged into 两江新区 on 2026-01-25" in said
        assert f"inbox   {work / 'inbox'}" in said and f". {shlex.quote(str(work / 'env'))}" in said
        web = re.search(r"web     (http://127\.0\.0\.1:\d+) ", said)  # the conftest asks for a free port
        assert web, said
        async with httpx.AsyncClient(base_url=web[1], trust_env=False) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}

        env = {}
        for line in (work / "env").read_text(encoding="utf-8").splitlines():
            key, value = line.removeprefix("export ").split("=", 1)
            env[key] = shlex.split(value)[0]
        sample = (CONFIG / "samples" / "2026-11-27-citywide.yaml").read_text(encoding="utf-8")
        (work / "inbox" / "mine.yaml").write_text(sample.replace("cq-2026-1127-001", "my-first"), encoding="utf-8")
        rows: list[dict[str, object]] = []

        async def everywhere() -> bool:
            _, out, _ = await debunkbot(env, "log", "--json", "--notice", "my-first")
            rows[:] = [json.loads(line) for line in out.splitlines()]
            return len(rows) == 50 and all(r["status"] == "delivered" for r in rows if r["outlet"] not in (
                "other-partner-site", "other-open-feed"))

        await until(everywhere, 180, proc=proc, what=lambda: f"my-first at every pushed outlet: {rows}",
                    every=0.2)
        assert (work / "inbox" / "accepted" / "mine.yaml").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err_bytes.decode()


async def test_the_demo_says_why_the_matrix_is_5_39_6_and_what_to_try_next() -> None:
    code, out, err = await debunkbot({"COLUMNS": "200"}, "demo")
    assert code == 0, err
    assert "here it is 5+39+6: 5 city platforms, 39 district media centres" in out
    assert "every outlet has every notice" in out and "Next: `make try`" in out
