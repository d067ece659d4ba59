//! The keeper (docs/keeper.md): the process `herd daemon` runs as first. It starts the real
//! daemon as its child, holds what the daemon gives it over the link ([`herd_core::keeper`]:
//! a copy of every fd the daemon needs to go on, and its state in a memfd), is the subreaper
//! of the instances, and when the daemon dies starts the next one with every fd at the
//! number the state names and `HERD_HANDOVER_FD` pointing at the state — the next daemon
//! takes over as after `herd update`. Processes it reaps are reported to the daemon, or kept
//! (up to [`EXITS`]) until the next one runs.
//!
//! It is small on purpose and meant to change almost never: one thread, no runtime; its
//! tables are allocated before the daemon first starts (after that, only a message's fd list
//! and its own log lines allocate); between `fork` and `exec` only async-signal-safe calls;
//! it parses nothing but fixed-size words from its own child; it does not panic (no unwrap,
//! no indexing). Signals are read from a signalfd: TERM, INT, QUIT,
//! HUP, USR1 and USR2 are passed to the daemon (held until the next one runs if none does).

use std::collections::VecDeque;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use herd_core::keeper::{
    self, BEGIN, BYE, COMMIT, COMMITTED, EXIT, FDS, MAX_FDS, MAX_FDS_PER_MESSAGE,
};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};

/// Exits kept while no daemon reads them.
const EXITS: usize = 4096;
/// Deaths in a row of daemons that never gave a state (they could not take over) after which
/// the keeper gives up (and its instances go: the next herd command starts afresh and stops
/// what is left).
const QUICK_DEATHS: u32 = 5;

/// An fd of the set, with the number the next daemon finds it at.
struct Held {
    target: RawFd,
    fd: OwnedFd,
}

/// A set of fds from the daemon, and where its state and program are.
struct Set {
    fds: Vec<Held>,
    state: RawFd,
    exe: RawFd,
    /// The daemon broke the protocol while sending it: the set is not used.
    broken: bool,
}

impl Set {
    fn with_capacity() -> Self {
        Self {
            fds: Vec::with_capacity(MAX_FDS),
            state: -1,
            exe: -1,
            broken: false,
        }
    }

    fn clear(&mut self) {
        self.fds.clear();
        self.state = -1;
        self.exe = -1;
        self.broken = false;
    }

    fn holds(&self, target: RawFd) -> bool {
        self.fds.iter().any(|h| h.target == target)
    }
}

/// A variable `NAME=` followed by up to 10 digits, written in place.
struct NumVar {
    buf: [u8; 40],
    prefix: usize,
}

impl NumVar {
    fn new(name: &str) -> Self {
        let mut buf = [0u8; 40];
        let bytes = name.as_bytes();
        let prefix = bytes.len().min(24);
        for (d, s) in buf.iter_mut().zip(bytes.iter().take(prefix)) {
            *d = *s;
        }
        if let Some(eq) = buf.get_mut(prefix) {
            *eq = b'=';
        }
        Self {
            buf,
            prefix: prefix + 1,
        }
    }

    /// Sets the value; the buffer stays NUL-terminated.
    fn set(&mut self, value: u32) {
        let mut digits = [0u8; 10];
        let mut n = value;
        let mut len = 0;
        loop {
            if let Some(d) = digits.get_mut(len) {
                *d = b'0' + (n % 10) as u8;
            }
            len += 1;
            n /= 10;
            if n == 0 || len == digits.len() {
                break;
            }
        }
        let mut at = self.prefix;
        for i in (0..len).rev() {
            if let (Some(dst), Some(src)) = (self.buf.get_mut(at), digits.get(i)) {
                *dst = *src;
            }
            at += 1;
        }
        for b in self.buf.iter_mut().skip(at) {
            *b = 0;
        }
    }

    fn ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }
}

