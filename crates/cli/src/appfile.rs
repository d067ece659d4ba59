//! App files: `herd.toml` / `.json` / `.yaml` with an `apps` list, and PM2's
//! `ecosystem.config.js` / `.cjs` / `.json` read as they are (JS files are evaluated by the
//! local `node` in a subprocess, never parsed by hand).
//!
//! Each app entry becomes the same [`StartArgs`] the command line builds, so a file can say
//! anything the flags can, with the same checks and defaults. Errors name the file, the app and
//! the field (with line and column where the format gives them); unknown fields are errors in
//! herd's files and warnings in PM2's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use herd_proto::{AppSpec, Balance, Probe, ProbeCheck};
use serde::Deserialize;
use serde_json::Value;

use crate::args::{check_probes, parse_cron, parse_duration, parse_size, StartArgs};

/// Whether `path` names an app file rather than a program.
pub fn is_app_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(ext, "toml" | "yaml" | "yml")
        || (ext == "json" && !name.ends_with("package.json"))
        // PM2 reads any `*.config.js` as an app file (ecosystem.config.js, pm2.config.js…).
        || name.contains(".config.") && matches!(ext, "js" | "cjs" | "mjs")
}

#[derive(Deserialize)]
struct File {
    apps: Vec<Entry>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Words {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Words {
    fn into_vec(self) -> Vec<String> {
        match self {
            Words::None => Vec::new(),
            Words::One(s) => s.split_whitespace().map(str::to_string).collect(),
            Words::Many(v) => v,
        }
    }
}

/// One app as written in a file. Field names follow PM2's where PM2 has one.
#[derive(Deserialize, Default)]
struct Entry {
    name: Option<String>,
    /// `exec` is PM2's alias.
    #[serde(alias = "exec")]
    script: Option<String>,
    #[serde(default)]
    args: Words,
    /// `exec_interpreter` is PM2's alias.
    #[serde(alias = "exec_interpreter")]
    interpreter: Option<String>,
    /// `interpreterArgs` is PM2's alias.
    #[serde(default, alias = "interpreterArgs")]
    interpreter_args: Words,
    /// PM2's older name of `interpreter_args`; a file may carry both (PM2's own example
    /// does): their words are joined.
    #[serde(default)]
    node_args: Words,
    cwd: Option<String>,
    instances: Option<Value>,
    port: Option<u16>,
    #[serde(default)]
    listen: Vec<String>,
    balance: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, Value>,
    wait_ready: Option<bool>,
    /// Run the script's own cluster primary too (`--primary`).
    primary: Option<bool>,
    listen_timeout: Option<Value>,
    kill_timeout: Option<Value>,
    kill_signal: Option<String>,
    max_restarts: Option<u32>,
    min_uptime: Option<Value>,
    /// PM2's: a fixed delay before every restart.
    restart_delay: Option<Value>,
    /// PM2's: the base of the backoff after quick crashes.
    exp_backoff_restart_delay: Option<Value>,
    /// The backoff's cap.
    max_restart_delay: Option<Value>,
    /// PM2's: reload the app at each time this cron expression matches (`cron` is its alias).
    #[serde(alias = "cron")]
    cron_restart: Option<String>,
    autorestart: Option<bool>,
    stop_exit_codes: Option<Value>,
    max_memory_restart: Option<Value>,
    time: Option<bool>,
    log_max_size: Option<Value>,
    log_keep: Option<u32>,
    /// PM2's: where stdout goes.
    #[serde(alias = "out", alias = "output", alias = "out_log")]
    out_file: Option<String>,
    /// PM2's: where stderr goes.
    #[serde(alias = "error", alias = "err", alias = "err_file", alias = "err_log")]
    error_file: Option<String>,
    /// PM2's: a file with both streams; `true` for `<app>.log` in herd's log folder.
    #[serde(alias = "log")]
    log_file: Option<Value>,
    /// PM2's: one file for all instances.
    merge_logs: Option<bool>,
    /// PM2's other name of `merge_logs`; a file may carry both (either true merges).
    combine_logs: Option<bool>,
    /// PM2's: a dayjs format for a time before each line.
    log_date_format: Option<String>,
    /// PM2's: `json` writes each line as a JSON object.
    log_type: Option<String>,
    /// PM2's: no log file at all.
    disable_logs: Option<bool>,
    shutdown_with_message: Option<bool>,
    node_cluster: Option<bool>,
    /// `true` (the app's folder) or a list of paths.
    watch: Option<Value>,
    #[serde(default)]
    ignore_watch: Words,
    /// A readiness probe: `"http:/healthz"`, or a table in Kubernetes' words (`httpGet`,
    /// `periodSeconds`…) or herd's (`check`, `interval`…).
    readiness: Option<Value>,
    /// A liveness probe, written as `readiness`.
    liveness: Option<Value>,
    /// Apps that must be ready before this one starts.
    #[serde(default, alias = "after")]
    depends_on: Words,
    /// PM2's: `false` registers the app stopped.
    autostart: Option<bool>,
    /// PM2's: one more variable holding the instance number.
    instance_var: Option<String>,
    /// PM2's: a numeric variable increased by the instance number.
    increment_var: Option<String>,
    /// PM2's: the user the instances run as, a name or a number (`user` is PM2's alias).
    #[serde(alias = "user")]
    uid: Option<Value>,
    /// PM2's: their group, a name or a number.
    gid: Option<Value>,
    /// PM2's: the namespace commands can name to act on each of its apps.
    namespace: Option<String>,
    /// PM2's: `true` (leave the shell's variables out), or prefixes of those to leave out.
    filter_env: Option<Value>,
    /// Everything else: `env_<name>` blocks, PM2 fields herd does not have, typos.
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// PM2 fields that need no counterpart in herd (said once, not warned about).
const PM2_HARMLESS: &[&str] = &["exec_mode", "vizion", "pmx", "automation"];

/// Reads an app file into specs. `env_name` selects `env_<name>` blocks (PM2's `--env`);
/// `overrides` are `--env K=V` from the command line. Warnings go to stderr.
///
/// # Errors
/// A message naming the file, the app and the field.
pub fn load(path: &Path, env_name: Option<&str>, overrides: &[String]) -> Result<Vec<AppSpec>> {
    let path = std::env::current_dir()?.join(path);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "toml" | "yaml" | "yml" | "json") {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return load_text(&path, &text, env_name, overrides);
    }
    let file: File = serde_json::from_value(evaluate_js(&path)?)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    specs(file, &path, env_name, overrides)
}

/// [`load`] for a TOML, JSON or YAML file whose text is already read: `path` is not read, only
/// its extension (the format), its name (`ecosystem…` for PM2's rules) and its folder (the
/// base of relative paths) count.
///
/// # Errors
/// As [`load`]; an extension other than `toml`, `json`, `yaml` or `yml` is an error too.
pub fn load_text(
    path: &Path,
    text: &str,
    env_name: Option<&str>,
    overrides: &[String],
) -> Result<Vec<AppSpec>> {
    let shown = path.display().to_string();
    let file: File = match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "toml" => {
            toml::from_str(text).map_err(|e| anyhow!("{shown}: {}", one_line(&e.to_string())))?
        }
        "yaml" | "yml" => serde_saphyr::from_str(text)
            .map_err(|e| anyhow!("{shown}: {}", one_line(&e.to_string())))?,
        "json" => serde_json::from_str(text).map_err(|e| anyhow!("{shown}: {e}"))?,
        other => bail!("{shown}: .{other} files are not read as text; use .toml, .json or .yaml"),
    };
    specs(file, path, env_name, overrides)
}

/// The specs of a file's apps, with the file's rules (PM2's when its name starts with
/// `ecosystem`).
fn specs(
    file: File,
    path: &Path,
    env_name: Option<&str>,
    overrides: &[String],
) -> Result<Vec<AppSpec>> {
    let shown = path.display().to_string();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    // PM2's own files: `ecosystem…`, and the JS `*.config.js` files only PM2 reads.
    let pm2 = name.starts_with("ecosystem") || (name.contains(".config.") && name.ends_with("js"));
    if file.apps.is_empty() {
        bail!("{shown} has no apps; list them under `apps`");
    }
    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut specs: Vec<AppSpec> = Vec::new();
    for (i, entry) in file.apps.into_iter().enumerate() {
        let label = entry.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let spec = entry
            .into_spec(&dir, env_name, overrides, pm2, &shown, &label)
            .map_err(|e| anyhow!("{shown}, app {label}: {e}"))?;
        if specs.iter().any(|s| s.name == spec.name) {
            bail!(
                "{shown}: the app name {:?} is used twice; names must be unique",
                spec.name
            );
        }
        specs.push(spec);
    }
    in_start_order(specs, &shown)
}

/// The apps in an order that starts each after the apps of the file it depends on (else in
/// the file's order); a cycle among them is an error naming them. Names not in the file are
/// left to the daemon (an app already running, or an error that names it).
fn in_start_order(mut specs: Vec<AppSpec>, shown: &str) -> Result<Vec<AppSpec>> {
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let mut out: Vec<AppSpec> = Vec::with_capacity(specs.len());
    while !specs.is_empty() {
        let started = |n: &String| out.iter().any(|s| s.name == *n) || !names.contains(n);
        match specs.iter().position(|s| s.depends_on.iter().all(started)) {
            Some(k) => out.push(specs.remove(k)),
            None => {
                // Every app left waits for another one left: follow the links to a cycle.
                let mut path: Vec<String> = Vec::new();
                let mut at = specs.first().map(|s| s.name.clone()).unwrap_or_default();
                while !path.contains(&at) {
                    path.push(at.clone());
                    let next = specs
                        .iter()
                        .find(|s| s.name == at)
                        .and_then(|s| {
                            s.depends_on
                                .iter()
                                .find(|d| specs.iter().any(|o| o.name == **d))
                        })
                        .cloned()
                        .unwrap_or_default();
                    at = next;
                }
                let from = path.iter().position(|p| *p == at).unwrap_or(0);
                let mut cycle: Vec<String> =
                    path.get(from..).map(<[String]>::to_vec).unwrap_or_default();
                cycle.push(at);
                bail!(
                    "{shown}, app {}: depends_on makes a cycle ({}); an app cannot wait for itself, so remove one of these links",
                    cycle.first().cloned().unwrap_or_default(),
                    cycle.join(" → ")
                );
            }
        }
    }
    Ok(out)
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|'))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Evaluates a PM2 ecosystem file with node and returns its export as JSON.
fn evaluate_js(path: &Path) -> Result<Value> {
    let script = "const m = require(process.argv[1]); process.stdout.write(JSON.stringify(m && m.default ? m.default : m));";
    let out = std::process::Command::new("node")
        .args(["-e", script, &path.display().to_string()])
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run node to read {}: {e}; install Node.js or use a .json file",
                path.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err
            .lines()
            .find(|l| l.contains("Error"))
            .unwrap_or("")
            .trim();
        let place = err.lines().next().unwrap_or("").trim();
        bail!(
            "{} cannot be evaluated by node: {first} (at {place})",
            path.display()
        );
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{} did not export JSON-like data", path.display()))
}

fn ms(v: &Value, field: &str) -> Result<Duration> {
    match v {
        Value::Number(n) => {
            Ok(Duration::from_millis(n.as_u64().ok_or_else(|| {
                anyhow!("{field} must be a positive number of ms")
            })?))
        }
        Value::String(s) => parse_duration(s).map_err(|e| anyhow!("{field}: {e}")),
        _ => bail!("{field} must be milliseconds or a duration such as \"5s\""),
    }
}

/// A user or group: a name, or a number (written as one or as a string).
fn id_field(v: &Value, field: &str) -> Result<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Value::Number(n) if n.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)) => {
            Ok(n.to_string())
        }
        _ => bail!("{field} must be a name or a number, e.g. \"www-data\" or 33"),
    }
}

