//! `herd`: the command line and, as `herd daemon`, the daemon itself.

mod appfile;
mod args;
mod client;
mod dump;
mod output;

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use herd_daemon::{boot, Home};
use herd_proto::{Command, ErrorCode, LogStream, Reply, ScaleTo};

use args::{Cli, Cmd};
use client::Client;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!(": {cause}"));
            }
            // Never a panic, even with stderr on a full disk.
            let _ = writeln!(std::io::stderr(), "{msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::from_env();
    match cli.cmd {
        Cmd::Daemon => daemon(&home),
        Cmd::Run(r) => foreground(&r),
        Cmd::Start(a) => start(&home, &a),
        Cmd::Stop(t) => apps_reply(&home, Command::Stop { target: t.target }, t.json),
        Cmd::Restart(t) => {
            let env = t.env();
            apps_reply(
                &home,
                Command::Restart {
                    target: t.target,
                    env,
                },
                t.json,
            )
        }
        Cmd::Reload(t) => {
            let env = t.env();
            apps_reply(
                &home,
                Command::Reload {
                    target: t.target,
                    env,
                },
                t.json,
            )
        }
        Cmd::Delete(t) => apps_reply(&home, Command::Delete { target: t.target }, t.json),
        Cmd::List(j) => apps_reply(&home, Command::List, j.json),
        Cmd::Describe(d) => {
            let reply = Client::connect(&home)?.call(Command::Describe { target: d.target })?;
            let bus = match &reply {
                Reply::Apps { bus, .. } => bus.clone(),
                _ => None,
            };
            warn_user(&reply);
            let apps = expect_apps(reply)?;
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
        Cmd::Scale(s) => {
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
            apps_reply(
                &home,
                Command::Scale {
                    target: s.target,
                    to,
                },
                s.json,
            )
        }
        Cmd::Logs(l) => logs(&home, l),
        Cmd::Send(a) => print_reply(Client::connect(&home)?.call(Command::Send {
            to: a.to,
            topic: a.topic,
            data: args::message_data(&a.data),
        })?),
        Cmd::Request(a) => {
            let reply = Client::connect(&home)?.call(Command::Request {
                to: a.to,
                topic: a.topic,
                data: args::message_data(&a.data),
                timeout_ms: a.timeout.as_millis() as u64,
            })?;
            print_reply(reply)
        }
        Cmd::Publish(a) => print_reply(Client::connect(&home)?.call(Command::Publish {
            topic: a.topic,
            data: args::message_data(&a.data),
        })?),
        Cmd::Bus(a) => {
            let mut client = Client::connect(&home)?;
            client.send(Command::Bus {
                topics: a.topics.clone(),
            })?;
            let mut resumed = false;
            let stdout = std::io::stdout();
            loop {
                match client.recv()? {
                    // `herd update` ends the old daemon's stream: watch the new one's.
                    None => match Client::connect_existing(&home)? {
                        Some(mut again) => {
                            again.send(Command::Bus {
                                topics: a.topics.clone(),
                            })?;
                            client = again;
                            resumed = true;
                        }
                        None => return Ok(ExitCode::SUCCESS),
                    },
                    // The daemon was going away, not being replaced.
                    Some(Reply::Error { .. }) if resumed => return Ok(ExitCode::SUCCESS),
                    Some(Reply::Bus { message, .. }) => {
                        let line = if a.json {
                            message.to_string()
                        } else {
                            output::bus_line(&message)
                        };
                        let mut out = stdout.lock();
                        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    Some(other) => return unexpected(other),
                }
            }
        }
        Cmd::Save(s) => dump::save(&home, s.force),
        Cmd::Resurrect(j) => dump::resurrect(&home, j.json),
        Cmd::Startup(s) => dump::startup(&home, &s.system, s.install),
        Cmd::Kill => kill(&home),
        Cmd::Flush(f) => {
            print_reply(Client::connect(&home)?.call(Command::Flush { target: f.target })?)
        }
        Cmd::ReloadLogs => print_reply(Client::connect(&home)?.call(Command::ReloadLogs)?),
        Cmd::Update => update(&home),
        Cmd::Ping => match Client::connect(&home)?.call(Command::Ping)? {
            Reply::Pong { version, pid, .. } => {
                println!(
                    "herd daemon {version} (pid {pid}) at {}",
                    home.dir.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            other => unexpected(other),
        },
    }
}

fn start(home: &Home, a: &args::StartArgs) -> Result<ExitCode> {
    if a.script.is_empty() {
        bail!("herd start needs a program, a script, an app file or an app's name: herd start ./server -i 2 --port 8000");
    }
    let mut client = Client::connect(home)?;
    if appfile::is_app_file(std::path::Path::new(&a.script)) {
        let specs = load_app_file(a)?;
        let mut apps = Vec::new();
        for spec in specs {
            let name = spec.name.clone();
            match client.call(Command::Start {
                spec: Box::new(spec),
            })? {
                Reply::Apps { apps: mut got, .. } => apps.append(&mut got),
                Reply::Error { error, .. } => bail!("app {name}: {}", error.message),
                other => return unexpected(other),
            }
        }
        return print_apps(Reply::apps(apps), a.json);
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
            reply => return print_apps(reply, a.json),
        }
    }
    let spec = a.to_spec()?;
    let reply = client.call(Command::Start {
        spec: Box::new(spec),
    })?;
    print_apps(reply, a.json)
}

fn load_app_file(a: &args::StartArgs) -> Result<Vec<herd_proto::AppSpec>> {
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

fn apps_reply(home: &Home, cmd: Command, json: bool) -> Result<ExitCode> {
    let reply = Client::connect(home)?.call(cmd)?;
    print_apps(reply, json)
}

fn print_apps(reply: Reply, json: bool) -> Result<ExitCode> {
    if let Reply::Done { message, .. } = &reply {
        if json {
            println!("{}", serde_json::json!({ "message": message }));
        } else {
            println!("{message}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    warn_user(&reply);
    let apps = expect_apps(reply)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
    } else {
        print!("{}", output::table(&apps));
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's warnings (writes failing on a full disk, …), on stderr so that `--json`
/// output stays parseable.
fn warn_user(reply: &Reply) {
    if let Reply::Apps { warnings, .. } = reply {
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
}

fn expect_apps(reply: Reply) -> Result<Vec<herd_proto::AppInfo>> {
    match reply {
        Reply::Apps { apps, .. } => Ok(apps),
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Prints a `done` message or a `message` reply's data; anything else is an error.
fn print_reply(reply: Reply) -> Result<ExitCode> {
    match reply {
        Reply::Done { message, .. } => println!("{message}"),
        Reply::Message { data, .. } => println!("{data}"),
        other => return unexpected(other),
    }
    Ok(ExitCode::SUCCESS)
}

fn unexpected(reply: Reply) -> Result<ExitCode> {
    match reply {
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

fn logs(home: &Home, l: args::LogsArgs) -> Result<ExitCode> {
    let stream = if l.err {
        Some(LogStream::Err)
    } else if l.out {
        Some(LogStream::Out)
    } else {
        None
    };
    let mut client = Client::connect(home)?;
    let ask = |lines| Command::Logs {
        target: l.target.clone(),
        lines,
        follow: l.follow,
        stream,
    };
    client.send(ask(l.lines))?;
    let mut resumed = false;
    let stdout = std::io::stdout();
    loop {
        match client.recv()? {
            // `herd update` ends the stream of the old daemon: follow the new one.
            None if l.follow => match Client::connect_existing(home)? {
                Some(mut again) => {
                    again.send(ask(0))?;
                    client = again;
                    resumed = true;
                }
                None => return Ok(ExitCode::SUCCESS),
            },
            // The daemon was going away, not being replaced.
            Some(Reply::Error { .. }) if resumed => return Ok(ExitCode::SUCCESS),
            None | Some(Reply::End { .. }) => return Ok(ExitCode::SUCCESS),
            Some(Reply::Log {
                app,
                instance,
                stream,
                line,
                ..
            }) => {
                let mut out = stdout.lock();
                let text = if l.json {
                    serde_json::json!({"app": app, "instance": instance, "stream": stream, "line": line})
                        .to_string()
                } else {
                    output::log_line(&app, instance, stream, &line)
                };
                if writeln!(out, "{text}").is_err() {
                    // The reader (e.g. `head`) went away.
                    return Ok(ExitCode::SUCCESS);
                }
                if l.follow {
                    let _ = out.flush();
                }
            }
            Some(other) => return unexpected(other),
        }
    }
}

fn update(home: &Home) -> Result<ExitCode> {
    let Some(mut client) = Client::connect_existing(home)? else {
        println!(
            "no herd daemon runs for {}; the next herd command starts this one",
            home.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let exe = std::env::current_exe().context("finding this herd binary")?;
    let reply = client
        .call(Command::Update {
            exe: exe.display().to_string(),
            formats: vec![herd_core::handover::FORMAT],
        })
        .context("the daemon went away during the update; see daemon.log in HERD_HOME")?;
    match reply {
        Reply::Done { message, .. } => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Reply::Error { error, .. } if error.code == ErrorCode::BadRequest => bail!(
            "this daemon cannot update in place ({}); use `herd save && herd kill && herd resurrect`",
            error.message
        ),
        other => unexpected(other),
    }
}

fn kill(home: &Home) -> Result<ExitCode> {
    let Some(mut client) = Client::connect_existing(home)? else {
        println!("no herd daemon runs for {}", home.dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    match client.call(Command::Kill)? {
        Reply::Done { message, .. } => println!("{message}"),
        other => return unexpected(other),
    }
    // Wait until the daemon has released its lock (its process has exited), so a following
    // command starts a fresh one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while herd_daemon::lock_held(home) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// `herd daemon`: a fresh start, or the takeover of the previous program after `herd update`.
fn daemon(home: &Home) -> Result<ExitCode> {
    match boot::handover_fd() {
        Some(fd) => boot::after_update(home, fd, init_daemon_tracing)?,
        None => boot::fresh(home, init_daemon_tracing)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The daemon's tracing, to `daemon.log` (rotated by size, opened again on SIGHUP, never
/// failing).
fn init_daemon_tracing(log: herd_daemon::log::DaemonLog) {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(false)
        .with_writer(move || log.clone())
        .log_internal_errors(false)
        .init();
}

fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// `herd run`: apps in the foreground, output to our stdout/stderr; SIGINT/SIGTERM stop them
/// gracefully. Made for containers: as PID 1 it reaps orphans (the supervisor is a
/// subreaper), and it exits once every app has stopped for good, with status 0 only if all of
/// them ended well. Under systemd (`NOTIFY_SOCKET`) it says READY=1 and STOPPING=1.
fn foreground(r: &args::RunArgs) -> Result<ExitCode> {
    let a = &r.start;
    let home = Home::from_env();
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
        load_app_file(a)?
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
    let json_logs = r.json_logs;
    let keep_alive = r.keep_alive;
    let taken_over = boot.takes_over();
    rt.block_on(async move {
        let boot::Running {
            supervisor: sup,
            mut done,
            control,
        } = boot.start(&home).await?;
        let mut logs = sup.subscribe_logs();
        let printer = tokio::spawn(async move {
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
        });
        let mut life = sup.subscribe_lifecycle();
        for spec in specs {
            match sup.request(Command::Start { spec: Box::new(spec) }).await {
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
                    if keep_alive || !matches!(ev, Ok(herd_core::Lifecycle::Exited { .. })) {
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
            c.close();
        }
        Ok(code)
    })
}

/// `Some(exit code)` when no instance runs or will be restarted: 0 if every one ended well.
fn finished(apps: &[herd_proto::AppInfo]) -> Option<ExitCode> {
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
