//! An instance slot and its states. A slot is one place of an app (`app:i`): it has at most
//! one serving process, and during a reload a next one beside it. Its state says everything
//! about it — which process is where, and until when it waits — so no side field can
//! disagree with it: the deadline a state waits for travels inside it, and the supervisor's
//! timer for the slot is derived from it after every event ([`SlotState::deadline`]).
//!
//! ```text
//!            spawn                 ready                  reload: next spawned
//! Stopped ─────────▶ Starting ───────────▶ Online ─────────────────────────▶ Reloading
//!    ▲                  │ deadline: online anyway ▲   next ready: current retires │
//!    │                  └──────────────────────────┘◀──────────────────────────────┘
//!    │   exit (policy)                            next fails: current stays
//!    ├──────────── WaitingRestart ◀─── exit ── Starting / Online
//!    │    until     Exited / Errored ◀─ exit (policy says no restart)
//!    │ exit (then = stay)
//! Stopping ◀── stop ── Starting / Online / Reloading / Draining
//!    │ deadline: SIGKILL to the group and cgroup
//! Draining ── queue empty or DRAIN_MAX ──▶ Stopping(remove) ── exit ──▶ Gone
//! ```
//!
//! The transitions themselves live with the supervisor (they spawn, signal and route);
//! `docs/slots.md` draws the whole machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::{AppSpec, ExitInfo, ProcessStatus};
use nix::sys::wait::WaitStatus;
use tokio::time::Instant;

use nix::unistd::Pid;

use super::cluster::NodeStop;
use super::primary::PRIMARY;
use super::{
    write_note, App, Lifecycle, ReadyKind, State, TimerKey, DRAIN_MAX, DRAIN_POLL, KILL_REPEAT,
};
use crate::cgroup;
use crate::policy::{self, Decision};

use crate::ipc::Channel;
use crate::logs::{self, SharedLog};
use crate::policy::History;
use crate::stats::Sample;

/// What a slot does once its process has exited after a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// Stay stopped.
    Stay,
    /// Start a new process.
    Restart,
    /// Go away (scale-down).
    Remove,
    /// Start again through the restart policy, as after a crash: its liveness probe failed.
    Unlive,
}

/// Which process of a slot a pid is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// The slot's process.
    Current,
    /// A reload's new process, not yet ready.
    Next,
    /// A reloaded-away process finishing its requests.
    Retiring,
}

/// A running process of a slot, with what it holds.
pub(super) struct Proc {
    pub(super) pid: u32,
    pub(super) since: Instant,
    pub(super) sample: Option<Sample>,
    /// The instance's channel (Node's IPC channel for Node apps).
    pub(super) channel: Option<Channel>,
    /// Sockets for the app's own port handed to this Node worker so far.
    pub(super) listens: u32,
    /// Sequence number of the next cluster message herd sends it.
    pub(super) seq: u64,
    /// A Node worker running herd's preload (it said `hello`): it is stopped by a drain.
    pub(super) preload: bool,
    /// Where a Node worker is in its graceful stop.
    pub(super) node_stop: NodeStop,
    /// The app's environment version it was started with.
    pub(super) env_version: u32,
    /// It is the app's primary (`--primary`), not a worker.
    pub(super) primary: bool,
    /// It offered its metrics (`{"herd":"metrics_offer"}`): scrapes ask it.
    pub(super) metrics: bool,
    /// What it told of itself through PM2's `@pm2/io` (metrics, actions).
    pub(super) pm2: Option<Box<super::pm2io::Pm2Io>>,
    /// How the app's primary sees it, when it is a worker of one.
    pub(super) seen: Box<super::primary::Seen>,
    /// Its stdout and stderr pumps.
    pub(super) out: Option<Arc<logs::PumpState>>,
    pub(super) err: Option<Arc<logs::PumpState>>,
    /// What its health probes saw (apps with probes).
    pub(super) health: Box<super::probes::ProcHealth>,
    /// The app's addresses when it started: the listening sockets it holds (an applied listen
    /// change leaves older processes on the old ones until they are replaced).
    pub(super) addrs: Vec<String>,
}

