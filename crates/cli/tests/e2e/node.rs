//! Node.js apps run unchanged: plain http, express (CommonJS), an ES module app and a real
//! Next.js app, each as cluster workers sharing the port, with `process.send` round trips,
//! `herd reload` under load failing zero requests, and `herd stop` leaving nothing behind.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::common::*;

fn distinct_pids(port: u16, path: &str, want: usize) -> HashSet<u32> {
    wait_until(Duration::from_secs(20), || {
        let mut seen = HashSet::new();
        for _ in 0..60 {
            let body =
                get(loopback(port), path, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            seen.insert(pid_of(&body));
        }
        (seen.len() == want)
            .then_some(seen.clone())
            .ok_or(format!("{seen:?}"))
    })
    .unwrap()
}

/// Reloads twice under load and checks that not one request failed.
fn reload_under_load(h: &Herd, app: &str, port: u16, path: &'static str) {
    let before: HashSet<u32> = h.pids(app).into_iter().collect();
    let loads = under_load(loopback(port), path, 4, || {
        h.ok(&["reload", app]);
        h.ok(&["reload", app]);
    });
    assert_no_failures(&loads, "reload");
    let after: HashSet<u32> = h.pids(app).into_iter().collect();
    assert!(
        before.is_disjoint(&after),
        "reload kept old processes: {before:?} {after:?}"
    );
    for pid in before {
        assert!(!alive(pid), "old process {pid} still runs after reload");
    }
}

/// Starts tests/node/http.js as `-i 2` with `env` in its environment, then reloads it three
/// times under keep-alive load: six client threads, each reusing one connection as an HTTP
/// client's pool does — two back to back, two with pauses up to 6 ms, two up to 49 ms. Returns
/// the loads and what the workers see in NODE_OPTIONS.
fn reloads_under_keep_alive_load(env: &[(&str, &str)]) -> (Vec<KeepAliveLoad>, String) {
    let base = node_fixture().expect("node");
    let h = Herd::with_env(env);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/http.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "ka",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    distinct_pids(port, "/", 2);
    let options = get(loopback(port), "/node-options", Duration::from_secs(5)).unwrap();
    let loads = under_keep_alive_load(loopback(port), "/", 6, pool_pause, || {
        for _ in 0..3 {
            h.ok(&["reload", "ka"]);
        }
    });
    h.finish();
    (loads, options)
}

/// Regression (bench/RESULTS.md, "reused connection closed before any answer byte"): a
/// reload closed idle keep-alive connections at once (Node's `server.close()`), racing with
/// clients reusing them. With herd's preload the old workers answer `Connection: close` and
/// close only connections idle for the whole grace period.
#[test]
fn reload_under_keep_alive_load_loses_no_request() {
    if node_fixture().is_none() {
        return;
    }
    let (loads, options) =
        reloads_under_keep_alive_load(&[("NODE_OPTIONS", "--max-http-header-size=16385")]);
    // The app's own NODE_OPTIONS is kept; the preload took its part out (node processes the
    // app starts do not load it).
    assert_eq!(options, "NODE_OPTIONS=--max-http-header-size=16385");
    let plain: Vec<Load> = loads.iter().map(|l| l.load.clone()).collect();
    assert_no_failures(&plain, "reloads under keep-alive load");
    // The old workers told the clients to leave: the drain really ran.
    let told: usize = loads.iter().map(|l| l.told_to_close).sum();
    assert!(told > 0, "no answer said Connection: close: {loads:?}");
}

/// What a client sees of a draining worker: a kept-alive connection it reuses within the
/// grace period gets its answer, with `Connection: close`; one it leaves idle is closed (an
/// end of stream, not a reset) once the grace period (here 1 s) has passed, and the reload
/// waits for that.
#[test]
fn a_draining_worker_answers_reused_connections_and_closes_idle_ones_after_the_grace() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/http.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "drain",
        "--listen",
        &listen,
        "--kill-timeout",
        "6000",
    ]);
    let old = h.pids("drain");
    let open = || {
        let s = std::net::TcpStream::connect(loopback(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s
    };
    let (reused, idle) = (open(), open());
    for s in [&reused, &idle] {
        assert_eq!(
            ask(s),
            (old[0], true),
            "a first answer keeps the connection"
        );
    }
    let t = std::time::Instant::now();
    let mut cmd = h.command(&["reload", "drain"]);
    let reload = std::thread::spawn(move || cmd.output());
    // The old worker drains once the new one has taken its slot (sooner or later on a
    // loaded machine).
    wait_until(Duration::from_secs(10), || {
        let now = h.pids("drain");
        (now.len() == 1 && now[0] != old[0])
            .then_some(())
            .ok_or(now)
    })
    .expect("the new worker never took the slot");
    std::thread::sleep(Duration::from_millis(100));
    // Still the old worker's connection: answered, and told to go.
    assert_eq!(ask(&reused), (old[0], false));
    let mut b = [0u8; 1];
    let n = (&idle).read(&mut b).expect("an end of stream, not a reset");
    let closed = t.elapsed();
    assert_eq!(n, 0);
    assert!(
        closed > Duration::from_millis(900) && closed < Duration::from_secs(5),
        "the idle connection was closed {closed:?} after the reload began"
    );
    assert!(reload.join().unwrap().unwrap().status.success());
    assert!(!alive(old[0]));
    h.finish();
}

/// One request on `s`: the pid that answered, and whether it keeps the connection.
fn ask(mut s: &std::net::TcpStream) -> (u32, bool) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the answer: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            if body.contains("instance=") {
                let keep = !head.to_ascii_lowercase().contains("connection: close");
                return (pid_of(body), keep);
            }
        }
    }
}

