//! Apps run as another user (`--uid` / `--gid`, PM2's `uid` / `user` / `gid`): each test makes
//! a throw-away system user (and a supplementary group) with `useradd`, removed by a `Drop`
//! guard even when the test fails. They need root: without it they say so loudly, and fail
//! when `CI=true`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::*;

/// A system user (with its own group) and one more group it belongs to, deleted on drop.
struct TempUser {
    name: String,
    uid: u32,
    gid: u32,
    extra_group: String,
    extra_gid: u32,
    home: String,
}

impl TempUser {
    /// `None` (loudly; a failure with `CI=true`) when the tests do not run as root.
    fn create() -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            let msg = "the --uid tests need root (they create a throw-away user and run a daemon as root); run them as root";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("herdt{tag}");
        let extra_group = format!("herdg{tag}");
        let run = |cmd: &str, args: &[&str]| {
            let out = Command::new(cmd).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{cmd} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run("groupadd", &["--system", &extra_group]);
        // From here on the guard removes what was made, also if useradd fails.
        let mut user = TempUser {
            name: name.clone(),
            uid: 0,
            gid: 0,
            extra_group: extra_group.clone(),
            extra_gid: 0,
            home: String::new(),
        };
        run(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--user-group",
                "--groups",
                &extra_group,
                "--shell",
                "/bin/sh",
                &name,
            ],
        );
        let entry = nix::unistd::User::from_name(&name).unwrap().unwrap();
        user.uid = entry.uid.as_raw();
        user.gid = entry.gid.as_raw();
        user.home = entry.dir.display().to_string();
        user.extra_gid = nix::unistd::Group::from_name(&extra_group)
            .unwrap()
            .unwrap()
            .gid
            .as_raw();
        Some(user)
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
        // --user-group made a group of the user's name; userdel removes it, unless it failed.
        let _ = Command::new("groupdel").arg(&self.name).output();
        let _ = Command::new("groupdel").arg(&self.extra_group).output();
    }
}

/// A Python the app's user can run: the system's (the one on PATH may live in root's home,
/// as pyenv's shims do).
const PYTHON: &str = "/usr/bin/python3";

/// A folder the app's user can read and enter (test temp folders are 0700).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `Uid:`, `Gid:` and `Groups:` of a process, from /proc/PID/status.
fn ids(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|&b| b == 0)
        .map(|kv| String::from_utf8_lossy(kv).into_owned())
        .collect()
}

/// Every process of `app` runs as `user`: real, effective, saved and fs ids, and its groups.
fn assert_runs_as(h: &Herd, app: &str, user: &TempUser, n: usize) -> Vec<u32> {
    let pids = h.pids(app);
    assert_eq!(pids.len(), n, "{:?}", h.app(app));
    for &pid in &pids {
        let (uid, gid, groups) = ids(pid);
        assert_eq!(uid, [user.uid; 4], "pid {pid}");
        assert_eq!(gid, [user.gid; 4], "pid {pid}");
        let mut groups = groups;
        groups.sort_unstable();
        let mut want = vec![user.gid, user.extra_gid];
        want.sort_unstable();
        assert_eq!(groups, want, "supplementary groups of pid {pid}");
        let env = environ(pid);
        for kv in [
            format!("HOME={}", user.home),
            format!("USER={}", user.name),
            format!("LOGNAME={}", user.name),
            "SHELL=/bin/sh".to_string(),
        ] {
            assert!(env.contains(&kv), "pid {pid} lacks {kv}: {env:?}");
        }
    }
    pids
}

/// What a process of `user` gets when it connects to the daemon's control socket.
fn connect_as(user: &TempUser, sock: &Path) -> String {
    use std::os::unix::process::CommandExt;
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); s.sendall(b'{\"cmd\":\"list\"}\\n'); print('connected', s.recv(100))\nexcept OSError as e:\n print('refused', e.errno)",
        ])
        .arg(sock)
        .uid(user.uid)
        .gid(user.gid)
        .current_dir("/")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Python app runs as the user with its groups and login variables, serves, reloads as the
