//! How replies are shown to people: tables, describe pages, log lines.

use herd_proto::{AppInfo, AppSpec, AppStatus, Containment, LogStream, ProcessStatus};

/// Bytes as people read them: `2.1mb`.
pub fn human_bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let b = b as f64;
    if b >= K * K * K {
        format!("{:.1}gb", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1}mb", b / (K * K))
    } else if b >= K {
        format!("{:.1}kb", b / K)
    } else {
        format!("{b}b")
    }
}

/// A duration in its largest whole unit: `2m`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The `herd list` table: one row per instance.
pub fn table(apps: &[AppInfo]) -> String {
    let header = [
        "id", "name", "inst", "pid", "status", "restarts", "uptime", "cpu", "memory", "port",
    ];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for app in apps {
        let port = app
            .port
            .map(|p| p.to_string())
            .or_else(|| app.listen.first().cloned())
            .unwrap_or_else(|| "-".into());
        if app.processes.is_empty() && app.primary.is_none() {
            rows.push([
                app.id.to_string(),
                app.name.clone(),
                "-".into(),
                "-".into(),
                match app.status {
                    AppStatus::Running => "running".into(),
                    AppStatus::Stopped => "stopped".into(),
                },
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                port.clone(),
            ]);
        }
        for p in app.primary.iter().chain(&app.processes) {
            rows.push([
                app.id.to_string(),
                app.name.clone(),
                instance_name(p.instance),
                p.pid.map_or("-".into(), |p| p.to_string()),
                p.status.as_str().into(),
                p.restarts.to_string(),
                p.uptime_ms.map_or("-".into(), human_ms),
                p.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                p.memory_bytes.map_or("-".into(), human_bytes),
                port.clone(),
            ]);
        }
    }
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(&format!("{:<w$}", c, w = widths[i]));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    if apps.is_empty() {
        out.push_str("(no apps; start one with `herd start <program> -i 2 --port 8000`)\n");
    }
    out
}

/// The `herd describe` page.
pub fn describe(app: &AppInfo) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:>16}: {v}\n"));
    kv("name", app.name.clone());
    kv("id", app.id.to_string());
    kv(
        "status",
        match app.status {
            AppStatus::Running => "running".into(),
            AppStatus::Stopped => "stopped".into(),
        },
    );
    kv("listen", app.listen.join(", "));
    kv("balance", app.balance.as_str().into());
    if let Some(c) = &app.containment {
        kv("containment", containment_line(c));
    }
    if let Some(spec) = &app.spec {
        let cmd = match &spec.interpreter {
            Some(i) => format!("{i} {} {}", spec.script, spec.args.join(" ")),
            None => format!("{} {}", spec.script, spec.args.join(" ")),
        };
        kv("command", cmd.trim_end().to_string());
        kv("cwd", spec.cwd.clone());
        kv("instances", spec.instances.to_string());
        kv(
            "kill",
            format!(
                "{} then SIGKILL after {} ms",
                spec.kill_signal, spec.kill_timeout_ms
            ),
        );
        kv(
            "ready",
            if spec.wait_ready {
                format!("wait for ready signal, up to {} ms", spec.listen_timeout_ms)
            } else {
                "at once".into()
            },
        );
        kv(
            "restart",
            if spec.autorestart {
                format!(
                    "backoff {}..{} ms; errored after {} runs shorter than {} ms",
                    spec.restart_delay_ms,
                    spec.max_restart_delay_ms,
                    spec.max_restarts,
                    spec.min_uptime_ms
                )
            } else {
                "never".into()
            },
        );
        if !spec.stop_exit_codes.is_empty() {
            kv("stop exit codes", format!("{:?}", spec.stop_exit_codes));
        }
        if let Some(m) = spec.max_memory_bytes {
            kv("max memory", human_bytes(m));
        }
        kv(
            "logs",
            format!(
                "rotate at {}, keep {}{}",
                human_bytes(spec.log.max_size),
                spec.log.keep,
                if spec.log.timestamps {
                    ", timestamps"
                } else {
                    ""
                }
            ),
        );
        env_lines(&mut out, spec, app.env_version);
    }
    out.push('\n');
    out.push_str(&table(std::slice::from_ref(app)));
    for p in app.primary.iter().chain(&app.processes) {
        let who = match p.instance {
            AppSpec::PRIMARY => "primary".to_string(),
            i => format!("instance {i}"),
        };
        if let (Some(_), Some(cg)) = (p.pid, &p.cgroup) {
            out.push_str(&format!("{who} cgroup {cg}\n"));
        }
        if p.pid.is_some() && p.env_version != 0 && p.env_version != app.env_version {
            out.push_str(&format!(
                "{who} runs environment version {} (the app's is {}); restart or reload to apply\n",
                p.env_version, app.env_version
            ));
        }
        if p.bus_refused > 0 || p.subscriptions > 0 {
            out.push_str(&format!(
                "{who} bus: {} subscriptions, {} refused by limits, {} messages dropped (slow reader)\n",
                p.subscriptions, p.bus_refused, p.messages_dropped
            ));
        }
        if !p.pm2_metrics.is_empty() {
            let shown: Vec<String> = p
                .pm2_metrics
                .iter()
                .map(|(name, m)| {
                    let value = match &m["value"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    match m["unit"].as_str().filter(|u| !u.is_empty()) {
                        Some(unit) => format!("{name} = {value} {unit}"),
                        None => format!("{name} = {value}"),
                    }
                })
                .collect();
            out.push_str(&format!("{who} metrics: {}\n", shown.join(", ")));
        }
        if !p.actions.is_empty() {
            out.push_str(&format!(
                "{who} actions: {} (herd trigger {} ACTION)\n",
                p.actions.join(", "),
                app.name
            ));
        }
        if let Some(e) = &p.last_exit {
            if p.status != ProcessStatus::Online {
                let how = match (&e.code, &e.signal) {
                    (Some(c), _) => format!("exit code {c}"),
                    (_, Some(s)) => format!("signal {s}"),
                    _ => "unknown".into(),
                };
                out.push_str(&format!("{who} last ended with {how}\n"));
            }
        }
    }
    out
}

