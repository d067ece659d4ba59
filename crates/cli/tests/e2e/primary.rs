//! Node's cluster code as it is (issue #13): the seed's scripts run unchanged under
//! `herd start … --primary` — their primary branch runs and its `cluster.fork()` starts herd
//! instances — and without `--primary` (workers only, as under PM2), where a worker's message
//! to the primary is published on the bus instead of lost. Each test checks what the script
//! itself prints. The scripts are the runnable ones in `examples/node/`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// An example script of `examples/node`, in the fixture beside its node_modules.
fn example(base: &std::path::Path, name: &str) -> PathBuf {
    base.join("apps/examples").join(name)
}

/// The app's primary's pid, from `herd list`.
fn primary_pid(h: &Herd, app: &str) -> Option<u32> {
    h.app(app)["primary"]["pid"]
        .as_u64()
        .map(|p| u32::try_from(p).unwrap())
}

/// Everything the app's processes printed so far.
fn logs(h: &Herd, app: &str) -> String {
    h.ok(&["logs", app, "--lines", "500"])
}

/// Waits until the app's log has a line with every one of `parts`; returns that line.
fn wait_log(h: &Herd, app: &str, parts: &[&str]) -> String {
    wait_until(Duration::from_secs(20), || {
        let all = logs(h, app);
        all.lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .ok_or(all)
    })
    .unwrap_or_else(|all| panic!("no log line with {parts:?} in:\n{all}"))
}

/// Waits until the app has `n` workers online, and returns their pids.
fn online_workers(h: &Herd, app: &str, n: usize) -> Vec<u32> {
    wait_until(Duration::from_secs(20), || {
        let a = h.app(app);
        let online: Vec<u32> = a["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "online")
            .filter_map(|p| p["pid"].as_u64())
            .map(|p| u32::try_from(p).unwrap())
            .collect();
        let running = a["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["pid"].is_u64())
            .count();
        (online.len() == n && running == n)
            .then_some(online)
            .ok_or(a.to_string())
    })
    .unwrap()
}

fn kill9(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

/// `herd start SCRIPT --primary --name NAME --listen LISTEN --env WORKERS=2`.
fn start_primary(h: &Herd, script: &std::path::Path, name: &str, listen: &str) {
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--primary",
        "--name",
        name,
        "--listen",
        listen,
        "--env",
        "WORKERS=2",
    ]);
}

/// How long a worker herd started waits for a fork to claim it (CLAIM_WINDOW), and a margin.
const PAST_CLAIM_WINDOW: Duration = Duration::from_secs(6);

#[test]
fn the_seed_cluster_script_runs_its_primary_logs_deaths_reloads_and_stops_clean() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let script = example(&base, "cluster.js");
    let listen = format!("127.0.0.1:{port}");
    start_primary(&h, &script, "seed", &listen);
    let primary = wait_until(Duration::from_secs(10), || {
        primary_pid(&h, "seed").ok_or("no primary")
    })
    .unwrap();
    wait_log(
        &h,
        "seed",
        &["seed:primary", &format!("Primary {primary} is running")],
    );
    let workers = online_workers(&h, "seed", 2);
    let served = serving(port, 2);
    assert_eq!(served, workers.iter().copied().collect());
    // A worker killed: the script's own exit handler prints its line; herd replaces it, once.
    kill9(workers[0]);
    wait_log(
        &h,
        "seed",
        &["seed:primary", &format!("worker {} died", workers[0])],
    );
    let after = online_workers(&h, "seed", 2);
    assert!(!after.contains(&workers[0]) && after.contains(&workers[1]));
    std::thread::sleep(PAST_CLAIM_WINDOW);
    assert_eq!(
        online_workers(&h, "seed", 2),
        after,
        "a second replacement appeared"
    );
    assert_eq!(primary_pid(&h, "seed"), Some(primary));
    // A rolling reload fails no request; the primary (it serves nothing) restarts with it.
    let loads = under_load(loopback(port), "/", 4, || {
        h.ok(&["reload", "seed"]);
    });
    assert_no_failures(&loads, "reload of a primary app");
    let reloaded = online_workers(&h, "seed", 2);
    assert!(
        reloaded.iter().all(|p| !after.contains(p)),
        "{reloaded:?} {after:?}"
    );
    let new_primary = primary_pid(&h, "seed").unwrap();
    assert_ne!(new_primary, primary);
    std::thread::sleep(PAST_CLAIM_WINDOW);
    assert_eq!(
        online_workers(&h, "seed", 2),
        reloaded,
        "the restarted primary added workers"
    );
    // Stop: the primary and every worker are gone, the port is free.
    h.ok(&["stop", "seed"]);
    for pid in reloaded.iter().chain([&new_primary]) {
        assert!(!alive(*pid), "{pid} survived stop");
    }
    drop(std::net::TcpListener::bind(loopback(port)).expect("port still held after stop"));
    h.finish();
}

