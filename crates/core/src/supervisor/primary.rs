//! An app's own cluster primary (`--primary`): the script runs once more, as Node's primary,
//! and its `cluster` API is backed by herd (`node/preload/primary.cjs` in that process).
//!
//! The primary is the app's slot [`PRIMARY`] (`App::primary`): started, stopped and restarted
//! by the same state machine as any slot, never routed to. It talks to the daemon over two
//! sockets: `HERD_PRIMARY_FD`, one JSON object per line each way (the primary's requests that
//! need no answer, and every event about its workers), and `HERD_PRIMARY_CALL_FD`, on which
//! `cluster.fork()` waits for its answer (Node's `fork()` returns a worker with its pid at
//! once).
//!
//! **Who restarts a worker: herd.** A worker that dies is restarted by the app's restart
//! policy, as any instance. The primary hears `exit` as under Node; a `fork()` it makes then
//! takes the replacement instead of adding a worker, so a primary that re-forks in its
//! `exit` handler gets exactly one. The rule behind it: every worker herd starts on its own
//! (a replacement, a reload's new process, a scale-up, the workers a restarted primary finds)
//! waits in a pool; a `fork()` takes the oldest one started with the same environment and
//! `exec` first, then a slot waiting to restart, and only then adds a slot. A worker nobody
//! claims within [`CLAIM_WINDOW`] is announced to the primary as if it had forked it.
//! `worker.kill()` and `worker.disconnect()` stop a worker for good (its slot goes).
//!
//! **When the primary dies**, herd restarts it by the policy and its workers keep serving;
//! the new primary's forks take them over (re-attached, with their pids), and any it does not
//! claim are announced to it.

use std::collections::BTreeMap;
use std::time::Duration;

use herd_proto::{AppSpec, AppStatus, ExitInfo};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{App, Proc, Role, SlotState, State, Then, TimerKey};
use crate::ipc::{Channel, Inbound};

/// The slot number of an app's primary.
pub(super) const PRIMARY: u32 = AppSpec::PRIMARY;

/// How long a worker herd started on its own waits to be claimed by a `fork()` before it is
/// announced to the primary. Counted from the last time something could make the primary
/// fork: the worker's start, an `exit` the primary was told of, the primary's own start.
pub(super) const CLAIM_WINDOW: Duration = Duration::from_secs(5);

/// Messages (and fences) of a worker the primary does not know yet, held for it (beyond:
/// dropped).
const HELD_MAX: usize = 64;

/// How the app's primary sees one worker process.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Node's `worker.id` (the process's `NODE_UNIQUE_ID`).
    pub(super) id: u32,
    /// It was given the direct link (its preload connects to it): the primary keeps its
    /// messages for it until the link is up rather than send them through herd.
    pub(super) link: bool,
    /// The primary knows it (forked it, claimed it, or was told of it).
    pub(super) known: bool,
    /// Started by herd on its own: waiting to be claimed since then.
    pub(super) pooled: Option<Instant>,
    /// Node's `online` came.
    pub(super) online: bool,
    /// Where it listens (Node's `listening` address), once it does.
    pub(super) listening: Option<Value>,
    /// Its channel closed.
    pub(super) disconnected: bool,
    /// It was asked to go (`worker.kill()`, `disconnect()`, a stop, a reload, a scale-down):
    /// Node's `exitedAfterDisconnect`.
    pub(super) after_disconnect: bool,
    /// The events for the primary (its messages and fences) from before the primary knew
    /// it, in order.
    pub(super) held: Vec<Value>,
}

/// What a worker of the primary runs: `cluster.fork(env)` and `cluster.setupPrimary()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub(super) struct ForkSpec {
    /// Variables added to the worker's environment.
    pub(super) env: BTreeMap<String, String>,
    /// Another script than the app's (`settings.exec`).
    pub(super) exec: Option<String>,
    /// Its arguments (`settings.args`).
    pub(super) args: Option<Vec<String>>,
    /// Node's options for it (`settings.execArgv`).
    #[serde(rename = "execArgv")]
    pub(super) exec_argv: Option<Vec<String>>,
}

