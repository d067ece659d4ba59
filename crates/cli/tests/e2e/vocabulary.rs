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

/// A PM2 ecosystem file with every attribute of PM2 7's `lib/API/schema.json` (but `uid` and
/// `gid`, which would switch users: tests/e2e/users.rs) loads as it is; the ones herd does not
/// have are named in one warning line.
#[test]
fn a_full_pm2_ecosystem_file_loads_with_one_warning_line() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = script(
        dir.path(),
        "idle.sh",
        "#!/bin/sh\nwhile :; do sleep 1; done\n",
    );
    let file = dir.path().join("ecosystem.config.json");
    let eco = format!(
        r#"{{"apps": [{{
        "name": "everything", "script": "{app}", "args": [], "cwd": "{cwd}", "instances": 2,
        "exec_mode": "cluster", "watch": false, "ignore_watch": ["node_modules"],
        "max_memory_restart": "200M", "env": {{"A": "1"}}, "env_production": {{"A": "2"}},
        "log_date_format": "YYYY-MM-DD HH:mm Z", "error_file": "{cwd}/e.log", "out_file": "{cwd}/o.log",
        "log_file": "{cwd}/c.log", "merge_logs": true, "combine_logs": true, "pid_file": "/tmp/p.pid",
        "min_uptime": 1000, "listen_timeout": 3000, "kill_timeout": 1600, "shutdown_with_message": false,
        "wait_ready": false, "max_restarts": 10, "restart_delay": 100, "autorestart": true,
        "cron_restart": "0 3 * * *", "vizion": false, "post_update": ["npm install"], "force": false,
        "interpreter": "none", "interpreter_args": [], "node_args": [], "source_map_support": true,
        "instance_var": "INSTANCE_ID", "filter_env": ["SECRET_"], "namespace": "ns", "time": true,
        "disable_logs": false, "log_type": "json", "treekill": true, "increment_var": "BASE",
        "exp_backoff_restart_delay": 100, "stop_exit_codes": [0],
        "append_env_to_name": false, "autostart": true, "kill_retry_time": 100, "pmx": true,
        "automation": false, "name_prefix": "x", "install_url": "", "port": {port},
        "disable_source_map_support": false, "watch_delay": 1000, "watch_options": {{}},
        "execute_command": false, "trace": false, "disable_trace": true, "v8": false,
        "event_loop_inspector": false, "deep_monitoring": false, "username": "someone",
        "windowsHide": true, "write": false, "io": {{}}
    }}]}}"#,
        port = free_port(),
        app = app.display(),
        cwd = dir.path().display()
    );
    std::fs::write(&file, eco).unwrap();
    let out = h.run(&["start", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    for field in [
        "pid_file",
        "post_update",
        "watch_delay",
        "watch_options",
        "io",
        "username",
    ] {
        assert!(warnings[0].contains(field), "{err}");
    }
    for handled in [
        "instance_var",
        "cron_restart",
        "node_args",
        "filter_env",
        "out_file",
        "log_type",
        "combine_logs",
        "namespace",
    ] {
        assert!(!warnings[0].contains(handled), "{handled}: {err}");
    }
    assert_eq!(h.statuses("everything"), ["online", "online"]);
    assert_eq!(h.app("everything")["namespace"], "ns");
    assert!(h.ok(&["env", "everything:1"]).contains("INSTANCE_ID=1\n"));
    h.finish();
}

/// PM2's namespaces: a command given a namespace acts on each of its apps, an app's own name
/// comes first, `list` shows the column, and app files set it.
#[test]
fn namespaces_are_targets() {
    let h = Herd::new();
    let hello = repo_root().join("examples/hello.py");
    let hello = hello.to_str().unwrap();
    let start = |name: &str, ns: Option<&str>| {
        let port = free_port().to_string();
        let mut args = vec![
            "start",
            hello,
            "--name",
            name,
            "--port",
            &port,
            "--wait-ready",
        ];
        if let Some(ns) = ns {
            args.extend(["--namespace", ns]);
        }
        h.ok(&args);
    };
    start("users", Some("api"));
    start("orders", Some("api"));
    start("site", None);
    let before: Vec<Vec<u32>> = ["users", "orders", "site"]
        .iter()
        .map(|n| h.pids(n))
        .collect();
    let table = h.ok(&["list"]);
    assert!(
        table.lines().next().unwrap().contains("namespace"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("users") && l.contains("api")),
        "{table}"
    );
    assert_eq!(h.app("site")["namespace"], "default");

    h.ok(&["restart", "api"]);
    assert_ne!(h.pids("users"), before[0]);
    assert_ne!(h.pids("orders"), before[1]);
    assert_eq!(h.pids("site"), before[2]);
    h.ok(&["stop", "api"]);
    assert_eq!(h.app("users")["status"], "stopped");
    assert_eq!(h.app("orders")["status"], "stopped");
    assert_eq!(h.app("site")["status"], "running");
    h.ok(&["start", "api"]);
    assert_eq!(h.app("users")["status"], "running");

    // The default namespace is a target too; an app named like a namespace wins.
    h.ok(&["reload", "default"]);
    assert_ne!(h.pids("site"), before[2]);
    start("api", None);
    let users = h.pids("users");
    h.ok(&["restart", "api"]);
    assert_eq!(
        h.pids("users"),
        users,
        "an app named api is the target, not the namespace"
    );

    // A bad namespace is refused with the rule; an unknown target names namespaces.
    let e = h.fails(&["start", hello, "--name", "x", "--namespace", "all"]);
    assert!(e.contains("namespace \"all\" is not usable"), "{e}");
    let e = h.fails(&["restart", "nothing"]);
    assert!(e.contains("no app or namespace named \"nothing\""), "{e}");

    // App files: `namespace`.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.toml");
    std::fs::write(
        &file,
        format!(
            "[[apps]]\nname = \"jobs\"\nscript = \"{hello}\"\nport = {}\nnamespace = \"batch\"\n",
            free_port()
        ),
    )
    .unwrap();
    h.ok(&["start", file.to_str().unwrap()]);
    assert_eq!(h.app("jobs")["namespace"], "batch");
    // PM2's `stop FILE` and `delete FILE`: the file's apps.
    h.ok(&["stop", file.to_str().unwrap()]);
    assert_eq!(h.app("jobs")["status"], "stopped");
    h.ok(&["start", "batch"]);
    assert_eq!(h.app("jobs")["status"], "running");
    let out = h.ok(&["delete", file.to_str().unwrap()]);
    assert!(out.contains("jobs"), "{out}");
    assert!(h.list().iter().all(|a| a["name"] != "jobs"));
    h.ok(&["delete", "api"]);
    h.finish();
}
