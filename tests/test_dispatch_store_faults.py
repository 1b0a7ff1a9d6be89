"""The dispatcher when the store is locked: it backs off and goes on; nothing it cannot record is sent,
and nothing it sent is forgotten. Real SQLite, locked by a second connection as another process would."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.model import Notice
from bot.settings import Settings
from bot.store import Store
from bot.testing import ChaosOutlets
from tests.conftest import chaos_matrix, until, whsec


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the database's write lock, as a stuck writer in another process would."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def warnings_about(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(words in r.getMessage() and "database is locked" in r.getMessage() for r in caplog.records)


@pytest.fixture
def setup(tmp_path: Path, regions: Any, make_notice: Callable[..., Notice]) -> Callable[..., Any]:
    def make(chaos: ChaosOutlets, n: int) -> tuple[Store, Any, Settings]:
        path = tmp_path / "faults.sqlite3"
        url = f"sqlite:///{path}"
        matrix = chaos_matrix(tmp_path, regions, {o: chaos.url(o) for o in chaos.secrets}, chaos.secrets)
        Store.open(url).queue.add_notices([(make_notice(), matrix.outlets)], source="test")
        store = Store.open(url, busy_timeout=0.05)  # fail fast on a lock, so the back-off shows
        settings = Settings(database_url=url, http_timeout=2, scan_interval=0.05, retry_schedule="0.05", retry_jitter=0)
        return store, matrix, settings

    return make


async def test_a_locked_store_means_nothing_is_claimed_or_sent_and_the_bot_goes_on_when_it_is_free(
    setup: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = {f"o{i}": whsec() for i in range(5)}
    async with ChaosOutlets(secrets) as chaos:
        store, matrix, settings = setup(chaos, 5)
        async with make_sender(settings) as client:
            dispatcher = Dispatcher(store, matrix, settings, client)
            with locked(tmp_path / "faults.sqlite3"):
                run = asyncio.create_task(dispatcher.run(until_idle=True))
                await until(lambda: warnings_about(caplog, "could not claim") >= 3)  # backed off and tried again
                assert chaos.requests == []  # a claim that could not be written is not sent
                assert not run.done()
            await asyncio.wait_for(run, timeout=30)
            await dispatcher.close()
    assert store.log.counts() == {"delivered": 5}
    assert [len(chaos.seen(o)) for o in secrets] == [1] * 5


async def test_results_the_store_refused_are_kept_and_recorded_when_it_is_back_without_resending(
    setup: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = {f"o{i}": whsec() for i in range(5)}
    async with ChaosOutlets(secrets, latency=0.3) as chaos:  # answers come while the store is locked
        store, matrix, settings = setup(chaos, 5)
        async with make_sender(settings) as client:
            dispatcher = Dispatcher(store, matrix, settings, client)
            run = asyncio.create_task(dispatcher.run(until_idle=True))
            await until(lambda: len(chaos.requests) == 5)
            with locked(tmp_path / "faults.sqlite3"):
                await until(lambda: warnings_about(caplog, "could not record attempts") >= 3)
                assert not run.done()
            await asyncio.wait_for(run, timeout=30)
            await dispatcher.close()
    rows = store.log.deliveries()
    assert {(r["status"], r["attempts"]) for r in rows} == {("delivered", 1)}
    assert len(store.log.attempts()) == 5 and len(chaos.requests) == 5  # recorded once, sent once
    assert all(r.levelno < logging.ERROR for r in caplog.records)
