"""The server's frame: health, readiness against the real store, RFC 9457 problem details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store
from bot.web import PROBLEM, Site, create_app


@pytest.fixture
async def client(tmp_path: Path, store: Store, regions: RegionTable) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url="sqlite://")
    matrix = load_matrix(settings.outlets, regions, require_secrets=False)
    app = create_app(Site(settings, store, regions, matrix))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bot") as client:
        yield client


async def test_healthz_and_readyz_answer_without_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_readyz_says_503_with_a_problem_when_the_store_is_gone(client: httpx.AsyncClient, store: Store) -> None:
    store.engine.dispose()
    store.engine.pool._creator = lambda *a: (_ for _ in ()).throw(  # type: ignore[attr-defined]
        __import__("sqlalchemy").exc.OperationalError("connect", {}, Exception("connection refused")))
    answer = await client.get("/readyz")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == PROBLEM
    assert "store is unavailable" in answer.json()["detail"]


async def test_an_unknown_path_is_a_problem_document(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["status"] == 404
