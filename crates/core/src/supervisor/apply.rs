//! `herd apply` and `herd rollback` (docs/apply.md): a running app takes a new spec by a
//! rolling reload — script, arguments, directory, interpreter, environment, kill settings,
//! probes, schedules — or by a scale when only the instance count changed. The spec it had is
//! kept (a few generations) for `rollback`. A reload of the new spec that fails puts the old
//! spec back: the slots not reached yet never left their old processes, and those already
//! reloaded are reloaded back.

use herd_proto::{same_addresses, AppSpec, ErrorCode, ScaleTo};

use super::control::{err, Answer};
use super::error::CommandError;
use super::State;
use super::WaitKind;

/// Earlier specs kept per app for `rollback`.
pub(super) const GENERATIONS: usize = 3;

impl State {
    /// `herd apply` of one app's spec.
    pub(super) fn apply(&mut self, mut spec: AppSpec) -> Result<Answer, CommandError> {
        let Some(id) = self
            .apps
            .values()
            .find(|a| a.spec.name == spec.name)
            .map(|a| a.id)
        else {
            return self.start_app(spec).map(Answer::app);
        };
        self.check_spec(&spec)?;
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(err(ErrorCode::UnknownApp, "the app went away"));
        };
        if spec.primary != app.spec.primary {
            return Err(err(
                ErrorCode::InvalidSpec,
                format!(
                    "app {:?}: apply does not turn --primary on or off; `herd delete {}` and start it again",
                    spec.name, spec.name
                ),
            ));
        }
        let moved = !same_addresses(&app.spec.listen, &spec.listen);
        if moved {
            // The new addresses are bound now, before any process changes (moving.rs).
            if app.reload.is_some() {
                return Err(err(
                    ErrorCode::Busy,
                    format!(
                        "app {:?} is reloading; apply the new addresses once it is done",
                        spec.name
                    ),
                ));
            }
            let balance = spec.balance;
            self.move_listeners(id, &mut spec.listen, balance)?;
        } else {
            // The addresses as bound (a port 0 keeps the port it got); names may change.
            for (w, r) in spec.listen.iter_mut().zip(&app.spec.listen) {
                w.addr = r.addr.clone();
            }
        }
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(err(ErrorCode::UnknownApp, "the app went away"));
        };
        let target = spec.instances;
        let now = app.slots.len() as u32;
        let same_but_size = AppSpec {
            instances: app.spec.instances,
            ..spec.clone()
        } == app.spec;
        if same_but_size && target == app.spec.instances {
            return Ok(Answer::app(id));
        }
        app.previous.push(app.spec.clone());
        if app.previous.len() > GENERATIONS {
            app.previous.remove(0);
        }
        app.generation += 1;
        let name = spec.name.clone();
        if same_but_size {
            tracing::info!(app = %name, from = now, to = target, "apply: scale");
            app.spec.instances = target;
            return self.scale(&name, ScaleTo::Exactly(target)).map(Answer::app);
        }
        tracing::info!(app = %name, generation = app.generation, "apply: a rolling reload with the new spec");
        let instances = app.spec.instances;
        let old = std::mem::replace(&mut app.spec, AppSpec { instances, ..spec });
        let watch_changed =
            old.watch != app.spec.watch || old.watch_ignore != app.spec.watch_ignore;
        let logs_changed = old.log != app.spec.log;
        app.applying = Some(Box::new(old));
        app.env_version += 1;
        app.cron = super::cron::CronRestart::of(&app.spec);
        if watch_changed {
            app.watcher = None;
            if let Err(e) = self.start_watching(id) {
                tracing::warn!("{e}");
            }
        }
        if logs_changed {
            self.reopen_slot_logs(id);
        }
        self.reload_errors.remove(&id);
        self.start_reload(id)?;
        if target != now {
            self.scale(&name, ScaleTo::Exactly(target))?;
        }
        Ok(Answer::Later(vec![id], WaitKind::Reload))
    }

    /// `herd rollback`: the app's previous spec, applied again (the current one becomes the
    /// previous: a second rollback comes back).
    pub(super) fn rollback(&mut self, target: &str) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        let [id] = ids.as_slice() else {
            return Err(err(
                ErrorCode::BadRequest,
                "rollback takes one app, not all: herd rollback NAME",
            ));
        };
        let Some(app) = self.apps.get_mut(id) else {
            return Err(err(ErrorCode::UnknownApp, "the app went away"));
        };
        let Some(previous) = app.previous.pop() else {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "app {:?} has no earlier spec to go back to (it was never changed by herd apply)",
                    app.spec.name
                ),
            ));
        };
        // Applying pushes the current spec: what we go back to is not kept twice.
        let answer = self.apply(previous.clone());
        if answer.is_err() {
            if let Some(app) = self.apps.get_mut(id) {
                app.previous.push(previous);
            }
        }
        answer
    }

    /// `herd resurrect`: the generation and earlier specs app `target` was saved with.
    pub(super) fn restore_history(
        &mut self,
        target: &str,
        generation: u32,
        mut previous: Vec<AppSpec>,
    ) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        let [id] = ids.as_slice() else {
            return Err(err(ErrorCode::BadRequest, "restore takes one app, not all"));
        };
        for spec in &previous {
            spec.validate().map_err(|e| {
                err(
                    ErrorCode::InvalidSpec,
                    format!("an earlier spec of {target:?}: {e}"),
                )
            })?;
        }
        let Some(app) = self.apps.get_mut(id) else {
            return Err(err(ErrorCode::UnknownApp, "the app went away"));
        };
        let extra = previous.len().saturating_sub(GENERATIONS);
        previous.drain(..extra);
        app.previous = previous;
        app.generation = generation.max(1);
        Ok(Answer::app(*id))
    }

    /// A reload of an applied spec failed: the previous spec is back, and the slots already
    /// running the failed one are reloaded back. `msg` is the failure, told to the caller.
    pub(super) fn apply_failed(&mut self, id: u32) -> Option<String> {
        let app = self.apps.get_mut(&id)?;
        let old = app.applying.take()?;
        let failed = app.env_version;
        let moved = !same_addresses(&old.listen, &app.spec.listen);
        let logs_changed = old.log != app.spec.log;
        app.spec = *old;
        if moved {
            let (mut listen, balance) = (app.spec.listen.clone(), app.spec.balance);
            match self.move_listeners(id, &mut listen, balance) {
                Ok(()) => {
                    if let Some(app) = self.apps.get_mut(&id) {
                        app.spec.listen = listen;
                    }
                }
                Err(e) => tracing::error!("cannot move back to the previous addresses: {e}"),
            }
        }
        let app = self.apps.get_mut(&id)?;
        app.previous.pop();
        app.generation = app.generation.saturating_sub(1);
        app.env_version += 1;
        app.cron = super::cron::CronRestart::of(&app.spec);
        let reloaded = app
            .slots
            .iter()
            .filter_map(|s| s.state.proc())
            .any(|p| p.env_version == failed);
        if logs_changed {
            self.reopen_slot_logs(id);
        }
        if reloaded {
            let _ = self.start_reload(id);
            Some("the previous spec is back, and the instances already reloaded are being reloaded back to it".into())
        } else {
            Some("the previous spec is back".into())
        }
    }

    /// The checks `start_app` makes of a spec that need no system change.
    pub(super) fn check_spec(&self, spec: &AppSpec) -> Result<(), CommandError> {
        spec.validate()
            .map_err(|e| err(ErrorCode::InvalidSpec, e.to_string()))?;
        super::check_program(spec).map_err(|m| err(ErrorCode::InvalidSpec, m))?;
        self.check_depends_on(spec)?;
        crate::user::resolve(spec.uid.as_deref(), spec.gid.as_deref())
            .map_err(|e| err(ErrorCode::InvalidSpec, e.to_string()))?;
        if let Some(expr) = &spec.cron_restart {
            crate::schedule::Schedule::parse(expr)
                .map_err(|e| err(ErrorCode::InvalidSpec, format!("cron_restart {e}")))?;
        }
        if super::parse_signal(&spec.kill_signal).is_none() {
            return Err(err(
                ErrorCode::InvalidSpec,
                format!(
                    "unknown kill signal {:?}; use a name such as SIGTERM, SIGINT or SIGQUIT",
                    spec.kill_signal
                ),
            ));
        }
        Ok(())
    }
}
