"""A Python app instrumented with prometheus_client as people write it, served on herd's socket
(fd 3); the one line that makes herd's /metrics see every instance is marked."""
import http.server
import os
import socket
import sys

# herd's helper, as an app would vendor it (here: the repository's python/herd.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from prometheus_client import Counter  # noqa: E402

import herd  # noqa: E402

REQUESTS = Counter("py_requests_total", "Requests served", ["route"])
herd.expose_metrics()  # herd: one scrape for every instance


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        REQUESTS.labels(route=self.path).inc()
        body = f"pid={os.getpid()}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.serve_forever()