/// Everything prepared before the daemon first starts.
struct Keeper {
    committed: Set,
    pending: Set,
    /// Exits not yet in a committed state: (number, pid, wait status).
    exits: VecDeque<(u32, i32, i32)>,
    /// Number of the last exit reaped.
    exit_seq: u32,
    /// Number of the last exit sent to the running daemon.
    exits_sent: u32,
    lost_exits: u64,
    /// The keeper's own program, to start the first daemon.
    own_exe: OwnedFd,
    /// The daemon's command line (`herd daemon`, or the `herd run --control …` that started the
    /// keeper): owns the strings `argv_ptrs` points at.
    _argv: Vec<CString>,
    /// Pointers of `_argv`, then NULL.
    argv_ptrs: Vec<*const libc::c_char>,
    /// The environment the daemon inherits (without the keeper's variables).
    env: Vec<CString>,
    /// Pointers of `env`, then the three variables, then NULL.
    envp: Vec<*const libc::c_char>,
    link_var: NumVar,
    state_var: NumVar,
    recovery_var: NumVar,
    /// Scratch for the child: the high duplicates of each fd.
    scratch: Vec<RawFd>,
    msg: Vec<u8>,
    daemon: Option<libc::pid_t>,
    /// The journal socket: sets come in, `COMMITTED` goes out.
    link: Option<OwnedFd>,
    /// The exits socket: exits go out.
    exits_link: Option<OwnedFd>,
    /// The running daemon has given a state since it started (it took over and serves).
    served: bool,
    restarts: u32,
    quick: u32,
    bye: bool,
    /// Signals for the daemon, held while none runs.
    held_signals: Vec<Signal>,
}

/// Runs the keeper: starts the daemon — this program with `argv` — and keeps it going until
/// it stops for good. Returns the exit status for the keeper's process: the daemon's own.
pub fn run(argv: Vec<CString>) -> u8 {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        mask.add(s);
    }
    if mask.thread_block().is_err() {
        say("cannot block signals");
        return 1;
    }
    let sigfd = match nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    ) {
        Ok(fd) => fd,
        Err(e) => {
            say(&format!("cannot read signals: {e}"));
            return 1;
        }
    };
    // Instances outlive the daemon: they are re-parented here, and reaped here.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        say(&format!(
            "cannot become the subreaper of the instances: {e}"
        ));
        return 1;
    }
    // Holding every fd of every instance takes more than the usual 1024.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    let own_exe = match std::fs::File::open("/proc/self/exe") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            say(&format!("cannot open its own program: {e}"));
            return 1;
        }
    };
    let env = herd_core::handover::environment_without(&[
        keeper::ENV,
        keeper::RECOVERY_ENV,
        herd_core::handover::ENV,
        herd_core::handover::EXE_ENV,
        herd_core::handover::FAILED_ENV,
    ]);
    let mut k = Keeper {
        committed: Set::with_capacity(),
        pending: Set::with_capacity(),
        exits: VecDeque::with_capacity(EXITS),
        exit_seq: 0,
        exits_sent: 0,
        lost_exits: 0,
        own_exe,
        argv_ptrs: argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([std::ptr::null()])
            .collect(),
        _argv: argv,
        envp: Vec::with_capacity(env.len() + 4),
        env,
        link_var: NumVar::new(keeper::ENV),
        state_var: NumVar::new(herd_core::handover::ENV),
        recovery_var: NumVar::new(keeper::RECOVERY_ENV),
        scratch: Vec::with_capacity(MAX_FDS + 2),
        msg: vec![0u8; keeper::MAX_MESSAGE],
        daemon: None,
        link: None,
        exits_link: None,
        served: false,
        restarts: 0,
        quick: 0,
        bye: false,
        held_signals: Vec::with_capacity(16),
    };
    if let Err(e) = k.start_daemon() {
        say(&format!("cannot start the daemon: {e}"));
        return 1;
    }
    loop {
        if let Some(code) = k.turn(&sigfd) {
            return code;
        }
    }
}