impl Proc {
    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Where a slot is in its life, with what that state needs.
pub(super) enum SlotState {
    /// Started; waiting for it to say it is ready (`wait_ready`, a Node worker's listen) until
    /// `deadline`, when it is routed to anyway. Not routed yet.
    Starting { proc: Proc, deadline: Instant },
    /// Serving and routed.
    Online { proc: Proc },
    /// A rolling reload of the slot: `next` starts beside `current`, which keeps serving
    /// (routed if it was `online`); `next` must be ready by `deadline`.
    Reloading {
        current: Proc,
        online: bool,
        next: Proc,
        deadline: Instant,
    },
    /// Being removed by a scale-down: not routed, emptying its queue; looked at again at
    /// `look`.
    Draining {
        proc: Proc,
        since: Instant,
        look: Instant,
    },
    /// Sent its stop signal; SIGKILL to its group and cgroup at `deadline`.
    Stopping {
        proc: Proc,
        then: Then,
        deadline: Instant,
    },
    /// Crashed; restarts at `until`.
    WaitingRestart { until: Instant },
    /// Not running, by wish.
    Stopped,
    /// Ended and not restarted (the policy said so: `autorestart = false`).
    Exited,
    /// Crash-looped; stays down until a restart.
    Errored,
    /// Removed by a scale-down; dropped from the app right after.
    Gone,
}

impl SlotState {
    /// The slot's serving (or stopping) process.
    pub(super) fn proc(&self) -> Option<&Proc> {
        match self {
            SlotState::Starting { proc, .. }
            | SlotState::Online { proc }
            | SlotState::Draining { proc, .. }
            | SlotState::Stopping { proc, .. } => Some(proc),
            SlotState::Reloading { current, .. } => Some(current),
            _ => None,
        }
    }

    /// [`SlotState::proc`], mutable.
    pub(super) fn proc_mut(&mut self) -> Option<&mut Proc> {
        match self {
            SlotState::Starting { proc, .. }
            | SlotState::Online { proc }
            | SlotState::Draining { proc, .. }
            | SlotState::Stopping { proc, .. } => Some(proc),
            SlotState::Reloading { current, .. } => Some(current),
            _ => None,
        }
    }

    /// A reload's next process, while there is one.
    pub(super) fn next(&self) -> Option<&Proc> {
        match self {
            SlotState::Reloading { next, .. } => Some(next),
            _ => None,
        }
    }

    /// [`SlotState::next`], mutable.
    pub(super) fn next_mut(&mut self) -> Option<&mut Proc> {
        match self {
            SlotState::Reloading { next, .. } => Some(next),
            _ => None,
        }
    }

    /// Whether new connections go to this slot.
    pub(super) fn routed(&self) -> bool {
        matches!(
            self,
            SlotState::Online { .. } | SlotState::Reloading { online: true, .. }
        )
    }

    /// What `herd list` shows.
    pub(super) fn status(&self) -> ProcessStatus {
        match self {
            SlotState::Starting { .. } | SlotState::Reloading { online: false, .. } => {
                ProcessStatus::Starting
            }
            SlotState::Online { .. } | SlotState::Reloading { online: true, .. } => {
                ProcessStatus::Online
            }
            SlotState::Draining { .. } | SlotState::Stopping { .. } => ProcessStatus::Stopping,
            SlotState::WaitingRestart { .. } => ProcessStatus::WaitingRestart,
            SlotState::Stopped | SlotState::Gone => ProcessStatus::Stopped,
            SlotState::Exited => ProcessStatus::Exited,
            SlotState::Errored => ProcessStatus::Errored,
        }
    }

    /// When the state waits for something to happen by itself: a ready timeout, a next
    /// process's ready timeout, the next look at a drain, a kill timeout, a restart.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            SlotState::Starting { deadline, .. }
            | SlotState::Reloading { deadline, .. }
            | SlotState::Stopping { deadline, .. } => Some(*deadline),
            SlotState::Draining { look, .. } => Some(*look),
            SlotState::WaitingRestart { until } => Some(*until),
            _ => None,
        }
    }

    /// Whether a request waiting on this slot can be answered.
    pub(super) fn settled(&self) -> bool {
        !matches!(
            self,
            SlotState::Starting { .. }
                | SlotState::Reloading { .. }
                | SlotState::Draining { .. }
                | SlotState::Stopping { .. }
        )
    }

    /// Takes the state out, leaving `Stopped` in its place for the caller to replace.
    pub(super) fn take(&mut self) -> SlotState {
        std::mem::replace(self, SlotState::Stopped)
    }
}

