#!/usr/bin/env python3
"""Bounded, paced HTTP load for the fault suite (integration/faults.sh), recording every response.

    loadgen.py --url http://127.0.0.1:PORT --target POST:/faults/rabbit [--target GET:/faults/fwd ...]
               --total N --concurrency C --rate R --out responses.jsonl --progress FILE
               [--pause-at K --resume-file F ...] [--run RUN_ID]

Request i (0-based) goes to target i % len(targets); requests start at most R a second, never in a burst to catch up
after the gateway was slow, so the load lasts at least N / R seconds however fast the gateway answers (fast 503s
during an outage do not burn the whole budget at once). POST bodies are `{"run": RUN_ID, "seq": i}`; GET paths end in `/<i>`.

Each response becomes one JSON line in --out, in request order: seq, target, status (0 when no HTTP answer came:
refused, reset, timeout; then `error` names the exception), for a 202 the body's `id` and `spooled`, and the start
and end times (time.time(), for the report's notes only: nothing asserts on timings).

--progress is rewritten with the number of completed requests (at most every 50 ms), so the orchestrator injects
each fault after a given number of requests rather than after a given time. Each --pause-at K stops issuing
requests from seq K on until its --resume-file exists (the orchestrator creates it once the fault is over and the
gateway is ready again), so that the rest of the load exercises the recovery; after --pause-timeout seconds it
goes on regardless and says so on stderr.
"""

import argparse
import http.client
import json
import os
import sys
import threading
import time
import urllib.parse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--target", action="append", required=True, help="METHOD:/path (repeatable; round robin)")
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rate", type=float, default=100.0, help="requests per second at most (0: unpaced)")
    p.add_argument("--out", required=True)
    p.add_argument("--progress", required=True)
    p.add_argument("--pause-at", type=int, action="append", default=[])
    p.add_argument("--resume-file", action="append", default=[])
    p.add_argument("--pause-timeout", type=float, default=300.0)
    p.add_argument("--timeout", type=float, default=60.0, help="per-request socket timeout, seconds")
    p.add_argument("--run", default="faults")
    a = p.parse_args()
    if len(a.pause_at) != len(a.resume_file):
        p.error("each --pause-at needs its --resume-file")
    return a


class Load:
    def __init__(self, a):
        self.a = a
        u = urllib.parse.urlsplit(a.url)
        self.host, self.port = u.hostname, u.port or 80
        self.targets = []
        for t in a.target:
            method, _, path = t.partition(":")
            self.targets.append((method.upper(), path))
        self.results = [None] * a.total
        self.lock = threading.Lock()
        self.next_seq = 0
        self.done = 0
        self.next_slot = 0.0
        self.pauses = sorted(zip(a.pause_at, a.resume_file))

    def take(self):
        with self.lock:
            if self.next_seq >= self.a.total:
                return None
            seq = self.next_seq
            self.next_seq += 1
            return seq

    def wait_turn(self, seq):
        for k, f in self.pauses:
            if seq >= k and not os.path.exists(f):
                deadline = time.time() + self.a.pause_timeout
                while not os.path.exists(f):
                    if time.time() > deadline:
                        print(f"loadgen: {f} did not appear within {self.a.pause_timeout}s; going on", file=sys.stderr)
                        open(f, "a").close()
                        break
                    time.sleep(0.02)
        if self.a.rate > 0:
            # One start every 1/rate seconds, never faster: time lost while the gateway was slow (or while paused)
            # is not made up for with a burst.
            with self.lock:
                now = time.monotonic()
                slot = max(self.next_slot, now)
                self.next_slot = slot + 1 / self.a.rate
            if slot > now:
                time.sleep(slot - now)

    def worker(self):
        conn = None
        while True:
            seq = self.take()
            if seq is None:
                break
            self.wait_turn(seq)
            ti = seq % len(self.targets)
            method, path = self.targets[ti]
            rec = {"seq": seq, "target": ti, "status": 0}
            headers = {"x-request-id": f"{self.a.run}-{seq}"}
            body = None
            if method == "GET":
                url = f"{path}/{seq}"
            else:
                url = path
                body = json.dumps({"run": self.a.run, "seq": seq}).encode()
                headers["content-type"] = "application/json"
            rec["t0"] = time.time()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.a.timeout)
                conn.request(method, url, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                rec["status"] = resp.status
                if resp.status == 202:
                    try:
                        j = json.loads(data)
                        rec["id"] = j.get("id")
                        if j.get("spooled"):
                            rec["spooled"] = True
                    except ValueError:
                        rec["error"] = "202 body is not JSON"
                if resp.getheader("connection", "").lower() == "close" or resp.will_close:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure is a recorded outcome
                rec["error"] = type(e).__name__
                if conn is not None:
                    conn.close()
                conn = None
            rec["t1"] = time.time()
            self.results[seq] = rec
            with self.lock:
                self.done += 1

    def progress_writer(self, stop):
        last = -1
        while True:
            with self.lock:
                d = self.done
            if d != last:
                tmp = self.a.progress + ".tmp"
                with open(tmp, "w") as f:
                    f.write(f"{d}\n")
                os.replace(tmp, self.a.progress)
                last = d
            if stop.is_set():
                break
            time.sleep(0.05)

    def run(self):
        self.next_slot = time.monotonic()
        stop = threading.Event()
        pw = threading.Thread(target=self.progress_writer, args=(stop,), daemon=True)
        pw.start()
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        pw.join()
        with open(self.a.out + ".tmp", "w") as f:
            for r in self.results:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
        os.replace(self.a.out + ".tmp", self.a.out)
        counts = {}
        for r in self.results:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        print("loadgen: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), file=sys.stderr)


if __name__ == "__main__":
    Load(parse_args()).run()
