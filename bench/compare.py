#!/usr/bin/env python3
"""herd side by side with Node's cluster module, PM2, raw processes and a lone hyper server.

    python3 bench/compare.py            # full run: 3 rounds, about 10 minutes
    python3 bench/compare.py --quick    # CI smoke: 1 round, short loads, under 2 minutes
    python3 bench/compare.py --herd PATH  # use a herd binary built elsewhere (no herd build)
    python3 bench/compare.py --runs 5     # more rounds (default 3; --quick: 1)
    python3 bench/compare.py --autogroup  # leave the kernel's scheduler autogroup as it is
    python3 bench/compare.py --only reload  # only these sections (throughput, crash, reload,
                                            # footprint; comma-separated); the rest shows —

One command: it installs what it needs (wrk with apt-get when missing, PM2 from the npm
registry into bench/.cache/npm, never global), builds herd and bench/hyper-hello in release
mode, measures every figure in this run on this machine and prints one markdown table on
stdout (progress goes to stderr). bench/README.md says what each row means.

Rules it keeps: 127.0.0.1 only; every load is bounded in time; each manager gets its own
home folder (PM2_HOME, HERD_HOME) and is stopped by its own command, then whatever is left of
it is killed by pid; systems alternate within each round (A B C … A B C …); every process it
starts carries HERD_BENCH_TAG in its environment, and on exit (also on error or Ctrl-C) every
process still carrying the run's tag is killed by pid and reported.
"""
import errno
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common_helpers import AUTOGROUP_KEPT, AUTOGROUP_NOT_ROOT, LEFTOVERS, NOTES, Started, alive, cmdline
from common_helpers import cpu_busy, descendants, ensure_wrk, first_line, free_port, get, kill_pids, logger, ms
from common_helpers import parse_wrk, proc_table, rss_kb, tagged
import common_helpers as common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
APPS = os.path.join(BENCH, "apps")
CACHE = os.path.join(BENCH, ".cache")
QUICK = "--quick" in sys.argv
# --herd PATH: benchmark this herd binary instead of building the working tree's.
HERD_GIVEN = sys.argv[sys.argv.index("--herd") + 1] if "--herd" in sys.argv else None

SECTIONS = ("throughput", "crash", "reload", "footprint")
ONLY = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else set(SECTIONS)
if ONLY - set(SECTIONS):
    sys.exit(f"--only takes {', '.join(SECTIONS)} (comma-separated), not {', '.join(sorted(ONLY - set(SECTIONS)))}")

N = os.cpu_count() or 2
RUNS = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else (1 if QUICK else 3)
WRK_SECS = 2 if QUICK else 5
WRK_CONNS = 64
CRASH_KILLS = 4 if QUICK else 10
RELOAD_SIZES = (2,) if QUICK else (2, 4)
IDLE_SECS = 10 if QUICK else 30
LIST_RUNS = 20
# The bounded load of the crash and reload rows: fresh connections (and, for reload, also
# keep-alive ones) from Python threads, paced, each request given 1 s.
FRESH_THREADS, FRESH_RATE = 8, 50  # 8 × 50 = 400 requests/s
KEEP_THREADS, KEEP_RATE = 4, 100  # 4 × 100 = 400 requests/s
TIMEOUT = 1.0

RUN_TAG = f"{os.getpid()}-{int(time.time())}"
CLK = os.sysconf("SC_CLK_TCK")

NODE = shutil.which("node") or "node"
HELLO_JS = os.path.join(APPS, "hello.js")


log = logger("compare")


# --------------------------------------------------------------------------------------------
# Installing and building


def ensure_pm2():
    return common.install_pm2(log)


def build():
    if HERD_GIVEN:
        herd = os.path.abspath(HERD_GIVEN)
        log(f"using the herd binary {herd}; building bench/hyper-hello (release)")
    else:
        log("building herd (release) and bench/hyper-hello (release)")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd"], cwd=ROOT, check=True)
        herd = os.path.join(ROOT, "target", "release", "herd")
    target = os.path.join(CACHE, "hyper-target")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(BENCH, "hyper-hello", "Cargo.toml")],
        cwd=ROOT,
        check=True,
        env=dict(os.environ, CARGO_TARGET_DIR=target),
    )
    return herd, os.path.join(target, "release", "hyper-hello")


def versions(wrk, pm2, herd):
    pm2v = json.load(open(os.path.join(os.path.dirname(os.path.dirname(pm2)), "package.json")))["version"]
    hyperv = "?"
    lock = open(os.path.join(BENCH, "hyper-hello", "Cargo.lock")).read()
    m = re.search(r'name = "hyper"\nversion = "([^"]+)"', lock)
    if m:
        hyperv = m.group(1)
    wrkv = first_line([wrk, "-v"])
    m = re.match(r"wrk (\S+)", wrkv)
    return {
        "node": first_line([NODE, "--version"]),
        "pm2": pm2v,
        "wrk": m.group(1) if m else wrkv,
        "herd": first_line([herd, "--version"]).replace("herd ", ""),
        "rustc": first_line(["rustc", "--version"]).split(" (")[0].replace("rustc ", ""),
        "hyper": hyperv,
    }


