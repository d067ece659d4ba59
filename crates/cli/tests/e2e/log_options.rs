//! PM2's log options (issue #16, docs/logs.md): out_file / error_file / log_file and their
//! naming per instance, merge_logs, log_date_format, log_type json, /dev/null and
//! disable_logs, flush and reload-logs of named files, apply of changed options, a file that
//! cannot be opened, and a PM2 ecosystem file that uses them — each checked against the files
//! a real app's output lands in.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// A Python app: `LINES` numbered lines to stdout (each padded to `WIDTH` characters; with
/// `HALVES`, each line in two writes 1 ms apart), one `oops` line to stderr, then a tick a
/// line every 50 ms when `TICK` is set, else idle.
const CHATTY: &str = r#"#!/usr/bin/env python3
import os, sys, time
i = os.environ["HERD_INSTANCE"]
n = int(os.environ.get("LINES", "20"))
pad = "x" * int(os.environ.get("WIDTH", "0"))
for k in range(n):
    line = f"line {k} of instance {i} {pad}\n"
    if os.environ.get("HALVES"):
        sys.stdout.write(line[:20])
        sys.stdout.flush()
        time.sleep(0.001)
        sys.stdout.write(line[20:])
        sys.stdout.flush()
    else:
        sys.stdout.write(line)
sys.stdout.flush()
print(f"oops {i}", file=sys.stderr, flush=True)
k = 0
while True:
    if os.environ.get("TICK"):
        print(f"tick {k} of instance {i}", flush=True)
        k += 1
    time.sleep(0.05)
"#;

fn chatty(dir: &Path) -> String {
    script(dir, "chatty.py", CHATTY).display().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `path` holds `needle`; its text.
fn wait_for(path: &Path, needle: &str) -> String {
    wait_until(Duration::from_secs(10), || {
        let t = read(path);
        t.contains(needle).then_some(t.clone()).ok_or(t)
    })
    .unwrap_or_else(|t| panic!("{} never got {needle:?}: {t:?}", path.display()))
}

fn start(h: &Herd, args: &[&str]) {
    h.ok(&[&["start"], args].concat());
}

#[test]
fn named_files_are_per_instance_relative_to_cwd_and_log_file_gets_both_streams() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    let cwd = dir.path().display().to_string();
    // Relative to --cwd, in a folder that does not exist yet (PM2 makes it).
    start(
        &h,
        &[
            &app,
            "--name",
            "split",
            "-i",
            "2",
            "--cwd",
            &cwd,
            "-o",
            "logs/out.log",
            "--error",
            "logs/err.log",
            "--log",
            "logs/all.log",
        ],
    );
    let logs = dir.path().join("logs");
    for i in 0..2 {
        let out = wait_for(&logs.join(format!("out-{i}.log")), "line 19 of");
        assert!(out.contains(&format!("line 0 of instance {i} ")), "{out}");
        assert!(!out.contains(&format!("instance {}", 1 - i)), "{out}");
        assert!(!out.contains("oops"), "{out}");
        let err = wait_for(&logs.join(format!("err-{i}.log")), "oops");
        assert_eq!(err.trim(), format!("oops {i}"));
        let all = wait_for(&logs.join(format!("all-{i}.log")), "oops");
        assert!(all.contains(&format!("line 19 of instance {i} ")), "{all}");
    }
    assert!(!logs.join("out.log").exists());
    // Nothing in herd's own files for the named streams.
    assert!(!h.home().join("logs/split-0.out").exists());
    assert!(!h.home().join("logs/split-0.err").exists());
    // `herd logs` reads where the logs are.
    let shown = h.ok(&["logs", "split", "--lines", "40"]);
    assert!(shown.contains("line 19 of instance 1"), "{shown}");
    assert!(shown.contains("oops 0"), "{shown}");
    h.finish();
}

/// Three instances write lines in halves at once into one merged file: every line in it is
/// whole (without whole-line writes, the halves of different instances interleave).
#[test]
fn merged_instances_write_whole_lines_into_one_file() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    let out = dir.path().join("merged.log");
    start(
        &h,
        &[
            &app,
            "--name",
            "merged",
            "-i",
            "3",
            "--merge-logs",
            "-o",
            out.to_str().unwrap(),
            "--env",
            "LINES=500",
            "--env",
            "WIDTH=300",
            "--env",
            "HALVES=1",
        ],
    );
    let text = wait_until(Duration::from_secs(20), || {
        let t = read(&out);
        let done = (0..3).all(|i| t.contains(&format!("line 499 of instance {i} ")));
        done.then_some(t.clone()).ok_or(())
    })
    .expect("all three instances' lines in the merged file");
    let pad = "x".repeat(300);
    let mut per = [0usize; 3];
    for line in text.lines() {
        let rest = line
            .strip_suffix(pad.as_str())
            .unwrap_or_else(|| panic!("a broken line: {line:.80?}"));
        let i: usize = rest
            .trim_end()
            .rsplit(' ')
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("a broken line: {line:.80?}"));
        per[i] += 1;
    }
    assert_eq!(per, [500, 500, 500]);
    assert!(!dir.path().join("merged-0.log").exists());
    h.finish();
}

