#!/usr/bin/env python3
"""What `herd update` costs an app under load, next to `pm2 update`.

    python3 bench/update.py            # 3 rounds, 10 s wrk runs, 5 updates per run: about 5 minutes
    python3 bench/update.py --quick    # 1 round, 4 s wrk runs, 3 updates per run (a smoke test;
                                       # never read its numbers as results)

herd: one daemon (its own HERD_HOME) started by one copy of the herd binary (<tmp>/old/herd) runs
the Rust example `hello -i 4` and, when node is here, tests/node/http.js `-i 2`, each on its
own port on 127.0.0.1. For each app, `wrk -t2 -c32 --latency` runs for WRK_SECS, once as a
control (no update) and once while another copy of the binary (<tmp>/new/herd) runs
`herd update` UPDATES times, 1 s apart. Both copies are the same build: this measures the
mechanism (re-executing the daemon in its own process), not a change between versions.

PM2 (pinned PM2_VERSION, installed from the npm registry into bench/.cache/npm as compare.py
does): `pm2 start tests/node/http.js -i 2` (cluster mode, its own PM2_HOME), the same control
run, and a run during which `pm2 update` is called once (PM2 saves its list, kills its daemon
with every app, starts a new daemon and resurrects the apps).

During every run (control too) a prober thread opens a fresh connection every 10 ms (1 s
timeout each) and records which answered: the longest gap between two successful answers is
how long the app did not serve (about 10–20 ms is the resolution under this load).

Rules (as in compare.py): 127.0.0.1 only; every load bounded in time; every command has a
timeout; each manager in its own temporary HERD_HOME / PM2_HOME, stopped by its own `kill` and
whatever is left killed by pid; every process started carries HERD_BENCH_TAG in its
environment, and at the end any process still carrying it is killed by pid and reported.
Control and update runs alternate in order from round to round. Python standard library only;
the helpers it shares with compare.py (installing wrk and PM2, /proc, autogroup, wrk's output,
the final sweep) are in common_helpers.py.
"""
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common_helpers import LEFTOVERS, NOTES, PM2_VERSION, Started, alive, autogroup_off, cmdline, cpu_busy
from common_helpers import descendants, ensure_wrk, first_line, free_port, get, install_pm2, kill_pids, logger
from common_helpers import ms, parse_wrk, proc_table, rss_kb, tagged
import common_helpers as common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv

ROUNDS = 1 if QUICK else 3
WRK_SECS = 4 if QUICK else 10
WRK_ARGS = ["-t2", "-c32"]
UPDATES = 3 if QUICK else 5  # herd update calls per run, 1 s apart
FIRST_UPDATE = 1.0 if QUICK else 2.0  # seconds into the wrk run
PM2_UPDATE_AT = 1.0 if QUICK else 2.0
PROBE_EVERY = 0.010
PROBE_TIMEOUT = 1.0

RUN_TAG = f"upd-{os.getpid()}-{int(time.time())}"
CLK = os.sysconf("SC_CLK_TCK")
NODE = shutil.which("node")
HTTP_JS = os.path.join(ROOT, "tests", "node", "http.js")

log = logger("update")


# --------------------------------------------------------------------------------------------
# Installing and building (wrk and PM2 the same ways as compare.py)


def ensure_pm2():
    """PM2's bin (installed into bench/.cache/npm when missing); None (with a note) when node
    or npm is missing or the install fails."""
    if not NODE or not shutil.which("npm"):
        NOTES.append("PM2 was not measured: node or npm is not installed on this machine.")
        return None
    try:
        return install_pm2(log, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        NOTES.append(f"PM2 was not measured: `npm install pm2@{PM2_VERSION}` failed ({e}).")
        return None


def build(tmp):
    """Builds herd and the hello example (release), and copies herd to tmp/old and tmp/new."""
    log("building herd and examples/hello (release)")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "--example", "hello"],
        cwd=ROOT, check=True,
    )
    rel = os.path.join(ROOT, "target", "release")
    bins = {}
    for which in ("old", "new"):
        os.makedirs(os.path.join(tmp, which))
        bins[which] = os.path.join(tmp, which, "herd")
        shutil.copy2(os.path.join(rel, "herd"), bins[which])
    return bins, os.path.join(rel, "examples", "hello")


