//! The supervisor: every app, slot and process, driven by events. This file holds the handle
//! ([`Supervisor`], cloneable, sends requests in) and the types the parts share; each concern
//! has one file:
//!
//! - `task.rs` — the event loop, what follows every event, and the requests waiting on apps;
//! - `control.rs` — what each control command does, and its reply;
//! - `slot.rs` — a slot's states (with their data) and its transitions: exit, ready, timeout;
//!   drawn in `docs/slots.md`;
//! - `process.rs` — starting a slot's process (fds, variables, pumps, channel) and stopping it;
//! - `app.rs` — an app: start, stop, restart, scale, its environment, watch and memory limit;
//! - `reload.rs` — the rolling reload; `cron.rs` — `cron_restart`'s timer, which starts one;
//! - `timers.rs` — the one timer queue; `os.rs` — spawn, signal, kill, stats (faked in tests);
//! - `bus.rs` — the message bus router; `cluster.rs` — Node's cluster protocol and graceful
//!   stops; `update.rs` — `herd update`'s handover.
//!
//! It does not own the control socket (the daemon does) or print anything (`herd run` does).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use herd_proto::{AppSpec, AppStatus, Command, ErrorCode, ExitInfo, LogStream, Reply};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cgroup;
use crate::ipc::Inbound;
use crate::logs::{self, LogBus, LogEvent, SharedLog};
use crate::notify::{self, Notice};
use crate::sockets::{ListenAddr, Listener};
use crate::spawn::{self};
use crate::stats;

/// Slot `$i` of `$app` (an [`App`]), or its primary for [`primary::PRIMARY`], mutable. A
/// macro, so that the borrow is of the field alone and the app's other fields stay usable.
macro_rules! slot_mut {
    ($app:expr, $i:expr) => {
        if $i == $crate::supervisor::primary::PRIMARY {
            $app.primary.as_mut()
        } else {
            $app.slots.get_mut($i as usize)
        }
    };
}

mod app;
mod apply;
mod bus;
mod cluster;
mod control;
mod cron;
mod error;
mod journal;
mod metrics;
mod moving;
mod order;
mod os;
mod pm2io;
mod primary;
mod probes;
mod process;
mod reload;
mod run_as;
mod slot;
mod slot_logs;
#[cfg(test)]
mod slot_tests;
mod task;
mod timers;
mod update;

use control::{err, refusal};
pub use error::{CommandError, StartError};
use os::Os;
use slot::{back_from_reload, Proc, Role, Slot, SlotState, Then};
use timers::{TimerKey, Timers};

pub use update::UpdateRequest;

use cluster::begin_stop;

/// How a process said it was ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadyKind {
    /// It said so: sd_notify `READY=1`, `{"herd":"ready"}`, or `process.send('ready')`.
    Explicit,
    /// A Node worker's server is listening (cluster's `listening`).
    Listening,
}

/// Whether an app's instances are routed to only once they are ready.
fn needs_ready(spec: &AppSpec) -> bool {
    spec.wait_ready || spec.node
}

/// SIGKILL for a retiring process that has not exited after `after`.
fn arm_retire(timers: &mut Timers, pid: u32, after: Duration) {
    timers.set(TimerKey::Retire { pid }, Instant::now() + after);
}

/// How long a killed instance's cgroup may take to empty before its stop is reported anyway.
const CGROUP_EMPTY_MAX: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last cgroups to empty.
const CGROUP_SHUTDOWN_MAX: Duration = Duration::from_secs(3);

/// Whether instances get a cgroup each, and if not, why.
enum Containment {
    Cgroups(cgroup::Tree),
    ProcessGroups(String),
}

