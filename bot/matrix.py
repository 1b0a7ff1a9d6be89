"""The live outlet matrix: the one matrix every part of a process reads, replaced whole by a reload.

A reload (SIGHUP, or ``POST /api/v1/matrix:reload``) reads ``outlets.yaml`` again in the process that was
asked. A file with any error is refused whole: the running matrix stays, and the error names outlet and field.
A good file becomes the next *generation* in the store; every other process (``run``, ``worker`` and ``web``
on any machine) sees the new generation at its next look and reloads its own file. An outlet the reload took
out keeps its history; its pending deliveries are held ("removed from matrix") until a reload brings it back.

    >>> live = LiveMatrix(matrix, load=file_loader(settings, regions))      # doctest: +SKIP
    >>> changes = await live.reload(store, by=Actor.local())                # doctest: +SKIP
    >>> changes.added, changes.removed, changes.changed                     # doctest: +SKIP
    (('dist-yubei',), (), ())
    >>> await live.look(store)  # elsewhere: follow the generation          # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from bot.outlets import MatrixError, OutletMatrix, load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import STORE_FAULTS, Actor, Store, describe_fault
from bot.store.audit import LOCAL

log = logging.getLogger("debunkbot.matrix")
# how a store call or a file read runs off the event loop: asyncio.to_thread, or the dispatcher's store thread
OffLoop = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class MatrixChanges:
    """What a reload changed, by outlet id (never a URL or a secret)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()  # any field, its secret included

    @classmethod
    def between(cls, old: OutletMatrix, new: OutletMatrix) -> MatrixChanges:
        before, after = _entries(old), _entries(new)
        return cls(tuple(sorted(after.keys() - before.keys())), tuple(sorted(before.keys() - after.keys())),
                   tuple(sorted(i for i in before.keys() & after.keys() if before[i] != after[i])))

    def as_dict(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "removed": list(self.removed), "changed": list(self.changed)}

    def describe(self) -> str:
        parts = [f"{what} {', '.join(ids)}" for what, ids in self.as_dict().items() if ids]
        return "; ".join(parts) if parts else "no outlet changed"


def _entries(matrix: OutletMatrix) -> dict[str, tuple[Any, ...]]:
    """Outlets and operator channels by id, each as what a change of it would change."""
    return {o.id: (o, matrix.secret_for(o.id), o in matrix.operators) for o in (*matrix.outlets, *matrix.operators)}


def file_loader(settings: Settings, regions: RegionTable) -> Callable[[], OutletMatrix]:
    """How this process reads its matrix again: its own ``DEBUNKBOT_OUTLETS`` and environment, regions
    resolved on the day of the reload."""
    return partial(load_matrix, settings.outlets, regions, public_ip=settings.public_ip)


def asked(by: Actor) -> str:
    """Who asked for a reload, as the log and the reload's record say it."""
    return f"{by.name} ({by.source})"


