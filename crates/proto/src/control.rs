//! Control protocol messages: one [`Request`] per line from the client, [`Reply`] lines back.

use serde::{Deserialize, Serialize};

use crate::spec::AppSpec;

/// Version of the control protocol. A daemon refuses requests of another version with
/// [`ErrorCode::Version`], naming the fix (restart the daemon with `herd kill`).
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version the client speaks.
    pub v: u32,
    /// What the client asks for.
    #[serde(flatten)]
    pub cmd: Command,
}

impl Request {
    /// A request of the current protocol version.
    pub fn new(cmd: Command) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            cmd,
        }
    }
}

/// New size of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleTo {
    /// Exactly this many instances.
    Exactly(u32),
    /// This many more (or fewer, when negative) than now.
    Delta(i32),
}

/// Which output stream of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output, kept in `<app>-<i>.out`.
    Out,
    /// Standard error, kept in `<app>-<i>.err`.
    Err,
}

/// The commands a client can send. `target` is an app name, an app id, a namespace (its apps;
/// an app of that name comes first), or `all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Is the daemon there? Answered with [`Reply::Pong`].
    Ping,
    /// Register and start a new app.
    Start {
        /// The app to run.
        spec: Box<AppSpec>,
    },
    /// Start apps that are registered but stopped.
    Resume {
        /// Which apps.
        target: String,
    },
    /// Stop apps' instances and close their sockets; the apps stay registered.
    Stop {
        /// Which apps.
        target: String,
    },
    /// Stop and start apps' instances again.
    Restart {
        /// Which apps.
        target: String,
        /// `--update-env`: the caller's environment, replacing the one captured at start
        /// (keys the app declares keep their values).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<std::collections::BTreeMap<String, String>>,
    },
    /// Replace apps' instances one by one without dropping a connection: each slot's new
    /// process must be ready before the old one is asked to stop.
    Reload {
        /// Which apps.
        target: String,
        /// `--update-env`, as for [`Command::Restart`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<std::collections::BTreeMap<String, String>>,
    },
    /// Stop apps and forget them.
    Delete {
        /// Which apps.
        target: String,
    },
    /// Change the number of instances of one app.
    Scale {
        /// Which app (not `all`).
        target: String,
        /// The new size.
        to: ScaleTo,
    },
    /// Every app and its instances.
    List,
    /// `herd apply`: run this spec under its name — start it if no app has the name, else
    /// replace the app's spec by a rolling reload (and a scale when only the instance count
    /// changed), keeping the previous spec for `rollback`. A reload that fails puts the
    /// previous spec back (the old processes kept serving).
    Apply {
        /// The app's new spec.
        spec: Box<AppSpec>,
    },
    /// `herd rollback`: apply the app's previous spec again.
    Rollback {
        /// Which app (not `all`).
        target: String,
    },
    /// `herd resurrect`: give a registered app the generation and earlier specs it was saved
    /// with, so that `rollback` works after a restart of herd as before it.
    Restore {
        /// Which app (not `all`).
        target: String,
        /// Its spec's generation.
        generation: u32,
        /// Its earlier specs, oldest first (the daemon keeps the last few).
        #[serde(default)]
        previous: Vec<AppSpec>,
    },
    /// `herd signal SIG TARGET` (PM2's sendSignal): send a signal to the instances' process
    /// groups — `app:i` (one), `app` (each of it) or `all`.
    Signal {
        /// `app:i`, `app`, or `all`.
        target: String,
        /// A signal name (`SIGUSR2`, `USR2`) or number.
        signal: String,
    },
    /// `herd reset`: set the apps' restart counts back to 0 (and their crash-loop history).
    Reset {
        /// Which apps.
        target: String,
    },
    /// Replace the daemon in place by `exe` (`herd update`), keeping every instance, socket
    /// and channel. Answered by the new daemon.
    Update {
        /// Absolute path of the binary to execute.
        exe: String,
        /// Handover formats that binary reads.
        formats: Vec<u32>,
    },
    /// Apps with their full spec.
    Describe {
        /// Which apps.
        target: String,
    },
    /// The last lines of apps' logs, then (with `follow`) new lines as they come.
    Logs {
        /// Which apps; `all` for every app.
        target: String,
        /// How many past lines per file.
        lines: usize,
        /// Keep streaming new lines until the client goes away.
        follow: bool,
        /// Only this stream; both when absent.
        stream: Option<LogStream>,
    },
    /// Deliver a message to instances: `app:i` (one), `app` (each of an app), `all` (each of
    /// every app). Node apps receive it through `process.on('message')`.
    Send {
        /// Where to.
        to: String,
        /// Topic (PM2's `topic`); `herd` when absent.
        #[serde(default)]
        topic: Option<String>,
        /// The message.
        data: serde_json::Value,
    },
    /// Deliver a message to one instance and wait for its reply (a message carrying
    /// `reply_to` equal to the request's `request` number).
    Request {
        /// Which instance: `app:i`, or `app` for any one of its instances.
        to: String,
        /// Topic; `herd` when absent.
        #[serde(default)]
        topic: Option<String>,
        /// The message.
        data: serde_json::Value,
        /// How long to wait for the reply, in ms.
        timeout_ms: u64,
    },
    /// Publish a message on a topic: instances that subscribed to it get it, on every host.
    Publish {
        /// The topic.
        topic: String,
        /// The message.
        data: serde_json::Value,
    },
    /// Stream every message that passes through the bus (for debugging), optionally only
    /// those of some topics.
    Bus {
        /// Topics to show; all when empty.
        #[serde(default)]
        topics: Vec<String>,
    },
    /// Stop every app, then the daemon.
    Kill,
    /// Empty apps' log files, rotated ones included (PM2's `flush`).
    Flush {
        /// Which apps; `all` for every app.
        target: String,
    },
    /// Open every log file again at its path (PM2's `reloadLogs`), after logrotate moved
    /// them away; the daemon does the same on SIGHUP.
    ReloadLogs,
    /// Run an action the app's instances declared with PM2's `@pm2/io` (`io.action`) on every
    /// instance that has it, and answer their replies (PM2's `trigger`): a [`Reply::Message`]
    /// whose `data` is `[{"instance": i, "return": …}, …]`.
    Trigger {
        /// Which app (or `app:i`).
        target: String,
        /// The action's name.
        action: String,
        /// The argument, given to an action that takes two parameters.
        #[serde(default)]
        arg: Option<serde_json::Value>,
        /// How long to wait for the replies, in ms.
        #[serde(default = "default_trigger_timeout")]
        timeout_ms: u64,
    },
}

