//! Races between commands and the life of instance slots, as users meet them: a scale-down or
//! a stop while a rolling reload's next process is starting. Each test is named after what
//! broke (issue #12).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// A Python server on fd 3 that says READY=1 `delay` seconds after it starts.
fn slow_ready(dir: &std::path::Path, delay: f64) -> PathBuf {
    script(
        dir,
        "slow_ready.py",
        &format!(
            r#"#!/usr/bin/env python3
import os, socket, time, threading
s = socket.socket(fileno=3)
def serve():
    while True:
        c, _ = s.accept()
        c.recv(4096)
        c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npid=" + str(os.getpid()).encode())
        c.close()
threading.Thread(target=serve, daemon=True).start()
time.sleep({delay})
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
while True:
    time.sleep(60)
"#
        ),
    )
}

/// Runs a herd command in the background; returns a handle to wait for it with a limit.
fn spawn(h: &Herd, args: &[&str]) -> std::process::Child {
    h.command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` up to `limit`; kills it and fails if it hangs.
fn finish_within(mut child: std::process::Child, limit: Duration, what: &str) -> String {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return format!(
                "{status}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn scale_down_while_a_reload_starts_the_last_slot_does_not_hang() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = slow_ready(dir.path(), 1.5);
    let port = free_port();
    h.ok(&[
        "start",
        app.to_str().unwrap(),
        "--name",
        "web",
        "-i",
        "2",
        "--wait-ready",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let reload = spawn(&h, &["reload", "web"]);
    // Slot 0's next process is ready at ~1.5 s, and slot 1's next one starts then; the scale
    // comes while it is starting (the user's report: 2.2 s after the reload).
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(h.home().join("daemon.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("new process ready") && l.contains("instance=0"))
            .then_some(())
            .ok_or(())
    })
    .expect("slot 0 was never reloaded");
    std::thread::sleep(Duration::from_millis(700));
    let scale = spawn(&h, &["scale", "web", "1"]);
    let r = finish_within(reload, Duration::from_secs(15), "herd reload");
    let s = finish_within(scale, Duration::from_secs(15), "herd scale");
    eprintln!("reload: {r}\nscale: {s}");
    // One instance, online, and every other process of the app gone.
    wait_until(Duration::from_secs(10), || {
        let a = h.app("web");
        let ps = a["processes"].as_array().unwrap().clone();
        (ps.len() == 1 && ps[0]["status"] == "online")
            .then_some(())
            .ok_or(a)
    })
    .unwrap_or_else(|a| panic!("not one online instance: {a}"));
    let pid = h.pids("web")[0];
    let others: Vec<i32> = h
        .leftovers()
        .into_iter()
        .filter(|&p| p != pid as i32 && !h.is_herd(p))
        .collect();
    assert!(others.is_empty(), "processes left running: {others:?}");
    // (This Python server dies at SIGTERM without finishing what it accepted, so a request
    // may meet the old process as it goes: ask until the one left answers.)
    wait_until(Duration::from_secs(5), || {
        get(loopback(port), "/", Duration::from_secs(2))
    })
    .unwrap();
    h.finish();
}

#[test]
fn stop_while_a_reload_starts_a_slot_stops_everything() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = slow_ready(dir.path(), 1.0);
    h.ok(&[
        "start",
        app.to_str().unwrap(),
        "--name",
        "web",
        "-i",
        "2",
        "--wait-ready",
        "--port",
        &free_port().to_string(),
    ]);
    let reload = spawn(&h, &["reload", "web"]);
    std::thread::sleep(Duration::from_millis(1500));
    let stop = spawn(&h, &["stop", "web"]);
    finish_within(reload, Duration::from_secs(15), "herd reload");
    finish_within(stop, Duration::from_secs(15), "herd stop");
    wait_until(Duration::from_secs(10), || {
        let left: Vec<i32> = h
            .leftovers()
            .into_iter()
            .filter(|&p| !h.is_herd(p))
            .collect();
        left.is_empty().then_some(()).ok_or(left)
    })
    .unwrap_or_else(|l| panic!("processes left after stop: {l:?}"));
    assert!(h.statuses("web").iter().all(|s| s == "stopped"));
    h.finish();
}