#[test]
fn log_date_format_prefixes_each_line_with_the_local_time() {
    let h = Herd::with_env(&[("TZ", "UTC")]);
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    let out = dir.path().join("dated.log");
    start(
        &h,
        &[
            &app,
            "--name",
            "dated",
            "-o",
            out.to_str().unwrap(),
            "--log-date-format",
            "YYYY-MM-DD HH:mm Z",
        ],
    );
    let text = wait_for(&out, "line 19 of");
    let today = String::from_utf8(
        std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for line in text.lines() {
        // "2026-07-02 10:19 +00:00: line 3 of instance 0"
        let (date, rest) = line.split_once(": ").unwrap();
        assert!(date.starts_with(today.trim()), "{line}");
        assert_eq!(date.len(), "2026-07-02 10:19 +00:00".len(), "{line}");
        assert!(date.ends_with(" +00:00"), "{line}");
        assert!(rest.starts_with("line "), "{line}");
    }
    // stderr, in herd's own file, is dated too.
    let err = wait_for(&h.home().join("logs/dated.err"), "oops");
    assert!(err.trim().ends_with(": oops 0"), "{err}");
    h.finish();
}

#[test]
fn log_type_json_writes_pm2s_json_lines() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    start(&h, &[&app, "--name", "js", "-i", "2", "--log-type", "json"]);
    let logs = h.home().join("logs");
    for i in 0..2u64 {
        let out = wait_for(&logs.join(format!("js-{i}.out")), "line 19 of");
        for (k, line) in out.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            let mut want = vec!["app_name", "message", "process_id", "timestamp", "type"];
            want.sort();
            assert_eq!(keys, want, "{line}");
            assert_eq!(v["message"], format!("line {k} of instance {i} \n"));
            assert_eq!(v["type"], "out");
            assert_eq!(v["process_id"], i);
            assert_eq!(v["app_name"], "js");
            // JavaScript's toISOString: 2026-07-02T10:19:58.123Z
            let ts = v["timestamp"].as_str().unwrap();
            assert!(
                ts.len() == 24 && ts.ends_with('Z') && ts.contains('T'),
                "{ts}"
            );
        }
        let err = wait_for(&logs.join(format!("js-{i}.err")), "oops");
        let v: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
        assert_eq!(v["type"], "err");
        assert_eq!(v["message"], format!("oops {i}\n"));
    }
    h.finish();
}

/// Lines a follower of `app` sees within a few seconds.
fn followed(h: &Herd, app: &str, until: &str) -> bool {
    let mut follower = h
        .command(&["logs", app, "--lines", "0", "--follow"])
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
    let mut got = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.contains(until) {
            got = true;
            break;
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    got
}

#[test]
fn dev_null_and_disable_logs_write_no_file_and_followers_still_see_lines() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    start(
        &h,
        &[
            &app,
            "--name",
            "void",
            "-o",
            "/dev/null",
            "--error",
            "/dev/null",
            "--env",
            "TICK=1",
        ],
    );
    start(
        &h,
        &[
            &app,
            "--name",
            "quiet",
            "-i",
            "2",
            "--disable-logs",
            "-o",
            "out.log",
            "--log",
            "--env",
            "TICK=1",
        ],
    );
    assert!(followed(&h, "void", "tick "), "no live line of void");
    assert!(followed(&h, "quiet", "tick "), "no live line of quiet");
    let files: Vec<String> = std::fs::read_dir(h.home().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("void") || n.starts_with("quiet"))
        .collect();
    assert!(files.is_empty(), "{files:?}");
    assert!(!Path::new(&h.home().join("out.log")).exists());
    assert!(!repo_root().join("out-0.log").exists() && !repo_root().join("out.log").exists());
    assert_eq!(h.statuses("quiet"), ["online", "online"]);
    h.finish();
}

/// The last tick number in a file.
fn last_tick(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse().ok())
}

#[test]
fn flush_empties_named_files_and_reload_logs_or_sighup_reopen_them_after_a_move() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    let out = dir.path().join("ticks.log");
    let all = dir.path().join("all.log");
    start(
        &h,
        &[
            &app,
            "--name",
            "ticks",
            "-o",
            out.to_str().unwrap(),
            "--log",
            all.to_str().unwrap(),
            "--env",
            "TICK=1",
        ],
    );
    wait_for(&out, "tick 5 ");
    wait_for(&all, "tick 5 ");
    h.ok(&["flush", "ticks"]);
    // Emptied: what comes next starts at a later tick, and no first line is left.
    let after = wait_for(&out, "tick ");
    assert!(!after.contains("line 0 of"), "{after}");
    assert!(
        !read(&all).contains("line 0 of"),
        "flush left the combined file"
    );

    // logrotate's move, then reload-logs: new lines at the original path.
    for (k, reopen) in ["reload-logs", "SIGHUP"].into_iter().enumerate() {
        let moved = dir.path().join(format!("ticks.log.{k}"));
        std::fs::rename(&out, &moved).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        match reopen {
            "reload-logs" => {
                h.ok(&["reload-logs"]);
            }
            _ => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(h.daemon_pid().unwrap()),
                nix::sys::signal::Signal::SIGHUP,
            )
            .unwrap(),
        }
        let fresh = wait_for(&out, "tick ");
        let old = read(&moved);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(read(&moved), old, "{reopen}: the moved file still grows");
        assert!(
            last_tick(&fresh).unwrap() > last_tick(&old).unwrap(),
            "{reopen}"
        );
    }
    h.finish();
}

