//! Issue #11: no instance, no other user and no full disk can take herd down. Each test is the
//! regression test of one fault found by trying: a full disk, SIGHUP, a hostile HERD_HOME, a
//! symbolic link in `logs/`, a socket replaced by another user, and a flood of idle control
//! connections.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// `nobody`: the other user of these tests.
const NOBODY: u32 = 65534;

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a test that needs root (mounts, a second user) can run; in CI it must.
fn needs_root(what: &str) -> bool {
    if root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} needs root (CI runs as root here)"
    );
    eprintln!("SKIPPED: {what} needs root");
    false
}

fn start_hello(h: &Herd, name: &str, n: &str) -> u16 {
    let port = free_port();
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        name,
        "-i",
        n,
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    port
}

fn kill9(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Kills instance `i` of `app` and waits for its replacement to be online.
fn kill_and_wait_replaced(h: &Herd, app: &str, i: usize) {
    let old = h.pids(app)[i];
    kill9(old);
    wait_until(Duration::from_secs(10), || {
        let a = h.app(app);
        let p = &a["processes"][i];
        (p["status"] == "online" && p["pid"].as_u64() != Some(u64::from(old)))
            .then_some(())
            .ok_or(a)
    })
    .unwrap_or_else(|a| panic!("instance {i} of {app} not replaced: {a}"));
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Option<Self> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

/// Fills the file system of `dir`: one big file, then the slack in the last page of every
/// log (tmpfs lets a file grow into it), so the next write of any log fails.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=64k", "count=10000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let mut logs = vec![dir.join("daemon.log")];
    for e in std::fs::read_dir(dir.join("logs")).unwrap().flatten() {
        logs.push(e.path());
    }
    for log in logs {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        let line = [b'#'; 63].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..128 {
            if std::io::Write::write_all(&mut f, &line).is_err() {
                break;
            }
        }
    }
    path
}

#[test]
fn a_full_disk_stops_neither_the_daemon_nor_an_app() {
    if !needs_root("mounting a small tmpfs") {
        return;
    }
    let h = Herd::new();
    let Some(_fs) = Tmpfs::mount(h.home(), "2m") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs here"
        );
        eprintln!("SKIPPED: the kernel refuses a tmpfs mount here");
        return;
    };
    let port = start_hello(&h, "web", "2");
    let daemon = h.daemon_pid().unwrap();
    let filler = fill(h.home());
    // Each kill makes the daemon log, and the replacement write its greeting: both fail.
    kill_and_wait_replaced(&h, "web", 0);
    kill_and_wait_replaced(&h, "web", 1);
    kill_and_wait_replaced(&h, "web", 0);
    assert!(alive(daemon as u32), "the daemon died on a full disk");
    assert_eq!(h.daemon_pid(), Some(daemon));
    get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    let out = h.run(&["list"]);
    assert!(out.status.success());
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(
        warn.contains("warning:") && warn.contains("failed") && warn.contains("still failing"),
        "no warning about failed writes: {warn}"
    );
    let out = h.run(&["describe", "web"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("writes to"));
    // Space again: writes work again, and the warning says so.
    std::fs::remove_file(filler).unwrap();
    kill_and_wait_replaced(&h, "web", 1);
    let warn = String::from_utf8_lossy(&h.run(&["list"]).stderr).into_owned();
    assert!(warn.contains("writing again"), "{warn}");
    let log = std::fs::read_to_string(h.home().join("daemon.log")).unwrap();
    assert!(log.contains("could not be written"), "{log}");
    assert!(h
        .ok(&["logs", "web", "--lines", "50"])
        .contains("hello: instance"));
    h.ok(&["kill"]);
}