/// How far stop and kill reach, for the describe page.
fn containment_line(c: &Containment) -> String {
    match c {
        Containment::Cgroup { parent } => format!(
            "cgroup {parent} (one per instance process: stop and kill reach its whole tree)"
        ),
        Containment::ProcessGroup { note, reason } => {
            format!("process group ({note}); no cgroups because: {reason}")
        }
    }
}

/// The environment part of a describe page: the variables the app sets and those that differ
/// from the caller's shell (PM2's "divergent env"), secrets masked.
fn env_lines(out: &mut String, spec: &herd_proto::AppSpec, version: u32) {
    let here: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let differs: Vec<&String> = spec
        .env
        .keys()
        .filter(|k| !spec.declared_env.contains(k) && here.get(*k) != spec.env.get(*k))
        .collect();
    out.push_str(&format!(
        "{:>16}: version {version}; {} variables, {} set by the app, {} differ from this shell\n",
        "env",
        spec.env.len(),
        spec.declared_env.len(),
        differs.len()
    ));
    let show = |k: &str| herd_proto::masked_value(k, spec.env.get(k).map_or("", String::as_str));
    for k in &spec.declared_env {
        out.push_str(&format!("{:>18}{k}={} (app)\n", "", show(k)));
    }
    for k in &differs {
        out.push_str(&format!("{:>18}{k}={}\n", "", show(k)));
    }
    if !differs.is_empty() {
        out.push_str(&format!(
            "{:>18}(restart or reload with --update-env to use this shell's values)\n",
            ""
        ));
    }
}

/// An app as `describe --json` prints it: environment values that look secret are masked.
pub fn masked(mut app: AppInfo) -> AppInfo {
    if let Some(spec) = &mut app.spec {
        for (k, v) in spec.env.iter_mut() {
            *v = herd_proto::masked_value(k, v);
        }
    }
    app
}

/// The daemon's bus state, as `herd describe` ends.
pub fn bus_stats(b: &herd_proto::BusStats) -> String {
    let broker = match &b.broker {
        Some(url) => format!(
            "{url} ({}; {} sent, {} received, {} lost while away, {} reconnects)",
            if b.connected {
                "connected"
            } else {
                "NOT connected"
            },
            b.remote_published,
            b.remote_received,
            b.lost,
            b.reconnects
        ),
        None => "none (this host only; set HERD_BUS or bus in config.toml)".into(),
    };
    format!(
        "{:>16}: {} on host {}\n{:>16}: {broker}\n{:>16}: {} dropped (slow readers), {} refused (too large or malformed), {} without recipient\n{:>16}: {} refused (topic over max_topic_bytes, subscriptions over max_subscriptions, requests over max_pending_requests)\n",
        "bus",
        format_args!("{} messages routed", b.routed),
        b.host,
        "broker",
        "losses",
        b.dropped,
        b.rejected,
        b.no_recipient,
        "limits",
        b.refused
    )
}

/// One message seen on the bus, for `herd bus`.
pub fn bus_line(m: &serde_json::Value) -> String {
    let s = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let mut line = format!("{:<8} {}", s("kind"), s("from"));
    if !s("to").is_empty() {
        line.push_str(&format!(" -> {}", s("to")));
    }
    if !s("topic").is_empty() {
        line.push_str(&format!(" [{}]", s("topic")));
    }
    line.push_str(&format!(" {}", m.get("data").cloned().unwrap_or_default()));
    line
}

/// One log line as printed by `herd logs`.
pub fn log_line(app: &str, instance: u32, stream: LogStream, line: &str) -> String {
    let instance = instance_name(instance);
    match stream {
        LogStream::Out => format!("{app}:{instance} | {line}"),
        LogStream::Err => format!("{app}:{instance} ! {line}"),
    }
}

/// An instance number as shown: `3`, or `primary` for an app's own primary (`--primary`).
pub fn instance_name(instance: u32) -> String {
    match instance {
        AppSpec::PRIMARY => "primary".into(),
        i => i.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humane_units() {
        assert_eq!(human_bytes(1536), "1.5kb");
        assert_eq!(human_bytes(5 << 20), "5.0mb");
        assert_eq!(human_ms(61_000), "1m");
        assert_eq!(human_ms(999), "0s");
    }
}