# --------------------------------------------------------------------------------------------
# /proc


def tree_ticks(roots):
    table = proc_table()
    return {p: (table[p][1], table[p][2]) for p in descendants(roots, table)}


def cpu_seconds(before, after):
    """CPU used between two tree_ticks samples (a pid counts only if it is the same process)."""
    used = 0
    for pid, (ticks, start) in after.items():
        b = before.get(pid)
        used += ticks - (b[0] if b and b[1] == start else 0)
    return used / CLK


def children(pid):
    table = proc_table()
    return sorted((p for p, (pp, _, _) in table.items() if pp == pid), key=lambda p: table[p][2])


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


QUIET = {"waited": 0.0, "busy_runs": 0, "runs": 0, "background": [], "steal": [], "retried": 0}
QUIET_LIMIT = 0.15  # CPU of other programs, in cores, below which the machine counts as quiet
BUSY_LIMIT = 0.25  # a wrk run during which other programs used more than this is run again …
RETRIES = 0 if QUICK else 2  # … at most this many times (then it is kept, and counted in the note)


def autogroup_off():
    """With autogroup on, the kernel shares CPU between sessions, not threads. herd starts
    every instance in its own session, PM2 and Node's cluster keep all workers in one, wrk runs
    in another: each system would get a different share of the 2 cores against wrk. The run
    switches autogroup off (root only) and restores it at the end; `--autogroup` keeps it."""
    state = common.autogroup_off(keep="--autogroup" in sys.argv)
    if state == AUTOGROUP_KEPT:
        NOTES.append("kernel.sched_autogroup_enabled was left on (--autogroup): CPU is shared between sessions, "
                     "so herd (one session per instance) gets a larger share against wrk than PM2 or cluster.")
    elif state == AUTOGROUP_NOT_ROOT:
        NOTES.append("kernel.sched_autogroup_enabled is on and this is not root: CPU is shared between sessions, "
                     "so herd (one session per instance) gets a larger share against wrk than PM2 or cluster.")
    return state


def settle():
    """Waits (bounded) until other programs use under QUIET_LIMIT of a core, so that a run does
    not start in the middle of someone else's load. Our own servers are idle at this point."""
    budget = min(3.0 if QUICK else 60.0, max(0.0, (10.0 if QUICK else 300.0) - QUIET["waited"]))
    t0 = time.time()
    QUIET["runs"] += 1
    while True:
        b0, _ = cpu_busy()
        time.sleep(0.5)
        b1, _ = cpu_busy()
        if (b1 - b0) / CLK / 0.5 < QUIET_LIMIT:
            break
        if time.time() - t0 > budget:
            QUIET["busy_runs"] += 1
            break
    QUIET["waited"] += time.time() - t0


class Background:
    """CPU used by everything but the measured server, wrk and this script during a run, and
    CPU steal of the VM: both make figures noisy and are reported under the table."""

    def __enter__(self):
        self.t, (self.busy, self.steal), self.ours = time.time(), cpu_busy(), self.own()
        return self

    @staticmethod
    def own():
        a = os.times()
        return a.user + a.system + a.children_user + a.children_system

    def done(self, server_cpu):
        dt = time.time() - self.t
        busy, steal = cpu_busy()
        other = (busy - self.busy) / CLK - server_cpu - (self.own() - self.ours)
        self.other = max(other, 0.0) / dt
        QUIET["background"].append(self.other)
        QUIET["steal"].append((steal - self.steal) / CLK / dt)
        return self.other

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------------------------
# HTTP clients


def counts(port, pids):
    """{pid: requests served} of each instance, asked on fresh connections until each answered."""
    want, seen = set(pids), {}
    for _ in range(600):
        try:
            pid, n = get(port, "/count").split()
            seen[int(pid)] = int(n)
        except (OSError, ValueError):
            time.sleep(0.01)
        if want <= set(seen):
            break
    return {p: seen.get(p) for p in want}


def wait_ready(port, n, node=True, limit=30.0):
    """Until `n` distinct instances answer (node apps tell their pid on /count)."""
    deadline, pids = time.time() + limit, set()
    while time.time() < deadline:
        try:
            body = get(port, "/count" if node else "/", timeout=1.0)
            if not node:
                return
            pids.add(int(body.split()[0]))
            if len(pids) >= n:
                return
        except (OSError, ValueError):
            time.sleep(0.02)
    raise RuntimeError(f"port {port}: {len(pids)} of {n} instances answered within {limit:.0f} s")


def wrk(port, secs, close=False):
    argv = [WRK, "-t2", f"-c{WRK_CONNS}", f"-d{secs}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://127.0.0.1:{port}/")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60, env=dict(os.environ, HERD_BENCH_TAG=RUN_TAG))
    w = parse_wrk(r.stdout)
    if r.returncode != 0 or not w:
        raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    return {
        "requests": w["requests"],
        "rps": w["rps"],
        "p99": w["p99"],
        "errors": sum(w["sock"]) + w["non2xx"],
        "detail": w["sock_text"] + (f", non-2xx {w['non2xx']}" if w["non2xx"] else ""),
    }


