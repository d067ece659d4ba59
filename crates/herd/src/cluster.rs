//! Node's `cluster` module, for Rust (feature `cluster`): a program becomes its own primary,
//! runs N copies of itself as workers sharing a port, restarts them when they die, exchanges
//! messages with them, and stops them gracefully on SIGTERM/SIGINT.
//!
//! ```no_run
//! use herd::cluster::Cluster;
//!
//! fn main() -> std::io::Result<()> {
//!     Cluster::builder()
//!         .workers(herd::cluster::available_parallelism())
//!         .listen("127.0.0.1:8000")
//!         .on_exit(|_primary, exit| eprintln!("worker {} exited: {:?}", exit.id, exit.code))
//!         .on_message(|primary, worker, msg| primary.send(worker, msg))
//!         .run(|mut worker| async move {
//!             let listener = worker.listener().expect("the primary gives every worker a socket");
//!             // axum::serve(listener, app).with_graceful_shutdown(herd::shutdown()).await
//!             # drop(listener);
//!             Ok(())
//!         })
//! }
//! ```
//!
//! The primary never `fork()`s itself (it has threads): it starts the current binary again
//! for each worker, through the same supervisor as the herd daemon — the same per-worker
//! `SO_REUSEPORT` sockets steered away from dead workers, the same restart policy. A worker
//! is an ordinary herd instance, so the same binary started by the herd daemon
//! (`herd start ./server -i 4 --port 8000`) runs as a worker of the daemon, with the daemon's
//! sockets and bus.

use std::future::Future;
use std::io;

use herd_core::{Config, Lifecycle, Supervisor};
use herd_proto::{AppSpec, Command, ListenSpec, Reply};
use serde_json::Value;

use crate::bus::Bus;

/// Whether this process is a worker (run by an embedded primary or by the herd daemon).
pub fn is_worker() -> bool {
    crate::is_managed()
}

/// Whether this process is a primary (not run by herd).
pub fn is_primary() -> bool {
    !is_worker()
}

/// The number of CPUs this process may use.
pub fn available_parallelism() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A worker's view of itself.
pub struct Worker {
    id: u32,
    listener: Option<std::net::TcpListener>,
    bus: Option<Bus>,
}

impl Worker {
    fn from_env() -> Self {
        Self {
            id: crate::instance().unwrap_or(0),
            listener: crate::listener(),
            bus: Bus::connect().ok(),
        }
    }

    /// This worker's number (0-based), stable across restarts.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The socket to serve on (taken once), ready for tokio; `None` without `listen`.
    pub fn listener(&mut self) -> Option<tokio::net::TcpListener> {
        let l = self.listener.take()?;
        l.set_nonblocking(true).ok()?;
        tokio::net::TcpListener::from_std(l).ok()
    }

    /// The message bus (messages from the primary and other workers arrive on it).
    pub fn bus(&self) -> Option<&Bus> {
        self.bus.as_ref()
    }

    /// Sends a message to the primary (Node's `process.send`). Under the herd daemon it goes
    /// to `herd bus` watchers.
    ///
    /// # Errors
    /// When there is no channel to the primary.
    pub async fn send(&self, data: Value) -> io::Result<()> {
        match &self.bus {
            Some(b) => b.send("primary", data).await,
            None => Err(io::Error::other("no channel to a primary: not run by herd")),
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone)]
pub struct WorkerExit {
    /// The worker's number.
    pub id: u32,
    /// Its pid.
    pub pid: u32,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal name, if a signal killed it.
    pub signal: Option<String>,
}

/// The primary's handle for talking to its workers.
#[derive(Clone)]
pub struct Primary {
    sup: Supervisor,
    app: String,
}

impl Primary {
    /// Sends a message to one worker (it arrives on the worker's bus).
    pub fn send(&self, worker: u32, data: Value) {
        self.deliver(format!("{}:{worker}", self.app), data);
    }

    /// Sends a message to every worker.
    pub fn broadcast(&self, data: Value) {
        self.deliver(self.app.clone(), data);
    }

    fn deliver(&self, to: String, data: Value) {
        let sup = self.sup.clone();
        tokio::spawn(async move {
            sup.request(Command::Send {
                to,
                topic: Some("primary".into()),
                data,
            })
            .await
        });
    }
}

type ExitHook = Box<dyn FnMut(&Primary, WorkerExit)>;
type MessageHook = Box<dyn FnMut(&Primary, u32, Value)>;

/// Entry point of the embedded cluster.
pub struct Cluster;

impl Cluster {
    /// A cluster of one worker per CPU, until told otherwise.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            workers: available_parallelism(),
            listen: Vec::new(),
            name: None,
            kill_timeout_ms: 5_000,
            on_exit: None,
            on_message: None,
        }
    }
}

/// Settings of an embedded cluster.
pub struct ClusterBuilder {
    workers: u32,
    listen: Vec<String>,
    name: Option<String>,
    kill_timeout_ms: u64,
    on_exit: Option<ExitHook>,
    on_message: Option<MessageHook>,
}

