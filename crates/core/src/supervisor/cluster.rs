//! The supervisor's side of Node's cluster protocol and of graceful stops: which socket a
//! worker's `listen()` gets, and how a process is asked to stop.
//!
//! A `listen()` on another address than the app's own makes the daemon bind a socket, shared
//! by every instance of the app as under Node's cluster module. Those sockets are bounded per
//! app (`max_listen_sockets`): one beyond is refused with `EMFILE`, which the worker's
//! `listen()` reports. Each is kept only while a live process holds it: the daemon closes its
//! copy when the last holder closes its server (Node's `{act:'close', key}`) or exits.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use herd_proto::worker::Word;
use herd_proto::{AppSpec, Balance};
use nix::sys::signal::Signal;
use serde_json::Value;

use super::primary::WorkerEvent;
use super::{parse_signal, write_note, App, Os, Proc, ReadyKind, Role, State};
use crate::node::{self, AddressType, QueryServer};
use crate::sockets::{ListenAddr, ListenError, Listener};

/// Asks a process to stop the way its app wants, and returns at once:
/// - PM2's `shutdown_with_message`: the message `"shutdown"` on its channel;
/// - a Node worker with herd's preload (it said `hello`): the preload's `drain` (it stops
///   accepting, answers with `Connection: close`, closes connections idle for the grace
///   period), then, at its `drained`, Node's cluster `disconnect`;
/// - a Node worker without it: the cluster `disconnect` at once (it stops accepting, closes
///   idle keep-alive connections, finishes in-flight requests);
///
///   either way the kill signal follows once its channel closes, as Node's own
///   `worker.kill()` does ([`stop_step`]);
/// - anything else: the kill signal to its process group.
///
/// SIGKILL after `kill_timeout` is the caller's timer.
pub(super) fn begin_stop(os: &mut dyn Os, spec: &AppSpec, proc: &mut Proc) {
    // Asked to go: for an app's primary, Node's `worker.exitedAfterDisconnect`.
    proc.seen.after_disconnect = true;
    if proc.primary {
        // An app's primary is a plain Node process: the kill signal (Node's default handler
        // exits; the primary's own SIGTERM handler may disconnect its workers first).
        signal_group(os, spec, proc.pid);
    } else if spec.shutdown_with_message {
        if let Some(ch) = &proc.channel {
            if ch.send(&Value::from(Word::Shutdown.as_str()), None) {
                return;
            }
        }
        signal_group(os, spec, proc.pid);
    } else if spec.node {
        advance_stop(os, spec, proc, StopEvent::Asked);
    } else {
        signal_group(os, spec, proc.pid);
    }
}

/// Where a Node worker is in its graceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum NodeStop {
    /// Not asked to stop.
    #[default]
    Serving,
    /// Sent the preload's `drain`; Node's `disconnect` follows its `drained`.
    Draining,
    /// Sent Node's `disconnect`; the kill signal follows once its channel closes.
    Disconnecting,
}

/// What happens to a Node worker during its stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopEvent {
    /// It is asked to stop.
    Asked,
    /// Its preload said `drained`.
    Drained,
    /// Its channel closed.
    ChannelClosed,
}

/// What herd does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopAction {
    /// Send the preload's `drain`.
    Drain,
    /// Send Node's cluster `disconnect`.
    Disconnect,
    /// Send the app's kill signal to its process group.
    Signal,
    /// Nothing.
    Wait,
}

/// The graceful stop of a Node worker: from where it is, whether it runs herd's preload, and
/// what happened, where it goes and what herd does. A worker without the preload (it never
/// said `hello`: turned off, or an app that replaced NODE_OPTIONS) gets Node's `disconnect`
/// at once instead of a `drain` it would never answer. A second request to stop, or a channel
/// that closes mid-stop, is the kill signal; SIGKILL at the kill timeout stays the caller's.
pub(super) fn stop_step(at: NodeStop, preload: bool, event: StopEvent) -> (NodeStop, StopAction) {
    use {NodeStop::*, StopAction::*, StopEvent::*};
    match (at, event) {
        (Serving, Asked) if preload => (Draining, Drain),
        (Serving, Asked) => (Disconnecting, Disconnect),
        (Draining | Disconnecting, Asked) => (at, Signal),
        (Draining, Drained) => (Disconnecting, Disconnect),
        (Serving | Disconnecting, Drained) => (at, Wait),
        (Draining | Disconnecting, ChannelClosed) => (at, Signal),
        (Serving, ChannelClosed) => (at, Wait),
    }
}