fn size(v: &Value, field: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| anyhow!("{field} must be a positive size")),
        Value::String(s) => parse_size(s).map_err(|e| anyhow!("{field}: {e}")),
        _ => bail!("{field} must be a size such as \"200M\""),
    }
}

/// Kubernetes' `periodSeconds` and the like: a number of seconds.
fn seconds(v: &Value, field: &str) -> Result<u64> {
    match v.as_f64() {
        Some(s) if s >= 0.0 && s.is_finite() => Ok((s * 1000.0).round() as u64),
        _ => bail!(
            "{field} must be a number of seconds, e.g. 5 (for \"500ms\" and the like, use interval, timeout or initial_delay)"
        ),
    }
}

/// A probe's `failureThreshold` or `successThreshold`.
fn threshold(v: &Value, field: &str) -> Result<u32> {
    match v.as_u64().map(u32::try_from) {
        Some(Ok(n)) if n >= 1 => Ok(n),
        _ => bail!("{field} must be a whole number of at least 1"),
    }
}

/// What a probe table says besides its check, by the name given (for errors).
#[derive(Default)]
struct ProbeTiming {
    interval_ms: Option<(String, u64)>,
    timeout_ms: Option<(String, u64)>,
    initial_delay_ms: Option<(String, u64)>,
    failure_threshold: Option<(String, u32)>,
    success_threshold: Option<(String, u32)>,
}

