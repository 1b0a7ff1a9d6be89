"""Fan one notice out to 1,000 loopback outlets through the real dispatcher and store.

    .venv/bin/python bench/fanout.py [--outlets 1000] [--notices 1]

The receiver runs in its own process on 100 ports. Prints deliveries per second, with every
delivery and attempt recorded in a fresh SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.dispatch import Dispatcher, make_client  # noqa: E402
from bot.model import Notice  # noqa: E402
from bot.outlets import load_matrix  # noqa: E402
from bot.regions import RegionTable  # noqa: E402
from bot.settings import CONFIG, Settings  # noqa: E402
from bot.store import Store  # noqa: E402


def start_receiver(ports: int, *extra: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), "--ports", str(ports), *extra],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def sample_notice(ref: str) -> Notice:
    return Notice.model_validate({
        "ref": ref, "title": "网传“长江重庆段水位暴涨将淹没主城”系谣言",
        "rumour": "长江重庆段水位今晚将暴涨10米，主城沿江区域将被淹没。" * 3,
        "truth": "经向重庆市水利局核实，目前长江重庆段水位平稳，处于正常范围。" * 6,
        "verdict": "false", "authority": "重庆市水利局",
    })


async def run(outlets: int, notices: int, concurrency: int) -> dict[str, float]:
    receiver, base = start_receiver(100)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            entries = [{"id": f"o{i:05d}", "name": f"站点{i}", "tier": "other", "channel": "webhook",
                        "url": f"http://127.0.0.1:{base + i % 100}/hook/{i}", "secret_env": "BENCH_SECRET"}
                       for i in range(outlets)]
            (work / "outlets.yaml").write_text(yaml.safe_dump({"outlets": entries}), encoding="utf-8")
            regions = RegionTable.load(CONFIG / "regions.yaml")
            matrix = load_matrix(work / "outlets.yaml", regions, environ={"BENCH_SECRET": "whsec_" + "QUJD" * 8})
            settings = Settings(database_url=f"sqlite:///{work / 'bench.sqlite3'}", concurrency=concurrency)
            store = Store.open(settings.database_url)
            store.add_notices([(sample_notice(f"bench-{n}"), matrix.outlets) for n in range(notices)], source="bench")
            async with make_client(settings) as client:
                dispatcher = Dispatcher(store, matrix, settings, client)
                started = time.perf_counter()
                await dispatcher.run(until_idle=True)
                elapsed = time.perf_counter() - started
                await dispatcher.close()
            delivered = store.counts().get("delivered", 0)
            store.close()
            return {"deliveries": delivered, "seconds": round(elapsed, 3), "per_second": round(delivered / elapsed, 1)}
    finally:
        receiver.terminate()
        receiver.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outlets", type=int, default=1000)
    parser.add_argument("--notices", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=Settings().concurrency)
    args = parser.parse_args()
    result = asyncio.run(run(args.outlets, args.notices, args.concurrency))
    print(f"{args.notices} notice(s) x {args.outlets} outlets: {result['deliveries']} delivered "
          f"in {result['seconds']} s = {result['per_second']} deliveries/s")
    out = ROOT / "bench" / "results" / "fanout.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(vars(args) | result, indent=2) + "\n")


if __name__ == "__main__":
    main()
