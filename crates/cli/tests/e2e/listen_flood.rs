//! One Node worker must not exhaust the daemon's file descriptors (issue #11, point 5): every
//! `listen()` on another port makes the daemon bind a socket for the app, so the daemon caps
//! them per app (`max_listen_sockets`), refuses the rest with EMFILE as the worker's `listen()`
//! reports it, and closes its copy once no live process holds a socket — so a flood leaves
//! `herd list` and other apps unharmed, and killing the flooding instances gives everything back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// The cap every test here runs with.
const MAX_LISTEN: usize = 8;

/// A worker that listens on many ports when asked (`/flood/<base>/<n>`: at once, as a loop of
/// `listen()` calls; `/cycle/<base>/<n>`: one after another, closing each before the next) and
/// answers with what its `listen()` calls reported; `/close` closes what `/flood` opened.
const FLOOD_APP: &str = r#"
const http = require('http');
const held = [];
function flood(base, n, done) {
  const r = { ok: 0, errors: {} };
  let left = n;
  const settle = () => { if (--left === 0) done(r); };
  for (let i = 0; i < n; i++) {
    const s = http.createServer();
    s.once('listening', () => { r.ok++; held.push(s); settle(); });
    s.once('error', (e) => { r.errors[e.code] = (r.errors[e.code] || 0) + 1; settle(); });
    s.listen(base + i, '127.0.0.1');
  }
}
function cycle(base, n, done) {
  const r = { ok: 0, errors: {} };
  const next = (i) => {
    if (i === n) return done(r);
    const s = http.createServer();
    s.once('listening', () => { r.ok++; s.close(() => next(i + 1)); });
    s.once('error', (e) => { r.errors[e.code] = (r.errors[e.code] || 0) + 1; next(i + 1); });
    s.listen(base + i, '127.0.0.1');
  };
  next(0);
}
const server = http.createServer((req, res) => {
  const [, what, base, n] = req.url.split('/');
  const reply = (r) => res.end(JSON.stringify({ pid: process.pid, ...r }));
  if (what === 'flood') return flood(Number(base), Number(n), reply);
  if (what === 'cycle') return cycle(Number(base), Number(n), reply);
  if (what === 'close') {
    const n = held.length;
    held.splice(0).forEach((s) => s.close());
    return reply({ closed: n });
  }
  res.end(`pid=${process.pid}`);
});
server.listen(Number(process.env.PORT));
"#;

/// `node` for these tests, or `None` (skipped) when it is missing; with `CI=true` a missing
/// node fails the test, as in `node.rs`.
fn node() -> Option<()> {
    let have = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Some(());
    }
    let msg = "node is needed for the listen flood tests; install Node.js 20 (Debian: apt-get install nodejs)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A herd whose daemon allows each app [`MAX_LISTEN`] extra sockets (and counts refusals for
/// long enough that a slow run's burst still makes one line).
fn capped_herd() -> Herd {
    let h = Herd::new();
    std::fs::write(
        h.home().join("config.toml"),
        format!("max_listen_sockets = {MAX_LISTEN}\ninstance_log_interval_ms = 600000\n"),
    )
    .unwrap();
    h
}

fn flood_app(dir: &Path) -> PathBuf {
    let p = dir.join("flood.js");
    std::fs::write(&p, FLOOD_APP).unwrap();
    p
}

