"""The one way debunkbot sends HTTP: notices, operator alerts and the platforms' extra calls (WeChat's token).

Every request gets the same rules:
- a total deadline, connect to last byte (an outlet dripping a byte at a time is cut off);
- at most ``READ_CAP`` bytes of an answer are read (a hostile outlet cannot fill memory);
- redirects are never followed, TLS is verified;
- no answer at all (timed out, refused, reset, not HTTP) raises ``SendFailed``, whose text names the
  underlying error; every HTTP answer, whatever its status, is an ``Answer``.

Requests go straight to the transport the ``Sender`` was built with: ``AsyncClient.send``'s layers (auth,
redirects, cookies, hooks) do nothing for a fan-out and cost about a third of a delivery's CPU. The process's
transport is ``FanoutTransport`` (an ``httpx.AsyncBaseTransport`` over aiohttp's connection pool); with it the
answer is read straight from aiohttp (status, headers, capped body) without building an ``httpx.Response``.
Tests and special needs inject another transport (``httpx.MockTransport``, a loopback server's), read through
``handle_async_request`` as httpx defines it.

    >>> async with make_sender(settings) as sender:                       # doctest: +SKIP
    ...     answer = await sender.send(httpx.Request("POST", url, content=body))
    ...     answer.status, answer.body
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from yarl import URL

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
        if isinstance(self.transport, FanoutTransport):
            return await self._send_direct(self.transport, request)
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

    async def _send_direct(self, transport: FanoutTransport, request: httpx.Request) -> Answer:
        """The fan-out's path: aiohttp's answer read as it comes, no ``httpx.Response`` built (a sixth of a send)."""
        status: int | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await transport.open(request)
                status = response.status
                try:
                    body = await _read_aiohttp_capped(response, self.read_cap)
                finally:
                    response.release()  # an answer not read to its end closes its connection
        except TimeoutError:
            raise SendFailed(f"timed out after {self.timeout:g}s", "timeout", status) from None
        except aiohttp.ClientError as exc:  # refused, reset, not HTTP at all...
            raise SendFailed(_transport_error(exc), type(exc).__name__, status) from exc
        return Answer(status, httpx.Headers(response.raw_headers), body, request)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class FanoutTransport(httpx.AsyncBaseTransport):
    """httpx requests carried by aiohttp's connection pool, with nothing a fan-out does not use.

    TLS is verified (httpx's CA bundle), redirects are never followed, no proxy from the environment, no
    cookie jar (an outlet's cookie is never sent to another), no decompression (what is stored is what came),
    and no timeout of aiohttp's own: the ``Sender``'s total deadline covers the whole exchange. Each request's
    URL is parsed for aiohttp once per ``httpx.URL`` object (a channel that keeps its outlets' URLs, as the
    webhook channel does, pays for it once per outlet).

        >>> transport = FanoutTransport(pool=400)                                      # doctest: +SKIP
        >>> response = await transport.handle_async_request(httpx.Request("GET", url))   # doctest: +SKIP
    """

    URLS_KEPT = 16384

    def __init__(self, pool: int, verify: bool = True) -> None:
        self.pool = pool
        self._ssl = httpx.create_ssl_context(verify=verify, trust_env=False)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[int, tuple[httpx.URL, URL]] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.pool, ssl=self._ssl)
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                              timeout=aiohttp.ClientTimeout(), trust_env=False)
        return self._session

    def _url(self, url: httpx.URL) -> URL:
        kept = self._urls.get(id(url))
        if kept is not None and kept[0] is url:
            return kept[1]
        parsed = URL(str(url), encoded=True)  # httpx has quoted it already
        if len(self._urls) >= self.URLS_KEPT:
            self._urls.clear()
        self._urls[id(url)] = (url, parsed)  # the URL is kept with its id, so the id cannot be reused meanwhile
        return parsed

    async def open(self, request: httpx.Request) -> aiohttp.ClientResponse:
        """Send ``request`` and return aiohttp's response once its status and headers are in; the caller reads
        the body and releases it."""
        session = self._session or self._open_session()
        content = request.content
        return await session._request(
            request.method, self._url(request.url), headers=request.headers.multi_items(), data=content or None,
            allow_redirects=False, auto_decompress=False, compress=False,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.open(request)
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(_transport_error(exc)) from exc
        return httpx.Response(response.status, headers=response.raw_headers, stream=_AiohttpStream(response),
                              request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(_transport_error(exc)) from exc

    async def aclose(self) -> None:
        self.response.release()


def make_sender(settings: Settings) -> Sender:
    """The process's sender: httpx requests over aiohttp's connection pool (``FanoutTransport``).

    httpx's native pool slows down as concurrency rises; aiohttp's keeps a fan-out at its speed. Pool: twice
    the concurrency, since sends slower than ``slow_send_after`` leave the dispatcher's budget (a slow lane as
    large again), not the pool.
    """
    return Sender(FanoutTransport(pool=2 * settings.concurrency), settings.http_timeout)


async def _read_aiohttp_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    content = response.content
    body = await content.read(cap)
    if not body or len(body) >= cap:
        return body
    chunks = [body]
    size = len(body)
    while size < cap and (chunk := await content.read(cap - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


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
    """What went wrong on the wire, named by the underlying error (aiohttp's: refused, reset, not HTTP)."""
    return f"{type(cause).__name__}: {cause}".strip().rstrip(":")[:500]
