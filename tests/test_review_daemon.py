"""Review before release with the real daemon: a `debunkbot run` process with DEBUNKBOT_REVIEW_STAGES=2 takes
notices from its inbox as drafts; reviewers sign them from the command line while it runs, and only the second
sign-off lets a notice reach the outlets. An embargo that passed while the notice was a draft sends nothing: it
falls due at the release."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import notice_data, until
from tests.test_cli import bot_env, debunkbot

EMBARGO = 3.0  # seconds after the drop into the inbox: passed long before the embargoed notice is released


async def test_the_running_daemon_sends_an_inbox_notice_only_after_both_stages_and_an_embargo_only_after_release(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    outlets, env = await bot_env(tmp_path, loopback, 3, database_url)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env |= {"DEBUNKBOT_REVIEW_STAGES": "2", "DEBUNKBOT_INBOX": str(inbox), "DEBUNKBOT_SHUTDOWN_GRACE": "1"}
    tokens = {}
    for name in ("审核甲", "审核乙"):
        code, out, err = await debunkbot(env, "token", "create", "--role", "reviewer", "--name", name)
        assert code == 0, err
        tokens[name] = env | {"DEBUNKBOT_TOKEN": out.strip()}

    def sent(ref: str) -> list[str]:
        return [p.outlet for p in outlets.posts if p.payload["data"].get("ref") == ref]

    async def sign(ref: str, stage: int, reviewer: str) -> str:
        code, out, err = await debunkbot(tokens[reviewer], "review", "sign", ref, "--stage", str(stage))
        assert code == 0, err
        return out

    log = (tmp_path / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", "--no-web", env=os.environ | env,
                                                stdout=log, stderr=log, start_new_session=True)
    try:
        embargo = datetime.now(UTC) + timedelta(seconds=EMBARGO)
        for name, data in [("a.yaml", notice_data(ref="cq-rv-a")),
                           ("b.yaml", notice_data(ref="cq-rv-b")),
                           ("c.yaml", notice_data(ref="cq-rv-c", publish_at=embargo.isoformat()))]:
            (inbox / name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        await until(lambda: len(list((inbox / "accepted").glob("*.yaml"))) == 3, proc=proc, what="the inbox taken")
        code, out, err = await debunkbot(env, "review", "list")
        assert code == 0 and all(ref in out for ref in ("cq-rv-a", "cq-rv-b", "cq-rv-c")), err

        await sign("cq-rv-a", 1, "审核甲")
        await until(lambda: datetime.now(UTC) > embargo, proc=proc, what="the embargo of cq-rv-c to pass")
        assert "released to the outlets" in await sign("cq-rv-b", 1, "审核甲") + await sign("cq-rv-b", 2, "审核乙")
        # a barrier, not a sleep: the daemon sent b everywhere, so it would have sent a and c had they been due
        await until(lambda: len(sent("cq-rv-b")) == 3, proc=proc, what="cq-rv-b at every outlet")
        assert sent("cq-rv-a") == [] and sent("cq-rv-c") == [], "a draft reached an outlet before its release"

        assert "released to the outlets" in await sign("cq-rv-a", 2, "审核乙")
        assert "released to the outlets" in await sign("cq-rv-c", 1, "审核乙") + await sign("cq-rv-c", 2, "审核甲")
        await until(lambda: len(sent("cq-rv-a")) == len(sent("cq-rv-c")) == 3, proc=proc, what="a and c everywhere")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert sorted(sent("cq-rv-a")) == sorted(sent("cq-rv-c")) == ["outlet-0000", "outlet-0001", "outlet-0002"]
    assert outlets.refused == []
