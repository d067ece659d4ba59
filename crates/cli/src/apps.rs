//! The commands on apps: `start`, `stop`, `restart`, `reload`, `delete`, `list`,
//! `describe`, `scale`. Each sends one command and prints the apps of the reply.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use herd_daemon::Home;
use herd_proto::{AppSpec, Command, ErrorCode, Reply, ScaleTo};

use crate::args::{self, DescribeArgs, ListArgs, RestartArgs, ScaleArgs, StartArgs, Target};
use crate::client::Client;
use crate::{appfile, output, reply};

/// `herd start`: a program, a script, an app file, or a stopped app's name.
pub fn start(home: &Home, a: &StartArgs) -> Result<ExitCode> {
    if a.script.is_empty() {
        bail!("herd start needs a program, a script, an app file or an app's name: herd start ./server -i 2 --port 8000");
    }
    let mut client = Client::connect(home)?;
    if appfile::is_app_file(std::path::Path::new(&a.script)) {
        let specs = load_app_file(a)?;
        // Some of its apps run already: PM2's startOrRestart, as `herd apply` does it (new
        // apps start, changed ones are reloaded with their new spec, the rest untouched).
        let running = match client.call(Command::List)? {
            Reply::Apps { apps, .. } => apps,
            _ => Vec::new(),
        };
        if specs
            .iter()
            .any(|s| running.iter().any(|r| r.name == s.name))
        {
            return crate::apply::apply(home, &file_apply(&a.script, a.env.clone(), false));
        }
        let mut apps = Vec::new();
        for spec in specs {
            let name = spec.name.clone();
            match client.call(Command::Start {
                spec: Box::new(spec),
            })? {
                Reply::Apps { apps: mut got, .. } => apps.append(&mut got),
                Reply::Error { error, .. } => bail!("app {name}: {}", error.message),
                other => return reply::unexpected(other),
            }
        }
        return reply::print_apps(Reply::apps(apps), a.json);
    }
    let looks_like_file = std::env::current_dir()?.join(&a.script).exists()
        || a.script.contains('/')
        || a.script.contains(char::is_whitespace)
        || args::interpreter_for(std::path::Path::new(&a.script)).is_some();
    if !looks_like_file {
        // `herd start api` starts a stopped app again, as in PM2.
        match client.call(Command::Resume {
            target: a.script.clone(),
        })? {
            Reply::Error { error, .. } if error.code == ErrorCode::UnknownApp => {
                // Not an app: maybe a program on PATH.
            }
            reply => return reply::print_apps(reply, a.json),
        }
    }
    let spec = a.to_spec()?;
    if let Some(note) = primary_hint(&spec) {
        eprintln!("{note}");
    }
    let reply = client.call(Command::Start {
        spec: Box::new(spec),
    })?;
    reply::print_apps(reply, a.json)
}

/// A Node script with cluster code started without `--primary` runs as workers only, as under
/// PM2: say so once, so that a primary's missing `exit` lines are not a mystery.
fn primary_hint(spec: &AppSpec) -> Option<String> {
    if !spec.node || spec.primary {
        return None;
    }
    let path = std::path::Path::new(&spec.cwd).join(&spec.script);
    let text = std::fs::read_to_string(path).ok()?;
    let forks = text.contains("cluster.fork(") || text.contains(".fork(");
    let branches = text.contains("isPrimary") || text.contains("isMaster");
    (forks && branches && text.contains("cluster")).then(|| {
        format!(
            "note: {} has its own cluster primary (cluster.fork); herd runs it as cluster workers only, as PM2 does, so its isPrimary branch does not run. To run that branch too, with herd underneath: herd start {} --primary",
            spec.script, spec.script
        )
    })
}

/// The apps of the app file `a.script`, with the env block chosen by `--env`.
pub fn load_app_file(a: &StartArgs) -> Result<Vec<AppSpec>> {
    let blocks = a.env_blocks();
    if blocks.len() > 1 {
        bail!("select one env block with --env NAME, not {blocks:?}");
    }
    appfile::load(
        std::path::Path::new(&a.script),
        blocks.first().copied(),
        &a.env_vars(),
    )
}

/// `herd stop`.
pub fn stop(home: &Home, t: Target) -> Result<ExitCode> {
    if appfile::is_app_file(std::path::Path::new(&t.target)) {
        return each_app_of_file(home, &t, |target| Command::Stop { target });
    }
    reply::apps(home, Command::Stop { target: t.target }, t.json)
}

