#!/usr/bin/env python3
"""A stopped instance under fresh connections: Node's cluster, PM2 and herd side by side, and
what herd's health probes cost.

    python3 bench/health.py            # full run: 3 rounds, about 3 minutes
    python3 bench/health.py --quick    # 1 round (a smoke test, not results)
    python3 bench/health.py --herd PATH  # a herd binary built elsewhere

Part 1. Two instances of bench/apps/hello.js (the Node app of compare.py) under a paced prober
of fresh connections (40 threads, 5 requests/s each: 200/s, each request given 1 s; enough
threads that requests hanging for their whole second do not slow the rate down). One second in,
one instance gets SIGSTOP: alive, useless (a deadlock looks the same from outside); five
seconds later SIGCONT. Systems: `node cluster.js` (the primary accepts and hands connections
out round robin), `pm2 start -i 2` (Node's cluster under PM2), herd without a probe, and herd
with `--readiness http:/ --probe-interval 200ms --probe-timeout 200ms --probe-failures 2`.
Per system: requests hung (no answer in 1 s) or failed during the stop, and the time from the
SIGSTOP to the start of the last request that hung (the moment new connections stopped going
to the stopped instance; for a system that never steers away, the whole stop).

Part 2. The daemon's CPU per probe: 20 instances of the Rust `hello` example with a readiness
HTTP probe every 20 ms each (1,000 probes/s), the daemon's CPU over 10 s from /proc, and the
same without a probe. Target (issue #15): 1,000 probes/s cost well under one core.

Rules as compare.py (whose helpers it uses): 127.0.0.1 only, every load bounded, each manager
in its own temporary home, everything stopped by pid; a markdown table on stdout.
"""
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common_helpers import free_port, logger, tagged
import common_helpers as common
import compare
from compare import Cluster, PM2, Herd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
HERD_GIVEN = sys.argv[sys.argv.index("--herd") + 1] if "--herd" in sys.argv else None
RUNS = 1 if QUICK else 3
STOP_AT, STOP_FOR, AFTER = 1.0, 5.0, 1.0  # seconds
THREADS, RATE, TIMEOUT = 40, 5, 1.0  # 200 requests/s; enough threads that hung ones do not slow the rate
PROBE_ARGS = ["--readiness", "http:/", "--probe-interval", "200ms", "--probe-timeout", "200ms", "--probe-failures", "2"]
COST_INSTANCES, COST_INTERVAL_MS, COST_WINDOW = 20, 20, (3 if QUICK else 10)
CLK = os.sysconf("SC_CLK_TCK")

log = logger("health")


class HerdProbed(Herd):
    label = "herd, readiness probe"

    def start(self):
        self.bin = compare.HERD_BIN
        self.home = tempfile.mkdtemp(prefix="herd-home-")
        self.env["HERD_HOME"] = self.home
        self.cli("start", compare.HELLO_JS, "-i", str(self.n), "--listen", f"127.0.0.1:{self.port}", "--name", "hello",
                 *PROBE_ARGS)
        self.daemon = int(open(os.path.join(self.home, "daemon.lock")).read().strip())
        compare.wait_ready(self.port, self.n)


class Prober:
    """Fresh connections, paced; each result (start time, outcome)."""

    def __init__(self, port):
        self.port = port
        self.halt = threading.Event()
        self.results = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop) for _ in range(THREADS)]

    def start(self):
        self.t0 = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join()

    def loop(self):
        req = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        nxt = time.perf_counter()
        limit = self.t0 + STOP_AT + STOP_FOR + AFTER + 5
        while not self.halt.is_set() and time.perf_counter() < limit:
            nxt += 1 / RATE
            time.sleep(max(0.0, nxt - time.perf_counter()))
            t = time.perf_counter()
            data = b""
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
                    s.sendall(req)
                    end = t + TIMEOUT
                    while True:
                        s.settimeout(max(end - time.perf_counter(), 0.001))
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                outcome = "ok" if data.startswith(b"HTTP/1.1 200") else "failed"
            except socket.timeout:
                outcome = "hung"
            except OSError:
                outcome = "failed"
            with self.lock:
                self.results.append((t - self.t0, outcome))


R = {}


def put(k, v):
    R.setdefault(k, []).append(v)