/// user, survives save/resurrect as the user, and the user cannot reach the control socket.
#[test]
fn a_python_app_runs_as_another_user() {
    let Some(user) = TempUser::create() else {
        return;
    };
    let h = Herd::new();
    let dir = open_dir();
    let app = readable_hello(dir.path());
    let port = free_port();
    h.ok(&[
        "start",
        app.to_str().unwrap(),
        "-n",
        "py",
        "-i",
        "2",
        "--port",
        &port.to_string(),
        "--uid",
        &user.name,
        "--interpreter",
        PYTHON,
        "--cwd",
        dir.path().to_str().unwrap(),
    ]);
    wait_until(Duration::from_secs(10), || {
        (h.statuses("py") == ["online", "online"])
            .then_some(())
            .ok_or(())
    })
    .unwrap();
    let before = assert_runs_as(&h, "py", &user, 2);
    let body = get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    assert!(before.contains(&pid_of(&body)), "{body}");

    let described = h.ok(&["describe", "py"]);
    assert!(
        described.contains(&format!(
            "{} (uid {}, gid {})",
            user.name, user.uid, user.gid
        )),
        "{described}"
    );

    // The user cannot use the control socket (HERD_HOME is 0700; the socket 0600).
    let sock = h.home().join("herd.sock");
    let got = connect_as(&user, &sock);
    assert!(got.starts_with("refused 13"), "{got}");

    // A rolling reload: new processes, as the user again.
    h.ok(&["reload", "py"]);
    let after = assert_runs_as(&h, "py", &user, 2);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} {after:?}"
    );
    get(loopback(port), "/", Duration::from_secs(5)).unwrap();

    // Saved and brought back by another daemon: still the user.
    h.ok(&["save"]);
    h.ok(&["kill"]);
    h.ok(&["resurrect"]);
    wait_until(Duration::from_secs(10), || {
        (h.statuses("py") == ["online", "online"])
            .then_some(())
            .ok_or(())
    })
    .unwrap();
    assert_runs_as(&h, "py", &user, 2);
    get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    h.finish();
}

/// A Node app goes through herd's cluster-worker preload: the user reads it from a directory
/// outside HERD_HOME, and the workers serve, reload and drain as under the daemon's user.
#[test]
fn a_node_app_runs_as_another_user_with_the_worker_preload() {
    if Command::new("node").arg("--version").output().is_err() {
        let msg =
            "node is needed for the Node --uid test; install Node.js (apt-get install nodejs)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    let Some(user) = TempUser::create() else {
        return;
    };
    let h = Herd::new();
    let dir = open_dir();
    let app = dir.path().join("server.js");
    std::fs::write(
        &app,
        "require('node:http').createServer((q, s) => s.end(`pid=${process.pid} uid=${process.getuid()} opts=[${process.env.NODE_OPTIONS || ''}]`)).listen(Number(process.env.PORT));\n",
    )
    .unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    h.ok(&[
        "start",
        app.to_str().unwrap(),
        "-n",
        "js",
        "-i",
        "2",
        "--port",
        &port.to_string(),
        "--uid",
        &user.uid.to_string(),
        "--gid",
        &user.name,
        "--cwd",
        dir.path().to_str().unwrap(),
    ]);
    wait_until(Duration::from_secs(10), || {
        (h.statuses("js") == ["online", "online"])
            .then_some(())
            .ok_or(())
    })
    .unwrap();
    let before = assert_runs_as(&h, "js", &user, 2);
    let body = get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    assert!(body.contains(&format!("uid={}", user.uid)), "{body}");

    // The preload comes from a directory the user can read, not from HERD_HOME.
    let options = environ(before[0])
        .into_iter()
        .find_map(|kv| kv.strip_prefix("NODE_OPTIONS=").map(str::to_string))
        .unwrap();
    let preload = PathBuf::from(
        options
            .trim_start_matches("--require ")
            .trim_matches('"')
            .to_string(),
    );
    let shared = preload.parent().unwrap().to_path_buf();
    assert!(!preload.starts_with(h.home()), "{options}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(&preload), 0o644);
    // The preload ran (a preload Node cannot read stops the worker at once): it took its
    // part out of the worker's NODE_OPTIONS.
    assert!(body.contains("opts=[]"), "{body}");

    // A reload under load of fresh connections fails no request.
    let loads = under_load(loopback(port), "/", 4, || {
        h.ok(&["reload", "js"]);
    });
    assert_no_failures(&loads, "a reload of a Node app of another user");
    let after = assert_runs_as(&h, "js", &user, 2);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} {after:?}"
    );

    // The user cannot use the control socket.
    let got = connect_as(&user, &h.home().join("herd.sock"));
    assert!(got.starts_with("refused 13"), "{got}");
    h.finish();
    let _ = std::fs::remove_dir_all(shared);
}

