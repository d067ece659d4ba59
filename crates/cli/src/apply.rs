//! `herd apply FILE` (and `herd reload FILE`): make the daemon run what an app file says —
//! a plan first (apps to start, to reload with the fields that changed, to scale, untouched,
//! and those not in the file), then each step: `Start` for a new app, `Apply` (a rolling
//! reload with the new spec, or a scale) for a changed one, `Delete` with `--prune`.
//! `herd rollback APP` goes back to the previous spec. docs/apply.md.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Result};
use herd_daemon::Home;
use herd_proto::{AppInfo, AppSpec, Command, Reply};
use serde_json::Value;

use crate::args::{ApplyArgs, Target};
use crate::client::Client;
use crate::{appfile, reply};

/// What `apply` does with one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Start,
    /// A rolling reload with the new spec: the fields that changed (and the new size).
    Reload(Vec<String>, Option<(u32, u32)>),
    Scale(u32, u32),
    Unchanged,
    /// Running, not in the file: deleted with `--prune`, else left alone.
    NotInFile {
        prune: bool,
    },
}

/// The plan: each app of the file (in start order) and each running app not in it.
pub fn plan(
    file: &[AppSpec],
    running: &[AppInfo],
    update_env: bool,
    prune: bool,
) -> Vec<(String, Step)> {
    let mut out = Vec::new();
    for spec in file {
        let Some(cur) = running
            .iter()
            .find(|a| a.name == spec.name)
            .and_then(|a| a.spec.as_deref())
        else {
            out.push((spec.name.clone(), Step::Start));
            continue;
        };
        let fields = changed(cur, &merged(cur, spec, update_env));
        let size = (cur.instances != spec.instances).then_some((cur.instances, spec.instances));
        let step = match (fields.is_empty(), size) {
            (true, None) => Step::Unchanged,
            (true, Some((a, b))) => Step::Scale(a, b),
            (false, size) => Step::Reload(fields, size),
        };
        out.push((spec.name.clone(), step));
    }
    for app in running
        .iter()
        .filter(|a| !file.iter().any(|s| s.name == a.name))
    {
        out.push((app.name.clone(), Step::NotInFile { prune }));
    }
    out
}

/// The spec to send: the file's, but (without `--update-env`) the app's environment as it
/// runs, with the keys the file declares set, and those it no longer declares removed — the
/// shell `herd apply` runs in does not leak into the app (PM2's `--update-env` rule).
pub fn merged(cur: &AppSpec, new: &AppSpec, update_env: bool) -> AppSpec {
    if update_env {
        return new.clone();
    }
    let mut env: BTreeMap<String, String> = cur.env.clone();
    for gone in cur
        .declared_env
        .iter()
        .filter(|k| !new.declared_env.contains(k))
    {
        env.remove(gone);
    }
    for k in &new.declared_env {
        match new.env.get(k) {
            Some(v) => {
                env.insert(k.clone(), v.clone());
            }
            None => {
                env.remove(k);
            }
        }
    }
    AppSpec { env, ..new.clone() }
}

/// The fields that differ between the running spec and the new one, by their names in the
/// spec (`env` as `env.KEY`); the instance count is not one of them, nor a listen port 0
/// that the app got a port for.
pub fn changed(cur: &AppSpec, new: &AppSpec) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(cur), serde_json::to_value(new))
    else {
        return vec!["spec".into()];
    };
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        match k.as_str() {
            "instances" | "declared_env" => continue,
            "env" => {
                let names: std::collections::BTreeSet<&String> =
                    cur.env.keys().chain(new.env.keys()).collect();
                for n in names {
                    if cur.env.get(n) != new.env.get(n) {
                        out.push(format!("env.{n}"));
                    }
                }
                continue;
            }
            "log" => {
                // Named by option (log.out_file), as env is by variable.
                if let (Some(Value::Object(x)), Some(Value::Object(y))) = (a.get(k), b.get(k)) {
                    let fields: std::collections::BTreeSet<&String> =
                        x.keys().chain(y.keys()).collect();
                    for f in fields {
                        if x.get(f) != y.get(f) {
                            out.push(format!("log.{f}"));
                        }
                    }
                    continue;
                }
            }
            "listen" => {
                if !herd_proto::same_addresses(&cur.listen, &new.listen) {
                    out.push("listen".into());
                }
                continue;
            }
            _ => {}
        }
        if a.get(k) != b.get(k) {
            out.push(k.clone());
        }
    }
    out
}

fn shown(step: &Step) -> String {
    match step {
        Step::Start => "start (new)".into(),
        Step::Reload(fields, size) => {
            let mut s = format!("reload: {}", fields.join(", "));
            if let Some((a, b)) = size {
                s.push_str(&format!("; scale {a} → {b}"));
            }
            s
        }
        Step::Scale(a, b) => format!("scale {a} → {b}"),
        Step::Unchanged => "unchanged".into(),
        Step::NotInFile { prune: true } => "delete (not in the file; --prune)".into(),
        Step::NotInFile { prune: false } => {
            "left alone (not in the file; --prune deletes it)".into()
        }
    }
}