#[test]
fn sighup_reopens_the_logs_and_keeps_every_app() {
    let h = Herd::new();
    std::fs::write(
        h.home().join("config.toml"),
        "daemon_log_max_bytes = 65536\n",
    )
    .unwrap();
    start_hello(&h, "web", "1");
    let daemon = h.daemon_pid().unwrap();
    let pids = h.pids("web");
    let logs = h.home().join("logs");
    std::fs::rename(logs.join("web-0.out"), logs.join("web-0.out.moved")).unwrap();
    std::fs::rename(
        h.home().join("daemon.log"),
        h.home().join("daemon.log.moved"),
    )
    .unwrap();
    signal(daemon, nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(h.home().join("daemon.log"))
            .ok()
            .filter(|l| l.contains("SIGHUP"))
            .ok_or(())
    })
    .expect("daemon.log not opened again after SIGHUP");
    assert!(
        logs.join("web-0.out").exists(),
        "web-0.out not opened again"
    );
    // Nothing stopped: SIGUSR1 and SIGUSR2 neither.
    signal(daemon, nix::sys::signal::Signal::SIGUSR1);
    signal(daemon, nix::sys::signal::Signal::SIGUSR2);
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(daemon as u32));
    assert_eq!(h.pids("web"), pids);
    // New output goes to the new file.
    kill_and_wait_replaced(&h, "web", 0);
    wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(logs.join("web-0.out"))
            .ok()
            .filter(|l| l.contains("hello: instance 0"))
            .ok_or(())
    })
    .expect("the replacement's output is not in the new web-0.out");
    assert!(h.ok(&["reload-logs"]).contains("reopened 2 log files"));
    // daemon.log rotates by size: each SIGHUP writes a line of ~80 bytes, so ~800 of them
    // pass 64 KiB (signals sent while the daemon is busy merge: send until it rotates).
    wait_until(Duration::from_secs(30), || {
        for _ in 0..50 {
            signal(daemon, nix::sys::signal::Signal::SIGHUP);
            std::thread::sleep(Duration::from_millis(1));
        }
        h.home()
            .join("daemon.log.1")
            .exists()
            .then_some(())
            .ok_or(())
    })
    .expect("daemon.log never rotated");
    for f in ["daemon.log", "daemon.log.1"] {
        let len = std::fs::metadata(h.home().join(f)).unwrap().len();
        assert!(len <= 65536, "{f} is {len} bytes");
    }
    assert!(alive(daemon as u32));
    h.finish();
}

#[test]
fn herd_flush_empties_the_logs() {
    let h = Herd::new();
    start_hello(&h, "web", "1");
    let out = h.home().join("logs/web-0.out");
    wait_until(Duration::from_secs(5), || {
        (std::fs::metadata(&out).map_or(0, |m| m.len()) > 0)
            .then_some(())
            .ok_or(())
    })
    .unwrap();
    assert!(h.ok(&["flush", "web"]).contains("emptied 2 log files"));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 0);
    h.fails(&["flush", "nope"]);
    h.finish();
}

#[test]
fn files_under_herd_home_are_private() {
    let h = Herd::new();
    start_hello(&h, "web", "1");
    let mode = |p: &str| std::fs::metadata(h.home().join(p)).unwrap().mode() & 0o777;
    assert_eq!(mode("."), 0o700);
    assert_eq!(mode("logs"), 0o700);
    assert_eq!(mode("herd.sock"), 0o600);
    assert_eq!(mode("daemon.log"), 0o600);
    assert_eq!(mode("daemon.lock"), 0o600);
    assert_eq!(mode("instances.pids"), 0o600);
    assert_eq!(mode("logs/web-0.out"), 0o600);
    assert_eq!(mode("logs/web-0.err"), 0o600);
    h.ok(&["save"]);
    assert_eq!(mode("dump.json"), 0o600);
    h.finish();
}

