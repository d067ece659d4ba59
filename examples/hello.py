#!/usr/bin/env python3
"""A small HTTP server run by herd, in Python, with no herd library.

It takes the listening socket herd hands it (fd 3, systemd socket activation), tells herd it is
ready with one JSON line on HERD_IPC_FD, and answers every request with its pid, its instance
number and the MODE variable.

    herd start examples/hello.py -i 2 --port 8001 --env MODE=prod
"""
import http.server
import json
import os
import signal
import socket
import sys
import threading
import time


def inherited_socket():
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS", "0")) < 1:
        sys.exit("hello.py: no socket from herd (LISTEN_FDS/LISTEN_PID unset); run it under herd")
    return socket.socket(fileno=3)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/sleep/"):
            time.sleep(int(self.path[7:] or 0) / 1000)
        body = "pid={} instance={} mode={}".format(
            os.getpid(), os.environ.get("HERD_INSTANCE"), os.environ.get("MODE", "")
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = inherited_socket()
    # On SIGTERM: stop accepting, let requests in progress finish, then exit. (Python's
    # ThreadingHTTPServer makes its threads daemons, which die at exit mid-request; non-daemon
    # threads are joined by server_close.)
    server.daemon_threads = False
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("hello.py: instance {} pid {} serving".format(os.environ.get("HERD_INSTANCE"), os.getpid()), flush=True)
    ipc = os.environ.get("HERD_IPC_FD")
    if ipc:
        os.write(int(ipc), (json.dumps({"herd": "ready"}) + "\n").encode())
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
