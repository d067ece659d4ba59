//! The herd daemon: owns `HERD_HOME`, guards it with a lock so only one daemon runs per home,
//! serves the control protocol on `herd.sock`, and hands commands to the supervisor.
//!
//! It does not start itself (the CLI does, on first use) and holds no app state of its own:
//! that lives in the supervisor.

mod server;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use server::serve;

/// The files of one `HERD_HOME`.
#[derive(Debug, Clone)]
pub struct Home {
    /// The directory itself.
    pub dir: PathBuf,
}

impl Home {
    /// `HERD_HOME`, or `~/.herd`.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("HERD_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
                Path::new(&home).join(".herd")
            });
        Self { dir }
    }

    /// Control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("herd.sock")
    }
    /// Lock file, holding the daemon's pid.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("daemon.lock")
    }
    /// The daemon's own log.
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    /// Instance logs.
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// Session ids of running instances (for cleanup after a crash of the daemon).
    pub fn pids(&self) -> PathBuf {
        self.dir.join("instances.pids")
    }
    /// The `NOTIFY_SOCKET` given to instances.
    pub fn notify(&self) -> PathBuf {
        self.dir.join("notify.sock")
    }

    /// Creates the directory (mode 0700) if needed.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn ensure(&self) -> io::Result<()> {
        if !self.dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
        }
        let meta = std::fs::metadata(&self.dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// The pid written in the lock file by the running (or last) daemon.
    pub fn daemon_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.lock())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// The daemon's claim on a home: an exclusive `flock` held for its whole life.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the home's lock, or returns `None` if another daemon holds it.
///
/// # Errors
/// When the lock file cannot be opened or written.
pub fn take_lock(home: &Home) -> io::Result<Option<Lock>> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(home.lock())?;
    match nix::fcntl::Flock::lock(
        file.try_clone()?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    ) {
        Ok(locked) => {
            // Keep the lock alive through the cloned descriptor for the daemon's whole life.
            std::mem::forget(locked);
        }
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, e)) => return Err(io::Error::from(e)),
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(Some(Lock { _file: file }))
}

/// Whether a daemon holds the home's lock right now.
pub fn lock_held(home: &Home) -> bool {
    let Ok(file) = File::open(home.lock()) else {
        return false;
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => false,
        Err((_, e)) => e == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// Keeps `daemon.log` from growing without bound: past 10 MiB it moves to `daemon.log.1`.
pub fn rotate_daemon_log(home: &Home) {
    let path = home.daemon_log();
    if std::fs::metadata(&path)
        .map(|m| m.len() > 10 << 20)
        .unwrap_or(false)
    {
        let _ = std::fs::rename(&path, home.dir.join("daemon.log.1"));
    }
}
