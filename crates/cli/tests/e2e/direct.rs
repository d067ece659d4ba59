//! Direct channels between instances (docs/bus.md, "Direct channels"): after the daemon
//! introduces two instances, their sends, requests and replies go peer to peer — with the
//! order per pair kept across the switch, a peer's exit failing what waits on it at once, a
//! restarted or reloaded peer introduced again, and a bound on open channels.

use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn request(h: &Herd, to: &str, data: &str) -> Value {
    serde_json::from_str(h.ok(&["request", to, data, "--timeout", "8s"]).trim()).unwrap()
}

/// `a:0` asks `to` with `send`; its answer (or error) as `a:0` saw it.
fn ask(h: &Herd, to: &str, send: &str, timeout_ms: u64) -> Value {
    request(
        h,
        "a:0",
        &format!(r#"{{"ask":"{to}","send":{send},"timeout_ms":{timeout_ms}}}"#),
    )
}

/// Messages the daemon has routed on this host (`herd describe`'s bus line).
fn routed(h: &Herd, app: &str) -> u64 {
    let out = h.ok(&["describe", app]);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("bus:"))
        .unwrap_or_else(|| panic!("no bus line in:\n{out}"));
    line.split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"))
}

/// What `to` saw (its `"seen"` answer) holds `{"seq": i}` for i in 0..n, once each, in order
/// (under `field` of each entry: bus-echo's `data`, bus.js's `direct`).
fn assert_arrived_in_order(h: &Herd, to: &str, field: &str, n: u64) {
    let seqs = wait_until(Duration::from_secs(5), || {
        let seen = request(h, to, r#""seen""#);
        let seqs: Vec<u64> = seen
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m[field]["seq"].as_u64())
            .collect();
        (seqs.len() as u64 == n).then_some(seqs.clone()).ok_or(seqs)
    })
    .unwrap();
    assert_eq!(seqs, (0..n).collect::<Vec<_>>());
}

fn start_echo(h: &Herd, name: &str, n: &str) {
    let echo = example_bin("bus-echo");
    h.ok(&[
        "start",
        echo.to_str().unwrap(),
        "--name",
        name,
        "-i",
        n,
        "--wait-ready",
    ]);
}

