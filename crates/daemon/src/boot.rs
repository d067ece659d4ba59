//! The daemon's boot: the fresh start of `herd daemon` ([`fresh`]), the takeover of the
//! previous program's state after `herd update` ([`after_update`], [`Takeover`]), and the
//! daemon part of `herd run` ([`Foreground`]: the lock, the control socket, a takeover).
//!
//! It owns the order of the first steps — inherited fds, `HERD_HOME`, settings, the lock,
//! `daemon.log`, leftovers of a daemon that died, the runtime — and nothing after them: the
//! control server is [`crate::serve`], the apps are the supervisor's. The command line sets
//! up the tracing subscriber (this crate does not depend on one: it hands over the
//! [`DaemonLog`] to write to) and runs `herd run`'s apps in the foreground.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use herd_core::handover::{self, Handover};
use herd_core::{Config, Supervisor};
use tokio::task::JoinHandle;

use crate::log::DaemonLog;
use crate::{Home, HomeError, Lock, Settings};

/// Why the daemon (or `herd run`) could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// `HERD_HOME` cannot be created or is not safe to use; the message names the fix.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// `config.toml` is broken; the message names the file, the key and the fix.
    #[error(transparent)]
    Settings(#[from] crate::SettingsError),
    /// The lock file cannot be opened or written.
    #[error("cannot take the daemon's lock {} (HERD_HOME must be yours and writable)", .path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Another daemon holds the lock of this home.
    #[error("a herd daemon already runs for {}; stop it with `herd kill`, or set HERD_HOME to another folder", .home.display())]
    AlreadyRunning {
        /// `HERD_HOME`.
        home: PathBuf,
    },
    /// The tokio runtime cannot be built (out of fds or memory).
    #[error("starting the runtime")]
    Runtime(#[source] io::Error),
    /// The supervisor cannot start.
    #[error("starting the supervisor")]
    Supervisor(#[source] io::Error),
    /// The control socket cannot be bound.
    #[error("binding the control socket {}", .path.display())]
    Control {
        /// `herd.sock`.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The state handed over by `herd update` cannot be taken, and could not be given back
    /// to the previous program either (when it could, this process runs that program again
    /// and this error is never seen).
    #[error("cannot take over from the previous program: {why}; {fallback}")]
    Takeover {
        /// Why the takeover failed.
        why: String,
        /// Why the state could not be given back.
        fallback: io::Error,
    },
    /// The supervisor or control socket handed over cannot be taken over.
    #[error("cannot take over from the previous program")]
    Adopt(#[source] io::Error),
    /// The daemon failed while running.
    #[error("running the daemon")]
    Serve(#[source] io::Error),
}

/// `herd daemon`, started by a client that found no daemon: closes the fds inherited from
/// whoever started it, prepares `HERD_HOME`, reads the settings, takes the lock, opens
/// `daemon.log` (handed to `init_log`, which sets up tracing to write to it), kills what a
/// daemon that died left running, and serves until `herd kill` or a signal stops every app.
/// Returns at once, with `Ok`, when another daemon holds the lock: it won the race, and the
/// client connects to that one.
///
/// # Errors
/// When `HERD_HOME`, `config.toml`, the lock, the runtime or the control socket cannot be
/// used.
pub fn fresh(home: &Home, init_log: impl FnOnce(DaemonLog)) -> Result<(), BootError> {
    // Taken (and made close-on-exec) before the inherited fds are closed.
    let link = herd_core::keeper::Link::from_env();
    close_inherited_fds();
    home.ensure()?;
    if link.is_none() && herd_core::keeper::wanted() {
        // This process is the keeper; the daemon is its child (docs/keeper.md).
        let code = crate::keeper::run(vec![c"herd".to_owned(), c"daemon".to_owned()]);
        if code == 0 {
            return Ok(());
        }
        std::process::exit(i32::from(code));
    }
    let settings = crate::load_settings(home)?;
    let Some(lock) = take_lock(home)? else {
        return Ok(());
    };
    init_log(DaemonLog::install(
        home,
        settings.limits.daemon_log_max_bytes,
    ));
    let swept = herd_core::sweep_leftovers(&home.pids());
    if swept > 0 {
        tracing::warn!("killed {swept} processes left by a daemon that died without stopping them");
    }
    let rt = runtime().map_err(BootError::Runtime)?;
    rt.block_on(crate::serve(
        home,
        settings,
        lock.raw_fd(),
        None,
        link.map(std::sync::Arc::new),
    ))
    .map_err(BootError::Serve)
}

/// The fd of the state handed over by `herd update` (`HERD_HANDOVER_FD`), when this process
/// was started to take it over.
pub fn handover_fd() -> Option<RawFd> {
    std::env::var(handover::ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
}

/// `herd daemon` after `herd update`: the same process, running the new binary, with the
/// previous program's state at `fd` (see [`handover_fd`]) and its fds. `init_log` sets up
/// tracing as for [`fresh`]. Whatever goes wrong before the state is taken over gives it back
/// to the previous program (executed again from the fd it left), so no instance is lost to a
/// broken binary. The settings are those the daemon ran with: `config.toml` is read again at
/// the next fresh start.
///
/// # Errors
/// When the state can be neither taken over nor given back, or the daemon fails once it
/// runs.
pub fn after_update(
    home: &Home,
    fd: RawFd,
    init_log: impl FnOnce(DaemonLog),
) -> Result<(), BootError> {
    init_log(DaemonLog::install(
        home,
        herd_core::Limits::default().daemon_log_max_bytes,
    ));
    let takeover = Takeover::read(fd)?;
    // Taken once the state is: a takeover that fails gives the previous program the link
    // with everything else.
    let link = herd_core::keeper::Link::from_env();
    let rt = runtime().map_err(|e| takeover_failed(fd, format!("starting the runtime: {e}")))?;
    // The lock fd stays open as it is (close-on-exec is set once the state is taken over).
    let mut settings = takeover.settings();
    settings.metrics = crate::load_settings(home).ok().and_then(|s| s.metrics);
    crate::log::set_max(settings.limits.daemon_log_max_bytes);
    let Takeover {
        handover, lock_fd, ..
    } = takeover;
    if std::env::var_os(herd_core::keeper::RECOVERY_ENV).is_some() {
        // A new pid took over the lock the keeper held: the file says so.
        write_pid(lock_fd);
    }
    rt.block_on(crate::serve(
        home,
        settings,
        lock_fd,
        Some((*handover, fd)),
        link.map(std::sync::Arc::new),
    ))
    .map_err(BootError::Serve)
}

/// The state a previous program handed over at `herd update`, read, with its lock.
#[derive(Debug)]
pub struct Takeover {
    /// Boxed: the state is large, and [`Foreground`] carries a `Takeover`.
    handover: Box<Handover>,
    /// The memfd holding the state, kept open to give it back.
    memfd: RawFd,
    /// The previous program's lock fd, open under the same number.
    lock_fd: RawFd,
}

impl Takeover {
    /// The state this process was started to take over ([`handover_fd`]), if any.
    ///
    /// # Errors
    /// As [`Takeover::read`].
    pub fn from_env() -> Result<Option<Self>, BootError> {
        handover_fd().map(Self::read).transpose()
    }

    /// Reads the state a previous program handed over at `fd`, and its lock. On failure gives
    /// the state back to the previous program, which runs again in this process (and so this
    /// does not return).
    ///
    /// # Errors
    /// When the state can be neither read nor given back.
    pub fn read(fd: RawFd) -> Result<Self, BootError> {
        // Fault injection for the tests of the way back: a takeover that fails (not honoured
        // by the previous program when it runs again).
        if let Ok(why) = std::env::var(handover::FAULT_ENV) {
            if std::env::var_os(handover::FAILED_ENV).is_none() {
                return Err(takeover_failed(fd, why));
            }
        }
        let h = handover::read(fd)
            .map_err(|e| takeover_failed(fd, format!("reading the handover: {e}")))?;
        let lock_fd = h
            .daemon_fds
            .get("lock")
            .copied()
            .filter(|&fd| handover::is_open(fd))
            .ok_or_else(|| takeover_failed(fd, "the handover has no lock".into()))?;
        Ok(Self {
            handover: Box::new(h),
            memfd: fd,
            lock_fd,
        })
    }

    /// The settings the previous program ran with.
    fn settings(&self) -> Settings {
        let s = &self.handover.supervisor;
        Settings {
            host: s.host.clone(),
            bus: s.bus_url.clone(),
            max_message_bytes: s.max_message_bytes,
            limits: s.limits,
            // Not part of the handover: read again (the endpoint is bound anew after exec).
            metrics: None,
        }
    }
}

/// Gives the state back to the previous program; the error says why if even that failed.
fn takeover_failed(fd: RawFd, why: String) -> BootError {
    // Never a panic, even with stderr on a full disk.
    let _ = writeln!(
        io::stderr(),
        "[herd] cannot take over from the previous program: {why}"
    );
    let fallback = handover::fall_back(fd, &why);
    BootError::Takeover { why, fallback }
}

/// How `herd run` runs its apps, set up before its runtime starts; [`Foreground::start`]
/// starts them in it.
#[derive(Debug)]
pub enum Foreground {
    /// The apps of this `herd run` alone: their logs and notify socket in `dir`, no control
    /// socket, `HERD_HOME` untouched but for its `config.toml`.
    Private {
        /// A runtime directory of this process's own.
        dir: PathBuf,
    },
    /// `herd run --control`: `HERD_HOME`'s daemon, in the foreground, holding its lock.
    Control {
        /// The lock of `HERD_HOME`.
        lock: Lock,
    },
    /// `herd run --control` after `herd update`: this process ran the previous program, and
    /// takes over its state instead of starting apps.
    TakeOver(Takeover),
}

impl Foreground {
    /// `herd run --control`: prepares `HERD_HOME`, takes its lock and kills what a daemon that
    /// died left running (said on stderr).
    ///
    /// # Errors
    /// When `HERD_HOME` cannot be used, or a daemon already runs for it.
    pub fn control(home: &Home) -> Result<Self, BootError> {
        home.ensure()?;
        let Some(lock) = take_lock(home)? else {
            return Err(BootError::AlreadyRunning {
                home: home.dir.clone(),
            });
        };
        let swept = herd_core::sweep_leftovers(&home.pids());
        if swept > 0 {
            let _ = writeln!(
                io::stderr(),
                "[herd] killed {swept} processes left by a daemon that died without stopping them"
            );
        }
        Ok(Self::Control { lock })
    }

    /// Whether this takes over the state of a previous program (which has its apps).
    pub fn takes_over(&self) -> bool {
        matches!(self, Self::TakeOver(_))
    }

    /// Starts the supervisor (with the apps handed over, if any) and, with `--control`,
    /// serves `HERD_HOME`'s control socket. The settings come from `config.toml`, or from the
    /// previous program after `herd update`.
    ///
    /// # Errors
    /// When the settings, the supervisor, the control socket or the state handed over cannot
    /// be used.
    ///
    /// With `keeper` (this `herd run --control` is the child of a keeper, docs/keeper.md), the
    /// supervisor journals its state to it, and the control socket and lock are among the fds
    /// it holds; once every app has stopped for good, the caller says goodbye to it
    /// ([`herd_core::keeper::Link::bye`]).
    pub async fn start(
        self,
        home: &Home,
        keeper: Option<Arc<herd_core::keeper::Link>>,
    ) -> Result<Running, BootError> {
        // `herd update` executes this program again with the same command line.
        let argv = || std::env::args_os().skip(1).collect();
        let kept = |supervisor: &Supervisor, control: RawFd, lock: RawFd| {
            if keeper.is_some() {
                supervisor.keep_daemon_fds(vec![
                    ("control".to_string(), control),
                    ("lock".to_string(), lock),
                ]);
            }
        };
        match self {
            Self::TakeOver(t) => {
                let settings = t.settings();
                let limits = settings.limits;
                let Takeover {
                    handover,
                    memfd,
                    lock_fd,
                } = t;
                if std::env::var_os(herd_core::keeper::RECOVERY_ENV).is_some() {
                    // A new pid took over the lock the keeper held: the file says so.
                    write_pid(lock_fd);
                    let _ = writeln!(
                        io::stderr(),
                        "[herd] the previous daemon died; this one (pid {}) took over every app",
                        std::process::id()
                    );
                }
                let mut config = crate::config(home, settings);
                config.keeper = keeper.clone();
                let (supervisor, done, listener) = crate::take_over(config, *handover, memfd)
                    .await
                    .map_err(BootError::Adopt)?;
                kept(&supervisor, listener.as_raw_fd(), lock_fd);
                let accept =
                    crate::spawn_accept(listener, supervisor.clone(), lock_fd, argv(), &limits);
                Ok(Running {
                    supervisor,
                    done,
                    control: Some(ControlServer {
                        accept,
                        socket: home.socket(),
                        _lock: None,
                    }),
                    keeper,
                })
            }
            Self::Control { lock } => {
                let settings = crate::load_settings(home)?;
                let limits = settings.limits;
                let mut config = crate::config(home, settings);
                config.keeper = keeper.clone();
                let (supervisor, done) =
                    Supervisor::start(config).map_err(BootError::Supervisor)?;
                let listener = crate::bind_control(home).map_err(|source| BootError::Control {
                    path: home.socket(),
                    source,
                })?;
                kept(&supervisor, listener.as_raw_fd(), lock.raw_fd());
                let accept = crate::spawn_accept(
                    listener,
                    supervisor.clone(),
                    lock.raw_fd(),
                    argv(),
                    &limits,
                );
                Ok(Running {
                    supervisor,
                    done,
                    control: Some(ControlServer {
                        accept,
                        socket: home.socket(),
                        _lock: Some(lock),
                    }),
                    keeper,
                })
            }
            Self::Private { dir } => {
                let settings = crate::load_settings(home)?;
                let (supervisor, done) = Supervisor::start(private_config(settings, &dir))
                    .map_err(BootError::Supervisor)?;
                Ok(Running {
                    supervisor,
                    done,
                    control: None,
                    keeper: None,
                })
            }
        }
    }
}

/// The supervisor settings of a `herd run` without `--control`.
fn private_config(settings: Settings, dir: &Path) -> Config {
    Config {
        host: settings.host,
        bus_url: settings.bus,
        max_message_bytes: settings.max_message_bytes,
        log_dir: dir.join("logs"),
        notify_path: dir.join("notify.sock"),
        pids_file: None,
        limits: settings.limits,
        node_dir: Some(dir.join("node")),
        keeper: None,
    }
}

/// `herd run`'s supervisor, started.
pub struct Running {
    /// The supervisor of the apps.
    pub supervisor: Supervisor,
    /// Completes once `kill` has stopped every app.
    pub done: JoinHandle<()>,
    /// The control server, with `--control`.
    pub control: Option<ControlServer>,
    /// The keeper's link, when a keeper runs this `herd run --control`.
    pub keeper: Option<Arc<herd_core::keeper::Link>>,
}

/// `herd run --control` keeps its apps alive across its own death as `herd daemon` does
/// (docs/keeper.md): unless a keeper already runs it (`HERD_KEEPER_FD`), it takes over a
/// previous program's state (`herd update`), or `HERD_KEEPER=0`, this process becomes the
/// keeper and runs the same command line as its child. `Some(status)`: the keeper has ended
/// (with its child's status); `None`: this process runs the apps.
pub fn keep_foreground() -> Option<u8> {
    use std::os::unix::ffi::OsStringExt;
    if std::env::var_os(herd_core::keeper::ENV).is_some()
        || handover_fd().is_some()
        || !herd_core::keeper::wanted()
    {
        return None;
    }
    let argv = std::env::args_os()
        .map(|a| std::ffi::CString::new(a.into_vec()))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    Some(crate::keeper::run(argv))
}

/// The control socket served by `herd run --control`.
#[derive(Debug)]
pub struct ControlServer {
    accept: JoinHandle<()>,
    socket: PathBuf,
    /// Held for the process's life; `None` after a takeover, where the lock fd handed over
    /// stays open under its number.
    _lock: Option<Lock>,
}

impl ControlServer {
    /// Stops accepting connections and removes the socket. The lock stays held until the
    /// process exits ([`crate::take_lock`] keeps a duplicate of its fd): `herd kill` waits for
    /// that.
    pub fn close(self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Takes the home's lock; `None` when another daemon holds it.
fn take_lock(home: &Home) -> Result<Option<Lock>, BootError> {
    crate::take_lock(home).map_err(|source| BootError::Lock {
        path: home.lock(),
        source,
    })
}

/// The daemon's runtime: one thread, as the daemon is off the data path.
fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Closes the fds inherited from whoever started the daemon without close-on-exec: they are
/// not the daemon's to hold (a pipe kept open keeps its reader waiting) and would leak into
/// every instance. Every fd this process opened itself is close-on-exec (Rust opens them
/// so), and so is left alone.
/// Writes this process's pid into the lock file open at `fd`.
fn write_pid(fd: RawFd) {
    use std::os::fd::FromRawFd;
    // SAFETY: the lock fd stays open for the daemon's life; it is only borrowed here (the
    // ManuallyDrop keeps it open).
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let pid = format!("{}\n", std::process::id());
    let _ = file.set_len(0);
    let _ = std::os::unix::fs::FileExt::write_all_at(&*file, pid.as_bytes(), 0);
}

fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        // No /proc: at least keep them from reaching instances.
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; it closes nothing.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        return;
    };
    // Collected first: the directory's own fd is open while it is read.
    let fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed fd gives EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            // SAFETY: an fd without close-on-exec was inherited, not opened by this process:
            // nothing here owns it.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home {
            dir: tmp.path().join("home"),
        };
        (tmp, home)
    }

    #[test]
    fn a_second_herd_run_control_is_refused_with_the_fix() {
        let (_tmp, home) = home();
        let first = Foreground::control(&home).unwrap();
        assert!(!first.takes_over());
        let e = Foreground::control(&home).unwrap_err();
        assert!(matches!(e, BootError::AlreadyRunning { .. }), "{e:?}");
        assert!(e.to_string().contains("herd kill"), "{e}");
    }

    #[test]
    fn a_handover_that_cannot_be_read_nor_given_back_says_both() {
        // No previous program was kept (no HERD_HANDOVER_EXE_FD): nothing to fall back to.
        let e = Takeover::read(999_999).unwrap_err();
        let BootError::Takeover { why, fallback } = &e else {
            panic!("{e:?}");
        };
        assert!(why.starts_with("reading the handover"), "{why}");
        assert!(fallback.to_string().contains("not kept"), "{fallback}");
        assert!(
            e.to_string()
                .starts_with("cannot take over from the previous program: reading the handover"),
            "{e}"
        );
    }

    #[test]
    fn home_errors_keep_their_own_message() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let e = Foreground::control(&Home { dir: file }).unwrap_err();
        assert!(matches!(e, BootError::Home(_)), "{e:?}");
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }
}