impl Keeper {
    /// One wait for the link or a signal, and what follows. `Some(code)`: the keeper ends.
    fn turn(&mut self, sigfd: &nix::sys::signalfd::SignalFd) -> Option<u8> {
        let want_out = self.daemon.is_some()
            && self
                .exits
                .back()
                .is_some_and(|&(seq, _, _)| seq > self.exits_sent);
        let sig_fd = sigfd.as_fd();
        let mut polled = [
            nix::poll::PollFd::new(sig_fd, nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sig_fd, nix::poll::PollFlags::empty()),
            nix::poll::PollFd::new(sig_fd, nix::poll::PollFlags::empty()),
        ];
        if let (Some(link), Some(slot)) = (self.link.as_ref(), polled.get_mut(1)) {
            *slot = nix::poll::PollFd::new(link.as_fd(), nix::poll::PollFlags::POLLIN);
        }
        if let (Some(link), Some(slot), true) =
            (self.exits_link.as_ref(), polled.get_mut(2), want_out)
        {
            *slot = nix::poll::PollFd::new(link.as_fd(), nix::poll::PollFlags::POLLOUT);
        }
        match nix::poll::poll(&mut polled, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        let ready = |p: Option<&nix::poll::PollFd>| {
            p.and_then(|p| p.revents()).is_some_and(|r| !r.is_empty())
        };
        let sig_ready = ready(polled.first());
        let link_ready = self.link.is_some() && ready(polled.get(1));
        if link_ready {
            self.read_link();
        }
        if sig_ready {
            while let Ok(Some(info)) = sigfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        if let Some(code) = self.reap() {
                            return Some(code);
                        }
                    }
                    Ok(sig) => self.pass_signal(sig),
                    Err(_) => {}
                }
            }
        }
        self.flush_exits();
        None
    }

    /// Reads what the daemon sent.
    fn read_link(&mut self) {
        let Some(link) = self.link.as_ref() else {
            return;
        };
        let raw = link.as_raw_fd();
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
        let mut iov = [std::io::IoSliceMut::new(&mut self.msg)];
        let got = socket::recvmsg::<()>(
            raw,
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let (len, received) = match got {
            Ok(m) => {
                let mut received: Vec<OwnedFd> = Vec::new();
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for fd in fds {
                                // SAFETY: received just now, owned by nothing else.
                                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                (m.bytes, received)
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => return,
            Err(_) => (0, Vec::new()),
        };
        if len == 0 {
            // The daemon closed its end (it is exiting): its exit comes as SIGCHLD.
            self.link = None;
            return;
        }
        let word = |msg: &[u8], i: usize| -> Option<u32> {
            let b = msg.get(i * 4..i * 4 + 4)?;
            Some(u32::from_ne_bytes(b.try_into().ok()?))
        };
        let msg = self.msg.get(..len).unwrap_or(&[]);
        match word(msg, 0) {
            Some(BEGIN) => self.pending.clear(),
            Some(FDS) => {
                let n = word(msg, 1).unwrap_or(0) as usize;
                if n != received.len() || self.pending.fds.len() + n > MAX_FDS {
                    self.pending.broken = true;
                    return;
                }
                for (i, fd) in received.into_iter().enumerate() {
                    match word(msg, 2 + i) {
                        Some(t) if t > 2 && t < i32::MAX as u32 / 2 => {
                            self.pending.fds.push(Held {
                                target: t as RawFd,
                                fd,
                            })
                        }
                        _ => self.pending.broken = true,
                    }
                }
            }
            Some(COMMIT) => {
                let state = word(msg, 1).map_or(-1, |w| w as RawFd);
                let exe = word(msg, 2).map_or(-1, |w| w as RawFd);
                let exits_in = word(msg, 3).unwrap_or(0);
                let good =
                    !self.pending.broken && self.pending.holds(state) && self.pending.holds(exe);
                if good {
                    // The exits the state has in are not needed any more.
                    while self
                        .exits
                        .front()
                        .is_some_and(|&(seq, _, _)| seq <= exits_in)
                    {
                        self.exits.pop_front();
                    }
                    self.served = true;
                    self.pending.state = state;
                    self.pending.exe = exe;
                    std::mem::swap(&mut self.committed, &mut self.pending);
                }
                // The previous set is closed before the daemon hears back: a socket it closed
                // is closed for good once it goes on (a port is free after `herd stop`).
                self.pending.clear();
                let answer = if good { COMMITTED } else { 0 };
                let _ = socket::send(
                    raw,
                    &answer.to_ne_bytes(),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                );
            }
            Some(BYE) => {
                // The daemon stops for good: what it left is let go now (the lock with it,
                // so `herd kill` sees the daemon gone once it has exited).
                self.bye = true;
                self.committed.clear();
                self.pending.clear();
            }
            _ => {}
        }
    }

    /// Reaps every child that exited. `Some(code)`: the keeper ends.
    fn reap(&mut self) -> Option<u8> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with WNOHANG on any child; status is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return None;
            }
            if Some(pid) == self.daemon {
                if let Some(code) = self.daemon_exited(status) {
                    return Some(code);
                }
                continue;
            }
            if self.exits.len() >= EXITS {
                self.exits.pop_front();
                self.lost_exits += 1;
            }
            self.exit_seq = self.exit_seq.wrapping_add(1);
            self.exits.push_back((self.exit_seq, pid, status));
        }
    }

    /// The daemon exited with `status`. `Some(code)`: the keeper ends with it.
    fn daemon_exited(&mut self, status: i32) -> Option<u8> {
        self.daemon = None;
        self.link = None;
        self.exits_link = None;
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status) as u8
        } else {
            1
        };
        if self.bye || self.committed.fds.is_empty() {
            // Stopped for good, or it never ran far enough to have anything to keep.
            return Some(code);
        }
        if self.served {
            self.quick = 0;
        } else {
            self.quick += 1;
        }
        if self.quick > QUICK_DEATHS {
            say("each new daemon died before it could take over; giving up (the next herd command starts a new daemon, which stops what is left)");
            return Some(1);
        }
        let how = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exited with status {code}")
        };
        say(&format!(
            "the daemon {how}; starting the next one, which takes over every instance"
        ));
        if self.quick > 1 {
            std::thread::sleep(Duration::from_millis(100 << self.quick.min(4)));
        }
        self.restarts += 1;
        match self.start_daemon() {
            Ok(()) => None,
            Err(e) => {
                say(&format!("cannot start the next daemon: {e}"));
                Some(1)
            }
        }
    }

    fn pass_signal(&mut self, sig: Signal) {
        match self.daemon {
            Some(pid) => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            None if self.held_signals.len() < self.held_signals.capacity() => {
                self.held_signals.push(sig);
            }
            None => {}
        }
    }

    /// Sends the daemon the exits it has not had yet.
    fn flush_exits(&mut self) {
        let Some(link) = self.exits_link.as_ref() else {
            return;
        };
        if self.daemon.is_none() {
            return;
        }
        let sent = self.exits_sent;
        for &(seq, pid, status) in self.exits.iter().filter(|e| e.0 > sent) {
            let mut words = [0u8; 16];
            for (i, w) in [EXIT, pid as u32, status as u32, seq].iter().enumerate() {
                if let Some(dst) = words.get_mut(i * 4..i * 4 + 4) {
                    dst.copy_from_slice(&w.to_ne_bytes());
                }
            }
            match socket::send(
                link.as_raw_fd(),
                &words,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => self.exits_sent = seq,
                Err(_) => return,
            }
        }
    }

    /// Starts a daemon: the first with no state, later ones with the committed set.
    fn start_daemon(&mut self) -> std::io::Result<()> {
        let pair = || {
            socket::socketpair(
                socket::AddressFamily::Unix,
                socket::SockType::SeqPacket,
                None,
                socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(std::io::Error::from)
        };
        let (mine, theirs) = pair()?;
        let (mine_exits, theirs_exits) = pair()?;
        let recovering = !self.committed.fds.is_empty();
        let max_target = self
            .committed
            .fds
            .iter()
            .map(|h| h.target)
            .max()
            .unwrap_or(2);
        let max_raw = self
            .committed
            .fds
            .iter()
            .map(|h| h.fd.as_raw_fd())
            .chain([
                theirs.as_raw_fd(),
                mine.as_raw_fd(),
                theirs_exits.as_raw_fd(),
                mine_exits.as_raw_fd(),
                self.own_exe.as_raw_fd(),
            ])
            .max()
            .unwrap_or(2);
        // The journal socket, and the exits socket right after it.
        let link_target = max_target + 1;
        // Above every number in use, every target and both sockets: nothing placed can land
        // on it.
        let base = max_target.max(max_raw) + 3;
        self.link_var.set(link_target as u32);
        self.state_var.set(self.committed.state.max(0) as u32);
        self.recovery_var.set(self.restarts);
        self.envp.clear();
        self.envp.extend(self.env.iter().map(|v| v.as_ptr()));
        self.envp.push(self.link_var.ptr());
        if recovering {
            self.envp.push(self.state_var.ptr());
            self.envp.push(self.recovery_var.ptr());
        }
        self.envp.push(std::ptr::null());
        let exe = if recovering {
            self.committed
                .fds
                .iter()
                .find(|h| h.target == self.committed.exe)
                .map_or(self.own_exe.as_raw_fd(), |h| h.fd.as_raw_fd())
        } else {
            self.own_exe.as_raw_fd()
        };
        self.scratch.clear();
        self.scratch.resize(self.committed.fds.len(), -1);
        // SAFETY: the child runs only async-signal-safe calls on memory prepared above, and
        // never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child of fork; see `child`.
            unsafe {
                child(
                    &self.committed.fds,
                    &mut self.scratch,
                    [theirs.as_raw_fd(), theirs_exits.as_raw_fd()],
                    link_target,
                    base,
                    exe,
                    &self.argv_ptrs,
                    &self.envp,
                )
            }
        }
        drop(theirs);
        drop(theirs_exits);
        self.daemon = Some(pid);
        self.link = Some(mine);
        self.exits_link = Some(mine_exits);
        self.served = false;
        // Every exit not in a committed state goes to the new daemon.
        self.exits_sent = 0;
        for sig in self.held_signals.drain(..) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
        if self.lost_exits > 0 {
            say(&format!(
                "{} exits of processes were not kept while no daemon ran (more than {EXITS})",
                self.lost_exits
            ));
            self.lost_exits = 0;
        }
        Ok(())
    }
}

