//! The herd daemon: owns `HERD_HOME`, guards it with a lock so only one daemon runs per home,
//! serves the control protocol on `herd.sock`, and hands commands to the supervisor.
//!
//! It does not start itself (the CLI does, on first use, and calls [`boot`]) and holds no app
//! state of its own: that lives in the supervisor.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod boot;
mod gate;
mod keeper;
pub mod log;
mod metrics;
mod server;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use server::{bind_control, config, kills_answered, serve, spawn_accept, take_over};

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
    /// The JavaScript files herd puts into Node workers (`herd_core::node_shims`; written,
    /// 0700, by the supervisor at start).
    pub fn node(&self) -> PathBuf {
        self.dir.join("node")
    }

    /// Creates the directory (mode 0700, and its parents) if needed, checks that it is safe
    /// to use ([`Home::check`]), and creates `logs/` (0700) in it.
    ///
    /// # Errors
    /// When it cannot be created or is not safe, with the fix named.
    pub fn ensure(&self) -> Result<(), HomeError> {
        match std::fs::symlink_metadata(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(|e| {
                        HomeError::Io(
                            format!("cannot create HERD_HOME at {}", self.dir.display()),
                            e,
                        )
                    })?;
            }
            _ => {}
        }
        self.check()?;
        private_dir(&self.logs())
    }

    /// Checks that `HERD_HOME` can be trusted, as OpenSSH checks `~/.ssh`: it belongs to the
    /// caller and no other user can write to it, nor to any directory above it (a
    /// world-writable directory with the sticky bit, such as `/tmp`, is fine: nobody else can
    /// move what is in it). Otherwise another user could read the commands sent to the
    /// daemon (and their environment), answer them, or point herd's writes at their files.
    /// Read and search bits for others on HERD_HOME itself are removed.
    ///
    /// # Errors
    /// What is wrong and how to fix it.
    pub fn check(&self) -> Result<(), HomeError> {
        let me = nix::unistd::geteuid().as_raw();
        let meta = std::fs::metadata(&self.dir).map_err(|e| {
            HomeError::Io(
                format!("cannot read HERD_HOME at {}", self.dir.display()),
                e,
            )
        })?;
        if !meta.is_dir() {
            return Err(HomeError::Unsafe(format!(
                "HERD_HOME {} is not a directory; set HERD_HOME to a folder of your own",
                self.dir.display()
            )));
        }
        if meta.uid() != me {
            return Err(HomeError::Unsafe(format!(
                "HERD_HOME {} belongs to uid {}, not to you (uid {me}): its owner could read your commands or redirect herd's files; use a folder of your own (the default is ~/.herd) or `chown {me} {}`",
                self.dir.display(),
                meta.uid(),
                self.dir.display()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(HomeError::Unsafe(format!(
                "HERD_HOME {} is writable by other users (mode {:o}): they could replace its socket or files; run `chmod 700 {}`",
                self.dir.display(),
                meta.mode() & 0o7777,
                self.dir.display()
            )));
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |e| HomeError::Io(format!("cannot chmod 700 {}", self.dir.display()), e),
            )?;
        }
        // Every directory above it, along the path as given and along the real path.
        let given = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let real = std::fs::canonicalize(&self.dir).unwrap_or_else(|_| given.clone());
        for top in [&given, &real] {
            for dir in top.ancestors().skip(1) {
                let Ok(m) = std::fs::symlink_metadata(dir) else {
                    continue;
                };
                let owner_ok = m.uid() == me || m.uid() == 0;
                let shared = m.mode() & 0o022 != 0 && !m.file_type().is_symlink();
                let sticky = m.mode() & 0o1000 != 0;
                if !owner_ok || (shared && !sticky) {
                    return Err(HomeError::Unsafe(format!(
                        "{} (above HERD_HOME {}) {}: another user could replace HERD_HOME; put HERD_HOME in a folder only you and root can write (the default is ~/.herd)",
                        dir.display(),
                        self.dir.display(),
                        if owner_ok {
                            "is writable by other users".to_string()
                        } else {
                            format!("belongs to uid {}", m.uid())
                        }
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks that `herd.sock` is a socket of the caller's before anything is sent to it.
    ///
    /// # Errors
    /// When it is something else, or another user's.
    pub fn check_socket(&self) -> Result<(), HomeError> {
        let path = self.socket();
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Nothing there (yet): nothing to send to.
            Err(_) => return Ok(()),
        };
        let me = nix::unistd::geteuid().as_raw();
        if !m.file_type().is_socket() || m.uid() != me {
            return Err(HomeError::Unsafe(format!(
                "{} is not a socket of yours (uid {}, {}); herd sends nothing to it: remove it, and check who else can write to {}",
                path.display(),
                m.uid(),
                if m.file_type().is_symlink() { "a symbolic link" } else if m.file_type().is_socket() { "a socket" } else { "not a socket" },
                self.dir.display()
            )));
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

/// Daemon settings: `HERD_HOME/config.toml`, then the environment (`HERD_HOST`, `HERD_BUS`),
/// which wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Name of this daemon on the bus.
    pub host: String,
    /// Broker URL bridging the bus across hosts.
    pub bus: Option<String>,
    /// Largest message on the bus, in bytes.
    pub max_message_bytes: usize,
    /// What one instance, app or client may take from the daemon.
    pub limits: herd_core::Limits,
    /// Where the Prometheus endpoint listens (`metrics` in config.toml, `HERD_METRICS`); none
    /// by default.
    pub metrics: Option<std::net::SocketAddr>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    bus: Option<String>,
    host: Option<String>,
    max_message_bytes: Option<usize>,
    max_topic_bytes: Option<usize>,
    max_subscriptions: Option<usize>,
    max_pending_requests: Option<usize>,
    max_direct_channels: Option<usize>,
    max_listen_sockets: Option<usize>,
    max_control_connections: Option<usize>,
    control_idle_timeout_ms: Option<u64>,
    instance_log_burst: Option<u32>,
    instance_log_interval_ms: Option<u64>,
    daemon_log_max_bytes: Option<u64>,
    metrics: Option<String>,
}

/// The keys `config.toml` takes, for error messages.
const CONFIG_KEYS: &str = "bus, host, metrics, max_message_bytes, max_topic_bytes, max_subscriptions, max_pending_requests, max_direct_channels, max_listen_sockets, max_control_connections, control_idle_timeout_ms, instance_log_burst, instance_log_interval_ms, daemon_log_max_bytes";

/// Why the daemon's settings cannot be used. Each message names the file, the problem and the
/// fix.
///
/// The message is whole in `Display` (the CLI shows it as it is), so the error underneath is
/// kept as a field, not also given as `source()`: a chain would show it twice.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `config.toml` exists but cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: io::Error,
    },
    /// `config.toml` is not valid TOML, or has a key or value herd does not take.
    #[error(
        "{} is not valid: {}; fix it (keys: {CONFIG_KEYS}) or remove it",
        path.display(),
        error.to_string().trim().replace('\n', " ")
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the TOML reader said.
        error: toml::de::Error,
    },
    /// A number is outside the range herd accepts for it.
    #[error("{key} = {value} in {} is out of range; use {min} to {max}", path.display())]
    OutOfRange {
        /// The key in `config.toml`.
        key: &'static str,
        /// Its value.
        value: String,
        /// The smallest value accepted.
        min: String,
        /// The largest value accepted.
        max: String,
        /// The file.
        path: PathBuf,
    },
    /// The metrics address is not an IP address and port.
    #[error(
        "metrics address {addr:?} (from HERD_METRICS or {}) is not usable: give IP:PORT, e.g. metrics = \"127.0.0.1:9209\"",
        path.display()
    )]
    BadMetricsAddress {
        /// What was given.
        addr: String,
        /// The file it may come from (else `HERD_METRICS`).
        path: PathBuf,
    },
    /// The bus URL is not one of a broker herd speaks to.
    #[error(
        "bus URL {url:?} (from HERD_BUS or {}) is not supported: use redis://HOST:PORT, nats://HOST:PORT or kafka://HOST:PORT",
        path.display()
    )]
    UnsupportedBus {
        /// The URL.
        url: String,
        /// The file it may come from (else `HERD_BUS`).
        path: PathBuf,
    },
    /// The bus URL is of a broker herd speaks to, but its client cannot read it.
    #[error("{error} (from HERD_BUS or {}); fix it", path.display())]
    BadBus {
        /// What is wrong, the URL's password hidden.
        error: String,
        /// The file it may come from (else `HERD_BUS`).
        path: PathBuf,
    },
}

/// Checks that `value` of `key` lies in `range`, naming the file and the fix if not.
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    path: &Path,
) -> Result<T, SettingsError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(SettingsError::OutOfRange {
            key,
            value: v.to_string(),
            min: range.start().to_string(),
            max: range.end().to_string(),
            path: path.to_path_buf(),
        })
    }
}