impl Containment {
    fn set_up(adopted: Option<&Path>) -> Self {
        // The cgroups of instances taken over from `herd update` stay in use.
        if let Some(tree) = adopted.and_then(|p| cgroup::Tree::adopt(p.to_path_buf())) {
            return Self::Cgroups(tree);
        }
        if std::env::var_os(cgroup::ENV_SWITCH).is_some_and(|v| v == "off" || v == "0") {
            return Self::ProcessGroups(format!("turned off by {}=off", cgroup::ENV_SWITCH));
        }
        match cgroup::Tree::create() {
            Ok(tree) => {
                tracing::info!(
                    "each instance runs in its own cgroup under {}",
                    tree.path().display()
                );
                Self::Cgroups(tree)
            }
            Err(why) => {
                tracing::warn!(
                    "instances are contained by process groups only ({}): {why}",
                    cgroup::PROCESS_GROUP_NOTE
                );
                Self::ProcessGroups(why)
            }
        }
    }

    fn tree(&self) -> Option<&cgroup::Tree> {
        match self {
            Self::Cgroups(t) => Some(t),
            Self::ProcessGroups(_) => None,
        }
    }

    fn info(&self) -> herd_proto::Containment {
        match self {
            Self::Cgroups(t) => herd_proto::Containment::Cgroup {
                parent: t.path().display().to_string(),
            },
            Self::ProcessGroups(why) => herd_proto::Containment::ProcessGroup {
                note: cgroup::PROCESS_GROUP_NOTE.into(),
                reason: why.clone(),
            },
        }
    }
}

/// Quiet time after the last change of a watched file before the app is reloaded.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(500);

/// How long a scale-down waits for a steered-out slot's queue to empty before stopping it.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// How often a draining slot's queue is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// How often instances are checked against `max_memory_bytes`, when one is set.
const MEMORY_CHECK: Duration = Duration::from_secs(1);
/// How often SIGKILL is sent again to a process that has not exited after it (stuck in the
/// kernel): its slot stays stopping until it is reaped.
const KILL_REPEAT: Duration = Duration::from_secs(5);

/// Where the supervisor keeps its files, and how its bus is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// This daemon's name on the bus (`HERD_HOST`).
    pub host: String,
    /// Broker URL bridging the bus to other hosts (`redis://…`, `nats://…`, `kafka://…`).
    pub bus_url: Option<String>,
    /// Largest message an instance may send, in bytes.
    pub max_message_bytes: usize,
    /// Directory of `<app>-<i>.out|.err`.
    pub log_dir: PathBuf,
    /// Path of the `NOTIFY_SOCKET` given to instances.
    pub notify_path: PathBuf,
    /// File listing the session ids of running instances, for [`sweep_leftovers`].
    pub pids_file: Option<PathBuf>,
    /// What one instance or app may take from the daemon.
    pub limits: crate::Limits,
    /// Directory for the JavaScript files herd puts into Node workers ([`crate::node_shims`]);
    /// `None` runs Node workers without them (Node's own disconnect alone on stop).
    pub node_dir: Option<PathBuf>,
    /// The keeper that adopts the instances if the daemon dies, and starts the next one
    /// (docs/keeper.md); `None`: instances die with the daemon.
    pub keeper: Option<Arc<crate::keeper::Link>>,
}

/// Something that happened to an instance process, for embedders (the Rust cluster API).
#[derive(Debug, Clone)]
pub enum Lifecycle {
    /// A process of the slot started.
    Started {
        /// App name.
        app: String,
        /// Instance number.
        instance: u32,
        /// Its pid.
        pid: u32,
    },
    /// The slot's current process exited (crashed, or was stopped).
    Exited {
        /// App name.
        app: String,
        /// Instance number.
        instance: u32,
        /// Its pid.
        pid: u32,
        /// How it ended.
        exit: ExitInfo,
    },
}

/// A log file of an instance, for `herd logs`.
#[derive(Debug, Clone)]
pub struct LogRef {
    /// App name.
    pub app: String,
    /// Instance number.
    pub instance: u32,
    /// Which stream.
    pub stream: LogStream,
    /// The live file.
    pub path: PathBuf,
}

