//! `herd run` (no daemon) and the daemon's own signals.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

#[test]
fn herd_run_serves_in_the_foreground_and_stops_on_sigterm() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut run = h
        .command(&[
            "run",
            hello_bin().to_str().unwrap(),
            "--name",
            "fg",
            "-i",
            "2",
            "--listen",
            &listen,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(run.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Instance output reaches our stdout, prefixed with app and instance.
    let mut serving = 0;
    while serving < 2 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no output from herd run");
        if line.starts_with("fg:") && line.contains("serving") {
            serving += 1;
        }
    }
    let seen: HashSet<u32> = (0..40)
        .map(|_| pid_of(&get(loopback(port), "/", Duration::from_secs(2)).unwrap()))
        .collect();
    assert_eq!(seen.len(), 2);
    assert!(
        !h.home().join("herd.sock").exists(),
        "herd run must not start a daemon"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_until(Duration::from_secs(10), || {
        run.try_wait().unwrap().ok_or(())
    })
    .unwrap();
    assert!(status.success(), "herd run exited with {status:?}");
    for pid in seen {
        assert!(!alive(pid), "instance {pid} outlived herd run");
    }
    assert!(get(loopback(port), "/", Duration::from_millis(500)).is_err());
}

#[test]
fn sigterm_to_the_daemon_stops_every_app_then_the_daemon() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "api",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let pids = h.pids("api");
    let daemon = h.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        if alive(daemon as u32) {
            Err(())
        } else {
            Ok(())
        }
    })
    .expect("daemon did not exit on SIGTERM");
    for pid in pids {
        assert!(!alive(pid));
    }
    assert!(!h.home().join("herd.sock").exists());
    let log = std::fs::read_to_string(h.home().join("daemon.log")).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
    h.finish();
}

#[test]
fn herd_run_reaps_orphans_and_exits_when_every_app_is_done() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    // Leaves an orphan in its own session (beyond the group kill), then finishes.
    let job = script(
        dir.path(),
        "job.sh",
        "#!/bin/sh\nsetsid sh -c 'sleep 0.3' &\necho \"orphan $!\"\nsleep 0.5\necho done\nexit 0\n",
    );
    let out = h
        .command(&[
            "run",
            job.to_str().unwrap(),
            "--name",
            "job",
            "--no-autorestart",
            "--json-logs",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["line"] == "done" && l["app"] == "job" && l["instance"] == 0));
    let orphan: u32 = lines
        .iter()
        .find_map(|l| l["line"].as_str()?.strip_prefix("orphan ")?.parse().ok())
        .unwrap();
    // herd run was the orphan's reaper: it is gone, not a zombie left to init.
    assert!(!std::path::Path::new(&format!("/proc/{orphan}")).exists() || !alive(orphan));

    // An app that fails for good makes herd run fail.
    let bad = script(dir.path(), "bad.sh", "#!/bin/sh\nexit 3\n");
    let out = h
        .command(&["run", bad.to_str().unwrap(), "--no-autorestart"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn herd_run_takes_an_app_file() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = dir.path().join("herd.toml");
    std::fs::write(
        &file,
        format!("[[apps]]\nname = \"web\"\nscript = \"{}\"\ninstances = 2\nlisten = [\"127.0.0.1:{port}\"]\n", hello_bin().display()),
    )
    .unwrap();
    let mut run = h
        .command(&["run", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen: HashSet<u32> = wait_until(Duration::from_secs(10), || {
        let s: HashSet<u32> = (0..30)
            .filter_map(|_| get(loopback(port), "/", Duration::from_secs(1)).ok())
            .map(|b| pid_of(&b))
            .collect();
        (s.len() == 2).then_some(s.clone()).ok_or(s)
    })
    .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = wait_until(Duration::from_secs(10), || {
        run.try_wait().unwrap().ok_or(())
    })
    .unwrap();
    assert!(status.success());
    for p in seen {
        assert!(!alive(p));
    }
}

/// In a container nobody reads log files: herd's own notes (why an instance gave up) reach
/// `herd run`'s stderr, and the exit status says it failed.
#[test]
fn herd_run_prints_why_an_instance_gave_up() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let crash = script(dir.path(), "crash.sh", "#!/bin/sh\necho boom >&2\nexit 3\n");
    let out = h
        .command(&[
            "run",
            crash.to_str().unwrap(),
            "--name",
            "crash",
            "--max-restarts",
            "1",
            "--restart-delay",
            "10ms",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("crash:0 ! boom"), "{err}");
    assert!(err.contains("marked errored"), "{err}");
}
