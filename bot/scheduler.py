"""The running bot: APScheduler is the clock, the dispatcher does the sending.

Jobs: scan the inbox, release embargoed notices whose publish_at has come, wake the
dispatcher (a poll that backs up the immediate wake-ups), send operator alerts, prune old
attempts, resolve the matrix's regions again when the date changes in Chongqing, and follow the
outlet matrix (a reload asked by SIGHUP, or done by another process: bot.matrix). Stops
cleanly on SIGINT/SIGTERM. A store that is locked, busy or gone fails a job's run, never the
daemon: the next run tries again. A job that fails any other way is logged with its traceback
and runs again at its next interval; the dispatcher, which the daemon awaits, ends the daemon
with a non-zero exit if it fails.

    >>> await Daemon(settings, store, matrix, regions, client).run(until_idle=True)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
    SchedulerEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from tenacity import AsyncRetrying, RetryCallState, RetryError, retry_if_exception_type, wait_exponential

from bot.alerts import Alerter
from bot.dispatch import STORE_BACKOFF_MAX, Dispatcher, freeze_start_up
from bot.http import Sender
from bot.intake import FileResult, scan_inbox_off_loop
from bot.logs import log_fields
from bot.matrix import LiveMatrix
from bot.outlets import OutletMatrix, resolve_regions
from bot.receipts import Reminders
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import (
    STORE_FAULTS,
    AttemptRecord,
    Edition,
    FanOut,
    Store,
    describe_fault,
    utcnow,
)

log = logging.getLogger("debunkbot")

CHONGQING = ZoneInfo("Asia/Shanghai")  # dates that decide meaning (which regions exist) are Chongqing dates


def chongqing_today() -> date:
    return datetime.now(CHONGQING).date()


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        matrix: OutletMatrix | LiveMatrix,
        regions: RegionTable,
        client: Sender,
        on_recorded: Callable[[Sequence[AttemptRecord]], None] | None = None,
        cluster_jobs: bool = True,
        stop: asyncio.Event | None = None,
        today: Callable[[], date] = chongqing_today,
    ) -> None:
        self.cluster_jobs = cluster_jobs  # False for `debunkbot worker`: dispatch only
        self.settings = settings
        self.store = store
        store.review.stages = settings.review_stages  # the inbox keeps drafts when notices are reviewed
        self.regions = regions
        self.today = today
        self.on_recorded = on_recorded
        self.live = LiveMatrix.of(matrix)  # the one matrix every part of the daemon reads
        self.dispatcher = Dispatcher(store, self.live, settings, client, on_recorded=self._recorded)
        self.report = AttemptReport()
        self.fan_outs = FanOutReport(since=utcnow())
        self.alerter = Alerter(store, self.live, settings, client, db=self.dispatcher.db)
        links = self.dispatcher.receipts
        self.reminders = Reminders(store, self.live, settings, client, links, self.dispatcher.db) if links else None
        self.regions_day: date | None = None
        self.stop = stop or asyncio.Event()
        self.scheduler: AsyncIOScheduler | None = None
        self.max_wait: float | None = None
        self.gave_up = False  # an until-idle run stopped at max_wait
        self._waiting_for = ""

    @property
    def matrix(self) -> OutletMatrix:
        return self.live.matrix

    @matrix.setter
    def matrix(self, matrix: OutletMatrix) -> None:
        self.live.replace(matrix)

    async def run(self, until_idle: bool = False, max_wait: float | None = None,
                  others_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        """Send until stopped, or (``until_idle``) until nothing is due; ``max_wait``: an until-idle run stops
        instead of waiting longer than that for the next thing due (an open breaker, the retry schedule).
        ``others_stop``: once an until-idle run is idle, stops the processes sending beside this one (`run
        --processes`), before the last lines: what they did is in them, and the last line comes last."""
        # APScheduler's own rules: one run of a job at a time, missed runs coalesced into one, and a run that
        # comes late still runs. APScheduler 3 pauses a job added with next_run_time=None, so it is given only
        # to run a job at once.
        scheduler = self.scheduler = AsyncIOScheduler(
            timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        running = _RunningJobs(scheduler)
        tick, now = self.settings.scan_interval, datetime.now(UTC)

        def every(job: Callable[[], Awaitable[Any]], seconds: float, at_once: bool = False) -> None:
            first = {"next_run_time": now} if at_once else {}
            scheduler.add_job(job, "interval", seconds=seconds, id=job.__name__, **first)

        self.resolve_regions()
        if self.cluster_jobs:
            # Cluster-wide jobs: every process ticks, only the leader (see Cluster.lead) does the work.
            if self.settings.inbox:
                every(self.scan_inbox, tick)
            every(self.release_embargoed, min(tick, 1.0))
            every(self.send_alerts, tick, at_once=True)
            if self.reminders is not None:
                every(self.send_reminders, tick)
            every(self.prune_attempts, 3600, at_once=True)
        # the day's regions: at midnight in Chongqing, and every hour in case the machine slept through midnight
        # Jobs are coroutines: APScheduler runs a plain function on a thread, and the daemon's state is the loop's.
        async def resolve_regions() -> None:
            self.resolve_regions()

        async def dispatch_due() -> None:
            self.dispatcher.wake()

        scheduler.add_job(resolve_regions, "cron", hour="*", timezone=CHONGQING, id="resolve_regions")
        every(dispatch_due, tick)
        every(self.follow_matrix, tick, at_once=True)
        every(self.report_attempts, tick)
        every(self.save_store_errors, tick)
        if until_idle:
            self.max_wait = max_wait
            every(self.report_waiting, tick)
        freeze_start_up()
        scheduler.start()
        try:
            if self.cluster_jobs:  # files already waiting count before an until-idle run decides it is idle
                for job in (self.adopt_matrix, self.scan_inbox, self.release_embargoed):
                    try:
                        await job()
                    except Exception:
                        log.exception("job %s failed at start-up; it runs again at its next interval", job.__name__)
            await self.dispatcher.run(self.stop, until_idle=until_idle)
            if until_idle:
                if others_stop is not None:
                    await others_stop()
                await self.report_attempts()  # the last sends' lines come before the last line
                left = await self.dispatcher.db(self.outstanding)
                if self.gave_up:
                    log.info("stopped waiting (--max-wait %gs): %s", max_wait, left.describe())
                else:
                    log.info("idle: %s", left.describe())
        finally:
            # APScheduler 3's AsyncIOExecutor cannot wait on shutdown: shutdown(wait=True) cancels coroutine jobs
            # in progress (apscheduler/executors/asyncio.py, "There is no way to honor wait=True"). So: no new
            # runs, then the runs in progress get the grace period to finish, then shutdown.
            scheduler.pause()
            await running.finished(self.settings.shutdown_grace)
            scheduler.shutdown(wait=False)
            await self.report_attempts()
            await self.save_store_errors()
            await self.dispatcher.close()

    def _recorded(self, batch: Sequence[AttemptRecord]) -> None:
        self.report.unreported.extend(batch)
        if self.on_recorded:
            self.on_recorded(batch)

    async def report_attempts(self) -> None:
        """Log what this process's recorded attempts did: each failed attempt, each delivery that ends failed,
        and with -v every attempt; then, in the leading process, each notice, correction and retraction once every
        outlet concerned had its first try of it, whichever process made it."""
        batch, self.report.unreported = self.report.unreported, []
        unknown = {r.delivery_id for r in batch} - self.report.refs.keys()
        try:
            if unknown:
                await self.dispatcher.db(self.report.look_up, self.store, unknown)
        except STORE_FAULTS:  # the dispatcher says the store is sick; these are logged at the next run
            self.report.unreported[:0] = batch
            return
        self.report.log(batch)
        if not self.cluster_jobs:
            return
        with contextlib.suppress(*STORE_FAULTS):  # looked at again at the next run
            for f in await self.dispatcher.db(self.fan_outs.look, self.store, self.dispatcher.pulled):
                log.info("%s fanned out to %d outlet(s) in %.2fs: %d delivered, %d to retry, %d failed", f.subject,
                         f.outlets, f.seconds, f.outcomes.get("delivered", 0), f.outcomes.get("retry", 0),
                         f.outcomes.get("failed", 0), extra=log_fields(notice_ref=f.ref, duration_ms=f.seconds * 1000,
                                                                       version=f.edition.version, carries=f.carries))

    async def save_store_errors(self) -> None:
        """Add the store errors this process saw to the store's count (/metrics), once it answers again. With
        none to add, no store call is made."""
        if self.store.errors.unsaved:
            with contextlib.suppress(*STORE_FAULTS):  # still unavailable: kept for the next tick
                await self.dispatcher.db(self.store.errors.save)

    def outstanding(self) -> Outstanding:
        """Store thread: what is left, and what each part waits for."""
        return outstanding(self.store, self.dispatcher.pulled, utcnow())

    async def report_waiting(self) -> None:
        """An until-idle run says what it waits for, when that changes, and stops at max_wait."""
        try:
            left = await self.dispatcher.db(self.outstanding)
        except STORE_FAULTS:
            return  # the dispatcher reports the store's trouble
        now = utcnow()
        next_at = left.next_send_at()
        if left.due.count or next_at is None or next_at <= now:
            self._waiting_for = ""
            return
        wait = (next_at - now).total_seconds()
        if self.max_wait is not None and wait > self.max_wait:
            self.gave_up = True
            self.stop.set()
            return
        what = left.describe()
        if what != self._waiting_for:
            self._waiting_for = what
            log.info("waiting %.0fs, until %s: %s", wait, next_at.isoformat(timespec="seconds"), what)

    def install_signal_handlers(self) -> None:
        install_signal_handlers(self.stop)

    async def adopt_matrix(self) -> None:
        """At start-up: outlets the store knows and this matrix lacks have their pending deliveries held
        ("removed from matrix"); outlets in it that a reload had taken out are back."""
        try:
            await self.dispatcher.db(self.store.matrix.adopt, [o.id for o in self.matrix.outlets])
        except STORE_FAULTS as exc:
            log.warning("the store's list of removed outlets was not brought up to date: %s", describe_fault(exc))

    async def follow_matrix(self) -> None:
        """Do a reload asked for (SIGHUP), or follow one another process did (bot.matrix)."""
        try:
            changes = await self.live.look(self.store, self.dispatcher.db)
        except STORE_FAULTS as exc:
            log.warning("could not look for a reloaded outlet matrix: %s; looking again at the next interval",
                        describe_fault(exc))
            return
        if changes is not None:
            self.regions_day = self.today()  # a reload resolves the regions on the day it reads the file
            self.dispatcher.wake()  # an outlet that came back has deliveries due

    def resolve_regions(self) -> None:
        """Resolve the outlets' regions on today's Chongqing date, if it changed: a district merged into
        another from a date (江北区 into 两江新区 on 2026-01-25) routes its notices to its successor's outlets."""
        day = self.today()
        if day == self.regions_day:
            return
        outlets = []
        for outlet in self.matrix.outlets:
            resolved, problems = resolve_regions(outlet, self.regions, day)
            for fld, problem in problems:
                log.warning("outlet %s keeps its %s as it was: %s", outlet.id, fld, problem,
                            extra=log_fields(outlet_id=outlet.id))
            outlets.append(resolved if not problems else outlet)
        pairs = list(zip(self.matrix.outlets, outlets, strict=True))
        if any(old is not new for old, new in pairs):
            self.matrix = dataclasses.replace(self.matrix, outlets=tuple(outlets))
        for old, new in pairs:
            if old.region != new.region:
                log.info("outlet %s: region %s is %s from %s (Chongqing date)", old.id, old.region, new.region, day,
                         extra=log_fields(outlet_id=old.id))
            if old.regions != new.regions:
                log.info("outlet %s: regions filter %s is %s from %s (Chongqing date)", old.id,
                         "、".join(old.regions or ()), "、".join(new.regions or ()), day,
                         extra=log_fields(outlet_id=old.id))
        self.regions_day = day

    async def scan_inbox(self) -> list[FileResult]:
        if self.settings.inbox is None:
            return []
        try:
            if not await self.dispatcher.db(self.store.cluster.lead):
                return []
            results = await scan_inbox_off_loop(self.settings.inbox, self.store, lambda: self.matrix, self.regions,
                                                self.settings.max_notices_per_file, self.dispatcher.db)
        except STORE_FAULTS as exc:
            log.warning("inbox not scanned: %s; files stay in the inbox", describe_fault(exc))
            return []
        for result in results:
            if result.ok:
                created = sum(a.created for a in result.added)
                log.info("accepted %s: %d new notice(s)", result.path.name, created)
            elif result.deferred:
                log.warning("kept in the inbox: %s", result.error)
            else:
                log.warning("rejected %s", result.error)
        if any(r.ok for r in results):
            self.dispatcher.wake()
        return results

    async def release_embargoed(self) -> None:
        try:
            if not await self.dispatcher.db(self.store.cluster.lead):
                return
            released = await self.dispatcher.db(self.store.queue.release_due)
        except STORE_FAULTS as exc:
            log.warning("embargoes not checked: %s", describe_fault(exc))
            return
        if released:
            log.info("released %d embargoed deliveries", released)
            self.dispatcher.wake()

    async def send_alerts(self) -> None:
        try:
            if await self.dispatcher.db(self.store.cluster.lead):
                await self.alerter.tick()
        except STORE_FAULTS as exc:
            log.warning("operator alerts not checked: %s", describe_fault(exc))

    async def send_reminders(self) -> None:
        """Receipts (bot.receipts): escalate notices whose publish_within window ended with districts silent, and
        remind those halfway through it. Every run process does it: the store's claims make each happen once."""
        assert self.reminders is not None
        try:
            raised, _ = await self.reminders.tick()
        except STORE_FAULTS as exc:
            log.warning("receipt reminders not checked: %s", describe_fault(exc))
            return
        if raised:
            await self.send_alerts()

    async def prune_attempts(self) -> None:
        cutoff = utcnow() - timedelta(days=self.settings.attempt_retention_days)
        try:
            if not await self.dispatcher.db(self.store.cluster.lead):
                return
            pruned = await self.dispatcher.db(self.store.queue.prune_attempts, cutoff)
        except STORE_FAULTS as exc:
            log.warning("old attempts not pruned: %s", describe_fault(exc))
            return
        if pruned:
            log.info("pruned %d attempts older than %g days", pruned, self.settings.attempt_retention_days)


