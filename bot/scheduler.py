"""The running bot: APScheduler is the clock, the dispatcher does the sending.

Jobs: scan the inbox, release embargoed notices whose publish_at has come, and wake the
dispatcher (a poll that backs up the immediate wake-ups). Stops cleanly on SIGINT/SIGTERM.

    >>> await Daemon(settings, store, matrix, regions, client).run(until_idle=True)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import UTC

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.dispatch import Dispatcher
from bot.intake import FileResult, scan_inbox
from bot.outlets import OutletMatrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import AttemptRecord, Store

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
        self.stop = asyncio.Event()

    async def run(self, until_idle: bool = False) -> None:
        scheduler = AsyncIOScheduler(timezone=UTC)
        every = self.settings.scan_interval
        if self.cluster_jobs:
            # Cluster-wide jobs: every process ticks, only the leader (see Store.lead) does the work.
            if self.settings.inbox:
                scheduler.add_job(self.scan_inbox, "interval", seconds=every, id="scan-inbox",
                                  max_instances=1, coalesce=True)
            scheduler.add_job(self.release_embargoed, "interval", seconds=min(every, 1.0), id="release-embargoed",
                              max_instances=1, coalesce=True)
        scheduler.add_job(self.dispatcher.wake, "interval", seconds=every, id="dispatch-due", coalesce=True)
        scheduler.start()
        try:
            if self.cluster_jobs:
                # files already waiting count before an until-idle run decides it is idle
                await self.scan_inbox()
                await self.release_embargoed()
            await self.dispatcher.run(self.stop, until_idle=until_idle)
        finally:
            scheduler.shutdown(wait=False)
            await self.dispatcher.close()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)

    async def scan_inbox(self) -> list[FileResult]:
        if self.settings.inbox is None or not await self.dispatcher.db(self.store.lead):
            return []
        results = await self.dispatcher.db(scan_inbox, self.settings.inbox, self.store, self.matrix, self.regions)
        for result in results:
            if result.ok:
                created = sum(a.created for a in result.added)
                log.info("accepted %s: %d new notice(s)", result.path.name, created)
            else:
                log.warning("rejected %s", result.error)
        if any(r.ok for r in results):
            self.dispatcher.wake()
        return results

    async def release_embargoed(self) -> None:
        if not await self.dispatcher.db(self.store.lead):
            return
        released = await self.dispatcher.db(self.store.release_due)
        if released:
            log.info("released %d embargoed deliveries", released)
            self.dispatcher.wake()
