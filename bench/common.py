"""What the benches share: the loopback receiver, the bench outlet matrix, a worker runner, and the scale-out
benches' rounds and table (bench/workers.py, bench/processes.py).

The receiver is nginx (Debian's package, with the echo module for delays and hung outlets) when
it is installed, else bench/receiver.py (aiohttp in its own process). Both listen on 100
consecutive loopback ports; outlet i posts to port base + i % 100 at /hook/i.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.receiver import free_base_port  # noqa: E402
from bot.model import Notice  # noqa: E402

SECRET = "whsec_" + "QUJD" * 8
PORTS = 100
TICK = os.sysconf("SC_CLK_TCK")
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def receiver_kind() -> str:
    return "nginx" if shutil.which("nginx") and ECHO_MODULE.exists() else "aiohttp"


@contextmanager
def receiver(delay: float = 0.0, hang_every: int = 0, kind: str | None = None) -> Iterator[int]:
    """A loopback receiver on 100 ports; yields the first port. It stops when the block ends."""
    kind = kind or receiver_kind()
    with tempfile.TemporaryDirectory(prefix="debunkbot-recv-") as tmp:
        if kind == "nginx":
            base = free_base_port(PORTS)
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(_nginx_conf(Path(tmp), base, delay, hang_every))
            proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(Path(tmp) / "error.log"),
                                     "-g", "daemon off;"], stdout=subprocess.DEVNULL)
            _wait_listening(base + PORTS - 1)
        else:
            extra = ["--delay", str(delay), "--hang-every", str(hang_every)]
            proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "receiver.py"), "--ports", str(PORTS),
                                     *extra], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            base = int(proc.stdout.readline())
        try:
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _nginx_conf(tmp: Path, base: int, delay: float, hang_every: int) -> str:
    assert hang_every in (0, 10), "nginx receiver hangs every 10th outlet or none"
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096 reuseport;" for p in range(base, base + PORTS))
    answer = (f"echo_read_request_body; echo_sleep {delay}; echo -n '{{\"ok\":true}}';" if delay
              else "return 200 '{\"ok\":true}';")
    hang = "location ~ ^/hook/[0-9]*0$ { echo_read_request_body; echo_sleep 3600; echo -n x; }" if hang_every else ""
    temp = " ".join(f"{name}_temp_path {tmp}/{name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""
load_module {ECHO_MODULE};
worker_processes 1;
pid {tmp}/nginx.pid;
events {{ worker_connections 16384; }}
http {{
  access_log off; {temp}
  default_type application/json; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_buffer_size 64k;
  server {{
{listens}
    {hang}
    location /hook/ {{ {answer} }}
  }}
}}
"""


def _wait_listening(port: int, timeout: float = 5.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"receiver did not listen on {port}")


def write_matrix(path: Path, base: int, outlets: int, ports: int = PORTS) -> None:
    entries = [{"id": f"o{i:05d}", "name": f"站点{i}", "tier": "other", "channel": "webhook",
                "url": f"http://127.0.0.1:{base + i % ports}/hook/{i}", "secret_env": "BENCH_SECRET"}
               for i in range(outlets)]
    path.write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), encoding="utf-8")


def sample_notice(ref: str, urgent: bool = False) -> Notice:
    """About 2 KB once rendered: the size the reference measurements used."""
    return Notice.model_validate({
        "ref": ref, "title": "网传“长江重庆段水位暴涨将淹没主城”系谣言",
        "rumour": "长江重庆段水位今晚将暴涨10米，主城沿江区域将被淹没。" * 3,
        "truth": "经向重庆市水利局核实，目前长江重庆段水位平稳，处于正常范围。" * 6,
        "verdict": "false", "authority": "重庆市水利局", "urgency": "urgent" if urgent else "normal",
    })


