"""The ``debunkbot`` command: submit, run, web, status, log, outlets, retry, render, demo, token, audit, review.

Exit codes: 0 done; 2 bad input (a notice file, the matrix, a setting, an argument); 3 the store refused a
write (full, locked, down: submit again later); 4 configuration is incomplete (outlet secrets missing from the
environment). Nothing a user wrote is read as console markup: it is escaped or passed as plain ``Text``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bot.roles import RoleName

if TYPE_CHECKING:  # the commands import what each needs when it runs: `--help`, `log` and `status` start fast
    from bot.matrix import LiveMatrix
    from bot.outlets import OutletMatrix
    from bot.regions import RegionTable
    from bot.settings import Settings
    from bot.store import Actor, Store
    from bot.store.review import Concerned

EXIT_BAD_INPUT, EXIT_STORE_REFUSED, EXIT_INCOMPLETE = 2, 3, 4

# typer prints each parameter's Python type in --help (<list[Path]>, <bool>): show a metavar, or nothing.
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
typer.core.TyperOption.display_type_rich = lambda self, ctx: (  # type: ignore[method-assign]
    None if self.is_flag else self.metavar or self.name.upper())

app = typer.Typer(help="Push verified debunk notices (辟谣通报) to every outlet of the matrix.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode="markdown")
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)  # messages name paths: never wrap them


def main() -> None:
    """The ``debunkbot`` program. Start-up (imports, the matrix, the web app) makes some 200,000 objects that live
    as long as the process; the garbage collector, walking them again and again while they were made, cost each
    process 0.17 s of its start (about 380 passes). So it is off until a long-running command has built what it
    keeps (``_started``); a read command ends before it would matter. A long-running command's process ends
    without the interpreter's teardown (``_leave``)."""
    gc.disable()
    try:
        app(prog_name="debunkbot")
    except SystemExit as exc:
        if _long_running and (exc.code is None or isinstance(exc.code, int)):
            _leave(exc.code or 0)
        raise


_long_running = False  # set once a long-running command has started (``_started``)


def _started() -> None:
    """A long-running command has built what it keeps: that leaves the collector's care, and the collector is on."""
    global _long_running
    _long_running = True
    gc.freeze()
    gc.enable()
    logging.getLogger("debunkbot").debug("start-up done: %d objects kept out of the garbage collector's passes; "
                                         "it runs again", gc.get_freeze_count())


def _leave(code: int) -> None:
    """End a long-running command's process once it has stopped: its store, connections, threads and servers are
    closed by then, so the exit handlers run (the log's last lines are flushed) and the interpreter's teardown is
    skipped. Taking its ~200,000 objects apart one by one cost each process some 50 ms, and a parent waits for its
    send-only processes' ends."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that has gone (a pipe closed) loses nothing more here
            stream.flush()
    os._exit(code)


STATUS_WORDS = {"delivered": "已送达 delivered", "pending": "待发送 pending", "failed": "失败 failed",
                "held": "暂缓 held", "cancelled": "已取消 cancelled"}


class LogStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    held = "held"
    cancelled = "cancelled"


def _settings() -> Settings:
    from bot.settings import Settings
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError names the setting
        errors.print(f"[red]bad setting:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _regions(settings: Settings) -> RegionTable:
    from bot.regions import RegionTable
    try:
        return RegionTable.load(settings.regions)
    except ValueError as exc:
        errors.print(f"[red]region table refused:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _matrix(settings: Settings, regions: RegionTable, require_secrets: bool = True) -> OutletMatrix:
    from bot.outlets import IncompleteMatrix, MatrixError, load_matrix
    try:
        return load_matrix(settings.outlets, regions, require_secrets=require_secrets,
                           public_ip=settings.public_ip)
    except IncompleteMatrix as exc:
        errors.print(f"[yellow]configuration is incomplete:[/] {escape(str(exc))}. Set them in the environment "
                     "(README: The outlet matrix), or try `make try` for a local set-up on loopback.")
        raise typer.Exit(EXIT_INCOMPLETE) from None
    except MatrixError as exc:
        errors.print(f"[red]outlet matrix refused, nothing sent:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _store(settings: Settings) -> Store:
    from bot.schema import SchemaOutdated
    from bot.store import Store

    try:
        store = Store.open(settings.database_url)
    except SchemaOutdated as exc:
        errors.print(f"[red]store refused:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    store.review.stages = settings.review_stages  # submitted notices are drafts when reviewed
    return store


def _secrets(matrix: OutletMatrix) -> list[str | None]:
    return [matrix.secret_for(o.id) for o in (*matrix.outlets, *matrix.operators)]


def _live(settings: Settings, regions: RegionTable, matrix: OutletMatrix) -> LiveMatrix:
    """The matrix a long-running command runs with, read again from its file on a reload; the log redacts
    the secrets of every matrix it runs with."""
    from bot.logs import Redactor
    from bot.matrix import LiveMatrix, file_loader

    live = LiveMatrix(matrix, load=file_loader(settings, regions))
    redactors = [f for handler in logging.getLogger().handlers for f in handler.filters if isinstance(f, Redactor)]

    def learn(new: OutletMatrix) -> None:
        for redactor in redactors:
            redactor.learn(_secrets(new))

    live.on_change(learn)
    return live


def _logging(verbose: bool, matrix: OutletMatrix | None = None, log_format: str = "text") -> None:
    """Log to stderr, every record redacted: the matrix's secrets, and anything shaped like a credential."""
    from bot.logs import setup_logging

    setup_logging(verbose, _secrets(matrix) if matrix else (),
                  log_format=log_format)


@app.command()
def submit(
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="notice files or folders")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the files and list, for each notice, the "
                                          "outlets it would reach and why not the others; store nothing")] = False,
) -> None:
    """Validate and store notices.

    Exit 0 when every file was valid; 2 when a file was rejected (each rejection names the file and the
    field; the valid files are stored all the same); 3 when the store refused the write (disk full,
    locked, down: nothing of that file was stored, submit it again); 4 when outlet secrets are missing.
    """
    from bot.intake import expand, submit_files
    from bot.store import Actor
    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions, require_secrets=not dry_run)  # a dry run sends nothing
    files = expand(paths)
    if not files:
        errors.print("[red]no notice files found[/] (expected .yaml, .yml or .json)")
        raise typer.Exit(EXIT_BAD_INPUT)
    if dry_run:
        raise typer.Exit(_dry_run(files, matrix, regions, settings))
    store = _store(settings)
    with _say_if_waiting(f"waiting for the store ({_where(settings)}): another process is writing to it"):
        results = submit_files(files, store, matrix, regions, settings.max_notices_per_file, actor=Actor.local())
    for result in results:
        if result.ok:
            for added in result.added:
                what = ("kept as a draft for review (debunkbot review list)" if added.created and added.draft else
                        f"corrected to version {added.version}, {_count(added.deliveries, 'delivery')} to make"
                        if added.created and added.version > 1 else
                        f"stored, {_count(added.deliveries, 'delivery')}" if added.created
                        else "already stored, unchanged")
                console.print(Text.assemble(("ok", "green"), f" {result.path}: {added.ref} {what}"))
        else:
            errors.print(Text.assemble(("refused" if result.deferred else "rejected", "red"), f" {result.error}"))
    raise typer.Exit(0 if all(r.ok for r in results)
                     else EXIT_STORE_REFUSED if any(r.deferred for r in results) else EXIT_BAD_INPUT)


