//! PM2's small inspection commands: `herd pid`, `herd env`, `herd report`, and the order of
//! `herd list --sort`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use herd_daemon::Home;
use herd_proto::{masked_value, AppInfo, Command};

use crate::client::Client;
use crate::reply;

/// The apps of `target` (`all` for every one), as `list` gives them.
fn apps(home: &Home, target: &str) -> Result<Vec<AppInfo>> {
    let reply = Client::connect(home)?.call(Command::Describe {
        target: target.to_string(),
    })?;
    reply::expect_apps(reply)
}

/// `herd pid [APP]`: the pids of the app's running instances (every app's without one), one
/// per line, as `pm2 pid`.
pub fn pid(home: &Home, target: Option<String>) -> Result<ExitCode> {
    for app in apps(home, target.as_deref().unwrap_or("all"))? {
        for p in app.primary.iter().chain(&app.processes) {
            if let Some(pid) = p.pid {
                println!("{pid}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `herd env APP:i`: the environment instance `i` of APP runs with (read from the process),
/// values of secret-looking keys masked unless `--show-secrets`, as `pm2 env`.
pub fn env(home: &Home, target: &str, show_secrets: bool) -> Result<ExitCode> {
    let (name, i) = match target.rsplit_once(':') {
        Some((n, i)) => (n, i.parse::<u32>().ok()),
        None => (target, Some(0)),
    };
    let Some(i) = i else {
        bail!("herd env takes APP:INSTANCE (e.g. api:0), not {target:?}");
    };
    let list = apps(home, name)?;
    let Some(p) = list
        .iter()
        .flat_map(|a| &a.processes)
        .find(|p| p.instance == i)
    else {
        bail!("{name} has no instance {i}; `herd list` shows them");
    };
    let Some(pid) = p.pid else {
        bail!("instance {i} of {name} is not running");
    };
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("cannot read the environment of pid {pid}"))?;
    let mut vars: Vec<(String, String)> = raw
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            }
        })
        .collect();
    vars.sort();
    for (k, v) in vars {
        let v = if show_secrets {
            v
        } else {
            masked_value(&k, &v)
        };
        println!("{k}={v}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Orders apps for `herd list --sort FIELD[:desc]`: `name`, `id`, `cpu`, `memory`,
/// `restarts` or `uptime` (an app's instances summed; uptime: its longest).
pub fn sort(apps: &mut [AppInfo], how: &str) -> Result<()> {
    let (field, desc) = match how.split_once(':') {
        Some((f, "desc")) => (f, true),
        Some((f, "asc")) => (f, false),
        Some((_, o)) => bail!("--sort {how}: the order is asc or desc, not {o:?}"),
        None => (how, false),
    };
    let key = |a: &AppInfo| -> f64 {
        let ps = a.processes.iter();
        match field {
            "cpu" => ps.filter_map(|p| p.cpu_percent).sum(),
            "memory" | "mem" => ps.filter_map(|p| p.memory_bytes).sum::<u64>() as f64,
            "restarts" => ps.map(|p| f64::from(p.restarts)).sum(),
            "uptime" => ps.filter_map(|p| p.uptime_ms).max().unwrap_or(0) as f64,
            _ => f64::from(a.id),
        }
    };
    match field {
        "name" => apps.sort_by(|a, b| a.name.cmp(&b.name)),
        "id" | "cpu" | "memory" | "mem" | "restarts" | "uptime" => {
            apps.sort_by(|a, b| key(a).total_cmp(&key(b)))
        }
        _ => bail!("--sort {how}: sort by name, id, cpu, memory, restarts or uptime (add :desc to reverse)"),
    }
    if desc {
        apps.reverse();
    }
    Ok(())
}

/// `herd report`: what to paste into a bug report — versions, the machine, the daemon, the
/// apps (secrets masked), and the end of the daemon's log.
pub fn report(home: &Home) -> Result<ExitCode> {
    println!("herd report — paste it whole into an issue (secret-looking values are masked)\n");
    println!("herd {}", env!("CARGO_PKG_VERSION"));
    let uname = nix::sys::utsname::uname().ok();
    if let Some(u) = &uname {
        println!(
            "system: {} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        );
    }
    println!(
        "cpus: {}",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    for (what, cmd) in [("node", "node"), ("python3", "python3")] {
        let v = std::process::Command::new(cmd)
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "not found".into());
        println!("{what}: {v}");
    }
    println!("HERD_HOME: {}", home.dir.display());
    match Client::connect_existing(home) {
        Ok(Some(mut c)) => {
            match c.call(Command::Ping) {
                Ok(herd_proto::Reply::Pong { version, pid, .. }) => {
                    println!("daemon: pid {pid}, herd {version}")
                }
                Ok(other) => println!("daemon: answered {other:?}"),
                Err(e) => println!("daemon: {e:#}"),
            }
            match c.call(Command::Describe {
                target: "all".into(),
            }) {
                Ok(reply) => {
                    let apps: Vec<AppInfo> = reply::expect_apps(reply)
                        .unwrap_or_default()
                        .into_iter()
                        .map(crate::output::masked)
                        .collect();
                    println!("\napps:");
                    print!("{}", crate::output::table(&apps));
                    for a in &apps {
                        println!("\n{}", crate::output::describe(a));
                    }
                }
                Err(e) => println!("apps: {e:#}"),
            }
        }
        Ok(None) => println!("daemon: not running"),
        Err(e) => println!("daemon: {e:#}"),
    }
    let log = home.dir.join("daemon.log");
    match std::fs::read_to_string(&log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            println!("\nlast lines of {}:", log.display());
            for l in lines.iter().skip(lines.len().saturating_sub(30)) {
                println!("  {l}");
            }
        }
        Err(e) => println!("\n{}: {e}", log.display()),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: u32, name: &str, cpu: f64) -> AppInfo {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "status": "running", "listen": [], "port": null,
            "balance": "hash",
            "processes": [{"instance": 0, "pid": 1, "status": "online", "restarts": id,
                "uptime_ms": 10, "cpu_percent": cpu, "memory_bytes": 100, "messages_dropped": 0,
                "subscriptions": 0, "bus_refused": 0, "last_exit": null, "env_version": 1}],
        }))
        .unwrap()
    }

    #[test]
    fn list_sorts_by_a_field_either_way() {
        let mut apps = vec![app(0, "b", 5.0), app(1, "a", 1.0), app(2, "c", 9.0)];
        sort(&mut apps, "name").unwrap();
        assert_eq!(
            apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        sort(&mut apps, "cpu:desc").unwrap();
        assert_eq!(
            apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        sort(&mut apps, "restarts").unwrap();
        assert_eq!(apps.iter().map(|a| a.id).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(sort(&mut apps, "colour")
            .unwrap_err()
            .to_string()
            .contains("sort by name"));
        assert!(sort(&mut apps, "cpu:up").is_err());
    }
}
