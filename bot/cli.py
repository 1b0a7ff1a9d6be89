"""The ``debunkbot`` command: submit, run, status, log, render, demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from bot.dispatch import make_client
from bot.intake import expand, submit_files
from bot.outlets import MatrixError, OutletMatrix, Tier, load_matrix
from bot.regions import RegionTable
from bot.settings import Settings
from bot.store import Store, dumps, utcnow

app = typer.Typer(help="Push verified debunk notices (辟谣通报) to every outlet of the matrix.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)  # messages name paths: never wrap them

STATUS_WORDS = {"delivered": "已送达 delivered", "pending": "待发送 pending", "failed": "失败 failed",
                "held": "暂缓 held"}


class LogStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"
    held = "held"


def _settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic's ValidationError names the setting
        errors.print(f"[red]bad setting:[/] {exc}")
        raise typer.Exit(2) from None


def _regions(settings: Settings) -> RegionTable:
    try:
        return RegionTable.load(settings.regions)
    except ValueError as exc:
        errors.print(f"[red]region table refused:[/] {exc}")
        raise typer.Exit(2) from None


def _matrix(settings: Settings, regions: RegionTable) -> OutletMatrix:
    try:
        return load_matrix(settings.outlets, regions, public_ip=settings.public_ip)
    except MatrixError as exc:
        errors.print(f"[red]outlet matrix refused, nothing sent:[/] {exc}")
        raise typer.Exit(2) from None


def _store(settings: Settings) -> Store:
    from bot.schema import SchemaOutdated

    try:
        return Store.open(settings.database_url)
    except SchemaOutdated as exc:
        errors.print(f"[red]store refused:[/] {exc}")
        raise typer.Exit(2) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=errors, show_path=False)])
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def submit(paths: Annotated[list[Path], typer.Argument(help="notice files or folders")]) -> None:
    """Validate and store notices. Exits 0 only when every file was valid, 2 otherwise."""
    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions)
    store = _store(settings)
    files = expand(paths)
    if not files:
        errors.print("[red]no notice files found[/] (expected .yaml, .yml or .json)")
        raise typer.Exit(2)
    results = submit_files(files, store, matrix, regions)
    for result in results:
        if result.ok:
            for added in result.added:
                what = f"stored, {added.deliveries} deliveries" if added.created else "already stored, unchanged"
                console.print(f"[green]ok[/] {result.path}: {added.ref} {what}")
        else:
            errors.print(f"[red]{'refused' if result.deferred else 'rejected'}[/] {result.error}")
    raise typer.Exit(0 if all(r.ok for r in results) else 3 if any(r.deferred for r in results) else 2)


UntilIdle = Annotated[bool, typer.Option("--until-idle", help="exit 0 once nothing is pending or scheduled")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v")]


@app.command()
def run(until_idle: UntilIdle = False, verbose: Verbose = False) -> None:
    """Run the bot: watch the inbox, release embargoes, send and retry. Stops on SIGINT/SIGTERM."""
    _daemon(until_idle, verbose, cluster_jobs=True)


@app.command()
def worker(until_idle: UntilIdle = False, verbose: Verbose = False) -> None:
    """Send only: claim and deliver from the shared store. Run any number, on any machine."""
    _daemon(until_idle, verbose, cluster_jobs=False)


def _daemon(until_idle: bool, verbose: bool, cluster_jobs: bool) -> None:
    from bot.scheduler import Daemon

    _logging(verbose)
    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions)
    store = _store(settings)

    async def main() -> None:
        async with make_client(settings) as client, contextlib.AsyncExitStack() as feeds:
            if cluster_jobs and any(o.channel == "feed" for o in matrix.outlets):  # feed outlets fetch from the bot
                from bot.feed import FeedServer

                server = await feeds.enter_async_context(FeedServer(store, matrix, settings.feed_host, settings.feed_port))
                logging.getLogger("debunkbot").info("feeds at http://%s:%d/feeds/OUTLET.atom (or .json)",
                                                    server.host, server.port)
            daemon = Daemon(settings, store, matrix, regions, client, cluster_jobs=cluster_jobs)
            daemon.install_signal_handlers()
            await daemon.run(until_idle=until_idle)

    asyncio.run(main())
    store.close()
    logging.getLogger("debunkbot").info("stopped (%s)", store.owner)


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


@app.command()
def status(ref: str) -> None:
    """Who has notice REF: a summary per tier and the outlets not yet delivered."""
    settings = _settings()
    store = _store(settings)
    if store.notice(ref) is None:
        errors.print(f"[red]no notice with ref {ref!r}[/]")
        raise typer.Exit(2)
    rows = store.delivery_log(ref=ref)
    table = Table(title=f"{ref}: deliveries by tier")
    for column in ("tier", "outlets", "delivered", "pending", "held", "failed"):
        table.add_column(column, justify="left" if column == "tier" else "right")
    for tier in Tier:
        tier_rows = [r for r in rows if r["tier"] == tier.value]
        if tier_rows:
            table.add_row(tier.value, str(len(tier_rows)),
                          *(str(sum(r["status"] == s for r in tier_rows)) for s in ("delivered", "pending", "held", "failed")))
    console.print(table)
    missing = [r for r in rows if r["status"] != "delivered"]
    if not missing:
        console.print(f"[green]every outlet ({len(rows)}) has {ref}[/]")
        return
    outstanding = Table(title=f"{len(missing)} outlet(s) without {ref}")
    for column in ("outlet", "status", "attempts", "last error", "next try"):
        outstanding.add_column(column)
    for r in missing:
        outstanding.add_row(r["outlet"], STATUS_WORDS[r["status"]], str(r["attempts"]), r["error"] or "",
                            r["next_attempt_at"].isoformat(timespec="seconds") if r["next_attempt_at"] else "")
    console.print(outstanding)


LOG_KEYS = ("notice", "outlet", "status", "attempts", "http_status", "error", "delivered_at")


@app.command("log")
def log_(
    notice: Annotated[str | None, typer.Option("--notice", help="only this notice ref")] = None,
    outlet: Annotated[str | None, typer.Option("--outlet", help="only this outlet id")] = None,
    status: Annotated[LogStatus | None, typer.Option("--status")] = None,
    attempts: Annotated[bool, typer.Option("--attempts", help="every HTTP try instead of one row per delivery")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
) -> None:
    """The delivery log: one row per notice x outlet, or with --attempts every try."""
    store = _store(_settings())
    if attempts:
        rows = store.attempt_log(ref=notice, outlet_id=outlet)
        keys = ("notice", "outlet", "attempt", "trigger", "started_at", "latency_ms", "outcome", "http_status", "error")
    else:
        rows = store.delivery_log(ref=notice, outlet_id=outlet, status=status.value if status else None)
        keys = LOG_KEYS
    if as_json:
        for row in rows:
            sys.stdout.write(dumps({k: row[k] for k in ((*keys, "response") if attempts else keys)}) + "\n")
        return
    table = Table(show_lines=False)
    for key in keys:
        table.add_column(key)
    for row in rows:
        table.add_row(*(_cell(row[k]) for k in keys))
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.1f}"
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")  # type: ignore[attr-defined]
    return str(value)


outlets_app = typer.Typer(help="Outlet health: ok / degraded / paused; resume a paused outlet.",
                          no_args_is_help=False)
app.add_typer(outlets_app, name="outlets")
HEALTH_KEYS = ("outlet", "tier", "status", "consecutive_failures", "last_success_at", "last_failure_at",
               "breaker_open_until", "pending", "failed", "paused_reason")


@outlets_app.callback(invoke_without_command=True)
def outlets(
    ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False
) -> None:
    """Every outlet the store knows, with its health: ok, degraded (failing, breaker maybe open) or paused."""
    if ctx.invoked_subcommand:
        return
    store = _store(_settings())
    health = store.outlet_health()
    by_outlet = store.deliveries_by_outlet()
    rows = []
    for outlet_id in sorted(by_outlet.keys() | health.keys()):
        h = health.get(outlet_id)
        counts = by_outlet.get(outlet_id, {})
        rows.append({
            "outlet": outlet_id, "tier": counts.get("tier"), "status": h.status if h else "ok",
            "consecutive_failures": h.consecutive_failures if h else 0,
            "last_success_at": h.last_success_at if h else None, "last_failure_at": h.last_failure_at if h else None,
            "breaker_open_until": h.open_until if h else None, "pending": counts.get("pending", 0),
            "failed": counts.get("failed", 0), "paused_reason": h.paused_reason if h else None,
        })
    if as_json:
        for row in rows:
            sys.stdout.write(dumps(row) + "\n")
        return
    table = Table(title="outlet health")
    for key in HEALTH_KEYS:
        table.add_column(key.replace("_", " "))
    colour = {"ok": "green", "degraded": "yellow", "paused": "red"}
    for row in rows:
        cells = [_cell(row[k]) for k in HEALTH_KEYS]
        cells[2] = f"[{colour[row['status']]}]{row['status']}[/]"
        table.add_row(*cells)
    console.print(table)
    paused = [r["outlet"] for r in rows if r["status"] == "paused"]
    if paused:
        console.print(f"{len(paused)} paused, deliveries held: resume with `debunkbot outlets resume ID`")


@outlets_app.command()
def resume(outlet_id: Annotated[str, typer.Argument(metavar="ID", help="outlet id")]) -> None:
    """Resume a paused outlet (or close its open breaker): its held deliveries go out at once."""
    store = _store(_settings())
    held = store.resume_outlet(outlet_id)
    if held is None:
        errors.print(f"[red]outlet {outlet_id!r} is not paused[/] (see `debunkbot outlets`)")
        raise typer.Exit(2)
    console.print(f"[green]resumed {outlet_id}[/]: {held} held deliveries are due now")


class RetryStatus(StrEnum):
    failed = "failed"


@app.command()
def retry(
    notice: Annotated[str | None, typer.Option("--notice", help="only this notice ref")] = None,
    outlet: Annotated[str | None, typer.Option("--outlet", help="only this outlet id")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="only deliveries that failed since T: ISO-8601 time, or an age such as 30m, 2h, 1d")] = None,
    status: Annotated[RetryStatus, typer.Option("--status")] = RetryStatus.failed,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be requeued, change nothing")] = False,
) -> None:
    """Requeue failed deliveries: due at once, with a fresh retry schedule, next try logged as "manual"."""
    try:
        cutoff = _since(since) if since else None
    except ValueError as exc:
        errors.print(f"[red]--since:[/] {exc}")
        raise typer.Exit(2) from None
    store = _store(_settings())
    rows = store.requeue(ref=notice, outlet_id=outlet, since=cutoff, status=status.value, dry_run=dry_run)
    paused = store.paused_outlets()
    table = Table(title=("would requeue" if dry_run else "requeued") + f" {len(rows)} deliveries")
    for column in ("notice", "outlet", "attempts", "last error", "note"):
        table.add_column(column)
    for r in rows:
        note = "held: outlet paused (`debunkbot outlets resume`)" if r["outlet"] in paused else ""
        table.add_row(r["notice"], r["outlet"], str(r["attempts"]), r["error"] or "", note)
    console.print(table)
    if dry_run:
        console.print(f"dry run: {len(rows)} deliveries would be requeued; nothing changed")
    else:
        console.print(f"requeued {len(rows)} deliveries; a running bot sends them at its next poll")


def _since(text: str) -> datetime:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[match[2]]
        return utcnow() - timedelta(seconds=float(match[1]) * unit)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor an age such as 30m, 2h or 1d") from None
    return when.astimezone(UTC) if when.tzinfo is None else when


@app.command()
def render(ref: str, outlet: Annotated[str, typer.Option("--outlet", help="outlet id")]) -> None:
    """Preview what outlet ID would get for notice REF."""
    from channels import CHANNELS

    settings = _settings()
    regions = _regions(settings)
    matrix = _matrix(settings, regions)
    store = _store(settings)
    found = store.notice(ref)
    if found is None:
        errors.print(f"[red]no notice with ref {ref!r}[/]")
        raise typer.Exit(2)
    target = matrix.by_id.get(outlet)
    if target is None:
        errors.print(f"[red]no outlet {outlet!r} in {settings.outlets}[/]")
        raise typer.Exit(2)
    notice_id, notice = found
    _, published_at = store.notices_by_id([notice_id])[notice_id]
    rendered = CHANNELS[target.channel].render(notice, published_at, target.options)
    console.rule(f"{target.name} ({target.id}) · {target.channel}")
    console.print(rendered.text, markup=False, highlight=False)
    console.rule("body")
    try:
        console.print_json(rendered.body.decode())
    except json.JSONDecodeError:
        console.print(rendered.body.decode(), markup=False, highlight=False)


@app.command()
def demo() -> None:
    """The main job end to end on the embedded default: SQLite and simulated outlets on loopback."""
    from bot.demo import run_demo

    raise typer.Exit(asyncio.run(run_demo(console)))


@app.command()
def regions(on: Annotated[str | None, typer.Option(help="date, YYYY-MM-DD")] = None) -> None:
    """The district-level units that exist on a date (default today)."""
    table = _regions(_settings())
    day = date.fromisoformat(on) if on else date.today()
    units = table.units_on(day)
    for unit in units:
        console.print(f"{unit.name}\t{unit.kind}\t{', '.join(unit.aliases)}")
    console.print(f"{len(units)} district-level units on {day}")
