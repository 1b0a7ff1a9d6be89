"""`debunkbot run --processes 3` on SQLite: one leading process and two send-only ones, as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.model import Notice
from bot.processes import SendOnlyProcesses, default_processes
from bot.store import Store
from tests.conftest import notice_data, until


def env_for(url: str, tmp_path: Path, matrix: Any, **settings: str) -> dict[str, str]:
    env = {"DEBUNKBOT_DATABASE_URL": url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
           "DEBUNKBOT_SCAN_INTERVAL": "0.2", "DEBUNKBOT_RETRY_SCHEDULE": "0.1,0.1", "DEBUNKBOT_CONCURRENCY": "20"}
    env |= {o.secret_env: matrix.secret_for(o.id) for o in matrix.outlets}
    return os.environ | env | {f"DEBUNKBOT_{k.upper()}": v for k, v in settings.items()}


def submit(url: str, matrix: Any, *refs: str) -> None:
    store = Store.open(url)
    store.queue.add_notices([(Notice.model_validate(notice_data(ref=ref, title=f"通报{ref}")), matrix.outlets)
                             for ref in refs], source="test")
    store.close()


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", "run", "--no-web", *args, env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def command_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def settled(url: str) -> tuple[list[dict[str, Any]], int]:
    """The delivery log's rows, and how many deliveries are still claimed by someone."""
    store = Store.open(url)
    rows = store.log.deliveries()
    with store.engine.connect() as conn:
        claimed = conn.exec_driver_sql("SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL").scalar_one()
    store.close()
    return rows, claimed


