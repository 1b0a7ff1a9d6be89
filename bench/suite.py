"""The fan-out benches F1-F5 (issue 6), peers side by side in one run; prints tables, writes JSON.

    .venv/bin/python bench/suite.py [--reps 3] [--only F1,F3]     # make bench runs all of it

Every contender runs alone in a fresh process (bench/contender.py) against the same loopback
receiver (bench/common.py: nginx when installed, else aiohttp), timed from the start of its
work to its end; the median of --reps runs is reported. F1 also times the real
``debunkbot run --until-idle`` as a subprocess, start-up included, against the peers' whole processes, and
reports each contender's CPU per delivery (user + system of its whole process over its deliveries).
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    SECRET,
    bench_env,
    receiver,
    receiver_kind,
    run_measured,
    sample_notice,
    write_matrix,
)
from bot.outlets import load_matrix  # noqa: E402
from bot.regions import RegionTable  # noqa: E402
from bot.settings import CONFIG  # noqa: E402
from bot.store import Store  # noqa: E402
from channels.webhook import Webhook  # noqa: E402

PY = sys.executable
DEBUNKBOT = str(Path(PY).parent / "debunkbot")
CONTENDER = str(ROOT / "bench" / "contender.py")


def prepare(work: Path, base: int, outlets: int, notices: int, ports: int = 100) -> Store:
    """A fresh store holding ``notices`` x ``outlets`` pending deliveries, and spec.json for the peers."""
    write_matrix(work / "outlets.yaml", base, outlets, ports)
    matrix = load_matrix(work / "outlets.yaml", RegionTable.load(CONFIG / "regions.yaml"),
                         environ={"BENCH_SECRET": SECRET})
    store = Store.open(f"sqlite:///{work / 'bench.sqlite3'}")
    store.queue.add_notices([(sample_notice(f"bench-{n}"), matrix.outlets) for n in range(notices)], source="bench")
    channel, bodies, posts = Webhook(), [], []
    urls = {o.id: o.url for o in matrix.outlets}
    for n in range(notices):
        notice_id, notice = store.log.notice(f"bench-{n}")  # type: ignore[misc]
        published_at = store.queue.notices_by_id([notice_id])[notice_id][1]
        bodies.append(channel.render(notice, published_at).body.decode())
        posts += [{"url": urls[row["outlet"]], "message_id": row["message_id"], "body": n}
                  for row in store.log.deliveries(ref=f"bench-{n}")]
    (work / "spec.json").write_text(json.dumps({"bodies": bodies, "posts": posts}))
    return store


def contend(kind: str, work: Path, concurrency: int = 200, stop_after: int = 0, **settings: Any) -> dict[str, Any]:
    env = bench_env(work, concurrency=concurrency, **settings)
    cmd = [PY, CONTENDER, kind, "--work", str(work), "--concurrency", str(concurrency)]
    if stop_after:
        cmd += ["--stop-after", str(stop_after)]
    return run_measured(cmd, env)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time, plus the spread of all runs, the median whole process (exec to exit) and
    the median CPU per delivery (user + system of the whole process, start-up included, over deliveries)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["all_seconds"] = [round(r["seconds"], 3) for r in runs]
    chosen["seconds"] = round(chosen["seconds"], 3)
    chosen["per_second"] = round(chosen["delivered"] / chosen["seconds"], 1)
    whole = statistics.median(r["process_seconds"] for r in runs)
    chosen["process_seconds"] = round(whole, 3)
    chosen["process_per_second"] = round(chosen["delivered"] / whole, 1)
    chosen["cpu_ms_per_delivery"] = round(statistics.median(
        r["cpu_seconds"] * 1000 / max(r["delivered"], 1) for r in runs), 3)
    chosen["all_cpu_seconds"] = [r["cpu_seconds"] for r in runs]
    return chosen


def repeat(reps: int, outlets: int, notices: int, kinds: dict[str, dict[str, Any]],
           delay: float = 0.0, hang_every: int = 0) -> dict[str, dict[str, Any]]:
    """Run every contender ``reps`` times (interleaved, fresh store each time); medians by name."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in kinds}
    with receiver(delay=delay, hang_every=hang_every) as base:
        for _ in range(reps):
            for name, options in kinds.items():
                options = dict(options)
                kind = options.pop("kind", name)
                with tempfile.TemporaryDirectory(prefix="debunkbot-bench-") as tmp:
                    work = Path(tmp)
                    prepare(work, base, outlets, notices).close()
                    if kind == "cli":
                        env = bench_env(work, **options)
                        result = run_measured([DEBUNKBOT, "run", "--until-idle"], env)
                        result |= {"seconds": result["process_seconds"],
                                   "delivered": Store.open(env["DEBUNKBOT_DATABASE_URL"]).log.counts()
                                   .get("delivered", 0)}
                    else:
                        result = contend(kind, work, **options)
                runs[name].append(result)
                print(f"  {name}: {result['delivered']} in {result['seconds']:.2f} s", file=sys.stderr)
    return {name: median_of(r) for name, r in runs.items()}