/// The same without the preload (`HERD_NODE_PRELOAD=off`): Node's own disconnect alone. It
/// shows the race the preload removes, so it fails whenever the race is not hit; run it by
/// hand to check that the test above would catch a regression.
#[test]
#[ignore = "shows the old race: it passes when requests are lost"]
fn without_the_preload_a_reload_under_keep_alive_load_loses_requests() {
    if node_fixture().is_none() {
        return;
    }
    let (loads, options) = reloads_under_keep_alive_load(&[("HERD_NODE_PRELOAD", "off")]);
    assert_eq!(options, "NODE_OPTIONS=undefined");
    let lost: Vec<&String> = loads.iter().flat_map(|l| &l.load.failed).collect();
    eprintln!("lost without the preload: {} {lost:?}", lost.len());
    assert!(!lost.is_empty(), "no request lost this time");
}

fn stop_leaves_nothing(h: &Herd, app: &str, port: u16) {
    let pids = h.pids(app);
    h.ok(&["stop", app]);
    for pid in pids {
        assert!(!alive(pid), "{pid} survived stop");
    }
    drop(TcpListener::bind(loopback(port)).expect("port still held after stop"));
}

#[test]
fn plain_http_app_runs_as_cluster_workers_with_messages_reload_and_stop() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let script = base.join("apps/http.js");
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "web",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    assert_eq!(h.statuses("web"), vec!["online", "online"]);
    let pids = distinct_pids(port, "/", 2);
    assert_eq!(pids, h.pids("web").into_iter().collect());
    let worker = get(loopback(port), "/worker", Duration::from_secs(2)).unwrap();
    assert!(worker.starts_with("isWorker=true id="), "{worker}");

    // process.send round trip: herd → process.on('message') → process.send → herd.
    let reply = h.ok(&["request", "web:1", r#"{"ping":42}"#]);
    let v: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
    assert_eq!(v["echo"]["ping"], 42);
    assert_eq!(v["pid"].as_u64().unwrap() as u32, h.pids("web")[1]);
    let sent = h.ok(&["send", "web", r#"{"hello":1}"#]);
    assert!(sent.contains("sent to 2"), "{sent}");

    reload_under_load(&h, "web", port, "/slow/30");
    stop_leaves_nothing(&h, "web", port);
    h.finish();
}

#[test]
fn express_app_shares_the_port_and_its_other_listen_like_node_cluster() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/express.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "ex",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    distinct_pids(port, "/", 2);
    // listen(0) in every worker: one shared port, as under Node's cluster module.
    let ports: HashSet<String> = (0..20)
        .map(|_| get(loopback(port), "/metrics-port", Duration::from_secs(2)).unwrap())
        .collect();
    assert_eq!(
        ports.len(),
        1,
        "workers got different ports for listen(0): {ports:?}"
    );
    let mport: u16 = ports.iter().next().unwrap().parse().unwrap();
    assert_ne!(mport, port);
    assert_eq!(
        get(loopback(mport), "/", Duration::from_secs(2)).unwrap(),
        "metrics"
    );
    reload_under_load(&h, "ex", port, "/slow/30");
    stop_leaves_nothing(&h, "ex", port);
    assert!(
        TcpListener::bind(loopback(mport)).is_ok(),
        "the metrics port is still held after stop"
    );
    h.finish();
}

#[test]
fn esm_app_with_type_module_runs_and_reloads() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/esm/server.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "esm",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let pids = distinct_pids(port, "/", 2);
    assert!(get(loopback(port), "/", Duration::from_secs(2))
        .unwrap()
        .contains("esm=yes"));
    assert_eq!(pids.len(), 2);
    reload_under_load(&h, "esm", port, "/slow/30");
    stop_leaves_nothing(&h, "esm", port);
    h.finish();
}

#[test]
fn nextjs_app_serves_from_two_workers_reloads_without_errors_and_stops_clean() {
    let Some(base) = node_fixture() else { return };
    let app = next_app(&base);
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let next = base.join("node_modules/.bin/next");
    let mut cmd = h.command(&[
        "start",
        next.to_str().unwrap(),
        "--name",
        "site",
        "-i",
        "2",
        "--listen",
        &listen,
        // next start takes seconds to come up on a busy 2-core machine (PM2 users raise
        // listen_timeout for Next.js too).
        "--listen-timeout",
        "30s",
        "--",
        "start",
    ]);
    let out = cmd
        .current_dir(&app)
        .env("NEXT_TELEMETRY_DISABLED", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = wait_until(Duration::from_secs(30), || {
        let mut seen = HashSet::new();
        for _ in 0..40 {
            let body =
                get(loopback(port), "/", Duration::from_secs(5)).map_err(|e| e.to_string())?;
            // The page's props carry the pid of the worker that rendered it.
            let pid = body
                .split("\"pid\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u32>().ok());
            seen.insert(pid.ok_or(body)?);
        }
        (seen.len() == 2)
            .then_some(seen.clone())
            .ok_or(format!("{seen:?}"))
    })
    .unwrap();
    assert_eq!(seen, h.pids("site").into_iter().collect());
    reload_under_load(&h, "site", port, "/");
    // Everything of each instance (next-server and anything it started) is gone on stop.
    let groups: Vec<u32> = h.pids("site");
    stop_leaves_nothing(&h, "site", port);
    for g in groups {
        assert!(
            !Path::new("/proc").read_dir().unwrap().flatten().any(|e| {
                std::fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')')
                            .next()
                            .map(|r| r.split_whitespace().nth(2) == Some(&g.to_string()))
                    })
                    .unwrap_or(false)
            }),
            "a process of group {g} survived stop"
        );
    }
    h.finish();
}

