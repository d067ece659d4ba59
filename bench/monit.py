#!/usr/bin/env python3
"""`herd monit` start-up time: from the moment monit is launched in a terminal to its first
full frame (every instance's pid and the help line on screen), median of 10; and the daemon's
CPU while monit is open next to while nobody looks.

    python3 bench/monit.py            # 10 launches, 10 s CPU windows (about 40 s)
    python3 bench/monit.py --quick    # 3 launches, 3 s windows (a smoke test, not results)

The terminal is a private tmux server (its own socket name and directory); the pane waits on
`tmux wait-for` and the clock starts just before the signal, then the screen is read with
`capture-pane` every millisecond or so. The same harness timing a pane that only prints a
word is given beside it: that is what tmux and the polling add. herd runs from a release
build with a private HERD_HOME, one app of 4 instances of the Rust `hello` example on
127.0.0.1; everything is stopped at the end (`herd kill`, `tmux kill-server`).
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = "--quick" in sys.argv
RUNS = 3 if QUICK else 10
WINDOW = 3 if QUICK else 10


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd", "--example", "hello"],
        cwd=ROOT,
        check=True,
    )
    target = os.path.join(ROOT, "target", "release")
    return os.path.join(target, "herd"), os.path.join(target, "examples", "hello")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Tmux:
    def __init__(self, base):
        self.socket = f"herd-bench-monit-{os.getpid()}"
        self.env = dict(os.environ, TMUX_TMPDIR=base)
        self.env.pop("TMUX", None)
        self.conf = os.path.join(base, "tmux.conf")
        with open(self.conf, "w") as f:
            f.write("set -g status off\n")
        # A session that stays, so that the server does not exit (and race the next
        # new-session) each time a measured pane ends.
        self.run("new-session", "-d", "-s", "keep", "sleep 3600")

    def run(self, *args, check=True):
        return subprocess.run(
            ["tmux", "-u", "-L", self.socket, "-f", self.conf, *args],
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=10,
        )

    def screen(self):
        return self.run("capture-pane", "-p", "-t", "bench", check=False).stdout

    def time_to(self, command, seen):
        """Seconds from the go signal to `seen(screen)` in a 120×40 pane running `command`."""
        self.run("new-session", "-d", "-s", "bench", "-x", "120", "-y", "40", f"tmux wait-for go; {command}")
        time.sleep(0.2)  # the pane's shell is waiting
        t0 = time.perf_counter()
        self.run("wait-for", "-S", "go")
        deadline = t0 + 10
        while not seen(self.screen()):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not seen within 10 s; the screen shows:\n{self.screen()}")
        return time.perf_counter() - t0

    def close(self):
        self.run("kill-session", "-t", "bench", check=False)

    def kill_server(self):
        self.run("kill-server", check=False)


def main():
    if not shutil.which("tmux"):
        sys.exit("tmux is missing: install it (Debian: apt-get install -y tmux)")
    herd, hello = build()
    base = tempfile.mkdtemp(prefix="herd-bench-monit-")
    home = os.path.join(base, "home")
    env = dict(os.environ, HERD_HOME=home)
    tmux = Tmux(base)

    def h(*args):
        return subprocess.run([herd, *args], env=env, cwd=ROOT, check=True, capture_output=True, text=True, timeout=30)

    try:
        h("start", hello, "--name", "rust", "-i", "4", "--listen", f"127.0.0.1:{free_port()}")
        time.sleep(1)
        pids = [line.split()[3] for line in h("list").stdout.splitlines()[1:] if " rust " in f" {line} "]
        assert len(pids) == 4, pids
        daemon = int(open(os.path.join(home, "daemon.lock")).read().strip())
        monit = f"HERD_HOME='{home}' exec '{herd}' monit"

        def full(screen):
            return all(p in screen for p in pids) and "q quit" in screen

        frames, floors = [], []
        for _ in range(RUNS):
            frames.append(tmux.time_to(monit, full))
            tmux.run("send-keys", "-t", "bench", "q")
            time.sleep(0.3)
            tmux.close()
            floors.append(tmux.time_to("echo READY; sleep 5", lambda s: "READY" in s))
            tmux.close()

        # The daemon's CPU with nobody looking, then with monit open (it asks `list` once a
        # second, which samples every instance).
        tick = os.sysconf("SC_CLK_TCK")
        c0 = cpu_ticks(daemon)
        time.sleep(WINDOW)
        idle = (cpu_ticks(daemon) - c0) / tick
        tmux.time_to(monit, full)
        c0 = cpu_ticks(daemon)
        time.sleep(WINDOW)
        watched = (cpu_ticks(daemon) - c0) / tick
        tmux.run("send-keys", "-t", "bench", "q")
        time.sleep(0.3)
        tmux.close()

        ms = lambda xs: f"{statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"
        print(f"| `herd monit` ({'QUICK, not results' if QUICK else 'release'}) | figure |")
        print("|---|---|")
        print(f"| time to first full frame (4 instances), median of {RUNS} | {ms(frames)} |")
        print(f"| same harness, a pane that prints one word (tmux + polling) | {ms(floors)} |")
        print(f"| daemon CPU over {WINDOW} s, nobody looking | {idle:.2f} s |")
        print(f"| daemon CPU over {WINDOW} s, monit open | {watched:.2f} s ({watched / WINDOW * 100:.2f}%) |")
    finally:
        subprocess.run([herd, "kill"], env=env, capture_output=True, timeout=30)
        tmux.kill_server()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
