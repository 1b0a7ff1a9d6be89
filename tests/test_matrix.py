"""The live outlet matrix: reloads in a running `debunkbot run`, followed by every process on the store.

The process tests start real daemons (see tests/test_scheduler.py), give them a new outlets.yaml and a
SIGHUP, and watch what the loopback outlets receive and what the delivery log says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.matrix import LiveMatrix
from bot.model import Notice
from bot.outlets import MatrixError, OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Actor, Store
from bot.testing import WebhookOutlets
from tests.conftest import outlet_entries, until, whsec
from tests.test_scheduler import DEADLINE, RunningBot, stop

OUTLETS = 4  # the loopback outlets; the matrix starts with the first three


@dataclasses.dataclass
class ReloadableBot(RunningBot):
    """A daemon under test whose outlets.yaml the test rewrites; every outlet's secret is in its environment
    from the start, as an operator would set it before adding the outlet to the file."""

    entries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    url: str = ""

    @property
    def matrix_path(self) -> Path:
        return Path(self.env["DEBUNKBOT_OUTLETS"])

    def write_matrix(self, ids: list[str], **changes: dict[str, Any]) -> None:
        entries = [e | changes.get(e["id"], {}) for e in self.entries if e["id"] in ids]
        part = self.matrix_path.with_suffix(".part")
        part.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
        part.rename(self.matrix_path)

    def lines(self, text: str, log: str = "daemon.log") -> list[str]:
        return [line for line in self.log(log).splitlines() if text in line]

    def store(self) -> Store:
        return Store.open(self.url)


def leader_reloads(bot: ReloadableBot) -> list[str]:
    """The reload lines of the process that was sent SIGHUP; its send-only processes log their own as they follow
    (``reloaded to follow generation N``), in between, whenever their next look comes."""
    return [line for line in bot.lines("outlet matrix reloaded") if "[send-only process" not in line]


def ids(*numbers: int) -> list[str]:
    return [f"outlet-{n:04d}" for n in numbers]


@pytest.fixture
async def bot(tmp_path: Path, database_url: str) -> AsyncIterator[ReloadableBot]:
    entries = outlet_entries(OUTLETS)
    keys = {e["id"]: whsec() for e in entries}
    async with WebhookOutlets(keys) as outlets:
        for entry in entries:
            entry["url"] = outlets.url(entry["id"])
        inbox = tmp_path / "inbox"
        inbox.mkdir()
        env = {e["secret_env"]: keys[e["id"]] for e in entries} | {
            "DEBUNKBOT_DATABASE_URL": database_url, "DEBUNKBOT_OUTLETS": str(tmp_path / "outlets.yaml"),
            "DEBUNKBOT_INBOX": str(inbox), "DEBUNKBOT_SCAN_INTERVAL": "0.3", "DEBUNKBOT_RETRY_JITTER": "0",
        }
        running = ReloadableBot(tmp_path, env, outlets, inbox, entries=entries, url=database_url)
        running.write_matrix(ids(0, 1, 2))
        yield running
        for proc in running.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def delivered_to(bot: RunningBot, ref: str) -> set[str]:
    return {p.outlet for p in bot.outlets.posts if p.payload.get("data", {}).get("ref") == ref}


async def test_sighup_with_a_good_file_adds_an_outlet_that_gets_new_notices_but_not_old_ones(
    bot: ReloadableBot,
) -> None:
    proc = await bot.start("--processes", "1")  # one process: its log's reload line is the one that takes notices
    bot.write_notice(bot.inbox, "cq-before-reload")
    await until(lambda: len(delivered_to(bot, "cq-before-reload")) == 3, proc=proc, what=bot.log)
    assert delivered_to(bot, "cq-before-reload") == set(ids(0, 1, 2)), bot.log()

    bot.write_matrix(ids(0, 1, 2, 3))
    proc.send_signal(signal.SIGHUP)
    await until(lambda: bool(bot.lines("outlet matrix reloaded")), proc=proc, what=bot.log)
    (line,) = bot.lines("outlet matrix reloaded")
    assert "asked by SIGHUP" in line and "generation 1, 4 outlets: added outlet-0003" in line, bot.log()

    bot.write_notice(bot.inbox, "cq-after-reload")
    await until(lambda: len(delivered_to(bot, "cq-after-reload")) == 4, proc=proc, what=bot.log)
    assert delivered_to(bot, "cq-after-reload") == set(ids(0, 1, 2, 3)), bot.log()
    assert "outlet-0003" not in delivered_to(bot, "cq-before-reload")
    store = bot.store()
    assert {r["outlet"] for r in store.log.deliveries(ref="cq-before-reload")} == set(ids(0, 1, 2))
    store.close()
    assert await stop(proc) == 0, bot.log()


async def test_sighup_with_a_bad_file_changes_nothing_and_the_log_names_outlet_and_field(bot: ReloadableBot) -> None:
    proc = await bot.start("--processes", "1")
    bot.write_notice(bot.inbox, "cq-warm-up")
    await until(lambda: len(delivered_to(bot, "cq-warm-up")) == 3, proc=proc, what=bot.log)
    assert len(delivered_to(bot, "cq-warm-up")) == 3, bot.log()

    # a file that would remove outlet-0002 and add outlet-0003, but outlet-0003's tier is wrong: none of it
    bot.write_matrix(ids(0, 1, 3), **{"outlet-0003": {"tier": "capital"}})
    proc.send_signal(signal.SIGHUP)
    await until(lambda: bool(bot.lines("reload (asked by SIGHUP")), proc=proc, what=bot.log)
    (line,) = bot.lines("reload (asked by SIGHUP")
    assert "refused; still running with the matrix as it was" in line
    assert "outlet 'outlet-0003' field 'tier'" in line, bot.log()

    bot.write_notice(bot.inbox, "cq-after-bad-file")
    await until(lambda: len(delivered_to(bot, "cq-after-bad-file")) == 3, proc=proc, what=bot.log)
    assert delivered_to(bot, "cq-after-bad-file") == set(ids(0, 1, 2)), bot.log()
    assert not bot.lines("outlet matrix reloaded")
    store = bot.store()
    assert store.matrix.generation() == 0 and store.matrix.removed() == {}
    store.close()
    assert await stop(proc) == 0, bot.log()
    assert all(key not in bot.log() for key in bot.outlets.secrets.values())


async def test_a_removed_outlets_pending_deliveries_are_held_and_go_out_when_it_comes_back(
    bot: ReloadableBot,
) -> None:
    bot.outlets.script["outlet-0002"] = [503] * 1000  # down: its delivery stays pending, on the retry schedule
    proc = await bot.start(env={"DEBUNKBOT_RETRY_SCHEDULE": ",".join(["0.5"] * 200),
                                "DEBUNKBOT_BREAKER_THRESHOLD": "1000"})
    bot.write_notice(bot.inbox, "cq-while-down")
    await until(lambda: len(delivered_to(bot, "cq-while-down")) == 2 and bot.outlets.tries["outlet-0002"] > 0,
                proc=proc, what=bot.log)
    assert delivered_to(bot, "cq-while-down") == set(ids(0, 1)), bot.log()

    bot.write_matrix(ids(0, 1))
    proc.send_signal(signal.SIGHUP)
    await until(lambda: bool(leader_reloads(bot)), proc=proc, what=bot.log)
    assert "removed outlet-0002" in leader_reloads(bot)[0], bot.log()
    store = bot.store()
    (row,) = store.log.deliveries(ref="cq-while-down", outlet_id="outlet-0002")
    assert (row["status"], row["reason"]) == ("held", "removed from matrix")
    assert store.log.attempts(ref="cq-while-down", outlet_id="outlet-0002"), "its history is kept"
    assert store.log.counts("cq-while-down") == {"delivered": 2, "held": 1}

    bot.write_notice(bot.inbox, "cq-after-removal")
    await until(lambda: len(delivered_to(bot, "cq-after-removal")) == 2, proc=proc, what=bot.log)
    assert {r["outlet"] for r in store.log.deliveries(ref="cq-after-removal")} == set(ids(0, 1))

    bot.outlets.script["outlet-0002"] = []  # it works again, and is back in the file
    bot.write_matrix(ids(0, 1, 2))
    proc.send_signal(signal.SIGHUP)

    def back() -> list[dict[str, Any]]:
        return store.log.deliveries(ref="cq-while-down", outlet_id="outlet-0002", status="delivered")

    await until(lambda: bool(back()), proc=proc, what=bot.log)  # the post is recorded after the outlet has it
    assert "outlet-0002" in delivered_to(bot, "cq-while-down") and back(), bot.log()
    assert "added outlet-0002" in leader_reloads(bot)[1], bot.log()
    assert "outlet-0002" not in delivered_to(bot, "cq-after-removal")
    store.close()
    assert await stop(proc) == 0, bot.log()


async def test_a_run_and_a_worker_on_one_store_both_follow_one_reload(bot: ReloadableBot) -> None:
    # one run process: a send-only process beside it would log the same follow line, maybe before the leader
    # (which takes the inbox) had followed
    run = await bot.start("--processes", "1")
    worker = await bot.start(command="worker", log="worker.log")
    following = "following its reloads from generation 0"
    await until(lambda: bool(bot.lines(following) and bot.lines(following, "worker.log")), proc=run, what=bot.log)
    assert bot.lines(following, "worker.log"), bot.log("worker.log")

    bot.write_matrix(ids(0, 1, 2, 3))
    worker.send_signal(signal.SIGHUP)  # asked in one process: the other follows
    await until(lambda: bool(bot.lines("reloaded to follow generation 1")), proc=run, what=bot.log)
    assert bot.lines("outlet matrix reloaded (asked by SIGHUP", "worker.log"), bot.log("worker.log")
    (line,) = bot.lines("reloaded to follow generation 1")
    assert "added outlet-0003" in line
    bot.write_notice(bot.inbox, "cq-after-worker-reload")  # the run's intake uses the matrix it followed
    await until(lambda: len(delivered_to(bot, "cq-after-worker-reload")) == 4, proc=run, what=bot.log)
    assert delivered_to(bot, "cq-after-worker-reload") == set(ids(0, 1, 2, 3)), bot.log() + bot.log("worker.log")

    bot.write_matrix(ids(1, 2, 3))
    run.send_signal(signal.SIGHUP)  # and the other way round
    await until(lambda: bool(bot.lines("reloaded to follow generation 2", "worker.log")), proc=worker, what=bot.log)
    (line,) = bot.lines("reloaded to follow generation 2", "worker.log")
    assert "removed outlet-0000" in line
    assert await stop(run) == 0, bot.log()
    assert await stop(worker) == 0, bot.log("worker.log")


async def test_run_started_without_an_outlet_holds_its_deliveries_and_started_with_it_again_sends_them(
    bot: ReloadableBot,
) -> None:
    await bot.submit(bot.write_notice(bot.tmp, "cq-submitted"))  # with outlet-0002 in the file
    bot.write_matrix(ids(0, 1))
    proc = await bot.start("--until-idle", log="without.log")
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 0, bot.log("without.log")
    assert delivered_to(bot, "cq-submitted") == set(ids(0, 1))
    (idle,) = bot.lines("idle:", "without.log")
    assert "1 delivery held: removed from matrix (outlet-0002;" in idle

    bot.write_matrix(ids(0, 1, 2))
    proc = await bot.start("--until-idle", log="with.log")
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 0, bot.log("with.log")
    assert delivered_to(bot, "cq-submitted") == set(ids(0, 1, 2))
    assert bot.lines("idle: nothing left to send", "with.log")


# -- the parts, in this process --------------------------------------------------------------------------------


@pytest.fixture
def two_machines(tmp_path: Path, regions: RegionTable) -> Iterator[Callable[..., tuple[Path, LiveMatrix]]]:
    """Each call: a machine with its own outlets.yaml (the given entries) and its live matrix of it."""

    def machine(name: str, entries: list[dict[str, Any]], environ: dict[str, str]) -> tuple[Path, LiveMatrix]:
        path = tmp_path / name / "outlets.yaml"
        path.parent.mkdir()
        path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
        return path, LiveMatrix(load_matrix(path, regions, environ=environ),
                                load=lambda: load_matrix(path, regions, environ=environ))

    yield machine


def entries_at(n: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    entries = [e | {"url": f"https://{e['id']}.example.com/hook"} for e in outlet_entries(n)]
    return entries, {e["secret_env"]: whsec() for e in entries}


async def test_a_process_whose_file_is_bad_keeps_its_matrix_and_says_so_once(
    store: Store, two_machines: Callable[..., tuple[Path, LiveMatrix]], caplog: pytest.LogCaptureFixture,
) -> None:
    entries, environ = entries_at(3)
    _, here = two_machines("here", entries, environ)
    there_path, there = two_machines("there", entries, environ)
    for live in (here, there):
        assert await live.look(store) is None  # the first look learns the generation
    there_path.write_text("outlets: [", encoding="utf-8")  # that machine's copy got broken

    changes = await here.reload(store, by=Actor.local())
    assert changes.added == () and here.generation == 1
    before = there.matrix
    for _ in range(3):
        assert await there.look(store) is None
    assert there.matrix is before and there.generation == 1
    refusals = [r for r in caplog.records if "generation 1 (reloaded elsewhere) refused on this machine" in r.message]
    assert len(refusals) == 1 and "not valid UTF-8 YAML" in refusals[0].message


async def test_a_process_without_a_daemon_follows_reloads_while_it_keeps_following(
    store: Store, two_machines: Callable[..., tuple[Path, LiveMatrix]],
) -> None:
    entries, environ = entries_at(3)
    here_path, here = two_machines("here", entries, environ)
    there_path, web = two_machines("there", entries, environ)
    stopping = asyncio.Event()
    following = asyncio.create_task(web.keep_following(store, 0.05, stopping))
    try:
        await until(lambda: web.generation is not None, what="the web following the store")
        for path in (here_path, there_path):  # both machines' copies get the same edit
            path.write_text(yaml.safe_dump({"outlets": entries[:2]}, allow_unicode=True), encoding="utf-8")
        await here.reload(store, by=Actor.local())
        await until(lambda: len(web.matrix) == 2, 30, what="the web to follow the reload")
        assert [o.id for o in web.matrix.outlets] == ["outlet-0000", "outlet-0001"] and web.generation == 1
    finally:
        stopping.set()
        await following


async def test_a_reload_is_recorded_with_who_asked_and_what_changed_by_id_only(
    store: Store, two_machines: Callable[..., tuple[Path, LiveMatrix]],
) -> None:
    entries, environ = entries_at(3)
    path, live = two_machines("here", entries, environ)
    entries[1]["name"] = "改名的融媒体中心"
    added = outlet_entries(4)[3] | {"url": "https://outlet-0003.example.com/hook"}
    path.write_text(yaml.safe_dump({"outlets": [*entries[1:], added]}, allow_unicode=True), encoding="utf-8")
    environ["TEST_SECRET_0003"] = whsec()

    changes = await live.reload(store, by=Actor("SIGHUP", "local", "signal@test pid 7"))
    assert changes.as_dict() == {"added": ["outlet-0003"], "removed": ["outlet-0000"], "changed": ["outlet-0001"]}
    (record,) = store.matrix.history()
    assert record["generation"] == 1 and record["reloaded_by"] == "SIGHUP (signal@test pid 7)"
    (audited,) = store.audit.page(action="matrix.reload").rows
    assert (audited["actor"], audited["source"], audited["detail"]["removed"]) == ("SIGHUP", "signal@test pid 7",
                                                                                   ["outlet-0000"])
    assert (record["added"], record["removed"], record["changed"]) == (["outlet-0003"], ["outlet-0000"],
                                                                        ["outlet-0001"])


def test_a_removed_outlet_is_never_claimed_nor_waited_for_until_a_reload_brings_it_back(
    store: Store, loopback_free_matrix: OutletMatrix, make_notice: Callable[..., Notice],
) -> None:
    matrix = loopback_free_matrix
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    store.matrix.reloaded([o.id for o in matrix.outlets[1:]], by=Actor.local(), changes={})
    lease = timedelta(seconds=30)

    assert {c.outlet_id for c in store.queue.claim(10, 2, lease)} == {o.id for o in matrix.outlets[1:]}
    store.queue.release_claims()
    removed = matrix.outlets[0].id
    assert set(store.matrix.removed()) == {removed}
    assert store.queue.next_due_at(outlets=[removed]) is None
    (row,) = store.log.deliveries(outlet_id=removed)
    assert (row["status"], row["reason"]) == ("held", "removed from matrix")

    store.matrix.reloaded([o.id for o in matrix.outlets], by=Actor.local(), changes={})
    assert store.matrix.removed() == {}
    assert [c.outlet_id for c in store.queue.claim(10, 2, lease, outlets=[removed])] == [removed]


def test_a_process_claims_only_for_the_outlets_its_matrix_has(
    store: Store, loopback_free_matrix: OutletMatrix, make_notice: Callable[..., Notice],
) -> None:
    matrix = loopback_free_matrix
    store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
    mine = [matrix.outlets[0].id]
    assert [c.outlet_id for c in store.queue.claim(10, 2, timedelta(seconds=30), outlets=mine)] == mine
    assert store.queue.claim(10, 2, timedelta(seconds=30), outlets=[]) == []


@pytest.fixture
def loopback_free_matrix(tmp_path: Path, regions: RegionTable) -> OutletMatrix:
    entries, environ = entries_at(3)
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
    return load_matrix(path, regions, environ=environ)


async def test_the_dispatcher_follows_the_rate_limits_of_a_new_matrix_at_once(
    store: Store, settings: Settings, loopback: Callable[..., Any], make_notice: Callable[..., Notice],
) -> None:
    outlets, matrix = await loopback(1)
    live = LiveMatrix(matrix)
    store.queue.add_notices([(make_notice(ref=f"cq-{n}", title=f"通报{n}"), matrix.outlets) for n in range(3)],
                            source="test")
    (outlet,) = matrix.outlets
    async with make_sender(settings) as client:
        dispatcher = Dispatcher(store, live, settings, client)
        live.replace(dataclasses.replace(matrix, outlets=(outlet.model_copy(update={"rate_limits": ("1/h",)}),)))
        stopping = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stopping))
        await until(lambda: store.log.counts().get("held", 0) >= 2, 30, what="two deliveries held")
        stopping.set()
        await task
        await dispatcher.close()
    assert store.log.counts() == {"delivered": 1, "held": 2}
    assert {r["reason"].split(" until")[0] for r in store.log.deliveries(status="held")} == {"rate limit"}
    assert len(outlets.posts) == 1


def test_a_matrix_error_lists_each_problem_by_outlet_and_field(tmp_path: Path, regions: RegionTable) -> None:
    entries, environ = entries_at(3)
    entries[0]["tier"] = "capital"
    del environ["TEST_SECRET_0002"]
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
    with pytest.raises(MatrixError) as refused:
        load_matrix(path, regions, environ=environ)
    assert [p.split(":")[0] for p in refused.value.problems] == [
        "outlet 'outlet-0000' field 'tier'", "outlet 'outlet-0002' field 'secret_env'"]
