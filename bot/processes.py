"""Every core of one machine, on any store: `debunkbot run --processes N` leads, and N - 1 send-only processes
(`debunkbot worker`) claim and send beside it from the same store.

The store is what keeps them apart, exactly as it keeps `debunkbot worker` processes on PostgreSQL apart:
each claim takes a lease in one write transaction (on SQLite: BEGIN IMMEDIATE in WAL mode, so claims queue
for the write lock rather than fail, and a process's busy_timeout bounds the wait), the per-outlet caps and
rate windows count every process's leases and attempts, and a delivery's webhook-id is stored with it. The
leading process alone runs the jobs of the whole deployment (inbox, embargoes, alerts, pruning) and the web
server.

``SendOnlyProcesses`` is the parent's supervisor: it starts the children, starts again one that dies (a kill,
a crash) after a back-off that doubles up to 30 s, and on the parent's stop sends each SIGTERM, so each
finishes its sends in flight within the shutdown grace or gives its claims back, and exits 0.

The first children are forked (``fork_send_only``) once the parent has imported its code and read its matrix, before
its event loop and any thread start: a child starts with all that made, where a `debunkbot worker` started anew
spends some 0.6 s of a core importing and reading it again. Each waits for its go (its parent's store is open)
before it starts its own event loop. A child started again later, beside the parent's running threads, is a new
`debunkbot worker` instead: forking then could copy a lock some other thread holds.

The children send until they are stopped: the leading process alone decides that an `--until-idle` run is idle
(nothing left to send in the store, whichever process claimed it), and alone logs each notice's fan-out
summary, counted from the store (bot.scheduler.FanOutReport).

    >>> async with SendOnlyProcesses(2, grace=10):                                  # doctest: +SKIP
    ...     await daemon.run(until_idle=True)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from bot.logs import PROCESS_NAME_ENV

log = logging.getLogger("debunkbot")

MAX_PROCESSES = 4
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 30.0
PARENT_ENV = "DEBUNKBOT_PARENT_PID"  # set in a child's environment: the pid it stops with
STEADY_AFTER = 30.0  # a child that ran this long before dying starts again at once, its back-off forgotten


def default_processes() -> int:
    """The cores this process may run on, at most ``MAX_PROCESSES``: `run --processes`'s default."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_PROCESSES))


def _ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Child(Protocol):
    """A send-only process as the supervisor sees it: asyncio's ``Process``, or a ``Forked`` one."""

    pid: int
    returncode: int | None

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A send-only process forked from this one (``fork_send_only``); ``go()`` lets it start sending."""

    def __init__(self, pid: int, go: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._go: int | None = go  # the write end of the pipe it waits on

    def go(self) -> None:
        """Tell it this process's store is open: it starts its event loop and sends."""
        self.release(b"go")

    def release(self, word: bytes = b"") -> None:
        """Close its pipe (after ``word``); one that never got its go reads the end of it and exits 0."""
        if self._go is not None:
            if word:
                with contextlib.suppress(BrokenPipeError):  # it is gone already: its watcher sees that
                    os.write(self._go, word)
            os.close(self._go)
            self._go = None

    async def wait(self) -> int:
        if self.returncode is None:  # its pidfd is readable once it has exited; then it is reaped here
            loop = asyncio.get_running_loop()
            exited = loop.create_future()
            pidfd = os.pidfd_open(self.pid)
            loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            self.reap()
        assert self.returncode is not None  # reaped
        return self.returncode

    def reap(self) -> None:
        """Wait, blocking, for its exit and collect its code; for a child that was never handed to the supervisor
        (its parent stopped first), once its pipe is closed: it then reads the end of it and exits."""
        self.release()
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.returncode is None:  # not reaped: the pid is still its own
            os.kill(self.pid, sig)


FORKS = hasattr(os, "pidfd_open")  # Linux: a forked child's exit is waited for on its pidfd


def fork_send_only(count: int) -> tuple[int, list[Forked]]:
    """Fork ``count`` send-only processes from this one, which must have no thread and no event loop yet.

    Returns ``(0, children)`` in this process, and ``(n, [])`` in the n-th child, which is named for its log
    lines, has this process as the parent it stops with (``stop_with_parent``), reads nothing from stdin, and
    must call ``wait_for_go`` before its event loop starts. SIGINT and SIGTERM stay blocked in a child until its
    handlers are installed (bot.scheduler.install_signal_handlers), as for a `debunkbot worker` started anew.
    """
    stops = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    children: list[Forked] = []
    parent = os.getpid()
    sys.stdout.flush()  # or what waits in a buffer would be written once by each process
    sys.stderr.flush()
    for slot in range(count):
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:  # no process to be had: this one stops, and SIGINT and SIGTERM reach it again
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
            raise
        if pid == 0:
            os.close(write)
            for sibling in children:
                sibling.release()
            _go[:] = [read]
            os.environ |= {PARENT_ENV: str(parent), PROCESS_NAME_ENV: f"send-only process {slot + 1}"}
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            return slot + 1, []
        os.close(read)
        children.append(Forked(pid, write))
    signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return 0, children


