"""Scale-out on PostgreSQL: 1, 2 and 4 `debunkbot worker` processes sharing one store.

    .venv/bin/python bench/workers.py [--notices 20] [--outlets 500] [--workers 1,2,4]

Each round gets a fresh schema holding 20 notices x 500 outlets (10,000 deliveries), starts N
real worker processes (`python -m bot worker --until-idle`) against a fast loopback receiver,
and times them from start to the last one's exit. It also counts the CPU seconds spent by the
workers, by PostgreSQL and by the receiver during the round, to show where the time goes.
Prints a table and writes bench/results/workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, SECRET, receiver, receiver_kind, sample_notice, write_matrix
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.settings import CONFIG
from bot.store import Store

POSTGRES = os.environ.get("DEBUNKBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK


def cpu_seconds(name: str) -> float:
    """utime + stime of every process called ``name`` (PostgreSQL's backends, nginx's workers)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm.startswith(name):
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def round_of(workers: int, notices: int, outlets: int, base: int, work: Path, regions: RegionTable) -> dict[str, float]:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES, pool_pre_ping=True, connect_args={"options": "-c lock_timeout=30s"})
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.make_url(POSTGRES).update_query_dict({"options": f"-csearch_path={schema}"})
    url_text = url.render_as_string(hide_password=False)
    try:
        store = Store.open(url_text)
        matrix = load_matrix(work / "outlets.yaml", regions, environ={"BENCH_SECRET": SECRET})
        store.queue.add_notices([(sample_notice(f"w{n}"), matrix.outlets) for n in range(notices)], source="bench")
        store.close()
        env = dict(os.environ, BENCH_SECRET=SECRET, DEBUNKBOT_OUTLETS=str(work / "outlets.yaml"),
                   DEBUNKBOT_DATABASE_URL=url_text, DEBUNKBOT_CONCURRENCY="200", DEBUNKBOT_SCAN_INTERVAL="0.5")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy_before, recv_before = machine_busy_seconds(), cpu_seconds("nginx")
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "bot", "worker", "--until-idle"], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
        try:
            codes = [p.wait(timeout=300) for p in procs]  # bounded: a stuck round is killed, not waited for
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy = machine_busy_seconds() - busy_before
        recv_cpu = cpu_seconds("nginx") - recv_before  # nginx's workers live through the round
        store = Store.open(url_text)
        delivered = store.log.counts().get("delivered", 0)
        store.close()
        assert codes == [0] * workers, f"workers exited {codes}"
        assert delivered == notices * outlets, f"{delivered} of {notices * outlets} delivered"
        worker_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return {"workers": workers, "deliveries": delivered, "seconds": round(wall, 3),
                "per_second": round(delivered / wall, 1), "machine_busy_s": round(busy, 2),
                "worker_cpu_s": round(worker_cpu, 2), "receiver_cpu_s": round(recv_cpu, 2),
                # PostgreSQL's backends come and go with the workers' connections: what is left is mostly it
                # (and, on a shared machine, whoever else is busy)
                "postgres_and_rest_cpu_s": round(busy - worker_cpu - recv_cpu, 2)}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notices", type=int, default=20)
    parser.add_argument("--outlets", type=int, default=500)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    regions = RegionTable.load(CONFIG / "regions.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, receiver() as base:
        work = Path(tmp)
        write_matrix(work / "outlets.yaml", base, args.outlets)
        for n in (int(x) for x in args.workers.split(",")):
            rows.append(round_of(n, args.notices, args.outlets, base, work, regions))
    one = rows[0]["per_second"]
    print(f"{args.notices} notices x {args.outlets} outlets on PostgreSQL, receiver {receiver_kind()}, "
          f"{os.cpu_count()} cores")
    print(f"{'workers':>7} {'seconds':>8} {'deliv/s':>9} {'speed-up':>8} {'busy cpu-s':>10} "
          f"{'workers':>8} {'receiver':>8} {'pg+rest':>8}")
    for r in rows:
        r["speed_up"] = round(r["per_second"] / one, 2)
        print(f"{r['workers']:>7} {r['seconds']:>8} {r['per_second']:>9} {r['speed_up']:>8} {r['machine_busy_s']:>10} "
              f"{r['worker_cpu_s']:>8} {r['receiver_cpu_s']:>8} {r['postgres_and_rest_cpu_s']:>8}")
    out = ROOT / "bench" / "results" / "workers.json"
    out.write_text(json.dumps({"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                           "receiver": receiver_kind()},
                               "notices": args.notices, "outlets": args.outlets, "rounds": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