fn default_trigger_timeout() -> u64 {
    5000
}

impl Command {
    /// Whether the command only reads the daemon's state, answered with one reply: `ping`,
    /// `list`, `describe`. Such a command is safe to send again when the connection closed
    /// before its reply (the client's retry rule), and is answered while `herd update` is
    /// under way (every other command gets [`ErrorCode::Busy`]).
    pub fn read_only(&self) -> bool {
        matches!(
            self,
            Command::Ping | Command::List | Command::Describe { .. }
        )
    }

    /// Whether the command is answered once `kill` has begun stopping every app (every other
    /// command gets [`ErrorCode::ShuttingDown`]): `ping` and `list`, so that a client can
    /// watch the daemon go.
    pub fn answered_while_shutting_down(&self) -> bool {
        matches!(self, Command::Ping | Command::List)
    }

    /// Whether the reply is a stream of lines rather than one line: `logs` (ended by
    /// [`Reply::End`] unless it follows) and `bus` (until the client goes away).
    pub fn streams(&self) -> bool {
        matches!(self, Command::Logs { .. } | Command::Bus { .. })
    }

    /// Whether the daemon's control server carries the command out itself rather than the
    /// supervisor: the streams, and `update` (which needs the connection and the daemon's
    /// fds).
    pub fn served_by_control_server(&self) -> bool {
        self.streams() || matches!(self, Command::Update { .. })
    }
}

