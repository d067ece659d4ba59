//! herd's Prometheus endpoint (issue #14): one scrape for the whole cluster. An app using
//! prom-client's default registry, with herd's one line, under `-i 4`: after N requests spread
//! over the instances, one scrape sums to N — parsed by a real Prometheus text-format parser
//! (Python's `prometheus_client`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// A raw request to the endpoint; the whole answer.
fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

/// GET /metrics: (status line, content type, body).
fn scrape(addr: &str) -> (String, String, String) {
    scrape_path(addr, "/metrics")
}

/// GET `path`: (status line, content type, body).
fn scrape_path(addr: &str, path: &str) -> (String, String, String) {
    let raw = http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    (status, ctype, body.to_string())
}

/// A python3 that has `prometheus_client` (Debian's python3-prometheus-client).
fn python_with_prometheus() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|p| {
        std::process::Command::new(p)
            .args(["-c", "import prometheus_client"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The exposition parsed by prometheus_client: every sample as {family, type, name, labels,
/// value}. `None` (loudly; a failure with `CI=true`) without the parser.
fn parse(text: &str) -> Option<Vec<Value>> {
    let Some(py) = python_with_prometheus() else {
        let msg = "python3's prometheus_client is needed (Debian: apt-get install python3-prometheus-client)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    };
    let code = "import sys,json\nfrom prometheus_client.parser import text_string_to_metric_families as f\nout=[]\nfor fam in f(sys.stdin.read()):\n  for s in fam.samples:\n    out.append({'family':fam.name,'type':fam.type,'name':s.name,'labels':s.labels,'value':s.value})\nprint(json.dumps(out))";
    let mut child = std::process::Command::new(py)
        .args(["-c", code])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse herd's endpoint: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn one_scrape_counts_every_request_of_every_instance() {
    let Some(base) = node_fixture() else { return };
    let metrics = format!("127.0.0.1:{}", free_port());
    let h = Herd::with_env(&[("HERD_METRICS", &metrics)]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        base.join("apps/prom.js").to_str().unwrap(),
        "--name",
        "prom",
        "-i",
        "4",
        "--listen",
        &listen,
    ]);
    let pids = wait_until(Duration::from_secs(20), || {
        let p = h.pids("prom");
        let online = h.statuses("prom").iter().all(|s| s == "online");
        (p.len() == 4 && online).then_some(p).ok_or("not online")
    })
    .unwrap();
    // N requests on fresh connections: the kernel spreads them over the 4 instances.
    let n = 400u64;
    let mut served = std::collections::HashSet::new();
    for _ in 0..n {
        served.insert(pid_of(
            &get(loopback(port), "/", Duration::from_secs(5)).unwrap(),
        ));
    }
    assert!(
        served.len() >= 3,
        "requests reached only {served:?} of {pids:?}"
    );
    let started = Instant::now();
    let (status, ctype, body) = scrape(&metrics);
    let took = started.elapsed();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
    let Some(samples) = parse(&body) else {
        return h.finish();
    };
    let requests: Vec<&Value> = samples
        .iter()
        .filter(|s| s["name"] == "app_requests_total" && s["labels"]["route"] == "/")
        .collect();
    let total: f64 = requests.iter().map(|s| s["value"].as_f64().unwrap()).sum();
    assert_eq!(total as u64, n, "{requests:?}");
    let instances: std::collections::BTreeSet<&str> = requests
        .iter()
        .map(|s| s["labels"]["instance"].as_str().unwrap())
        .collect();
    assert!(instances.len() >= 3, "{instances:?}");
    assert!(requests.iter().all(|s| s["labels"]["app"] == "prom"));
    // prom-client's default metrics come from every instance, once each.
    let rss = samples
        .iter()
        .filter(|s| s["name"] == "process_resident_memory_bytes")
        .count();
    assert_eq!(rss, 4);
    // On request, one series for the app: the counter summed over its instances; gauges
    // stay per instance.
    let summed = parse(&scrape_path(&metrics, "/metrics?sum=app").2).unwrap();
    let requests: Vec<&Value> = summed
        .iter()
        .filter(|s| s["name"] == "app_requests_total" && s["labels"]["route"] == "/")
        .collect();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0]["value"].as_f64().unwrap() as u64, n);
    assert!(requests[0]["labels"].get("instance").is_none());
    assert_eq!(
        summed
            .iter()
            .filter(|s| s["name"] == "process_resident_memory_bytes")
            .count(),
        4
    );
    let (status, _, _) = scrape_path(&metrics, "/metrics?sum=bogus");
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    // herd's own series.
    let up: Vec<&Value> = samples
        .iter()
        .filter(|s| s["name"] == "herd_instance_up" && s["labels"]["app"] == "prom")
        .collect();
    assert_eq!(up.len(), 4);
    assert!(up.iter().all(|s| s["value"] == 1.0));
    assert!(samples
        .iter()
        .any(|s| s["name"] == "herd_daemon_memory_bytes" && s["value"].as_f64().unwrap() > 0.0));
    // A killed instance is replaced and counted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pids[0]).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(20), || {
        let samples = parse(&scrape(&metrics).2).unwrap_or_default();
        samples
            .iter()
            .find(|s| {
                s["name"] == "herd_instance_restarts_total"
                    && s["labels"]["instance"] == "0"
                    && s["value"] == 1.0
            })
            .cloned()
            .ok_or("no restart yet")
    })
    .unwrap();
    h.finish();
}

