"""One server: `debunkbot run` serves the app next to the dispatcher, on one port; `--no-web` leaves it out;
`debunkbot web` serves it alone. Real processes, real ports (each asks for a free one), as an operator runs them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from bot.store import Store
from bot.testing import read_feed
from bot.web.server import BindError, WebServer, WebServerFailed, listen
from tests.conftest import until
from tests.test_scheduler import DEADLINE, RunningBot, bot, stop, with_feed_outlet

__all__ = ["bot"]  # the fixture, shared with the daemon's tests

SERVING = re.compile(r"web server at (http://\S+) \(")


async def served_at(bot: RunningBot, proc: asyncio.subprocess.Process) -> str:
    """The URL the process logged it serves on (the port the system gave: it was asked for port 0)."""
    await until(lambda: SERVING.search(bot.log()) is not None, proc=proc, what=bot.log)
    found = SERVING.search(bot.log())
    assert found, bot.log()
    return found[1]


def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host.strip("[]"), int(port))) != 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_run_answers_healthz_and_serves_a_feed_that_delivers_on_its_one_port(bot: RunningBot) -> None:
    with_feed_outlet(bot)
    bot.write_notice(bot.inbox, "cq-served")
    proc = await bot.start()
    url = await served_at(bot, proc)
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ready"}
    await until(lambda: bot.refs_delivered().get("cq-served") == 3, proc=proc, what=bot.log)  # pushed, so listed

    entries = await read_feed(f"{url}/feeds/feed-open.atom")
    assert [e["id"].rsplit(":", 1)[-1] for e in entries] == ["cq-served"]
    store = Store.open(bot.env["DEBUNKBOT_DATABASE_URL"])
    try:
        await until(lambda: [r["status"] for r in store.log.deliveries(outlet_id="feed-open")] == ["delivered"],
                    proc=proc, what=bot.log)
        assert [(t["trigger"], t["outcome"]) for t in store.log.attempts(outlet_id="feed-open")] == [
            ("fetch", "delivered")]
    finally:
        store.close()
    assert await stop(proc) == 0, bot.log()
    assert refused(url) and "Traceback" not in bot.log()


async def test_run_with_no_web_sends_but_serves_nothing(bot: RunningBot) -> None:
    port = free_port()
    bot.write_notice(bot.inbox, "cq-no-web")
    proc = await bot.start("--no-web", env={"DEBUNKBOT_HTTP_BIND": f"127.0.0.1:{port}"})
    await until(lambda: bot.refs_delivered().get("cq-no-web") == 3, proc=proc, what=bot.log)
    assert bot.refs_delivered().get("cq-no-web") == 3, bot.log()
    assert refused(f"http://127.0.0.1:{port}") and "web server at" not in bot.log()
    assert await stop(proc) == 0, bot.log()


async def test_web_alone_answers_readyz_sends_nothing_and_stops_on_sigterm(bot: RunningBot) -> None:
    await bot.submit(bot.write_notice(bot.tmp, "cq-not-sent-by-web"))
    proc = await bot.start(command="web")
    url = await served_at(bot, proc)
    async with httpx.AsyncClient(base_url=url, trust_env=False) as client:
        assert (await client.get("/readyz")).json() == {"status": "ready"}
    assert await stop(proc) == 0, bot.log()
    assert refused(url) and "stopped (" in bot.log() and "Traceback" not in bot.log()
    assert bot.outlets.posts == []  # a web node sends nothing: the notice waits for a worker


async def test_a_busy_port_is_one_line_naming_the_bind_and_the_setting(bot: RunningBot) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await bot.start(env={"DEBUNKBOT_HTTP_BIND": f"127.0.0.1:{port}"})
        code = await asyncio.wait_for(proc.wait(), timeout=DEADLINE)
    assert code == 1
    text = bot.log()
    assert "Traceback" not in text, text
    (line,) = [line for line in text.splitlines() if f"127.0.0.1:{port}" in line]
    assert "DEBUNKBOT_HTTP_BIND" in line and "in use" in line and "--no-web" in line


async def test_a_bind_that_is_not_loopback_warns_at_start_up_that_tls_must_be_in_front(bot: RunningBot) -> None:
    proc = await bot.start(command="web", env={"DEBUNKBOT_HTTP_BIND": "0.0.0.0:0"})
    url = await served_at(bot, proc)
    (warning,) = [line for line in bot.log().splitlines() if "not loopback" in line]
    assert "WARNING" in warning and "TLS" in warning and url in warning
    assert await stop(proc) == 0, bot.log()


async def test_a_loopback_bind_gives_no_such_warning(bot: RunningBot) -> None:
    proc = await bot.start(command="web", env={"DEBUNKBOT_HTTP_BIND": "[::1]:0"} if _has_ipv6() else {})
    url = await served_at(bot, proc)
    assert await stop(proc) == 0, bot.log()
    assert "not loopback" not in bot.log() and url.startswith("http://[::1]:" if _has_ipv6() else "http://127.")


def _has_ipv6() -> bool:
    try:
        listen("[::1]:0").close()
    except BindError:
        return False
    return True


# -- the server in process: how its owner learns it failed ---------------------------------------------------


@contextlib.asynccontextmanager
async def _failing_start(app: FastAPI) -> AsyncIterator[None]:
    raise RuntimeError("the app could not start: no store")
    yield  # pragma: no cover


async def test_an_app_that_fails_to_start_is_an_error_at_once_and_leaves_the_port_free() -> None:
    port = free_port()
    with pytest.raises(WebServerFailed, match="failed to start"):
        async with WebServer(FastAPI(lifespan=_failing_start), f"127.0.0.1:{port}"):
            pass  # pragma: no cover
    listen(f"127.0.0.1:{port}").close()  # free again


async def test_a_server_that_ends_on_its_own_stops_its_owner_and_fails_its_block() -> None:
    stopping = asyncio.Event()
    with pytest.raises(WebServerFailed, match="ended without being asked"):
        async with WebServer(FastAPI(), "127.0.0.1:0", stop=stopping) as web:
            assert web.server is not None
            web.server.should_exit = True  # as uvicorn does on its own, e.g. at its limit of requests
            await asyncio.wait_for(stopping.wait(), timeout=DEADLINE)
    assert stopping.is_set()


def _recording_lifespan(seen: list[str]):  # type: ignore[no-untyped-def]
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        seen.append("started")
        yield
        seen.append("stopped")
    return lifespan


async def test_a_stop_with_nothing_connected_closes_the_port_and_ends_the_apps_lifespan() -> None:
    seen: list[str] = []
    async with WebServer(FastAPI(lifespan=_recording_lifespan(seen)), "127.0.0.1:0") as web:
        async with httpx.AsyncClient() as client:  # a request answered, its connection closed before the stop
            assert (await client.get(web.url + "/nowhere")).status_code == 404
        url = web.url
    assert seen == ["started", "stopped"]
    assert refused(url)


async def test_a_request_in_flight_when_the_server_is_stopped_still_gets_its_answer() -> None:
    arrived, answer = asyncio.Event(), asyncio.Event()
    seen: list[str] = []
    app = FastAPI(lifespan=_recording_lifespan(seen))

    @app.get("/slow")
    async def slow() -> dict[str, str]:
        arrived.set()
        await answer.wait()
        return {"answered": "after the stop"}

    async with httpx.AsyncClient() as client:
        async with WebServer(app, "127.0.0.1:0") as web:
            request = asyncio.create_task(client.get(web.url + "/slow"))
            await asyncio.wait_for(arrived.wait(), timeout=DEADLINE)
            asyncio.get_running_loop().call_later(0.2, answer.set)  # answered while the server stops
        assert answer.is_set(), "the server's stop waited for the request in flight"
        response = await asyncio.wait_for(request, timeout=DEADLINE)
    assert response.status_code == 200 and response.json() == {"answered": "after the stop"}
    assert seen == ["started", "stopped"]


@pytest.mark.parametrize("bind", ["8700", "::1:8700", "127.0.0.1:99999"])
async def test_a_bind_that_is_not_host_and_port_is_refused_at_start_naming_the_setting(
    bot: RunningBot, bind: str
) -> None:
    proc = await bot.start(env={"DEBUNKBOT_HTTP_BIND": bind})
    assert await asyncio.wait_for(proc.wait(), timeout=DEADLINE) == 2
    assert "DEBUNKBOT_HTTP_BIND must be host:port" in bot.log() and "[::1]:8700" in bot.log()