def sigstop_run(name, make):
    port = free_port()
    with make(port) as s:
        victim = sorted(s.instances())[0]
        time.sleep(0.5)
        p = Prober(port).start()
        time.sleep(STOP_AT)
        os.kill(victim, signal.SIGSTOP)
        t_stop = time.perf_counter() - p.t0
        try:
            time.sleep(STOP_FOR)
        finally:
            os.kill(victim, signal.SIGCONT)
        time.sleep(AFTER)
        p.stop()
    during = [(t, o) for t, o in p.results if t_stop <= t < t_stop + STOP_FOR]
    hung = [t for t, o in during if o == "hung"]
    failed = sum(1 for _, o in during if o == "failed")
    put((name, "total"), len(during))
    put((name, "hung"), len(hung))
    put((name, "failed"), failed)
    put((name, "last"), (max(hung) - t_stop) if hung else 0.0)
    last = (max(hung) - t_stop) if hung else 0.0
    log(f"  {name}: {len(hung)} hung, {failed} failed of {len(during)}; last hung {last:.2f} s after SIGSTOP")


def probe_cost():
    hello = os.path.join(ROOT, "target", "release", "examples", "hello")
    out = {}
    for label, extra in (("no probe", []), (f"readiness http:/ every {COST_INTERVAL_MS} ms", [
            "--readiness", "http:/", "--probe-interval", f"{COST_INTERVAL_MS}ms", "--probe-timeout", "200ms"])):
        home = tempfile.mkdtemp(prefix="herd-home-")
        env = dict(os.environ, HERD_HOME=home, HERD_BENCH_TAG=f"{compare.RUN_TAG}-cost")
        port = free_port()
        try:
            subprocess.run([compare.HERD_BIN, "start", hello, "-i", str(COST_INSTANCES), "--listen", f"127.0.0.1:{port}",
                            "--name", "hello", *extra], env=env, check=True, capture_output=True, timeout=60)
            daemon = int(open(os.path.join(home, "daemon.lock")).read().strip())
            time.sleep(2)
            c0 = ticks(daemon)
            time.sleep(COST_WINDOW)
            cpu = (ticks(daemon) - c0) / CLK
            out[label] = cpu / COST_WINDOW
        finally:
            subprocess.run([compare.HERD_BIN, "kill"], env=env, capture_output=True, timeout=60)
            common.kill_pids(tagged(f"{compare.RUN_TAG}-cost"))
    return out


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main():
    compare.HERD_GIVEN = HERD_GIVEN
    compare.PM2_BIN = compare.ensure_pm2()
    if HERD_GIVEN:
        compare.HERD_BIN = os.path.abspath(HERD_GIVEN)
    else:
        log("building herd and the hello example (release)")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "--example", "hello"],
                       cwd=ROOT, check=True)
        compare.HERD_BIN = os.path.join(ROOT, "target", "release", "herd")
    systems = [
        ("cluster", "Node cluster ×2", lambda port: Cluster(2, port)),
        ("pm2", "PM2 ×2", lambda port: PM2(2, port)),
        ("herd", "herd ×2, no probe", lambda port: Herd(2, port)),
        ("probed", "herd ×2, readiness probe", lambda port: HerdProbed(2, port)),
    ]
    for r in range(RUNS):
        log(f"round {r + 1}/{RUNS}")
        order = systems if r % 2 == 0 else list(reversed(systems))
        for name, _, make in order:
            sigstop_run(name, make)
    log("probe cost")
    cost = probe_cost()

    med = lambda k: statistics.median(R[k]) if R.get(k) else float("nan")
    rng = lambda k: f"{min(R[k]):.0f}–{max(R[k]):.0f}" if R.get(k) else "—"
    print(f"SIGSTOP of one of two instances for {STOP_FOR:.0f} s under fresh connections ({THREADS}×{RATE}/s, 1 s each) — "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; {'QUICK: 1 round, not results' if QUICK else f'median (min–max) of {RUNS} rounds'}\n")
    print("| system | requests during the stop | hung | failed | SIGSTOP → last hung request started |")
    print("|---|---|---|---|---|")
    for name, label, _ in systems:
        last = med((name, "last"))
        print(f"| {label} | {med((name, 'total')):.0f} | {med((name, 'hung')):.0f} ({rng((name, 'hung'))}) | "
              f"{med((name, 'failed')):.0f} | {last:.2f} s |")
    print()
    print(f"herd's probe: `{' '.join(PROBE_ARGS)}` (detection after 2 failures, each given 200 ms).\n")
    print(f"| daemon CPU, {COST_INSTANCES} instances of the Rust hello example, over {COST_WINDOW} s | share of one core |")
    print("|---|---|")
    for label, share in cost.items():
        print(f"| {label} | {share * 100:.1f}% |")
    probes = COST_INSTANCES * 1000 / COST_INTERVAL_MS
    if len(cost) == 2:
        extra = list(cost.values())[1] - list(cost.values())[0]
        print(f"| → per probe ({probes:.0f} probes/s) | {extra / probes * 1e6:.1f} µs |")
    common.print_leftovers()


if __name__ == "__main__":
    main()
