#!/usr/bin/env python3
"""Keep N keep-alive connections cycling through busy, idle (parked) and closed, for a soak run.

    churn_conns.py HOST PORT N SECONDS [PAUSE]

Each of N workers, until SECONDS have passed: opens a connection, sends a GET and reads the answer, stays idle for
PAUSE seconds (default 0.6: longer than Sluice's 250 ms park delay, so the connection is parked), sends a second
GET on the same connection, then closes it, and starts over. Prints "done OK FAILED" (requests) at the end.
"""
import asyncio
import sys
import time


async def get(reader, writer, host, port):
    writer.write(f"GET /churn HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await asyncio.wait_for(reader.readexactly(length), 10)
    return head.startswith(b"HTTP/1.1 2")


async def worker(host, port, until, pause, counts):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            for i in range(2):
                counts[0 if await get(reader, writer, host, port) else 1] += 1
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
