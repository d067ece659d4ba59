//! How replies are shown to people: tables, describe pages, log lines.

use herd_proto::{
    AppInfo, AppSpec, AppStatus, Containment, Health, LogStream, Probe, ProcessStatus,
};

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

/// The `herd list` table: one row per instance. A `health` column comes after `status` when
/// an instance has health (its app has a probe), so tables of apps without probes are as they
/// were; an app whose instances all fail their readiness probe gets a warning under it.
pub fn table(apps: &[AppInfo]) -> String {
    let with_health = apps
        .iter()
        .flat_map(|a| a.primary.iter().chain(&a.processes))
        .any(|p| p.health.is_some());
    // PM2's namespace column, once an app has one of its own.
    let with_ns = apps
        .iter()
        .any(|a| a.namespace != herd_proto::DEFAULT_NAMESPACE);
    let mut header = vec!["id", "name", "inst", "pid", "status"];
    if with_ns {
        header.insert(2, "namespace");
    }
    if with_health {
        header.push("health");
    }
    header.extend(["restarts", "uptime", "cpu", "memory", "port"]);
    let mut rows: Vec<Vec<String>> = Vec::new();
    for app in apps {
        let port = app
            .port
            .map(|p| p.to_string())
            .or_else(|| app.listen.first().cloned())
            .unwrap_or_else(|| "-".into());
        if app.processes.is_empty() && app.primary.is_none() {
            let mut row = vec![
                app.id.to_string(),
                app.name.clone(),
                "-".into(),
                "-".into(),
                match app.status {
                    AppStatus::Running => "running".into(),
                    AppStatus::Stopped => "stopped".into(),
                },
            ];
            if with_health {
                row.push("-".into());
            }
            row.extend(["-", "-", "-", "-"].map(String::from));
            row.push(port.clone());
            if with_ns {
                row.insert(2, app.namespace.clone());
            }
            rows.push(row);
        }
        for p in app.primary.iter().chain(&app.processes) {
            let mut row = vec![
                app.id.to_string(),
                app.name.clone(),
                instance_name(p.instance),
                p.pid.map_or("-".into(), |p| p.to_string()),
                p.status.as_str().into(),
            ];
            if with_health {
                row.push(health_cell(p.health.as_ref()).into());
            }
            row.extend([
                p.restarts.to_string(),
                p.uptime_ms.map_or("-".into(), human_ms),
                p.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                p.memory_bytes.map_or("-".into(), human_bytes),
                port.clone(),
            ]);
            if with_ns {
                row.insert(2, app.namespace.clone());
            }
            rows.push(row);
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            s.push_str(&format!("{c:<w$}"));
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header, &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    if apps.is_empty() {
        out.push_str("(no apps; start one with `herd start <program> -i 2 --port 8000`)\n");
    }
    for app in apps.iter().filter(|a| !a.waiting_for.is_empty()) {
        out.push_str(&format!(
            "{} waits for {} to be ready before it starts (depends_on)\n",
            app.name,
            app.waiting_for.join(", ")
        ));
    }
    for app in apps.iter().filter(|a| a.routing_fallback) {
        out.push_str(&format!(
            "warning: every instance of {} fails its readiness probe, so new connections go to all of them\n",
            app.name
        ));
    }
    out
}

/// An instance's health in one word or two, for the `herd list` table: a failing liveness
/// probe first (the instance is about to be restarted), then readiness, then liveness; `?`
/// while no probe has decided yet, `-` without health.
fn health_cell(health: Option<&Health>) -> &'static str {
    let Some(h) = health else { return "-" };
    match (h.ready, h.live) {
        (_, Some(false)) => "not live",
        (Some(true), _) => "ready",
        (Some(false), _) => "not ready",
        (None, Some(true)) => "live",
        (None, None) => "?",
    }
}

/// A probe as `herd describe` shows it: `http:/healthz every 1s, timeout 1s, 3 failures,
/// 1 success, initial delay 0s`.
fn probe_line(p: &Probe) -> String {
    let d = |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
    let plural = |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{} every {}, timeout {}, {}, {}, initial delay {}",
        p.check.shown(),
        d(p.interval_ms),
        d(p.timeout_ms),
        plural(p.failure_threshold, "failure", "failures"),
        plural(p.success_threshold, "success", "successes"),
        d(p.initial_delay_ms)
    )
}