class LiveMatrix:
    """The matrix this process runs with, at ``matrix``. The daemon, the dispatcher, the alerter and the web
    site all read it here, so a reload, or the regions resolved again at midnight, replace it in one place.

    ``load`` reads the file again (raising MatrixError); ``generation`` is the store's reload this matrix
    follows (None until the first look).
    """

    def __init__(self, matrix: OutletMatrix, load: Callable[[], OutletMatrix] | None = None,
                 generation: int | None = None) -> None:
        self.matrix = matrix
        self.generation = generation
        self._load = load
        self._listeners: list[Callable[[OutletMatrix], None]] = []
        self._reloading = asyncio.Lock()  # one reload at a time: SIGHUP and the API may ask at once
        self.asked_by: Actor | None = None  # a reload asked for (SIGHUP), done at the next look

    @classmethod
    def of(cls, matrix: OutletMatrix | LiveMatrix) -> LiveMatrix:
        """``matrix`` itself if it is live, else a live matrix that is never reloaded from a file."""
        return matrix if isinstance(matrix, LiveMatrix) else cls(matrix)

    def on_change(self, listener: Callable[[OutletMatrix], None]) -> None:
        """Call ``listener`` with each new matrix (the log's redaction learns new secrets this way)."""
        self._listeners.append(listener)

    def replace(self, matrix: OutletMatrix) -> MatrixChanges:
        """Run with ``matrix`` from now on."""
        changes = MatrixChanges.between(self.matrix, matrix)
        self.matrix = matrix
        for listener in self._listeners:
            listener(matrix)
        return changes

    def ask_reload(self, by: Actor) -> None:
        """Reload at the next ``look`` (a signal handler may call this; it does no work itself)."""
        self.asked_by = by

    async def reload(self, store: Store, by: Actor, off_loop: OffLoop = asyncio.to_thread) -> MatrixChanges:
        """Read the file again; if it is good, make it the store's next generation and run with it; ``by`` is
        audited in the same transaction.

        A file with any error raises MatrixError (IncompleteMatrix: secrets missing from this environment)
        and changes nothing; the error is logged here, naming outlet and field. A store fault propagates,
        and changes nothing either.
        """
        async with self._reloading:
            try:
                matrix = await off_loop(self._read)
            except MatrixError as exc:
                log.error("outlet matrix reload (asked by %s) refused; still running with the matrix as it was: %s",
                          asked(by), exc)
                raise
            changes = MatrixChanges.between(self.matrix, matrix)
            ids = [o.id for o in matrix.outlets]
            self.generation = await off_loop(store.matrix.reloaded, ids, by, changes.as_dict())
            self.replace(matrix)
        log.info("outlet matrix reloaded (asked by %s), generation %d, %d outlets: %s", asked(by), self.generation,
                 len(matrix), changes.describe())
        return changes

    async def look(self, store: Store, off_loop: OffLoop = asyncio.to_thread) -> MatrixChanges | None:
        """Do a reload that was asked for, or follow another process's: when the store's generation is newer
        than ours, read our own file again. A file this process finds bad is logged once and the matrix stays.
        The first look only learns the generation. Store faults propagate (the caller looks again later)."""
        if self.asked_by is not None:
            by, self.asked_by = self.asked_by, None
            try:
                return await self.reload(store, by, off_loop)
            except MatrixError:  # reload logged it
                return None
            except STORE_FAULTS:
                self.asked_by = by  # done at a later look
                raise
        generation = await off_loop(store.matrix.generation)
        if self.generation is None:
            self.generation = generation
            log.info("outlet matrix: %d outlets; following its reloads from generation %d (SIGHUP or POST "
                     "/api/v1/matrix:reload reloads it everywhere)", len(self.matrix), generation)
            return None
        if generation <= self.generation:
            return None
        async with self._reloading:
            if self.generation is not None and generation <= self.generation:
                return None  # this process made it
            self.generation = generation  # a bad file here is reported once, not at every look
            try:
                matrix = await off_loop(self._read)
            except MatrixError as exc:
                log.error("outlet matrix generation %d (reloaded elsewhere) refused on this machine; still "
                          "running with the matrix as it was: %s", generation, exc)
                return None
            changes = self.replace(matrix)
        log.info("outlet matrix reloaded to follow generation %d, %d outlets: %s", generation, len(matrix),
                 changes.describe())
        return changes

    async def keep_following(self, store: Store, every: float, stop: asyncio.Event,
                             off_loop: OffLoop = asyncio.to_thread) -> None:
        """``look`` every ``every`` seconds until ``stop`` (for a process without a daemon: ``debunkbot web``)."""
        while not stop.is_set():
            try:
                await self.look(store, off_loop)
            except STORE_FAULTS as exc:
                log.warning("could not look for a reloaded outlet matrix: %s; looking again in %gs",
                            describe_fault(exc), every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)

    def install_signal_handler(self) -> None:
        """SIGHUP asks for a reload, done at the next look."""
        by = Actor("SIGHUP", LOCAL, f"signal@{socket.gethostname()} pid {os.getpid()}")
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.ask_reload, by)

    def _read(self) -> OutletMatrix:
        if self._load is None:
            raise MatrixError("this matrix was not read from a file; there is nothing to reload")
        return self._load()
