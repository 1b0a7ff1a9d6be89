"""The read commands start in a blink: they load no HTTP client, template engine, web framework, scheduler or
migration tool, and of the store, the settings and the channels only what the command reads
(bench/cli_start.py times them; this checks what they load, which does not depend on the load of the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.intake import expand, submit_files
from bot.outlets import load_matrix
from bot.regions import RegionTable
from bot.schema import _head_of_files, head
from bot.settings import CONFIG
from bot.store import Store

HEAVY = ("httpx", "jinja2", "aiohttp", "fastapi", "starlette", "uvicorn", "apscheduler", "alembic")
# What a command needs beyond those decides what else it may load: the store (SQLAlchemy), the settings
# (pydantic-settings), the channels (only a command that reads the outlet matrix).
NEEDS = {"--help": (), "log": ("store",), "status": ("store",), "outlets": ("store", "matrix"), "regions": ()}
LIBRARY = {"store": ("sqlalchemy",), "matrix": ("channels",), "settings": ("pydantic_settings",)}

# Runs the command in this interpreter as `debunkbot` does, then says which of HEAVY it loaded, and whether the
# garbage collector is on (bot.cli.main keeps it off for a command's start; only a long-running one turns it on).
PROBE = f"""
import gc, sys
from bot.cli import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print("GC", "on" if gc.isenabled() else "off", file=sys.stderr)
print("LOADED", *sorted(m for m in {HEAVY + tuple(m for ms in LIBRARY.values() for m in ms)!r} if m in sys.modules),
      "EXIT", code, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def store_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli-start') / 'store.sqlite3'}"
    regions = RegionTable.load(CONFIG / "regions.yaml")
    store = Store.open(url)
    submit_files(expand([CONFIG / "samples"]), store, load_matrix(CONFIG / "outlets.yaml", regions,
                                                                  require_secrets=False), regions)
    store.close()
    return dict(os.environ, DEBUNKBOT_DATABASE_URL=url, COLUMNS="120")


@pytest.mark.parametrize("argv", [["--help"], ["log"], ["log", "--json"], ["status", "cq-2026-1127-001"],
                                  ["outlets"], ["outlets", "--json"], ["regions"]], ids=" ".join)
def test_a_read_command_answers_loading_only_what_it_needs(argv: list[str], store_env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], env=store_env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    loaded = done.stderr.rsplit("LOADED", 1)[-1].split()
    assert loaded[-2:] == ["EXIT", "0"], done.stderr
    assert done.stdout.strip(), "the command printed its answer"
    needs = NEEDS[argv[0]] + (() if argv == ["--help"] else ("settings",))
    allowed = {m for need in needs for m in LIBRARY[need]}
    assert set(loaded[:-2]) <= allowed, f"{' '.join(argv)} loaded {sorted(set(loaded[:-2]) - allowed)}"
    assert "GC off" in done.stderr, "a read command ends before the collector would have anything to do"


def test_the_schema_head_read_from_the_migration_files_is_alembics() -> None:
    assert _head_of_files() == head()