#[test]
fn rust_instances_talk_over_a_direct_channel_the_daemon_off_the_path() {
    let h = Herd::new();
    start_echo(&h, "a", "1");
    start_echo(&h, "b", "2");

    // The first request goes through the daemon (and asks for a channel); the next ones come
    // on the channel, and the daemon routes none of them.
    let first = ask(&h, "b:0", r#""one""#, 3000);
    assert_eq!(first["answer"]["echo"], "one", "{first}");
    let b0 = first["answer"]["pid"].as_u64().unwrap();
    wait_until(Duration::from_secs(5), || {
        let r = ask(&h, "b:0", r#""probe""#, 3000);
        (r["answer"]["direct"] == true).then_some(()).ok_or(r)
    })
    .unwrap();
    // What one `herd request` to an instance costs the daemon, measured.
    let base = routed(&h, "a");
    request(&h, "b:1", r#""x""#);
    let cli = routed(&h, "a") - base;
    let before = routed(&h, "a");
    for i in 0..20 {
        let r = ask(&h, "b:0", &format!("{i}"), 3000);
        assert_eq!(r["answer"]["echo"], i, "{r}");
        assert_eq!(r["answer"]["direct"], true, "{r}");
        assert_eq!(r["answer"]["pid"].as_u64(), Some(b0));
    }
    // The daemon routed the 20 `herd request`s to a:0; a:0's own 20 requests to b:0 and
    // their replies added nothing.
    assert_eq!(
        routed(&h, "a") - before,
        20 * cli,
        "a:0 ↔ b:0 went through the daemon"
    );

    let d = h.ok(&["describe", "a"]);
    let line = d
        .lines()
        .find(|l| l.contains("channels handed to pairs"))
        .unwrap();
    let opened: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(opened >= 1, "{line}");

    // Order per pair across the switch: a burst to b:1 that begins on the daemon's path and
    // goes on over the new channel arrives whole and in order.
    let r = request(&h, "a:0", r#"{"burst":"b:1","n":500}"#);
    assert_eq!(r["sent"], 500);
    assert_arrived_in_order(&h, "b:1", "data", 500);
    // And the sender is named as on the daemon's path.
    let seen = request(&h, "b:1", r#""seen""#);
    assert!(
        seen[0]["from"].as_str().unwrap().starts_with("a:0@"),
        "{seen}"
    );

    // A peer that exits fails the request waiting on it at once, not at its timeout.
    let h2 = &h;
    let asked = std::thread::scope(|s| {
        let t = s.spawn(move || ask(h2, "b:0", r#"{"sleep_ms":20000}"#, 15000));
        std::thread::sleep(Duration::from_millis(500));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(b0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        t.join().unwrap()
    });
    let error = asked["error"].as_str().unwrap_or_else(|| panic!("{asked}"));
    assert!(error.contains("closed its direct channel"), "{error}");
    assert!(asked["ms"].as_u64().unwrap() < 3000, "{asked}");

    // The restarted peer is introduced on the next message.
    let b0_new = wait_until(Duration::from_secs(10), || {
        let r = ask(&h, "b:0", r#""again""#, 2000);
        let pid = r["answer"]["pid"].as_u64();
        match pid {
            Some(p) if p != b0 && r["answer"]["direct"] == true => Ok(p),
            _ => Err(r),
        }
    })
    .unwrap();

    // A reload moves the address to a new process: a:0 is told, and talks to the new one
    // (directly again), never to the one reloaded away.
    h.ok(&["reload", "b"]);
    let after = h.pids("b");
    assert!(!after.contains(&(b0_new as u32)), "{after:?}");
    wait_until(Duration::from_secs(10), || {
        let r = ask(&h, "b:0", r#""reloaded""#, 2000);
        let pid = r["answer"]["pid"].as_u64().unwrap_or(0) as u32;
        (pid == after[0] && r["answer"]["direct"] == true)
            .then_some(())
            .ok_or(r)
    })
    .unwrap();
    h.finish();
}

#[test]
fn open_channels_are_bounded_least_recently_used_first() {
    let h = Herd::new();
    std::fs::write(h.home().join("config.toml"), "max_direct_channels = 2\n").unwrap();
    start_echo(&h, "a", "1");
    start_echo(&h, "b", "4");
    for round in 0..2 {
        for i in 0..4 {
            let to = format!("b:{i}");
            // Each answer comes, whether on a channel or (while one opens) through the daemon.
            let r = ask(&h, &to, &format!(r#""r{round}i{i}""#), 3000);
            assert_eq!(r["answer"]["echo"], format!("r{round}i{i}"), "{r}");
        }
    }
    // a:0 opened four; it keeps two (the most recent), and so does each b.
    wait_until(Duration::from_secs(5), || {
        let n = request(&h, "a:0", r#""channels""#);
        (n.as_u64().unwrap() <= 2).then_some(()).ok_or(n)
    })
    .unwrap();
    for i in 0..4 {
        let n = request(&h, &format!("b:{i}"), r#""channels""#);
        assert!(n.as_u64().unwrap() <= 2, "b:{i} holds {n}");
    }
    // An app that turns them off for itself (HERD_BUS_DIRECT=0) talks through the daemon.
    let echo = example_bin("bus-echo");
    h.ok(&[
        "start",
        echo.to_str().unwrap(),
        "--name",
        "c",
        "-e",
        "HERD_BUS_DIRECT=0",
        "--wait-ready",
    ]);
    for i in 0..3 {
        let r = request(&h, "c:0", &format!(r#"{{"ask":"b:0","send":{i}}}"#));
        assert_eq!(r["answer"]["echo"], i, "{r}");
        assert_eq!(r["answer"]["direct"], false, "{r}");
    }
    // With channels off, everything goes through the daemon and still works.
    let h = {
        h.finish();
        let h = Herd::new();
        std::fs::write(h.home().join("config.toml"), "max_direct_channels = 0\n").unwrap();
        h
    };
    start_echo(&h, "a", "1");
    start_echo(&h, "b", "1");
    for i in 0..5 {
        let r = ask(&h, "b:0", &format!("{i}"), 3000);
        assert_eq!(r["answer"]["echo"], i, "{r}");
        assert_eq!(r["answer"]["direct"], false, "{r}");
    }
    h.finish();
}

#[test]
fn node_instances_talk_over_a_direct_channel_and_with_rust_ones() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let script = base.join("apps/bus.js");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "na",
        "--listen",
        &listen,
    ]);
    let other = free_port();
    let listen_other = format!("127.0.0.1:{other}");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "nb",
        "-i",
        "2",
        "--listen",
        &listen_other,
    ]);
    start_echo(&h, "a", "1");
    let http = |path: &str| -> Value {
        let body = get(loopback(port), path, Duration::from_secs(10)).unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let ask = |to: &str, data: &str, timeout: u64| -> Value {
        http(&format!(
            "/ask?json=1&to={to}&data={data}&timeout={timeout}"
        ))
    };

    // Node → Node: over a channel once introduced.
    let first = ask("nb:0", "1", 3000);
    assert_eq!(first["answer"]["echo"], 1, "{first}");
    let nb0 = first["answer"]["pid"].as_u64().unwrap();
    wait_until(Duration::from_secs(5), || {
        let r = ask("nb:0", "2", 3000);
        (r["answer"]["direct"] == true).then_some(()).ok_or(r)
    })
    .unwrap();
    for i in 0..20 {
        let r = ask("nb:0", &i.to_string(), 3000);
        assert_eq!(r["answer"]["echo"], i, "{r}");
        assert_eq!(r["answer"]["direct"], true, "{r}");
    }

    // Order across the switch, Node → Node.
    let body = get(
        loopback(port),
        "/burst?to=nb:1&n=500",
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(body, "ok");
    assert_arrived_in_order(&h, "nb:1", "direct", 500);

    // Node → Rust and Rust → Node, over channels too.
    wait_until(Duration::from_secs(5), || {
        let r = ask("a:0", "3", 3000);
        (r["answer"]["direct"] == true && r["answer"]["lang"] == "rust")
            .then_some(())
            .ok_or(r)
    })
    .unwrap();
    wait_until(Duration::from_secs(5), || {
        let r = request(
            &h,
            "a:0",
            r#"{"ask":"nb:1","send":"from-rust","timeout_ms":3000}"#,
        );
        (r["answer"]["direct"] == true && r["answer"]["echo"] == "from-rust")
            .then_some(())
            .ok_or(r)
    })
    .unwrap();

    // A Node peer that exits fails the request waiting on it at once.
    let asked = std::thread::scope(|s| {
        let t = s.spawn(|| {
            ask(
                "nb:0",
                r#"{"sleep_ms":20000}"#.replace('"', "%22").as_str(),
                15000,
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(nb0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        t.join().unwrap()
    });
    let error = asked["error"].as_str().unwrap_or_else(|| panic!("{asked}"));
    assert!(error.contains("closed its direct channel"), "{error}");
    assert!(asked["ms"].as_u64().unwrap() < 3000, "{asked}");
    // Its successor is introduced on the next message.
    wait_until(Duration::from_secs(10), || {
        let r = ask("nb:0", "4", 2000);
        let pid = r["answer"]["pid"].as_u64();
        (pid.is_some_and(|p| p != nb0) && r["answer"]["direct"] == true)
            .then_some(())
            .ok_or(r)
    })
    .unwrap();
    h.finish();
}

#[test]
fn an_instance_that_never_takes_its_channel_ends_gets_only_a_few() {
    let h = Herd::new();
    start_echo(&h, "b", "1");
    // A raw client that asks for 200 channels and never reads its own: each end handed to it
    // would stay open in the daemon or in flight in the kernel.
    let dir = tempfile::tempdir().unwrap();
    let greedy = script(
        dir.path(),
        "greedy.py",
        "import json, os, socket, time\n\
         ch = socket.socket(fileno=int(os.environ['HERD_IPC_FD']))\n\
         ch.sendall(b'{\"herd\":\"direct\"}\\n')\n\
         for i in range(200):\n    ch.sendall(b'{\"herd\":\"direct\",\"to\":\"b:0\"}\\n')\n\
         time.sleep(120)\n",
    );
    h.ok(&[
        "start",
        greedy.to_str().unwrap(),
        "--name",
        "greedy",
        "--interpreter",
        "python3",
    ]);
    let counts = wait_until(Duration::from_secs(10), || {
        let d = h.ok(&["describe", "greedy"]);
        let line = d
            .lines()
            .find(|l| l.contains("channels handed to pairs"))
            .unwrap()
            .to_string();
        let n: Vec<u64> = line
            .replace(',', " ")
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (n[0] + n[1] == 200).then_some((n[0], n[1])).ok_or(line)
    })
    .unwrap();
    assert!(
        counts.0 <= 4,
        "handed {} ends to an instance that takes none",
        counts.0
    );
    // Everyone else goes on as before.
    assert_eq!(request(&h, "b:0", "7")["echo"], 7);
    assert!(h.ok(&["list"]).contains("greedy"));
    h.finish();
}
