#!/usr/bin/env python3
"""herd's Prometheus endpoint: what one scrape of the whole cluster costs, and what it counts.

    python3 bench/metrics.py              # full run, about 2 minutes on 2 cores
    python3 bench/metrics.py --quick      # smoke test, short durations (never read as results)
    python3 bench/metrics.py --herd PATH  # use a herd binary built elsewhere (no herd build)
    python3 bench/metrics.py --json PATH  # also write every figure, each scrape's time too

It installs PM2 (pinned, common_helpers.PM2_VERSION) into bench/.cache/npm and prom-client
(PROM_CLIENT_VERSION) into bench/.cache/prom-client from the npm registry, never globally;
builds herd with `cargo build --release -p herd-cli --bin herd` unless --herd; runs
bench/apps/metrics.js (prom-client, found through NODE_PATH) and prints one markdown table on
stdout (progress on stderr):

1. the time of one `GET /metrics` of herd's endpoint with 2 apps × 8 instances, each instance
   exposing SERIES series (one gauge with SERIES label values; prom-client's default metrics
   off, and in a second row on), median and p99 of SCRAPES sequential scrapes after a warm-up,
   and the body size; with where the time goes: CPU of the daemon and of the instances per
   scrape, each instance's part (the scrape message's arrival to the text being ready), the
   same 16 instances exposing 1 series each (channel round trip and wake-ups) and none
   (herd's own series), and prom-client's `register.metrics()` alone in one node process;
2. the daemon's RSS and CPU idle with the endpoint off, idle with it on (nobody scraping),
   and while scraped once per second;
3. the same app (a counter of requests) with 4 instances under herd (the one line; herd's
   endpoint scraped) and under PM2's cluster mode (`pm2 start metrics.js -i 4`; the app's own
   /metrics route scraped, answered by whichever worker gets the connection): after N requests
   on fresh connections, what the request counter says in each of several scrapes.

Rules it keeps: 127.0.0.1 only; every load is bounded in count and time; each daemon gets its
own HERD_HOME / PM2_HOME (mode 0700, removed after) and is stopped by its own `kill` command,
then whatever is left of it is killed by pid; every process it starts carries HERD_BENCH_TAG
(the daemons) or BENCH_RUN (the instances: herd passes no HERD_* variable on) in its
environment, and on exit (also on error or Ctrl-C) every process still carrying the run's tag
is killed by pid and reported.
"""
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common_helpers import LEFTOVERS, NOTES, Started, alive, cmdline, cpu_busy, descendants, first_line, free_port
from common_helpers import get, kill_pids, logger, proc_table, rss_kb, tagged
import common_helpers as common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
APP = os.path.join(BENCH, "apps", "metrics.js")
CACHE = os.path.join(BENCH, ".cache")
PROM_PREFIX = os.path.join(CACHE, "prom-client")
PROM_CLIENT_VERSION = "15.1.3"  # the prom-client of the e2e tests (crates/cli/tests/e2e/common.rs)

QUICK = "--quick" in sys.argv
HERD_GIVEN = sys.argv[sys.argv.index("--herd") + 1] if "--herd" in sys.argv else None
# --json PATH: also write every figure (each scrape's time included) to PATH.
JSON_OUT = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None

APPS, INSTANCES, SERIES = 2, 8, 200  # section 1 and 2: 2 apps × 8 instances × 200 series
WARMUP = 3 if QUICK else 5
SCRAPES = 10 if QUICK else 100  # p99 of 100 is the second slowest, not the slowest
IDLE_SECS = 5 if QUICK else 30
SCRAPED_SECS = 5 if QUICK else 30
FEWER = (4, 2, 1)  # instances per app of the default-metrics row's scaling line
CMP_INSTANCES = 4
REQUESTS = 200 if QUICK else 1000
CMP_SCRAPES = 3 if QUICK else 10
TARGET_MS = 50.0
CALLS = 50 if QUICK else 300  # register.metrics() calls in a row, in one node process

RUN_TAG = f"{os.getpid()}-{int(time.time())}"
CLK = os.sysconf("SC_CLK_TCK")
NODE = shutil.which("node") or "node"

log = logger("metrics")
R = {}  # figures by name
LOADS = []  # (what, 1-min load average) samples


