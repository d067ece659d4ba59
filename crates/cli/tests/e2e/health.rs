//! Health probes (issue #15, docs/health.md): a readiness probe takes a stopped (`SIGSTOP`) or
//! failing instance out of the kernel's routing without killing it, and puts it back when it
//! recovers; with every instance failing, routing falls back to all; a liveness probe restarts
//! a stopped instance; a channel probe follows the instance's heartbeats. The server is
//! `tests/python/health.py` (200 or 500 on /healthz by a file).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Probe timing of these tests: a sick instance is seen after 2 failures of 200 ms probes.
const FAST: &[&str] = &[
    "--probe-interval",
    "200ms",
    "--probe-timeout",
    "300ms",
    "--probe-failures",
    "2",
];

fn health_py() -> std::path::PathBuf {
    repo_root().join("tests/python/health.py")
}

/// Instance `i`'s health as `herd list --json` gives it.
fn health(h: &Herd, app: &str, i: usize) -> Value {
    h.app(app)["processes"][i]["health"].clone()
}

fn wait_ready(h: &Herd, app: &str, i: usize, want: bool) {
    wait_until(Duration::from_secs(15), || {
        let v = health(h, app, i);
        (v["ready"] == Value::Bool(want)).then_some(()).ok_or(v)
    })
    .unwrap_or_else(|v| panic!("instance {i} of {app} never became ready={want}: {v}"));
}

/// `n` requests on fresh connections, each given `limit`: the pids that answered, and how many
/// failed or hung.
fn fresh(addr: SocketAddr, n: usize, limit: Duration) -> (Vec<u32>, usize) {
    let mut pids = Vec::new();
    let mut failed = 0;
    for _ in 0..n {
        match get(addr, "/", limit) {
            Ok(body) if body.contains("pid=") => pids.push(pid_of(&body)),
            _ => failed += 1,
        }
    }
    (pids, failed)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

struct Cont(u32);

impl Drop for Cont {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.0).unwrap()),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

fn start(h: &Herd, name: &str, port: u16, sick: &std::path::Path, probe: &[&str]) {
    let script = health_py();
    let mut args = vec![
        "start",
        script.to_str().unwrap(),
        "--name",
        name,
        "-i",
        "2",
        "--listen",
    ];
    let listen = format!("127.0.0.1:{port}");
    args.push(&listen);
    let sick_env = format!("SICK_DIR={}", sick.display());
    args.extend(["--env", &sick_env]);
    args.extend(probe);
    h.ok(&args);
}

