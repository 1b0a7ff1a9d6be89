"""Several `debunkbot worker` processes sharing one PostgreSQL store."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot.store import Store
from tests.conftest import notice_data, until


async def start_workers(n: int, env: dict[str, str]) -> list[asyncio.subprocess.Process]:
    return [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "worker", "--until-idle",
                                             env=os.environ | env, stdout=asyncio.subprocess.DEVNULL,
                                             stderr=asyncio.subprocess.PIPE)
        for _ in range(n)
    ]


def worker_env(url: str, tmp_path: Path, matrix: Any, **settings: str) -> dict[str, str]:
    env = {"DEBUNKBOT_DATABASE_URL": url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
           "DEBUNKBOT_SCAN_INTERVAL": "0.2", "DEBUNKBOT_RETRY_SCHEDULE": "0.1,0.1", "DEBUNKBOT_CONCURRENCY": "20"}
    env |= {o.secret_env: matrix.secret_for(o.id) for o in matrix.outlets}
    return env | {f"DEBUNKBOT_{k.upper()}": v for k, v in settings.items()}


async def finish(workers: list[asyncio.subprocess.Process]) -> None:
    for proc in workers:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=90)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]


def submit(url: str, matrix: Any, *refs: str) -> None:
    from bot.model import Notice

    store = Store.open(url)
    store.queue.add_notices([(Notice.model_validate(notice_data(ref=ref, title=f"通报{ref}")), matrix.outlets)
                       for ref in refs], source="test")
    store.close()


async def test_three_workers_send_each_of_600_deliveries_exactly_once(
    postgres_url: str, tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(600, delay=0.01)
    submit(postgres_url, matrix, "one")
    workers = await start_workers(3, worker_env(postgres_url, tmp_path, matrix))
    await finish(workers)

    per_outlet = Counter(p.outlet for p in outlets.posts)
    assert len(per_outlet) == 600 and set(per_outlet.values()) == {1}
    assert outlets.refused == []
    store = Store.open(postgres_url)
    log = store.log.attempts()
    assert len(log) == 600 and {a["outcome"] for a in log} == {"delivered"}
    with store.engine.connect() as conn:  # nothing is left claimed
        assert conn.exec_driver_sql("SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL").scalar_one() == 0
    store.close()


async def test_a_rate_limit_holds_across_workers(postgres_url: str, tmp_path: Path, loopback: Callable[..., Any]) -> None:
    robot = {"outlet-0000": {"rate_limits": ["4/s"]}}
    outlets, matrix = await loopback(1, entry_changes=robot)
    submit(postgres_url, matrix, *(f"n{i}" for i in range(10)))
    workers = await start_workers(3, worker_env(postgres_url, tmp_path, matrix, per_outlet_concurrency="4"))
    await finish(workers)

    assert len(outlets.posts) == 10
    store = Store.open(postgres_url)
    starts = sorted(a["started_at"].timestamp() for a in store.log.attempts())
    store.close()
    assert len(starts) == 10
    # no one-second window holds more than four sends, across all three workers
    assert max(sum(1 for t in starts if s <= t < s + 1.0) for s in starts) == 4


async def test_killing_a_worker_mid_run_loses_nothing(
    postgres_url: str, tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(600, delay=0.05)
    submit(postgres_url, matrix, "one")
    env = worker_env(postgres_url, tmp_path, matrix, http_timeout="1", lease_seconds="1")
    workers = await start_workers(3, env)
    await until(lambda: len(outlets.posts) >= 60, what="the fan-out under way")  # then kill one worker outright
    sent_before_kill = len(outlets.posts)
    workers[0].kill()
    await finish(workers)
    assert sent_before_kill < 600  # the kill came mid-run

    per_outlet = Counter(p.outlet for p in outlets.posts)
    assert len(per_outlet) == 600  # every outlet got it
    ids = {}
    for post in outlets.posts:  # a duplicate (sent by the killed worker, never recorded) keeps its webhook-id
        assert ids.setdefault(post.outlet, post.message_id) == post.message_id
    store = Store.open(postgres_url)
    rows = store.log.deliveries()
    store.close()
    assert {r["status"] for r in rows} == {"delivered"} and len(rows) == 600


def restart_postgres() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
                   check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(not (shutil.which("pg_ctlcluster") and os.path.isdir("/etc/postgresql") and os.geteuid() == 0),
                    reason="restarting PostgreSQL needs root and pg_ctlcluster on this machine")
async def test_workers_ride_out_a_postgres_restart_under_load_and_lose_nothing(
    postgres_url: str, tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(600, delay=0.02)
    submit(postgres_url, matrix, "one")
    workers = await start_workers(2, worker_env(postgres_url, tmp_path, matrix, concurrency="10"))
    await until(lambda: len(outlets.posts) >= 100, what="the fan-out under way")
    sent_before = len(outlets.posts)
    await asyncio.to_thread(restart_postgres)  # every connection is cut; new ones are refused for a moment
    await finish(workers)

    assert 100 <= sent_before < 600 and [w.returncode for w in workers] == [0, 0]
    assert {p.outlet for p in outlets.posts} == {o.id for o in matrix.outlets}
    for outlet, ids in outlets.delivered().items():
        assert len(ids) == 1, outlet  # a resend after the restart carries the same webhook-id
    store = Store.open(postgres_url)
    rows = store.log.deliveries()
    store.close()
    assert len(rows) == 600 and {r["status"] for r in rows} == {"delivered"}


def test_one_process_leads_the_cluster_jobs_and_another_takes_over_when_it_dies(postgres_url: str) -> None:
    import sqlalchemy as sa

    first, second = Store.open(postgres_url), Store.open(postgres_url)
    try:
        assert first.cluster.lead() is True
        assert second.cluster.lead() is False and first.cluster.lead() is True  # leading stays with the first
        with second.engine.connect() as conn:  # the leader's connection is idle, not idle in a transaction
            states = conn.execute(sa.text(
                "SELECT state FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                "WHERE l.locktype = 'advisory' AND l.granted")).scalars().all()
        assert states == ["idle"]
        first.close()  # the leader goes away, and its lock with its connection
        # the server frees the lock when its backend for that connection ends, a moment after the socket closes;
        # the others ask again on their next tick (the daemon's cluster jobs do every scan)
        deadline = time.monotonic() + 10
        while not second.cluster.lead():
            assert time.monotonic() < deadline, "the lock of a closed leader was never freed"
            time.sleep(0.02)
    finally:
        first.close()
        second.close()
