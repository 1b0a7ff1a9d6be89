"""``debunkbot demo``: the whole job on the embedded default, against simulated outlets.

A temporary SQLite store, the example 5+41+N matrix from config/outlets.yaml with every
outlet replaced by a real HTTP server on loopback (some flaky, all verifying signatures):
the platform fakes of bot/testing (webhook receivers, DingTalk and WeCom robots, Feishu and
Lark bots, Weibo, WeChat drafts), and the bot's own web server, whose feeds the demo then reads as
the feed outlets would. Exits 0 once every outlet has every notice.

With ``keep`` (``debunkbot demo --keep``, ``make try``) it then stays up: the same simulated outlets, the
store and an inbox in a folder of your choosing, and the daemon running with its web server on
``DEBUNKBOT_HTTP_BIND`` (default 127.0.0.1:8700), for a newcomer to submit to and watch; it writes the settings
to ``FOLDER/env`` and prints the server's URL and what to try. Ctrl-C stops it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import shlex
import shutil
import tempfile
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from bot.http import make_sender
from bot.intake import expand, submit_files
from bot.matrix import LiveMatrix
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable, Tier, chongqing_today
from bot.scheduler import Daemon
from bot.settings import CONFIG, Settings
from bot.store import Store
from bot.testing import DingTalkRobots, FeishuBots, WebhookOutlets, WeChatMPAPI, WeComRobots, WeiboAPI, read_feed
from bot.web import Site, create_app
from bot.web.server import THREADS_BESIDE_DISPATCHER, BindError, WebServer, WebServerFailed

FLAKY = [503, 502]  # a few outlets fail twice before they take a post


class Fakes:
    """One fake per platform, with a credential for each outlet of the example matrix."""

    def __init__(self, example: list[dict[str, Any]]) -> None:
        by_channel: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in example:
            by_channel[entry["channel"]].append(entry)
        self.secrets: dict[str, str] = {}  # outlet id -> what its secret_env holds
        self.flaky = {o["id"] for o in example[3::7] if o["channel"] in ("webhook", "dingtalk", "wecom")}
        hooks, robots, keys, bots, larks, tokens, accounts = {}, {}, set(), {}, {}, set(), {}
        for o in example:
            i, channel = o["id"], o["channel"]
            token = secrets.token_hex(8)
            if channel == "webhook":
                hooks[i] = self.secrets[i] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            elif channel == "dingtalk":
                robots[token] = "SEC" + secrets.token_hex(16)
                self.secrets[i] = f"{token}:{robots[token]}"
            elif channel == "wecom":
                keys.add(token)
                self.secrets[i] = token
            elif channel in ("feishu", "lark"):
                (bots if channel == "feishu" else larks)[token] = secrets.token_hex(8)
                self.secrets[i] = f"{token}:{(bots if channel == 'feishu' else larks)[token]}"
            elif channel == "weibo":
                tokens.add(token)
                self.secrets[i] = token
            elif channel == "wechat_mp":
                accounts[o["options"]["appid"]] = self.secrets[i] = secrets.token_hex(16)
            elif channel == "feed" and o.get("secret_env"):
                self.secrets[i] = token
        self.robot_of = {i: s.split(":")[0] for i, s in self.secrets.items()}
        script = {(i if by == "webhook" else self.robot_of[i]): list(FLAKY)
                  for i in self.flaky for by in [next(o["channel"] for o in example if o["id"] == i)]}
        self.webhook = WebhookOutlets(hooks, script={i: s for i, s in script.items() if i in hooks})
        self.platforms: dict[str, Any] = {
            "dingtalk": DingTalkRobots(robots, script=script),
            "wecom": WeComRobots(keys, script=script),
            "feishu": FeishuBots(bots),
            "lark": FeishuBots(larks),
            "weibo": WeiboAPI(tokens, "piyao.cq.example"),
            "wechat_mp": WeChatMPAPI(accounts, {o["options"]["thumb_media_id"] for o in by_channel["wechat_mp"]}),
        }

    async def __aenter__(self) -> Fakes:
        await self.webhook.__aenter__()
        for fake in self.platforms.values():
            await fake.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.webhook.__aexit__(*exc)
        for fake in self.platforms.values():
            await fake.__aexit__(*exc)

    def url(self, entry: dict[str, Any]) -> str | None:
        if entry["channel"] == "webhook":
            return self.webhook.url(entry["id"])
        return None if entry["channel"] == "feed" else self.platforms[entry["channel"]].url

    def refused(self) -> int:
        """Posts a fake refused for a signature, a length or a rate limit (scripted failures aside)."""
        return len(self.webhook.refused) + sum(code != -1 for f in self.platforms.values() for _, code in f.refused)

    def received(self) -> int:
        return sum(len(ids) for ids in self.webhook.delivered().values()) + sum(
            len(f.received) for f in self.platforms.values())


async def run_demo(console: Console, keep: Path | None = None) -> int:
    regions = RegionTable.load(CONFIG / "regions.yaml")
    example = yaml.safe_load((CONFIG / "outlets.yaml").read_text(encoding="utf-8"))["outlets"]

    with contextlib.ExitStack() as folders:
        if keep is None:
            work = Path(folders.enter_context(tempfile.TemporaryDirectory(prefix="debunkbot-demo-")))
        else:
            shutil.rmtree(keep, ignore_errors=True)  # afresh: the demo counts every delivery in the store
            work = keep
            work.mkdir(parents=True)
        async with Fakes(example) as outlets:
            for entry in example:
                if url := outlets.url(entry):
                    entry["url"] = url
            matrix_path = work / "outlets.yaml"
            matrix_path.write_text(yaml.safe_dump({"outlets": example}, allow_unicode=True), encoding="utf-8")
            environ = {o["secret_env"]: outlets.secrets[o["id"]] for o in example if o.get("secret_env")}
            matrix = load_matrix(matrix_path, regions, environ=environ)
            settings = Settings(database_url=f"sqlite:///{work / 'demo.sqlite3'}", outlets=matrix_path,
                                retry_schedule="0.5,1,2,4", scan_interval=0.5, inbox=None)
            store = Store.open(settings.database_url)

            channels = Counter(o.channel for o in matrix.outlets)
            console.print(f"[bold]debunkbot demo[/]: {len(matrix)} simulated outlets on 127.0.0.1 "
                          f"({_tiers(matrix.outlets)}; {', '.join(f'{n} {c}' for c, n in channels.items())}), "
                          f"{len(outlets.flaky)} of them flaky; store {escape(settings.database_url)}")
            console.print(_why_these_numbers(matrix.outlets, regions))
            results = submit_files(expand([CONFIG / "samples"]), store, matrix, regions)
            for result in results:
                for added in result.added:
                    console.print(f"  submitted {added.ref}: {added.deliveries} deliveries "
                                  f"({escape(result.path.name)})")
                if not result.ok:
                    console.print(Text(f"  rejected {result.error}", style="red"))
            total = sum(store.log.counts().values())

            with Progress(TextColumn("[bold]fan-out"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[retries]} retries"), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("fan-out", total=total, retries=0)
                retries = 0

                def progress(records: object) -> None:
                    nonlocal retries
                    done = [r for r in records if r.outcome != "retry"]  # type: ignore[attr-defined]
                    retries += len(records) - len(done)  # type: ignore[arg-type]
                    bar.update(task, advance=len(done), retries=retries)

                async with make_sender(settings) as client:
                    await Daemon(settings, store, matrix, regions, client, on_recorded=progress).run(until_idle=True)
                # the feed outlets pull from the bot's web server: each fetch is a delivery
                async with WebServer(create_app(Site(settings, store, regions, matrix)), "127.0.0.1:0") as web:
                    for outlet in matrix.outlets:
                        if outlet.channel == "feed":
                            entries = await read_feed(f"{web.url}/feeds/{outlet.id}.atom", matrix.secret_for(outlet.id))
                            bar.update(task, advance=len(entries))

            console.print(_matrix_table(store))
            counts = store.log.counts()
            fetched = sum(1 for t in store.log.attempts() if t["trigger"] == "fetch")
            ok = counts.get("delivered", 0) == total and not outlets.refused() and outlets.received() + fetched == total
            console.print(
                f"{counts.get('delivered', 0)}/{total} deliveries confirmed in the delivery log; "
                f"platforms verified and took {outlets.received()} posts, feeds were fetched for {fetched}, "
                f"refused {outlets.refused()}."
            )
            console.print("[green bold]every outlet has every notice[/]" if ok
                          else "[red bold]not every outlet has every notice[/]")
            if keep is not None and ok:
                ok = await _stay_up(console, work, settings, store, matrix, regions, environ)
            elif keep is None:
                console.print("Next: `make try` leaves this running with an inbox, for you to submit notices to "
                              "and watch (`.venv/bin/debunkbot --help` lists every command).")
            store.close()
            return 0 if ok else 1
    return 1  # not reached: the block above returns


def _why_these_numbers(outlets: object, regions: RegionTable) -> str:
    """The example matrix is Chongqing's 5+41+N as it stands today: say why it counts what it counts."""
    counts = Counter(o.tier.value for o in outlets)  # type: ignore[attr-defined]
    today = chongqing_today()
    merged: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in regions.regions:
        if r.successor and r.valid_until and r.valid_until <= today:
            merged[(r.successor, r.valid_until.isoformat())].append(r.name)
    changes = "; ".join(f"{' and '.join(names)} merged into {into} on {day}" for (into, day), names in merged.items())
    return (f"Chongqing's matrix is called 5+41+N; here it is {counts['city']}+{counts['district']}+{counts['other']}: "
            f"{counts['city']} city platforms, {counts['district']} district media centres (one per district-level "
            f"unit on {today}{': ' + changes if changes else ''}), and {counts['other']} other outlets, "
            "the open-ended N.")


