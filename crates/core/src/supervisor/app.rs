//! App lifecycle: start, resume, stop, restart and scale whole apps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use herd_proto::{AppSpec, AppStatus, ErrorCode, ScaleTo};

use super::primary::PRIMARY;
use super::{err, overlaps, App, CommandError, Event, Slot, SlotState, State, Then, TimerKey};
use crate::logs::LogFile;
use crate::policy::History;
use crate::sockets::{ListenAddr, Listener};

impl State {
    pub(super) fn start_app(&mut self, mut spec: AppSpec) -> Result<u32, CommandError> {
        spec.validate()
            .map_err(|e| err(ErrorCode::InvalidSpec, e.to_string()))?;
        if let Some(other) = self.apps.values().find(|a| a.spec.name == spec.name) {
            return Err(err(
                ErrorCode::NameTaken,
                format!(
                    "an app named {:?} exists already (id {}); use `herd restart {}`, `herd delete {}`, or --name to pick another name",
                    spec.name, other.id, spec.name, spec.name
                ),
            ));
        }
        self.check_spec(&spec)?;
        let listeners = self.bind_listeners(&spec, None)?;
        // Record the real port when port 0 was asked, so restarts keep it.
        for (ls, l) in spec.listen.iter_mut().zip(&listeners) {
            ls.addr = l.addr().to_string();
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut slots = Vec::new();
        for i in 0..spec.instances {
            slots.push(
                self.new_slot(&spec, i)
                    .map_err(|e| err(ErrorCode::Internal, e))?,
            );
        }
        let primary = if spec.primary {
            Some(
                self.new_slot(&spec, PRIMARY)
                    .map_err(|e| err(ErrorCode::Internal, e))?,
            )
        } else {
            None
        };
        let mut app = App::new(id, spec, AppStatus::Running, listeners, slots);
        app.primary = primary;
        self.apps.insert(id, app);
        if let Err(e) = self.start_watching(id) {
            self.apps.remove(&id);
            return Err(err(ErrorCode::InvalidSpec, e));
        }
        // PM2's `autostart: false`: registered, stopped, its ports closed until started.
        if self.apps.get(&id).is_some_and(|a| !a.spec.autostart) {
            if let Some(app) = self.apps.get_mut(&id) {
                app.status = AppStatus::Stopped;
                app.listeners.clear();
                app.watcher = None;
            }
            return Ok(id);
        }
        // An app it depends on is not ready: it waits (`order::follow_order` starts it).
        if !self.waiting_for(id).is_empty() {
            if let Some(app) = self.apps.get_mut(&id) {
                app.waiting = true;
            }
            self.arm_memory_check(id);
            return Ok(id);
        }
        // The primary first: the workers herd starts now wait for its forks to claim them.
        if self.apps.get(&id).is_some_and(|a| a.primary.is_some()) {
            if let Err(e) = self.try_spawn(id, PRIMARY) {
                self.apps.remove(&id);
                return Err(err(ErrorCode::Spawn, e.to_string()));
            }
        }
        let n = self.apps.get(&id).map_or(0, |a| a.slots.len() as u32);
        for i in 0..n {
            if let Err(e) = self.try_spawn(id, i) {
                if i == 0 {
                    // Nothing started: refuse the whole app rather than leave a broken one.
                    self.apps.remove(&id);
                    return Err(err(ErrorCode::Spawn, e.to_string()));
                }
                self.spawn_failed(id, i, &e.to_string());
            }
        }
        self.arm_memory_check(id);
        Ok(id)
    }

    pub(super) fn new_slot(&self, spec: &AppSpec, index: u32) -> Result<Slot, String> {
        let logs = self.open_slot_logs(spec, index)?;
        let mut slot = Slot::new(index, logs.out, logs.err);
        slot.both = logs.both;
        Ok(slot)
    }

    /// A slot whose output is discarded (its log file could not be opened).
    pub(super) fn null_slot(&self, spec: &AppSpec, index: u32) -> Slot {
        let open = || Arc::new(Mutex::new(LogFile::discard(&spec.log)));
        Slot::new(index, open(), open())
    }

    pub(super) fn bind_listeners(
        &self,
        spec: &AppSpec,
        skip: Option<u32>,
    ) -> Result<Vec<Listener>, CommandError> {
        let mut out = Vec::new();
        for ls in &spec.listen {
            let addr: ListenAddr = ls
                .addr
                .parse()
                .map_err(|m: String| err(ErrorCode::InvalidSpec, m))?;
            if let Some(other) = self.apps.values().find(|a| {
                Some(a.id) != skip && a.listeners.iter().any(|l| overlaps(l.addr(), &addr))
            }) {
                return Err(err(
                    ErrorCode::Listen,
                    format!(
                        "{addr} is already used by app {:?} (id {}); choose another port or stop that app",
                        other.spec.name, other.id
                    ),
                ));
            }
            let l = Listener::bind(&addr, spec.balance, spec.instances)
                .map_err(|e| err(ErrorCode::Listen, e.to_string()))?;
            out.push(l);
        }
        Ok(out)
    }

    pub(super) fn resume(&mut self, id: u32) -> Result<(), CommandError> {
        let Some(app) = self.apps.get(&id) else {
            return Err(gone(id));
        };
        if app.status == AppStatus::Running || app.has_processes() {
            return Ok(());
        }
        let listeners = self.bind_listeners(&app.spec, Some(id))?;
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(gone(id));
        };
        app.listeners = listeners;
        app.status = AppStatus::Running;
        app.routed = None;
        for s in &mut app.slots {
            s.history = History::default();
        }
        let gone: Vec<bool> = app
            .slots
            .iter()
            .map(|s| matches!(s.state, SlotState::Gone))
            .collect();
        if let Some(p) = self.apps.get_mut(&id).and_then(|a| a.primary.as_mut()) {
            p.history = History::default();
        }
        if self.waiting_for(id).is_empty() {
            if self.apps.get(&id).is_some_and(|a| a.primary.is_some()) {
                self.launch(id, PRIMARY);
            }
            for (i, gone) in gone.into_iter().enumerate() {
                if !gone {
                    self.launch(id, i as u32);
                }
            }
        } else if let Some(app) = self.apps.get_mut(&id) {
            // An app it depends on is not ready: it waits (`order::follow_order`).
            app.waiting = true;
        }
        self.arm_memory_check(id);
        if let Err(e) = self.start_watching(id) {
            tracing::warn!("{e}");
        }
        Ok(())
    }

