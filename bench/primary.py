#!/usr/bin/env python3
"""One Node cluster script with its own primary, under plain `node` and under `herd --primary`.

    python3 bench/primary.py            # full run: 3 rounds, about 5 minutes on 2 cores
    python3 bench/primary.py --quick    # smoke test: 1 round, short loads (not results)
    python3 bench/primary.py --herd PATH  # use a herd binary built elsewhere (no herd build)
    python3 bench/primary.py --runs 5     # more rounds (default 3; --quick: 1)
    python3 bench/primary.py --autogroup  # leave the kernel's scheduler autogroup as it is

The script bench/apps/primary.js (a primary that forks N = cpu count workers serving
bench/apps/hello.js, reforks on exit, and measures the message round trip on SIGUSR2) runs
  (a) as `node primary.js`: Node's cluster, the primary accepts every connection and passes
      it to a worker (round robin, the default scheduling on Linux), and
  (b) as `herd start primary.js --primary --listen 127.0.0.1:PORT`: the same primary, whose
      cluster.fork() starts herd instances (one SO_REUSEPORT socket per worker, no proxy);
      worker.send() and the worker's process.send() take herd's direct link (a Unix socket
      between the primary and each worker; the daemon is not on the way).
For each, in one start: wrk with keep-alive and with `Connection: close`; the message round
trip (the primary prints it: three sets placed by the kernel, then one with every process pinned
on one core and one with the primary and the workers on two); then a worker SIGKILLed 10 times
under a paced prober of fresh connections. Systems alternate within each round (the order flips every round); the table
gives the median (min–max) over the rounds and a verdict: herd not worse than plain node on
any row, and no hung connection.

It installs wrk with apt-get when missing (as root) and builds herd in release mode
(`cargo build --release -p herd-cli --bin herd`) unless --herd. Rules as in compare.py, whose
helpers it uses: 127.0.0.1 only, every load bounded, each herd run in its own temporary
HERD_HOME (0700), everything started carries HERD_BENCH_TAG and is stopped by pid, never by
name; a markdown table on stdout, progress on stderr.
"""
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from common_helpers import NOTES, alive, cmdline, cpu_busy, ensure_wrk, first_line, free_port, logger, ms, proc_table, tagged
import common_helpers as common
import compare
from compare import Background, Load, QUIET, children, cpu_seconds, settle, tree_ticks, wait_ready, why, WHY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_JS = os.path.join(ROOT, "bench", "apps", "primary.js")
QUICK = "--quick" in sys.argv
HERD_GIVEN = sys.argv[sys.argv.index("--herd") + 1] if "--herd" in sys.argv else None
RUNS = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else (1 if QUICK else 3)

N = os.cpu_count() or 2
WRK_SECS = 2 if QUICK else 5
KILLS = 4 if QUICK else 10
KILL_EVERY = 1.5  # s between two SIGKILLs: past herd's min_uptime (1 s), so restarts are immediate
# 3000 round trips of warm-up: with 200, V8 had not yet optimised the message path and the
# figures (p99 above all) mostly measured that (p99 1.7–2.9 ms against 0.35–0.7 ms after 5000).
RTT_WARM, RTT_COUNT = (1000, 500) if QUICK else (3000, 2000)
PIN_SETS = 2 if QUICK else 5  # sets of round trips per pinned placement and round
NODE = shutil.which("node") or "node"
RUN_TAG = compare.RUN_TAG  # compare's System tags every process with RUN_TAG-<n>
CLK = os.sysconf("SC_CLK_TCK")
APP = "prim"

log = logger("primary")


# --------------------------------------------------------------------------------------------
# The two systems