/// Refusals name the fix: an unknown user or group, a folder the user cannot enter, and a
/// daemon that does not run as root.
#[test]
fn refusals_name_the_fix() {
    let Some(user) = TempUser::create() else {
        return;
    };
    let h = Herd::new();
    let dir = open_dir();
    let app = readable_hello(dir.path());
    let app = app.to_str().unwrap();

    let e = h.fails(&["start", app, "--uid", "no-such-user-herd"]);
    assert!(e.contains("there is no user \"no-such-user-herd\""), "{e}");
    let e = h.fails(&[
        "start",
        app,
        "--uid",
        &user.name,
        "--gid",
        "no-such-group-herd",
    ]);
    assert!(
        e.contains("there is no group \"no-such-group-herd\""),
        "{e}"
    );
    assert!(h.list().is_empty(), "{:?}", h.list());

    // A working directory the user cannot enter.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = h.fails(&[
        "start",
        app,
        "-n",
        "closed",
        "--uid",
        &user.name,
        "--interpreter",
        PYTHON,
        "--cwd",
        private.path().to_str().unwrap(),
    ]);
    assert!(e.contains("cannot enter working directory"), "{e}");
    assert!(e.contains("another user"), "{e}");

    // A daemon of the user itself (its own HERD_HOME) cannot start apps as someone else.
    let home = open_dir();
    let own = home.path().join("home");
    std::fs::create_dir(&own).unwrap();
    nix::unistd::chown(
        &own,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    let bin = home.path().join("herd");
    std::fs::copy(herd_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |args: &[&str]| {
        use std::os::unix::process::CommandExt;
        Command::new(&bin)
            .args(args)
            .env("HERD_HOME", &own)
            .env("HOME", &own)
            .uid(user.uid)
            .gid(user.gid)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = as_user(&["start", app, "--uid", "0", "--interpreter", PYTHON]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains(&format!("herd's daemon runs as uid {}; only a daemon run as root can start apps as another user", user.uid)),
        "{e}"
    );
    let _ = as_user(&["kill"]);
    h.finish();
}

/// `herd apply` with another uid lists it in the plan and reloads the app as that user.
#[test]
fn apply_of_another_uid_reloads_the_app_as_that_user() {
    let Some(user) = TempUser::create() else {
        return;
    };
    let h = Herd::new();
    let dir = open_dir();
    let app = readable_hello(dir.path());
    let port = free_port();
    let file = dir.path().join("herd.toml");
    let write = |extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[[apps]]\nname = \"web\"\nscript = \"{}\"\ninterpreter = \"{PYTHON}\"\ninstances = 2\nport = {port}\n{extra}",
                app.display()
            ),
        )
        .unwrap();
    };
    write("");
    h.ok(&["start", file.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), || {
        (h.statuses("web") == ["online", "online"])
            .then_some(())
            .ok_or(())
    })
    .unwrap();
    for pid in h.pids("web") {
        assert_eq!(ids(pid).0, [0; 4]);
    }
    write(&format!("user = \"{}\"\n", user.name));
    let plan = h.ok(&["apply", file.to_str().unwrap(), "--dry-run"]);
    assert!(plan.contains("reload: uid"), "{plan}");
    h.ok(&["apply", file.to_str().unwrap()]);
    assert_runs_as(&h, "web", &user, 2);
    get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    h.finish();
}

/// examples/hello.py copied into `dir`, readable by any user.
fn readable_hello(dir: &std::path::Path) -> std::path::PathBuf {
    let app = dir.join("hello.py");
    std::fs::copy(repo_root().join("examples/hello.py"), &app).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o644)).unwrap();
    app
}