class Load:
    """A paced load from Python threads, each request given TIMEOUT seconds in all:
    `fresh` threads open a new connection per request; `keep` threads reuse one connection
    (reconnecting, without counting a failure, when the server closed it while idle, as HTTP
    clients do). Outcomes: ok, failed (refused, reset, bad or empty answer) or hung (no answer
    within TIMEOUT). Stops at `stop()` or after `limit` seconds."""

    def __init__(self, port, fresh=(FRESH_THREADS, FRESH_RATE), keep=(0, 0), limit=120.0):
        self.port, self.limit = port, limit
        self.halt = threading.Event()
        self.results = {"fresh": [], "keep": []}  # (outcome, latency ms)
        self.threads = [threading.Thread(target=self.fresh_loop, args=(fresh[1],)) for _ in range(fresh[0])]
        self.threads += [threading.Thread(target=self.keep_loop, args=(keep[1],)) for _ in range(keep[0])]

    def start(self):
        self.t0 = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.halt.set()
        for t in self.threads:
            t.join()

    def paced(self, rate):
        nxt = time.perf_counter() + random.random() / rate
        while not self.halt.is_set() and time.perf_counter() - self.t0 < self.limit:
            now = time.perf_counter()
            if nxt > now:
                time.sleep(nxt - now)
            nxt = max(nxt + 1 / rate, time.perf_counter())
            yield

    def fresh_loop(self, rate):
        req = b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
        out = self.results["fresh"]
        for _ in self.paced(rate):
            t = time.perf_counter()
            end = t + TIMEOUT
            data = b""
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT) as s:
                    s.sendall(req)
                    while True:
                        s.settimeout(max(end - time.perf_counter(), 0.001))
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                ok = data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello")
                why = None if ok else ("closed without an answer" if not data else "bad answer")
                out.append(("ok" if ok else "failed", (time.perf_counter() - t) * 1000, why))
            except socket.timeout:
                out.append(("hung", TIMEOUT * 1000, "no answer in 1 s" if data == b"" else "answer cut"))
            except OSError as e:
                out.append(("failed", (time.perf_counter() - t) * 1000, errname(e)))

    def keep_loop(self, rate):
        req = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
        out = self.results["keep"]
        s = None
        for _ in self.paced(rate):
            if s is not None:
                # A connection the server closed while idle: reconnect (no request was sent).
                try:
                    s.setblocking(False)
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        s.close()
                        s = None
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    s = None
            t = time.perf_counter()
            end = t + TIMEOUT
            reused = s is not None
            data = b""
            try:
                if s is None:
                    s = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
                s.settimeout(TIMEOUT)
                s.sendall(req)
                while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < clen(data):
                    s.settimeout(max(end - time.perf_counter(), 0.001))
                    chunk = s.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
                ok = data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello")
                out.append(("ok" if ok else "failed", (time.perf_counter() - t) * 1000, None if ok else "bad answer"))
                if not ok or b"connection: close" in data.lower():
                    s.close()
                    s = None
            except socket.timeout:
                out.append(("hung", TIMEOUT * 1000, "no answer in 1 s"))
                s.close()
                s = None
            except OSError as e:
                if reused and not data:
                    why = "reused connection closed before any answer byte"
                else:
                    why = errname(e)
                out.append(("failed", (time.perf_counter() - t) * 1000, why))
                if s is not None:
                    s.close()
                s = None
        if s is not None:
            s.close()

    def summary(self, kind="fresh"):
        rs = self.results[kind]
        lat = sorted(ms for _, ms, _ in rs)
        why = {}
        for o, _, w in rs:
            if o != "ok":
                why[w] = why.get(w, 0) + 1
        return {
            "total": len(rs),
            "failed": sum(1 for o, _, _ in rs if o == "failed"),
            "hung": sum(1 for o, _, _ in rs if o == "hung"),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
            "why": why,
        }


WHY = {}  # failure reasons of the crash and reload loads, summed over the runs


def why(what, summary):
    d = WHY.setdefault(what, {})
    for w, n in summary["why"].items():
        d[w] = d.get(w, 0) + n


def errname(e):
    return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__


def clen(data):
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", data.partition(b"\r\n\r\n")[0], re.I)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------------------------
# The systems