/// The daemon's side of `fork`: every held fd at its target number (through duplicates above
/// `base`, so no placement overwrites an fd still to be placed), the two link sockets at
/// `link_target` and the next number, signals unblocked, then the daemon's program.
///
/// # Safety
/// Only in the child of `fork`: it calls async-signal-safe functions alone and never returns.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    held: &[Held],
    scratch: &mut [RawFd],
    links: [RawFd; 2],
    link_target: RawFd,
    base: RawFd,
    exe: RawFd,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> ! {
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for (h, s) in held.iter().zip(scratch.iter_mut()) {
        *s = libc::fcntl(h.fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base);
        if *s < 0 {
            libc::_exit(126);
        }
    }
    let [journal, exits] = links;
    let journal_high = libc::fcntl(journal, libc::F_DUPFD_CLOEXEC, base);
    let exits_high = libc::fcntl(exits, libc::F_DUPFD_CLOEXEC, base);
    let exe_high = libc::fcntl(exe, libc::F_DUPFD_CLOEXEC, base);
    if journal_high < 0 || exits_high < 0 || exe_high < 0 {
        libc::_exit(126);
    }
    for (h, s) in held.iter().zip(scratch.iter()) {
        // dup2 leaves the new fd without close-on-exec.
        if libc::dup2(*s, h.target) < 0 {
            libc::_exit(126);
        }
    }
    if libc::dup2(journal_high, link_target) < 0 || libc::dup2(exits_high, link_target + 1) < 0 {
        libc::_exit(126);
    }
    libc::fexecve(exe_high, argv.as_ptr(), envp.as_ptr());
    libc::_exit(127);
}

/// One line on the keeper's stderr (`daemon.log`).
fn say(what: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "[herd keeper {}] {what}",
        std::process::id()
    );
}