@app.command()
def correct(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    path: Annotated[Path, typer.Argument(metavar="FILE", help="the corrected notice (same ref)")],
    note: Annotated[str | None, typer.Option("--note", metavar="TEXT", help="what was wrong and what changed "
                                             "(else the file's correction_note)")] = None,
) -> None:
    """Store a correction (更正): version 2 (3, …) of REF. Outlets that received an earlier version get the
    correction; outlets still waiting get only the latest version. Exit 2 when the file or ref is wrong."""
    from bot.intake import IntakeError, correction_of, read_notices, store_notices
    from bot.store import Actor, NotCorrectable

    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions)
    try:
        notice = correction_of(read_notices(path, regions, max_notices=settings.max_notices_per_file), ref,
                               str(path), note)
        store = _store(settings)
        with _say_if_waiting(f"waiting for the store ({_where(settings)}): another process is writing to it"):
            (added,) = store_notices([notice], store, matrix, str(path), Actor.local())
    except (IntakeError, NotCorrectable) as exc:
        errors.print(Text.assemble(("rejected", "red"), f" {exc}"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if not added.created:
        console.print(Text(f"{ref}: the file is the version already stored; nothing changed"))
        return
    if added.draft:
        console.print(Text.assemble(("ok", "green"),
                                    f" {ref}: the correction waits for review (debunkbot review list)"))
        return
    console.print(Text.assemble(("ok", "green"), f" {ref} corrected to version {added.version}: "
                                f"{_count(added.deliveries, 'delivery')} to make"))


@app.command()
def retract(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="why, as outlets will read it")],
) -> None:
    """Retract a notice (撤回): deliveries not yet made are cancelled (reason "retracted"), and every outlet that
    received it gets the retraction. Exit 2 for an unknown ref or an empty reason."""
    from bot.store import Actor
    store = _store(_settings())
    try:
        if store.review.stages:
            waits = store.review.request_retraction(ref, reason, Actor.local())
            console.print(Text(f"{ref}: the retraction waits for review (debunkbot review list)" if waits
                               else f"{ref}: nothing to retract (a draft never released is withdrawn)"))
            return
        done = store.lifecycle.retract(ref, reason, Actor.local())
    except (LookupError, ValueError) as exc:
        errors.print(Text(str(exc).strip("'\""), style="red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    console.print(Text(f"{ref} retracted: {_count(done['cancelled'], 'delivery')} cancelled, "
                       f"{_count(done['retractions'], 'retraction')} to send"))


