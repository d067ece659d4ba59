//! Rolling reload: for each slot in turn, start the next process beside the current one,
//! wait until it is ready, then ask the current one to stop (it stops accepting first and
//! finishes its in-flight requests) and move on. Both processes accept from the same slot
//! socket, so no connection is refused or lost. A next process that never gets ready is killed
//! and the old one keeps serving; the reload stops there, so a broken version never replaces
//! more than nothing.

use std::collections::VecDeque;
use std::time::Duration;

use herd_proto::AppStatus;

use super::{
    arm_retire, begin_stop, needs_ready, write_note, CommandError, Reload, Role, SlotState, State,
};

impl State {
    /// Starts a rolling reload of app `id` (a stopped app is simply started).
    pub(super) fn start_reload(&mut self, id: u32) -> Result<(), CommandError> {
        let Some(app) = self.apps.get_mut(&id) else {
            return Ok(());
        };
        // A stopped app (its processes may still be stopping) is started, as PM2 does: there
        // is nothing to replace without a drop.
        if app.status == AppStatus::Stopped {
            return self.restart_app(id);
        }
        app.status = AppStatus::Running;
        // The app's primary serves nothing: it restarts at once, and finds its workers (the
        // old ones, then the new) waiting for its forks.
        if app.reload.is_none() && app.primary.is_some() {
            self.stop_slot(id, super::primary::PRIMARY, super::Then::Restart);
        }
        let Some(app) = self.apps.get_mut(&id) else {
            return Ok(());
        };
        if app.reload.is_none() {
            app.reload = Some(Reload {
                pending: (0..app.slots.len() as u32).collect::<VecDeque<u32>>(),
                active: None,
            });
            self.reload_step(id);
        }
        Ok(())
    }

    /// Moves the reload on to the next slot that needs it, or ends it.
    pub(super) fn reload_step(&mut self, id: u32) {
        loop {
            let Some(app) = self.apps.get_mut(&id) else {
                return;
            };
            let Some(job) = app.reload.as_mut() else {
                return;
            };
            if job.active.is_some() {
                return;
            }
            let Some(i) = job.pending.pop_front() else {
                app.reload = None;
                app.applying = None;
                app.reloads.0 += 1;
                return;
            };
            let Some(slot) = slot_mut!(app, i) else {
                continue;
            };
            match slot.state {
                SlotState::Starting { .. } | SlotState::Online { .. } => {
                    let timeout = Duration::from_millis(app.spec.listen_timeout_ms);
                    match self.spawn_proc(id, i, Role::Next) {
                        Ok(next) => {
                            let next_pid = next.pid;
                            let Some(app) = self.apps.get_mut(&id) else {
                                return;
                            };
                            let Some(slot) = slot_mut!(app, i) else {
                                return;
                            };
                            tracing::debug!(app = %app.spec.name, instance = i, pid = next.pid, "reload: next process started");
                            let deadline = tokio::time::Instant::now() + timeout;
                            match slot.state.take() {
                                SlotState::Online { proc } => slot.set(SlotState::Reloading {
                                    current: proc,
                                    online: true,
                                    next,
                                    deadline,
                                }),
                                SlotState::Starting { proc, .. } => {
                                    slot.set(SlotState::Reloading {
                                        current: proc,
                                        online: false,
                                        next,
                                        deadline,
                                    })
                                }
                                // Spawning does not change the slot's state.
                                other => slot.set(other),
                            }
                            if let Some(job) = app.reload.as_mut() {
                                job.active = Some(i);
                            }
                            if app.spec.primary {
                                // The primary may claim it when it hears the old one exit.
                                self.worker_started(id, i, next_pid);
                            }
                            return;
                        }
                        Err(e) => {
                            self.reload_failed(id, i, format!("cannot start instance {i}: {e}"));
                            return;
                        }
                    }
                }
                // Being stopped or removed, or reloading already: nothing to do.
                SlotState::Stopping { .. }
                | SlotState::Draining { .. }
                | SlotState::Gone
                | SlotState::Reloading { .. } => {}
                // Not running (crashed, errored, exited): a reload starts it afresh.
                _ => {
                    slot.history = Default::default();
                    slot.restarts += 1;
                    self.launch(id, i);
                }
            }
        }
    }