# --------------------------------------------------------------------------------------------
# /proc


def children(pid):
    """(pid, starttime) of the children of pid: a pid reused by another process would differ."""
    return sorted((p, st) for p, (pp, _, st) in proc_table().items() if pp == pid)


def start_time(pid):
    return proc_table().get(pid, (None, None, None))[2]


def rss_mb(pid):
    """VmRSS of pid in MB; NaN when pid is gone."""
    try:
        return rss_kb(pid) / 1024 or float("nan")
    except OSError:
        return float("nan")


def settle(limit=0.15, budget=(5.0 if QUICK else 30.0)):
    """Waits (bounded) until other programs use under `limit` core before a load."""
    t0 = time.time()
    while time.time() - t0 < budget:
        a, _ = cpu_busy()
        time.sleep(0.5)
        b, _ = cpu_busy()
        if (b - a) / CLK / 0.5 < limit:
            return
    NOTES.append(f"the machine was still busy (> {limit} core) after waiting {budget:.0f} s before a load")


# --------------------------------------------------------------------------------------------
# HTTP


def answer_pid(body):
    m = re.search(r"pid=(\d+)", body)
    return int(m.group(1)) if m else None


def wait_serving(port, n, limit=30.0):
    """Until n distinct instance pids answered on fresh connections; returns them."""
    deadline, pids = time.time() + limit, set()
    while time.time() < deadline:
        try:
            pids.add(answer_pid(get(port, timeout=1.0, whole=True)))
            if len(pids) >= n:
                return pids
        except (OSError, ValueError):
            time.sleep(0.02)
    raise RuntimeError(f"port {port}: {len(pids)} of {n} instances answered within {limit:.0f} s")


class Prober:
    """A fresh connection every PROBE_EVERY seconds, each given PROBE_TIMEOUT: records
    (start, end, ok, pid of the answering instance or the error)."""

    def __init__(self, port, limit):
        self.port, self.limit = port, limit
        self.halt = threading.Event()
        self.results = []
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def start(self):
        self.t0 = time.perf_counter()
        self.thread.start()
        return self

    def loop(self):
        nxt = self.t0
        while not self.halt.is_set() and time.perf_counter() - self.t0 < self.limit:
            now = time.perf_counter()
            if nxt > now:
                time.sleep(nxt - now)
            nxt = max(nxt + PROBE_EVERY, time.perf_counter())
            t = time.perf_counter()
            try:
                pid = answer_pid(get(self.port, timeout=PROBE_TIMEOUT, whole=True))
                self.results.append((t, time.perf_counter(), True, pid))
            except (OSError, ValueError) as e:
                self.results.append((t, time.perf_counter(), False, type(e).__name__))

    def stop(self):
        self.halt.set()
        self.thread.join(timeout=PROBE_TIMEOUT + 5)

    def summary(self, a, b):
        """Over probes started in [a, b]: total, failed, failure kinds, and the longest time
        between two successful answers (the window's ends count as answers)."""
        rs = [r for r in self.results if a <= r[0] <= b]
        ok_ends = [a] + sorted(r[1] for r in rs if r[2]) + [b]
        kinds = {}
        for r in rs:
            if not r[2]:
                kinds[r[3]] = kinds.get(r[3], 0) + 1
        return {
            "total": len(rs),
            "failed": sum(1 for r in rs if not r[2]),
            "kinds": kinds,
            "gap": max(y - x for x, y in zip(ok_ends, ok_ends[1:])) * 1000,
        }


class Wrk:
    """wrk started in the background (bounded by -d and a timeout); result() parses it."""

    def __init__(self, port, secs, env):
        self.secs = secs
        self.argv = [WRK, *WRK_ARGS, f"-d{secs}s", "--latency", f"http://127.0.0.1:{port}/"]
        self.p = subprocess.Popen(self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)

    def result(self):
        try:
            out, err = self.p.communicate(timeout=self.secs + 30)
        except subprocess.TimeoutExpired:
            kill_pids([self.p.pid])
            out, err = self.p.communicate()
            raise RuntimeError("wrk did not end in time: killed by pid")
        w = parse_wrk(out)
        if self.p.returncode != 0 or not w or w["max"] is None:
            raise RuntimeError(f"wrk failed ({self.p.returncode}): {out}\n{err}")
        return w


