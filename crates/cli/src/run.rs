//! `herd run`: apps in the foreground, for containers and systemd. Its boot (the lock and
//! control socket with `--control`, a takeover after `herd update`) is
//! `herd_daemon::boot::Foreground`; what is here runs the apps: their output on ours, the
//! signals, READY/STOPPING, and the exit code.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use herd_core::Supervisor;
use herd_daemon::{boot, Home};
use herd_proto::{AppInfo, AppSpec, Command, LogStream, Reply};

use crate::args::RunArgs;
use crate::{appfile, apps, dump, output};

/// `herd run`: apps in the foreground, output to our stdout/stderr; SIGINT/SIGTERM stop them
/// gracefully. Made for containers: as PID 1 it reaps orphans (the supervisor is a
/// subreaper), and it exits once every app has stopped for good, with status 0 only if all of
/// them ended well. Under systemd (`NOTIFY_SOCKET`) it says READY=1 and STOPPING=1.
pub fn foreground(r: &RunArgs) -> Result<ExitCode> {
    let a = &r.start;
    let home = Home::from_env();
    // With --control, the apps outlive this process: a keeper runs it as its child and
    // starts the next one if it dies (docs/keeper.md). Taken first: nothing started from here
    // may inherit the link.
    let keeper = if r.control {
        herd_core::keeper::Link::from_env().map(std::sync::Arc::new)
    } else {
        None
    };
    if r.control && keeper.is_none() {
        if let Some(status) = boot::keep_foreground() {
            return Ok(ExitCode::from(status));
        }
    }
    // `herd update` of a `herd run --control`: this process ran the previous program, and
    // takes over its state instead of starting apps.
    let takeover = if r.control {
        boot::Takeover::from_env()?
    } else {
        None
    };
    let specs = if takeover.is_some() {
        Vec::new()
    } else if r.resurrect {
        dump::saved_specs(&home)?
    } else if a.script.is_empty() {
        bail!("herd run needs a program, a script or an app file (or --resurrect)");
    } else if appfile::is_app_file(std::path::Path::new(&a.script)) {
        apps::load_app_file(a)?
    } else {
        vec![a.to_spec()?]
    };
    let dir = tempfile::Builder::new()
        .prefix("herd-run-")
        .tempdir()
        .context("creating a runtime directory")?;
    // With --control this process is HERD_HOME's daemon, in the foreground.
    let boot = match takeover {
        Some(t) => boot::Foreground::TakeOver(t),
        None if r.control => boot::Foreground::control(&home)?,
        None => boot::Foreground::Private {
            dir: dir.path().to_path_buf(),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let link = keeper.clone();
    let code = rt.block_on(run_apps(boot, keeper, home, specs, r));
    // Stopped for good (or failed): the keeper lets go of everything and ends with this
    // process instead of starting another.
    if let Some(k) = link {
        k.bye();
    }
    code
}

/// Starts the supervisor and `specs` in it, prints their output, and runs until a signal,
/// `herd kill` or (without `--keep-alive`) the end of every app; then stops them all.
async fn run_apps(
    boot: boot::Foreground,
    keeper: Option<std::sync::Arc<herd_core::keeper::Link>>,
    home: Home,
    specs: Vec<AppSpec>,
    r: &RunArgs,
) -> Result<ExitCode> {
    let taken_over = boot.takes_over();
    let boot::Running {
        supervisor: sup,
        mut done,
        control,
        ..
    } = boot.start(&home, keeper).await?;
    let printer = print_output(&sup, r.json_logs);
    let mut life = sup.subscribe_lifecycle();
    for spec in specs {
        match sup
            .request(Command::Start {
                spec: Box::new(spec),
            })
            .await
        {
            Reply::Apps { apps, .. } => eprint!("{}", output::table(&apps)),
            Reply::Error { error, .. } => {
                sup.request(Command::Kill).await;
                bail!("{}", error.message)
            }
            _ => {}
        }
    }
    if !taken_over {
        let _ = herd::notify("READY=1");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut stopped = false;
    let code = loop {
        tokio::select! {
            _ = term.recv() => break ExitCode::SUCCESS,
            _ = int.recv() => break ExitCode::SUCCESS,
            // `herd kill` through the control socket (--control) stopped everything.
            _ = &mut done => {
                stopped = true;
                break ExitCode::SUCCESS;
            }
            ev = life.recv() => {
                if r.keep_alive || !matches!(ev, Ok(herd_core::Lifecycle::Exited { .. })) {
                    continue;
                }
                // Give the supervisor a moment to decide on restarts, then look.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                if let Reply::Apps { apps, .. } = sup.request(Command::List).await {
                    if let Some(code) = finished(&apps) {
                        eprintln!("[herd] every app has stopped for good");
                        break code;
                    }
                }
            }
        }
    };
    let _ = herd::notify("STOPPING=1");
    if !stopped {
        eprintln!("[herd] stopping");
        sup.request(Command::Kill).await;
        let _ = done.await;
    }
    printer.abort();
    if let Some(c) = control {
        herd_daemon::kills_answered().await;
        c.close();
    }
    Ok(code)
}

/// Prints every line the apps write on our stdout or stderr (as they wrote it), until
/// aborted.
fn print_output(sup: &Supervisor, json_logs: bool) -> tokio::task::JoinHandle<()> {
    let mut logs = sup.subscribe_logs();
    tokio::spawn(async move {
        loop {
            match logs.recv().await {
                Ok(ev) => {
                    let line = if json_logs {
                        serde_json::json!({
                            "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                            "app": &*ev.app, "instance": ev.instance, "stream": ev.stream, "line": ev.line,
                        })
                        .to_string()
                    } else {
                        output::log_line(&ev.app, ev.instance, ev.stream, &ev.line)
                    };
                    // A write that fails (a full disk, a closed pipe) drops the line;
                    // println! would panic and take every app down.
                    let _ = match ev.stream {
                        LogStream::Out => writeln!(std::io::stdout(), "{line}"),
                        LogStream::Err => writeln!(std::io::stderr(), "{line}"),
                    };
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let _ = writeln!(std::io::stderr(), "[herd] {n} log lines skipped");
                }
                Err(_) => return,
            }
        }
    })
}

/// `Some(exit code)` when no instance runs or will be restarted: 0 if every one ended well.
fn finished(apps: &[AppInfo]) -> Option<ExitCode> {
    use herd_proto::ProcessStatus as S;
    let all: Vec<_> = apps.iter().flat_map(|a| &a.processes).collect();
    if all
        .iter()
        .any(|p| !matches!(p.status, S::Stopped | S::Exited | S::Errored))
    {
        return None;
    }
    let clean = all
        .iter()
        .all(|p| p.status != S::Errored && p.last_exit.as_ref().is_none_or(|e| e.code == Some(0)));
    Some(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