async def test_three_processes_on_sqlite_deliver_each_of_600_deliveries_once_with_its_own_webhook_id(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(600, delay=0.01)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    submit(url, matrix, "one")
    run = await start(env_for(url, tmp_path, matrix), "--processes", "3", "--until-idle")
    _, err = await asyncio.wait_for(run.communicate(), timeout=120)
    assert run.returncode == 0, err.decode()[-3000:]
    assert "2 send-only process(es) started" in err.decode()

    per_outlet = Counter(p.outlet for p in outlets.posts)
    assert len(per_outlet) == 600 and set(per_outlet.values()) == {1}
    ids = [p.message_id for p in outlets.posts]
    assert len(set(ids)) == 600 and outlets.refused == []
    rows, claimed = settled(url)
    assert {r["status"] for r in rows} == {"delivered"} and len(rows) == 600 and claimed == 0


async def test_with_two_processes_the_fan_out_line_counts_each_outlet_once_and_the_idle_line_comes_once(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    failing = {f"outlet-{i:04d}": [400] for i in range(5)}
    retried = {f"outlet-{i:04d}": [503] for i in range(5, 10)}
    outlets, matrix = await loopback(100, script=failing | retried, delay=0.3)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    submit(url, matrix, "one")
    # 5 sends at a time a process, never more (no slow lane): more than 5 at once at the outlets means both sent
    env = env_for(url, tmp_path, matrix, concurrency="5", slow_send_after="30")
    run = await start(env, "--processes", "2", "--until-idle")
    _, err = await asyncio.wait_for(run.communicate(), timeout=120)
    log = err.decode()
    assert run.returncode == 0, log[-3000:]
    assert outlets.most_at_once > 5, "the send-only process sent too"

    (fanned,) = [line for line in log.splitlines() if "fanned out" in line]
    assert re.search(r"one fanned out to 100 outlet\(s\) in \d+\.\d\ds: 90 delivered, 5 to retry, 5 failed$", fanned)
    (idle,) = [line for line in log.splitlines() if "idle:" in line]
    assert idle.endswith("idle: nothing left to send") and log.index(fanned) < log.index(idle)
    assert log.splitlines()[-2] == idle and "stopped (" in log.splitlines()[-1]  # the child had stopped before it
    # both write to the same stderr: the child's lines say whose they are, the leader's as ever
    follows = [line for line in log.splitlines() if "outlet matrix: 100 outlets; following" in line]
    assert sorted(" debunkbot.matrix [send-only process 1]: " in line for line in follows) == [False, True]
    assert " debunkbot [send-only process 1]: stopped (" in log and "[send-only process 1]" not in idle
    rows, claimed = settled(url)  # the retries were sent before it stopped, whichever process sent them
    assert Counter(r["status"] for r in rows) == {"delivered": 95, "failed": 5} and claimed == 0


async def test_a_child_killed_mid_fan_out_is_started_again_and_every_outlet_gets_the_notice(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(600, delay=0.05)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    submit(url, matrix, "one")
    run = await start(env_for(url, tmp_path, matrix, http_timeout="1", lease_seconds="1"), "--processes", "3")
    await until(lambda: len(children_of(run.pid)) == 2 and len(outlets.posts) >= 60)
    # the first children were forked from the leading process (bot.processes.fork_send_only): its command line
    firsts = children_of(run.pid)
    assert [command_of(pid) for pid in firsts] == [command_of(run.pid)] * 2
    victim = min(firsts)
    os.kill(victim, signal.SIGKILL)
    sent_before_kill = len(outlets.posts)
    await until(lambda: len(children_of(run.pid) - {victim}) == 2)  # started again
    (again,) = children_of(run.pid) - firsts
    assert command_of(again)[-3:] == ["-m", "bot", "worker"]  # beside running threads: a new process, not a fork
    await until(lambda: len({p.outlet for p in outlets.posts}) == 600)
    await until(lambda: settled(url)[1] == 0 and {r["status"] for r in settled(url)[0]} == {"delivered"})
    run.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(run.communicate(), timeout=60)
    log = err.decode()
    assert run.returncode == 0, log[-3000:]
    assert sent_before_kill < 600  # the kill came mid fan-out
    assert f"(pid {victim}) was killed by SIGKILL; starting it again" in log
    assert "send-only process 1 started again" in log or "send-only process 2 started again" in log

    # at least once: a send the killed child made but never recorded is made again, with the same webhook-id
    for outlet, message_ids in outlets.delivered().items():
        assert len(message_ids) == 1, outlet
    rows, _ = settled(url)
    assert len(rows) == 600 and {r["status"] for r in rows} == {"delivered"}


async def test_sigterm_to_the_leading_process_drains_every_process_and_nothing_is_left_claimed(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    outlets, matrix = await loopback(300, delay=0.2)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    submit(url, matrix, "one")
    env = env_for(url, tmp_path, matrix, shutdown_grace="5")
    run = await start(env, "--processes", "3")
    await until(lambda: len(children_of(run.pid)) == 2 and len(outlets.posts) >= 20)
    children = children_of(run.pid)
    run.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(run.communicate(), timeout=60)
    assert run.returncode == 0, err.decode()[-3000:]
    assert "while stopping" not in err.decode(), err.decode()  # every child exited 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)  # waited for, before the parent exited
    rows, claimed = settled(url)
    delivered = {r["outlet"] for r in rows if r["status"] == "delivered"}
    assert claimed == 0  # claims not sent were given back
    assert delivered <= {p.outlet for p in outlets.posts}
    assert len(delivered) < 300  # the stop came mid fan-out

    again = await start(env, "--processes", "3", "--until-idle")  # the rest goes out at the next start
    _, err = await asyncio.wait_for(again.communicate(), timeout=120)
    assert again.returncode == 0, err.decode()[-3000:]
    for outlet, message_ids in outlets.delivered().items():
        assert len(message_ids) == 1, outlet
    assert len(outlets.delivered()) == 300


async def test_a_send_only_process_stops_by_itself_when_the_leading_process_is_killed_outright(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    _, matrix = await loopback(2)
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    run = await start(env_for(url, tmp_path, matrix), "--processes", "2")
    await until(lambda: len(children_of(run.pid)) == 1)
    (child,) = children_of(run.pid)
    run.kill()
    await run.wait()
    await until(lambda: not Path(f"/proc/{child}").exists())  # it noticed, drained and exited


async def test_a_leading_process_stopped_while_it_waits_for_its_store_leaves_no_send_only_process_behind(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    _, matrix = await loopback(2)
    url = "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"  # refused: it waits for the store, retrying
    run = await start(env_for(url, tmp_path, matrix), "--processes", "3")
    assert run.stderr is not None
    waiting = await asyncio.wait_for(run.stderr.readline(), timeout=30)
    assert b"waiting for the store, try 1" in waiting, waiting
    children = children_of(run.pid)
    assert len(children) == 2  # forked already, each waiting for its go
    run.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(run.stderr.read(), timeout=30)
    assert await run.wait() == 0, rest.decode()
    assert "stopped before the store was reachable" in rest.decode()
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)  # they exited, and were waited for


async def test_the_supervisor_starts_a_child_that_dies_again_and_stops_them_all() -> None:
    # a child that exits at once with code 3 (a bad setting, say): started again after the back-off
    supervisor = SendOnlyProcesses(1, grace=1)
    supervisor.command = [sys.executable, "-c", "raise SystemExit(3)"]
    async with supervisor:
        await until(lambda: supervisor.restarts >= 1, timeout=10)
    assert all(p.returncode is not None for p in supervisor.running.values())


CHILD_COUNTING_SIGTERMS = """
import pathlib, signal, sys, time
told = []
def on_term(*_):
    told.append(1)
    if len(told) > 1:
        sys.exit(7)  # a second SIGTERM: what the default handler, back after a child's loop has ended, would kill
    pathlib.Path(sys.argv[1]).touch()
signal.signal(signal.SIGTERM, on_term)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
while not told:
    time.sleep(0.01)
time.sleep(0.5)  # draining
"""


async def test_a_child_is_sent_sigterm_once_however_the_stop_comes(tmp_path: Path) -> None:
    stop, told = asyncio.Event(), tmp_path / "told"
    supervisor = SendOnlyProcesses(1, grace=5, stop=stop)
    supervisor.command = [sys.executable, "-c", CHILD_COUNTING_SIGTERMS, str(told)]
    async with supervisor:
        stop.set()  # the parent's SIGTERM: the children are told at once...
        await until(told.exists, timeout=10)
    # ...and leaving the block (the parent's own drain done) waits for them: it does not signal them again
    assert supervisor.running[0].returncode == 0


def test_the_default_is_one_process_a_core_and_at_most_four() -> None:
    assert 1 <= default_processes() <= min(4, len(os.sched_getaffinity(0)))