/// Sets `slot` from `key`, unless another spelling of the same field did already.
fn once<T>(slot: &mut Option<(String, T)>, field: &str, key: &str, value: T) -> Result<()> {
    if let Some((first, _)) = slot {
        bail!("{field}.{first} and {field}.{key} are the same setting; give one of them");
    }
    *slot = Some((key.to_string(), value));
    Ok(())
}

/// A probe as an app file writes it (docs/health.md): a string read as `--readiness` reads it
/// (`"http:/healthz"`, `"tcp"`, `"exec:./check.sh"`, `"channel"`), or a table with exactly one
/// check (Kubernetes' `httpGet`, `tcpSocket`, `exec`, herd's `channel`, or herd's `check` with
/// a string) and its timing in Kubernetes' words (`periodSeconds`, `timeoutSeconds`,
/// `initialDelaySeconds`, `failureThreshold`, `successThreshold`; camelCase or snake_case) or
/// herd's (`interval`, `timeout`, `initial_delay` as ms or durations).
fn probe(v: &Value, field: &str) -> Result<Probe> {
    let map = match v {
        Value::String(s) => {
            let check = ProbeCheck::parse(s).map_err(|e| anyhow!("{field}: {e}"))?;
            return Ok(Probe {
                check,
                ..Probe::default()
            });
        }
        Value::Object(map) => map,
        _ => bail!(
            "{field} must be a probe such as \"http:/healthz\", or a table with one of httpGet, tcpSocket, exec, channel or check"
        ),
    };
    let mut checks: Vec<(&str, ProbeCheck)> = Vec::new();
    let mut t = ProbeTiming::default();
    for (k, v) in map {
        let at = format!("{field}.{k}");
        match k.as_str() {
            "httpGet" | "http_get" => checks.push((k, http_get(v, &at)?)),
            "tcpSocket" | "tcp_socket" => {
                only_keys(v, &at, &["port"], "{}")?;
                checks.push((k, ProbeCheck::Tcp));
            }
            "exec" => checks.push((k, exec(v, &at)?)),
            "channel" => {
                only_keys(v, &at, &[], "{}")?;
                checks.push((k, ProbeCheck::Channel));
            }
            "check" => {
                let Value::String(s) = v else {
                    bail!("{at} must be a string such as \"http:/healthz\", \"tcp\", \"exec:./check.sh\" or \"channel\"");
                };
                checks.push((k, ProbeCheck::parse(s).map_err(|e| anyhow!("{at}: {e}"))?));
            }
            "interval" => once(&mut t.interval_ms, field, k, millis(v, &at)?)?,
            "periodSeconds" | "period_seconds" => {
                once(&mut t.interval_ms, field, k, seconds(v, &at)?)?
            }
            "timeout" => once(&mut t.timeout_ms, field, k, millis(v, &at)?)?,
            "timeoutSeconds" | "timeout_seconds" => {
                once(&mut t.timeout_ms, field, k, seconds(v, &at)?)?
            }
            "initial_delay" => {
                once(&mut t.initial_delay_ms, field, k, millis(v, &at)?)?
            }
            "initialDelaySeconds" | "initial_delay_seconds" => {
                once(&mut t.initial_delay_ms, field, k, seconds(v, &at)?)?
            }
            "failureThreshold" | "failure_threshold" => {
                once(&mut t.failure_threshold, field, k, threshold(v, &at)?)?
            }
            "successThreshold" | "success_threshold" => {
                once(&mut t.success_threshold, field, k, threshold(v, &at)?)?
            }
            _ => bail!(
                "unknown field {at:?}; a probe has one check (httpGet, tcpSocket, exec, channel or check) and may set interval (periodSeconds), timeout (timeoutSeconds), initial_delay (initialDelaySeconds), failureThreshold and successThreshold; see docs/health.md"
            ),
        }
    }
    let check = match checks.as_slice() {
        [] => bail!(
            "{field} has no check; give one of httpGet, tcpSocket, exec, channel or check (e.g. check = \"http:/healthz\")"
        ),
        [(_, check)] => check.clone(),
        [(a, _), (b, _), ..] => bail!(
            "{field} has both {a} and {b}; a probe has exactly one check, so keep one of them"
        ),
    };
    for (slot, what) in [
        (&t.interval_ms, "the time between probes"),
        (&t.timeout_ms, "a timeout"),
    ] {
        if let Some((k, 0)) = slot {
            bail!("{field}.{k} is 0, which cannot work as {what}; give at least 1 ms");
        }
    }
    let defaults = Probe::default();
    Ok(Probe {
        check,
        interval_ms: t.interval_ms.map_or(defaults.interval_ms, |(_, v)| v),
        timeout_ms: t.timeout_ms.map_or(defaults.timeout_ms, |(_, v)| v),
        failure_threshold: t
            .failure_threshold
            .map_or(defaults.failure_threshold, |(_, v)| v),
        success_threshold: t
            .success_threshold
            .map_or(defaults.success_threshold, |(_, v)| v),
        initial_delay_ms: t
            .initial_delay_ms
            .map_or(defaults.initial_delay_ms, |(_, v)| v),
    })
}