class PlainNode(compare.System):
    """`node primary.js`: Node's own primary, its workers its children."""

    label = "plain node"

    def start(self):
        self.home = tempfile.mkdtemp(prefix="herd-bench-node-")  # 0700: the primary's output
        self.out = os.path.join(self.home, "primary.out")
        self.env.update(WORKERS=str(self.n), RTT_WARM=str(RTT_WARM), RTT_COUNT=str(RTT_COUNT))
        with open(self.out, "w") as f:
            self.procs.append(subprocess.Popen([NODE, APP_JS], env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                               stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
        wait_ready(self.port, self.n)
        wait_line(self.out, "BENCH_READY", 0)
        self.rtt_lines = 0

    def primary(self):
        return self.procs[0].pid

    def manager(self):
        return self.primary()

    def workers(self):
        return children(self.primary())


class HerdPrimary(compare.Managed):
    """`herd start primary.js --primary`: the same primary, its workers herd instances."""

    label = "herd --primary"

    def start(self):
        self.bin = HERD_BIN
        self.home = tempfile.mkdtemp(prefix="herd-home-")  # 0700
        self.env["HERD_HOME"] = self.home
        self.env.update(WORKERS=str(self.n), RTT_WARM=str(RTT_WARM), RTT_COUNT=str(RTT_COUNT))
        self.out = os.path.join(self.home, "logs", f"{APP}-primary.out")
        self.cli("start", APP_JS, "--primary", "--listen", f"127.0.0.1:{self.port}", "--name", APP)
        self.daemon = int(open(os.path.join(self.home, "daemon.lock")).read().strip())
        wait_ready(self.port, self.n)
        wait_line(self.out, "BENCH_READY", 0)
        self.rtt_lines = 0
        self.primary_pid = json.loads(self.cli("list", "--json").stdout)[0]["primary"]["pid"]

    def primary(self):
        return self.primary_pid

    def workers(self):
        return [p for p in children(self.daemon) if p != self.primary_pid]


def wait_line(path, prefix, skip, limit=60.0):
    """The (skip+1)-th line of `path` starting with prefix, waiting for it at most `limit` s."""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            lines = [l for l in open(path).read().splitlines() if l.startswith(prefix)]
        except OSError:
            lines = []
        if len(lines) > skip:
            return lines[skip]
        time.sleep(0.05)
    raise RuntimeError(f"no {prefix} line in {path} within {limit:.0f} s")


# --------------------------------------------------------------------------------------------
# Measurements

R = {}  # R[(figure, system)] = [one value per round]
BUSY_CELLS = set()


def put(fig, name, value):
    R.setdefault((fig, name), []).append(value)


def throughput(name, s):
    compare.wrk(s.port, 1)  # warm-up
    for mode in ("ka", "close"):
        pids = sorted(s.workers())
        for attempt in range(1, compare.RETRIES + 2):
            c0 = compare.counts(s.port, pids)
            settle()
            with Background() as bg:
                t0 = tree_ticks(s.roots())
                w = compare.wrk(s.port, WRK_SECS, close=mode == "close")
                t1 = tree_ticks(s.roots())
                cpu = cpu_seconds(t0, t1)
                other = bg.done(cpu)
            if other <= compare.BUSY_LIMIT or attempt > compare.RETRIES:
                if other > compare.BUSY_LIMIT:
                    BUSY_CELLS.add((mode, name))
                break
            QUIET["retried"] += 1
            log(f"other programs used {other:.2f} cores during this run: measuring it again")
        put(f"{mode}.rps", name, w["rps"])
        put(f"{mode}.p99", name, w["p99"])
        put(f"{mode}.cpu", name, cpu / max(w["requests"], 1) * 1e6)
        put(f"{mode}.err", name, w["errors"])
        put(f"{mode}.bal", name, compare.balance(c0, compare.counts(s.port, pids)))
        if w["errors"]:
            NOTES.append(f"{s.label}, {'keep-alive' if mode == 'ka' else 'Connection: close'}: wrk reported {w['detail']}")
        if sorted(s.workers()) != pids:
            NOTES.append(f"{s.label}: worker pids changed during a throughput run ({pids} → {sorted(s.workers())})")


def round_trip(name, s, fig="rtt"):
    """SIGUSR2 to the primary, then its next BENCH_RTT line (µs); measured again (at most
    compare.RETRIES times) when other programs used > compare.BUSY_LIMIT core meanwhile. CPU of
    the whole tree and of the manager (herd daemon; for plain node, the primary) per trip.
    Figures go under `fig` (rtt: the first set after the wrk runs; rtt3: the third)."""
    m = s.manager()
    for attempt in range(1, compare.RETRIES + 2):
        settle()
        with Others(s.roots()) as o:
            os.kill(s.primary(), signal.SIGUSR2)
            line = wait_line(s.out, "BENCH_RTT", s.rtt_lines)
            s.rtt_lines += 1
        if o.other <= compare.BUSY_LIMIT or attempt > compare.RETRIES:
            break
        QUIET["retried"] += 1
        log(f"other programs used {o.other:.2f} cores during the round trips: measuring them again")
    OTHER["rtt"].append(o.other)
    if o.other > compare.BUSY_LIMIT:
        BUSY_CELLS.add(("rtt", name))
    r = json.loads(line.split(" ", 1)[1])
    if "error" in r:
        NOTES.append(f"{s.label}: message round trip failed: {r['error']}")
        return
    put(f"{fig}.p50", name, r["p50"])
    put(f"{fig}.p99", name, r["p99"])
    put(f"{fig}.mean", name, r["mean"])
    # Counted over warm-up and measured round trips (the process ticks cannot tell them apart).
    trips = r["n"] + r["warm"]
    put(f"{fig}.cpu", name, o.cpu / trips * 1e6)
    if m in o.t0 and m in o.t1:
        put(f"{fig}.mcpu", name, cpu_seconds({m: o.t0[m]}, {m: o.t1[m]}) / trips * 1e6)
    if r["workers"] != N:
        NOTES.append(f"{s.label}: the round trip ran with {r['workers']} workers")


OTHER = {"rtt": [], "crash": []}  # CPU of other programs (cores) during these phases


def pin(pids, cpus):
    """Every thread of each process in `pids` may run only on `cpus` (a set of CPU numbers)."""
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass  # a thread that ended meanwhile


def pinned_round_trips(name, s):
    """The round trip with the processes placed by hand, so that the kernel's choice (which
    swings a round trip between ~25 and ~80 µs on this VM, for either system, from one start to
    the next) is out of the figure: `same` — the primary and the workers on CPU 0, each wake-up a
    switch on one core; `two` — the primary on CPU 0, the workers on CPU 1, each wake-up
    crossing cores. PIN_SETS sets of warm-up and measured trips each (a set's p99 is its 20
    slowest trips, which one garbage collection more or less moves: the table gives the median
    over every set of every round); all CPUs again after."""
    every = set(os.sched_getaffinity(0))
    if len(every) < 2 or 0 not in every or 1 not in every:
        NOTES.append("pinned round trips skipped: CPUs 0 and 1 are not both available")
        return
    procs = [s.primary()] + s.workers()
    try:
        pin(procs, {0})
        for _ in range(PIN_SETS):
            round_trip(name, s, "rtt.same")
        pin([s.primary()], {0})
        pin(s.workers(), {1})
        for _ in range(PIN_SETS):
            round_trip(name, s, "rtt.two")
    finally:
        pin([s.primary()] + s.workers(), every)


class Others:
    """CPU used by other programs while the block runs (machine busy time from /proc/stat minus
    the server tree and this script, wrk included as our child): .other in cores, .cpu the
    server tree's CPU seconds, .t0/.t1 its tree_ticks samples. An estimate: processes of the
    tree that die meanwhile count as other programs unless dying(pid) is called before the kill."""

    def __init__(self, roots):
        self.roots = roots

    def __enter__(self):
        self.t, self.busy, self.ours = time.time(), cpu_busy()[0], Background.own()
        self.t0 = tree_ticks(self.roots)
        self.gone = 0.0  # CPU seconds of processes of the tree that are about to be killed
        return self

    def dying(self, pid):
        """pid is about to be SIGKILLed: its CPU so far (since the start) still counts as ours."""
        now = tree_ticks([pid]).get(pid)
        if now:
            b = self.t0.get(pid)
            self.gone += (now[0] - (b[0] if b and b[1] == now[1] else 0)) / CLK

    def __exit__(self, *exc):
        self.t1 = tree_ticks(self.roots)
        self.cpu = cpu_seconds(self.t0, self.t1) + self.gone
        dt = max(time.time() - self.t, 1e-3)
        other = (cpu_busy()[0] - self.busy) / CLK - self.cpu - (Background.own() - self.ours)
        self.other = max(other, 0.0) / dt
        return False


def crash(name, s):
    """KILLS SIGKILLs of the oldest worker, KILL_EVERY s apart, under compare.py's paced prober
    of fresh connections (400 requests/s, each given 1 s)."""
    settle()
    others = Others(s.roots()).__enter__()
    load = Load(s.port, limit=KILLS * KILL_EVERY + 5).start()
    time.sleep(1.0)
    kills = []  # (time of SIGKILL, replacement pid or None)
    t_first = time.time()
    for k in range(KILLS):
        time.sleep(max(0.0, t_first + k * KILL_EVERY - time.time()))
        before = s.workers()
        if not before:
            kills.append((time.time(), None))
            continue
        victim = sorted(before, key=start_time)[0]  # the oldest: each slot in turn
        others.dying(victim)
        t = time.time()
        os.kill(victim, signal.SIGKILL)
        new = None
        while new is None and time.time() < t_first + k * KILL_EVERY + KILL_EVERY - 0.05:
            fresh = [p for p in s.workers() if p not in before]
            new = fresh[0] if fresh else None
            if new is None:
                time.sleep(0.002)
        kills.append((t, new))
    time.sleep(1.0)
    load.stop()
    others.__exit__()
    OTHER["crash"].append(others.other)
    if others.other > compare.BUSY_LIMIT:
        BUSY_CELLS.add(("crash", name))
    sm = load.summary()
    why(f"crash, {s.label}", sm)
    put("crash.failed", name, sm["failed"])
    put("crash.hung", name, sm["hung"])
    put("crash.total", name, sm["total"])
    put("crash.p99", name, sm["p99"])
    for t, new in kills:
        try:
            served = float(open(os.path.join(s.env["BENCH_MARK_DIR"], str(new))).read()) / 1000
            put("crash.serve", name, (served - t) * 1000)
        except (OSError, ValueError, TypeError):
            put("crash.noserve", name, 1)
    # The primary reforks in its exit handler: there must still be exactly N workers.
    deadline = time.time() + 7  # past herd's claim window (5 s)
    while time.time() < deadline and len(s.workers()) != N:
        time.sleep(0.1)
    if len(s.workers()) != N:
        NOTES.append(f"{s.label}: {len(s.workers())} workers after the kills (want {N})")
    if not alive(s.primary()):
        NOTES.append(f"{s.label}: the primary died during the kills")


def start_time(pid):
    return proc_table().get(pid, (0, 0, 0))[2]


OTHERS = {}  # command → number of samples in which it used > 10% of a core


def sample_others(secs=1.0):
    """Which other programs use the CPU now (not this run's processes), for the notes."""
    ours = set(tagged(RUN_TAG)) | {os.getpid()}
    a = proc_table()
    time.sleep(secs)
    b = proc_table()
    for pid, (_, ticks, st) in b.items():
        if pid in ours or pid not in a or a[pid][2] != st:
            continue
        used = (ticks - a[pid][1]) / CLK / secs
        if used > 0.10:
            argv = cmdline(pid).split()
            name = " ".join(os.path.basename(x) for x in argv[:2])[:60] or "?"
            if "rustc" in name or "cargo" in name:
                name = "cargo/rustc (a build)"
            OTHERS[name] = OTHERS.get(name, 0) + 1


def one(name, make):
    port = free_port()
    marks = tempfile.mkdtemp(prefix="herd-bench-marks-")
    try:
        with make(port, marks) as s:
            log(f"  {s.label}: throughput (keep-alive, Connection: close)")
            throughput(name, s)
            log(f"  {s.label}: message round trip ({RTT_WARM} + {RTT_COUNT})")
            round_trip(name, s)
            # Two more sets: the figures of the third, once the message path is warm (the first
            # set follows the wrk runs, whose HTTP load leaves the processes' JIT and heap elsewhere).
            round_trip(name, s, "rtt.skip")
            round_trip(name, s, "rtt3")
            log(f"  {s.label}: message round trip, pinned on one core, then across two")
            pinned_round_trips(name, s)
            log(f"  {s.label}: {KILLS} SIGKILLs of a worker, {KILL_EVERY} s apart, under fresh connections")
            crash(name, s)
    finally:
        shutil.rmtree(marks, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Main and the table


def build():
    if HERD_GIVEN:
        return os.path.abspath(HERD_GIVEN)
    log("building herd (release)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "herd")


def main():
    global HERD_BIN
    started = time.time()
    compare.WRK = ensure_wrk(log)
    HERD_BIN = build()
    vers = {
        "node": first_line([NODE, "--version"]),
        "wrk": first_line([compare.WRK, "-v"]).split(" [")[0].replace("wrk ", ""),
        "herd": first_line([HERD_BIN, "--version"]).replace("herd ", ""),
    }
    if HERD_GIVEN:
        vers["herd"] += f" ({HERD_BIN})"
    else:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
        vers["herd"] += f" (built from the working tree, {r.stdout.strip() or '?'})"
    setup = time.time() - started
    load0 = os.getloadavg()
    try:
        vers["autogroup"] = compare.autogroup_off()
        systems = [("node", lambda port, marks: PlainNode(N, port, marks)),
                   ("herd", lambda port, marks: HerdPrimary(N, port, marks))]
        for run in range(RUNS):
            sample_others()
            order = systems if run % 2 == 0 else systems[::-1]
            for name, make in order:
                log(f"round {run + 1}/{RUNS}: {name}")
                one(name, make)
        sample_others()
    finally:
        common.finish(RUN_TAG, log)
    print_table(vers, time.time() - started - setup, setup, load0, os.getloadavg())


def vals(fig, name):
    return [x for x in R.get((fig, name), []) if x == x]


def med(fig, name):
    v = vals(fig, name)
    return statistics.median(v) if v else None


def cell(fig, name, fmt):
    v = vals(fig, name)
    if not v:
        return "—"
    mark = " †" if (fig.split(".")[0], name) in BUSY_CELLS else ""
    m = statistics.median(v)
    if len(v) == 1 or min(v) == max(v):
        return fmt(m) + mark
    return f"{fmt(m)} ({fmt(min(v))}–{fmt(max(v))}){mark}"


def k(x):
    return f"{x / 1000:.1f}k"


def us(x):
    return f"{x:.0f} µs"


def print_table(vers, took, setup, load0, load1):
    rows = []

    def ratio(fig):
        a, b = med(fig, "herd"), med(fig, "node")
        return a / b if a is not None and b else None

    def verdict(fig, higher_better):
        r = ratio(fig)
        if r is None:
            return "?"
        if (r >= 1.0) if higher_better else (r <= 1.0):
            return "yes"
        return f"NO: herd {r:.2f}× plain node"

    def row(fig, label, fmt, higher_better=None):
        r = ratio(fig)
        rows.append([label, cell(fig, "node", fmt), cell(fig, "herd", fmt), f"{r:.2f}×" if r else "—",
                     verdict(fig, higher_better) if higher_better is not None else "(informative)"])

    d = WRK_SECS
    row("ka.rps", f"keep-alive req/s (wrk -t2 -c64 -d{d}s)", k, True)
    row("ka.p99", "keep-alive p99 latency", ms, False)
    row("ka.cpu", "keep-alive CPU per request, all processes", lambda x: f"{x:.1f} µs")
    row("ka.bal", "keep-alive balance: requests per worker, max/min", lambda x: f"{x:.2f}")
    row("close.rps", f"Connection: close req/s (wrk -t2 -c64 -d{d}s -H 'Connection: close')", k, True)
    row("close.p99", "Connection: close p99 latency", ms, False)
    row("close.cpu", "Connection: close CPU per request, all processes", lambda x: f"{x:.1f} µs")
    row("close.bal", "Connection: close balance: requests per worker, max/min", lambda x: f"{x:.2f}")
    errs = {s: int(sum(vals("ka.err", s))) + int(sum(vals("close.err", s))) for s in ("node", "herd")}
    rows.append(["wrk socket errors + non-2xx (sum of runs)", str(errs["node"]), str(errs["herd"]), "—",
                 "yes" if errs["herd"] <= errs["node"] else f"NO: herd {errs['herd']} > {errs['node']}"])

    def crash_cell(s):
        if not vals("crash.total", s):
            return "—"
        return (f"failed {cell('crash.failed', s, lambda x: f'{x:.0f}')}, hung {cell('crash.hung', s, lambda x: f'{x:.0f}')} "
                f"of {med('crash.total', s):.0f}; p99 {cell('crash.p99', s, ms)}")

    hung = vals("crash.hung", "herd")
    bad = {x: [f + h for f, h in zip(vals("crash.failed", x), vals("crash.hung", x))] for x in ("node", "herd")}
    bh = statistics.median(bad["herd"]) if bad["herd"] else None
    bn = statistics.median(bad["node"]) if bad["node"] else None
    parts = []
    if not hung or bh is None or bn is None:
        cv = "?"
    else:
        if max(hung) > 0:
            parts.append(f"herd hung {max(hung):.0f} in a run")
        if bh > bn:
            parts.append(f"herd failed+hung {bh:.0f} > {bn:.0f} (medians)")
        cv = "yes" if not parts else "NO: " + ", ".join(parts)
    rows.append([f"fresh connections during {KILLS} SIGKILLs of a worker ({KILL_EVERY} s apart; prober 400 req/s, "
                 f"1 s each): failed, hung, p99 (verdict: herd hangs none, failed+hung ≤ node's)",
                 crash_cell("node"), crash_cell("herd"), "—", cv])

    def serve_cell(s):
        v = vals("crash.serve", s)
        miss = len(vals("crash.noserve", s))
        if not v:
            return "—" if not miss else f"none served ({miss} kills)"
        txt = f"{statistics.median(v):.0f} ms ({min(v):.0f}–{max(v):.0f})"
        return txt + (f"; {miss} of {len(v) + miss} not serving in time" if miss else "")

    sv = [statistics.median(vals("crash.serve", s)) if vals("crash.serve", s) else None for s in ("herd", "node")]
    sr = sv[0] / sv[1] if None not in sv and sv[1] else None
    rows.append(["SIGKILL → replacement worker serving its first request, median (min–max) over all kills",
                 serve_cell("node"), serve_cell("herd"), f"{sr:.2f}×" if sr else "—",
                 "?" if sr is None else ("yes" if sr <= 1.0 else f"NO: herd {sr:.2f}× plain node")])
    row("rtt.same.p50", f"message round trip primary → worker → primary, all on one core, median ({RTT_COUNT} sequential; {PIN_SETS} sets a round)", us, False)
    row("rtt.same.p99", "… on one core, p99", us, False)
    row("rtt.same.cpu", "… on one core: CPU per round trip, all processes", lambda x: f"{x:.0f} µs")
    row("rtt.two.p50", "message round trip, primary on one core and workers on the other, median", us, False)
    row("rtt.two.p99", "… across two cores, p99", us, False)
    row("rtt.two.cpu", "… across two cores: CPU per round trip, all processes", lambda x: f"{x:.0f} µs")
    row("rtt.p50", f"message round trip, placed by the kernel: the first set after wrk, median", us)
    row("rtt.p99", "… placed by the kernel, first set, p99", us)
    row("rtt.cpu", "… placed by the kernel, first set: CPU per round trip, all processes", lambda x: f"{x:.0f} µs")
    rows.append(["… of which the herd daemon", "—", cell("rtt.mcpu", "herd", lambda x: f"{x:.0f} µs"), "—", "(informative)"])
    row("rtt3.p50", f"… placed by the kernel, the third set of {RTT_WARM} + {RTT_COUNT} in the same start, median", us)
    row("rtt3.p99", "… placed by the kernel, third set, p99", us)
    row("rtt3.cpu", "… placed by the kernel, third set: CPU per round trip, all processes", lambda x: f"{x:.0f} µs")

    mode = ("QUICK smoke run: 1 round, short loads — do not read these numbers as results"
            if QUICK else f"full run: median (min–max) of {RUNS} rounds, systems alternating within each round")
    print(f"herd --primary vs plain node — {time.strftime('%Y-%m-%d')}, {platform.node()}, {N} cores, Linux "
          f"{platform.release()}; node {vers['node']}, wrk {vers['wrk']}, herd {vers['herd']}; {N} workers; "
          f"scheduler autogroup: {vers['autogroup']}; {mode}; measuring took {took / 60:.1f} min "
          f"(building before it {setup / 60:.1f} min).\n")
    print(f"| figure | plain `node primary.js` (Node cluster, round robin in the primary) | "
          f"`herd start primary.js --primary` | herd ÷ node | herd not worse? |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print("- Both columns run bench/apps/primary.js unchanged; one start per system and round serves the wrk runs, "
          "then the round trip, then the kills. CPU = utime+stime of the whole tree (primary and workers; for herd "
          "the daemon too) from /proc. The round-trip CPU counts warm-up and measured trips.")
    print("- Round trips: three sets placed by the kernel (after wrk; the third is the figure once warm), then one set "
          "with every process of the system on CPU 0 and one with the primary on CPU 0 and the workers on CPU 1 "
          f"(sched_setaffinity on every thread), {PIN_SETS} sets each, their cells the median (min–max) over every set of "
          "every round. Placed by the kernel, a round trip is ~25 µs when it keeps the two "
          "processes on one core and ~70–80 µs when it spreads them, whichever the system: which one a start gets "
          "decides those rows (see their min–max). The pinned rows compare the two systems on the same placement; "
          "they carry the verdict.")
    print(f"- load average: {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f} at the start, "
          f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f} at the end.")
    if OTHERS:
        print("- other programs seen using > 10% of a core (1 s samples before each round and at the end): "
              + ", ".join(f"`{n}` ×{c}" for n, c in sorted(OTHERS.items(), key=lambda x: -x[1])))
    bgv, st = sorted(QUIET["background"]), sorted(QUIET["steal"])
    if bgv:
        print(f"- machine: before each load the script waits (bounded) until other programs use < {compare.QUIET_LIMIT} "
              f"core; it waited {QUIET['waited']:.0f} s in all, and {QUIET['busy_runs']} of {QUIET['runs']} loads started "
              f"with the machine still busy. CPU of other programs during the wrk runs: median {statistics.median(bgv):.2f}, "
              f"max {bgv[-1]:.2f} cores; {QUIET['retried']} wrk runs were measured again because other programs used "
              f"> {compare.BUSY_LIMIT} core. VM steal: median {statistics.median(st):.2f}, max {st[-1]:.2f} cores.")
    if BUSY_CELLS:
        print(f"- † a run behind this figure (wrk, round trips or kills) was kept although other programs used > "
              f"{compare.BUSY_LIMIT} core during it (wrk and round trips after {compare.RETRIES} retries): read it with care.")
    for phase, what in (("rtt", "the message round trips"), ("crash", "the SIGKILL runs")):
        v = sorted(OTHER[phase])
        if v:
            print(f"- CPU of other programs during {what}: median {statistics.median(v):.2f}, max {v[-1]:.2f} cores "
                  f"(estimate, as for wrk; a run over {compare.BUSY_LIMIT} core is marked †"
                  + (", round trips measured again up to twice" if phase == "rtt" else "") + ").")
    for n in NOTES:
        print(f"- note: {n}")
    for what, dd in WHY.items():
        if dd:
            print(f"- failures, {what} (all runs): " + ", ".join(f"{w} ×{c}" for w, c in sorted(dd.items())))
    common.print_leftovers()


if __name__ == "__main__":
    common.run(main)