@dataclasses.dataclass
class AttemptReport:
    """Turns batches of this process's recorded attempts into log lines, naming each notice by its ref."""

    unreported: list[AttemptRecord] = dataclasses.field(default_factory=list)
    refs: OrderedDict[int, tuple[int, str]] = dataclasses.field(default_factory=OrderedDict)  # delivery -> notice

    def look_up(self, store: Store, delivery_ids: set[int]) -> None:
        """Store thread: the notice and ref of these deliveries."""
        for r in store.log.notices_of(delivery_ids):
            self.refs[r.id] = (r.notice_id, r.ref)
        while len(self.refs) > 100_000:
            self.refs.popitem(last=False)

    def log(self, batch: Sequence[AttemptRecord]) -> None:
        verbose = log.isEnabledFor(logging.DEBUG)  # else a delivered attempt makes no record: no fields to build
        for r in batch:
            notice_id, ref = self.refs.get(r.delivery_id, (0, f"delivery {r.delivery_id}"))
            where = f"{ref} to {r.outlet_id}"
            status = f"HTTP {r.http_status}" if r.http_status else ""
            reason = r.error if r.error and r.error.startswith(status) else ": ".join(filter(None, (status, r.error)))
            fields = log_fields(notice_ref=ref if notice_id else None, outlet_id=r.outlet_id, delivery_id=r.delivery_id,
                                attempt=r.attempt, trigger=r.trigger, duration_ms=r.latency_ms, outcome=r.outcome,
                                http_status=r.http_status) if r.outcome != "delivered" or verbose else {}
            if r.outcome == "delivered":
                log.debug("%s: attempt %d delivered (HTTP %s, %.0f ms)", where, r.attempt, r.http_status, r.latency_ms,
                          extra=fields)
            elif r.outcome == "cancelled":
                log.info("%s: not sent, cancelled (%s)", where, r.error, extra=fields)
            elif r.outcome == "retry":
                when = r.next_attempt_at.isoformat(timespec="seconds") if r.next_attempt_at else "later"
                log.warning("%s: attempt %d failed: %s; next try at %s", where, r.attempt, reason, when, extra=fields)
            else:
                log.error("%s: delivery failed after %d attempt(s): %s", where, r.attempt, reason, extra=fields)


