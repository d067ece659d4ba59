//! The supervisor's event loop: one task that owns every app, slot and process. Control
//! requests, child exits, readiness notices, instance messages and timers arrive as [`Event`]s
//! and are handled one at a time, so the state needs no locks and nothing polls while idle.
//! After every event it re-derives what follows from the state ([`State::after_event`]): each
//! slot's timer, which slots are routed, which sockets close, which deleted apps go, and which
//! waiting requests can be answered.
//!
//! It does not decide what a command or an exit means: that is `control.rs` and `slot.rs`.

use std::path::{Path, PathBuf};

use herd_proto::{AppStatus, ErrorCode, Reply};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{
    cgroup, App, Event, ReadyKind, Role, SlotState, State, TimerKey, WaitKind, Waiter,
    CGROUP_EMPTY_MAX, CGROUP_SHUTDOWN_MAX, WATCH_DEBOUNCE,
};
use crate::ipc::Inbound;
use crate::sockets::Listener;

impl State {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut ipc_rx: mpsc::Receiver<Event>,
    ) {
        loop {
            let deadline = match (self.next_deadline(), self.timers.next()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let event = tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
                Some(e) = ipc_rx.recv() => e,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    let journal_due = self
                        .timers
                        .deadline(TimerKey::Journal)
                        .is_some_and(|d| d <= Instant::now());
                    self.expire_requests();
                    self.fire_timers();
                    self.after_event();
                    if journal_due {
                        self.journal_now();
                    } else {
                        self.journal_after(false);
                    }
                    continue;
                }
            };
            let retry = matches!(event, Event::UpdateRetry);
            let message = matches!(event, Event::Ipc { .. } | Event::Remote(_));
            // What a command reports is what the keeper holds: a journal still due is written
            // before it is answered, and what the command changed right after.
            let (request, changes) = match &event {
                Event::Request { cmd, .. } => (true, !cmd.read_only()),
                _ => (false, true),
            };
            if request && self.timers.deadline(TimerKey::Journal).is_some() {
                self.journal_now();
            }
            self.handle(event);
            self.after_event();
            match (request, changes) {
                (true, true) => self.journal_now(),
                (true, false) => {}
                (false, _) => self.journal_after(message),
            }
            if self.updating.is_some() {
                self.update_step(&mut rx, &mut ipc_rx, !retry);
            }
            if self.done {
                break;
            }
        }
        // Nothing is left in the leaves by now unless a process would not die; the parent
        // goes with them, as systemd removes a unit's cgroup.
        if let Some(tree) = self.containment.tree() {
            tree.remove_all(CGROUP_SHUTDOWN_MAX);
        }
        if let Some(path) = &self.cfg.pids_file {
            let _ = std::fs::remove_file(path);
        }
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Request { cmd, reply } => self.on_request(cmd, reply),
            Event::LogFiles {
                target,
                stream,
                reply,
            } => {
                let _ = reply.send(self.log_files(&target, stream));
            }
            Event::Exited { pid, status } => {
                if !self.on_probe_exit(pid, &status) {
                    self.on_exit(pid, status);
                }
            }
            Event::Probe {
                pid,
                kind,
                ok,
                detail,
            } => self.on_probe_result(pid, kind, ok, detail),
            Event::Notice(n) => {
                if let Some(ok) = n.watchdog {
                    self.on_heartbeat(n.pid, ok);
                }
                if n.ready {
                    self.on_ready(n.pid, ReadyKind::Explicit);
                }
            }
            Event::Ipc { pid, msg } => match msg {
                Inbound::Ready => self.on_ready(pid, ReadyKind::Explicit),
                Inbound::Cluster(m) => self.on_cluster(pid, m),
                Inbound::Preload(Some(m)) => self.on_preload(pid, m),
                Inbound::Preload(None) => {}
                Inbound::HandleAck => self.on_handle_ack(pid),
                Inbound::HandleNack => self.instance_warn(
                    pid,
                    format_args!("a Node worker refused a socket herd sent it"),
                ),
                Inbound::Closed => self.on_channel_closed(pid),
                Inbound::Malformed(why) => self.on_bad_message(
                    pid,
                    format_args!("a message that is not JSON was dropped: {why}"),
                ),
                Inbound::TooLarge(limit) => self.on_bad_message(
                    pid,
                    format_args!(
                        "a message longer than {limit} bytes was dropped; send smaller messages"
                    ),
                ),
                Inbound::App(v) if self.is_primary(pid) => self.on_primary_message(pid, v),
                Inbound::App(v)
                    if v.get("herd").and_then(serde_json::Value::as_str) == Some("health") =>
                {
                    let ok = v
                        .get("ok")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(true);
                    self.on_heartbeat(pid, ok);
                }
                Inbound::App(v) => match herd_proto::worker::MetricsMsg::read(&v) {
                    Some(m) => self.on_metrics_msg(pid, m),
                    None => self.on_app_message(pid, v),
                },
            },
            Event::PrimaryCall { pid, msg } => self.on_primary_call(pid, msg),
            Event::Scrape {
                timeout,
                sum,
                reply,
            } => self.start_scrape(timeout, sum, reply),
            Event::Remote(env) => self.on_remote(env),
            Event::FileChanged { app } => {
                // Each change moves the deadline: the reload comes once the files are quiet.
                if self.apps.contains_key(&app) {
                    self.timers
                        .set(TimerKey::Watch { app }, Instant::now() + WATCH_DEBOUNCE);
                }
            }
            Event::Update { req, reply } => self.on_update(req, reply),
            Event::DaemonFds(fds) => self.on_daemon_fds(fds),
            Event::KeeperGone => self.on_keeper_gone(),
            Event::KeeperExit { pid, status, seq } => self.on_keeper_exit(pid, status, seq),
            Event::UpdateRetry => self.on_update_retry(),
            Event::CgroupEmptied { app } => {
                if let Some(a) = self.apps.get_mut(&app) {
                    a.emptying = a.emptying.saturating_sub(1);
                }
            }
        }
    }

    /// Hands every timer that is due to what it is for.
    pub(super) fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Slot { app, slot } => self.on_timer(app, slot),
                TimerKey::Probe { pid, kind } => self.on_probe_timer(pid, kind),
                TimerKey::Retire { pid } => {
                    if let Some((_, _, Role::Retiring)) = self.pids.get(&pid) {
                        tracing::info!(
                            pid,
                            "kill timeout passed for a reloaded-away process; sending SIGKILL"
                        );
                        self.os
                            .kill_tree(pid, self.cgroups.get(&pid).map(PathBuf::as_path));
                    }
                }
                TimerKey::Memory { app } => self.on_memory_check(app),
                TimerKey::Handoff { app } => self.on_handoff_timer(app),
                TimerKey::Cron { app } => self.on_cron_timer(app),
                TimerKey::Claims { app } => self.on_claims_timer(app),
                TimerKey::Scrape { id } => self.finish_scrape(id),
                TimerKey::Trigger { id } => self.finish_trigger(id),
                // Written by `run`, right after the timers.
                TimerKey::Journal => {}
                TimerKey::Watch { app } => {
                    let Some(a) = self.apps.get(&app) else {
                        continue;
                    };
                    if a.status == AppStatus::Running && a.watcher.is_some() {
                        tracing::info!(app = %a.spec.name, "watched files changed; reloading");
                        let _ = self.start_reload(app);
                    }
                }
            }
        }
    }

    pub(super) fn after_event(&mut self) {
        self.unroute_moved();
        if self.pids_dirty.get() {
            self.write_pids();
        }
        // A reload waits on its active slot only while that slot reloads (or its next process,
        // having taken over from a crashed one, starts). A slot taken out of the reload any
        // other way (a restart, a stop) lets the reload move on instead of waiting forever.
        let stalled: Vec<u32> = self
            .apps
            .values()
            .filter(|a| {
                a.reload.as_ref().and_then(|r| r.active).is_some_and(|i| {
                    !a.slot(i).is_some_and(|s| match &s.state {
                        SlotState::Reloading { .. } | SlotState::Starting { .. } => true,
                        // Promoted, and waiting for its readiness probe's first verdict.
                        SlotState::Online { proc } => {
                            a.spec.readiness.is_some() && proc.health.ready.is_none()
                        }
                        _ => false,
                    })
                })
            })
            .map(|a| a.id)
            .collect();
        for id in stalled {
            if let Some(r) = self.apps.get_mut(&id).and_then(|a| a.reload.as_mut()) {
                r.active = None;
            }
            self.reload_step(id);
        }
        // A process that came online (whichever transition it took) is published once.
        let mut online = Vec::new();
        for app in self.apps.values_mut() {
            for s in app.slots.iter_mut().chain(app.primary.as_mut()) {
                let now = match &s.state {
                    SlotState::Online { proc } => Some(proc.pid),
                    SlotState::Reloading {
                        current,
                        online: true,
                        ..
                    } => Some(current.pid),
                    _ => None,
                };
                if now.is_some() && now != s.told_online {
                    online.push((app.id, s.index, now));
                }
                s.told_online = now.or(s.told_online);
            }
        }
        for (id, i, pid) in online {
            self.lifecycle_event(id, i, pid, "online", serde_json::Value::Null);
        }
        self.follow_order();
        self.start_probes();
        let wall = self.os.wall_clock();
        let mut removed = Vec::new();
        for app in self.apps.values_mut() {
            // The app's cron timer: armed while it runs, as its slots' are while they wait.
            super::cron::sync(app, &mut self.timers, wall);
            // A slot's timer is its state's deadline: armed while the state waits, moved
            // when it changes, gone with it. The primary's too.
            for s in app.slots.iter().chain(app.primary.as_ref()) {
                let key = TimerKey::Slot {
                    app: app.id,
                    slot: s.index,
                };
                match s.state.deadline() {
                    Some(at) if self.timers.deadline(key) != Some(at) => self.timers.set(key, at),
                    Some(_) => {}
                    None => {
                        self.timers.cancel(key);
                    }
                }
            }
            while let Some(slot) = app.slots.pop_if(|s| matches!(s.state, SlotState::Gone)) {
                for l in &mut app.listeners {
                    l.remove_slot(slot.index);
                }
                app.routed = None;
            }
            if app.status == AppStatus::Stopped && !app.has_processes() {
                if !app.listeners.is_empty() {
                    app.listeners.clear();
                    app.routed = None;
                }
                // An app stopped while moving: the old addresses go too.
                if app.moving {
                    app.retired.clear();
                    app.handoff.clear();
                    app.moving = false;
                    app.routed_each.clear();
                }
                app.extra.clear();
                if app.deleting {
                    removed.push(app.id);
                }
            }
            if app.status == AppStatus::Running {
                route(app);
            }
        }
        for id in removed {
            self.apps.remove(&id);
            self.timers.cancel_app(id);
        }
        // The keeper lets go of what was closed before a waiting command hears that it was
        // (a port is free once `herd stop` returns).
        if self.waiters.iter().any(|w| self.waiter_ready(w)) {
            self.journal_now();
        }
        self.answer_waiters();
    }

    /// Whether every app a waiting command waits for has settled.
    fn waiter_ready(&self, w: &Waiter) -> bool {
        w.apps.iter().all(|id| {
            self.apps
                .get(id)
                .is_none_or(|a| a.settled() && (!a.deleting))
        })
    }

    pub(super) fn answer_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            if !self.waiter_ready(&w) {
                self.waiters.push(w);
                continue;
            }
            let reply = match w.kind {
                WaitKind::Apps => {
                    let ids: Vec<u32> = w
                        .apps
                        .iter()
                        .copied()
                        .filter(|id| self.apps.contains_key(id))
                        .collect();
                    Reply::apps(self.infos(&ids, false))
                }
                WaitKind::Reload => {
                    let failures: Vec<String> = w
                        .apps
                        .iter()
                        .filter_map(|id| self.reload_errors.remove(id))
                        .collect();
                    if failures.is_empty() {
                        let ids: Vec<u32> = w
                            .apps
                            .iter()
                            .copied()
                            .filter(|id| self.apps.contains_key(id))
                            .collect();
                        Reply::apps(self.infos(&ids, false))
                    } else {
                        Reply::error(ErrorCode::ReloadFailed, failures.join("; "))
                    }
                }
                WaitKind::Deleted(msg) => Reply::done(msg),
                WaitKind::Kill => {
                    self.done = true;
                    Reply::done("stopped every app; the daemon exits")
                }
            };
            let _ = w.reply.send(reply);
        }
    }

    pub(super) fn wait(&mut self, apps: Vec<u32>, kind: WaitKind, reply: oneshot::Sender<Reply>) {
        self.waiters.push(Waiter { apps, kind, reply });
    }

    /// Removes a killed process's cgroup once it is empty; until then the app is not settled,
    /// so a stop is answered only when nothing of the instance runs any more.
    pub(super) fn empty_cgroup(&mut self, id: u32, leaf: PathBuf) {
        // Usually the process left nothing behind and the leaf goes at once.
        if std::fs::remove_dir(&leaf).is_ok() {
            return;
        }
        if let Some(app) = self.apps.get_mut(&id) {
            app.emptying += 1;
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            cgroup::remove_when_empty(leaf, CGROUP_EMPTY_MAX).await;
            let _ = tx.send(Event::CgroupEmptied { app: id });
        });
    }

    /// Writes the pids of running instances (for [`sweep_leftovers`] after a crash). A failed
    /// write (full disk) is counted and tried again after the next event.
    pub(super) fn write_pids(&self) {
        let Some(path) = &self.cfg.pids_file else {
            return;
        };
        let mut text = String::new();
        for pid in self.pids.keys() {
            text.push_str(&pid.to_string());
            text.push('\n');
        }
        if let Some(tree) = self.containment.tree() {
            text.push_str(&format!("cgroup {}\n", tree.path().display()));
        }
        let tmp = path.with_extension("tmp");
        let r = write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
        match r {
            Ok(()) => {
                self.pids_dirty.set(false);
                if crate::health::STATE.succeeded() {
                    tracing::info!("{} is written again", path.display());
                }
            }
            Err(e) => {
                self.pids_dirty.set(true);
                let _ = std::fs::remove_file(&tmp);
                if crate::health::STATE.failed(text.len(), &e) {
                    tracing::warn!(
                        "cannot write {}: {e}; herd tries again at the next change",
                        path.display()
                    );
                }
            }
        }
    }
}