class System(Started):
    """One server setup. roots(): pids whose process trees are the whole server side (manager
    included); manager(): the manager's pid (or None); instances(): the app's processes."""

    count = 0

    def __init__(self, n, port, mark_dir=None):
        System.count += 1
        self.n, self.port = n, port
        self.tag = f"{RUN_TAG}-{System.count}"
        self.env = dict(os.environ, HERD_BENCH_TAG=self.tag, PORT=str(port))
        if mark_dir:
            self.env["BENCH_MARK_DIR"] = mark_dir
        self.procs = []
        self.home = None

    def popen(self, argv):
        p = subprocess.Popen(
            argv, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        self.procs.append(p)
        return p

    def manager(self):
        return None

    def roots(self):
        return [p.pid for p in self.procs]

    def instances(self):
        return self.roots()

    def stop(self):
        self.forget()
        try:
            self.shutdown()
        except Exception as e:  # noqa: BLE001 - the sweep below still runs
            NOTES.append(f"{self.label}: stopping failed: {e}")
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Anything of ours still alive a few seconds after the stop is a leftover: kill by pid.
        deadline = time.time() + 5
        while time.time() < deadline and tagged(self.tag):
            time.sleep(0.05)
        left = tagged(self.tag)
        for pid in left:
            LEFTOVERS.append(f"{self.label}: pid {pid} `{cmdline(pid)}` still alive 5 s after stop")
        kill_pids(left)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)

    def shutdown(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                kill_pids(descendants([p.pid]))


class Plain(System):
    label = "node ×1"

    def start(self):
        self.popen([NODE, HELLO_JS])
        wait_ready(self.port, 1)


class Raw(System):
    label = "raw node ×N"

    def start(self):
        self.popen([sys.executable, os.path.join(APPS, "reuseport.py"), str(self.n), str(self.port), NODE, os.path.join(APPS, "hello-fd.js")])
        wait_ready(self.port, self.n)

    def instances(self):
        return children(self.procs[0].pid)


class Cluster(System):
    label = "Node cluster ×N"

    def start(self):
        self.popen([NODE, os.path.join(APPS, "cluster.js"), str(self.n)])
        wait_ready(self.port, self.n)

    def manager(self):
        return self.procs[0].pid

    def instances(self):
        return children(self.procs[0].pid)


class Managed(System):
    """A daemon-based manager (PM2, herd): started and stopped by its CLI."""

    daemon = None

    def cli(self, *args, timeout=120):
        r = subprocess.run([self.bin, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"`{os.path.basename(self.bin)} {' '.join(args)}` failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
        return r

    def manager(self):
        return self.daemon

    def roots(self):
        return [self.daemon]

    def instances(self):
        return children(self.daemon)

    def shutdown(self):
        try:
            self.cli("kill", timeout=60)
        finally:
            if self.daemon:
                deadline = time.time() + 5
                while time.time() < deadline and alive(self.daemon):
                    time.sleep(0.02)
                rest = descendants([self.daemon])
                if rest:
                    LEFTOVERS.append(f"{self.label}: daemon tree {sorted(rest)} alive 5 s after `kill`; killed by pid")
                    kill_pids(rest)


class PM2(Managed):
    label = "PM2 ×N"

    def start(self):
        self.bin = PM2_BIN
        self.home = tempfile.mkdtemp(prefix="pm2-home-")
        self.env["PM2_HOME"] = self.home
        self.cli("start", HELLO_JS, "-i", str(self.n), "--name", "hello")
        self.daemon = int(open(os.path.join(self.home, "pm2.pid")).read().strip())
        wait_ready(self.port, self.n)

    def reload(self):
        self.cli("reload", "hello")


class Herd(Managed):
    label = "herd ×N"

    def __init__(self, n, port, mark_dir=None, program=None, args=()):
        super().__init__(n, port, mark_dir)
        self.program, self.args = program or HELLO_JS, list(args)

    def start(self):
        self.bin = HERD_BIN
        self.home = tempfile.mkdtemp(prefix="herd-home-")
        self.env["HERD_HOME"] = self.home
        extra = ["--", *self.args] if self.args else []
        self.cli("start", self.program, "-i", str(self.n), "--listen", f"127.0.0.1:{self.port}", "--name", "hello", *extra)
        self.daemon = int(open(os.path.join(self.home, "daemon.lock")).read().strip())
        wait_ready(self.port, self.n, node=self.program == HELLO_JS)

    def reload(self):
        self.cli("reload", "hello")


class HyperAlone(System):
    label = "hyper alone"

    def start(self):
        self.popen([HYPER_BIN, "--threads", str(self.n)])
        wait_ready(self.port, 1, node=False)


def hyper_herd(n, port):
    h = Herd(n, port, program=HYPER_BIN, args=["--threads", "1"])
    h.label = "hyper under herd"
    return h


# --------------------------------------------------------------------------------------------
# Measurements

R = {}  # R[(figure, system)] = [values, one per run]
BUSY_CELLS = set()  # (mode, system) with a wrk run kept although other programs were busy


def put(fig, sysname, value):
    R.setdefault((fig, sysname), []).append(value)


def balance(c0, c1):
    if any(c0.get(p) is None or c1.get(p) is None for p in c1):
        return float("nan")
    served = [c1[p] - c0[p] for p in c1]
    return max(served) / min(served) if min(served) > 0 else float("inf")


def throughput(name, make, node=True):
    port = free_port()
    with make(port) as s:
        wrk(port, 1)  # warm-up (JIT, connection pools)
        for mode in ("ka", "close"):
            pids = s.instances()
            for attempt in range(1, RETRIES + 2):
                c0 = counts(port, pids) if node and len(pids) > 1 else None
                settle()
                with Background() as bg:
                    t0 = tree_ticks(s.roots())
                    w = wrk(port, WRK_SECS, close=mode == "close")
                    t1 = tree_ticks(s.roots())
                    cpu = cpu_seconds(t0, t1)
                    other = bg.done(cpu)
                m = s.manager()
                mcpu = cpu_seconds({m: t0[m]}, {m: t1[m]}) if m in t0 and m in t1 else None
                if other <= BUSY_LIMIT or attempt > RETRIES:
                    if other > BUSY_LIMIT:
                        BUSY_CELLS.add((mode, name))
                    break
                QUIET["retried"] += 1
                log(f"other programs used {other:.2f} cores during this run: measuring it again")
            put(f"{mode}.rps", name, w["rps"])
            put(f"{mode}.p99", name, w["p99"])
            put(f"{mode}.cpu", name, cpu / max(w["requests"], 1) * 1e6)
            if mcpu is not None:
                put(f"{mode}.mcpu", name, mcpu / max(w["requests"], 1) * 1e6)
            put(f"{mode}.err", name, w["errors"])
            if w["errors"]:
                NOTES.append(f"{s.label}, {'keep-alive' if mode == 'ka' else 'Connection: close'}: wrk reported {w['detail']}")
            if c0 is not None:
                put(f"{mode}.bal", name, balance(c0, counts(port, pids)))
            if sorted(s.instances()) != sorted(pids):
                NOTES.append(f"{s.label}: instance pids changed during a throughput run ({pids} → {s.instances()})")


def crash(name, make):
    port = free_port()
    marks = tempfile.mkdtemp(prefix="herd-bench-marks-")
    try:
        with make(port, marks) as s:
            settle()
            load = Load(port, limit=CRASH_KILLS + 3).start()
            time.sleep(1.0)
            kills = []  # (time of SIGKILL, replacement pid or None)
            t_first = time.time()
            for k in range(CRASH_KILLS):
                time.sleep(max(0.0, t_first + k - time.time()))
                before = s.instances()
                if not before:
                    kills.append((time.time(), None))
                    continue
                victim = before[0]  # the oldest instance: each slot is killed in turn
                t = time.time()
                os.kill(victim, signal.SIGKILL)
                new = None
                while new is None and time.time() < t_first + k + 0.95:
                    fresh = [p for p in s.instances() if p not in before]
                    new = fresh[0] if fresh else None
                    if new is None:
                        time.sleep(0.002)
                kills.append((t, new))
            time.sleep(1.0)
            load.stop()
            sm = load.summary()
            why(f"crash, {s.label}", sm)
            put("crash.failed", name, sm["failed"])
            put("crash.hung", name, sm["hung"])
            put("crash.total", name, sm["total"])
            put("crash.p99", name, sm["p99"])
            for t, new in kills:
                try:
                    served = float(open(os.path.join(marks, str(new))).read()) / 1000
                    put("crash.serve", name, (served - t) * 1000)
                except (OSError, ValueError, TypeError):
                    put("crash.noserve", name, 1)
    finally:
        shutil.rmtree(marks, ignore_errors=True)


def reload(name, make, n):
    port = free_port()
    with make(n, port) as s:
        before = set(s.instances())
        settle()
        load = Load(port, keep=(KEEP_THREADS, KEEP_RATE), limit=180).start()
        time.sleep(1.0)
        t = time.perf_counter()
        try:
            s.reload()
            took = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001 - recorded in the notes
            took = float("nan")
            NOTES.append(f"{s.label} -i {n}: reload failed: {e}")
        time.sleep(1.0)
        load.stop()
        after = set(s.instances())
        if before & after or len(after) != n:
            NOTES.append(f"{s.label} -i {n}: after reload, {len(before & after)} of {n} old pids still serve, {len(after)} instances")
        fresh, keep = load.summary("fresh"), load.summary("keep")
        for kind, sm in (("fresh", fresh), ("keep-alive", keep)):
            why(f"reload -i {n}, {s.label}, {kind} connections", sm)
        put(f"reload{n}.failed", name, fresh["failed"] + fresh["hung"])
        put(f"reload{n}.kfailed", name, keep["failed"] + keep["hung"])
        put(f"reload{n}.total", name, fresh["total"] + keep["total"])
        put(f"reload{n}.time", name, took)


def spawn_time(argv, env):
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0), (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0)])
    _, status = os.waitpid(pid, 0)
    took = time.perf_counter() - t
    if status != 0:
        raise RuntimeError(f"{argv} failed with status {status}")
    return took


