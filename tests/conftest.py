"""Shared fixtures: the real region table, a real SQLite store, real loopback outlets."""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from bot.model import Notice
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import CONFIG, Settings
from bot.store import Store
from bot.testing import WebhookOutlets


@pytest.fixture(autouse=True)
def _no_settings_from_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the machine's DEBUNKBOT_* settings: each sets what it needs, through monkeypatch."""
    for name in list(os.environ):
        if name.startswith("DEBUNKBOT_") and name != "DEBUNKBOT_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def regions() -> RegionTable:
    return RegionTable.load(CONFIG / "regions.yaml")


POSTGRES_URL = os.environ.get("DEBUNKBOT_TEST_POSTGRES_URL")
# the only DEBUNKBOT_ variables tests read; DEBUNKBOT_TEST_BROWSER=required (.ci/run): the browser tests may not skip
TEST_KNOBS = {"DEBUNKBOT_TEST_POSTGRES_URL", "DEBUNKBOT_CRASH_SEED", "DEBUNKBOT_TEST_BROWSER"}


@pytest.fixture(autouse=True)
def hermetic_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the machine's settings: every DEBUNKBOT_ variable but the tests' own is unset (for
    Settings(), the CLI and the processes tests start), and restored afterwards."""
    for name in [n for n in os.environ if n.startswith("DEBUNKBOT_") and n not in TEST_KNOBS]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def any_free_http_port(hermetic_environment: None, _no_settings_from_the_real_environment: None,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The web servers tests start (`debunkbot run`, `web`, `demo --keep`, in process or not) listen on a free
    loopback port: never all on 8700 when tests run side by side."""
    monkeypatch.setenv("DEBUNKBOT_HTTP_BIND", "127.0.0.1:0")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Every store test runs on both backends: a fresh SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.sqlite3'}"
    else:
        with postgres_schema() as url:
            yield url


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """PostgreSQL only: for what only a shared server can do (several workers)."""
    with postgres_schema() as url:
        yield url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL half: set DEBUNKBOT_TEST_POSTGRES_URL (make test does when PostgreSQL is up)")
    schema = f"t_{secrets.token_hex(6)}"
    admin = sa.create_engine(POSTGRES_URL, pool_pre_ping=True,  # a restarted server is fine
                             connect_args={"options": "-c lock_timeout=10s"})  # a leak fails, not hangs
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield with_search_path(POSTGRES_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def with_search_path(url: str, schema: str) -> str:
    parsed = sa.make_url(url)
    return parsed.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.open(database_url)
    yield store
    store.close()


@pytest.fixture
def settings(tmp_path: Path, store: Store) -> Settings:
    return Settings(database_url=str(store.engine.url), retry_schedule="0.05,0.05,0.05", retry_jitter=0,
                    http_timeout=2, scan_interval=0.05, outlets=tmp_path / "outlets.yaml")


async def until(condition: Callable[[], object], timeout: float = 60, *, proc: asyncio.subprocess.Process | None = None,
                what: str | Callable[[], str] = "the outcome", every: float = 0.01) -> float:
    """Poll ``condition`` (a function, or a coroutine function) every ``every`` seconds until it holds: a bound,
    not a timing assertion. Fails when ``timeout`` seconds pass first, or when the daemon ``proc`` exits first;
    ``what`` says what was waited for (a callable is read only then: the daemon's log, say). Returns the seconds
    it took, to report, never to assert on.

        await until(lambda: len(outlets.delivered()) == 3, proc=proc, what="every outlet")
    """
    async def holds() -> object:
        found = condition()
        return await found if inspect.isawaitable(found) else found

    started = time.monotonic()
    while not await holds():
        if proc is not None and proc.returncode is not None:
            raise AssertionError(f"the daemon exited ({proc.returncode}) first: {what() if callable(what) else what}")
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:g} s: {what() if callable(what) else what}")
        await asyncio.sleep(every)
    return time.monotonic() - started


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def notice_data(**overrides: Any) -> dict[str, Any]:
    data = {
        "ref": "cq-test-001",
        "title": "网传“长江重庆段水位暴涨”系谣言",
        "rumour": "长江重庆段水位今晚将暴涨10米。",
        "truth": "经核实，目前长江重庆段水位平稳。",
        "verdict": "false",
        "authority": "重庆市水利局",
    }
    return data | overrides


@pytest.fixture
def make_notice(regions: RegionTable) -> Callable[..., Notice]:
    def make(**overrides: Any) -> Notice:
        return Notice.model_validate(notice_data(**overrides), context={"regions": regions})

    return make


def outlet_entries(n: int, channel: str = "webhook", **extra: Any) -> list[dict[str, Any]]:
    tiers = ["city"] * 2 + ["district"] * max(0, n - 3) + ["other"]
    return [
        {"id": f"outlet-{i:04d}", "name": f"测试融媒体中心{i}", "tier": tiers[i] if i < len(tiers) else "district",
         "region": "全市", "channel": channel, "secret_env": f"TEST_SECRET_{i:04d}"} | extra
        for i in range(n)
    ]


@pytest.fixture
async def loopback(tmp_path: Path, regions: RegionTable) -> AsyncIterator[Callable[..., Any]]:
    """Start n real webhook outlets on loopback and the matrix that points at them."""
    started: list[WebhookOutlets] = []

    async def start(
        n: int, script: dict[str, list[int | str]] | None = None, delay: float = 0.0,
        entry_changes: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[WebhookOutlets, OutletMatrix]:
        entries = [e | (entry_changes or {}).get(e["id"], {}) for e in outlet_entries(n)]
        keys = {e["id"]: whsec() for e in entries}
        outlets = WebhookOutlets(keys, script=script or {}, delay=delay)
        await outlets.__aenter__()
        started.append(outlets)
        for entry in entries:
            entry["url"] = outlets.url(entry["id"])
        path = tmp_path / "outlets.yaml"
        path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
        environ = {e["secret_env"]: keys[e["id"]] for e in entries}
        return outlets, load_matrix(path, regions, environ=environ)

    yield start
    for outlets in started:
        await outlets.__aexit__(None, None, None)


def chaos_matrix(tmp_path: Path, regions: RegionTable, urls: dict[str, str], secrets: dict[str, str]) -> OutletMatrix:
    """A matrix of webhook outlets at these urls, signing with these secrets."""
    entries = [{"id": o, "name": f"站点{o}", "tier": "district", "region": "全市", "channel": "webhook",
                "url": url, "secret_env": f"S_{o.upper()}"} for o, url in urls.items()]
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")
    return load_matrix(path, regions, environ={f"S_{o.upper()}": s for o, s in secrets.items()})