/// One reply line from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to [`Command::Ping`].
    Pong {
        /// Protocol version.
        v: u32,
        /// The daemon's version.
        version: String,
        /// The daemon's pid.
        pid: u32,
    },
    /// Apps touched or listed by the command.
    Apps {
        /// Protocol version.
        v: u32,
        /// The apps.
        apps: Vec<AppInfo>,
        /// The message bus's state (in `describe` replies only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bus: Option<Box<BusStats>>,
        /// What the daemon wants its user to know (writes that fail on a full disk, …), in
        /// `list` and `describe` replies.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// A message seen on the bus (for `bus`): an envelope as daemons exchange them.
    Bus {
        /// Protocol version.
        v: u32,
        /// The envelope: `kind`, `from`, `origin`, `to`, `topic`, `data`, `id`, `reply_to`.
        message: serde_json::Value,
    },
    /// The command was done; nothing to show.
    Done {
        /// Protocol version.
        v: u32,
        /// What was done, for people.
        message: String,
    },
    /// One line of an instance's output.
    Log {
        /// Protocol version.
        v: u32,
        /// App name.
        app: String,
        /// Instance number.
        instance: u32,
        /// Which stream.
        stream: LogStream,
        /// The line, without its newline (invalid UTF-8 replaced).
        line: String,
    },
    /// A message from an instance (the reply to a request).
    Message {
        /// Protocol version.
        v: u32,
        /// Who sent it: `app:i`.
        from: String,
        /// What it sent: the `data` of its message, or the whole message if it had none.
        data: serde_json::Value,
    },
    /// End of a finite stream of replies (logs without follow).
    End {
        /// Protocol version.
        v: u32,
    },
    /// The command failed.
    Error {
        /// Protocol version.
        v: u32,
        /// What went wrong.
        error: ErrorBody,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            v: PROTOCOL_VERSION,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }

    /// A reply listing apps.
    pub fn apps(apps: Vec<AppInfo>) -> Self {
        Reply::Apps {
            v: PROTOCOL_VERSION,
            apps,
            bus: None,
            warnings: Vec::new(),
        }
    }

    /// A reply with a message.
    pub fn done(message: impl Into<String>) -> Self {
        Reply::Done {
            v: PROTOCOL_VERSION,
            message: message.into(),
        }
    }
}

/// Kinds of failure, stable for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line was not a request of this protocol.
    BadRequest,
    /// The line was longer than the limit.
    TooLarge,
    /// The client speaks another protocol version.
    Version,
    /// No app matches the target.
    UnknownApp,
    /// An app of that name exists already.
    NameTaken,
    /// The spec cannot be run (bad name, no instances, missing script…).
    InvalidSpec,
    /// A listening address cannot be bound.
    Listen,
    /// A reload stopped because a new process did not become ready; old ones keep serving.
    ReloadFailed,
    /// Starting a process failed.
    Spawn,
    /// The daemon is shutting down.
    ShuttingDown,
    /// No running instance matches the message's address.
    NoRecipient,
    /// The instances addressed did not take the message: their queue was full.
    QueueFull,
    /// A request got no reply in time.
    Timeout,
    /// The daemon is being updated (`herd update`); send the command again in a moment.
    Busy,
    /// `herd update` could not replace the daemon; the running one goes on.
    Update,
    /// Anything else.
    Internal,
}

