#!/usr/bin/env python3
"""The supervisor's death, measured (issue #18, docs/keeper.md): herd's daemon, PM2's God
daemon and a Node cluster primary are each SIGKILLed 20 times in a row under a load of fresh
connections to the same Node app (bench/apps/hello.js, 2 instances), in one run.

What each user gets back, as they would set it up:
- herd: nothing to do — the keeper starts the next daemon, which adopts the instances;
- PM2: `pm2 resurrect` right after each kill (what its systemd unit, `pm2 startup`, does
  when it restarts PM2), from a `pm2 save` made at the start;
- Node cluster: the primary started again right after each kill (systemd's Restart=always).

Printed: requests failed during the kills, time from a kill until the app answers again and,
for herd, until `herd list` answers; the instances' pids after the kills; the keeper's and the
daemon's memory. Bounded: every load loop stops by itself; every process started is stopped
by pid at the end.

    python3 bench/keeper.py [--kills 20] [--gap-ms 300] [--quick]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common_helpers as ch  # noqa: E402

log = ch.logger("keeper")
ROOT = ch.ROOT
APPS = os.path.join(ROOT, "bench", "apps")
HELLO_JS = os.path.join(APPS, "hello.js")
CLUSTER_JS = os.path.join(APPS, "cluster.js")
NODE = shutil.which("node") or "node"
TAG = f"keeper-{os.getpid()}"


def herd_bin():
    for p in ("target/release/herd", "target/debug/herd"):
        path = os.path.join(ROOT, p)
        if os.path.exists(path):
            return path
    sys.exit("build herd first: cargo build --release")


class Load:
    """Fresh connections, one at a time, until stopped (at most `limit` s)."""

    def __init__(self, port, limit=300.0):
        self.port, self.limit = port, limit
        self.ok = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        end = time.time() + self.limit
        while not self.stop.is_set() and time.time() < end:
            try:
                ch.get(self.port, timeout=1.0)
                self.ok += 1
            except Exception:
                self.failed += 1
                time.sleep(0.002)

    def finish(self):
        self.stop.set()
        self.thread.join()


def wait_answer(port, limit=30.0):
    """Seconds until a GET succeeds (None past `limit`)."""
    t = time.perf_counter()
    while time.perf_counter() - t < limit:
        try:
            ch.get(port, timeout=0.5)
            return time.perf_counter() - t
        except Exception:
            time.sleep(0.005)
    return None


def run_herd(kills, gap, port):
    home = tempfile.mkdtemp(prefix="herd-keeper-")
    env = dict(os.environ, HERD_HOME=home, HERD_BENCH_TAG=TAG)
    herd = herd_bin()

    def cli(*a, timeout=60):
        return subprocess.run([herd, *a], env=env, capture_output=True, text=True, timeout=timeout, check=True).stdout

    cli("start", HELLO_JS, "-i", "2", "--listen", f"127.0.0.1:{port}", "--name", "hello")
    wait_answer(port)
    pids = sorted(p["pid"] for p in __import__("json").loads(cli("list", "--json"))[0]["processes"])
    daemon = int(open(os.path.join(home, "daemon.lock")).read().split()[0])
    keeper = int(open(f"/proc/{daemon}/stat").read().rsplit(")", 1)[1].split()[1])
    load = Load(port)
    back, answered = [], []
    try:
        for _ in range(kills):
            time.sleep(gap)
            daemon = int(open(os.path.join(home, "daemon.lock")).read().split()[0])
            t = time.perf_counter()
            os.kill(daemon, 9)
            wait_answer(port)
            answered.append(time.perf_counter() - t)
            cli("list")
            back.append(time.perf_counter() - t)
        time.sleep(gap)
    finally:
        load.finish()
    after = sorted(p["pid"] for p in __import__("json").loads(cli("list", "--json"))[0]["processes"])
    daemon = int(open(os.path.join(home, "daemon.lock")).read().split()[0])
    rss = (ch.rss_kb(keeper), ch.rss_kb(daemon))
    cli("kill")
    shutil.rmtree(home, ignore_errors=True)
    return {"load": load, "list": back, "answer": answered, "same_pids": pids == after, "rss": rss}


def run_pm2(kills, gap, port):
    pm2 = ch.install_pm2(log)
    home = tempfile.mkdtemp(prefix="pm2-keeper-")
    env = dict(os.environ, PM2_HOME=home, PORT=str(port), HERD_BENCH_TAG=TAG)

    def cli(*a, timeout=120):
        return subprocess.run([pm2, *a], env=env, capture_output=True, text=True, timeout=timeout)

    cli("start", HELLO_JS, "-i", "2", "--name", "hello")
    wait_answer(port)
    cli("save")
    load = Load(port)
    answered, lost = [], 0
    try:
        for _ in range(kills):
            time.sleep(gap)
            god = int(open(os.path.join(home, "pm2.pid")).read().strip())
            t = time.perf_counter()
            os.kill(god, 9)
            cli("resurrect")
            a = wait_answer(port)
            if a is None:
                lost += 1
            answered.append(time.perf_counter() - t)
        time.sleep(gap)
    finally:
        load.finish()
        cli("kill")
        ch.kill_pids(ch.tagged(TAG))
        shutil.rmtree(home, ignore_errors=True)
    return {"load": load, "answer": answered, "never": lost}


def run_node(kills, gap, port):
    env = dict(os.environ, PORT=str(port), HERD_BENCH_TAG=TAG)
    start = lambda: subprocess.Popen([NODE, CLUSTER_JS, "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: E731
    primary = start()
    wait_answer(port)
    load = Load(port)
    answered = []
    try:
        for _ in range(kills):
            time.sleep(gap)
            t = time.perf_counter()
            primary.kill()
            primary.wait()
            primary = start()
            wait_answer(port)
            answered.append(time.perf_counter() - t)
        time.sleep(gap)
    finally:
        load.finish()
        primary.terminate()
        try:
            primary.wait(timeout=5)
        except subprocess.TimeoutExpired:
            primary.kill()
        ch.kill_pids(ch.tagged(TAG))
    return {"load": load, "answer": answered}


def ms(xs):
    if not xs:
        return "—"
    xs = sorted(xs)
    return f"{statistics.median(xs) * 1000:.0f} ms (max {xs[-1] * 1000:.0f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--gap-ms", type=int, default=300)
    ap.add_argument("--quick", action="store_true", help="5 kills each, a smoke test")
    a = ap.parse_args()
    if a.quick:
        a.kills = 5
    gap = a.gap_ms / 1000
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {}
    try:
        log(f"herd ({herd_bin()})")
        results["herd"] = run_herd(a.kills, gap, ch.free_port())
        log("PM2")
        results["pm2"] = run_pm2(a.kills, gap, ch.free_port())
        log("Node cluster")
        results["node"] = run_node(a.kills, gap, ch.free_port())
    finally:
        ch.kill_pids(ch.tagged(TAG))
    h, p, n = results["herd"], results["pm2"], results["node"]
    print(f"## {a.kills} kills of the supervisor under load ({time.strftime('%Y-%m-%d')}, commit {commit}, `python3 bench/keeper.py`)\n")
    print(f"Node app bench/apps/hello.js, 2 instances; a kill every {a.gap_ms} ms once the app answers again; one client, fresh connections, 1 s timeout.\n")
    print("| supervisor killed (SIGKILL) | brought back by | requests ok | requests failed | kill → app answers | kill → `list` answers | instance pids after |")
    print("|---|---|---|---|---|---|---|")
    print(f"| herd daemon | its keeper | {h['load'].ok} | {h['load'].failed} | {ms(h['answer'])} | {ms(h['list'])} | {'unchanged' if h['same_pids'] else 'CHANGED'} |")
    print(f"| PM2 God daemon | `pm2 resurrect` at once | {p['load'].ok} | {p['load'].failed} | {ms(p['answer'])} | — | new |")
    print(f"| Node cluster primary | started again at once | {n['load'].ok} | {n['load'].failed} | {ms(n['answer'])} | — | new |")
    keeper, daemon = h["rss"]
    print(f"\nMemory after the kills: herd's keeper {keeper / 1024:.1f} MiB RSS, its daemon {daemon / 1024:.1f} MiB.")
    ch.print_leftovers()


if __name__ == "__main__":
    ch.run(main)
