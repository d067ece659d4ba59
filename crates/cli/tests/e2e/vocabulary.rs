//! PM2's daily vocabulary (issue #16): `herd signal` (sendSignal), `herd reset`, `herd pid`,
//! `herd env`, `herd list --sort`, `herd report`.

use std::time::Duration;

use crate::common::*;

#[test]
fn signal_reset_pid_env_sort_and_report() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    // A program that writes a line when it gets SIGUSR2, and otherwise waits.
    let app = script(
        dir.path(),
        "usr2.sh",
        "#!/bin/sh\ntrap 'echo got-usr2 $HERD_INSTANCE' USR2\nwhile :; do sleep 0.05; done\n",
    );
    h.ok(&[
        "start",
        app.to_str().unwrap(),
        "--name",
        "sig",
        "-i",
        "2",
        "--env",
        "API_TOKEN=hunter2",
        "--env",
        "MODE=plain",
    ]);
    h.ok(&["start", app.to_str().unwrap(), "--name", "another"]);
    let pids = h.pids("sig");

    // pid: one per line, the app's or every app's.
    let out = h.ok(&["pid", "sig"]);
    let listed: Vec<u32> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(listed, pids);
    assert_eq!(h.ok(&["pid"]).lines().count(), 3);

    // signal: one instance, then the app.
    let out = h.ok(&["signal", "SIGUSR2", "sig:1"]);
    assert!(out.contains("sent SIGUSR2 to 1 process"), "{out}");
    let logs = wait_until(Duration::from_secs(5), || {
        let l = h.ok(&["logs", "sig", "--lines", "20"]);
        l.contains("got-usr2 1").then_some(l.clone()).ok_or(l)
    })
    .unwrap();
    assert!(!logs.contains("got-usr2 0"), "{logs}");
    h.ok(&["sendSignal", "USR2", "sig"]);
    wait_until(Duration::from_secs(5), || {
        let l = h.ok(&["logs", "sig", "--lines", "20"]);
        l.contains("got-usr2 0").then_some(()).ok_or(l)
    })
    .unwrap();
    let e = h.fails(&["signal", "SIGNOPE", "sig"]);
    assert!(e.contains("unknown signal"), "{e}");

    // env: what the process runs with, secrets masked unless asked.
    let out = h.ok(&["env", "sig:1"]);
    assert!(out.contains("HERD_INSTANCE=1"), "{out}");
    assert!(out.contains("MODE=plain"), "{out}");
    assert!(
        out.contains("API_TOKEN=********") && !out.contains("hunter2"),
        "{out}"
    );
    assert!(h
        .ok(&["env", "sig:1", "--show-secrets"])
        .contains("API_TOKEN=hunter2"));

    // reset: restart counts back to 0.
    h.ok(&["restart", "sig"]);
    let restarts = |h: &Herd| h.app("sig")["processes"][0]["restarts"].as_u64().unwrap();
    assert!(restarts(&h) > 0);
    h.ok(&["reset", "sig"]);
    assert_eq!(restarts(&h), 0);

    // list --sort.
    let out = h.ok(&["list", "--sort", "name:desc"]);
    let first = out.lines().nth(1).unwrap();
    assert!(first.contains("sig"), "{out}");
    let out = h.ok(&["list", "--sort", "name"]);
    assert!(out.lines().nth(1).unwrap().contains("another"), "{out}");
    assert!(h
        .fails(&["list", "--sort", "colour"])
        .contains("sort by name"));

    // report: versions, the daemon, the apps (masked), the log's end.
    let out = h.ok(&["report"]);
    assert!(
        out.contains("herd report") && out.contains("daemon: pid"),
        "{out}"
    );
    assert!(out.contains("sig") && !out.contains("hunter2"), "{out}");
    h.finish();
}

/// PM2's `autostart`, `instance_var`, `increment_var` and `filter_env`, from an app file.
#[test]
fn autostart_instance_var_increment_var_and_filter_env() {
    let h = Herd::with_env(&[("XTEST_FILTERED_X", "1"), ("XTEST_KEPT", "1")]);
    let dir = tempfile::tempdir().unwrap();
    let app = script(
        dir.path(),
        "idle.sh",
        "#!/bin/sh\nwhile :; do sleep 1; done\n",
    );
    let file = dir.path().join("herd.toml");
    std::fs::write(
        &file,
        format!(
            "[[apps]]\nname = \"vars\"\nscript = \"{a}\"\ninstances = 2\ninstance_var = \"INST\"\nincrement_var = \"BASE\"\nfilter_env = [\"XTEST_FILTERED_\"]\nenv = {{ BASE = \"7000\" }}\n\n[[apps]]\nname = \"later\"\nscript = \"{a}\"\nautostart = false\n",
            a = app.display()
        ),
    )
    .unwrap();
    h.ok(&["start", file.to_str().unwrap()]);
    let env1 = h.ok(&["env", "vars:1"]);
    assert!(
        env1.contains("INST=1\n") && env1.contains("BASE=7001\n"),
        "{env1}"
    );
    assert!(env1.contains("XTEST_KEPT=1"), "{env1}");
    assert!(!env1.contains("XTEST_FILTERED_X"), "{env1}");
    assert!(h.ok(&["env", "vars:0"]).contains("BASE=7000\n"));
    // Registered, not started; `herd start NAME` starts it.
    assert_eq!(h.statuses("later"), ["stopped"]);
    assert_eq!(h.app("later")["status"], "stopped");
    h.ok(&["start", "later"]);
    assert_eq!(h.statuses("later"), ["online"]);
    h.finish();
}