    /// Starts the app's file watcher, if it asked for one.
    pub(super) fn start_watching(&mut self, id: u32) -> Result<(), String> {
        let Some(app) = self.apps.get_mut(&id) else {
            return Ok(());
        };
        if app.spec.watch.is_empty() || app.watcher.is_some() {
            return Ok(());
        }
        let tx = self.tx.clone();
        let w = crate::watch::start(&app.spec.watch, app.spec.watch_ignore.clone(), move || {
            let _ = tx.send(Event::FileChanged { app: id });
        })?;
        app.watcher = Some(w);
        Ok(())
    }

    pub(super) fn stop_app(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        app.status = AppStatus::Stopped;
        app.watcher = None;
        app.waiting = false;
        app.stop_after.clear();
        self.timers.cancel(TimerKey::Watch { app: id });
        if app.reload.take().is_some() {
            self.reload_errors.insert(
                id,
                format!(
                    "the reload of {} was cut short: the app was stopped",
                    app.spec.name
                ),
            );
        }
        let n = app.slots.len() as u32;
        if app.primary.is_some() {
            self.stop_slot(id, PRIMARY, Then::Stay);
        }
        for i in 0..n {
            self.stop_slot(id, i, Then::Stay);
        }
    }

    /// `--update-env`: the app's next processes get `fresh` (with its declared keys kept).
    pub(super) fn update_env(&mut self, id: u32, fresh: &BTreeMap<String, String>) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let env = app.spec.updated_env(fresh);
        if env != app.spec.env {
            app.spec.env = env;
            app.env_version += 1;
            tracing::info!(app = %app.spec.name, version = app.env_version, "environment updated");
        }
    }

    pub(super) fn restart_app(&mut self, id: u32) -> Result<(), CommandError> {
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(gone(id));
        };
        if app.status == AppStatus::Stopped && !app.has_processes() {
            return self.resume(id);
        }
        app.status = AppStatus::Running;
        let slots = app.slots.len() as u32;
        let with_primary = app.primary.is_some();
        for i in with_primary.then_some(PRIMARY).into_iter().chain(0..slots) {
            let Some(slot) = self.apps.get_mut(&id).and_then(|a| slot_mut!(a, i)) else {
                continue;
            };
            slot.history = History::default();
            if slot.state.proc().is_some() {
                // (A slot draining away stays on its way out: see stop_slot.)
                self.stop_slot(id, i, Then::Restart);
            } else if !matches!(slot.state, SlotState::Gone) {
                slot.restarts += 1;
                self.launch(id, i);
            }
        }
        Ok(())
    }

    pub(super) fn scale(&mut self, target: &str, to: ScaleTo) -> Result<u32, CommandError> {
        if target == "all" {
            return Err(err(
                ErrorCode::BadRequest,
                "scale one app at a time: herd scale <name> <N>",
            ));
        }
        let id = self
            .resolve(target)?
            .first()
            .copied()
            .ok_or_else(|| err(ErrorCode::UnknownApp, format!("no app {target}")))?;
        let current = self.apps.get(&id).map_or(0, |a| a.spec.instances) as i64;
        let wanted = match to {
            ScaleTo::Exactly(n) => n as i64,
            ScaleTo::Delta(d) => current + d as i64,
        };
        if wanted < 1 {
            return Err(err(
                ErrorCode::InvalidSpec,
                format!("an app needs at least 1 instance (asked for {wanted}); use `herd stop {target}` to stop it"),
            ));
        }
        if wanted > AppSpec::MAX_INSTANCES as i64 {
            return Err(err(
                ErrorCode::InvalidSpec,
                format!("{wanted} instances is more than herd runs per app (at most 1024)"),
            ));
        }
        let wanted = wanted as u32;
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(gone(id));
        };
        let running = app.status == AppStatus::Running;
        app.spec.instances = wanted;
        let have = app.slots.len() as u32;
        // Slots that stay or come back.
        for i in 0..wanted.min(have) {
            let Some(slot) = self.apps.get_mut(&id).and_then(|a| slot_mut!(a, i)) else {
                continue;
            };
            match slot.state.take() {
                SlotState::Stopping {
                    proc,
                    then: Then::Remove,
                    deadline,
                } => slot.set(SlotState::Stopping {
                    proc,
                    // Wanted again: back once stopped, if the app runs.
                    then: if running { Then::Restart } else { Then::Stay },
                    deadline,
                }),
                SlotState::Draining { proc, .. } => slot.set(SlotState::Online { proc }),
                // Removed already, and wanted again: it starts afresh.
                SlotState::Gone => {
                    slot.set(SlotState::Stopped);
                    if running {
                        self.launch(id, i);
                    }
                }
                other => slot.set(other),
            }
        }
        for i in have..wanted {
            let Some(spec) = self.apps.get(&id).map(|a| a.spec.clone()) else {
                return Err(gone(id));
            };
            let slot = self
                .new_slot(&spec, i)
                .map_err(|e| err(ErrorCode::Internal, e))?;
            let Some(app) = self.apps.get_mut(&id) else {
                return Err(gone(id));
            };
            app.slots.push(slot);
            if running {
                for l in &mut app.listeners {
                    l.add_slot(i)
                        .map_err(|e| err(ErrorCode::Listen, e.to_string()))?;
                }
                app.routed = None;
                self.launch(id, i);
            }
        }
        for i in wanted..have {
            // A slot that goes is no part of a reload any more: its next process is stopped
            // with it, and the reload moves on (or ends) without it.
            self.drain_slot(id, i);
        }
        self.reload_step(id);
        Ok(id)
    }
}

/// The answer about an app that went away while a command was about it.
fn gone(id: u32) -> CommandError {
    err(
        ErrorCode::UnknownApp,
        format!("app {id} went away meanwhile; see `herd list`"),
    )
}