async def _stay_up(console: Console, work: Path, settings: Settings, store: Store, matrix: OutletMatrix,
                   regions: RegionTable, environ: dict[str, str]) -> bool:
    """Keep the simulated outlets up and run the daemon, with its web server, on an inbox until Ctrl-C or
    SIGTERM. False when the web server cannot listen."""
    inbox = work / "inbox"
    inbox.mkdir(exist_ok=True)
    settings = settings.model_copy(update={"inbox": inbox})
    env = {"DEBUNKBOT_DATABASE_URL": settings.database_url, "DEBUNKBOT_OUTLETS": str(settings.outlets),
           **environ}
    (work / "env").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()), encoding="utf-8")
    sample = sorted((CONFIG / "samples").iterdir())[0]
    feed = next((o.id for o in matrix.outlets if o.channel == "feed" and not matrix.secret_for(o.id)), "OUTLET")
    async with make_sender(settings) as client:
        # the matrix file in FOLDER can be edited and reloaded (SIGHUP, POST /api/v1/matrix:reload) as in production
        live = LiveMatrix(matrix, load=partial(load_matrix, settings.outlets, regions, environ=environ))
        daemon = Daemon(settings, store, live, regions, client)
        daemon.install_signal_handlers()
        live.install_signal_handler()
        try:
            async with WebServer(create_app(Site(settings, store, regions, daemon.live)), settings.http_bind,
                                 stop=daemon.stop, threads=THREADS_BESIDE_DISPATCHER) as web:
                console.print(f"""
[bold]A local debunkbot is running[/] on the simulated outlets above; Ctrl-C stops it.
  web     {escape(web.url)}   (/healthz, /readyz, the API under /api/v1, /openapi.json)
  feed    {escape(web.url)}/feeds/{escape(feed)}.atom   (what a feed outlet reads)
  inbox   {escape(str(inbox))}   (drop a notice file here and watch it go out)
  store   {escape(settings.database_url)}
  matrix  {escape(str(settings.outlets))}
In another terminal, load its settings and try:
  . {escape(shlex.quote(str(work / 'env')))}
  sed 's/ref: cq-2026-1127-001/ref: my-first/' {escape(str(sample))} > {escape(str(inbox))}/mine.yaml
  .venv/bin/debunkbot status my-first
  .venv/bin/debunkbot log --notice my-first
  .venv/bin/debunkbot outlets
  curl {escape(web.url)}/feeds/{escape(feed)}.json
""")
                await daemon.run()
        except BindError as exc:
            console.print(Text(str(exc), style="red"))
            return False
        except WebServerFailed:  # logged when it stopped
            return False
    logging.getLogger("debunkbot").info("stopped")
    return True


def _tiers(outlets: object) -> str:
    counts = Counter(o.tier.value for o in outlets)  # type: ignore[attr-defined]
    return " + ".join(f"{counts[t.value]} {t.value}" for t in Tier)


def _matrix_table(store: Store) -> Table:
    rows = store.log.deliveries()
    table = Table(title="the matrix, by tier")
    table.add_column("notice")
    for tier in Tier:
        table.add_column(tier.value, justify="right")
    for ref in dict.fromkeys(r["notice"] for r in rows):
        cells = []
        for tier in Tier:
            tier_rows = [r for r in rows if r["notice"] == ref and r["tier"] == tier.value]
            done = sum(r["status"] == "delivered" for r in tier_rows)
            colour = "green" if done == len(tier_rows) else "red"
            cells.append(f"[{colour}]{done}/{len(tier_rows)}[/]" if tier_rows else "-")
        table.add_row(ref, *cells)
    return table
