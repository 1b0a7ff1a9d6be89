"""Fan notices out to 1,000 loopback outlets through the real dispatcher and a fresh SQLite store.

    .venv/bin/python bench/fanout.py [--outlets 1000] [--notices 1] [--concurrency 200]

The quick check; bench/suite.py runs the full scenarios against the peers.
Prints deliveries per second and writes bench/results/fanout.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SECRET, receiver, receiver_kind, sample_notice, write_matrix
from bot.dispatch import Dispatcher
from bot.http import make_sender
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import CONFIG, Settings
from bot.store import Store


async def run(outlets: int, notices: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, receiver() as base:
        work = Path(tmp)
        write_matrix(work / "outlets.yaml", base, outlets)
        matrix = load_matrix(work / "outlets.yaml", RegionTable.load(CONFIG / "regions.yaml"),
                             environ={"BENCH_SECRET": SECRET})
        settings = Settings(database_url=f"sqlite:///{work / 'bench.sqlite3'}", concurrency=concurrency)
        store = Store.open(settings.database_url)
        store.queue.add_notices([(sample_notice(f"bench-{n}"), matrix.outlets) for n in range(notices)], source="bench")
        async with make_sender(settings) as client:
            dispatcher = Dispatcher(store, matrix, settings, client)
            started = time.perf_counter()
            await dispatcher.run(until_idle=True)
            elapsed = time.perf_counter() - started
            await dispatcher.close()
        delivered = store.log.counts().get("delivered", 0)
        store.close()
        return {"deliveries": delivered, "seconds": round(elapsed, 3), "per_second": round(delivered / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outlets", type=int, default=1000)
    parser.add_argument("--notices", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=Settings().concurrency)
    args = parser.parse_args()
    result = asyncio.run(run(args.outlets, args.notices, args.concurrency))
    print(f"{args.notices} notice(s) x {args.outlets} outlets ({receiver_kind()} receiver): {result['deliveries']} "
          f"delivered in {result['seconds']} s = {result['per_second']} deliveries/s")
    (ROOT / "bench" / "results" / "fanout.json").write_text(
        json.dumps(vars(args) | {"receiver": receiver_kind()} | result, indent=2) + "\n")


if __name__ == "__main__":
    main()
