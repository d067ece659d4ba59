//! The supervisor: one task that owns every app, slot and process, driven by events.
//!
//! Control requests, child exits (from the `SIGCHLD` reaper), readiness notices, IPC messages
//! and timers all arrive as [`Event`]s on one channel and are handled one at a time, so the
//! state needs no locks and nothing polls while idle. A [`Supervisor`] is the cloneable
//! handle that sends requests in.
//!
//! After every event the supervisor re-derives what follows from the state: which slots are
//! routed (and re-attaches the reuseport selector if that changed), which sockets can close,
//! which deleted apps can go, and which waiting requests can be answered.
//!
//! It does not own the control socket (the daemon does) or print anything (`herd run` does).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use herd_proto::{
    AppInfo, AppSpec, AppStatus, Command, ErrorCode, ExitInfo, LogStream, ProcessInfo, Reply,
    ScaleTo, PROTOCOL_VERSION,
};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cgroup;
use crate::ipc::{self, Inbound};
use crate::logs::{self, LogBus, LogEvent, LogFile, PumpTarget, SharedLog};
use crate::notify::{self, Notice};
use crate::policy::{self, Decision, History};
use crate::sockets::{ListenAddr, Listener};
use crate::spawn::{self, SpawnRequest};
use crate::stats;

mod apps;
mod bus;
mod cluster;
mod os;
mod reload;
mod slot;
#[cfg(test)]
mod slot_tests;
mod slots;
mod timers;
mod update;

use os::Os;
use slot::{Proc, Role, Slot, SlotState, Then};
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

