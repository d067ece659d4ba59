//! What a command does with the daemon's reply: print the apps or the message it carries,
//! pass its warnings on, or turn an error reply into the command's failure. The formatting
//! itself is `output`'s.

use std::process::ExitCode;

use anyhow::{bail, Result};
use herd_daemon::Home;
use herd_proto::{AppInfo, Command, Reply};

use crate::client::Client;
use crate::output;

/// Sends `cmd` and prints the apps (or the message) of its reply.
pub fn apps(home: &Home, cmd: Command, json: bool) -> Result<ExitCode> {
    let reply = Client::connect(home)?.call(cmd)?;
    print_apps(reply, json)
}

/// Prints the apps of an `apps` reply as a table (or JSON), or a `done` message.
pub fn print_apps(reply: Reply, json: bool) -> Result<ExitCode> {
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
pub fn warn_user(reply: &Reply) {
    if let Reply::Apps { warnings, .. } = reply {
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
}

/// The apps of an `apps` reply; anything else is an error.
pub fn expect_apps(reply: Reply) -> Result<Vec<AppInfo>> {
    match reply {
        Reply::Apps { apps, .. } => Ok(apps),
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}

/// Prints a `done` message or a `message` reply's data; anything else is an error.
pub fn print_reply(reply: Reply) -> Result<ExitCode> {
    match reply {
        Reply::Done { message, .. } => println!("{message}"),
        Reply::Message { data, .. } => println!("{data}"),
        other => return unexpected(other),
    }
    Ok(ExitCode::SUCCESS)
}

/// The failure of a command that got an error, or a reply it did not expect.
pub fn unexpected(reply: Reply) -> Result<ExitCode> {
    match reply {
        Reply::Error { error, .. } => bail!("{}", error.message),
        other => bail!("unexpected reply from the daemon: {other:?}"),
    }
}
