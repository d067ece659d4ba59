//! `herd update`: the daemon re-executes a new binary in its own process, so every instance
//! stays its child, and the new program takes over every socket, pipe and channel.
//!
//! The supervisor runs on one thread; while it handles an event no reader, writer or timer
//! task runs. The update waits for a moment when nothing is half done — every app settled
//! (no reload, stop or drain in flight), no request waiting, both event queues empty, no
//! channel reader holding a parsed message — and then, in one synchronous step, copies the
//! state into a [`Handover`], keeps the fds it names open across `execve`, and executes the
//! new binary. Bytes a reader took from a socket but did not parse, a pump's partial line and
//! messages still queued for an instance travel in the handover; nothing read is lost.
//! If `execve` fails, the duplicates are closed and the daemon goes on as it was.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herd_proto::{AppStatus, ErrorCode, LogStream, Reply};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{cluster, refusal, App, Event, Proc, Role, SlotState, State, TimerKey};
use crate::handover::{self, Handover, Kept};
use crate::sockets::Listener;
use crate::{ipc, logs};

/// How long an update may wait for a quiet moment before it is given up.
const UPDATE_WAIT: Duration = Duration::from_secs(10);
/// How soon a waiting update looks again.
const UPDATE_RETRY: Duration = Duration::from_millis(5);

/// An update in progress.
pub(super) struct Update {
    exe: PathBuf,
    argv: Vec<std::ffi::OsString>,
    reply: oneshot::Sender<Reply>,
    reply_fd: OwnedFd,
    daemon_fds: Vec<(String, RawFd)>,
    began: std::time::SystemTime,
    deadline: Instant,
    /// Why the last attempt had to wait.
    waiting_for: String,
    retry_armed: bool,
    /// A quiet moment was seen: the other tasks get a turn (to write the replies they hold)
    /// and the next quiet look goes ahead.
    quiet_seen: bool,
}

/// What the daemon hands the supervisor for an update.
pub struct UpdateRequest {
    /// The binary to execute.
    pub exe: PathBuf,
    /// Handover formats it reads.
    pub formats: Vec<u32>,
    /// The client's connection, answered by the new daemon.
    pub reply_fd: OwnedFd,
    /// The daemon's own fds to keep (`control`, `lock`), by name; they stay open meanwhile.
    pub daemon_fds: Vec<(String, RawFd)>,
    /// Arguments to run `exe` with (`daemon`, or the `herd run …` command line).
    pub argv: Vec<std::ffi::OsString>,
}

impl State {
    pub(super) fn on_update(&mut self, req: UpdateRequest, reply: oneshot::Sender<Reply>) {
        if self.updating.is_some() {
            let _ = reply.send(refusal(
                ErrorCode::Update,
                "an update is already in progress",
            ));
            return;
        }
        if self.shutting_down {
            let _ = reply.send(refusal(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down",
            ));
            return;
        }
        if let Some(app) = self.apps.values().find(|a| a.primary.is_some()) {
            let _ = reply.send(refusal(
                ErrorCode::Update,
                format!(
                    "app {} runs its own primary (--primary), which `herd update` cannot hand over yet; stop it first (`herd stop {}`), update, then start it again",
                    app.spec.name, app.spec.name
                ),
            ));
            return;
        }
        if !req.formats.contains(&handover::FORMAT) {
            let _ = reply.send(refusal(
                ErrorCode::Update,
                format!(
                    "{} reads handover formats {:?}, and this daemon writes format {}: it cannot take over in place; use `herd save && herd kill && herd resurrect`",
                    req.exe.display(),
                    req.formats,
                    handover::FORMAT
                ),
            ));
            return;
        }
        if let Err(e) = nix::unistd::access(&req.exe, nix::unistd::AccessFlags::X_OK) {
            let _ = reply.send(refusal(
                ErrorCode::Update,
                format!("{} cannot be executed ({e})", req.exe.display()),
            ));
            return;
        }
        tracing::info!(exe = %req.exe.display(), "update requested: waiting for a quiet moment");
        self.updating = Some(Update {
            exe: req.exe,
            argv: req.argv,
            reply,
            reply_fd: req.reply_fd,
            daemon_fds: req.daemon_fds,
            began: std::time::SystemTime::now(),
            deadline: Instant::now() + UPDATE_WAIT,
            waiting_for: String::new(),
            retry_armed: false,
            quiet_seen: false,
        });
    }