#[test]
fn a_primary_that_reforks_in_its_exit_handler_gets_exactly_one_replacement() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let script = example(&base, "express-cluster.js");
    let listen = format!("127.0.0.1:{port}");
    start_primary(&h, &script, "ex", &listen);
    let workers = online_workers(&h, "ex", 2);
    assert!(get(loopback(port), "/", Duration::from_secs(5))
        .unwrap()
        .contains("worker="));
    for round in 0..2 {
        let victim = online_workers(&h, "ex", 2)[0];
        kill9(victim);
        let line = wait_log(&h, "ex", &[&format!("worker {victim} died")]);
        assert!(line.contains("SIGKILL"), "{line}");
        // The fork in the exit handler took herd's replacement: the pid it printed is the
        // one herd runs, and there are still exactly two workers.
        let printed: Vec<u32> = wait_until(Duration::from_secs(10), || {
            let all = logs(&h, "ex");
            let printed: Vec<u32> = all
                .lines()
                .filter_map(|l| l.split("forked worker ").nth(1))
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            (printed.len() == round + 1).then_some(printed).ok_or(all)
        })
        .unwrap();
        let now = online_workers(&h, "ex", 2);
        assert!(now.contains(printed.last().unwrap()), "{printed:?} {now:?}");
        assert!(!now.contains(&victim));
    }
    std::thread::sleep(PAST_CLAIM_WINDOW);
    let end = online_workers(&h, "ex", 2);
    assert_eq!(h.pids("ex").len(), 2, "{end:?}");
    // Every request still answered by the two workers; the workers' reports reach the primary.
    for _ in 0..20 {
        get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    }
    wait_log(&h, "ex", &["served so far: {\""]);
    assert!(workers.iter().any(|p| !end.contains(p)));
    h.finish();
}

#[test]
fn worker_messages_reach_the_primary_or_the_bus_without_one() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let script = example(&base, "messages.mjs");
    // With the primary: its own handler prints each worker's message (an ES module script).
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--primary",
        "--name",
        "msg",
        "--env",
        "WORKERS=2",
        "--listen-timeout",
        "1s",
    ]);
    let lines = wait_until(Duration::from_secs(20), || {
        let all = logs(&h, "msg");
        let got: Vec<String> = all
            .lines()
            .filter(|l| l.contains("received a message from worker"))
            .map(str::to_string)
            .collect();
        (got.len() == 2).then_some(got).ok_or(all)
    })
    .unwrap();
    let pids: HashSet<u32> = h.pids("msg").into_iter().collect();
    assert_eq!(pids.len(), 2);
    for l in &lines {
        assert!(l.starts_with("msg:primary | Primary "), "{l}");
        let pid: u32 = l
            .split("from worker ")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        assert!(pids.contains(&pid), "{l}");
        assert!(
            l.contains(&format!("Message sent from worker {pid}.")),
            "{l}"
        );
    }
    h.ok(&["delete", "msg"]);
    // Without it (workers only, as under PM2): the same messages are published on `primary`.
    let watch = BusWatch::start(&h, "primary");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "msg2",
        "-i",
        "2",
        "--listen-timeout",
        "1s",
    ]);
    let got = watch.wait(2, |v| v["topic"] == "primary");
    let pids: HashSet<u32> = h.pids("msg2").into_iter().collect();
    let mut from = HashSet::new();
    for v in got {
        let text = v["data"]["msgFromWorker"].as_str().unwrap().to_string();
        let pid: u32 = text
            .trim_start_matches("Message sent from worker ")
            .trim_end_matches('.')
            .parse()
            .unwrap();
        assert!(pids.contains(&pid), "{v}");
        assert!(v["from"].as_str().unwrap().starts_with("msg2:"), "{v}");
        from.insert(pid);
    }
    assert_eq!(from, pids);
    drop(watch);
    h.finish();
}

