//! Output capture: files per instance and stream, tail, follow, timestamps and rotation.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

#[test]
fn logs_are_captured_tailed_rotated_and_followed() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let chatty = script(
        dir.path(),
        "chatty.sh",
        "#!/bin/sh\ni=1\nwhile [ $i -le 300 ]; do echo \"line $i of instance $HERD_INSTANCE\"; i=$((i+1)); done\necho oops >&2\nexec sleep 300\n",
    );
    h.ok(&[
        "start",
        chatty.to_str().unwrap(),
        "--name",
        "chatty",
        "-i",
        "2",
        "--log-max-size",
        "4K",
        "--log-keep",
        "2",
        "--time",
    ]);
    let tail = wait_until(Duration::from_secs(5), || {
        let t = h.ok(&["logs", "chatty", "--lines", "3", "--out"]);
        t.contains("line 300 of instance 1")
            .then_some(t.clone())
            .ok_or(t)
    })
    .unwrap();
    assert!(tail.contains("chatty:0 | "), "{tail}");
    assert!(tail.contains("line 298 of instance 0"), "{tail}");
    assert!(!tail.contains("oops"));
    // --time prefixes each line with an RFC 3339 timestamp.
    let line = tail
        .lines()
        .find(|l| l.contains("line 300 of instance 0"))
        .unwrap();
    assert!(line.contains("Z line 300"), "{line}");
    let err = h.ok(&["logs", "chatty", "--err"]);
    assert_eq!(err.matches("oops").count(), 2, "{err}");

    let logs = h.home().join("logs");
    let size = std::fs::metadata(logs.join("chatty-0.out")).unwrap().len();
    assert!(size <= 4096, "live file is {size} bytes");
    assert!(logs.join("chatty-0.out.1").exists());
    assert!(logs.join("chatty-0.out.2").exists());
    assert!(!logs.join("chatty-0.out.3").exists());

    let json = h.ok(&["logs", "chatty", "--lines", "1", "--json", "--err"]);
    let v: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(v["stream"], "err");

    // Follow: restart the app and see its fresh output arrive.
    let mut follower = h
        .command(&["logs", "chatty", "--lines", "0", "--follow", "--out"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    h.ok(&["restart", "chatty"]);
    let mut got = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.contains("line 1 of instance") {
            got = true;
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(got, "followed logs never showed the restarted app's output");
    h.finish();
}

#[test]
fn a_fast_writer_is_not_slowed_by_capture() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    // ~50 MB of output as fast as python can write it, then a marker.
    let fast = script(
        dir.path(),
        "fast.py",
        "#!/usr/bin/env python3\nimport sys, time\nline = 'x' * 1023 + '\\n'\nt = time.time()\nfor _ in range(50_000):\n    sys.stdout.write(line)\nsys.stdout.flush()\nprint('done in %.2f s' % (time.time() - t), flush=True)\ntime.sleep(300)\n",
    );
    h.ok(&[
        "start",
        fast.to_str().unwrap(),
        "--name",
        "fast",
        "--log-max-size",
        "8M",
        "--log-keep",
        "1",
    ]);
    let done = wait_until(Duration::from_secs(30), || {
        let t = h.ok(&["logs", "fast", "--lines", "1"]);
        t.contains("done in").then_some(t.clone()).ok_or(t)
    })
    .unwrap();
    let secs: f64 = done
        .split("done in ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs < 10.0, "writing 50 MB took {secs} s under herd");
    // Disk use stays bounded by rotation: live file + one rotated, 8 MiB each.
    let total: u64 = std::fs::read_dir(h.home().join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        total <= 2 * 8 * 1024 * 1024 + 4096,
        "logs take {total} bytes"
    );
    h.finish();
}
