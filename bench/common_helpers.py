"""Helpers shared by the benchmark scripts (compare.py, update.py): installing wrk and PM2,
/proc, the kernel's scheduler autogroup, a free port, one GET, wrk's output, and stopping
whatever a run started. Python standard library only; importing it starts nothing.

The lists NOTES (problems seen, printed under a table), LEFTOVERS (processes that had to be
killed by pid) and ACTIVE (what was started and not yet stopped) belong to the one script
that runs; the scripts use them under their own names (`NOTES = common_helpers.NOTES`).
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "bench", ".cache")
PM2_VERSION = "7.0.4"  # the PM2 every script measures, installed into bench/.cache/npm

NOTES = []
LEFTOVERS = []
ACTIVE = []


def logger(name):
    """A log function writing `[name] msg` lines on stderr."""

    def log(msg):
        print(f"[{name}] {msg}", file=sys.stderr, flush=True)

    return log


# --------------------------------------------------------------------------------------------
# Installing


def ensure_wrk(log):
    """wrk's path; installs Debian's package when it is missing (root only, with a note)."""
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if os.geteuid() != 0:
        sys.exit("wrk is missing: install it with `sudo apt-get install -y wrk` (Debian package)")
    log("wrk is missing: installing Debian's package with `apt-get install -y wrk` (running as root)")
    NOTES.append("wrk was installed by this run with `apt-get install -y wrk` (as root).")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(["apt-get", "install", "-y", "wrk"], env=env, capture_output=True, check=True)
    return shutil.which("wrk") or sys.exit("wrk still missing after apt-get install")


def npm_install(log, name, version, prefix, timeout=None):
    """Installs `name@version` from the npm registry into `prefix` (never globally) unless that
    version is there; returns `prefix/node_modules`. Raises when `npm install` fails."""
    pkg = os.path.join(prefix, "node_modules", name, "package.json")
    try:
        have = json.load(open(pkg))["version"]
    except (OSError, ValueError, KeyError):
        have = None
    if have != version:
        log(f"installing {name}@{version} from the npm registry into {os.path.relpath(prefix, ROOT)}")
        os.makedirs(prefix, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", prefix, f"{name}@{version}", "--no-audit", "--no-fund", "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=timeout,
        )
    return os.path.join(prefix, "node_modules")


def install_pm2(log, timeout=None):
    """PM2's bin from bench/.cache/npm, installed there from the npm registry (pinned
    PM2_VERSION, never globally) when missing; raises when `npm install` fails."""
    modules = npm_install(log, "pm2", PM2_VERSION, os.path.join(CACHE, "npm"), timeout)
    return os.path.join(modules, "pm2", "bin", "pm2")


def first_line(argv):
    """The first line a command prints (stdout, then stderr), or "?"."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


# --------------------------------------------------------------------------------------------
# /proc


def proc_table():
    """{pid: (ppid, utime+stime ticks, starttime)} of every process but zombies."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":  # a zombie is not running; its parent (often pid 1) reaps it later
            table[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19]))
    return table


def descendants(roots, table=None):
    """The pids of roots (those alive) and of all their descendants."""
    table = table or proc_table()
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in table]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo.extend(kids.get(p, []))
    return seen


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_kb(pid):
    """VmRSS of pid in kB (0 when it has none); raises OSError when pid is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cmdline(pid):
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def tagged(tag):
    """Pids (other than ours) whose environment carries HERD_BENCH_TAG=tag (or a tag under it)."""
    needle = f"HERD_BENCH_TAG={tag}".encode()
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


