//! The commands on the daemon itself: `daemon` (the daemon, started by the first command
//! that needs it; its boot is `herd_daemon::boot`), `ping`, `update` and `kill`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use herd_daemon::{boot, Home};
use herd_proto::{Command, ErrorCode, Reply};

use crate::client::Client;
use crate::reply;

/// `herd daemon`: a fresh start, or the takeover of the previous program after `herd update`.
pub fn run(home: &Home) -> Result<ExitCode> {
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

/// `HERD_LOG`, else `info` for herd. The Kafka client is left out by default: it logs every
/// connection it makes and every retry at info and warn (dozens of lines a second while the
/// broker is away), and the bridge says itself what matters (`HERD_LOG=info,rskafka=info`
/// brings them back).
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rskafka=off"))
}

/// `herd ping`: which daemon answers, and where.
pub fn ping(home: &Home) -> Result<ExitCode> {
    match Client::connect(home)?.call(Command::Ping)? {
        Reply::Pong { version, pid, .. } => {
            println!(
                "herd daemon {version} (pid {pid}) at {}",
                home.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        other => reply::unexpected(other),
    }
}

/// `herd update`: the daemon runs this binary in place, keeping every instance.
pub fn update(home: &Home) -> Result<ExitCode> {
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
        other => reply::unexpected(other),
    }
}

/// `herd kill`: stops every app, then the daemon, and waits for it to be gone.
pub fn kill(home: &Home) -> Result<ExitCode> {
    let Some(mut client) = Client::connect_existing(home)? else {
        println!("no herd daemon runs for {}", home.dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    match client.call(Command::Kill)? {
        Reply::Done { message, .. } => println!("{message}"),
        other => return reply::unexpected(other),
    }
    // Wait until the daemon has released its lock (its process has exited), so a following
    // command starts a fresh one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while herd_daemon::lock_held(home) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Ok(ExitCode::SUCCESS)
}