fn limits(file: &ConfigFile, path: &Path) -> Result<herd_core::Limits, SettingsError> {
    let d = herd_core::Limits::default();
    Ok(herd_core::Limits {
        max_topic_bytes: in_range(
            "max_topic_bytes",
            file.max_topic_bytes,
            d.max_topic_bytes,
            1..=1 << 20,
            path,
        )?,
        max_subscriptions: in_range(
            "max_subscriptions",
            file.max_subscriptions,
            d.max_subscriptions,
            1..=1 << 20,
            path,
        )?,
        max_pending_requests: in_range(
            "max_pending_requests",
            file.max_pending_requests,
            d.max_pending_requests,
            1..=1 << 20,
            path,
        )?,
        max_direct_channels: in_range(
            "max_direct_channels",
            file.max_direct_channels,
            d.max_direct_channels,
            0..=4096,
            path,
        )?,
        max_listen_sockets: in_range(
            "max_listen_sockets",
            file.max_listen_sockets,
            d.max_listen_sockets,
            0..=4096,
            path,
        )?,
        max_control_connections: in_range(
            "max_control_connections",
            file.max_control_connections,
            d.max_control_connections,
            4..=65536,
            path,
        )?,
        control_idle_timeout_ms: in_range(
            "control_idle_timeout_ms",
            file.control_idle_timeout_ms,
            d.control_idle_timeout_ms,
            100..=86_400_000,
            path,
        )?,
        instance_log_burst: in_range(
            "instance_log_burst",
            file.instance_log_burst,
            d.instance_log_burst,
            1..=1_000_000,
            path,
        )?,
        instance_log_interval_ms: in_range(
            "instance_log_interval_ms",
            file.instance_log_interval_ms,
            d.instance_log_interval_ms,
            10..=86_400_000,
            path,
        )?,
        daemon_log_max_bytes: in_range(
            "daemon_log_max_bytes",
            file.daemon_log_max_bytes,
            d.daemon_log_max_bytes,
            64 << 10..=1 << 40,
            path,
        )?,
    })
}

