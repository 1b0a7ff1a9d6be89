"""Serving the app: uvicorn on one socket, as a task in the caller's event loop, next to the dispatcher.

The socket is bound before uvicorn starts, so a busy port is one line naming the setting (``BindError``) and
port 0 is logged as the port the system gave. The process's own signal handlers stop the server: uvicorn's
are left out. A server that ends without being asked to (its app's start-up failed, it crashed) sets
``stop``, so the daemon beside it stops cleanly, and leaving the block then raises ``WebServerFailed``: the
owner exits non-zero, never on with the server silently gone.

    >>> async with WebServer(create_app(site), "127.0.0.1:0", stop=stop) as web:   # doctest: +SKIP
    ...     print(web.url)                                                            # http://127.0.0.1:PORT
    ...     await stop.wait()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Iterator
from types import TracebackType

import anyio.to_thread
import uvicorn
from starlette.types import ASGIApp

from bot.settings import parse_bind

log = logging.getLogger("debunkbot")


class BindError(Exception):
    """The server cannot listen where it was told to: the message is one line naming the setting."""


class WebServerFailed(Exception):
    """The web server ended while the bot ran (the reason was logged when it happened)."""


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, stopping as soon as it is told to: uvicorn looks at ``should_exit`` every 0.1 s and then
    pauses 0.1 s for open connections to take the shutdown, which added up to 0.2 s to every stop of a daemon
    (an until-idle run, a test) with nothing connected."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()  # before uvicorn's __init__, which sets should_exit
        super().__init__(config)
        self.ready = asyncio.Event()

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def main_loop(self) -> None:
        counter = 0  # uvicorn's loop: its once-a-second tick (the date header), but a stop ends the wait at once
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # they get uvicorn's pause and its graceful wait
            return
        for server in self.servers:  # nothing is connected: close, and the app's lifespan ends
            server.close()
        for sock in sockets or []:
            sock.close()
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process's handlers (bot.scheduler.install_signal_handlers) stop the server, and the daemon

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def listen(bind: str) -> socket.socket:
    """A TCP socket bound to ``bind`` (``host:port``, ``[::1]:port``); ``BindError`` when it cannot be."""
    host, port = parse_bind(bind)
    sock: socket.socket | None = None
    try:
        # getaddrinfo may block on a host name: once, at start-up, before anything else runs on the loop
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart reuses a port in TIME_WAIT
        sock.bind(address)
    except OSError as exc:
        if sock is not None:
            sock.close()
        hint = "; is another debunkbot running?" if exc.errno == errno.EADDRINUSE else ""
        raise BindError(f"cannot listen on {bind} (DEBUNKBOT_HTTP_BIND): {exc.strerror or exc}{hint}. "
                        "Set DEBUNKBOT_HTTP_BIND to a free host:port, or run without the web server "
                        "(`debunkbot run --no-web`)") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


# Beside the dispatcher, the app's checks and store calls (FastAPI's threadpool) run on this many threads at
# most: every busy thread takes a share of the GIL from the event loop that sends. With 40 (anyio's default),
# 50 editors posting at once cut the dispatcher's deliveries/s by half; with 2, by none (bench/api_load.py).
THREADS_BESIDE_DISPATCHER = 2


class WebServer:
    """The app served on ``bind`` until the block ends. ``grace``: seconds open requests get to finish;
    ``threads``: the most threads its handlers' blocking work runs on at once (None: anyio's default, 40)."""

    def __init__(self, app: ASGIApp, bind: str, stop: asyncio.Event | None = None, grace: float = 10.0,
                 threads: int | None = None) -> None:
        self.app = app
        self.threads = threads
        self.bind = bind
        self.stop = stop
        self.grace = grace
        self.url = ""  # http://HOST:PORT once started, with the port the system gave when 0 was asked
        self.failure: str | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.server: _Uvicorn | None = None  # uvicorn's own: should_exit = True stops it

    async def __aenter__(self) -> WebServer:
        if self.threads is not None:  # the loop's own limiter: the dispatcher's store thread is not counted
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        sock = listen(self.bind)
        self.url = url_of(sock)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="on", ws="none",
                                server_header=False, timeout_graceful_shutdown=max(self.grace, 0.1))
        server = self.server = _Uvicorn(config)
        self._task = asyncio.create_task(self._serve(server, sock), name=f"web server on {self.bind}")
        ready = asyncio.create_task(server.ready.wait())
        try:
            await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._task.done():  # it ended before it served: its start-up failed
            sock.close()
            self._task.result()
            raise WebServerFailed(f"the web server on {self.url} did not start")
        self._task.add_done_callback(self._ended)
        if not is_loopback(sock):
            log.warning("the web server listens on %s, which is not loopback: put TLS in front of it (a reverse "
                        "proxy such as nginx or Caddy); without it tokens cross the network in the clear",
                        self.url)
        log.info("web server at %s (the API under /api/v1, described at /openapi.json; feeds at "
                 "%s/feeds/OUTLET.atom or .json; /healthz, /readyz, /metrics)", self.url, self.url)
        return self

    async def _serve(self, server: _Uvicorn, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn exits the process when the app's lifespan start-up fails
            raise WebServerFailed(f"the web app on {self.url} failed to start (see the lines above)") from None

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        self.failure = f"{type(exc).__name__}: {exc}" if exc else "it ended without being asked to"
        log.error("the web server on %s stopped: %s; stopping the bot", self.url, self.failure,
                  exc_info=(type(exc), exc, exc.__traceback__) if exc else None)
        if self.stop is not None:
            self.stop.set()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stopping = True
        assert self.server is not None and self._task is not None
        self.server.should_exit = True
        with contextlib.suppress(Exception):  # a failure was logged when it happened
            await self._task
        if self.failure is not None and exc_type is None:
            raise WebServerFailed(f"the web server on {self.url} stopped: {self.failure}")
