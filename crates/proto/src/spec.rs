//! The description of an app: what to run, how many instances, where they listen and how
//! they are supervised. The CLI builds one from flags; app files (later) deserialize into it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How new connections are spread over an app's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// One `SO_REUSEPORT` socket per instance slot; the kernel spreads connections by a hash
    /// of the connection, steered away from slots that are not serving.
    #[default]
    Hash,
    /// Like `hash`, but keyed on the client's address only, so one client always reaches the
    /// same instance while it lives.
    Sticky,
    /// One socket shared by every instance; whichever instance accepts first gets the
    /// connection.
    Shared,
}

impl Balance {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Hash => "hash",
            Balance::Sticky => "sticky",
            Balance::Shared => "shared",
        }
    }
}

/// One listening address of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSpec {
    /// The name given to instances in `LISTEN_FDNAMES`.
    pub name: String,
    /// `HOST:PORT` (`127.0.0.1:8000`, `[::1]:8000`, `0.0.0.0:8000`) or `unix:/path`.
    pub addr: String,
}

/// Where an app's output goes and how it is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSpec {
    /// Prefix every line with an RFC 3339 UTC timestamp.
    pub timestamps: bool,
    /// Rotate a log file once it would grow past this many bytes.
    pub max_size: u64,
    /// How many rotated files to keep besides the live one.
    pub keep: u32,
    /// Where stdout goes (PM2's `out_file`): an absolute path, `/dev/null` (nothing is
    /// written), or a relative one, taken from `HERD_HOME/logs`. None:
    /// `HERD_HOME/logs/<app>-<i>.out`. Unless `merge` is set, a path ending in `.log` gets the
    /// instance number before it, as PM2 does (`out.log` → `out-2.log`).
    pub out_file: Option<String>,
    /// Where stderr goes (PM2's `error_file`), as `out_file`. None:
    /// `HERD_HOME/logs/<app>-<i>.err`.
    pub error_file: Option<String>,
    /// A file that gets both streams too (PM2's `log_file`), as `out_file`. None: no such file.
    pub log_file: Option<String>,
    /// One file for all instances (PM2's `merge_logs`): no instance number in the paths.
    pub merge: bool,
    /// Prefix every line with the time in this dayjs/moment format (PM2's `log_date_format`,
    /// `YYYY-MM-DD HH:mm:ss Z`), local time, followed by `: `.
    pub date_format: Option<String>,
    /// Write every line as a JSON object, as PM2's `log_type: json` does.
    pub json: bool,
    /// Write no log file at all (PM2's `disable_logs`); followers still see the lines.
    pub disabled: bool,
}

impl LogSpec {
    /// The path that means "write nothing".
    pub const NULL: &'static str = "/dev/null";

    /// Whether every instance writes its own files in herd's default place and plain format,
    /// as herd did before the PM2 options: each pipe's bytes go to its file as they come.
    pub fn is_plain(&self) -> bool {
        self.out_file.is_none()
            && self.error_file.is_none()
            && self.log_file.is_none()
            && !self.merge
            && self.date_format.is_none()
            && !self.json
            && !self.disabled
    }
}

impl Default for LogSpec {
    fn default() -> Self {
        Self {
            timestamps: false,
            max_size: 10 * 1024 * 1024,
            keep: 3,
            out_file: None,
            error_file: None,
            log_file: None,
            merge: false,
            date_format: None,
            json: false,
            disabled: false,
        }
    }
}

