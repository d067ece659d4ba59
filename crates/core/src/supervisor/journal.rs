//! The state journal a keeper holds (docs/keeper.md): after every event that changed what
//! matters, the supervisor writes its state — as `herd update` hands it over, with
//! [`State::export`]'s `journal` view — into a memfd and gives the keeper that memfd and every
//! fd the state names. If the daemon dies, the keeper starts the next one with all of it, and
//! that one takes over as after an update ([`State::after_recovery`] does the rest: processes
//! that were on their way out are stopped, and children nobody knows are killed).
//!
//! The journal is written within [`JOURNAL_AFTER_CHANGES`] of a change and
//! [`JOURNAL_AFTER_MESSAGES`] of an instance's message (which does not change the state: bus
//! counters and requests are left out of it), not after each: a burst of changes or a flood of
//! messages costs one export. Before a command is answered a journal still due is written,
//! and what the command changed right after it (and before a waiting command hears it is done):
//! what a user was told is what the keeper holds.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;

use super::{Event, State, TimerKey};
use crate::handover::{self, Handover, Kept};

/// How soon after an instance's message the journal is looked at.
const JOURNAL_AFTER_MESSAGES: Duration = Duration::from_millis(50);
/// How soon after any other change: the changes of a burst (a restart of hundreds of
/// instances) cost one export, not one each. A daemon that dies meanwhile leaves a state a few
/// milliseconds old, which the next one makes whole ([`State::after_recovery`]).
const JOURNAL_AFTER_CHANGES: Duration = Duration::from_millis(10);
/// How long a process on its way out when the daemon died has to stop after SIGTERM.
const STRAY_KILL_AFTER: Duration = Duration::from_secs(5);

/// What the supervisor keeps for its journal.
#[derive(Default)]
pub(super) struct Journal {
    /// The state last given to the keeper, to give it again only when it changes.
    last: Vec<u8>,
    /// The daemon's own fds (`control`, `lock`), once the control socket is bound.
    daemon_fds: Vec<(String, RawFd)>,
    /// The daemon's program, for the keeper to start again.
    exe: Option<OwnedFd>,
    /// A failure was logged (once until it works again).
    failing: bool,
    /// The keeper went away: no more journal.
    gone: bool,
    /// Number of the last exit the keeper reported that is handled (and so in the state).
    exits: u32,
}

impl State {
    /// After an event: the journal is written soon — within 10 ms of a change, 50 ms of an
    /// instance's message — unless a timer for it is already nearer.
    pub(super) fn journal_after(&mut self, message: bool) {
        if self.cfg.keeper.is_none() || self.journal.gone {
            return;
        }
        let at = Instant::now()
            + match message {
                true => JOURNAL_AFTER_MESSAGES,
                false => JOURNAL_AFTER_CHANGES,
            };
        if self
            .timers
            .deadline(TimerKey::Journal)
            .is_none_or(|d| d > at)
        {
            self.timers.set(TimerKey::Journal, at);
        }
    }

    /// The journal is written now: its time came, or a waiting command is about to hear that
    /// what it asked for is done (the keeper must hold that state first).
    pub(super) fn journal_now(&mut self) {
        if self.cfg.keeper.is_none() || self.journal.gone {
            return;
        }
        self.timers.cancel(TimerKey::Journal);
        self.write_journal();
    }

    /// The daemon's control socket and lock, kept with the state from now on.
    pub(super) fn on_daemon_fds(&mut self, fds: Vec<(String, RawFd)>) {
        self.journal.daemon_fds = fds;
        self.journal.last.clear();
    }

    /// The keeper went away: the daemon goes on, but its death would now take the instances
    /// with it... and nothing adopts them: the next daemon kills what is left.
    pub(super) fn on_keeper_gone(&mut self) {
        if !self.journal.gone {
            tracing::error!(
                "the keeper is gone: the daemon runs on, but if it dies its instances are left without a supervisor (the next daemon stops them); `herd kill` and start again to get a keeper back"
            );
        }
        self.journal.gone = true;
    }

    fn write_journal(&mut self) {
        let Some(link) = self.cfg.keeper.clone() else {
            return;
        };
        // The control socket is in every state: without it the next daemon could not serve.
        if self.journal.daemon_fds.is_empty() {
            return;
        }
        match self.try_write_journal(&link) {
            Ok(()) => {
                if self.journal.failing {
                    tracing::info!("the keeper holds the daemon's state again");
                }
                self.journal.failing = false;
            }
            Err(e) => {
                if !self.journal.failing {
                    tracing::warn!("cannot give the keeper the daemon's state: {e}; if the daemon dies now, the next one starts from the last state the keeper holds");
                }
                self.journal.failing = true;
            }
        }
    }

