//! A running app moves to other listening addresses (`herd apply` of a changed `port` or
//! `listen`, docs/apply.md) without refusing a connection: the new addresses are bound before
//! anything else changes, the next processes get them, and the old addresses' sockets stay
//! open while a process that holds them runs.
//!
//! Each process remembers the addresses it was started with ([`super::Proc::addrs`]). While
//! they differ between processes the app is *moving*: every listener is routed only to the
//! slots whose serving process holds it, so a connection to an old address reaches an old
//! process and one to a new address a new one (or waits in the new socket's queue until one
//! starts). A reloaded-away process that holds old sockets is not asked to stop at once: its
//! slot is steered out of them first, and it stops once their queues are empty (at most
//! `DRAIN_MAX`), so no connection the kernel accepted on an old address is reset. A socket of
//! an old address closes when no process of its slot holds it; the address closes with its
//! last one. A failed apply moves back the same way.

use herd_proto::{Balance, ErrorCode, ListenSpec};
use tokio::time::Instant;

use super::{
    arm_retire, begin_stop, err, overlaps, App, CommandError, State, TimerKey, DRAIN_MAX,
    DRAIN_POLL,
};
use crate::sockets::{ListenAddr, Listener};

/// Whether the listener at `have` serves the address `want` (a port 0 takes any port of
/// the same host).
fn serves(have: &ListenAddr, want: &ListenAddr) -> bool {
    match (have, want) {
        (ListenAddr::Tcp(h), ListenAddr::Tcp(w)) => h == w || (w.port() == 0 && h.ip() == w.ip()),
        (ListenAddr::Unix(h), ListenAddr::Unix(w)) => h == w,
        _ => false,
    }
}

impl State {
    /// Gives app `id` the listeners of `wanted` (and writes the addresses as bound into it):
    /// those it has (or still holds for older processes) are kept, the others bound now. The
    /// listeners it no longer wants are kept for the processes that hold them. Nothing changes
    /// when a bind fails.
    pub(super) fn move_listeners(
        &mut self,
        id: u32,
        wanted: &mut [ListenSpec],
        balance: Balance,
    ) -> Result<(), CommandError> {
        let Some(app) = self.apps.get(&id) else {
            return Err(err(ErrorCode::UnknownApp, "the app went away"));
        };
        let mut addrs = Vec::new();
        for ls in wanted.iter() {
            let addr: ListenAddr = ls
                .addr
                .parse()
                .map_err(|m: String| err(ErrorCode::InvalidSpec, m))?;
            addrs.push(addr);
        }
        let slots = app.slots.len() as u32;
        // What is there already, by address; the rest is bound before anything is moved.
        let held = |a: &ListenAddr| {
            app.listeners
                .iter()
                .chain(&app.retired)
                .any(|l| serves(l.addr(), a))
        };
        let mut fresh = Vec::new();
        for addr in &addrs {
            if held(addr) {
                fresh.push(None);
                continue;
            }
            if let Some(other) = self
                .apps
                .values()
                .find(|a| a.id != id && a.listeners.iter().any(|l| overlaps(l.addr(), addr)))
            {
                return Err(err(
                    ErrorCode::Listen,
                    format!(
                        "{addr} is already used by app {:?} (id {}); choose another port or stop that app",
                        other.spec.name, other.id
                    ),
                ));
            }
            let l = Listener::bind(addr, balance, slots)
                .map_err(|e| err(ErrorCode::Listen, e.to_string()))?;
            fresh.push(Some(l));
        }
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(err(ErrorCode::UnknownApp, "the app went away"));
        };
        let mut pool: Vec<Listener> = std::mem::take(&mut app.listeners);
        pool.append(&mut app.retired);
        let mut now = Vec::new();
        for (addr, fresh) in addrs.iter().zip(fresh) {
            let l = match fresh {
                Some(l) => l,
                None => match pool.iter().position(|l| serves(l.addr(), addr)) {
                    Some(k) => pool.swap_remove(k),
                    // Listed twice: the spec's validation refuses that; bind it to say why.
                    None => Listener::bind(addr, balance, slots)
                        .map_err(|e| err(ErrorCode::Listen, e.to_string()))?,
                },
            };
            now.push(l);
        }
        // A listener taken back (a failed apply moving back) gets the sockets its slots lost.
        for l in now.iter_mut().filter(|l| l.is_per_slot()) {
            for i in 0..slots {
                if l.fd_for_slot(i).is_none() {
                    if let Err(e) = l.add_slot(i) {
                        tracing::error!(app = %app.spec.name, instance = i, "cannot renew the slot's socket: {e}");
                    }
                }
            }
        }
        for (ls, l) in wanted.iter_mut().zip(&now) {
            ls.addr = l.addr().to_string();
        }
        tracing::info!(
            app = %app.spec.name,
            from = %pool.iter().map(|l| l.addr().to_string()).collect::<Vec<_>>().join(", "),
            to = %now.iter().map(|l| l.addr().to_string()).collect::<Vec<_>>().join(", "),
            "apply: moving to other addresses"
        );
        app.listeners = now;
        app.retired = pool;
        app.moving = true;
        app.routed = None;
        app.routed_each.clear();
        Ok(())
    }

    /// Slot `i` of app `id` was reloaded: whether its old process (`old_addrs`) must first
    /// hand off the sockets of addresses the app left. If so it is remembered, and asked to
    /// stop by [`State::on_handoff_timer`].
    pub(super) fn hand_off(&mut self, id: u32, i: u32, pid: u32, old_addrs: &[String]) -> bool {
        let Some(app) = self.apps.get_mut(&id) else {
            return false;
        };
        let holds_old = app.retired.iter().any(|l| {
            l.is_per_slot()
                && l.fd_for_slot(i).is_some()
                && old_addrs.contains(&l.addr().to_string())
        });
        if !holds_old {
            return false;
        }
        let now = Instant::now();
        app.handoff.push((pid, i, now));
        self.timers
            .set(TimerKey::Handoff { app: id }, now + DRAIN_POLL);
        true
    }

    /// Asks the reloaded-away processes whose old sockets are empty (or that waited
    /// `DRAIN_MAX`) to stop.
    pub(super) fn on_handoff_timer(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let kill_timeout = std::time::Duration::from_millis(app.spec.kill_timeout_ms);
        let mut due = Vec::new();
        app.handoff.retain(|&(pid, i, since)| {
            let empty = app.retired.iter().all(|l| l.queued(i).unwrap_or(0) == 0);
            let waited = now.saturating_duration_since(since);
            // A short grace lets handshakes already steered to the slot land first.
            let go = (empty && waited >= DRAIN_POLL * 2) || waited >= DRAIN_MAX;
            if go {
                due.push(pid);
            }
            !go
        });
        for pid in due {
            if let Some((_, p)) = app.retiring.iter_mut().find(|(_, p)| p.pid == pid) {
                tracing::debug!(app = %app.spec.name, pid, "old addresses handed off; stopping the old process");
                begin_stop(&mut *self.os, &app.spec, p);
                arm_retire(&mut self.timers, pid, kill_timeout);
            }
        }
        if !app.handoff.is_empty() {
            self.timers
                .set(TimerKey::Handoff { app: id }, now + DRAIN_POLL);
        }
    }
}