/// One place of an app.
pub(super) struct Slot {
    pub(super) index: u32,
    pub(super) state: SlotState,
    pub(super) restarts: u32,
    pub(super) history: History,
    /// The last exit of its process, shown whatever the state (history, not state).
    pub(super) last_exit: Option<ExitInfo>,
    pub(super) out: SharedLog,
    pub(super) err: SharedLog,
    /// PM2's `log_file`: a file that gets both streams too.
    pub(super) both: Option<SharedLog>,
    /// The process whose `online` was published last (see `after_event`).
    pub(super) told_online: Option<u32>,
    /// What the app's primary forked it with (`cluster.fork(env)`, `setupPrimary`).
    pub(super) fork: super::primary::ForkSpec,
}

impl Slot {
    pub(super) fn new(index: u32, out: SharedLog, err: SharedLog) -> Self {
        Self {
            index,
            state: SlotState::Stopped,
            restarts: 0,
            history: History::default(),
            last_exit: None,
            out,
            err,
            both: None,
            told_online: None,
            fork: super::primary::ForkSpec::default(),
        }
    }

    /// Moves to `state`; the slot's timer follows the new state's deadline after the event.
    pub(super) fn set(&mut self, state: SlotState) {
        self.state = state;
    }
}

// ----- transitions ---------------------------------------------------------------

impl State {
    pub(super) fn on_exit(&mut self, pid: u32, status: WaitStatus) {
        let Some((id, i, role)) = self.pids.remove(&pid) else {
            // An orphaned grandchild re-parented to us, or a child whose exec failed.
            return;
        };
        self.timers.cancel(TimerKey::Retire { pid });
        // Whatever the instance left behind in its process group and its cgroup goes with
        // it, so nothing keeps holding the port (PM2 leaves Next.js's child running).
        let cg = self.cgroups.remove(&pid);
        self.os.kill_tree(pid, cg.as_deref());
        if let Some(cg) = cg {
            self.empty_cgroup(id, cg);
        }
        self.forget_instance(pid);
        // The extra listening sockets only it held close: a killed flood gives everything back.
        self.release_sockets(id, pid, None);
        self.write_pids();
        let exit = exit_info(&status);
        // The app's primary hears of its worker's exit first: its `exit` handler may fork,
        // and take the replacement started below.
        if i == PRIMARY {
            self.primary_gone(id);
        } else {
            self.worker_exited(id, pid, &exit);
        }
        let how = match role {
            Role::Current => "current",
            Role::Next => "next",
            Role::Retiring => "retired",
        };
        self.lifecycle_event(
            id,
            i,
            Some(pid),
            "exit",
            serde_json::json!({"code": exit.code, "signal": exit.signal, "process": how}),
        );
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        match role {
            Role::Retiring => {
                tracing::info!(app = %app.spec.name, instance = i, pid, exit = %describe_exit(&exit), "reloaded-away process exited");
                app.retiring.retain(|(_, p)| p.pid != pid);
                return;
            }
            Role::Next => {
                // The reload's next process is gone: the slot goes back to its current one.
                if let Some(slot) = slot_mut!(app, i) {
                    if slot.state.next().is_some_and(|p| p.pid == pid) {
                        if let SlotState::Reloading {
                            current, online, ..
                        } = slot.state.take()
                        {
                            slot.set(back_from_reload(current, online, &app.spec));
                        }
                    }
                }
                self.reload_failed(
                    id,
                    i,
                    format!(
                        "the new process of instance {i} exited ({}) before it was ready",
                        describe_exit(&exit)
                    ),
                );
                return;
            }
            Role::Current => {}
        }
        let name = app.spec.name.clone();
        let _ = self.lifecycle.send(Lifecycle::Exited {
            app: name.clone(),
            instance: i,
            pid,
            exit: exit.clone(),
        });
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        slot.last_exit = Some(exit.clone());
        let prev = slot.state.take();
        match prev {
            // The current process died during a reload of its slot: the new one takes over,
            // and the reload waits for it as for any starting process.
            SlotState::Reloading { next, .. } => {
                slot.restarts += 1;
                self.pids.insert(next.pid, (id, i, Role::Current));
                let timeout = Duration::from_millis(app.spec.listen_timeout_ms);
                slot.set(SlotState::Starting {
                    proc: next,
                    deadline: Instant::now() + timeout,
                });
            }
            SlotState::Stopping { then, .. } => match then {
                Then::Stay => slot.set(SlotState::Stopped),
                Then::Remove => slot.set(SlotState::Gone),
                Then::Restart => {
                    slot.restarts += 1;
                    slot.set(SlotState::Stopped);
                    self.launch(id, i);
                }
                // Counted by the crash-loop guard as a crash of no uptime.
                Then::Unlive => {
                    slot.set(SlotState::Stopped);
                    let decision =
                        policy::on_exit(&app.spec, &mut slot.history, Duration::ZERO, None);
                    tracing::info!(app = %name, instance = i, pid, ?decision, "instance stopped by its liveness probe");
                    self.apply_decision(id, i, decision, false);
                }
            },
            SlotState::Draining { .. } => slot.set(SlotState::Gone),
            SlotState::Starting { proc, .. } | SlotState::Online { proc } => {
                let uptime = proc.since.elapsed();
                let decision = policy::on_exit(&app.spec, &mut slot.history, uptime, exit.code);
                tracing::info!(app = %name, instance = i, pid, ?exit, ?decision, "instance exited");
                self.apply_decision(id, i, decision, false);
            }
            other => slot.state = other,
        }
    }

