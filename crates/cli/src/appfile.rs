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
use herd_proto::{AppSpec, Balance};
use serde::Deserialize;
use serde_json::Value;

use crate::args::{parse_duration, parse_size, StartArgs};

/// Whether `path` names an app file rather than a program.
pub fn is_app_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    matches!(ext, "toml" | "yaml" | "yml")
        || (ext == "json" && !name.ends_with("package.json"))
        || name.starts_with("ecosystem.config.") && matches!(ext, "js" | "cjs" | "mjs")
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
    script: Option<String>,
    #[serde(default)]
    args: Words,
    interpreter: Option<String>,
    #[serde(default, alias = "node_args")]
    interpreter_args: Words,
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
    #[serde(alias = "exp_backoff_restart_delay")]
    restart_delay: Option<Value>,
    autorestart: Option<bool>,
    stop_exit_codes: Option<Value>,
    max_memory_restart: Option<Value>,
    time: Option<bool>,
    log_max_size: Option<Value>,
    log_keep: Option<u32>,
    shutdown_with_message: Option<bool>,
    node_cluster: Option<bool>,
    /// `true` (the app's folder) or a list of paths.
    watch: Option<Value>,
    #[serde(default)]
    ignore_watch: Words,
    /// Everything else: `env_<name>` blocks, PM2 fields herd does not have, typos.
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// PM2 fields that need no counterpart in herd (said once, not warned about).
const PM2_HARMLESS: &[&str] = &[
    "exec_mode",
    "instance_var",
    "merge_logs",
    "vizion",
    "pmx",
    "automation",
];

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
    let pm2 = name.starts_with("ecosystem");
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
    Ok(specs)
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

fn size(v: &Value, field: &str) -> Result<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| anyhow!("{field} must be a positive size")),
        Value::String(s) => parse_size(s).map_err(|e| anyhow!("{field}: {e}")),
        _ => bail!("{field} must be a size such as \"200M\""),
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
        let mut env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", scalar(v)))
            .collect();
        let mut blocks = Vec::new();
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
                    eprintln!("warning: {file}, app {app}: PM2 field {k:?} has no herd counterpart and is ignored");
                }
            } else {
                bail!("unknown field {k:?}; see docs/configuration.md for the fields of an app");
            }
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
        a.shutdown_with_message = self.shutdown_with_message.unwrap_or(false);
        a.no_node_cluster = self.node_cluster == Some(false);
        a.watch = match self.watch {
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(Vec::new()),
            Some(Value::String(s)) => Some(vec![s]),
            Some(Value::Array(v)) => Some(v.iter().map(scalar).collect()),
            Some(_) => bail!("watch must be true, a path or a list of paths"),
        };
        a.ignore_watch = self.ignore_watch.into_vec();
        a.to_spec()
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
        let aliases = ["node_args", "exp_backoff_restart_delay"];
        let mut all = serde_json::Map::new();
        for (k, p) in props {
            let example = p["examples"][0].clone();
            assert!(!example.is_null(), "{k} has no example in the schema");
            if !aliases.contains(&k.as_str()) {
                all.insert(k.clone(), example.clone());
            }
            let one = serde_json::json!({ "script": "/bin/sh", k.as_str(): example });
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
            "autorestart",
            "stop_exit_codes",
            "max_memory_restart",
            "time",
            "log_max_size",
            "log_keep",
            "shutdown_with_message",
            "node_cluster",
            "watch",
            "ignore_watch",
        ];
        for f in fields {
            assert!(props.contains_key(f), "the schema lacks {f}");
            let probe: Entry =
                serde_json::from_value(serde_json::json!({ f: Value::Null })).unwrap_or_default();
            assert!(!probe.rest.contains_key(f), "{f} is not read by the loader");
        }
    }
}