# --------------------------------------------------------------------------------------------
# The managers


class Manager(Started):
    label = "?"
    pid_file = None  # in self.home: the daemon's pid

    def __init__(self, kind):
        self.tag = f"{RUN_TAG}-{kind}-{len(common.ACTIVE)}-{time.time_ns()}"
        self.env = dict(os.environ, HERD_BENCH_TAG=self.tag)
        self.home = None
        self.daemons = []  # every daemon pid seen (PM2 starts a new one on update)

    def cli(self, argv, timeout=60, env=None):
        r = subprocess.run(argv, env=env or self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError(f"`{' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(argv))}` "
                               f"failed ({r.returncode}): {r.stdout[-400:]} {r.stderr[-400:]}")
        return r

    def daemon(self):
        return int(open(os.path.join(self.home, self.pid_file)).read().strip())

    def instances(self):
        return children(self.daemon())

    def timed(self, argv, timeout):
        """Runs argv (bounded); returns (wall ms, the finished process)."""
        t = time.perf_counter()
        r = subprocess.run(argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return (time.perf_counter() - t) * 1000, r

    def stop(self):
        self.forget()
        try:
            d = self.daemon()
            if d and d not in self.daemons:
                self.daemons.append(d)
        except Exception:  # noqa: BLE001 - no daemon: nothing to ask
            pass
        try:
            self.kill()
        except Exception as e:  # noqa: BLE001 - the sweep below still runs
            NOTES.append(f"{self.label}: stopping failed: {e}")
        deadline = time.time() + 5
        while time.time() < deadline and (any(alive(d) for d in self.daemons) or tagged(self.tag)):
            time.sleep(0.05)
        rest = descendants(self.daemons) | set(tagged(self.tag))
        for pid in sorted(rest):
            LEFTOVERS.append(f"{self.label}: pid {pid} `{cmdline(pid)}` alive 5 s after its `kill`; killed by pid")
        kill_pids(rest)
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


class Herd(Manager):
    label = "herd"
    pid_file = "daemon.lock"

    def __init__(self, bins, apps):
        super().__init__("herd")
        self.bins, self.apps = bins, apps  # apps: [(name, program, n, port)]

    def start(self):
        self.home = tempfile.mkdtemp(prefix="herd-home-")
        self.env["HERD_HOME"] = self.home
        for name, program, n, port in self.apps:
            self.cli([self.bins["old"], "start", program, "-i", str(n), "--listen", f"127.0.0.1:{port}", "--name", name])
        self.daemons.append(self.daemon())
        for name, program, n, port in self.apps:
            wait_serving(port, n)

    def update(self):
        """One `new/herd update`: (wall ms, the time herd printed in ms or None, output)."""
        wall, r = self.timed([self.bins["new"], "update"], timeout=60)
        out = (r.stdout + r.stderr).strip()
        m = re.search(r"in (\d+) ms", out)
        if r.returncode != 0 or not m:
            NOTES.append(f"herd update exited {r.returncode}: {out[-300:]}")
        return wall, (int(m.group(1)) if m else None), out

    def kill(self):
        self.cli([self.bins["new"], "kill"], timeout=60)


class PM2(Manager):
    label = "PM2"
    pid_file = "pm2.pid"

    def __init__(self, pm2, port):
        super().__init__("pm2")
        self.bin, self.port = pm2, port

    def start(self):
        self.home = tempfile.mkdtemp(prefix="pm2-home-")
        self.env["PM2_HOME"] = self.home
        self.env["PORT"] = str(self.port)
        self.cli([self.bin, "start", HTTP_JS, "-i", "2", "--name", "js"], timeout=120)
        self.daemons.append(self.daemon())
        wait_serving(self.port, 2)

    def update(self):
        wall, r = self.timed([self.bin, "update"], timeout=120)
        if r.returncode != 0:
            NOTES.append(f"pm2 update exited {r.returncode}: {(r.stdout + r.stderr)[-300:]}")
        try:
            d = self.daemon()
            if d not in self.daemons:
                self.daemons.append(d)
        except (OSError, ValueError):
            pass
        return wall

    def kill(self):
        self.cli([self.bin, "kill"], timeout=60)


# --------------------------------------------------------------------------------------------
# Runs

R = {}  # R[(column, figure)] = [one value per round]


def put(col, fig, value):
    R.setdefault((col, fig), []).append(value)


def measure(col, port, env, during=None):
    """One wrk run of WRK_SECS on port with the prober; `during(t0)` runs in this thread while
    wrk runs (t0: wrk's start, perf_counter). Records the figures under column `col`."""
    settle()
    probe = Prober(port, limit=WRK_SECS + 40).start()
    t0 = time.perf_counter()
    w = Wrk(port, WRK_SECS, env)
    extra = during(t0) if during else None
    res = w.result()
    t1 = t0 + WRK_SECS
    # PM2 may still not serve when wrk ends: keep probing (bounded) until it does.
    deadline = time.perf_counter() + 30
    while time.perf_counter() < deadline and not any(r[2] and r[0] >= t1 - 0.5 for r in probe.results):
        time.sleep(0.05)
    probe.stop()
    end = max([t1] + [r[1] for r in probe.results if r[2] and r[0] >= t1 - 0.5][:1])
    ps = probe.summary(t0, end)
    put(col, "rps", res["rps"])
    put(col, "p99", res["p99"])
    put(col, "max", res["max"])
    put(col, "sock", res["sock"])
    put(col, "non2xx", res["non2xx"])
    put(col, "probe.failed", ps["failed"])
    put(col, "probe.total", ps["total"])
    put(col, "gap", ps["gap"])
    for k, n in ps["kinds"].items():
        NOTES.append(f"{col}: {n} probe(s) failed with {k}")
    if sum(res["sock"]) or res["non2xx"]:
        c, r_, w_, t_ = res["sock"]
        NOTES.append(f"{col}: wrk socket errors connect {c}, read {r_}, write {w_}, timeout {t_}; non-2xx {res['non2xx']}")
    return probe, t0, extra


def herd_update_run(col, h, port):
    daemon0, inst0 = h.daemon(), h.instances()
    start0 = start_time(daemon0)
    rss0 = rss_mb(daemon0)

    def during(t0):
        out = []
        for i in range(UPDATES):
            time.sleep(max(0.0, t0 + FIRST_UPDATE + i - time.perf_counter()))
            out.append(h.update())
        return out

    _, _, ups = measure(col, port, h.env, during)
    time.sleep(0.5)
    daemon1 = h.daemon()
    put(col, "rss0", rss0)
    put(col, "rss1", rss_mb(daemon1))
    put(col, "daemon.same", daemon1 == daemon0 and start_time(daemon1) == start0)
    put(col, "inst.same", h.instances() == inst0 and len(inst0) > 0)
    for wall, printed, _ in ups:
        put(col, "upd.wall", wall)
        put(col, "upd.printed", printed if printed is not None else float("nan"))
    exe = os.path.realpath(f"/proc/{daemon1}/exe")
    if exe != os.path.realpath(h.bins["new"]):
        NOTES.append(f"{col}: after the updates the daemon runs {exe}, not the new copy")


def pm2_update_run(col, p, port):
    daemon0, inst0 = p.daemon(), p.instances()
    rss0 = rss_mb(daemon0)
    old_pids = {pid for pid, _ in inst0}
    marks = {}

    def during(t0):
        time.sleep(max(0.0, t0 + PM2_UPDATE_AT - time.perf_counter()))
        marks["t"] = time.perf_counter()
        return p.update()

    probe, t0, wall = measure(col, port, p.env, during)
    t = marks["t"]
    # From the start of `pm2 update` to the first answer of a new worker.
    new = [r[1] for r in probe.results if r[2] and r[0] >= t and r[3] not in old_pids]
    put(col, "first.new", (min(new) - t) * 1000 if new else float("nan"))
    put(col, "upd.wall", wall)
    time.sleep(0.5)
    daemon1 = p.daemon()
    put(col, "rss0", rss0)
    put(col, "rss1", rss_mb(daemon1))
    put(col, "daemon.same", daemon1 == daemon0)
    inst1 = p.instances()
    put(col, "inst.same", inst1 == inst0)
    put(col, "inst.changed", len(old_pids - {pid for pid, _ in inst1}))


def kinds(rnd):
    """The order of the runs in round rnd: control first in even rounds, update first in odd."""
    return ("control", "update") if rnd % 2 == 0 else ("update", "control")


def one_run(col, kind, m, port, update_run):
    """The control run (a measure without update) or the update run (update_run) of column col."""
    if kind == "control":
        measure(col, port, m.env)
    else:
        update_run(col, m, port)


def herd_round(rnd, bins, hello, apps):
    ports = {name: free_port() for name, *_ in apps}
    spec = [(name, program, n, ports[name]) for name, program, n in apps]
    with Herd(bins, spec) as h:
        for name, program, n in apps:
            port = ports[name]
            log(f"round {rnd + 1}/{ROUNDS}: herd, {name} ×{n} on 127.0.0.1:{port}")
            Wrk(port, 1, h.env).result()  # warm-up
            for kind in kinds(rnd):
                one_run(f"herd.{name}.{kind}", kind, h, port, herd_update_run)


def pm2_round(rnd, pm2):
    port = free_port()
    log(f"round {rnd + 1}/{ROUNDS}: PM2, js ×2 on port {port}")
    # A fresh PM2 for each run: after `pm2 update` the apps are not the same processes.
    for kind in kinds(rnd):
        with PM2(pm2, port) as p:
            Wrk(port, 1, p.env).result()  # warm-up
            one_run(f"pm2.js.{kind}", kind, p, port, pm2_update_run)


# --------------------------------------------------------------------------------------------
# The table


def vals(col, fig):
    return [x for x in R.get((col, fig), []) if not (isinstance(x, float) and x != x)]


def spread(col, fig, fmt):
    v = vals(col, fig)
    if not v:
        return "—"
    m = statistics.median(v)
    if len(v) == 1 or min(v) == max(v):
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(v))}–{fmt(max(v))})"