/// Reads the settings.
///
/// # Errors
/// A [`SettingsError`] naming the file, the place and the problem when `config.toml` is
/// broken or the bus URL is not supported.
pub fn load_settings(home: &Home) -> Result<Settings, SettingsError> {
    let path = home.dir.join("config.toml");
    let file: ConfigFile = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|error| SettingsError::Invalid {
            path: path.clone(),
            error,
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => ConfigFile::default(),
        Err(error) => return Err(SettingsError::Read { path, error }),
    };
    let limits = limits(&file, &path)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let host = env("HERD_HOST")
        .or(file.host)
        .or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
        })
        .unwrap_or_else(|| "localhost".into());
    let max = in_range(
        "max_message_bytes",
        file.max_message_bytes,
        herd_proto::MAX_CONTROL_LINE,
        256..=64 << 20,
        &path,
    )?;
    let bus = env("HERD_BUS").or(file.bus);
    if let Some(url) = &bus {
        if !herd_core::bus::SCHEMES.iter().any(|p| url.starts_with(p)) {
            return Err(SettingsError::UnsupportedBus {
                url: url.clone(),
                path,
            });
        }
        if let Err(e @ herd_core::bus::BridgeError::BadUrl { .. }) = herd_core::bus::check_url(url)
        {
            return Err(SettingsError::BadBus {
                error: e.to_string(),
                path,
            });
        }
    }
    let metrics = match env("HERD_METRICS").or(file.metrics) {
        None => None,
        Some(a) => Some(
            a.parse()
                .map_err(|_| SettingsError::BadMetricsAddress { addr: a, path })?,
        ),
    };
    Ok(Settings {
        host,
        bus,
        max_message_bytes: max,
        limits,
        metrics,
    })
}