#[test]
fn node_bad_input_gets_a_clear_status_and_log_line() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let apps = base.join("apps");
    let quick = ["--max-restarts", "2", "--restart-delay", "10"];
    for (name, file) in [("throws", "throws.js"), ("syntax", "syntax.js")] {
        let port = free_port().to_string();
        let script = apps.join(file);
        let mut args = vec![
            "start",
            script.to_str().unwrap(),
            "--name",
            name,
            "--port",
            &port,
        ];
        args.extend(quick);
        h.ok(&args);
    }
    for (name, needle) in [("throws", "boom at start"), ("syntax", "SyntaxError")] {
        wait_until(Duration::from_secs(15), || {
            let s = h.statuses(name);
            (s == ["errored"]).then_some(()).ok_or(s)
        })
        .unwrap();
        let logs = h.ok(&["logs", name, "--lines", "200"]);
        assert!(logs.contains(needle), "{name}: {logs}");
        assert!(logs.contains("marked errored"), "{name}: {logs}");
    }

    // Listening twice on the app's port: the second listen fails with EADDRINUSE, said in the log.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let twice = apps.join("listen-twice.js");
    let mut args = vec![
        "start",
        twice.to_str().unwrap(),
        "--name",
        "twice",
        "--listen",
        &listen,
    ];
    args.extend(quick);
    h.ok(&args);
    wait_until(Duration::from_secs(15), || {
        let l = h.ok(&["logs", "twice", "--lines", "200"]);
        (l.contains("EADDRINUSE") && l.contains("listen() was called a second time"))
            .then_some(())
            .ok_or(l)
    })
    .unwrap();

    // Never listens: online after listen_timeout, with a line saying so.
    let never = apps.join("never-listens.js");
    h.ok(&[
        "start",
        never.to_str().unwrap(),
        "--name",
        "never",
        "--port",
        &free_port().to_string(),
        "--listen-timeout",
        "300",
    ]);
    assert_eq!(h.statuses("never"), vec!["online"]);
    let l = h.ok(&["logs", "never", "--err"]);
    assert!(l.contains("did not listen"), "{l}");

    // No node: a clear error, nothing started.
    let e = h.fails(&[
        "start",
        apps.join("http.js").to_str().unwrap(),
        "--interpreter",
        "/nonexistent/node",
        "--name",
        "nonode",
    ]);
    assert!(
        e.contains("/nonexistent/node") && e.contains("does not exist"),
        "{e}"
    );
    assert!(!h.list().iter().any(|a| a["name"] == "nonode"));
    h.finish();
}

