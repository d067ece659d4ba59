//! The supervisor's side of Node's cluster protocol and of graceful stops: which socket a
//! worker's `listen()` gets, and how a process is asked to stop.

use std::os::fd::AsFd;

use herd_proto::{AppSpec, Balance};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{parse_signal, write_note, App, Proc, ReadyKind, Role, State};
use crate::node::{self, AddressType, QueryServer};
use crate::sockets::{ListenAddr, ListenError, Listener};

/// Asks a process to stop the way its app wants, and returns at once:
/// - PM2's `shutdown_with_message`: the message `"shutdown"` on its channel;
/// - a Node worker: the cluster `disconnect` (it stops accepting, finishes in-flight requests
///   and closes idle keep-alive connections); the kill signal follows once its channel closes,
///   as Node's own `worker.kill()` does;
/// - anything else: the kill signal to its process group.
///
/// SIGKILL after `kill_timeout` is the caller's timer.
pub(super) fn begin_stop(spec: &AppSpec, proc: &mut Proc) {
    if spec.shutdown_with_message {
        if let Some(ch) = &proc.channel {
            if ch.send(&Value::from("shutdown"), None) {
                return;
            }
        }
    } else if spec.node && !proc.disconnecting {
        if let Some(ch) = proc.channel.clone() {
            let seq = proc.next_seq();
            if ch.send(&node::disconnect(seq), None) {
                proc.disconnecting = true;
                return;
            }
        }
    }
    signal_group(spec, proc.pid);
}

fn signal_group(spec: &AppSpec, pid: u32) {
    let signal = parse_signal(&spec.kill_signal).unwrap_or(Signal::SIGTERM);
    let _ = kill(Pid::from_raw(-(pid as i32)), signal);
}

/// The process `pid` of slot `i` in `role`, if it is still there.
fn find_proc(app: &mut App, i: u32, role: Role, pid: u32) -> Option<&mut Proc> {
    match role {
        Role::Current => app.slots.get_mut(i as usize)?.state.proc_mut(),
        Role::Next => app.slots.get_mut(i as usize)?.next.as_mut(),
        Role::Retiring => app
            .retiring
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
            "listening" => self.on_ready(pid, ReadyKind::Listening),
            "online" | "close" => {}
            _ => {
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
                                ch.send(&node::ack(seq, ours), None);
                            }
                        }
                    }
                }
            }
        }
    }

    /// A worker's channel closed. A worker asked to disconnect now gets the kill signal.
    pub(super) fn on_channel_closed(&mut self, pid: u32) {
        let Some(&(id, i, role)) = self.pids.get(&pid) else {
            return;
        };
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let spec = app.spec.clone();
        if let Some(p) = find_proc(app, i, role, pid) {
            p.channel = None;
            if p.disconnecting {
                signal_group(&spec, pid);
            }
        }
    }

    /// Answers a worker's `queryServer` with a socket, or with an errno.
    fn answer_query(&mut self, id: u32, i: u32, role: Role, pid: u32, msg: &Value) {
        let Some(q) = QueryServer::parse(msg) else {
            return;
        };
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let name = app.spec.name.clone();
        let note_file = app.slots.get(i as usize).map(|s| s.err.clone());
        let result = socket_for(app, i, role, pid, &q);
        let Some(p) = find_proc(app, i, role, pid) else {
            return;
        };
        let ours = p.next_seq();
        let Some(ch) = p.channel.clone() else {
            return;
        };
        match result {
            Ok(fd) => {
                ch.send(&node::handle_reply(&q, ours), Some(fd));
            }
            Err((errno, why)) => {
                self.instance_warn(
                    pid,
                    format_args!("app {name} instance {i}: listen refused: {why}"),
                );
                if let Some(f) = note_file {
                    write_note(&f, &format!("[herd] instance {i}: {why}"));
                }
                ch.send(&node::error_reply(&q, errno, ours), None);
            }
        }
    }
}

/// Picks (or binds) the socket for a worker's listen: the slot's own socket for the app's
/// port, a socket shared by all instances for anything else, as Node's cluster module does.
fn socket_for(
    app: &mut App,
    i: u32,
    role: Role,
    pid: u32,
    q: &QueryServer,
) -> Result<std::os::fd::OwnedFd, (i32, String)> {
    let dup = |fd: std::os::fd::BorrowedFd<'_>| -> Result<std::os::fd::OwnedFd, (i32, String)> {
        let owned = fd
            .try_clone_to_owned()
            .map_err(|e| (libc::EMFILE, format!("cannot duplicate a socket: {e}")))?;
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
        let l = &app.listeners[li];
        let fd = l
            .fd_for_slot(i)
            .ok_or((libc::EBADF, "the slot has no socket".to_string()))?;
        return dup(fd);
    }
    // Anything else: bound once and shared by every instance of the app.
    let key = format!(
        "{}|{}|{:?}",
        q.address.as_deref().unwrap_or(""),
        q.port,
        q.kind
    );
    if !app.extra.contains_key(&key) {
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
        let l = Listener::bind(&addr, Balance::Shared, 1).map_err(|e| {
            let errno = match &e {
                ListenError::InUse { .. } | ListenError::PathTaken { .. } => libc::EADDRINUSE,
                ListenError::Permission { .. } => libc::EACCES,
                ListenError::NotAvailable { .. } => libc::EADDRNOTAVAIL,
                ListenError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EINVAL),
            };
            (errno, e.to_string())
        })?;
        app.extra.insert(key.clone(), l);
    }
    let l = &app.extra[&key];
    let fd = l
        .fd_for_slot(0)
        .ok_or((libc::EBADF, "no socket".to_string()))?;
    dup(fd.as_fd())
}

fn set_nonblocking(fd: &std::os::fd::OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
