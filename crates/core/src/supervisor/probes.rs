//! Health probes (docs/health.md): an app's `readiness` and `liveness` probes, run against
//! each of its processes once the process is serving (and `initial_delay_ms` after), every
//! `interval_ms`.
//!
//! - HTTP and TCP probes connect to the instance's own socket: from `127.87.H.L`, which the
//!   reuseport selector sends to the socket at group index `H·256+L` whatever the routing set
//!   (`sockets::Listener::probe_target`). They run as tasks (`Os::probe_net`) and come back as
//!   [`super::Event::Probe`].
//! - An exec probe is a child of the daemon (`sh -c`, its own process group), reaped like any
//!   child: its exit status is the result; past the timeout its group is killed.
//! - A channel probe looks at the instance's heartbeats (`{"herd":"health"}`, `WATCHDOG=1`).
//!
//! Readiness steers: a process is routed only once its probe has passed (`route`), unless no
//! serving process passes, when all are routed (`routing_fallback`). A reload waits, after the
//! promotion, for the new process's first verdict. Liveness restarts: after
//! `failure_threshold` failures in a row the slot is stopped and restarted through the restart
//! policy as a crash (`Then::Unlive`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use herd_proto::{Health, Probe, ProbeCheck, ProbeResult};
use tokio::time::Instant;

use super::{Role, SlotState, State, Then, TimerKey};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum ProbeKind {
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            ProbeKind::Readiness => "readiness",
            ProbeKind::Liveness => "liveness",
        }
    }

    fn of(self, spec: &herd_proto::AppSpec) -> Option<&Probe> {
        match self {
            ProbeKind::Readiness => spec.readiness.as_ref(),
            ProbeKind::Liveness => spec.liveness.as_ref(),
        }
    }

    const ALL: [ProbeKind; 2] = [ProbeKind::Readiness, ProbeKind::Liveness];
}

/// What a due probe does.
enum Todo {
    /// Decided at once (a channel probe, or no socket to probe).
    Result(bool, String),
    /// An exec probe past its timeout: kill its group; it failed.
    KillExec(u32, String),
    /// Start an exec probe: command, environment, directory.
    Exec(String, Vec<(String, String)>, String),
    /// Start a network probe.
    Net(NetProbe),
}

/// A network probe to run (by the OS side).
#[derive(Debug, Clone)]
pub(super) struct NetProbe {
    pub(super) pid: u32,
    pub(super) kind: ProbeKind,
    pub(super) dest: SocketAddr,
    pub(super) src: Ipv4Addr,
    /// `Some(path, ok range)` for HTTP; `None` for a TCP connect.
    pub(super) http: Option<(String, u16, u16)>,
    pub(super) timeout: Duration,
}

/// One process's health, as its probes saw it.
#[derive(Debug, Default)]
pub(super) struct ProcHealth {
    /// Probing began (it is serving).
    started: bool,
    pub(super) ready: Option<bool>,
    pub(super) live: Option<bool>,
    /// Successes and failures in a row, per probe.
    streak: [(u32, u32); 2],
    /// A probe of each kind under way (and since when).
    in_flight: [Option<Instant>; 2],
    /// The pid of an exec probe under way, per kind.
    exec: [Option<u32>; 2],
    last: Option<(ProbeKind, bool, String, Instant)>,
    /// The last heartbeat on the channel, and whether it said it failed.
    heartbeat: Option<(Instant, bool)>,
}

