//! Instances share one port: every instance serves, a killed one is replaced without a single
//! failed or hung connection, and scaling keeps serving.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

#[test]
fn rust_instances_share_the_port_and_get_the_worker_contract() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hello = hello_bin();
    h.ok(&[
        "start",
        hello.to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let addr = loopback(port);
    let mut seen = HashSet::new();
    for _ in 0..60 {
        seen.insert(pid_of(&get(addr, "/", Duration::from_secs(2)).unwrap()));
    }
    let listed: HashSet<u32> = h.pids("api").into_iter().collect();
    assert_eq!(seen, listed, "pids answering vs pids listed");
    assert_eq!(seen.len(), 2);

    // The variables of the worker contract, as one instance sees them.
    let env = |name: &str| get(addr, &format!("/env/{name}"), Duration::from_secs(2)).unwrap();
    assert_eq!(env("LISTEN_FDS"), "1");
    assert_eq!(env("LISTEN_FDNAMES"), "http");
    assert_eq!(env("PORT"), port.to_string());
    assert_eq!(env("HERD_APP"), "api");
    assert_eq!(env("HERD_INSTANCES"), "2");
    assert_eq!(env("HERD_IPC_FD"), "4");
    assert!(env("NOTIFY_SOCKET").ends_with("notify.sock"));
    for _ in 0..10 {
        let body = get(addr, "/env/LISTEN_PID", Duration::from_secs(2)).unwrap();
        assert!(
            listed.contains(&body.parse::<u32>().unwrap()),
            "LISTEN_PID {body} is not an instance pid"
        );
        let inst = env("HERD_INSTANCE");
        assert!(inst == "0" || inst == "1");
        assert_eq!(env("NODE_APP_INSTANCE").len(), 1);
    }
    h.finish();
}

#[test]
fn python_app_runs_by_extension_with_its_env() {
    let h = Herd::new();
    let port = free_port();
    // A copy without the executable bit: herd must pick python3 by the .py extension.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("hello.py");
    std::fs::copy(repo_root().join("examples/hello.py"), &copy).unwrap();
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        copy.to_str().unwrap(),
        "-i",
        "2",
        "--listen",
        &listen,
        "--env",
        "MODE=prod",
    ]);
    let addr = loopback(port);
    let seen = wait_until(Duration::from_secs(10), || {
        let mut seen = HashSet::new();
        for _ in 0..40 {
            let body = get(addr, "/", Duration::from_secs(2)).map_err(|e| e.to_string())?;
            assert!(body.contains("mode=prod"), "{body}");
            seen.insert(pid_of(&body));
        }
        if seen.len() == 2 {
            Ok(seen)
        } else {
            Err(format!("only {seen:?} answered"))
        }
    })
    .unwrap();
    assert_eq!(seen, h.pids("hello").into_iter().collect());
    h.finish();
}

#[test]
fn sigkilled_instance_is_replaced_and_no_fresh_connection_fails_or_hangs() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hello = hello_bin();
    h.ok(&[
        "start",
        hello.to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let addr = loopback(port);
    get(addr, "/", Duration::from_secs(2)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || load_until(addr, &stop, Duration::from_secs(30)))
        })
        .collect();
    let mut killed = Vec::new();
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(300));
        let victim = h.pids("api")[round % 2];
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        killed.push(victim);
        // Wait for the replacement before the next kill.
        wait_until(Duration::from_secs(5), || {
            let pids = h.pids("api");
            (pids.len() == 2 && !pids.contains(&victim))
                .then_some(())
                .ok_or(pids)
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    let mut lost_in_flight = 0;
    for c in clients {
        let l = c.join().unwrap();
        // A request the killed process had already accepted dies with it (reset or EOF):
        // at most one per client per kill. Nothing may be refused or time out.
        for f in &l.failed {
            assert!(
                f.contains("reset")
                    || f.contains("Broken pipe")
                    || f.contains("bad response: \"\""),
                "a connection failed other than by dying with its instance: {f}"
            );
        }
        lost_in_flight += l.failed.len();
        assert_eq!(l.slow, 0, "requests slower than 1 s (max {:?})", l.max);
        ok += l.ok;
    }
    assert!(
        lost_in_flight <= 2 * killed.len(),
        "{lost_in_flight} requests lost in {} kills",
        killed.len()
    );
    assert!(ok > 50, "only {ok} requests made");
    let app = h.app("api");
    let restarts: u64 = app["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["restarts"].as_u64().unwrap())
        .sum();
    assert_eq!(restarts, 4);
    for pid in killed {
        assert!(!h.pids("api").contains(&pid));
    }
    h.finish();
}

#[test]
fn scale_up_and_down_keeps_serving() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let hello = hello_bin();
    h.ok(&[
        "start",
        hello.to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "1",
        "--listen",
        &listen,
    ]);
    let addr = loopback(port);
    h.ok(&["scale", "api", "3"]);
    assert_eq!(h.pids("api").len(), 3);
    let seen = wait_until(Duration::from_secs(5), || {
        let s: HashSet<u32> = (0..60)
            .map(|_| pid_of(&get(addr, "/", Duration::from_secs(2)).unwrap()))
            .collect();
        (s.len() == 3).then_some(s.clone()).ok_or(s)
    })
    .unwrap();
    assert_eq!(seen, h.pids("api").into_iter().collect());

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || load_until(addr, &stop, Duration::from_secs(30)))
    };
    std::thread::sleep(Duration::from_millis(200));
    h.ok(&["scale", "api", "-1"]);
    h.ok(&["scale", "api", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let l = client.join().unwrap();
    assert!(
        l.failed.is_empty(),
        "requests failed during scale-down: {:?}",
        l.failed
    );
    assert_eq!(h.pids("api").len(), 1);
    let one = h.pids("api")[0];
    for _ in 0..20 {
        assert_eq!(
            pid_of(&get(addr, "/", Duration::from_secs(2)).unwrap()),
            one
        );
    }
    let err = h.fails(&["scale", "api", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    h.finish();
}

#[test]
fn a_crash_looping_slot_in_backoff_gets_no_new_connections() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    // Instance 1 dies 100 ms after every start and waits out a long backoff; instance 0 serves.
    let flaky = script(
        dir.path(),
        "flaky.sh",
        &format!(
            "#!/bin/sh\nif [ \"$HERD_INSTANCE\" = 1 ]; then sleep 0.1; exit 1; fi\nexec {}\n",
            hello_bin().display()
        ),
    );
    h.ok(&[
        "start",
        flaky.to_str().unwrap(),
        "--name",
        "flaky",
        "-i",
        "2",
        "--listen",
        &listen,
        "--wait-ready",
        "--listen-timeout",
        "5000",
        "--restart-delay",
        "2000",
    ]);
    let addr = loopback(port);
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || load_until(addr, &stop, Duration::from_secs(3)))
    };
    let l = client.join().unwrap();
    assert!(l.failed.is_empty(), "{:?}", l.failed);
    assert_eq!(
        l.slow, 0,
        "connections hung (max {:?}) on the crashing slot",
        l.max
    );
    assert!(l.ok > 50);
    let app = h.app("flaky");
    assert!(app["processes"][1]["restarts"].as_u64().unwrap() >= 1);
    h.finish();
}
