"""The server's frame: health, readiness against the real store, RFC 9457 problem details."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Actor, Role, Store
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


async def test_a_nul_character_in_a_path_or_query_parameter_is_a_422_naming_the_parameter(
    client: httpx.AsyncClient,
) -> None:
    in_path = await client.get("/feeds/a%00b.atom")
    in_query = await client.get("/feeds/a.atom", params={"token": "x\x00"})
    for answer, field in ((in_path, "path.outlet"), (in_query, "query.token")):
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM
        assert answer.json()["errors"][0]["field"] == field and "NUL" in answer.json()["detail"]


async def test_a_body_value_postgresql_cannot_hold_is_a_422_that_changes_nothing_not_a_500(
    store: Store, regions: RegionTable
) -> None:
    settings = Settings(database_url=str(store.engine.url))
    matrix = load_matrix(settings.outlets, regions, require_secrets=False)
    token, _ = store.access.create("值班员", Role.operator, actor=Actor("root", "local", "cli@test"))
    app = create_app(Site(settings, store, regions, matrix))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bot",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        answer = await client.post("/api/v1/deliveries:retry", json={"notice": "cq\x00"})
    if store.engine.dialect.name == "postgresql":  # SQLite's text holds a NUL: there it is only an unknown ref
        assert answer.status_code == 422 and answer.headers["content-type"] == PROBLEM, answer.text
        assert "NUL" in answer.json()["detail"] and "nothing was changed" in answer.json()["detail"]
        assert store.audit.page(limit=None, action="deliveries.retry").rows == []
    else:
        assert answer.status_code == 200, answer.text
