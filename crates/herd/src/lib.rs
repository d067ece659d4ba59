//! The worker side of [herd](https://example.invalid/herd): what a Rust program run by herd
//! uses to take the sockets herd holds for it, to say it is ready, and to talk on herd's
//! message bus. Everything here degrades clearly outside herd: no listener, readiness a no-op,
//! the bus an error that says so.
//!
//! ```no_run
//! // A server that serves on herd's socket when run by herd, and on its own port otherwise.
//! let listener = herd::listener()
//!     .map(Ok)
//!     .unwrap_or_else(|| std::net::TcpListener::bind("127.0.0.1:8000"))?;
//! herd::ready()?;
//! for conn in listener.incoming() {
//!     // …
//! #   let _ = conn;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! With the `tokio` feature, [`bus::Bus`] sends, publishes, subscribes and makes requests
//! with an async API.

#[cfg(feature = "tokio")]
pub mod bus;
#[cfg(feature = "cluster")]
pub mod cluster;

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixListener};

/// Whether this process was started by herd (it has herd's variables, meant for its pid).
pub fn is_managed() -> bool {
    std::env::var_os("HERD_APP").is_some()
}

/// The app name herd runs this process as.
pub fn app() -> Option<String> {
    std::env::var("HERD_APP").ok()
}

/// This instance's number (0-based), stable across restarts.
pub fn instance() -> Option<u32> {
    std::env::var("HERD_INSTANCE").ok()?.parse().ok()
}

/// Number of instances of the app.
pub fn instances() -> Option<u32> {
    std::env::var("HERD_INSTANCES").ok()?.parse().ok()
}

/// The listening sockets herd passed (fds 3, 4, …) with their names, if they are meant for
/// this process (`LISTEN_PID`). Each call after the first returns nothing: the fds are owned
/// by whoever took them.
pub fn listen_fds() -> Vec<(RawFd, String)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !ours || n <= 0 || TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut names = names.split(':').map(str::to_string);
    (3..3 + n)
        .map(|fd| (fd, names.next().unwrap_or_default()))
        .collect()
}

/// Inherited socket: TCP or Unix.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix stream listener.
    Unix(UnixListener),
}

/// Every inherited listening socket, in herd's order (`--port` then `--listen`).
pub fn listeners() -> Vec<Listener> {
    listen_fds()
        .into_iter()
        .map(|(fd, _)| {
            // SAFETY: socket activation hands these fds to this process, and `listen_fds`
            // gives each out once.
            let tcp = unsafe { TcpListener::from_raw_fd(fd) };
            if tcp.local_addr().is_ok() {
                Listener::Tcp(tcp)
            } else {
                let fd = std::os::fd::IntoRawFd::into_raw_fd(tcp);
                // SAFETY: as above; the fd is a Unix socket.
                Listener::Unix(unsafe { UnixListener::from_raw_fd(fd) })
            }
        })
        .collect()
}

/// The first inherited TCP listener, or `None` when not run by herd with a port.
pub fn listener() -> Option<TcpListener> {
    listeners().into_iter().find_map(|l| match l {
        Listener::Tcp(t) => Some(t),
        Listener::Unix(_) => None,
    })
}

/// The first inherited TCP listener, ready for tokio.
///
/// # Errors
/// When the socket cannot be registered with the runtime.
#[cfg(feature = "tokio")]
pub fn tokio_listener() -> std::io::Result<Option<tokio::net::TcpListener>> {
    match listener() {
        Some(l) => {
            l.set_nonblocking(true)?;
            Ok(Some(tokio::net::TcpListener::from_std(l)?))
        }
        None => Ok(None),
    }
}

/// Resolves when this instance is asked to stop (SIGTERM or SIGINT, which is how herd and
/// the embedded primary ask): stop accepting, finish in-flight work, then return from main.
/// Use it with `axum::serve(…).with_graceful_shutdown(herd::shutdown())`.
///
/// # Panics
/// Outside a tokio runtime, or if the signal handlers cannot be installed.
#[cfg(feature = "tokio")]
pub async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Tells herd this instance is ready to serve (sd_notify `READY=1` on `NOTIFY_SOCKET`). A
/// no-op outside herd or systemd.
///
/// # Errors
/// When the notify socket exists but cannot be written.
pub fn ready() -> std::io::Result<()> {
    notify("READY=1")
}

/// Sends an sd_notify message (`READY=1`, `STATUS=…`).
///
/// # Errors
/// When the notify socket exists but cannot be written.
pub fn notify(state: &str) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to(state.as_bytes(), path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn outside_herd_everything_degrades() {
        // The test runner is not run by herd (no LISTEN_PID for us).
        assert!(super::listener().is_none());
        assert!(super::listeners().is_empty());
    }
}
