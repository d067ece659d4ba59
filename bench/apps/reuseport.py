#!/usr/bin/env python3
"""N raw processes on one port, no manager: the physical limit for bench/compare.py.

    python3 reuseport.py N PORT PROGRAM [ARGS...]

Binds N SO_REUSEPORT sockets on 127.0.0.1:PORT (one per process, as herd does), starts N
copies of PROGRAM with its socket as fd 3, then only waits: no restart, no routing, no proxy.
SIGTERM or SIGINT kills the children (by pid) and exits.
"""
import os
import shutil
import signal
import socket
import sys


def main():
    n, port, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    argv[0] = shutil.which(argv[0]) or argv[0]
    children = []

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(4096)
        s.set_inheritable(True)
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, s.fileno(), 3)])
        children.append(pid)
        s.close()
    for pid in children:
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