impl ClusterBuilder {
    /// Number of workers (at least 1).
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n.max(1);
        self
    }

    /// An address the workers share (`127.0.0.1:8000`, `[::]:8000`, `unix:/path`); repeatable.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen.push(addr.to_string());
        self
    }

    /// The name workers are known by on the bus (default: the program's file name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// How long a worker has to exit after SIGTERM before SIGKILL (default 5 s).
    pub fn kill_timeout(mut self, t: std::time::Duration) -> Self {
        self.kill_timeout_ms = t.as_millis() as u64;
        self
    }

    /// Called in the primary when a worker exits (it is restarted by the policy).
    pub fn on_exit(mut self, f: impl FnMut(&Primary, WorkerExit) + 'static) -> Self {
        self.on_exit = Some(Box::new(f));
        self
    }

    /// Called in the primary for each message a worker sends with [`Worker::send`].
    pub fn on_message(mut self, f: impl FnMut(&Primary, u32, Value) + 'static) -> Self {
        self.on_message = Some(Box::new(f));
        self
    }

    /// Runs the cluster: in a worker, `worker_main` on a single-threaded tokio runtime; in the
    /// primary, the workers, until SIGTERM or SIGINT has stopped them all.
    ///
    /// # Errors
    /// A worker's own error; in the primary, a socket that cannot be bound or a worker that
    /// cannot be started.
    pub fn run<F, Fut>(self, worker_main: F) -> io::Result<()>
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = io::Result<()>>,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        if is_worker() {
            return rt.block_on(async move { worker_main(Worker::from_env()).await });
        }
        rt.block_on(self.primary())
    }

    async fn primary(mut self) -> io::Result<()> {
        let exe = std::env::current_exe()?;
        let name = self.name.clone().unwrap_or_else(|| {
            let stem = exe
                .file_stem()
                .map_or("app".into(), |s| s.to_string_lossy().into_owned());
            let clean: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if herd_proto::is_valid_name(&clean) {
                clean
            } else {
                "app".into()
            }
        });
        let dir = std::env::temp_dir().join(format!("herd-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let result = self.supervise(&dir, name, exe).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn supervise(
        &mut self,
        dir: &std::path::Path,
        name: String,
        exe: std::path::PathBuf,
    ) -> io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let (sup, mut done) = Supervisor::start(Config {
            host: "local".into(),
            bus_url: None,
            max_message_bytes: 1 << 20,
            log_dir: dir.join("logs"),
            notify_path: dir.join("notify.sock"),
            pids_file: None,
            limits: herd_core::Limits::default(),
            // Its workers are this Rust program, never Node: no Node preload.
            node_dir: None,
            keeper: None,
        })?;
        // Workers write to our stdout and stderr, as Node's cluster workers do.
        let mut out = sup.subscribe_logs();
        tokio::spawn(async move {
            while let Ok(ev) = out.recv().await {
                match ev.stream {
                    herd_proto::LogStream::Out => println!("{}", ev.line),
                    herd_proto::LogStream::Err => eprintln!("{}", ev.line),
                }
            }
        });
        let mut life = sup.subscribe_lifecycle();
        let mut bus = sup.subscribe_bus();
        let spec = AppSpec {
            name: name.clone(),
            script: exe.display().to_string(),
            args: std::env::args().skip(1).collect(),
            cwd: std::env::current_dir()?.display().to_string(),
            env: std::env::vars().collect(),
            instances: self.workers,
            listen: self
                .listen
                .iter()
                .enumerate()
                .map(|(i, a)| ListenSpec {
                    name: if i == 0 {
                        "http".into()
                    } else {
                        format!("listen{i}")
                    },
                    addr: a.clone(),
                })
                .collect(),
            kill_timeout_ms: self.kill_timeout_ms,
            ..AppSpec::default()
        };
        match sup
            .request(Command::Start {
                spec: Box::new(spec),
            })
            .await
        {
            Reply::Apps { .. } => {}
            Reply::Error { error, .. } => return Err(io::Error::other(error.message)),
            other => return Err(io::Error::other(format!("unexpected reply: {other:?}"))),
        }
        let primary = Primary {
            sup: sup.clone(),
            app: name.clone(),
        };
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = &mut done => return Ok(()),
                ev = life.recv() => {
                    if let Ok(Lifecycle::Exited { instance, pid, exit, .. }) = ev {
                        if let Some(f) = self.on_exit.as_mut() {
                            f(&primary, WorkerExit { id: instance, pid, code: exit.code, signal: exit.signal });
                        }
                    }
                }
                env = bus.recv() => {
                    if let Ok(env) = env {
                        if env.to.as_deref() == Some("primary") {
                            let worker = env.from.split('@').next().and_then(|s| s.rsplit(':').next()).and_then(|i| i.parse().ok());
                            if let (Some(f), Some(w)) = (self.on_message.as_mut(), worker) {
                                f(&primary, w, env.data.clone());
                            }
                        }
                    }
                }
            }
        }
        // Graceful stop: every worker gets SIGTERM, drains, exits (SIGKILL after the timeout).
        sup.request(Command::Kill).await;
        let _ = done.await;
        Ok(())
    }
}
