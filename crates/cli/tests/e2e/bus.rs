//! The message bus on one host: instance ↔ instance, CLI ↔ instance, topics, request/reply,
//! timeouts, and limits (oversize, malformed, a consumer that never reads).

use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn request(h: &Herd, to: &str, data: &str) -> Value {
    serde_json::from_str(h.ok(&["request", to, data, "--timeout", "3s"]).trim()).unwrap()
}

fn seen(h: &Herd, to: &str) -> Vec<Value> {
    request(h, to, r#""seen""#).as_array().unwrap().clone()
}

#[test]
fn node_instances_talk_directly_app_wide_broadcast_topics_and_request_reply() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    // A smaller bus limit, set the way users set it.
    std::fs::write(h.home().join("config.toml"), "max_message_bytes = 50000\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/bus.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "nb",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    let addr = loopback(port);
    let http = |path: &str| get(addr, path, Duration::from_secs(5)).unwrap();

    // CLI → one instance, request/reply.
    let r = request(&h, "nb:1", r#"{"q":1}"#);
    assert_eq!(r["echo"]["q"], 1);
    assert_eq!(r["instance"], "1");

    // Instance → instance request/reply (whichever instance serves the HTTP call asks nb:1).
    let r: Value = serde_json::from_str(&http("/ask?to=nb:1&data=ping")).unwrap();
    assert_eq!(r["echo"], "ping");
    assert_eq!(r["instance"], "1");

    // Direct, app-wide and broadcast sends from the CLI and from an instance.
    h.ok(&["send", "nb:0", r#""only-0""#]);
    h.ok(&["send", "nb", r#""each""#]);
    h.ok(&["send", "*", r#""everyone""#]);
    http("/send?to=nb:1&data=from-an-instance");
    // Topics: from the CLI and from an instance.
    h.ok(&["publish", "news", r#"{"h":1}"#]);
    http("/publish?topic=news&data=extra");
    http("/publish?topic=nobody-listens&data=x");
    wait_until(Duration::from_secs(5), || {
        let s0 = serde_json::to_string(&seen(&h, "nb:0")).unwrap();
        let s1 = serde_json::to_string(&seen(&h, "nb:1")).unwrap();
        let ok = s0.contains("only-0")
            && !s1.contains("only-0")
            && s0.contains("\"each\"")
            && s1.contains("\"each\"")
            && s0.contains("everyone")
            && s1.contains("everyone")
            && s1.contains("from-an-instance")
            && s0.contains("{\"h\":1}")
            && s1.contains("{\"h\":1}")
            && s0.contains("extra")
            && s1.contains("extra")
            && !s0.contains("nobody-listens");
        ok.then_some(()).ok_or(format!("0: {s0}\n1: {s1}"))
    })
    .unwrap();

    // Unknown address and timeout: errors, not hangs.
    let e = h.fails(&["send", "nope:3", "1"]);
    assert!(
        e.contains("no app named") || e.contains("no running instance"),
        "{e}"
    );
    let never = base.join("apps/never-listens.js");
    h.ok(&[
        "start",
        never.to_str().unwrap(),
        "--name",
        "mute",
        "--listen-timeout",
        "100",
    ]);
    let t = std::time::Instant::now();
    let e = h.fails(&["request", "mute:0", "1", "--timeout", "400ms"]);
    assert!(e.contains("did not reply in time"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // An instance's request that times out is an error for that instance (here: a 500).
    let r = get(
        addr,
        "/ask?to=mute:0&data=x&timeout=300",
        Duration::from_secs(5),
    )
    .unwrap_err()
    .to_string();
    assert!(
        r.contains("500") && r.contains("did not reply in time"),
        "{r}"
    );

    // Oversize and malformed messages from an instance come back as errors; nothing breaks.
    http("/big?n=2000000");
    http("/garbage");
    wait_until(Duration::from_secs(5), || {
        let errs = serde_json::to_string(&request(&h, "nb", r#""errors""#)).unwrap();
        let both = serde_json::to_string(&request(&h, "nb:0", r#""errors""#)).unwrap()
            + &serde_json::to_string(&request(&h, "nb:1", r#""errors""#)).unwrap();
        (both.contains("longer than") && both.contains("send needs"))
            .then_some(())
            .ok_or(errs)
    })
    .unwrap();
    // The channel survived the oversized line.
    assert_eq!(request(&h, "nb:0", r#""x""#)["echo"], "x");
    let big = "\"".to_string() + &"y".repeat(100_000) + "\"";
    let e = h.fails(&["publish", "news", &big]);
    assert!(e.contains("over the bus limit"), "{e}");
    let d = h.ok(&["describe", "nb"]);
    assert!(d.contains("refused"), "{d}");
    h.finish();
}

#[test]
fn a_consumer_that_never_reads_loses_messages_alone() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    // Subscribes to "flood", then never reads its channel again.
    let deaf = script(
        dir.path(),
        "deaf.py",
        "#!/usr/bin/env python3\nimport os, time\nos.write(int(os.environ['HERD_IPC_FD']), b'{\"herd\":\"subscribe\",\"topic\":\"flood\"}\\n')\ntime.sleep(300)\n",
    );
    h.ok(&["start", deaf.to_str().unwrap(), "--name", "deaf"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/bus.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "nb",
        "--listen",
        &listen,
    ]);
    std::thread::sleep(Duration::from_millis(300));
    get(loopback(port), "/flood?n=30000", Duration::from_secs(30)).unwrap();
    // The daemon stays responsive and the other instance is still served.
    let t = std::time::Instant::now();
    h.ok(&["list"]);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(request(&h, "nb:0", r#""still here""#)["echo"], "still here");
    let dropped = wait_until(Duration::from_secs(10), || {
        let d = h.app("deaf")["processes"][0]["messages_dropped"]
            .as_u64()
            .unwrap();
        (d > 0).then_some(d).ok_or(d)
    })
    .unwrap();
    assert!(dropped < 30000);
    let d = h.ok(&["describe", "deaf"]);
    assert!(d.contains("dropped (slow readers)"), "{d}");
    // A full queue is neither a refusal nor a missing recipient, and the sender is told so.
    let full = h.fails(&["send", "deaf", "1"]);
    assert!(full.contains("queue is full"), "{full}");
    let d = h.ok(&["describe", "deaf"]);
    assert!(
        d.contains("0 refused") && d.contains("0 without recipient"),
        "{d}"
    );
    // The count outlives the instance.
    h.ok(&["delete", "deaf"]);
    let d = h.ok(&["describe", "nb"]);
    assert!(!d.contains(" 0 dropped"), "{d}");
    h.finish();
}

#[test]
fn malformed_json_from_any_program_gets_an_error_back() {
    let h = Herd::new();
    let dir = tempfile::tempdir().unwrap();
    // Writes garbage, then reads the error the daemon sends back and prints it.
    let talker = script(
        dir.path(),
        "talker.py",
        "#!/usr/bin/env python3\nimport os, sys, time\nfd = int(os.environ['HERD_IPC_FD'])\nos.write(fd, b'this is not json\\n')\nf = os.fdopen(fd, 'rb', buffering=0)\nline = b''\nwhile not line.endswith(b'\\n'):\n    line += f.read(1)\nprint('got:', line.decode().strip(), flush=True)\ntime.sleep(300)\n",
    );
    h.ok(&["start", talker.to_str().unwrap(), "--name", "talker"]);
    let logs = wait_until(Duration::from_secs(5), || {
        let l = h.ok(&["logs", "talker"]);
        l.contains("got:").then_some(l.clone()).ok_or(l)
    })
    .unwrap();
    assert!(
        logs.contains(r#""herd":"error""#) && logs.contains("not JSON"),
        "{logs}"
    );
    h.finish();
}

#[test]
fn rust_and_node_instances_talk_through_the_bus() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let echo = example_bin("bus-echo");
    h.ok(&[
        "start",
        echo.to_str().unwrap(),
        "--name",
        "rust",
        "-i",
        "2",
        "--wait-ready",
    ]);
    assert_eq!(h.statuses("rust"), vec!["online", "online"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/bus.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "nb",
        "--listen",
        &listen,
    ]);

    // CLI → Rust.
    let r = request(&h, "rust:1", r#"{"x":1}"#);
    assert_eq!(r["lang"], "rust");
    assert_eq!(r["echo"]["x"], 1);
    // Node → Rust.
    let r: Value = serde_json::from_str(
        &get(
            loopback(port),
            "/ask?to=rust:0&data=from-node",
            Duration::from_secs(5),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(r["lang"], "rust");
    assert_eq!(r["echo"], "from-node");
    // Rust → Node.
    let r = request(&h, "rust:0", r#"{"ask":"nb:0"}"#);
    assert_eq!(r["answer"]["echo"], "from rust", "{r}");
    // Topics reach Rust subscribers, from Node and from the CLI.
    get(
        loopback(port),
        "/publish?topic=news&data=node-news",
        Duration::from_secs(5),
    )
    .unwrap();
    h.ok(&["publish", "news", r#""cli-news""#]);
    wait_until(Duration::from_secs(5), || {
        let s = serde_json::to_string(&request(&h, "rust:1", r#""seen""#)).unwrap();
        (s.contains("node-news") && s.contains("cli-news"))
            .then_some(())
            .ok_or(s)
    })
    .unwrap();
    // `herd bus` shows what passes.
    let mut watcher = h
        .command(&["bus", "--json", "news"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = watcher.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    h.ok(&["publish", "news", r#""watched""#]);
    let line = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("herd bus showed nothing");
    let _ = watcher.kill();
    let _ = watcher.wait();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["kind"], "publish");
    assert_eq!(v["data"], "watched");
    h.finish();
}

#[test]
fn the_python_client_in_docs_bus_md_works_as_printed() {
    let h = Herd::new();
    let doc = std::fs::read_to_string(repo_root().join("docs/bus.md")).unwrap();
    let code = doc
        .split("```python\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.py");
    std::fs::write(&file, code).unwrap();
    h.ok(&["start", file.to_str().unwrap(), "--name", "py"]);
    wait_until(Duration::from_secs(5), || {
        let out = h.run(&["publish", "news", r#""from cli""#]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("to 1 subscriber").then_some(()).ok_or(text)
    })
    .unwrap();
    assert_eq!(h.ok(&["request", "py:0", r#""ping""#]).trim(), r#""pong""#);
    wait_until(Duration::from_secs(5), || {
        let l = h.ok(&["logs", "py"]);
        (l.contains("news hi") && l.contains("news from cli"))
            .then_some(())
            .ok_or(l)
    })
    .unwrap();
    h.finish();
}
