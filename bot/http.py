"""The one way debunkbot sends HTTP: notices, operator alerts and the platforms' extra calls (WeChat's token).

Every request gets the same rules:
- a total deadline, connect to last byte (an outlet dripping a byte at a time is cut off);
- at most ``READ_CAP`` bytes of an answer are read (a hostile outlet cannot fill memory);
- redirects are never followed, TLS is verified;
- no answer at all (timed out, refused, reset, not HTTP) raises ``SendFailed``, whose text names the
  underlying error; every HTTP answer, whatever its status, is an ``Answer``.

Requests go straight to the transport the ``Sender`` was built with: ``AsyncClient.send``'s layers (auth,
redirects, cookies, hooks) do nothing for a fan-out and cost about a third of a delivery's CPU. Tests and
special needs inject another transport (``httpx.MockTransport``, a loopback server's).

    >>> async with make_sender(settings) as sender:                       # doctest: +SKIP
    ...     answer = await sender.send(httpx.Request("POST", url, content=body))
    ...     answer.status, answer.body
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from bot.settings import Settings

READ_CAP = 64 * 1024  # bytes of an answer read; the rest is not read


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, headers and at most ``READ_CAP`` bytes of its body, and the request it
    answers (whose credentials are redacted from whatever of the answer is kept)."""

    status: int
    headers: httpx.Headers
    body: bytes
    request: httpx.Request | None = None
    # an exchange's memory for the delivery's next try (wechat_mp: its draft's media_id, a publish_id), never a secret
    state: Mapping[str, Any] | None = None


class SendFailed(Exception):
    """No HTTP answer came. ``str()`` says what happened; ``kind`` is a short name for logs
    (``timeout``, or the underlying error's class, e.g. ``ClientConnectorError``)."""

    def __init__(self, reason: str, kind: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.status = status  # the status line, when one came before the answer failed (a drip cut off)


class Sender:
    """Sends requests through one transport under the rules above. Build one per process and share it."""

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: float, read_cap: int = READ_CAP) -> None:
        self.transport = transport
        self.timeout = timeout
        self.read_cap = read_cap

    async def send(self, request: httpx.Request) -> Answer:
        """Send ``request``; the answer, or SendFailed if none came within the deadline."""
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.transport.handle_async_request(request)
                try:
                    body = await _read_capped(response, self.read_cap)
                finally:
                    await response.aclose()
        except TimeoutError:
            status = response.status_code if response is not None else None
            raise SendFailed(f"timed out after {self.timeout:g}s", "timeout", status) from None
        except (httpx.TransportError, aiohttp.ClientError) as exc:  # refused, reset, not HTTP at all...
            cause = exc.__cause__ if isinstance(exc, httpx.TransportError) and exc.__cause__ else exc
            status = response.status_code if response is not None else None
            raise SendFailed(_transport_error(cause), type(cause).__name__, status) from exc
        return Answer(response.status_code, response.headers, body, request)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def make_sender(settings: Settings) -> Sender:
    """The process's sender: httpx requests over aiohttp's connection pool.

    httpx's native pool slows down as concurrency rises; the aiohttp transport (httpx-aiohttp) keeps
    httpx's Request/Response at aiohttp's speed. Pool: twice the concurrency, since sends slower than
    ``slow_send_after`` leave the dispatcher's budget (a slow lane as large again), not the pool.
    """
    pool = 2 * settings.concurrency
    limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
    return Sender(AiohttpTransport(limits=limits, verify=True, trust_env=False), settings.http_timeout)


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= cap:
            break
    return b"".join(chunks)[:cap]


def _transport_error(cause: BaseException) -> str:
    """What went wrong on the wire, named by the underlying error: httpx-aiohttp 0.2 maps a refused or
    reset connection to httpx.ConnectTimeout, which would tell an operator the wrong story."""
    return f"{type(cause).__name__}: {cause}".strip().rstrip(":")[:500]
