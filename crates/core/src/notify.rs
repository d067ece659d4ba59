//! The `NOTIFY_SOCKET` every instance gets: a Unix datagram socket on which programs that
//! speak systemd's `sd_notify` protocol say `READY=1`. The sender is identified by its
//! credentials (`SCM_CREDENTIALS`), not by anything it writes.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use crate::ratelimit::{Admit, LogLimit};

/// What a notify datagram said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Pid of the sending process (from the kernel, not the message).
    pub pid: u32,
    /// `READY=1` was in it.
    pub ready: bool,
    /// `STATUS=…`, if any.
    pub status: Option<String>,
    /// `WATCHDOG=1` (`Some(true)`: alive) or `WATCHDOG=trigger` (`Some(false)`).
    pub watchdog: Option<bool>,
}

/// Binds the notify socket at `path` (replacing a stale one).
///
/// # Errors
/// When the socket cannot be bound.
pub fn bind(path: &Path) -> io::Result<UnixDatagram> {
    let _ = std::fs::remove_file(path);
    let sock = UnixDatagram::bind(path)?;
    setsockopt(&sock, sockopt::PassCred, &true).map_err(io::Error::from)?;
    Ok(sock)
}

/// Receives notices forever, calling `on_notice` for each well-formed one. What instances send
/// here can make the daemon log at most `log` (a [`LogLimit`]) lines; anything that is not a
/// notice is dropped without a word.
pub async fn serve(sock: UnixDatagram, mut log: LogLimit, mut on_notice: impl FnMut(Notice)) {
    let mut buf = vec![0u8; 4096];
    loop {
        let got = sock
            .async_io(Interest::READABLE, || {
                let mut iov = [io::IoSliceMut::new(&mut buf)];
                let mut cmsg = nix::cmsg_space!(nix::libc::ucred);
                let msg = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut pid = None;
                // Control data that did not fit (an instance sending fds here: the kernel
                // closes them) makes the datagram anonymous, hence ignored; it is not an
                // error of the socket.
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmCredentials(cred) = c {
                            pid = Some(cred.pid() as u32);
                        }
                    }
                }
                Ok((msg.bytes, pid))
            })
            .await;
        match got {
            Ok((n, Some(pid))) => {
                if let Some(notice) = parse(pid, buf.get(..n).unwrap_or_default()) {
                    on_notice(notice);
                }
            }
            Ok((_, None)) => tracing::debug!("notify datagram without credentials ignored"),
            Err(e) => {
                match log.admit(tokio::time::Instant::now()) {
                    Admit::Log { suppressed } if suppressed > 0 => {
                        tracing::warn!("notify socket: {e} ({suppressed} more suppressed)")
                    }
                    Admit::Log { .. } => tracing::warn!("notify socket: {e}"),
                    Admit::Suppress => {}
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn parse(pid: u32, data: &[u8]) -> Option<Notice> {
    let text = std::str::from_utf8(data).ok()?;
    let mut notice = Notice {
        pid,
        ready: false,
        status: None,
        watchdog: None,
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => notice.ready = true,
            Some(("STATUS", s)) => notice.status = Some(s.to_string()),
            Some(("WATCHDOG", "1")) => notice.watchdog = Some(true),
            Some(("WATCHDOG", "trigger")) => notice.watchdog = Some(false),
            _ => {}
        }
    }
    Some(notice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ready_and_status() {
        let n = parse(7, b"STATUS=warming up\nREADY=1\n").unwrap();
        assert!(n.ready);
        assert_eq!(n.status.as_deref(), Some("warming up"));
        assert!(!parse(7, b"WATCHDOG=1").unwrap().ready);
        assert_eq!(parse(7, b"WATCHDOG=1").unwrap().watchdog, Some(true));
        assert_eq!(parse(7, b"WATCHDOG=trigger").unwrap().watchdog, Some(false));
        assert_eq!(parse(7, b"READY=1").unwrap().watchdog, None);
        assert!(parse(7, &[0xff, 0xfe]).is_none());
    }

    #[tokio::test]
    async fn receives_from_a_real_sender_with_its_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = bind(&path).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let log = LogLimit::new(1, std::time::Duration::from_secs(1));
        let task = tokio::spawn(serve(sock, log, move |n| {
            let _ = tx.send(n);
        }));
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &path).unwrap();
        let n = rx.recv().await.unwrap();
        assert_eq!(n.pid, std::process::id());
        assert!(n.ready);
        task.abort();
    }
}