enum Event {
    Request {
        cmd: Command,
        reply: oneshot::Sender<Reply>,
    },
    LogFiles {
        target: String,
        stream: Option<LogStream>,
        reply: oneshot::Sender<Result<Vec<LogRef>, CommandError>>,
    },
    Exited {
        pid: u32,
        status: WaitStatus,
    },
    Notice(Notice),
    Ipc {
        pid: u32,
        msg: Inbound,
    },
    /// A scrape of the metrics endpoint.
    Scrape {
        timeout: Duration,
        /// Instances' counters and histograms summed per app ([`crate::metrics::Exposition`]).
        sum: bool,
        reply: oneshot::Sender<String>,
    },
    /// A line on an app primary's call socket (`cluster.fork()`).
    PrimaryCall {
        pid: u32,
        msg: Inbound,
    },
    /// An envelope from another host, through the broker.
    Remote(crate::bus::Envelope),
    /// A watched file of an app changed.
    FileChanged {
        app: u32,
    },
    /// `herd update`.
    Update {
        req: UpdateRequest,
        reply: oneshot::Sender<Reply>,
    },
    /// Look again whether the update can go ahead.
    UpdateRetry,
    /// The daemon's own fds (`control`, `lock`), for the keeper's journal.
    DaemonFds(Vec<(String, std::os::fd::RawFd)>),
    /// The keeper's link closed.
    KeeperGone,
    /// A process the keeper reaped (`seq`: the exit's number, for the journal).
    KeeperExit {
        pid: u32,
        status: WaitStatus,
        seq: u32,
    },
    /// A killed instance's cgroup is empty and removed (or given up on).
    CgroupEmptied {
        app: u32,
    },
    /// A health probe of process `pid` came back.
    Probe {
        pid: u32,
        kind: probes::ProbeKind,
        ok: bool,
        detail: String,
    },
}

/// Handle to the supervisor task.
#[derive(Clone)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Event>,
    logs: LogBus,
    monitor: broadcast::Sender<Arc<crate::bus::Envelope>>,
    lifecycle: broadcast::Sender<Lifecycle>,
    limits: crate::Limits,
}