/// A duration field of a probe, in milliseconds.
fn millis(v: &Value, field: &str) -> Result<u64> {
    Ok(u64::try_from(ms(v, field)?.as_millis()).unwrap_or(u64::MAX))
}

/// A check's table, with no keys but `allowed`.
fn only_keys(v: &Value, field: &str, allowed: &[&str], example: &str) -> Result<()> {
    match v {
        Value::Object(map) => match map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if allowed.is_empty() => {
                bail!("unknown field \"{field}.{k}\"; {field} takes no settings")
            }
            Some(k) => bail!(
                "unknown field \"{field}.{k}\"; {field} takes {} (herd probes each instance's own socket)",
                allowed.join(", ")
            ),
        },
        _ => bail!("{field} must be a table such as {example}"),
    }
}

/// Kubernetes' `httpGet: {path, port}`; the port is accepted and ignored, since herd asks
/// each instance on its own socket (the app's first TCP address).
fn http_get(v: &Value, field: &str) -> Result<ProbeCheck> {
    only_keys(
        v,
        field,
        &["path", "port", "scheme"],
        "{ path = \"/healthz\" }",
    )?;
    if let Some(scheme) = v.get("scheme") {
        if !scheme
            .as_str()
            .is_some_and(|s| s.eq_ignore_ascii_case("http"))
        {
            bail!(
                "{field}.scheme: herd probes with plain HTTP only; leave scheme out or give HTTP"
            );
        }
    }
    let path = match v.get("path") {
        Some(Value::String(p)) => p,
        Some(_) => bail!("{field}.path must be a string such as \"/healthz\""),
        None => bail!("{field}.path is missing; give the path to ask for, e.g. \"/healthz\""),
    };
    ProbeCheck::parse(&format!("http:{path}")).map_err(|e| anyhow!("{field}.path: {e}"))
}

/// Kubernetes' `exec: {command}`: a string is a command line for `sh -c`; a list is a program
/// and its arguments, each quoted for `sh` so that none is split or expanded.
fn exec(v: &Value, field: &str) -> Result<ProbeCheck> {
    only_keys(v, field, &["command"], "{ command = [\"./check.sh\"] }")?;
    let command = match v.get("command") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::Array(words)) if !words.is_empty() => {
            let words: Vec<&str> = words
                .iter()
                .map(|w| {
                    w.as_str()
                        .ok_or_else(|| anyhow!("{field}.command must be a list of strings"))
                })
                .collect::<Result<_>>()?;
            shell_command(&words)
        }
        Some(_) => bail!("{field}.command is empty; give a command line or a list of words"),
        None => bail!(
            "{field}.command is missing; give a command line or a list of words, e.g. [\"./check.sh\", \"--quick\"]"
        ),
    };
    Ok(ProbeCheck::Exec { command })
}