/// Another user's folder as HERD_HOME, prepared as an attacker would: world-writable, with
/// `logs/web-0.out` linking to a file of root's.
#[test]
fn a_herd_home_of_another_user_is_refused_and_nothing_is_written_through_it() {
    if !needs_root("a second user") {
        return;
    }
    let h = Herd::new();
    let base = h.home();
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = base.join("roots-file");
    std::fs::write(&victim, "root's data\n").unwrap();
    let evil = base.join("evil");
    std::fs::create_dir_all(evil.join("logs")).unwrap();
    std::os::unix::fs::symlink(&victim, evil.join("logs/web-0.out")).unwrap();
    for p in [evil.clone(), evil.join("logs")] {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = Command::new(herd_bin())
        .args(["start", hello_bin().to_str().unwrap(), "--name", "web"])
        .args(["--port", &free_port().to_string()])
        .env("HERD_HOME", &evil)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "herd used another user's HERD_HOME");
    assert!(
        e.contains("belongs to uid 65534") && e.contains("folder of your own"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's data\n");
    assert!(!evil.join("herd.sock").exists() && !evil.join("daemon.log").exists());
    // Owned by root but writable by others: refused too, with the fix.
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Command::new(herd_bin())
        .arg("list")
        .env("HERD_HOME", &open)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("chmod 700"), "{e}");
    // A home of one's own below a folder other users can write to (not sticky): refused.
    let below = open.join("home");
    std::fs::create_dir(&below).unwrap();
    let out = Command::new(herd_bin())
        .arg("list")
        .env("HERD_HOME", &below)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && e.contains("is writable by other users")
            && e.contains("above HERD_HOME"),
        "{e}"
    );
}

#[test]
fn a_symlink_in_logs_is_neither_followed_nor_shown() {
    let h = Herd::new();
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "a secret line\n").unwrap();
    std::fs::create_dir_all(h.home().join("logs")).unwrap();
    std::os::unix::fs::symlink(secret.path(), h.home().join("logs/web-0.out")).unwrap();
    let port = free_port().to_string();
    let hello = hello_bin();
    let start = [
        "start",
        hello.to_str().unwrap(),
        "--name",
        "web",
        "--port",
        &port,
    ];
    let e = h.fails(&start);
    assert!(
        e.contains("web-0.out is a symbolic link") && e.contains("remove it"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(secret.path()).unwrap(),
        "a secret line\n",
        "herd wrote through a symbolic link"
    );
    // `herd logs` of an app whose log is a link shows nothing of its target.
    std::fs::remove_file(h.home().join("logs/web-0.out")).unwrap();
    h.ok(&start);
    std::fs::remove_file(h.home().join("logs/web-0.out")).unwrap();
    std::os::unix::fs::symlink(secret.path(), h.home().join("logs/web-0.out")).unwrap();
    let shown = h.ok(&["logs", "web", "--lines", "20"]);
    assert!(!shown.contains("a secret line"), "{shown}");
    h.finish();
}

