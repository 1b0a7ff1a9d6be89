"""Shared fixtures: the real region table, a real SQLite store, real loopback outlets."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.model import Notice
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import CONFIG, Settings
from bot.store import Store
from bot.testing import WebhookOutlets


@pytest.fixture(scope="session")
def regions() -> RegionTable:
    return RegionTable.load(CONFIG / "regions.yaml")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    yield store
    store.close()


@pytest.fixture
def settings(tmp_path: Path, store: Store) -> Settings:
    return Settings(database_url=str(store.engine.url), retry_schedule="0.05,0.05,0.05", retry_jitter=0,
                    http_timeout=2, scan_interval=0.05, outlets=tmp_path / "outlets.yaml")


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

    async def start(n: int, script: dict[str, list[int | str]] | None = None) -> tuple[WebhookOutlets, OutletMatrix]:
        entries = outlet_entries(n)
        keys = {e["id"]: whsec() for e in entries}
        outlets = WebhookOutlets(keys, script=script or {})
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
