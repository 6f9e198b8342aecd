#!/usr/bin/env python3
"""A small HTTP/1.1 upstream for the fault suite's forwarding scenario (integration/faults.sh).

    upstream.py NAME PORT_FILE [DELAY_MS]

Listens on 127.0.0.1 on a free port (written to PORT_FILE once listening), keeps connections alive, and answers
every GET with 200 and `{"upstream": NAME, "path": PATH}` after DELAY_MS (default 2) milliseconds, so that requests
are in flight when the scenario kills one of the three with SIGKILL. `GET /healthz` answers at once.
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    name = "upstream"
    delay = 0.002

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path != "/healthz" and self.delay > 0:
            time.sleep(self.delay)
        body = json.dumps({"upstream": self.name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    Handler.name = sys.argv[1]
    if len(sys.argv) > 3:
        Handler.delay = float(sys.argv[3]) / 1000
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 256
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{srv.server_address[1]}\n")
    os.replace(tmp, sys.argv[2])
    srv.serve_forever()


if __name__ == "__main__":
    main()