    fn try_write_journal(&mut self, link: &crate::keeper::Link) -> std::io::Result<()> {
        let mut kept = Kept::borrowing();
        let state = self.export(&mut kept, true)?;
        let mut bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        bytes.extend(self.journal.exits.to_ne_bytes());
        if bytes == self.journal.last {
            return Ok(());
        }
        if self.journal.exe.is_none() {
            self.journal.exe = Some(std::fs::File::open("/proc/self/exe")?.into());
        }
        let Some(exe) = self.journal.exe.as_ref().map(AsRawFd::as_raw_fd) else {
            return Ok(());
        };
        let mut fds = kept.borrowed().to_vec();
        let mut daemon_fds = BTreeMap::new();
        for (name, fd) in &self.journal.daemon_fds {
            daemon_fds.insert(name.clone(), *fd);
            fds.push(*fd);
        }
        let h = Handover {
            format: handover::FORMAT,
            from_version: env!("CARGO_PKG_VERSION").to_string(),
            began_unix_ms: 0,
            daemon_fds,
            reply_fd: None,
            supervisor: state,
        };
        let memfd = handover::write(&h)?;
        fds.push(memfd.as_raw_fd());
        fds.push(exe);
        link.store(&fds, memfd.as_raw_fd(), exe, self.journal.exits)?;
        self.journal.last = bytes;
        Ok(())
    }

    /// After a takeover from a keeper (the daemon before died): processes that were on their
    /// way out are asked to stop (SIGKILL after [`STRAY_KILL_AFTER`]), and the keeper's
    /// children that belong to nothing here (an instance started just before the death,
    /// before the state said so; an exec probe) are killed.
    pub(super) fn after_recovery(&mut self, strays: Vec<u32>) {
        for &pid in &strays {
            tracing::info!(
                pid,
                "stopping a process that was on its way out when the daemon died"
            );
            self.os.signal_group(pid, Signal::SIGTERM);
        }
        if !strays.is_empty() {
            let strays = strays.clone();
            tokio::spawn(async move {
                tokio::time::sleep(STRAY_KILL_AFTER).await;
                for pid in strays {
                    if let Ok(pid) = i32::try_from(pid) {
                        let pid = nix::unistd::Pid::from_raw(pid);
                        if nix::sys::signal::kill(pid, None).is_ok() {
                            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
                            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                        }
                    }
                }
            });
        }
        let me = std::process::id();
        let keeper = nix::unistd::getppid().as_raw() as u32;
        for pid in crate::keeper::children_of(keeper) {
            if pid == me || self.pids.contains_key(&pid) || strays.contains(&pid) {
                continue;
            }
            tracing::warn!(
                pid,
                "killing a process the previous daemon left and its state does not name"
            );
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
    }

    /// A process the keeper reaped, its exit numbered `seq`.
    pub(super) fn on_keeper_exit(
        &mut self,
        pid: u32,
        status: nix::sys::wait::WaitStatus,
        seq: u32,
    ) {
        // Given again to a daemon after one that died: a pid this one no longer knows is
        // simply not found.
        if !self.on_probe_exit(pid, &status) {
            self.on_exit(pid, status);
        }
        self.journal.exits = self.journal.exits.max(seq);
    }

    /// The task reading the keeper's messages: processes it reaped come as exits.
    pub(super) fn spawn_keeper_reader(&self) {
        let Some(link) = &self.cfg.keeper else {
            return;
        };
        let fd = match link.exits() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("cannot read the keeper's messages: {e}");
                return;
            }
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            // SAFETY: `fd` is this task's own duplicate of the link, owned by the AsyncFd and
            // closed by nothing else while registered.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            let afd = match registered {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("cannot read the keeper's messages: {e}");
                    return;
                }
            };
            let mut buf = [0u8; 64];
            loop {
                let Ok(mut guard) = afd.readable().await else {
                    return;
                };
                match guard.try_io(|fd| {
                    nix::sys::socket::recv(
                        fd.as_raw_fd(),
                        &mut buf,
                        nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                    )
                    .map_err(std::io::Error::from)
                }) {
                    Err(_would_block) => continue,
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        let _ = tx.send(Event::KeeperGone);
                        return;
                    }
                    Ok(Ok(n)) => {
                        let Some((pid, status, seq)) =
                            buf.get(..n).and_then(crate::keeper::read_exit)
                        else {
                            continue;
                        };
                        let Ok(status) = nix::sys::wait::WaitStatus::from_raw(
                            nix::unistd::Pid::from_raw(pid),
                            status,
                        ) else {
                            continue;
                        };
                        let _ = tx.send(Event::KeeperExit {
                            pid: pid as u32,
                            status,
                            seq,
                        });
                    }
                }
            }
        });
    }
}