impl Supervisor {
    /// Starts the supervisor, its reaper and its notify socket on the current tokio runtime.
    /// The returned future completes after a [`Command::Kill`] has stopped every app.
    ///
    /// # Errors
    /// When the notify socket or the `SIGCHLD` handler cannot be set up, or the bus URL is
    /// not usable.
    pub fn start(config: Config) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        Self::start_or_adopt(config, None)
    }

    /// Starts the supervisor with the state an earlier daemon handed over (`herd update`):
    /// its instances, sockets and channels go on as they were.
    ///
    /// # Errors
    /// As [`Supervisor::start`].
    pub fn adopt(
        config: Config,
        state: crate::handover::SupervisorState,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        Self::start_or_adopt(config, Some(state))
    }

    /// Replaces the daemon's program in place (`herd update`); the reply comes only if that
    /// fails, since on success this process runs the new program.
    pub async fn update(&self, req: UpdateRequest) -> Reply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Event::Update { req, reply }).is_err() {
            return Reply::error(ErrorCode::ShuttingDown, "the daemon is shutting down");
        }
        rx.await.unwrap_or_else(|_| {
            Reply::error(ErrorCode::ShuttingDown, "the daemon is shutting down")
        })
    }

    fn start_or_adopt(
        config: Config,
        adopted: Option<crate::handover::SupervisorState>,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        std::fs::create_dir_all(&config.log_dir)?;
        // Orphaned grandchildren of instances are re-parented to us and reaped, not left as
        // zombies or handed to init unseen.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let (tx, rx) = mpsc::unbounded_channel();
        let (logs, _) = broadcast::channel(4096);
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        let reaper_tx = tx.clone();
        tokio::spawn(async move {
            loop {
                reap_all(&reaper_tx);
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        // Everything that can fail comes before the first inherited fd is taken: a daemon that
        // cannot take over gives the whole state back to the previous program untouched.
        let bridge = match &config.bus_url {
            Some(url) => {
                let remote_tx = tx.clone();
                Some(
                    crate::bus::Bridge::start(
                        url,
                        &config.host,
                        (
                            config.limits.instance_log_burst,
                            Duration::from_millis(config.limits.instance_log_interval_ms),
                        ),
                        move |env| {
                            let _ = remote_tx.send(Event::Remote(env));
                        },
                    )
                    .map_err(std::io::Error::other)?,
                )
            }
            None => None,
        };
        let notify_sock = match &adopted {
            Some(a) if crate::handover::is_open(a.notify_fd) => {
                // SAFETY: listed by the previous daemon, taken once here.
                let fd = unsafe { crate::handover::adopt(a.notify_fd) };
                let sock = std::os::unix::net::UnixDatagram::from(fd);
                sock.set_nonblocking(true)?;
                tokio::net::UnixDatagram::from_std(sock)?
            }
            _ => notify::bind(&config.notify_path)?,
        };
        let notify_fd = std::os::fd::AsRawFd::as_raw_fd(&notify_sock);
        let notify_tx = tx.clone();
        let notify_log = crate::ratelimit::LogLimit::new(
            config.limits.instance_log_burst,
            Duration::from_millis(config.limits.instance_log_interval_ms),
        );
        tokio::spawn(notify::serve(notify_sock, notify_log, move |n| {
            let _ = notify_tx.send(Event::Notice(n));
        }));
        let bus = bus::Bus::new(
            config.host.clone(),
            config.max_message_bytes,
            config.limits,
            bridge,
        );
        let monitor = bus.monitor.clone();
        let (lifecycle, _) = broadcast::channel(1024);
        let (ipc_tx, ipc_rx) = mpsc::channel(1024);
        let state = State::new(
            config,
            Box::new(os::System),
            tx.clone(),
            ipc_tx,
            logs.clone(),
            lifecycle.clone(),
            bus,
            notify_fd,
        );
        let mut state = state;
        state.containment =
            Containment::set_up(adopted.as_ref().and_then(|a| a.cgroup_parent.as_deref()));
        if let Some(mut a) = adopted {
            let strays = std::mem::take(&mut a.strays);
            state.adopt(a);
            if std::env::var_os(crate::keeper::RECOVERY_ENV).is_some() {
                state.after_recovery(strays);
            }
        } else {
            // The pids file names the parent cgroup too, for a sweep after a crash.
            state.write_pids();
        }
        state.node_shims = install_node_shims(state.cfg.node_dir.as_deref());
        let limits = state.cfg.limits;
        state.spawn_keeper_reader();
        let task = tokio::spawn(state.run(rx, ipc_rx));
        Ok((
            Self {
                tx,
                logs,
                monitor,
                lifecycle,
                limits,
            },
            task,
        ))
    }

    /// The daemon's control socket and lock (by name), for the keeper to hold with the
    /// state (docs/keeper.md).
    pub fn keep_daemon_fds(&self, fds: Vec<(String, std::os::fd::RawFd)>) {
        let _ = self.tx.send(Event::DaemonFds(fds));
    }

    /// Sends a command and waits for its reply.
    pub async fn request(&self, cmd: Command) -> Reply {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Event::Request { cmd, reply }).is_err() {
            return Reply::error(ErrorCode::ShuttingDown, "the daemon is shutting down");
        }
        rx.await.unwrap_or_else(|_| {
            Reply::error(ErrorCode::ShuttingDown, "the daemon is shutting down")
        })
    }

    /// The log files of the apps `target` names.
    ///
    /// # Errors
    /// When no app matches, or the daemon is shutting down.
    pub async fn log_files(
        &self,
        target: String,
        stream: Option<LogStream>,
    ) -> Result<Vec<LogRef>, CommandError> {
        let (reply, rx) = oneshot::channel();
        let gone = || CommandError::ShuttingDown("the daemon is shutting down".into());
        if self
            .tx
            .send(Event::LogFiles {
                target,
                stream,
                reply,
            })
            .is_err()
        {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// One scrape of the metrics endpoint: herd's own series and every instance's that offered
    /// them, merged (Prometheus' text format, [`crate::metrics::CONTENT_TYPE`]). Instances that
    /// do not answer within `timeout` are left out. With `sum`, the instances' counters and
    /// histograms come summed per app (without the `instance` label) instead.
    pub async fn scrape(&self, timeout: Duration, sum: bool) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Scrape {
                timeout,
                sum,
                reply,
            })
            .ok()?;
        rx.await.ok()
    }

    /// Instance starts and exits, from now on.
    pub fn subscribe_lifecycle(&self) -> broadcast::Receiver<Lifecycle> {
        self.lifecycle.subscribe()
    }

    /// The limits it enforces (for the daemon's own checks, e.g. `herd bus` topic filters).
    pub fn limits(&self) -> crate::Limits {
        self.limits
    }

    /// Every message that passes through the bus, from now on.
    pub fn subscribe_bus(&self) -> broadcast::Receiver<Arc<crate::bus::Envelope>> {
        self.monitor.subscribe()
    }

    /// New output lines of every instance, from now on.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogEvent>> {
        self.logs.subscribe()
    }
}