/// `herd apply FILE`.
pub fn apply(home: &Home, a: &ApplyArgs) -> Result<ExitCode> {
    let blocks: Vec<&str> = a
        .env
        .iter()
        .filter(|e| !e.contains('='))
        .map(String::as_str)
        .collect();
    if blocks.len() > 1 {
        bail!("select one env block with --env NAME, not {blocks:?}");
    }
    let vars: Vec<String> = a.env.iter().filter(|e| e.contains('=')).cloned().collect();
    let mut specs = appfile::load(
        std::path::Path::new(&a.file),
        blocks.first().copied(),
        &vars,
    )?;
    if !a.only.is_empty() {
        for n in &a.only {
            if !specs.iter().any(|s| s.name == *n) {
                bail!("--only {n}: {} has no app of that name", a.file);
            }
        }
        specs.retain(|s| a.only.contains(&s.name));
    }
    let mut client = Client::connect(home)?;
    let running = match client.call(Command::Describe {
        target: "all".into(),
    })? {
        Reply::Apps { apps, .. } => apps,
        Reply::Error { error, .. } if error.code == herd_proto::ErrorCode::UnknownApp => Vec::new(),
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => return reply::unexpected(other),
    };
    // With --only, apps outside it are not part of this apply.
    let running: Vec<AppInfo> = if a.only.is_empty() {
        running
    } else {
        running
            .into_iter()
            .filter(|r| a.only.contains(&r.name))
            .collect()
    };
    let steps = plan(&specs, &running, a.update_env, a.prune);
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    let _ = writeln!(
        out,
        "{}plan for {}:",
        if a.dry_run { "dry run: " } else { "" },
        a.file
    );
    for (name, step) in &steps {
        let _ = writeln!(out, "  {name}: {}", shown(step));
    }
    let _ = out.flush();
    if a.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0;
    for (name, step) in &steps {
        let cmd = match step {
            Step::Start => specs
                .iter()
                .find(|s| s.name == *name)
                .map(|s| Command::Start {
                    spec: Box::new(s.clone()),
                }),
            Step::Reload(..) | Step::Scale(..) => {
                let cur = running
                    .iter()
                    .find(|r| r.name == *name)
                    .and_then(|r| r.spec.as_deref());
                specs
                    .iter()
                    .find(|s| s.name == *name)
                    .zip(cur)
                    .map(|(s, cur)| Command::Apply {
                        spec: Box::new(merged(cur, s, a.update_env)),
                    })
            }
            Step::NotInFile { prune: true } => Some(Command::Delete {
                target: name.clone(),
            }),
            Step::Unchanged | Step::NotInFile { prune: false } => None,
        };
        let Some(cmd) = cmd else {
            continue;
        };
        match client.call(cmd)? {
            Reply::Error { error, .. } => {
                failed += 1;
                let _ = writeln!(out, "  {name}: failed: {}", error.message);
            }
            _ => {
                let _ = writeln!(out, "  {name}: done");
            }
        }
        let _ = out.flush();
    }
    if failed > 0 {
        let _ = writeln!(
            out,
            "{failed} of the steps failed; the apps they name kept what they ran"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `herd rollback APP`.
pub fn rollback(home: &Home, t: Target) -> Result<ExitCode> {
    reply::apps(home, Command::Rollback { target: t.target }, t.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> AppSpec {
        AppSpec {
            name: name.into(),
            script: "/srv/app.js".into(),
            instances: 2,
            env: [
                ("HOME".to_string(), "/root".to_string()),
                ("MODE".to_string(), "a".to_string()),
            ]
            .into(),
            declared_env: vec!["MODE".into()],
            ..AppSpec::default()
        }
    }

    fn info(s: &AppSpec) -> AppInfo {
        serde_json::from_value(serde_json::json!({
            "id": 0, "name": s.name, "status": "running", "listen": [], "port": null,
            "balance": "hash", "processes": [], "spec": s,
        }))
        .unwrap()
    }

    #[test]
    fn the_plan_names_what_changed_and_leaves_the_shell_out() {
        let running = [info(&spec("api")), info(&spec("old"))];
        let mut api = spec("api");
        api.env.insert("HOME".into(), "/home/other".into()); // the shell apply runs in
        api.env.insert("MODE".into(), "b".into());
        api.script = "/srv/app2.js".into();
        api.instances = 3;
        let mut web = spec("web");
        web.instances = 1;
        let steps = plan(&[api.clone(), web], &running, false, false);
        assert_eq!(
            steps,
            [
                (
                    "api".to_string(),
                    Step::Reload(vec!["env.MODE".into(), "script".into()], Some((2, 3)))
                ),
                ("web".to_string(), Step::Start),
                ("old".to_string(), Step::NotInFile { prune: false }),
            ]
        );
        // With --update-env the shell's variables count too.
        let steps = plan(&[api], &running, true, true);
        assert!(matches!(&steps[0].1, Step::Reload(f, _) if f.contains(&"env.HOME".to_string())));
        assert_eq!(steps[1].1, Step::NotInFile { prune: true });
        // Only the size: a scale; nothing: unchanged.
        let mut bigger = spec("api");
        bigger.instances = 4;
        assert_eq!(
            plan(&[bigger], &running[..1], false, false)[0].1,
            Step::Scale(2, 4)
        );
        assert_eq!(
            plan(&[spec("api")], &running[..1], false, false)[0].1,
            Step::Unchanged
        );
    }

    #[test]
    fn an_env_key_the_file_no_longer_declares_is_removed() {
        let cur = spec("api");
        let mut new = spec("api");
        new.env.remove("MODE");
        new.declared_env.clear();
        let m = merged(&cur, &new, false);
        assert_eq!(m.env.get("MODE"), None);
        assert_eq!(m.env.get("HOME").map(String::as_str), Some("/root"));
    }
}
