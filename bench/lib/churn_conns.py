#!/usr/bin/env python3
"""Keep N keep-alive connections cycling through busy, idle (parked) and closed, for a soak run.

    churn_conns.py HOST PORT N SECONDS [PAUSE]

Each of N workers, until SECONDS have passed: opens a connection, sends a GET and reads the answer, stays idle for
PAUSE seconds (default 0.6: longer than Sluice's 250 ms park delay, so the connection is parked), sends a second
GET on the same connection, then closes it, and starts over. Prints "done OK FAILED" (requests) at the end.
"""
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hold_conns import get  # noqa: E402


async def worker(host, port, until, pause, counts):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            for i in range(2):
                counts[0 if await get(reader, writer, host, port, "/churn") else 1] += 1
                if i == 0:
                    await asyncio.sleep(pause)
            writer.close()
        except Exception:
            counts[1] += 1
            await asyncio.sleep(0.1)


async def main():
    host, port, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.6
    counts = [0, 0]
    until = time.monotonic() + seconds
    await asyncio.gather(*(worker(host, port, until, pause, counts) for _ in range(n)))
    print(f"done {counts[0]} {counts[1]}", flush=True)


asyncio.run(main())
