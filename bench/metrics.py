"""How long a /metrics scrape takes on a store with 200,000 attempts, and what counting latency costs the
dispatcher's recording.

    .venv/bin/python bench/metrics.py [--attempts 200000] [--outlets 50]

On SQLite and PostgreSQL (DEBUNKBOT_TEST_POSTGRES_URL, or the local test server), a fresh store gets
``attempts / outlets`` notices to every outlet, one attempt each (their latency counted in ``attempt_latency``
as the dispatcher's record does). Then it times, median of 7:

- ``scrape_ms``: GET /metrics through the ASGI app (what Prometheus waits for);
- ``histogram_over_attempts_ms``: the same histogram computed in SQL over the attempts table instead (the
  design not taken: it grows with the attempts, and pruning them would take counts back);
- ``record_ms`` / ``record_without_latency_ms``: ``queue.record`` of a batch of 100 attempts, with and without
  the latency counter's one statement.

Prints a table and writes bench/results/metrics.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, sample_notice  # noqa: E402
from bot.outlets import OutletMatrix, load_matrix  # noqa: E402
from bot.regions import RegionTable  # noqa: E402
from bot.settings import CONFIG, Settings  # noqa: E402
from bot.store import AttemptRecord, Store, attempts, deliveries, notices, outlet_health  # noqa: E402
from bot.store import queue as store_queue  # noqa: E402
from bot.store.metrics import BUCKETS, add_latencies  # noqa: E402
from bot.web import Site, create_app  # noqa: E402

POSTGRES = os.environ.get("DEBUNKBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROUNDS = 7


def median_ms(fn: Callable[[], Any], rounds: int = ROUNDS) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 1)


def backends(work: Path) -> Iterator[tuple[str, str]]:
    """A fresh SQLite store, then a fresh PostgreSQL schema (dropped once the caller moves on)."""
    yield "sqlite", f"sqlite:///{work / 'metrics.sqlite3'}"
    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except sa.exc.OperationalError:
        print("PostgreSQL not reachable: SQLite only")
        return
    try:
        url = sa.make_url(POSTGRES).update_query_dict({"options": f"-csearch_path={schema}"})
        yield "postgresql", url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def matrix_of(work: Path, outlets: int, regions: RegionTable) -> OutletMatrix:
    import yaml

    entries = [{"id": f"o{i:03d}", "name": f"融媒体中心{i}", "tier": "district", "region": "全市",
                "channel": "webhook", "url": f"http://127.0.0.1:9/hook/{i}", "secret_env": "BENCH_SECRET"}
               for i in range(outlets)]
    (work / "outlets.yaml").write_text(yaml.safe_dump({"outlets": entries}, allow_unicode=True), "utf-8")
    return load_matrix(work / "outlets.yaml", regions, environ={"BENCH_SECRET": "whsec_" + "QUJD" * 8})


def fill(store: Store, n_attempts: int, outlet_ids: list[str]) -> None:
    """Notices to every outlet, one attempt per delivery: 97% delivered, 2% failed, 1% pending."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    n_notices = n_attempts // len(outlet_ids)
    with store.db.tx() as conn:
        conn.execute(notices.insert(), [
            {"id": i + 1, "ref": f"bench-{i}", "content_hash": "x", "payload": "{}", "title": "t", "urgency":
             "urgent" if i % 100 == 0 else "normal", "submitted_at": now - timedelta(hours=1),
             "released_at": now - timedelta(hours=1), "source": "bench"} for i in range(n_notices)])
        conn.execute(outlet_health.insert(), [{"outlet_id": o} for o in outlet_ids])
    rows, tries = [], []
    for i in range(n_notices):
        for o in outlet_ids:
            did = len(rows) + 1
            status = rng.choices(("delivered", "failed", "pending"), (97, 2, 1))[0]
            rows.append({"id": did, "notice_id": i + 1, "outlet_id": o, "tier": "district", "status": status,
                         "message_id": f"m{did}", "attempts": 1, "next_attempt_at": now, "updated_at": now})
            tries.append({"delivery_id": did, "outlet_id": o, "number": 1, "trigger": "scheduled",
                          "started_at": now - timedelta(minutes=30), "latency_ms": rng.lognormvariate(4.5, 1.0),
                          "outcome": {"pending": "retry"}.get(status, status)})
    for start in range(0, len(rows), 20_000):
        with store.db.tx() as conn:
            conn.execute(deliveries.insert(), rows[start:start + 20_000])
            conn.execute(attempts.insert(), tries[start:start + 20_000])
            add_latencies(conn, (("webhook", t["latency_ms"]) for t in tries[start:start + 20_000]))
    if store.postgres:  # the ids given above: the sequences move past them
        with store.db.tx() as conn:
            for table in ("notices", "deliveries"):
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"))


