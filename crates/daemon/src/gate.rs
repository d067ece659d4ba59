//! How many control connections the daemon serves at once, and which to close to make room.
//!
//! Each connection holds a file descriptor and a task: without a bound, a script that opens
//! connections and never speaks would take the daemon to its fd limit, and then `herd list`
//! would hang and crashed instances could not be restarted. So the gate admits at most
//! `max_control_connections` (and never more than a quarter of the daemon's fd limit, keeping
//! the rest for instances, sockets and logs). At the cap, the connection that has waited
//! longest for a request is closed to admit the new one, as OpenSSH drops unauthenticated
//! connections under `MaxStartups`; connections that are busy (a command in progress, `logs
//! -f`, `bus`) are never closed, and a new one is refused only when every admitted connection
//! is busy. A connection that sends no complete request within `control_idle_timeout_ms` is
//! closed too. The warning is logged once per burst, with a summary when it ends.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The bound on control connections.
#[derive(Debug)]
pub struct Gate {
    max: usize,
    /// How long a connection may wait for its next request.
    pub idle: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// Admitted connections, oldest first.
    conns: BTreeMap<u64, Entry>,
    /// Connections closed or refused since the cap was reached; `None` outside a burst.
    burst: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Entry {
    /// Waiting for a request (may be closed to make room).
    waiting: bool,
    close: Arc<Notify>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    /// Notified when the gate closes this connection to make room.
    pub close: Arc<Notify>,
}

impl Gate {
    /// A gate of `max` connections (at most a quarter of the fd limit) and `idle` timeout.
    pub fn new(max: usize, idle: Duration) -> Arc<Self> {
        let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let room = usize::try_from(fd_limit / 4).unwrap_or(usize::MAX).max(4);
        if room < max {
            tracing::info!(
                "control connections capped at {room} (a quarter of the fd limit of {fd_limit}), below max_control_connections = {max}"
            );
        }
        Arc::new(Self {
            max: max.min(room),
            idle,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Admits a connection, closing the one that has waited longest for a request if the gate
    /// is full; `None` when every admitted connection is busy.
    pub fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        if inner.conns.len() >= self.max {
            if inner.burst.is_none() {
                tracing::warn!(
                    "{} control connections are open, the most allowed (max_control_connections in HERD_HOME/config.toml): the longest idle ones are closed to make room, and new ones refused while all are busy",
                    self.max
                );
                inner.burst = Some((0, 0));
            }
            let oldest_idle = inner
                .conns
                .iter()
                .find(|(_, e)| e.waiting)
                .map(|(&id, _)| id);
            match oldest_idle.and_then(|id| inner.conns.remove(&id)) {
                Some(evicted) => {
                    evicted.close.notify_one();
                    if let Some(b) = inner.burst.as_mut() {
                        b.0 += 1;
                    }
                }
                None => {
                    if let Some(b) = inner.burst.as_mut() {
                        b.1 += 1;
                    }
                    return None;
                }
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let close = Arc::new(Notify::new());
        inner.conns.insert(
            id,
            Entry {
                waiting: true,
                close: close.clone(),
            },
        );
        Some(Ticket {
            gate: self.clone(),
            id,
            close,
        })
    }

    /// Connections admitted now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.conns.len())
    }
}

impl Ticket {
    /// How long the connection may wait for a request.
    pub fn gate_idle(&self) -> Duration {
        self.gate.idle
    }

    /// Marks the connection as waiting for a request (it may be closed to make room) or busy.
    pub fn waiting(&self, waiting: bool) {
        if let Ok(mut inner) = self.gate.inner.lock() {
            if let Some(e) = inner.conns.get_mut(&self.id) {
                e.waiting = waiting;
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Ok(mut inner) = self.gate.inner.lock() else {
            return;
        };
        inner.conns.remove(&self.id);
        if inner.conns.len() <= self.gate.max / 2 {
            if let Some((closed, refused)) = inner.burst.take() {
                tracing::info!(
                    "control connections back to {}: {closed} idle ones were closed to make room and {refused} refused",
                    inner.conns.len()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_gate_closes_the_longest_idle_and_refuses_when_all_are_busy() {
        let gate = Gate::new(4, Duration::from_secs(1));
        let t: Vec<Ticket> = (0..4).map(|_| gate.admit().unwrap()).collect();
        t[0].waiting(false);
        // The oldest waiting one (t[1]) makes room.
        let t4 = gate.admit().unwrap();
        assert_eq!(gate.open(), 4);
        let inner = gate.inner.lock().unwrap();
        assert!(!inner.conns.contains_key(&t[1].id));
        assert!(inner.conns.contains_key(&t[0].id));
        drop(inner);
        for x in [&t[2], &t[3], &t4] {
            x.waiting(false);
        }
        assert!(gate.admit().is_none());
        drop(t);
        assert_eq!(gate.open(), 1);
        assert!(gate.admit().is_some());
    }
}