def kill_pids(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def cpu_busy():
    """Busy and steal ticks of the whole machine since boot, from /proc/stat."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq, steal


# --------------------------------------------------------------------------------------------
# The kernel's scheduler autogroup

AUTOGROUP = "/proc/sys/kernel/sched_autogroup_enabled"
AUTOGROUP_SAVED = None
AUTOGROUP_KEPT = "on (kept by --autogroup)"
AUTOGROUP_NOT_ROOT = "on (not root, could not switch it off)"


def autogroup_off(keep=False):
    """With autogroup on, the kernel shares CPU between sessions, not threads: herd starts
    every instance in its own session, PM2 and Node's cluster keep all workers in one. Switches
    it off (root only) until autogroup_restore(), unless keep; returns the state, for the table."""
    global AUTOGROUP_SAVED
    try:
        cur = open(AUTOGROUP).read().strip()
    except OSError:
        return "not available"
    if cur != "1":
        return "off"
    if keep:
        return AUTOGROUP_KEPT
    if os.geteuid() != 0:
        return AUTOGROUP_NOT_ROOT
    with open(AUTOGROUP, "w") as f:
        f.write("0")
    AUTOGROUP_SAVED = cur
    return "switched off for the run (restored at the end)"


def autogroup_restore():
    global AUTOGROUP_SAVED
    if AUTOGROUP_SAVED is not None:
        with open(AUTOGROUP, "w") as f:
            f.write(AUTOGROUP_SAVED)
        AUTOGROUP_SAVED = None


# --------------------------------------------------------------------------------------------
# HTTP and wrk


def free_port():
    while True:
        port = random.randint(20000, 32000)  # below the ephemeral range wrk's connections use
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()


def get(port, path="/", timeout=2.0, whole=False):
    """One GET on a fresh connection to 127.0.0.1; returns the body of a 200 answer, raises
    otherwise. `timeout` bounds each connect and read; with whole=True, the exchange in all."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
        data = b""
        end = time.perf_counter() + timeout
        while True:
            if whole:
                s.settimeout(max(end - time.perf_counter(), 0.001))
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head[:40])
    return body.decode()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(out):
    """The figures in the output of `wrk --latency`: requests, rps, p99 and max (ms, max None
    when missing), sock (connect, read, write, timeout errors), sock_text, non2xx. None when
    requests, req/s or p99 are missing."""
    reqs = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(\w+)", out, re.M)
    if not (reqs and rps and p99):
        return None
    lat = re.search(r"Latency\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(reqs.group(1)),
        "rps": float(rps.group(1)),
        "p99": float(p99.group(1)) * UNITS[p99.group(2)],
        "max": float(lat.group(5)) * UNITS[lat.group(6)] if lat else None,
        "sock": tuple(int(x) for x in sock.groups()) if sock else (0, 0, 0, 0),
        "sock_text": sock.group(0) if sock else "",
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def ms(x):
    return f"{x:.2f} ms" if x < 10 else f"{x:.0f} ms"


# --------------------------------------------------------------------------------------------
# Starting and stopping


class Started:
    """Something a run starts (start()) and stops (stop(), which calls forget() first), used
    as `with X(...) as x:`. While started it is in ACTIVE, so that finish() stops it too."""

    def __enter__(self):
        ACTIVE.append(self)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def forget(self):
        if self in ACTIVE:
            ACTIVE.remove(self)


def finish(run_tag, log):
    """The end of a run (also on error or Ctrl-C): stops whatever is still started, kills by
    pid every process still carrying the run's tag (each one a LEFTOVER), restores autogroup."""
    for s in list(ACTIVE):
        s.stop()
    left = tagged(run_tag)
    for pid in left:
        LEFTOVERS.append(f"pid {pid} `{cmdline(pid)}` still alive at the end")
    kill_pids(left)
    autogroup_restore()
    for x in LEFTOVERS:
        log(f"LEFTOVER (killed by pid): {x}")


def print_leftovers():
    """The last lines under a table: every LEFTOVER, or that there was none."""
    if LEFTOVERS:
        for x in LEFTOVERS:
            print(f"- LEFTOVER (killed by pid): {x}")
    else:
        print("- no process was left behind: after every stop, no process with this run's tag was alive.")


def _interrupt(*_):
    raise KeyboardInterrupt


def run(main):
    """Runs main with SIGTERM turned into KeyboardInterrupt (so its finally blocks stop
    everything); exits 130 when interrupted."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        sys.exit(130)