    pub(super) fn apply_decision(
        &mut self,
        id: u32,
        i: u32,
        decision: Decision,
        failed_spawn: bool,
    ) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        // A program that cannot even be started waits at least one step of the backoff.
        let failed_spawn_delay = policy::delay(&app.spec, 1);
        let max_restarts = app.spec.max_restarts;
        let min_uptime = app.spec.min_uptime_ms;
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        match decision {
            Decision::Restart(delay) => {
                slot.restarts += 1;
                // A program that cannot even be started is never retried at once.
                let delay = if failed_spawn {
                    delay.max(failed_spawn_delay)
                } else {
                    delay
                };
                let restarts = slot.restarts;
                self.lifecycle_event(
                    id,
                    i,
                    None,
                    "restart",
                    serde_json::json!({"delay_ms": delay.as_millis() as u64, "restarts": restarts}),
                );
                let Some(slot) = self.apps.get_mut(&id).and_then(|a| slot_mut!(a, i)) else {
                    return;
                };
                if delay.is_zero() {
                    slot.set(SlotState::Stopped);
                    self.launch(id, i);
                } else {
                    slot.set(SlotState::WaitingRestart {
                        until: Instant::now() + delay,
                    });
                }
            }
            Decision::Stop => {
                slot.set(SlotState::Stopped);
                recycle_sockets(app, i);
            }
            Decision::Exit => {
                slot.set(SlotState::Exited);
                recycle_sockets(app, i);
            }
            Decision::Errored => {
                write_note(
                    &slot.err,
                    &format!(
                        "[herd] {} exited {} times in a row within {min_uptime} ms of starting; marked errored. Fix it, then `herd restart {}`",
                        super::primary::who(i),
                        max_restarts + 1,
                        app.spec.name
                    ),
                );
                slot.set(SlotState::Errored);
                recycle_sockets(app, i);
                self.lifecycle_event(
                    id,
                    i,
                    None,
                    "errored",
                    serde_json::json!({"restarts": max_restarts + 1}),
                );
            }
        }
    }

    pub(super) fn on_ready(&mut self, pid: u32, kind: ReadyKind) {
        let key = self.pids.get(&pid).copied().or_else(|| {
            // A child of the instance may speak for it: look its process group up.
            nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
                .ok()
                .and_then(|g| self.pids.get(&(g.as_raw() as u32)).copied())
                // Or its cgroup, if it left the group.
                .or_else(|| {
                    let leader = cgroup::owner_of(pid, &self.cgroups)?;
                    self.pids.get(&leader).copied()
                })
        });
        let Some((id, i, role)) = key else {
            return;
        };
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        // With wait_ready the app itself must say so; listening is not enough.
        if app.spec.wait_ready && kind == ReadyKind::Listening {
            return;
        }
        match role {
            Role::Current => {
                let Some(slot) = slot_mut!(app, i) else {
                    return;
                };
                match slot.state.take() {
                    SlotState::Starting { proc, .. } => {
                        slot.set(SlotState::Online { proc });
                        if app.reload.as_ref().is_some_and(|r| r.active == Some(i)) {
                            if let Some(r) = app.reload.as_mut() {
                                r.active = None;
                            }
                            self.reload_step(id);
                        }
                    }
                    // The current process of a reloading slot gets ready: it serves until
                    // the next one does.
                    SlotState::Reloading {
                        current,
                        next,
                        deadline,
                        ..
                    } => slot.set(SlotState::Reloading {
                        current,
                        online: true,
                        next,
                        deadline,
                    }),
                    other => slot.set(other),
                }
            }
            Role::Next => self.promote(id, i),
            Role::Retiring => {}
        }
    }

    /// The slot's deadline has come: what happens depends on what its state waits for. A
    /// state whose deadline has not come (it changed within this wake-up) is left alone.
    pub(super) fn on_timer(&mut self, id: u32, i: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        let now = Instant::now();
        if slot.state.deadline().is_none_or(|d| d > now) {
            return;
        }
        match slot.state.take() {
            SlotState::WaitingRestart { .. } => {
                slot.set(SlotState::Stopped);
                self.launch(id, i);
            }
            SlotState::Stopping { proc, then, .. } => {
                let pid = proc.pid;
                // Reaped elsewhere and its exit lost (an exit the keeper gave a daemon that
                // died before it wrote its state): it ended, killed as it was asked to be.
                if self.os.gone(pid) {
                    slot.set(SlotState::Stopping {
                        proc,
                        then,
                        deadline: now + KILL_REPEAT,
                    });
                    tracing::warn!(app = %app.spec.name, instance = i, pid, "the stopping process is gone and its exit was not seen; taken as killed");
                    self.on_exit(
                        pid,
                        nix::sys::wait::WaitStatus::Signaled(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                            false,
                        ),
                    );
                    return;
                }
                tracing::info!(app = %app.spec.name, instance = i, pid, "kill timeout passed; sending SIGKILL");
                self.os
                    .kill_tree(pid, self.cgroups.get(&pid).map(PathBuf::as_path));
                // It stays stopping until its exit is reaped; SIGKILL is not sent again.
                slot.set(SlotState::Stopping {
                    proc,
                    then,
                    deadline: now + KILL_REPEAT,
                });
            }
            SlotState::Starting { proc, .. } => {
                // PM2's behaviour: a wait_ready app that stays silent is put online anyway.
                tracing::warn!(app = %app.spec.name, instance = i, "no ready signal within listen_timeout; routing to it anyway");
                let what = if app.spec.wait_ready {
                    "did not say it was ready"
                } else {
                    "did not listen"
                };
                write_note(&slot.err, &format!("[herd] instance {i} {what} within listen_timeout ({} ms); routing to it anyway", app.spec.listen_timeout_ms));
                slot.set(SlotState::Online { proc });
                // A reload waiting on this slot (its new process took over from a crashed
                // current one) moves on.
                if let Some(r) = app.reload.as_mut() {
                    if r.active == Some(i) {
                        r.active = None;
                        self.reload_step(id);
                    }
                }
            }
            state @ SlotState::Reloading { .. } => {
                slot.set(state);
                self.on_next_timeout(id, i);
            }
            SlotState::Draining { proc, since, .. } => {
                let empty = app.listeners.iter().all(|l| l.queued(i).unwrap_or(0) == 0);
                let waited = now.saturating_duration_since(since);
                slot.set(SlotState::Draining {
                    proc,
                    since,
                    look: now + DRAIN_POLL,
                });
                // A short grace lets handshakes already routed to the slot land first.
                if (empty && waited >= DRAIN_POLL * 2) || waited >= DRAIN_MAX {
                    self.stop_slot(id, i, Then::Remove);
                }
            }
            other => slot.set(other),
        }
    }
}

