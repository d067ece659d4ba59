//! `herd`: the command line and, as `herd daemon`, the daemon itself.
//!
//! This file is the table of commands: each is one function of the module of its family
//! (apps, logs, messages, monit, the web dashboard, the daemon, saved apps, `herd run`), as mini-redis's `cmd/`.

mod appfile;
mod apply;
mod apps;
mod args;
mod client;
mod daemon;
mod dump;
mod inspect;
mod logs;
mod messages;
mod monit;
mod output;
mod reply;
mod run;
#[cfg(test)]
mod testing;
mod web;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use herd_daemon::Home;

use args::{Cli, Cmd};

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
        Cmd::Daemon => daemon::run(&home),
        Cmd::Run(r) => run::foreground(&r),
        Cmd::Start(a) => apps::start(&home, &a),
        Cmd::Stop(t) => apps::stop(&home, t),
        Cmd::Restart(t) => apps::restart(&home, t),
        Cmd::Reload(t) => apps::reload(&home, t),
        Cmd::Delete(t) => apps::delete(&home, t),
        Cmd::Apply(a) => apply::apply(&home, &a),
        Cmd::Rollback(t) => apply::rollback(&home, t),
        Cmd::Signal(s) => reply::apps(
            &home,
            herd_proto::Command::Signal {
                target: s.target,
                signal: s.signal,
            },
            false,
        ),
        Cmd::Reset(t) => reply::apps(
            &home,
            herd_proto::Command::Reset { target: t.target },
            t.json,
        ),
        Cmd::Pid(p) => inspect::pid(&home, p.target),
        Cmd::Env(e) => inspect::env(&home, &e.target, e.show_secrets),
        Cmd::Report => inspect::report(&home),
        Cmd::List(j) => apps::list(&home, j),
        Cmd::Describe(d) => apps::describe(&home, d),
        Cmd::Scale(s) => apps::scale(&home, s),
        Cmd::Logs(l) => logs::show(&home, l),
        Cmd::Flush(f) => logs::flush(&home, f),
        Cmd::Monit => monit::run(&home),
        Cmd::Web(w) => web::run(&home, &w),
        Cmd::ReloadLogs => logs::reopen(&home),
        Cmd::Send(a) => messages::send(&home, a),
        Cmd::Request(a) => messages::request(&home, a),
        Cmd::Publish(a) => messages::publish(&home, a),
        Cmd::Trigger(a) => messages::trigger(&home, a),
        Cmd::Bus(a) => messages::watch(&home, a),
        Cmd::Save(s) => dump::save(&home, s.force),
        Cmd::Resurrect(j) => dump::resurrect(&home, j.json),
        Cmd::Startup(s) => dump::startup(&home, &s.system, s.install),
        Cmd::Ping => daemon::ping(&home),
        Cmd::Update => daemon::update(&home),
        Cmd::Kill => daemon::kill(&home),
    }
}