ATTEMPTS_LOOKED_BACK = 500  # PostgreSQL hands out ids before commit: a try may show up after one with a higher id
EDITIONS_KEPT = 10_000  # reported editions remembered: their first tries leave the look-back long before


@dataclasses.dataclass
class FanOutReport:
    """The leading process's `REF fanned out to N outlet(s) in T s: …` lines, one for each edition of a notice: the
    notice as first published (`REF fanned out …`), each correction (`REF correction v2 fanned out …`) and its
    retraction (`REF retraction fanned out …`). Counted from the store: each delivery's first try of the edition
    once, whichever process made it (`run --processes N`, workers); an edition's line once no outlet waits for its
    first try of it. A correction counts the outlets that had an earlier version and those that get the new one as
    their first post; a retraction, the outlets that received a version. An outlet never tried (cancelled: expired,
    or retracted first) is in no line.

    An edition is watched from a first try of it (found by attempt id: each look reads the attempts recorded since
    the last) until no delivery waits for its first try of it; at the first look (and after taking over the lead) it
    watches those still fanning out and those first tried since ``since``.
    """

    since: datetime  # first tries before this were reported by whoever led then
    after: int | None = None  # the newest attempt at the last look; None: not leading
    watching: set[Edition] = dataclasses.field(default_factory=set)
    done: dict[Edition, None] = dataclasses.field(default_factory=dict)  # reported (or before ``since``), oldest first

    def look(self, store: Store, pulled: frozenset[str]) -> list[FanOut]:
        """Store thread: the fan-outs complete since the last look (``pulled``: outlets that fetch instead)."""
        if not store.cluster.lead():
            self.after, self.since = None, utcnow()
            return []
        newest = store.log.last_attempt_id()
        if self.after is None:
            self.watching = (store.log.fanning_out(None, pulled)
                             | store.log.first_tried_since(store.db.to_store_time(self.since), pulled))
            # tries the next look reads again (the look-back): what is not watched now was for whoever led to report
            self._remember(store.log.first_tried_after(newest - ATTEMPTS_LOOKED_BACK, pulled) - self.watching)
        else:
            self.watching |= store.log.first_tried_after(self.after - ATTEMPTS_LOOKED_BACK, pulled) - self.done.keys()
        self.after = newest
        settled = self.watching - store.log.fanning_out(self.watching, pulled) if self.watching else set()
        complete = store.log.fan_outs(settled, pulled)
        self.watching -= settled  # only now: a store fault above leaves them to the next look
        self._remember(settled)
        return complete

    def _remember(self, editions: set[Edition]) -> None:
        self.done.update(dict.fromkeys(editions))
        while len(self.done) > EDITIONS_KEPT:
            del self.done[next(iter(self.done))]


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _ids(outlets: set[str]) -> str:
    names = sorted(outlets)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@dataclasses.dataclass