/// An instance's health for `herd describe`: `ready, live; readiness ok: HTTP 200 (0.4 s
/// ago)`. A probe the app has that has not decided yet says so.
fn health_line(h: &Health, spec: Option<&AppSpec>) -> String {
    let has_readiness = spec.is_some_and(|s| s.readiness.is_some());
    let has_liveness = spec.is_some_and(|s| s.liveness.is_some());
    let mut parts: Vec<&str> = Vec::new();
    match h.ready {
        Some(true) => parts.push("ready"),
        Some(false) => parts.push("not ready"),
        None if has_readiness => parts.push("readiness not decided yet"),
        None => {}
    }
    match h.live {
        Some(true) => parts.push("live"),
        Some(false) => parts.push("not live"),
        None if has_liveness => parts.push("liveness not decided yet"),
        None => {}
    }
    let mut line = if parts.is_empty() {
        "not decided yet".to_string()
    } else {
        parts.join(", ")
    };
    if let Some(last) = &h.last {
        line.push_str(&format!(
            "; {} {}: {} ({} ago)",
            last.probe,
            if last.ok { "ok" } else { "failed" },
            last.detail,
            human_ago(last.ago_ms)
        ));
    }
    line
}

/// How long ago, to the tenth of a second under a minute: `0.4 s`, then `2m`.
fn human_ago(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        human_ms(ms)
    }
}