def loadavg(what):
    la = open("/proc/loadavg").read().split()[:3]
    LOADS.append((what, float(la[0])))
    log(f"load average {' '.join(la)} ({what})")


# --------------------------------------------------------------------------------------------
# Installing and building


def install_prom_client():
    return common.npm_install(log, "prom-client", PROM_CLIENT_VERSION, PROM_PREFIX, timeout=600)


def build():
    if HERD_GIVEN:
        return os.path.abspath(HERD_GIVEN)
    log("building herd (release)")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release", "herd")


# --------------------------------------------------------------------------------------------
# /proc


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def own_cpu():
    a = os.times()
    return a.user + a.system + a.children_user + a.children_system


def tree_ticks(pids):
    """Sum of utime+stime of these pids (those alive)."""
    table = proc_table()
    return sum(table[p][1] for p in pids if p in table)


def run_tagged():
    """Pids (other than ours) whose environment has BENCH_RUN=<this run's tag…>."""
    needle = f"BENCH_RUN={RUN_TAG}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            env = open(f"/proc/{name}/environ", "rb").read()
        except OSError:
            continue
        if any(v == needle or v.startswith(needle + b"-") for v in env.split(b"\0")) and alive(int(name)):
            found.append(int(name))
    return found


# --------------------------------------------------------------------------------------------
# HTTP


