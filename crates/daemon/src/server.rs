//! The control server: accepts connections on `herd.sock`, checks who is calling, reads one
//! request per line (bounded), and writes replies. One task per connection; a bad or vanished
//! client affects only its own connection.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::PermissionsExt;

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use herd_core::handover::{self, Handover};
use herd_core::supervisor::UpdateRequest;
use herd_core::{logs, Config, Supervisor};
use herd_proto::{
    encode_line, Command, ErrorCode, LineBuffer, LineError, LogStream, Reply, Request,
    MAX_CONTROL_LINE, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::RecvError;

use crate::gate::{Gate, Ticket};
use crate::Home;

/// Runs the daemon's control server and supervisor until a `kill` request or SIGTERM/SIGINT
/// has stopped every app.
///
/// # Errors
/// When the socket or the supervisor cannot be set up.
pub async fn serve(
    home: &Home,
    settings: crate::Settings,
    lock_fd: RawFd,
    handover: Option<(Handover, RawFd)>,
    keeper: Option<Arc<herd_core::keeper::Link>>,
) -> io::Result<()> {
    let metrics = settings.metrics;
    let mut config = config(home, settings);
    config.keeper = keeper.clone();
    let limits = config.limits;
    let (sup, mut done, listener) = match handover {
        None => {
            let (sup, done) = Supervisor::start(config)?;
            // The socket appears only once the daemon can serve: a client never connects to a
            // daemon that is about to give up.
            let listener = bind_control(home)?;
            tracing::info!(pid = std::process::id(), home = %home.dir.display(), "daemon ready");
            (sup, done, listener)
        }
        Some((h, memfd)) => take_over(config, h, memfd).await?,
    };
    if let Some(addr) = metrics {
        if let Err(e) = crate::metrics::serve(addr, sup.clone()).await {
            tracing::error!(
                "cannot serve metrics on {addr}: {e}; the daemon runs without its Prometheus endpoint (change `metrics` in HERD_HOME/config.toml, then `herd kill` and start again)"
            );
        }
    }
    if keeper.is_some() {
        sup.keep_daemon_fds(vec![
            ("control".to_string(), listener.as_raw_fd()),
            ("lock".to_string(), lock_fd),
        ]);
    }
    let accept = spawn_accept(
        listener,
        sup.clone(),
        lock_fd,
        vec!["daemon".into()],
        &limits,
    );
    // Every signal that would end the daemon by default is handled (docs/security.md):
    // TERM, INT and QUIT stop every app and the daemon; HUP (logrotate) and USR2 (PM2's
    // `reloadLogs`) open the log files again; USR1 is logged and ignored.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = term.recv() => stop_all(&sup, "SIGTERM"),
            _ = int.recv() => stop_all(&sup, "SIGINT"),
            _ = quit.recv() => stop_all(&sup, "SIGQUIT"),
            _ = hup.recv() => reload_logs(&sup, "SIGHUP"),
            _ = usr2.recv() => reload_logs(&sup, "SIGUSR2"),
            _ = usr1.recv() => tracing::info!("SIGUSR1 ignored (SIGHUP opens the log files again; SIGTERM stops)"),
            _ = &mut done => break,
        }
    }
    kills_answered().await;
    accept.abort();
    // Stopped for good: the keeper lets go of everything and does not start another.
    if let Some(k) = &keeper {
        k.bye();
    }
    let _ = std::fs::remove_file(home.socket());
    let _ = std::fs::remove_file(home.notify());
    tracing::info!("daemon stopped");
    Ok(())
}

/// The supervisor settings of a daemon of `home`.
pub fn config(home: &Home, settings: crate::Settings) -> Config {
    Config {
        host: settings.host,
        bus_url: settings.bus,
        max_message_bytes: settings.max_message_bytes,
        log_dir: home.logs(),
        notify_path: home.notify(),
        pids_file: Some(home.pids()),
        limits: settings.limits,
        node_dir: Some(home.node()),
        keeper: None,
    }
}