/// Everything the daemon needs to run an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSpec {
    /// Unique name of the app.
    pub name: String,
    /// Absolute path of the program or script to run.
    pub script: String,
    /// Arguments given to the program.
    pub args: Vec<String>,
    /// Interpreter to run the script with (`python3`, `node`…), or none to execute it.
    pub interpreter: Option<String>,
    /// Arguments for the interpreter, before the script.
    pub interpreter_args: Vec<String>,
    /// Working directory of every instance.
    pub cwd: String,
    /// Environment of every instance (the full environment, captured at start).
    pub env: BTreeMap<String, String>,
    /// Keys of `env` the app itself sets (app file `env`, `--env K=V`): `--update-env`
    /// replaces the captured environment but keeps these.
    pub declared_env: Vec<String>,
    /// Number of instance slots.
    pub instances: u32,
    /// Listening addresses held by the daemon and passed to instances from fd 3.
    pub listen: Vec<ListenSpec>,
    /// How connections are spread over instances.
    pub balance: Balance,
    /// Signal sent to an instance's process group to stop it (`SIGTERM`, `SIGINT`…).
    pub kill_signal: String,
    /// Time an instance gets to exit after `kill_signal` before SIGKILL, in ms.
    pub kill_timeout_ms: u64,
    /// Wait for the instance to say it is ready before routing to it.
    pub wait_ready: bool,
    /// How long a `wait_ready` instance has to say it is ready, in ms.
    pub listen_timeout_ms: u64,
    /// Restart instances that exit on their own.
    pub autorestart: bool,
    /// Consecutive restarts of runs shorter than `min_uptime_ms` before a slot is `errored`.
    pub max_restarts: u32,
    /// A run shorter than this (ms) counts as unstable.
    pub min_uptime_ms: u64,
    /// Fixed delay before every restart, in ms (PM2's `restart_delay`): the delay before a
    /// restart is this plus the backoff's current step (docs/configuration.md, "Restart
    /// policy").
    pub restart_delay_ms: u64,
    /// Base of the exponential restart backoff, in ms (PM2's `exp_backoff_restart_delay`): the
    /// first restart after a stable run has no backoff, the next ones this, 2×, 4×…
    pub exp_backoff_restart_delay_ms: u64,
    /// Cap of the backoff's step, in ms (the fixed delay comes on top).
    pub max_restart_delay_ms: u64,
    /// Exit codes that mean "stopped on purpose": no restart.
    pub stop_exit_codes: Vec<i32>,
    /// Restart an instance whose resident memory passes this many bytes.
    pub max_memory_bytes: Option<u64>,
    /// Log capture options.
    pub log: LogSpec,
    /// Run as a Node.js cluster worker: sockets are handed over through Node's cluster
    /// protocol instead of `LISTEN_FDS`. Set by the CLI when the script runs under `node`.
    pub node: bool,
    /// Run the script once as its own cluster primary too (`--primary`): the script's
    /// `cluster.isPrimary` branch runs, and its `cluster.fork()` starts herd instances of the
    /// app (docs/node-primary.md). `instances` are then the workers herd starts before the
    /// primary asks (0 by default); its forks take those first.
    pub primary: bool,
    /// Stop by sending the message `"shutdown"` on the instance's channel instead of a signal
    /// (PM2's `shutdown_with_message`); SIGKILL still follows after `kill_timeout_ms`.
    pub shutdown_with_message: bool,
    /// Reload the app (rolling, as `herd reload`) at each time this cron expression matches,
    /// in the machine's local time, while it runs (PM2's `cron_restart`): `"0 3 * * *"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cron_restart: Option<String>,
    /// Reload the app when a file under these paths changes (absolute paths; empty: off).
    pub watch: Vec<String>,
    /// Path components whose changes do not count (`node_modules`, `.git`…).
    pub watch_ignore: Vec<String>,
    /// Whether an instance should get new connections (docs/health.md): while it fails, the
    /// reuseport selector leaves it out (unless every instance fails); a reload waits for the
    /// next process to pass it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    /// Whether an instance is alive: once it fails `failure_threshold` times in a row, the
    /// instance is restarted (counted by the crash-loop guard).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
    /// Apps (by name) that must be ready before this one starts (`depends_on`, `--after`):
    /// every instance online, and passing its readiness probe if it has one. Stopped after
    /// them by `herd stop all` and `herd kill`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// PM2's `autostart`: `false` registers the app stopped (`herd start NAME` starts it).
    pub autostart: bool,
    /// PM2's `instance_var`: one more variable holding the instance number (beside
    /// `HERD_INSTANCE` and `NODE_APP_INSTANCE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_var: Option<String>,
    /// PM2's `increment_var`: a numeric variable of the app's environment that each instance
    /// gets increased by its number (`PORT=3000` → 3000, 3001, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub increment_var: Option<String>,
    /// Run the instances as this user, a name or a number (PM2's `uid`, alias `user`); only
    /// a daemon run as root can. Its primary group unless `gid` says otherwise, its
    /// supplementary groups, and its `HOME`, `USER`, `LOGNAME` and `SHELL`
    /// (docs/configuration.md#running-as-another-user).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Run the instances with this primary group, a name or a number (PM2's `gid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// PM2's `namespace`: a group of apps that commands take as a target (`herd restart
    /// api` acts on every app of the namespace `api` when no app is named so).
    #[serde(skip_serializing_if = "is_default_namespace")]
    pub namespace: String,
}

