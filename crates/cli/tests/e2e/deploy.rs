//! How herd is deployed: app files (herd.toml/json/yaml and PM2 ecosystem files) and
//! save/resurrect.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn herd_toml_with_two_apps_and_an_env_block() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2) = (free_port(), free_port());
    let file = write(
        dir.path(),
        "herd.toml",
        &format!(
            r#"
[[apps]]
name = "rs"
script = "{hello}"
instances = 2
listen = ["127.0.0.1:{p1}"]
kill_timeout = "2s"

[[apps]]
name = "py"
script = "{py}"
port = {p2}
env = {{ MODE = "dev" }}
env_production = {{ MODE = "prod" }}
"#,
            hello = hello_bin().display(),
            py = repo_root().join("examples/hello.py").display()
        ),
    );
    h.ok(&["start", file.to_str().unwrap(), "--env", "production"]);
    assert_eq!(h.pids("rs").len(), 2);
    let body = wait_until(Duration::from_secs(5), || {
        get(loopback(p2), "/", Duration::from_secs(2))
    })
    .unwrap();
    assert!(body.contains("mode=prod"), "{body}");
    get(loopback(p1), "/", Duration::from_secs(2)).unwrap();
    let spec = &serde_json::from_str::<serde_json::Value>(&h.ok(&["describe", "rs", "--json"]))
        .unwrap()[0]["spec"];
    assert_eq!(spec["kill_timeout_ms"], 2000);
    h.finish();
}

#[test]
fn pm2_ecosystem_file_runs_as_it_is() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let file = write(
        dir.path(),
        "ecosystem.config.js",
        &format!(
            "module.exports = {{ apps: [{{ name: 'eco', script: '{}', instances: 2, exec_mode: 'cluster', \
             env: {{ PORT: {port}, NODE_ENV: 'development' }}, env_production: {{ NODE_ENV: 'production' }}, \
             max_memory_restart: '300M', kill_timeout: 3000, source_map_support: true }}] }};\n",
            base.join("apps/http.js").display()
        ),
    );
    let out = h.run(&["start", file.to_str().unwrap(), "--env", "production"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("source_map_support") && err.contains("ignored"),
        "{err}"
    );
    let pids: BTreeSet<u32> = wait_until(Duration::from_secs(10), || {
        let s: BTreeSet<u32> = (0..30)
            .filter_map(|_| get(loopback(port), "/", Duration::from_secs(2)).ok())
            .map(|b| pid_of(&b))
            .collect();
        (s.len() == 2).then_some(s.clone()).ok_or(s)
    })
    .unwrap();
    assert_eq!(pids, h.pids("eco").into_iter().collect());
    let spec = &serde_json::from_str::<serde_json::Value>(&h.ok(&["describe", "eco", "--json"]))
        .unwrap()[0]["spec"];
    assert_eq!(spec["env"]["NODE_ENV"], "production");
    assert_eq!(spec["max_memory_bytes"], 300 << 20);
    assert_eq!(spec["node"], true);
    h.finish();
}

#[test]
fn bad_app_files_name_file_app_field_and_place() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let hello = hello_bin().display().to_string();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("syntax.toml", "[[apps]\nname = 'x'\n".into(), vec!["syntax.toml", "line 1"]),
        ("type.toml", format!("[[apps]]\nname = 'x'\nscript = '{hello}'\nmax_restarts = 'many'\n"), vec!["type.toml", "line 4", "max_restarts"]),
        ("unknown.toml", format!("[[apps]]\nname = 'x'\nscript = '{hello}'\ninstanses = 2\n"), vec!["unknown.toml", "app x", "unknown field", "instanses"]),
        ("noscript.toml", "[[apps]]\nname = 'x'\n".into(), vec!["noscript.toml", "app x", "script is missing"]),
        ("twice.toml", format!("[[apps]]\nname = 'x'\nscript = '{hello}'\n[[apps]]\nname = 'x'\nscript = '{hello}'\n"), vec!["twice.toml", "used twice"]),
        ("missing.json", r#"{"apps":[{"name":"x","script":"./nope.py"}]}"#.into(), vec!["missing.json", "app x", "does not exist"]),
        ("broken.json", "{\"apps\": [\n  {\"name\": \"x\",}\n]}".into(), vec!["broken.json", "line 2"]),
        ("broken.yaml", "apps:\n  - name: x\n    script: [unclosed\n".into(), vec!["broken.yaml"]),
    ];
    for (name, text, needles) in cases {
        let f = write(dir.path(), name, &text);
        let e = h.fails(&["start", f.to_str().unwrap()]);
        for n in needles {
            assert!(e.contains(n), "{name}: {e:?} lacks {n:?}");
        }
        assert_eq!(e.trim().lines().count(), 1, "{name}: not one line: {e}");
    }
    // A good YAML file works too.
    let port = free_port();
    let f = write(
        dir.path(),
        "good.yaml",
        &format!("apps:\n  - name: y\n    script: {hello}\n    listen: ['127.0.0.1:{port}']\n"),
    );
    h.ok(&["start", f.to_str().unwrap()]);
    get(loopback(port), "/", Duration::from_secs(2)).unwrap();
    h.finish();
}