class Waiting:
    count: int = 0
    outlets: set[str] = dataclasses.field(default_factory=set)
    until: datetime | None = None  # when the first of them comes due

    def add(self, count: int, outlet_id: str, until: datetime | None = None) -> None:
        self.count += count
        self.outlets.add(outlet_id)
        if until is not None:
            self.until = min(self.until or until, until)


@dataclasses.dataclass
class Outstanding:
    """Deliveries not yet settled, by what they wait for."""

    due: Waiting = dataclasses.field(default_factory=Waiting)  # being sent, or held back by a rate limit
    breaker: Waiting = dataclasses.field(default_factory=Waiting)  # an open breaker's cooldown
    retry: Waiting = dataclasses.field(default_factory=Waiting)  # the retry schedule
    embargo: Waiting = dataclasses.field(default_factory=Waiting)  # publish_at not reached
    paused: Waiting = dataclasses.field(default_factory=Waiting)  # an operator resumes the outlet
    removed: Waiting = dataclasses.field(default_factory=Waiting)  # a reload brings the outlet back
    fetch: Waiting = dataclasses.field(default_factory=Waiting)  # feed outlets fetch them

    def next_send_at(self) -> datetime | None:
        """When the next delivery a sender waits for comes due (breaker cooldown or retry schedule)."""
        times = [w.until for w in (self.breaker, self.retry) if w.count and w.until]
        return min(times) if times else None

    def describe(self) -> str:
        def at(when: datetime | None) -> str:
            return when.isoformat(timespec="seconds") if when else "?"

        parts = []
        if self.due.count:
            parts.append(f"{_n(self.due.count, 'delivery', 'deliveries')} due now ({_ids(self.due.outlets)})")
        if self.breaker.count:
            parts.append(f"{_n(self.breaker.count, 'delivery', 'deliveries')} held by an open breaker until "
                         f"{at(self.breaker.until)} ({_ids(self.breaker.outlets)}; `debunkbot outlets resume ID` "
                         "closes it)")
        if self.retry.count:
            parts.append(f"{_n(self.retry.count, 'delivery', 'deliveries')} on the retry schedule, next at "
                         f"{at(self.retry.until)} ({_ids(self.retry.outlets)})")
        if self.embargo.count:
            parts.append(f"{_n(self.embargo.count, 'delivery', 'deliveries')} embargoed, the first until "
                         f"{at(self.embargo.until)}")
        if self.paused.count:
            parts.append(f"{_n(self.paused.count, 'delivery', 'deliveries')} at paused outlets "
                         f"({_ids(self.paused.outlets)}; `debunkbot outlets resume ID`)")
        if self.removed.count:
            parts.append(f"{_n(self.removed.count, 'delivery', 'deliveries')} held: removed from matrix "
                         f"({_ids(self.removed.outlets)}; a matrix reload that brings them back sends them)")
        if self.fetch.count:
            verb = "waits" if self.fetch.count == 1 else "wait"
            parts.append(f"{_n(self.fetch.count, 'delivery', 'deliveries')} {verb} for a fetch "
                         f"({_ids(self.fetch.outlets)})")
        return "; ".join(parts) if parts else "nothing left to send"


