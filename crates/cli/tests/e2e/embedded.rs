//! The Rust cluster API (`herd::cluster`): a program as its own primary, and the same binary
//! as a worker of the herd daemon.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

#[test]
fn embedded_cluster_shares_a_port_replaces_workers_talks_and_drains_on_sigterm() {
    let h = Herd::new(); // only for its HERD_HOME marker, to find leftovers
    let port = free_port();
    let mut primary = std::process::Command::new(example_bin("cluster"))
        .env("CLUSTER_PORT", port.to_string())
        .env("CLUSTER_WORKERS", "2")
        .env("HERD_HOME", h.home())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = loopback(port);
    let pids = wait_until(Duration::from_secs(10), || {
        let mut s = HashSet::new();
        for _ in 0..40 {
            s.insert(pid_of(
                &get(addr, "/", Duration::from_secs(2)).map_err(|e| e.to_string())?,
            ));
        }
        (s.len() == 2).then_some(s.clone()).ok_or(format!("{s:?}"))
    })
    .unwrap();

    // Worker → primary → worker.
    assert_eq!(
        get(addr, "/tell/hi", Duration::from_secs(5)).unwrap(),
        r#"{"ack":"hi"}"#
    );

    // A SIGKILLed worker is replaced; fresh connections meanwhile do not fail or hang.
    let victim = *pids.iter().next().unwrap();
    let loads = under_load(addr, "/", 2, || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    for l in &loads {
        assert_eq!(l.slow, 0, "a connection hung (max {:?})", l.max);
        assert!(
            l.failed.iter().all(|f| f.contains("reset")
                || f.contains("Broken pipe")
                || f.contains("bad response: \"\"")),
            "{:?}",
            l.failed
        );
        assert!(l.failed.len() <= 1);
    }
    let now: HashSet<u32> = (0..40)
        .map(|_| pid_of(&get(addr, "/", Duration::from_secs(2)).unwrap()))
        .collect();
    assert_eq!(now.len(), 2);
    assert!(!now.contains(&victim));

    // SIGTERM: workers finish the requests in flight, then everything exits.
    let in_flight: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || get(addr, "/slow/800", Duration::from_secs(5))))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(primary.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    for r in in_flight {
        let body = r
            .join()
            .unwrap()
            .expect("an in-flight request failed during the drain");
        assert!(body.contains("slept=800"), "{body}");
    }
    let status = wait_until(Duration::from_secs(10), || {
        primary.try_wait().unwrap().ok_or(())
    })
    .unwrap();
    assert!(status.success(), "primary exited with {status:?}");
    assert!(
        get(addr, "/", Duration::from_millis(500)).is_err(),
        "still serving after SIGTERM"
    );
    wait_until(Duration::from_secs(5), || {
        let l = h.leftovers();
        l.is_empty().then_some(()).ok_or(l)
    })
    .expect("workers outlived the primary");
}

#[test]
fn the_same_binary_under_the_daemon_is_a_worker_of_the_daemon() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let bin = example_bin("cluster");
    h.ok(&[
        "start",
        bin.to_str().unwrap(),
        "--name",
        "cl",
        "-i",
        "2",
        "--listen",
        &listen,
        "--wait-ready",
    ]);
    let seen: HashSet<u32> = (0..40)
        .map(|_| pid_of(&get(loopback(port), "/", Duration::from_secs(2)).unwrap()))
        .collect();
    assert_eq!(seen, h.pids("cl").into_iter().collect());
    let r: serde_json::Value =
        serde_json::from_str(h.ok(&["request", "cl:1", r#""via the daemon""#]).trim()).unwrap();
    assert_eq!(r["echo"], "via the daemon");
    assert_eq!(r["pid"].as_u64().unwrap() as u32, h.pids("cl")[1]);
    h.finish();
}

#[test]
fn hyper_and_axum_servers_serve_on_herds_socket() {
    let h = Herd::new();
    for (name, bin, needle) in [("hy", "hyper", "hyper"), ("ax", "axum-hello", "hello")] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        h.ok(&[
            "start",
            example_bin(bin).to_str().unwrap(),
            "--name",
            name,
            "-i",
            "2",
            "--listen",
            &listen,
            "--wait-ready",
        ]);
        assert_eq!(h.statuses(name), vec!["online", "online"]);
        for _ in 0..10 {
            assert!(get(loopback(port), "/", Duration::from_secs(2))
                .unwrap()
                .contains(needle));
        }
        // The servers stop gracefully on herd's signal.
        let pids = h.pids(name);
        h.ok(&["stop", name]);
        for pid in pids {
            assert!(!alive(pid));
        }
        let exits: Vec<_> = h.app(name)["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["last_exit"]["code"].clone())
            .collect();
        assert!(
            exits.iter().all(|c| c == 0),
            "{name} did not exit cleanly: {exits:?}"
        );
    }
    h.finish();
}
