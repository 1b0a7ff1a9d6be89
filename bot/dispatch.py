"""The dispatcher: claim due deliveries, send them concurrently, record every attempt.

The store is the only limiter: a claim takes at most ``concurrency`` deliveries for this
process and at most ``per_outlet_concurrency`` in flight per outlet (counted across every
worker, by lease), so a slow or dead outlet never holds up the others. Retries live in the
store as ``next_attempt_at``; nothing about a delivery's future is only in memory.

    >>> async with make_sender(settings) as sender:                       # doctest: +SKIP
    ...     await Dispatcher(store, matrix, settings, sender).run(until_idle=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import random
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import unquote, unquote_plus

import httpx

from bot.health import HealthPolicy
from bot.http import Sender, SendFailed
from bot.logs import log_fields
from bot.matrix import LiveMatrix
from bot.model import Change, Notice
from bot.outlets import Outlet, OutletMatrix
from bot.receipts import ReceiptLinks, receipt_for
from bot.settings import Settings
from bot.store import STORE_FAULTS, AttemptRecord, Claim, Store, describe_fault, utcnow
from bot.store.queue import EXPIRED
from channels import AnyChannel, Exchanging, Outcome, Pulling, Pushing, RateLimit, Rendered

log = logging.getLogger("debunkbot.dispatch")
T = TypeVar("T")

# A lease must outlast one send: the send ends by its total deadline (http_timeout), and this margin
# covers handing the result to the store. A lease that runs out early costs a duplicate (same webhook-id).
LEASE_MARGIN = 2.0
# A claim taken ahead may wait for a free slot; when it leaves the queue it must still have a whole send plus
# this long to record the result, else its lease is renewed first (or, if it ran out, the claim is dropped).
RECORD_MARGIN = 1.0
STORE_BACKOFF_MAX = 30.0  # seconds between tries of a store that is locked, busy or gone
NOTICE_CACHE = 1000  # notices kept between claims (a claim in hand carries its own notice)


@dataclass(frozen=True)
class RetryPolicy:
    """The durable retry schedule: after failed try n, wait ``delays[n-1]`` seconds ± ``jitter``.

    >>> RetryPolicy((5, 300), jitter=0).delay_after(1, retry_after=None)
    5.0
    """

    delays: tuple[float, ...]
    jitter: float = 0.2
    retry_after_max: float = 3600.0

    @classmethod
    def from_settings(cls, settings: Settings, urgent: bool = False) -> RetryPolicy:
        """The normal schedule (DEBUNKBOT_RETRY_SCHEDULE), or the urgent lane's (DEBUNKBOT_URGENT_RETRY_SCHEDULE)."""
        return cls(settings.urgent_retry_delays if urgent else settings.retry_delays, settings.retry_jitter,
                   settings.retry_after_max)

    def delay_after(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait after failed try number ``attempt``; None when the schedule is exhausted.
        An outlet's ``Retry-After`` (up to ``retry_after_max``) makes it longer, never shorter."""
        if not 1 <= attempt <= len(self.delays):
            return None
        delay = self.delays[attempt - 1] * random.uniform(1 - self.jitter, 1 + self.jitter)
        return max(delay, min(retry_after, self.retry_after_max)) if retry_after is not None else delay


@dataclass(frozen=True)
class MatrixView:
    """What the dispatcher works out from one matrix, once: worked out again when a reload replaces it."""

    matrix: OutletMatrix
    rate_limits: dict[str, tuple[RateLimit, ...]]
    pulled: frozenset[str]  # feeds fetch: never claimed
    sending: frozenset[str]  # the outlets this process claims for
    options_key: dict[str, str]  # outlets with the same options share a rendering

    @classmethod
    def of(cls, matrix: OutletMatrix, sends: Collection[str]) -> MatrixView:
        """``sends``: the channels that send (the others' outlets fetch)."""
        pulled = frozenset(o.id for o in matrix.outlets if o.channel not in sends)
        return cls(matrix, matrix.rate_limits(), pulled, frozenset(o.id for o in matrix.outlets) - pulled,
                   {o.id: json.dumps(o.options, sort_keys=True, default=str) for o in matrix.outlets})


@dataclass(frozen=True)
class Ready:
    """A claim in hand, with its notice (None: the notice is gone from the store)."""

    claim: Claim
    notice: Notice | None
    published_at: datetime | None
    lease_until: float  # time.monotonic() by which the lease has run out, at the latest (taken before the claim)
    change: Change | None = None  # a correction or retraction this claim carries


class Dispatcher:
    def __init__(
        self,
        store: Store,
        matrix: OutletMatrix | LiveMatrix,
        settings: Settings,
        sender: Sender,
        channels: Mapping[str, AnyChannel] | None = None,
        on_recorded: Callable[[Sequence[AttemptRecord]], None] | None = None,
    ) -> None:
        self.store = store
        self.live = LiveMatrix.of(matrix)
        matrix = self.live.matrix
        self.settings = settings
        self.sender = sender
        self.channels = channels or matrix.channels
        self.policy = RetryPolicy.from_settings(settings)
        self.urgent_policy = RetryPolicy.from_settings(settings, urgent=True)
        self.on_recorded = on_recorded
        self.capacity = settings.concurrency
        # each channel's kind, looked up once (an isinstance of a Protocol costs ~15 µs a send)
        self._exchanging = {n: c for n, c in self.channels.items() if isinstance(c, Exchanging)}
        self._pushing = {n: c for n, c in self.channels.items()
                         if isinstance(c, Pushing) and n not in self._exchanging and not isinstance(c, Pulling)}
        self._view = MatrixView.of(matrix, self._exchanging.keys() | self._pushing.keys())
        self.health_policy = HealthPolicy.from_settings(settings)
        self.receipts = ReceiptLinks.from_settings(settings)  # None: posts carry no receipt link
        self._lease = timedelta(seconds=max(settings.lease_seconds, settings.http_timeout + LEASE_MARGIN))
        self._store_backoff = 0.0
        self._store_retry_at = 0.0  # time.monotonic() before which the store is left alone
        # SQLite wants one writer: every store call runs on this one thread, off the event loop.
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="debunkbot-store")
        self._wake = asyncio.Event()
        self._fatal: BaseException | None = None  # set by a task that failed in a way we cannot go on from
        self._flush_needed = asyncio.Event()
        self._recording = asyncio.Lock()  # held while results are written: a stop waits for the write
        self._in_flight: dict[asyncio.Task[None], float] = {}  # counted sends -> monotonic start, oldest first
        self._slow: set[asyncio.Task[None]] = set()  # sends past slow_send_after: not counted
        # Claimed ahead (as many again as concurrency, under lease): a freed slot starts the next send
        # at once instead of waiting for a store round trip.
        self._ready: deque[Ready] = deque()
        self._stale: list[Ready] = []  # left the queue with too little lease for a send: renew first
        self._left_matrix: list[int] = []  # claimed, then a reload took the outlet out: given back unsent
        self._unrecorded: list[AttemptRecord] = []
        # notices of recent claims, so a fan-out loads each once; a claim carries its own (Ready), so this
        # cache may forget a notice at any time without harm
        self._notices: OrderedDict[tuple[int, int], tuple[Notice, datetime]] = OrderedDict()  # (id, version)
        self._rendered: OrderedDict[tuple[Any, ...], Rendered] = OrderedDict()

    @property
    def matrix(self) -> OutletMatrix:
        """The live matrix: a reload replaces it, and the dispatcher follows at once."""
        return self.live.matrix

    @matrix.setter
    def matrix(self, matrix: OutletMatrix) -> None:
        self.live.replace(matrix)

    @property
    def view(self) -> MatrixView:
        """Rate limits, feeds and rendering keys of the live matrix (worked out again when it changes)."""
        if self._view.matrix is not self.live.matrix:
            self._view = MatrixView.of(self.live.matrix, self._exchanging.keys() | self._pushing.keys())
        return self._view

    @property
    def pulled(self) -> frozenset[str]:
        """The outlets that fetch their notices (feeds): never claimed."""
        return self.view.pulled

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    def wake(self) -> None:
        """New work may be due: claim now instead of at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event | None = None, until_idle: bool = False) -> None:
        """Send until ``stop`` is set, or (``until_idle``) until nothing is pending or scheduled."""
        stop = stop or asyncio.Event()
        freeze_start_up()
        flusher = asyncio.create_task(self._keep_running("the attempt recorder", self._flush_forever))
        watcher = asyncio.create_task(self._keep_running("the store watcher", self._watch_store))
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self._fatal is not None:
                    raise DispatchFailed(f"dispatch stopped: {self._fatal}") from self._fatal
                room = self._room()
                store_ok = time.monotonic() >= self._store_retry_at and not self._unrecorded_behind()
                if store_ok and self._stale:
                    await self._renew_stale()
                    continue
                if store_ok and self._left_matrix:
                    await self._give_back()
                if store_ok and (room >= max(1, self.capacity // 2) or (room > 0 and self._wake.is_set())):
                    self._wake.clear()
                    try:
                        if await self._claim_and_send(room):
                            continue
                    except STORE_FAULTS as exc:  # nothing was claimed, so nothing is sent
                        self._store_fault("claim", exc)
                next_due = None
                idle = not (self._in_flight or self._slow or self._ready or self._stale or self._unrecorded)
                if until_idle and store_ok and idle:
                    try:
                        next_due = await self.db(self.store.queue.next_due_at, (), self.view.sending)
                        if next_due is None:
                            return
                    except STORE_FAULTS as exc:
                        self._store_fault("look for due deliveries", exc)
                if next_due is not None:
                    wait = max(0.0, (next_due - utcnow()).total_seconds())
                else:
                    wait = max(self.settings.scan_interval, self._store_retry_at - time.monotonic())
                waker = asyncio.create_task(self._wake.wait())
                wait = min(wait, self.settings.scan_interval, self._next_slow_in())
                await asyncio.wait({waker, stopping}, timeout=max(0.01, wait), return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            stopping.cancel()
            watcher.cancel()
            if self._in_flight or self._slow:  # finish what is in flight within the grace period; give back the rest
                _, abandoned = await asyncio.wait({*self._in_flight, *self._slow}, timeout=self.settings.shutdown_grace)
                for task in abandoned:
                    task.cancel()
                if abandoned:
                    await asyncio.wait(abandoned)
            async with self._recording:  # never cut a write of results short: they would be lost and sent again
                flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await self._flush_before_exit()
            try:
                await self.db(self.store.queue.release_claims)
            except STORE_FAULTS as exc:
                log.error("could not give back claims (%s); they are reclaimed when their lease runs out",
                          describe_fault(exc))

    async def _keep_running(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop of the dispatcher for as long as the dispatcher runs.

        A loop that fails is logged with its traceback and started again after a back-off; none dies
        silently. A failure the dispatcher cannot go on from (DispatchFailed) stops the run instead.
        """
        backoff = 0.0
        while True:
            try:
                await loop()
                return
            except DispatchFailed as exc:
                self._fatal = exc
                self._wake.set()
                return
            except Exception:
                backoff = min(max(backoff * 2, 0.1), STORE_BACKOFF_MAX)
                log.exception("%s failed; starting it again in %.1fs", name, backoff)
                await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        """PostgreSQL: LISTEN for new work from any process and claim at once; polling stays the fallback."""
        import psycopg

        from bot.store import WORK_CHANNEL

        dsn = self.store.cluster.listen_dsn()
        assert dsn is not None
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {WORK_CHANNEL}")
                    self.wake()  # anything sent while we were not listening
                    async for _ in conn.notifies():
                        self.wake()
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", type(exc).__name__)
                await asyncio.sleep(self.settings.scan_interval)

    async def close(self) -> None:
        self._db_thread.shutdown(wait=True)

    async def _claim_and_send(self, room: int) -> int:
        view = self.view

        def claim() -> tuple[list[Claim], dict[tuple[int, int], tuple[Notice, datetime]], dict[int, Change]]:
            expired: dict[str, int] = {}
            claims = self.store.queue.claim(room, self.settings.per_outlet_concurrency, self._lease,
                                          rate_limits=view.rate_limits, outlets=view.sending, cancelled=expired)
            for ref, count in expired.items():
                log.info("notice %s expired: %d unsent %s cancelled", ref, count,
                         "delivery" if count == 1 else "deliveries")
            if not claims:
                return claims, {}, {}
            return claims, *self.store.queue.editions(claims, self._notices.keys())

        lease_until = time.monotonic() + self._lease.total_seconds()
        claims, loaded, changes = await self.db(claim)
        urgent: list[Ready] = []
        for c in claims:
            notice = self._notices.get((c.notice_id, c.version)) or loaded.get((c.notice_id, c.version))
            (urgent if c.urgent else self._ready).append(
                Ready(c, *(notice or (None, None)), lease_until, changes.get(c.delivery_id)))
        self._ready.extendleft(reversed(urgent))  # ahead of normal claims taken earlier
        self._notices.update(loaded)
        while len(self._notices) > NOTICE_CACHE:
            self._notices.popitem(last=False)
        self._start_ready()
        return len(claims)

    def _start_ready(self) -> None:
        needed = self.settings.http_timeout + RECORD_MARGIN
        while self._ready and self._counted() < self.capacity:
            ready = self._ready.popleft()
            if ready.claim.outlet_id not in self.view.sending:  # a reload took it out since the claim
                log.info("delivery %d not sent: outlet %s left the outlet matrix after it was claimed",
                         ready.claim.delivery_id, ready.claim.outlet_id)
                self._left_matrix.append(ready.claim.delivery_id)
                self._wake.set()
                continue
            left = ready.lease_until - time.monotonic()
            if left < needed:
                if left > 0:
                    self._stale.append(ready)  # renewed by the run loop before it is sent
                    self._wake.set()
                else:  # it may be someone else's by now: not sent; the store hands it out again
                    log.debug("the lease on delivery %d ran out before its send", ready.claim.delivery_id,
                              extra=_fields(ready.claim))
                continue
            task = asyncio.create_task(self._deliver(ready))
            self._in_flight[task] = time.monotonic()
            task.add_done_callback(self._sent)

    async def _give_back(self) -> None:
        """Give back the claims of outlets a reload took out, so they are sent at once if it brings them back."""
        ids, self._left_matrix = self._left_matrix, []
        try:
            await self.db(self.store.queue.release_claims, ids)
        except STORE_FAULTS as exc:  # their leases run out instead
            self._store_fault("give back claims", exc)

    async def _renew_stale(self) -> None:
        """Renew the leases of claims that waited too long for a slot, and send those still ours first."""
        stale, self._stale = self._stale, []
        lease_until = time.monotonic() + self._lease.total_seconds()
        try:
            renewed = await self.db(self.store.queue.renew_leases, [r.claim.delivery_id for r in stale], self._lease)
        except STORE_FAULTS as exc:  # not sent; their leases run out and the store hands them out again
            self._store_fault("renew leases", exc)
            return
        self._ready.extendleft(reversed([replace(r, lease_until=lease_until) for r in stale
                                         if r.claim.delivery_id in renewed]))
        self._start_ready()

    def _room(self) -> int:
        """How many more deliveries to claim: room for the sends and for as many again ready."""
        return 2 * self.capacity - self._counted() - len(self._ready) - len(self._stale)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task, None)
        self._slow.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # _deliver turns every failure into an attempt; reaching here is a bug: stop, don't hide it
            log.error("a send task failed", exc_info=exc)
            self._fatal = self._fatal or exc
        self._start_ready()
        if self._room() >= self.capacity // 2:
            self._wake.set()

    def _counted(self) -> int:
        """Sends that count against ``concurrency``.

        A send still waiting after ``slow_send_after`` seconds moves to a slow lane as large again,
        so a few hung outlets (each held to ``per_outlet_concurrency`` by the store) cannot take
        every slot for a whole timeout while the healthy outlets wait.
        """
        limit = time.monotonic() - self.settings.slow_send_after
        while self._in_flight and len(self._slow) < self.capacity:
            oldest = next(iter(self._in_flight))
            if self._in_flight[oldest] > limit:
                break
            del self._in_flight[oldest]
            self._slow.add(oldest)
        return len(self._in_flight)

    def _next_slow_in(self) -> float:
        """Seconds until the oldest counted send would move to the slow lane (inf if none)."""
        if len(self._slow) >= self.capacity:
            return float("inf")
        oldest = next(iter(self._in_flight.values()), None)
        return float("inf") if oldest is None else oldest + self.settings.slow_send_after - time.monotonic()

    async def _watch_store(self) -> None:
        """Wake when another process wrote to the store (a submit from the CLI, another worker).

        PostgreSQL tells us (LISTEN/NOTIFY); on SQLite we take cheap, frequent looks.
        """
        if self.store.postgres:
            await self._listen()
        while True:
            await asyncio.sleep(self.settings.wake_poll_interval)
            try:
                changed = await self.db(self.store.cluster.changed_since_last_look)
            except STORE_FAULTS:  # a busy store: the claim loop reports and backs off; look again later
                changed = False
            if changed:
                self._wake.set()

    async def _deliver(self, ready: Ready) -> None:
        claim = ready.claim
        try:
            record = await self._attempt(ready)
        except Exception as exc:  # a bug of ours; the delivery is retried on the schedule, and it is logged
            log.exception("unexpected error delivering to outlet %s", claim.outlet_id, extra=_fields(claim))
            record = self._record(claim, utcnow(), 0.0, Outcome("retry", f"internal error: {type(exc).__name__}"))
        self._unrecorded.append(record)
        self._flush_needed.set()

    async def _attempt(self, ready: Ready) -> AttemptRecord:
        claim, notice, published_at = ready.claim, ready.notice, ready.published_at
        started = utcnow()
        if claim.expires_at is not None and started >= claim.expires_at:  # claimed in time, but not sent in time
            return AttemptRecord(claim.delivery_id, claim.outlet_id, claim.attempt, started, 0.0, "cancelled",
                                 error=EXPIRED, trigger=claim.trigger, version=claim.version, carries=claim.carries)
        outlet = self.matrix.by_id.get(claim.outlet_id)
        if outlet is None:
            return self._record(claim, started, 0.0, Outcome(
                "failed", f"outlet {claim.outlet_id!r} is no longer in the outlet matrix"))
        if notice is None or published_at is None:
            return self._record(claim, started, 0.0, Outcome("failed", f"notice {claim.notice_id} is not in the store"))
        # Exchanging before Pushing: wechat_mp also builds its draft request alone, for previews
        exchanging, pushing = self._exchanging.get(outlet.channel), self._pushing.get(outlet.channel)
        channel = exchanging or pushing
        if channel is None:
            return self._record(claim, started, 0.0, Outcome(
                "failed", f"channel {outlet.channel!r} does not send; its outlets fetch"), outlet=outlet)
        secret = self.matrix.secret_for(outlet.id)
        try:
            rendered = self._rendered_for(claim, notice, published_at, channel, outlet, ready.change)
            request = pushing.build(rendered, outlet, secret, claim.webhook_id, started) if pushing else None
        except Exception as exc:
            # It would fail the same way on every try (a link too long for the platform, a template bug):
            # a failed attempt with the reason, never retried on the schedule.
            reason = _redact(f"{type(exc).__name__}: {exc}", outlet, secret)
            log.error("could not render notice %s for outlet %s: %s", notice.ref, outlet.id, reason,
                      extra=_fields(claim, notice.ref))
            return self._record(claim, started, 0.0, Outcome(
                "failed", f"could not render the notice for this outlet: {reason}"), outlet=outlet)
        clock = time.perf_counter()
        status: int | None = None
        body = b""
        state = None
        try:
            if exchanging is not None:
                async with asyncio.timeout(self.settings.http_timeout):  # the whole delivery, all its requests
                    answer = await exchanging.deliver(self.sender, rendered, outlet, secret, claim.webhook_id, started,
                                                      claim.channel_state or {})
                state = answer.state
            else:
                assert request is not None
                answer = await self.sender.send(request)  # under the same total deadline
            status, body = answer.status, answer.body
            request = answer.request or request  # an exchange's last request: its credentials are redacted
            outcome = channel.classify(answer.status, answer.headers, answer.body, attempt=claim.attempt)
        except TimeoutError:
            outcome = Outcome("retry", f"timed out after {self.settings.http_timeout:g}s")
        except SendFailed as exc:
            status, outcome = exc.status, Outcome("retry", str(exc))
        except Exception as exc:  # a bug in a channel must not kill the fan-out; it is logged and retried
            log.exception("unexpected error sending to outlet %s", outlet.id, extra=_fields(claim, notice.ref))
            outcome = Outcome("retry", f"internal error: {type(exc).__name__}: {exc}")
        latency = (time.perf_counter() - clock) * 1000
        return self._record(claim, started, latency, outcome, status, body, outlet, request, state)

    def _record(
        self, claim: Claim, started: datetime, latency_ms: float, outcome: Outcome,
        status: int | None = None, body: bytes = b"", outlet: Outlet | None = None,
        request: httpx.Request | None = None, channel_state: Mapping[str, Any] | None = None,
    ) -> AttemptRecord:
        result, error, next_at, exhausted = outcome.result, outcome.error, None, False
        if result == "retry":
            # a manual retry starts the schedule again from its first delay
            policy = self.urgent_policy if claim.urgent else self.policy
            delay = policy.delay_after(claim.attempt - claim.schedule_start, outcome.retry_after)
            if delay is None:
                result, exhausted = "failed", True
                error = f"{error}; retries exhausted after {claim.attempt} attempts"
            else:
                next_at = utcnow() + timedelta(seconds=delay)
        secret = self.matrix.secret_for(outlet.id) if outlet else None
        known = outlet or self.matrix.by_id.get(claim.outlet_id)
        return AttemptRecord(
            delivery_id=claim.delivery_id, outlet_id=claim.outlet_id, attempt=claim.attempt, started_at=started,
            latency_ms=latency_ms,
            outcome=result, http_status=status,
            error=_storable(_redact(error, outlet, secret, request) or "") or None,
            # redacted before it is cut, so no part of a secret survives at the cut
            response=_text((_redact(body.decode("utf-8", "replace"), outlet, secret, request) or "").encode(),
                           self.settings.response_max_bytes) or None,
            next_attempt_at=next_at, pause_outlet=claim.outlet_id if outcome.pause_outlet else None,
            trigger=claim.trigger, exhausted=exhausted,
            platform_code=None if outcome.code is None else str(outcome.code), channel=known.channel if known else "",
            version=claim.version, carries=claim.carries, channel_state=channel_state,
        )

    def _rendered_for(
        self, claim: Claim, notice: Notice, published_at: datetime, channel: AnyChannel, outlet: Outlet,
        change: Change | None = None,
    ) -> Rendered:
        # a change names the outlet's previous webhook-id: rendered per outlet; an ordinary post once per version
        # (a post with its receipt link is the delivery's own)
        receipt = receipt_for(self.receipts, channel.name, claim.delivery_id, claim.version,
                              claim.carries)
        key = (claim.notice_id, claim.version, channel.name, self.view.options_key[outlet.id],
               change and (change.kind, change.previous_version, change.previous_message_id), receipt)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = channel.render(notice, published_at, outlet.options, change=change,
                                                            receipt=receipt)
            while len(self._rendered) > 1000:
                self._rendered.popitem(last=False)
        return rendered

    async def _flush_forever(self) -> None:
        while True:
            await self._flush_needed.wait()
            self._flush_needed.clear()
            async with self._recording:
                await self._flush()
            if self._unrecorded:  # the store refused the batch: try again after the back-off
                await asyncio.sleep(max(0.0, self._store_retry_at - time.monotonic()))
                self._flush_needed.set()

    async def _flush_before_exit(self) -> None:
        deadline = time.monotonic() + max(self.settings.shutdown_grace, 1.0)
        await self._flush()
        while self._unrecorded and time.monotonic() < deadline:
            await asyncio.sleep(max(0.0, min(self._store_retry_at, deadline) - time.monotonic()))
            await self._flush()
        if self._unrecorded:
            log.error("the store stayed unavailable: %d sent results are not recorded; their leases run out "
                      "and they are sent again, with the same webhook-id", len(self._unrecorded))

    def _unrecorded_behind(self) -> bool:
        """Results wait for a store that refused them: claim nothing more until they are written."""
        return bool(self._unrecorded) and self._store_backoff > 0

    def _store_fault(self, doing: str, exc: Exception) -> None:
        self._store_backoff = min(max(self._store_backoff * 2, self.settings.scan_interval, 0.05), STORE_BACKOFF_MAX)
        self._store_retry_at = time.monotonic() + self._store_backoff
        log.warning("could not %s: %s; trying again in %.1fs", doing, describe_fault(exc), self._store_backoff)

    async def _flush(self) -> None:
        while self._unrecorded:
            batch, self._unrecorded = self._unrecorded, []
            try:
                await self.db(self.store.queue.record, batch, None, self.health_policy)
            except STORE_FAULTS as exc:  # keep the results; the leases keep the deliveries ours meanwhile
                self._unrecorded[:0] = batch
                self._store_fault("record attempts", exc)
                return
            except Exception as exc:  # the store refused what we wrote (a value it cannot take, a constraint)
                self._unrecorded[:0] = batch
                log.error("the store refused a batch of %d attempts (%s: %s); recording them one by one",
                          len(batch), type(exc).__name__, _one_line(exc))
                if not await self._record_one_by_one():
                    return
                continue
            if self._store_backoff:
                log.info("the store is back")
                self._store_backoff = 0.0
            if self.on_recorded:
                self.on_recorded(batch)
            if not (self._in_flight or self._slow or self._ready or self._unrecorded):
                self._wake.set()  # an until-idle run may be waiting to look again

    async def _record_one_by_one(self) -> bool:
        """Record each waiting result alone, so one the store refuses holds up no other.

        A refused result is recorded again without the outlet's answer (its error says why). If the store
        refuses even that, the result is given up (its lease runs out and it is sent again, with the same
        webhook-id: never taken as sent) and the dispatcher stops with DispatchFailed, since it cannot
        record what it sends. False on a store fault (locked, down): the rest waits for the back-off.
        """
        refused: list[tuple[AttemptRecord, Exception]] = []
        while self._unrecorded:
            record = self._unrecorded[0]
            try:
                try:
                    await self.db(self.store.queue.record, [record], None, self.health_policy)
                except STORE_FAULTS:
                    raise
                except Exception as exc:
                    log.error("the store refused the attempt for outlet %s (%s: %s); recording it without "
                              "the outlet's answer", record.outlet_id, type(exc).__name__, _one_line(exc),
                              extra=log_fields(outlet_id=record.outlet_id, delivery_id=record.delivery_id,
                                               attempt=record.attempt, trigger=record.trigger))
                    record = replace(record, response=None, error=_storable(
                        f"{record.error or ''}{'; ' if record.error else ''}the outlet's answer could not be "
                        f"stored ({type(exc).__name__})"))
                    try:
                        await self.db(self.store.queue.record, [record], None, self.health_policy)
                    except STORE_FAULTS:
                        raise
                    except Exception as again:
                        refused.append((record, again))
                        self._unrecorded.pop(0)
                        continue
            except STORE_FAULTS as exc:
                self._store_fault("record attempts", exc)
                return False
            self._unrecorded.pop(0)
            if self.on_recorded:
                self.on_recorded([record])
        if refused:
            record, exc = refused[0]
            raise DispatchFailed(
                f"the store refuses to record attempts ({type(exc).__name__}: {_one_line(exc)}); "
                f"{len(refused)} sent results are not recorded (outlets "
                f"{', '.join(sorted({r.outlet_id for r, _ in refused}))}): their leases run out and they are sent "
                "again") from exc
        return True