/// Someone else's process behind `herd.sock`: a socket file that is not ours, or a socket of
/// ours served by another user. herd sends nothing.
#[test]
fn a_socket_of_another_user_gets_nothing() {
    if !needs_root("a second user") {
        return;
    }
    let h = Herd::new();
    // A listener run by `nobody`, in a folder of its own; its socket is then moved into our
    // HERD_HOME (as if planted before the checks existed).
    let theirs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(theirs.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(h.home(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = theirs.path().join("s.sock");
    let got = theirs.path().join("got");
    let listener = format!(
        r#"
import socket, os, sys
s = socket.socket(socket.AF_UNIX)
s.bind({sock:?}); os.chmod({sock:?}, 0o777); s.listen(16)
print("ready", flush=True)
s.settimeout(5)
data = b""
try:
    while True:
        c, _ = s.accept()
        c.settimeout(1)
        try:
            while True:
                b = c.recv(65536)
                if not b: break
                data += b
        except Exception:
            pass
        c.close()
except Exception:
    pass
open({got:?}, "wb").write(data)
"#,
        sock = sock.to_str().unwrap(),
        got = got.to_str().unwrap(),
    );
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("python3")
            .args(["-c", &listener])
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let target = h.home().join("herd.sock");
    std::fs::rename(&sock, &target).unwrap();
    // Owned by nobody: refused before connecting.
    let mut env_cmd = h.command(&["list"]);
    env_cmd.env("SECRET_TOKEN", "hunter2");
    let out = env_cmd.output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("not a socket of yours"),
        "{e}"
    );
    // Ours on disk, but served by nobody: refused after connecting, before sending.
    std::os::unix::fs::chown(&target, Some(0), Some(0)).unwrap();
    let out = h
        .command(&["start", "./x", "--env", "SECRET_TOKEN=hunter2"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("runs as uid 65534"),
        "{e}"
    );
    let status = child.wait().unwrap();
    assert!(status.success());
    let seen = std::fs::read(&got).unwrap();
    assert!(
        seen.is_empty(),
        "the other user's process got {:?}",
        String::from_utf8_lossy(&seen)
    );
}

/// Open file descriptors of a process.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn twenty_thousand_idle_control_connections_block_nothing() {
    let h = Herd::new();
    start_hello(&h, "web", "2");
    let daemon = h.daemon_pid().unwrap();
    let before = fds(daemon);
    // Four processes of 5,000 connections each (one process may not hold 20,000 fds).
    let sock = h.home().join("herd.sock");
    let holder = format!(
        r#"
import socket, sys, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
import time
conns = []
deadline = time.time() + 60
for i in range(5000):
    s = socket.socket(socket.AF_UNIX)
    s.setblocking(False)
    while True:
        try:
            s.connect({sock:?})
            break
        except BlockingIOError:
            # The daemon's accept queue is full: it is busy accepting.
            if time.time() > deadline:
                raise
            time.sleep(0.001)
    conns.append(s)
print("holding", len(conns), flush=True)
sys.stdin.read()
"#,
        sock = sock.to_str().unwrap()
    );
    let started = Instant::now();
    let mut holders: Vec<std::process::Child> = (0..4)
        .map(|_| {
            Command::new("python3")
                .args(["-c", &holder])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in &mut holders {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "holding 5000", "a holder could not connect");
    }
    eprintln!("20,000 connections made in {:?}", started.elapsed());
    // The daemon holds at most max_control_connections of them (once the connections it
    // closed to make room have run their last turn).
    wait_until(Duration::from_secs(5), || {
        let held = fds(daemon);
        (held <= before + 1024 + 16).then_some(()).ok_or(held)
    })
    .unwrap_or_else(|held| panic!("daemon fds {before} -> {held}"));
    // herd list answers, and a killed instance is replaced.
    let t = Instant::now();
    h.ok(&["list"]);
    let took = t.elapsed();
    eprintln!(
        "daemon fds {before} -> {}; herd list took {took:?}",
        fds(daemon)
    );
    assert!(took < Duration::from_secs(5), "herd list took {took:?}");
    kill_and_wait_replaced(&h, "web", 0);
    let log = std::fs::read_to_string(h.home().join("daemon.log")).unwrap();
    let warned = log
        .matches("control connections are open, the most allowed")
        .count();
    assert_eq!(warned, 1, "{log}");
    drop(
        holders
            .iter_mut()
            .map(|c| c.stdin.take())
            .collect::<Vec<_>>(),
    );
    for mut c in holders {
        c.wait().unwrap();
    }
    wait_until(Duration::from_secs(10), || {
        let n = fds(daemon);
        (n <= before + 4).then_some(()).ok_or(n)
    })
    .unwrap_or_else(|n| panic!("daemon fds stay at {n} (from {before})"));
    h.finish();
}

#[test]
fn an_idle_control_connection_is_closed_after_the_timeout() {
    use std::io::Read;
    let h = Herd::new();
    std::fs::write(
        h.home().join("config.toml"),
        "control_idle_timeout_ms = 300\n",
    )
    .unwrap();
    h.ok(&["ping"]);
    let mut s = std::os::unix::net::UnixStream::connect(h.home().join("herd.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    // Half a request, then silence: closed all the same.
    std::io::Write::write_all(&mut s, b"{\"v\":1,").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    assert_eq!(n, 0);
    assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3));
    h.finish();
}
