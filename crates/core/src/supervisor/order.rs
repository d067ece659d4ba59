//! Startup order between apps (`depends_on`, `--after`, docs/health.md): an app whose
//! dependencies are not all ready when it is started (or resumed) waits, its slots not
//! launched, and starts once they are — every instance of each online, and passing its
//! readiness probe if it has one. Stopping several apps at once (`herd stop all`, `herd kill`,
//! `herd delete all`) stops an app only after the apps of the same stop that depend on it have
//! no process left: reverse order.

use herd_proto::{AppStatus, ErrorCode};

use super::error::CommandError;
use super::primary::PRIMARY;
use super::{App, SlotState, State};

/// Whether `app` is ready for the apps that depend on it.
fn ready(app: &App) -> bool {
    app.status == AppStatus::Running
        && !app.waiting
        && !app.slots.is_empty()
        && app.slots.iter().all(|s| match &s.state {
            SlotState::Online { proc }
            | SlotState::Reloading {
                current: proc,
                online: true,
                ..
            } => app.spec.readiness.is_none() || proc.health.passes_readiness(),
            _ => false,
        })
}

impl State {
    /// Checks an app's `depends_on` at its start: every name is an app of this daemon (not
    /// itself). A cycle cannot form here: what it depends on exists already.
    pub(super) fn check_depends_on(&self, spec: &herd_proto::AppSpec) -> Result<(), CommandError> {
        for dep in &spec.depends_on {
            if *dep == spec.name {
                return Err(CommandError::new(
                    ErrorCode::InvalidSpec,
                    format!(
                        "app {:?} depends on itself (depends_on); remove it from the list",
                        spec.name
                    ),
                ));
            }
            if !self.apps.values().any(|a| a.spec.name == *dep) {
                return Err(CommandError::new(
                    ErrorCode::InvalidSpec,
                    format!(
                        "app {:?} depends on {dep:?} (depends_on), which herd does not run; start {dep:?} first, or put both in one app file",
                        spec.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The apps app `id` depends on that are not ready yet.
    pub(super) fn waiting_for(&self, id: u32) -> Vec<String> {
        let Some(app) = self.apps.get(&id) else {
            return Vec::new();
        };
        app.spec
            .depends_on
            .iter()
            .filter(|dep| !self.apps.values().any(|a| a.spec.name == **dep && ready(a)))
            .cloned()
            .collect()
    }

    /// Starts the slots of every waiting app whose dependencies became ready, and stops
    /// every app whose dependents (of the same stop) are gone. After every event.
    pub(super) fn follow_order(&mut self) {
        let go: Vec<u32> = self
            .apps
            .values()
            .filter(|a| a.waiting && a.status == AppStatus::Running)
            .map(|a| a.id)
            .filter(|&id| self.waiting_for(id).is_empty())
            .collect();
        for id in go {
            tracing::info!(app = %self.apps.get(&id).map(|a| a.spec.name.clone()).unwrap_or_default(), "the apps it depends on are ready; starting it");
            self.launch_all(id);
        }
        let stop: Vec<u32> = self
            .apps
            .values()
            .filter(|a| !a.stop_after.is_empty())
            .filter(|a| {
                a.stop_after
                    .iter()
                    .all(|d| self.apps.get(d).is_none_or(|d| !d.has_processes()))
            })
            .map(|a| a.id)
            .collect();
        for id in stop {
            if let Some(a) = self.apps.get_mut(&id) {
                a.stop_after.clear();
            }
            self.stop_app(id);
        }
    }

    /// Launches an app's primary and slots (its dependencies are ready).
    pub(super) fn launch_all(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        app.waiting = false;
        let slots: Vec<u32> = app
            .slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Stopped))
            .map(|s| s.index)
            .collect();
        if app
            .primary
            .as_ref()
            .is_some_and(|p| matches!(p.state, SlotState::Stopped))
        {
            self.launch(id, PRIMARY);
        }
        for i in slots {
            self.launch(id, i);
        }
    }

    /// Stops the apps `ids` (a `stop all`, a `kill`): an app that others of `ids` depend on
    /// waits until they have no process left.
    pub(super) fn stop_apps(&mut self, ids: &[u32]) {
        let names: Vec<(u32, String)> = ids
            .iter()
            .filter_map(|id| self.apps.get(id).map(|a| (*id, a.spec.name.clone())))
            .collect();
        for &(id, ref name) in &names {
            let dependents: Vec<u32> = names
                .iter()
                .filter(|(d, _)| *d != id)
                .filter(|(d, _)| {
                    self.apps
                        .get(d)
                        .is_some_and(|a| a.spec.depends_on.iter().any(|n| n == name))
                })
                .map(|(d, _)| *d)
                .collect();
            let running = dependents
                .iter()
                .any(|d| self.apps.get(d).is_some_and(App::has_processes));
            if running {
                if let Some(a) = self.apps.get_mut(&id) {
                    a.stop_after = dependents;
                }
            } else {
                self.stop_app(id);
            }
        }
    }
}
