#!/usr/bin/env python3
"""A changed app file, applied: `pm2 reload ecosystem.config.js` (with and without
`--update-env`) beside `herd apply`, each under a paced load of fresh connections.

    python3 bench/apply.py            # 3 rounds, about 2 minutes
    python3 bench/apply.py --quick    # 1 round
    python3 bench/apply.py --herd PATH

Two instances of bench/apps/mode.js (answers `mode=<MODE> hello`) start from a file with
MODE=one; the file is changed to MODE=two and 3 instances and applied while compare.py's
prober opens fresh connections (each given 1 s). Per system: whether the change was applied
(the mode and the distinct pids 60 fresh requests see afterwards), and requests failed or hung
during the apply. PM2's issue (#3742,
#5287): its reload of an ecosystem file does not apply a changed environment unless
`--update-env`. Everything runs on 127.0.0.1, each manager in its own temporary home, stopped
by pid.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common_helpers import free_port, logger
import common_helpers as common
import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODE_JS = os.path.join(ROOT, "bench", "apps", "mode.js")
QUICK = "--quick" in sys.argv
HERD_GIVEN = sys.argv[sys.argv.index("--herd") + 1] if "--herd" in sys.argv else None
RUNS = 1 if QUICK else 3
log = logger("apply")


def modes(port, n=60):
    """The modes `n` fresh requests see, and the distinct pids that answered."""
    seen, pids = {}, set()
    for _ in range(n):
        try:
            body = compare.get(port, "/", timeout=1.0)
            words = body.split() if body else ["?"]
            m = words[0]
            if len(words) > 1:
                pids.add(words[1])
        except OSError as e:
            m = f"error {e.__class__.__name__}"
        seen[m] = seen.get(m, 0) + 1
    return seen, len(pids)


def pm2_file(path, port, mode, n):
    with open(path, "w") as f:
        f.write("module.exports = { apps: [{ name: 'mode', script: %r, instances: %d, exec_mode: 'cluster', "
                "env: { PORT: '%d', MODE: %r } }] };\n" % (MODE_JS, n, port, mode))


def herd_file(path, port, mode, n):
    with open(path, "w") as f:
        f.write(f'[[apps]]\nname = "mode"\nscript = "{MODE_JS}"\ninstances = {n}\nport = {port}\nenv = {{ MODE = "{mode}" }}\n')


def run(kind, pm2_bin, herd_bin):
    home = tempfile.mkdtemp(prefix=f"bench-apply-{kind}-")
    port = free_port()
    tag = f"{compare.RUN_TAG}-apply"
    env = dict(os.environ, HERD_BENCH_TAG=tag)
    if kind.startswith("pm2"):
        env["PM2_HOME"] = home
        file = os.path.join(home, "ecosystem.config.js")
        write, start = pm2_file, [pm2_bin, "start", file]
        apply = [pm2_bin, "reload", file] + (["--update-env"] if kind == "pm2-update-env" else [])
        stop = [pm2_bin, "kill"]
    else:
        env["HERD_HOME"] = home
        file = os.path.join(home, "herd.toml")
        write, start = herd_file, [herd_bin, "apply", file]
        apply, stop = [herd_bin, "apply", file], [herd_bin, "kill"]
    try:
        write(file, port, "one", 2)
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
        compare.wait_ready(port, 2, node=False)
        time.sleep(1)
        before, _ = modes(port)
        write(file, port, "two", 3)
        load = compare.Load(port).start()
        time.sleep(1)
        t0 = time.time()
        r = subprocess.run(apply, env=env, capture_output=True, text=True, timeout=120)
        took = time.time() - t0
        time.sleep(1)
        load.stop()
        after, instances = modes(port)
        res = load.results["fresh"]
        return {
            "ok": r.returncode == 0,
            "took": took,
            "before": before,
            "after": after,
            "applied": after.get("mode=two", 0) == sum(after.values()),
            "instances": instances,
            "requests": len(res),
            "failed": sum(1 for o in res if o[0] == "failed"),
            "hung": sum(1 for o in res if o[0] == "hung"),
        }
    finally:
        subprocess.run(stop, env=env, capture_output=True, timeout=120)
        time.sleep(0.5)
        common.kill_pids(common.tagged(tag))
        shutil.rmtree(home, ignore_errors=True)


def main():
    pm2_bin = compare.ensure_pm2()
    if HERD_GIVEN:
        herd_bin = os.path.abspath(HERD_GIVEN)
    else:
        log("building herd (release)")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "herd-cli", "--bin", "herd"], cwd=ROOT, check=True)
        herd_bin = os.path.join(ROOT, "target", "release", "herd")
    kinds = [("pm2", "`pm2 reload ecosystem.config.js`"),
             ("pm2-update-env", "`pm2 reload ecosystem.config.js --update-env`"),
             ("herd", "`herd apply herd.toml`")]
    R = {k: [] for k, _ in kinds}
    for r in range(RUNS):
        log(f"round {r + 1}/{RUNS}")
        for k, _ in (kinds if r % 2 == 0 else list(reversed(kinds))):
            res = run(k, pm2_bin, herd_bin)
            log(f"  {k}: applied={res['applied']} after={res['after']} failed={res['failed']} hung={res['hung']} of {res['requests']}")
            R[k].append(res)
    print(f"A changed MODE in the app file, applied under fresh connections — {time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores; {'QUICK: 1 round' if QUICK else f'{RUNS} rounds'}\n")
    print("| command | MODE=two applied (rounds) | instances answering after (file: 2 → 3) | requests during | failed | hung | took |")
    print("|---|---|---|---|---|---|---|")
    for k, label in kinds:
        rs = R[k]
        applied = sum(1 for x in rs if x["applied"])
        inst = sorted({x["instances"] for x in rs})
        print(f"| {label} | {applied} of {len(rs)} | {', '.join(map(str, inst))} | {statistics.median(x['requests'] for x in rs):.0f} | "
              f"{sum(x['failed'] for x in rs)} | {sum(x['hung'] for x in rs)} | {statistics.median(x['took'] for x in rs):.1f} s |")
    common.print_leftovers()


if __name__ == "__main__":
    main()
