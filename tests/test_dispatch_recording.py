"""Recording what was sent: whatever an outlet answers and whatever the store refuses, every result is
recorded or the run stops, and nothing is sent twice for want of a record. Both backends, real outlets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bot.dispatch import Dispatcher, DispatchFailed
from bot.http import make_sender
from bot.model import Notice
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.testing import ChaosOutlets
from bot.testing.chaos import Status
from tests.conftest import chaos_matrix, until, whsec

GUARD = 120  # seconds: only so that a dispatcher that never ends fails the test instead of hanging it


@pytest.fixture
async def send_one_notice(
    tmp_path: Path, store: Store, regions: RegionTable, make_notice: Callable[..., Notice]
) -> AsyncIterator[Callable[..., Any]]:
    """Send one notice to chaos outlets until idle; the outlets stay up for the test to read."""
    servers: list[ChaosOutlets] = []

    async def send(script: dict[str, list[Any]]) -> ChaosOutlets:
        secrets = {outlet: whsec() for outlet in script}
        chaos = ChaosOutlets(secrets, script)
        servers.append(await chaos.__aenter__())
        matrix = chaos_matrix(tmp_path, regions, {o: chaos.url(o) for o in script}, secrets)
        settings = Settings(database_url=str(store.engine.url), retry_schedule="0.05", retry_jitter=0,
                            http_timeout=2, scan_interval=0.05, lease_seconds=4)
        store.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
        async with make_sender(settings) as client:
            dispatcher = Dispatcher(store, matrix, settings, client)
            try:
                await asyncio.wait_for(dispatcher.run(until_idle=True), GUARD)
            finally:
                await dispatcher.close()
        return chaos

    yield send
    for chaos in servers:
        await chaos.__aexit__(None, None, None)


async def test_an_answer_with_nul_bytes_is_recorded_and_the_healthy_outlet_gets_the_notice_once(
    send_one_notice: Callable[..., Any], store: Store
) -> None:
    # PostgreSQL refuses NUL in text: storing this answer as is raised DataError and killed the recorder
    nul = Status(200, b'{"ok":true}\x00\xff\xfe')
    chaos = await send_one_notice({"nul": [nul], "ok": []})
    (nul_try,) = store.log.attempts(outlet_id="nul")
    assert nul_try["outcome"] == "delivered"
    assert nul_try["response"].startswith('{"ok":true}') and "\x00" not in nul_try["response"]
    assert [t["outcome"] for t in store.log.attempts(outlet_id="ok")] == ["delivered"]
    assert len(chaos.seen("ok")) == 1 and len(chaos.seen("nul")) == 1
    assert store.log.counts() == {"delivered": 2}


def refuse_attempts(store: Store, condition_sqlite: str, condition_pg: str) -> None:
    """A trigger in the real database that refuses some attempts: an integrity error, not a lock or a lost
    connection, exactly as a constraint the store does not expect would raise."""
    with store.engine.begin() as conn:
        if store.postgres:
            conn.execute(sa.text(
                "CREATE FUNCTION refuse_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {condition_pg} THEN RAISE EXCEPTION 'refused by the test''s trigger' USING ERRCODE = "
                "'check_violation'; END IF; RETURN NEW; END $$"))
            conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON attempts FOR EACH ROW "
                                 "EXECUTE FUNCTION refuse_attempt()"))
        else:
            conn.execute(sa.text(f"CREATE TRIGGER refuse BEFORE INSERT ON attempts WHEN {condition_sqlite} "
                                 "BEGIN SELECT RAISE(ABORT, 'refused by the test''s trigger'); END"))


async def test_a_store_error_other_than_a_lock_or_connection_error_records_the_attempt_without_its_answer(
    send_one_notice: Callable[..., Any], store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    refuse_attempts(store, "NEW.response LIKE '%poison%'", "NEW.response LIKE '%poison%'")
    poison = Status(200, b'{"ok":true,"note":"poison"}')
    chaos = await send_one_notice({"p": [poison], "ok": [], "ok2": []})
    (p_try,) = store.log.attempts(outlet_id="p")
    assert (p_try["outcome"], p_try["response"]) == ("delivered", None)
    assert "the outlet's answer could not be stored (IntegrityError)" in p_try["error"]
    assert store.log.counts() == {"delivered": 3}
    assert [len(chaos.seen(o)) for o in ("p", "ok", "ok2")] == [1, 1, 1]  # nothing was sent again
    assert "the store refused" in caplog.text


async def test_a_store_that_refuses_every_record_of_an_outlet_stops_the_run_and_records_the_rest(
    send_one_notice: Callable[..., Any], store: Store
) -> None:
    refuse_attempts(store, "NEW.outlet_id = 'doomed'", "NEW.outlet_id = 'doomed'")
    with pytest.raises(DispatchFailed, match=r"refuses to record attempts.*doomed"):
        await send_one_notice({"doomed": [], "ok": []})
    assert [t["outcome"] for t in store.log.attempts(outlet_id="ok")] == ["delivered"]
    assert store.log.attempts(outlet_id="doomed") == []
    doomed = store.log.deliveries(outlet_id="doomed")[0]
    assert doomed["status"] == "pending"  # never taken as sent: its lease runs out and it is sent again


async def test_a_background_task_that_fails_is_logged_and_started_again(
    tmp_path: Path, store: Store, regions: RegionTable, make_notice: Callable[..., Notice],
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the store watcher (SQLite: its looks; PostgreSQL: its LISTEN) meets an error that is not a store fault,
    # injected once: it must not die silently
    failures = iter([RuntimeError("injected")])
    name = "listen_dsn" if store.postgres else "changed_since_last_look"
    real = getattr(store.cluster, name)

    def once_failing() -> Any:
        if (exc := next(failures, None)) is not None:
            raise exc
        return real()

    monkeypatch.setattr(store.cluster, name, once_failing)
    secrets = {"o": whsec()}
    async with ChaosOutlets(secrets) as chaos:
        matrix = chaos_matrix(tmp_path, regions, {"o": chaos.url("o")}, secrets)
        settings = Settings(database_url=str(store.engine.url), http_timeout=2, scan_interval=5,
                            wake_poll_interval=0.01)
        async with make_sender(settings) as sender:
            dispatcher = Dispatcher(store, matrix, settings, sender)
            stop = asyncio.Event()
            run = asyncio.create_task(dispatcher.run(stop))
            await until(lambda: "the store watcher failed; starting it again" in caplog.text or run.done(), GUARD)
            assert not run.done(), run
            # started again: a notice another process stores is seen by the watcher, well before the 5 s poll
            other = Store.open(str(store.engine.url))
            other.queue.add_notices([(make_notice(), matrix.outlets)], source="test")
            other.close()
            await until(lambda: chaos.seen("o") or run.done(), GUARD)
            assert not run.done(), run
            stop.set()
            await run
            await dispatcher.close()
    assert store.log.counts() == {"delivered": 1}