    /// Takes slot `i` out of app `id`'s reload (it is being removed): it is not started, and
    /// if it was the slot being done, the reload can move on once the caller is finished.
    pub(super) fn leave_reload(&mut self, id: u32, i: u32) {
        let Some(job) = self.apps.get_mut(&id).and_then(|a| a.reload.as_mut()) else {
            return;
        };
        job.pending.retain(|&p| p != i);
        if job.active == Some(i) {
            job.active = None;
        }
    }

    /// The next process of slot `i` is ready: it becomes the current one, and the old one is
    /// asked to stop. Only a reloading slot has a next process: a slot that started to stop
    /// or drain meanwhile had its next process stopped then.
    pub(super) fn promote(&mut self, id: u32, i: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let kill_timeout = Duration::from_millis(app.spec.kill_timeout_ms);
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        match slot.state.take() {
            SlotState::Reloading {
                current: old, next, ..
            } => {
                tracing::info!(app = %app.spec.name, instance = i, new = next.pid, old = old.pid, "reload: new process ready; stopping the old one");
                self.pids.insert(next.pid, (id, i, Role::Current));
                self.pids.insert(old.pid, (id, i, Role::Retiring));
                slot.restarts += 1;
                slot.set(SlotState::Online { proc: next });
                // After a listen change the old process first hands off the old addresses'
                // sockets (moving.rs); otherwise it is asked to stop now.
                let (pid, addrs) = (old.pid, old.addrs.clone());
                app.retiring.push((i, old));
                if !self.hand_off(id, i, pid, &addrs) {
                    let Some(app) = self.apps.get_mut(&id) else {
                        return;
                    };
                    if let Some((_, old)) = app.retiring.iter_mut().find(|(_, p)| p.pid == pid) {
                        begin_stop(&mut *self.os, &app.spec, old);
                    }
                    arm_retire(&mut self.timers, pid, kill_timeout);
                }
            }
            other => slot.set(other),
        }
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        // With a readiness probe the reload waits on the slot for the new process's first
        // verdict (probes::on_probe_result moves it on).
        let wait_ready = app.spec.readiness.is_some();
        if let Some(job) = app.reload.as_mut() {
            if job.active == Some(i) && !wait_ready {
                job.active = None;
            }
        }
        self.reload_step(id);
    }

    /// The next process of slot `i` has had its time.
    pub(super) fn on_next_timeout(&mut self, id: u32, i: u32) {
        let Some(app) = self.apps.get(&id) else {
            return;
        };
        let Some(slot) = app.slot(i) else {
            return;
        };
        if slot.state.next().is_none() {
            return;
        }
        if needs_ready(&app.spec) {
            let why = if app.spec.wait_ready {
                "did not say it was ready"
            } else {
                "did not listen"
            };
            self.reload_failed(
                id,
                i,
                format!(
                    "the new process of instance {i} {why} within listen_timeout ({} ms)",
                    app.spec.listen_timeout_ms
                ),
            );
        } else {
            // A program that never signals readiness is taken as ready once it has stayed up
            // for listen_timeout.
            self.promote(id, i);
        }
    }

    /// Ends a reload after a failure at slot `i`: its next process is killed, old processes
    /// keep serving, and the reload's requester gets the reason.
    pub(super) fn reload_failed(&mut self, id: u32, i: u32, why: String) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        // The slot goes back to its current process; the next one is killed.
        match slot.state.take() {
            SlotState::Reloading {
                current,
                online,
                next,
                ..
            } => {
                self.os
                    .kill_tree(next.pid, self.cgroups.get(&next.pid).map(|p| p.as_path()));
                self.pids.insert(next.pid, (id, i, Role::Retiring));
                app.retiring.push((i, next));
                slot.set(super::back_from_reload(current, online, &app.spec));
            }
            other => slot.set(other),
        }
        if app.reload.take().is_none() {
            return;
        }
        app.reloads.1 += 1;
        let msg = format!(
            "reload of {} stopped: {why}; the old processes keep serving (see `herd logs {}`)",
            app.spec.name, app.spec.name
        );
        tracing::warn!("{msg}");
        write_note(&slot.err, &format!("[herd] {msg}"));
        let msg = match self.apply_failed(id) {
            Some(more) => format!("{msg}; {more}"),
            None => msg,
        };
        self.reload_errors.insert(id, msg);
    }
}