/// Writes the Node shims into `dir`; a failure is logged, and Node workers then run without
/// them.
fn install_node_shims(dir: Option<&Path>) -> Option<crate::node_shims::Installed> {
    let dir = dir?;
    crate::node_shims::install(dir)
        .map_err(|e| {
            tracing::warn!(
                "cannot write herd's Node preload into {} ({e}); Node workers run without it: a stop or reload may close an idle keep-alive connection as a client reuses it",
                dir.display()
            )
        })
        .ok()
}

/// Collects every exited child without blocking and reports it.
fn reap_all(tx: &mpsc::UnboundedSender<Event>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if let Some(pid) = status.pid() {
                    let _ = tx.send(Event::Exited {
                        pid: pid.as_raw() as u32,
                        status,
                    });
                }
            }
        }
    }
}

struct App {
    id: u32,
    spec: AppSpec,
    status: AppStatus,
    listeners: Vec<Listener>,
    slots: Vec<Slot>,
    deleting: bool,
    /// Slots the selector currently routes to, to re-attach it only on change.
    routed: Option<Vec<u32>>,
    /// Reloaded-away processes finishing their requests, with their slot.
    retiring: Vec<(u32, Proc)>,
    /// Sockets bound for Node workers' other listens (another port, port 0, a path), shared
    /// by all instances as under Node's cluster module, with the processes holding each. Keyed
    /// by the worker's request; at most `max_listen_sockets`.
    extra: HashMap<String, cluster::ExtraSocket>,
    /// What the first Node worker on each address offered to share (TLS ticket keys), by
    /// [`crate::node::QueryServer::address_key`].
    shared_data: HashMap<String, serde_json::Value>,
    /// Listens refused to its workers, for one log line per burst.
    refusals: cluster::Refusals,
    /// A rolling reload in progress.
    reload: Option<Reload>,
    /// File watcher (`--watch`), while the app runs.
    watcher: Option<::notify::RecommendedWatcher>,
    /// Its `cron_restart` schedule and next match.
    cron: Option<cron::CronRestart>,
    /// Bumped each time `--update-env` changes the environment.
    env_version: u32,
    /// Cgroups of exited processes of this app, killed and not yet empty.
    emptying: u32,
    /// The app's own primary process (`--primary`), as the slot [`primary::PRIMARY`].
    primary: Option<Slot>,
    /// The daemon's side of the primary: its call socket, worker ids, claimed slots.
    link: primary::Link,
    /// Rolling reloads that ended: (done, failed).
    reloads: (u64, u64),
    /// Times the set of slots routed to changed.
    routing_changes: u64,
    /// Every serving process fails the readiness probe: all of them are routed to.
    routing_fallback: bool,
    /// Started (or resumed) while an app it depends on was not ready: its slots are launched
    /// once they all are.
    waiting: bool,
    /// Asked to stop with apps that depend on it: it stops once these have no process left.
    stop_after: Vec<u32>,
    /// Its spec's generation (1 at start, one more at each apply or rollback).
    generation: u32,
    /// Earlier specs, oldest first, for `rollback` (at most `apply::GENERATIONS`).
    previous: Vec<AppSpec>,
    /// During the reload of an applied spec: the spec it replaced, put back if it fails.
    applying: Option<Box<AppSpec>>,
    /// Listeners of addresses an applied spec left, kept while older processes hold them
    /// (`moving.rs`).
    retired: Vec<Listener>,
    /// Its processes do not all hold the same addresses: each listener is routed to the slots
    /// whose processes hold it.
    moving: bool,
    /// While moving: the slots each listener was last routed to.
    routed_each: Vec<(String, Vec<u32>)>,
    /// Reloaded-away processes (pid, slot, since) not yet asked to stop: they still serve
    /// connections queued on the sockets of addresses the app left.
    handoff: Vec<(u32, u32, Instant)>,
}

