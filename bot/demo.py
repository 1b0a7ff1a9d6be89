"""``debunkbot demo``: the whole job on the embedded default, against simulated outlets.

A temporary SQLite store, the example 5+41+N matrix from config/outlets.yaml with every
outlet replaced by a real HTTP server on loopback (some flaky, all verifying signatures),
and the sample notices in config/samples/. Exits 0 once every outlet has every notice.
"""

from __future__ import annotations

import base64
import secrets
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.dispatch import make_client
from bot.intake import expand, submit_files
from bot.outlets import Tier, load_matrix
from bot.regions import RegionTable
from bot.scheduler import Daemon
from bot.settings import CONFIG, Settings
from bot.store import Store
from bot.testing import WebhookOutlets

FLAKY = [503, 502]  # a few outlets fail twice before they take a post


async def run_demo(console: Console) -> int:
    regions = RegionTable.load(CONFIG / "regions.yaml")
    example = yaml.safe_load((CONFIG / "outlets.yaml").read_text(encoding="utf-8"))["outlets"]
    outlet_secrets = {o["id"]: "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode() for o in example}
    script: dict[str, list[int | str]] = {o["id"]: list(FLAKY) for o in example[3::7]}

    with tempfile.TemporaryDirectory(prefix="debunkbot-demo-") as tmp:
        work = Path(tmp)
        async with WebhookOutlets(outlet_secrets, script=script) as outlets:
            for entry in example:
                entry["url"] = outlets.url(entry["id"])
            matrix_path = work / "outlets.yaml"
            matrix_path.write_text(yaml.safe_dump({"outlets": example}, allow_unicode=True), encoding="utf-8")
            environ = {o["secret_env"]: outlet_secrets[o["id"]] for o in example}
            matrix = load_matrix(matrix_path, regions, environ=environ)
            settings = Settings(database_url=f"sqlite:///{work / 'demo.sqlite3'}", outlets=matrix_path,
                                retry_schedule="0.5,1,2,4", scan_interval=0.5, inbox=None)
            store = Store.open(settings.database_url)

            console.print(f"[bold]debunkbot demo[/]: {len(matrix)} simulated outlets on 127.0.0.1 "
                          f"({_tiers(matrix.outlets)}), {len(script)} of them flaky; store {settings.database_url}")
            results = submit_files(expand([CONFIG / "samples"]), store, matrix, regions)
            for result in results:
                for added in result.added:
                    console.print(f"  submitted {added.ref}: {added.deliveries} deliveries ({result.path.name})")
                if not result.ok:
                    console.print(f"[red]  rejected {result.error}[/]")
            total = sum(store.counts().values())

            with Progress(TextColumn("[bold]fan-out"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[retries]} retries"), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task("fan-out", total=total, retries=0)
                retries = 0

                def progress(records: object) -> None:
                    nonlocal retries
                    done = [r for r in records if r.outcome != "retry"]  # type: ignore[attr-defined]
                    retries += len(records) - len(done)  # type: ignore[arg-type]
                    bar.update(task, advance=len(done), retries=retries)

                async with make_client(settings) as client:
                    await Daemon(settings, store, matrix, regions, client, on_recorded=progress).run(until_idle=True)

            console.print(_matrix_table(store))
            counts = store.counts()
            unique = sum(len(ids) for ids in outlets.delivered().values())
            ok = counts.get("delivered", 0) == total and not outlets.refused and unique == total
            console.print(
                f"{counts.get('delivered', 0)}/{total} deliveries confirmed in the delivery log; "
                f"receivers verified {len(outlets.posts)} signed posts ({unique} distinct), "
                f"refused {len(outlets.refused)}."
            )
            console.print("[green bold]every outlet has every notice[/]" if ok else "[red bold]not every outlet has every notice[/]")
            store.close()
            return 0 if ok else 1


def _tiers(outlets: object) -> str:
    counts = Counter(o.tier.value for o in outlets)  # type: ignore[attr-defined]
    return " + ".join(f"{counts[t.value]} {t.value}" for t in Tier)


def _matrix_table(store: Store) -> Table:
    rows = store.delivery_log()
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