/// Writes a file of HERD_HOME: created 0600, truncated, never through a symbolic link.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(bytes)
}

/// Re-attaches the selector when the set of serving slots changed.
pub(super) fn route(app: &mut App) {
    super::moving::prune(app);
    if !app
        .listeners
        .iter()
        .chain(&app.retired)
        .any(Listener::is_per_slot)
    {
        return;
    }
    let serving: Vec<&super::Slot> = app.slots.iter().filter(|s| s.state.routed()).collect();
    // With a readiness probe, only the processes that pass it; if none does, all of them
    // (connections queue on a sick instance rather than being refused by none).
    let mut live: Vec<u32> = serving
        .iter()
        .filter(|s| {
            app.spec.readiness.is_none()
                || s.state.proc().is_some_and(|p| p.health.passes_readiness())
        })
        .map(|s| s.index)
        .collect();
    app.routing_fallback = live.is_empty() && !serving.is_empty() && app.spec.readiness.is_some();
    if app.routing_fallback {
        live = serving.iter().map(|s| s.index).collect();
    }
    if app.moving {
        super::moving::route(app, &live);
        return;
    }
    if app.routed.as_ref() == Some(&live) {
        return;
    }
    for l in &app.listeners {
        if let Err(e) = l.steer(app.spec.balance, &live) {
            tracing::error!(app = %app.spec.name, "cannot attach the reuseport selector: {e}");
        }
    }
    app.routed = Some(live);
    app.routing_changes += 1;
}