#[test]
fn apply_of_changed_log_options_moves_the_next_processes_output() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    let file = dir.path().join("herd.toml");
    let write = |out: &str, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[[apps]]\nname = \"moved\"\nscript = \"{app}\"\ninstances = 2\nout_file = \"{out}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write("a.log", "");
    h.ok(&["start", file.to_str().unwrap()]);
    wait_for(&dir.path().join("a-1.log"), "line 19 of instance 1");
    write("b.log", "merge_logs = true\nlog_type = \"json\"\n");
    let plan = h.ok(&["apply", file.to_str().unwrap(), "--dry-run"]);
    for field in ["log.out_file", "log.merge", "log.json"] {
        assert!(plan.contains(field), "{plan}");
    }
    h.ok(&["apply", file.to_str().unwrap()]);
    let b = dir.path().join("b.log");
    let text = wait_until(Duration::from_secs(10), || {
        let t = read(&b);
        (t.contains("line 19 of instance 0") && t.contains("line 19 of instance 1"))
            .then_some(t.clone())
            .ok_or(t)
    })
    .unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["app_name"], "moved");
    }
    // The old processes' files stay as they were; no per-instance file of the new name.
    assert!(read(&dir.path().join("a-0.log")).contains("line 19 of instance 0"));
    assert!(!dir.path().join("b-0.log").exists());
    h.finish();
}

#[test]
fn a_log_file_that_cannot_be_opened_falls_back_to_herds_own_file() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let app = chatty(dir.path());
    // A folder that cannot be made: its parent is a file (fails for root too).
    std::fs::write(dir.path().join("plain"), "").unwrap();
    let bad: PathBuf = dir.path().join("plain/out.log");
    start(
        &h,
        &[&app, "--name", "fallback", "-o", bad.to_str().unwrap()],
    );
    let own = wait_for(&h.home().join("logs/fallback.out"), "line 19 of");
    let first = own.lines().next().unwrap();
    assert!(
        first.contains(&format!("cannot open log file {}", bad.display()))
            && first.contains("fix the path"),
        "{first}"
    );
    assert_eq!(h.statuses("fallback"), ["online"]);
    let daemon = read(&h.home().join("daemon.log"));
    assert!(daemon.contains("cannot open log file"), "{daemon}");
    h.finish();
}

#[test]
fn a_pm2_ecosystem_file_with_log_options_writes_where_pm2_would() {
    let h = Herd::with_env(&[("TZ", "UTC")]);
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.js");
    std::fs::write(
        &app,
        "const i = process.env.NODE_APP_INSTANCE;\nfor (let k = 0; k < 5; k++) console.log(`node line ${k} of ${i}`);\nconsole.error(`node oops ${i}`);\nsetInterval(() => {}, 1000);\n",
    )
    .unwrap();
    let file = dir.path().join("ecosystem.config.js");
    std::fs::write(
        &file,
        "module.exports = { apps: [{ name: 'eco', script: './app.js', instances: 2, exec_mode: 'cluster',\n\
         out_file: './logs/eco-out.log', error_file: './logs/eco-err.log', log_file: './logs/eco.log',\n\
         log_date_format: 'YYYY-MM-DD HH:mm:ss' }, { name: 'eco-merged', script: './app.js', instances: 2,\n\
         exec_mode: 'cluster', merge_logs: true, output: './logs/merged.log', error: '/dev/null' }] };\n",
    )
    .unwrap();
    let out = h.run(&["start", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let logs = dir.path().join("logs");
    for i in 0..2 {
        let out = wait_for(&logs.join(format!("eco-out-{i}.log")), "node line 4");
        for line in out.lines() {
            let (date, rest) = line.split_once(": ").unwrap();
            assert_eq!(date.len(), "2026-07-02 10:19:58".len(), "{line}");
            assert!(
                rest.starts_with("node line ") && rest.ends_with(&format!(" of {i}")),
                "{line}"
            );
        }
        wait_for(
            &logs.join(format!("eco-err-{i}.log")),
            &format!("node oops {i}"),
        );
        let both = wait_for(&logs.join(format!("eco-{i}.log")), "node oops");
        assert!(both.contains("node line 4"), "{both}");
    }
    let merged = wait_until(Duration::from_secs(10), || {
        let t = read(&logs.join("merged.log"));
        (t.contains("node line 4 of 0") && t.contains("node line 4 of 1"))
            .then_some(t.clone())
            .ok_or(t)
    })
    .unwrap();
    assert!(!merged.contains("oops"), "{merged}");
    h.finish();
}
