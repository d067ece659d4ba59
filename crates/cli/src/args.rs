//! Command-line syntax, and turning `herd start` flags into an [`AppSpec`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use herd_proto::{AppSpec, Balance, ListenSpec, LogSpec, Probe, ProbeCheck};

/// herd — run any server as a cluster of instances sharing one port.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Start a program as a new app, or start a stopped app again by name, id or `all`.
    Start(StartArgs),
    /// Run apps in the foreground without a daemon (containers, first tries): a program with
    /// the same flags as `start`, or an app file.
    Run(RunArgs),
    /// Stop apps (they stay listed; their ports are closed).
    Stop(Target),
    /// Stop and start apps' instances again (all at once).
    Restart(RestartArgs),
    /// Replace apps' instances one by one, each new one ready before the old one stops:
    /// no request is dropped.
    Reload(RestartArgs),
    /// Stop apps and remove them from the list.
    #[command(alias = "del")]
    Delete(Target),
    /// Make the daemon run what an app file says: start new apps, reload changed ones with
    /// their new spec (rolling, no request dropped), scale; prints the plan first
    Apply(ApplyArgs),
    /// Go back to an app's previous spec (before the last `herd apply`), by a rolling reload
    Rollback(Target),
    /// Send a signal to instances: app:i, app, or all (PM2's sendSignal)
    #[command(alias = "send-signal", alias = "sendSignal")]
    Signal(SignalArgs),
    /// Set apps' restart counts back to 0
    Reset(Target),
    /// Print the pids of an app's running instances (every app's without one)
    Pid(PidArgs),
    /// Print the environment an instance runs with (APP:INSTANCE), secrets masked
    Env(EnvArgs),
    /// Print what to paste into a bug report: versions, the daemon, the apps, its log's end
    Report,
    /// List apps and their instances.
    #[command(alias = "ls", alias = "l", alias = "ps", alias = "status")]
    List(ListArgs),
    /// Show an app's settings and instances.
    #[command(alias = "show", alias = "info", alias = "desc")]
    Describe(DescribeArgs),
    /// Show apps' output, and follow it.
    Logs(LogsArgs),
    /// Change the number of instances: N, +N or -N.
    Scale(ScaleArgs),
    /// Watch every app and instance live in the terminal (CPU, memory, logs), and restart,
    /// reload, scale or stop them with a key.
    Monit,
    /// Serve a dashboard in the browser: every app and instance live, CPU and memory charts,
    /// logs, and restart, reload, scale and stop buttons (127.0.0.1 only by default; it prints
    /// the address with a token to open)
    Web(WebArgs),
    /// Send a JSON message to instances: app:i, app, or all.
    Send(SendArgs),
    /// Send a JSON message to one instance and print its reply.
    Request(RequestArgs),
    /// Publish a JSON message on a topic (to subscribed instances, on every host).
    Publish(PublishArgs),
    /// Run an action the app declared with PM2's @pm2/io (io.action) and print each
    /// instance's reply (PM2's trigger).
    Trigger(TriggerArgs),
    /// Show messages passing through the bus, as they pass (all, or of some topics).
    Bus(BusArgs),
    /// Save the app list to HERD_HOME/dump.json, for `herd resurrect`.
    Save(SaveArgs),
    /// Start the apps saved by `herd save` again.
    Resurrect(JsonFlag),
    /// Print (or install) a systemd unit that runs the saved apps at boot.
    Startup(StartupArgs),
    /// Stop every app and the daemon.
    Kill,
    /// Empty apps' log files, rotated ones included (all apps when no target is given).
    Flush(FlushArgs),
    /// Open every log file again (after logrotate moved them); SIGHUP to the daemon does the
    /// same.
    #[command(name = "reload-logs", alias = "reloadLogs")]
    ReloadLogs,
    /// Replace the running daemon by this herd binary without restarting any app: the daemon
    /// re-executes itself keeping every instance, socket and channel.
    Update,
    /// Check that the daemon answers (and start it).
    Ping,
    /// Run the daemon in the foreground (the CLI starts it by itself on first use).
    #[command(hide = true)]
    Daemon,
}