fn describe_exit(e: &ExitInfo) -> String {
    match (&e.code, &e.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("killed by {s}"),
        _ => "unknown status".into(),
    }
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

/// The state of a slot whose reload ends without its next process: the current one goes on
/// as it was — serving if it was online, or starting again with a fresh ready timeout.
fn back_from_reload(current: Proc, online: bool, spec: &AppSpec) -> SlotState {
    if online {
        SlotState::Online { proc: current }
    } else {
        SlotState::Starting {
            proc: current,
            deadline: Instant::now() + Duration::from_millis(spec.listen_timeout_ms),
        }
    }
}

/// Where the supervisor keeps its files, and how its bus is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// This daemon's name on the bus (`HERD_HOST`).
    pub host: String,
    /// Broker URL bridging the bus to other hosts (`redis://…`, `nats://…`).
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
        reply: oneshot::Sender<Result<Vec<LogRef>, Reply>>,
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
    /// A killed instance's cgroup is empty and removed (or given up on).
    CgroupEmptied {
        app: u32,
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
        if let Some(a) = adopted {
            state.adopt(a);
        } else {
            // The pids file names the parent cgroup too, for a sweep after a crash.
            state.write_pids();
        }
        let limits = state.cfg.limits;
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
    /// An error reply when no app matches.
    pub async fn log_files(
        &self,
        target: String,
        stream: Option<LogStream>,
    ) -> Result<Vec<LogRef>, Reply> {
        let (reply, rx) = oneshot::channel();
        let gone = || Reply::error(ErrorCode::ShuttingDown, "the daemon is shutting down");
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
    /// Listens refused to its workers, for one log line per burst.
    refusals: cluster::Refusals,
    /// A rolling reload in progress.
    reload: Option<Reload>,
    /// File watcher (`--watch`), while the app runs.
    watcher: Option<::notify::RecommendedWatcher>,
    /// Bumped each time `--update-env` changes the environment.
    env_version: u32,
    /// Cgroups of exited processes of this app, killed and not yet empty.
    emptying: u32,
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
            spec,
            status,
            listeners,
            slots,
            deleting: false,
            routed: None,
            retiring: Vec::new(),
            extra: HashMap::new(),
            refusals: cluster::Refusals::default(),
            reload: None,
            watcher: None,
            env_version: 1,
            emptying: 0,
        }
    }

    fn settled(&self) -> bool {
        self.reload.is_none()
            && self.emptying == 0
            && self.retiring.is_empty()
            && self.slots.iter().all(|s| s.state.settled())
    }

    fn has_processes(&self) -> bool {
        self.emptying > 0
            || !self.retiring.is_empty()
            || self.slots.iter().any(|s| s.state.proc().is_some())
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
        }
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> Reply {
    Reply::error(code, msg)
}

impl State {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut ipc_rx: mpsc::Receiver<Event>,
    ) {
        loop {
            let deadline = match (self.next_deadline(), self.timers.next()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let event = tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
                Some(e) = ipc_rx.recv() => e,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.expire_requests();
                    self.fire_timers();
                    self.after_event();
                    continue;
                }
            };
            let retry = matches!(event, Event::UpdateRetry);
            self.handle(event);
            self.after_event();
            if self.updating.is_some() {
                self.update_step(&mut rx, &mut ipc_rx, !retry);
            }
            if self.done {
                break;
            }
        }
        // Nothing is left in the leaves by now unless a process would not die; the parent
        // goes with them, as systemd removes a unit's cgroup.
        if let Some(tree) = self.containment.tree() {
            tree.remove_all(CGROUP_SHUTDOWN_MAX);
        }
        if let Some(path) = &self.cfg.pids_file {
            let _ = std::fs::remove_file(path);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Request { cmd, reply } => self.on_request(cmd, reply),
            Event::LogFiles {
                target,
                stream,
                reply,
            } => {
                let _ = reply.send(self.log_files(&target, stream));
            }
            Event::Exited { pid, status } => self.on_exit(pid, status),
            Event::Notice(n) => {
                if n.ready {
                    self.on_ready(n.pid, ReadyKind::Explicit);
                }
            }
            Event::Ipc { pid, msg } => match msg {
                Inbound::Ready => self.on_ready(pid, ReadyKind::Explicit),
                Inbound::Cluster(m) => self.on_cluster(pid, m),
                Inbound::HandleAck => {}
                Inbound::HandleNack => self.instance_warn(
                    pid,
                    format_args!("a Node worker refused a socket herd sent it"),
                ),
                Inbound::Closed => self.on_channel_closed(pid),
                Inbound::Malformed(why) => self.on_bad_message(
                    pid,
                    format_args!("a message that is not JSON was dropped: {why}"),
                ),
                Inbound::TooLarge(limit) => self.on_bad_message(
                    pid,
                    format_args!(
                        "a message longer than {limit} bytes was dropped; send smaller messages"
                    ),
                ),
                Inbound::App(v) => self.on_app_message(pid, v),
            },
            Event::Remote(env) => self.on_remote(env),
            Event::FileChanged { app } => {
                // Each change moves the deadline: the reload comes once the files are quiet.
                if self.apps.contains_key(&app) {
                    self.timers
                        .set(TimerKey::Watch { app }, Instant::now() + WATCH_DEBOUNCE);
                }
            }
            Event::Update { req, reply } => self.on_update(req, reply),
            Event::UpdateRetry => self.on_update_retry(),
            Event::CgroupEmptied { app } => {
                if let Some(a) = self.apps.get_mut(&app) {
                    a.emptying = a.emptying.saturating_sub(1);
                }
            }
        }
    }

    // ----- requests -------------------------------------------------------------------------

    fn on_request(&mut self, cmd: Command, reply: oneshot::Sender<Reply>) {
        if self.shutting_down && !cmd.answered_while_shutting_down() {
            let _ = reply.send(err(ErrorCode::ShuttingDown, "the daemon is shutting down"));
            return;
        }
        if self.updating.is_some() && !cmd.read_only() {
            let _ = reply.send(err(
                ErrorCode::Busy,
                "the daemon is being updated; send the command again in a moment",
            ));
            return;
        }
        match cmd {
            Command::Ping => {
                let _ = reply.send(Reply::Pong {
                    v: PROTOCOL_VERSION,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    pid: std::process::id(),
                });
            }
            Command::List => {
                let ids: Vec<u32> = self.apps.keys().copied().collect();
                let _ = reply.send(Reply::Apps {
                    v: PROTOCOL_VERSION,
                    apps: self.infos(&ids, false),
                    bus: None,
                    warnings: crate::health::warnings(),
                });
            }
            Command::Flush { target } => match self.resolve(&target) {
                Ok(ids) => {
                    let (n, failed) = self.each_log(&ids, |f| f.truncate());
                    let _ = reply.send(log_files_reply("emptied", n, failed));
                }
                Err(e) => {
                    let _ = reply.send(e);
                }
            },
            Command::ReloadLogs => {
                let ids: Vec<u32> = self.apps.keys().copied().collect();
                let (n, failed) = self.each_log(&ids, |f| f.reopen());
                let _ = reply.send(log_files_reply("reopened", n, failed));
            }
            Command::Describe { target } => match self.resolve(&target) {
                Ok(ids) => {
                    let apps = self.infos(&ids, true);
                    let _ = reply.send(Reply::Apps {
                        v: PROTOCOL_VERSION,
                        apps,
                        bus: Some(Box::new(self.bus_stats())),
                        warnings: crate::health::warnings(),
                    });
                }
                Err(e) => {
                    let _ = reply.send(e);
                }
            },
            Command::Start { spec } => match self.start_app(*spec) {
                Ok(id) => self.wait(vec![id], WaitKind::Apps, reply),
                Err(e) => {
                    let _ = reply.send(e);
                }
            },
            Command::Resume { target } => self.for_targets(&target, reply, |s, id| {
                s.resume(id)?;
                Ok(())
            }),
            Command::Stop { target } => self.for_targets(&target, reply, |s, id| {
                s.stop_app(id);
                Ok(())
            }),
            Command::Restart { target, env } => self.for_targets(&target, reply, |s, id| {
                if let Some(env) = &env {
                    s.update_env(id, env);
                }
                s.restart_app(id)?;
                Ok(())
            }),
            Command::Reload { target, env } => match self.resolve(&target) {
                Ok(ids) => {
                    for &id in &ids {
                        if let Some(env) = &env {
                            self.update_env(id, env);
                        }
                        self.reload_errors.remove(&id);
                        if let Err(e) = self.start_reload(id) {
                            let _ = reply.send(e);
                            return;
                        }
                    }
                    self.wait(ids, WaitKind::Reload, reply);
                }
                Err(e) => {
                    let _ = reply.send(e);
                }
            },
            Command::Delete { target } => match self.resolve(&target) {
                Ok(ids) => {
                    let names: Vec<String> = ids
                        .iter()
                        .filter_map(|id| self.apps.get(id).map(|a| a.spec.name.clone()))
                        .collect();
                    for &id in &ids {
                        if let Some(a) = self.apps.get_mut(&id) {
                            a.deleting = true;
                        }
                        self.stop_app(id);
                    }
                    let msg = format!("deleted {}", names.join(", "));
                    self.wait(ids, WaitKind::Deleted(msg), reply);
                }
                Err(e) => {
                    let _ = reply.send(e);
                }
            },
            Command::Scale { target, to } => match self.scale(&target, to) {
                Ok(id) => self.wait(vec![id], WaitKind::Apps, reply),
                Err(e) => {
                    let _ = reply.send(e);
                }
            },
            Command::Logs { .. } => {
                let _ = reply.send(err(
                    ErrorCode::BadRequest,
                    "logs are streamed by the control server, not the supervisor",
                ));
            }
            Command::Send { to, topic, data } => {
                let _ = reply.send(self.cli_send(&to, topic, data));
            }
            Command::Publish { topic, data } => {
                let _ = reply.send(self.cli_publish(topic, data));
            }
            Command::Request {
                to,
                topic,
                data,
                timeout_ms,
            } => self.cli_request(&to, topic, data, Duration::from_millis(timeout_ms), reply),
            Command::Bus { .. } => {
                let _ = reply.send(err(
                    ErrorCode::BadRequest,
                    "the bus is streamed by the control server, not the supervisor",
                ));
            }
            Command::Update { .. } => {
                let _ = reply.send(err(
                    ErrorCode::BadRequest,
                    "an update is carried out by the control server, not the supervisor",
                ));
            }
            Command::Kill => {
                self.shutting_down = true;
                let ids: Vec<u32> = self.apps.keys().copied().collect();
                for &id in &ids {
                    self.stop_app(id);
                }
                self.wait(ids, WaitKind::Kill, reply);
            }
        }
    }

    fn for_targets(
        &mut self,
        target: &str,
        reply: oneshot::Sender<Reply>,
        mut f: impl FnMut(&mut Self, u32) -> Result<(), Reply>,
    ) {
        let ids = match self.resolve(target) {
            Ok(ids) => ids,
            Err(e) => {
                let _ = reply.send(e);
                return;
            }
        };
        for &id in &ids {
            if let Err(e) = f(self, id) {
                let _ = reply.send(e);
                return;
            }
        }
        self.wait(ids, WaitKind::Apps, reply);
    }

    fn wait(&mut self, apps: Vec<u32>, kind: WaitKind, reply: oneshot::Sender<Reply>) {
        self.waiters.push(Waiter { apps, kind, reply });
    }

    /// Turns a target (name, id or `all`) into app ids.
    fn resolve(&self, target: &str) -> Result<Vec<u32>, Reply> {
        if target == "all" {
            return Ok(self.apps.keys().copied().collect());
        }
        if let Ok(id) = target.parse::<u32>() {
            if self.apps.contains_key(&id) {
                return Ok(vec![id]);
            }
        }
        if let Some(app) = self.apps.values().find(|a| a.spec.name == target) {
            return Ok(vec![app.id]);
        }
        Err(err(
            ErrorCode::UnknownApp,
            format!("no app named or numbered {target:?}; `herd list` shows the apps"),
        ))
    }

    /// Runs `f` on every log file of the apps `ids`: how many it did, and the first failure.
    fn each_log(
        &self,
        ids: &[u32],
        f: impl Fn(&mut logs::LogFile) -> std::io::Result<()>,
    ) -> (usize, Option<String>) {
        let mut n = 0;
        let mut failed = None;
        for app in ids.iter().filter_map(|id| self.apps.get(id)) {
            for slot in &app.slots {
                for log in [&slot.out, &slot.err] {
                    let Ok(mut file) = log.lock() else { continue };
                    match f(&mut file) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            failed.get_or_insert_with(|| format!("{}: {e}", file.path().display()));
                        }
                    }
                }
            }
        }
        (n, failed)
    }

    fn log_files(&self, target: &str, stream: Option<LogStream>) -> Result<Vec<LogRef>, Reply> {
        let ids = self.resolve(target)?;
        let mut out = Vec::new();
        for app in ids.iter().filter_map(|id| self.apps.get(id)) {
            for i in 0..app.slots.len() as u32 {
                for s in [LogStream::Out, LogStream::Err] {
                    if stream.is_none() || stream == Some(s) {
                        out.push(LogRef {
                            app: app.spec.name.clone(),
                            instance: i,
                            stream: s,
                            path: log_path(&self.cfg.log_dir, &app.spec.name, i, s),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    // ----- events ---------------------------------------------------------------------------

    fn on_exit(&mut self, pid: u32, status: WaitStatus) {
        let Some((id, i, role)) = self.pids.remove(&pid) else {
            // An orphaned grandchild re-parented to us, or a child whose exec failed.
            return;
        };
        self.timers.cancel(TimerKey::Retire { pid });
        // Whatever the instance left behind in its process group and its cgroup goes with
        // it, so nothing keeps holding the port (PM2 leaves Next.js's child running).
        let cg = self.cgroups.remove(&pid);
        self.os.kill_tree(pid, cg.as_deref());
        if let Some(cg) = cg {
            self.empty_cgroup(id, cg);
        }
        self.forget_instance(pid);
        // The extra listening sockets only it held close: a killed flood gives everything back.
        self.release_sockets(id, pid, None);
        self.write_pids();
        let exit = exit_info(&status);
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        match role {
            Role::Retiring => {
                tracing::info!(app = %app.spec.name, instance = i, pid, exit = %describe_exit(&exit), "reloaded-away process exited");
                app.retiring.retain(|(_, p)| p.pid != pid);
                return;
            }
            Role::Next => {
                // The reload's next process is gone: the slot goes back to its current one.
                if let Some(slot) = app.slots.get_mut(i as usize) {
                    if slot.state.next().is_some_and(|p| p.pid == pid) {
                        if let SlotState::Reloading {
                            current, online, ..
                        } = slot.state.take()
                        {
                            slot.set(back_from_reload(current, online, &app.spec));
                        }
                    }
                }
                self.reload_failed(
                    id,
                    i,
                    format!(
                        "the new process of instance {i} exited ({}) before it was ready",
                        describe_exit(&exit)
                    ),
                );
                return;
            }
            Role::Current => {}
        }
        let name = app.spec.name.clone();
        let _ = self.lifecycle.send(Lifecycle::Exited {
            app: name.clone(),
            instance: i,
            pid,
            exit: exit.clone(),
        });
        let Some(slot) = app.slots.get_mut(i as usize) else {
            return;
        };
        slot.last_exit = Some(exit.clone());
        let prev = slot.state.take();
        match prev {
            // The current process died during a reload of its slot: the new one takes over,
            // and the reload waits for it as for any starting process.
            SlotState::Reloading { next, .. } => {
                slot.restarts += 1;
                self.pids.insert(next.pid, (id, i, Role::Current));
                let timeout = Duration::from_millis(app.spec.listen_timeout_ms);
                slot.set(SlotState::Starting {
                    proc: next,
                    deadline: Instant::now() + timeout,
                });
            }
            SlotState::Stopping { then, .. } => match then {
                Then::Stay => slot.set(SlotState::Stopped),
                Then::Remove => slot.set(SlotState::Gone),
                Then::Restart => {
                    slot.restarts += 1;
                    slot.set(SlotState::Stopped);
                    self.launch(id, i);
                }
            },
            SlotState::Draining { .. } => slot.set(SlotState::Gone),
            SlotState::Starting { proc, .. } | SlotState::Online { proc } => {
                let uptime = proc.since.elapsed();
                let decision = policy::on_exit(&app.spec, &mut slot.history, uptime, exit.code);
                tracing::info!(app = %name, instance = i, pid, ?exit, ?decision, "instance exited");
                self.apply_decision(id, i, decision, false);
            }
            other => slot.state = other,
        }
    }

    fn apply_decision(&mut self, id: u32, i: u32, decision: Decision, failed_spawn: bool) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let restart_delay = Duration::from_millis(app.spec.restart_delay_ms);
        let max_restarts = app.spec.max_restarts;
        let min_uptime = app.spec.min_uptime_ms;
        let Some(slot) = app.slots.get_mut(i as usize) else {
            return;
        };
        match decision {
            Decision::Restart(delay) => {
                slot.restarts += 1;
                // A program that cannot even be started is never retried at once.
                let delay = if failed_spawn {
                    delay.max(restart_delay)
                } else {
                    delay
                };
                if delay.is_zero() {
                    slot.set(SlotState::Stopped);
                    self.launch(id, i);
                } else {
                    slot.set(SlotState::WaitingRestart {
                        until: Instant::now() + delay,
                    });
                }
            }
            Decision::Stop => {
                slot.set(SlotState::Stopped);
                recycle_sockets(app, i);
            }
            Decision::Exit => {
                slot.set(SlotState::Exited);
                recycle_sockets(app, i);
            }
            Decision::Errored => {
                write_note(
                    &slot.err,
                    &format!(
                        "[herd] instance {i} exited {} times in a row within {min_uptime} ms of starting; marked errored. Fix it, then `herd restart {}`",
                        max_restarts + 1,
                        app.spec.name
                    ),
                );
                slot.set(SlotState::Errored);
                recycle_sockets(app, i);
            }
        }
    }

    fn on_ready(&mut self, pid: u32, kind: ReadyKind) {
        let key = self.pids.get(&pid).copied().or_else(|| {
            // A child of the instance may speak for it: look its process group up.
            nix::unistd::getpgid(Some(Pid::from_raw(pid as i32)))
                .ok()
                .and_then(|g| self.pids.get(&(g.as_raw() as u32)).copied())
                // Or its cgroup, if it left the group.
                .or_else(|| {
                    let leader = cgroup::owner_of(pid, &self.cgroups)?;
                    self.pids.get(&leader).copied()
                })
        });
        let Some((id, i, role)) = key else {
            return;
        };
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        // With wait_ready the app itself must say so; listening is not enough.
        if app.spec.wait_ready && kind == ReadyKind::Listening {
            return;
        }
        match role {
            Role::Current => {
                let Some(slot) = app.slots.get_mut(i as usize) else {
                    return;
                };
                match slot.state.take() {
                    SlotState::Starting { proc, .. } => {
                        slot.set(SlotState::Online { proc });
                        if app.reload.as_ref().is_some_and(|r| r.active == Some(i)) {
                            if let Some(r) = app.reload.as_mut() {
                                r.active = None;
                            }
                            self.reload_step(id);
                        }
                    }
                    // The current process of a reloading slot gets ready: it serves until
                    // the next one does.
                    SlotState::Reloading {
                        current,
                        next,
                        deadline,
                        ..
                    } => slot.set(SlotState::Reloading {
                        current,
                        online: true,
                        next,
                        deadline,
                    }),
                    other => slot.set(other),
                }
            }
            Role::Next => self.promote(id, i),
            Role::Retiring => {}
        }
    }

    /// Hands every timer that is due to what it is for.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Slot { app, slot } => self.on_timer(app, slot),
                TimerKey::Retire { pid } => {
                    if let Some((_, _, Role::Retiring)) = self.pids.get(&pid) {
                        tracing::info!(
                            pid,
                            "kill timeout passed for a reloaded-away process; sending SIGKILL"
                        );
                        self.os
                            .kill_tree(pid, self.cgroups.get(&pid).map(PathBuf::as_path));
                    }
                }
                TimerKey::Memory { app } => self.on_memory_check(app),
                TimerKey::Watch { app } => {
                    let Some(a) = self.apps.get(&app) else {
                        continue;
                    };
                    if a.status == AppStatus::Running && a.watcher.is_some() {
                        tracing::info!(app = %a.spec.name, "watched files changed; reloading");
                        let _ = self.start_reload(app);
                    }
                }
            }
        }
    }

    /// The slot's deadline has come: what happens depends on what its state waits for. A
    /// state whose deadline has not come (it changed within this wake-up) is left alone.
    fn on_timer(&mut self, id: u32, i: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(slot) = app.slots.get_mut(i as usize) else {
            return;
        };
        let now = Instant::now();
        if slot.state.deadline().is_none_or(|d| d > now) {
            return;
        }
        match slot.state.take() {
            SlotState::WaitingRestart { .. } => {
                slot.set(SlotState::Stopped);
                self.launch(id, i);
            }
            SlotState::Stopping { proc, then, .. } => {
                tracing::info!(app = %app.spec.name, instance = i, pid = proc.pid, "kill timeout passed; sending SIGKILL");
                self.os
                    .kill_tree(proc.pid, self.cgroups.get(&proc.pid).map(PathBuf::as_path));
                // It stays stopping until its exit is reaped; SIGKILL is not sent again.
                slot.set(SlotState::Stopping {
                    proc,
                    then,
                    deadline: now + KILL_REPEAT,
                });
            }
            SlotState::Starting { proc, .. } => {
                // PM2's behaviour: a wait_ready app that stays silent is put online anyway.
                tracing::warn!(app = %app.spec.name, instance = i, "no ready signal within listen_timeout; routing to it anyway");
                let what = if app.spec.wait_ready {
                    "did not say it was ready"
                } else {
                    "did not listen"
                };
                write_note(&slot.err, &format!("[herd] instance {i} {what} within listen_timeout ({} ms); routing to it anyway", app.spec.listen_timeout_ms));
                slot.set(SlotState::Online { proc });
                // A reload waiting on this slot (its new process took over from a crashed
                // current one) moves on.
                if let Some(r) = app.reload.as_mut() {
                    if r.active == Some(i) {
                        r.active = None;
                        self.reload_step(id);
                    }
                }
            }
            state @ SlotState::Reloading { .. } => {
                slot.set(state);
                self.on_next_timeout(id, i);
            }
            SlotState::Draining { proc, since, .. } => {
                let empty = app.listeners.iter().all(|l| l.queued(i).unwrap_or(0) == 0);
                let waited = now.saturating_duration_since(since);
                slot.set(SlotState::Draining {
                    proc,
                    since,
                    look: now + DRAIN_POLL,
                });
                // A short grace lets handshakes already routed to the slot land first.
                if (empty && waited >= DRAIN_POLL * 2) || waited >= DRAIN_MAX {
                    self.stop_slot(id, i, Then::Remove);
                }
            }
            other => slot.set(other),
        }
    }

    // ----- after every event ----------------------------------------------------------------

    fn after_event(&mut self) {
        if self.pids_dirty.get() {
            self.write_pids();
        }
        // A reload waits on its active slot only while that slot reloads (or its next process,
        // having taken over from a crashed one, starts). A slot taken out of the reload any
        // other way (a restart, a stop) lets the reload move on instead of waiting forever.
        let stalled: Vec<u32> = self
            .apps
            .values()
            .filter(|a| {
                a.reload.as_ref().and_then(|r| r.active).is_some_and(|i| {
                    !a.slots.get(i as usize).is_some_and(|s| {
                        matches!(
                            s.state,
                            SlotState::Reloading { .. } | SlotState::Starting { .. }
                        )
                    })
                })
            })
            .map(|a| a.id)
            .collect();
        for id in stalled {
            if let Some(r) = self.apps.get_mut(&id).and_then(|a| a.reload.as_mut()) {
                r.active = None;
            }
            self.reload_step(id);
        }
        let mut removed = Vec::new();
        for app in self.apps.values_mut() {
            // A slot's timer is its state's deadline: armed while the state waits, moved
            // when it changes, gone with it.
            for s in &app.slots {
                let key = TimerKey::Slot {
                    app: app.id,
                    slot: s.index,
                };
                match s.state.deadline() {
                    Some(at) if self.timers.deadline(key) != Some(at) => self.timers.set(key, at),
                    Some(_) => {}
                    None => {
                        self.timers.cancel(key);
                    }
                }
            }
            while let Some(slot) = app.slots.pop_if(|s| matches!(s.state, SlotState::Gone)) {
                for l in &mut app.listeners {
                    l.remove_slot(slot.index);
                }
                app.routed = None;
            }
            if app.status == AppStatus::Stopped && !app.has_processes() {
                if !app.listeners.is_empty() {
                    app.listeners.clear();
                    app.routed = None;
                }
                app.extra.clear();
                if app.deleting {
                    removed.push(app.id);
                }
            }
            if app.status == AppStatus::Running {
                route(app);
            }
        }
        for id in removed {
            self.apps.remove(&id);
            self.timers.cancel_app(id);
        }
        self.answer_waiters();
    }

    fn answer_waiters(&mut self) {
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            let ready = w.apps.iter().all(|id| {
                self.apps
                    .get(id)
                    .is_none_or(|a| a.settled() && (!a.deleting))
            });
            if !ready {
                self.waiters.push(w);
                continue;
            }
            let reply = match w.kind {
                WaitKind::Apps => {
                    let ids: Vec<u32> = w
                        .apps
                        .iter()
                        .copied()
                        .filter(|id| self.apps.contains_key(id))
                        .collect();
                    Reply::apps(self.infos(&ids, false))
                }
                WaitKind::Reload => {
                    let failures: Vec<String> = w
                        .apps
                        .iter()
                        .filter_map(|id| self.reload_errors.remove(id))
                        .collect();
                    if failures.is_empty() {
                        let ids: Vec<u32> = w
                            .apps
                            .iter()
                            .copied()
                            .filter(|id| self.apps.contains_key(id))
                            .collect();
                        Reply::apps(self.infos(&ids, false))
                    } else {
                        Reply::error(ErrorCode::ReloadFailed, failures.join("; "))
                    }
                }
                WaitKind::Deleted(msg) => Reply::done(msg),
                WaitKind::Kill => {
                    self.done = true;
                    Reply::done("stopped every app; the daemon exits")
                }
            };
            let _ = w.reply.send(reply);
        }
    }

    fn infos(&mut self, ids: &[u32], with_spec: bool) -> Vec<AppInfo> {
        let mut out = Vec::new();
        let bus = &self.bus;
        for id in ids {
            let Some(app) = self.apps.get_mut(id) else {
                continue;
            };
            let port = app.port();
            let listen = if app.listeners.is_empty() {
                app.spec.listen.iter().map(|l| l.addr.clone()).collect()
            } else {
                app.listeners.iter().map(|l| l.addr().to_string()).collect()
            };
            let processes = app
                .slots
                .iter_mut()
                .map(|slot| {
                    let status = slot.state.status();
                    let mut info = ProcessInfo {
                        instance: slot.index,
                        pid: None,
                        status,
                        restarts: slot.restarts,
                        uptime_ms: None,
                        cpu_percent: None,
                        memory_bytes: None,
                        last_exit: slot.last_exit.clone(),
                        messages_dropped: 0,
                        subscriptions: 0,
                        bus_refused: 0,
                        env_version: 0,
                        cgroup: None,
                    };
                    if let Some(p) = slot.state.proc_mut() {
                        info.pid = Some(p.pid);
                        let (subs, refused) = bus.peer_counts(p.pid);
                        info.subscriptions = subs as u64;
                        info.bus_refused = refused;
                        info.env_version = p.env_version;
                        info.messages_dropped = p.channel.as_ref().map_or(0, |c| c.dropped());
                        info.uptime_ms = Some(p.since.elapsed().as_millis() as u64);
                        let cg = self.cgroups.get(&p.pid);
                        if let Some(s) = self.os.sample(p.pid) {
                            info.cpu_percent = Some(stats::cpu_percent(
                                &s,
                                p.sample.as_ref(),
                                p.since.into_std(),
                            ));
                            info.memory_bytes = Some(s.rss_bytes);
                            p.sample = Some(s);
                        }
                        // The whole tree's memory, children included.
                        if let Some(m) = cg.and_then(|cg| cgroup::memory(cg)) {
                            info.memory_bytes = Some(m);
                        }
                        info.cgroup = cg.map(|cg| cg.display().to_string());
                    }
                    info
                })
                .collect();
            out.push(AppInfo {
                id: app.id,
                name: app.spec.name.clone(),
                status: app.status,
                listen,
                port,
                balance: app.spec.balance,
                processes,
                spec: with_spec.then(|| Box::new(app.spec.clone())),
                env_version: app.env_version,
                containment: with_spec.then(|| self.containment.info()),
            });
        }
        out
    }

    /// Removes a killed process's cgroup once it is empty; until then the app is not settled,
    /// so a stop is answered only when nothing of the instance runs any more.
    fn empty_cgroup(&mut self, id: u32, leaf: PathBuf) {
        // Usually the process left nothing behind and the leaf goes at once.
        if std::fs::remove_dir(&leaf).is_ok() {
            return;
        }
        if let Some(app) = self.apps.get_mut(&id) {
            app.emptying += 1;
        }
        let tx = self.tx.clone();
        tokio::spawn(async move {
            cgroup::remove_when_empty(leaf, CGROUP_EMPTY_MAX).await;
            let _ = tx.send(Event::CgroupEmptied { app: id });
        });
    }

    /// Writes the pids of running instances (for [`sweep_leftovers`] after a crash). A failed
    /// write (full disk) is counted and tried again after the next event.
    fn write_pids(&self) {
        let Some(path) = &self.cfg.pids_file else {
            return;
        };
        let mut text = String::new();
        for pid in self.pids.keys() {
            text.push_str(&pid.to_string());
            text.push('\n');
        }
        if let Some(tree) = self.containment.tree() {
            text.push_str(&format!("cgroup {}\n", tree.path().display()));
        }
        let tmp = path.with_extension("tmp");
        let r = write_private(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
        match r {
            Ok(()) => {
                self.pids_dirty.set(false);
                if crate::health::STATE.succeeded() {
                    tracing::info!("{} is written again", path.display());
                }
            }
            Err(e) => {
                self.pids_dirty.set(true);
                let _ = std::fs::remove_file(&tmp);
                if crate::health::STATE.failed(text.len(), &e) {
                    tracing::warn!(
                        "cannot write {}: {e}; herd tries again at the next change",
                        path.display()
                    );
                }
            }
        }
    }
}

/// The answer to `flush` and `reloadLogs`.
fn log_files_reply(did: &str, n: usize, failed: Option<String>) -> Reply {
    match failed {
        None => Reply::done(format!("{did} {n} log files")),
        Some(e) => Reply::error(
            ErrorCode::Internal,
            format!("{did} {n} log files; failed: {e}"),
        ),
    }
}

/// Writes a file of HERD_HOME: created 0600, truncated, never through a symbolic link.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(bytes)
}

/// Gives a slot that will not run again by itself a fresh socket. Connections that queued on
/// the old one while its process was starting would otherwise wait forever; closing it resets
/// them, so their clients fail fast and retry instead of hanging.
fn recycle_sockets(app: &mut App, i: u32) {
    let mut recycled = false;
    for l in &mut app.listeners {
        if l.is_per_slot() && l.queued(i).unwrap_or(0) > 0 {
            l.remove_slot(i);
            if let Err(e) = l.add_slot(i) {
                tracing::error!(app = %app.spec.name, instance = i, "cannot renew the slot's socket: {e}");
            }
            recycled = true;
        }
    }
    if recycled {
        app.routed = None;
    }
}

/// Re-attaches the selector when the set of serving slots changed.
fn route(app: &mut App) {
    if !app.listeners.iter().any(Listener::is_per_slot) {
        return;
    }
    let live: Vec<u32> = app
        .slots
        .iter()
        .filter(|s| s.state.routed())
        .map(|s| s.index)
        .collect();
    if app.routed.as_ref() == Some(&live) {
        return;
    }
    for l in &app.listeners {
        if let Err(e) = l.steer(app.spec.balance, &live) {
            tracing::error!(app = %app.spec.name, "cannot attach the reuseport selector: {e}");
        }
    }
    app.routed = Some(live);
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

/// Variables herd sets itself; inherited copies would mislead the instance.
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
    ) || key.starts_with("HERD_") && key != "HERD_HOME"
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

fn exit_info(status: &WaitStatus) -> ExitInfo {
    match status {
        WaitStatus::Exited(_, code) => ExitInfo {
            code: Some(*code),
            signal: None,
        },
        WaitStatus::Signaled(_, sig, _) => ExitInfo {
            code: None,
            signal: Some(sig.as_str().to_string()),
        },
        _ => ExitInfo {
            code: None,
            signal: None,
        },
    }
}

/// `<dir>/<app>-<i>.out|.err`
pub fn log_path(dir: &Path, app: &str, instance: u32, stream: LogStream) -> PathBuf {
    let ext = match stream {
        LogStream::Out => "out",
        LogStream::Err => "err",
    };
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