def table(title: str, rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def f1(reps: int) -> dict[str, Any]:
    kinds = {"bot": {}, "aiohttp": {}, "httpx": {"concurrency": 20}, "apprise": {},
             "bot-cli": {"kind": "cli"}}
    res = repeat(reps, 1000, 5, kinds)
    bot = res["bot"]["per_second"]
    ratios = {f"bot/{p}": round(bot / res[p]["per_second"], 2) for p in ("aiohttp", "httpx", "apprise")}
    table("F1 fan-out: 5 notices x 1,000 outlets (median of %d)" % reps,
          [[n, r["delivered"], r["seconds"], r["per_second"], r["peak_rss_mib"]] for n, r in res.items()]
          + [[k, "", "", v, ""] for k, v in ratios.items()],
          ["contender", "delivered", "seconds", "per s", "peak RSS MiB"])
    # Whole processes, exec to exit, start-up included: the real CLI against the peers' own processes.
    cli = res["bot-cli"]["process_per_second"]
    whole = {f"bot-cli/{p}": round(cli / res[p]["process_per_second"], 2) for p in ("aiohttp", "httpx", "apprise")}
    table("F1 whole processes (exec to exit, start-up included) and CPU per delivery (user + system / delivered)",
          [[n, r["process_seconds"], r["process_per_second"], r["cpu_ms_per_delivery"]] for n, r in res.items()]
          + [[k, "", v, ""] for k, v in whole.items()],
          ["contender", "process s", "per s", "CPU ms/delivery"])
    goals = {"bot/aiohttp >= 0.5": ratios["bot/aiohttp"] >= 0.5, "bot/apprise >= 3": ratios["bot/apprise"] >= 3,
             "bot/httpx >= 4": ratios["bot/httpx"] >= 4,
             "whole process bot-cli/aiohttp >= 0.5": whole["bot-cli/aiohttp"] >= 0.5,
             "whole process bot-cli/apprise >= 3": whole["bot-cli/apprise"] >= 3}
    cpu = {n: r["cpu_ms_per_delivery"] for n, r in res.items()}
    return {"runs": res, "ratios": ratios, "whole_process_ratios": whole, "cpu_ms_per_delivery": cpu, "goals": goals}


def f2(reps: int, f1_bot: dict[str, Any] | None) -> dict[str, Any]:
    healthy = 900 * 5  # the default http_timeout (15 s) stands: the hung sends hold on to the end
    res = repeat(reps, 1000, 5, {"bot-f2": {"kind": "bot", "stop_after": healthy, "shutdown_grace": 0}}, hang_every=10)
    if f1_bot is None:
        f1_bot = repeat(reps, 1000, 5, {"bot": {}})["bot"]
    ratio = round(res["bot-f2"]["seconds"] / f1_bot["seconds"], 2)
    table("F2 slow outlets: 10% never answer; time until the healthy 4,500 are delivered",
          [["F1 (all healthy)", f1_bot["delivered"], f1_bot["seconds"]],
           ["F2 healthy 90%", healthy, res["bot-f2"]["seconds"]], ["F2 / F1", "", ratio]],
          ["run", "delivered", "seconds"])
    return {"runs": res, "f1_seconds": f1_bot["seconds"], "ratio": ratio, "goals": {"F2/F1 <= 1.2": ratio <= 1.2}}


def f3(reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": {}, "goals": {}}
    rows = []
    for c in (100, 200):
        res = repeat(reps, 2000, 1, {"bot": {"concurrency": c}, "aiohttp": {"concurrency": c}}, delay=0.1)
        floor = 2000 * 0.1 / c
        for name, r in res.items():
            rows.append([name, c, r["seconds"], floor, round(r["seconds"] / floor, 2)])
        out["runs"][c] = res | {"floor": floor}
        out["goals"][f"C={c} bot <= 1.3x floor"] = res["bot"]["seconds"] / floor <= 1.3
    table("F3 latency-bound: 1 notice x 2,000 outlets answering after 100 ms", rows,
          ["contender", "C", "seconds", "floor", "x floor"])
    return out


def f4(reps: int) -> dict[str, Any]:
    small = repeat(reps, 200, 20, {"bot": {}})["bot"]
    big = repeat(reps, 200, 200, {"bot": {}, "aiohttp": {}})
    ratio = round(big["bot"]["peak_rss_mib"] / small["peak_rss_mib"], 2)
    table("F4 sustained: notices x 200 outlets; peak RSS of the worker process",
          [["bot", small["delivered"], small["seconds"], small["per_second"], small["peak_rss_mib"]],
           ["bot", big["bot"]["delivered"], big["bot"]["seconds"], big["bot"]["per_second"],
            big["bot"]["peak_rss_mib"]],
           ["aiohttp", big["aiohttp"]["delivered"], big["aiohttp"]["seconds"], big["aiohttp"]["per_second"], ""],
           ["RSS 40,000 / 4,000", "", "", "", ratio]],
          ["contender", "deliveries", "seconds", "per s", "peak RSS MiB"])
    return {"runs": {"4000": small, "40000": big}, "rss_ratio": ratio, "goals": {"RSS ratio <= 1.2": ratio <= 1.2}}


async def _f5(count: int) -> dict[str, Any]:
    from aiohttp import web

    first_seen: dict[str, float] = {}
    arrived: dict[str, asyncio.Event] = {}

    async def handle(request: web.Request) -> web.Response:
        ref = json.loads(await request.read())["data"]["ref"]
        if ref not in first_seen:
            first_seen[ref] = time.perf_counter()
            arrived.setdefault(ref, asyncio.Event()).set()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook/{n}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    latencies = []
    with tempfile.TemporaryDirectory(prefix="debunkbot-bench-") as tmp:
        work = Path(tmp)
        store = prepare(work, port, 10, 0, ports=1)
        matrix = load_matrix(work / "outlets.yaml", RegionTable.load(CONFIG / "regions.yaml"),
                             environ={"BENCH_SECRET": SECRET})
        daemon = subprocess.Popen([DEBUNKBOT, "run"], env=bench_env(work), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for n in range(-3, count):  # three warm-ups: the daemon has started and holds connections
                ref = f"f5-{n + 3}"
                arrived[ref] = asyncio.Event()
                submitted = time.perf_counter()
                await asyncio.to_thread(store.queue.add_notices, [(sample_notice(ref, urgent=True), matrix.outlets)],
                                        "bench")
                await asyncio.wait_for(arrived[ref].wait(), 30 if n < 0 else 10)
                if n >= 0:
                    latencies.append((first_seen[ref] - submitted) * 1000)
                await asyncio.sleep(random.uniform(0.05, 0.15))
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(15)
            store.close()
            await runner.cleanup()
    latencies.sort()
    return {"p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
            "max_ms": round(latencies[-1], 1), "count": len(latencies)}


def f5(count: int = 50) -> dict[str, Any]:
    res = asyncio.run(_f5(count))
    table(f"F5 latency: store write of an urgent notice from another process -> first outlet receipt ({count})",
          [[res["p50_ms"], res["p99_ms"], res["max_ms"]]], ["p50 ms", "p99 ms", "max ms"])
    return res | {"goals": {"p50 < 50 ms": res["p50_ms"] < 50, "p99 < 250 ms": res["p99_ms"] < 250}}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "receiver": receiver_kind(),
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="F1,F2,F3,F4,F5")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "suite.json")
    args = parser.parse_args()
    only = set(args.only.upper().split(","))
    results: dict[str, Any] = {"machine": machine(), "reps": args.reps}
    print(f"machine: {results['machine']}")
    if "F1" in only:
        results["F1"] = f1(args.reps)
    if "F2" in only:
        results["F2"] = f2(args.reps, results["F1"]["runs"]["bot"] if "F1" in results else None)
    if "F3" in only:
        results["F3"] = f3(args.reps)
    if "F4" in only:
        results["F4"] = f4(args.reps)
    if "F5" in only:
        results["F5"] = f5()
    goals = {f"{k} {g}": ok for k, v in results.items() if isinstance(v, dict) for g, ok in v.get("goals", {}).items()}
    table("Goals", [[g, "met" if ok else "NOT MET"] for g, ok in goals.items()], ["goal", ""])
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