#[derive(Debug, Args)]
pub struct FlushArgs {
    /// App name, numeric id, or `all`.
    #[arg(default_value = "all")]
    pub target: String,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Target {
    /// App name, numeric id, or `all`.
    pub target: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Order the apps: name, id, cpu, memory, restarts or uptime; `:desc` reverses.
    #[arg(long, value_name = "FIELD[:desc]")]
    pub sort: Option<String>,
}

#[derive(Debug, Args)]
pub struct SignalArgs {
    /// The signal: a name (SIGUSR2, USR2) or a number.
    pub signal: String,
    /// app:i (one instance), app (each of its instances), or all.
    pub target: String,
}

#[derive(Debug, Args)]
pub struct PidArgs {
    /// App name or id (default: every app).
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct EnvArgs {
    /// APP:INSTANCE (APP alone: instance 0).
    pub target: String,
    /// Print the values of secret-looking keys too.
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The app file (herd.toml, .json, .yaml, or PM2's ecosystem.config.js).
    pub file: String,
    /// Only these apps of the file (comma-separated, or repeated).
    #[arg(long, value_delimiter = ',', value_name = "APP")]
    pub only: Vec<String>,
    /// An env block of the file (NAME selects `env_NAME`), or KEY=VALUE; repeatable.
    #[arg(long, value_name = "NAME|KEY=VALUE")]
    pub env: Vec<String>,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete the running apps the file does not list.
    #[arg(long)]
    pub prune: bool,
    /// Give changed apps this shell's whole environment (otherwise only the variables the
    /// file declares change).
    #[arg(long)]
    pub update_env: bool,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// App name, numeric id, or `all`.
    pub target: String,
    /// Give the new processes this shell's environment instead of the one captured at start
    /// (variables the app sets itself keep their values).
    #[arg(long)]
    pub update_env: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl RestartArgs {
    /// The environment to send with the request, when `--update-env` is given.
    pub fn env(&self) -> Option<BTreeMap<String, String>> {
        self.update_env.then(|| std::env::vars().collect())
    }
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// App name, numeric id, or `all`.
    pub target: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// App name, numeric id, or `all` (the default).
    #[arg(default_value = "all")]
    pub target: String,
    /// How many past lines per file.
    #[arg(long, default_value_t = 15)]
    pub lines: usize,
    /// Keep printing new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Standard error only.
    #[arg(long, conflicts_with = "out")]
    pub err: bool,
    /// Standard output only.
    #[arg(long)]
    pub out: bool,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WebArgs {
    /// Address to listen on (port 0: any free port, printed)
    #[arg(long, default_value = "127.0.0.1:9210")]
    pub listen: String,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// App name or id.
    pub target: String,
    /// New number of instances, or +N / -N.
    #[arg(allow_hyphen_values = true)]
    pub to: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Where to: app:INSTANCE, app (each instance), or all.
    pub to: String,
    /// The message, as JSON (a bare word is sent as a string).
    pub data: String,
    /// Topic of the message (PM2's `topic`).
    #[arg(long)]
    pub topic: Option<String>,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Which instance: app:INSTANCE, or app for any one.
    pub to: String,
    /// The message, as JSON (a bare word is sent as a string).
    pub data: String,
    /// Topic of the message.
    #[arg(long)]
    pub topic: Option<String>,
    /// How long to wait for the reply (ms, or 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// Which app (every instance that has the action), or app:INSTANCE.
    pub target: String,
    /// The action's name.
    pub action: String,
    /// An argument for the action, as JSON (a bare word is sent as a string).
    pub arg: Option<String>,
    /// How long to wait for the replies (ms, or 5s).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the replies as one JSON array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub start: StartArgs,
    /// Print instance output as one JSON object per line.
    #[arg(long)]
    pub json_logs: bool,
    /// Keep running when every app has stopped for good (default: exit).
    #[arg(long)]
    pub keep_alive: bool,
    /// Run the apps saved by `herd save` (what `herd startup` units do).
    #[arg(long)]
    pub resurrect: bool,
    /// Also serve HERD_HOME's control socket, as the daemon does, so `herd list`, `logs`,
    /// `reload`, `scale`, `send`… from another shell reach these apps (what `herd startup`
    /// units do). Logs are kept in HERD_HOME/logs.
    #[arg(long)]
    pub control: bool,
}

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// Init system: systemd.
    #[arg(default_value = "systemd")]
    pub system: String,
    /// Write the unit (system-wide as root, else for this user) instead of printing it.
    #[arg(long)]
    pub install: bool,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Overwrite a saved list with an empty one.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic.
    pub topic: String,
    /// The message, as JSON (a bare word is sent as a string).
    pub data: String,
}

#[derive(Debug, Args)]
pub struct BusArgs {
    /// Topics to show (all messages when none).
    pub topics: Vec<String>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Message data from the command line: JSON if it parses, else the text as a string.
pub fn message_data(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
}

#[derive(Debug, Args, Clone)]
pub struct StartArgs {
    /// Program or script to run, an app file, or (for `start`) an existing app's name, id or
    /// `all`.
    #[arg(default_value = "")]
    pub script: String,
    /// Arguments for the program (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
    /// App name (default: the script's file name without extension).
    #[arg(short, long)]
    pub name: Option<String>,
    /// Number of instances: a number, `max` (one per CPU) or -1 (one per CPU but one).
    /// Default 1; with --primary, 0 (the primary forks them).
    #[arg(short = 'i', long = "instances", allow_hyphen_values = true)]
    pub instances: Option<String>,
    /// Run the script's own cluster primary too: its `cluster.isPrimary` branch runs once,
    /// and its `cluster.fork()` starts herd instances (Node.js; see docs/node-primary.md).
    #[arg(long)]
    pub primary: bool,
    /// Listen on this TCP port on every IPv4 address (0.0.0.0:PORT).
    #[arg(short, long)]
    pub port: Option<u16>,
    /// Listen on ADDR: HOST:PORT, [V6]:PORT, unix:/path; NAME=ADDR names it in LISTEN_FDNAMES.
    /// Repeatable.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// How connections are spread: hash (per-instance sockets), sticky (by client address),
    /// shared (one socket).
    #[arg(long, default_value = "hash", value_parser = parse_balance)]
    pub balance: Balance,
    /// Set an environment variable (KEY=VALUE), repeatable; with an app file, a bare NAME
    /// selects its env_NAME blocks (PM2's --env production).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Interpreter for the script (default: by extension, e.g. .py → python3, .js → node,
    /// .ts → bun).
    #[arg(long)]
    pub interpreter: Option<String>,
    /// Arguments for the interpreter, before the script (PM2's --node-args).
    #[arg(
        long = "interpreter-args",
        alias = "node-args",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub interpreter_args: Vec<String>,
    /// Working directory (default: the current one).
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// Route to an instance only once it says it is ready (sd_notify READY=1 or IPC).
    #[arg(long)]
    pub wait_ready: bool,
    /// How long a --wait-ready instance has to say so (ms, or 3s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub listen_timeout: Option<Duration>,
    /// Time between the kill signal and SIGKILL (ms, or 5s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub kill_timeout: Option<Duration>,
    /// Signal that asks an instance to stop.
    #[arg(long, default_value = "SIGTERM")]
    pub kill_signal: String,
    /// Quick crashes in a row before an instance is marked errored.
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// A run shorter than this counts as a quick crash (ms, or 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_uptime: Option<Duration>,
    /// Fixed delay before every restart (PM2's --restart-delay; default 0), on top of the
    /// backoff (ms, or 2s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub restart_delay: Option<Duration>,
    /// Base of the backoff after quick crashes (runs shorter than --min-uptime): none at the
    /// first restart, then this, doubling up to --max-restart-delay (default 100ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub exp_backoff_restart_delay: Option<Duration>,
    /// Cap of the backoff (default 15s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_restart_delay: Option<Duration>,
    /// Reload the app (rolling, as `herd reload`) at each time this cron expression matches,
    /// in local time, e.g. "0 3 * * *" (PM2's --cron-restart).
    #[arg(long, value_name = "CRON", value_parser = parse_cron)]
    pub cron_restart: Option<String>,
    /// Do not restart instances that exit.
    #[arg(long)]
    pub no_autorestart: bool,
    /// Exit codes that mean "stopped on purpose" (no restart), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub stop_exit_codes: Vec<i32>,
    /// Restart an instance whose memory passes this size (e.g. 200M, 1G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory_restart: Option<u64>,
    /// Stop instances by sending them the message "shutdown" (PM2's shutdown_with_message)
    /// instead of a signal.
    #[arg(long)]
    pub shutdown_with_message: bool,
    /// Run a Node.js script as a plain process with LISTEN_FDS instead of as a cluster worker.
    #[arg(long)]
    pub no_node_cluster: bool,
    /// Run the script as a Node.js cluster worker even under an interpreter herd does not run
    /// that way by default (Deno, for a script that uses node:cluster).
    #[arg(long, conflicts_with = "no_node_cluster")]
    pub node_cluster: bool,
    /// Reload the app when files change: under its folder, or under the paths given
    /// (`--watch=src,config`).
    #[arg(long, num_args = 0..=1, require_equals = true, value_delimiter = ',', default_missing_value = "", value_name = "PATHS")]
    pub watch: Option<Vec<String>>,
    /// A path component whose changes do not count when watching; repeatable (default:
    /// node_modules and .git).
    #[arg(long = "ignore-watch", value_name = "NAME")]
    pub ignore_watch: Vec<String>,
    /// Prefix log lines with a timestamp.
    #[arg(long)]
    pub time: bool,
    /// Rotate a log file past this size (default 10M).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub log_max_size: Option<u64>,
    /// Rotated log files to keep (default 3).
    #[arg(long)]
    pub log_keep: Option<u32>,
    /// Write stdout to this file (PM2's out_file) instead of HERD_HOME/logs/<app>-<i>.out;
    /// relative to --cwd; `/dev/null` writes nothing. Unless the logs are merged, a path
    /// ending in .log gets the instance number before it (out.log → out-0.log), as in PM2.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub out_file: Option<String>,
    /// Write stderr to this file (PM2's error_file; PM2's `-e` is herd's --env, so this one
    /// has no short form).
    #[arg(long = "error", value_name = "PATH")]
    pub error_file: Option<String>,
    /// Also write both streams to one more file (PM2's log_file); with no PATH,
    /// HERD_HOME/logs/<app>.log. Put it after the script, or write --log=PATH.
    #[arg(short = 'l', long = "log", value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    pub log_file: Option<String>,
    /// One log file for all instances (no instance number in the names). Default: merged
    /// when files are named and no instance count is given (PM2's fork mode), else not.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub merge_logs: Option<bool>,
    /// Prefix each line with the local time in this format (PM2's dayjs tokens, e.g.
    /// "YYYY-MM-DD HH:mm:ss Z"; docs/logs.md lists them), then ": ".
    #[arg(long, value_name = "FORMAT")]
    pub log_date_format: Option<String>,
    /// How lines are written: raw (as the app wrote them) or json (PM2's JSON lines).
    #[arg(long, value_name = "TYPE", value_parser = parse_log_type)]
    pub log_type: Option<bool>,
    /// Write no log file (PM2's disable_logs); `herd logs -f` still shows the lines live.
    #[arg(long)]
    pub disable_logs: bool,
    /// Route new connections only to instances that pass this probe: http:/PATH, tcp,
    /// exec:COMMAND or channel (docs/health.md).
    #[arg(long, value_name = "PROBE", value_parser = parse_probe)]
    pub readiness: Option<ProbeCheck>,
    /// Restart instances that keep failing this probe: http:/PATH, tcp, exec:COMMAND or
    /// channel (docs/health.md).
    #[arg(long, value_name = "PROBE", value_parser = parse_probe)]
    pub liveness: Option<ProbeCheck>,
    /// Start only once this app is ready (every instance online, passing its readiness
    /// probe if it has one); repeatable. `herd stop all` and `herd kill` stop this app first.
    #[arg(long, value_name = "APP", alias = "depends-on")]
    pub after: Vec<String>,
    /// Register the app stopped (PM2's `autostart: false`); `herd start NAME` starts it.
    #[arg(long)]
    pub no_autostart: bool,
    /// One more variable holding the instance number (PM2's `instance_var`).
    #[arg(long, value_name = "NAME")]
    pub instance_var: Option<String>,
    /// A numeric variable each instance gets increased by its number (PM2's
    /// `increment_var`: PORT=3000 gives 3000, 3001, …).
    #[arg(long, value_name = "NAME")]
    pub increment_var: Option<String>,
    /// Run the instances as this user, a name or a number (PM2's `--uid`); the daemon must
    /// run as root. Its primary group, supplementary groups, HOME, USER, LOGNAME and SHELL.
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,
    /// Run the instances with this group, a name or a number (PM2's `--gid`); default: the
    /// --uid user's primary group.
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,
    /// The app's namespace (PM2's `--namespace`): commands given the namespace act on each
    /// of its apps (`herd reload api`). Default: `default`.
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,
    /// Leave out of the captured environment the shell's variables starting with PREFIX
    /// (repeatable; `*` leaves out all of them): PM2's `filter_env`. Variables the app
    /// declares (--env, the file's env) stay.
    #[arg(long, value_name = "PREFIX")]
    pub filter_env: Vec<String>,
    /// Time between two probes of an instance (default 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_interval: Option<Duration>,
    /// A probe that has not passed within this fails (default 1s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_timeout: Option<Duration>,
    /// Failures in a row that make an instance not ready / not alive (default 3).
    #[arg(long, value_name = "N")]
    pub probe_failures: Option<u32>,
    /// Successes in a row that make an instance ready again (default 1).
    #[arg(long, value_name = "N")]
    pub probe_successes: Option<u32>,
    /// Time after an instance starts before its first probe (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub probe_initial_delay: Option<Duration>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// PM2's `log_type`: whether lines are written as JSON.
pub fn parse_log_type(s: &str) -> Result<bool, String> {
    match s {
        "raw" => Ok(false),
        "json" => Ok(true),
        _ => Err(format!("unknown log type {s:?}; use raw or json")),
    }
}

fn parse_balance(s: &str) -> Result<Balance, String> {
    match s {
        "hash" => Ok(Balance::Hash),
        "sticky" => Ok(Balance::Sticky),
        "shared" => Ok(Balance::Shared),
        _ => Err(format!("unknown balance {s:?}; use hash, sticky or shared")),
    }
}

/// A cron expression as `--cron-restart` takes it, checked.
pub fn parse_cron(s: &str) -> Result<String, String> {
    herd_core::schedule::Schedule::parse(s)
        .map(|_| s.trim().to_string())
        .map_err(|e| e.to_string())
}

/// A probe as `--readiness` and `--liveness` take it.
fn parse_probe(s: &str) -> Result<ProbeCheck, String> {
    ProbeCheck::parse(s)
}

/// A duration given as milliseconds (PM2's habit) or with a unit (`5s`, `1m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(s).map_err(|e| {
        format!("cannot read duration {s:?} ({e}); use milliseconds or a unit, e.g. 5000 or 5s")
    })
}

/// A size such as `200M`, `1G`, `512K` or bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("cannot read size {s:?}; use e.g. 200M, 1G, 512K"))?;
    if n < 0.0 {
        return Err(format!("size {s:?} is negative"));
    }
    Ok((n * mult as f64) as u64)
}

/// Interpreter for a script, by extension.
pub fn interpreter_for(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "py" => Some("python3"),
        "js" | "cjs" | "mjs" => Some("node"),
        // PM2's choice for TypeScript; Bun runs it as it is.
        "ts" | "tsx" | "mts" | "cts" => Some("bun"),
        "sh" => Some("bash"),
        "rb" => Some("ruby"),
        "pl" => Some("perl"),
        "php" => Some("php"),
        _ => None,
    }
}

/// Number of instances from `N` or `max`.
pub fn parse_instances(s: &str) -> Result<u32> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    if s == "max" {
        return Ok(cpus);
    }
    if s == "-1" {
        // PM2's meaning: every CPU but one.
        return Ok(cpus.saturating_sub(1).max(1));
    }
    let n: u32 = s
        .parse()
        .map_err(|_| anyhow::anyhow!("-i takes a number or `max`, not {s:?}"))?;
    if n == 0 {
        // PM2's meaning (as `instances: 0` in a file): one per CPU.
        return Ok(cpus);
    }
    Ok(n)
}

