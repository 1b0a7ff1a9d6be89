"""A fast loopback receiver for the benches: aiohttp on many ports, in its own process.

    python bench/receiver.py --ports 100 [--delay 0.1] [--hang-every 10]

Prints the first port on stdout once listening; ports are consecutive. It answers every
POST with 200 (after --delay seconds), except that with --hang-every K the outlets whose
number is a multiple of K never answer.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from aiohttp import web


def free_base_port(count: int) -> int:
    for base in range(20000, 60000, count + 7):
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                socks.append(s)
            for s in socks:
                s.close()
            return base
        except OSError:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--hang-every", type=int, default=0)
    args = parser.parse_args()
    count = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        outlet = int(request.match_info["n"])
        if args.hang_every and outlet % args.hang_every == 0:
            await asyncio.Event().wait()
        if args.delay:
            await asyncio.sleep(args.delay)
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/hook/{n}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    base = free_base_port(args.ports)
    for port in range(base, base + args.ports):
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024, reuse_address=True).start()
    print(base, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