#[test]
fn the_primary_sends_kills_disconnects_and_a_restarted_primary_takes_its_workers_back() {
    use nix::sys::signal::Signal;
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let script = example(&base, "primary-api.js");
    let listen = format!("127.0.0.1:{port}");
    start_primary(&h, &script, "api", &listen);
    let workers = online_workers(&h, "api", 2);
    let primary = primary_pid(&h, "api").unwrap();
    // Events on `cluster`, with Node's worker ids and the pids herd runs.
    for pid in &workers {
        wait_log(&h, "api", &["cluster fork", &format!("pid={pid}")]);
        wait_log(&h, "api", &["cluster online", &format!("pid={pid}")]);
        wait_log(&h, "api", &["cluster listening", &format!("pid={pid}")]);
    }
    // cluster.fork(env) reached the worker.
    assert!(get(loopback(port), "/", Duration::from_secs(5))
        .unwrap()
        .contains("role=web"));
    // worker.send() and the workers' replies through cluster's `message`.
    signal(primary, Signal::SIGUSR2);
    wait_log(&h, "api", &["workers 1,2"]);
    for id in [1, 2] {
        wait_log(&h, "api", &["pong from", &format!("id={id}"), "n=1"]);
    }
    // worker.kill() from the primary: that worker goes for good (exitedAfterDisconnect).
    let body = get(loopback(port), "/kill-me", Duration::from_secs(5)).unwrap();
    let killed = pid_of(&body);
    let line = wait_log(&h, "api", &["cluster exit", &format!("pid={killed}")]);
    assert!(
        line.contains("after=true") && line.contains("dead=true"),
        "{line}"
    );
    wait_log(&h, "api", &["cluster disconnect", &format!("pid={killed}")]);
    let left = online_workers(&h, "api", 1);
    assert!(!left.contains(&killed));
    // The primary dies: herd restarts it, the worker keeps serving with its pid, and the new
    // primary's forks take it back before starting one more (it forks WORKERS=2).
    kill9(primary);
    let again = wait_until(Duration::from_secs(10), || {
        primary_pid(&h, "api").filter(|p| *p != primary).ok_or("")
    })
    .unwrap();
    let now = online_workers(&h, "api", 2);
    assert!(now.contains(&left[0]), "{now:?} {left:?}");
    wait_log(&h, "api", &["cluster fork", &format!("pid={}", left[0])]);
    std::thread::sleep(PAST_CLAIM_WINDOW);
    assert_eq!(online_workers(&h, "api", 2), now);
    // The new primary knows both (ids 3 and 4 now: ids are never reused).
    signal(again, Signal::SIGUSR2);
    wait_log(
        &h,
        "api",
        &["pong from", &format!("pid={}", left[0]), "n=1"],
    );
    // A worker that crashes is reported with its signal, and the primary's refork takes
    // herd's replacement.
    let victim = now[0];
    kill9(victim);
    let line = wait_log(&h, "api", &["cluster exit", &format!("pid={victim}")]);
    assert!(
        line.contains("signal=SIGKILL") && line.contains("after=false"),
        "{line}"
    );
    let refork = wait_log(&h, "api", &["refork id="]);
    let after = online_workers(&h, "api", 2);
    let pid: u32 = refork
        .split("pid=")
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    assert!(after.contains(&pid), "{refork} {after:?}");
    // `herd scale` works on the workers: a new one is announced to the primary (it did not
    // fork it); one scaled away reaches it as a disconnect it did not have to refork.
    h.ok(&["scale", "api", "3"]);
    let three = online_workers(&h, "api", 3);
    let added = *three.iter().find(|p| !after.contains(p)).unwrap();
    wait_log(&h, "api", &["cluster fork", &format!("pid={added}")]);
    h.ok(&["scale", "api", "2"]);
    let two = online_workers(&h, "api", 2);
    let gone = *three.iter().find(|p| !two.contains(p)).unwrap();
    let line = wait_log(&h, "api", &["cluster exit", &format!("pid={gone}")]);
    assert!(line.contains("after=true"), "{line}");
    std::thread::sleep(PAST_CLAIM_WINDOW);
    assert_eq!(online_workers(&h, "api", 2), two);
    h.finish();
}

#[test]
fn lifecycle_events_are_published_for_a_coordinator() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let watch = BusWatch::start(&h, "herd:lifecycle");
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        base.join("apps/http.js").to_str().unwrap(),
        "--name",
        "life",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let pids = online_workers(&h, "life", 2);
    let event = |name: &'static str, pid: u32| {
        move |v: &Value| {
            v["topic"] == "herd:lifecycle"
                && v["data"]["event"] == name
                && v["data"]["pid"] == pid
                && v["data"]["app"] == "life"
        }
    };
    for pid in &pids {
        watch.wait(1, event("start", *pid));
        watch.wait(1, event("online", *pid));
    }
    kill9(pids[0]);
    let exit = watch.wait(1, event("exit", pids[0]));
    assert_eq!(exit[0]["data"]["signal"], "SIGKILL");
    watch.wait(1, |v| {
        v["data"]["event"] == "restart" && v["data"]["instance"] == exit[0]["data"]["instance"]
    });
    let now = online_workers(&h, "life", 2);
    let new = *now.iter().find(|p| !pids.contains(p)).unwrap();
    watch.wait(1, event("start", new));
    watch.wait(1, event("online", new));
    drop(watch);
    h.finish();
}