/// A rolling reload: slots still to do, and the slot being done.
struct Reload {
    pending: std::collections::VecDeque<u32>,
    active: Option<u32>,
}

impl App {
    fn new(
        id: u32,
        spec: AppSpec,
        status: AppStatus,
        listeners: Vec<Listener>,
        slots: Vec<Slot>,
    ) -> Self {
        Self {
            id,
            cron: cron::CronRestart::of(&spec),
            spec,
            status,
            listeners,
            slots,
            deleting: false,
            routed: None,
            retiring: Vec::new(),
            extra: HashMap::new(),
            shared_data: HashMap::new(),
            refusals: cluster::Refusals::default(),
            reload: None,
            watcher: None,
            env_version: 1,
            emptying: 0,
            primary: None,
            link: primary::Link::default(),
            reloads: (0, 0),
            routing_changes: 0,
            routing_fallback: false,
            waiting: false,
            stop_after: Vec::new(),
            generation: 1,
            previous: Vec::new(),
            applying: None,
            retired: Vec::new(),
            moving: false,
            routed_each: Vec::new(),
            handoff: Vec::new(),
        }
    }

    /// Slot `i`, or the primary for [`primary::PRIMARY`].
    fn slot(&self, i: u32) -> Option<&Slot> {
        if i == primary::PRIMARY {
            self.primary.as_ref()
        } else {
            self.slots.get(i as usize)
        }
    }

    /// The worker slots and the primary.
    fn all_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().chain(self.primary.as_ref())
    }

    fn settled(&self) -> bool {
        self.stop_after.is_empty()
            && self.reload.is_none()
            && self.emptying == 0
            && self.retiring.is_empty()
            && self.all_slots().all(|s| s.state.settled())
    }

    fn has_processes(&self) -> bool {
        self.emptying > 0
            || !self.retiring.is_empty()
            || self.all_slots().any(|s| s.state.proc().is_some())
    }

    fn port(&self) -> Option<u16> {
        self.listeners.iter().find_map(Listener::port).or_else(|| {
            self.spec
                .listen
                .iter()
                .find_map(|l| match l.addr.parse::<ListenAddr>() {
                    Ok(ListenAddr::Tcp(a)) if a.port() != 0 => Some(a.port()),
                    _ => None,
                })
        })
    }
}

enum WaitKind {
    Apps,
    /// Like `Apps`, but an error reply if the app's reload failed.
    Reload,
    Deleted(String),
    Kill,
}

struct Waiter {
    apps: Vec<u32>,
    kind: WaitKind,
    reply: oneshot::Sender<Reply>,
}