/// The app's side of its primary.
#[derive(Default)]
pub(super) struct Link {
    /// The running primary's call channel (`fork()`), with its pid.
    pub(super) call: Option<(u32, Channel)>,
    /// The socket the primary accepts its workers' direct links on, once made.
    pub(super) socket: Option<LinkSocket>,
    /// It could not be made (the daemon's log says why): messages go through herd.
    pub(super) no_socket: bool,
    /// Events for the primary its channel's bound dropped (it did not read them in time).
    pub(super) dropped: u64,
    /// Node worker ids handed out so far (ids are never reused, as under Node).
    pub(super) last_id: u32,
    /// A slot waiting to restart (or errored) that a `fork()` claimed: its next process is
    /// the primary's worker with this id.
    pub(super) pending: BTreeMap<u32, u32>,
}

/// The direct link between a primary and its workers: a Unix socket in herd's Node directory
/// (`<HERD_HOME>/node/link-<app id>.sock`, a 0700 directory of the daemon's user), bound by
/// the daemon and handed to each primary it starts (`HERD_PRIMARY_LINK_FD`); its workers
/// connect to the path (`HERD_PRIMARY_LINK`). Made by the daemon, not the primary, so that it
/// outlives a primary: a worker whose link closed reconnects at once, and waits in the
/// backlog until the next primary accepts. The file goes with the app.
///
/// A message then goes straight from one process to the other, as on Node's own channel,
/// instead of through the daemon; what needs herd (forks, signals, events about workers)
/// still goes through it, and [`node::PreloadMsg::Fence`](crate::node::PreloadMsg::Fence)
/// keeps the two ways in order.
pub(super) struct LinkSocket {
    path: std::path::PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl LinkSocket {
    /// Binds the link of app `id` in `dir`, replacing what a daemon before this one left.
    fn bind(dir: &std::path::Path, id: u32) -> std::io::Result<Self> {
        let path = dir.join(format!("link-{id}.sock"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        Ok(Self { path, listener })
    }

    /// Gives the socket file to the app's user (`--uid`), mode 0600: its workers connect to
    /// it, and no other user can (it lies in a directory every user can enter).
    fn give_to(&self, (uid, gid): (u32, u32)) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::lchown(&self.path, Some(uid), Some(gid))?;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
    }

    /// The path workers connect to.
    pub(super) fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The listening socket, for the primary to accept on.
    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.listener.as_fd()
    }
}

impl Drop for LinkSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Link {
    pub(super) fn next_id(&mut self) -> u32 {
        self.last_id = self.last_id.saturating_add(1);
        self.last_id
    }
}

/// A request of the primary.
#[derive(Debug, Deserialize)]
#[serde(tag = "herd", rename_all = "snake_case")]
enum FromPrimary {
    /// `cluster.fork()` (on the call socket).
    Fork {
        #[serde(default)]
        spec: ForkSpec,
    },
    /// `worker.send(msg)`, before the worker's direct link is up.
    Send { id: u32, msg: Value },
    /// A fence for worker `id`: what the primary sent it through herd comes before the
    /// messages on the link that name this fence.
    Fence { id: u32, n: u64 },
    /// `worker.disconnect()` / `worker.kill()`: stop it gracefully, for good.
    Disconnect { id: u32 },
    /// `worker.process.kill(signal)`: a signal, nothing more (herd restarts what dies).
    Signal { id: u32, signal: String },
}

impl State {
    /// The direct link of app `id` (a primary app), made the first time a process of the
    /// app starts, in the directory of `shims` (the one its user can read) and given to
    /// `owner` (an app of another user); `None` when herd has no Node directory or cannot
    /// bind in it (then the messages go through the daemon, as they always can).
    pub(super) fn link_socket(
        &mut self,
        id: u32,
        shims: Option<&crate::node_shims::Installed>,
        owner: Option<(u32, u32)>,
    ) -> Option<&LinkSocket> {
        let dir = shims.map(|s| s.dir().to_path_buf());
        let app = self.apps.get_mut(&id).filter(|a| a.spec.primary)?;
        // Another user than the link was made for (herd apply changed it): made again.
        if app
            .link
            .socket
            .as_ref()
            .is_some_and(|s| Some(s.path.parent()) != dir.as_deref().map(Some))
        {
            app.link.socket = None;
        }
        if app.link.socket.is_none() && !app.link.no_socket {
            match dir.map(|d| LinkSocket::bind(&d, id)) {
                Some(Ok(s)) => app.link.socket = Some(s),
                Some(Err(e)) => {
                    app.link.no_socket = true;
                    tracing::warn!(
                        app = %app.spec.name,
                        "cannot make the direct link between the primary and its workers ({e}); their messages go through the daemon (a shorter HERD_HOME path helps if it is too long for a Unix socket)"
                    );
                }
                None => app.link.no_socket = true,
            }
        }
        if let (Some(s), Some(owner)) = (&app.link.socket, owner) {
            if let Err(e) = s.give_to(owner) {
                tracing::warn!(app = %app.spec.name, "cannot give the primary's link socket {} to the app's user ({e}); its workers' messages go through the daemon", s.path.display());
            }
        }
        app.link.socket.as_ref()
    }

