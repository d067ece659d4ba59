//! Three hosts for real (issue #17): a broker in a network namespace of its own, joined by a
//! veth pair to each of three more namespaces, each running a herd daemon with its own
//! HERD_HOME and HERD_HOST. Every way a message travels is checked between every pair of
//! hosts; then one host's link is cut and restored.
//!
//! The broker listens only inside its namespace and the daemons reach it over the veths, so
//! no traffic leaves the namespaces made here. Each host uses the broker's address on its own
//! link: a connected route, which the kernel puts back by itself when the link comes up again
//! (a static route would be gone after `ip link set … down`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// `ip ARGS`, or what it said on failing.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn netns_list() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The network namespaces of one test: `b` (the broker) and one per host, named
/// `herd3h-<pid>-<kind>-<tag>` (the two tests may run as threads of one process). Host `k` is
/// joined to `b` by a veth pair: `to-hk` (10.200.k.1/24) in `b`, `uplink` (10.200.k.2/24) in
/// `hk`. Dropping it deletes the namespaces, and so their veths: drop it after every process
/// that runs inside them is gone.
struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Net {
    /// Builds the namespaces, or says why they cannot be made here (`Err`: skip the test).
    ///
    /// Namespaces left by a test process that was killed before its cleanup ran (its pid is
    /// in their name) are deleted first.
    fn build(kind: &str) -> Result<Self, String> {
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(
                "iproute2's `ip` is not installed (Debian: apt-get install iproute2)".into(),
            );
        }
        for stale in netns_list() {
            let pid = stale
                .strip_prefix("herd3h-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = ip(&["netns", "del", &stale]);
            }
        }
        let mut net = Net {
            prefix: format!("herd3h-{}-{kind}", std::process::id()),
            made: Vec::new(),
        };
        // The first namespace is the probe: without root (or with namespaces denied) this
        // is where it fails.
        let b = net.ns("b");
        ip(&["netns", "add", &b]).map_err(|e| {
            let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
            format!("cannot create a network namespace (uid {uid}; root is needed): {e}")
        })?;
        net.made.push(b.clone());
        // From here on a failure is a failure of the test, and Drop cleans up.
        ip(&["-n", &b, "link", "set", "lo", "up"]).unwrap();
        for (k, host) in (1..).zip(HOSTS) {
            let ns = net.ns(host);
            ip(&["netns", "add", &ns]).unwrap();
            net.made.push(ns.clone());
            let to = format!("to-{host}");
            let (near, far) = (format!("10.200.{k}.1/24"), format!("10.200.{k}.2/24"));
            ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
            // Both ends are made inside their namespaces: no name in the root namespace,
            // where parallel runs could collide.
            ip(&[
                "-n", &b, "link", "add", &to, "type", "veth", "peer", "name", "uplink", "netns",
                &ns,
            ])
            .unwrap();
            ip(&["-n", &b, "addr", "add", &near, "dev", &to]).unwrap();
            ip(&["-n", &b, "link", "set", &to, "up"]).unwrap();
            ip(&["-n", &ns, "addr", "add", &far, "dev", "uplink"]).unwrap();
            ip(&["-n", &ns, "link", "set", "uplink", "up"]).unwrap();
        }
        Ok(net)
    }

    fn ns(&self, tag: &str) -> String {
        format!("{}-{tag}", self.prefix)
    }

    /// Takes host `host`'s end of its link down (or up again).
    fn set_link(&self, host: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.ns(host), "link", "set", "uplink", state]).unwrap();
    }

    /// Deletes the namespaces and checks that none is left.
    fn finish(mut self) {
        self.delete();
        let left: Vec<String> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        assert!(left.is_empty(), "namespaces left behind: {left:?}");
    }

    fn delete(&mut self) {
        for ns in self.made.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("{e}");
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.delete();
    }
}

/// The broker, run in namespace `b` and listening on its veths' addresses, stopped by pid
/// when dropped (`ip netns exec` execs the broker: the child's pid is the broker's).
struct NsBroker {
    child: std::process::Child,
    port: u16,
}