@app.command()
def history(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
) -> None:
    """A notice's versions with what each changed, its retraction, and each outlet's timeline."""
    store = _store(_settings())
    found = store.lifecycle.history(ref)
    if found is None:
        errors.print(Text(f"no notice with ref {ref!r}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT)
    reviews = store.review.all_of(ref)
    if as_json:
        if reviews:
            from bot.web.api import review_doc

            found["reviews"] = [review_doc(r).model_dump(mode="json") for r in reviews]
        console.print_json(json.dumps(found, ensure_ascii=False, default=str))
        return
    for r in reviews:
        signed = "、".join(f"{d.actor}" for d in r.signed)
        console.print(Text(f"review of the {r.kind}: {r.state}" + (f" {_when(r.released_at, wide=True)} by "
                           f"{r.released_by}" if r.released_at else "") + (f"; signed by {signed}" if signed else ""),
                           style="yellow" if r.urgent_reason else ""))
        if r.urgent_reason:
            console.print(Text(f"  紧急发布 urgent release after {len(r.signed)} of {r.stages} stage(s): "
                               f"{r.urgent_reason}", style="yellow"))
    for v in found["versions"]:
        console.print(Text(f"version {v['version']}  {_when(v['at'], wide=True)}  by {v['by']}"
                           + (f"  note: {v['correction_note']}" if v["correction_note"] else "")))
        for change in v["changes"]:
            console.print(Text(f"  {change['field']}: {change['before']!r} -> {change['after']!r}"))
    if found["retraction"]:
        r = found["retraction"]
        console.print(Text(f"retracted {_when(r['at'], wide=True)} by {r['by']}: {r['reason']}", style="yellow"))
    _show([("outlet", ID), ("status", VALUE), ("has", VALUE), ("timeline", FREE)],
          [[o["outlet"], o["status"] + (f" ({o['cancel_reason']})" if o["cancel_reason"] else ""),
            f"v{o['received_version']}" if o["received_version"] else "-",
            "; ".join(f"{_when(a['at'])} v{a['version'] or '?'} {a['carries'] or 'notice'} {a['trigger']} "
                      f"{a['outcome']}" for a in o["attempts"]) or "-"] for o in found["outlets"]])


@app.command()
def backfill(
    outlet_id: Annotated[str, typer.Argument(metavar="OUTLET", help="outlet id")],
    since: Annotated[str, typer.Option("--since", metavar="AGE", help="how far back: 7d, 12h, 30m")] = "7d",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what it would get, change nothing")] = False,
) -> None:
    """Send OUTLET (typically one just added) the live notices of the period that it has not had: not retracted,
    not expired, their latest version; oldest first, within its rate limit, logged with trigger backfill."""
    from bot.outlets import reach
    from bot.store import Actor
    settings = _settings()
    matrix = _matrix(settings, _regions(settings), require_secrets=False)
    outlet = matrix.by_id.get(outlet_id)
    if outlet is None:
        errors.print(Text(f"no outlet {outlet_id!r} in {settings.outlets}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT)
    start = _since_option(since)
    assert start is not None  # --since has a default
    refs = _store(settings).lifecycle.backfill(outlet, start, lambda n, o: reach(o, n).reached,
                                               Actor.local(), dry_run=dry_run)
    console.print(Text(f"{outlet_id}: {_count(len(refs), 'notice')} {'would be' if dry_run else ''} queued"
                       + (f" ({', '.join(refs[:10])}{', …' if len(refs) > 10 else ''})" if refs else "")))


def _dry_run(files: Sequence[Path], matrix: OutletMatrix, regions: RegionTable, settings: Settings) -> int:
    """Each notice's reach over the matrix, outlet by outlet (those it reaches first), and nothing stored."""
    from bot.intake import read_files
    from bot.regions import Tier

    read = read_files(files, regions, settings.max_notices_per_file)
    for result, notices in read:
        if not result.ok:
            errors.print(Text.assemble(("rejected", "red"), f" {result.error}"))
            continue
        for notice in notices:
            reach = sorted(matrix.reach(notice), key=lambda r: not r.reached)  # stable: matrix order within
            reached = [r for r in reach if r.reached]
            tiers = ", ".join(f"{tier.value} {n}" for tier in Tier
                              if (n := sum(r.outlet.tier == tier for r in reached)))
            about = [f"for {'、'.join(notice.regions)}", f"category {notice.category or '(none)'}",
                     notice.urgency.value]
            if notice.expires_at:
                about.append(f"expires {_when(notice.expires_at, wide=True)}")
            _show([("outlet", ID), ("tier", VALUE), ("region", VALUE), ("gets it", VALUE), ("why", FREE)],
                  [[r.outlet.id, r.outlet.tier.value, r.outlet.region,
                    Text("yes", style="green") if r.reached else Text("no", style="yellow"), r.why] for r in reach],
                  title=Text(f"{notice.ref} ({'; '.join(about)})"))  # Text: a category is never markup
            console.print(Text(f"{notice.ref} would reach {_count(len(reached), 'outlet')} of {len(reach)}"
                               + (f" ({tiers})" if tiers else "") + f"; {len(reach) - len(reached)} would not"))
    console.print("dry run: nothing stored, nothing sent")
    return 0 if all(result.ok for result, _ in read) else EXIT_BAD_INPUT


@contextlib.contextmanager
def _say_if_waiting(message: str, after: float = 1.0) -> Iterator[None]:
    """Say what we are waiting for when a store call takes longer than ``after`` seconds (a lock, a server)."""
    import threading

    timer = threading.Timer(after, lambda: errors.print(Text(f"{message} …", style="yellow")))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _where(settings: Settings) -> str:
    from sqlalchemy import make_url

    url = make_url(settings.database_url)
    return url.database or "" if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)


def _count(n: int, noun: str) -> str:
    """``1 delivery``, ``2 deliveries``."""
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


UntilIdle = Annotated[bool, typer.Option("--until-idle", help="exit 0 once nothing is pending or scheduled")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v",
                                       help="log every attempt and debug detail, not only what needs attention")]
MaxWait = Annotated[float | None, typer.Option(
    "--max-wait", metavar="SECONDS", min=0,
    help="with --until-idle: stop rather than wait longer than this for the next delivery due "
         "(an open breaker's cooldown, the retry schedule); the last line says what is left")]


NoWeb = Annotated[bool, typer.Option("--no-web", help="leave the web server out (the API, the feeds, /healthz, "
                                     "/metrics): send only, for example when `debunkbot web` serves elsewhere")]


Processes = Annotated[int | None, typer.Option(
    "--processes", metavar="N", min=1, show_default="one a core, at most 4", help="this process and N - 1 "
    "send-only processes beside it, sharing the store (SQLite too); a child that dies is started again")]


@app.command()
def run(until_idle: UntilIdle = False, max_wait: MaxWait = None, no_web: NoWeb = False,
        verbose: Verbose = False, processes: Processes = None) -> None:
    """Run the bot: watch the inbox, release embargoes, send and retry, and serve the web server (the API, the
    feeds, health and metrics) on DEBUNKBOT_HTTP_BIND. Stops on SIGINT/SIGTERM, with its send-only processes."""
    from bot.processes import default_processes

    _daemon(until_idle, verbose, cluster_jobs=True, max_wait=max_wait, serve=not no_web,
            processes=processes or default_processes())


@app.command()
def worker(until_idle: UntilIdle = False, max_wait: MaxWait = None, verbose: Verbose = False) -> None:
    """Send only: claim and deliver from the shared store. Run any number, on any machine."""
    _daemon(until_idle, verbose, cluster_jobs=False, max_wait=max_wait, serve=False)


@app.command()
def web(verbose: Verbose = False) -> None:
    """Serve the web server alone (the API, the feeds, health and metrics) on DEBUNKBOT_HTTP_BIND, sending
    nothing: for web nodes in front of the same PostgreSQL as the workers. Stops on SIGINT/SIGTERM."""
    _daemon(False, verbose, cluster_jobs=False, serve=True, send=False)


def _daemon(until_idle: bool, verbose: bool, cluster_jobs: bool, max_wait: float | None = None, serve: bool = True,
            send: bool = True, processes: int = 1) -> None:
    """The long-running commands: the dispatcher (``send``) and the web server (``serve``) in one event loop; the
    failure of either stops both, with a non-zero exit. ``processes`` > 1: as many send-only processes less one
    beside them (bot.processes), stopped with them."""
    import asyncio

    from bot.http import make_sender
    from bot.processes import FORKS, Forked, fork_send_only, wait_for_go
    from bot.scheduler import Daemon, install_signal_handlers, open_store

    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions)
    slot, forked = 0, list[Forked]()
    if processes > 1 and FORKS:  # the first send-only processes start with what this one has made so far
        slot, forked = fork_send_only(processes - 1)
    if slot:  # this is one of them: a `debunkbot worker` beside its parent, which stops it
        until_idle, cluster_jobs, max_wait, serve, processes = False, False, None, False, 1
    web_failed: tuple[type[Exception], ...] = ()  # a send-only process imports none of the web server
    if serve:
        from bot.web.server import BindError, WebServerFailed

        web_failed = (BindError, WebServerFailed)
    _logging(verbose, matrix, settings.log_format)
    live = _live(settings, regions, matrix)
    log = logging.getLogger("debunkbot")
    if slot and not wait_for_go():  # its parent stopped before its store was open
        raise typer.Exit(0)

    async def main() -> int:
        from bot.schema import SchemaOutdated

        stop = asyncio.Event()
        install_signal_handlers(stop)
        live.install_signal_handler()  # SIGHUP: reload outlets.yaml
        try:
            store = await open_store(settings.database_url, stop)
        except SchemaOutdated as exc:
            log.error("store refused: %s", exc)
            return 2
        if store is None:
            log.info("stopped before the store was reachable")
            return 0
        try:
            async with make_sender(settings) as client, contextlib.AsyncExitStack() as serving:
                if send:  # made before the send-only processes start: it reports their first tries from then on
                    daemon = Daemon(settings, store, live, regions, client, cluster_jobs=cluster_jobs, stop=stop)
                others = None
                if processes > 1:  # they send until stopped: this process decides when --until-idle is idle
                    from bot.processes import SendOnlyProcesses

                    # their go (or their start, where this system cannot fork) comes as soon as the store is ready:
                    # they start up while this process builds its web server
                    others = await serving.enter_async_context(SendOnlyProcesses(
                        processes - 1, ["-v"] if verbose else [], grace=settings.shutdown_grace, stop=stop,
                        forked=forked))
                if serve:
                    from bot.web import Site, create_app
                    from bot.web.server import THREADS_BESIDE_DISPATCHER, WebServer

                    app = create_app(Site(settings, store, regions, live))
                    await serving.enter_async_context(WebServer(
                        app, settings.http_bind, stop=stop, grace=settings.shutdown_grace,
                        threads=THREADS_BESIDE_DISPATCHER if send else None))
                elif send and any(o.channel == "feed" for o in matrix.outlets):
                    log.info("--no-web: the feed outlets' feeds are not served here (`debunkbot web` serves them)")
                if send:
                    from bot.processes import stop_with_parent

                    orphaned = asyncio.create_task(stop_with_parent(stop))  # a send-only process of `run`
                    try:
                        await daemon.run(until_idle=until_idle, max_wait=max_wait,
                                         others_stop=others.stop if others else None)
                    finally:
                        orphaned.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await orphaned
                else:  # a web node follows the matrix's reloads itself; a daemon does it in its jobs
                    await live.keep_following(store, settings.scan_interval, stop)
        except web_failed as exc:  # a bind refused is said here; a server that failed was logged when it stopped
            if not isinstance(exc, web_failed[1]):
                log.error("%s", exc)
            return 1
        finally:
            store.close()
        log.info("stopped (%s)", store.owner)
        return 0

    _started()
    try:
        code = asyncio.run(main())
    except Exception:  # logged, so it goes through the redaction of the log, then a non-zero exit
        log.exception("the daemon stopped on an unexpected error")
        code = 1
    finally:
        for child in forked:  # stopped with this process's send-only processes; if it stopped before, now
            child.reap()
    raise typer.Exit(code)


db = typer.Typer(help="The store's schema.", no_args_is_help=True)
app.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the store to this version's schema (SQLite or PostgreSQL)."""
    from bot.schema import upgrade
    from bot.store import make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    before, after = upgrade(engine)
    engine.dispose()
    console.print(f"schema at {after}" + (f" (was {before})" if before != after else " (already current)"))


# -- tables: identifiers are never cut ---------------------------------------------------------------

# column kinds: an identifier (never cut), a short value, a value that may be left out, free text (folded, and
# left out first)
ID, VALUE, EXTRA, FREE = "id", "value", "extra", "free"


def _table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Text | str]],
           title: str | Text | None = None, wide: bool = False) -> tuple[Table, int, list[str]]:
    """A table that fits the terminal without cutting an identifier (a ref, an outlet id): free-text columns
    fold, and are left out when even folded they do not fit, then the extra columns (``wide`` keeps all).
    Returns the table, the width to print it at, and the headers left out."""
    cells = [[c if isinstance(c, Text) else Text(c) for c in row] for row in rows]  # Text: never markup
    natural = [max([cell_len(header)] + [max((cell_len(line) for line in row[i].plain.split("\n")), default=0)
                                          for row in cells]) for i, (header, _) in enumerate(columns)]
    keep = list(range(len(columns)))

    def width_of(kept: list[int], folded: bool) -> int:  # two spaces between columns, none at the edges
        return sum(min(natural[i], 20) if folded and columns[i][1] == FREE else natural[i] for i in kept) + 2 * (
            len(kept) - 1)

    for kind in (FREE, EXTRA) if not wide else ():
        for i in reversed(keep[:]):
            if columns[i][1] == kind and width_of(keep, folded=True) > console.width:
                keep.remove(i)
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  title_justify="left")
    for i in keep:
        header, kind = columns[i]
        if kind == FREE and not wide:
            table.add_column(header, overflow="fold", min_width=min(natural[i], 20))
        else:
            table.add_column(header, no_wrap=True, min_width=natural[i])
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    width = width_of(keep, folded=False) if wide else min(width_of(keep, folded=False), max(
        console.width, width_of(keep, folded=True)))
    return table, width, [columns[i][0] for i in range(len(columns)) if i not in keep]