impl StartArgs {
    /// Flags as the command line leaves them when only SCRIPT is given.
    pub fn new(script: String) -> Self {
        let cli = Cli::try_parse_from(["herd", "start", &script]).expect("defaults parse");
        match cli.cmd {
            Cmd::Start(a) => a,
            _ => unreachable!("parsed as start"),
        }
    }

    /// The log options: the paths named made absolute from `cwd` (`~` is the home folder, as
    /// in PM2), `--log` with no path `<app>.log` in herd's log folder, and PM2's default of
    /// `merge_logs`.
    fn log_spec(&self, name: &str, cwd: &Path, defaults: &LogSpec) -> LogSpec {
        let path = |p: &String| -> String {
            if p == LogSpec::NULL || p == "NULL" {
                return LogSpec::NULL.into();
            }
            let p = match (p.strip_prefix('~'), std::env::var_os("HOME")) {
                (Some(rest), Some(home)) => {
                    format!("{}{rest}", Path::new(&home).display())
                }
                _ => p.clone(),
            };
            cwd.join(p).display().to_string()
        };
        let log_file = self.log_file.as_ref().map(|p| {
            if p.is_empty() {
                format!("{name}.log")
            } else {
                path(p)
            }
        });
        let named = self.out_file.is_some() || self.error_file.is_some() || log_file.is_some();
        LogSpec {
            timestamps: self.time,
            max_size: self.log_max_size.unwrap_or(defaults.max_size),
            keep: self.log_keep.unwrap_or(defaults.keep),
            out_file: self.out_file.as_ref().map(path),
            error_file: self.error_file.as_ref().map(path),
            log_file,
            // PM2 merges the logs of an app started without an instance count (fork mode).
            merge: self
                .merge_logs
                .unwrap_or(named && self.instances.is_none() && !self.primary),
            date_format: self.log_date_format.clone(),
            json: self.log_type.unwrap_or(false),
            disabled: self.disable_logs,
        }
    }

