//! The daemon's own log, `HERD_HOME/daemon.log`: a writer for the tracing subscriber that
//! rotates by size (to `daemon.log.1`), opens again on `SIGHUP` or `herd reload-logs` (for
//! logrotate), and can never fail: a line that cannot be written (a full disk) is dropped and
//! counted in [`herd_core::health::DAEMON_LOG`], and the next line tries again. The standard
//! error of the daemon follows the current file, so whatever else writes there (a panic
//! message) lands in it too.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use herd_core::health::DAEMON_LOG;

/// A handle on `daemon.log`; clones share the file.
#[derive(Debug, Clone)]
pub struct DaemonLog {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
    /// Lines dropped since the last one written.
    dropped: u64,
    /// Point stdout and stderr at the file (the daemon; not unit tests).
    stdio: bool,
}

/// The daemon's log, once the daemon has set it up.
static LOG: OnceLock<DaemonLog> = OnceLock::new();

impl DaemonLog {
    /// Opens `home`'s `daemon.log`, rotating past `max` bytes, and makes it the daemon's log
    /// for [`reopen`].
    pub fn install(home: &crate::Home, max: u64) -> Self {
        let mut inner = Inner {
            path: home.daemon_log(),
            file: None,
            size: 0,
            max,
            dropped: 0,
            stdio: true,
        };
        inner.open();
        let log = Self {
            inner: Arc::new(Mutex::new(inner)),
        };
        let _ = LOG.set(log.clone());
        log
    }

    fn append(&self, bytes: &[u8]) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.append(bytes);
    }
}

impl Write for DaemonLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens `daemon.log` again at its path (after logrotate moved it). Does nothing outside the
/// daemon.
pub fn reopen() {
    if let Some(log) = LOG.get() {
        if let Ok(mut inner) = log.inner.lock() {
            inner.open();
        }
    }
}

/// Changes the size past which `daemon.log` rotates (the limits of a handed-over daemon).
pub fn set_max(max: u64) {
    if let Some(log) = LOG.get() {
        if let Ok(mut inner) = log.inner.lock() {
            inner.max = max;
        }
    }
}

impl Inner {
    /// Opens the file at `path` (0600, never through a link) and points stderr at it.
    fn open(&mut self) {
        let opened = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path);
        match opened {
            Ok(file) => {
                // A log left by an older herd may be 0644.
                let _ = file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
                self.size = file.metadata().map_or(0, |m| m.len());
                if self.stdio {
                    let _ = nix::unistd::dup2_stderr(&file);
                    let _ = nix::unistd::dup2_stdout(&file);
                }
                self.file = Some(file);
            }
            Err(e) => {
                DAEMON_LOG.failed(0, &e);
            }
        }
    }

    fn rotate(&mut self) {
        let old = PathBuf::from(format!("{}.1", self.path.display()));
        if let Err(e) = std::fs::rename(&self.path, old) {
            // Keep writing to the file as it is; the next line tries again.
            DAEMON_LOG.failed(0, &e);
            return;
        }
        self.open();
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.file.is_none() {
            self.open();
        }
        if self.size.saturating_add(bytes.len() as u64) > self.max && self.size > 0 {
            self.rotate();
        }
        let Some(file) = self.file.as_mut() else {
            self.dropped += 1;
            return;
        };
        match file.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                if DAEMON_LOG.succeeded() && self.dropped > 0 {
                    let note = format!(
                        "[herd] {} lines of this log could not be written (see herd list)\n",
                        self.dropped
                    );
                    if file.write_all(note.as_bytes()).is_ok() {
                        self.size += note.len() as u64;
                    }
                }
                self.dropped = 0;
            }
            Err(e) => {
                self.dropped += 1;
                DAEMON_LOG.failed(bytes.len(), &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut inner = Inner {
            path: dir.path().join("daemon.log"),
            file: None,
            size: 0,
            max: 1000,
            dropped: 0,
            stdio: false,
        };
        let line = [b'x'; 99];
        for _ in 0..25 {
            inner.append(&line);
            inner.append(b"\n");
        }
        let now = std::fs::metadata(dir.path().join("daemon.log"))
            .unwrap()
            .len();
        let old = std::fs::metadata(dir.path().join("daemon.log.1"))
            .unwrap()
            .len();
        assert!(now <= 1000 && old <= 1000, "{now} {old}");
        assert_eq!(now + old, 2500 % 1000 + 1000);
    }
}
