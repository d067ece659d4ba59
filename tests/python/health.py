#!/usr/bin/env python3
"""A test server for health probes, run by herd: it serves on the socket herd hands it (fd 3).

    GET /healthz  200, or 500 while the file $SICK_DIR/sick-<instance> exists
    GET /         pid=<pid> instance=<instance>

It also sends a heartbeat {"herd":"health"} on its channel every HEARTBEAT_MS (if set), and
stops sending them while $SICK_DIR/mute-<instance> exists.
"""
import http.server
import json
import os
import socket
import signal
import socketserver
import threading
import time

INSTANCE = os.environ.get("HERD_INSTANCE", "0")
SICK_DIR = os.environ.get("SICK_DIR", "/nonexistent")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/healthz":
            sick = os.path.exists(os.path.join(SICK_DIR, f"sick-{INSTANCE}"))
            body = b"sick\n" if sick else b"ok\n"
            self.send_response(500 if sick else 200)
        else:
            body = f"pid={os.getpid()} instance={INSTANCE}\n".encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    # Requests in progress finish before the exit (server_close joins their threads).
    daemon_threads = False

    def __init__(self, sock):
        http.server.HTTPServer.__init__(self, sock.getsockname(), Handler, bind_and_activate=False)
        self.socket = sock


def heartbeats(every):
    fd = int(os.environ["HERD_IPC_FD"])
    while True:
        if not os.path.exists(os.path.join(SICK_DIR, f"mute-{INSTANCE}")):
            os.write(fd, (json.dumps({"herd": "health"}) + "\n").encode())
        time.sleep(every)


if __name__ == "__main__":
    every = int(os.environ.get("HEARTBEAT_MS", "0"))
    if every:
        threading.Thread(target=heartbeats, args=(every / 1000,), daemon=True).start()
    server = Server(socket.socket(fileno=3))
    # On SIGTERM (a stop, a reload): stop accepting, finish what was accepted, exit.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()