def footprint():
    ports = [free_port() for _ in range(3)]
    with Cluster(N, ports[0]) as c, PM2(N, ports[1]) as p, Herd(N, ports[2]) as h:
        for port in ports:
            for _ in range(100):
                get(port)
        time.sleep(2)
        managers = {"cluster": c.manager(), "pm2": p.manager(), "herd": h.manager()}
        for k, pid in managers.items():
            put("rss", k, rss_kb(pid) / 1024)
        c0 = {k: ticks(pid) for k, pid in managers.items()}
        t0 = time.time()
        time.sleep(IDLE_SECS)
        dt = time.time() - t0
        for k, pid in managers.items():
            put("idle", k, (ticks(pid) - c0[k]) / CLK)
        put("idle.secs", "all", dt)
        lists = {"pm2": [], "herd": []}
        settle()
        for _ in range(LIST_RUNS):  # alternating: pm2, herd, pm2, herd …
            lists["pm2"].append(spawn_time([PM2_BIN, "list"], p.env))
            lists["herd"].append(spawn_time([HERD_BIN, "list"], h.env))
        for k, v in lists.items():
            put("list", k, statistics.median(v) * 1000)


# --------------------------------------------------------------------------------------------
# The table


def med(fig, sysname):
    v = [x for x in R.get((fig, sysname), []) if x == x]  # drop NaN
    return statistics.median(v) if v else None