def histogram_over_attempts(store: Store) -> None:
    a = attempts
    columns = [sa.func.count().filter(a.c.latency_ms <= le * 1000) for le in BUCKETS]
    with store.db.read() as conn:
        conn.execute(sa.select(a.c.outlet_id, *columns, sa.func.count(), sa.func.sum(a.c.latency_ms))
                     .group_by(a.c.outlet_id)).all()


def record_cost(store: Store, matrix: OutletMatrix) -> tuple[float, float]:
    """queue.record of 100 attempts at a time, with the latency counter and without it."""
    outlets = list(matrix.outlets)
    timings: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(2 * ROUNDS):
        counted = round_ % 2 == 0
        store.queue.add_notices([(sample_notice(f"rec-{round_}-{i}"), outlets) for i in range(2)], source="bench")
        claims = store.queue.claim(100, per_outlet=10, lease=timedelta(minutes=5))
        records = [AttemptRecord(c.delivery_id, c.outlet_id, c.attempt, datetime.now(UTC), random.uniform(20, 400),
                                 "delivered", 200, channel="webhook") for c in claims]
        original = store_queue.add_latencies
        if not counted:
            store_queue.add_latencies = lambda conn, latencies: None  # type: ignore[assignment]
        try:
            start = time.perf_counter()
            store.queue.record(records)
            timings[counted].append((time.perf_counter() - start) * 1000)
        finally:
            store_queue.add_latencies = original
    return round(statistics.median(timings[True]), 1), round(statistics.median(timings[False]), 1)


async def scrape_ms(store: Store, matrix: OutletMatrix, regions: RegionTable, url: str) -> float:
    app = create_app(Site(Settings(database_url=url), store, regions, matrix))
    times = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://bot") as client:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            answer = await client.get("/metrics")
            times.append((time.perf_counter() - start) * 1000)
            assert answer.status_code == 200 and "debunkbot_attempt_latency_seconds_count" in answer.text
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=200_000)
    parser.add_argument("--outlets", type=int, default=50)
    args = parser.parse_args()
    regions = RegionTable.load(CONFIG / "regions.yaml")
    results = []
    with tempfile.TemporaryDirectory(prefix="debunkbot-metrics-") as tmp:
        work = Path(tmp)
        matrix = matrix_of(work, args.outlets, regions)
        for backend, url in backends(work):
            store = Store.open(url)
            try:
                started = time.perf_counter()
                fill(store, args.attempts, [o.id for o in matrix.outlets])
                filled = time.perf_counter() - started
                row = {"backend": backend, "attempts": args.attempts, "outlets": args.outlets,
                       "fill_s": round(filled, 1),
                       "scrape_ms": asyncio.run(scrape_ms(store, matrix, regions, url)),
                       "figures_ms": median_ms(lambda: store.metrics.figures(timedelta(minutes=10))),
                       "histogram_over_attempts_ms": median_ms(lambda: histogram_over_attempts(store))}
                row["record_ms"], row["record_without_latency_ms"] = record_cost(store, matrix)
                results.append(row)
                print(json.dumps(row))
            finally:
                store.close()
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "python": platform.python_version(),
           "results": results}
    (ROOT / "bench" / "results" / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'backend':<11} {'scrape ms':>9} {'figures ms':>10} {'SQL hist ms':>11} {'record ms':>9} {'w/o ms':>7}")
    for r in results:
        print(f"{r['backend']:<11} {r['scrape_ms']:>9} {r['figures_ms']:>10} {r['histogram_over_attempts_ms']:>11} "
              f"{r['record_ms']:>9} {r['record_without_latency_ms']:>7}")


if __name__ == "__main__":
    main()