struct State {
    lifecycle: broadcast::Sender<Lifecycle>,
    /// Bounded path for instances' messages: a flood waits in the instances, not in memory.
    ipc_tx: mpsc::Sender<Event>,
    cfg: Config,
    /// `instances.pids` could not be written: try again after the next event.
    pids_dirty: std::cell::Cell<bool>,
    tx: mpsc::UnboundedSender<Event>,
    logs: LogBus,
    /// Every deadline the supervisor waits for.
    timers: Timers,
    /// Processes are started and signalled through it (a fake one in unit tests).
    os: Box<dyn Os>,
    apps: BTreeMap<u32, App>,
    next_id: u32,
    /// pid → (app id, slot index, role) of every process the supervisor started.
    pids: HashMap<u32, (u32, u32, Role)>,
    /// Reload failures by app, reported to the reload's waiter.
    reload_errors: HashMap<u32, String>,
    /// The message bus.
    bus: bus::Bus,
    waiters: Vec<Waiter>,
    shutting_down: bool,
    done: bool,
    /// `herd update` in progress.
    updating: Option<update::Update>,
    /// The notify socket (owned by its task, which never ends).
    notify_fd: std::os::fd::RawFd,
    /// Every output pump that may still run: (app, slot, stream, state).
    pumps: Vec<(u32, u32, LogStream, Arc<logs::PumpState>)>,
    /// Cgroups per instance, or why not.
    containment: Containment,
    /// pid → its cgroup, for every process started in one.
    cgroups: HashMap<u32, PathBuf>,
    /// A failure to make a cgroup was logged (once is enough).
    cgroup_warned: bool,
    /// Scrapes of the metrics endpoint waiting for instances, by id.
    scrapes: HashMap<u64, metrics::Scrape>,
    /// The last scrape id given.
    scrape_id: u64,
    /// What the endpoint counts across scrapes.
    scrape_stats: metrics::ScrapeStats,
    /// `herd trigger`s waiting for replies, by id.
    triggers: HashMap<u64, pm2io::Trigger>,
    /// The last trigger id given.
    trigger_id: u64,
    /// The Node shims, written into `cfg.node_dir`.
    node_shims: Option<crate::node_shims::Installed>,
    /// The Node shims in a directory apps of another user can read (`--uid`), written the
    /// first time such an app starts ([`crate::node_shims::install_shared`]).
    shared_shims: Option<crate::node_shims::Installed>,
    /// Exec probes running: their pid → (the process they probe, which probe).
    probe_execs: HashMap<u32, (u32, probes::ProbeKind)>,
    /// Every instance log file open, by path.
    open_logs: slot_logs::OpenLogs,
    /// The state journal the keeper holds.
    journal: journal::Journal,
}

impl State {
    /// A supervisor state with no app, starting processes through `os`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: Config,
        os: Box<dyn Os>,
        tx: mpsc::UnboundedSender<Event>,
        ipc_tx: mpsc::Sender<Event>,
        logs: LogBus,
        lifecycle: broadcast::Sender<Lifecycle>,
        bus: bus::Bus,
        notify_fd: std::os::fd::RawFd,
    ) -> Self {
        State {
            ipc_tx,
            lifecycle,
            bus,
            cfg,
            pids_dirty: std::cell::Cell::new(false),
            tx,
            logs,
            timers: Timers::default(),
            os,
            apps: BTreeMap::new(),
            next_id: 0,
            pids: HashMap::new(),
            waiters: Vec::new(),
            reload_errors: HashMap::new(),
            shutting_down: false,
            done: false,
            updating: None,
            notify_fd,
            pumps: Vec::new(),
            containment: Containment::ProcessGroups(String::new()),
            cgroups: HashMap::new(),
            cgroup_warned: false,
            scrapes: HashMap::new(),
            scrape_id: 0,
            scrape_stats: metrics::ScrapeStats::default(),
            triggers: HashMap::new(),
            trigger_id: 0,
            node_shims: None,
            shared_shims: None,
            probe_execs: HashMap::new(),
            open_logs: Default::default(),
            journal: Default::default(),
        }
    }
}

fn overlaps(a: &ListenAddr, b: &ListenAddr) -> bool {
    match (a, b) {
        (ListenAddr::Unix(x), ListenAddr::Unix(y)) => x == y,
        (ListenAddr::Tcp(x), ListenAddr::Tcp(y)) => {
            x.port() == y.port()
                && x.port() != 0
                && (x.ip() == y.ip() || x.ip().is_unspecified() || y.ip().is_unspecified())
        }
        _ => false,
    }
}