    /// `--env` values without `=`: the names of env blocks to select in an app file.
    pub fn env_blocks(&self) -> Vec<&str> {
        self.env
            .iter()
            .filter(|e| !e.contains('='))
            .map(String::as_str)
            .collect()
    }

    /// `--env K=V` values.
    pub fn env_vars(&self) -> Vec<String> {
        self.env
            .iter()
            .filter(|e| e.contains('='))
            .cloned()
            .collect()
    }

    /// Builds the spec for a new app from the flags, resolving paths against the current
    /// directory and capturing the current environment.
    pub fn to_spec(&self) -> Result<AppSpec> {
        let cwd = match &self.cwd {
            Some(c) => std::env::current_dir()?.join(c),
            None => std::env::current_dir().context("reading the current directory")?,
        };
        let defaults = AppSpec::default();
        let mut args = self.args.clone();
        let mut interpreter_args = self.interpreter_args.clone();
        let as_path = cwd.join(&self.script);
        let (mut script, mut interpreter) = if as_path.exists() {
            let interp = self
                .interpreter
                .clone()
                .or_else(|| {
                    // An executable file runs as it is; others by extension.
                    let exec = is_executable(&as_path);
                    (!exec
                        || as_path
                            .extension()
                            .is_some_and(|e| e == "js" || e == "mjs" || e == "cjs"))
                    .then(|| interpreter_for(&as_path).map(str::to_string))
                    .flatten()
                })
                .filter(|i| i != "none");
            (as_path.display().to_string(), interp)
        } else if self.script.contains(char::is_whitespace) {
            // A command line such as "python3 -m http.server" or "next start".
            let mut words = self.script.split_whitespace().map(str::to_string);
            let prog = words.next().expect("has a word");
            let mut rest: Vec<String> = words.collect();
            rest.append(&mut args);
            args = rest;
            (prog, self.interpreter.clone())
        } else if self.script.contains('/') || interpreter_for(Path::new(&self.script)).is_some() {
            bail!(
                "{} does not exist; check the path (relative paths start from {})",
                as_path.display(),
                cwd.display()
            );
        } else {
            (self.script.clone(), self.interpreter.clone())
        };
        // `node [flags] app.js args…` runs app.js under node; so do scripts whose #! names
        // node (node_modules/.bin/next), found on PATH or in ./node_modules/.bin.
        if interpreter.is_none() && !script.contains('/') {
            let base = script.clone();
            if base == "node" || base == "nodejs" {
                let pos = args.iter().position(|a| !a.starts_with('-'));
                let Some(pos) = pos else {
                    bail!("`node` needs a script to run, e.g. herd start \"node server.js\"");
                };
                interpreter_args = args.drain(..pos).collect();
                let file = args.remove(0);
                interpreter = Some(base);
                script = cwd.join(&file).display().to_string();
            } else if let Some(found) = find_program(&script, &cwd) {
                if herd_core::node::shebang_is_node(&found) {
                    interpreter = Some("node".into());
                }
                script = found.display().to_string();
            }
        }
        let runs_node = herd_core::node::is_node(interpreter.as_deref(), Path::new(&script));
        if self.node_cluster && !runs_node && !herd_core::node::is_deno(interpreter.as_deref()) {
            bail!(
                "--node-cluster (node_cluster: true) runs a script as a Node.js cluster worker; {script} runs under neither node nor deno (give --interpreter node or deno)"
            );
        }
        let node = self.node_cluster || (!self.no_node_cluster && runs_node);
        // Deno runs nothing without permissions.
        if interpreter_args.is_empty() {
            if let Some(rt) = herd_core::runtimes::Runtime::of(interpreter.as_deref()) {
                interpreter_args = rt.default_args().iter().map(|a| a.to_string()).collect();
            }
        }
        let name = match &self.name {
            Some(n) => n.clone(),
            None => default_name(&script),
        };
        if self.primary && !node {
            bail!(
                "--primary runs a Node.js script's own cluster primary; {script} does not run under node (give --interpreter node, and leave out --no-node-cluster)"
            );
        }
        if self.primary && herd_core::node::is_deno(interpreter.as_deref()) {
            bail!(
                "--primary does not work under Deno yet (its fs calls refuse the inherited socket cluster.fork() waits on); run the script without --primary, as cluster workers (-i N)"
            );
        }
        let instances = match (&self.instances, self.primary) {
            (None, true) => 0,
            (None, false) => 1,
            (Some(s), true) if s == "0" => 0,
            (Some(s), _) => parse_instances(s)?,
        };
        let mut listen = Vec::new();
        if let Some(port) = self.port {
            listen.push(ListenSpec {
                name: "http".into(),
                addr: format!("0.0.0.0:{port}"),
            });
        }
        for (i, l) in self.listen.iter().enumerate() {
            let (name, addr) = match l.split_once('=') {
                Some((n, a)) if !n.contains(':') && !n.contains('/') => {
                    (n.to_string(), a.to_string())
                }
                _ => (
                    if i == 0 && self.port.is_none() {
                        "http".to_string()
                    } else {
                        format!("listen{}", listen.len())
                    },
                    l.clone(),
                ),
            };
            addr.parse::<herd_core::sockets::ListenAddr>()
                .map_err(|e| anyhow::anyhow!(e))?;
            listen.push(ListenSpec { name, addr });
        }
        let mut env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                !self
                    .filter_env
                    .iter()
                    .any(|p| p == "*" || (!p.is_empty() && k.starts_with(p.as_str())))
            })
            .collect();
        let mut declared_env = Vec::new();
        for kv in &self.env {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("--env takes KEY=VALUE, not {kv:?}");
            };
            if k.is_empty() {
                bail!("--env {kv:?} has an empty name");
            }
            env.insert(k.to_string(), v.to_string());
            if !declared_env.iter().any(|d| d == k) {
                declared_env.push(k.to_string());
            }
        }
        if herd_core::supervisor::parse_signal(&self.kill_signal).is_none() {
            bail!(
                "unknown signal {:?}; use a name such as SIGTERM, SIGINT or SIGQUIT",
                self.kill_signal
            );
        }
        let (readiness, liveness) = self.probes()?;
        let ms = |d: Option<Duration>, default: u64| d.map_or(default, |d| d.as_millis() as u64);
        let log = self.log_spec(&name, &cwd, &defaults.log);
        let spec = AppSpec {
            name,
            script,
            args,
            interpreter,
            interpreter_args,
            cwd: cwd.display().to_string(),
            env,
            declared_env,
            instances,
            listen,
            balance: self.balance,
            kill_signal: self.kill_signal.clone(),
            kill_timeout_ms: ms(self.kill_timeout, defaults.kill_timeout_ms),
            wait_ready: self.wait_ready,
            listen_timeout_ms: ms(self.listen_timeout, defaults.listen_timeout_ms),
            autorestart: !self.no_autorestart,
            max_restarts: self.max_restarts.unwrap_or(defaults.max_restarts),
            min_uptime_ms: ms(self.min_uptime, defaults.min_uptime_ms),
            restart_delay_ms: ms(self.restart_delay, defaults.restart_delay_ms),
            exp_backoff_restart_delay_ms: ms(
                self.exp_backoff_restart_delay,
                defaults.exp_backoff_restart_delay_ms,
            ),
            max_restart_delay_ms: ms(self.max_restart_delay, defaults.max_restart_delay_ms),
            stop_exit_codes: self.stop_exit_codes.clone(),
            max_memory_bytes: self.max_memory_restart,
            log,
            node,
            primary: self.primary,
            shutdown_with_message: self.shutdown_with_message,
            cron_restart: self.cron_restart.clone(),
            watch: match &self.watch {
                None => Vec::new(),
                Some(paths) => {
                    let paths: Vec<String> = paths
                        .iter()
                        .filter(|p| !p.is_empty())
                        .map(|p| cwd.join(p).display().to_string())
                        .collect();
                    if paths.is_empty() {
                        vec![cwd.display().to_string()]
                    } else {
                        paths
                    }
                }
            },
            watch_ignore: if self.ignore_watch.is_empty() {
                defaults.watch_ignore.clone()
            } else {
                self.ignore_watch.clone()
            },
            readiness,
            liveness,
            depends_on: self.after.clone(),
            autostart: !self.no_autostart,
            instance_var: self.instance_var.clone(),
            increment_var: self.increment_var.clone(),
            uid: self.uid.clone().filter(|u| !u.trim().is_empty()),
            gid: self.gid.clone().filter(|g| !g.trim().is_empty()),
            namespace: self
                .namespace
                .clone()
                .unwrap_or_else(|| herd_proto::DEFAULT_NAMESPACE.into()),
        };
        spec.validate().map_err(|e| anyhow::anyhow!(e))?;
        check_probes(&spec)?;
        Ok(spec)
    }

    /// The readiness and liveness probes of `--readiness` / `--liveness`, with the timing of
    /// the `--probe-*` flags (which apply to both).
    ///
    /// # Errors
    /// A `--probe-*` flag without a probe, or a count or time of 0 where that cannot work.
    pub fn probes(&self) -> Result<(Option<Probe>, Option<Probe>)> {
        if self.readiness.is_none() && self.liveness.is_none() {
            let given = [
                ("--probe-interval", self.probe_interval.is_some()),
                ("--probe-timeout", self.probe_timeout.is_some()),
                ("--probe-failures", self.probe_failures.is_some()),
                ("--probe-successes", self.probe_successes.is_some()),
                ("--probe-initial-delay", self.probe_initial_delay.is_some()),
            ];
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                bail!(
                    "{flag} sets the timing of a health probe, and no probe is given; add --readiness PROBE or --liveness PROBE (e.g. --readiness http:/healthz)"
                );
            }
            return Ok((None, None));
        }
        let defaults = Probe::default();
        let positive = |d: Option<Duration>, flag: &str, default: u64| -> Result<u64> {
            match d {
                None => Ok(default),
                Some(d) if d.as_millis() == 0 => {
                    bail!("{flag} must be at least 1 ms, e.g. {flag} 1s")
                }
                Some(d) => Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }
        };
        let count = |n: Option<u32>, flag: &str, default: u32| -> Result<u32> {
            match n {
                None => Ok(default),
                Some(0) => bail!("{flag} 0 would never decide; give at least 1"),
                Some(n) => Ok(n),
            }
        };
        let timing = Probe {
            check: defaults.check.clone(),
            interval_ms: positive(
                self.probe_interval,
                "--probe-interval",
                defaults.interval_ms,
            )?,
            timeout_ms: positive(self.probe_timeout, "--probe-timeout", defaults.timeout_ms)?,
            failure_threshold: count(
                self.probe_failures,
                "--probe-failures",
                defaults.failure_threshold,
            )?,
            success_threshold: count(
                self.probe_successes,
                "--probe-successes",
                defaults.success_threshold,
            )?,
            initial_delay_ms: self
                .probe_initial_delay
                .map_or(defaults.initial_delay_ms, |d| {
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
                }),
        };
        let with = |check: &Option<ProbeCheck>| {
            check.clone().map(|check| Probe {
                check,
                ..timing.clone()
            })
        };
        Ok((with(&self.readiness), with(&self.liveness)))
    }
}