def http_get(port, path, timeout=5.0):
    """One GET on a fresh connection: (seconds from connect to the last byte, headers, body).
    Raises unless the answer is a 200."""
    t0 = time.perf_counter()
    parts = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        end = t0 + timeout
        while True:
            s.settimeout(max(end - time.perf_counter(), 0.001))
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            parts.append(chunk)
    took = time.perf_counter() - t0
    head, _, body = b"".join(parts).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head[:60])
    headers = {}
    for line in head.decode(errors="replace").split("\r\n")[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return took, headers, body.decode()


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text, name):
    """[(labels, value)] of the samples called `name` in an exposition."""
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) == name:
            out.append((dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def pids_answering(port, n, limit=60.0):
    """The pids of the first n distinct instances answering GET /pid (bounded)."""
    deadline, pids = time.time() + limit, set()
    while time.time() < deadline:
        try:
            pids.add(int(get(port, "/pid", timeout=1.0)))
            if len(pids) >= n:
                return pids
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"port {port}: {len(pids)} of {n} instances answered within {limit:.0f} s")


def timings(port, n, limit=30.0):
    """{pid: (ms of each scrape, [arrival, ready] wall clock ms of each), oldest first} from
    GET /timing, asked on fresh connections until n distinct instances answered (bounded)."""
    deadline, seen = time.time() + limit, {}
    while time.time() < deadline and len(seen) < n:
        try:
            d = json.loads(get(port, "/timing", timeout=1.0, whole=True))
            seen[d["pid"]] = (d["ms"], d["at"])
        except (OSError, ValueError):
            time.sleep(0.02)
    return seen


# --------------------------------------------------------------------------------------------
# The managers


class Manager(Started):
    count = 0

    def __init__(self, label):
        Manager.count += 1
        self.label = label
        self.tag = f"{RUN_TAG}-{Manager.count}"
        self.home = tempfile.mkdtemp(prefix="metrics-bench-home-")  # mode 0700
        os.chmod(self.home, 0o700)
        self.env = dict(os.environ, HERD_BENCH_TAG=self.tag, BENCH_RUN=self.tag, NODE_PATH=NODE_PATH)
        for k in ("HERD_METRICS", "HERD_HOME", "PM2_HOME", "BENCH_SERIES", "BENCH_DEFAULT_METRICS", "BENCH_TIMING"):
            self.env.pop(k, None)
        self.daemon = None

    def cli(self, *args, timeout=120):
        r = subprocess.run([self.bin, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"`{os.path.basename(self.bin)} {' '.join(args)}` failed ({r.returncode}): {r.stdout[-500:]} {r.stderr[-500:]}")
        return r

    def instances(self):
        return sorted(descendants([self.daemon]) - {self.daemon}) if self.daemon else []

    def stop(self):
        self.forget()
        try:
            self.cli("kill", timeout=60)
        except Exception as e:  # noqa: BLE001 - the sweep below still runs
            NOTES.append(f"{self.label}: `kill` failed: {e}")
        if self.daemon:
            deadline = time.time() + 5
            while time.time() < deadline and alive(self.daemon):
                time.sleep(0.02)
        deadline = time.time() + 5
        while time.time() < deadline and (tagged(self.tag) or run_tagged_of(self.tag)):
            time.sleep(0.05)
        left = sorted(set(tagged(self.tag)) | set(run_tagged_of(self.tag)))
        for pid in left:
            LEFTOVERS.append(f"{self.label}: pid {pid} `{cmdline(pid)}` still alive 5 s after `kill`")
        kill_pids(left)
        shutil.rmtree(self.home, ignore_errors=True)


def run_tagged_of(tag):
    needle = f"BENCH_RUN={tag}".encode()
    found = []
    for pid in run_tagged():
        try:
            if needle in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                found.append(pid)
        except OSError:
            pass
    return found


class Herd(Manager):
    def __init__(self, metrics_port=None):
        super().__init__("herd" + (" (endpoint on)" if metrics_port else " (endpoint off)"))
        self.bin = HERD_BIN
        self.env["HERD_HOME"] = self.home
        self.metrics_port = metrics_port
        if metrics_port:
            self.env["HERD_METRICS"] = f"127.0.0.1:{metrics_port}"

    def start(self):
        self.cli("ping")
        self.daemon = int(open(os.path.join(self.home, "daemon.lock")).read().strip())

    def app(self, name, n, port, **env):
        args = ["start", APP, "--name", name, "-i", str(n), "--listen", f"127.0.0.1:{port}"]
        for k, v in env.items():
            args += ["--env", f"{k}={v}"]
        self.cli(*args)
        return pids_answering(port, n)

    def delete(self, name):
        self.cli("delete", name)

    def scrape(self):
        return http_get(self.metrics_port, "/metrics")


class PM2(Manager):
    def __init__(self):
        super().__init__("PM2")
        self.bin = PM2_BIN
        self.env["PM2_HOME"] = self.home

    def start(self):
        pass

    def app(self, name, n, port, **env):
        self.cli("start", APP, "--name", name, "-i", str(n), env={k: str(v) for k, v in dict(env, PORT=port).items()})
        if self.daemon is None:
            self.daemon = int(open(os.path.join(self.home, "pm2.pid")).read().strip())
        return pids_answering(port, n)

    def cli(self, *args, timeout=120, env=None):
        saved = self.env
        if env:
            self.env = dict(self.env, **env)
        try:
            return super().cli(*args, timeout=timeout)
        finally:
            self.env = saved


# --------------------------------------------------------------------------------------------
# Measurements


def quiet_window(daemon, secs, scrape=None):
    """Daemon CPU (s) and the instances' CPU (s) over `secs`; with scrape, one scrape a second
    (their times, ms). RSS (MB) of the daemon before and after."""
    inst = descendants([daemon]) - {daemon}
    rss0 = rss_kb(daemon) / 1024
    c0, i0, t0 = ticks(daemon), tree_ticks(inst), time.time()
    took = []
    k = 0
    while time.time() - t0 < secs:
        if scrape:
            took.append(scrape()[0] * 1000)
            k += 1
            time.sleep(max(0.0, t0 + k - time.time()))
        else:
            time.sleep(max(0.0, min(1.0, secs - (time.time() - t0))))
    dt = time.time() - t0
    return {
        "cpu": (ticks(daemon) - c0) / CLK,
        "inst_cpu": (tree_ticks(inst) - i0) / CLK,
        "secs": dt,
        "rss0": rss0,
        "rss": rss_kb(daemon) / 1024,
        "scrapes": took,
    }


def p99(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(0.99 * (len(v) - 1))))]