def outstanding(store: Store, pulled: frozenset[str], now: datetime) -> Outstanding:
    """Deliveries not yet settled, grouped per outlet and by what they wait for (one grouped query)."""
    rows = store.log.unsettled()
    left = Outstanding()
    for r in rows:
        if r.embargoed:
            left.embargo.add(r.count, r.outlet_id, r.publish_at)
        elif r.removed_at is not None:
            left.removed.add(r.count, r.outlet_id)
        elif r.outlet_id in pulled:
            left.fetch.add(r.count, r.outlet_id)
        elif r.paused_at is not None or r.status == "held":
            left.paused.add(r.count, r.outlet_id)
        elif r.open_until is not None and r.open_until > now:
            left.breaker.add(r.count, r.outlet_id, max(r.open_until, r.next_at or r.open_until))
        elif r.next_at is not None and r.next_at > now:
            left.retry.add(r.count, r.outlet_id, r.next_at)
        else:
            left.due.add(r.count, r.outlet_id)
    return left


class _RunningJobs:
    """The scheduler's job runs in progress, followed through its own events; a failed run is logged here
    (with its traceback) and the job runs again at its next interval."""

    def __init__(self, scheduler: AsyncIOScheduler) -> None:
        self.scheduler = scheduler
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()
        scheduler.add_listener(self._event, EVENT_JOB_SUBMITTED | EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)

    def _event(self, event: SchedulerEvent) -> None:
        if isinstance(event, JobSubmissionEvent):
            self.count += 1
            self.idle.clear()
            return
        assert isinstance(event, JobExecutionEvent)
        self.count -= 1
        if self.count <= 0:
            self.idle.set()
        if event.exception is not None:
            job = self.scheduler.get_job(event.job_id)
            when = job.next_run_time if job else None
            again = f"; it runs again at {when.isoformat(timespec='seconds')}" if when else ""
            log.error("job %s failed: %s: %s%s", event.job_id, type(event.exception).__name__, event.exception, again,
                      exc_info=(type(event.exception), event.exception, event.exception.__traceback__))

    async def finished(self, grace: float) -> None:
        try:
            await asyncio.wait_for(self.idle.wait(), timeout=max(grace, 0.1))
        except TimeoutError:
            log.warning("%d job run(s) still going after %gs; they are cancelled", self.count, grace)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM both ask for the same clean stop."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # A send-only process starts with both blocked (bot.processes), so a stop asked while it was starting waits
    # for these handlers, and it stops cleanly rather than die: it comes now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


async def open_store(url: str, stop: asyncio.Event) -> Store | None:
    """Open the store, waiting for a database that is not up yet: back-off up to 30 s, a log line every try.
    None when asked to stop first."""

    async def nap(seconds: float) -> None:  # a stop ends the wait at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    def say(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("waiting for the store, try %d: %s; trying again in %.0fs", state.attempt_number,
                    describe_fault(exc) if isinstance(exc, Exception) else exc, state.upcoming_sleep)

    retrying = AsyncRetrying(retry=retry_if_exception_type(STORE_FAULTS),
                             wait=wait_exponential(multiplier=1, max=STORE_BACKOFF_MAX),
                             stop=lambda _: stop.is_set(), sleep=nap, before_sleep=say)
    try:
        return await retrying(asyncio.to_thread, Store.open, url)
    except RetryError:
        return None