/// The state of a slot whose reload ends without its next process: the current one goes on
/// as it was — serving if it was online, or starting again with a fresh ready timeout.
pub(super) fn back_from_reload(current: Proc, online: bool, spec: &AppSpec) -> SlotState {
    if online {
        SlotState::Online { proc: current }
    } else {
        SlotState::Starting {
            proc: current,
            deadline: Instant::now() + Duration::from_millis(spec.listen_timeout_ms),
        }
    }
}

/// Gives a slot that will not run again by itself a fresh socket. Connections that queued on
/// the old one while its process was starting would otherwise wait forever; closing it resets
/// them, so their clients fail fast and retry instead of hanging.
pub(super) fn recycle_sockets(app: &mut App, i: u32) {
    let mut recycled = false;
    for l in &mut app.listeners {
        if l.is_per_slot() && l.queued(i).unwrap_or(0) > 0 {
            l.remove_slot(i);
            if let Err(e) = l.add_slot(i) {
                tracing::error!(app = %app.spec.name, instance = i, "cannot renew the slot's socket: {e}");
            }
            recycled = true;
        }
    }
    if recycled {
        app.routed = None;
    }
}

pub(super) fn describe_exit(e: &ExitInfo) -> String {
    match (&e.code, &e.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by {s}"),
        _ => "unknown status".into(),
    }
}