    pub(super) fn on_update_retry(&mut self) {
        if let Some(u) = &mut self.updating {
            u.retry_armed = false;
        }
    }

    /// One attempt of the update in progress: called by the event loop after each event, with
    /// its queues.
    pub(super) fn update_step(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        ipc_rx: &mut mpsc::Receiver<Event>,
        handled_before: bool,
    ) {
        // Handle whatever is queued, so nothing that already happened is left behind. Replies
        // made now are written by the connections' tasks in their next turn, so a look that
        // handled anything is not quiet.
        let mut handled = handled_before;
        for _ in 0..100_000 {
            let e = match rx.try_recv() {
                Ok(e) => e,
                Err(_) => match ipc_rx.try_recv() {
                    Ok(e) => e,
                    Err(_) => break,
                },
            };
            handled |= !matches!(e, Event::UpdateRetry);
            self.handle(e);
            self.after_event();
        }
        if handled {
            if let Some(u) = &mut self.updating {
                u.quiet_seen = false;
            }
        }
        let Some(u) = &self.updating else {
            return;
        };
        if Instant::now() > u.deadline {
            let why = u.waiting_for.clone();
            self.abort_update(format!(
                "no quiet moment for {} s ({why}); try again",
                UPDATE_WAIT.as_secs()
            ));
            return;
        }
        let busy = self.busy_reason();
        let Some(u) = self.updating.as_mut() else {
            return;
        };
        let wait = match busy {
            Some(why) => {
                u.quiet_seen = false;
                u.waiting_for = why;
                true
            }
            None if !u.quiet_seen => {
                u.quiet_seen = true;
                true
            }
            None => false,
        };
        if wait {
            if !u.retry_armed {
                u.retry_armed = true;
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(UPDATE_RETRY).await;
                    let _ = tx.send(Event::UpdateRetry);
                });
            }
            return;
        }
        let mut kept = Kept::default();
        let state = match self.export(&mut kept, false) {
            Ok(s) => s,
            Err(e) => {
                self.abort_update(format!("cannot prepare the handover: {e}"));
                return;
            }
        };
        let Some(u) = self.updating.as_ref() else {
            return;
        };
        let mut daemon_fds = BTreeMap::new();
        let reply_fd = kept.keep(u.reply_fd.as_fd());
        // The running program, to go back to if the new one cannot take over.
        let previous_exe_fd = std::fs::File::open("/proc/self/exe")
            .and_then(|f| kept.keep(f.as_fd()))
            .ok();
        for (name, fd) in &u.daemon_fds {
            // SAFETY: the daemon holds these fds open for its whole life (the control socket
            // and the lock); they are only borrowed to duplicate them.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            match kept.keep(fd) {
                Ok(n) => {
                    daemon_fds.insert(name.clone(), n);
                }
                Err(e) => {
                    self.abort_update(format!("cannot keep the {name} socket: {e}"));
                    return;
                }
            }
        }
        let handover = Handover {
            format: handover::FORMAT,
            from_version: env!("CARGO_PKG_VERSION").to_string(),
            began_unix_ms: u
                .began
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            daemon_fds,
            reply_fd: reply_fd.ok(),
            supervisor: state,
        };
        let memfd = match handover::write(&handover) {
            Ok(fd) => fd,
            Err(e) => {
                self.abort_update(format!("cannot write the handover: {e}"));
                return;
            }
        };
        // The keeper's link goes on in the new program.
        let keeper_fds = self.cfg.keeper.as_ref().and_then(|k| k.pass_on().ok());
        let keeper_fd = keeper_fds.as_ref().map(|(a, _)| a.as_raw_fd());
        let exe = u.exe.clone();
        let argv = u.argv.clone();
        tracing::info!(exe = %exe.display(), "handing over to the new binary");
        let e = exec(&exe, &argv, memfd.as_raw_fd(), previous_exe_fd, keeper_fd);
        // Still here: the new binary did not start. Its fds are closed; go on as before.
        drop(kept);
        drop(keeper_fds);
        drop(memfd);
        self.abort_update(format!("cannot execute {}: {e}", exe.display()));
    }

    fn abort_update(&mut self, why: String) {
        if let Some(u) = self.updating.take() {
            tracing::warn!("update given up: {why}");
            let _ = u.reply.send(refusal(ErrorCode::Update, why));
        }
    }

    /// Why the state cannot be handed over right now, if it cannot.
    pub(super) fn busy_reason(&self) -> Option<String> {
        if !self.waiters.is_empty() {
            return Some("a command is waiting for apps to settle".into());
        }
        if self.bus.cli_waiting() {
            return Some("a `herd request` is waiting for its reply".into());
        }
        if self.bus.bridge.as_ref().is_some_and(|b| b.has_queued()) {
            return Some("messages wait to be put on the broker".into());
        }
        for app in self.apps.values() {
            let n = &app.spec.name;
            if app.reload.is_some() || !app.retiring.is_empty() {
                return Some(format!("app {n} is reloading"));
            }
            if app.deleting {
                return Some(format!("app {n} is being deleted"));
            }
            if app.emptying > 0 {
                return Some(format!("app {n} has a cgroup still emptying"));
            }
            if self
                .timers
                .deadline(TimerKey::Watch { app: app.id })
                .is_some()
            {
                return Some(format!("app {n} is about to reload for a changed file"));
            }
            for s in &app.slots {
                if matches!(
                    s.state,
                    SlotState::Stopping { .. }
                        | SlotState::Draining { .. }
                        | SlotState::Gone
                        | SlotState::Reloading { .. }
                ) {
                    return Some(format!("instance {n}:{} is stopping", s.index));
                }
                if let Some(ch) = s.state.proc().and_then(|p| p.channel.as_ref()) {
                    if ch.holding() {
                        return Some(format!("instance {n}:{} has a message in flight", s.index));
                    }
                }
            }
        }
        None
    }

    /// The state as it stands, with every fd it names kept across `execve`.
    ///
    /// `journal`: for a keeper, at any moment, not only a quiet one. A process on its way out
    /// (a reload's next or replaced process, one stopping or scaled away) is listed in
    /// `strays` for the next daemon to stop, with its output pipes as orphan pipes, and its
    /// slot is written as it will be once the process is gone; times are absolute; what
    /// changes with every message (bytes read but not parsed, messages queued, bus counters
    /// and requests) is left out, so the state changes only when something that matters does.
    pub(super) fn export(
        &mut self,
        kept: &mut Kept,
        journal: bool,
    ) -> std::io::Result<handover::SupervisorState> {
        let now = Instant::now();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let at_unix = |t: Instant| unix_now + t.saturating_duration_since(now).as_millis() as u64;
        let mut strays: Vec<(u32, u32, &Proc)> = Vec::new();
        let mut apps = Vec::new();
        for app in self.apps.values() {
            let mut listeners = Vec::new();
            for l in &app.listeners {
                listeners.push(l.export(kept)?);
            }
            let mut extra = Vec::new();
            let mut extra_holders = std::collections::BTreeMap::new();
            for (k, s) in &app.extra {
                extra.push((k.clone(), s.listener.export(kept)?));
                let holders = s
                    .holders
                    .iter()
                    .map(|(pid, keys)| (*pid, keys.iter().cloned().collect()))
                    .collect();
                extra_holders.insert(k.clone(), holders);
            }
            let mut slots = Vec::new();
            if journal {
                strays.extend(app.retiring.iter().map(|(i, p)| (app.id, *i, p)));
            }
            for s in &app.slots {
                use handover::SlotStatus as S;
                // The process the slot keeps, and its status.
                let (status, proc) = match &s.state {
                    SlotState::Starting { proc, .. } => (S::Starting, Some(proc)),
                    SlotState::Online { proc } => (S::Online, Some(proc)),
                    SlotState::WaitingRestart { .. } => (S::WaitingRestart, None),
                    SlotState::Stopped => (S::Stopped, None),
                    SlotState::Exited => (S::Exited, None),
                    SlotState::Errored => (S::Errored, None),
                    // busy_reason waits until no slot is in one of these before an update; a
                    // keeper's state says what becomes of them.
                    _ if !journal => {
                        return Err(std::io::Error::other(format!(
                            "instance {}:{} is changing state",
                            app.spec.name, s.index
                        )))
                    }
                    // The reload of the slot is called off: the current process stays.
                    SlotState::Reloading {
                        current,
                        online,
                        next,
                        ..
                    } => {
                        strays.push((app.id, s.index, next));
                        let status = if *online { S::Online } else { S::Starting };
                        (status, Some(current))
                    }
                    SlotState::Stopping { proc, then, .. } => {
                        strays.push((app.id, s.index, proc));
                        match then {
                            super::Then::Stay => (S::Stopped, None),
                            super::Then::Restart | super::Then::Unlive => (S::WaitingRestart, None),
                            super::Then::Remove => continue,
                        }
                    }
                    SlotState::Draining { proc, .. } => {
                        strays.push((app.id, s.index, proc));
                        continue;
                    }
                    SlotState::Gone => continue,
                };
                let process = match proc {
                    Some(p) => {
                        let mut ps = export_proc(p, kept, journal)?;
                        ps.cgroup = self.cgroups.get(&p.pid).cloned();
                        if journal {
                            ps.started_unix_ms = Some(unix_now.saturating_sub(ps.uptime_ms));
                            ps.uptime_ms = 0;
                        }
                        Some(ps)
                    }
                    None => None,
                };
                // A stopping slot that restarts does so at once in the next daemon.
                let deadline = match (&s.state, status) {
                    (SlotState::Stopping { .. }, S::WaitingRestart) => Some(now),
                    (SlotState::Reloading { .. }, _) => None,
                    _ => s.state.deadline(),
                };
                slots.push(handover::SlotState {
                    index: s.index,
                    status,
                    timer_ms: match journal {
                        true => None,
                        false => {
                            deadline.map(|t| t.saturating_duration_since(now).as_millis() as u64)
                        }
                    },
                    timer_unix_ms: match journal {
                        true => deadline.map(at_unix),
                        false => None,
                    },
                    process,
                    restarts: s.restarts,
                    unstable: s.history.unstable,
                    backoff_step: s.history.backoff_step,
                    last_exit: s.last_exit.clone(),
                });
            }
            apps.push(handover::AppState {
                id: app.id,
                spec: app.spec.clone(),
                status: app.status,
                env_version: app.env_version,
                listeners,
                extra,
                extra_holders,
                slots,
                generation: app.generation,
                previous: app.previous.clone(),
            });
        }
        // SAFETY: the notify socket is owned by its task, which never ends.
        let notify = unsafe { BorrowedFd::borrow_raw(self.notify_fd) };
        let mut orphan_pipes = Vec::new();
        let mut stray_pids = Vec::new();
        let mut stray_pumps = Vec::new();
        for (app, slot, p) in strays {
            stray_pids.push(p.pid);
            for (stream, pump) in [(LogStream::Out, &p.out), (LogStream::Err, &p.err)] {
                if let Some(pump) = pump {
                    stray_pumps.push((app, slot, stream, pump.clone()));
                }
            }
        }
        let mut pumps = self.orphan_pumps();
        if journal {
            // The strays' pipes are read to their end by the next daemon, as orphans' (a
            // reload's next process is among the orphans already).
            for p in stray_pumps {
                if !pumps.iter().any(|q| Arc::ptr_eq(&q.3, &p.3)) {
                    pumps.push(p);
                }
            }
        }
        for (app, slot, stream, pump) in pumps {
            if let Some(pipe) = export_pipe(&pump, kept, journal)? {
                orphan_pipes.push(handover::OrphanPipe {
                    app,
                    slot,
                    stream,
                    pipe,
                });
            }
        }
        Ok(handover::SupervisorState {
            host: self.cfg.host.clone(),
            bus_url: self.cfg.bus_url.clone(),
            max_message_bytes: self.cfg.max_message_bytes,
            limits: self.cfg.limits,
            notify_fd: kept.keep(notify)?,
            next_id: self.next_id,
            apps,
            bus: match journal {
                true => self.bus.export_journal(),
                false => self.bus.export(),
            },
            orphan_pipes,
            cgroup_parent: self.containment.tree().map(|t| t.path().to_path_buf()),
            strays: stray_pids,
        })
    }

    /// Pumps still reading the output of processes that have exited (their children hold the
    /// pipe).
    fn orphan_pumps(&mut self) -> Vec<(u32, u32, LogStream, Arc<logs::PumpState>)> {
        self.pumps
            .retain(|p| !p.3.done.load(std::sync::atomic::Ordering::Acquire));
        let live: Vec<*const logs::PumpState> = self
            .apps
            .values()
            .flat_map(|a| a.slots.iter())
            .filter_map(|s| s.state.proc())
            .flat_map(|p| [p.out.as_ref(), p.err.as_ref()])
            .flatten()
            .map(Arc::as_ptr)
            .collect();
        self.pumps
            .iter()
            .filter(|p| !live.contains(&Arc::as_ptr(&p.3)))
            .cloned()
            .collect()
    }

    /// Takes over the state an earlier daemon handed over.
    pub(super) fn adopt(&mut self, state: handover::SupervisorState) {
        let now = Instant::now();
        self.next_id = state.next_id;
        let mut kept = 0;
        for a in state.apps {
            let id = a.id;
            let adopt_listener = |l: &handover::ListenerState| {
                // SAFETY: the fds were listed by the previous daemon and are taken once here.
                unsafe { Listener::adopt(l) }
            };
            let listeners = a
                .listeners
                .iter()
                .filter_map(|l| {
                    adopt_listener(l)
                        .map_err(|e| tracing::warn!("cannot take over listener {}: {e}", l.addr))
                        .ok()
                })
                .collect();
            let pids: Vec<u32> = a
                .slots
                .iter()
                .filter_map(|s| s.process.as_ref().map(|p| p.pid))
                .collect();
            let extra = a
                .extra
                .iter()
                .filter_map(|(k, l)| {
                    let listener = adopt_listener(l).ok()?;
                    let holders = match a.extra_holders.get(k) {
                        Some(h) => h
                            .iter()
                            .map(|(pid, keys)| (*pid, keys.iter().cloned().collect()))
                            .collect(),
                        None => pids.iter().map(|p| (*p, Default::default())).collect(),
                    };
                    Some((k.clone(), cluster::ExtraSocket { listener, holders }))
                })
                // One no live process holds is closed, as it would have been here.
                .filter(|(_, s)| !s.holders.is_empty())
                .collect();
            let mut slots = Vec::new();
            for s in &a.slots {
                // A slot whose log file cannot be opened still takes its process over (its
                // output goes nowhere, said in the daemon's log): nothing is left unsupervised.
                slots.push(self.new_slot(&a.spec, s.index).unwrap_or_else(|e| {
                    tracing::warn!("{e}; its output is discarded until a restart");
                    self.null_slot(&a.spec, s.index)
                }));
            }
            let mut app = App::new(id, a.spec, a.status, listeners, slots);
            app.extra = extra;
            app.env_version = a.env_version;
            app.generation = a.generation;
            app.previous = a.previous;
            self.apps.insert(id, app);
            for s in a.slots {
                let i = s.index;
                if self.apps.get(&id).and_then(|a| a.slot(i)).map(|x| x.index) != Some(i) {
                    continue;
                }
                let proc = s.process.map(|p| self.adopt_proc(id, i, p, now));
                kept += usize::from(proc.is_some());
                use handover::SlotStatus as S;
                let at = match s.timer_unix_ms {
                    Some(t) => now + Duration::from_millis(t.saturating_sub(unix_now())),
                    None => now + Duration::from_millis(s.timer_ms.unwrap_or(0)),
                };
                let state = match (s.status, proc) {
                    (S::Starting, Some(proc)) => SlotState::Starting { proc, deadline: at },
                    (S::Online, Some(proc)) => SlotState::Online { proc },
                    (S::WaitingRestart, _) => SlotState::WaitingRestart { until: at },
                    (S::Exited, _) => SlotState::Exited,
                    (S::Errored, _) => SlotState::Errored,
                    _ => SlotState::Stopped,
                };
                let Some(slot) = self.apps.get_mut(&id).and_then(|a| slot_mut!(a, i)) else {
                    continue;
                };
                slot.set(state);
                slot.restarts = s.restarts;
                slot.history.unstable = s.unstable;
                slot.history.backoff_step = s.backoff_step;
                slot.last_exit = s.last_exit;
            }
            // An app's own primary (`--primary`) is not in a state (`herd update` waits for
            // none, a keeper's state leaves it out): the next daemon after a death starts a
            // new one, which finds the workers as after a crash of the primary.
            let spec = self
                .apps
                .get(&id)
                .filter(|a| a.spec.primary)
                .map(|a| a.spec.clone());
            if let Some(spec) = spec {
                match self.new_slot(&spec, super::primary::PRIMARY) {
                    Ok(mut slot) => {
                        if let Some(app) = self.apps.get_mut(&id) {
                            // Started by its timer, once the daemon is whole (its Node files
                            // written).
                            if app.status == AppStatus::Running {
                                slot.set(SlotState::WaitingRestart { until: now });
                            }
                            app.primary = Some(slot);
                        }
                    }
                    Err(e) => tracing::warn!("cannot start the primary of app {}: {e}", spec.name),
                }
            }
            if self
                .apps
                .get(&id)
                .is_some_and(|a| a.status == AppStatus::Running)
            {
                if let Err(e) = self.start_watching(id) {
                    tracing::warn!("cannot watch files again: {e}");
                }
                self.arm_memory_check(id);
            }
        }
        self.bus.import(state.bus);
        for o in state.orphan_pipes {
            if self
                .apps
                .get(&o.app)
                .is_some_and(|a| (o.slot as usize) < a.slots.len())
            {
                // SAFETY: listed by the previous daemon, taken once here.
                let fd = unsafe { handover::adopt(o.pipe.fd) };
                self.start_pump(o.app, o.slot, o.stream, fd, o.pipe.partial);
            }
        }
        self.write_pids();
        tracing::info!(
            apps = self.apps.len(),
            processes = kept,
            "took over from the previous daemon"
        );
    }

    fn adopt_proc(&mut self, id: u32, i: u32, p: handover::ProcState, now: Instant) -> Proc {
        // An update waits for reloads to end: every process holds the app's listeners.
        let addrs = self
            .apps
            .get(&id)
            .map(|a| a.listeners.iter().map(|l| l.addr().to_string()).collect())
            .unwrap_or_default();
        let pid = p.pid;
        let pump = |s: &mut Self, stream, pipe: Option<handover::PipeState>| {
            let pipe = pipe?;
            // SAFETY: listed by the previous daemon, taken once here.
            let fd = unsafe { handover::adopt(pipe.fd) };
            s.start_pump(id, i, stream, fd, pipe.partial)
        };
        let out = pump(self, LogStream::Out, p.out);
        let err = pump(self, LogStream::Err, p.err);
        let channel = p.channel.and_then(|c| {
            // SAFETY: listed by the previous daemon, taken once here.
            let sock = std::os::unix::net::UnixStream::from(unsafe { handover::adopt(c.fd) });
            let queued = c
                .queued
                .into_iter()
                // SAFETY: as above.
                .map(|(b, fd)| (b, fd.map(|fd| unsafe { handover::adopt(fd) })))
                .collect();
            ipc::resume(
                sock,
                self.cfg.max_message_bytes,
                self.ipc_tx.clone(),
                move |msg| Event::Ipc { pid, msg },
                ipc::Resume {
                    unread: c.unread,
                    skipping: c.skipping,
                    queued,
                    dropped: c.dropped,
                },
            )
            .map_err(|e| tracing::warn!(pid, "cannot take over the IPC channel: {e}"))
            .ok()
        });
        self.pids.insert(pid, (id, i, Role::Current));
        if let Some(cg) = p.cgroup {
            self.cgroups.insert(pid, cg);
        }
        let uptime = match p.started_unix_ms {
            Some(t) => unix_now().saturating_sub(t),
            None => p.uptime_ms,
        };
        Proc {
            pid,
            since: now
                .checked_sub(Duration::from_millis(uptime))
                .unwrap_or(now),
            sample: None,
            channel,
            listens: p.listens,
            seq: p.seq,
            preload: p.node_preload,
            node_stop: super::cluster::NodeStop::Serving,
            env_version: p.env_version,
            primary: false,
            metrics: false,
            pm2: None,
            seen: Default::default(),
            out,
            err,
            health: Default::default(),
            addrs,
        }
    }
}