#[test]
fn save_kill_resurrect_reproduces_the_list_and_survives_a_corrupted_dump() {
    let h = Herd::new();
    let (p1, p2) = (free_port(), free_port());
    let (l1, l2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let hello = hello_bin();
    h.ok(&[
        "start",
        hello.to_str().unwrap(),
        "--name",
        "a",
        "-i",
        "2",
        "--listen",
        &l1,
    ]);
    h.ok(&[
        "start",
        hello.to_str().unwrap(),
        "--name",
        "b",
        "--listen",
        &l2,
    ]);
    h.ok(&["stop", "b"]);
    h.ok(&["save"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(h.home().join("dump.json"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    h.ok(&["kill"]);
    // An empty daemon does not overwrite the saved list.
    let e = h.fails(&["save"]);
    assert!(e.contains("--force"), "{e}");
    h.ok(&["resurrect"]);
    assert_eq!(h.statuses("a"), vec!["online", "online"]);
    assert_eq!(h.app("b")["status"], "stopped");
    get(loopback(p1), "/", Duration::from_secs(2)).unwrap();

    // Save again (a .bak of the first save is kept), then corrupt the dump.
    h.ok(&["save"]);
    assert!(h.home().join("dump.json.bak").exists());
    h.ok(&["kill"]);
    std::fs::write(h.home().join("dump.json"), "{ not json").unwrap();
    let out = h.run(&["resurrect"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupted") && err.contains("dump.json.bak"),
        "{err}"
    );
    assert_eq!(h.statuses("a"), vec!["online", "online"]);
    h.finish();
}

/// Reloads app "boot" of `herd run` and waits until each of its new processes has printed a
/// line with its pid on herd run's stdout (`lines`); returns their pids.
fn reloaded_processes_print(
    h: &Herd,
    lines: &std::sync::mpsc::Receiver<String>,
    when: &str,
) -> BTreeSet<u32> {
    while lines.try_recv().is_ok() {}
    h.ok(&["reload", "boot"]);
    let fresh: BTreeSet<u32> = h.pids("boot").into_iter().collect();
    let mut seen = BTreeSet::new();
    while seen != fresh {
        let l = lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no output from herd run {when}"));
        if let Some(pid) = l
            .split_whitespace()
            .skip_while(|w| *w != "pid")
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            if fresh.contains(&pid) {
                seen.insert(pid);
            }
        }
    }
    fresh
}

#[test]
fn startup_unit_runs_the_saved_apps_with_the_notify_handshake() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        hello_bin().to_str().unwrap(),
        "--name",
        "boot",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    h.ok(&["save"]);
    h.ok(&["kill"]);

    let unit = h.ok(&["startup", "systemd"]);
    for line in [
        "Type=notify".to_string(),
        "NotifyAccess=all".to_string(),
        "Restart=always".to_string(),
        format!("Environment=HERD_HOME={}", h.home().display()),
        format!(
            "ExecStart={} run --resurrect --control",
            herd_bin().display()
        ),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line:?}:\n{unit}"
        );
    }

    // What systemd would do: run it with a NOTIFY_SOCKET and wait for READY=1.
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut run = h
        .command(&["run", "--resurrect", "--control"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = run.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(l);
        }
    });
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 from herd run");
    assert_eq!(&buf[..n], b"READY=1");
    let pids: BTreeSet<u32> = (0..30)
        .map(|_| pid_of(&get(loopback(port), "/", Duration::from_secs(2)).unwrap()))
        .collect();
    assert_eq!(pids.len(), 2);
    // The usual commands reach the apps systemd runs, as they reach a daemon's.
    assert_eq!(h.pids("boot").into_iter().collect::<BTreeSet<_>>(), pids);
    let logs = h.ok(&["logs", "boot", "--lines", "5"]);
    assert!(logs.contains("serving"), "{logs}");
    h.ok(&["reload", "boot"]);
    let pids: BTreeSet<u32> = h.pids("boot").into_iter().collect();
    assert_eq!(pids.len(), 2);
    // herd update works here too: the same process runs the new binary as `herd run`, and
    // systemd's main pid stays.
    let out = h.ok(&["update"]);
    assert!(out.contains("updated in place"), "{out}");
    assert_eq!(h.pids("boot").into_iter().collect::<BTreeSet<_>>(), pids);
    assert!(
        run.try_wait().unwrap().is_none(),
        "herd run ended at the update"
    );
    // Instance output still reaches herd run's stdout (the journal) after the update.
    reloaded_processes_print(&h, &lines, "after the update");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.id())).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("run\0--resurrect\0--control"),
        "{cmdline:?}"
    );
    let twice = h.fails(&["run", "--resurrect", "--control"]);
    assert!(twice.contains("already runs"), "{twice}");
    // The daemon dies (a bug, the OOM killer): the keeper, systemd's main process, starts the
    // next one, which takes over every app — same pids, the port never stops answering, the
    // output still reaches the journal.
    let pids: BTreeSet<u32> = h.pids("boot").into_iter().collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = std::thread::scope(|s| {
        let load = s.spawn(|| load_until(loopback(port), &stop, Duration::from_secs(60)));
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(200));
            assert_ne!(
                h.daemon_pid(),
                Some(run.id() as i32),
                "the main process is the keeper"
            );
            kill_daemon(&h);
            h.ok(&["ping"]);
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.join().unwrap()
    });
    assert_no_failures(&[load], "3 daemon kills under herd run --control");
    assert_eq!(h.pids("boot").into_iter().collect::<BTreeSet<_>>(), pids);
    assert!(run.try_wait().unwrap().is_none(), "herd run ended");
    let pids = reloaded_processes_print(&h, &lines, "after the daemon died");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = notify.recv(&mut buf).expect("no STOPPING=1 from herd run");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = wait_until(Duration::from_secs(10), || {
        run.try_wait().unwrap().ok_or(())
    })
    .unwrap();
    assert!(status.success());
    for p in pids {
        assert!(!alive(p));
    }
    assert!(!h.home().join("herd.sock").exists());
}

