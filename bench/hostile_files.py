"""Hostile notice files (issue 10, items 1 and 2): how long and how much memory refusing each one takes.

    .venv/bin/python bench/hostile_files.py          # prints a table, writes bench/results/hostile_files.json

Each file is refused in a fresh process (``debunkbot``'s own ``read_notices``), timed from the call to the
refusal; peak RSS is the process's ``ru_maxrss`` (the interpreter and pydantic included). Target: under 2 s
and 200 MB each. tests/test_intake.py uses the same files.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOTICE = ("ref: cq-hostile-001\ntitle: 标题\nrumour: 说法\ntruth: 真相\nverdict: false\nauthority: 某局\n")


def nested_brackets(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def empty_mappings(path: Path) -> None:  # 300 KB
    path.write_text("[" + "{}, " * 100_000 + "]" if path.suffix != ".json" else "[" + ",".join(["{}"] * 100_000) + "]")


def aliases(path: Path) -> None:
    """About 200,000 *aliases in 1 MB, nine levels of ten: the expansion is 10^9 nodes ("billion laughs")."""
    lines = ['l0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    lines.append("truth: [" + ", ".join(["*a8"] * 200_000) + "]")
    path.write_text(NOTICE.replace("truth: 真相\n", "") + "\n".join(lines) + "\n")


def far_future(path: Path) -> None:
    path.write_text(NOTICE + "publish_at: 9999-12-31T23:59:59-08:00\n")


def year_one(path: Path) -> None:
    path.write_text(NOTICE + "publish_at: 0001-01-01T00:00:00+08:00\n")


def sparse_gigabyte(path: Path) -> None:
    with path.open("wb") as file:
        file.truncate(1024**3)


HOSTILE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    # name: (file name, writer, what the refusal says)
    "100,000 nested brackets (JSON)": ("deep.json", nested_brackets, "nested deeper than"),
    "100,000 nested brackets (YAML)": ("deep.yaml", nested_brackets, "nested deeper than"),
    "100,000 {} in a 300 KB list (YAML)": ("many.yaml", empty_mappings, "more than 1,000 notices"),
    "100,000 {} in a 200 KB list (JSON)": ("many.json", empty_mappings, "100,000 notices in one file"),
    "200,000 YAML aliases in 1 MB": ("laughs.yaml", aliases, "aliases are expanded"),
    "publish_at 9999-12-31T23:59:59-08:00": ("far.yaml", far_future, "field 'publish_at'"),
    "publish_at 0001-01-01T00:00:00+08:00": ("old.yaml", year_one, "field 'publish_at'"),
    "a 1 GB sparse file": ("huge.yaml", sparse_gigabyte, "over the 1,048,576-byte limit"),
}


def refuse_one(path: str) -> None:
    """In a fresh process: refuse the file, print seconds, peak RSS in MB and the first line of the refusal."""
    from bot.intake import IntakeError, read_notices
    from bot.regions import RegionTable
    from bot.settings import CONFIG

    regions = RegionTable.load(CONFIG / "regions.yaml")
    start = time.perf_counter()
    try:
        read_notices(Path(path), regions)
        message = "ACCEPTED"
    except IntakeError as exc:
        message = str(exc).splitlines()[0]
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": elapsed, "peak_rss_mb": peak, "refusal": message}, ensure_ascii=False))


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (filename, write, _) in HOSTILE.items():
            path = Path(tmp) / filename
            write(path)
            out = subprocess.run([sys.executable, __file__, "--refuse", str(path)], capture_output=True,
                                 text=True, check=True).stdout
            row = {"file": name, "bytes": path.stat().st_size, **json.loads(out)}
            rows.append(row)
            path.unlink()
            print(f"{name:40} {row['seconds']:7.3f} s {row['peak_rss_mb']:7.1f} MB  {row['refusal'][-70:]}")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "hostile_files.json").write_text(json.dumps(
        {"machine": platform.platform(), "python": platform.python_version(), "rows": rows},
        ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--refuse"]:
        refuse_one(sys.argv[2])
    else:
        main()
