"""The running bot: APScheduler is the clock, the dispatcher does the sending.

Jobs: scan the inbox, release embargoed notices whose publish_at has come, wake the
dispatcher (a poll that backs up the immediate wake-ups), send operator alerts and prune old
attempts. Stops cleanly on SIGINT/SIGTERM. A store that is locked, busy or gone fails a job's
run, never the daemon: the next run tries again.

    >>> await Daemon(settings, store, matrix, regions, client).run(until_idle=True)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.alerts import Alerter
from bot.dispatch import Dispatcher
from bot.intake import FileResult, scan_inbox
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import STORE_FAULTS, AttemptRecord, Store, describe_fault, utcnow

log = logging.getLogger("debunkbot")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        matrix: OutletMatrix,
        regions: RegionTable,
        client: httpx.AsyncClient,
        on_recorded: Callable[[Sequence[AttemptRecord]], None] | None = None,
        cluster_jobs: bool = True,
    ) -> None:
        self.cluster_jobs = cluster_jobs  # False for `debunkbot worker`: dispatch only
        self.settings = settings
        self.store = store
        self.matrix = matrix
        self.regions = regions
        self.dispatcher = Dispatcher(store, matrix, settings, client, on_recorded=on_recorded)
        self.alerter = Alerter(store, matrix, settings, client, db=self.dispatcher.db)
        self.stop = asyncio.Event()

    async def run(self, until_idle: bool = False) -> None:
        scheduler = AsyncIOScheduler(timezone=UTC)
        running: set[asyncio.Task[Any]] = set()

        def every(job: Callable[[], Awaitable[Any]], seconds: float, first: datetime | None = None) -> None:
            async def tracked() -> None:  # so a stop waits for a job in progress instead of cancelling it
                task = asyncio.current_task()
                assert task is not None
                running.add(task)
                try:
                    await job()
                finally:
                    running.discard(task)

            # APScheduler 3 adds a job with next_run_time=None *paused*: pass it only to run at once
            when = {} if first is None else {"next_run_time": first}
            scheduler.add_job(tracked, "interval", seconds=seconds, id=job.__name__, max_instances=1, coalesce=True,
                              **when)

        tick, now = self.settings.scan_interval, datetime.now(UTC)
        if self.cluster_jobs:
            # Cluster-wide jobs: every process ticks, only the leader (see Store.lead) does the work.
            if self.settings.inbox:
                every(self.scan_inbox, tick)
            every(self.release_embargoed, min(tick, 1.0))
            every(self.send_alerts, tick, first=now)
            every(self.prune_attempts, 3600, first=now)
        scheduler.add_job(self.dispatcher.wake, "interval", seconds=tick, id="dispatch-due", coalesce=True)
        scheduler.start()
        try:
            if self.cluster_jobs:
                # files already waiting count before an until-idle run decides it is idle
                await self.scan_inbox()
                await self.release_embargoed()
            await self.dispatcher.run(self.stop, until_idle=until_idle)
        finally:
            scheduler.shutdown(wait=False)
            if running:
                await asyncio.wait(running)
            await self.dispatcher.close()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)

    async def scan_inbox(self) -> list[FileResult]:
        if self.settings.inbox is None:
            return []
        try:
            if not await self.dispatcher.db(self.store.lead):
                return []
            results = await self.dispatcher.db(scan_inbox, self.settings.inbox, self.store, self.matrix, self.regions)
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
            if not await self.dispatcher.db(self.store.lead):
                return
            released = await self.dispatcher.db(self.store.release_due)
        except STORE_FAULTS as exc:
            log.warning("embargoes not checked: %s", describe_fault(exc))
            return
        if released:
            log.info("released %d embargoed deliveries", released)
            self.dispatcher.wake()

    async def send_alerts(self) -> None:
        try:
            if await self.dispatcher.db(self.store.lead):
                await self.alerter.tick()
        except STORE_FAULTS as exc:
            log.warning("operator alerts not checked: %s", describe_fault(exc))

    async def prune_attempts(self) -> None:
        cutoff = utcnow() - timedelta(days=self.settings.attempt_retention_days)
        try:
            if not await self.dispatcher.db(self.store.lead):
                return
            pruned = await self.dispatcher.db(self.store.prune_attempts, cutoff)
        except STORE_FAULTS as exc:
            log.warning("old attempts not pruned: %s", describe_fault(exc))
            return
        if pruned:
            log.info("pruned %d attempts older than %g days", pruned, self.settings.attempt_retention_days)