#[test]
fn watch_reloads_on_a_touched_file_and_ignores_node_modules() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("node_modules/pkg")).unwrap();
    std::fs::copy(
        repo_root().join("examples/hello.py"),
        dir.path().join("app.py"),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = h.command(&[
        "start", "app.py", "--name", "w", "-i", "2", "--listen", &listen, "--watch",
    ]);
    let out = cmd.current_dir(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = h.pids("w");
    // A change in node_modules is ignored.
    std::fs::write(dir.path().join("node_modules/pkg/index.js"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        h.pids("w"),
        before,
        "a change in node_modules reloaded the app"
    );
    // A change of the app's own files reloads it, instance by instance.
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    let after = wait_until(Duration::from_secs(10), || {
        let p = h.pids("w");
        (p.len() == 2 && p.iter().all(|x| !before.contains(x)))
            .then_some(p.clone())
            .ok_or(p)
    })
    .unwrap();
    assert_eq!(
        get(loopback(port), "/", Duration::from_secs(2))
            .map(|b| after.contains(&pid_of(&b)))
            .ok(),
        Some(true)
    );
    h.finish();
}

/// Restarts keep the environment captured at start; `--update-env` takes the caller's (keeping
/// what the app sets itself); describe shows secrets masked.
#[test]
fn update_env_refreshes_the_environment_and_describe_masks_secrets() {
    let h = Herd::new();
    let port = free_port();
    let py = repo_root().join("examples/hello.py");
    let run = |mode: &str, args: &[&str]| {
        let out = h
            .command(args)
            .env("MODE", mode)
            .env("DATABASE_URL", "postgres://app:hunter2@db:5432/x")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "herd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let port_s = port.to_string();
    run(
        "one",
        &[
            "start",
            py.to_str().unwrap(),
            "--name",
            "py",
            "--port",
            &port_s,
            "--env",
            "API_KEY=s3cret",
        ],
    );
    let mode = || {
        wait_until(Duration::from_secs(5), || {
            get(loopback(port), "/", Duration::from_secs(2))
        })
        .unwrap()
    };
    assert!(mode().contains("mode=one"));
    run("two", &["restart", "py"]);
    assert!(
        mode().contains("mode=one"),
        "a restart keeps the captured environment"
    );

    let page = run("two", &["describe", "py"]);
    assert!(page.contains("version 1;"), "{page}");
    assert!(page.contains("API_KEY=******** (app)"), "{page}");
    assert!(
        page.contains("MODE=one"),
        "MODE differs from the shell: {page}"
    );
    let json = run("two", &["describe", "py", "--json"]);
    assert!(json.contains("postgres://app:********@db:5432/x"), "{json}");
    for secret in ["s3cret", "hunter2"] {
        assert!(
            !page.contains(secret) && !json.contains(secret),
            "{page}\n{json}"
        );
    }

    run("two", &["reload", "py", "--update-env"]);
    assert!(mode().contains("mode=two"));
    let pid = h.pids("py")[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ.split('\0').any(|kv| kv == "API_KEY=s3cret"),
        "a declared variable keeps its value"
    );
    let info =
        &serde_json::from_str::<serde_json::Value>(&run("two", &["describe", "py", "--json"]))
            .unwrap()[0];
    assert_eq!(info["env_version"], 2);
    assert_eq!(info["processes"][0]["env_version"], 2);
    let page = run("two", &["describe", "py"]);
    assert!(page.contains("0 differ from this shell"), "{page}");
    h.finish();
}
