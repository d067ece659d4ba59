#!/usr/bin/env python3
"""herd core benchmark: daemon footprint, idle CPU, `herd list` latency, and the time from
SIGKILL of an instance to its replacement answering.

    python3 bench/core.py            # full run (about a minute)
    python3 bench/core.py --quick    # short run for CI smoke (about 15 s)

Everything runs on 127.0.0.1 with a private HERD_HOME, and is stopped by pid at the end.
Figures for PM2 printed beside herd's are the ones measured on this machine kind when the
issue was written (not re-measured here); the side-by-side benchmark re-measures them.
"""
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common_helpers import rss_kb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "--example", "hello"],
        cwd=ROOT,
        check=True,
    )
    target = os.path.join(ROOT, "target", "release")
    return os.path.join(target, "herd"), os.path.join(target, "examples", "hello")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(port, timeout=5.0):
    """One GET on a fresh connection; returns the pid in the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1].decode()
    return int(body.split()[0].split("=")[1])


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def spawn_wait(argv, env):
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
    _, status = os.waitpid(pid, 0)
    took = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"{argv} failed with status {status}")
    return took


def main():
    herd, hello = build()
    home = tempfile.mkdtemp(prefix="herd-bench-")
    env = dict(os.environ, HERD_HOME=home)

    def h(*args, check=True):
        return subprocess.run([herd, *args], env=env, cwd=ROOT, check=check, capture_output=True, text=True)

    p1, p2, p3 = free_port(), free_port(), free_port()
    rows = []
    try:
        h("start", hello, "--name", "rust", "-i", "4", "--listen", f"127.0.0.1:{p1}")
        h("start", os.path.join(ROOT, "examples", "hello.py"), "--name", "python", "-i", "4", "--listen", f"127.0.0.1:{p2}")
        daemon = int(open(os.path.join(home, "daemon.lock")).read().strip())
        for port in (p1, p2):
            for _ in range(40):
                get(port)
        time.sleep(2)
        rss = rss_kb(daemon) / 1024
        rows.append(("daemon RSS, 2 apps × 4 instances, idle", f"{rss:.1f} MB", "≤ 5 MB", "54–65 MB", "yes" if rss <= 5 else "NO"))

        idle = 5 if QUICK else 30
        t0, c0 = time.time(), cpu_ticks(daemon)
        time.sleep(idle)
        used = (cpu_ticks(daemon) - c0) / os.sysconf("SC_CLK_TCK")
        pct = used / (time.time() - t0) * 100
        rows.append((f"daemon CPU over {idle} s idle", f"{used:.2f} s ({pct:.2f}%)", "0", "—", "yes" if used == 0 else "NO"))

        runs = 20
        times = sorted(spawn_wait([herd, "list"], env) for _ in range(runs))
        base = sorted(spawn_wait(["/bin/true"], env) for _ in range(runs))
        med = statistics.median(times) * 1000
        rows.append(
            (
                f"`herd list` wall time, median of {runs}",
                f"{med:.2f} ms (min {times[0]*1000:.2f}, max {times[-1]*1000:.2f}; /bin/true {statistics.median(base)*1000:.2f})",
                "≤ 3 ms",
                "144–245 ms",
                "yes" if med <= 3 else "NO",
            )
        )

        # SIGKILL → replacement answering, on a one-instance app so every request goes to it.
        h("start", hello, "--name", "solo", "-i", "1", "--listen", f"127.0.0.1:{p3}")
        rounds = 5 if QUICK else 20
        gaps = []
        for _ in range(rounds):
            old = get(p3)
            t = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            while True:
                try:
                    pid = get(p3, timeout=5)
                except (ConnectionResetError, BrokenPipeError, IndexError):
                    continue
                if pid != old:
                    break
            gaps.append((time.perf_counter() - t) * 1000)
            # Let the replacement count as a stable run (min_uptime, 1 s), so every kill is
            # restarted at once rather than after a crash-loop backoff.
            time.sleep(1.1)
        gaps.sort()
        rows.append(
            (
                f"SIGKILL → replacement answering ({rounds} kills)",
                f"median {statistics.median(gaps):.1f} ms, max {gaps[-1]:.1f} ms",
                "—",
                "—",
                "",
            )
        )
        listing = json.loads(h("list", "--json").stdout)
        restarts = sum(p["restarts"] for a in listing if a["name"] == "solo" for p in a["processes"])
        assert restarts == rounds, f"expected {rounds} restarts, saw {restarts}"
    finally:
        h("kill", check=False)

    cores = os.cpu_count()
    print(f"herd core benchmark — {time.strftime('%Y-%m-%d')}, {platform.node()}, {cores} cores, "
          f"Linux {platform.release()}, {'quick' if QUICK else 'full'} run\n")
    print("| figure | herd | target | PM2 (issue figure, not re-measured) | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