/// `herd stop FILE` / `herd delete FILE` (PM2's): the command for each app the file names
/// that herd has; the others are said to be absent.
fn each_app_of_file(home: &Home, t: &Target, cmd: impl Fn(String) -> Command) -> Result<ExitCode> {
    let specs = appfile::load(std::path::Path::new(&t.target), None, &[])?;
    let mut client = Client::connect(home)?;
    let mut done = Vec::new();
    for s in specs {
        match client.call(cmd(s.name.clone()))? {
            Reply::Error { error, .. } if error.code == ErrorCode::UnknownApp => {
                eprintln!("{}: not running under herd; nothing to do", s.name);
            }
            Reply::Error { error, .. } => bail!("{}: {}", s.name, error.message),
            Reply::Apps { apps, .. } => done.extend(apps),
            Reply::Done { message, .. } if !t.json => println!("{message}"),
            _ => {}
        }
    }
    if done.is_empty() && !t.json {
        return Ok(ExitCode::SUCCESS);
    }
    reply::print_apps(Reply::apps(done), t.json)
}

/// `herd apply FILE` with these options and nothing else.
fn file_apply(file: &str, env: Vec<String>, update_env: bool) -> crate::args::ApplyArgs {
    crate::args::ApplyArgs {
        file: file.to_string(),
        only: Vec::new(),
        env,
        dry_run: false,
        prune: false,
        update_env,
    }
}

/// `herd restart`.
pub fn restart(home: &Home, t: RestartArgs) -> Result<ExitCode> {
    // `herd restart FILE`: its apps as the file says (`herd apply`), then each restarted.
    if appfile::is_app_file(std::path::Path::new(&t.target)) {
        let code = crate::apply::apply(home, &file_apply(&t.target, Vec::new(), t.update_env))?;
        if code != ExitCode::SUCCESS {
            return Ok(code);
        }
        let specs = appfile::load(std::path::Path::new(&t.target), None, &[])?;
        for s in specs {
            reply::apps(
                home,
                Command::Restart {
                    target: s.name,
                    env: None,
                },
                t.json,
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let env = t.env();
    reply::apps(
        home,
        Command::Restart {
            target: t.target,
            env,
        },
        t.json,
    )
}

/// `herd reload`.
pub fn reload(home: &Home, t: RestartArgs) -> Result<ExitCode> {
    // `herd reload FILE`: PM2's startOrReload, i.e. `herd apply FILE`.
    if appfile::is_app_file(std::path::Path::new(&t.target)) {
        return crate::apply::apply(home, &file_apply(&t.target, Vec::new(), t.update_env));
    }
    let env = t.env();
    reply::apps(
        home,
        Command::Reload {
            target: t.target,
            env,
        },
        t.json,
    )
}

/// `herd delete`.
pub fn delete(home: &Home, t: Target) -> Result<ExitCode> {
    if appfile::is_app_file(std::path::Path::new(&t.target)) {
        return each_app_of_file(home, &t, |target| Command::Delete { target });
    }
    reply::apps(home, Command::Delete { target: t.target }, t.json)
}

/// `herd list`.
pub fn list(home: &Home, l: ListArgs) -> Result<ExitCode> {
    let Some(how) = l.sort else {
        return reply::apps(home, Command::List, l.json);
    };
    let reply = Client::connect(home)?.call(Command::List)?;
    reply::warn_user(&reply);
    let mut apps = reply::expect_apps(reply)?;
    crate::inspect::sort(&mut apps, &how)?;
    reply::print_apps(Reply::apps(apps), l.json)
}

/// `herd describe`: every detail of apps, then the bus's state.
pub fn describe(home: &Home, d: DescribeArgs) -> Result<ExitCode> {
    let reply = Client::connect(home)?.call(Command::Describe { target: d.target })?;
    let bus = match &reply {
        Reply::Apps { bus, .. } => bus.clone(),
        _ => None,
    };
    reply::warn_user(&reply);
    let apps = reply::expect_apps(reply)?;
    if d.json {
        let apps: Vec<_> = apps.into_iter().map(output::masked).collect();
        println!("{}", serde_json::to_string_pretty(&apps)?);
    } else {
        for (i, app) in apps.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", output::describe(app));
        }
        if let Some(bus) = bus {
            println!();
            print!("{}", output::bus_stats(&bus));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `herd scale APP N|+N|-N`.
pub fn scale(home: &Home, s: ScaleArgs) -> Result<ExitCode> {
    let to = if let Some(d) = s.to.strip_prefix('+') {
        ScaleTo::Delta(d.parse().context("scale takes N, +N or -N")?)
    } else if s.to.starts_with('-') {
        ScaleTo::Delta(s.to.parse().context("scale takes N, +N or -N")?)
    } else {
        ScaleTo::Exactly(
            s.to.parse()
                .map_err(|_| anyhow::anyhow!("scale takes N, +N or -N, not {:?}", s.to))?,
        )
    };
    reply::apps(
        home,
        Command::Scale {
            target: s.target,
            to,
        },
        s.json,
    )
}