def print_table(cols, vers, took):
    heads = {
        "herd.rs.control": "herd, hello ×4: control",
        "herd.rs.update": f"herd, hello ×4: {UPDATES}× `herd update`",
        "herd.js.control": "herd, http.js ×2: control",
        "herd.js.update": f"herd, http.js ×2: {UPDATES}× `herd update`",
        "pm2.js.control": "PM2, http.js ×2: control",
        "pm2.js.update": "PM2, http.js ×2: 1× `pm2 update`",
    }
    n = ROUNDS

    def errs(col):
        v = R.get((col, "sock"))
        if not v:
            return "—"
        c, r, w, t = (sum(x[i] for x in v) for i in range(4))
        return f"{c} / {r} / {w} / {t}"

    def total(fig, fmt=str):
        return lambda col: fmt(sum(vals(col, fig))) if vals(col, fig) else "—"

    def yes(fig):
        def f(col):
            v = R.get((col, fig))
            if not v:
                return "—"
            k = sum(1 for x in v if x)
            if k == len(v):
                return f"yes ({k}/{len(v)} runs)"
            changed = vals(col, "inst.changed") if fig == "inst.same" else []
            more = f"; {statistics.median(changed):.0f} old worker pids gone per run" if changed else ""
            return f"NO (changed in {len(v) - k} of {len(v)} runs{more})"

        return f

    def probes(col):
        f, t = vals(col, "probe.failed"), vals(col, "probe.total")
        return f"{sum(f)} of {sum(t)}" if t else "—"

    def rss(col):
        a, b = vals(col, "rss0"), vals(col, "rss1")
        if not a or not b:
            return "—"
        return f"{statistics.median(a):.1f} → {statistics.median(b):.1f} MB (max after {max(b):.1f})"

    def upd(col):
        w, p = vals(col, "upd.wall"), vals(col, "upd.printed")
        if not w:
            return "—"
        s = f"wall {ms(statistics.median(w))} (max {ms(max(w))})"
        if p:
            s = f"printed {statistics.median(p):.0f} ms ({min(p):.0f}–{max(p):.0f}) over {len(p)} updates; " + s
        return s

    rows = [
        (f"req/s (wrk {' '.join(WRK_ARGS)} -d{WRK_SECS}s)", lambda c: spread(c, "rps", lambda x: f"{x / 1000:.1f}k")),
        ("p99 latency", lambda c: spread(c, "p99", ms)),
        ("max latency", lambda c: spread(c, "max", ms)),
        ("wrk socket errors connect / read / write / timeout (sum)", errs),
        ("wrk non-2xx (sum)", total("non2xx")),
        ("prober (fresh connection every 10 ms): failed of all (sum)", probes),
        ("longest gap between two answered probes", lambda c: spread(c, "gap", ms)),
        ("update command time", upd),
        ("`pm2 update` start → first answer from a new worker", lambda c: spread(c, "first.new", ms)),
        ("every instance pid unchanged", yes("inst.same")),
        ("daemon pid unchanged", yes("daemon.same")),
        ("daemon VmRSS before → after the update(s), median", rss),
    ]
    mode = ("QUICK smoke run: 1 round, short loads — do not read these numbers as results" if QUICK
            else f"median (min–max) of {n} rounds; sums over the rounds where it says so")
    print(f"herd update under load — {time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}; herd {vers['herd']}; node {vers['node']}; pm2 {vers['pm2']}; wrk {vers['wrk']}; "
          f"scheduler autogroup: {vers['autogroup']}; {mode}; measuring took {took / 60:.1f} min.\n")
    print("| figure | " + " | ".join(heads[c] for c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, f in rows:
        cells = [f(c) for c in cols]
        if all(x == "—" for x in cells):
            continue
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()
    print(f"- herd: one daemon per round with both apps, started by <tmp>/old/herd; `<tmp>/new/herd update` "
          f"{UPDATES}× 1 s apart from {FIRST_UPDATE:.0f} s into each update run (the second app's run updates a daemon "
          f"already updated {UPDATES}×). Both copies are the same build. PM2: a fresh PM2_HOME per run, "
          f"`pm2 update` {PM2_UPDATE_AT:.0f} s into the update run.")
    print("- pids unchanged: every child of the daemon (pid and start time) and the daemon (pid and start time for herd) "
          "after the run equal those before it.")
    for x in NOTES:
        print(f"- note: {x}")
    common.print_leftovers()


def main():
    global WRK
    WRK = ensure_wrk(log)
    pm2 = ensure_pm2()
    tmp = tempfile.mkdtemp(prefix="herd-update-bench-")
    try:
        bins, hello = build(tmp)
        git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        wrkv = first_line([WRK, "-v"])
        m = re.match(r"wrk (\S+)", wrkv)
        vers = {
            "herd": first_line([bins["old"], "--version"]).replace("herd ", "") + f" (working tree, {git or '?'})",
            "node": first_line([NODE, "--version"]) if NODE else "not installed",
            "pm2": PM2_VERSION if pm2 else "not measured",
            "wrk": m.group(1) if m else wrkv,
        }
        apps = [("rs", hello, 4)]
        if NODE:
            apps.append(("js", HTTP_JS, 2))
        else:
            NOTES.append("node is not installed: the herd http.js runs and PM2 were skipped.")
        started = time.time()
        vers["autogroup"] = autogroup_off()
        try:
            for rnd in range(ROUNDS):
                herd_round(rnd, bins, hello, apps)
                if pm2:
                    try:
                        pm2_round(rnd, pm2)
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        NOTES.append(f"PM2 round {rnd + 1} failed: {e}")
        finally:
            common.finish(RUN_TAG, log)
        cols = ["herd.rs.control", "herd.rs.update"]
        if NODE:
            cols += ["herd.js.control", "herd.js.update"]
        if pm2:
            cols += ["pm2.js.control", "pm2.js.update"]
        print_table(cols, vers, time.time() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    common.run(main)
