"""POST /api/v1/matrix:reload through the ASGI transport, against the real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bot.matrix import LiveMatrix
from bot.model import Notice
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Role, Store
from bot.web import PROBLEM, Site, create_app
from tests.conftest import notice_data, outlet_entries, whsec


@dataclass
class Served:
    client: httpx.AsyncClient
    site: Site
    path: Path
    entries: list[dict[str, Any]]
    environ: dict[str, str]

    def write(self, entries: list[dict[str, Any]]) -> None:
        self.path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")


@pytest.fixture
async def served(tmp_path: Path, store: Store, regions: RegionTable) -> AsyncIterator[Served]:
    """The app over a matrix of three outlets read from a file; a fourth outlet's secret is already set."""
    entries = [e | {"url": f"https://{e['id']}.example.com/hook?access_token=tok{n}xyz"}
               for n, e in enumerate(outlet_entries(4))]
    environ = {e["secret_env"]: whsec() for e in entries}
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries[:3]}, allow_unicode=True), encoding="utf-8")
    live = LiveMatrix(load_matrix(path, regions, environ=environ),
                      load=lambda: load_matrix(path, regions, environ=environ))
    site = Site(Settings(database_url=str(store.engine.url), outlets=path), store, regions, live)
    token, _ = store.access.create("值班员李四", Role.operator)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(create_app(site)), base_url="http://bot",
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        yield Served(client, site, path, entries, environ)


def assert_no_url_or_secret(answer: httpx.Response, served: Served) -> None:
    text = answer.text
    assert all(e["url"] not in text and "access_token" not in text and "example.com" not in text
               for e in served.entries), text
    assert all(secret not in text and secret.removeprefix("whsec_") not in text for secret in served.environ.values())


async def test_a_good_file_is_reloaded_and_the_answer_says_what_changed_by_outlet_id(served: Served) -> None:
    changed = served.entries[1] | {"name": "新名字融媒体中心"}
    served.write([served.entries[0], changed, served.entries[3]])

    answer = await served.client.post("/api/v1/matrix:reload")

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"generation": 1, "outlets": 3, "added": ["outlet-0003"], "removed": ["outlet-0002"],
                             "changed": ["outlet-0001"]}
    assert [o.id for o in served.site.matrix.outlets] == ["outlet-0000", "outlet-0001", "outlet-0003"]
    assert served.site.matrix.by_id["outlet-0001"].name == "新名字融媒体中心"
    assert served.site.store.matrix.generation() == 1
    assert_no_url_or_secret(answer, served)
    (row,) = served.site.store.audit.page(action="matrix.reload").rows  # written in the reload's transaction
    assert (row["actor"], row["role"], row["detail"]["generation"]) == ("值班员李四", "operator", 1)
    assert row["detail"]["added"] == ["outlet-0003"] and row["detail"]["removed"] == ["outlet-0002"]


async def test_a_removed_outlets_pending_deliveries_show_held_removed_from_matrix(
    served: Served, regions: RegionTable,
) -> None:
    store = served.site.store
    notice = Notice.model_validate(notice_data(), context={"regions": regions})
    store.queue.add_notices([(notice, served.site.matrix.concerned_by(notice))], source="test")
    served.write(served.entries[:2])

    assert (await served.client.post("/api/v1/matrix:reload")).json()["removed"] == ["outlet-0002"]
    assert {(r["outlet"], r["status"], r["reason"]) for r in store.log.deliveries()} == {
        ("outlet-0000", "pending", None), ("outlet-0001", "pending", None),
        ("outlet-0002", "held", "removed from matrix")}


async def test_a_bad_file_gets_422_naming_outlet_and_field_and_changes_nothing(served: Served) -> None:
    before = served.site.matrix
    bad = served.entries[3] | {"tier": "capital", "url": "http://169.254.169.254/latest?access_token=tok3xyz"}
    served.write([*served.entries[:2], bad])  # would also remove outlet-0002: refused whole

    answer = await served.client.post("/api/v1/matrix:reload")

    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body = answer.json()
    assert "still running with the matrix as it was" in body["detail"]
    assert {(e["outlet"], e["field"]) for e in body["errors"]} == {("outlet-0003", "tier"), ("outlet-0003", "url")}
    assert served.site.matrix is before
    assert served.site.store.matrix.generation() == 0 and served.site.store.matrix.removed() == {}
    assert_no_url_or_secret(answer, served)


async def test_an_outlet_whose_secret_is_not_set_is_refused_naming_outlet_and_secret_env(served: Served) -> None:
    del served.environ["TEST_SECRET_0003"]
    served.write(served.entries)

    answer = await served.client.post("/api/v1/matrix:reload")

    assert answer.status_code == 422
    body = answer.json()
    assert body["incomplete"] is True
    assert body["errors"] == [{"outlet": "outlet-0003", "field": "secret_env",
                               "message": "environment variable TEST_SECRET_0003 is not set"}]
    assert [o.id for o in served.site.matrix.outlets] == ["outlet-0000", "outlet-0001", "outlet-0002"]


async def test_a_file_that_is_not_yaml_is_refused_with_the_reason(served: Served) -> None:
    served.path.write_text("outlets: [", encoding="utf-8")
    answer = await served.client.post("/api/v1/matrix:reload")
    assert answer.status_code == 422
    assert "not valid UTF-8 YAML" in answer.json()["detail"]
    assert len(served.site.matrix) == 3


async def test_a_site_given_a_plain_matrix_has_nothing_to_reload_and_says_so(
    store: Store, regions: RegionTable, served: Served,
) -> None:
    site = Site(Settings(database_url="sqlite://"), store, regions, served.site.matrix)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(create_app(site)), base_url="http://bot",
                                 headers=served.client.headers) as client:
        answer = await client.post("/api/v1/matrix:reload")
    assert answer.status_code == 422
    assert "not read from a file" in answer.json()["detail"]
