//! What the supervisor asks of the operating system: start a process, signal a process
//! group, kill a whole tree, read a process's figures, read the wall clock. The real [`System`] forks and signals;
//! the unit tests of the supervisor put a fake in its place, so every transition and race of
//! the slot machine runs without a process, under tokio's paused time (the clock).
//!
//! Everything else a spawn needs (pipes, the channel's socket pair, log pumps) is created by
//! the supervisor itself: those are harmless in tests, and a fake child simply never uses them.

use std::path::Path;
use std::time::SystemTime;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::spawn::{self, SpawnError, SpawnRequest};
use crate::stats::{self, Sample};

/// The side effects of the supervisor on processes.
pub(super) trait Os: Send {
    /// Forks and executes `req`; the child's pid.
    fn spawn(&mut self, req: SpawnRequest<'_>) -> Result<u32, SpawnError>;
    /// Sends `signal` to the process group of `pid`.
    fn signal_group(&mut self, pid: u32, signal: Signal);
    /// SIGKILLs the process group of `pid` and, when it has one, its cgroup: everything it
    /// started, including children that left the group.
    fn kill_tree(&mut self, pid: u32, cgroup: Option<&Path>);
    /// CPU time and resident memory of `pid`.
    fn sample(&mut self, pid: u32) -> Option<Sample>;
    /// Whether no process `pid` exists any more, not even as a zombie: someone else reaped
    /// it (the keeper, for a daemon that died), and its exit will not come from here.
    fn gone(&self, pid: u32) -> bool {
        let _ = pid;
        false
    }
    /// The time of day, for cron schedules (every timer runs on tokio's monotonic clock).
    fn wall_clock(&self) -> SystemTime {
        SystemTime::now()
    }
    /// Starts an exec health probe: `sh -c command` in its own process group, reaped as any
    /// child (its exit comes as an `Exited` event). Its pid; `None` if it cannot start.
    fn spawn_probe(&mut self, command: &str, env: &[(String, String)], cwd: &str) -> Option<u32> {
        let _ = (command, env, cwd);
        None
    }
    /// Starts a network health probe; its result comes back on `tx` as an `Event::Probe`.
    fn probe_net(
        &mut self,
        probe: super::probes::NetProbe,
        tx: tokio::sync::mpsc::UnboundedSender<super::Event>,
    ) {
        let _ = (probe, tx);
    }
}

/// The operating system itself.
pub(super) struct System;

impl Os for System {
    fn spawn(&mut self, req: SpawnRequest<'_>) -> Result<u32, SpawnError> {
        spawn::spawn(req)
    }

    fn signal_group(&mut self, pid: u32, signal: Signal) {
        let _ = kill(Pid::from_raw(-(pid as i32)), signal);
    }

    fn kill_tree(&mut self, pid: u32, cgroup: Option<&Path>) {
        let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        if let Some(cg) = cgroup {
            if let Err(e) = crate::cgroup::kill(cg) {
                tracing::warn!(pid, "cannot kill cgroup {}: {e}", cg.display());
            }
        }
    }

    fn sample(&mut self, pid: u32) -> Option<Sample> {
        stats::sample(pid)
    }

    fn gone(&self, pid: u32) -> bool {
        i32::try_from(pid)
            .is_ok_and(|p| kill(Pid::from_raw(p), None) == Err(nix::errno::Errno::ESRCH))
    }

    fn spawn_probe(&mut self, command: &str, env: &[(String, String)], cwd: &str) -> Option<u32> {
        use std::os::unix::process::CommandExt;
        let mut c = std::process::Command::new("/bin/sh");
        c.arg("-c")
            .arg(command)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0);
        if !cwd.is_empty() {
            c.current_dir(cwd);
        }
        match c.spawn() {
            // Reaped by the supervisor's SIGCHLD reaper, like every child.
            Ok(child) => Some(child.id()),
            Err(e) => {
                tracing::warn!("cannot start the exec probe {command:?}: {e}");
                None
            }
        }
    }

    fn probe_net(
        &mut self,
        probe: super::probes::NetProbe,
        tx: tokio::sync::mpsc::UnboundedSender<super::Event>,
    ) {
        tokio::spawn(async move {
            let (ok, detail) = super::probes::run_net_probe(&probe).await;
            let _ = tx.send(super::Event::Probe {
                pid: probe.pid,
                kind: probe.kind,
                ok,
                detail,
            });
        });
    }
}
