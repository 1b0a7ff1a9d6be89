"""The newsroom's matrix page at 1,000 outlets: how fast the server renders it, and whether its live stream keeps
up with a fan-out at full speed.

    .venv/bin/python bench/pages.py [--outlets 1000] [--renders 30] [--concurrency 200]

1. **Render.** A real SQLite store holds one notice for a matrix of 5 city platforms, 41 district outlets (over
   the day's units, so the page groups them) and N others, 1,000 in all, with a mix of states. The page is
   fetched ``--renders`` times through the ASGI app (login, session cookie, the same handler a browser gets) and
   the median and 95th percentile of the whole request are taken. Pass: median under 200 ms.
2. **Live.** The same app is served on loopback (uvicorn, in process, as ``debunkbot run`` serves it) beside the
   real dispatcher, which fans a fresh notice out to the 1,000 outlets of the loopback receiver
   (``bench/common.py``). A client reads the matrix's event stream over HTTP from before the fan-out starts
   until every cell it has been sent says delivered. Pass: every cell's final state arrives, and no two updates
   come less than 250 ms apart (at most 4 a second), however many deliveries change.

Prints the figures and writes bench/results/pages.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PORTS, ROOT, SECRET, receiver, receiver_kind, sample_notice
from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.outlets import OutletMatrix, load_matrix
from bot.regions import RegionTable, chongqing_today
from bot.settings import CONFIG, Settings
from bot.store import Actor, AttemptRecord, Role, Store
from bot.web import Site, create_app
from bot.web.pages import SESSION_COOKIE
from bot.web.server import WebServer

RENDER_PASS_MS = 200.0
MIN_GAP = 0.25
CELL = re.compile(r'<li id="cell-(\d+)" class="cell state-(\w+)"')


def write_matrix(path: Path, base: int, outlets: int, regions: RegionTable) -> None:
    """5 city platforms, 41 district outlets over the day's units, the rest N; outlet i posts to the receiver."""
    units = [u.name for u in regions.units_on(chongqing_today())]
    entries = []
    for i in range(outlets):
        tier = "city" if i < 5 else "district" if i < 46 else "other"
        entry: dict[str, Any] = {"id": f"o{i:05d}", "name": f"融媒体{i}", "tier": tier, "channel": "webhook",
                                 "url": f"http://127.0.0.1:{base + i % PORTS}/hook/{i}", "secret_env": "BENCH_SECRET"}
        if tier == "district":
            entry["region"] = units[(i - 5) % len(units)]
        entries.append(entry)
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")