/// A health probe of an app's instances (Kubernetes' probes, docs/health.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Probe {
    /// What is checked.
    pub check: ProbeCheck,
    /// Time between two probes of an instance (Kubernetes' `periodSeconds`).
    pub interval_ms: u64,
    /// A probe that has not succeeded within this fails (`timeoutSeconds`).
    pub timeout_ms: u64,
    /// Failures in a row that make an instance not ready / not alive (`failureThreshold`).
    pub failure_threshold: u32,
    /// Successes in a row that make it ready again (`successThreshold`).
    pub success_threshold: u32,
    /// Time after the process started before its first probe (`initialDelaySeconds`).
    pub initial_delay_ms: u64,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            check: ProbeCheck::Tcp,
            interval_ms: 1_000,
            timeout_ms: 1_000,
            failure_threshold: 3,
            success_threshold: 1,
            initial_delay_ms: 0,
        }
    }
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeCheck {
    /// `GET path` on the instance's own socket (the app's first TCP address, steered to this
    /// instance): a status in `status_min..=status_max` passes.
    Http {
        /// The path asked for, starting with `/`.
        path: String,
        /// Lowest status that passes (200).
        #[serde(default = "http_ok_min")]
        status_min: u16,
        /// Highest status that passes (399).
        #[serde(default = "http_ok_max")]
        status_max: u16,
    },
    /// A TCP connection to the instance's own socket is accepted.
    Tcp,
    /// A command run with `sh -c`, in the app's directory, with the instance's environment
    /// (`HERD_INSTANCE`, `PORT`…): exit status 0 passes.
    Exec {
        /// The command line.
        command: String,
    },
    /// The instance's own heartbeat on its channel (`{"herd":"health"}`, or sd_notify's
    /// `WATCHDOG=1`): it passes while one came within the last `interval_ms`; a heartbeat
    /// `{"herd":"health","ok":false}` (or `WATCHDOG=trigger`) fails at once.
    Channel,
}

fn http_ok_min() -> u16 {
    200
}

fn http_ok_max() -> u16 {
    399
}

impl ProbeCheck {
    /// How it is written on the command line: `http:/path`, `tcp`, `exec:COMMAND`, `channel`.
    pub fn shown(&self) -> String {
        match self {
            ProbeCheck::Http { path, .. } => format!("http:{path}"),
            ProbeCheck::Tcp => "tcp".into(),
            ProbeCheck::Exec { command } => format!("exec:{command}"),
            ProbeCheck::Channel => "channel".into(),
        }
    }