impl NsBroker {
    /// Starts one, or says loudly that the binary is missing (and fails when `CI=true`).
    fn start(net: &Net, kind: &str) -> Option<Self> {
        let bin = if kind == "redis" {
            "redis-server"
        } else {
            "nats-server"
        };
        let Some(found) = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(bin))
            .find(|p| p.exists())
        else {
            skip(&format!(
                "{bin} is needed for the cross-host bus tests; install it (Debian: apt-get install {bin})"
            ));
            return None;
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.ns("b")]).arg(found);
        // The namespace is private: a fixed port cannot collide with anything.
        let port = if kind == "redis" {
            cmd.args([
                "--port",
                "6379",
                "--bind",
                "0.0.0.0",
                // Clients come from other addresses than 127.0.0.1 and there is no password.
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ]);
            6379
        } else {
            cmd.args(["-a", "0.0.0.0", "-p", "4222"]);
            4222
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Some(Self { child, port })
    }
}

impl Drop for NsBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Says why the test cannot run here and returns, or fails when `CI=true`.
fn skip(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// One host: a herd daemon in namespace `hk`.
struct Host {
    name: &'static str,
    ns: String,
    herd: Herd,
}

impl Host {
    /// `ip netns exec NS herd ARGS`: the daemon the CLI starts on first use lives in NS.
    fn in_ns(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(herd_bin())
            .args(args)
            .envs(self.herd.env.iter().map(|(k, v)| (k, v)))
            .env("HERD_HOME", self.herd.home())
            .current_dir(repo_root())
            .stdin(Stdio::null());
        c.output().unwrap()
    }

    /// `herd request TO DATA --timeout TIMEOUT`: the reply's data, or the error.
    fn request(&self, to: &str, data: &str, timeout: &str) -> Result<Value, String> {
        let out = self.herd.run(&["request", to, data, "--timeout", timeout]);
        if out.status.success() {
            serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn bridge(&self) -> Bridge {
        Bridge::of(&self.herd.ok(&["describe", "echo"]))
    }
}

/// The broker line of `herd describe`: `URL (connected; N sent, N received, N lost while
/// away, N reconnects)`. (`describe --json` lists apps only.)
#[derive(Debug, Clone, Copy)]
struct Bridge {
    connected: bool,
    sent: u64,
    lost: u64,
    reconnects: u64,
}

impl Bridge {
    fn of(describe: &str) -> Self {
        let line = describe
            .lines()
            .find(|l| l.trim_start().starts_with("broker:"))
            .unwrap_or_else(|| panic!("no broker line in:\n{describe}"));
        let count = |what: &str| -> u64 {
            line.split(what)
                .next()
                .and_then(|before| before.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no `{what}` in {line:?}"))
        };
        Self {
            connected: line.contains("(connected;"),
            sent: count(" sent,"),
            lost: count(" lost while away"),
            reconnects: count(" reconnects)"),
        }
    }
}

/// What instance `i` of `echo` on `h` saw (bus-echo keeps every message that was not a
/// request), as `DATA from FROM`, only those whose data starts with `tag`, sorted.
fn seen(h: &Host, i: usize, tag: &str) -> Result<Vec<String>, String> {
    let all = h.request(&format!("echo:{i}"), r#""seen""#, "2s")?;
    let mut out: Vec<String> = all
        .as_array()
        .ok_or(format!("not a list: {all}"))?
        .iter()
        .filter_map(|m| {
            let data = m["data"].as_str()?;
            data.starts_with(tag)
                .then(|| format!("{data} from {}", m["from"].as_str().unwrap_or("?")))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Between every pair of `hosts`, both ways: request/reply from the CLI and from an
/// instance, a send to one instance (`echo:0@hX`) and to one host's instances (`echo@hX`);
/// from each host, a send to the app everywhere (`echo`) and a publish on `news`. Then waits
/// until every instance has seen exactly what was meant for it — no less, nothing else.
fn all_ways(hosts: &[&Host], pids: &BTreeMap<&str, Vec<u32>>, tag: &str) {
    let t = Instant::now();
    for s in hosts {
        for d in hosts.iter().filter(|d| d.name != s.name) {
            let want = pids[d.name][1];
            // CLI on s → instance 1 on d, and its reply back.
            let data = format!("\"{tag} req {}>{}\"", s.name, d.name);
            let r = wait_until(Duration::from_secs(10), || {
                s.request(&format!("echo:1@{}", d.name), &data, "2s")
            })
            .unwrap_or_else(|e| panic!("{} → echo:1@{}: {e}", s.name, d.name));
            assert_eq!(r["echo"].to_string(), data, "{r}");
            assert_eq!(r["pid"].as_u64(), Some(u64::from(want)), "{r}");
            // Instance 0 on s → instance 1 on d, and its reply back (bus-echo waits 2 s).
            let ask = format!(r#"{{"ask":"echo:1@{}"}}"#, d.name);
            let r = s.request("echo:0", &ask, "4s").unwrap();
            assert_eq!(r["answer"]["pid"].as_u64(), Some(u64::from(want)), "{r}");
            assert_eq!(r["answer"]["echo"], "from rust", "{r}");
            // One instance, and one host's instances.
            let one = format!("echo:0@{}", d.name);
            s.herd.ok(&[
                "send",
                &one,
                &format!("\"{tag} one {}>{}\"", s.name, d.name),
            ]);
            let all_of = format!("echo@{}", d.name);
            s.herd.ok(&[
                "send",
                &all_of,
                &format!("\"{tag} host {}>{}\"", s.name, d.name),
            ]);
        }
        s.herd
            .ok(&["send", "echo", &format!("\"{tag} app {}\"", s.name)]);
        s.herd
            .ok(&["publish", "news", &format!("\"{tag} news {}\"", s.name)]);
    }
    for d in hosts {
        for i in 0..2 {
            let mut want: Vec<String> = Vec::new();
            for s in hosts {
                let from = format!("from cli@{}", s.name);
                if s.name != d.name {
                    if i == 0 {
                        want.push(format!("{tag} one {}>{} {from}", s.name, d.name));
                    }
                    want.push(format!("{tag} host {}>{} {from}", s.name, d.name));
                }
                want.push(format!("{tag} app {} {from}", s.name));
                want.push(format!("{tag} news {} {from}", s.name));
            }
            want.sort();
            wait_until(Duration::from_secs(10), || {
                let got = seen(d, i, tag)?;
                (got == want).then_some(()).ok_or(format!("{got:#?}"))
            })
            .unwrap_or_else(|got| {
                panic!(
                    "echo:{i}@{} saw (of `{tag}`):\n{got}\nwanted:\n{want:#?}",
                    d.name
                )
            });
        }
    }
    eprintln!(
        "three_hosts: `{tag}`: every way between {:?} in {:?}",
        hosts.iter().map(|h| h.name).collect::<Vec<_>>(),
        t.elapsed()
    );
}

fn three_hosts(kind: &'static str) {
    let net = match Net::build(kind) {
        Ok(net) => net,
        Err(why) => {
            skip(&format!(
                "the three-host test needs network namespaces: {why}"
            ));
            return;
        }
    };
    let Some(broker) = NsBroker::start(&net, kind) else {
        return;
    };
    let echo = example_bin("bus-echo");
    let hosts: Vec<Host> = (1..)
        .zip(HOSTS)
        .map(|(k, name)| {
            let url = format!("{kind}://10.200.{k}.1:{}", broker.port);
            Host {
                name,
                ns: net.ns(name),
                herd: Herd::with_env(&[("HERD_HOST", name), ("HERD_BUS", &url)]),
            }
        })
        .collect();
    let start = Instant::now();
    for h in &hosts {
        let out = h.in_ns(&[
            "start",
            echo.to_str().unwrap(),
            "--name",
            "echo",
            "-i",
            "2",
            "--wait-ready",
        ]);
        assert!(
            out.status.success(),
            "herd start on {}: {}",
            h.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The daemon and its instances live in the host's namespace; the CLI from here reaches
    // them all the same (their sockets are paths in HERD_HOME).
    let mut pids = BTreeMap::new();
    for h in &hosts {
        let want = std::fs::metadata(format!("/run/netns/{}", h.ns))
            .unwrap()
            .ino();
        let p = h.herd.pids("echo");
        assert_eq!(p.len(), 2, "{}: {p:?}", h.name);
        for pid in p.iter().map(|&p| p as i32).chain(h.herd.daemon_pid()) {
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
            assert_eq!(
                ns.to_string_lossy(),
                format!("net:[{want}]"),
                "pid {pid} of {}",
                h.name
            );
        }
        pids.insert(h.name, p);
    }
    wait_until(Duration::from_secs(15), || {
        let off: Vec<&str> = hosts
            .iter()
            .filter(|h| !h.bridge().connected)
            .map(|h| h.name)
            .collect();
        off.is_empty().then_some(()).ok_or(off)
    })
    .unwrap_or_else(|off| panic!("not connected to {kind}: {off:?}"));
    eprintln!(
        "three_hosts: {kind}: three hosts up in {:?}",
        start.elapsed()
    );

    let [h1, h2, h3] = [&hosts[0], &hosts[1], &hosts[2]];
    all_ways(&[h1, h2, h3], &pids, "before");

    // h3's link goes down.
    let before: Vec<Bridge> = hosts.iter().map(Host::bridge).collect();
    net.set_link("h3", false);
    let cut = Instant::now();
    // h1 and h2 go on talking to each other.
    all_ways(&[h1, h2], &pids, "during");
    // h3 notices by itself, though it has had nothing to send.
    let noticed = wait_until(Duration::from_secs(10), || {
        let b = h3.bridge();
        (!b.connected).then_some(b).ok_or(b)
    })
    .unwrap_or_else(|b| panic!("h3 did not notice its link was cut: {b:?}"));
    eprintln!(
        "three_hosts: {kind}: h3 noticed the cut after {:?}: {noticed:?}",
        cut.elapsed()
    );
    assert_eq!(noticed.lost, before[2].lost, "{noticed:?}");
    // h3 goes on delivering on its own host.
    h3.herd.ok(&["publish", "news", r#""local news h3""#]);
    for i in 0..2 {
        wait_until(Duration::from_secs(5), || {
            let got = seen(h3, i, "local")?;
            (got == ["local news h3 from cli@h3"])
                .then_some(())
                .ok_or(format!("{got:?}"))
        })
        .unwrap();
    }
    // Across the cut: requests fail in their time; what h3 could not put on the broker is
    // counted (the publish, a request, a send to one instance and one to the app
    // everywhere, whose local parts it delivered).
    let e = h1
        .request("echo:0@h3", r#""across req h1>h3""#, "1s")
        .unwrap_err();
    assert!(e.contains("in time"), "{e}");
    let e = h3
        .request("echo:0@h1", r#""across req h3>h1""#, "1s")
        .unwrap_err();
    assert!(e.contains("in time"), "{e}");
    h1.herd.ok(&["send", "echo:0@h3", r#""across one h1>h3""#]);
    h3.herd.ok(&["send", "echo:0@h1", r#""across one h3>h1""#]);
    h3.herd.ok(&["send", "echo", r#""across app h3""#]);
    let during = wait_until(Duration::from_secs(5), || {
        let b = h3.bridge();
        (b.lost >= noticed.lost + 4).then_some(b).ok_or(b)
    })
    .unwrap_or_else(|b| panic!("h3 did not count what it lost: {b:?} (from {noticed:?})"));
    assert_eq!(during.lost, noticed.lost + 4, "{during:?}");
    assert!(!during.connected, "{during:?}");

    // The link comes back: h3 reconnects by itself, and every way works again.
    net.set_link("h3", true);
    let restored = Instant::now();
    let back = wait_until(Duration::from_secs(15), || {
        let b = h3.bridge();
        (b.connected).then_some(b).ok_or(b)
    })
    .unwrap_or_else(|b| panic!("h3 after its link came back: {b:?}"));
    eprintln!(
        "three_hosts: {kind}: h3 reconnected {:?} after its link came back (cut for {:?}): {back:?}",
        restored.elapsed(),
        restored - cut
    );
    assert_eq!(back.reconnects, before[2].reconnects + 1, "{back:?}");
    all_ways(&[h1, h2, h3], &pids, "after");
    // What crossed the cut never arrived, late or otherwise; h3 delivered its own part.
    for h in &hosts {
        for i in 0..2 {
            let mut got = seen(h, i, "across").unwrap();
            got.extend(seen(h, i, "local").unwrap());
            let want: Vec<&str> = match h.name {
                "h3" => vec!["across app h3 from cli@h3", "local news h3 from cli@h3"],
                _ => vec![],
            };
            assert_eq!(got, want, "echo:{i}@{}", h.name);
        }
    }
    // h1 and h2 lost nothing: their links stayed up.
    for (h, b) in hosts.iter().zip(&before).take(2) {
        let now = h.bridge();
        assert_eq!(now.lost, b.lost, "{}: {now:?}", h.name);
        assert!(now.connected && now.reconnects == b.reconnects, "{now:?}");
        assert!(now.sent > b.sent, "{now:?}");
    }

    for h in hosts {
        h.herd.finish();
    }
    drop(broker);
    net.finish();
    eprintln!("three_hosts: {kind}: {:?} in all", start.elapsed());
}

#[test]
fn three_hosts_in_namespaces_talk_every_way_through_redis_and_survive_a_cut_link() {
    three_hosts("redis");
}

#[test]
fn three_hosts_in_namespaces_talk_every_way_through_nats_and_survive_a_cut_link() {
    three_hosts("nats");
}