/// Why a `HERD_HOME` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// It (or a directory above it) could be changed by another user.
    #[error("{0}")]
    Unsafe(String),
    /// A file operation failed.
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

/// Creates (0700) or checks a directory of HERD_HOME: a real directory of the caller's, not a
/// symbolic link.
fn private_dir(path: &Path) -> Result<(), HomeError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match std::fs::DirBuilder::new().mode(0o700).create(path) {
                Ok(()) => Ok(()),
                // Another herd (two clients starting the daemon at once) made it first: check
                // it as any existing one.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => private_dir(path),
                Err(e) => Err(HomeError::Io(
                    format!("cannot create {}", path.display()),
                    e,
                )),
            }
        }
        Err(e) => Err(HomeError::Io(format!("cannot read {}", path.display()), e)),
        Ok(m) if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() => {
            Err(HomeError::Unsafe(format!(
                "{} is not a directory of yours (herd follows no links in HERD_HOME); remove it",
                path.display()
            )))
        }
        Ok(m) => {
            if m.mode() & 0o7777 != 0o700 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(
                    |e| HomeError::Io(format!("cannot chmod 700 {}", path.display()), e),
                )?;
            }
            Ok(())
        }
    }
}

/// The daemon's claim on a home: an exclusive `flock` held for its whole life.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Lock {
    /// The fd that holds the lock.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self._file)
    }
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
        .custom_flags(libc::O_NOFOLLOW)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_with(config: &str) -> (tempfile::TempDir, Result<Settings, SettingsError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let home = Home {
            dir: dir.path().to_path_buf(),
        };
        let r = load_settings(&home);
        (dir, r)
    }

    #[test]
    fn settings_errors_name_the_file_the_value_and_the_fix() {
        let (dir, r) = settings_with("max_subscriptions = 0\n");
        let path = dir.path().join("config.toml");
        assert_eq!(
            r.unwrap_err().to_string(),
            format!(
                "max_subscriptions = 0 in {} is out of range; use 1 to 1048576",
                path.display()
            )
        );
        let (dir, r) = settings_with("max_message_bytes = 10\n");
        let path = dir.path().join("config.toml");
        assert_eq!(
            r.unwrap_err().to_string(),
            format!(
                "max_message_bytes = 10 in {} is out of range; use 256 to 67108864",
                path.display()
            )
        );
        let (dir, r) = settings_with("nope = 1\n");
        let path = dir.path().join("config.toml");
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.starts_with(&format!("{} is not valid: ", path.display())),
            "{msg}"
        );
        assert!(
            msg.ends_with(&format!("; fix it (keys: {CONFIG_KEYS}) or remove it")),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        if std::env::var_os("HERD_BUS").is_none() {
            let (dir, r) = settings_with("bus = \"http://b:1\"\n");
            let path = dir.path().join("config.toml");
            assert_eq!(
                r.unwrap_err().to_string(),
                format!(
                    "bus URL \"http://b:1\" (from HERD_BUS or {}) is not supported: use redis://HOST:PORT, nats://HOST:PORT or kafka://HOST:PORT",
                    path.display()
                )
            );
            let (dir, r) = settings_with("bus = \"kafka://b:x\"\n");
            let path = dir.path().join("config.toml");
            assert_eq!(
                r.unwrap_err().to_string(),
                format!(
                    "cannot read bus URL kafka://b:x: broker \"b:x\" has no valid port: use kafka://HOST:PORT (from HERD_BUS or {}); fix it",
                    path.display()
                )
            );
        }
    }

    #[test]
    fn an_unreadable_config_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading it fails with something else than
        // "not found".
        std::fs::create_dir(dir.path().join("config.toml")).unwrap();
        let home = Home {
            dir: dir.path().to_path_buf(),
        };
        let msg = load_settings(&home).unwrap_err().to_string();
        let prefix = format!("cannot read {}: ", dir.path().join("config.toml").display());
        assert!(msg.starts_with(&prefix), "{msg}");
    }
}
