//! The keeper (issue #18, docs/keeper.md): SIGKILL the daemon and nothing is lost — the
//! instances keep serving with the same pids, their output written meanwhile reaches the
//! logs in order, a Node instance's `process.send` works after each death, an instance killed
//! while no daemon runs is replaced once the next one is up, and a daemon killed in the middle
//! of a reload or a scale-up leaves exactly one process per slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Lines `[prefix] tick <pid> <n>` of a log: for each pid, the numbers must follow each other
/// (`Exact`), or may go back to write a chunk again but never skip one (`Again`, a formatted
/// file: written, then taken from the pipe). Returns the faults and how many lines came twice.
fn gaps_in(log: &str, order: Order) -> (Vec<String>, usize) {
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    let mut gaps = Vec::new();
    let mut again = 0;
    for line in log.lines() {
        let Some(at) = line.find("tick ") else {
            continue;
        };
        let mut w = line.get(at..).unwrap_or_default().split_whitespace();
        let (Some("tick"), Some(pid), Some(n)) = (w.next(), w.next(), w.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else {
            gaps.push(format!("garbled: {line:?}"));
            continue;
        };
        let prev = last.get(pid).copied();
        match (prev, order) {
            (None, _) => {}
            (Some(p), _) if n == p + 1 => {}
            (Some(p), Order::Again) if n <= p => {
                again += 1;
                continue;
            }
            (Some(p), _) => gaps.push(format!("pid {pid}: {p} then {n}")),
        }
        last.insert(pid, n.max(prev.unwrap_or(0)));
    }
    (gaps, again)
}

#[derive(Clone, Copy)]
enum Order {
    Exact,
    Again,
}

#[test]
fn twenty_daemon_kills_under_load_lose_no_request_no_instance_and_no_log_line() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let rust_port = free_port();
    let node_port = free_port();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "rs",
        "-i",
        "2",
        "--listen",
        &format!("127.0.0.1:{rust_port}"),
    ]);
    // The daemon's path for messages (not direct channels): process.send must cross it.
    h.ok(&[
        "start",
        base.join("apps/bus.js").to_str().unwrap(),
        "--name",
        "nb",
        "-i",
        "2",
        "--listen",
        &format!("127.0.0.1:{node_port}"),
        "--env",
        "HERD_BUS_DIRECT=0",
    ]);
    let ticker = script(
        dir.path(),
        "ticker.py",
        "#!/usr/bin/env python3\nimport os, time\ni = 0\nwhile True:\n    os.write(1, f'tick {os.getpid()} {i}\\n'.encode())\n    i += 1\n    time.sleep(0.002)\n",
    );
    h.ok(&["start", ticker.to_str().unwrap(), "--name", "tick"]);
    // Formatted lines go another way (written, then taken from the pipe), and each comes in
    // two writes: its end 1 ms after its start, so kills fall inside lines.
    let halves = script(
        dir.path(),
        "halves.py",
        "#!/usr/bin/env python3\nimport os, time\ni = 0\nwhile True:\n    os.write(1, f'tick {os.getpid()} {i}'.encode())\n    time.sleep(0.001)\n    os.write(1, b'\\n')\n    i += 1\n    time.sleep(0.001)\n",
    );
    h.ok(&[
        "start",
        halves.to_str().unwrap(),
        "--name",
        "stamped",
        "--log-date-format",
        "HH:mm:ss.SSS",
    ]);
    wait_until(Duration::from_secs(20), || {
        let all: Vec<String> = ["rs", "nb", "tick", "stamped"]
            .iter()
            .flat_map(|a| h.statuses(a))
            .collect();
        all.iter().all(|s| s == "online").then_some(()).ok_or(all)
    })
    .expect("online");
    let ask = |k: usize| -> Value {
        let body = get(
            loopback(node_port),
            &format!("/ask?to=nb:1&data=ping-{k}"),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("process.send round trip after kill {k}: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"))
    };
    assert_eq!(ask(0)["echo"], "ping-0");
    let pids: Vec<u32> = ["rs", "nb"].iter().flat_map(|a| h.pids(a)).collect();
    let tick_pid = h.pids("tick")[0];
    let stop = AtomicBool::new(false);
    let (fresh, kept, node) = std::thread::scope(|s| {
        let fresh = s.spawn(|| load_until(loopback(rust_port), &stop, Duration::from_secs(120)));
        let kept = s.spawn(|| {
            keep_alive_until(
                loopback(rust_port),
                "/",
                &stop,
                Duration::from_secs(120),
                |_| Duration::from_millis(1),
            )
        });
        let node = s.spawn(|| {
            load_path_until(
                loopback(node_port),
                "/seen",
                &stop,
                Duration::from_secs(120),
            )
        });
        for k in 1..=20 {
            let t = std::time::Instant::now();
            let daemon = h.daemon_pid().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(daemon),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            if k == 10 {
                // An instance that dies while no daemon runs.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(tick_pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
            }
            wait_until(Duration::from_secs(10), || {
                h.daemon_pid()
                    .filter(|&p| p != daemon && alive(p as u32))
                    .ok_or(())
            })
            .unwrap_or_else(|_| panic!("no new daemon after kill {k}"));
            h.ok(&["ping"]);
            let now: Vec<u32> = ["rs", "nb"].iter().flat_map(|a| h.pids(a)).collect();
            assert_eq!(now, pids, "instances changed after kill {k}");
            let back = t.elapsed();
            assert_eq!(ask(k)["echo"], format!("ping-{k}"));
            eprintln!(
                "kill {k}: a daemon again after {back:?}, a round trip through it by {:?}",
                t.elapsed()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (
            fresh.join().unwrap(),
            kept.join().unwrap(),
            node.join().unwrap(),
        )
    });
    assert_no_failures(&[fresh, kept.load, node], "20 daemon kills");
    // The instance killed while no daemon ran was replaced.
    let replaced = wait_until(Duration::from_secs(10), || {
        let now = h.pids("tick");
        if now.len() == 1 && now[0] != tick_pid && h.statuses("tick") == ["online"] {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .unwrap_or_else(|now| {
        panic!(
            "the ticker killed during an outage ({tick_pid}, alive: {}) was not replaced: {now:?} {}\n{}",
            alive(tick_pid),
            h.app("tick"),
            std::fs::read_to_string(h.home().join("daemon.log")).unwrap_or_default()
        )
    });
    assert_eq!(h.app("tick")["processes"][0]["restarts"], 1);
    // Every line the ticker wrote, in order, without a gap, across 20 deaths.
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(h.home().join("logs/tick-0.out")).unwrap();
    assert_eq!(
        gaps_in(&log, Order::Exact),
        (Vec::<String>::new(), 0),
        "lines lost, doubled or reordered"
    );
    let stamped = std::fs::read_to_string(h.home().join("logs/stamped-0.out")).unwrap();
    let (gaps, again) = gaps_in(&stamped, Order::Again);
    if !gaps.is_empty() {
        let lines: Vec<&str> = stamped.lines().collect();
        for g in &gaps {
            let n = g.rsplit(' ').next().unwrap();
            if let Some(i) = lines.iter().position(|l| l.ends_with(&format!(" {n}"))) {
                eprintln!(
                    "around {g}: {:#?}",
                    &lines[i.saturating_sub(8)..(i + 4).min(lines.len())]
                );
            }
        }
        let _ = std::fs::create_dir_all("/tmp/lt/keep");
        let _ = std::process::Command::new("cp")
            .arg("-r")
            .arg(h.home())
            .arg("/tmp/lt/keep/")
            .status();
    }
    assert_eq!(gaps, Vec::<String>::new(), "formatted lines lost");
    eprintln!("formatted lines written twice across 20 kills: {again}");
    let first = log
        .lines()
        .filter(|l| l.starts_with(&format!("tick {tick_pid} ")))
        .count();
    assert!(first > 100, "the first ticker wrote {first} lines");
    assert!(
        log.contains(&format!("tick {} ", replaced[0])),
        "the replacement's lines"
    );
    h.finish();
}

/// An instance that writes its lines in batches of 1000 (20 KB, more than a pipe read, so
/// chunks end inside lines) while the daemon is killed six times: its own file gets every line
/// exactly once, a formatted file every line at least once.
#[test]
fn daemon_kills_while_an_instance_floods_its_output_lose_no_line() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let flood = script(
        dir.path(),
        "flood.py",
        "#!/usr/bin/env python3\nimport os, sys, time\npid = os.getpid()\nfor b in range(200):\n    sys.stdout.write(''.join(f'tick {pid} {b * 1000 + i}\\n' for i in range(1000)))\n    sys.stdout.flush()\n    time.sleep(0.02)\nprint('done', flush=True)\ntime.sleep(3600)\n",
    );
    h.ok(&["start", flood.to_str().unwrap(), "--name", "raw"]);
    h.ok(&[
        "start",
        flood.to_str().unwrap(),
        "--name",
        "stamped",
        "--log-date-format",
        "HH:mm:ss.SSS",
    ]);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(200));
        kill_daemon(&h);
        h.ok(&["ping"]);
    }
    for (app, order) in [("raw", Order::Exact), ("stamped", Order::Again)] {
        let path = h.home().join(format!("logs/{app}-0.out"));
        let log = wait_until(Duration::from_secs(30), || {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if log.contains("done") {
                Ok(log)
            } else {
                Err(log.len())
            }
        })
        .unwrap_or_else(|len| panic!("{app}: the flood did not end ({len} bytes logged)"));
        let (gaps, again) = gaps_in(&log, order);
        assert_eq!(gaps, Vec::<String>::new(), "{app}: lines lost");
        let ticks: Vec<&str> = log.lines().filter(|l| l.contains("tick ")).collect();
        assert!(
            ticks.first().is_some_and(|l| l.ends_with(" 0")),
            "{app}: the first line {:?}",
            ticks.first()
        );
        assert_eq!(ticks.len(), 200_000 + again, "{app}: lines logged");
        eprintln!("{app}: 200000 lines across 6 kills, {again} written twice");
        if let Order::Exact = order {
            assert_eq!(again, 0, "{app}: lines doubled");
        }
    }
    h.finish();
}

/// Starts `n` instances named `app` of a server that says it is ready 0.4 s after it starts,
/// so that a reload or a scale-up is under way long enough to kill the daemon in its middle.
fn start_slow(h: &Herd, app: &str, n: &str, port: u16) {
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        app,
        "-i",
        n,
        "--env",
        "READY_DELAY_MS=400",
        "--wait-ready",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
}

/// Waits until every slot of `app` is online, and returns its pids; then checks that no
/// process of the app runs beside them (the instances' own environment names the app).
fn settled(h: &Herd, app: &str, slots: usize) -> Vec<u32> {
    let pids = wait_until(Duration::from_secs(15), || {
        let s = h.statuses(app);
        (s.len() == slots && s.iter().all(|x| x == "online"))
            .then(|| h.pids(app))
            .ok_or(s)
    })
    .unwrap_or_else(|s| panic!("{app} did not settle to {slots} online slots: {s:?}"));
    let needle = format!("HERD_APP={app}");
    let running = wait_until(Duration::from_secs(10), || {
        let mut of_app: Vec<u32> = h
            .leftovers()
            .into_iter()
            .filter(|&p| {
                std::fs::read(format!("/proc/{p}/environ"))
                    .map(|e| e.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                    .unwrap_or(false)
            })
            .map(|p| p as u32)
            .collect();
        of_app.sort_unstable();
        let mut want = pids.clone();
        want.sort_unstable();
        (of_app == want).then_some(()).ok_or(of_app)
    });
    assert!(
        running.is_ok(),
        "processes of {app} beside its {slots} slots {pids:?}: {running:?}"
    );
    pids
}

#[test]
fn a_daemon_killed_during_a_reload_or_a_scale_up_leaves_one_process_per_slot() {
    let h = Herd::new();
    let port = free_port();
    start_slow(&h, "web", "2", port);
    settled(&h, "web", 2);
    // During a reload: with its first slot's new process not ready yet (200 ms), then with
    // the first slot done and the second under way (650 ms).
    for after in [200, 650] {
        let mut child = h
            .command(&["reload", "web"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(after));
        kill_daemon(&h);
        let _ = child.wait();
        h.ok(&["ping"]);
        settled(&h, "web", 2);
        for k in 0..20 {
            if let Err(e) = get(loopback(port), "/", Duration::from_secs(5)) {
                panic!(
                    "request {k} after a kill {after} ms into a reload: {e}; {}\n{}",
                    h.app("web"),
                    std::fs::read_to_string(h.home().join("daemon.log")).unwrap_or_default()
                );
            }
        }
    }
    // During a scale-up, its new instances not ready yet.
    let mut child = h
        .command(&["scale", "web", "4"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    kill_daemon(&h);
    let _ = child.wait();
    h.ok(&["ping"]);
    let slots = h.statuses("web").len();
    assert_eq!(slots, 4, "the scale-up was in the state: {}", h.app("web"));
    settled(&h, "web", 4);
    // And `herd kill` still stops everything, keeper included.
    h.finish();
}

/// An app's own primary (`--primary`) is not adopted: the next daemon starts a new one, and
/// the workers keep serving with their pids.
#[test]
fn after_a_daemon_kill_an_apps_own_primary_is_started_again_and_its_workers_kept() {
    if node_fixture().is_none() {
        return;
    }
    let h = Herd::new();
    let port = free_port();
    let script = repo_root().join("examples/node/cluster.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--primary",
        "--name",
        "pri",
        "--port",
        &port.to_string(),
    ]);
    let pid = |p: &Value| p["pid"].as_u64().map(|p| p as u32);
    let (primary, workers) = wait_until(Duration::from_secs(20), || {
        let a = h.app("pri");
        let ps = a["processes"].as_array().cloned().unwrap_or_default();
        let workers: Vec<u32> = ps.iter().filter_map(pid).collect();
        match pid(&a["primary"]) {
            Some(p) if workers.len() >= 2 && a["primary"]["status"] == "online" => Ok((p, workers)),
            _ => Err(a),
        }
    })
    .expect("primary and workers online");
    kill_daemon(&h);
    h.ok(&["ping"]);
    let again = wait_until(Duration::from_secs(20), || {
        let a = h.app("pri");
        pid(&a["primary"])
            .filter(|&p| p != primary && a["primary"]["status"] == "online")
            .ok_or(a)
    })
    .expect("a new primary");
    assert!(!alive(primary), "the old primary is gone");
    assert!(alive(again));
    let a = h.app("pri");
    let mut now: Vec<u32> = a["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(pid)
        .collect();
    let mut before = workers.clone();
    now.sort_unstable();
    before.sort_unstable();
    assert_eq!(now, before, "the workers were kept: {a}");
    get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    h.finish();
}

/// The keeper's own death (docs/keeper.md): the daemon says so and runs on, its instances keep
/// serving, and `herd kill` still stops everything; a later death of that daemon is a crash
/// without a keeper — the next daemon stops what is left.
#[test]
fn a_killed_keeper_leaves_the_daemon_serving_and_a_later_daemon_death_is_swept() {
    let h = Herd::new();
    let port = free_port();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "k",
        "-i",
        "2",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let pids = h.pids("k");
    let keeper = h.keeper_pid().expect("a keeper");
    let daemon = h.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keeper),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(h.home().join("daemon.log")).unwrap_or_default();
        log.contains("the keeper is gone").then_some(()).ok_or(())
    })
    .expect("the daemon did not notice its keeper's death");
    assert_eq!(h.daemon_pid(), Some(daemon));
    assert_eq!(h.pids("k"), pids);
    for _ in 0..20 {
        get(loopback(port), "/", Duration::from_secs(2)).expect("served after the keeper died");
    }
    h.ok(&["restart", "k"]);
    assert_eq!(h.statuses("k"), ["online", "online"]);
    // Now the daemon's death is a plain crash: the next daemon (with a keeper of its own)
    // stops what the dead one left.
    let pids = h.pids("k");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(5), || {
        (!alive(daemon as u32)).then_some(()).ok_or(())
    })
    .unwrap();
    h.ok(&["ping"]);
    wait_until(Duration::from_secs(10), || {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        left.is_empty().then_some(()).ok_or(left)
    })
    .expect("instances left by the daemon that died without a keeper");
    assert!(h.keeper_pid().is_some(), "the new daemon has a keeper");
    h.finish();
}
