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

use std::sync::Arc;

use herd_proto::{ExitInfo, ProcessStatus};
use tokio::time::Instant;

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
    /// Asked to stop and waiting for its channel to close before the kill signal.
    pub(super) disconnecting: bool,
    /// The app's environment version it was started with.
    pub(super) env_version: u32,
    /// Its stdout and stderr pumps.
    pub(super) out: Option<Arc<logs::PumpState>>,
    pub(super) err: Option<Arc<logs::PumpState>>,
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
        }
    }

    /// Moves to `state`; the slot's timer follows the new state's deadline after the event.
    pub(super) fn set(&mut self, state: SlotState) {
        self.state = state;
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
            disconnecting: false,
            env_version: 1,
            out: None,
            err: None,
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
