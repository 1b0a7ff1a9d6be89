"""Scale-out on PostgreSQL: 1, 2 and 4 `debunkbot worker` processes sharing one store.

    .venv/bin/python bench/workers.py [--notices 20] [--outlets 500] [--workers 1,2,4]

Each round gets a fresh schema holding 20 notices x 500 outlets (10,000 deliveries), starts N
real worker processes (`python -m bot worker --until-idle`) against a fast loopback receiver,
and times them from start to the last one's exit. It also counts the CPU seconds spent by the
workers, by PostgreSQL and by the receiver during the round, to show where the time goes
(bench/common.py). Prints a table and writes bench/results/workers.json.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SECRET, fill_store, scale_out, timed_round

POSTGRES = os.environ.get("DEBUNKBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def round_of(workers: int, notices: int, work: Path) -> dict[str, Any]:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES, pool_pre_ping=True, connect_args={"options": "-c lock_timeout=30s"})
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    url = sa.make_url(POSTGRES).update_query_dict({"options": f"-csearch_path={schema}"})
    url_text = url.render_as_string(hide_password=False)
    try:
        deliveries = fill_store(url_text, work, notices, "w")
        env = dict(os.environ, BENCH_SECRET=SECRET, DEBUNKBOT_OUTLETS=str(work / "outlets.yaml"),
                   DEBUNKBOT_DATABASE_URL=url_text, DEBUNKBOT_CONCURRENCY="200", DEBUNKBOT_SCAN_INTERVAL="0.5")
        command = [sys.executable, "-m", "bot", "worker", "--until-idle"]
        r = timed_round([command] * workers, env, url_text, deliveries, work, timeout=300)
        # PostgreSQL's backends come and go with the workers' connections: what is left is mostly it (and, on a
        # shared machine, whoever else is busy)
        return r | {"postgres_and_rest_cpu_s": round(r["machine_busy_s"] - r["bot_cpu_s"] - r["receiver_cpu_s"], 2)}
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


if __name__ == "__main__":
    scale_out(__doc__, "workers", "on PostgreSQL", round_of,
              [("busy cpu-s", "machine_busy_s", 10), ("workers", "bot_cpu_s", 8), ("receiver", "receiver_cpu_s", 8),
               ("pg+rest", "postgres_and_rest_cpu_s", 8)])