pub(super) fn exit_info(status: &WaitStatus) -> ExitInfo {
    match status {
        WaitStatus::Exited(_, code) => ExitInfo {
            code: Some(*code),
            signal: None,
        },
        WaitStatus::Signaled(_, sig, _) => ExitInfo {
            code: None,
            signal: Some(sig.as_str().to_string()),
        },
        _ => ExitInfo {
            code: None,
            signal: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn proc(pid: u32) -> Proc {
        Proc {
            pid,
            since: Instant::now(),
            sample: None,
            channel: None,
            listens: 0,
            seq: 0,
            preload: false,
            node_stop: NodeStop::Serving,
            env_version: 1,
            primary: false,
            metrics: false,
            pm2: None,
            seen: Default::default(),
            out: None,
            err: None,
            health: Default::default(),
            addrs: Vec::new(),
        }
    }

    #[test]
    fn a_reloading_slot_serves_from_current_and_waits_for_next() {
        let at = Instant::now() + Duration::from_secs(3);
        let s = SlotState::Reloading {
            current: proc(1),
            online: true,
            next: proc(2),
            deadline: at,
        };
        assert_eq!(s.proc().map(|p| p.pid), Some(1));
        assert_eq!(s.next().map(|p| p.pid), Some(2));
        assert!(s.routed());
        assert_eq!(s.status(), ProcessStatus::Online);
        assert_eq!(s.deadline(), Some(at));
        assert!(!s.settled());
        let s = SlotState::Reloading {
            current: proc(1),
            online: false,
            next: proc(2),
            deadline: at,
        };
        assert!(!s.routed());
        assert_eq!(s.status(), ProcessStatus::Starting);
    }

    #[test]
    fn only_waiting_states_have_a_deadline() {
        let at = Instant::now();
        for s in [
            SlotState::Online { proc: proc(1) },
            SlotState::Stopped,
            SlotState::Exited,
            SlotState::Errored,
            SlotState::Gone,
        ] {
            assert_eq!(s.deadline(), None);
            assert!(s.settled());
        }
        for s in [
            SlotState::Starting {
                proc: proc(1),
                deadline: at,
            },
            SlotState::Stopping {
                proc: proc(1),
                then: Then::Stay,
                deadline: at,
            },
            SlotState::Draining {
                proc: proc(1),
                since: at,
                look: at,
            },
            SlotState::WaitingRestart { until: at },
        ] {
            assert_eq!(s.deadline(), Some(at));
        }
    }
}
