"""The daemon as an operator runs it: a real ``debunkbot run`` process, given work while it runs.

A test that calls a job function directly proves the job, not that the daemon runs it; these
start the process, drop files into its inbox, submit embargoed notices from the command line and
watch what the loopback outlets receive.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.testing import WebhookOutlets
from tests.conftest import notice_data, until

SCAN_INTERVAL = 0.5
# A bound for polling, not a timing assertion: a healthy daemon needs two scan intervals, a broken one never
# gets there. Sixty intervals leave room for a loaded two-core machine.
DEADLINE = 60 * SCAN_INTERVAL + 30


@dataclass
class RunningBot:
    """Where a `debunkbot run` process under test finds its store, outlets and inbox."""

    tmp: Path
    env: dict[str, str]
    outlets: WebhookOutlets
    inbox: Path
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)

    async def start(self, *args: str, command: str = "run", env: dict[str, str] | None = None,
                    log: str = "daemon.log") -> asyncio.subprocess.Process:
        out = (self.tmp / log).open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", command, *args, env=os.environ | self.env | (env or {}),
            stdout=out, stderr=out, start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    async def submit(self, path: Path) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "submit", str(path), env=os.environ | self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        return proc.returncode

    def log(self, name: str = "daemon.log") -> str:
        path = self.tmp / name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def refs_delivered(self) -> dict[str, int]:
        """notice ref -> how many outlets have verified it."""
        seen: dict[str, set[str]] = {}
        for post in self.outlets.posts:
            if post.payload.get("type") != "operator.alert":
                seen.setdefault(post.payload["data"]["ref"], set()).add(post.outlet)
        return {ref: len(outlets) for ref, outlets in seen.items()}

    def write_notice(self, folder: Path, ref: str, **changes: Any) -> Path:
        path = folder / f"{ref}.yaml"
        tmp = path.with_suffix(".part")  # written elsewhere, then renamed in: the daemon never sees half a file
        tmp.write_text(yaml.safe_dump(notice_data(ref=ref, **changes), allow_unicode=True), encoding="utf-8")
        tmp.rename(path)
        return path


@pytest.fixture
async def bot(tmp_path: Path, loopback: Callable[..., Any]) -> AsyncIterator[RunningBot]:
    outlets, matrix = await loopback(3)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = {f"TEST_SECRET_{i:04d}": matrix.secret_for(f"outlet-{i:04d}") for i in range(3)} | {
        "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}",
        "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"), "DEBUNKBOT_INBOX": str(inbox),
        "DEBUNKBOT_SCAN_INTERVAL": str(SCAN_INTERVAL), "DEBUNKBOT_RETRY_JITTER": "0",
    }
    running = RunningBot(tmp_path, env, outlets, inbox)
    yield running
    for proc in running.procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), timeout=60)


async def test_a_file_dropped_into_the_inbox_of_a_running_daemon_is_delivered(bot: RunningBot) -> None:
    bot.write_notice(bot.inbox, "cq-before-start")
    proc = await bot.start()
    await until(lambda: bot.refs_delivered().get("cq-before-start") == 3, proc=proc, what=bot.log)  # up, scanned once

    for n in range(2):  # not once more, but at every scan
        ref = f"cq-while-running-{n}"
        bot.write_notice(bot.inbox, ref)
        took = await until(lambda r=ref: bot.refs_delivered().get(r) == 3, proc=proc, what=bot.log)
        assert (bot.inbox / "accepted" / f"{ref}.yaml").exists()
        print(f"\n{ref}: delivered {took:.2f}s after it was dropped (scan interval {SCAN_INTERVAL}s)")
    assert await stop(proc) == 0, bot.log()


async def test_an_embargo_that_falls_due_while_the_daemon_runs_is_released_and_delivered(bot: RunningBot) -> None:
    bot.write_notice(bot.inbox, "cq-warm-up")
    proc = await bot.start()
    await until(lambda: bot.refs_delivered().get("cq-warm-up") == 3, proc=proc, what=bot.log)

    publish_at = datetime.now(UTC) + timedelta(seconds=2)
    await bot.submit(bot.write_notice(bot.tmp, "cq-embargoed", publish_at=publish_at.isoformat()))
    await until(lambda: bot.refs_delivered().get("cq-embargoed") == 3, proc=proc, what=bot.log)
    first_post = min(p.received_at for p in bot.outlets.posts if p.payload["data"]["ref"] == "cq-embargoed")
    assert first_post >= publish_at.timestamp(), "not before its publish_at"
    print(f"\nembargo: delivered {first_post - publish_at.timestamp():.2f}s after publish_at "
          f"(scan interval {SCAN_INTERVAL}s)")
    assert await stop(proc) == 0, bot.log()


# -- the daemon in this process, where a test needs to reach inside: a failing job, a changing date ----------------


async def run_daemon_until(daemon: Any, condition: Callable[[], bool], timeout: float = 60) -> None:
    task = asyncio.create_task(daemon.run())
    await until(lambda: condition() or task.done(), timeout)
    daemon.stop.set()
    await asyncio.wait_for(task, timeout=60)


async def scheduled_jobs(daemon: Any) -> dict[str, Any]:
    """Run the daemon until its scheduler has its jobs; each job id -> its next run time."""
    jobs: dict[str, Any] = {}

    def seen() -> bool:
        if daemon.scheduler is not None and daemon.scheduler.running:
            jobs.update({job.id: job.next_run_time for job in daemon.scheduler.get_jobs()})
        return bool(jobs)

    await run_daemon_until(daemon, seen)
    return jobs


async def test_every_periodic_job_is_scheduled_none_paused(
    settings: Any, store: Any, loopback: Callable[..., Any], regions: Any, tmp_path: Path
) -> None:
    from bot.http import make_sender
    from bot.scheduler import Daemon

    _, matrix = await loopback(2)
    settings = settings.model_copy(update={"inbox": tmp_path / "inbox"})
    async with make_sender(settings) as client:
        daemon = Daemon(settings, store, matrix, regions, client)
        jobs = await scheduled_jobs(daemon)
    assert set(jobs) == {"scan_inbox", "release_embargoed", "send_alerts", "prune_attempts", "resolve_regions",
                         "dispatch_due", "follow_matrix", "report_attempts", "save_store_errors"}
    assert all(when is not None for when in jobs.values()), f"paused jobs: {jobs}"


async def test_a_job_that_raises_is_logged_with_its_traceback_and_runs_again(
    settings: Any, store: Any, loopback: Callable[..., Any], regions: Any, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.http import make_sender
    from bot.scheduler import Daemon

    _, matrix = await loopback(2)
    calls = 0

    def broken_release(now: Any = None) -> int:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"bug number {calls}")

    monkeypatch.setattr(store.queue, "release_due", broken_release)
    async with make_sender(settings) as client:
        daemon = Daemon(settings, store, matrix, regions, client)
        await run_daemon_until(daemon, lambda: calls >= 4)
    assert calls >= 4, "the job ran again after failing"
    failures = [r for r in caplog.records if "release_embargoed failed" in r.getMessage()]
    assert len(failures) >= 3
    assert all(r.exc_info and "broken_release" in "".join(__import__("traceback").format_exception(*r.exc_info))
               for r in failures)
    assert any("runs again at" in r.getMessage() for r in failures)


async def test_regions_are_resolved_again_when_the_date_changes_in_chongqing(
    settings: Any, store: Any, loopback: Callable[..., Any], regions: Any, tmp_path: Path, make_notice: Any
) -> None:
    from datetime import date

    from bot.http import make_sender
    from bot.outlets import load_matrix
    from bot.scheduler import CHONGQING, Daemon

    _, loaded = await loopback(3, entry_changes={"outlet-0001": {"region": "江北"}})
    environ = {f"TEST_SECRET_{i:04d}": loaded.secret_for(f"outlet-{i:04d}") or "" for i in range(3)}
    matrix = load_matrix(tmp_path / "outlets.yaml", regions, environ=environ, on=date(2026, 1, 24))
    assert matrix.by_id["outlet-0001"].region == "江北区"
    day = date(2026, 1, 24)
    async with make_sender(settings) as client:
        daemon = Daemon(settings, store, matrix, regions, client, today=lambda: day)
        daemon.resolve_regions()
        assert daemon.matrix.by_id["outlet-0001"].region == "江北区"
        day = date(2026, 1, 25)  # midnight in Chongqing
        daemon.resolve_regions()
        assert daemon.matrix.by_id["outlet-0001"].region == "两江新区"
        assert daemon.dispatcher.matrix is daemon.matrix and daemon.alerter.matrix is daemon.matrix
        notice = make_notice(regions=["两江新区"], ref="cq-liangjiang")
        assert "outlet-0001" in {o.id for o in daemon.matrix.concerned_by(notice)}

        jobs = await scheduled_jobs(daemon)
    midnight_check = jobs["resolve_regions"].astimezone(CHONGQING)
    assert (midnight_check.minute, midnight_check.second) == (0, 0), "on the hour, Chongqing time"


async def test_a_store_that_is_down_at_start_is_waited_for_and_sigterm_still_stops_cleanly(bot: RunningBot) -> None:
    proc = await bot.start(env={"DEBUNKBOT_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:9/nowhere"})
    await until(lambda: "waiting for the store, try 2" in bot.log(), proc=proc, what=bot.log)
    assert await stop(proc) == 0, bot.log()
    assert "Traceback" not in bot.log()


async def test_sigint_stops_the_daemon_as_cleanly_as_sigterm(bot: RunningBot) -> None:
    bot.write_notice(bot.inbox, "cq-before-sigint")
    proc = await bot.start()
    await until(lambda: bot.refs_delivered().get("cq-before-sigint") == 3, proc=proc, what=bot.log)
    assert await stop(proc, signal.SIGINT) == 0, bot.log()
    assert "stopped (" in bot.log() and "Traceback" not in bot.log() and "KeyboardInterrupt" not in bot.log()


def with_feed_outlet(bot: RunningBot) -> None:
    path = Path(bot.env["DEBUNKBOT_OUTLETS"])
    matrix = yaml.safe_load(path.read_text(encoding="utf-8"))
    matrix["outlets"].append({"id": "feed-open", "name": "公开订阅源", "tier": "other", "region": "全市",
                              "channel": "feed"})
    path.write_text(yaml.safe_dump(matrix, allow_unicode=True), encoding="utf-8")


async def test_until_idle_is_not_held_up_by_feed_deliveries_and_says_what_waits_for_a_fetch(bot: RunningBot) -> None:
    with_feed_outlet(bot)
    bot.write_notice(bot.inbox, "cq-with-feed")
    proc = await bot.start("--until-idle")
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 0, bot.log()
    assert bot.refs_delivered().get("cq-with-feed") == 3
    last = [line for line in bot.log().splitlines() if "idle" in line][-1]
    assert "1 delivery waits for a fetch (feed-open)" in last, bot.log()


async def test_until_idle_says_it_waits_for_an_open_breaker_and_max_wait_stops_it_saying_what_is_left(
    bot: RunningBot,
) -> None:
    # one failure opens the breaker (threshold 1): the first try of each notice fails, the probe gets through
    bot.outlets.script["outlet-0001"] = [503, 200, 503]
    breaker = {"DEBUNKBOT_BREAKER_THRESHOLD": "1", "DEBUNKBOT_RETRY_SCHEDULE": "0.1,0.1"}

    # without --max-wait it waits out the cooldown, and says so once
    bot.write_notice(bot.inbox, "cq-breaker-1")
    proc = await bot.start("--until-idle", env=breaker | {"DEBUNKBOT_BREAKER_COOLDOWN": "3"}, log="first.log")
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 0, bot.log("first.log")
    waiting = [line for line in bot.log("first.log").splitlines() if "waiting" in line]
    assert len(waiting) == 1 and "held by an open breaker" in waiting[0], bot.log("first.log")
    assert bot.refs_delivered().get("cq-breaker-1") == 3
    assert "idle: nothing left to send" in bot.log("first.log")

    # with --max-wait shorter than the cooldown it stops, and its last line says what is left and why
    bot.write_notice(bot.inbox, "cq-breaker-2")
    proc = await bot.start("--until-idle", "--max-wait", "1", env=breaker | {"DEBUNKBOT_BREAKER_COOLDOWN": "600"})
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 0, bot.log()
    last = bot.log().splitlines()[-2]  # then "stopped (owner)"
    assert "stopped waiting (--max-wait 1s): 1 delivery held by an open breaker until" in last, bot.log()
    assert "outlet-0001" in last and "debunkbot outlets resume" in last
    assert bot.refs_delivered().get("cq-breaker-2") == 2


BROKEN_DISPATCHER = """
import sys
from bot import dispatch
from bot.cli import app

