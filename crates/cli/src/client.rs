//! The client side of the control protocol: find or start the daemon, send a request, read
//! replies. Blocking std I/O: a CLI call is one short exchange, and skipping an async
//! runtime keeps `herd list` fast.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use herd_daemon::Home;
use herd_proto::{encode_line, Command, ErrorCode, Reply, Request, MAX_CONTROL_LINE};

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: std::path::PathBuf,
}

impl Client {
    /// Connects to the daemon of `home`, starting it first if none runs.
    ///
    /// # Errors
    /// When the daemon cannot be reached or started.
    pub fn connect(home: &Home) -> Result<Self> {
        let path = home.socket();
        if home.dir.exists() {
            home.check()?;
        }
        home.check_socket()?;
        match UnixStream::connect(&path) {
            Ok(s) => return Self::wrap(s, &path),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot reach the herd daemon at {}", path.display()))
            }
        }
        // A broken config.toml is reported here, rather than as a daemon that never comes up.
        herd_daemon::load_settings(home).map_err(anyhow::Error::msg)?;
        home.ensure()?;
        // One client at a time starts the daemon; the others wait, then find it. Without this,
        // a daemon started by a slow second client could take the lock after the first daemon
        // was killed, and run on unasked.
        let _starting = spawn_lock(home)?;
        home.check_socket()?;
        if let Ok(s) = UnixStream::connect(&path) {
            return Self::wrap(s, &path);
        }
        if !herd_daemon::lock_held(home) {
            spawn_daemon(home)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            home.check_socket()?;
            match UnixStream::connect(&path) {
                Ok(s) => return Self::wrap(s, &path),
                Err(e) if Instant::now() > deadline => {
                    bail!(
                        "the herd daemon did not come up within 10 s ({e}); see {}",
                        home.daemon_log().display()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Connects only if a daemon already runs.
    ///
    /// # Errors
    /// When HERD_HOME or its socket is not safe to use.
    pub fn connect_existing(home: &Home) -> Result<Option<Self>> {
        let path = home.socket();
        if !home.dir.exists() {
            return Ok(None);
        }
        home.check()?;
        home.check_socket()?;
        match UnixStream::connect(&path) {
            Ok(s) => Self::wrap(s, &path).map(Some),
            Err(_) => Ok(None),
        }
    }

    fn wrap(s: UnixStream, path: &std::path::Path) -> Result<Self> {
        // The socket was ours when we looked; the process behind it must be ours too before
        // anything (a command carries its environment) is sent.
        let me = nix::unistd::geteuid().as_raw();
        let peer = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
            .context("asking the daemon's credentials (SO_PEERCRED)")?;
        if peer.uid() != me {
            bail!(
                "the process behind {} runs as uid {}, not as you (uid {me}); herd sends it nothing: check who can write to HERD_HOME",
                path.display(),
                peer.uid()
            );
        }
        let writer = s.try_clone()?;
        Ok(Self {
            reader: BufReader::new(s),
            writer,
            path: path.to_path_buf(),
        })
    }

    /// A fresh connection to the same daemon (after `herd update` closed the old one).
    fn reconnect(&mut self) -> Result<()> {
        let s = UnixStream::connect(&self.path)
            .with_context(|| format!("cannot reach the herd daemon at {}", self.path.display()))?;
        *self = Self::wrap(s, &self.path.clone())?;
        Ok(())
    }

    /// A second handle on the connection, whose `shutdown` ends a `recv` waiting in another
    /// thread (a followed log stream whose reader went away).
    ///
    /// # Errors
    /// When the socket cannot be duplicated.
    pub fn closer(&self) -> std::io::Result<UnixStream> {
        self.writer.try_clone()
    }

    /// Sends one request.
    ///
    /// # Errors
    /// When the daemon has gone away.
    pub fn send(&mut self, cmd: Command) -> Result<()> {
        let line = encode_line(&Request::new(cmd)).context("sending to the herd daemon")?;
        self.writer
            .write_all(&line)
            .context("sending to the herd daemon")
    }

    /// Reads the next reply; `None` when the daemon closed the connection.
    ///
    /// # Errors
    /// When a reply cannot be read or understood.
    pub fn recv(&mut self) -> Result<Option<Reply>> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_CONTROL_LINE as u64 * 64)
            .read_until(b'\n', &mut line)
            .context("reading from the herd daemon")?;
        if n == 0 {
            return Ok(None);
        }
        let reply = serde_json::from_slice(&line).with_context(|| {
            format!(
                "the daemon answered something this herd does not understand: {}; run `herd kill` to restart it with this version",
                String::from_utf8_lossy(&line).trim()
            )
        })?;
        Ok(Some(reply))
    }

    /// Sends a request and reads its one reply.
    ///
    /// # Errors
    /// When the exchange fails.
    ///
    /// While the daemon is being updated (`herd update`) a command is refused with `busy`
    /// (it did nothing) and is sent again. A connection the old program accepted but had not
    /// read from is cut by the update (the request is refused with a reset, or cannot be
    /// written): the command was not carried out and is sent again on a new connection. A
    /// connection closed after the request was read is retried only for commands that just
    /// read ([`Command::read_only`]): another command may have been carried out.
    pub fn call(&mut self, cmd: Command) -> Result<Reply> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let read_only = cmd.read_only();
        let gone = || {
            anyhow::anyhow!("the herd daemon closed the connection without answering; see its log (daemon.log in HERD_HOME)")
        };
        loop {
            match self.send(cmd.clone()).and_then(|()| self.recv()) {
                Ok(Some(Reply::Error { error, .. })) if error.code == ErrorCode::Busy => {}
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) if read_only => {}
                Ok(None) => return Err(gone()),
                Err(e) if cut_before_read(&e) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() > deadline {
                bail!("the herd daemon stayed busy (an update?) for 15 s; try again");
            }
            std::thread::sleep(Duration::from_millis(20));
            if self.reconnect().is_err() {
                return Err(gone());
            }
        }
    }
}

/// A connection the daemon closed without reading the request: a write that found it closed,
/// or a read refused with a reset (the kernel resets a Unix connection closed with unread
/// data).
fn cut_before_read(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        })
}

use std::io::Read as _;

/// An exclusive lock on `HERD_HOME/spawn.lock`, held while this client starts the daemon.
fn spawn_lock(home: &Home) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = home.dir.join("spawn.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {}: {e}", path.display()))
}

/// Starts `herd daemon` detached: its own session, output to `daemon.log`.
fn spawn_daemon(home: &Home) -> Result<()> {
    home.ensure()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(home.daemon_log())
        .with_context(|| format!("cannot open {}", home.daemon_log().display()))?;
    let exe = std::env::current_exe().context("finding the herd binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("daemon")
        .env("HERD_HOME", &home.dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the herd daemon")?;
    // The daemon outlives us; reap it later only if it exits at once (lost the lock race).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(())
}