/// Open fds of the daemon.
fn daemon_fds(h: &Herd) -> usize {
    let pid = h.daemon_pid().expect("daemon runs");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A block of `n` ports below the ephemeral range (so no client connection holds one), picked
/// by this process's pid so parallel runs rarely meet.
fn port_block() -> u16 {
    10_000 + (std::process::id() % 8) as u16 * 2_500
}

/// Asks the worker behind `port` to run `what` and returns its report.
fn ask(port: u16, what: &str, limit: Duration) -> Value {
    let body = get(loopback(port), what, limit)
        .unwrap_or_else(|e| panic!("{what}: no answer ({e}): a listen() got no reply"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn count(v: &Value, code: &str) -> u64 {
    v["errors"][code].as_u64().unwrap_or(0)
}

/// `herd list` answers promptly.
fn list_is_prompt(h: &Herd) {
    let t = Instant::now();
    h.list();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "herd list took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_listen_flood_is_capped_refused_with_emfile_and_released_when_the_workers_die() {
    let Some(()) = node() else { return };
    let h = capped_herd();
    let dir = tempfile::tempdir().unwrap();
    let script = flood_app(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "flood",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let other_port = free_port();
    let other_listen = format!("127.0.0.1:{other_port}");
    let hello = hello_bin();
    h.ok(&[
        "start",
        hello.to_str().unwrap(),
        "--name",
        "other",
        "--listen",
        &other_listen,
    ]);
    let baseline = daemon_fds(&h);

    // Each worker that answers floods 2,000 ports; ask until both have.
    const N: u16 = 2_000;
    let base = port_block();
    let flooders = h.pids("flood");
    let mut reports = std::collections::HashMap::new();
    let t = Instant::now();
    while reports.len() < flooders.len() && t.elapsed() < Duration::from_secs(60) {
        let r = ask(port, &format!("/flood/{base}/{N}"), Duration::from_secs(30));
        reports.insert(r["pid"].as_u64().unwrap() as u32, r);
    }
    assert_eq!(reports.len(), flooders.len(), "{reports:?}");
    let mut opened = 0;
    for r in reports.values() {
        let ok = r["ok"].as_u64().unwrap();
        let emfile = count(r, "EMFILE");
        // A port some other program holds fails with EADDRINUSE and takes no socket.
        let in_use = count(r, "EADDRINUSE");
        assert!(ok as usize <= MAX_LISTEN, "a worker got {ok} sockets: {r}");
        assert!(in_use < 50, "{r}");
        assert_eq!(ok + emfile + in_use, u64::from(N), "{r}");
        opened = opened.max(ok);
    }
    assert!(opened > 0, "{reports:?}");

    // The daemon holds at most the cap, and stays responsive.
    let during = daemon_fds(&h);
    assert!(
        during <= baseline + MAX_LISTEN + 4,
        "daemon fds went from {baseline} to {during}"
    );
    list_is_prompt(&h);

    // One clear line in the daemon's log for the burst, not one per refused listen.
    // (The daemon's log is written in the background: wait for the line.)
    let refusals = wait_until(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(h.home().join("daemon.log")).unwrap();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("refused") && l.contains("max_listen_sockets"))
            .map(str::to_string)
            .collect();
        (!lines.is_empty()).then_some(lines).ok_or(())
    })
    .expect("no refusal in the daemon's log");
    assert_eq!(
        refusals.len(),
        1,
        "want one refusal line per burst: {refusals:#?}"
    );
    assert!(
        refusals.iter().all(|l| l.contains("flood")),
        "{refusals:#?}"
    );

    // An unrelated app's killed instance is replaced.
    let victim = h.pids("other")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        let pids = h.pids("other");
        let body = get(loopback(other_port), "/", Duration::from_secs(1));
        match (pids.first(), body) {
            (Some(&p), Ok(b)) if p != victim && pid_of(&b) == p => Ok(()),
            (p, b) => Err(format!("{p:?} {b:?}")),
        }
    })
    .unwrap();

    // Killing the flooding instances gives every extra socket back.
    for pid in &flooders {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_until(Duration::from_secs(15), || {
        let pids = h.pids("flood");
        let fds = daemon_fds(&h);
        (pids.len() == 2 && pids.iter().all(|p| !flooders.contains(p)) && fds <= baseline + 2)
            .then_some(())
            .ok_or(format!("{pids:?}: daemon fds {fds}, baseline {baseline}"))
    })
    .unwrap();
    // The replacements may listen again, up to the cap.
    let r = ask(
        port,
        &format!("/flood/{base}/{}", 2 * MAX_LISTEN),
        Duration::from_secs(10),
    );
    assert_eq!(r["ok"].as_u64().unwrap(), MAX_LISTEN as u64, "{r}");
    h.ok(&["stop", "flood"]);
    let fds = daemon_fds(&h);
    assert!(
        fds <= baseline,
        "daemon fds {fds} after stop, baseline {baseline}"
    );
    list_is_prompt(&h);
    h.finish();
}

#[test]
fn servers_closed_by_the_worker_give_their_sockets_back() {
    let Some(()) = node() else { return };
    let h = capped_herd();
    let dir = tempfile::tempdir().unwrap();
    let script = flood_app(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "cycler",
        "--listen",
        &listen,
    ]);
    let baseline = daemon_fds(&h);
    // 100 distinct ports, one at a time, each closed before the next: never above the cap.
    let base = port_block() + 2_100;
    let r = ask(port, &format!("/cycle/{base}/100"), Duration::from_secs(30));
    assert_eq!(
        r["ok"].as_u64().unwrap() + count(&r, "EADDRINUSE"),
        100,
        "every listen/close pair works: {r}"
    );
    // The worker's `close` reaches the daemon after the server closed; let it arrive.
    wait_until(Duration::from_secs(5), || {
        let fds = daemon_fds(&h);
        (fds <= baseline)
            .then_some(())
            .ok_or(format!("daemon fds {fds}, baseline {baseline}"))
    })
    .unwrap();
    h.finish();
}

#[test]
fn herd_update_carries_the_extra_sockets_and_who_holds_them() {
    let Some(()) = node() else { return };
    let h = capped_herd();
    let dir = tempfile::tempdir().unwrap();
    let script = flood_app(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "holder",
        "--listen",
        &listen,
    ]);
    let baseline = daemon_fds(&h);
    let base = port_block() + 2_300;
    let r = ask(
        port,
        &format!("/flood/{base}/{}", 2 * MAX_LISTEN),
        Duration::from_secs(10),
    );
    assert_eq!(r["ok"].as_u64().unwrap(), MAX_LISTEN as u64, "{r}");
    let daemon = h.daemon_pid();
    let pids = h.pids("holder");
    h.ok(&["update"]);
    wait_until(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(h.home().join("daemon.log")).unwrap();
        log.contains("took over from the previous daemon")
            .then_some(())
            .ok_or(())
    })
    .expect("the new daemon took over");
    assert_eq!(h.daemon_pid(), daemon);
    assert_eq!(h.pids("holder"), pids);
    // The sockets went across, and the cap with them.
    let r = ask(
        port,
        &format!("/flood/{}/1", base + 100),
        Duration::from_secs(10),
    );
    assert_eq!(count(&r, "EMFILE"), 1, "{r}");
    std::net::TcpStream::connect(loopback(base)).expect("an extra socket survived the update");
    // So did who holds them: the worker's close gives them back to the new daemon.
    ask(port, "/close", Duration::from_secs(10));
    wait_until(Duration::from_secs(5), || {
        let fds = daemon_fds(&h);
        (fds <= baseline + 1)
            .then_some(())
            .ok_or(format!("daemon fds {fds}, baseline {baseline}"))
    })
    .unwrap();
    h.finish();
}