/// Checks what the flags and app files share about an app's probes: an `http` or `tcp` probe
/// connects to the app's first TCP address, so the app needs one (a Node app may get one when
/// it calls `listen()`).
///
/// # Errors
/// An `http` or `tcp` probe of an app that listens on no TCP address.
pub fn check_probes(spec: &AppSpec) -> Result<()> {
    if spec.node {
        return Ok(());
    }
    let has_tcp = spec.listen.iter().any(|l| {
        matches!(
            l.addr.parse::<herd_core::sockets::ListenAddr>(),
            Ok(herd_core::sockets::ListenAddr::Tcp(_))
        )
    });
    for (which, probe) in [("readiness", &spec.readiness), ("liveness", &spec.liveness)] {
        let Some(probe) = probe else { continue };
        if has_tcp {
            continue;
        }
        if let ProbeCheck::Http { .. } | ProbeCheck::Tcp = probe.check {
            bail!(
                "the {which} probe {} connects to the app's first TCP address, and the app listens on none; give it one (--port 8000, or port in an app file) or probe with exec:COMMAND or channel",
                probe.check.shown()
            );
        }
    }
    Ok(())
}

/// A program name looked up on PATH, then in ./node_modules/.bin (as `npm run` would).
fn find_program(name: &str, cwd: &Path) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::iter::once(cwd.join("node_modules/.bin")))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `server` for `/srv/server.py`; characters unusable in names become `-`.
fn default_name(script: &str) -> String {
    let stem = Path::new(script)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "app".into());
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches('.').to_string();
    if !herd_proto::is_valid_name(&name) {
        name = format!("app-{name}");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1500").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("200M").unwrap(), 200 << 20);
        assert_eq!(parse_size("1gb").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn instances() {
        assert_eq!(parse_instances("3").unwrap(), 3);
        assert!(parse_instances("max").unwrap() >= 1);
        assert_eq!(
            parse_instances("0").unwrap(),
            parse_instances("max").unwrap()
        );
        assert!(parse_instances("many").is_err());
    }

    fn start_args(flags: &[&str]) -> StartArgs {
        let argv = ["herd", "start", "/bin/sh"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().cmd {
            Cmd::Start(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn probe_flags_set_both_probes() {
        let spec = start_args(&[
            "--port",
            "8000",
            "--readiness",
            "http:/healthz",
            "--liveness",
            "channel",
            "--probe-interval",
            "2s",
            "--probe-timeout",
            "500",
            "--probe-failures",
            "5",
            "--probe-successes",
            "2",
            "--probe-initial-delay",
            "10s",
        ])
        .to_spec()
        .unwrap();
        let timing = Probe {
            check: ProbeCheck::Tcp,
            interval_ms: 2_000,
            timeout_ms: 500,
            failure_threshold: 5,
            success_threshold: 2,
            initial_delay_ms: 10_000,
        };
        assert_eq!(
            spec.readiness,
            Some(Probe {
                check: ProbeCheck::parse("http:/healthz").unwrap(),
                ..timing.clone()
            })
        );
        assert_eq!(
            spec.liveness,
            Some(Probe {
                check: ProbeCheck::Channel,
                ..timing
            })
        );
    }

    #[test]
    fn a_probe_alone_has_the_default_timing() {
        let spec = start_args(&["-p", "8000", "--readiness", "tcp"])
            .to_spec()
            .unwrap();
        assert_eq!(spec.readiness, Some(Probe::default()));
        assert_eq!(spec.liveness, None);
        let spec = start_args(&["--liveness", "exec:test -f /tmp/ok"])
            .to_spec()
            .unwrap();
        assert_eq!(spec.readiness, None);
        assert_eq!(
            spec.liveness.map(|p| p.check),
            Some(ProbeCheck::Exec {
                command: "test -f /tmp/ok".into()
            })
        );
        assert_eq!(start_args(&[]).to_spec().unwrap().readiness, None);
    }

    #[test]
    fn a_probe_herd_does_not_know_is_refused_naming_the_flag() {
        let e = Cli::try_parse_from(["herd", "start", "/bin/sh", "--readiness", "htp:/x"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--readiness"), "{e}");
        assert!(
            e.contains("use http:/PATH, tcp, exec:COMMAND or channel"),
            "{e}"
        );
        let e = Cli::try_parse_from(["herd", "run", "/bin/sh", "--liveness", "http:healthz"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--liveness"), "{e}");
        assert!(e.contains("http:/healthz"), "{e}");
    }

    #[test]
    fn probe_timing_without_a_probe_is_refused() {
        for flags in [
            ["--probe-interval", "2s"],
            ["--probe-timeout", "2s"],
            ["--probe-failures", "2"],
            ["--probe-successes", "2"],
            ["--probe-initial-delay", "2s"],
        ] {
            let e = start_args(&flags).to_spec().unwrap_err().to_string();
            assert!(e.starts_with(flags[0]), "{e}");
            assert!(
                e.contains("add --readiness PROBE or --liveness PROBE"),
                "{e}"
            );
        }
    }

    #[test]
    fn probe_counts_and_times_of_zero_are_refused() {
        for (flag, value, says) in [
            ("--probe-failures", "0", "at least 1"),
            ("--probe-successes", "0", "at least 1"),
            ("--probe-interval", "0", "at least 1 ms"),
            ("--probe-timeout", "0s", "at least 1 ms"),
        ] {
            let e = start_args(&["-p", "8000", "--readiness", "tcp", flag, value])
                .to_spec()
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag) && e.contains(says), "{e}");
        }
        let spec = start_args(&["-p", "8000", "--readiness", "tcp"])
            .to_spec()
            .unwrap();
        assert_eq!(spec.readiness.map(|p| p.initial_delay_ms), Some(0));
    }

    #[test]
    fn http_and_tcp_probes_need_a_tcp_address() {
        for probe in ["tcp", "http:/healthz"] {
            let e = start_args(&["--readiness", probe])
                .to_spec()
                .unwrap_err()
                .to_string();
            assert!(e.contains("listens on none"), "{e}");
            assert!(e.contains("--port"), "{e}");
            let e = start_args(&["--listen", "unix:/tmp/herd-probe.sock", "--liveness", probe])
                .to_spec()
                .unwrap_err()
                .to_string();
            assert!(e.contains("liveness probe"), "{e}");
            assert!(
                start_args(&["--listen", "127.0.0.1:0", "--readiness", probe])
                    .to_spec()
                    .is_ok()
            );
        }
        assert!(start_args(&["--readiness", "channel"]).to_spec().is_ok());
    }

    #[test]
    fn restart_delays_have_pm2s_meaning() {
        let spec = start_args(&[]).to_spec().unwrap();
        assert_eq!(
            (
                spec.restart_delay_ms,
                spec.exp_backoff_restart_delay_ms,
                spec.max_restart_delay_ms
            ),
            (0, 100, 15_000)
        );
        let spec = start_args(&[
            "--restart-delay",
            "2s",
            "--exp-backoff-restart-delay",
            "250",
            "--max-restart-delay",
            "1m",
        ])
        .to_spec()
        .unwrap();
        assert_eq!(
            (
                spec.restart_delay_ms,
                spec.exp_backoff_restart_delay_ms,
                spec.max_restart_delay_ms
            ),
            (2_000, 250, 60_000)
        );
    }

    #[test]
    fn cron_restart_is_checked_and_kept() {
        let spec = start_args(&["--cron-restart", "0 3 * * *"])
            .to_spec()
            .unwrap();
        assert_eq!(spec.cron_restart.as_deref(), Some("0 3 * * *"));
        assert_eq!(start_args(&[]).to_spec().unwrap().cron_restart, None);
        let e = Cli::try_parse_from(["herd", "start", "/bin/sh", "--cron-restart", "0 25 * * *"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cron-restart"), "{e}");
        assert!(e.contains("is not a cron expression"), "{e}");
        assert!(e.contains("e.g. \"0 3 * * *\""), "{e}");
    }

    #[test]
    fn names_from_scripts() {
        assert_eq!(default_name("/srv/server.py"), "server");
        assert_eq!(default_name("/bin/my app"), "my-app");
        assert_eq!(default_name("/x/123"), "app-123");
        assert_eq!(interpreter_for(Path::new("a.mjs")), Some("node"));
        assert_eq!(interpreter_for(Path::new("a.ts")), Some("bun"));
        assert_eq!(interpreter_for(Path::new("a.tsx")), Some("bun"));
    }
}