_go: list[int] = []  # in a forked child: the pipe its go comes on


def wait_for_go() -> bool:
    """In a forked child: wait until the parent's store is open. False when the parent stopped first."""
    (pipe,) = _go
    word = os.read(pipe, 2)
    os.close(pipe)
    return word == b"go"


class SendOnlyProcesses:
    """``count`` children running ``debunkbot worker`` with ``args``, kept running until they are stopped: when
    ``stop`` is set (the parent's SIGTERM: they drain beside it, not after it), by ``stop()``, or when the block
    ends.

    ``grace``: on stop, how long children get to finish their sends before they are killed (they give their
    claims back within it; a kill leaves them to their leases' end, as any crash does).
    """

    def __init__(self, count: int, args: Sequence[str] = (), grace: float = 10.0,
                 stop: asyncio.Event | None = None, forked: Sequence[Forked] = ()) -> None:
        self.count = count
        self.command = [sys.executable, "-m", "bot", "worker", *args]
        self.env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})
        self.grace = grace
        self.forked = forked  # the first children, forked already (fork_send_only): they get their go
        self.running: dict[int, Child] = {}  # slot -> its process now
        self.restarts = 0
        self._told_to_stop: set[int] = set()  # pids sent their SIGTERM
        self._stopping = asyncio.Event()
        self._watchers: list[asyncio.Task[None]] = []
        self._stop = stop
        self._stop_follower: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SendOnlyProcesses:
        for slot in range(self.count):
            if slot < len(self.forked):
                self.running[slot] = self.forked[slot]
                self.forked[slot].go()
            else:
                await self._start(slot)
            self._watchers.append(asyncio.create_task(self._watch(slot), name=f"send-only process {slot + 1}"))
        if self.count:
            log.info("%d send-only process(es) started beside this one (pids %s)", self.count,
                     ", ".join(str(p.pid) for p in self.running.values()))
        if self._stop is not None:
            self._stop_follower = asyncio.create_task(self._follow(self._stop), name="send-only processes' stop")
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _follow(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()
        self.terminate()

    async def stop(self) -> None:
        """SIGTERM to every child, and wait until they have drained and exited (killed if they take longer than
        the grace and 10 s more). Once is enough; again, it returns at once."""
        if self._stop_follower is not None:
            self._stop_follower.cancel()
        self._stopping.set()
        self.terminate()  # until-idle too: this process found nothing left to send, so they have nothing left
        try:
            await asyncio.wait_for(self.wait(), timeout=self.grace + 10.0)
        except TimeoutError:
            log.warning("send-only processes still running %gs after the stop; killing them", self.grace + 10.0)
            for proc in self.running.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await self.wait()
        tasks = [*self._watchers, *([self._stop_follower] if self._stop_follower else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def terminate(self) -> None:
        """SIGTERM, once, to every child still running: each drains (bot.scheduler) and exits 0. Once: a child that
        has drained and left its event loop has its default handler back, and a second SIGTERM would kill it."""
        for proc in self.running.values():
            if proc.returncode is None and proc.pid not in self._told_to_stop:
                self._told_to_stop.add(proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()

    async def wait(self) -> None:
        """Until every child has exited and nothing will start another."""
        for watcher in self._watchers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(watcher)

    async def _start(self, slot: int) -> None:
        # The child inherits SIGINT and SIGTERM blocked: one sent while it starts stays pending until it has its
        # handlers (bot.scheduler.install_signal_handlers unblocks them), so it stops cleanly, never half-started.
        # Here they are blocked for the moment of the spawn only: this process's own come after it.
        stops = {signal.SIGINT, signal.SIGTERM}
        before = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            self.running[slot] = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.DEVNULL,
                env=self.env | {PROCESS_NAME_ENV: f"send-only process {slot + 1}"})  # named in its log lines
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    async def _watch(self, slot: int) -> None:
        backoff = BACKOFF_FIRST
        while True:
            proc = self.running[slot]
            started = time.monotonic()
            code = await proc.wait()
            if self._stopping.is_set():
                if code != 0:
                    log.warning("send-only process %d (pid %d) %s while stopping", slot + 1, proc.pid, _ended(code))
                return
            if time.monotonic() - started >= STEADY_AFTER:
                backoff = BACKOFF_FIRST
            log.warning("send-only process %d (pid %d) %s; starting it again in %gs (its claims come free when "
                        "their leases end)", slot + 1, proc.pid, _ended(code), backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
            if self._stopping.is_set():
                return
            backoff = min(backoff * 2, BACKOFF_MAX)
            await self._start(slot)
            self.restarts += 1
            log.info("send-only process %d started again (pid %d)", slot + 1, self.running[slot].pid)


async def stop_with_parent(stop: asyncio.Event, every: float = 0.5) -> None:
    """In a send-only process: ask for a clean stop once the process that started it is gone (killed outright,
    it could not SIGTERM its children; they would otherwise send on, orphaned). Returns at once elsewhere."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    while not stop.is_set():
        if os.getppid() != int(parent):
            log.warning("the leading process (pid %s) is gone; stopping", parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