/// The `sh -c` command line that runs `words` as a program and its arguments.
/// `["sh", "-c", LINE]` is LINE itself (Kubernetes' usual way to ask for a shell).
fn shell_command(words: &[&str]) -> String {
    if let [sh, "-c", line] = words {
        if matches!(*sh, "sh" | "/bin/sh") {
            return (*line).to_string();
        }
    }
    words
        .iter()
        .map(|w| shell_quoted(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `w` as one word for `sh`: as it is when nothing in it is special, else in single quotes.
fn shell_quoted(w: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !w.is_empty() && w.chars().all(plain) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Entry {
    fn into_spec(
        self,
        dir: &Path,
        env_name: Option<&str>,
        overrides: &[String],
        pm2: bool,
        file: &str,
        app: &str,
    ) -> Result<AppSpec> {
        let script = self
            .script
            .ok_or_else(|| anyhow!("script is missing; give the program or script to run"))?;
        let readiness = self
            .readiness
            .as_ref()
            .map(|v| probe(v, "readiness"))
            .transpose()?;
        let liveness = self
            .liveness
            .as_ref()
            .map(|v| probe(v, "liveness"))
            .transpose()?;
        let mut env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect();
        let mut blocks = Vec::new();
        let mut ignored: Vec<&str> = Vec::new();
        for (k, v) in &self.rest {
            if let Some(block) = k.strip_prefix("env_") {
                blocks.push(block.to_string());
                if Some(block) == env_name {
                    let Value::Object(vars) = v else {
                        bail!("{k} must be a table of variables")
                    };
                    env.extend(vars.iter().map(|(k, v)| format!("{k}={}", scalar(v))));
                }
            } else if pm2 {
                if !PM2_HARMLESS.contains(&k.as_str()) {
                    ignored.push(k);
                }
            } else {
                bail!("unknown field {k:?}; see docs/configuration.md for the fields of an app");
            }
        }
        // One line names every PM2 field herd does not have (docs/coming-from-pm2.md says why).
        if !ignored.is_empty() {
            eprintln!(
                "warning: {file}, app {app}: PM2 field{} herd does not have, ignored: {} (see docs/coming-from-pm2.md)",
                if ignored.len() == 1 { "" } else { "s" },
                ignored.join(", ")
            );
        }
        if let Some(want) = env_name {
            if !blocks.iter().any(|b| b == want) {
                eprintln!("warning: {file}, app {app}: no env_{want} block; using its plain env");
            }
        }
        env.extend(overrides.iter().cloned());
        // PM2 apps read their port from env.PORT; herd binds it for them.
        let port = self.port.or_else(|| {
            (pm2 && self.listen.is_empty())
                .then(|| {
                    env.iter()
                        .rev()
                        .find_map(|kv| kv.strip_prefix("PORT=")?.parse().ok())
                })
                .flatten()
        });
        let instances = match &self.instances {
            None => None,
            Some(Value::Number(n)) if n.as_i64() == Some(0) && pm2 => Some("max".into()),
            Some(v) => Some(scalar(v)),
        };
        let mut a = StartArgs::new(script);
        a.args = self.args.into_vec();
        a.name = self.name;
        a.instances = instances;
        a.port = port;
        a.listen = self.listen;
        if let Some(b) = self.balance {
            a.balance = match b.as_str() {
                "hash" => Balance::Hash,
                "sticky" => Balance::Sticky,
                "shared" => Balance::Shared,
                _ => bail!("balance must be hash, sticky or shared, not {b:?}"),
            };
        }
        a.env = env;
        a.interpreter = self.interpreter;
        a.interpreter_args = self.interpreter_args.into_vec();
        a.interpreter_args.extend(self.node_args.into_vec());
        a.cwd = Some(match self.cwd {
            Some(c) => dir.join(c),
            None => dir.to_path_buf(),
        });
        a.wait_ready = self.wait_ready.unwrap_or(false);
        a.primary = self.primary.unwrap_or(false);
        a.listen_timeout = self
            .listen_timeout
            .as_ref()
            .map(|v| ms(v, "listen_timeout"))
            .transpose()?;
        a.kill_timeout = self
            .kill_timeout
            .as_ref()
            .map(|v| ms(v, "kill_timeout"))
            .transpose()?;
        if let Some(s) = self.kill_signal {
            a.kill_signal = s;
        }
        a.max_restarts = self.max_restarts;
        a.min_uptime = self
            .min_uptime
            .as_ref()
            .map(|v| ms(v, "min_uptime"))
            .transpose()?;
        a.restart_delay = self
            .restart_delay
            .as_ref()
            .map(|v| ms(v, "restart_delay"))
            .transpose()?;
        a.exp_backoff_restart_delay = self
            .exp_backoff_restart_delay
            .as_ref()
            .map(|v| ms(v, "exp_backoff_restart_delay"))
            .transpose()?;
        a.max_restart_delay = self
            .max_restart_delay
            .as_ref()
            .map(|v| ms(v, "max_restart_delay"))
            .transpose()?;
        a.cron_restart = self
            .cron_restart
            .map(|c| parse_cron(&c).map_err(|e| anyhow!("cron_restart {e}")))
            .transpose()?;
        a.no_autorestart = self.autorestart == Some(false);
        a.stop_exit_codes = match self.stop_exit_codes {
            None => Vec::new(),
            Some(Value::Number(n)) => vec![n.as_i64().unwrap_or(0) as i32],
            Some(Value::Array(v)) => v
                .iter()
                .map(|c| {
                    c.as_i64()
                        .map(|c| c as i32)
                        .ok_or_else(|| anyhow!("stop_exit_codes must be numbers"))
                })
                .collect::<Result<_>>()?,
            Some(_) => bail!("stop_exit_codes must be a number or a list of numbers"),
        };
        a.max_memory_restart = self
            .max_memory_restart
            .as_ref()
            .map(|v| size(v, "max_memory_restart"))
            .transpose()?;
        a.time = self.time.unwrap_or(false);
        a.log_max_size = self
            .log_max_size
            .as_ref()
            .map(|v| size(v, "log_max_size"))
            .transpose()?;
        a.log_keep = self.log_keep;
        a.out_file = self.out_file;
        a.error_file = self.error_file;
        a.log_file = match self.log_file {
            None | Some(Value::Bool(false)) | Some(Value::Null) => None,
            Some(Value::Bool(true)) => Some(String::new()),
            Some(Value::String(s)) => Some(s),
            Some(_) => bail!("log_file must be a path, or true for HERD_HOME/logs/<app>.log"),
        };
        // PM2's cluster mode keeps one file per instance unless merge_logs says otherwise.
        let cluster_mode = self
            .rest
            .get("exec_mode")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("cluster"));
        a.merge_logs = match (self.merge_logs, self.combine_logs) {
            (Some(a), Some(b)) => Some(a || b),
            (a, b) => a.or(b),
        }
        .or((pm2 && cluster_mode).then_some(false));
        a.log_date_format = self.log_date_format;
        a.log_type = self
            .log_type
            .map(|t| crate::args::parse_log_type(&t).map_err(|e| anyhow!("log_type: {e}")))
            .transpose()?;
        a.disable_logs = self.disable_logs.unwrap_or(false);
        a.shutdown_with_message = self.shutdown_with_message.unwrap_or(false);
        a.no_node_cluster = self.node_cluster == Some(false);
        // `true` was the default before Deno could run otherwise: it asks for something only
        // under deno (and is no error elsewhere, unlike --node-cluster).
        a.node_cluster =
            self.node_cluster == Some(true) && herd_core::node::is_deno(a.interpreter.as_deref());
        a.watch = match self.watch {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(Vec::new()),
            Some(Value::String(s)) => Some(vec![s]),
            Some(Value::Array(v)) => Some(v.iter().map(scalar).collect()),
            Some(_) => bail!("watch must be true, a path or a list of paths"),
        };
        a.ignore_watch = self.ignore_watch.into_vec();
        a.after = self.depends_on.into_vec();
        a.no_autostart = self.autostart == Some(false);
        a.instance_var = self.instance_var;
        a.increment_var = self.increment_var;
        a.uid = self.uid.as_ref().map(|v| id_field(v, "uid")).transpose()?;
        a.gid = self.gid.as_ref().map(|v| id_field(v, "gid")).transpose()?;
        a.namespace = self.namespace;
        a.filter_env = match self.filter_env {
            None | Some(Value::Bool(false)) | Some(Value::Null) => Vec::new(),
            Some(Value::Bool(true)) => vec!["*".into()],
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(v)) => v.iter().map(scalar).collect(),
            Some(_) => bail!("filter_env must be true, a prefix or a list of prefixes"),
        };
        let mut spec = a.to_spec()?;
        spec.readiness = readiness;
        spec.liveness = liveness;
        check_probes(&spec)?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema/herd.schema.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Every field the schema describes is one the loader reads, and each example value in the
    /// schema is accepted by it; every field the loader reads is in the schema.
    #[test]
    fn the_json_schema_matches_the_loader() {
        let schema = schema();
        let props = schema["definitions"]["app"]["properties"]
            .as_object()
            .unwrap();
        let aliases = [
            "node_args",
            "user",
            "combine_logs",
            "exec",
            "exec_interpreter",
            "interpreterArgs",
            "cron",
        ];
        let mut all = serde_json::Map::new();
        for (k, p) in props {
            let example = p["examples"][0].clone();
            assert!(!example.is_null(), "{k} has no example in the schema");
            if !aliases.contains(&k.as_str()) {
                all.insert(k.clone(), example.clone());
            }
            let one = if k == "exec" {
                serde_json::json!({ k.as_str(): example })
            } else {
                serde_json::json!({ "script": "/bin/sh", k.as_str(): example })
            };
            let entry: Entry = serde_json::from_value(one).unwrap();
            assert!(entry.rest.is_empty(), "{k} is not a field the loader reads");
        }
        all.insert("script".into(), "/bin/sh".into());
        all.insert("env_production".into(), serde_json::json!({ "A": "1" }));
        let entry: Entry = serde_json::from_value(Value::Object(all.clone())).unwrap();
        assert_eq!(
            entry.rest.keys().collect::<Vec<_>>(),
            vec!["env_production"],
            "only env_ blocks go to the catch-all"
        );
        let dir = std::env::temp_dir();
        let spec = entry
            .into_spec(&dir, Some("production"), &[], false, "herd.toml", "api")
            .unwrap();
        assert_eq!(spec.name, "api");
        assert_eq!(spec.env["A"], "1");

        // The other way round: a field the loader reads but the schema does not know.
        let fields = [
            "name",
            "script",
            "args",
            "interpreter",
            "interpreter_args",
            "node_args",
            "cwd",
            "instances",
            "port",
            "listen",
            "balance",
            "env",
            "wait_ready",
            "primary",
            "listen_timeout",
            "kill_timeout",
            "kill_signal",
            "max_restarts",
            "min_uptime",
            "restart_delay",
            "exp_backoff_restart_delay",
            "max_restart_delay",
            "cron_restart",
            "autorestart",
            "stop_exit_codes",
            "max_memory_restart",
            "time",
            "log_max_size",
            "log_keep",
            "out_file",
            "error_file",
            "log_file",
            "merge_logs",
            "combine_logs",
            "log_date_format",
            "log_type",
            "disable_logs",
            "shutdown_with_message",
            "node_cluster",
            "watch",
            "ignore_watch",
            "readiness",
            "liveness",
            "depends_on",
            "autostart",
            "instance_var",
            "increment_var",
            "filter_env",
            "uid",
            "gid",
            "namespace",
        ];
        for f in fields {
            assert!(props.contains_key(f), "the schema lacks {f}");
            let probe: Entry =
                serde_json::from_value(serde_json::json!({ f: Value::Null })).unwrap_or_default();
            assert!(!probe.rest.contains_key(f), "{f} is not read by the loader");
        }
    }

    fn load_one(name: &str, text: &str) -> Result<AppSpec> {
        let mut specs = load_text(&Path::new("/tmp").join(name), text, None, &[])?;
        assert_eq!(specs.len(), 1);
        Ok(specs.remove(0))
    }

    #[test]
    fn interpreter_args_and_node_args_may_both_be_given() {
        let spec = load_one(
            "herd.json",
            r#"{"apps":[{"name":"a","script":"/bin/sh","interpreter_args":["-e"],"node_args":"-x"}]}"#,
        )
        .unwrap();
        assert_eq!(spec.interpreter_args, ["-e", "-x"]);
    }

    #[test]
    fn apps_start_after_the_apps_they_depend_on_and_a_cycle_is_refused() {
        let app = |name: &str, deps: &str| {
            format!("[[apps]]\nname = \"{name}\"\nscript = \"/bin/sh\"\ndepends_on = {deps}\n")
        };
        let text = [
            app("api", "[\"db\", \"cache\"]"),
            app("cache", "\"db\""),
            app("db", "[]"),
            app("web", "[\"elsewhere\"]"),
        ]
        .concat();
        let specs = load_text(Path::new("/tmp/herd.toml"), &text, None, &[]).unwrap();
        let order: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["db", "cache", "api", "web"]);
        assert_eq!(specs[2].depends_on, ["db", "cache"]);
        // A name not in the file is for the daemon to check (it may run already).
        assert_eq!(specs[3].depends_on, ["elsewhere"]);
        let text = [
            app("a", "\"b\""),
            app("b", "\"c\""),
            app("c", "\"a\""),
            app("d", "[]"),
        ]
        .concat();
        let e = load_text(Path::new("/tmp/herd.toml"), &text, None, &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/tmp/herd.toml, app a: depends_on makes a cycle (a → b → c → a)"),
            "{e}"
        );
    }

    fn probe_error(name: &str, text: &str) -> String {
        match load_one(name, text) {
            Ok(spec) => panic!("{text} loaded: {:?}", spec.readiness),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_probe_as_a_string_reads_as_the_flag() {
        let spec = load_one(
            "herd.toml",
            "[[apps]]\nname = \"api\"\nscript = \"/bin/sh\"\nport = 8000\nreadiness = \"http:/healthz\"\nliveness = \"exec:test -f /tmp/ok\"\n",
        )
        .unwrap();
        assert_eq!(
            spec.readiness,
            Some(Probe {
                check: ProbeCheck::parse("http:/healthz").unwrap(),
                ..Probe::default()
            })
        );
        assert_eq!(
            spec.liveness.map(|p| p.check),
            Some(ProbeCheck::Exec {
                command: "test -f /tmp/ok".into()
            })
        );
        let spec = load_one("herd.toml", "[[apps]]\nscript = \"/bin/sh\"\nport = 8000\n").unwrap();
        assert_eq!((spec.readiness, spec.liveness), (None, None));
    }

    #[test]
    fn a_probe_in_kubernetes_words_camel_case_in_toml() {
        let spec = load_one(
            "herd.toml",
            r#"
[[apps]]
name = "api"
script = "/bin/sh"
port = 8000

[apps.readiness]
httpGet = { path = "/healthz", port = 8000, scheme = "HTTP" }
periodSeconds = 5
timeoutSeconds = 2
failureThreshold = 4
successThreshold = 2
initialDelaySeconds = 0.5
"#,
        )
        .unwrap();
        assert_eq!(
            spec.readiness,
            Some(Probe {
                check: ProbeCheck::parse("http:/healthz").unwrap(),
                interval_ms: 5_000,
                timeout_ms: 2_000,
                failure_threshold: 4,
                success_threshold: 2,
                initial_delay_ms: 500,
            })
        );
    }

    #[test]
    fn a_probe_in_kubernetes_words_snake_case_in_yaml() {
        let spec = load_one(
            "herd.yaml",
            "apps:\n  - name: api\n    script: /bin/sh\n    port: 8000\n    liveness:\n      tcp_socket: { port: http }\n      period_seconds: 10\n      timeout_seconds: 3\n      failure_threshold: 6\n      initial_delay_seconds: 30\n    readiness:\n      exec:\n        command: [sh, -c, \"curl -fs localhost:$PORT/ready\"]\n",
        )
        .unwrap();
        assert_eq!(
            spec.liveness,
            Some(Probe {
                check: ProbeCheck::Tcp,
                interval_ms: 10_000,
                timeout_ms: 3_000,
                failure_threshold: 6,
                success_threshold: 1,
                initial_delay_ms: 30_000,
            })
        );
        assert_eq!(
            spec.readiness.map(|p| p.check),
            Some(ProbeCheck::Exec {
                command: "curl -fs localhost:$PORT/ready".into()
            })
        );
    }

    #[test]
    fn a_probe_in_herds_words_in_json() {
        let spec = load_one(
            "herd.json",
            r#"{"apps": [{"name": "api", "script": "/bin/sh",
                "readiness": {"check": "channel", "interval": "500ms", "timeout": 250,
                              "initial_delay": "2s", "failure_threshold": 2},
                "liveness": {"channel": {}, "successThreshold": 1}}]}"#,
        )
        .unwrap();
        assert_eq!(
            spec.readiness,
            Some(Probe {
                check: ProbeCheck::Channel,
                interval_ms: 500,
                timeout_ms: 250,
                failure_threshold: 2,
                success_threshold: 1,
                initial_delay_ms: 2_000,
            })
        );
        assert_eq!(
            spec.liveness,
            Some(Probe {
                check: ProbeCheck::Channel,
                ..Probe::default()
            })
        );
    }

    #[test]
    fn an_exec_probe_list_is_quoted_for_sh() {
        let spec = load_one(
            "herd.json",
            r#"{"apps": [{"name": "api", "script": "/bin/sh",
                "readiness": {"exec": {"command": ["./check", "it's", "a b", "$HOME", ""]}},
                "liveness": {"exec": {"command": "./check --live"}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            spec.readiness.map(|p| p.check),
            Some(ProbeCheck::Exec {
                command: r#"./check 'it'\''s' 'a b' '$HOME' ''"#.into()
            })
        );
        assert_eq!(
            spec.liveness.map(|p| p.check),
            Some(ProbeCheck::Exec {
                command: "./check --live".into()
            })
        );
    }

    /// What sh makes of a quoted list is the list itself: no word split, nothing expanded.
    #[test]
    fn sh_reads_a_quoted_list_back_word_for_word() {
        let words = [
            "printf", "%s|", "a b", "it's", "$HOME", "", "*", "`id`", "x\ny", "é",
        ];
        let out = std::process::Command::new("sh")
            .args(["-c", &shell_command(&words)])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "a b|it's|$HOME||*|`id`|x\ny|é|"
        );
        assert_eq!(shell_command(&["/bin/sh", "-c", "exit 3"]), "exit 3");
        assert_eq!(shell_command(&["bash", "-c", "exit 3"]), "bash -c 'exit 3'");
    }

    #[test]
    fn probe_errors_name_the_file_the_app_and_the_field() {
        let app = |probe: &str| {
            format!("[[apps]]\nname = \"api\"\nscript = \"/bin/sh\"\nport = 8000\n[apps.readiness]\n{probe}\n")
        };
        for (probe, says) in [
            (
                "httpGet = { path = \"/a\" }\ntcpSocket = {}",
                "readiness has both httpGet and tcpSocket; a probe has exactly one check",
            ),
            (
                "periodSeconds = 5",
                "readiness has no check; give one of httpGet",
            ),
            ("grpc = { port = 9000 }", "unknown field \"readiness.grpc\""),
            (
                "httpGet = { port = 8000 }",
                "readiness.httpGet.path is missing",
            ),
            (
                "httpGet = { path = \"healthz\" }",
                "readiness.httpGet.path: probe",
            ),
            (
                "httpGet = { path = \"/\", host = \"db\" }",
                "unknown field \"readiness.httpGet.host\"",
            ),
            (
                "httpGet = { path = \"/\", scheme = \"HTTPS\" }",
                "readiness.httpGet.scheme: herd probes with plain HTTP only",
            ),
            ("exec = { command = [] }", "readiness.exec.command is empty"),
            ("exec = {}", "readiness.exec.command is missing"),
            (
                "exec = { command = [1] }",
                "readiness.exec.command must be a list of strings",
            ),
            (
                "channel = { every = 1 }",
                "unknown field \"readiness.channel.every\"",
            ),
            (
                "check = \"htp:/x\"",
                "readiness.check: probe \"htp:/x\" is not one herd knows",
            ),
            (
                "check = \"tcp\"\ninterval = \"2s\"\nperiodSeconds = 2",
                "readiness.interval and readiness.periodSeconds are the same setting",
            ),
            (
                "check = \"tcp\"\nperiodSeconds = \"5s\"",
                "readiness.periodSeconds must be a number of seconds",
            ),
            (
                "check = \"tcp\"\nfailureThreshold = 0",
                "readiness.failureThreshold must be a whole number of at least 1",
            ),
            (
                "check = \"tcp\"\ntimeoutSeconds = 0",
                "readiness.timeoutSeconds is 0",
            ),
            (
                "check = \"tcp\"\ninterval = \"soon\"",
                "readiness.interval: cannot read duration",
            ),
        ] {
            let e = probe_error("herd.toml", &app(probe));
            assert!(e.starts_with("/tmp/herd.toml, app api: "), "{e}");
            assert!(e.contains(says), "{probe}: {e}");
        }
        let e = probe_error(
            "herd.toml",
            "[[apps]]\nname = \"api\"\nscript = \"/bin/sh\"\nliveness = \"http:healthz\"\n",
        );
        assert!(
            e.starts_with("/tmp/herd.toml, app api: liveness: probe"),
            "{e}"
        );
        let e = probe_error(
            "herd.json",
            r#"{"apps": [{"name": "api", "script": "/bin/sh", "liveness": 3}]}"#,
        );
        assert!(
            e.contains("app api: liveness must be a probe such as"),
            "{e}"
        );
        let e = probe_error(
            "herd.json",
            r#"{"apps": [{"name": "api", "script": "/bin/sh", "liveness": "tcp"}]}"#,
        );
        assert!(
            e.contains("app api: the liveness probe tcp connects to"),
            "{e}"
        );
    }

    #[test]
    fn restart_delays_and_cron_restart_have_pm2s_meaning_in_both_kinds_of_file() {
        for (name, text) in [
            (
                "ecosystem.config.json",
                r#"{"apps": [{"name": "api", "script": "/bin/sh", "restart_delay": 3000,
                    "exp_backoff_restart_delay": 200, "cron_restart": "0 3 * * *"}]}"#,
            ),
            (
                "herd.toml",
                "[[apps]]\nname = \"api\"\nscript = \"/bin/sh\"\nrestart_delay = \"3s\"\nexp_backoff_restart_delay = \"200ms\"\ncron_restart = \"0 3 * * *\"\n",
            ),
        ] {
            let spec = load_one(name, text).unwrap();
            assert_eq!(spec.restart_delay_ms, 3_000, "{name}");
            assert_eq!(spec.exp_backoff_restart_delay_ms, 200, "{name}");
            assert_eq!(spec.max_restart_delay_ms, 15_000, "{name}");
            assert_eq!(spec.cron_restart.as_deref(), Some("0 3 * * *"), "{name}");
        }
        let spec = load_one(
            "herd.yaml",
            "apps:\n  - name: api\n    script: /bin/sh\n    max_restart_delay: 1m\n",
        )
        .unwrap();
        assert_eq!(spec.max_restart_delay_ms, 60_000);
        assert_eq!((spec.restart_delay_ms, spec.cron_restart), (0, None));
    }

    #[test]
    fn a_bad_cron_restart_names_the_file_the_app_and_the_field() {
        let e = load_one(
            "ecosystem.config.json",
            r#"{"apps": [{"name": "api", "script": "/bin/sh", "cron_restart": "0 3 * *"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/tmp/ecosystem.config.json, app api: cron_restart \"0 3 * *\" is not a cron expression"),
            "{e}"
        );
        assert!(e.contains("e.g. \"0 3 * * *\""), "{e}");
    }

    /// herd-only fields such as `port` are read in PM2's files too; so are probes.
    #[test]
    fn an_ecosystem_file_reads_probes_as_herds_own_fields() {
        let spec = load_one(
            "ecosystem.config.json",
            r#"{"apps": [{"name": "api", "script": "/bin/sh", "env": {"PORT": "8000"},
                "readiness": {"httpGet": {"path": "/ready", "port": 8000}}}]}"#,
        )
        .unwrap();
        assert_eq!(
            spec.readiness.map(|p| p.check),
            Some(ProbeCheck::parse("http:/ready").unwrap())
        );
    }
}