#[test]
fn an_instance_that_does_not_answer_is_skipped_and_counted_and_bad_requests_get_errors() {
    let Some(_base) = node_fixture() else { return };
    let metrics = format!("127.0.0.1:{}", free_port());
    let h = Herd::with_env(&[("HERD_METRICS", &metrics)]);
    // Offers its metrics, then never answers a scrape.
    let dir = tempfile::tempdir().unwrap();
    let mute = script(
        dir.path(),
        "mute.js",
        "process.send({herd: 'metrics_offer'});\nprocess.on('message', () => {});\nsetInterval(() => {}, 1000);\n",
    );
    h.ok(&[
        "start",
        mute.to_str().unwrap(),
        "--name",
        "mute",
        "--listen-timeout",
        "1s",
    ]);
    wait_until(Duration::from_secs(10), || {
        (h.statuses("mute") == ["online"]).then_some(()).ok_or("")
    })
    .unwrap();
    let started = Instant::now();
    let (status, _, body) = scrape(&metrics);
    let took = started.elapsed();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(took < Duration::from_secs(3), "the scrape waited {took:?}");
    assert!(body.contains("herd_instance_up{"), "{body}");
    let (_, _, body) = scrape(&metrics);
    let skipped = body
        .lines()
        .find_map(|l| l.strip_prefix("herd_scrape_instances_skipped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap();
    assert!(skipped >= 1.0, "{body}");
    // Not the metrics path; a head that never ends.
    let raw = http(&metrics, b"GET /nope HTTP/1.1\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    let raw = http(&metrics, &[b'x'; 9000]);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    // The daemon goes on.
    assert_eq!(scrape(&metrics).0, "HTTP/1.1 200 OK");
    h.finish();
}

#[test]
fn pm2_io_metrics_and_actions_work_unchanged() {
    let Some(base) = node_fixture() else { return };
    let metrics = format!("127.0.0.1:{}", free_port());
    let h = Herd::with_env(&[("HERD_METRICS", &metrics)]);
    let watch = BusWatch::start(&h, "primary");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        base.join("apps/pm2io.js").to_str().unwrap(),
        "--name",
        "io",
        "-i",
        "2",
        "--listen",
        &listen,
    ]);
    for _ in 0..10 {
        get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    }
    // @pm2/io reports its metrics about once a second: describe shows them per instance.
    let procs = wait_until(Duration::from_secs(20), || {
        let d: Value = serde_json::from_str(&h.ok(&["describe", "io", "--json"])).unwrap();
        let procs = d[0]["processes"].as_array().cloned().unwrap_or_default();
        let total: f64 = procs
            .iter()
            .filter_map(|p| p["pm2_metrics"]["Requests"]["value"].as_f64())
            .sum();
        let declared = |p: &Value| {
            let a = p["actions"].as_array().cloned().unwrap_or_default();
            a.contains(&"hello".into()) && a.contains(&"echo".into())
        };
        (total == 10.0 && procs.iter().all(declared))
            .then_some(procs.clone())
            .ok_or(d.to_string())
    })
    .unwrap();
    assert!(procs
        .iter()
        .all(|p| p["pm2_metrics"]["Queue length"]["value"] == 7));
    let text = h.ok(&["describe", "io"]);
    assert!(text.contains("Queue length = 7 jobs"), "{text}");
    assert!(
        text.contains("hello, echo (herd trigger io ACTION)"),
        "{text}"
    );
    // The same values in the Prometheus endpoint.
    let (_, _, body) = scrape(&metrics);
    assert_eq!(
        body.lines()
            .filter(|l| l.starts_with("herd_pm2_metric{") && l.contains("metric=\"Queue length\""))
            .count(),
        2,
        "{body}"
    );
    // herd trigger: every instance runs the action and its reply is printed, as by PM2.
    let pids = h.pids("io");
    let out = h.ok(&["trigger", "io", "hello"]);
    for pid in &pids {
        assert!(out.contains(&format!("\"pid\":{pid}")), "{out}");
    }
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = h.ok(&["trigger", "io:1", "echo", r#"{"x":1}"#]);
    assert_eq!(out.trim(), r#"[io:1]={"got":{"x":1}}"#);
    let err = h.fails(&["trigger", "io", "nope"]);
    assert!(
        err.contains("its actions: ") && err.contains("echo, hello"),
        "{err}"
    );
    // None of @pm2/io's messages is published on the bus.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(watch.lines.lock().unwrap().is_empty());
    drop(watch);
    h.finish();
}

#[test]
fn a_python_prometheus_client_app_is_scraped_whole_with_one_line() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let Some(py) = python_with_prometheus() else {
        let msg = "python3's prometheus_client is needed (Debian: apt-get install python3-prometheus-client)";
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let h = Herd::with_env(&[("HERD_METRICS", &metrics)]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        repo_root().join("tests/python/prom.py").to_str().unwrap(),
        "--interpreter",
        py,
        "--name",
        "py",
        "-i",
        "3",
        "--listen",
        &listen,
    ]);
    wait_until(Duration::from_secs(20), || {
        (h.statuses("py") == ["online", "online", "online"])
            .then_some(())
            .ok_or("")
    })
    .unwrap();
    let n = 120u64;
    for _ in 0..n {
        get(loopback(port), "/", Duration::from_secs(5)).unwrap();
    }
    let samples = wait_until(Duration::from_secs(10), || {
        let samples = parse(&scrape(&metrics).2).unwrap_or_default();
        let per: Vec<Value> = samples
            .into_iter()
            .filter(|s| s["name"] == "py_requests_total" && s["labels"]["route"] == "/")
            .collect();
        (per.len() >= 2)
            .then_some(per.clone())
            .ok_or(format!("{per:?}"))
    })
    .unwrap();
    let total: f64 = samples.iter().map(|s| s["value"].as_f64().unwrap()).sum();
    assert_eq!(total as u64, n, "{samples:?}");
    assert!(samples.iter().all(|s| s["labels"]["app"] == "py"));
    h.finish();
}
