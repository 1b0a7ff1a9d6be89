"""One contender of a bench scenario, alone in its own process; prints one JSON line.

    python bench/contender.py bot|aiohttp|httpx|apprise --work DIR [--concurrency C] [--stop-after N]

``bot`` is the daemon exactly as ``debunkbot run --until-idle`` builds it (settings from the
environment, make_sender, Daemon), timed from Daemon.run to its return. The peers read
DIR/spec.json (url and body per post, rendered once per notice by the webhook channel) and
are timed from their first post to their last answer; each signs every post with the same
standardwebhooks signer as the bot, and stores nothing. Nobody's timing includes interpreter
start-up or imports; the suite adds those separately for the real CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def run_bot(work: Path, stop_after: int) -> dict[str, Any]:
    from bot.http import make_sender
    from bot.outlets import load_matrix
    from bot.regions import RegionTable
    from bot.scheduler import Daemon
    from bot.settings import Settings
    from bot.store import Store

    settings = Settings()
    matrix = load_matrix(settings.outlets, RegionTable.load(settings.regions))
    store = Store.open(settings.database_url)
    done = {"delivered": 0, "at": 0.0}
    async with make_sender(settings) as client:
        def recorded(batch: Any) -> None:  # F2: stop once the healthy outlets all have it
            done["delivered"] += sum(r.outcome == "delivered" for r in batch)
            if stop_after and done["delivered"] >= stop_after and not done["at"]:
                done["at"] = time.perf_counter()
                daemon.stop.set()

        daemon = Daemon(settings, store, matrix, RegionTable.load(settings.regions), client, on_recorded=recorded)
        started = time.perf_counter()
        await daemon.run(until_idle=True)
        ended = done["at"] or time.perf_counter()
    delivered = store.log.counts().get("delivered", 0)
    store.close()
    return {"seconds": ended - started, "delivered": delivered}


def _load_spec(work: Path) -> list[tuple[str, str, bytes]]:
    spec = json.loads((work / "spec.json").read_text())
    return [(p["url"], p["message_id"], spec["bodies"][p["body"]].encode()) for p in spec["posts"]]


def _headers(message_id: str, body: bytes, signer: Any) -> dict[str, str]:
    now = datetime.now(UTC)
    return {"content-type": "application/json; charset=utf-8", "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signer.sign(message_id, now, body.decode()), "user-agent": "bench"}


async def run_aiohttp(work: Path, concurrency: int) -> dict[str, Any]:
    import aiohttp
    from standardwebhooks import Webhook

    from bench.common import SECRET

    posts, signer = _load_spec(work), Webhook(SECRET)
    ok = 0
    queue = iter(posts)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker() -> None:
            nonlocal ok
            for url, message_id, body in queue:
                async with session.post(url, data=body, headers=_headers(message_id, body, signer)) as response:
                    await response.read()
                    ok += response.status == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"seconds": time.perf_counter() - started, "delivered": ok}


async def run_httpx(work: Path, concurrency: int) -> dict[str, Any]:
    import httpx
    from standardwebhooks import Webhook

    from bench.common import SECRET

    posts, signer = _load_spec(work), Webhook(SECRET)
    ok = 0
    queue = iter(posts)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
        async def worker() -> None:
            nonlocal ok
            for url, message_id, body in queue:
                response = await client.post(url, content=body, headers=_headers(message_id, body, signer))
                ok += response.status_code == 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"seconds": time.perf_counter() - started, "delivered": ok}


def run_apprise(work: Path) -> dict[str, Any]:
    """Apprise 2.x: one Apprise object per notice with a json:// URL per outlet, webhook headers as
    ``+header`` URL arguments. Its json:// plugin wraps our body as the ``message`` of its own JSON."""
    from urllib.parse import quote, urlsplit

    import apprise
    from standardwebhooks import Webhook

    from bench.common import SECRET

    posts, signer = _load_spec(work), Webhook(SECRET)
    by_body: dict[bytes, list[tuple[str, str]]] = {}
    for url, message_id, body in posts:
        by_body.setdefault(body, []).append((url, message_id))
    ok = 0
    started = time.perf_counter()
    for body, targets in by_body.items():
        apobj = apprise.Apprise()
        for url, message_id in targets:
            parts = urlsplit(url)
            headers = _headers(message_id, body, signer)
            args = "&".join(f"%2B{k}={quote(v, safe='')}" for k, v in headers.items() if k != "content-type")
            apobj.add(f"json://{parts.netloc}{parts.path}?{args}")
        ok += len(targets) if apobj.notify(title="notice.published", body=body.decode()) else 0
    return {"seconds": time.perf_counter() - started, "delivered": ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["bot", "aiohttp", "httpx", "apprise"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--stop-after", type=int, default=0, help="bot: stop once this many are delivered")
    args = parser.parse_args()
    if args.kind == "bot":
        result = asyncio.run(run_bot(args.work, args.stop_after))
    elif args.kind == "aiohttp":
        result = asyncio.run(run_aiohttp(args.work, args.concurrency))
    elif args.kind == "httpx":
        result = asyncio.run(run_httpx(args.work, args.concurrency))
    else:
        result = run_apprise(args.work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
