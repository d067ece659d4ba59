#!/usr/bin/env python3
"""Requests/s of an axum hello server three ways, in one run (issue 6):

  (a) one process, multi-threaded tokio runtime;
  (b) the embedded cluster (herd::cluster), one single-threaded worker per CPU;
  (c) the herd daemon, one single-threaded instance per CPU.

    python3 bench/rust.py            # 3 alternating rounds of 5 s wrk runs
    python3 bench/rust.py --quick    # 1 round of 2 s runs

wrk (Debian's package) runs keep-alive with 64 connections on 127.0.0.1; it shares the 2 cores
with the servers, the same for every row. Every process is stopped by pid at the end.
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
DURATION = 2 if QUICK else 5
ROUNDS = 1 if QUICK else 3
CPUS = os.cpu_count()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(port):
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{DURATION}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def main():
    if not shutil.which("wrk"):
        print("installing wrk from Debian's packages (apt-get)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "-p", "herd", "--example", "axum-hello"],
        cwd=ROOT, check=True,
    )
    herd = os.path.join(ROOT, "target/release/herd")
    axum = os.path.join(ROOT, "target/release/examples/axum-hello")
    results = {"multi": [], "cluster": [], "daemon": []}

    def run_standalone(mode):
        port = free_port()
        env = dict(os.environ, AXUM_MODE=mode, PORT=str(port))
        env.pop("HERD_APP", None)
        p = subprocess.Popen([axum], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_port(port)
            time.sleep(0.3)
            return wrk(port)
        finally:
            # SIGTERM lets the embedded primary stop its workers; then the group, by pid.
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def run_daemon():
        home = tempfile.mkdtemp(prefix="herd-bench-rust-")
        env = dict(os.environ, HERD_HOME=home)
        port = free_port()
        try:
            subprocess.run([herd, "start", axum, "--name", "axum", "-i", str(CPUS), "--listen", f"127.0.0.1:{port}", "--wait-ready"],
                           env=env, check=True, capture_output=True)
            wait_port(port)
            return wrk(port)
        finally:
            subprocess.run([herd, "kill"], env=env, capture_output=True)

    for _ in range(ROUNDS):
        results["multi"].append(run_standalone("multi"))
        results["cluster"].append(run_standalone("cluster"))
        results["daemon"].append(run_daemon())

    def fmt(rows):
        rps = sorted(r[0] for r in rows)
        p99 = sorted(r[1] for r in rows)
        med = statistics.median(rps)
        span = f" ({rps[0]:,.0f}–{rps[-1]:,.0f})" if len(rps) > 1 else ""
        return med, f"{med:,.0f}{span}", f"{statistics.median(p99):.2f}"

    base = fmt(results["multi"])[0]
    print(f"axum hello, keep-alive wrk -c64 -t2 -d{DURATION}s — {time.strftime('%Y-%m-%d')}, {CPUS} cores, "
          f"{'quick: 1 run' if QUICK else f'median of {ROUNDS} alternating runs (min–max)'}\n")
    print("| deployment | requests/s | p99 ms | vs (a) |")
    print("|---|---|---|---|")
    names = {"multi": "(a) one process, multi-threaded tokio",
             "cluster": f"(b) herd::cluster, {CPUS} single-threaded workers",
             "daemon": f"(c) herd daemon, -i {CPUS} single-threaded instances"}
    for k in ("multi", "cluster", "daemon"):
        med, rps, p99 = fmt(results[k])
        print(f"| {names[k]} | {rps} | {p99} | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