    /// Reads `http:/path`, `tcp`, `exec:COMMAND` or `channel` (also `watchdog`).
    ///
    /// # Errors
    /// When it is none of these, with what to write instead.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("http:") {
            let path = if path.is_empty() { "/" } else { path };
            if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "probe {s:?}: the HTTP path must start with / and have no spaces, e.g. http:/healthz"
                ));
            }
            return Ok(ProbeCheck::Http {
                path: path.to_string(),
                status_min: http_ok_min(),
                status_max: http_ok_max(),
            });
        }
        if let Some(command) = s.strip_prefix("exec:") {
            if command.trim().is_empty() {
                return Err(format!(
                    "probe {s:?}: give the command after exec:, e.g. exec:./check.sh"
                ));
            }
            return Ok(ProbeCheck::Exec {
                command: command.to_string(),
            });
        }
        match s {
            "tcp" => Ok(ProbeCheck::Tcp),
            "channel" | "watchdog" => Ok(ProbeCheck::Channel),
            _ => Err(format!(
                "probe {s:?} is not one herd knows: use http:/PATH, tcp, exec:COMMAND or channel"
            )),
        }
    }
}

impl Default for AppSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            script: String::new(),
            args: Vec::new(),
            interpreter: None,
            interpreter_args: Vec::new(),
            cwd: String::from("/"),
            env: BTreeMap::new(),
            declared_env: Vec::new(),
            instances: 1,
            listen: Vec::new(),
            balance: Balance::Hash,
            kill_signal: String::from("SIGTERM"),
            kill_timeout_ms: 5_000,
            wait_ready: false,
            listen_timeout_ms: 3_000,
            autorestart: true,
            max_restarts: 15,
            min_uptime_ms: 1_000,
            restart_delay_ms: 0,
            exp_backoff_restart_delay_ms: 100,
            max_restart_delay_ms: 15_000,
            stop_exit_codes: Vec::new(),
            max_memory_bytes: None,
            log: LogSpec::default(),
            node: false,
            primary: false,
            shutdown_with_message: false,
            cron_restart: None,
            watch: Vec::new(),
            watch_ignore: vec!["node_modules".into(), ".git".into()],
            readiness: None,
            liveness: None,
            depends_on: Vec::new(),
            autostart: true,
            instance_var: None,
            increment_var: None,
            uid: None,
            gid: None,
            namespace: DEFAULT_NAMESPACE.into(),
        }
    }
}

/// The namespace of an app that names none (PM2's too).
pub const DEFAULT_NAMESPACE: &str = "default";

fn is_default_namespace(ns: &str) -> bool {
    ns == DEFAULT_NAMESPACE
}

/// A spec that cannot be run as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The name is empty, numeric, `all`, or has characters unsafe in file names.
    #[error("app name {0:?} is not usable: use letters, digits, '-', '_' or '.', not only digits, and not \"all\"")]
    BadName(String),
    /// Zero instances were asked for.
    #[error("instances must be at least 1 (use -i max for one per CPU)")]
    NoInstances,
    /// More instances than herd supports per app.
    #[error("{0} instances is more than herd runs per app (at most 1024)")]
    TooManyInstances(u32),
    /// The script is empty.
    #[error("no script or command to run was given")]
    NoScript,
    /// The namespace is not usable as a target.
    #[error("namespace {0:?} is not usable: use letters, digits, '-', '_' or '.', not only digits, and not \"all\"")]
    BadNamespace(String),
}

impl AppSpec {
    /// Highest number of instances per app.
    pub const MAX_INSTANCES: u32 = 1024;

    /// The instance number that stands for an app's primary process (`--primary`) in log
    /// lines, log file names (`<app>-primary.out`) and the bus (`app:primary`).
    pub const PRIMARY: u32 = u32::MAX;

    /// Checks what can be checked without touching the system.
    ///
    /// # Errors
    /// The first problem found, worded for the user.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_valid_name(&self.name) {
            return Err(SpecError::BadName(self.name.clone()));
        }
        if self.script.is_empty() {
            return Err(SpecError::NoScript);
        }
        if !is_valid_name(&self.namespace) {
            return Err(SpecError::BadNamespace(self.namespace.clone()));
        }
        if self.instances == 0 && !self.primary {
            return Err(SpecError::NoInstances);
        }
        if self.instances > Self::MAX_INSTANCES {
            return Err(SpecError::TooManyInstances(self.instances));
        }
        Ok(())
    }
}