fn export_pipe(
    s: &logs::PumpState,
    kept: &mut Kept,
    journal: bool,
) -> std::io::Result<Option<handover::PipeState>> {
    if s.done.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(None);
    }
    // SAFETY: a pump that is not done still owns its pipe, open under this number.
    let fd = unsafe { BorrowedFd::borrow_raw(s.fd) };
    Ok(Some(handover::PipeState {
        fd: kept.keep(fd)?,
        // For a keeper: the line in progress changes with every read. It is in the pipe still
        // (`logs::pump` takes no unfinished line up to 8 KiB); a longer one is lost with a
        // daemon that dies.
        partial: match journal {
            true => Vec::new(),
            false => s
                .partial
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        },
    }))
}

fn export_proc(p: &Proc, kept: &mut Kept, journal: bool) -> std::io::Result<handover::ProcState> {
    let out = match &p.out {
        Some(s) => export_pipe(s, kept, journal)?,
        None => None,
    };
    let err = match &p.err {
        Some(s) => export_pipe(s, kept, journal)?,
        None => None,
    };
    let channel = match &p.channel {
        // For a keeper: the socket alone. What a dying daemon had read and not parsed, or
        // queued and not written, is lost with it.
        Some(ch) if journal => {
            // SAFETY: the channel keeps its socket open while a handle exists.
            let sock = unsafe { BorrowedFd::borrow_raw(ch.raw_fd()) };
            Some(handover::ChannelState {
                fd: kept.keep(sock)?,
                unread: Vec::new(),
                skipping: false,
                queued: Vec::new(),
                dropped: 0,
            })
        }
        Some(ch) => {
            let snap = ch.snapshot();
            let mut queued = Vec::new();
            for (bytes, fd) in snap.queued {
                let fd = match fd {
                    // SAFETY: the fd is owned by the queued message, which the channel holds.
                    Some(fd) => Some(kept.keep(unsafe { BorrowedFd::borrow_raw(fd) })?),
                    None => None,
                };
                queued.push((bytes, fd));
            }
            // SAFETY: the channel keeps its socket open while a handle exists.
            let sock = unsafe { BorrowedFd::borrow_raw(ch.raw_fd()) };
            Some(handover::ChannelState {
                fd: kept.keep(sock)?,
                unread: snap.unread,
                skipping: snap.skipping,
                queued,
                dropped: snap.dropped,
            })
        }
        None => None,
    };
    Ok(handover::ProcState {
        pid: p.pid,
        uptime_ms: p.since.elapsed().as_millis() as u64,
        started_unix_ms: None,
        env_version: p.env_version,
        listens: p.listens,
        seq: p.seq,
        node_preload: p.preload,
        out,
        err,
        channel,
        cgroup: None,
    })
}

/// Milliseconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Executes `exe` with `args` (`daemon`, or a `herd run` command line) and the handover at
/// `memfd`; returns only on failure.
fn exec(
    exe: &Path,
    args: &[std::ffi::OsString],
    memfd: RawFd,
    previous: Option<RawFd>,
    keeper: Option<RawFd>,
) -> String {
    let path = match CString::new(exe.as_os_str().as_bytes()) {
        Ok(p) => p,
        Err(_) => return "the path holds a NUL byte".into(),
    };
    let mut argv = vec![path.clone()];
    for a in args {
        match CString::new(a.as_bytes()) {
            Ok(a) => argv.push(a),
            Err(_) => return "an argument holds a NUL byte".into(),
        }
    }
    let mut env =
        handover::environment_without(&[handover::ENV, handover::EXE_ENV, handover::FAILED_ENV]);
    match CString::new(format!("{}={memfd}", handover::ENV)) {
        Ok(v) => env.push(v),
        Err(_) => return "the handover variable holds a NUL byte".into(),
    }
    if let Some(fd) = previous {
        match CString::new(format!("{}={fd}", handover::EXE_ENV)) {
            Ok(v) => env.push(v),
            Err(_) => return "the way-back variable holds a NUL byte".into(),
        }
    }
    if let Some(fd) = keeper {
        match CString::new(format!("{}={fd}", crate::keeper::ENV)) {
            Ok(v) => env.push(v),
            Err(_) => return "the keeper variable holds a NUL byte".into(),
        }
    }
    match nix::unistd::execve(&path, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => e.to_string(),
    }
}
