"""The CPU the dispatcher's store thread spends per delivery, in a fan-out to loopback outlets (SQLite).

    .venv/bin/python bench/store_cpu.py [--outlets 1000] [--notices 5] [--reps 5]

Each run is a fresh process and a fresh store, as bench/fanout.py runs it; every call the dispatcher makes on
its store thread is timed with ``time.thread_time()`` (CPU of that thread only), by what it calls. Prints each
run's store-thread CPU (ms per delivery, and by call), then the medians. Writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SECRET, receiver, sample_notice, write_matrix
from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import CONFIG, Settings
from bot.store import Store


class TimedDispatcher(Dispatcher):
    """The dispatcher, with the CPU of each store-thread call added up by the name of what it calls."""

    cpu: Counter[str]
    calls: Counter[str]

    async def db(self, fn: Callable[..., Any], *args: Any) -> Any:
        def timed(*args: Any) -> Any:
            started = time.thread_time()
            try:
                return fn(*args)
            finally:
                self.cpu[fn.__name__] += time.thread_time() - started
                self.calls[fn.__name__] += 1

        return await super().db(timed, *args)


async def once(outlets: int, notices: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, receiver() as base:
        work = Path(tmp)
        write_matrix(work / "outlets.yaml", base, outlets)
        matrix = load_matrix(work / "outlets.yaml", RegionTable.load(CONFIG / "regions.yaml"),
                             environ={"BENCH_SECRET": SECRET})
        settings = Settings(database_url=f"sqlite:///{work / 'bench.sqlite3'}")
        store = Store.open(settings.database_url)
        store.queue.add_notices([(sample_notice(f"bench-{n}"), matrix.outlets) for n in range(notices)], source="bench")
        async with make_sender(settings) as client:
            dispatcher = TimedDispatcher(store, matrix, settings, client)
            dispatcher.cpu, dispatcher.calls = Counter(), Counter()
            cpu_started, started = time.process_time(), time.perf_counter()
            await dispatcher.run(until_idle=True)
            elapsed, process_cpu = time.perf_counter() - started, time.process_time() - cpu_started
            await dispatcher.close()
        delivered = store.log.counts().get("delivered", 0)
        store.close()
    per = 1000 / delivered
    return {"deliveries": delivered, "seconds": round(elapsed, 3),
            "store_ms": round(sum(dispatcher.cpu.values()) * per, 4),
            "process_ms": round(process_cpu * per, 4),
            "by_call": {name: round(s * per, 4) for name, s in dispatcher.cpu.most_common()},
            "calls": dict(dispatcher.calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outlets", type=int, default=1000)
    parser.add_argument("--notices", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(once(args.outlets, args.notices))))
        return
    runs = []
    for _ in range(args.reps):
        out = subprocess.run([sys.executable, __file__, "--once", "--outlets", str(args.outlets),
                              "--notices", str(args.notices)], check=True, stdout=subprocess.PIPE, text=True).stdout
        runs.append(json.loads(out.splitlines()[-1]))
        run = runs[-1]
        print(f"{run['deliveries']} delivered in {run['seconds']} s: store thread {run['store_ms']:.3f} ms/delivery "
              f"(process {run['process_ms']:.3f}); " + ", ".join(f"{k} {v:.3f}" for k, v in run["by_call"].items()),
              flush=True)
    print(f"median of {len(runs)}: store thread {statistics.median(r['store_ms'] for r in runs):.3f} ms/delivery, "
          f"process {statistics.median(r['process_ms'] for r in runs):.3f} ms/delivery")


if __name__ == "__main__":
    main()