def bench_env(work: Path, **settings: Any) -> dict[str, str]:
    """The environment a bot process reads its settings from (bot/settings.py)."""
    env = dict(os.environ, BENCH_SECRET=SECRET, DEBUNKBOT_OUTLETS=str(work / "outlets.yaml"),
               DEBUNKBOT_DATABASE_URL=f"sqlite:///{work / 'bench.sqlite3'}")
    env.update({f"DEBUNKBOT_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def run_measured(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> dict[str, Any]:
    """Run one worker process; returns its JSON line plus wall seconds, peak RSS (MiB) and the CPU it used
    (user + system seconds, start-up included)."""
    # /usr/bin/time reports the peak RSS of its own child; a child forked straight from this process
    # would inherit this process's high-water mark in ru_maxrss.
    with tempfile.NamedTemporaryFile("r", prefix="debunkbot-rss-") as rss:
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M %U %S", *cmd], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, timeout=timeout)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} exited {proc.returncode}: {proc.stdout[-2000:]}")
        peak, user, system = rss.read().split()[-3:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    return result | {"process_seconds": round(wall, 3), "peak_rss_mib": round(int(peak) / 1024, 1),
                     "cpu_seconds": round(float(user) + float(system), 2)}


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


def fill_store(url: str, work: Path, notices: int, prefix: str) -> int:
    """``notices`` sample notices, each to every outlet of work/outlets.yaml, in the store at ``url``; returns
    how many deliveries that makes."""
    from bot.outlets import load_matrix
    from bot.regions import RegionTable
    from bot.settings import CONFIG
    from bot.store import Store

    store = Store.open(url)
    matrix = load_matrix(work / "outlets.yaml", RegionTable.load(CONFIG / "regions.yaml"),
                         environ={"BENCH_SECRET": SECRET})
    store.queue.add_notices([(sample_notice(f"{prefix}{n}"), matrix.outlets) for n in range(notices)],
                            source="bench")
    store.close()
    return notices * len(matrix.outlets)


def timed_round(commands: Sequence[list[str]], env: dict[str, str], url: str, expected: int, work: Path,
                timeout: float = 600) -> dict[str, Any]:
    """Start these bot processes together against the store at ``url`` and time them from the start to the last
    one's exit, start-up included; count the CPU seconds of the bot (its processes and the children they reap),
    of the receiver and of the whole machine meanwhile. Each must exit 0, and ``expected`` deliveries be made."""
    from bot.store import Store

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before, recv_before = machine_busy_seconds(), cpu_seconds("nginx")
    logs = [work / f"process-{i}.log" for i in range(len(commands))]
    started = time.perf_counter()
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        with log.open("w") as err:
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]  # bounded: a stuck round is killed, not waited for
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = machine_busy_seconds() - busy_before
    recv_cpu = cpu_seconds("nginx") - recv_before  # nginx's workers live through the round
    failed = [log for code, log in zip(codes, logs, strict=True) if code]
    assert not failed, f"exited {codes}: {failed[0].read_text()[-2000:]}"
    store = Store.open(url)
    delivered = store.log.counts().get("delivered", 0)
    store.close()
    assert delivered == expected, f"{delivered} of {expected} delivered"
    bot_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"deliveries": delivered, "seconds": round(wall, 3), "per_second": round(delivered / wall, 1),
            "machine_busy_s": round(busy, 2), "bot_cpu_s": round(bot_cpu, 2), "receiver_cpu_s": round(recv_cpu, 2),
            "cpu_ms_per_delivery": round(bot_cpu * 1000 / delivered, 3)}


def scale_out(doc: str, name: str, where: str, round_of: Callable[[int, int, Path], dict[str, Any]],
              columns: Sequence[tuple[str, str, int]]) -> None:
    """A scale-out bench's main: for each N of --NAME (1,2,4), ``round_of(N, notices, work)`` runs --notices x
    --outlets against one loopback receiver (work/outlets.yaml points at it). Prints a table of ``columns``
    (header, key, width), after N, seconds, deliveries a second and the speed-up over the first round, and
    writes bench/results/NAME.json."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notices", type=int, default=20)
    parser.add_argument("--outlets", type=int, default=500)
    parser.add_argument(f"--{name}", default="1,2,4")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, receiver() as base:
        work = Path(tmp)
        write_matrix(work / "outlets.yaml", base, args.outlets)
        for n in (int(x) for x in getattr(args, name).split(",")):
            rows.append({name: n} | round_of(n, args.notices, work))
    one = rows[0]["per_second"]
    for r in rows:
        r["speed_up"] = round(r["per_second"] / one, 2)
    print(f"{args.notices} notices x {args.outlets} outlets {where}, receiver {receiver_kind()}, {os.cpu_count()} cores")
    columns = [(name, name, len(name)), ("seconds", "seconds", 8), ("deliv/s", "per_second", 9),
               ("speed-up", "speed_up", 8), *columns]
    print(" ".join(f"{header:>{width}}" for header, _, width in columns))
    for r in rows:
        print(" ".join(f"{r[key]:>{width}}" for _, key, width in columns))
    (ROOT / "bench" / "results" / f"{name}.json").write_text(json.dumps({
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "receiver": receiver_kind()},
        "notices": args.notices, "outlets": args.outlets, "rounds": rows}, indent=2) + "\n")
