#!/usr/bin/env python3
"""A demo upstream for the README's tour: answers every request 200 with a JSON echo of it, and prints one line
per request (method, path, the sluice-* and x-* headers, body) to stdout.

    python3 examples/echo.py PORT
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0)).decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith(("sluice-", "x-"))}
        seen = {"method": self.command, "path": self.path, "headers": headers, "body": body}
        print(json.dumps(seen), flush=True)
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
