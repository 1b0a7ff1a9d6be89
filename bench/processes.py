"""Every core without PostgreSQL: `debunkbot run --processes N` (1, 2 and 4) on one SQLite store.

    .venv/bin/python bench/processes.py [--notices 20] [--outlets 500] [--processes 1,2,4]

Each round gets a fresh SQLite store holding 20 notices x 500 outlets (10,000 deliveries), runs the real
command (`python -m bot run --processes N --until-idle --no-web`: the leading process and N - 1 send-only
ones) against the fast loopback receiver, and times it from exec to exit, start-up included. It also counts
the CPU seconds of the bot's processes and of the whole machine during the round (bench/common.py).
Prints a table and writes bench/results/processes.json.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_env, fill_store, scale_out, timed_round


def round_of(processes: int, notices: int, work: Path) -> dict[str, Any]:
    for leftover in work.glob("bench.sqlite3*"):
        leftover.unlink()
    url = f"sqlite:///{work / 'bench.sqlite3'}"
    deliveries = fill_store(url, work, notices, "p")
    command = [sys.executable, "-m", "bot", "run", "--no-web", "--until-idle", "--processes", str(processes)]
    return timed_round([command], bench_env(work, concurrency=200, scan_interval=0.5), url, deliveries, work)


if __name__ == "__main__":
    scale_out(__doc__, "processes", "on SQLite, `run --processes N`", round_of,
              [("busy cpu-s", "machine_busy_s", 10), ("bot cpu-s", "bot_cpu_s", 9),
               ("cpu ms/deliv", "cpu_ms_per_delivery", 12)])