impl ProcHealth {
    /// What `herd list` shows.
    pub(super) fn info(&self) -> Health {
        Health {
            ready: self.ready,
            live: self.live,
            last: self.last.as_ref().map(|(k, ok, detail, at)| ProbeResult {
                probe: k.name().into(),
                ok: *ok,
                detail: detail.clone(),
                ago_ms: at.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Whether the process may be routed to, for an app with a readiness probe.
    pub(super) fn passes_readiness(&self) -> bool {
        self.ready == Some(true)
    }

    fn slot(kind: ProbeKind) -> usize {
        match kind {
            ProbeKind::Readiness => 0,
            ProbeKind::Liveness => 1,
        }
    }
}

impl State {
    /// Starts probing every serving process of every app with probes that is not probed yet.
    /// Called after every event.
    pub(super) fn start_probes(&mut self) {
        let now = Instant::now();
        for app in self.apps.values_mut() {
            if app.spec.readiness.is_none() && app.spec.liveness.is_none() {
                continue;
            }
            for s in &mut app.slots {
                let proc = match &mut s.state {
                    SlotState::Online { proc } => proc,
                    SlotState::Reloading {
                        current,
                        online: true,
                        ..
                    } => current,
                    _ => continue,
                };
                if proc.health.started {
                    continue;
                }
                proc.health.started = true;
                for kind in ProbeKind::ALL {
                    if let Some(p) = kind.of(&app.spec) {
                        let at = now + Duration::from_millis(p.initial_delay_ms);
                        self.timers.set(
                            TimerKey::Probe {
                                pid: proc.pid,
                                kind,
                            },
                            at,
                        );
                    }
                }
            }
        }
    }

    /// A probe of process `pid` is due: run it, and arm the next one.
    pub(super) fn on_probe_timer(&mut self, pid: u32, kind: ProbeKind) {
        let now = Instant::now();
        let Some(todo) = self.next_probe(pid, kind, now) else {
            return;
        };
        let k = ProcHealth::slot(kind);
        match todo {
            Todo::Result(ok, detail) => self.on_probe_result(pid, kind, ok, detail),
            Todo::KillExec(exec, detail) => {
                self.probe_execs.remove(&exec);
                self.os
                    .signal_group(exec, nix::sys::signal::Signal::SIGKILL);
                self.on_probe_result(pid, kind, false, detail);
            }
            Todo::Exec(command, env, cwd) => match self.os.spawn_probe(&command, &env, &cwd) {
                Some(exec) => {
                    self.probe_execs.insert(exec, (pid, kind));
                    if let Some(proc) = self.proc_mut(pid) {
                        if let Some(e) = proc.health.exec.get_mut(k) {
                            *e = Some(exec);
                        }
                        if let Some(f) = proc.health.in_flight.get_mut(k) {
                            *f = Some(now);
                        }
                    }
                }
                None => self.on_probe_result(
                    pid,
                    kind,
                    false,
                    "the command could not be started".into(),
                ),
            },
            Todo::Net(probe) => {
                if let Some(proc) = self.proc_mut(pid) {
                    if let Some(f) = proc.health.in_flight.get_mut(k) {
                        *f = Some(now);
                    }
                }
                self.os.probe_net(probe, self.tx.clone());
            }
        }
    }

    /// What the due probe of `pid` is to do (its next one is armed here); `None`: nothing.
    fn next_probe(&mut self, pid: u32, kind: ProbeKind, now: Instant) -> Option<Todo> {
        let &(id, i, role) = self.pids.get(&pid)?;
        if role != Role::Current {
            return None;
        }
        let app = self.apps.get_mut(&id)?;
        let probe = kind.of(&app.spec).cloned()?;
        let target = app.listeners.iter().find_map(|l| l.probe_target(i));
        let port = app.listeners.iter().find_map(|l| l.port());
        let slot = app.slots.iter_mut().find(|s| s.index == i)?;
        // Probed while it serves; stopping, draining or gone, never again.
        if !slot.state.routed() {
            return None;
        }
        let proc = slot.state.proc_mut().filter(|p| p.pid == pid)?;
        let interval = Duration::from_millis(probe.interval_ms.max(10));
        let timeout = Duration::from_millis(probe.timeout_ms.max(1));
        self.timers
            .set(TimerKey::Probe { pid, kind }, now + interval);
        let k = ProcHealth::slot(kind);
        if let Some(since) = proc.health.in_flight.get(k).copied().flatten() {
            if now.saturating_duration_since(since) < timeout {
                return None; // still running, within its time
            }
            if let Some(f) = proc.health.in_flight.get_mut(k) {
                *f = None;
            }
            // An exec probe past its timeout: its group is killed; it failed.
            if let Some(exec) = proc.health.exec.get_mut(k).and_then(Option::take) {
                return Some(Todo::KillExec(
                    exec,
                    format!("timed out after {}", human(timeout)),
                ));
            }
            // A network probe always comes back by its own timeout; a lost one is dropped.
        }
        Some(match probe.check {
            ProbeCheck::Channel => {
                let (ok, detail) = match proc.health.heartbeat {
                    Some((_, true)) => (false, "the instance said it is unhealthy".to_string()),
                    Some((at, false)) if now.saturating_duration_since(at) <= interval => (
                        true,
                        format!("heartbeat {} ago", human(now.saturating_duration_since(at))),
                    ),
                    Some((at, false)) => (
                        false,
                        format!(
                            "no heartbeat for {}",
                            human(now.saturating_duration_since(at))
                        ),
                    ),
                    None => (false, "no heartbeat yet".to_string()),
                };
                Todo::Result(ok, detail)
            }
            ProbeCheck::Exec { command } => {
                let mut env: Vec<(String, String)> = app
                    .spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                env.push(("HERD_APP".into(), app.spec.name.clone()));
                env.push(("HERD_INSTANCE".into(), i.to_string()));
                env.push(("NODE_APP_INSTANCE".into(), i.to_string()));
                env.push(("HERD_PID".into(), pid.to_string()));
                if let Some(port) = port {
                    env.push(("PORT".into(), port.to_string()));
                }
                Todo::Exec(command, env, app.spec.cwd.clone())
            }
            ProbeCheck::Http {
                path,
                status_min,
                status_max,
            } => match target {
                Some((dest, src)) => Todo::Net(NetProbe {
                    pid,
                    kind,
                    dest,
                    src,
                    http: Some((path, status_min, status_max)),
                    timeout,
                }),
                None => Todo::Result(false, no_target()),
            },
            ProbeCheck::Tcp => match target {
                Some((dest, src)) => Todo::Net(NetProbe {
                    pid,
                    kind,
                    dest,
                    src,
                    http: None,
                    timeout,
                }),
                None => Todo::Result(false, no_target()),
            },
        })
    }

    /// An exec probe's process exited; `true` if `pid` was one.
    pub(super) fn on_probe_exit(&mut self, pid: u32, status: &nix::sys::wait::WaitStatus) -> bool {
        let Some((owner, kind)) = self.probe_execs.remove(&pid) else {
            return false;
        };
        if let Some(proc) = self.proc_mut(owner) {
            if let Some(e) = proc.health.exec.get_mut(ProcHealth::slot(kind)) {
                *e = None;
            }
        }
        let exit = super::slot::exit_info(status);
        let ok = exit.code == Some(0);
        let detail = super::slot::describe_exit(&exit);
        self.on_probe_result(owner, kind, ok, detail);
        true
    }

    /// The instance's own heartbeat (`{"herd":"health"}`, `WATCHDOG=1`); `ok: false` (or
    /// `WATCHDOG=trigger`) says it is unhealthy now.
    pub(super) fn on_heartbeat(&mut self, pid: u32, ok: bool) {
        if let Some(proc) = self.proc_mut(pid) {
            proc.health.heartbeat = Some((Instant::now(), !ok));
        }
    }

    /// A probe of process `pid` came back.
    pub(super) fn on_probe_result(&mut self, pid: u32, kind: ProbeKind, ok: bool, detail: String) {
        let Some(&(id, i, role)) = self.pids.get(&pid) else {
            return;
        };
        if role != Role::Current {
            return;
        }
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(probe) = kind.of(&app.spec).cloned() else {
            return;
        };
        let name = app.spec.name.clone();
        let Some(slot) = app.slots.iter_mut().find(|s| s.index == i) else {
            return;
        };
        // A verdict counts while the process serves (a stopping one's is of no use).
        if !slot.state.routed() {
            return;
        }
        let Some(proc) = slot.state.proc_mut().filter(|p| p.pid == pid) else {
            return;
        };
        let k = ProcHealth::slot(kind);
        let h = &mut proc.health;
        if let Some(f) = h.in_flight.get_mut(k) {
            *f = None;
        }
        h.last = Some((kind, ok, detail.clone(), Instant::now()));
        let Some(streak) = h.streak.get_mut(k) else {
            return;
        };
        if ok {
            streak.0 = streak.0.saturating_add(1);
            streak.1 = 0;
        } else {
            streak.1 = streak.1.saturating_add(1);
            streak.0 = 0;
        }
        let (oks, fails) = *streak;
        let verdict = match kind {
            ProbeKind::Readiness => &mut h.ready,
            ProbeKind::Liveness => &mut h.live,
        };
        let before = *verdict;
        // Liveness passes at its first success (as Kubernetes requires); readiness after
        // `success_threshold` of them.
        let needed = match kind {
            ProbeKind::Readiness => probe.success_threshold.max(1),
            ProbeKind::Liveness => 1,
        };
        if ok && oks >= needed {
            *verdict = Some(true);
        } else if !ok && fails >= probe.failure_threshold.max(1) {
            *verdict = Some(false);
        }
        let after = *verdict;
        if after == before {
            return;
        }
        let err = slot.err.clone();
        let what = match (kind, after) {
            (ProbeKind::Readiness, Some(true)) => "ready",
            (ProbeKind::Readiness, _) => "not ready",
            (ProbeKind::Liveness, Some(true)) => "live",
            (ProbeKind::Liveness, _) => "not live",
        };
        if after == Some(true) {
            tracing::info!(app = %name, instance = i, pid, "{what}: {} probe passed ({detail})", kind.name());
        } else {
            tracing::warn!(app = %name, instance = i, pid, "{what}: {} probe failed {fails} times in a row ({detail})", kind.name());
        }
        if before.is_some() || after == Some(false) {
            super::write_note(
                &err,
                &format!(
                    "[herd] instance {i} is {what}: {} probe {} ({detail})",
                    kind.name(),
                    if ok { "passed" } else { "failed" }
                ),
            );
        }
        let event = match (kind, after) {
            (ProbeKind::Readiness, Some(true)) => "ready",
            (ProbeKind::Readiness, _) => "unready",
            (ProbeKind::Liveness, Some(true)) => "live",
            (ProbeKind::Liveness, _) => "unlive",
        };
        self.lifecycle_event(
            id,
            i,
            Some(pid),
            event,
            serde_json::json!({"probe": kind.name(), "detail": detail}),
        );
        match (kind, after) {
            (ProbeKind::Readiness, verdict) => {
                // A reload waits on the slot for the promoted process's first verdict.
                let Some(app) = self.apps.get_mut(&id) else {
                    return;
                };
                if app.reload.as_ref().is_some_and(|r| r.active == Some(i)) {
                    if verdict == Some(true) {
                        if let Some(r) = app.reload.as_mut() {
                            r.active = None;
                        }
                        self.reload_step(id);
                    } else {
                        self.reload_failed(
                            id,
                            i,
                            format!("the new process of instance {i} failed its readiness probe ({detail})"),
                        );
                    }
                }
            }
            (ProbeKind::Liveness, Some(false)) => {
                self.stop_slot(id, i, Then::Unlive);
            }
            (ProbeKind::Liveness, _) => {}
        }
    }
}

fn no_target() -> String {
    "no socket of this instance to probe (HTTP and TCP probes need a TCP address with a per-instance balance, IPv4 or dual-stack)".into()
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Runs a network probe: a TCP connection from `src` to `dest` (and for HTTP, `GET path`
/// and its status line), within `timeout`. `(passed, what was seen)`.
pub(super) async fn run_net_probe(p: &NetProbe) -> (bool, String) {
    match tokio::time::timeout(p.timeout, net_probe(p)).await {
        Ok(r) => r,
        Err(_) => (false, format!("timed out after {}", human(p.timeout))),
    }
}

async fn net_probe(p: &NetProbe) -> (bool, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sock = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return (false, format!("socket: {e}")),
    };
    if let Err(e) = sock.bind(SocketAddr::from((p.src, 0))) {
        return (false, format!("bind {}: {e}", p.src));
    }
    let mut stream = match sock.connect(p.dest).await {
        Ok(s) => s,
        Err(e) => return (false, format!("connect: {e}")),
    };
    let Some((path, lo, hi)) = &p.http else {
        // Closed with a reset: no TIME_WAIT left behind, one every interval.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        return (true, "connected".into());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: herd-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        p.dest
    );
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        return (false, format!("sending the request: {e}"));
    }
    // The status line is all that is read.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if buf.contains(&b'\n') || buf.len() > 4096 {
                    break;
                }
            }
            Err(e) => return (false, format!("reading the answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let status = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok());
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    match status {
        Some(code) => ((*lo..=*hi).contains(&code), format!("HTTP {code}")),
        None if buf.is_empty() => (false, "the connection closed without an answer".into()),
        None => (
            false,
            format!(
                "not an HTTP answer: {:?}",
                line.chars().take(60).collect::<String>()
            ),
        ),
    }
}
