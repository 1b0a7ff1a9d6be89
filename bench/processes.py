"""Every core without PostgreSQL: `debunkbot run --processes N` (1, 2 and 4) on one SQLite store.

    .venv/bin/python bench/processes.py [--notices 20] [--outlets 500] [--processes 1,2,4]

Each round gets a fresh SQLite store holding 20 notices x 500 outlets (10,000 deliveries), runs the real
command (`python -m bot run --processes N --until-idle --no-web`: the leading process and N - 1 send-only
ones) against the fast loopback receiver, and times it from exec to exit, start-up included. It also counts
the CPU seconds of the bot's processes and of the whole machine during the round (bench/workers.py's way).
Prints a table and writes bench/results/processes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SECRET, bench_env, receiver, receiver_kind, sample_notice, write_matrix
from bench.workers import cpu_seconds, machine_busy_seconds
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import CONFIG
from bot.store import Store


def round_of(processes: int, notices: int, outlets: int, work: Path, regions: RegionTable) -> dict[str, float]:
    store_path = work / "bench.sqlite3"
    for leftover in work.glob("bench.sqlite3*"):
        leftover.unlink()
    env = bench_env(work, concurrency=200, scan_interval=0.5)
    store = Store.open(f"sqlite:///{store_path}")
    matrix = load_matrix(work / "outlets.yaml", regions, environ={"BENCH_SECRET": SECRET})
    store.queue.add_notices([(sample_notice(f"p{n}"), matrix.outlets) for n in range(notices)], source="bench")
    store.close()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, recv_before = machine_busy_seconds(), cpu_seconds("nginx")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bot", "run", "--no-web", "--until-idle", "--processes",
                           str(processes)], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine_busy_seconds() - busy_before
    recv_cpu = cpu_seconds("nginx") - recv_before
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = Store.open(f"sqlite:///{store_path}")
    delivered = store.log.counts().get("delivered", 0)
    store.close()
    assert delivered == notices * outlets, f"{delivered} of {notices * outlets} delivered"
    bot_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # children are reaped by run
    return {"processes": processes, "deliveries": delivered, "seconds": round(wall, 3),
            "per_second": round(delivered / wall, 1), "machine_busy_s": round(busy, 2),
            "bot_cpu_s": round(bot_cpu, 2), "receiver_cpu_s": round(recv_cpu, 2),
            "cpu_ms_per_delivery": round(bot_cpu * 1000 / delivered, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notices", type=int, default=20)
    parser.add_argument("--outlets", type=int, default=500)
    parser.add_argument("--processes", default="1,2,4")
    args = parser.parse_args()
    regions = RegionTable.load(CONFIG / "regions.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, receiver() as base:
        work = Path(tmp)
        write_matrix(work / "outlets.yaml", base, args.outlets)
        for n in (int(x) for x in args.processes.split(",")):
            rows.append(round_of(n, args.notices, args.outlets, work, regions))
    one = rows[0]["per_second"]
    print(f"{args.notices} notices x {args.outlets} outlets on SQLite, `run --processes N`, receiver "
          f"{receiver_kind()}, {os.cpu_count()} cores")
    print(f"{'processes':>9} {'seconds':>8} {'deliv/s':>9} {'speed-up':>8} {'busy cpu-s':>10} {'bot cpu-s':>9} "
          f"{'cpu ms/deliv':>12}")
    for r in rows:
        r["speed_up"] = round(r["per_second"] / one, 2)
        print(f"{r['processes']:>9} {r['seconds']:>8} {r['per_second']:>9} {r['speed_up']:>8} "
              f"{r['machine_busy_s']:>10} {r['bot_cpu_s']:>9} {r['cpu_ms_per_delivery']:>12}")
    (ROOT / "bench" / "results" / "processes.json").write_text(json.dumps({
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "receiver": receiver_kind()},
        "notices": args.notices, "outlets": args.outlets, "rounds": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
