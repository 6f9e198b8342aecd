#!/usr/bin/env python3
"""Open N keep-alive HTTP/1.1 connections, send one GET on each, read the response, and keep them open.

    hold_conns.py [--tls] HOST PORT N [PATH]

With --tls, each connection is TLS (certificate not verified, ALPN http/1.1).

Prints "ready OK FAILED" on stdout once every connection has its response (or failed), then holds the
connections until the process gets SIGTERM/SIGINT. Used by bench/run.sh to read a proxy's RSS
with 1,000 open client connections.
"""
import asyncio
import signal
import ssl
import sys

TLS = None


async def get(reader, writer, host, port, path):
    """Sends GET path on the connection and reads the answer (head, then a content-length body): True if 2xx."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await asyncio.wait_for(reader.readexactly(length), 10)
    return head.startswith(b"HTTP/1.1 2")


async def one(host, port, path, sem, writers):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=TLS), 10)
            ok = await get(reader, writer, host, port, path)
            writers.append(writer)
            return ok
        except Exception:
            return False


async def main():
    global TLS
    args = sys.argv[1:]
    if args and args[0] == "--tls":
        args = args[1:]
        TLS = ssl.create_default_context()
        TLS.check_hostname = False
        TLS.verify_mode = ssl.CERT_NONE
        TLS.set_alpn_protocols(["http/1.1"])
    host, port, n = args[0], int(args[1]), int(args[2])
    path = args[3] if len(args) > 3 else "/"
    sem = asyncio.Semaphore(100)  # at most 100 connects in flight (listen backlogs)
    writers = []
    results = await asyncio.gather(*(one(host, port, path, sem, writers) for _ in range(n)))
    ok = sum(results)
    print(f"ready {ok} {n - ok}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