/// Variables herd sets itself; inherited copies would mislead the instance. (`HERD_BUS_DIRECT`
/// is the app's own choice: `0` keeps its bus messages on the daemon's path.)
fn is_herd_managed(key: &str) -> bool {
    matches!(
        key,
        "LISTEN_FDS"
            | "LISTEN_PID"
            | "LISTEN_FDNAMES"
            | "NOTIFY_SOCKET"
            | "PORT"
            | "NODE_APP_INSTANCE"
            | "NODE_CHANNEL_FD"
            | "NODE_UNIQUE_ID"
    ) || key.starts_with("HERD_") && key != "HERD_HOME" && key != "HERD_BUS_DIRECT"
}

/// Checks that what the spec runs exists, before anything is bound.
fn check_program(spec: &AppSpec) -> Result<(), String> {
    let cwd = Path::new(&spec.cwd);
    if !cwd.is_dir() {
        return Err(format!(
            "working directory {} does not exist",
            cwd.display()
        ));
    }
    let path_var = spec.env.get("PATH").map(String::as_str);
    match &spec.interpreter {
        Some(interp) => {
            spawn::resolve_program(interp, path_var, cwd)?;
            let script = cwd.join(&spec.script);
            if !script.is_file() {
                return Err(format!(
                    "script {} does not exist; check the path",
                    script.display()
                ));
            }
            Ok(())
        }
        None => spawn::resolve_program(&spec.script, path_var, cwd).map(|_| ()),
    }
}

/// Signal from a name such as `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse().ok()
}

/// `<dir>/<app>-<i>.out|.err`
pub fn log_path(dir: &Path, app: &str, instance: u32, stream: LogStream) -> PathBuf {
    let ext = match stream {
        LogStream::Out => "out",
        LogStream::Err => "err",
    };
    if instance == primary::PRIMARY {
        return dir.join(format!("{app}-primary.{ext}"));
    }
    dir.join(format!("{app}-{instance}.{ext}"))
}

fn write_note(file: &SharedLog, note: &str) {
    if let Ok(mut f) = file.lock() {
        f.note(note);
    }
}

/// A bigger pipe buffer lets a burst of output wait in the kernel instead of the app.
fn grow_pipe(fd: &OwnedFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(256 * 1024));
}

/// Kills instance processes left from a daemon that died without stopping them (SIGKILL):
/// its instances got SIGKILL from the kernel, but their own children may still run. They are
/// found by the daemon's parent cgroup (named in the pids file; it is removed too), by
/// session id (every instance leads its own session) and by carrying `HERD_APP`.
pub fn sweep_leftovers(pids_file: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(pids_file) else {
        return 0;
    };
    let mut killed = 0;
    for parent in text.lines().filter_map(|l| l.strip_prefix("cgroup ")) {
        // Only ever a daemon's own parent cgroup, whatever the file says.
        let parent = Path::new(parent.trim_end());
        let named = parent
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("herd-"));
        if named && parent.join("cgroup.procs").is_file() {
            killed += cgroup::remove_tree(parent, CGROUP_SHUTDOWN_MAX);
        }
    }
    let sids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if sids.is_empty() {
        let _ = std::fs::remove_file(pids_file);
        return killed;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return killed;
    };
    for p in all.flatten() {
        let Ok(stat) = p.stat() else { continue };
        if !sids.contains(&stat.session) {
            continue;
        }
        let ours = p
            .environ()
            .map(|env| env.keys().any(|k| k == "HERD_APP"))
            .unwrap_or(false);
        if ours && kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    let _ = std::fs::remove_file(pids_file);
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name() {
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("int"), Some(Signal::SIGINT));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn overlapping_addresses() {
        let a: ListenAddr = "0.0.0.0:8000".parse().unwrap();
        let b: ListenAddr = "127.0.0.1:8000".parse().unwrap();
        let c: ListenAddr = "127.0.0.1:8001".parse().unwrap();
        assert!(overlaps(&a, &b));
        assert!(!overlaps(&b, &c));
    }
}