/// Moves a Node worker's stop on after `event` and does what [`stop_step`] says. A message
/// that cannot be sent (no channel) becomes the kill signal, and the stop stays where it was.
fn advance_stop(os: &mut dyn Os, spec: &AppSpec, proc: &mut Proc, event: StopEvent) {
    let (next, action) = stop_step(proc.node_stop, proc.preload, event);
    let msg = match action {
        StopAction::Wait => return,
        StopAction::Signal => {
            proc.node_stop = next;
            signal_group(os, spec, proc.pid);
            return;
        }
        StopAction::Drain => node::PreloadMsg::Drain {
            grace_ms: node::drain_grace(spec.kill_timeout_ms),
        }
        .to_value(),
        StopAction::Disconnect => node::disconnect(proc.next_seq()),
    };
    if proc.channel.as_ref().is_some_and(|ch| ch.send(&msg, None)) {
        proc.node_stop = next;
    } else {
        signal_group(os, spec, proc.pid);
    }
}

fn signal_group(os: &mut dyn Os, spec: &AppSpec, pid: u32) {
    let signal = parse_signal(&spec.kill_signal).unwrap_or(Signal::SIGTERM);
    os.signal_group(pid, signal);
}

/// The process `pid` of slot `i` in `role`, if it is still there.
pub(super) fn find_proc(app: &mut App, i: u32, role: Role, pid: u32) -> Option<&mut Proc> {
    find_proc_in(&mut app.slots, &mut app.retiring, i, role, pid)
}

/// [`find_proc`] from an app's parts, leaving the rest of it (its spec) to borrow.
fn find_proc_in<'a>(
    slots: &'a mut [super::Slot],
    retiring: &'a mut [(u32, Proc)],
    i: u32,
    role: Role,
    pid: u32,
) -> Option<&'a mut Proc> {
    match role {
        Role::Current => slots.get_mut(i as usize)?.state.proc_mut(),
        Role::Next => slots.get_mut(i as usize)?.state.next_mut(),
        Role::Retiring => retiring
            .iter_mut()
            .find(|(_, p)| p.pid == pid)
            .map(|(_, p)| p),
    }
    .filter(|p| p.pid == pid)
}