def cell(fig, sysname, fmt, scale=1.0):
    v = [x for x in R.get((fig, sysname), []) if x == x]
    if not v:
        return "—"
    m = statistics.median(v)
    mark = " †" if (fig.split(".")[0], sysname) in BUSY_CELLS else ""
    if len(v) == 1 or min(v) == max(v):
        return fmt(m * scale) + mark
    return f"{fmt(m * scale)} ({fmt(min(v) * scale)}–{fmt(max(v) * scale)}){mark}"


def k(x):
    return f"{x / 1000:.1f}k"


def num(d):
    return lambda x: f"{x:.{d}f}"


def ratio(fig, a, b):
    x, y = med(fig, a), med(fig, b)
    if x is None or not y:
        return None
    return x / y


def ratios(fig, anchors, names):
    parts = []
    for a in anchors:
        r = ratio(fig, "herd", a)
        if r is not None:
            parts.append(f"{r:.2f}× {names[a]}")
    return ", ".join(parts) or "—"


def main():
    global WRK, PM2_BIN, HERD_BIN, HYPER_BIN
    started = time.time()
    WRK = ensure_wrk(log)
    PM2_BIN = ensure_pm2()
    HERD_BIN, HYPER_BIN = build()
    vers = versions(WRK, PM2_BIN, HERD_BIN)
    if HERD_GIVEN:
        vers["herd"] += f" ({HERD_BIN})"
    else:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
        vers["herd"] += f" (built from the working tree, {r.stdout.strip() or '?'})"
    setup = time.time() - started
    try:
        vers["autogroup"] = autogroup_off()
        systems = [
            ("node1", lambda port: Plain(1, port), True),
            ("raw", lambda port: Raw(N, port), True),
            ("cluster", lambda port: Cluster(N, port), True),
            ("pm2", lambda port: PM2(N, port), True),
            ("herd", lambda port: Herd(N, port), True),
            ("hyper.alone", lambda port: HyperAlone(N, port), False),
            ("hyper.herd", lambda port: hyper_herd(N, port), False),
        ]
        for run in range(RUNS if "throughput" in ONLY else 0):
            for name, make, node in systems:
                log(f"round {run + 1}/{RUNS}: throughput, {name}")
                throughput(name, make, node)
        managers = [
            ("cluster", lambda port, marks: Cluster(N, port, marks)),
            ("pm2", lambda port, marks: PM2(N, port, marks)),
            ("herd", lambda port, marks: Herd(N, port, marks)),
        ]
        for run in range(RUNS if "crash" in ONLY else 0):
            for name, make in managers:
                log(f"round {run + 1}/{RUNS}: crash, {name}")
                crash(name, make)
        for run in range(RUNS if "reload" in ONLY else 0):
            for n in RELOAD_SIZES:
                for name, make in (("pm2", PM2), ("herd", Herd)):
                    log(f"round {run + 1}/{RUNS}: reload -i {n}, {name}")
                    reload(name, make, n)
        for run in range(RUNS if "footprint" in ONLY else 0):
            log(f"round {run + 1}/{RUNS}: footprint ({IDLE_SECS} s idle, {LIST_RUNS}× list)")
            footprint()
    finally:
        common.finish(RUN_TAG, log)
    print_table(vers, time.time() - started - setup, setup)