def _show(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Text | str]], title: str | Text | None = None,
          wide: bool = False, hint: str = "--wide") -> None:
    table, width, left_out = _table(columns, rows, title, wide)
    console.print(table, width=width)
    if left_out and rows:
        console.print(Text(f"({', '.join(left_out)} left out to fit {console.width} columns: see {hint})",
                           style="dim"))


def _when(value: datetime | None, wide: bool = False) -> str:
    """A time as operators read it: Chongqing's, to the second (ISO 8601 with the zone when ``wide``)."""
    from bot.regions import CHONGQING
    if value is None:
        return ""
    local = value.astimezone(CHONGQING)
    return local.isoformat(timespec="seconds") if wide else local.strftime("%m-%d %H:%M:%S")


@app.command()
def status(ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")]) -> None:
    """Who has notice REF: a summary per tier and the outlets not yet delivered."""
    from bot import desk
    from bot.store import utcnow
    store = _store(_settings())
    found = desk.notice_status(store, ref)
    if found is None:
        draft = store.review.get(ref)
        if draft is None or draft.state == "released":
            errors.print(Text(f"no notice with ref {ref!r}", style="red"))
            raise typer.Exit(EXIT_BAD_INPUT)
        console.print(Text(f"{ref} is a draft ({'sent back to its authors' if draft.state == 'returned' else 'waiting'}"
                           f" for stage {draft.waiting_for} of {draft.stages}): not sent to any outlet until it is "
                           f"released; debunkbot review show {ref} shows its sign-offs", style="yellow"))
        return
    if found.version > 1:
        console.print(Text(f"{ref} is at version {found.version} (corrected); debunkbot history {ref} shows what changed"))
    if found.retraction:
        r = found.retraction
        console.print(Text(f"{ref} was retracted at {_when(r['at'], wide=True)} by {r['by']}: {r['reason']}",
                           style="yellow"))
    expires_at = found.notice.expires_at
    if expires_at is not None:
        console.print(Text(f"{ref} {'expired' if expires_at <= utcnow() else 'expires'} at "
                           f"{_when(expires_at, wide=True)}: after that nothing of it is sent"))
    summary = [[t.tier, str(t.outlets), str(t.delivered), str(t.pending), str(t.held), str(t.failed), str(t.cancelled),
                str(t.published)] for t in found.tiers]
    _show([("tier", ID), ("outlets", VALUE), ("delivered", VALUE), ("pending", VALUE), ("held", VALUE),
           ("failed", VALUE), ("cancelled", VALUE), ("published", VALUE)], summary, title=f"{ref}: deliveries by tier")
    if any(t.published for t in found.tiers) or _settings().public_url:  # receipts (回执) are on
        said = "; ".join(f"{t.tier} delivered {t.delivered} / published {t.published}" for t in found.tiers)
        console.print(Text(f"receipts: {said}"))
    missing = found.missing
    if not found.deliveries:
        console.print(Text(f"{ref} has no deliveries: no outlet of the matrix was concerned", style="yellow"))
        return
    if not missing:
        console.print(Text(f"every outlet ({found.deliveries}) has {ref}", style="green"))
        return
    _show([("outlet", ID), ("status", VALUE), ("tries", VALUE), ("next try", VALUE), ("last error", FREE)],
          [[r["outlet"], STATUS_WORDS[r["status"]] + (f": {r['reason']}" if r["reason"] else ""), str(r["attempts"]),
            _when(r["next_attempt_at"]), r["error"] or ""] for r in missing],
          title=f"{_count(len(missing), 'outlet')} without {ref} (times in Chongqing)",
          hint="debunkbot log --wide --notice " + ref)


LOG_KEYS = ("notice", "outlet", "status", "reason", "attempts", "http_status", "error", "delivered_at")
RECEIPT_KEYS = ("published_at", "published_url")  # the outlet's receipt (回执) of the version it has


@app.command("log")
def log_(
    notice: Annotated[str | None, typer.Option("--notice", metavar="REF", help="only this notice ref")] = None,
    outlet: Annotated[str | None, typer.Option("--outlet", metavar="ID", help="only this outlet id")] = None,
    status: Annotated[LogStatus | None, typer.Option(
        "--status", metavar="STATUS", help="only pending, delivered, failed, held or cancelled deliveries")] = None,
    attempts: Annotated[bool, typer.Option(
        "--attempts", help="every HTTP try instead of one row per delivery")] = False,
    wide: Annotated[bool, typer.Option("--wide", help="every column, full errors and times, however wide")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """The delivery log: one row per notice x outlet, or with --attempts every try (times in Chongqing)."""
    from bot import desk
    from bot.store import dumps
    store = _store(_settings())
    if attempts:
        rows = store.log.attempts(ref=notice, outlet_id=outlet)
        keys = ("notice", "outlet", "attempt", "trigger", "started_at", "latency_ms", "outcome", "http_status", "error")
        columns = [("notice", ID), ("outlet", ID), ("try", VALUE), ("trigger", EXTRA), ("started", VALUE),
                   ("ms", EXTRA), ("outcome", VALUE), ("http", VALUE), ("error", FREE)]
    else:
        rows = desk.with_receipts(store, store.log.deliveries(ref=notice, outlet_id=outlet,
                                                              status=status.value if status else None))
        for row in rows:
            mark = row["published"]
            row["published_at"], row["published_url"] = (mark["at"], mark["url"]) if mark else (None, None)
            if mark and row["status"] == "delivered":  # shown as published; --json keeps the delivery's status
                row["shown"] = "published" if mark["current"] else f"published v{mark['version']}"
        keys = (*LOG_KEYS, *RECEIPT_KEYS)
        columns = [("notice", ID), ("outlet", ID), ("status", VALUE), ("why", FREE), ("tries", VALUE), ("http", VALUE),
                   ("error", FREE), ("delivered", VALUE)]
    if as_json:
        for row in rows:
            sys.stdout.write(dumps({k: row[k] for k in ((*keys, "response") if attempts else keys)}) + "\n")
        return
    if not attempts:
        keys = LOG_KEYS
        for row in rows:
            row["status"] = row.get("shown", row["status"])
    _show(columns, [[_cell(row[k], wide) for k in keys] for row in rows], wide=wide)


def _cell(value: object, wide: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, datetime):
        return _when(value, wide)
    return str(value)


@app.command()
def report(
    since_: Annotated[str, typer.Option("--since", metavar="T", help="notices released since T: an age (7d, 24h) or "
                                        "an ISO 8601 time (Chongqing time without an offset)")] = "7d",
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV (UTF-8 with a BOM, for Excel) on stdout")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Receipts (回执) per district: notices received, published, median time to publish, reminders needed."""
    import dataclasses

    from bot import desk

    settings = _settings()
    try:
        start = desk.since(since_)
    except ValueError as exc:
        errors.print(Text(f"--since: {exc}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    regions = _regions(settings)
    lines = desk.receipt_report(_store(settings), _matrix(settings, regions, require_secrets=False), start)
    if as_csv:
        sys.stdout.buffer.write(desk.report_csv(lines).encode("utf-8"))
        return
    if as_json:
        for line in lines:
            sys.stdout.write(json.dumps(dataclasses.asdict(line), ensure_ascii=False) + "\n")
        return
    _show([("district", ID), ("outlet", EXTRA), ("received", VALUE), ("published", VALUE), ("median min", VALUE),
           ("reminded", VALUE)],
          [[line.name, line.outlet, str(line.received), str(line.published),
            "" if line.median_minutes is None else f"{line.median_minutes:g}", str(line.reminded)] for line in lines],
          title=f"receipts since {_when(start, wide=True)} (notices released since then)",
          hint="debunkbot report --csv > report.csv")


outlets_app = typer.Typer(help="Outlet health: ok / degraded / paused; resume a paused outlet.",
                          no_args_is_help=False)
app.add_typer(outlets_app, name="outlets")
HEALTH_KEYS = ("outlet", "tier", "status", "consecutive_failures", "last_success_at", "last_failure_at",
               "breaker_open_until", "pending", "failed", "paused_reason")


@outlets_app.callback(invoke_without_command=True)
def outlets(
    ctx: typer.Context,
    wide: Annotated[bool, typer.Option("--wide", help="every column, however wide")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Every outlet of the matrix (and any the store still knows), with its health: ok, degraded (failing,
    breaker maybe open) or paused."""
    from bot import desk
    from bot.store import dumps
    if ctx.invoked_subcommand:
        return
    settings = _settings()
    matrix = _matrix(settings, _regions(settings), require_secrets=False)  # listing needs no secret
    rows = desk.outlet_rows(_store(settings), matrix)
    if as_json:
        for row in rows:
            sys.stdout.write(dumps(row) + "\n")
        return
    colour = {"ok": "green", "degraded": "yellow", "paused": "red"}
    _show([("outlet", ID), ("tier", VALUE), ("status", VALUE), ("pending", VALUE), ("failed", VALUE),
           ("fails in a row", EXTRA), ("breaker open until", VALUE), ("last success", EXTRA),
           ("paused because", FREE)],
          [[r["outlet"], r["tier"] or "", Text(r["status"], style=colour[r["status"]]), str(r["pending"]),
            str(r["failed"]), str(r["consecutive_failures"]), _when(r["breaker_open_until"], wide),
            _when(r["last_success_at"], wide), r["paused_reason"] or ""] for r in rows],
          title=f"{len(rows)} outlets (times in Chongqing)", wide=wide)
    paused = [r["outlet"] for r in rows if r["status"] == "paused"]
    if paused:
        console.print(f"{len(paused)} paused, deliveries held: resume with `debunkbot outlets resume ID`")


@outlets_app.command()
def resume(outlet_id: Annotated[str, typer.Argument(metavar="ID", help="outlet id")]) -> None:
    """Resume a paused outlet (or close its open breaker): its held deliveries go out at once."""
    from bot.store import Actor
    store = _store(_settings())
    held = store.health.resume(outlet_id, actor=Actor.local())
    if held is None:
        errors.print(Text.assemble((f"outlet {outlet_id!r} is not paused", "red"), " (see `debunkbot outlets`)"))
        raise typer.Exit(EXIT_BAD_INPUT)
    console.print(Text.assemble((f"resumed {outlet_id}", "green"), f": {_count(held, 'held delivery')} due now"))


@outlets_app.command()
def pause(
    outlet_id: Annotated[str, typer.Argument(metavar="ID", help="outlet id")],
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="why, for the other operators")],
) -> None:
    """Pause an outlet: its deliveries are held, never dropped, until `debunkbot outlets resume ID`."""
    from bot.store import Actor
    settings = _settings()
    matrix = _matrix(settings, _regions(settings), require_secrets=False)
    store = _store(settings)
    if outlet_id not in matrix.by_id and outlet_id not in store.health.all():
        errors.print(Text.assemble((f"no outlet {outlet_id!r}", "red"),
                                   f" in {settings.outlets} (see `debunkbot outlets`)"))
        raise typer.Exit(EXIT_BAD_INPUT)
    held = store.health.pause(outlet_id, reason, actor=Actor.local())
    if held is None:
        errors.print(Text.assemble((f"outlet {outlet_id!r} is already paused", "red"), " (see `debunkbot outlets`)"))
        raise typer.Exit(EXIT_BAD_INPUT)
    console.print(Text.assemble((f"paused {outlet_id}", "yellow"), f": {_count(held, 'delivery')} held until "
                                f"`debunkbot outlets resume {outlet_id}`"))


class RetryStatus(StrEnum):
    failed = "failed"


@app.command()
def retry(
    notice: Annotated[str | None, typer.Option("--notice", metavar="REF", help="only this notice ref")] = None,
    outlet: Annotated[str | None, typer.Option("--outlet", metavar="ID", help="only this outlet id")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", metavar="T", help="only deliveries that failed since T: an ISO 8601 time (without an offset: "
        "Chongqing time), or an age such as 30m, 2h, 1d")] = None,
    status: Annotated[RetryStatus, typer.Option("--status", metavar="STATUS", help="failed")] = RetryStatus.failed,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be requeued, change nothing")] = False,
) -> None:
    """Requeue failed deliveries: due at once, with a fresh retry schedule, next try logged as "manual"."""
    from bot import desk
    from bot.store import Actor
    cutoff = _since_option(since)
    retried = desk.retry(_store(_settings()), ref=notice, outlet_id=outlet, since=cutoff, status=status.value,
                         dry_run=dry_run, actor=Actor.local())
    rows, held = retried.rows, retried.held

    def note(outlet_id: str) -> str:
        hold = held.get(outlet_id)
        if hold is None:
            return ""
        return "held: outlet paused" if hold.paused else f"held: breaker open until {_when(hold.until)}"

    _show([("notice", ID), ("outlet", ID), ("tries", VALUE), ("note", VALUE), ("last error", FREE)],
          [[r["notice"], r["outlet"], str(r["attempts"]), note(r["outlet"]), r["error"] or ""] for r in rows],
          title=("would requeue " if dry_run else "requeued ") + _count(len(rows), "delivery"),
          hint="debunkbot log --wide")
    if dry_run:
        console.print(f"dry run: {_count(len(rows), 'delivery')} would be requeued; nothing changed")
    else:
        console.print(f"requeued {_count(len(rows), 'delivery')}; a running bot sends them at its next poll")
    for hold in sorted(held.values(), key=lambda h: h.outlet):
        why = "is paused" if hold.paused else f"has its breaker open until {_when(hold.until)}"
        console.print(Text(f"{hold.outlet} {why}: its {_count(hold.deliveries, 'delivery')} wait until then; "
                           f"send them now with `debunkbot outlets resume {hold.outlet}`", style="yellow"))


def _since_option(text: str | None) -> datetime | None:
    """``--since T`` as a time, or a one-line error and exit 2."""
    from bot import desk
    try:
        return desk.since(text) if text else None
    except ValueError as exc:
        errors.print(Text(f"--since: {exc}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None


@app.command()
def render(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    outlet: Annotated[str, typer.Option("--outlet", metavar="ID", help="outlet id")],
) -> None:
    """Preview what outlet ID would get for notice REF."""
    from channels import CHANNELS

    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions, require_secrets=False)  # a preview sends nothing
    store = _store(settings)
    found = store.log.notice(ref)
    if found is None:
        errors.print(Text(f"no notice with ref {ref!r}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT)
    target = matrix.by_id.get(outlet)
    if target is None:
        errors.print(Text(f"no outlet {outlet!r} in {settings.outlets}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT)
    notice_id, notice = found
    _, published_at = store.queue.notices_by_id([notice_id])[notice_id]
    rendered = CHANNELS[target.channel].render(notice, published_at, target.options)
    console.rule(Text(f"{target.name} ({target.id}) · {target.channel}"))
    console.print(rendered.text, markup=False, highlight=False)
    console.rule("body")
    try:
        console.print_json(rendered.body.decode())
    except json.JSONDecodeError:
        console.print(rendered.body.decode(), markup=False, highlight=False)


@app.command()
def demo(keep: Annotated[Path | None, typer.Option(
        "--keep", metavar="FOLDER", help="then stay up: the outlets, a store and an inbox in FOLDER (emptied first), "
        "and the daemon, for you to submit to and watch (`make try`)")] = None) -> None:
    """The main job end to end on the embedded default: SQLite and simulated outlets on loopback."""
    import asyncio

    from bot.demo import run_demo

    if keep is not None:
        _logging(False, log_format=_settings().log_format)
    _started()
    raise typer.Exit(asyncio.run(run_demo(console, keep)))


@app.command()
def regions(on: Annotated[str | None, typer.Option(metavar="DATE", help="a date, YYYY-MM-DD "
                                                   "(default: today in Chongqing)")] = None) -> None:
    """The district-level units that exist on a date."""
    from bot.regions import chongqing_today
    table = _regions(_settings())
    try:
        day = date.fromisoformat(on) if on else chongqing_today()
    except ValueError:
        errors.print(Text(f"--on: {on!r} is not a date; write YYYY-MM-DD, e.g. 2026-01-25", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    units = table.units_on(day)
    _show([("unit", ID), ("kind", VALUE), ("also written", FREE)],
          [[u.name, u.kind, "、".join(u.aliases)] for u in units], title=f"{len(units)} district-level units on {day}")


token_app = typer.Typer(help="Tokens for the HTTP API: each has a holder's name and a role "
                        "(viewer < editor < reviewer < operator < admin).", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    role: Annotated[RoleName, typer.Option("--role", metavar="ROLE",
                                           help="viewer, editor, reviewer, operator or admin")],
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="who holds it (a person or a system)")],
) -> None:
    """Make a token and print it, once: only its hash is kept."""
    from bot.store import Actor, Role
    store = _store(_settings())
    try:
        token, row = store.access.create(name, Role[role.value], actor=Actor.local())
    except ValueError as exc:
        errors.print(Text(f"--name: {exc}", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    errors.print(Text(f"token {row['id']} for {row['name']} ({row['role']}); it is shown this once, keep it now:",
                      style="green"))
    sys.stdout.write(token + "\n")


@token_app.command("list")
def token_list(as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False) -> None:
    """Every token made, revoked ones too (never the token itself)."""
    from bot.store import dumps
    rows = _store(_settings()).access.all()
    if as_json:
        for row in rows:
            sys.stdout.write(dumps(row) + "\n")
        return
    _show([("id", ID), ("name", ID), ("role", VALUE), ("created", VALUE), ("last used", VALUE), ("revoked", VALUE)],
          [[str(r["id"]), r["name"], r["role"], _when(r["created_at"]), _when(r["last_used_at"]),
            _when(r["revoked_at"])] for r in rows], title=f"{_count(len(rows), 'token')} (times in Chongqing)")


@token_app.command("revoke")
def token_revoke(token_id: Annotated[int, typer.Argument(metavar="ID", help="the token's id (`token list`)")]) -> None:
    """Revoke a token: every call with it is refused from now on."""
    from bot.store import Actor
    row = _store(_settings()).access.revoke(token_id, actor=Actor.local())
    if row is None:
        errors.print(Text.assemble((f"no token {token_id} that is not already revoked", "red"),
                                   " (see `debunkbot token list`)"))
        raise typer.Exit(EXIT_BAD_INPUT)
    console.print(Text.assemble((f"revoked token {token_id}", "green"), f" of {row['name']} ({row['role']})"))


@app.command("audit")
def audit_(
    actor: Annotated[str | None, typer.Option("--actor", metavar="NAME", help="only this token name or user")] = None,
    subject: Annotated[str | None, typer.Option("--subject", metavar="REF|ID",
                                                help="only this notice ref, outlet id or token id")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="T",
                                              help="an ISO 8601 time or an age (2h, 1d)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """Who changed what, when and from where: submits, retries, pauses, resumes, tokens (times in Chongqing)."""
    from bot.store import dumps
    cutoff = _since_option(since)
    rows = _store(_settings()).audit.page(actor=actor, subject=subject, since=cutoff, limit=None).rows
    if as_json:
        for row in rows:
            sys.stdout.write(dumps(row) + "\n")
        return
    _show([("at", VALUE), ("who", ID), ("role", VALUE), ("action", VALUE), ("subject", ID), ("from", EXTRA),
           ("detail", FREE)],
          [[_when(r["at"]), r["actor"], r["role"], r["action"], r["subject"] or "", r["source"],
            json.dumps(r["detail"], ensure_ascii=False)] for r in rows], title=f"{_count(len(rows), 'change')}")


# -- review before release (先审后发) ------------------------------------------------------------------------

review_app = typer.Typer(help="Review before release (先审后发, DEBUNKBOT_REVIEW_STAGES): what waits, sign a stage, "
                         "send back. You act as DEBUNKBOT_TOKEN's holder, or as the local user with the role "
                         "DEBUNKBOT_LOCAL_ROLES gives them.", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _reviewer(settings: Settings, store: Store) -> Actor:
    """Who the CLI acts as for reviews: the holder of ``DEBUNKBOT_TOKEN`` (its name and role), else the local
    user with the role ``DEBUNKBOT_LOCAL_ROLES`` maps their name to (``zhang=reviewer,li=operator``); a local user
    not listed has no review role."""
    import socket

    from bot.store import Actor, Role

    where = f"cli@{socket.gethostname()}"
    if settings.token is not None:
        found = store.access.authenticate(settings.token.get_secret_value().strip())
        if found is None:
            errors.print(Text("DEBUNKBOT_TOKEN is unknown or revoked; nothing was changed (ask an admin for a token: "
                              "debunkbot token create --role reviewer --name NAME)", style="red"))
            raise typer.Exit(EXIT_BAD_INPUT)
        return Actor(found.name, found.role.name, where)
    local = Actor.local()
    roles = {}
    for pair in settings.local_roles.split(","):
        name, _, role = pair.partition("=")
        if name.strip():
            try:
                roles[name.strip()] = Role.named(role.strip())
            except ValueError as exc:
                errors.print(Text(f"DEBUNKBOT_LOCAL_ROLES: {exc}; nothing was changed", style="red"))
                raise typer.Exit(EXIT_BAD_INPUT) from None
    role = roles.get(local.name)
    return Actor(local.name, role.name if role else local.role, where)


def _reviewing(releases: bool = True) -> tuple[Store, Actor, Concerned | None]:
    """What a review decision needs: the store, who decides, and (when the decision may release the notice)
    which outlets a notice concerns, from the matrix; a release stores deliveries, it sends nothing, so no
    outlet secret is needed."""
    settings = _settings()
    store = _store(settings)
    concerned = _matrix(settings, _regions(settings), require_secrets=False).concerned_by if releases else None
    return store, _reviewer(settings, store), concerned


def _review_outcome(call: object, *args: object) -> object:
    from bot.store import ReviewConflict, ReviewRefused

    try:
        return call(*args)  # type: ignore[operator]
    except (ReviewRefused, ReviewConflict, LookupError, ValueError) as exc:
        errors.print(Text.assemble(("refused", "red"), f" {str(exc).strip(chr(39) + chr(34))}"))
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _stage_words(stages: int, stage: int | None) -> str:
    from bot.web.pages.i18n import translations
    from bot.web.pages.stages import stage_name

    return "-" if stage is None else f"{stage_name(stages, stage, translations('zh_Hans'))} ({stage}/{stages})"


@review_app.command("list")
def review_list(as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False) -> None:
    """What waits for review (or was sent back), the longest waiting first, with the stage each waits for."""
    from bot.store import dumps
    rows = _store(_settings()).review.waiting()
    if as_json:
        for s in rows:
            sys.stdout.write(dumps({"ref": s.ref, "kind": s.kind, "state": s.state, "waiting_for": s.waiting_for,
                                    "stages": s.stages, "waiting_since": s.waiting_since,
                                    "authors": list(s.authors)}) + "\n")
        return
    _show([("ref", ID), ("kind", VALUE), ("title", FREE), ("waits for", VALUE), ("state", VALUE), ("since", VALUE),
           ("by", ID)],
          [[s.ref, s.kind, s.notice.title if s.notice else "", _stage_words(s.stages, s.waiting_for), s.state,
            _when(s.waiting_since), "、".join(s.authors)] for s in rows],
          title=f"{_count(len(rows), 'review')} waiting (times in Chongqing)")


@review_app.command("show")
def review_show(ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
                as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False) -> None:
    """A notice's review: what waits, every sign-off, send-back and release, with the hash each person saw."""
    store = _store(_settings())
    found = store.review.all_of(ref)
    if not found:
        errors.print(Text(f"{ref!r} has no review", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT)
    if as_json:
        from bot.web.api import review_doc

        console.print_json(json.dumps([review_doc(s).model_dump(mode="json") for s in found], ensure_ascii=False))
        return
    for s in found:
        console.print(Text(f"{s.kind} {s.ref}: {s.state}, {s.stages} stage(s), waits for "
                           f"{_stage_words(s.stages, s.waiting_for)}; by {'、'.join(s.authors)}; content "
                           f"{s.content_hash[:16]}…"))
        if s.urgent_reason:
            console.print(Text(f"紧急发布 urgent release by {s.released_by}: {s.urgent_reason}", style="yellow"))
        _show([("stage", VALUE), ("decision", VALUE), ("by", ID), ("at", VALUE), ("comment", FREE), ("saw", EXTRA)],
              [[_stage_words(s.stages, d.stage), d.decision + ("" if d.counts else " (void)"), d.actor, _when(d.at),
                d.comment or "", d.content_hash[:12]] for d in s.decisions])


@review_app.command("sign")
def review_sign(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    stage: Annotated[int, typer.Option("--stage", metavar="N", help="the stage it waits for (review list)")],
    comment: Annotated[str, typer.Option("--comment", metavar="TEXT", help="what you checked")] = "",
) -> None:
    """Sign stage N of REF; the last stage releases it to every outlet it concerns. Exit 2 when refused."""
    store, reviewer, concerned = _reviewing()
    state = _review_outcome(store.review.sign, ref, stage, reviewer, comment, concerned)
    released = getattr(state, "state", "") == "released"
    console.print(Text.assemble(("ok", "green"), f" {ref}: stage {stage} signed"
                                + ("; released to the outlets" if released else "")))


@review_app.command("return")
def review_return(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    comment: Annotated[str, typer.Option("--comment", metavar="TEXT", help="what to change (required)")],
) -> None:
    """Send REF back to its author with a comment: its sign-offs stop counting. Exit 2 when refused."""
    store, reviewer, _ = _reviewing(releases=False)
    _review_outcome(store.review.return_, ref, reviewer, comment)
    console.print(Text.assemble(("ok", "green"), f" {ref}: sent back to its author"))


@app.command("release")
def release(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="why it cannot wait (紧急发布)")],
) -> None:
    """Release an urgent draft before every review stage is signed (operator; at least one stage signed)."""
    store, reviewer, concerned = _reviewing()
    _review_outcome(store.review.release, ref, reviewer, reason, concerned)
    console.print(Text.assemble(("紧急发布 released", "yellow"), f" {ref}: {reason}"))


@app.command("review-sheet")
def review_sheet(
    ref: Annotated[str, typer.Argument(metavar="REF", help="the notice's ref")],
    pdf: Annotated[Path | None, typer.Option("--pdf", metavar="FILE", help="print it to this PDF (A4) with "
                                             "headless Chromium")] = None,
    html: Annotated[Path | None, typer.Option("--html", metavar="FILE", help="write the HTML here (else "
                                              "standard output)")] = None,
    language: Annotated[str, typer.Option("--language", metavar="LANG", help="zh_Hans or en")] = "zh_Hans",
    chromium: Annotated[str, typer.Option("--chromium", metavar="PATH")] = "/usr/bin/chromium",
) -> None:
    """The 审批表 of REF: the notice, each stage (name, reviewer, time, comment), the release; one A4 page."""
    from bot.web.pages.i18n import translations
    from bot.web.pages.review import sheet_html, sheet_pdf

    found = _store(_settings()).review.get(ref)
    if found is None:
        errors.print(Text(f"{ref!r} has no review", style="red"))
        raise typer.Exit(EXIT_BAD_INPUT)
    page = sheet_html(found, translations(language), standalone=True)
    if pdf is not None:
        try:
            sheet_pdf(page, pdf, chromium)
        except (OSError, RuntimeError) as exc:
            errors.print(Text(f"no PDF written: {exc}", style="red"))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        errors.print(Text(f"wrote {pdf}", style="green"))
    if html is not None:
        html.write_text(page, encoding="utf-8")
        errors.print(Text(f"wrote {html}", style="green"))
    elif pdf is None:
        sys.stdout.write(page)