def scrape_series(h, ports, label, n=INSTANCES):
    """WARMUP scrapes, then SCRAPES timed ones: times, body size, CPU per scrape of the daemon
    and of the instances, and (BENCH_TIMING) each instance's time of its part."""
    for _ in range(WARMUP):
        h.scrape()
    inst = set(h.instances())
    busy0, own0, w0 = cpu_busy()[0], own_cpu(), time.time()
    c0, i0 = ticks(h.daemon), tree_ticks(inst)
    took, sizes, starts = [], [], []
    body = ""
    for _ in range(SCRAPES):
        starts.append(time.time() * 1000)
        t, _, body = h.scrape()
        took.append(t * 1000)
        sizes.append(len(body.encode()))
    d_cpu = (ticks(h.daemon) - c0) / CLK
    i_cpu = (tree_ticks(inst) - i0) / CLK
    # CPU of other programs (the shared machine) during the timed scrapes, in cores.
    other = ((cpu_busy()[0] - busy0) / CLK - d_cpu - i_cpu - (own_cpu() - own0)) / (time.time() - w0)
    d_cpu, i_cpu = d_cpu / SCRAPES * 1000, i_cpu / SCRAPES * 1000
    per_instance = {}
    for port in ports:
        per_instance.update(timings(port, n))
    # The k-th scrape from the end is the k-th from the end in every instance.
    slowest, sums, arrive, ready = [], [], [], []
    lists = [(v[-SCRAPES:], a[-SCRAPES:]) for v, a in per_instance.values() if len(v) >= SCRAPES]
    for k in range(SCRAPES if lists else 0):
        slowest.append(max(v[k] for v, _ in lists))
        sums.append(sum(v[k] for v, _ in lists))
        # From the start of the request: the last instance to see the scrape, the last text.
        arrive.append(max(a[k][0] for _, a in lists) - starts[k])
        ready.append(max(a[k][1] for _, a in lists) - starts[k])
    series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
    answered = {(lb.get("app"), lb.get("instance")) for lb, _ in samples(body, "app_requests_total")}
    herd_lines = sum(1 for line in body.splitlines() if line.startswith("herd_"))
    r = {
        "took": took,
        "slowest": slowest,
        "arrive": arrive,
        "ready": ready,
        "phases": phases(took, arrive, ready),
        "median": statistics.median(took),
        "p99": p99(took),
        "min": min(took),
        "max": max(took),
        "size": statistics.median(sizes),
        "series": series,
        "herd_series": herd_lines - sum(1 for line in body.splitlines() if line.startswith("# ") and " herd_" in line),
        "answered": len(answered),
        "daemon_cpu_ms": d_cpu,
        "inst_cpu_ms": i_cpu,
        "node_slowest": statistics.median(slowest) if slowest else None,
        "node_slowest_p99": p99(slowest) if slowest else None,
        "node_sum": statistics.median(sums) if sums else None,
        "node_n": len(lists),
        "other": max(other, 0.0),
    }
    log(f"{label}: median {r['median']:.1f} ms, p99 {r['p99']:.1f} ms, {r['size'] / 1024:.0f} KiB, "
        f"{r['series']} samples, {r['answered']} instances in it; daemon {d_cpu:.2f} ms CPU/scrape, "
        f"instances {i_cpu:.1f} ms CPU/scrape; slowest instance {r['node_slowest'] or 0:.1f} ms")
    return r


