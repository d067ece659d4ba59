#!/usr/bin/env python3
"""herd message-bus benchmark: request/reply round trips and one-way throughput between
instances through herd's daemon (Rust and Node clients), next to Node's own cluster IPC, all
measured in the same run.

    python3 bench/bus.py            # full run: 3 runs per row, alternating systems (~7 min)
    python3 bench/bus.py --quick    # 1 run per row, shorter windows (under 2 min)
    python3 bench/bus.py --quick --only bare-any,herd-rust-1,herd-rust-c   # some rows (keys in main())

Everything runs on this host over Unix sockets (no network), with a private HERD_HOME; every
load stops after a fixed time; herd is stopped with `herd kill` and every other process this
script starts is killed by pid at the end. See bench/BUS.md for what each row means.
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

from common_helpers import proc_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "bench", "apps")
QUICK = "--quick" in sys.argv
# `--only KEY,KEY`: run only these rows (the keys of `plan` in main()); goals whose reference
# row did not run are not judged.
ONLY = next((a.split(",") for p, a in zip(sys.argv, sys.argv[1:]) if p == "--only"), None)
RUNS = 1 if QUICK else 3
SECS = 3 if QUICK else 8  # measured window of every row
WARMUP = 1
CONC = 16  # requests in flight in the concurrent rows
SIZE = 1024  # one-way payload: a string of SIZE bytes
WINDOW = 512  # one-way with flow control: messages not yet acknowledged by the receiver
ACK = 128  # the receiver acknowledges every ACK-th message
CLK = os.sysconf("SC_CLK_TCK")


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "-p", "herd", "--examples"],
        cwd=ROOT,
        check=True,
    )
    target = os.path.join(ROOT, "target", "release")
    # The physical limit: two bare processes, a blocking 64-byte request/reply on a socketpair.
    subprocess.run(
        ["cc", "-O2", "-Wall", "-o", os.path.join(target, "pingpong"), os.path.join(APPS, "pingpong.c")],
        check=True,
    )
    return os.path.join(target, "herd"), os.path.join(target, "examples")


def bare(placement):
    """Two bare processes, 64-byte request/reply over a socketpair (bench/apps/pingpong.c)."""
    exe = os.path.join(ROOT, "target", "release", "pingpong")
    out = subprocess.run([exe, str(SECS), str(WARMUP), placement], capture_output=True, text=True,
                         timeout=SECS + WARMUP + 30, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"rate": r["rate"], "p50": r["p50_us"], "p99": r["p99_us"], "cpu_us": None, "lost": 0,
            "lost_note": None, "rss": None}


def status_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def procs():
    """pid → (ppid, start time in ticks, utime+stime in ticks) of every live process now
    (zombies are left out: a killed worker waiting for its new parent is not load)."""
    return {pid: (ppid, start, ticks) for pid, (ppid, ticks, start) in proc_table().items()}


def other_cpu(before, after, ours, secs):
    """CPU (% of one core) used during a row by processes that are not this script's or herd's:
    to tell a clean row from one that shared the machine. Processes born and gone within the
    row are missed."""
    def mine(pid):
        seen = set()
        while pid > 1 and pid not in seen:
            if pid in ours:
                return True
            seen.add(pid)
            pid = after.get(pid, before.get(pid, (0,)))[0]
        return False

    ticks = 0
    for pid, (_, start, t) in after.items():
        if mine(pid):
            continue
        b = before.get(pid)
        ticks += t - b[2] if b and b[1] == start else t
    return 100.0 * ticks / CLK / secs


def idle_pct(secs):
    """System-wide idle CPU (%) over `secs`."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    i0, t0 = sample()
    time.sleep(secs)
    i1, t1 = sample()
    return 100.0 * (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(limit=120):
    """Waits (at most `limit` s) for the machine to be ≥ 90% idle over a second, so that a row
    does not start while something else runs; says so when it waited."""
    t = time.time()
    while idle_pct(1.0) < 90 and time.time() - t < limit:
        pass
    if time.time() - t > 1.5:
        print(f"  waited {time.time() - t:.0f} s for the machine to be idle", file=sys.stderr)


def wait_files(paths, timeout, watch_pid, log):
    """Waits for result files, sampling the RSS of `watch_pid`; returns (results, peak kB)."""
    peak = 0
    deadline = time.time() + timeout
    while time.time() < deadline:
        peak = max(peak, status_kb(watch_pid, "VmRSS"))
        if all(os.path.exists(p) for p in paths):
            return [json.load(open(p)) for p in paths], peak
        time.sleep(0.05)
    raise RuntimeError(f"no result in {timeout} s from {[os.path.basename(p) for p in paths]}:\n{log()}")


class Herd:
    def __init__(self, herd, examples):
        self.herd = herd
        self.examples = examples
        self.home = tempfile.mkdtemp(prefix="herd-bus-bench-")
        self.env = dict(os.environ, HERD_HOME=self.home)
        self.n = 0
        self.pids = set()  # every instance pid seen, checked after each row
        self.left = []  # pids still alive after `herd kill`
        self.daemon = None
        self.idle_rss = []  # daemon RSS with the target started, before the load

    def h(self, *args, check=True):
        r = subprocess.run([self.herd, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"herd {' '.join(args)}: {r.stdout}{r.stderr}")
        return r

    def row(self, fn, *args):
        """One row on a fresh daemon, so that its RSS and counters are the row's own."""
        self.h("ping")
        self.daemon = int(open(os.path.join(self.home, "daemon.lock")).read().strip())
        try:
            return fn(*args)
        finally:
            self.down()

    def down(self):
        self.h("kill", check=False)
        deadline = time.time() + 10
        while alive(self.daemon) and time.time() < deadline:
            time.sleep(0.05)
        self.pids.add(self.daemon)
        left = [p for p in sorted(self.pids) if alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        self.left += left
        self.pids = set()

    def note_pids(self):
        for app in json.loads(self.h("list", "--json").stdout):
            for p in app["processes"]:
                if p.get("pid"):
                    self.pids.add(p["pid"])

    def log(self, name):
        return lambda: self.h("logs", name, "--lines", "20", check=False).stdout

    def app(self, script, name, **env):
        args = ["start", script, "--name", name, "--no-autorestart"]
        env.setdefault("BENCH_SECS", SECS)
        env.setdefault("BENCH_WARMUP", WARMUP)
        env["BENCH_DAEMON_PID"] = self.daemon
        env["BENCH_CLK_TCK"] = CLK
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.h(*args)
        self.note_pids()

    def out(self, name):
        return os.path.join(self.home, f"{name}.json")

    def rtt(self, client, conc, direct=True):
        self.n += 1
        name = f"{client}-c{conc}-{self.n}"
        if client == "rust":
            script, target = os.path.join(self.examples, "bus-bench"), "echo:0"
            self.h("start", os.path.join(self.examples, "bus-echo"), "--name", "echo")
        else:
            script, target = os.path.join(APPS, "bus-node.js"), "necho:0"
            self.h("start", os.path.join(APPS, "bus-node.js"), "--name", "necho", "-e", "BENCH_MODE=echo")
        self.note_pids()
        time.sleep(0.5)
        self.idle_rss.append(status_kb(self.daemon, "VmRSS") / 1024)
        extra = {} if direct else {"HERD_BUS_DIRECT": "0"}
        self.app(script, name, BENCH_MODE="rtt", BENCH_TARGET=target, BENCH_CONC=conc, BENCH_OUT=self.out(name),
                 **extra)
        (r,), peak = wait_files([self.out(name)], SECS + WARMUP + 40, self.daemon, self.log(name))
        self.h("delete", name)
        # Each round trip is two messages routed by the daemon: the request and the reply.
        return {
            "rate": r["rate"],
            "p50": r["p50_us"],
            "p99": r["p99_us"],
            "cpu_us": cpu_us(r["daemon_cpu_s"], 2 * r["round_trips"]),
            "lost": r["errors"],
            "lost_note": r["first_error"],
            "rss": peak / 1024,
        }

    def oneway(self, window, direct=True):
        self.n += 1
        sink, flood = f"sink-{self.n}", f"flood-{self.n}"
        bench = os.path.join(self.examples, "bus-bench")
        self.app(bench, sink, BENCH_MODE="sink", BENCH_ACK=ACK if window else 0, BENCH_OUT=self.out(sink))
        before = self.counters(sink)
        extra = {} if direct else {"HERD_BUS_DIRECT": "0"}
        self.app(bench, flood, BENCH_MODE="flood", BENCH_TARGET=f"{sink}:0", BENCH_SIZE=SIZE,
                 BENCH_WINDOW=window, BENCH_OUT=self.out(flood), **extra)
        logs = lambda: self.log(flood)() + self.log(sink)()  # noqa: E731
        (f,), peak = wait_files([self.out(flood)], SECS + WARMUP + 40, self.daemon, logs)
        # The sink's queue counter goes when the sink exits (once nothing came for a second):
        # read it until then.
        dropped = 0
        deadline = time.time() + 60
        while not os.path.exists(self.out(sink)) and time.time() < deadline:
            peak = max(peak, status_kb(self.daemon, "VmRSS"))
            for app in json.loads(self.h("describe", sink, "--json").stdout):
                for p in app["processes"]:
                    dropped = max(dropped, p.get("messages_dropped") or 0)
            time.sleep(0.2)
        (s,), _ = wait_files([self.out(sink)], 5, self.daemon, logs)
        after = self.counters(flood)
        self.h("delete", flood)
        self.h("delete", sink)
        routed = s["in_window"] * (1 + (1 / ACK if window else 0))
        lost = f["sent"] - s["received"]
        diff = {k: after[k] - before[k] for k in after}
        note = (f"{dropped} dropped by the daemon (receiver's queue full), {max(lost - dropped, 0)} in the "
                f"receiving client; daemon counters moved by {diff['refused']} refused, "
                f"{diff['no_recipient']} without recipient")
        return {
            "rate": s["rate"],
            "cpu_us": cpu_us(s["daemon_cpu_s"], routed),
            "lost": lost,
            "sent": f["sent"],
            "lost_note": note,
            "rss": peak / 1024,
        }

    def counters(self, app):
        """The daemon's bus counters, from `herd describe` (its --json leaves them out)."""
        text = self.h("describe", app).stdout
        c = {}
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("bus:"):
                c["routed"] = int(line.split()[1])
            elif line.startswith("losses:"):
                nums = [int(w) for w in line.replace(",", " ").split() if w.isdigit()]
                c["dropped"], c["refused"], c["no_recipient"] = nums[:3]
        return c


def cpu_us(secs, messages):
    return secs / messages * 1e6 if secs is not None and messages else None


def cluster(mode, conc):
    """Node's cluster module: one primary, two workers, run as its own process group."""
    p = subprocess.Popen(
        ["node", os.path.join(APPS, "bus-cluster.js"), mode, str(conc), str(SECS), str(WARMUP), str(SIZE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    peak = 0
    try:
        deadline = time.time() + SECS + WARMUP + 40
        while p.poll() is None and time.time() < deadline:
            peak = max(peak, status_kb(p.pid, "VmRSS"))
            time.sleep(0.05)
        out, err = p.communicate(timeout=5)
    finally:
        # The primary kills its workers before it exits; the group goes in any case.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    if p.returncode != 0 or not out.strip():
        raise RuntimeError(f"bus-cluster.js {mode} {conc} failed ({p.returncode}): {err}")
    r = json.loads(out.strip().splitlines()[-1])
    if "error" in r:
        raise RuntimeError(f"bus-cluster.js {mode} {conc}: {r['error']}: {err}")
    if mode == "oneway":
        return {"rate": r["rate"], "cpu_us": cpu_us(r["primary_cpu_s"], r["in_window"]), "lost": 0,
                "lost_note": None, "rss": peak / 1024}
    # w↔p: the primary takes the request and answers (one message out per round trip);
    # relayed: it forwards the request and the reply (two), as herd's daemon does.
    per = 1 if mode == "rtt" else 2
    return {"rate": r["rate"], "p50": r["p50_us"], "p99": r["p99_us"],
            "cpu_us": cpu_us(r["primary_cpu_s"], per * r["round_trips"]), "lost": r["errors"],
            "lost_note": None, "rss": peak / 1024}


# ----- presentation --------------------------------------------------------------------------


def si(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def us(x):
    return f"{x:.0f} µs" if x >= 10 else f"{x:.1f} µs"


def summary(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})"


def median(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def version(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def main():
    if shutil.which("node") is None:
        sys.exit("bus.py needs node (Node's cluster rows and herd's Node client)")
    t0 = time.time()
    herd_bin, examples = build()
    print(f"  {time.time() - t0:5.0f} s  built", file=sys.stderr)
    t0 = time.time()
    with open("/proc/meminfo") as f:
        total_gib = int(f.readline().split()[1]) / 1024 / 1024
    head = (
        f"herd bus benchmark — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {total_gib:.0f} GiB, "
        f"Linux {platform.release()}, {version([herd_bin, '--version'])}, node {version(['node', '--version'])}, "
        f"{version(['rustc', '--version'])}; {'quick run: 1 run per row' if QUICK else f'median of {RUNS} runs (min–max)'}, "
        f"{SECS} s measured per run after {WARMUP} s warm-up"
    )

    # Row keys, in the order they run within one round: systems alternate.
    plan = [
        ("bare-any", lambda h: bare("any")),
        ("bare-same", lambda h: bare("same")),
        ("bare-split", lambda h: bare("split")),
        ("herd-rust-1", lambda h: h.row(h.rtt, "rust", 1)),
        ("node-rtt-1", lambda h: cluster("rtt", 1)),
        ("herd-node-1", lambda h: h.row(h.rtt, "node", 1)),
        ("node-relay-1", lambda h: cluster("relay", 1)),
        ("herd-rust-c", lambda h: h.row(h.rtt, "rust", CONC)),
        ("herd-rust-1d", lambda h: h.row(h.rtt, "rust", 1, False)),
        ("herd-rust-cd", lambda h: h.row(h.rtt, "rust", CONC, False)),
        ("node-rtt-c", lambda h: cluster("rtt", CONC)),
        ("herd-node-c", lambda h: h.row(h.rtt, "node", CONC)),
        ("node-relay-c", lambda h: cluster("relay", CONC)),
        ("herd-oneway-w", lambda h: h.row(h.oneway, WINDOW)),
        ("herd-oneway-wd", lambda h: h.row(h.oneway, WINDOW, False)),
        ("node-oneway", lambda h: cluster("oneway", 1)),
        ("herd-oneway-0", lambda h: h.row(h.oneway, 0)),
    ]
    if ONLY:
        unknown = set(ONLY) - {k for k, _ in plan}
        if unknown:
            sys.exit(f"--only: no such row {sorted(unknown)}; rows: {', '.join(k for k, _ in plan)}")
        plan = [(k, fn) for k, fn in plan if k in ONLY]
    results = {k: [] for k, _ in plan}
    h = Herd(herd_bin, examples)
    other = {}  # row key → CPU % of other processes in each run
    try:
        for run in range(RUNS):
            for key, fn in plan:
                wait_quiet()
                before, t = procs(), time.time()
                results[key].append(fn(h))
                ours = {os.getpid(), h.daemon}
                other.setdefault(key, []).append(other_cpu(before, procs(), ours, time.time() - t))
                print(f"  {time.time() - t0:5.0f} s  run {run + 1}/{RUNS} {key}: {results[key][-1]['rate']:.0f}/s "
                      f"(other processes: {other[key][-1]:.0f}% of a core)", file=sys.stderr)
    finally:
        shutil.rmtree(h.home, ignore_errors=True)

    rtt1, rttc = median(results.get("node-rtt-1", []), "rate"), median(results.get("node-rtt-c", []), "rate")
    node_oneway = median(results.get("node-oneway", []), "rate")
    bare_rate = median(results.get("bare-any", []), "rate")

    def goal(key):
        """(goal text, met?) of a row: issue #17's targets, against the medians of the same run
        (the bare ping-pong placed by the kernel, as herd's processes are; Node cluster's rows)."""
        g = {
            "herd-rust-1": [(0.8, bare_rate, "≥ 0.8× bare"), (1, rtt1, "≥ Node w↔p")],
            "herd-rust-c": [(1.5, rttc, "≥ 1.5× Node w↔p")],
            "herd-node-1": [(1, rtt1, "≥ Node w↔p")],
            "herd-node-c": [(1, rttc, "≥ Node w↔p")],
            "herd-oneway-w": [(1.5, node_oneway, "≥ 1.5× Node one-way")],
        }.get(key)
        if g is None:
            return "reference", ""
        mine = median(results[key], "rate")
        texts, verdicts = [], []
        for factor, ref, text in g:
            if ref is None:
                texts.append(f"{text} (reference row not run)")
                verdicts.append("—")
                continue
            need = factor * ref
            texts.append(f"{text} (≥ {si(need)}/s)")
            verdicts.append("yes" if mine >= need else f"NO ({mine / ref:.2f}×)")
        return "; ".join(texts), "; ".join(verdicts)

    labels = {
        "bare-any": ("bare processes, socketpair ping-pong 64 B (C), placed by the kernel", "1"),
        "bare-same": ("bare processes, socketpair ping-pong 64 B (C), both on CPU 0", "1"),
        "bare-split": ("bare processes, socketpair ping-pong 64 B (C), CPU 0 ↔ CPU 1", "1"),
        "herd-rust-1": ("herd, Rust → Rust (bus-bench → bus-echo)", "1"),
        "herd-rust-c": ("herd, Rust → Rust (bus-bench → bus-echo)", str(CONC)),
        "herd-rust-1d": ("herd, Rust → Rust, through the daemon (HERD_BUS_DIRECT=0)", "1"),
        "herd-rust-cd": ("herd, Rust → Rust, through the daemon (HERD_BUS_DIRECT=0)", str(CONC)),
        "herd-oneway-wd": (f"herd one-way {SIZE} B, Rust → Rust, receiver acks, through the daemon", f"≤ {WINDOW}"),
        "herd-node-1": ("herd, Node → Node (herd.js)", "1"),
        "herd-node-c": ("herd, Node → Node (herd.js)", str(CONC)),
        "node-rtt-1": ("Node cluster, worker ↔ primary", "1"),
        "node-rtt-c": ("Node cluster, worker ↔ primary", str(CONC)),
        "node-relay-1": ("Node cluster, worker → primary → worker", "1"),
        "node-relay-c": ("Node cluster, worker → primary → worker", str(CONC)),
        "herd-oneway-w": (f"herd one-way {SIZE} B, Rust → Rust, receiver acks", f"≤ {WINDOW}"),
        "herd-oneway-0": (f"herd one-way {SIZE} B, Rust → Rust, no flow control", "unbounded"),
        "node-oneway": (f"Node cluster one-way {SIZE} B, worker → primary", "socket backlog"),
    }
    order = ["bare-any", "bare-same", "bare-split", "herd-rust-1", "herd-rust-c", "herd-rust-1d", "herd-rust-cd", "herd-node-1",
             "herd-node-c", "node-rtt-1", "node-rtt-c", "node-relay-1", "node-relay-c", "herd-oneway-w", "herd-oneway-wd",
             "herd-oneway-0", "node-oneway"]

    print(head + "\n")
    print("| path | in flight | round trips/s or msgs/s | p50 | p99 | CPU per routed msg (herd daemon / Node primary) "
          "| peak RSS (daemon / primary) | failed or lost | goal | met? |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        rows = results.get(key)
        if not rows:
            continue
        label, inflight = labels[key]
        g, met = goal(key)
        lost = sum(r["lost"] for r in rows)
        lost_txt = str(lost)
        notes = [r["lost_note"] for r in rows if r.get("lost_note")]
        if key.startswith("herd-oneway"):
            lost_txt = f"{lost} of {sum(r['sent'] for r in rows)} sent" + (f" (last run: {notes[-1]})" if lost else "")
        elif notes:
            lost_txt += f" ({notes[0]})"
        print("| " + " | ".join([
            label,
            inflight,
            summary([r["rate"] for r in rows], si) + "/s",
            summary([r.get("p50") for r in rows], us),
            summary([r.get("p99") for r in rows], us),
            summary([r["cpu_us"] for r in rows], us),
            summary([r["rss"] for r in rows], lambda x: f"{x:.0f} MB"),
            lost_txt,
            g,
            met,
        ]) + " |")
    print(f"\nEach herd row runs on a fresh daemon; its RSS with the echo instance started, before the load: "
          f"{summary(h.idle_rss, lambda x: f'{x:.1f} MB')}. Other processes on the machine used at most "
          f"{max(max(v) for v in other.values()):.0f}% of a core during a row"
          + "".join(f"; {k}: {', '.join(f'{x:.0f}%' for x in v)}" for k, v in other.items() if max(v) >= 5)
          + ". "
          "A herd round trip is 2 routed messages (request, reply); Node's w↔p primary sends 1 per round "
          "trip, its relay 2; one-way with acks counts the acks.")
    if h.left:
        print(f"\nLEFT BEHIND after `herd kill` (killed by pid): {sorted(set(h.left))}")


if __name__ == "__main__":
    main()
