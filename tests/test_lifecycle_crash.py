"""A correction's fan-out survives SIGKILLs of the real daemon (``python -m bot run``): nothing is lost, and no
outlet is sent version 1 after it was sent version 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.store import Store, deliveries
from bot.testing import ChaosOutlets
from tests.conftest import notice_data, until, whsec

OUTLETS = 120
V1, V2 = "经核实，水位平稳（第一版）。", "经核实，水位平稳，较昨日上涨0.3米（第二版）。"


async def test_a_sigkill_during_a_corrections_fan_out_loses_nothing_and_no_outlet_gets_v1_afterwards(
    tmp_path: Path, regions: RegionTable, database_url: str
) -> None:
    ids = [f"o{i:03d}" for i in range(OUTLETS)]
    secrets = {o: whsec() for o in ids}
    async with ChaosOutlets(secrets, {}, latency=0.02) as chaos:
        entries = [{"id": o, "name": f"融媒体{o}", "tier": "district", "region": "全市", "channel": "webhook",
                    "url": chaos.url(o), "secret_env": f"LIFE_SECRET_{o.upper()}"} for o in ids]
        path = tmp_path / "outlets.yaml"
        path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
        environ = {f"LIFE_SECRET_{o.upper()}": s for o, s in secrets.items()}
        matrix = load_matrix(path, regions, environ=environ)
        store = Store.open(database_url)

        def notice(**extra: Any) -> Notice:
            return Notice.model_validate(notice_data(**extra), context={"regions": regions})

        store.queue.add_notices([(notice(truth=V1), matrix.outlets)], source="test")
        env = os.environ | environ | {
            "DEBUNKBOT_DATABASE_URL": database_url, "DEBUNKBOT_OUTLETS": str(path),
            "DEBUNKBOT_HTTP_TIMEOUT": "1", "DEBUNKBOT_LEASE_SECONDS": "1", "DEBUNKBOT_RETRY_SCHEDULE": "0.05,0.1,0.2",
            "DEBUNKBOT_RETRY_JITTER": "0", "DEBUNKBOT_SCAN_INTERVAL": "0.1", "DEBUNKBOT_CONCURRENCY": "20",
            "DEBUNKBOT_SHUTDOWN_GRACE": "1",
        }
        log = (tmp_path / "daemon.log").open("ab")

        async def start(*args: str) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", *args, env=env,
                                                        stdout=log, stderr=log, start_new_session=True)

        def accepted() -> int:
            return sum(r.accepted for r in chaos.requests)

        def recorded() -> int:
            return store.log.counts().get("delivered", 0)

        async def kill_after(posts: int, recorded_at_least: int = 0) -> None:
            proc = await start()
            target = accepted() + posts
            await until(lambda: accepted() >= target and recorded() >= recorded_at_least, 30, proc=proc,
                        what=lambda: f"{posts} posts; the daemon's log:\n"
                        + (tmp_path / "daemon.log").read_text()[-3000:])
            os.killpg(proc.pid, signal.SIGKILL)  # the daemon and its send-only processes
            await proc.wait()

        # version 1 reached about half the outlets, and some of them are recorded as having it (on a slow machine the
        # kill could come before the first record: then no outlet would be due a correction, only version 2)
        await kill_after(OUTLETS // 2, recorded_at_least=1)
        store.queue.add_notices([(notice(truth=V2, correct=True, correction_note="水位数据有误"), matrix.outlets)],
                                source="test")
        for _ in range(2):  # killed twice in the middle of the correction's fan-out
            await kill_after(OUTLETS // 4)
        proc = await start("--until-idle")
        await asyncio.wait_for(proc.wait(), timeout=90)
        assert proc.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]

        with store.engine.connect() as conn:
            rows = list(conn.execute(sa.select(deliveries)))
        store.close()

    assert len(rows) == OUTLETS and {r.status for r in rows} == {"delivered"}
    assert {r.sent_version for r in rows} == {2}
    assert all(r.lease_owner is None for r in rows), "nothing stays claimed"
    seen: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for request in chaos.requests:
        if request.accepted:
            body = json.loads(request.body)
            version = 2 if body["data"]["truth"] == V2 else 1
            seen[request.outlet].append((version, body["type"], request.message_id or ""))
    assert set(seen) == set(ids)
    message_ids = {r.outlet_id: r.message_id for r in rows}
    for outlet, got in seen.items():
        versions = [v for v, _, _ in got]
        assert versions == sorted(versions), (outlet, got)  # never version 1 after version 2
        assert versions[-1] == 2, (outlet, got)
        for version, kind, webhook_id in got:  # one webhook-id per version x outlet, whatever the retries
            assert webhook_id == (message_ids[outlet] if version == 1 else f"{message_ids[outlet]}.v2"), got
            assert kind == "notice.published" or (kind == "notice.corrected" and 1 in versions), got
    corrected = [o for o, got in seen.items() if any(k == "notice.corrected" for _, k, _ in got)]
    assert corrected, "some outlets had version 1 and got the correction"
