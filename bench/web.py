#!/usr/bin/env python3
"""What watching costs the daemon: its CPU and memory while nobody looks, while `herd web` runs
with no page open, while a dashboard page is open (the page's two streams: the state every
second and the log tail), and while `herd monit` is open too; and how fast the dashboard
answers (its page, and its first state event).

    python3 bench/web.py            # 10 s windows, 20 timed requests (about 1 minute)
    python3 bench/web.py --quick    # 3 s windows, 5 requests (a smoke test, not results)

The "page" is what the browser keeps open, read by this script: /api/events and
/api/logs?app=all, with the session cookie the printed token gives (the browser test in
crates/cli/tests/e2e/web.rs drives the real page in Chromium). herd runs from a release build
with a private HERD_HOME, one app of 4 instances of the Rust `hello` example on 127.0.0.1;
`herd monit` runs in a private tmux server (as bench/monit.py). Everything is stopped at the
end, by pid (`herd web`) or by herd itself (`herd kill`, `tmux kill-server`).
"""
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common_helpers import free_port
from monit import Tmux, build, cpu_ticks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
WINDOW = 3 if QUICK else 10
TIMED = 5 if QUICK else 20
TICK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Stream(threading.Thread):
    """Reads a server-sent event stream until closed; counts its events."""

    def __init__(self, host, port, path, cookie):
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.conn.request("GET", path, headers={"Cookie": cookie})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, (path, self.resp.status)
        self.events = 0
        self.start()

    def run(self):
        try:
            for line in self.resp:
                if line.startswith(b"event:"):
                    self.events += 1
        except Exception:
            pass

    def close(self):
        try:
            self.conn.sock.shutdown(2)
        except Exception:
            pass
        self.conn.close()


def main():
    herd, hello = build()
    base = tempfile.mkdtemp(prefix="herd-bench-web-")
    home = os.path.join(base, "home")
    env = dict(os.environ, HERD_HOME=home)
    tmux = None
    web = None

    def h(*args):
        return subprocess.run([herd, *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=30)

    rows = []
    try:
        h("start", hello, "--name", "rust", "-i", "4", "--listen", f"127.0.0.1:{free_port()}")
        time.sleep(1)
        daemon = int(open(os.path.join(home, "daemon.lock")).read().strip())

        def window(label, extra=None):
            c0 = cpu_ticks(daemon)
            w0 = cpu_ticks(extra) if extra else 0
            time.sleep(WINDOW)
            cpu = (cpu_ticks(daemon) - c0) / TICK
            row = [label, f"{cpu / WINDOW * 100:.2f}%", f"{rss_kib(daemon) / 1024:.1f} MiB"]
            if extra:
                row += [f"{(cpu_ticks(extra) - w0) / TICK / WINDOW * 100:.2f}%", f"{rss_kib(extra) / 1024:.1f} MiB"]
            else:
                row += ["—", "—"]
            rows.append(row)

        window("nobody looks")
        web = subprocess.Popen([herd, "web", "--listen", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
        url = re.search(r"http://\S+", web.stdout.readline()).group(0)
        hostport, token = url[len("http://"):].split("/?token=")
        host, port = hostport.split(":")
        port = int(port)
        window("`herd web` running, no page open", web.pid)

        c = http.client.HTTPConnection(host, port, timeout=10)
        c.request("GET", f"/?token={token}")
        r = c.getresponse()
        r.read()
        cookie = r.getheader("Set-Cookie").split(";")[0]
        c.close()

        # How fast it answers: the page, and the first state of a new event stream.
        page, first = [], []
        for _ in range(TIMED):
            t0 = time.perf_counter()
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/", headers={"Cookie": cookie})
            c.getresponse().read()
            page.append(time.perf_counter() - t0)
            c.close()
            t0 = time.perf_counter()
            c = http.client.HTTPConnection(host, port, timeout=10)
            c.request("GET", "/api/events", headers={"Cookie": cookie})
            resp = c.getresponse()
            for line in resp:
                if line.startswith(b"data:"):
                    break
            first.append(time.perf_counter() - t0)
            c.sock.shutdown(2)
            c.close()

        streams = [Stream(host, port, "/api/events", cookie), Stream(host, port, "/api/logs?app=all", cookie)]
        window("a dashboard page open (state every second, log tail)", web.pid)
        events = streams[0].events

        tmux = Tmux(base)
        tmux.time_to(f"HERD_HOME='{home}' exec '{herd}' monit", lambda s: "q quit" in s)
        window("the page and `herd monit` open", web.pid)
        tmux.run("send-keys", "-t", "bench", "q")
        time.sleep(0.3)
        tmux.close()
        for s in streams:
            s.close()
        time.sleep(1.5)
        window("page closed again, `herd web` still running", web.pid)

        ms = lambda xs: f"{statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"
        print(f"herd daemon and dashboard cost ({'QUICK, not results' if QUICK else f'{WINDOW} s windows'}), "
              f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, one app of 4 instances\n")
        print("| while | daemon CPU | daemon RSS | `herd web` CPU | `herd web` RSS |")
        print("|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()
        print("| dashboard answers | figure |")
        print("|---|---|")
        print(f"| GET / (the page, with the session cookie), median of {TIMED} | {ms(page)} |")
        print(f"| GET /api/events to its first state event, median of {TIMED} | {ms(first)} |")
        print(f"| state events received in the {WINDOW} s page window | {events} |")
    finally:
        if web is not None:
            web.send_signal(signal.SIGINT)
            try:
                web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                web.kill()
                web.wait()
        subprocess.run([herd, "kill"], env=env, capture_output=True, timeout=30)
        if tmux is not None:
            tmux.kill_server()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
