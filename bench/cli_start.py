"""How long the read commands take from exec to their output: `--help`, `log`, `status`, `outlets`, `regions`.

    .venv/bin/python bench/cli_start.py [--runs 20]

Each command runs as an operator runs it (`.venv/bin/debunkbot …`, a fresh process) against a SQLite store
holding the sample notices for the example matrix (config/). With hyperfine installed (Debian's package) it
times the runs (median of ``--runs``, after 3 warm-ups); otherwise it times them itself the same way. A
command's whole run is an upper bound of its time to first output: each prints once its answer is read.
Prints a table and writes bench/results/cli_start.json; the pass mark (issue 16) is 0.25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PASS_MARK = 0.25
COMMANDS = {"--help": ["--help"], "log": ["log"], "status": ["status", "cq-2026-1127-001"], "outlets": ["outlets"],
            "regions": ["regions"]}


def make_store(work: Path) -> dict[str, str]:
    """A store holding the sample notices, made through the library (no outlet secret needed); returns the env."""
    from bot.intake import expand, submit_files
    from bot.outlets import load_matrix
    from bot.regions import RegionTable
    from bot.settings import CONFIG
    from bot.store import Store

    url = f"sqlite:///{work / 'cli.sqlite3'}"
    regions = RegionTable.load(CONFIG / "regions.yaml")
    matrix = load_matrix(CONFIG / "outlets.yaml", regions, require_secrets=False)
    store = Store.open(url)
    submit_files(expand([CONFIG / "samples"]), store, matrix, regions)
    store.close()
    return dict(os.environ, DEBUNKBOT_DATABASE_URL=url, COLUMNS="120")


def time_runs(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Median, min and max wall seconds of ``runs`` runs, after 3 warm-ups, and the mean CPU seconds (user +
    system) of one run: on a machine others keep busy, the wall time waits for the CPU, the CPU time much less."""
    if shutil.which("hyperfine"):
        with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
            subprocess.run(["hyperfine", "--warmup", "3", "--runs", str(runs), "-N", "--style", "none",
                            "--export-json", out.name, " ".join(argv)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            result = json.load(out)["results"][0]
            times, cpu = result["times"], result["user"] + result["system"]
    else:
        times, cpus = [], []
        for i in range(runs + 3):
            before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if i >= 3:
                times.append(time.perf_counter() - started)
                cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        cpu = statistics.mean(cpus)
    return {"median": round(statistics.median(times), 4), "min": round(min(times), 4), "max": round(max(times), 4),
            "cpu": round(cpu, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("debunkbot"))
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="debunkbot-cli-") as tmp:
        env = make_store(Path(tmp))
        for name, argv in COMMANDS.items():
            results[name] = time_runs([exe, *argv], env, args.runs)
        baseline = time_runs([sys.executable, "-c", "pass"], env, args.runs)
    print(f"debunkbot read commands, exec to exit, median of {args.runs} "
          f"({'hyperfine' if shutil.which('hyperfine') else 'subprocess'}); python alone: {baseline['median']:.3f} s")
    for name, r in results.items():
        mark = "ok" if r["median"] <= PASS_MARK else "SLOW"
        print(f"  {name:<8} {r['median']:.3f} s  (min {r['min']:.3f}, max {r['max']:.3f}; CPU {r['cpu']:.3f} s)  {mark}")
    (ROOT / "bench" / "results" / "cli_start.json").write_text(json.dumps({
        "runs": args.runs, "timer": "hyperfine" if shutil.which("hyperfine") else "subprocess",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "pass_mark_seconds": PASS_MARK, "python_alone": baseline, "commands": results,
        "all_pass": all(r["median"] <= PASS_MARK for r in results.values()),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
