//! The bus across hosts: two daemons with their own HERD_HOME and HERD_HOST talk through a
//! real broker (Redis, NATS and Kafka), and keep working while it is away.

use std::time::Duration;

use crate::common::*;
use serde_json::Value;

fn connected(h: &Herd) -> Result<(), String> {
    let d = h.ok(&["describe", "all"]);
    (d.contains("(connected;")).then_some(()).ok_or(d)
}

fn cross_host(kind: &'static str) {
    let Some(base) = node_fixture() else { return };
    let Some(mut broker) = Broker::start(kind) else {
        return;
    };
    let url = broker.url();
    let a = Herd::with_env(&[("HERD_HOST", "host-a"), ("HERD_BUS", &url)]);
    let b = Herd::with_env(&[("HERD_HOST", "host-b"), ("HERD_BUS", &url)]);
    let script = base.join("apps/bus.js");
    let (pa, pb) = (free_port(), free_port());
    for (h, p) in [(&a, pa), (&b, pb)] {
        let listen = format!("127.0.0.1:{p}");
        h.ok(&[
            "start",
            script.to_str().unwrap(),
            "--name",
            "nb",
            "--listen",
            &listen,
        ]);
    }
    wait_until(Duration::from_secs(10), || connected(&a).and(connected(&b))).unwrap();

    // CLI on a → instance on b, and back.
    let ask = |h: &Herd, to: &str| -> Result<Value, String> {
        let out = h.run(&["request", to, r#""hello""#, "--timeout", "2s"]);
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let r = wait_until(Duration::from_secs(10), || ask(&a, "nb:0@host-b")).unwrap();
    assert_eq!(r["echo"], "hello");
    let pid_b = b.pids("nb")[0];
    assert_eq!(r["pid"].as_u64().unwrap() as u32, pid_b);
    // Instance on a → instance on b.
    let r: Value = serde_json::from_str(
        &get(
            loopback(pa),
            "/ask?to=nb:0@host-b&data=from-a",
            Duration::from_secs(5),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, pid_b);

    // Lifecycle events of host a reach a watcher on host b.
    let watch = BusWatch::start(&b, "herd:lifecycle");
    let pid_a = a.pids("nb")[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid_a).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exit = watch.wait(1, |v| {
        v["data"]["event"] == "exit" && v["data"]["pid"] == pid_a && v["data"]["host"] == "host-a"
    });
    assert_eq!(exit[0]["data"]["signal"], "SIGKILL", "{exit:?}");
    watch.wait(1, |v| {
        v["data"]["event"] == "online" && v["data"]["host"] == "host-a"
    });
    drop(watch);
    wait_until(Duration::from_secs(10), || {
        let r = ask(&a, "nb:0");
        r.map(|_| ())
    })
    .unwrap();

    // Topics and app-wide sends reach every host.
    a.ok(&["publish", "news", r#""published-on-a""#]);
    b.ok(&["send", "nb", r#""sent-to-nb-on-b""#]);
    let seen = |h: &Herd| {
        serde_json::to_string(
            &serde_json::from_str::<Value>(&h.ok(&["request", "nb:0", r#""seen""#])).unwrap(),
        )
        .unwrap()
    };
    wait_until(Duration::from_secs(5), || {
        let (sa, sb) = (seen(&a), seen(&b));
        (sa.contains("published-on-a")
            && sb.contains("published-on-a")
            && sa.contains("sent-to-nb-on-b")
            && sb.contains("sent-to-nb-on-b"))
        .then_some(())
        .ok_or(format!("a: {sa}\nb: {sb}"))
    })
    .unwrap();

    // The broker goes away: each host keeps working on its own, losses are counted.
    broker.kill();
    wait_until(Duration::from_secs(10), || match connected(&a) {
        Ok(()) => Err("still connected".to_string()),
        Err(_) => Ok(()),
    })
    .unwrap();
    assert_eq!(ask(&a, "nb:0").unwrap()["echo"], "hello");
    a.ok(&["publish", "news", r#""lost-while-away""#]);
    let d = a.ok(&["describe", "nb"]);
    assert!(d.contains("NOT connected"), "{d}");

    // It comes back: the daemons reconnect and resubscribe by themselves.
    broker.restart();
    wait_until(Duration::from_secs(15), || connected(&a).and(connected(&b))).unwrap();
    let r = wait_until(Duration::from_secs(15), || ask(&a, "nb:0@host-b")).unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, pid_b);
    b.ok(&["publish", "news", r#""after-the-outage""#]);
    wait_until(Duration::from_secs(5), || {
        let sa = seen(&a);
        sa.contains("after-the-outage").then_some(()).ok_or(sa)
    })
    .unwrap();
    let d = a.ok(&["describe", "nb"]);
    let lost: u64 = d
        .split(" lost while away")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(lost >= 1, "{d}");
    assert!(!d.contains(" 0 reconnects"), "{d}");

    // herd update on a: its instance keeps its pid and its subscriptions, the new program
    // connects to the broker again, and traffic goes both ways.
    let pid_a = a.pids("nb")[0];
    let out = a.ok(&["update"]);
    assert!(out.contains("updated in place"), "{out}");
    assert_eq!(a.pids("nb"), vec![pid_a]);
    wait_until(Duration::from_secs(10), || connected(&a)).unwrap();
    let r = wait_until(Duration::from_secs(10), || ask(&b, "nb:0@host-a")).unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, pid_a);
    b.ok(&["publish", "news", r#""after-the-update""#]);
    wait_until(Duration::from_secs(5), || {
        let sa = seen(&a);
        sa.contains("after-the-update").then_some(()).ok_or(sa)
    })
    .unwrap();
    a.finish();
    b.finish();
}

#[test]
fn two_hosts_talk_through_redis_and_survive_its_restart() {
    cross_host("redis");
}

#[test]
fn two_hosts_talk_through_nats_and_survive_its_restart() {
    cross_host("nats");
}

#[test]
fn two_hosts_talk_through_kafka_and_survive_its_restart() {
    cross_host("kafka");
}