#[test]
fn readiness_takes_a_stopped_or_failing_instance_out_of_routing_and_back() {
    let h = Herd::new();
    let sick = tempfile::tempdir().unwrap();
    let port = free_port();
    start(
        &h,
        "web",
        port,
        sick.path(),
        &[&["--readiness", "http:/healthz"], FAST].concat(),
    );
    wait_ready(&h, "web", 0, true);
    wait_ready(&h, "web", 1, true);
    let pids = h.pids("web");
    let addr = loopback(port);
    let (seen, failed) = fresh(addr, 60, Duration::from_secs(2));
    assert_eq!(failed, 0);
    assert!(
        seen.contains(&pids[0]) && seen.contains(&pids[1]),
        "{seen:?}"
    );

    // SIGSTOP: alive, useless. Once detected (2 × 200 ms), no fresh connection goes to it.
    signal(pids[0], nix::sys::signal::Signal::SIGSTOP);
    let cont = Cont(pids[0]);
    let stopped = Instant::now();
    wait_ready(&h, "web", 0, false);
    let detected = stopped.elapsed();
    let (seen, failed) = fresh(addr, 100, Duration::from_secs(2));
    assert_eq!(failed, 0, "connections hung or failed after detection");
    assert!(seen.iter().all(|&p| p == pids[1]), "{seen:?}");
    let v = health(&h, "web", 0);
    assert_eq!(v["last"]["ok"], false, "{v}");
    assert!(
        v["last"]["detail"].as_str().unwrap().contains("timed out"),
        "{v}"
    );
    assert!(detected < Duration::from_secs(5), "{detected:?}");
    // It is still the same process, and it gets its share back once it runs again.
    drop(cont);
    wait_ready(&h, "web", 0, true);
    assert_eq!(h.pids("web"), pids, "a readiness probe never restarts");
    let (seen, failed) = fresh(addr, 60, Duration::from_secs(2));
    assert_eq!(failed, 0);
    assert!(seen.contains(&pids[0]), "{seen:?}");

    // Accepting but answering 500 on its health path: out, then back.
    std::fs::write(sick.path().join("sick-1"), "").unwrap();
    wait_ready(&h, "web", 1, false);
    let (seen, failed) = fresh(addr, 60, Duration::from_secs(2));
    assert_eq!(failed, 0);
    assert!(seen.iter().all(|&p| p == pids[0]), "{seen:?}");
    assert_eq!(health(&h, "web", 1)["last"]["detail"], "HTTP 500");

    // Every instance failing: routing falls back to all of them, and `herd list` says so.
    std::fs::write(sick.path().join("sick-0"), "").unwrap();
    wait_ready(&h, "web", 0, false);
    assert_eq!(h.app("web")["routing_fallback"], true);
    let list = h.ok(&["list"]);
    assert!(list.contains("fails its readiness probe"), "{list}");
    let (seen, failed) = fresh(addr, 60, Duration::from_secs(2));
    assert_eq!(failed, 0);
    assert!(
        seen.contains(&pids[0]) && seen.contains(&pids[1]),
        "{seen:?}"
    );
    std::fs::remove_file(sick.path().join("sick-0")).unwrap();
    std::fs::remove_file(sick.path().join("sick-1")).unwrap();
    wait_ready(&h, "web", 0, true);
    wait_ready(&h, "web", 1, true);
    assert_eq!(h.app("web")["routing_fallback"], Value::Null);

    // A rolling reload waits for each new process's readiness, and serves throughout.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let loads = std::thread::scope(|s| {
        let load = s.spawn(|| load_until(addr, &stop, Duration::from_secs(30)));
        h.ok(&["reload", "web"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert_no_failures(&[loads], "a reload with a readiness probe");
    let after = h.pids("web");
    assert!(after.iter().all(|p| !pids.contains(p)), "{after:?}");
    assert_eq!(health(&h, "web", 0)["ready"], true);
    h.finish();
}

#[test]
fn liveness_restarts_a_stopped_instance_and_a_channel_probe_follows_heartbeats() {
    let h = Herd::new();
    let sick = tempfile::tempdir().unwrap();
    let port = free_port();
    start(
        &h,
        "live",
        port,
        sick.path(),
        // Looser than FAST: on a loaded machine a python process can take longer than
        // 2 × 300 ms to answer its first probe, and liveness would restart it again.
        &[
            "--liveness",
            "http:/healthz",
            "--probe-interval",
            "200ms",
            "--probe-timeout",
            "1s",
            "--probe-failures",
            "2",
            "--probe-initial-delay",
            "1s",
        ],
    );
    wait_until(Duration::from_secs(15), || {
        (health(&h, "live", 0)["live"] == true)
            .then_some(())
            .ok_or(())
    })
    .expect("never live");
    let pids = h.pids("live");
    signal(pids[0], nix::sys::signal::Signal::SIGSTOP);
    let _cont = Cont(pids[0]);
    let replaced = wait_until(Duration::from_secs(20), || {
        let now = h.pids("live");
        (now.len() == 2 && now[0] != pids[0] && h.statuses("live")[0] == "online")
            .then_some(now)
            .ok_or(())
    })
    .expect("the stopped instance was not restarted");
    assert_eq!(
        replaced[1],
        pids[1],
        "only the stopped one: {}\n{}",
        h.app("live"),
        std::fs::read_to_string(h.home().join("daemon.log")).unwrap_or_default()
    );
    assert!(!alive(pids[0]), "the stopped process is gone");
    assert_eq!(h.app("live")["processes"][0]["restarts"], 1);

    // A channel probe: heartbeats every 100 ms pass; muted, the instance is not ready.
    let port = free_port();
    let h2 = Herd::new();
    start(
        &h2,
        "beat",
        port,
        sick.path(),
        &[
            "--readiness",
            "channel",
            "--probe-interval",
            "300ms",
            "--probe-failures",
            "2",
            "--env",
            "HEARTBEAT_MS=100",
        ],
    );
    wait_ready(&h2, "beat", 0, true);
    std::fs::write(sick.path().join("mute-0"), "").unwrap();
    wait_ready(&h2, "beat", 0, false);
    let v = health(&h2, "beat", 0);
    assert!(
        v["last"]["detail"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{v}"
    );
    std::fs::remove_file(sick.path().join("mute-0")).unwrap();
    wait_ready(&h2, "beat", 0, true);
    h2.finish();
    h.finish();
}

/// `depends_on`: an app waits for a slow-to-ready dependency (its readiness probe), and its
/// first request to it, made as it starts, succeeds.
#[test]
fn an_app_starts_only_once_the_app_it_depends_on_is_ready() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let sick = tempfile::tempdir().unwrap();
    std::fs::write(sick.path().join("sick-0"), "").unwrap();
    let (db_port, api_port) = (free_port(), free_port());
    let api = script(
        dir.path(),
        "api.py",
        &format!(
            "#!/usr/bin/env python3\nimport socket, urllib.request\ntry:\n    code = urllib.request.urlopen('http://127.0.0.1:{db_port}/healthz', timeout=5).status\nexcept Exception as e:\n    code = repr(e)\nprint(f'db answered {{code}}', flush=True)\ns = socket.socket(fileno=3)\nwhile True:\n    c, _ = s.accept()\n    got = b''\n    while b'\\r\\n\\r\\n' not in got:\n        more = c.recv(1024)\n        if not more:\n            break\n        got += more\n    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\nConnection: close\\r\\n\\r\\napi')\n    c.close()\n"
        ),
    );
    let file = dir.path().join("herd.toml");
    std::fs::write(
        &file,
        format!(
            "[[apps]]\nname = \"api\"\nscript = \"{}\"\nport = {api_port}\ndepends_on = [\"db\"]\n\n[[apps]]\nname = \"db\"\nscript = \"{}\"\nport = {db_port}\nenv = {{ SICK_DIR = \"{}\" }}\nreadiness = {{ check = \"http:/healthz\", interval = 200, failureThreshold = 1 }}\n",
            api.display(),
            health_py().display(),
            sick.path().display()
        ),
    )
    .unwrap();
    h.ok(&["start", file.to_str().unwrap()]);
    // db runs but answers 500: api waits, and says so.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(h.statuses("api"), ["stopped"]);
    assert_eq!(h.app("api")["waiting_for"], serde_json::json!(["db"]));
    let list = h.ok(&["list"]);
    assert!(list.contains("api waits for db to be ready"), "{list}");
    std::fs::remove_file(sick.path().join("sick-0")).unwrap();
    wait_until(Duration::from_secs(15), || {
        (h.statuses("api") == ["online"]).then_some(()).ok_or(())
    })
    .expect("api did not start once db was ready");
    let logs = wait_until(Duration::from_secs(10), || {
        let l = h.ok(&["logs", "api", "--lines", "20"]);
        l.contains("db answered").then_some(l.clone()).ok_or(l)
    })
    .unwrap();
    assert!(logs.contains("db answered 200"), "{logs}");
    assert!(get(loopback(api_port), "/", Duration::from_secs(2))
        .unwrap()
        .contains("api"));
    // `herd stop all`: api first, then db.
    h.ok(&["stop", "all"]);
    assert_eq!(h.statuses("api"), ["stopped"]);
    assert_eq!(h.statuses("db"), ["stopped"]);
    h.finish();
}

/// `--cron-restart` with seconds: a rolling reload at each match, under a load of fresh
/// connections, fails no request (examples/hello.py says when it is ready and finishes what it
/// started on SIGTERM, as `reload_of_a_non_node_app_fails_zero_requests` requires too).
#[test]
fn a_cron_restart_reloads_under_load_without_a_failed_request() {
    let h = Herd::new();
    let port = free_port();
    h.ok(&[
        "start",
        "examples/hello.py",
        "--name",
        "cron",
        "-i",
        "2",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--cron-restart",
        "*/2 * * * * *",
    ]);
    wait_until(Duration::from_secs(10), || {
        (h.statuses("cron") == ["online", "online"])
            .then_some(())
            .ok_or(())
    })
    .expect("online");
    let first = h.pids("cron");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = std::thread::scope(|s| {
        let load = s.spawn(|| load_until(loopback(port), &stop, Duration::from_secs(20)));
        let reloaded = wait_until(Duration::from_secs(10), || {
            let now = h.pids("cron");
            (now.len() == 2 && now.iter().all(|p| !first.contains(p)))
                .then_some(())
                .ok_or(now)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (load.join().unwrap(), reloaded)
    });
    let (load, reloaded) = load;
    reloaded.unwrap_or_else(|now| panic!("no scheduled reload: {first:?} → {now:?}"));
    assert_no_failures(&[load], "scheduled reloads");
    let d = h.ok(&["describe", "cron"]);
    assert!(d.contains("*/2 * * * * *"), "{d}");
    h.finish();
}