def print_table(vers, took, setup):
    names = {"node1": "node ×1", "raw": "raw", "cluster": "cluster", "pm2": "PM2", "herd": "herd"}
    cols = ["node1", "raw", "cluster", "pm2", "herd"]
    rows = []

    def met(cond_parts):
        """cond_parts: [(ok or None, text)]; None means not measured."""
        if any(ok is None for ok, _ in cond_parts):
            return "?"
        bad = [t for ok, t in cond_parts if not ok]
        return "yes" if not bad else "NO: " + ", ".join(bad)

    def row(fig, label, fmt, anchors, target="", check=None, systems=cols):
        cells = [cell(fig, s, fmt) if s in systems else "—" for s in cols]
        rows.append([label, *cells, ratios(fig, anchors, names) if anchors else "—", target, check() if check else ""])

    def tp_check(fig, vs_managers):
        def check():
            parts = []
            r = ratio(fig, "herd", "raw")
            parts.append((None if r is None else r >= 0.98, f"{r or 0:.3f}× raw < 0.98"))
            for a in ("cluster", "pm2"):
                r = ratio(fig, "herd", a)
                parts.append((None if r is None else r >= vs_managers, f"{r or 0:.3f}× {names[a]} < {vs_managers}"))
            return met(parts)

        return check

    def bal_check(fig):
        def check():
            b = med(fig, "herd")
            return met([(None if b is None else b <= 1.2, f"herd {b or 0:.2f} > 1.2")])

        return check

    managed = ["cluster", "pm2", "herd"]
    d = WRK_SECS
    row("ka.rps", f"keep-alive req/s (wrk -c{WRK_CONNS} -t2, {d} s)", k, ["raw", "cluster", "pm2"],
        "≥ 0.98× raw, ≥ 1.0× cluster and PM2", tp_check("ka.rps", 1.0))
    row("ka.p99", "keep-alive p99 latency", ms, ["raw", "cluster", "pm2"])
    row("ka.cpu", "keep-alive server CPU per request", lambda x: f"{x:.1f} µs", ["raw", "cluster", "pm2"])
    row("ka.mcpu", "… of which the manager (cluster primary, PM2 daemon, herd daemon)", lambda x: f"{x:.2f} µs",
        ["cluster", "pm2"], systems=managed)
    row("ka.bal", "keep-alive balance, requests per instance max/min", num(2), None, "herd ≤ 1.2", bal_check("ka.bal"),
        systems=["raw", *managed])
    row("close.rps", f"Connection: close req/s (wrk -c{WRK_CONNS} -t2, {d} s)", k, ["raw", "cluster", "pm2"],
        "≥ 0.98× raw, ≥ 1.3× cluster and PM2", tp_check("close.rps", 1.3))
    row("close.p99", "Connection: close p99 latency", ms, ["raw", "cluster", "pm2"])
    row("close.cpu", "Connection: close server CPU per request", lambda x: f"{x:.1f} µs", ["raw", "cluster", "pm2"])
    row("close.mcpu", "… of which the manager (cluster primary, PM2 daemon, herd daemon)", lambda x: f"{x:.2f} µs",
        ["cluster", "pm2"], systems=managed)
    row("close.bal", "Connection: close balance, requests per instance max/min", num(2), None, "herd ≤ 1.2",
        bal_check("close.bal"), systems=["raw", *managed])
    rows.append(["wrk errors, keep-alive / close (sum of runs)"]
                + [f"{int(sum(R.get(('ka.err', s), [0])))} / {int(sum(R.get(('close.err', s), [0])))}" for s in cols]
                + ["—", "", ""])

    # hyper: alone in the "no manager" column, under herd in the "herd" column.
    rows.append([f"**Rust hyper** (no-manager column: hyper alone, 1 process × {N} threads; herd column: under herd, "
                 f"{N} instances × 1 thread)", "", "", "", "", "", "", "", ""])
    for mode, title in (("ka", "keep-alive"), ("close", "Connection: close")):
        for fig, what, fmt in (("rps", "req/s", k), ("p99", "p99 latency", ms), ("cpu", "server CPU per request", lambda x: f"{x:.1f} µs")):
            f = f"{mode}.{fig}"
            alone, under = cell(f, "hyper.alone", fmt), cell(f, "hyper.herd", fmt)
            r = ratio(f, "hyper.herd", "hyper.alone")
            rows.append([f"hyper {title} {what}", "—", alone, "—", "—", under, f"{r:.2f}× alone" if r else "—", "", ""])
    rows.append(["**Node managers under failure, reload, and idle**", "", "", "", "", "", "", "", ""])

    # crash
    def crash_cell(s):
        if not R.get(("crash.total", s)):
            return "—"
        return (f"failed {cell('crash.failed', s, num(0))}, hung {cell('crash.hung', s, num(0))} "
                f"of {int(med('crash.total', s))}; p99 {cell('crash.p99', s, ms)}")

    rows.append([f"crash: SIGKILL an instance every 1 s for {CRASH_KILLS} s under {FRESH_THREADS * FRESH_RATE} req/s of fresh "
                 f"connections (1 s timeout): requests failed, hung > 1 s, p99",
                 "—", "—", *[crash_cell(s) for s in managed], "—", "", ""])

    def serve_cell(s):
        v = R.get(("crash.serve", s))
        miss = len(R.get(("crash.noserve", s), []))
        if not v:
            return "—" if not miss else f"none served ({miss} kills)"
        txt = f"{statistics.median(v):.0f} ms ({min(v):.0f}–{max(v):.0f})"
        return txt + (f"; {miss} of {len(v) + miss} not serving within 1 s" if miss else "")

    rows.append(["crash: SIGKILL → replacement serving its first request, median (min–max) over all kills",
                 "—", "—", *[serve_cell(s) for s in managed], "—", "", ""])

    # reload
    for n in RELOAD_SIZES:
        def rl(s, n=n):
            if not R.get((f"reload{n}.total", s)):
                return "—"
            return (f"{cell(f'reload{n}.failed', s, num(0))} fresh / {cell(f'reload{n}.kfailed', s, num(0))} keep-alive "
                    f"of {int(med(f'reload{n}.total', s))}")

        fails = R.get((f"reload{n}.failed", "herd"), []) + R.get((f"reload{n}.kfailed", "herd"), [])
        rows.append([f"reload -i {n} under {FRESH_THREADS * FRESH_RATE} req/s fresh + {KEEP_THREADS * KEEP_RATE} req/s keep-alive: "
                     f"requests failed or hung", "—", "—", "—", rl("pm2"), rl("herd"), "—", "herd 0, every run",
                     met([(bool(fails) and max(fails) == 0 if fails else None, f"herd failed up to {int(max(fails or [0]))}")])])
        r = ratio(f"reload{n}.time", "herd", "pm2")
        rows.append([f"reload -i {n}: wall time of `reload` (under that load)", "—", "—", "—",
                     cell(f"reload{n}.time", "pm2", lambda x: f"{x:.2f} s"), cell(f"reload{n}.time", "herd", lambda x: f"{x:.2f} s"),
                     f"{r:.2f}× PM2" if r else "—", "", ""])

    # footprint
    r = ratio("rss", "herd", "pm2")
    rows.append([f"manager RSS with {N} instances running (cluster: primary; PM2, herd: daemon)", "—", "—",
                 cell("rss", "cluster", lambda x: f"{x:.1f} MB"), cell("rss", "pm2", lambda x: f"{x:.1f} MB"),
                 cell("rss", "herd", lambda x: f"{x:.1f} MB"), ratios("rss", ["cluster", "pm2"], names), "≤ 0.1× PM2",
                 met([(None if r is None else r <= 0.1, f"{r or 0:.3f}× PM2")])])
    rows.append([f"manager CPU over {IDLE_SECS} s idle", "—", "—",
                 *[cell("idle", s, lambda x: f"{x:.2f} s") for s in managed], "—", "", ""])
    r = ratio("list", "pm2", "herd")
    rows.append([f"`list` wall time, median of {LIST_RUNS} (`pm2 list` vs `herd list`)", "—", "—", "—",
                 cell("list", "pm2", ms), cell("list", "herd", ms), f"{1 / r:.3f}× PM2 ({r:.0f}× faster)" if r else "—",
                 "≥ 50× faster than PM2", met([(None if r is None else r >= 50, f"only {r or 0:.0f}× faster")])])
    rows.append(["message bus round trips/s, p50/p99 vs Node cluster IPC", "—", "—", "not measured yet (bus issue)",
                 "—", "not measured yet (bus issue)", "—", "", ""])

    mode = ("QUICK smoke run: 1 run per figure, short loads — do not read these numbers as results"
            if QUICK else f"full run: median (min–max) of {RUNS} runs, systems alternating within each round")
    if ONLY != set(SECTIONS):
        mode += f"; only {', '.join(s for s in SECTIONS if s in ONLY)} measured (--only)"

    print(f"herd side-by-side benchmark — {time.strftime('%Y-%m-%d')}, {platform.node()}, {N} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Linux {platform.release()}; "
          f"node {vers['node']}, pm2 {vers['pm2']}, wrk {vers['wrk']}, herd {vers['herd']}, rustc {vers['rustc']}, "
          f"hyper {vers['hyper']}; scheduler autogroup: {vers['autogroup']}; {mode}; measuring took {took / 60:.1f} min (installing and building before it {setup / 60:.1f} min).\n")
    print(f"| figure | node ×1 | raw node ×{N} (no manager) | Node cluster ×{N} | PM2 ×{N} | herd ×{N} | herd ÷ anchor | target | met? |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(f"wrk runs on the same {N} cores as the servers (for every system alike). Server CPU = utime+stime of every "
          "process in the server's tree (manager included) from /proc, sampled before and after each wrk run.")
    bgv, st = sorted(QUIET["background"]), sorted(QUIET["steal"])
    if bgv:
        print(f"- machine: before each measured load the script waits (bounded) until other programs use < {QUIET_LIMIT} "
              f"core; it waited {QUIET['waited']:.0f} s in all, and {QUIET['busy_runs']} of {QUIET['runs']} loads started "
              f"with the machine still busy. CPU of other programs during the wrk runs: median {statistics.median(bgv):.2f}, "
              f"max {bgv[-1]:.2f} cores (estimate: machine busy time − server − wrk − this script); "
              f"{QUIET['retried']} wrk runs were measured again because other programs used > {BUSY_LIMIT} core. "
              f"VM steal: median {statistics.median(st):.2f}, max {st[-1]:.2f} cores.")
    if BUSY_CELLS:
        print(f"- † a wrk run behind this figure was kept although other programs used > {BUSY_LIMIT} core during it "
              f"(after {RETRIES} retries): read it with care.")
    for n in NOTES:
        print(f"- note: {n}")
    for what, d in WHY.items():
        if d:
            print(f"- failures, {what} (all runs): " + ", ".join(f"{w} ×{n}" for w, n in sorted(d.items())))
    common.print_leftovers()


if __name__ == "__main__":
    common.run(main)
