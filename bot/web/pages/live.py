"""The live matrix: one poller per notice, shared by every open matrix page of it, and at most 4 updates a second.

A poller reads the store four times a second (``store.log.cells``): the notice's deliveries changed since its
cursor (their ``updated_at``, less a margin for a writer whose transaction began earlier and committed later),
and every ``rescan`` seconds all of them (a hold that ends with time, a paused outlet: neither writes the
delivery). It holds no connection between reads, and compares each cell with what it last saw, so a viewer is
sent only the cells that changed. Each viewer gets the changes gathered since its last update, at most one
update per ``interval``: a fan-out of a thousand deliveries is a few updates, not a thousand.

    >>> watch = CellWatch(store)                                              # doctest: +SKIP
    >>> async for cells in watch.follow("cq-2026-1127-001", since=None):      # doctest: +SKIP
    ...     print(len(cells), "cells changed")

When the last viewer of a notice leaves, its poller ends. A poller that fails (the store is down) ends its
viewers' streams with the error; the browser's EventSource connects again and a new poller starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool

from bot.store import Store

log = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds: at most 4 updates a second, to each viewer
RESCAN = 2.0  # seconds between full reads of a notice's cells
MARGIN = timedelta(seconds=2)  # a write begun before the cursor but committed after it is still seen

CellKey = tuple[Any, ...]


def signature(row: dict[str, Any]) -> CellKey:
    """What a cell shows: when this changes, viewers are sent the cell."""
    return row["status"], row["reason"], row["attempts"], row["http_status"], row["error"], row.get("published_at")


@dataclass(eq=False)
class _Viewer:
    changed: dict[int, dict[str, Any]] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None

    def offer(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.changed[row["id"]] = row
        if self.changed:
            self.ready.set()


@dataclass
class _Feed:
    ref: str
    viewers: set[_Viewer] = field(default_factory=set)
    seen: dict[int, CellKey] = field(default_factory=dict)
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    cursor: datetime | None = None
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)


class CellWatch:
    """Follows notices' cells for the pages (``app.state.cells``); ``reads`` counts the store reads made."""

    def __init__(self, store: Store, interval: float = INTERVAL, rescan: float = RESCAN) -> None:
        self.store = store
        self.interval = interval
        self.rescan = rescan
        self.feeds: dict[str, _Feed] = {}
        self.reads = 0

    async def follow(self, ref: str, since: datetime | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of changed cells of notice ``ref``, at most one per ``interval``. The first batch: every cell not
        yet delivered, and those changed since ``since`` (when the page was rendered; None: every cell)."""
        feed = self.feeds.get(ref)
        if feed is None:
            feed = self.feeds[ref] = _Feed(ref)
            feed.task = asyncio.create_task(self._poll(feed), name=f"matrix cells of {ref}")
        viewer = _Viewer()
        feed.viewers.add(viewer)
        try:
            await feed.started.wait()
            if viewer.failure is not None:
                raise viewer.failure
            viewer.offer([r for r in feed.rows.values() if r["status"] != "delivered" or since is None
                          or r["updated_at"] >= since])
            last = 0.0
            while True:
                await viewer.ready.wait()
                if viewer.failure is not None:
                    raise viewer.failure
                wait = last + self.interval - time.monotonic()
                if wait > 0:  # coalesce: what changes meanwhile goes in this same update
                    await asyncio.sleep(wait)
                batch = sorted(viewer.changed.values(), key=lambda r: r["id"])
                viewer.changed = {}
                viewer.ready.clear()
                last = time.monotonic()
                if batch:
                    yield batch
        finally:
            feed.viewers.discard(viewer)
            if not feed.viewers and self.feeds.get(ref) is feed:
                del self.feeds[ref]
                if feed.task is not None:
                    feed.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await feed.task

    def cells_of(self, ref: str) -> list[dict[str, Any]]:
        """Every cell of ``ref`` as last read (for the counts above them); empty when nobody follows it."""
        feed = self.feeds.get(ref)
        return list(feed.rows.values()) if feed else []

    async def _poll(self, feed: _Feed) -> None:
        try:
            full_at = 0.0
            while feed.viewers:
                began = time.monotonic()
                full = began - full_at >= self.rescan
                since = None if full or feed.cursor is None else feed.cursor - MARGIN
                rows = await run_in_threadpool(self.store.log.cells, feed.ref, since)
                self.reads += 1
                if full:
                    full_at = began
                changed = []
                for row in rows:
                    key = signature(row)
                    if feed.seen.get(row["id"]) != key:
                        feed.seen[row["id"]] = key
                        feed.rows[row["id"]] = row
                        if feed.started.is_set():
                            changed.append(row)
                    if feed.cursor is None or row["updated_at"] > feed.cursor:
                        feed.cursor = row["updated_at"]
                if not feed.started.is_set():
                    feed.started.set()
                elif changed:
                    for viewer in list(feed.viewers):
                        viewer.offer(changed)
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the viewers' streams end with it; their browsers connect again
            log.warning("the live matrix of %s stopped: %s", feed.ref, exc)
            if self.feeds.get(feed.ref) is feed:
                del self.feeds[feed.ref]
            for viewer in feed.viewers:
                viewer.failure = exc
                viewer.ready.set()
            feed.started.set()