impl AppSpec {
    /// Reads a spec that a herd saved (`dump.json`, a `herd update` handover), this one or an
    /// older one. A spec saved before `exp_backoff_restart_delay_ms` existed had
    /// `restart_delay_ms` as the backoff's base and no fixed delay: it keeps that meaning.
    ///
    /// # Errors
    /// When `saved` is not a spec.
    pub fn from_saved(mut saved: serde_json::Value) -> Result<Self, serde_json::Error> {
        if let Some(fields) = saved.as_object_mut() {
            if !fields.contains_key("exp_backoff_restart_delay_ms") {
                if let Some(base) = fields.remove("restart_delay_ms") {
                    fields.insert("exp_backoff_restart_delay_ms".into(), base);
                }
            }
        }
        serde_json::from_value(saved)
    }

    /// [`AppSpec::from_saved`] for serde's `deserialize_with`.
    ///
    /// # Errors
    /// When the value is not a spec.
    pub fn deserialize_saved<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let saved = serde_json::Value::deserialize(d)?;
        Self::from_saved(saved).map_err(serde::de::Error::custom)
    }

    /// The environment with `fresh` as the captured part: the app's declared keys keep their
    /// values (PM2's `--update-env`).
    pub fn updated_env(&self, fresh: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = fresh.clone();
        for k in &self.declared_env {
            match self.env.get(k) {
                Some(v) => env.insert(k.clone(), v.clone()),
                None => env.remove(k),
            };
        }
        env
    }
}

/// Whether an environment variable's value should be hidden when shown: its name looks like
/// it holds a credential.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    [
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "COOKIE",
        "SESSION",
        "PRIVATE",
        "SIGNATURE",
        "SALT",
        "DSN",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// A value as shown to people: masked when its key looks secret, and with the password of a
/// URL (`scheme://user:password@host`) masked whatever the key.
pub fn masked_value(key: &str, value: &str) -> String {
    if is_secret_key(key) && !value.is_empty() {
        return "********".into();
    }
    url_password_masked(value).unwrap_or_else(|| value.to_string())
}

/// `scheme://user:********@host…` for a URL with a password; `None` for anything else.
fn url_password_masked(value: &str) -> Option<String> {
    let (scheme, rest) = value.split_once("://")?;
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest.get(..auth_end)?.rfind('@')?;
    let (userinfo, from_at) = rest.split_at_checked(at)?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:********{from_at}"))
}

/// Names become file names (`logs/<name>-<i>.out`) and CLI targets, so they are kept tame.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "all"
        && !name.bytes().all(|b| b.is_ascii_digit())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether two listen lists name the same addresses, in order: a port 0 asked for (`wanted`)