async def broken(self, stop=None, until_idle=False):
    raise RuntimeError("a bug, near " + self.matrix.secret_for("outlet-0000"))

dispatch.Dispatcher.run = broken
sys.argv = ["debunkbot", "run"]
app()
"""


async def test_a_failure_of_the_sending_itself_is_logged_redacted_and_the_daemon_exits_1(bot: RunningBot) -> None:
    out = (bot.tmp / "daemon.log").open("ab")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", BROKEN_DISPATCHER, env=os.environ | bot.env,
                                                stdout=out, stderr=out)
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 1, bot.log()
    text = bot.log()
    assert "the daemon stopped on an unexpected error" in text and "Traceback" in text
    assert "RuntimeError: a bug, near [secret]" in text
    secret = bot.env["TEST_SECRET_0000"]
    assert secret not in text and secret.removeprefix("whsec_") not in text


async def test_operator_alerts_go_out_again_and_again_while_the_daemon_runs(bot: RunningBot) -> None:
    path = Path(bot.env["DEBUNKBOT_OUTLETS"])
    matrix = yaml.safe_load(path.read_text(encoding="utf-8"))
    matrix["operators"] = [matrix["outlets"].pop()]  # outlet-0002 becomes the operators' channel
    path.write_text(yaml.safe_dump(matrix, allow_unicode=True), encoding="utf-8")
    # retries exhausted raise an alert: the first notice's at outlet-0001, then the second's at outlet-0000
    bot.outlets.script["outlet-0000"] = [200, 503, 503]
    bot.outlets.script["outlet-0001"] = [503, 503]

    def alerts() -> list[str]:
        return [p.payload["data"]["text"] for p in bot.outlets.posts if p.payload.get("type") == "operator.alert"]

    bot.write_notice(bot.inbox, "cq-alert-1")
    proc = await bot.start(env={"DEBUNKBOT_ALERT_INTERVAL": "0", "DEBUNKBOT_RETRY_SCHEDULE": "0.1"})
    await until(lambda: any("outlet-0001" in text for text in alerts()), proc=proc, what=bot.log)
    bot.write_notice(bot.inbox, "cq-alert-2")
    await until(lambda: any("outlet-0000" in text for text in alerts()), proc=proc,
                what=lambda: f"no second digest:\n{bot.log()}")
    assert await stop(proc) == 0, bot.log()


async def test_a_running_daemon_cancels_an_expired_notices_retries_and_sends_nothing_of_it_after_expiry(
    tmp_path: Path, loopback: Callable[..., Any]
) -> None:
    import json

    outlets, matrix = await loopback(3, script={"outlet-0001": [503] * 10_000})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    env = {f"TEST_SECRET_{i:04d}": matrix.secret_for(f"outlet-{i:04d}") for i in range(3)} | {
        "DEBUNKBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'bot.sqlite3'}",
        "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"), "DEBUNKBOT_INBOX": str(inbox),
        "DEBUNKBOT_SCAN_INTERVAL": str(SCAN_INTERVAL), "DEBUNKBOT_RETRY_JITTER": "0",
        "DEBUNKBOT_RETRY_SCHEDULE": ",".join(["0.3"] * 1000),
    }
    bot = RunningBot(tmp_path, env, outlets, inbox)
    proc = await bot.start()
    try:
        expires = datetime.now(UTC) + timedelta(seconds=10)  # room for the daemon to start and scan
        bot.write_notice(inbox, "cq-expiring", expires_at=expires.isoformat())
        said = "notice cq-expiring expired: 1 unsent delivery cancelled"
        await until(lambda: said in bot.log(), proc=proc, what=bot.log)
        tried = outlets.tries["outlet-0001"]  # every request outlet-0001 got so far was for cq-expiring
        assert tried >= 2 and bot.refs_delivered().get("cq-expiring") == 2

        bot.write_notice(inbox, "cq-after")  # the daemon keeps claiming and sending after the cancellation
        await until(lambda: bot.refs_delivered().get("cq-after") == 2, proc=proc, what=bot.log)

        log = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "log", "--attempts", "--json", "--notice", "cq-expiring",
            "--outlet", "outlet-0001", env=os.environ | env, stdout=asyncio.subprocess.PIPE)
        out, _ = await log.communicate()
        attempts = [json.loads(line) for line in out.decode().splitlines()]
        assert len(attempts) == tried  # each request the outlet got is a recorded try, and none came after
        assert all(datetime.fromisoformat(a["started_at"]) < expires for a in attempts)
        assert await stop(proc) == 0, bot.log()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_correction_and_a_retraction_each_get_a_fanned_out_line_once_every_outlet_had_its_first_try(
    tmp_path: Path, loopback: Callable[..., Any], database_url: str
) -> None:
    from tests.test_cli import bot_env, debunkbot

    # outlet-0001 answers the correction's first try 503 (retried), outlet-0002 refuses the retraction for good,
    # and outlet-0003 is paused until after the correction: version 2 is the first post it gets
    outlets, env = await bot_env(tmp_path, loopback, 4, database_url,
                                 **{"outlet-0001": [200, 503], "outlet-0002": [200, 200, 400]})
    assert (await debunkbot(env, "outlets", "pause", "outlet-0003", "--reason", "对方系统升级"))[0] == 0
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(notice_data(), allow_unicode=True), encoding="utf-8")
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(notice_data(truth="经核实，水位较昨日上涨0.3米。"),
                                                     allow_unicode=True), encoding="utf-8")
    assert (await debunkbot(env, "submit", str(tmp_path / "v1.yaml")))[0] == 0
    log = tmp_path / "daemon.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", "--no-web", "--processes", "2", env=os.environ | env,
            stdout=out, stderr=out, start_new_session=True)

    def fanned_out() -> list[str]:
        return [line for line in log.read_text(encoding="utf-8").splitlines() if "fanned out" in line]

    def posts(kind: str) -> set[str]:
        return {p.outlet for p in outlets.posts if p.payload["type"] == kind}

    def read_log() -> str:
        return log.read_text(encoding="utf-8")[-3000:]

    try:
        await until(lambda: len(posts("notice.published")) == 3, proc=proc, what=read_log)
        code, _, err = await debunkbot(env, "correct", "cq-test-001", str(tmp_path / "v2.yaml"), "--note", "水位数据有误")
        assert code == 0, err
        # version 1 went to the three outlets that had it before the correction; the paused one will get version 2
        await until(lambda: fanned_out(), proc=proc, what=read_log)
        (first,) = fanned_out()  # the correction waits for the paused outlet
        assert re.search(r"cq-test-001 fanned out to 3 outlet\(s\) in \d+\.\d\ds: 3 delivered, 0 to retry, 0 failed$",
                         first), first

        assert (await debunkbot(env, "outlets", "resume", "outlet-0003"))[0] == 0
        await until(lambda: len(fanned_out()) == 2, proc=proc, what=read_log)
        assert re.search(r"cq-test-001 correction v2 fanned out to 4 outlet\(s\) in \d+\.\d\ds: 3 delivered, "
                         r"1 to retry, 0 failed$", fanned_out()[1]), fanned_out()
        await until(lambda: len(posts("notice.corrected")) == 3, proc=proc, what=read_log)  # the retry went out
        assert posts("notice.published") == {f"outlet-{i:04d}" for i in range(4)}  # outlet-0003: version 2

        code, _, err = await debunkbot(env, "retract", "cq-test-001", "--reason", "经复核撤回")
        assert code == 0, err
        await until(lambda: len(fanned_out()) == 3, proc=proc, what=read_log)
        assert re.search(r"cq-test-001 retraction fanned out to 4 outlet\(s\) in \d+\.\d\ds: 3 delivered, "
                         r"0 to retry, 1 failed$", fanned_out()[2]), fanned_out()
        await until(lambda: len(posts("notice.retracted")) == 3, proc=proc, what=read_log)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=60) == 0, read_log()
    assert len(fanned_out()) == 3, fanned_out()  # each once