    /// Whether `pid` is an app's primary.
    pub(super) fn is_primary(&self, pid: u32) -> bool {
        matches!(self.pids.get(&pid), Some(&(_, PRIMARY, _)))
    }

    /// The primary of app `id` starts: the call channel is kept, and every worker running
    /// now waits to be claimed by its forks.
    pub(super) fn primary_started(&mut self, id: u32, pid: u32, call: Option<Channel>) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        app.link.call = call.map(|c| (pid, c));
        app.link.pending.clear();
        let now = Instant::now();
        for p in procs_mut(app) {
            p.seen.known = false;
            p.seen.pooled = Some(now);
        }
        self.arm_claims(id);
    }

    /// The primary of app `id` exited: its workers go on, unclaimed, until the next one.
    pub(super) fn primary_gone(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        app.link.call = None;
        app.link.pending.clear();
        for p in procs_mut(app) {
            p.seen.known = false;
            p.seen.pooled.get_or_insert_with(Instant::now);
        }
        self.timers.cancel(TimerKey::Claims { app: id });
    }

    /// A worker process of a primary app was started: it is the worker a `fork()` waits for,
    /// or it waits in the pool.
    pub(super) fn worker_started(&mut self, id: u32, i: u32, pid: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let claimed = app.link.pending.remove(&i);
        let Some(p) = find(app, pid) else {
            return;
        };
        match claimed {
            Some(wid) => {
                p.seen.id = wid;
                p.seen.known = true;
                p.seen.pooled = None;
                let ev = json!({"herd": "worker", "event": "spawn", "id": wid, "pid": pid, "link": p.seen.link});
                self.tell_primary(id, ev);
            }
            None => {
                p.seen.pooled = Some(Instant::now());
                self.arm_claims(id);
            }
        }
    }

    /// The Node worker id for the next process of slot `i` of a primary app.
    pub(super) fn worker_id_for(&mut self, id: u32, i: u32) -> u32 {
        let Some(app) = self.apps.get_mut(&id) else {
            return 0;
        };
        match app.link.pending.get(&i) {
            Some(&wid) => wid,
            None => app.link.next_id(),
        }
    }

    /// Process `pid` of app `id`, if the app has a primary and the process is one of its workers.
    fn worker_mut(&mut self, id: u32, pid: u32) -> Option<&mut Proc> {
        let app = self.apps.get_mut(&id).filter(|a| a.spec.primary)?;
        find(app, pid)
    }

