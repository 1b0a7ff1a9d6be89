"""What the page tests share: the app over a real store, a token per role, and a logged-in client per role.

    async def test_…(newsroom: Newsroom) -> None:
        operator = await newsroom.login(Role.operator)        # an httpx client holding that session's cookie
        page = await operator.get("/outlets")
        await operator.post("/outlets/x:pause", data={"csrf": csrf_of(page)})
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Actor, Role, Store
from bot.web import Site, create_app
from tests.conftest import whsec

PAGE_OUTLETS = [
    {"id": "city-hualong", "tier": "city", "channel": "webhook", "url": "https://push.cqnews.example/hook",
     "secret_env": "S_HUALONG"},
    {"id": "dist-yuzhong", "tier": "district", "region": "渝中区", "channel": "dingtalk", "secret_env": "S_YUZHONG"},
    {"id": "dist-nanan", "tier": "district", "region": "南岸区", "channel": "wecom", "secret_env": "S_NANAN"},
    {"id": "n-group", "tier": "other", "channel": "feishu", "secret_env": "S_GROUP"},
]
PAGE_SECRETS = {"S_HUALONG": whsec(), "S_YUZHONG": "dingtoken-5d2e:SECsign91b2", "S_NANAN": "wecomkey-0c4e",
                "S_GROUP": "feishuhook-77aa:feishusign-12ff"}


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token a page carries (its meta tag, or a form's hidden field)."""
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.text) or re.search(
        r'name="csrf" value="([^"]+)"', page.text)
    assert found, f"no CSRF token on {page.request.url}"
    return found.group(1)


@dataclass
class Newsroom:
    app: object
    store: Store
    site: Site
    tokens: dict[Role, str]
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, base_url: str = "http://bot", **headers: str) -> httpx.AsyncClient:
        """A browser with no session yet: its own cookie jar. Chinese unless ``accept_language`` says otherwise."""
        transport = httpx.ASGITransport(self.app, client=("203.0.113.7", 51234))  # type: ignore[arg-type]
        client = httpx.AsyncClient(transport=transport, base_url=base_url,
                                   headers={"accept-language": "zh-CN,zh;q=0.9"} | headers)
        self.clients.append(client)
        return client

    async def login(self, role: Role, base_url: str = "http://bot") -> httpx.AsyncClient:
        """A browser logged in with the token of ``role`` (the login form, as a person fills it)."""
        client = self.client(base_url)
        form = await client.get("/login")
        answer = await client.post("/login", data={"token": self.tokens[role], "csrf": csrf_of(form), "next": "/"})
        assert answer.status_code == 303, answer.text
        return client


@pytest.fixture
async def newsroom(tmp_path: Path, store: Store, regions: RegionTable) -> AsyncIterator[Newsroom]:
    path = tmp_path / "outlets.yaml"
    path.write_text(yaml.safe_dump({"outlets": [{"name": f"融媒体{o['id']}"} | o for o in PAGE_OUTLETS]},
                                   allow_unicode=True), encoding="utf-8")
    matrix = load_matrix(path, regions, environ=PAGE_SECRETS)
    site = Site(Settings(database_url=str(store.engine.url), outlets=path), store, regions, matrix)
    tokens = {role: store.access.create(f"{role.name}-李四", role, actor=Actor("root", "local", "cli@test"))[0]
              for role in Role}
    room = Newsroom(create_app(site), store, site, tokens)
    yield room
    for client in room.clients:
        await client.aclose()
