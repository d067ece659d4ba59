//! `herd update`: the daemon re-executes the installed binary in its own process and takes
//! over every instance, socket, pipe and channel; no instance restarts, no request fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// A copy of the herd binary at `dir/<name>/herd`, standing for an installed release.
fn copy_of_herd(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("herd");
    std::fs::copy(herd_bin(), &p).unwrap();
    p
}

/// Starts the test server as app `rs` with `-i 2` on `port`, by the daemon of `bin`.
fn start_rs(h: &Herd, bin: &Path, port: u16) {
    let hello = hello_bin();
    let port = port.to_string();
    let args = [
        "start",
        hello.to_str().unwrap(),
        "--name",
        "rs",
        "-i",
        "2",
        "--port",
        &port,
    ];
    h.ok_with(bin, &args);
}

fn all_pids(h: &Herd) -> Vec<u32> {
    let mut pids: Vec<u32> = h
        .list()
        .iter()
        .flat_map(|a| a["processes"].as_array().unwrap().clone())
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect();
    pids.sort_unstable();
    pids
}

fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn update_under_load_keeps_every_pid_and_fails_no_request() {
    let h = Herd::new();
    let bins = tempfile::tempdir().unwrap();
    let old = copy_of_herd(bins.path(), "old");
    let new = copy_of_herd(bins.path(), "new");
    let (rust_port, node_port) = (free_port(), free_port());
    start_rs(&h, &old, rust_port);
    let node = node_fixture();
    if let Some(base) = &node {
        let np = node_port.to_string();
        let script = base.join("apps/http.js");
        h.ok_with(
            &old,
            &[
                "start",
                script.to_str().unwrap(),
                "--name",
                "web",
                "-i",
                "2",
                "--port",
                &np,
            ],
        );
    }
    // A line half written when the update comes, finished after it: the pump's partial
    // line crosses the update (with --time, lines are cut and stamped by the daemon).
    let dir = tempfile::tempdir().unwrap();
    let half = script(
        dir.path(),
        "half.sh",
        "#!/bin/sh\nprintf 'before-'\nsleep 3\necho after\nexec sleep 1000\n",
    );
    h.ok_with(
        &old,
        &["start", half.to_str().unwrap(), "--name", "half", "--time"],
    );

    // A follower of the logs keeps following across the updates.
    let mut follower = h
        .command_with(&new, &["logs", "half", "--follow", "--lines", "0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = {
        let out = follower.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.contains("before-"))
        })
    };

    // So does a watcher of the bus.
    let mut watcher = h
        .command_with(&new, &["bus"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watched = {
        let out = watcher.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .find(|l| l.contains("after-the-updates"))
        })
    };

    let daemon = h.daemon_pid().unwrap();
    assert_eq!(exe_of(daemon), old);
    let before = all_pids(&h);
    assert_eq!(before.len(), if node.is_some() { 5 } else { 3 });

    // Commands keep working while the daemon is replaced: those that arrive meanwhile are
    // answered `busy` and sent again by the CLI, or wait in the socket's queue.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let stop = stop.clone();
        let home = h.home().to_path_buf();
        let bin = new.clone();
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && runs < 2000 {
                let args: &[&str] = match runs % 3 {
                    0 => &["list", "--json"],
                    1 => &["describe", "all", "--json"],
                    _ => &["send", "rs", r#"{"n":1}"#],
                };
                let out = std::process::Command::new(&bin)
                    .args(args)
                    .env("HERD_HOME", &home)
                    .output()
                    .unwrap();
                if !out.status.success() {
                    failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
                runs += 1;
            }
            (runs, failures)
        })
    };
    let mut messages = Vec::new();
    let rust_loads = under_load(loopback(rust_port), "/", 2, || {
        let mut during = || {
            for _ in 0..3 {
                messages.push(h.ok_with(&new, &["update"]));
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        if node.is_some() {
            assert_no_failures(
                &under_load(loopback(node_port), "/", 2, during),
                "the update (node app)",
            );
        } else {
            during();
        }
    });
    assert_no_failures(&rust_loads, "the update (rust app)");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, failures) = lister.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {runs} commands failed: {failures:?}",
        failures.len()
    );
    assert!(runs > 5, "only {runs} commands ran");
    eprintln!("{runs} commands during the updates; {messages:?}");
    for m in &messages {
        assert!(m.contains("daemon updated in place"), "{m}");
        assert!(m.contains(&format!("pid {daemon}")), "{m}");
    }
    assert_eq!(h.daemon_pid(), Some(daemon), "the daemon keeps its pid");
    assert_eq!(exe_of(daemon), new, "the daemon runs the new binary");
    assert_eq!(all_pids(&h), before, "no instance was restarted");

    // The half-written line was finished after the update and logged as one line.
    let line = wait_until(Duration::from_secs(8), || {
        let logs = h.ok(&["logs", "half", "--lines", "5"]);
        logs.lines()
            .find(|l| l.contains("before-"))
            .map(str::to_string)
            .ok_or(logs)
    })
    .unwrap();
    assert!(line.contains("before-after"), "{line}");
    let seen = wait_until(Duration::from_secs(5), || {
        if followed.is_finished() {
            Ok(())
        } else {
            Err(())
        }
    });
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen.is_ok(), "the follower saw nothing after the updates");
    let seen = followed.join().unwrap();
    assert!(
        seen.as_deref().is_some_and(|l| l.contains("before-after")),
        "{seen:?}"
    );

    h.ok(&["send", "rs", r#""after-the-updates""#]);
    let seen = wait_until(Duration::from_secs(5), || {
        watched.is_finished().then_some(()).ok_or(())
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        seen.is_ok(),
        "the bus watcher saw nothing after the updates"
    );
    assert!(watched.join().unwrap().is_some());

    // Supervision goes on: a killed instance is replaced, and its output is captured.
    let victim = h.pids("rs")[1];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let replaced = wait_until(Duration::from_secs(5), || {
        let p = h.pids("rs");
        (p.len() == 2 && p[1] != victim && h.statuses("rs")[1] == "online")
            .then_some(p[1])
            .ok_or(p)
    })
    .unwrap();
    wait_until(Duration::from_secs(5), || {
        let logs = h.ok(&["logs", "rs", "--lines", "10"]);
        logs.contains(&format!("pid {replaced}"))
            .then_some(())
            .ok_or(logs)
    })
    .unwrap();

    // The Node workers' channels crossed the update: messages, then a rolling reload that
    // speaks the cluster protocol over them, fail nothing.
    if node.is_some() {
        let reply = h.ok(&["request", "web:0", r#"{"ping":7}"#]);
        let v: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
        assert_eq!(v["echo"]["ping"], 7);
        let loads = under_load(loopback(node_port), "/", 2, || {
            h.ok(&["reload", "web"]);
        });
        assert_no_failures(&loads, "a reload after the update");
    }
    h.finish();
}

#[test]
fn a_refused_update_leaves_the_daemon_as_it_was() {
    use std::io::{BufRead, Write};
    let h = Herd::new();
    let port = free_port().to_string();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "rs",
        "--port",
        &port,
    ]);
    let daemon = h.daemon_pid().unwrap();
    let pids = h.pids("rs");
    let ask = |line: &str| {
        let mut s = std::os::unix::net::UnixStream::connect(h.home().join("herd.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply).unwrap();
        reply
    };
    let missing = ask(r#"{"v":1,"cmd":"update","exe":"/nonexistent/herd","formats":[1]}"#);
    assert!(missing.contains("cannot be executed"), "{missing}");
    let future = ask(&format!(
        r#"{{"v":1,"cmd":"update","exe":"{}","formats":[99]}}"#,
        herd_bin().display()
    ));
    assert!(
        future.contains("herd save && herd kill && herd resurrect"),
        "{future}"
    );
    assert_eq!(h.daemon_pid(), Some(daemon));
    assert_eq!(h.pids("rs"), pids);
    get(loopback(port.parse().unwrap()), "/", Duration::from_secs(2)).unwrap();
    // Without a daemon there is nothing to update, and none is started.
    h.ok(&["kill"]);
    let out = h.ok(&["update"]);
    assert!(out.contains("no herd daemon runs"), "{out}");
    assert_eq!(h.daemon_pid().filter(|&p| alive(p as u32)), None);
    h.finish();
}

/// A new binary that cannot take over gives the state back: the previous program runs again
/// (from the fd it kept, even if its file was replaced) and every instance goes on.
#[test]
fn a_new_binary_that_cannot_take_over_gives_everything_back() {
    use std::io::{BufRead, Write};
    let h = Herd::new();
    let bins = tempfile::tempdir().unwrap();
    let old = copy_of_herd(bins.path(), "old");
    let port = free_port();
    start_rs(&h, &old, port);
    let daemon = h.daemon_pid().unwrap();
    let pids = h.pids("rs");
    // The "new release": it fails while taking over (simulated by HERD_FAULT_TAKEOVER).
    let broken = script(
        bins.path(),
        "broken-herd",
        &format!(
            "#!/bin/sh\nHERD_FAULT_TAKEOVER='simulated failure' exec {} \"$@\"\n",
            herd_bin().display()
        ),
    );
    // The old binary's file is gone meanwhile, as when a package replaces it.
    std::fs::remove_file(&old).unwrap();
    let loads = under_load(loopback(port), "/", 2, || {
        let mut s = std::os::unix::net::UnixStream::connect(h.home().join("herd.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(
            format!(
                "{{\"v\":1,\"cmd\":\"update\",\"exe\":\"{}\",\"formats\":[1]}}\n",
                broken.display()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply).unwrap();
        assert!(
            reply.contains("could not take over: simulated failure"),
            "{reply}"
        );
        assert!(reply.contains("runs on as it was"), "{reply}");
    });
    assert_no_failures(&loads, "the update (rust app)");
    assert_eq!(h.daemon_pid(), Some(daemon));
    assert_eq!(h.pids("rs"), pids);
    assert!(
        exe_of(daemon).to_string_lossy().contains("old/herd"),
        "{:?}",
        exe_of(daemon)
    );
    // It still supervises and updates.
    let out = h.ok(&["update"]);
    assert!(out.contains("daemon updated in place"), "{out}");
    assert_eq!(h.pids("rs"), pids);
    h.finish();
}

/// Output of a program whose instance has exited but whose detached child still holds the
/// pipe is read on after the update (the pipe crosses it, with its half-written line).
///
/// Only process-group containment lets a detached child outlive its instance: in a cgroup it
/// is killed with the instance's exit (as systemd does), so this runs with cgroups off.
#[test]
fn output_of_a_detached_child_crosses_the_update() {
    let h = Herd::with_env(&[("HERD_CGROUPS", "off")]);
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "detach.sh",
        "#!/bin/sh\nsetsid sh -c 'printf \"child-\"; sleep 2; echo line; sleep 1' &\nsleep 0.5\nexit 0\n",
    );
    h.ok(&[
        "start",
        prog.to_str().unwrap(),
        "--name",
        "det",
        "--no-autorestart",
        "--time",
    ]);
    wait_until(Duration::from_secs(5), || {
        let s = h.statuses("det");
        (s == ["exited"]).then_some(()).ok_or(s)
    })
    .unwrap();
    let out = h.ok(&["update"]);
    assert!(out.contains("daemon updated in place"), "{out}");
    let logs = wait_until(Duration::from_secs(8), || {
        let l = h.ok(&["logs", "det", "--lines", "5"]);
        l.contains("child-line").then_some(l.clone()).ok_or(l)
    });
    assert!(logs.is_ok(), "{logs:?}");
    h.finish();
}