#[test]
fn shutdown_with_message_lets_the_app_stop_itself() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/shutdown-message.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "sm",
        "--listen",
        &listen,
        "--shutdown-with-message",
        "--kill-timeout",
        "10000",
    ]);
    get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    let t = std::time::Instant::now();
    h.ok(&["stop", "sm"]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the app did not stop on the message"
    );
    let logs = h.ok(&["logs", "sm"]);
    assert!(logs.contains("got shutdown message"), "{logs}");
    assert_eq!(h.app("sm")["processes"][0]["last_exit"]["code"], 0);
    h.finish();
}

#[test]
fn mjs_and_cjs_scripts_run_as_node_workers() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    for (file, kind) in [("hello.mjs", "mjs"), ("hello.cjs", "cjs")] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let script = base.join("apps").join(file);
        h.ok(&[
            "start",
            script.to_str().unwrap(),
            "--name",
            kind,
            "-i",
            "2",
            "--listen",
            &listen,
        ]);
        let pids = distinct_pids(port, "/", 2);
        assert_eq!(pids, h.pids(kind).into_iter().collect());
        assert!(get(loopback(port), "/", Duration::from_secs(2))
            .unwrap()
            .ends_with(kind));
    }
    h.finish();
}

/// GET https://127.0.0.1:port/ with python3's ssl (certificate not checked: self-signed).
fn https_get(port: u16) -> Result<String, String> {
    let code = format!(
        "import ssl,urllib.request as u\nc=ssl._create_unverified_context()\nprint(u.urlopen('https://127.0.0.1:{port}/',context=c,timeout=3).read().decode(),end='')"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &code])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn https_app_serves_from_every_worker() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian: apt-get install openssl) makes the test certificate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        base.join("apps/https.js").to_str().unwrap(),
        "--name",
        "tls",
        "-i",
        "2",
        "--listen",
        &listen,
        "--env",
        &format!("TLS_KEY={}", key.display()),
        "--env",
        &format!("TLS_CERT={}", cert.display()),
    ]);
    let pids: HashSet<u32> = h.pids("tls").into_iter().collect();
    let seen = wait_until(Duration::from_secs(20), || {
        let mut seen = HashSet::new();
        for _ in 0..30 {
            let body = https_get(port)?;
            seen.insert(pid_of(&body));
        }
        (seen.len() == 2)
            .then_some(seen.clone())
            .ok_or(format!("{seen:?}"))
    })
    .unwrap();
    assert_eq!(seen, pids);
    assert_eq!(h.statuses("tls"), vec!["online", "online"]);
    h.finish();
}