#[test]
fn next_express_worker_threads_and_the_basic_script_run_with_and_without_the_primary() {
    let Some(base) = node_fixture() else { return };
    let next_dir = next_app(&base);
    let h = Herd::new();
    // The seed's Next.js + express custom server on one port, its primary forking.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = h.command(&[
        "start",
        example(&base, "next-express.mjs").to_str().unwrap(),
        "--primary",
        "--name",
        "site",
        "--listen",
        &listen,
        "--listen-timeout",
        "30s",
        "--env",
        "WORKERS=2",
        "--env",
        &format!("NEXT_DIR={}", next_dir.display()),
    ]);
    let out = cmd.env("NEXT_TELEMETRY_DISABLED", "1").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let workers = wait_until(Duration::from_secs(60), || {
        let w = online_workers(&h, "site", 2);
        let page = get(loopback(port), "/", Duration::from_secs(10)).map_err(|e| e.to_string())?;
        page.contains("next=yes").then_some(w).ok_or(page)
    })
    .unwrap();
    let api = get(loopback(port), "/api/hello", Duration::from_secs(5)).unwrap();
    assert!(api.contains("\"from\":\"express\""), "{api}");
    kill9(workers[1]);
    wait_log(
        &h,
        "site",
        &["site:primary", &format!("worker {} died", workers[1])],
    );
    online_workers(&h, "site", 2);
    h.ok(&["delete", "site"]);

    // worker_threads inside each instance, with and without the primary.
    for (name, primary) in [("threads", true), ("threads2", false)] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let script = example(&base, "worker-threads.js");
        let mut args = vec![
            "start",
            script.to_str().unwrap(),
            "--name",
            name,
            "--listen",
            &listen,
            "--env",
            "WORKERS=2",
        ];
        if primary {
            args.push("--primary");
        } else {
            args.extend(["-i", "2"]);
        }
        h.ok(&args);
        online_workers(&h, name, 2);
        let body = get(loopback(port), "/hash/50", Duration::from_secs(10)).unwrap();
        assert!(body.contains("hash="), "{body}");
        assert_eq!(primary_pid(&h, name).is_some(), primary);
    }

    // The seed's first script (ES module) without the primary: the worker branch serves.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        example(&base, "cluster-basic.mjs").to_str().unwrap(),
        "--name",
        "basic",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    online_workers(&h, "basic", 2);
    assert!(get(loopback(port), "/", Duration::from_secs(5))
        .unwrap()
        .contains("pid="));
    wait_log(&h, "basic", &["[server] Server running on port"]);
    h.finish();
}

#[test]
fn deno_runs_the_cluster_script_as_workers_and_reloads_without_a_failure() {
    let Some(base) = node_fixture() else { return };
    let Some(deno) = deno_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        example(&base, "cluster-basic.mjs").to_str().unwrap(),
        "--interpreter",
        deno.to_str().unwrap(),
        "--interpreter-args",
        "run -A",
        "--node-cluster",
        "--name",
        "deno",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let workers = online_workers(&h, "deno", 2);
    let served = serving(port, 2);
    assert_eq!(served, workers.iter().copied().collect());
    let loads = under_load(loopback(port), "/", 4, || {
        h.ok(&["reload", "deno"]);
    });
    assert_no_failures(&loads, "reload of deno workers");
    h.ok(&["stop", "deno"]);
    drop(std::net::TcpListener::bind(loopback(port)).expect("port still held after stop"));
    h.finish();
}

/// Sends SIGCONT to a stopped process when dropped (a failed assertion included).
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The primary makes 20 round trips with each worker, twice: the daemon running, then
/// stopped (SIGSTOP), when only the direct link can carry them. (The first round also makes
/// sure no fence is still to pass through the daemon: a message that follows one that went
/// through herd waits for it.) Waits for `OUT/rtt-1` and `OUT/rtt-2`.
fn round_trips_without_the_daemon(h: &Herd, primary: u32, out: &std::path::Path) {
    use nix::sys::signal::Signal;
    let daemon = u32::try_from(h.daemon_pid().unwrap()).unwrap();
    for n in 1..=2 {
        let done = out.join(format!("rtt-{n}"));
        let _ = std::fs::remove_file(&done);
    }
    signal(primary, Signal::SIGUSR2);
    wait_until(Duration::from_secs(10), || {
        out.join("rtt-1").exists().then_some(()).ok_or(())
    })
    .expect("the round trips did not finish");
    signal(daemon, Signal::SIGSTOP);
    let resume = Resume(daemon);
    signal(primary, Signal::SIGUSR2);
    let got = wait_until(Duration::from_secs(10), || {
        out.join("rtt-2").exists().then_some(()).ok_or(())
    });
    drop(resume);
    assert!(
        got.is_ok(),
        "the round trips did not finish while the daemon was stopped: they went through it"
    );
}