async def browser(app: Any, store: Store, base_url: str = "http://bot") -> httpx.AsyncClient:
    """A logged-in viewer over the ASGI transport."""
    token, _ = store.access.create("bench-viewer", Role.viewer, actor=Actor("bench", "local", "bench"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=base_url)
    form = await client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    answer = await client.post("/login", data={"token": token, "csrf": csrf.group(1)})
    assert answer.status_code == 303, answer.text
    return client


def mix_states(store: Store, matrix: OutletMatrix) -> None:
    """Some cells delivered, some failed, the rest pending: each state on the page."""
    claims = store.queue.claim(len(matrix.outlets), per_outlet=1, lease=timedelta(minutes=5))
    now = store.db.clock()
    records = [AttemptRecord(c.delivery_id, c.outlet_id, c.attempt, now, 20.0,
                             "delivered" if i % 3 else "failed", http_status=200 if i % 3 else 500,
                             error=None if i % 3 else "HTTP 500")
               for i, c in enumerate(claims[: len(claims) * 2 // 3])]
    store.queue.record(records)
    store.queue.release_claims()


async def render(work: Path, outlets: int, renders: int) -> dict[str, Any]:
    regions = RegionTable.load(CONFIG / "regions.yaml")
    write_matrix(work / "outlets.yaml", 9, outlets, regions)
    matrix = load_matrix(work / "outlets.yaml", regions, environ={"BENCH_SECRET": SECRET})
    settings = Settings(database_url=f"sqlite:///{work / 'render.sqlite3'}", outlets=work / "outlets.yaml")
    store = Store.open(settings.database_url)
    store.queue.add_notices([(sample_notice("bench-render"), matrix.outlets)], source="bench")
    mix_states(store, matrix)
    app = create_app(Site(settings, store, regions, matrix))
    client = await browser(app, store)
    times = []
    size = 0
    for _ in range(renders + 3):
        began = time.perf_counter()
        page = await client.get("/notices/bench-render")
        times.append((time.perf_counter() - began) * 1000)
        assert page.status_code == 200, page.text[:500]
        size = len(page.content)
    cells = len(CELL.findall(page.text))
    assert cells == outlets, cells
    times = sorted(times[3:])  # the first few warm the template cache
    await client.aclose()
    store.close()
    median = statistics.median(times)
    return {"outlets": outlets, "renders": renders, "median_ms": round(median, 1),
            "p95_ms": round(times[int(len(times) * 0.95) - 1], 1), "max_ms": round(times[-1], 1),
            "page_kib": round(size / 1024, 1), "pass_ms": RENDER_PASS_MS, "passed": median < RENDER_PASS_MS}


async def live(work: Path, outlets: int, concurrency: int) -> dict[str, Any]:
    regions = RegionTable.load(CONFIG / "regions.yaml")
    with receiver() as base:
        write_matrix(work / "outlets.yaml", base, outlets, regions)
        matrix = load_matrix(work / "outlets.yaml", regions, environ={"BENCH_SECRET": SECRET})
        settings = Settings(database_url=f"sqlite:///{work / 'live.sqlite3'}", outlets=work / "outlets.yaml",
                            concurrency=concurrency)
        store = Store.open(settings.database_url)
        store.queue.add_notices([(sample_notice("bench-live"), matrix.outlets)], source="bench")
        app = create_app(Site(settings, store, regions, matrix))
        login = await browser(app, store)
        cookie = login.cookies[SESSION_COOKIE]
        await login.aclose()
        states: dict[int, str] = {}
        arrivals: list[float] = []
        sizes: list[int] = []
        done = asyncio.Event()
        opened = asyncio.Event()

        async with WebServer(app, "127.0.0.1:0") as web, httpx.AsyncClient(
                base_url=web.url, cookies={SESSION_COOKIE: cookie}, timeout=60) as client:

            async def read() -> None:
                async with client.stream("GET", "/notices/bench-live/events") as stream:
                    opened.set()
                    data: list[str] = []
                    async for line in stream.aiter_lines():
                        if line.startswith("data:"):
                            data.append(line)
                        elif line == "" and data:  # the end of one event (one update)
                            found = CELL.findall("\n".join(data))
                            data = []
                            if found:
                                arrivals.append(time.perf_counter())
                                sizes.append(len(found))
                                states.update((int(i), s) for i, s in found)
                                if len(states) == outlets and all(s == "delivered" for s in states.values()):
                                    done.set()
                                    return

            reader = asyncio.create_task(read())
            await asyncio.wait_for(opened.wait(), 30)
            while not arrivals:  # the first update: every cell, pending
                await asyncio.sleep(0.01)
            async with make_sender(settings) as sender:
                dispatcher = Dispatcher(store, matrix, settings, sender)
                began = time.perf_counter()
                await dispatcher.run(until_idle=True)
                sent = time.perf_counter()
                await dispatcher.close()
            await asyncio.wait_for(done.wait(), 30)
            seen = time.perf_counter()
            await reader
        delivered = store.log.counts().get("delivered", 0)
        store.close()
    during = [t for t in arrivals if t >= began]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    busiest = max((sum(1 for u in arrivals if t <= u < t + 1.0) for t in arrivals), default=0)
    return {"outlets": outlets, "delivered": delivered, "fanout_seconds": round(sent - began, 3),
            "deliveries_per_second": round(delivered / (sent - began), 1),
            "updates": len(arrivals), "updates_during_fanout": len(during), "cells_sent": sum(sizes),
            "largest_update_cells": max(sizes), "min_gap_ms": round(min(gaps) * 1000, 1) if gaps else None,
            "most_updates_in_a_second": busiest,
            "last_cell_after_fanout_ms": round((seen - sent) * 1000, 1),
            "every_cell_final": len(states) == outlets and all(s == "delivered" for s in states.values()),
            "passed": delivered == outlets and len(states) == outlets and busiest <= 4
            and (not gaps or min(gaps) >= MIN_GAP - 0.02)}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outlets", type=int, default=1000)
    parser.add_argument("--renders", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=Settings().concurrency)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="debunkbot-pages-") as tmp:
        rendered = await render(Path(tmp), args.outlets, args.renders)
        print(f"matrix page, {args.outlets} outlets, {args.renders} renders through the ASGI app: median "
              f"{rendered['median_ms']} ms, p95 {rendered['p95_ms']} ms ({rendered['page_kib']} KiB) "
              f"{'PASS' if rendered['passed'] else 'FAIL'} (< {RENDER_PASS_MS:.0f} ms)")
        streamed = await live(Path(tmp), args.outlets, args.concurrency)
        print(f"live stream during a fan-out to {args.outlets} loopback outlets ({receiver_kind()} receiver): "
              f"{streamed['delivered']} delivered in {streamed['fanout_seconds']} s "
              f"({streamed['deliveries_per_second']}/s); {streamed['updates']} updates carried "
              f"{streamed['cells_sent']} cells, at most {streamed['most_updates_in_a_second']} in a second, "
              f"gap >= {streamed['min_gap_ms']} ms; last cell {streamed['last_cell_after_fanout_ms']} ms after the "
              f"last delivery; every cell final: {streamed['every_cell_final']} "
              f"{'PASS' if streamed['passed'] else 'FAIL'}")
    result = {"machine": f"{platform.machine()}, {platform.python_version()}", "receiver": receiver_kind(),
              "render": rendered, "live": streamed}
    (ROOT / "bench" / "results" / "pages.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if rendered["passed"] and streamed["passed"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
