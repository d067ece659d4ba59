//! The commands on apps' logs: `logs` (past lines, then new ones with `--follow`), `flush`
//! and `reload-logs`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use herd_daemon::Home;
use herd_proto::{Command, LogStream, Reply};

use crate::args::{FlushArgs, LogsArgs};
use crate::client::Client;
use crate::{output, reply};

/// `herd logs`: a stream of lines, followed across `herd update`.
pub fn show(home: &Home, l: LogsArgs) -> Result<ExitCode> {
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
                    serde_json::json!({"app": app, "instance": if instance == herd_proto::AppSpec::PRIMARY { serde_json::Value::from("primary") } else { instance.into() }, "stream": stream, "line": line})
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
            Some(other) => return reply::unexpected(other),
        }
    }
}

/// `herd flush`: empties apps' log files.
pub fn flush(home: &Home, f: FlushArgs) -> Result<ExitCode> {
    reply::print_reply(Client::connect(home)?.call(Command::Flush { target: f.target })?)
}

/// `herd reload-logs`: opens every log file again (after logrotate).
pub fn reopen(home: &Home) -> Result<ExitCode> {
    reply::print_reply(Client::connect(home)?.call(Command::ReloadLogs)?)
}
