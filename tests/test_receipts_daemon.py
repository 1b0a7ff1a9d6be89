"""Receipts (回执) with the real daemon: two `debunkbot run` processes on one PostgreSQL store, stopped and
started again between the reminder and the escalation. A silent district gets exactly one reminder (提醒) through
its own channel, the operators exactly one alert naming the silent districts, and a district that confirmed gets
neither."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.store.tables import alerts, receipts
from bot.testing import WebhookOutlets
from bot.web import Site, create_app
from tests.conftest import notice_data, until, whsec

KEY = "receipt-key-for-daemon-tests-0123456789"
PUBLIC = "https://piyao.example.gov.cn"
WINDOW = 10.0  # seconds: a reminder at 5 s, the escalation at 10 s


async def test_a_silent_district_gets_one_reminder_and_the_operators_one_alert_across_a_restart_and_two_processes(
    tmp_path: Path, regions: RegionTable, postgres_url: str
) -> None:
    ids = ["dist-a", "dist-b", "dist-c", "city-1"]
    keys = {o: whsec() for o in [*ids, "ops"]}
    async with WebhookOutlets(keys) as hooks:
        entries = [{"id": o, "name": f"{o}融媒体中心", "tier": "city" if o.startswith("city") else "district",
                    "region": "全市", "channel": "webhook", "url": hooks.url(o), "secret_env": f"RX_{o.upper().replace('-', '_')}"}
                   for o in ids]
        operators = [{"id": "ops", "name": "值班群", "channel": "webhook", "url": hooks.url("ops"), "secret_env": "RX_OPS"}]
        path = tmp_path / "outlets.yaml"
        path.write_text(yaml.safe_dump({"outlets": entries, "operators": operators}, allow_unicode=True), encoding="utf-8")
        environ = {f"RX_{o.upper().replace('-', '_')}": s for o, s in keys.items()}
        matrix = load_matrix(path, regions, environ=environ)
        store = Store.open(postgres_url)
        settings = Settings(database_url=postgres_url, outlets=path, public_url=PUBLIC, receipt_key=KEY)
        env = os.environ | environ | {
            "DEBUNKBOT_DATABASE_URL": postgres_url, "DEBUNKBOT_OUTLETS": str(path), "DEBUNKBOT_PUBLIC_URL": PUBLIC,
            "DEBUNKBOT_RECEIPT_KEY": KEY, "DEBUNKBOT_PUBLISH_WITHIN": f"{WINDOW:g}s", "DEBUNKBOT_ALERT_INTERVAL": "0",
            "DEBUNKBOT_SCAN_INTERVAL": "0.1", "DEBUNKBOT_SHUTDOWN_GRACE": "1", "DEBUNKBOT_HTTP_TIMEOUT": "2",
        }
        log = (tmp_path / "daemon.log").open("ab")

        async def start() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", "--no-web", env=env,
                                                        stdout=log, stderr=log, start_new_session=True)

        async def stop(*procs: asyncio.subprocess.Process) -> None:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                assert await asyncio.wait_for(proc.wait(), 30) == 0, (tmp_path / "daemon.log").read_text()[-3000:]

        def posts(kind: str, ref: str | None = None) -> list[Any]:
            return [p for p in hooks.posts if p.payload["type"] == kind
                    and (ref is None or p.payload["data"].get("ref") == ref)]

        def submit(ref: str) -> None:
            notice = Notice.model_validate(notice_data(ref=ref), context={"regions": regions})
            store.queue.add_notices([(notice, matrix.outlets)], source="test")

        def started() -> bool:
            """Both processes up, and receipts switched on (notices released before that get no reminder)."""
            with store.engine.connect() as conn:
                on = conn.execute(sa.select(alerts.c.id).where(alerts.c.key == "receipts:on")).first()
            return on is not None and (tmp_path / "daemon.log").read_text().count("outlet matrix: 4 outlets") == 2

        first, second = await start(), await start()
        await until(started, 60, what="both processes up")  # the window starts at the release
        submit("cq-rx-001")
        await until(lambda: len(posts("notice.published", "cq-rx-001")) == 4, 30, what="the notice everywhere")
        link = next(p.payload["data"]["receipt_url"] for p in posts("notice.published") if p.outlet == "dist-a")
        app = create_app(Site(settings, store, regions, matrix))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=PUBLIC) as client:
            confirmed = await client.post(link.removeprefix(PUBLIC), json={"published_url": "https://a.example/1"})
        assert confirmed.status_code == 200, confirmed.text

        await until(lambda: len(posts("notice.reminder")) >= 2, 30, what="the reminders")
        await stop(first, second)  # restarted between the reminder and the escalation
        first, second = await start(), await start()
        await until(lambda: any("cq-rx-001" in p.payload["data"]["text"] for p in posts("operator.alert")), 30,
                    what="the escalation")
        # a barrier, not a sleep: a second notice's reminders come only after both processes ran many more ticks
        submit("cq-rx-002")
        await until(lambda: len(posts("notice.reminder", "cq-rx-002")) == 3, 30,
                    what="the second notice's reminders")
        await stop(first, second)

        with store.engine.connect() as conn:
            unpublished = list(conn.execute(sa.select(alerts).where(alerts.c.kind == "unpublished")))
            marks = list(conn.execute(sa.select(receipts)))
        store.close()

    reminded = sorted(p.outlet for p in posts("notice.reminder", "cq-rx-001"))
    assert reminded == ["dist-b", "dist-c"], "one reminder per silent district, none to the one that confirmed or the city"
    for post in posts("notice.reminder", "cq-rx-001"):
        assert post.message_id.endswith(".reminder") and post.payload["data"]["receipt_url"].startswith(PUBLIC + "/r/")
        assert "【提醒】" in post.payload["data"]["text"]
    escalations = [a for a in unpublished if "cq-rx-001" in a.key]
    assert len(escalations) == 1
    assert "dist-b" in escalations[0].text and "dist-c" in escalations[0].text and "dist-a" not in escalations[0].text
    alerted = [p for p in posts("operator.alert") if "cq-rx-001" in p.payload["data"]["text"]]
    assert len({p.message_id for p in alerted}) == 1, "the operators got the escalation once"
    first_notice = {(m.delivery_id, m.reminded_at is not None, m.escalated_at is not None, m.published_at is not None)
                    for m in marks if m.reminded_at is not None or m.published_at is not None}
    assert sum(1 for _, reminded_, _, _ in first_notice if reminded_) >= 2