/// matches the port an app got for it (`running`). `herd apply` keeps an app whose addresses
/// are the same, and does not change them.
pub fn same_addresses(running: &[ListenSpec], wanted: &[ListenSpec]) -> bool {
    running.len() == wanted.len()
        && running.iter().zip(wanted).all(|(r, w)| {
            r.addr == w.addr
                || matches!(
                    (r.addr.rsplit_once(':'), w.addr.rsplit_once(':')),
                    (Some((rh, _)), Some((wh, "0"))) if rh == wh
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_lists_compare_with_port_zero_as_bound() {
        let l = |addr: &str| ListenSpec {
            addr: addr.into(),
            name: "http".into(),
        };
        assert!(same_addresses(
            &[l("127.0.0.1:8000")],
            &[l("127.0.0.1:8000")]
        ));
        assert!(same_addresses(&[l("127.0.0.1:41234")], &[l("127.0.0.1:0")]));
        assert!(!same_addresses(
            &[l("127.0.0.1:8000")],
            &[l("127.0.0.1:8001")]
        ));
        assert!(!same_addresses(&[l("127.0.0.1:8000")], &[]));
    }

    #[test]
    fn names() {
        assert!(is_valid_name("api"));
        assert!(is_valid_name("api-2.v1_x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("12"));
        assert!(!is_valid_name("all"));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name(".."));
    }

    #[test]
    fn spec_round_trips_and_fills_defaults() {
        let spec: AppSpec = serde_json::from_str(r#"{"name":"api","script":"/bin/true"}"#).unwrap();
        assert_eq!(spec.instances, 1);
        assert_eq!(spec.kill_signal, "SIGTERM");
        assert_eq!(spec.validate(), Ok(()));
        let again: AppSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    /// A dump saved before `exp_backoff_restart_delay_ms` existed keeps its backoff.
    #[test]
    fn a_spec_saved_before_the_backoff_base_keeps_its_backoff() {
        let old =
            serde_json::json!({"name": "api", "script": "/bin/true", "restart_delay_ms": 250});
        let spec = AppSpec::from_saved(old).unwrap();
        assert_eq!(spec.restart_delay_ms, 0);
        assert_eq!(spec.exp_backoff_restart_delay_ms, 250);
        // Without either: today's defaults, which are the old behaviour.
        let spec = AppSpec::from_saved(serde_json::json!({"name": "api"})).unwrap();
        assert_eq!(
            (spec.restart_delay_ms, spec.exp_backoff_restart_delay_ms),
            (0, 100)
        );
        // A spec saved by this herd reads as it was written.
        let now = AppSpec {
            name: "api".into(),
            restart_delay_ms: 2_000,
            exp_backoff_restart_delay_ms: 300,
            cron_restart: Some("0 3 * * *".into()),
            ..AppSpec::default()
        };
        let saved = serde_json::to_value(&now).unwrap();
        assert_eq!(AppSpec::from_saved(saved).unwrap(), now);
        // Through serde, as dump.json and the handover read it.
        #[derive(serde::Deserialize)]
        struct Saved {
            #[serde(deserialize_with = "AppSpec::deserialize_saved")]
            spec: AppSpec,
        }
        let s: Saved =
            serde_json::from_str(r#"{"spec": {"name": "a", "restart_delay_ms": 7}}"#).unwrap();
        assert_eq!(s.spec.exp_backoff_restart_delay_ms, 7);
    }

    #[test]
    fn update_env_keeps_declared_keys() {
        let spec = AppSpec {
            env: [("A", "old"), ("PORT", "1"), ("GONE", "x")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            declared_env: vec!["PORT".into()],
            ..AppSpec::default()
        };
        let fresh = [("A", "new"), ("PORT", "2"), ("B", "b")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = spec.updated_env(&fresh);
        assert_eq!(env["A"], "new");
        assert_eq!(env["PORT"], "1");
        assert_eq!(env["B"], "b");
        assert!(!env.contains_key("GONE"));
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(masked_value("API_KEY", "abc"), "********");
        assert_eq!(masked_value("db_password", "abc"), "********");
        assert_eq!(masked_value("GITHUB_TOKEN", "abc"), "********");
        assert_eq!(masked_value("HOME", "/root"), "/root");
        assert_eq!(
            masked_value("DATABASE_URL", "postgres://app:hunter2@db:5432/x?a=b@c"),
            "postgres://app:********@db:5432/x?a=b@c"
        );
        assert_eq!(
            masked_value("REDIS", "redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            masked_value("URL", "h\u{e9}://\u{e9}:\u{e9}@\u{e9}/\u{e9}@"),
            "h\u{e9}://\u{e9}:********@\u{e9}/\u{e9}@"
        );
        assert_eq!(masked_value("URL", "x://a@b:c"), "x://a@b:c");
    }

    #[test]
    fn zero_instances_is_refused() {
        let spec = AppSpec {
            name: "a".into(),
            script: "/bin/true".into(),
            instances: 0,
            ..AppSpec::default()
        };
        assert_eq!(spec.validate(), Err(SpecError::NoInstances));
    }
}
