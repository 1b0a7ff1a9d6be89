"""A chaos outlet on loopback: one raw HTTP server whose outlets misbehave as scripted.

Each outlet is a path (``/o/<outlet id>``) on one port. For its first tries an outlet follows its
script; after that it answers 200. It speaks HTTP by hand, so it can also do what no well-behaved
server does: hang, drip bytes, reset the connection, answer garbage or a huge body.

    >>> async with ChaosOutlets({"o1": secret}, script={"o1": [Status(503), Status(503)]}) as chaos:
    ...     url = chaos.url("o1")                                              # doctest: +SKIP

Signed posts are checked with the reference ``standardwebhooks`` library, as a receiver would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections import defaultdict
from dataclasses import dataclass, field

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Status:
    """Answer with this status, body and headers."""

    code: int = 200
    body: bytes = b'{"ok":true}'
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Drip:
    """Answer 200 headers, then one byte every ``interval`` seconds, forever."""

    interval: float = 0.1


@dataclass(frozen=True)
class Huge:
    """Answer 200 with a body of ``size`` bytes."""

    size: int = 16 * 1024 * 1024


HANG = "hang"  # read the request and never answer
RESET = "reset"  # read the request, then reset the connection (RST)
GARBAGE = "garbage"  # answer bytes that are not HTTP
ECHO = "echo"  # answer 200 with the request's target (path and query) and headers in the body (a leaky outlet)

Behaviour = Status | Drip | Huge | str


def retry_after(seconds: float, code: int = 429) -> Status:
    return Status(code, b'{"error":"slow down"}', (("retry-after", f"{seconds:g}"),))


def redirect(location: str = "http://elsewhere.example/hook", code: int = 302) -> Status:
    return Status(code, b"", (("location", location),))


def errcode(code: int, message: str) -> Status:
    """DingTalk/WeCom style: HTTP 200 with the failure in the body."""
    return Status(200, json.dumps({"errcode": code, "errmsg": message}).encode())


@dataclass
class ChaosRequest:
    outlet: str
    message_id: str | None
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request was read
    verified: bool | None  # None: no secret known for the outlet
    accepted: bool = False  # answered a plain 200: the outlet has the post
    target: str = ""  # the request line's path and query, as sent


def refused_url() -> str:
    """A loopback URL where nothing listens: connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/o/refused"


@dataclass
class ChaosOutlets:
    secrets: dict[str, str] = field(default_factory=dict)
    script: dict[str, list[Behaviour]] = field(default_factory=dict)
    latency: float = 0.0  # seconds every answer waits first (keeps sends in flight)
    host: str = "127.0.0.1"
    requests: list[ChaosRequest] = field(default_factory=list)
    tries: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _server: asyncio.Server | None = None
    _port: int = 0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, outlet_id: str) -> str:
        return f"http://{self.host}:{self._port}/o/{outlet_id}"

    def seen(self, outlet_id: str) -> list[ChaosRequest]:
        return [r for r in self.requests if r.outlet == outlet_id]

    def delivered(self) -> dict[str, list[str]]:
        """outlet id -> the webhook-ids of the verified posts it answered 200 to, duplicates included."""
        out: dict[str, list[str]] = defaultdict(list)
        for r in self.requests:
            if r.verified and r.message_id and r.accepted:
                out[r.outlet].append(r.message_id)
        return out

    async def __aenter__(self) -> ChaosOutlets:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._server:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._server:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        outlet = path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        self.tries[outlet] += 1
        steps = self.script.get(outlet, [])
        step: Behaviour = steps[self.tries[outlet] - 1] if self.tries[outlet] <= len(steps) else Status()
        verified = self._verify(outlet, body, headers)
        request = ChaosRequest(outlet, headers.get("webhook-id"), headers, body, time.monotonic(), verified,
                               target=path)
        self.requests.append(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        if verified is False and isinstance(step, Status) and step.code < 300:
            step = Status(401, b'{"error":"signature"}')
        if step == HANG:
            await self._closing.wait()
        elif step == RESET:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif step == GARBAGE:
            writer.write(b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n")
            await writer.drain()
        elif step == ECHO:
            request.accepted = True
            await _respond(writer, Status(200, json.dumps({"request-target": path} | headers).encode()))
        elif isinstance(step, Drip):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000000\r\n\r\n")
            while not self._closing.is_set():
                writer.write(b".")
                await writer.drain()
                await asyncio.sleep(step.interval)
        elif isinstance(step, Huge):
            writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: {step.size}\r\n\r\n".encode())
            chunk = b"x" * 65536
            for _ in range(step.size // len(chunk)):
                writer.write(chunk)
                await writer.drain()
        elif isinstance(step, Status):
            if step.code < 300 and b"errcode" not in step.body:
                request.accepted = True
            await _respond(writer, step)

    def _verify(self, outlet: str, body: bytes, headers: dict[str, str]) -> bool | None:
        secret = self.secrets.get(outlet)
        if secret is None:
            return None
        try:
            Webhook(secret).verify(body, headers)
        except WebhookVerificationError:
            return False
        return True


async def _respond(writer: asyncio.StreamWriter, status: Status) -> None:
    head = [f"HTTP/1.1 {status.code} X", f"content-length: {len(status.body)}", "connection: close",
            "content-type: application/json", *(f"{k}: {v}" for k, v in status.headers)]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + status.body)
    await writer.drain()