/// The `--uid` / `--gid` line: `alice`, `alice:staff` or `:staff` as given, with the ids
/// this machine resolves them to (`alice (uid 1001, gid 1001)`).
fn user_line(spec: &herd_proto::AppSpec) -> Option<String> {
    if spec.uid.is_none() && spec.gid.is_none() {
        return None;
    }
    let given = format!(
        "{}{}",
        spec.uid.as_deref().unwrap_or(""),
        spec.gid
            .as_deref()
            .map(|g| format!(":{g}"))
            .unwrap_or_default()
    );
    let uid = match spec.uid.as_deref() {
        Some(u) => u.parse().ok().map(nix::unistd::Uid::from_raw).or_else(|| {
            nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .map(|e| e.uid)
        }),
        None => None,
    };
    let gid = match spec.gid.as_deref() {
        Some(g) => g.parse().ok().map(nix::unistd::Gid::from_raw).or_else(|| {
            nix::unistd::Group::from_name(g)
                .ok()
                .flatten()
                .map(|e| e.gid)
        }),
        None => uid
            .and_then(|u| nix::unistd::User::from_uid(u).ok().flatten())
            .map(|e| e.gid),
    };
    let ids = [
        uid.map(|u| format!("uid {u}")),
        gid.map(|g| format!("gid {g}")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    Some(if ids.is_empty() {
        given
    } else {
        format!("{given} ({ids})")
    })
}

/// `cron_restart`'s line: the schedule, and when it reloads the app next.
fn cron_line(cron: &str, next_ms: Option<u64>) -> String {
    match next_ms {
        Some(ms) => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            format!(
                "{cron} (rolling reload; next {})",
                herd_core::schedule::local_time(at)
            )
        }
        None => format!("{cron} (rolling reload, while the app runs)"),
    }
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
    kv(
        "generation",
        match app.previous.len() {
            0 => app.generation.to_string(),
            n => format!(
                "{} ({n} earlier kept: `herd rollback {}` goes back)",
                app.generation, app.name
            ),
        },
    );
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
        if let Some(user) = user_line(spec) {
            kv("user", user);
        }
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
        if let Some(p) = &spec.readiness {
            kv("readiness", probe_line(p));
        }
        if let Some(p) = &spec.liveness {
            kv("liveness", probe_line(p));
        }
        kv(
            "restart",
            if spec.autorestart {
                format!(
                    "{}backoff {}..{} ms; errored after {} runs shorter than {} ms",
                    if spec.restart_delay_ms > 0 {
                        format!("{} ms + ", spec.restart_delay_ms)
                    } else {
                        String::new()
                    },
                    spec.exp_backoff_restart_delay_ms,
                    spec.max_restart_delay_ms,
                    spec.max_restarts,
                    spec.min_uptime_ms
                )
            } else {
                "never".into()
            },
        );
        if let Some(cron) = &spec.cron_restart {
            kv("cron restart", cron_line(cron, app.next_cron_restart_ms));
        }
        if !spec.stop_exit_codes.is_empty() {
            kv("stop exit codes", format!("{:?}", spec.stop_exit_codes));
        }
        if let Some(m) = spec.max_memory_bytes {
            kv("max memory", human_bytes(m));
        }
        kv("logs", log_options(&spec.log));
        env_lines(&mut out, spec, app.env_version);
    }
    out.push('\n');
    out.push_str(&table(std::slice::from_ref(app)));
    for p in app.primary.iter().chain(&app.processes) {
        let who = match p.instance {
            AppSpec::PRIMARY => "primary".to_string(),
            i => format!("instance {i}"),
        };
        if let Some(h) = &p.health {
            out.push_str(&format!(
                "{who} health: {}\n",
                health_line(h, app.spec.as_deref())
            ));
        }
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
        "{:>16}: {} on host {}\n{:>16}: {broker}\n{:>16}: {} dropped (slow readers), {} refused (too large or malformed), {} without recipient\n{:>16}: {} refused (topic over max_topic_bytes, subscriptions over max_subscriptions, requests over max_pending_requests)\n{:>16}: {} channels handed to pairs of instances, {} refused\n",
        "bus",
        format_args!("{} messages routed", b.routed),
        b.host,
        "broker",
        "losses",
        b.dropped,
        b.rejected,
        b.no_recipient,
        "limits",
        b.refused,
        "direct",
        b.direct_opened,
        b.direct_refused
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

/// `describe`'s line about an app's logs: where they go and how.
fn log_options(log: &herd_proto::LogSpec) -> String {
    let mut parts = Vec::new();
    if log.disabled {
        parts.push("disabled".to_string());
    }
    for (what, path) in [
        ("out", &log.out_file),
        ("err", &log.error_file),
        ("both", &log.log_file),
    ] {
        if let Some(p) = path {
            parts.push(format!("{what} {p}"));
        }
    }
    if log.merge {
        parts.push("merged".into());
    }
    if log.json {
        parts.push("json".into());
    }
    if let Some(f) = &log.date_format {
        parts.push(format!("dated {f:?}"));
    } else if log.timestamps {
        parts.push("timestamps".into());
    }
    parts.push(format!(
        "rotate at {}, keep {}",
        human_bytes(log.max_size),
        log.keep
    ));
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    use herd_proto::{ProbeCheck, ProbeResult, ProcessInfo};

    fn app(health: &[Option<Health>]) -> AppInfo {
        let processes = health
            .iter()
            .enumerate()
            .map(|(i, h)| ProcessInfo {
                health: h.clone(),
                ..crate::testing::process(i as u32, 4000 + i as u32)
            })
            .collect();
        AppInfo {
            listen: vec!["0.0.0.0:8000".into()],
            ..crate::testing::app(0, "api", processes)
        }
    }

    fn health(ready: Option<bool>, live: Option<bool>) -> Option<Health> {
        Some(Health {
            ready,
            live,
            last: None,
        })
    }

    #[test]
    fn a_table_without_probes_has_no_health_column() {
        let t = table(&[app(&[None, None])]);
        assert_eq!(
            t,
            "id  name  inst  pid   status  restarts  uptime  cpu   memory  port\n\
             0   api   0     4000  online  0         1m      0.5%  3.0mb   8000\n\
             0   api   1     4001  online  0         1m      0.5%  3.0mb   8000\n"
        );
    }

    #[test]
    fn a_table_with_probes_shows_each_instances_health() {
        let mut apps = vec![app(&[
            health(Some(true), Some(true)),
            health(Some(false), None),
            health(None, Some(false)),
            health(None, None),
            health(None, Some(true)),
        ])];
        let mut other = app(&[None]);
        other.name = "web".into();
        other.id = 1;
        apps.push(other);
        let t = table(&apps);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "id  name  inst  pid   status  health     restarts  uptime  cpu   memory  port"
        );
        let at = lines[0].find("health").unwrap();
        let cells: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l[at..at + "not ready".len()].trim_end())
            .collect();
        assert_eq!(
            cells,
            ["ready", "not ready", "not live", "?", "live", "-"],
            "{t}"
        );
        assert!(!t.contains("warning"), "{t}");
    }

    #[test]
    fn an_app_routed_by_fallback_gets_a_warning_under_the_table() {
        let mut a = app(&[health(Some(false), None), health(Some(false), None)]);
        a.routing_fallback = true;
        let t = table(&[a]);
        assert!(
            t.ends_with(
                "warning: every instance of api fails its readiness probe, so new connections go to all of them\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn describe_shows_the_probes_and_each_instances_health() {
        let mut a = app(&[
            Some(Health {
                ready: Some(true),
                live: Some(true),
                last: Some(ProbeResult {
                    probe: "readiness".into(),
                    ok: true,
                    detail: "HTTP 200".into(),
                    ago_ms: 400,
                }),
            }),
            Some(Health {
                ready: None,
                live: Some(false),
                last: Some(ProbeResult {
                    probe: "liveness".into(),
                    ok: false,
                    detail: "timed out after 1 s".into(),
                    ago_ms: 12_345,
                }),
            }),
        ]);
        a.spec = Some(Box::new(AppSpec {
            readiness: Some(Probe {
                check: ProbeCheck::parse("http:/healthz").unwrap(),
                ..Probe::default()
            }),
            liveness: Some(Probe {
                check: ProbeCheck::parse("exec:./check.sh").unwrap(),
                interval_ms: 1_500,
                timeout_ms: 500,
                failure_threshold: 1,
                success_threshold: 2,
                initial_delay_ms: 120_000,
            }),
            ..AppSpec::default()
        }));
        let d = describe(&a);
        assert!(
            d.contains("       readiness: http:/healthz every 1s, timeout 1s, 3 failures, 1 success, initial delay 0s\n"),
            "{d}"
        );
        assert!(
            d.contains("        liveness: exec:./check.sh every 1s 500ms, timeout 500ms, 1 failure, 2 successes, initial delay 2m\n"),
            "{d}"
        );
        assert!(
            d.contains("instance 0 health: ready, live; readiness ok: HTTP 200 (0.4 s ago)\n"),
            "{d}"
        );
        assert!(
            d.contains("instance 1 health: readiness not decided yet, not live; liveness failed: timed out after 1 s (12.3 s ago)\n"),
            "{d}"
        );
        a.spec = None;
        a.processes.truncate(1);
        a.processes[0].health = health(None, None);
        assert!(describe(&a).contains("instance 0 health: not decided yet\n"));
    }

    #[test]
    fn describe_shows_the_restart_delays_and_the_cron_schedule() {
        let mut a = app(&[None]);
        a.spec = Some(Box::new(AppSpec {
            restart_delay_ms: 2_000,
            cron_restart: Some("0 3 * * *".into()),
            ..AppSpec::default()
        }));
        let next = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        a.next_cron_restart_ms = Some(1_800_000_000_000);
        let d = describe(&a);
        assert!(
            d.contains("         restart: 2000 ms + backoff 100..15000 ms; errored after 15 runs shorter than 1000 ms\n"),
            "{d}"
        );
        assert!(
            d.contains(&format!(
                "    cron restart: 0 3 * * * (rolling reload; next {})\n",
                herd_core::schedule::local_time(next)
            )),
            "{d}"
        );
        a.next_cron_restart_ms = None;
        a.spec = Some(Box::new(AppSpec {
            cron_restart: Some("@daily".into()),
            ..AppSpec::default()
        }));
        let d = describe(&a);
        assert!(
            d.contains("         restart: backoff 100..15000 ms;"),
            "{d}"
        );
        assert!(
            d.contains("    cron restart: @daily (rolling reload, while the app runs)\n"),
            "{d}"
        );
    }

    #[test]
    fn humane_units() {
        assert_eq!(human_bytes(1536), "1.5kb");
        assert_eq!(human_bytes(5 << 20), "5.0mb");
        assert_eq!(human_ms(61_000), "1m");
        assert_eq!(human_ms(999), "0s");
    }
}