/// Which processes hold which address, by slot: `(slot, address)` pairs.
fn holdings(app: &App) -> std::collections::HashSet<(u32, &str)> {
    let mut out = std::collections::HashSet::new();
    for s in &app.slots {
        for p in s.state.proc().into_iter().chain(s.state.next()) {
            for a in &p.addrs {
                out.insert((s.index, a.as_str()));
            }
        }
    }
    for (i, p) in &app.retiring {
        for a in &p.addrs {
            out.insert((*i, a.as_str()));
        }
    }
    out
}

/// Closes the old addresses' sockets no process holds any more, and ends the move once every
/// process holds the app's addresses.
pub(super) fn prune(app: &mut App) {
    if !app.moving {
        return;
    }
    let held = holdings(app);
    let mut close = Vec::new();
    for (k, l) in app.retired.iter().enumerate() {
        let addr = l.addr().to_string();
        let gone: Vec<u32> = l
            .slots()
            .into_iter()
            .filter(|&i| !held.contains(&(i, addr.as_str())))
            .collect();
        // No serving process holds it any more: the last old processes are finishing. The
        // daemon lets go of its sockets now, so that each closes as soon as its process closes
        // it (later connections are refused, not queued where nobody accepts).
        let serving = app.slots.iter().any(|s| {
            let holds = |p: &super::Proc| p.addrs.contains(&addr);
            (s.state.routed() && s.state.proc().is_some_and(holds))
                || s.state.next().is_some_and(holds)
        });
        close.push((k, gone, !serving));
    }
    let current: Vec<String> = app.listeners.iter().map(|l| l.addr().to_string()).collect();
    let settled = held.iter().all(|(_, a)| current.iter().any(|c| c == a))
        && app.all_slots().all(|s| {
            s.state
                .proc()
                .into_iter()
                .chain(s.state.next())
                .chain(
                    app.retiring
                        .iter()
                        .filter(|(i, _)| *i == s.index)
                        .map(|(_, p)| p),
                )
                .all(|p| p.primary || p.addrs == current)
        });
    let mut changed = false;
    for (k, gone, unserved) in close.into_iter().rev() {
        let Some(l) = app.retired.get_mut(k) else {
            continue;
        };
        for i in gone {
            l.remove_slot(i);
            changed = true;
        }
        if unserved || (l.is_per_slot() && l.slots().is_empty()) {
            let l = app.retired.swap_remove(k);
            tracing::info!(app = %app.spec.name, addr = %l.addr(), "no serving process holds the old address any more; it closes with the last one that does");
            changed = true;
        }
    }
    if changed {
        app.routed_each.clear();
    }
    if settled && app.retired.is_empty() && app.handoff.is_empty() {
        app.moving = false;
        app.routed = None;
        app.routed_each.clear();
    }
}

/// Routes each listener of a moving app to the slots of `live` whose serving process (or
/// next one) holds it.
pub(super) fn route(app: &mut App, live: &[u32]) {
    let mut plan = Vec::new();
    for l in app.listeners.iter().chain(&app.retired) {
        let addr = l.addr().to_string();
        let own: Vec<u32> = live
            .iter()
            .copied()
            .filter(|&i| {
                app.slot(i).is_some_and(|s| {
                    s.state
                        .proc()
                        .into_iter()
                        .chain(s.state.next())
                        .any(|p| p.addrs.contains(&addr))
                })
            })
            .collect();
        plan.push((addr, own));
    }
    if app.routed_each == plan {
        return;
    }
    for (l, (_, own)) in app.listeners.iter().chain(&app.retired).zip(&plan) {
        if let Err(e) = l.steer(app.spec.balance, own) {
            tracing::error!(app = %app.spec.name, "cannot attach the reuseport selector: {e}");
        }
    }
    app.routed_each = plan;
    app.routed = None;
    app.routing_changes += 1;
}