/// The JSON lines of herd's preloads (`node/preload/lines.cjs`, the direct link's and the
/// primary's socket to the daemon) carry every message both ways, cut anywhere by the kernel,
/// on the pipe handle's own path and on the stream API's (its fallback).
#[test]
fn the_preloads_lines_carry_every_message_on_both_paths() {
    let Some(base) = node_fixture() else { return };
    let lines = repo_root().join("node/preload/lines.cjs");
    for (pending, want) in [("0", "LINES ok fast 20000"), ("1", "LINES ok stream 20000")] {
        let out = std::process::Command::new("node")
            .arg(base.join("apps/lines.js"))
            .arg(&lines)
            .env("NODE_PENDING_DEPRECATION", pending)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(want),
            "want {want}, got: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// tests/node/primary-link.js as app `name` with its own primary and two workers, with `env`.
fn start_link_app(h: &Herd, base: &std::path::Path, name: &str, env: &[&str]) {
    let script = base.join("apps/primary-link.js");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "start",
        script.to_str().unwrap(),
        "--primary",
        "--name",
        name,
        "--listen",
        &listen,
        "--env",
        "WORKERS=2",
    ];
    for e in env {
        args.extend(["--env", e]);
    }
    h.ok(&args);
}

/// Workers without herd's preload (so without the direct link) and a primary send each other
/// bursts of 20000 messages at once, all through the daemon, to a receiver that blocks for a
/// while on the first: as on Node's own channel, every one arrives, in order.
#[test]
fn bursts_through_the_daemon_wait_rather_than_drop() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    start_link_app(
        &h,
        &base,
        "burst",
        &[
            "COUNT=20000",
            "BATCH=20000",
            "BUSY_MS=300",
            "HERD_NODE_PRELOAD=off",
        ],
    );
    let all = wait_until(Duration::from_secs(40), || {
        let all = logs(&h, "burst");
        let done = all.lines().filter(|l| l.contains("ORDER")).count();
        (all.contains("BROKEN") || done >= 4)
            .then_some(all.clone())
            .ok_or(all)
    })
    .unwrap_or_else(|all| panic!("no order report from every worker both ways:\n{all}"));
    assert!(
        !all.contains("BROKEN") && all.matches("ok 20000").count() == 4,
        "messages lost or out of order:\n{all}"
    );
    h.finish();
}

#[test]
fn messages_keep_nodes_order_and_take_the_direct_link_even_across_a_primary_restart() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let out = tempfile::tempdir().unwrap();
    start_link_app(
        &h,
        &base,
        "link",
        &[&format!("OUT={}", out.path().display())],
    );
    // Bursts of 2000 each way that start before the link is up and end on it: in order, and
    // after the worker's `online` and `listening` (both of which go through herd).
    let ordered = |want: usize| {
        wait_until(Duration::from_secs(30), || {
            let all = logs(&h, "link");
            let lines: Vec<&str> = all.lines().filter(|l| l.contains("ORDER")).collect();
            assert!(
                !lines.iter().any(|l| l.contains("BROKEN")),
                "Node's message order broken:\n{all}"
            );
            (lines.len() >= want).then_some(()).ok_or(all.clone())
        })
        .unwrap_or_else(|all| panic!("no order report from every worker both ways:\n{all}"));
    };
    ordered(4);
    let first = primary_pid(&h, "link").unwrap();
    round_trips_without_the_daemon(&h, first, out.path());
    // A new primary takes the workers back: their links reconnect to it.
    let workers = online_workers(&h, "link", 2);
    kill9(first);
    let second = wait_until(Duration::from_secs(20), || {
        primary_pid(&h, "link").filter(|&p| p != first).ok_or(())
    })
    .unwrap();
    // Its own bursts to the workers (it forks again and hears `online` again).
    ordered(6);
    assert_eq!(online_workers(&h, "link", 2), workers);
    round_trips_without_the_daemon(&h, second, out.path());
    assert_eq!(h.pids("link"), workers);
    h.finish();
}