/// Binds `herd.sock` of `home` (mode 0600), replacing a stale one.
///
/// # Errors
/// When the socket cannot be bound.
pub fn bind_control(home: &Home) -> io::Result<UnixListener> {
    let sock_path = home.socket();
    let _ = std::fs::remove_file(&sock_path);
    let listener = UnixListener::bind(&sock_path)?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The state a previous program handed over (`herd update`): the supervisor with every
/// instance, and the control socket, which never closed. Answers the `herd update` client.
/// Whatever fails before the state is taken gives it back to the previous program.
///
/// # Errors
/// When neither this program nor the previous one can take the state.
pub async fn take_over(
    config: Config,
    h: Handover,
    memfd: RawFd,
) -> io::Result<(Supervisor, tokio::task::JoinHandle<()>, UnixListener)> {
    let began = h.began_unix_ms;
    let from = h.from_version.clone();
    let reply_fd = h.reply_fd.filter(|&fd| handover::is_open(fd));
    let control = h
        .daemon_fds
        .get("control")
        .copied()
        .filter(|&fd| handover::is_open(fd));
    let Some(control) = control else {
        let e = handover::fall_back(memfd, "the handover has no control socket");
        return Err(io::Error::other(format!(
            "the handover has no control socket; {e}"
        )));
    };
    if let Err(why) = handover::check(&h) {
        let why = format!("the handover is inconsistent: {why}");
        let e = handover::fall_back(memfd, &why);
        return Err(io::Error::other(format!("{why}; {e}")));
    }
    let listed = handover::fds(&h);
    let (sup, done) = match Supervisor::adopt(config, h.supervisor) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("the new daemon could not start its supervisor: {e}");
            let e2 = handover::fall_back(memfd, &why);
            return Err(io::Error::other(format!("{why}; {e2}")));
        }
    };
    handover::close(memfd);
    // Taken over: every fd listed (the lock too, which stays open under its number)
    // closes at the next exec, where the next update keeps its own duplicates.
    for fd in listed {
        handover::set_cloexec(fd);
    }
    // The control socket never closed: connections made during the update wait in
    // its queue and are served now.
    // SAFETY: listed by the previous daemon, taken once here.
    let std_listener = std::os::unix::net::UnixListener::from(unsafe { handover::adopt(control) });
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let took = now_ms.saturating_sub(began);
    let failed = std::env::var(handover::FAILED_ENV).ok();
    let recovery = std::env::var(herd_core::keeper::RECOVERY_ENV).ok();
    // SAFETY: the runtime's threads do not read the environment.
    unsafe { std::env::remove_var(herd_core::keeper::RECOVERY_ENV) };
    match &failed {
        None if recovery.is_some() => tracing::info!(
            pid = std::process::id(),
            restarts = recovery.as_deref().unwrap_or(""),
            "daemon started by the keeper after the previous one died: took over its state"
        ),
        Some(why) => tracing::warn!(
            pid = std::process::id(),
            "the new binary could not take over ({why}); this one runs on"
        ),
        None => tracing::info!(
            pid = std::process::id(),
            from = %from,
            "daemon updated in place in {took} ms"
        ),
    }
    if let Some(fd) = reply_fd {
        // SAFETY: listed by the previous daemon, taken once here.
        let conn = unsafe { handover::adopt(fd) };
        let reply = match (&failed, sup.request(Command::List).await) {
            (Some(why), _) => Reply::error(
                ErrorCode::Update,
                format!("the new binary could not take over: {why}; the daemon (pid {}, herd {}) runs on as it was", std::process::id(), env!("CARGO_PKG_VERSION")),
            ),
            (None, Reply::Apps { apps, .. }) => {
                let n: usize = apps
                    .iter()
                    .map(|a| a.processes.iter().filter(|p| p.pid.is_some()).count())
                    .sum();
                Reply::done(format!(
                    "daemon updated in place (pid {}, herd {from} -> {}) in {took} ms; {n} instances kept running",
                    std::process::id(),
                    env!("CARGO_PKG_VERSION")
                ))
            }
            (None, other) => other,
        };
        let mut file = std::fs::File::from(conn);
        let _ = std::io::Write::write_all(&mut file, &reply_line(&reply));
    }
    Ok((sup, done, listener))
}