impl State {
    /// A message of Node's cluster protocol from a worker.
    pub(super) fn on_cluster(&mut self, pid: u32, msg: Value) {
        let Some(&(id, i, role)) = self.pids.get(&pid) else {
            return;
        };
        match node::act(&msg) {
            "queryServer" => self.answer_query(id, i, role, pid, &msg),
            "listening" => {
                let address = serde_json::json!({
                    "address": msg.get("address").cloned().unwrap_or(Value::Null),
                    "port": msg.get("port").cloned().unwrap_or(Value::Null),
                    "addressType": msg.get("addressType").cloned().unwrap_or(Value::Null),
                });
                self.worker_event(pid, WorkerEvent::Listening(address));
                self.on_ready(pid, ReadyKind::Listening);
            }
            // A server of the worker closed: Node quotes the key of our `queryServer` answer.
            "close" => {
                if let Some(key) = msg.get("key").and_then(Value::as_str) {
                    self.release_sockets(id, pid, Some(key));
                }
            }
            "online" => self.worker_event(pid, WorkerEvent::Online),
            _ => {
                if node::act(&msg) == "exitedAfterDisconnect" {
                    self.worker_event(pid, WorkerEvent::AfterDisconnect);
                }
                // Anything else that waits for an answer (e.g. `exitedAfterDisconnect` when the
                // app calls `cluster.worker.disconnect()` itself) gets an acknowledgement.
                if msg.get("ack").is_none() {
                    if let Some(seq) = node::seq(&msg) {
                        let Some(app) = self.apps.get_mut(&id) else {
                            return;
                        };
                        if let Some(p) = find_proc(app, i, role, pid) {
                            let ours = p.next_seq();
                            if let Some(ch) = &p.channel {
                                ch.send_reply(&node::ack(seq, ours), None);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A worker's channel closed. A worker asked to stop now gets the kill signal.
    pub(super) fn on_channel_closed(&mut self, pid: u32) {
        let Some(&(id, i, role)) = self.pids.get(&pid) else {
            return;
        };
        self.worker_event(pid, WorkerEvent::Disconnect);
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let spec = &app.spec;
        let Some(p) = find_proc_in(&mut app.slots, &mut app.retiring, i, role, pid) else {
            return;
        };
        p.channel = None;
        advance_stop(&mut *self.os, spec, p, StopEvent::ChannelClosed);
    }

    /// A message of herd's preload in a Node worker.
    pub(super) fn on_preload(&mut self, pid: u32, msg: node::PreloadMsg) {
        // For the app's own primary, in order with the worker's other messages.
        match msg {
            node::PreloadMsg::Fence { n, .. } => {
                return self.worker_event(pid, super::primary::WorkerEvent::Fence(n))
            }
            node::PreloadMsg::Barrier { n } => {
                return self.worker_event(pid, super::primary::WorkerEvent::Barrier(n))
            }
            _ => {}
        }
        let Some(&(id, i, role)) = self.pids.get(&pid) else {
            return;
        };
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let spec = &app.spec;
        let Some(p) = find_proc_in(&mut app.slots, &mut app.retiring, i, role, pid) else {
            return;
        };
        match msg {
            node::PreloadMsg::Hello { .. } => p.preload = true,
            node::PreloadMsg::Drained => {
                tracing::debug!(app = %spec.name, instance = i, pid, "drained; sending disconnect");
                advance_stop(&mut *self.os, spec, p, StopEvent::Drained);
            }
            // Only herd sends it; a fence is taken above.
            node::PreloadMsg::Drain { .. }
            | node::PreloadMsg::Fence { .. }
            | node::PreloadMsg::Barrier { .. } => {}
        }
    }

    /// Answers a worker's `queryServer` with a socket, or with an errno. Every query gets an
    /// answer (a worker's `listen()` waits for it); refusals are logged once per burst.
    fn answer_query(&mut self, id: u32, i: u32, role: Role, pid: u32, msg: &Value) {
        let Some(q) = QueryServer::parse(msg) else {
            return;
        };
        let limits = self.cfg.limits;
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(ch) = find_proc(app, i, role, pid).and_then(|p| p.channel.clone()) else {
            return;
        };
        // Sockets wait in the channel's queue, open in the daemon, until the worker reads them:
        // a worker that asks without reading must not hold the daemon's fds that way either.
        let result = if ch.queued_fds() >= MAX_UNREAD_SOCKETS {
            Err((
                libc::EMFILE,
                format!("the worker has not yet read the {MAX_UNREAD_SOCKETS} sockets sent to it"),
            ))
        } else {
            socket_for(app, i, role, pid, &q, limits.max_listen_sockets)
        };
        let Some(p) = find_proc(app, i, role, pid) else {
            return;
        };
        let ours = p.next_seq();
        match result {
            Ok(fd) => {
                // Every worker on an address gets what the first one offered (TLS ticket keys),
                // as from Node's own primary. Kept while the app lives: one per address.
                if app.shared_data.len() >= MAX_SHARED_DATA {
                    app.shared_data.clear();
                }
                let data = app
                    .shared_data
                    .entry(q.address_key())
                    .or_insert_with(|| q.data.clone());
                ch.send_reply(&node::handle_reply(&q, data, ours), Some(fd));
            }
            Err((errno, why)) => {
                let interval = Duration::from_millis(limits.instance_log_interval_ms);
                if let Some(before) = app.refusals.note(Instant::now(), interval) {
                    let name = &app.spec.name;
                    let addr = q.display_addr();
                    let also = match before {
                        0 => String::new(),
                        n => format!(" ({n} more refused before this)"),
                    };
                    tracing::warn!(
                        instance = i,
                        pid,
                        "app {name}: listen on {addr} refused: {why}{also}; further refusals within {}s are only counted",
                        interval.as_secs_f32()
                    );
                    if let Some(slot) = app.slot(i) {
                        write_note(
                            &slot.err,
                            &format!("[herd] instance {i}: listen on {addr} refused: {why}"),
                        );
                    }
                }
                ch.send_reply(&node::error_reply(&q, errno, ours), None);
            }
        }
    }

    /// Lets process `pid` go of the extra sockets it holds: of the one it was handed under
    /// `key` (its server closed), or of all of them (`None`: it exited). A socket no live
    /// process holds any more is closed.
    pub(super) fn release_sockets(&mut self, id: u32, pid: u32, key: Option<&str>) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let before = app.extra.len();
        for s in app.extra.values_mut() {
            s.release(pid, key);
        }
        app.extra.retain(|_, s| !s.holders.is_empty());
        let closed = before.saturating_sub(app.extra.len());
        if closed > 0 {
            tracing::debug!(app = %app.spec.name, pid, closed, "closed listening sockets no process holds");
            let more = app.refusals.end();
            if more > 0 {
                tracing::warn!(
                    "app {}: {more} more listens were refused until a socket was released",
                    app.spec.name
                );
            }
        }
    }
}

/// Addresses whose shared `data` an app keeps; beyond, the record starts afresh (a worker
/// listening on ever new ports cannot grow it).
const MAX_SHARED_DATA: usize = 256;

/// Sockets a worker may leave unread in its channel before further listens are refused.
const MAX_UNREAD_SOCKETS: usize = 256;

/// A socket bound for Node workers' listens on another address than the app's own, shared by
/// every instance of the app, with the processes it was handed to.
pub(super) struct ExtraSocket {
    pub(super) listener: Listener,
    /// Node's keys ([`QueryServer::key`]) of the handles each process holds on it. An entry
    /// with no key (taken over from an older daemon) goes only when its process exits.
    pub(super) holders: BTreeMap<u32, BTreeSet<String>>,
}

impl ExtraSocket {
    fn release(&mut self, pid: u32, key: Option<&str>) {
        match key {
            None => {
                self.holders.remove(&pid);
            }
            Some(k) => {
                if let Some(keys) = self.holders.get_mut(&pid) {
                    if keys.remove(k) && keys.is_empty() {
                        self.holders.remove(&pid);
                    }
                }
            }
        }
    }
}

/// Listens refused to an app, for one line in the daemon's log per burst: the first refusal
/// is logged, the rest within the interval are counted and reported with the next line.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// When the last logged refusal was.
    logged: Option<Instant>,
    /// Refusals since then that were not logged.
    more: u64,
}

impl Refusals {
    /// Counts a refusal. `Some(n)` when this one is to be logged, with `n` counted before it.
    fn note(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        match self.logged {
            Some(t) if now.saturating_duration_since(t) < interval => {
                self.more = self.more.saturating_add(1);
                None
            }
            _ => {
                self.logged = Some(now);
                Some(std::mem::take(&mut self.more))
            }
        }
    }

    /// The burst is over (a socket was released): the next refusal is logged at once. Returns
    /// the refusals counted but not logged.
    fn end(&mut self) -> u64 {
        self.logged = None;
        std::mem::take(&mut self.more)
    }
}

/// Picks (or binds) the socket for a worker's listen: the slot's own socket for the app's
/// port, a socket shared by all instances for anything else, as Node's cluster module does.
/// At most `max_extra` of the latter per app; the worker is recorded as holding the one it gets.
fn socket_for(
    app: &mut App,
    i: u32,
    role: Role,
    pid: u32,
    q: &QueryServer,
    max_extra: usize,
) -> Result<std::os::fd::OwnedFd, (i32, String)> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> Result<std::os::fd::OwnedFd, (i32, String)> {
        let owned = fd.try_clone_to_owned().map_err(|e| {
            (
                e.raw_os_error().unwrap_or(libc::EMFILE),
                format!("cannot duplicate a socket: {e}"),
            )
        })?;
        // libuv does not make fds received over IPC non-blocking; a blocking listener could
        // leave a worker stuck in accept() and deaf to signals.
        let _ = set_nonblocking(&owned);
        Ok(owned)
    };
    if q.kind == AddressType::Udp {
        return Err((
            libc::EOPNOTSUPP,
            "herd does not share UDP sockets between workers; bind them with exclusive: true"
                .into(),
        ));
    }
    // The app's own port (or Unix path): this slot's socket.
    let own = app.listeners.iter().position(|l| match (l.addr(), q.kind) {
        (ListenAddr::Tcp(a), AddressType::Tcp4 | AddressType::Tcp6) => {
            q.port != 0 && a.port() == q.port
        }
        (ListenAddr::Unix(p), AddressType::Pipe) => {
            q.address.as_deref() == Some(&*p.to_string_lossy())
        }
        _ => false,
    });
    if let Some(li) = own {
        let Some(p) = find_proc(app, i, role, pid) else {
            return Err((libc::ESRCH, "process gone".into()));
        };
        if p.listens >= 1 && q.index > 0 {
            return Err((
                libc::EADDRINUSE,
                format!(
                    "listen() was called a second time on port {}; a worker can listen on the app's port once",
                    q.port
                ),
            ));
        }
        p.listens += 1;
        let fd = app
            .listeners
            .get(li)
            .and_then(|l| l.fd_for_slot(i))
            .ok_or((libc::EBADF, "the slot has no socket".to_string()))?;
        return dup(fd);
    }
    // Anything else: bound once and shared by every instance of the app.
    let key = q.address_key();
    if !app.extra.contains_key(&key) {
        if app.extra.len() >= max_extra {
            return Err((
                libc::EMFILE,
                format!(
                    "the app holds {} extra sockets (max_listen_sockets in HERD_HOME/config.toml)",
                    app.extra.len()
                ),
            ));
        }
        let addr = match q.kind {
            AddressType::Pipe => ListenAddr::Unix(q.address.clone().unwrap_or_default().into()),
            AddressType::Tcp6 => {
                let host = q.address.as_deref().unwrap_or("::");
                format!("[{host}]:{}", q.port)
                    .parse()
                    .map(ListenAddr::Tcp)
                    .map_err(|_| (libc::EINVAL, format!("bad address {host}")))?
            }
            _ => {
                let host = q.address.as_deref().unwrap_or("0.0.0.0");
                format!("{host}:{}", q.port)
                    .parse()
                    .map(ListenAddr::Tcp)
                    .or_else(|_| format!("[{host}]:{}", q.port).parse().map(ListenAddr::Tcp))
                    .map_err(|_| {
                        (
                            libc::EINVAL,
                            format!("cannot listen on host {host:?}: give an IP address"),
                        )
                    })?
            }
        };
        // Any failure, the OS's own EMFILE included, goes back to the worker as its errno.
        let listener = Listener::bind(&addr, Balance::Shared, 1).map_err(|e| {
            let errno = match &e {
                ListenError::InUse { .. } | ListenError::PathTaken { .. } => libc::EADDRINUSE,
                ListenError::Permission { .. } => libc::EACCES,
                ListenError::NotAvailable { .. } => libc::EADDRNOTAVAIL,
                ListenError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EINVAL),
            };
            (errno, e.to_string())
        })?;
        app.extra.insert(
            key.clone(),
            ExtraSocket {
                listener,
                holders: BTreeMap::new(),
            },
        );
    }
    let Some(extra) = app.extra.get_mut(&key) else {
        return Err((libc::EBADF, "no socket".to_string()));
    };
    let fd = extra
        .listener
        .fd_for_slot(0)
        .ok_or((libc::EBADF, "no socket".to_string()))
        .and_then(|fd| dup(fd.as_fd()));
    match fd {
        Ok(fd) => {
            extra.holders.entry(pid).or_default().insert(q.key());
            Ok(fd)
        }
        Err(e) => {
            // A socket just bound for this worker that it cannot get is not kept.
            if extra.holders.is_empty() {
                app.extra.remove(&key);
            }
            Err(e)
        }
    }
}

fn set_nonblocking(fd: &std::os::fd::OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_with_the_preload_drains_then_disconnects_then_gets_the_signal() {
        use NodeStop::*;
        let (at, act) = stop_step(Serving, true, StopEvent::Asked);
        assert_eq!((at, act), (Draining, StopAction::Drain));
        // Its channel closing early (it exited, or the app disconnected) is the signal.
        assert_eq!(
            stop_step(at, true, StopEvent::ChannelClosed),
            (Draining, StopAction::Signal)
        );
        let (at, act) = stop_step(at, true, StopEvent::Drained);
        assert_eq!((at, act), (Disconnecting, StopAction::Disconnect));
        // A second drained changes nothing; the channel closing is the signal.
        assert_eq!(
            stop_step(at, true, StopEvent::Drained),
            (Disconnecting, StopAction::Wait)
        );
        assert_eq!(
            stop_step(at, true, StopEvent::ChannelClosed),
            (Disconnecting, StopAction::Signal)
        );
    }

    #[test]
    fn a_worker_without_the_preload_is_disconnected_at_once() {
        use NodeStop::*;
        assert_eq!(
            stop_step(Serving, false, StopEvent::Asked),
            (Disconnecting, StopAction::Disconnect)
        );
        // A drained it could not have sent, or one nobody asked for, changes nothing.
        assert_eq!(
            stop_step(Serving, true, StopEvent::Drained),
            (Serving, StopAction::Wait)
        );
        // A serving worker whose channel closes is left alone: it exits by itself.
        assert_eq!(
            stop_step(Serving, false, StopEvent::ChannelClosed),
            (Serving, StopAction::Wait)
        );
    }

    #[test]
    fn asking_a_stopping_worker_again_sends_the_signal() {
        for at in [NodeStop::Draining, NodeStop::Disconnecting] {
            for preload in [true, false] {
                assert_eq!(
                    stop_step(at, preload, StopEvent::Asked),
                    (at, StopAction::Signal)
                );
            }
        }
    }

    #[test]
    fn refusals_log_the_first_of_a_burst_and_count_the_rest() {
        let mut r = Refusals::default();
        let t = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(r.note(t, second), Some(0));
        assert_eq!(r.note(t, second), None);
        assert_eq!(r.note(t + Duration::from_millis(500), second), None);
        // The next burst's line says how many went unlogged.
        assert_eq!(r.note(t + second, second), Some(2));
        assert_eq!(r.note(t + second, second), None);
        // A released socket ends the burst: the next refusal is logged at once.
        assert_eq!(r.end(), 1);
        assert_eq!(r.note(t + second, second), Some(0));
    }

    #[test]
    fn a_socket_is_held_until_its_last_holder_closes_or_exits() {
        let addr: ListenAddr = "127.0.0.1:0".parse().map(ListenAddr::Tcp).unwrap();
        let mut s = ExtraSocket {
            listener: Listener::bind(&addr, Balance::Shared, 1).unwrap(),
            holders: BTreeMap::new(),
        };
        s.holders.entry(1).or_default().insert("a:0".into());
        s.holders.entry(1).or_default().insert("a:1".into());
        s.holders.entry(2).or_default().insert("a:0".into());
        s.release(1, Some("a:0"));
        s.release(1, Some("unknown"));
        assert_eq!(s.holders.len(), 2);
        s.release(1, Some("a:1"));
        assert_eq!(s.holders.keys().copied().collect::<Vec<_>>(), vec![2]);
        s.release(2, None);
        assert!(s.holders.is_empty());
    }
}