/// State and counters of the daemon's message bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusStats {
    /// This daemon's host name on the bus (`HERD_HOST`).
    pub host: String,
    /// The broker bridging hosts, password hidden; none when the bus is local only.
    pub broker: Option<String>,
    /// Connected to the broker now.
    pub connected: bool,
    /// Messages handed to instances here.
    pub routed: u64,
    /// Messages dropped because an instance's queue was full (it did not read).
    pub dropped: u64,
    /// Messages refused: over the size limit, not JSON, or malformed.
    pub rejected: u64,
    /// Messages refused by a limit: a topic over `max_topic_bytes`, a subscription over
    /// `max_subscriptions`, a request over `max_pending_requests`.
    #[serde(default)]
    pub refused: u64,
    /// Messages addressed to no running instance.
    pub no_recipient: u64,
    /// Envelopes put on the broker.
    pub remote_published: u64,
    /// Envelopes taken from the broker.
    pub remote_received: u64,
    /// Envelopes that could not go to the broker (it was away).
    pub lost: u64,
    /// Times the broker connection was made again.
    pub reconnects: u64,
    /// Direct channels the daemon handed to pairs of instances (docs/bus.md).
    #[serde(default)]
    pub direct_opened: u64,
    /// Requests for a direct channel refused (the peer not running or not taking channels).
    #[serde(default)]
    pub direct_refused: u64,
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind.
    pub code: ErrorCode,
    /// One line for people: the problem and the fix.
    pub message: String,
}

/// Overall state of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppStatus {
    /// Its instances are meant to run.
    Running,
    /// It was stopped; its sockets are closed.
    Stopped,
}

/// State of one instance slot, as shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessStatus {
    /// Started, not yet ready (only with `wait_ready`).
    Starting,
    /// Serving.
    Online,
    /// Asked to stop, not yet gone.
    Stopping,
    /// Crashed; waiting out the restart backoff.
    WaitingRestart,
    /// Not running, on purpose.
    Stopped,
    /// Exited and will not be restarted (autorestart off).
    Exited,
    /// Restarted too often too quickly; given up until restarted by hand.
    Errored,
}

impl ProcessStatus {
    /// The name shown in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessStatus::Starting => "starting",
            ProcessStatus::Online => "online",
            ProcessStatus::Stopping => "stopping",
            ProcessStatus::WaitingRestart => "waiting",
            ProcessStatus::Stopped => "stopped",
            ProcessStatus::Exited => "exited",
            ProcessStatus::Errored => "errored",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal name, when a signal killed it.
    pub signal: Option<String>,
}

/// How far stop and kill reach into an instance's process tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Containment {
    /// Each instance process runs in its own cgroup (v2) under `parent`: stop and kill reach
    /// everything it started, wherever that went.
    Cgroup {
        /// The daemon's parent cgroup directory.
        parent: String,
    },
    /// Process groups only: a child that calls `setsid` or `setpgid` escapes stop and kill.
    ProcessGroup {
        /// What that means for the user.
        note: String,
        /// Why herd could not use cgroups.
        reason: String,
    },
}

/// One instance slot of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Instance number, 0-based (`HERD_INSTANCE`).
    pub instance: u32,
    /// Pid of the running process, if any.
    pub pid: Option<u32>,
    /// State of the slot.
    pub status: ProcessStatus,
    /// How many times the slot's process was started again after the first.
    pub restarts: u32,
    /// Milliseconds since the current process started.
    pub uptime_ms: Option<u64>,
    /// CPU use of the process since the last look (or its start), in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory of the process, in bytes.
    pub memory_bytes: Option<u64>,
    /// Messages to this instance dropped because it did not read them fast enough.
    #[serde(default)]
    pub messages_dropped: u64,
    /// Bus topics the instance subscribes to.
    #[serde(default)]
    pub subscriptions: u64,
    /// Messages of the instance the bus refused by a limit (topic length, subscriptions,
    /// pending requests).
    #[serde(default)]
    pub bus_refused: u64,
    /// How the last process of the slot ended.
    pub last_exit: Option<ExitInfo>,
    /// Version of the app's environment the running process was started with.
    #[serde(default)]
    pub env_version: u32,
    /// The cgroup directory of the running process, when it has its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Its metrics from PM2's `@pm2/io` (`io.metric`, `io.counter`…), as it last sent them:
    /// name → `{"value", "unit", "type", …}`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub pm2_metrics: serde_json::Map<String, serde_json::Value>,
    /// The actions it declared with `@pm2/io` (`io.action`), for `herd trigger`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Its health, when the app has a readiness or liveness probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// An instance's health as its probes last saw it (docs/health.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Ready for new connections: `None` until its readiness probe first decides (or without
    /// one).
    #[serde(default)]
    pub ready: Option<bool>,
    /// Alive: `None` until its liveness probe first decides (or without one).
    #[serde(default)]
    pub live: Option<bool>,
    /// The last probe's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ProbeResult>,
}