    /// Sends an event to the app's primary, if one runs.
    fn tell_primary(&mut self, id: u32, ev: Value) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let sent = app
            .primary
            .as_ref()
            .and_then(|s| s.state.proc())
            .and_then(|p| p.channel.as_ref())
            .map(|ch| ch.send(&ev, None));
        if sent == Some(false) {
            // The primary does not read as fast as its workers write (through the daemon: they
            // have no direct link): the channel's bound drops the rest. Said, never silently;
            // once, then at every power of two.
            app.link.dropped = app.link.dropped.saturating_add(1);
            if app.link.dropped.is_power_of_two() {
                tracing::warn!(
                    app = %app.spec.name,
                    dropped = app.link.dropped,
                    "the primary does not read its events as fast as they come; events and messages for it were dropped (workers without the direct link, see docs/node-primary.md)"
                );
            }
        }
    }

    /// Something happened to worker `pid` of app `id` (Node's `online`, `listening`,
    /// `disconnect`, a message): the primary hears of it if it knows the worker.
    pub(super) fn worker_event(&mut self, pid: u32, what: WorkerEvent) {
        let Some(&(id, _, _)) = self.pids.get(&pid) else {
            return;
        };
        let Some(p) = self.worker_mut(id, pid) else {
            return;
        };
        let wid = p.seen.id;
        // What the worker sent (held for a primary that does not know it yet), not its state.
        let sent = matches!(
            what,
            WorkerEvent::Message(_) | WorkerEvent::Fence(_) | WorkerEvent::Barrier(_)
        );
        let ev = match what {
            WorkerEvent::Online => {
                p.seen.online = true;
                json!({"herd": "worker", "event": "online", "id": wid})
            }
            WorkerEvent::Listening(address) => {
                p.seen.listening = Some(address.clone());
                json!({"herd": "worker", "event": "listening", "id": wid, "address": address})
            }
            WorkerEvent::Disconnect => {
                p.seen.disconnected = true;
                json!({"herd": "worker", "event": "disconnect", "id": wid})
            }
            WorkerEvent::AfterDisconnect => {
                p.seen.after_disconnect = true;
                return;
            }
            WorkerEvent::Message(msg) => {
                json!({"herd": "worker", "event": "message", "id": wid, "msg": msg})
            }
            WorkerEvent::Fence(n) => json!({"herd": "worker", "event": "fence", "id": wid, "n": n}),
            WorkerEvent::Barrier(n) => {
                json!({"herd": "worker", "event": "barrier", "id": wid, "n": n})
            }
        };
        if !p.seen.known && sent {
            if p.seen.held.len() < HELD_MAX {
                p.seen.held.push(ev);
            } else {
                tracing::debug!(pid, "a message of an unclaimed worker was dropped");
            }
            return;
        }
        if p.seen.known {
            self.tell_primary(id, ev);
        }
    }

    /// Worker `pid` (slot `i`) exited: the primary hears `exit`, with whether herd starts a
    /// replacement (it may claim it by forking).
    pub(super) fn worker_exited(&mut self, id: u32, pid: u32, exit: &ExitInfo) {
        let Some(p) = self.worker_mut(id, pid) else {
            return;
        };
        if !p.seen.known {
            return;
        }
        let (wid, after, disconnected) = (p.seen.id, p.seen.after_disconnect, p.seen.disconnected);
        // A fork in the primary's exit handler may claim a replacement: the window starts now.
        let now = Instant::now();
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        for p in procs_mut(app) {
            if p.seen.pooled.is_some() {
                p.seen.pooled = Some(now);
            }
        }
        let ev = json!({
            "herd": "worker",
            "event": "exit",
            "id": wid,
            "code": exit.code,
            "signal": exit.signal,
            "exitedAfterDisconnect": after,
            "disconnected": disconnected,
        });
        self.tell_primary(id, ev);
        self.arm_claims(id);
    }

    /// A line on a primary's call socket: a `fork()`, answered at once.
    pub(super) fn on_primary_call(&mut self, pid: u32, msg: Inbound) {
        let Some(&(id, _, _)) = self.pids.get(&pid) else {
            return;
        };
        let answer = match msg {
            Inbound::App(v) => match serde_json::from_value::<FromPrimary>(v) {
                Ok(FromPrimary::Fork { spec }) => self.fork(id, spec),
                Ok(_) => Err("only fork is asked on the call socket".to_string()),
                Err(e) => Err(format!("not a request herd knows: {e}")),
            },
            Inbound::Closed => return,
            _ => Err("not a request herd knows".to_string()),
        };
        let reply = match answer {
            Ok(v) => v,
            Err(e) => json!({"herd": "error", "error": e}),
        };
        if let Some(app) = self.apps.get(&id) {
            if let Some((_, ch)) = &app.link.call {
                ch.send_reply(&reply, None);
            }
        }
    }

    /// A message of the primary on its event socket.
    pub(super) fn on_primary_message(&mut self, pid: u32, v: Value) {
        let Some(&(id, _, _)) = self.pids.get(&pid) else {
            return;
        };
        let req = match serde_json::from_value::<FromPrimary>(v) {
            Ok(r) => r,
            Err(e) => {
                return self.instance_warn(
                    pid,
                    format_args!("the primary sent a message herd does not know: {e}"),
                );
            }
        };
        match req {
            FromPrimary::Send { id: wid, msg } => {
                let Some(app) = self.apps.get(&id) else {
                    return;
                };
                let sent = procs(app)
                    .find(|p| p.seen.id == wid)
                    .and_then(|p| p.channel.as_ref())
                    .is_some_and(|ch| ch.send(&msg, None));
                if !sent {
                    self.tell_primary(
                        id,
                        json!({"herd": "error", "id": wid, "error": format!("worker {wid} is not connected or does not read its messages; the message was dropped")}),
                    );
                }
            }
            FromPrimary::Fence { id: wid, n } => {
                // Only a worker with herd's preload opened a link; an old preload ignores it.
                let Some(app) = self.apps.get(&id) else {
                    return;
                };
                let fence = crate::node::PreloadMsg::Fence {
                    n,
                    primary: Some(pid),
                }
                .to_value();
                if let Some(ch) = procs(app)
                    .find(|p| p.seen.id == wid)
                    .and_then(|p| p.channel.as_ref())
                {
                    ch.send(&fence, None);
                }
            }
            FromPrimary::Disconnect { id: wid } => self.retire_worker(id, wid),
            FromPrimary::Signal { id: wid, signal } => {
                let Some(app) = self.apps.get(&id) else {
                    return;
                };
                let Some(sig) = super::parse_signal(&signal) else {
                    return self.tell_primary(
                        id,
                        json!({"herd": "error", "id": wid, "error": format!("unknown signal {signal:?}")}),
                    );
                };
                if let Some(p) = procs(app).find(|p| p.seen.id == wid) {
                    let pid = p.pid;
                    self.os.signal_group(pid, sig);
                }
            }
            FromPrimary::Fork { .. } => self.tell_primary(
                id,
                json!({"herd": "error", "error": "fork is asked on the call socket"}),
            ),
        }
    }

    /// `cluster.fork()`: claims a worker herd started, or a slot waiting to restart, or
    /// starts a new one.
    pub(super) fn fork(&mut self, id: u32, spec: ForkSpec) -> Result<Value, String> {
        let Some(app) = self.apps.get_mut(&id) else {
            return Err("the app is gone".into());
        };
        if app.status != AppStatus::Running {
            return Err(format!(
                "app {} is stopping; fork() is refused",
                app.spec.name
            ));
        }
        // 1. A worker herd started on its own: the oldest forked with the same environment and
        //    script, else the oldest (a primary that re-forks with `cluster.fork()` what it
        //    forked with `cluster.fork(env)` still gets one replacement, not two).
        let oldest = app
            .slots
            .iter_mut()
            .filter_map(|s| {
                let (i, same) = (s.index, s.fork == spec);
                s.state.proc_mut().map(|p| (i, same, p))
            })
            .filter(|(_, _, p)| !p.seen.known && !p.seen.after_disconnect)
            .filter_map(|(i, same, p)| p.seen.pooled.map(|t| ((!same, t), i, p)))
            .min_by_key(|(key, _, _)| *key);
        if let Some((_, i, p)) = oldest {
            p.seen.known = true;
            p.seen.pooled = None;
            let held = std::mem::take(&mut p.seen.held);
            let answer = forked(i, p);
            for ev in held {
                self.tell_primary(id, ev);
            }
            return Ok(answer);
        }
        // 2. A slot of the same spec waiting to restart, which starts now (the primary asked,
        //    as Node's fork() starts at once; its quick exits still count towards `errored`),
        //    or one given up on, which starts after the longest back-off.
        let waiting = app
            .slots
            .iter()
            .filter(|s| {
                !app.link.pending.contains_key(&s.index)
                    && matches!(
                        s.state,
                        SlotState::WaitingRestart { .. } | SlotState::Errored | SlotState::Exited
                    )
            })
            .min_by_key(|s| (s.fork != spec, s.index));
        if let Some(slot) = waiting {
            let i = slot.index;
            let errored = !matches!(slot.state, SlotState::WaitingRestart { .. });
            let wid = app.link.next_id();
            app.link.pending.insert(i, wid);
            if errored {
                // Given up on: it starts again, after the longest back-off the policy uses; its
                // pid comes with the `spawn` event.
                let delay = crate::policy::backoff(&app.spec, u32::MAX);
                if let Some(slot) = slot_mut!(app, i) {
                    slot.set(SlotState::WaitingRestart {
                        until: Instant::now() + delay,
                    });
                }
                return Ok(json!({"herd": "forked", "id": wid, "pid": null, "slot": i}));
            }
            if let Some(slot) = slot_mut!(app, i) {
                slot.set(SlotState::Stopped);
            }
            self.launch(id, i);
            let (pid, link) = self
                .apps
                .get(&id)
                .and_then(|a| a.slot(i))
                .and_then(|s| s.state.proc())
                .filter(|p| p.seen.id == wid)
                .map_or((None, false), |p| (Some(p.pid), p.seen.link));
            return Ok(json!({"herd": "forked", "id": wid, "pid": pid, "slot": i, "link": link}));
        }
        // 3. A new worker, in a slot left by one that went, or a new slot.
        let hole = app
            .slots
            .iter()
            .find(|s| matches!(s.state, SlotState::Gone))
            .map(|s| s.index);
        let i = match hole {
            Some(i) => i,
            None => {
                let i = app.slots.len() as u32;
                if i >= AppSpec::MAX_INSTANCES {
                    return Err(format!(
                        "app {} has {i} workers, the most herd runs per app",
                        app.spec.name
                    ));
                }
                let spec_now = app.spec.clone();
                let slot = self.new_slot(&spec_now, i)?;
                let Some(app) = self.apps.get_mut(&id) else {
                    return Err("the app is gone".into());
                };
                for l in &mut app.listeners {
                    l.add_slot(i).map_err(|e| e.to_string())?;
                }
                app.slots.push(slot);
                app.routed = None;
                i
            }
        };
        let Some(app) = self.apps.get_mut(&id) else {
            return Err("the app is gone".into());
        };
        let wid = app.link.next_id();
        app.link.pending.insert(i, wid);
        if let Some(slot) = slot_mut!(app, i) {
            slot.fork = spec;
            slot.history = crate::policy::History::default();
            slot.set(SlotState::Stopped);
        }
        app.spec.instances = live_slots(app);
        self.launch(id, i);
        let Some(app) = self.apps.get_mut(&id) else {
            return Err("the app is gone".into());
        };
        // Started (the usual case), or waiting to retry a start that failed.
        let (pid, link) = app
            .slot(i)
            .and_then(|s| s.state.proc())
            .filter(|p| p.seen.id == wid)
            .map_or((None, false), |p| (Some(p.pid), p.seen.link));
        Ok(json!({"herd": "forked", "id": wid, "pid": pid, "slot": i, "link": link}))
    }

    /// `worker.disconnect()` or `worker.kill()`: the worker stops gracefully and its slot
    /// goes (the primary decided it; herd does not restart it).
    fn retire_worker(&mut self, id: u32, wid: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(i) = app
            .slots
            .iter()
            .find(|s| s.state.proc().is_some_and(|p| p.seen.id == wid))
            .map(|s| s.index)
        else {
            // Not a slot's current process (a reload's retiring one, or gone already).
            return;
        };
        if let Some(p) = slot_mut!(app, i).and_then(|s| s.state.proc_mut()) {
            p.seen.after_disconnect = true;
        }
        self.drain_slot(id, i);
        // The reload goes on without it (or ends, if it was the last slot to do).
        self.reload_step(id);
        if let Some(app) = self.apps.get_mut(&id) {
            app.spec.instances = live_slots(app);
        }
    }

    /// Announces the workers nobody claimed within [`CLAIM_WINDOW`] to the primary.
    pub(super) fn on_claims_timer(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        if app.link.call.is_none() {
            return;
        }
        let now = Instant::now();
        let mut out = Vec::new();
        for slot in &mut app.slots {
            let i = slot.index;
            if let Some(p) = slot.state.proc_mut() {
                if p.seen.pooled.is_some_and(|t| t + CLAIM_WINDOW <= now) && !p.seen.known {
                    p.seen.known = true;
                    p.seen.pooled = None;
                    let mut ev = forked(i, p);
                    if let Some(o) = ev.as_object_mut() {
                        o.insert("herd".into(), "worker".into());
                        o.insert("event".into(), "announce".into());
                    }
                    out.push(ev);
                    out.append(&mut p.seen.held);
                }
            }
        }
        for ev in out {
            self.tell_primary(id, ev);
        }
        self.arm_claims(id);
    }

    /// Arms the claims timer for the earliest unclaimed worker of app `id`.
    pub(super) fn arm_claims(&mut self, id: u32) {
        let Some(app) = self.apps.get(&id) else {
            return;
        };
        let key = TimerKey::Claims { app: id };
        let next = app
            .slots
            .iter()
            .filter_map(|s| s.state.proc())
            .filter(|p| !p.seen.known)
            .filter_map(|p| p.seen.pooled)
            .min();
        match next {
            Some(t) if app.link.call.is_some() => self.timers.set(key, t + CLAIM_WINDOW),
            _ => {
                self.timers.cancel(key);
            }
        }
    }

    /// Stops a slot for good (a scale-down, the primary's `worker.disconnect()`): steered out,
    /// its queue drained, then stopped and removed. Out of any reload; the caller moves the
    /// reload on.
    pub(super) fn drain_slot(&mut self, id: u32, i: u32) {
        self.leave_reload(id, i);
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let timeout = Duration::from_millis(app.spec.kill_timeout_ms);
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        let now = Instant::now();
        let drain = |proc| SlotState::Draining {
            proc,
            since: now,
            look: now + super::DRAIN_POLL,
        };
        match slot.state.take() {
            SlotState::Reloading {
                current, mut next, ..
            } => {
                super::begin_stop(&mut *self.os, &app.spec, &mut next);
                self.pids.insert(next.pid, (id, i, Role::Retiring));
                super::arm_retire(&mut self.timers, next.pid, timeout);
                app.retiring.push((i, next));
                slot.set(drain(current));
            }
            SlotState::Online { proc } | SlotState::Starting { proc, .. } => slot.set(drain(proc)),
            SlotState::Stopping { proc, deadline, .. } => slot.set(SlotState::Stopping {
                proc,
                then: Then::Remove,
                deadline,
            }),
            d @ SlotState::Draining { .. } => slot.set(d),
            _ => slot.set(SlotState::Gone),
        }
    }
}

