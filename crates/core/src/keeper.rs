//! The keeper's link (docs/keeper.md): what a daemon and its keeper say to each other.
//!
//! The keeper is the process `herd daemon` starts as first: it starts the real daemon as its
//! child, holds a copy of every fd the daemon would need to go on (listening sockets, the
//! read ends of instances' output pipes, the daemon's ends of their channels, the control
//! socket, the lock, the notify socket) together with the daemon's state, reaps the instances
//! once the daemon is gone (it is their subreaper), and when the daemon dies starts a new one
//! with all of it, as `herd update` would have handed it over.
//!
//! The link is two `SOCK_SEQPACKET` socket pairs (one message per `send`, fds attached to
//! it): the daemon's ends are at fds `N` (the journal: the daemon sends, the keeper answers
//! each commit once the set is swapped in and the previous one closed) and `N+1` (exits, from
//! the keeper), `N` given in `HERD_KEEPER_FD`. Every message is a few native-endian 32-bit
//! words:
//!
//! | message | words | fds |
//! |---|---|---|
//! | daemon → keeper: a new set begins | `BEGIN` | |
//! | daemon → keeper: fds of the set, each with the number the next daemon finds it at | `FDS n t₁…tₙ` | n (≤ [`MAX_FDS_PER_MESSAGE`]) |
//! | daemon → keeper: the set is whole; the state is the memfd at `s`, the program the fd at `e`; the state has every exit up to number `x` in it | `COMMIT s e x` | |
//! | keeper → daemon: the set is in place (the previous one closed) | `COMMITTED` | |
//! | daemon → keeper: the daemon stops for good (`herd kill`); no new one | `BYE` | |
//! | keeper → daemon: a process it reaped, with its wait status, exit number `x` | `EXIT pid status x` | |
//!
//! The keeper keeps each exit until a committed state has it in (`COMMIT … x`), and gives a
//! new daemon every exit it keeps: an exit a daemon read and died before writing into its
//! state is given again to the next one (which ignores an exit it already knows of).
//!
//! The keeper parses nothing else and allocates nothing after it starts; see
//! `herd_daemon::keeper`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The variable naming the daemon's end of the link.
pub const ENV: &str = "HERD_KEEPER_FD";
/// Set (to the number of restarts) in a daemon the keeper started after the previous one
/// died.
pub const RECOVERY_ENV: &str = "HERD_KEEPER_RECOVERY";
/// `HERD_KEEPER=0` runs the daemon without a keeper (its death then stops every instance).
pub const SWITCH_ENV: &str = "HERD_KEEPER";

/// Message kinds.
pub const BEGIN: u32 = 1;
/// Fds of the set.
pub const FDS: u32 = 2;
/// The set is whole.
pub const COMMIT: u32 = 3;
/// The daemon stops for good.
pub const BYE: u32 = 4;
/// The set is in place.
pub const COMMITTED: u32 = 5;
/// A process the keeper reaped.
pub const EXIT: u32 = 10;

/// Fds attached to one message (the kernel takes at most 253).
pub const MAX_FDS_PER_MESSAGE: usize = 200;
/// The most fds a set may hold; a daemon with more is not kept (it says so).
pub const MAX_FDS: usize = 8192;
/// Largest message, in bytes.
pub const MAX_MESSAGE: usize = 4 * (2 + MAX_FDS_PER_MESSAGE);

/// Whether this daemon is to run with a keeper (`HERD_KEEPER` is not `0` or `off`).
pub fn wanted() -> bool {
    !std::env::var(SWITCH_ENV).is_ok_and(|v| v == "0" || v == "off")
}

/// The daemon's end of the link.
#[derive(Debug)]
pub struct Link {
    /// Sets go out, `COMMITTED` comes back (blocking, with a timeout).
    journal: OwnedFd,
    /// Exits come in (read by a task, on a duplicate).
    exits: OwnedFd,
}