/// One probe's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// `readiness` or `liveness`.
    pub probe: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen: `HTTP 200`, `connected`, `exit 1`, `timed out after 1 s`…
    pub detail: String,
    /// How long ago, in milliseconds (when listed).
    pub ago_ms: u64,
}

fn default_namespace() -> String {
    crate::spec::DEFAULT_NAMESPACE.into()
}

/// One app, as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppInfo {
    /// Numeric id, usable wherever a name is.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Whether it is meant to run.
    pub status: AppStatus,
    /// Listening addresses, as bound (the real port when 0 was asked).
    pub listen: Vec<String>,
    /// First TCP port, as given to instances in `PORT`.
    pub port: Option<u16>,
    /// How connections are spread.
    pub balance: crate::spec::Balance,
    /// Its namespace (PM2's), `default` unless given.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Instance slots.
    pub processes: Vec<ProcessInfo>,
    /// The app's own primary process (`--primary`), whose `cluster.fork()` starts the
    /// instances; its `instance` is [`AppSpec::PRIMARY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<ProcessInfo>,
    /// The full spec (in `describe` replies only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub spec: Option<Box<AppSpec>>,
    /// Version of the app's environment: 1 at start, one more at each `--update-env` that
    /// changed it.
    #[serde(default)]
    pub env_version: u32,
    /// How stop and kill reach the instances' process trees (in `describe` replies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containment: Option<Containment>,
    /// Every serving instance fails its readiness probe, so new connections go to all of them
    /// rather than to none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routing_fallback: bool,
    /// The apps it waits for before it starts (`depends_on`): those not ready yet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Its spec's generation: 1 at start, one more at each `apply` or `rollback` that
    /// changed it.
    #[serde(default)]
    pub generation: u32,
    /// Earlier specs kept for `herd rollback` (the last is the one it goes back to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<AppSpec>,
    /// When the app's `cron_restart` next reloads it (Unix time, ms), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cron_restart_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        let r = Request::new(Command::Stop {
            target: "api".into(),
        });
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"v":1,"cmd":"stop","target":"api"}"#);
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let list: Request = serde_json::from_str(r#"{"v":1,"cmd":"list"}"#).unwrap();
        assert_eq!(list.cmd, Command::List);
    }

    /// One example of every command, so that a new command must be classified here.
    fn every_command() -> Vec<Command> {
        let target = || "api".to_string();
        let all = vec![
            Command::Ping,
            Command::Start {
                spec: Box::default(),
            },
            Command::Resume { target: target() },
            Command::Stop { target: target() },
            Command::Restart {
                target: target(),
                env: None,
            },
            Command::Reload {
                target: target(),
                env: None,
            },
            Command::Delete { target: target() },
            Command::Scale {
                target: target(),
                to: ScaleTo::Exactly(2),
            },
            Command::List,
            Command::Update {
                exe: "/bin/herd".into(),
                formats: vec![1],
            },
            Command::Describe { target: target() },
            Command::Logs {
                target: target(),
                lines: 10,
                follow: false,
                stream: None,
            },
            Command::Send {
                to: target(),
                topic: None,
                data: serde_json::Value::Null,
            },
            Command::Request {
                to: target(),
                topic: None,
                data: serde_json::Value::Null,
                timeout_ms: 1000,
            },
            Command::Publish {
                topic: "t".into(),
                data: serde_json::Value::Null,
            },
            Command::Bus { topics: Vec::new() },
            Command::Kill,
            Command::Flush { target: target() },
            Command::ReloadLogs,
            Command::Trigger {
                target: target(),
                action: "a".into(),
                arg: None,
                timeout_ms: 5000,
            },
            Command::Apply {
                spec: Box::default(),
            },
            Command::Rollback { target: target() },
            Command::Restore {
                target: target(),
                generation: 2,
                previous: Vec::new(),
            },
            Command::Signal {
                target: target(),
                signal: "SIGUSR2".into(),
            },
            Command::Reset { target: target() },
        ];
        // A command added to the enum but not here fails to compile: keep the list whole.
        for c in &all {
            match c {
                Command::Ping
                | Command::Start { .. }
                | Command::Resume { .. }
                | Command::Stop { .. }
                | Command::Restart { .. }
                | Command::Reload { .. }
                | Command::Delete { .. }
                | Command::Scale { .. }
                | Command::List
                | Command::Update { .. }
                | Command::Describe { .. }
                | Command::Logs { .. }
                | Command::Send { .. }
                | Command::Request { .. }
                | Command::Publish { .. }
                | Command::Bus { .. }
                | Command::Kill
                | Command::Flush { .. }
                | Command::ReloadLogs
                | Command::Trigger { .. }
                | Command::Apply { .. }
                | Command::Rollback { .. }
                | Command::Restore { .. }
                | Command::Signal { .. }
                | Command::Reset { .. } => {}
            }
        }
        all
    }

    fn names(pick: impl Fn(&Command) -> bool) -> Vec<String> {
        every_command()
            .iter()
            .filter(|c| pick(c))
            .map(|c| {
                serde_json::to_value(c).unwrap()["cmd"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn command_classes() {
        assert_eq!(names(Command::read_only), ["ping", "list", "describe"]);
        assert_eq!(
            names(Command::answered_while_shutting_down),
            ["ping", "list"]
        );
        assert_eq!(names(Command::streams), ["logs", "bus"]);
        assert_eq!(
            names(Command::served_by_control_server),
            ["update", "logs", "bus"]
        );
        // What is answered while shutting down only reads, and no stream is a one-reply read.
        for c in every_command() {
            assert!(!c.answered_while_shutting_down() || c.read_only(), "{c:?}");
            assert!(!(c.streams() && c.read_only()), "{c:?}");
        }
    }

    #[test]
    fn a_float_in_a_message_is_not_changed_by_the_trip_through_json() {
        use crate::encode_line;
        // Found while fuzzing (`control_line`: a request must encode and parse back equal).
        for text in [
            "1.0715660391465826e-75",
            "-1.81996730402717e-179",
            "-1.603964615428183e143",
        ] {
            let line = format!(r#"{{"v":1,"cmd":"send","to":"api","data":{{"x":{text}}}}}"#);
            let req: Request = serde_json::from_str(&line).unwrap();
            let again: Request = serde_json::from_slice(&encode_line(&req).unwrap()).unwrap();
            assert_eq!(again, req);
            let Command::Send { data, .. } = &req.cmd else {
                panic!("{req:?}")
            };
            // Rust's own parser is exact.
            assert_eq!(data["x"].as_f64(), text.parse::<f64>().ok());
        }
    }

    #[test]
    fn reply_wire_shape() {
        let s = serde_json::to_string(&Reply::error(ErrorCode::UnknownApp, "no app x")).unwrap();
        assert_eq!(
            s,
            r#"{"reply":"error","v":1,"error":{"code":"unknown_app","message":"no app x"}}"#
        );
    }
}