/// What happened to a worker, for its primary.
pub(super) enum WorkerEvent {
    Online,
    Listening(Value),
    Disconnect,
    /// The worker said it disconnects on purpose (`cluster.worker.disconnect()` in it).
    AfterDisconnect,
    Message(Value),
    /// A fence (see [`LinkSocket`]).
    Fence(u64),
    /// A barrier (see [`crate::node::PreloadMsg::Barrier`]).
    Barrier(u64),
}

/// The answer to a `fork()` that claimed a running worker.
fn forked(i: u32, p: &Proc) -> Value {
    json!({
        "herd": "forked",
        "id": p.seen.id,
        "pid": p.pid,
        "slot": i,
        "online": p.seen.online,
        "listening": p.seen.listening,
        "disconnected": p.seen.disconnected,
        "link": p.seen.link,
    })
}

/// Slots that are not gone or going.
fn live_slots(app: &App) -> u32 {
    app.slots
        .iter()
        .filter(|s| {
            !matches!(
                s.state,
                SlotState::Gone
                    | SlotState::Draining { .. }
                    | SlotState::Stopping {
                        then: Then::Remove,
                        ..
                    }
            )
        })
        .count() as u32
}

/// Every worker process of the app: current, next and retiring.
fn procs(app: &App) -> impl Iterator<Item = &Proc> {
    app.slots
        .iter()
        .flat_map(|s| [s.state.proc(), s.state.next()])
        .flatten()
        .chain(app.retiring.iter().map(|(_, p)| p))
}

/// [`procs`], mutable.
fn procs_mut(app: &mut App) -> impl Iterator<Item = &mut Proc> {
    app.slots
        .iter_mut()
        .flat_map(|s| match &mut s.state {
            SlotState::Reloading { current, next, .. } => [Some(current), Some(next)],
            other => [other.proc_mut(), None],
        })
        .flatten()
        .chain(app.retiring.iter_mut().map(|(_, p)| p))
}

/// The worker process `pid` of the app.
fn find(app: &mut App, pid: u32) -> Option<&mut Proc> {
    procs_mut(app).find(|p| p.pid == pid)
}

/// "instance 3", or "the primary", for messages.
pub(super) fn who(i: u32) -> String {
    if i == PRIMARY {
        "the primary".into()
    } else {
        format!("instance {i}")
    }
}

/// How long a primary's `fork()` waits for the daemon's answer before it throws.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