@functools.cache
def freeze_start_up() -> None:
    """Once per process, before the first send (the daemon: before its first jobs): what start-up made (modules,
    the matrix, the web app: some 100,000 objects that live as long as the process) leaves the garbage collector's
    care. Its full passes walked all of it again and again during a fan-out: 0.4 s of CPU in 5,000 deliveries
    (bench/suite.py F1), and one of them, 50-90 ms, came in the first start-up job of a daemon with 2,000 outlets."""
    gc.freeze()


class DispatchFailed(RuntimeError):
    """The dispatcher cannot go on (the store refuses every way of recording a result): the run stops,
    and the daemon exits non-zero. Unrecorded deliveries are sent again when their leases run out."""


def _fields(claim: Claim, notice_ref: str | None = None) -> dict[str, Any]:
    """The log fields of a record about this claim's attempt (JSON lines)."""
    return log_fields(notice_ref=notice_ref, outlet_id=claim.outlet_id, delivery_id=claim.delivery_id,
                      attempt=claim.attempt, trigger=claim.trigger)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]


def _storable(text: str) -> str:
    """Text any store takes: PostgreSQL refuses NUL in text and every backend wants valid UTF-8
    (lone surrogates from a lenient decoder are not); both become U+FFFD or '?'."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _text(body: bytes, limit: int) -> str:
    """At most ``limit`` bytes of an answer as text any store takes, never cut inside a UTF-8 character."""
    text = body[:limit].decode("utf-8", errors="ignore") if len(body) > limit else body.decode("utf-8", "replace")
    return _storable(text)


def _redact(
    text: str | None, outlet: Outlet | None, secret: str | None, request: httpx.Request | None = None
) -> str | None:
    """Secrets never reach the delivery log, even when an outlet echoes the request back: not the secret (each
    part of TOKEN:SECRET), and not a credential of the request we sent (``_credentials``)."""
    if not text:
        return text
    for part in _secret_parts(secret):
        text = text.replace(part, "[secret]")
    if outlet and outlet.url and "?" in outlet.url:
        text = text.replace(outlet.url.split("?", 1)[1], "[query]")
    if request is not None:
        for value, label in _credentials(request):
            text = text.replace(value, label)
        if request.url.query:  # as echoed in whatever encoding (a client may requote %2F as /): by name
            names = "|".join(re.escape(name) for name in request.url.params)
            text = re.sub(rf"(?<![\w%])({names})=[^&\s\"'\\<>]+", r"\1=[query]", text)
    return text


@functools.lru_cache(maxsize=8192)
def _secret_parts(secret: str | None) -> tuple[str, ...]:
    """What of an outlet's secret is redacted, longest first: the whole, each part of TOKEN:SIGNING_SECRET
    (channels.base) and each without its ``whsec_``; worked out once per secret, not once per send."""
    parts = {secret, *secret.split(":")} if secret else set()
    parts |= {part.removeprefix("whsec_") for part in parts}
    return tuple(part for part in sorted(parts, key=len, reverse=True) if len(part) >= 6)


# Body fields that carry a credential in a signed request (Feishu/Lark put timestamp and sign in the body:
# https://open.feishu.cn/document/client-docs/bot-v3/add-custom-bot).
CREDENTIAL_FIELDS = ("sign", "signature", "secret", "access_token", "token")
# as they show in a JSON body: one search of the body (five searches were 1% of a delivery's CPU)
_CREDENTIAL_KEY = re.compile(rb'"(?:%s)"' % b"|".join(name.encode() for name in CREDENTIAL_FIELDS))


def _credentials(request: httpx.Request) -> list[tuple[str, str]]:
    """The credentials of a request we built, each as an echo may show it (raw and decoded), longest first:
    every query value (access tokens, keys, DingTalk's timestamp and sign:
    https://open.dingtalk.com/document/robots/customize-robot-security-settings), the Standard Webhooks
    signature, and a JSON body's credential fields."""
    found: dict[str, str] = {}
    query = request.url.query
    for part in query.decode("ascii", "replace").split("&") if query else ():
        raw = part.partition("=")[2]
        found |= dict.fromkeys({raw, unquote_plus(raw), unquote(raw)}, "[query]")
    for signature in request.headers.get("webhook-signature", "").split():
        found |= dict.fromkeys({signature, signature.removeprefix("v1,")}, "[signature]")
    content = request.content
    if _CREDENTIAL_KEY.search(content):
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if isinstance(body, dict):
            found |= dict.fromkeys((str(body[k]) for k in CREDENTIAL_FIELDS if k in body), "[signature]")
    return sorted(((v, label) for v, label in found.items() if len(v) >= 6), key=lambda item: -len(item[0]))