/// Accepts control connections on `listener` for `sup` until aborted. `herd update` executes
/// this program again with `argv` (after the program path), keeping `listener` and the lock.
pub fn spawn_accept(
    listener: UnixListener,
    sup: Supervisor,
    lock_fd: RawFd,
    argv: Vec<std::ffi::OsString>,
    limits: &herd_core::Limits,
) -> tokio::task::JoinHandle<()> {
    let gate = Gate::new(
        limits.max_control_connections,
        std::time::Duration::from_millis(limits.control_idle_timeout_ms),
    );
    let ctx = Arc::new(UpdateContext {
        daemon_fds: vec![
            ("control".to_string(), listener.as_raw_fd()),
            ("lock".to_string(), lock_fd),
        ],
        argv,
    });
    // While an update is under way no connection is accepted: new clients wait in the
    // socket's queue and are served by the new program.
    let (updating_tx, mut updating) = tokio::sync::watch::channel(false);
    let updating_tx = Arc::new(updating_tx);
    let my_uid = nix::unistd::getuid().as_raw();
    tokio::spawn(async move {
        // Failures of accept in a row (the fd limit): logged once, then summed up.
        let mut failures = 0u64;
        loop {
            tokio::select! {
                _ = updating.changed() => {}
                accepted = listener.accept(), if !*updating.borrow() => match accepted {
                    Ok((conn, _)) => {
                        if failures > 1 {
                            tracing::info!("accept on the control socket works again after {failures} failures");
                        }
                        failures = 0;
                        let Some(ticket) = gate.admit() else {
                            refuse(&conn);
                            continue;
                        };
                        let sup = sup.clone();
                        let ctx = ctx.clone();
                        let updating_tx = updating_tx.clone();
                        tokio::spawn(async move {
                            if let Err(e) = connection(conn, sup, my_uid, ctx, updating_tx, ticket).await {
                                tracing::debug!("control connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        if failures == 0 {
                            tracing::warn!("accept on the control socket failed: {e}; retrying every 20 ms (logged once until it works)");
                        }
                        failures += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                },
            }
        }
    })
}

/// `herd kill` requests whose answer is not written yet: the supervisor has stopped when it
/// sends it, and the process must not end before the client has read it.
static KILLS_UNANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits (up to a second) until every `herd kill` is answered: called once the supervisor has
/// stopped, before the daemon's process ends (which would drop an answer not yet written, and
/// the client would see the connection closed without one).
pub async fn kills_answered() {
    for _ in 0..100 {
        if KILLS_UNANSWERED.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// What `herd update` needs from whoever serves the control socket.
struct UpdateContext {
    daemon_fds: Vec<(String, RawFd)>,
    argv: Vec<std::ffi::OsString>,
}

fn stop_all(sup: &Supervisor, why: &str) {
    tracing::info!("{why}: stopping every app, then the daemon");
    let sup = sup.clone();
    tokio::spawn(async move { sup.request(Command::Kill).await });
}

/// Opens `daemon.log` and every instance log again, as logrotate expects after moving them.
fn reload_logs(sup: &Supervisor, why: &str) {
    crate::log::reopen();
    tracing::info!("{why}: log files opened again");
    let sup = sup.clone();
    tokio::spawn(async move {
        if let Reply::Error { error, .. } = sup.request(Command::ReloadLogs).await {
            tracing::warn!("reopening instance logs: {}", error.message);
        }
    });
}

/// What a client reads when its reply could not be encoded: the reply it expected is lost,
/// but it is told so instead of waiting for it.
const UNENCODABLE_REPLY: &[u8] = b"{\"reply\":\"error\",\"v\":1,\"error\":{\"code\":\"internal\",\"message\":\"the daemon could not encode its reply; see daemon.log\"}}\n";

/// `reply` as one line. None of the protocol's replies can fail to encode (they hold only
/// strings, numbers and JSON values); if one ever does, the daemon logs why and answers
/// [`UNENCODABLE_REPLY`] rather than leaving the client waiting.
fn reply_line(reply: &Reply) -> Vec<u8> {
    encode_line(reply).unwrap_or_else(|e| {
        tracing::warn!("a reply could not be encoded: {e}");
        UNENCODABLE_REPLY.to_vec()
    })
}

async fn send(conn: &mut UnixStream, reply: &Reply) -> io::Result<()> {
    conn.write_all(&reply_line(reply)).await
}

/// Answers a connection the gate cannot admit, without waiting for it.
fn refuse(conn: &UnixStream) {
    let reply = Reply::error(
        ErrorCode::Busy,
        "too many control connections are busy (max_control_connections in HERD_HOME/config.toml); try again",
    );
    let _ = conn.try_write(&reply_line(&reply));
}

async fn connection(
    mut conn: UnixStream,
    sup: Supervisor,
    my_uid: u32,
    ctx: Arc<UpdateContext>,
    updating: Arc<tokio::sync::watch::Sender<bool>>,
    ticket: Ticket,
) -> io::Result<()> {
    let cred = conn.peer_cred()?;
    if cred.uid() != my_uid && cred.uid() != 0 {
        tracing::warn!(
            uid = cred.uid(),
            "control connection from another user refused"
        );
        let msg = format!(
            "this daemon belongs to uid {my_uid}; run herd as that user or set HERD_HOME to a home of your own"
        );
        return send(&mut conn, &Reply::error(ErrorCode::BadRequest, msg)).await;
    }
    let mut lines = LineBuffer::new(MAX_CONTROL_LINE);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Waiting for a whole request: the gate may close this connection to make room, and
        // it is closed when the request takes longer than the idle timeout.
        ticket.waiting(true);
        let deadline = tokio::time::Instant::now() + ticket.gate_idle();
        let line = loop {
            match lines.next_line() {
                Ok(Some(line)) => break line,
                Ok(None) => {}
                Err(LineError::TooLong { limit }) => {
                    let msg = format!(
                        "control message longer than {limit} bytes refused; the connection is closed"
                    );
                    return send(&mut conn, &Reply::error(ErrorCode::TooLarge, msg)).await;
                }
            }
            let n = tokio::select! {
                n = conn.read(&mut buf) => n?,
                () = ticket.close.notified() => {
                    refuse(&conn);
                    return Ok(());
                }
                () = tokio::time::sleep_until(deadline) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            // `read` never says more than the buffer holds.
            lines.extend(buf.get(..n).unwrap_or_default());
        };
        ticket.waiting(false);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let req: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let v = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("v").and_then(|v| v.as_u64()));
                let reply = match v {
                    Some(v) if v != u64::from(PROTOCOL_VERSION) => version_error(v),
                    _ => Reply::error(
                        ErrorCode::BadRequest,
                        format!("not a herd control request ({e}); see docs/protocol.md"),
                    ),
                };
                send(&mut conn, &reply).await?;
                continue;
            }
        };
        if req.v != PROTOCOL_VERSION {
            send(&mut conn, &version_error(u64::from(req.v))).await?;
            continue;
        }
        match req.cmd {
            Command::Logs {
                target,
                lines: n,
                follow,
                stream,
            } => return stream_logs(conn, &sup, target, n, follow, stream).await,
            Command::Kill => {
                KILLS_UNANSWERED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = sup.request(Command::Kill).await;
                let sent = send(&mut conn, &reply).await;
                KILLS_UNANSWERED.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                return sent;
            }
            Command::ReloadLogs => {
                crate::log::reopen();
                let reply = sup.request(Command::ReloadLogs).await;
                send(&mut conn, &reply).await?;
            }
            Command::Bus { topics } => return stream_bus(conn, &sup, topics).await,
            Command::Update { exe, formats } => {
                if *updating.borrow() {
                    let reply = Reply::error(ErrorCode::Update, "an update is already in progress");
                    return send(&mut conn, &reply).await;
                }
                let reply_fd = conn.as_fd().try_clone_to_owned()?;
                updating.send_replace(true);
                let reply = sup
                    .update(UpdateRequest {
                        exe: exe.into(),
                        formats,
                        reply_fd,
                        daemon_fds: ctx.daemon_fds.clone(),
                        argv: ctx.argv.clone(),
                    })
                    .await;
                updating.send_replace(false);
                // Only a failed update answers here; a successful one is answered by the
                // new daemon.
                return send(&mut conn, &reply).await;
            }
            cmd => {
                let reply = sup.request(cmd).await;
                send(&mut conn, &reply).await?;
            }
        }
    }
}

fn version_error(theirs: u64) -> Reply {
    Reply::error(
        ErrorCode::Version,
        format!(
            "the daemon speaks control protocol {PROTOCOL_VERSION} and the client {theirs}; run `herd kill` to restart the daemon with the installed herd"
        ),
    )
}

/// Streams every envelope that passes (of `topics`, if any) until the client goes away. The
/// topics are held as long as the watcher: they are bounded like an instance's subscriptions.
async fn stream_bus(mut conn: UnixStream, sup: &Supervisor, topics: Vec<String>) -> io::Result<()> {
    let limits = sup.limits();
    let refusal = if topics.len() > limits.max_subscriptions {
        Some(format!(
            "{} topics refused: a watcher may follow at most {} (max_subscriptions; raise it in HERD_HOME/config.toml)",
            topics.len(),
            limits.max_subscriptions
        ))
    } else {
        topics
            .iter()
            .find_map(|t| herd_core::bus::topic_refusal(&limits, "a topic", t.len()))
    };
    if let Some(why) = refusal {
        return send(&mut conn, &Reply::error(ErrorCode::TooLarge, why)).await;
    }
    let topics: std::collections::HashSet<String> = topics.into_iter().collect();
    let mut rx = sup.subscribe_bus();
    let (mut read_half, mut write_half) = conn.into_split();
    let mut probe = [0u8; 256];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(env) => {
                    if !topics.is_empty() && !env.topic.as_ref().is_some_and(|t| topics.contains(t)) {
                        continue;
                    }
                    let message = serde_json::to_value(&*env).unwrap_or_default();
                    write_half.write_all(&reply_line(&Reply::Bus { v: PROTOCOL_VERSION, message })).await?;
                }
                Err(RecvError::Lagged(n)) => {
                    let message = serde_json::json!({"kind": "error", "from": "herd", "data": format!("{n} messages not shown: this watcher was too slow")});
                    write_half.write_all(&reply_line(&Reply::Bus { v: PROTOCOL_VERSION, message })).await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            r = read_half.read(&mut probe) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
        }
    }
}

async fn stream_logs(
    mut conn: UnixStream,
    sup: &Supervisor,
    target: String,
    n: usize,
    follow: bool,
    stream: Option<LogStream>,
) -> io::Result<()> {
    // Subscribe before reading the files, so no line falls between the two.
    let mut rx = follow.then(|| sup.subscribe_logs());
    let files = match sup.log_files(target.clone(), stream).await {
        Ok(f) => f,
        Err(e) => return send(&mut conn, &Reply::from(e)).await,
    };
    for f in &files {
        for line in logs::tail(&f.path, n) {
            let reply = Reply::Log {
                v: PROTOCOL_VERSION,
                app: f.app.clone(),
                instance: f.instance,
                stream: f.stream,
                line,
            };
            send(&mut conn, &reply).await?;
        }
    }
    let Some(rx) = rx.as_mut() else {
        return send(
            &mut conn,
            &Reply::End {
                v: PROTOCOL_VERSION,
            },
        )
        .await;
    };
    let apps: HashSet<String> = files.iter().map(|f| f.app.clone()).collect();
    // Following `all` includes apps started later.
    let follow_all = target == "all";
    let (mut read_half, mut write_half) = conn.into_split();
    let mut probe = [0u8; 256];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if !(follow_all || apps.contains(&*ev.app)) || stream.is_some_and(|s| s != ev.stream) {
                        continue;
                    }
                    let reply = Reply::Log {
                        v: PROTOCOL_VERSION,
                        app: ev.app.to_string(),
                        instance: ev.instance,
                        stream: ev.stream,
                        line: ev.line.clone(),
                    };
                    write_half.write_all(&reply_line(&reply)).await?;
                }
                Err(RecvError::Lagged(skipped)) => {
                    let reply = Reply::Log {
                        v: PROTOCOL_VERSION,
                        app: String::from("herd"),
                        instance: 0,
                        stream: LogStream::Err,
                        line: format!("[herd] {skipped} lines skipped: this follower was too slow"),
                    };
                    write_half.write_all(&reply_line(&reply)).await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            // The client goes away: stop following.
            r = read_half.read(&mut probe) => match r {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_for_an_unencodable_one_is_an_internal_error_of_this_protocol() {
        let line = UNENCODABLE_REPLY.strip_suffix(b"\n").unwrap();
        match serde_json::from_slice::<Reply>(line).unwrap() {
            Reply::Error { v, error } => {
                assert_eq!(v, PROTOCOL_VERSION);
                assert_eq!(error.code, ErrorCode::Internal);
            }
            other => panic!("not an error reply: {other:?}"),
        }
    }
}
