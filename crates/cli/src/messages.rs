//! The commands on the message bus: `send`, `request`, `publish`, and `bus`, which watches
//! every message that passes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use herd_daemon::Home;
use herd_proto::{Command, Reply};

use crate::args::{self, BusArgs, PublishArgs, RequestArgs, SendArgs, TriggerArgs};
use crate::client::Client;
use crate::{output, reply};

/// `herd send`: a message to instances.
pub fn send(home: &Home, a: SendArgs) -> Result<ExitCode> {
    reply::print_reply(Client::connect(home)?.call(Command::Send {
        to: a.to,
        topic: a.topic,
        data: args::message_data(&a.data),
    })?)
}

/// `herd request`: a message to one instance, and its reply.
pub fn request(home: &Home, a: RequestArgs) -> Result<ExitCode> {
    let reply = Client::connect(home)?.call(Command::Request {
        to: a.to,
        topic: a.topic,
        data: args::message_data(&a.data),
        timeout_ms: a.timeout.as_millis() as u64,
    })?;
    reply::print_reply(reply)
}

/// `herd trigger`: an `@pm2/io` action on the app's instances, and their replies, printed as
/// PM2 prints them (`[app:i]=<reply>`).
pub fn trigger(home: &Home, a: TriggerArgs) -> Result<ExitCode> {
    let reply = Client::connect(home)?.call(Command::Trigger {
        target: a.target.clone(),
        action: a.action,
        arg: a.arg.as_deref().map(args::message_data),
        timeout_ms: a.timeout.as_millis() as u64,
    })?;
    let Reply::Message { data, .. } = reply else {
        return reply::print_reply(reply);
    };
    if a.json {
        println!("{data}");
        return Ok(ExitCode::SUCCESS);
    }
    let app = a.target.split(':').next().unwrap_or(&a.target);
    let mut failed = false;
    for r in data.as_array().into_iter().flatten() {
        let i = &r["instance"];
        match r.get("error") {
            Some(e) => {
                failed = true;
                println!("[{app}:{i}] error: {}", e.as_str().unwrap_or(""));
            }
            None => println!("[{app}:{i}]={}", r["return"]),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `herd publish`: a message on a topic.
pub fn publish(home: &Home, a: PublishArgs) -> Result<ExitCode> {
    reply::print_reply(Client::connect(home)?.call(Command::Publish {
        topic: a.topic,
        data: args::message_data(&a.data),
    })?)
}

/// `herd bus`: every message that passes, until interrupted; followed across `herd update`.
pub fn watch(home: &Home, a: BusArgs) -> Result<ExitCode> {
    let mut client = Client::connect(home)?;
    client.send(Command::Bus {
        topics: a.topics.clone(),
    })?;
    let mut resumed = false;
    let stdout = std::io::stdout();
    loop {
        match client.recv()? {
            // `herd update` ends the old daemon's stream: watch the new one's.
            None => match Client::connect_existing(home)? {
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
            Some(other) => return reply::unexpected(other),
        }
    }
}
