//! `herd monit` through a real terminal: a private tmux server runs it in a pane; the test
//! types keys (`send-keys`) and reads the screen (`capture-pane`), as a person would.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::*;

/// A tmux server of this test only (its own socket name and directory), killed when dropped,
/// the test failing or not.
struct Tmux {
    socket: String,
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `command` in a `width`×`height` pane that stays on screen after the command ends.
    /// `None` (loudly; a failure with `CI=true`) when tmux is not installed.
    fn start(command: &str, width: u16, height: u16) -> Option<Self> {
        let found = Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            let msg = "tmux is needed for the monit tests (a real terminal); install it (Debian: apt-get install tmux; scripts/test does)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("herd-tmux-")
            .tempdir()
            .unwrap();
        // No status line (the pane is the whole window); the pane stays once its command
        // has exited, so that what it printed last can be read.
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g status off\nset -g remain-on-exit on\n").unwrap();
        let t = Self {
            socket: format!("herd-monit-{}", std::process::id()),
            dir,
        };
        let out = t.run(&[
            "-f",
            conf.to_str().unwrap(),
            "new-session",
            "-d",
            "-s",
            "monit",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(t)
    }

    fn run(&self, args: &[&str]) -> Output {
        // -u: UTF-8 whatever the locale, so the box drawing comes through as it is.
        Command::new("tmux")
            .args(["-u", "-L", &self.socket])
            .args(args)
            .env("TMUX_TMPDIR", self.dir.path())
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// What the pane shows now.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "monit"]).stdout)
            .into_owned()
    }

    /// The pane's lines with those scrolled above it (tmux moves lines there when a window
    /// shrinks).
    fn screen_and_history(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-S", "-", "-t", "monit"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` as it is.
    fn keys(&self, text: &str) {
        let out = self.run(&["send-keys", "-t", "monit", "-l", text]);
        assert!(out.status.success(), "tmux send-keys {text:?} failed");
    }

    /// A tmux format of the pane, e.g. `#{pane_dead}`.
    fn format(&self, f: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", "monit", f]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until the screen satisfies `pred`; fails with the last screen otherwise.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_for_in(Self::screen, what, pred)
    }

    fn wait_for_in(
        &self,
        capture: fn(&Self) -> String,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        wait_until(Duration::from_secs(15), || {
            let s = capture(self);
            if pred(&s) {
                Ok(s)
            } else {
                Err(s)
            }
        })
        .unwrap_or_else(|s| panic!("waited 15 s for {what}; the screen shows:\n{s}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The `herd monit` processes of `h`.
fn monit_pids(h: &Herd) -> Vec<i32> {
    h.leftovers()
        .into_iter()
        .filter(|&pid| args(pid).get(1).is_some_and(|a| a == "monit"))
        .collect()
}

fn args(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// `herd monit` of `h` in a `width`×`height` tmux pane; `None` when tmux is missing.
///
/// After monit the shell prints whether it exited and the terminal's line mode (`icanon` when
/// raw mode was turned off, `-icanon` when it was left on), then waits for Enter, so that the
/// cursor can be looked at before the pane dies (a dead pane hides it).
fn open_monit(h: &Herd, width: u16, height: u16) -> Option<Tmux> {
    let command = format!(
        "HERD_HOME={} {} monit; echo MONIT-EXITED $?; stty -a | grep -o 'icanon\\|-icanon'; read _",
        quoted(h.home()),
        quoted(&herd_bin())
    );
    Tmux::start(&command, width, height)
}

/// Checks, after a key that quits, that monit exited with 0 and left the terminal as it was:
/// raw mode off, the alternate screen left, the cursor shown; then lets the pane's shell end.
fn assert_exited_and_restored(t: &Tmux, h: &Herd) {
    let after = t.wait_for_in(
        Tmux::screen_and_history,
        "monit's exit and the shell's report",
        |s| s.contains("MONIT-EXITED") && s.lines().any(|l| l.trim().ends_with("icanon")),
    );
    assert!(after.contains("MONIT-EXITED 0"), "{after}");
    assert!(
        after.lines().any(|l| l.trim() == "icanon"),
        "raw mode was left on:\n{after}"
    );
    assert_eq!(
        t.format("#{alternate_on} #{cursor_flag}"),
        "0 1",
        "alternate screen left and cursor shown"
    );
    let monits = monit_pids(h);
    assert!(monits.is_empty(), "herd monit is still running: {monits:?}");
    let out = t.run(&["send-keys", "-t", "monit", "Enter"]);
    assert!(out.status.success());
    wait_until(Duration::from_secs(5), || {
        let dead = t.format("#{pane_dead}");
        (dead == "1").then_some(()).ok_or(dead)
    })
    .expect("the pane's shell exited");
}

#[test]
fn monit_shows_instances_and_live_logs_scales_restarts_resizes_and_quits_leaving_the_terminal_as_it_was(
) {
    let h = Herd::new();
    let port = free_port();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "web",
        "-i",
        "2",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let first = wait_until(Duration::from_secs(10), || {
        let p = h.pids("web");
        (p.len() == 2).then_some(p.clone()).ok_or(p)
    })
    .unwrap();
    let Some(t) = open_monit(&h, 120, 40) else {
        return;
    };

    t.wait_for(
        "both instances, instance 0's log line and the help line",
        |s| {
            first.iter().all(|p| s.contains(&p.to_string()))
                && s.contains(&format!("hello: instance 0 pid {}", first[0]))
                && s.lines()
                    .filter(|l| l.contains("web") && l.contains("online"))
                    .count()
                    == 2
                && s.contains("q quit")
        },
    );

    // + asks, y scales.
    t.keys("+");
    t.wait_for("the scale question", |s| {
        s.contains("Scale web from 2 to 3 instances? y: yes")
    });
    t.keys("y");
    let three = wait_until(Duration::from_secs(15), || {
        let p = h.pids("web");
        (p.len() == 3).then_some(p.clone()).ok_or(p)
    })
    .expect("3 instances after + and y");
    t.wait_for("the third instance", |s| {
        s.contains(&three[2].to_string()) && s.contains("web scaled to 3")
    });

    // r asks, y restarts: every pid changes, and instance 0's new log line shows live.
    t.keys("r");
    t.wait_for("the restart question", |s| {
        s.contains("Restart every instance of web at once? y: yes")
    });
    t.keys("y");
    let restarted = wait_until(Duration::from_secs(15), || {
        let p = h.pids("web");
        (p.len() == 3 && p.iter().all(|p| !three.contains(p)))
            .then_some(p.clone())
            .ok_or(p)
    })
    .expect("new pids after r and y");
    t.wait_for("the new pids and instance 0's new log line", |s| {
        restarted.iter().all(|p| s.contains(&p.to_string()))
            && s.contains(&format!("hello: instance 0 pid {}", restarted[0]))
            && s.contains("web restarted")
    });

    // A smaller terminal: the frame is drawn again to fit, help line at the bottom.
    let out = t.run(&["resize-window", "-t", "monit", "-x", "80", "-y", "24"]);
    assert!(out.status.success(), "tmux resize-window failed");
    let small = t.wait_for("the frame redrawn at 80×24", |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 24
            && lines.first().is_some_and(|l| l.starts_with("┌ herd monit"))
            && lines.last().is_some_and(|l| l.contains("q quit"))
            && restarted.iter().all(|p| s.contains(&p.to_string()))
    });
    assert!(
        small.lines().all(|l| l.chars().count() <= 80),
        "a line wider than the pane:\n{small}"
    );

    // q quits: monit's process is gone and the terminal is as it was.
    t.keys("q");
    assert_exited_and_restored(&t, &h);
    drop(t);
    h.finish();
}

/// An app using PM2's `@pm2/io` (the real package): its metrics show beside the selected
/// instance's logs, as `pm2 monit` shows them.
#[test]
fn monit_shows_an_instances_pm2_io_metrics() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    h.ok(&[
        "start",
        base.join("apps/pm2io.js").to_str().unwrap(),
        "--name",
        "io",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let Some(t) = open_monit(&h, 120, 32) else {
        return;
    };
    t.wait_for("the instance's @pm2/io metrics", |s| {
        s.contains("@pm2/io metrics") && s.contains("Queue length 7 jobs")
    });
    t.keys("q");
    assert_exited_and_restored(&t, &h);
    drop(t);
    h.finish();
}

#[test]
fn ctrl_c_quits_monit_as_q_does() {
    let h = Herd::new();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "web",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let Some(t) = open_monit(&h, 100, 30) else {
        return;
    };
    t.wait_for("the first frame", |s| {
        s.contains("web") && s.contains("q quit")
    });
    // Asked a question first: Ctrl-C still quits.
    t.keys("s");
    t.wait_for("the stop question", |s| s.contains("Stop web"));
    let out = t.run(&["send-keys", "-t", "monit", "C-c"]);
    assert!(out.status.success());
    assert_exited_and_restored(&t, &h);
    assert_eq!(h.statuses("web"), ["online"], "nothing was stopped");
    drop(t);
    h.finish();
}

#[test]
fn sigterm_to_monit_puts_the_terminal_back() {
    let h = Herd::new();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "web",
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let Some(t) = open_monit(&h, 100, 30) else {
        return;
    };
    t.wait_for("the first frame", |s| {
        s.contains("web") && s.contains("q quit")
    });
    let monit = monit_pids(&h);
    assert_eq!(monit.len(), 1, "one herd monit: {monit:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monit[0]),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_exited_and_restored(&t, &h);
    drop(t);
    h.finish();
}

#[test]
fn monit_without_a_terminal_says_to_use_list() {
    let h = Herd::new();
    let err = h.fails(&["monit"]);
    assert!(
        err.contains("needs a terminal") && err.contains("herd list"),
        "{err}"
    );
    assert!(h.daemon_pid().is_none(), "no daemon started for nothing");
}