/// How long the daemon waits for the keeper to take a set.
const KEEPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Link {
    /// The link this daemon was started with (`HERD_KEEPER_FD`), if any; the variable is
    /// removed so that nothing started from here sees it.
    pub fn from_env() -> Option<Self> {
        let fd: RawFd = std::env::var(ENV).ok()?.parse().ok()?;
        // SAFETY: remove_var is called at start-up, before the runtime's threads exist.
        unsafe { std::env::remove_var(ENV) };
        let take = |fd: RawFd| -> Option<OwnedFd> {
            if fd <= 2 || !crate::handover::is_open(fd) {
                return None;
            }
            crate::handover::set_cloexec(fd);
            // SAFETY: the keeper passed this fd to this process alone, for the link.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ty = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType).ok()?;
            (ty == nix::sys::socket::SockType::SeqPacket).then_some(fd)
        };
        let journal = take(fd)?;
        let exits = take(fd.checked_add(1)?)?;
        let timeout = nix::sys::time::TimeVal::new(KEEPER_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&journal, nix::sys::socket::sockopt::SendTimeout, &timeout)
            .ok()?;
        nix::sys::socket::setsockopt(
            &journal,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &timeout,
        )
        .ok()?;
        Some(Self { journal, exits })
    }

    /// A duplicate of the socket the keeper's exits come on, for the task that reads them.
    ///
    /// # Errors
    /// When the process is out of fds.
    pub fn exits(&self) -> io::Result<OwnedFd> {
        self.exits.try_clone()
    }

    /// Duplicates both sockets to two consecutive fds without close-on-exec, for the program
    /// `herd update` executes (which finds them through `HERD_KEEPER_FD`, the first).
    ///
    /// # Errors
    /// When the process is out of fds.
    pub fn pass_on(&self) -> io::Result<(OwnedFd, OwnedFd)> {
        // Two consecutive free numbers, high enough to stay clear of the rest.
        for base in (1000..60_000).step_by(2) {
            if crate::handover::is_open(base) || crate::handover::is_open(base + 1) {
                continue;
            }
            let dup_at = |fd: &OwnedFd, at: RawFd| -> io::Result<OwnedFd> {
                let n = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD(at))
                    .map_err(io::Error::from)?;
                // SAFETY: just made, owned by nothing else.
                Ok(unsafe { OwnedFd::from_raw_fd(n) })
            };
            let a = dup_at(&self.journal, base)?;
            let b = dup_at(&self.exits, base + 1)?;
            if a.as_raw_fd() == base && b.as_raw_fd() == base + 1 {
                return Ok((a, b));
            }
        }
        Err(io::Error::other("no two consecutive free fds"))
    }

    /// Hands the keeper a new set: `fds` (each found at its own number by the next daemon),
    /// the state in `state` and the program in `exe` (both among `fds`), and waits until the
    /// keeper has it in place and has closed the previous set.
    ///
    /// # Errors
    /// When the keeper does not take the set (gone, or not answering for a second).
    pub fn store(&self, fds: &[RawFd], state: RawFd, exe: RawFd, exits: u32) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::other(format!(
                "{} fds are more than a keeper holds ({MAX_FDS})",
                fds.len()
            )));
        }
        self.send(&[BEGIN], &[])?;
        for chunk in fds.chunks(MAX_FDS_PER_MESSAGE) {
            let mut words = Vec::with_capacity(2 + chunk.len());
            words.push(FDS);
            words.push(chunk.len() as u32);
            words.extend(chunk.iter().map(|&fd| fd as u32));
            self.send(&words, chunk)?;
        }
        self.send(&[COMMIT, state as u32, exe as u32, exits], &[])?;
        let mut buf = [0u8; 16];
        loop {
            match nix::sys::socket::recv(
                self.journal.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            ) {
                Ok(4) if buf.get(..4) == Some(&COMMITTED.to_ne_bytes()[..]) => return Ok(()),
                Ok(0) => return Err(io::Error::other("the keeper is gone")),
                Ok(_) => return Err(io::Error::other("the keeper did not take the state")),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// Tells the keeper the daemon stops for good: it is not to start another.
    pub fn bye(&self) {
        let _ = self.send(&[BYE], &[]);
    }

    fn send(&self, words: &[u32], fds: &[RawFd]) -> io::Result<()> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let iov = [io::IoSlice::new(&bytes)];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(fds)];
        let cmsgs: &[nix::sys::socket::ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        loop {
            match nix::sys::socket::sendmsg::<()>(
                self.journal.as_raw_fd(),
                &iov,
                cmsgs,
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }
}

/// An `EXIT` message read from the keeper: the pid, its wait status and the exit's number.
pub fn read_exit(msg: &[u8]) -> Option<(i32, i32, u32)> {
    let word = |i: usize| -> Option<u32> {
        let b = msg.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes(b.try_into().ok()?))
    };
    (msg.len() == 16 && word(0)? == EXIT).then_some(())?;
    Some((word(1)? as i32, word(2)? as i32, word(3)?))
}

/// The pids whose parent is `pid` (`/proc/PID/task/PID/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_message_is_read_and_anything_else_is_not() {
        let mut m = Vec::new();
        for w in [EXIT, 42, 9, 7] {
            m.extend(w.to_ne_bytes());
        }
        assert_eq!(read_exit(&m), Some((42, 9, 7)));
        assert_eq!(read_exit(&m[..12]), None);
        m[0] = 3;
        assert_eq!(read_exit(&m), None);
    }
}