def phases(took, arrive, ready):
    """Median and p99 of each phase of a scrape, and the same for the slowest tenth of the
    scrapes: until the last instance saw the scrape message, from then until the last text was
    ready, and from then to the answer's last byte (replies, merge, HTTP)."""
    if not arrive:
        return None
    rows = [(t, a, r - a, t - r) for t, a, r in zip(took, arrive, ready)]

    def agg(rs):
        return {k: (statistics.median(v), p99(v)) for k, v in zip(("total", "arrive", "render", "after"), zip(*rs))}

    slow = sorted(rows, reverse=True)[: max(1, len(rows) // 10)]
    return {"all": agg(rows), "slowest_tenth": agg(slow)}


def start_apps(h, n=INSTANCES, **env):
    """APPS apps m0, m1… of n instances each (env overrides BENCH_SERIES=SERIES,
    BENCH_TIMING=1); their ports."""
    ports = [free_port() for _ in range(APPS)]
    env = dict({"BENCH_SERIES": SERIES, "BENCH_TIMING": 1}, **env)
    for a, port in enumerate(ports):
        h.app(f"m{a}", n, port, **env)
    return ports


def restart_apps(h, n=INSTANCES, **env):
    for a in range(APPS):
        h.delete(f"m{a}")
    return start_apps(h, n, **env)


NODE_MICRO = r"""
const client = require('prom-client');
if (process.env.BENCH_DEFAULT_METRICS === '1') client.collectDefaultMetrics();
new client.Counter({ name: 'app_requests_total', help: 'Requests served' });
const g = new client.Gauge({ name: 'bench_series', help: 'Series for the benchmark', labelNames: ['n'] });
for (let i = 0; i < Number(process.env.BENCH_SERIES); i++) g.set({ n: String(i) }, i);
(async () => {
  const n = Number(process.env.CALLS), t = [];
  let text = '';
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const s = process.hrtime.bigint();
    text = await client.register.metrics();
    t.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  const c = process.cpuUsage(c0);
  const s = process.hrtime.bigint();
  for (let i = 0; i < 100; i++) JSON.stringify({ herd: 'metrics', reply_to: i, text });
  const json = Number(process.hrtime.bigint() - s) / 1e6 / 100;
  const first = t[0];
  t.sort((a, b) => a - b);
  const mean = t.reduce((a, b) => a + b, 0) / n;
  console.log(JSON.stringify({ first, mean, median: t[n >> 1], cpu: (c.user + c.system) / 1000 / n, json, bytes: text.length }));
})();
"""


def node_micro(default):
    """register.metrics() of the bench app's registry in one node process, CALLS calls in a
    row: the first call's time, the median, CPU per call (ms) and JSON.stringify of the reply."""
    env = dict(os.environ, NODE_PATH=NODE_PATH, BENCH_SERIES=str(SERIES), CALLS=str(CALLS),
               BENCH_DEFAULT_METRICS="1" if default else "0", BENCH_RUN=RUN_TAG)
    r = subprocess.run([NODE, "-e", NODE_MICRO], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(r.stdout)


def wait_all_offered(h, n_each=INSTANCES, limit=30.0):
    """Until one scrape has every instance's series (bounded); the number it had."""
    deadline, n = time.time() + limit, 0
    while time.time() < deadline:
        _, _, body = h.scrape()
        n = len({(lb.get("app"), lb.get("instance")) for lb, _ in samples(body, "app_requests_total")})
        if n >= APPS * n_each:
            return n
        time.sleep(0.2)
    NOTES.append(f"only {n} of {APPS * n_each} instances' series were in a scrape after {limit:.0f} s")
    return n


def section_off():
    log(f"endpoint off: {APPS} apps × {INSTANCES} instances, {IDLE_SECS} s idle")
    with Herd() as h:
        start_apps(h)
        time.sleep(3)
        loadavg("endpoint off, idle")
        R["off"] = quiet_window(h.daemon, IDLE_SECS)
        R["off"]["instances"] = len(h.instances())


def section_on():
    log(f"endpoint on: {APPS} apps × {INSTANCES} instances, {IDLE_SECS} s idle, {SCRAPED_SECS} s scraped 1/s, "
        f"then {SCRAPES} scrapes ×3 variants")
    with Herd(free_port()) as h:
        ports = start_apps(h)
        time.sleep(3)
        loadavg("endpoint on, idle")
        R["on"] = quiet_window(h.daemon, IDLE_SECS)
        R["on"]["instances"] = len(h.instances())
        R["offered"] = wait_all_offered(h)
        loadavg("endpoint on, scraped 1/s")
        R["scraped"] = quiet_window(h.daemon, SCRAPED_SECS, scrape=h.scrape)
        loadavg("scrape times")
        R["s200"] = scrape_series(h, ports, f"{SERIES} series, no default metrics")
        R["rss_after"] = rss_kb(h.daemon) / 1024
        # Variant: prom-client's default metrics on too.
        ports = restart_apps(h, BENCH_DEFAULT_METRICS=1)
        wait_all_offered(h)
        loadavg("scrape times, default metrics")
        R["sdef"] = scrape_series(h, ports, f"{SERIES} series + default metrics")
        # The same with fewer instances: how the time grows with instances per core.
        for n in FEWER:
            ports = restart_apps(h, n, BENCH_DEFAULT_METRICS=1)
            wait_all_offered(h, n)
            loadavg(f"scrape times, default metrics, {APPS} apps × {n}")
            R[f"sdef{n}"] = scrape_series(h, ports, f"{SERIES} series + default metrics, {APPS} apps × {n}", n)
        # Where the time goes: every instance exposing 1 series (the channel round trip and
        # the wake-ups of 16 processes, next to nothing to render or merge) …
        ports = restart_apps(h, BENCH_SERIES=0)
        wait_all_offered(h)
        loadavg("scrape times, 1 series each")
        R["s1"] = scrape_series(h, ports, "1 series each")
        # … and none of them exposing (herd's own series only).
        ports = restart_apps(h, BENCH_EXPOSE=0)
        time.sleep(1)
        loadavg("scrape times, herd's own series only")
        R["sown"] = scrape_series(h, [], "herd's own series only")
        R["rss_end"] = rss_kb(h.daemon) / 1024
    loadavg("register.metrics() alone")
    R["micro"] = node_micro(False)
    R["micro_def"] = node_micro(True)
    log(f"register.metrics() alone: {R['micro']}; with default metrics: {R['micro_def']}")


def count_requests(port, n):
    """n GETs / on fresh connections; {pid: answered}."""
    by_pid = {}
    for _ in range(n):
        body = get(port, "/", timeout=5.0)
        pid = int(body.split()[1])
        by_pid[pid] = by_pid.get(pid, 0) + 1
    return by_pid


def section_compare():
    log(f"compare: {CMP_INSTANCES} instances, {REQUESTS} requests, {CMP_SCRAPES} scrapes, herd then PM2")
    out = {}
    loadavg("comparison")
    with Herd(free_port()) as h:
        port = free_port()
        h.app("prom", CMP_INSTANCES, port, BENCH_SERIES=0)
        spread = count_requests(port, REQUESTS)
        counted = []
        for _ in range(CMP_SCRAPES):
            _, _, body = h.scrape()
            s = [v for lb, v in samples(body, "app_requests_total") if lb.get("app") == "prom"]
            counted.append((sum(s), len(s)))
        out["herd"] = {"spread": spread, "counted": counted}
    with PM2() as p:
        port = free_port()
        p.app("prom", CMP_INSTANCES, port, BENCH_SERIES=0)
        spread = count_requests(port, REQUESTS)
        counted = []
        for _ in range(CMP_SCRAPES):
            _, headers, body = http_get(port, "/metrics")
            s = [v for _, v in samples(body, "app_requests_total")]
            counted.append((sum(s), headers.get("x-pid")))
        out["pm2"] = {"spread": spread, "counted": counted}
    for k, v in out.items():
        log(f"{k}: requests per instance {sorted(v['spread'].values())}, scrapes counted {[c for c, _ in v['counted']]}")
    R["cmp"] = out


# --------------------------------------------------------------------------------------------
# The table


def main():
    global HERD_BIN, PM2_BIN, NODE_PATH
    started = time.time()
    NODE_PATH = install_prom_client()
    PM2_BIN = common.install_pm2(log, timeout=600)
    HERD_BIN = build()
    herdv = first_line([HERD_BIN, "--version"]).replace("herd ", "")
    if HERD_GIVEN:
        herdv += f" ({HERD_BIN})"
    else:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
        herdv += f" (built from the working tree, {r.stdout.strip() or '?'})"
    setup = time.time() - started
    t0 = time.time()
    try:
        section_off()
        section_on()
        section_compare()
    finally:
        common.finish(RUN_TAG, log)
        left = run_tagged()
        for pid in left:
            LEFTOVERS.append(f"pid {pid} `{cmdline(pid)}` still alive at the end")
        kill_pids(left)
    if JSON_OUT:
        with open(JSON_OUT, "w") as f:
            json.dump({"figures": R, "loads": LOADS}, f, indent=1)
    print_table(herdv, time.time() - t0, setup)


def autogroup():
    try:
        return {"1": "on", "0": "off"}.get(open(common.AUTOGROUP).read().strip(), "?")
    except OSError:
        return "not available"


def print_table(herdv, took, setup):
    rows = []

    def verdict(bad):
        return "yes" if not bad else "NO: " + "; ".join(bad)

    def scrape_row(key, what):
        r = R[key]
        bad = []
        if r["median"] > TARGET_MS:
            bad.append(f"median {r['median']:.0f} ms")
        if r["p99"] > TARGET_MS:
            bad.append(f"p99 {r['p99']:.0f} ms")
        rows.append([what,
                     f"median **{r['median']:.1f} ms**, p99 {r['p99']:.1f} ms (min {r['min']:.1f}, max {r['max']:.1f}); "
                     f"body {r['size'] / 1024:.0f} KiB, {r['series']} samples from {r['answered']} instances",
                     "—", f"≤ {TARGET_MS:.0f} ms", verdict(bad)])
        node = (f"slowest instance's part {r['node_slowest']:.1f} ms median (p99 {r['node_slowest_p99']:.1f}), "
                f"all {r['node_n']} instances' parts summed {r['node_sum']:.1f} ms"
                if r["node_slowest"] is not None else "")
        rows.append(["… where the time goes", f"CPU per scrape: daemon {r['daemon_cpu_ms']:.2f} ms, the {APPS * INSTANCES} "
                     f"instances {r['inst_cpu_ms']:.1f} ms together; {node}; other programs used {r['other']:.2f} "
                     f"of the {os.cpu_count()} cores meanwhile", "—", "", ""])
        ph = r["phases"]
        if ph:
            a, s = ph["all"], ph["slowest_tenth"]

            def f(k):
                return f"{a[k][0]:.1f} ms / {s[k][0]:.1f} ms"

            rows.append(["… each scrape's phases, median of all / median of the slowest tenth",
                         f"total {f('total')}: until the last instance saw the scrape message (request, fan-out, "
                         f"wake-ups) {f('arrive')}; then until the last instance's text was ready {f('render')}; then "
                         f"to the answer's last byte (last replies, merge, HTTP) {f('after')}", "—", "", ""])

    n = APPS * INSTANCES
    scrape_row("s200", f"scrape of herd's /metrics, {APPS} apps × {INSTANCES} instances × {SERIES} series "
                       f"(one gauge, {SERIES} label values; no default metrics), {SCRAPES} sequential scrapes after {WARMUP}")
    scrape_row("sdef", f"the same with prom-client's default metrics on in every instance")
    rows.append([f"… the default-metrics scrape with {APPS} apps × " + " / ".join(str(n) for n in FEWER) +
                 " instances: median (p99)",
                 " / ".join(f"{R[f'sdef{n}']['median']:.1f} ({R[f'sdef{n}']['p99']:.0f}) ms" for n in FEWER) +
                 "; CPU per scrape of the instances " + " / ".join(f"{R[f'sdef{n}']['inst_cpu_ms']:.1f}" for n in FEWER) +
                 " ms, of the daemon " + " / ".join(f"{R[f'sdef{n}']['daemon_cpu_ms']:.1f}" for n in FEWER) + " ms",
                 "—", "", ""])
    o = R["s1"]
    rows.append([f"… the same {n} instances exposing 1 series each (the channel round trip and {n} wake-ups, "
                 "next to nothing to render or merge)",
                 f"median {o['median']:.1f} ms, p99 {o['p99']:.1f} ms; body {o['size'] / 1024:.0f} KiB; CPU per scrape: "
                 f"daemon {o['daemon_cpu_ms']:.2f} ms, instances {o['inst_cpu_ms']:.1f} ms", "—", "", ""])
    o = R["sown"]
    rows.append([f"… the same {n} instances not exposing (herd's own series only)",
                 f"median {o['median']:.1f} ms, p99 {o['p99']:.1f} ms; body {o['size'] / 1024:.0f} KiB; daemon "
                 f"{o['daemon_cpu_ms']:.2f} ms CPU per scrape", "—", "", ""])
    for key, what in (("micro", "no default metrics"), ("micro_def", "with default metrics")):
        m = R[key]
        rows.append([f"… prom-client's `register.metrics()` alone, one node process, {SERIES} series, {what}",
                     f"{m['median']:.2f} ms median, {m['mean']:.2f} ms mean per call, {CALLS} calls in a row ({m['cpu']:.2f} ms CPU "
                     f"per call, V8's helper threads included; the first call "
                     f"{m['first']:.1f} ms), {m['bytes'] / 1024:.0f} KiB; JSON.stringify of herd's reply "
                     f"{m['json']:.3f} ms", "—", "", ""])

    off, on, sc = R["off"], R["on"], R["scraped"]
    d_rss = on["rss"] - off["rss"]
    bad = []
    if on["cpu"] > off["cpu"] + 0.011:
        bad.append(f"CPU {on['cpu']:.2f} s vs {off['cpu']:.2f} s")
    if d_rss > 1.0:
        bad.append(f"RSS +{d_rss:.1f} MB")
    rows.append([f"daemon idle {IDLE_SECS} s, endpoint off ({off['instances']} instances)",
                 f"RSS {off['rss']:.1f} MB; CPU {off['cpu']:.2f} s", "—", "", ""])
    rows.append([f"daemon idle {IDLE_SECS} s, endpoint on, nobody scraping",
                 f"RSS {on['rss']:.1f} MB ({d_rss:+.1f} MB vs off); CPU {on['cpu']:.2f} s (the {on['instances']} "
                 f"instances {on['inst_cpu']:.2f} s; endpoint off: {off['inst_cpu']:.2f} s)", "—",
                 "idle figures unchanged (CPU, RSS ± 1 MB)", verdict(bad)])
    per = sc["cpu"] / max(len(sc["scrapes"]), 1) * 1000
    rows.append([f"daemon scraped once per second for {SCRAPED_SECS} s ({len(sc['scrapes'])} scrapes)",
                 f"RSS {sc['rss0']:.1f} → {sc['rss']:.1f} MB; CPU {sc['cpu']:.2f} s ({sc['cpu'] / sc['secs'] * 100:.2f} % of a core, "
                 f"{per:.1f} ms per scrape); instances {sc['inst_cpu']:.2f} s; scrape median "
                 f"{statistics.median(sc['scrapes']):.1f} ms, max {max(sc['scrapes']):.1f} ms", "—", "", ""])
    rows.append([f"daemon RSS after the first timed scrapes, and at the end (after {3 + len(FEWER)} more app sets and "
                 f"{(3 + len(FEWER)) * (SCRAPES + WARMUP)} more timed or warm-up scrapes)", f"{R['rss_after']:.1f} MB, {R['rss_end']:.1f} MB", "—", "", ""])

    c = R["cmp"]

    def counted(sysname):
        v = [x for x, _ in c[sysname]["counted"]]
        return (f"**{statistics.median(v):.0f}** of {REQUESTS} (min {min(v):.0f}, max {max(v):.0f}; "
                f"{', '.join(f'{x:.0f}' for x in v)})")

    hv = [x for x, _ in c["herd"]["counted"]]
    pv = [x for x, _ in c["pm2"]["counted"]]
    pm2_pids = sorted({p for _, p in c["pm2"]["counted"]})
    bad = [] if all(x == REQUESTS for x in hv) else [f"herd counted {sorted(set(hv))}"]
    rows.append([f"requests counted by one scrape, of N = {REQUESTS} ({CMP_INSTANCES} instances, {REQUESTS} GET / on fresh "
                 f"connections, then {CMP_SCRAPES} scrapes): herd's /metrics summed over instances vs PM2 cluster's app /metrics",
                 counted("herd"), counted("pm2") + f"; answered by {len(pm2_pids)} different workers",
                 f"herd = N every scrape; PM2 ≈ N/{CMP_INSTANCES}", verdict(bad)])
    rows.append(["… how the manager spread the N requests over the instances",
                 " / ".join(str(x) for x in sorted(c["herd"]["spread"].values(), reverse=True)),
                 " / ".join(str(x) for x in sorted(c["pm2"]["spread"].values(), reverse=True)), "", ""])

    mode = ("QUICK smoke run: short durations, few scrapes — do not read these numbers as results"
            if QUICK else "full run")
    loads = [x for _, x in LOADS]
    print(f"herd metrics-endpoint benchmark — {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}; node {first_line([NODE, '--version'])}, prom-client {PROM_CLIENT_VERSION}, "
          f"pm2 {common.PM2_VERSION}, herd {herdv}; {mode}; measuring took {took / 60:.1f} min "
          f"(installing and building before it {setup / 60:.1f} min); scheduler autogroup {autogroup()} (left as it "
          f"was); 1-min load average during the run "
          f"{min(loads):.2f}–{max(loads):.2f}.\n")
    print("| figure | herd | PM2 ×4 (cluster mode) | target | met? |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(f"- scrape time: from connect to the last byte of `GET /metrics` on a fresh connection (Python client on the "
          f"same machine); \"an instance's part\": in the instance, from the scrape message's arrival to "
          f"`register.metrics()`'s text being ready (bench/apps/metrics.js, BENCH_TIMING); CPU per scrape from /proc "
          f"(utime+stime, 10 ms ticks) over the {SCRAPES} scrapes.")
    print("- load average (1 min) at each step: " + ", ".join(f"{w} {x:.2f}" for w, x in LOADS))
    for n_ in NOTES:
        print(f"- note: {n_}")
    common.print_leftovers()


if __name__ == "__main__":
    common.run(main)
