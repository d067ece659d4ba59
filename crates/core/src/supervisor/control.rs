//! Control commands: what each [`Command`] does to the apps, and the replies. The only place
//! that builds a [`Reply`] for the CLI (the bus's own replies excepted, in `bus.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use herd_proto::{
    AppInfo, Command, ErrorCode, LogSpec, LogStream, ProcessInfo, Reply, PROTOCOL_VERSION,
};
use tokio::sync::oneshot;

use super::{logs, stats, CommandError, LogRef, State, WaitKind};
use crate::cgroup;

impl State {
    /// Carries out a command: the match only delegates, each command has its method, and the
    /// answer is sent in one place — at once, or once the apps it touched have settled.
    pub(super) fn on_request(&mut self, cmd: Command, reply: oneshot::Sender<Reply>) {
        let answer = if self.shutting_down && !cmd.answered_while_shutting_down() {
            Err(err(ErrorCode::ShuttingDown, "the daemon is shutting down"))
        } else if self.updating.is_some() && !cmd.read_only() {
            Err(err(
                ErrorCode::Busy,
                "the daemon is being updated; send the command again in a moment",
            ))
        } else {
            match cmd {
                Command::Ping => Ok(Answer::Now(pong())),
                Command::List => Ok(Answer::Now(self.list())),
                Command::Describe { target } => self.describe(&target),
                Command::Flush { target } => self.flush(&target),
                Command::ReloadLogs => Ok(self.reload_logs()),
                Command::Start { spec } => self.start_app(*spec).map(Answer::app),
                Command::Apply { spec } => self.apply(*spec),
                Command::Rollback { target } => self.rollback(&target),
                Command::Restore {
                    target,
                    generation,
                    previous,
                } => self.restore_history(&target, generation, previous),
                Command::Signal { target, signal } => self.send_signal(&target, &signal),
                Command::Reset { target } => self.each_app(&target, |s, id| {
                    if let Some(app) = s.apps.get_mut(&id) {
                        for slot in app.slots.iter_mut().chain(app.primary.as_mut()) {
                            slot.restarts = 0;
                            slot.history = crate::policy::History::default();
                        }
                    }
                    Ok(())
                }),
                Command::Resume { target } => self.each_app(&target, |s, id| s.resume(id)),
                Command::Stop { target } => self.resolve(&target).map(|ids| {
                    self.stop_apps(&ids);
                    Answer::Later(ids, WaitKind::Apps)
                }),
                Command::Restart { target, env } => self.each_app(&target, |s, id| {
                    if let Some(env) = &env {
                        s.update_env(id, env);
                    }
                    s.restart_app(id)
                }),
                Command::Reload { target, env } => self.reload(&target, env.as_ref()),
                Command::Delete { target } => self.delete(&target),
                Command::Scale { target, to } => self.scale(&target, to).map(Answer::app),
                Command::Send { to, topic, data } => {
                    Ok(Answer::Now(self.cli_send(&to, topic, data)))
                }
                Command::Publish { topic, data } => Ok(Answer::Now(self.cli_publish(topic, data))),
                Command::Request {
                    to,
                    topic,
                    data,
                    timeout_ms,
                } => {
                    // Answered by the reply of the instance (or its timeout).
                    let timeout = Duration::from_millis(timeout_ms);
                    return self.cli_request(&to, topic, data, timeout, reply);
                }
                Command::Logs { .. } | Command::Bus { .. } | Command::Update { .. } => Err(err(
                    ErrorCode::BadRequest,
                    "logs, bus and update are served by the control server, not the supervisor",
                )),
                Command::Kill => Ok(self.kill()),
                Command::Trigger {
                    target,
                    action,
                    arg,
                    timeout_ms,
                } => {
                    let timeout = Duration::from_millis(timeout_ms.min(600_000));
                    if let Err((e, reply)) = self.trigger(&target, &action, arg, timeout, reply) {
                        let _ = reply.send(e.into());
                    }
                    return;
                }
            }
        };
        match answer {
            Ok(Answer::Now(r)) => {
                let _ = reply.send(r);
            }
            Ok(Answer::Later(ids, kind)) => self.wait(ids, kind, reply),
            Err(e) => {
                let _ = reply.send(e.into());
            }
        }
    }

    fn list(&mut self) -> Reply {
        let ids: Vec<u32> = self.apps.keys().copied().collect();
        Reply::Apps {
            v: PROTOCOL_VERSION,
            apps: self.infos(&ids, false),
            bus: None,
            warnings: crate::health::warnings(),
        }
    }

    fn describe(&mut self, target: &str) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        Ok(Answer::Now(Reply::Apps {
            v: PROTOCOL_VERSION,
            apps: self.infos(&ids, true),
            bus: Some(Box::new(self.bus_stats())),
            warnings: crate::health::warnings(),
        }))
    }

    fn flush(&mut self, target: &str) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        let (n, failed) = self.each_log(&ids, |f| f.truncate());
        Ok(Answer::Now(log_files_reply("emptied", n, failed)))
    }

    fn reload_logs(&mut self) -> Answer {
        let ids: Vec<u32> = self.apps.keys().copied().collect();
        let (n, failed) = self.each_log(&ids, |f| f.reopen());
        Answer::Now(log_files_reply("reopened", n, failed))
    }

    fn reload(
        &mut self,
        target: &str,
        env: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        for &id in &ids {
            if let Some(env) = env {
                self.update_env(id, env);
            }
            self.reload_errors.remove(&id);
            self.start_reload(id)?;
        }
        Ok(Answer::Later(ids, WaitKind::Reload))
    }

    fn delete(&mut self, target: &str) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        let names: Vec<String> = ids
            .iter()
            .filter_map(|id| self.apps.get(id).map(|a| a.spec.name.clone()))
            .collect();
        for &id in &ids {
            if let Some(a) = self.apps.get_mut(&id) {
                a.deleting = true;
            }
        }
        self.stop_apps(&ids);
        let msg = format!("deleted {}", names.join(", "));
        Ok(Answer::Later(ids, WaitKind::Deleted(msg)))
    }

    /// `herd signal`: the signal to each process named (their process groups).
    fn send_signal(&mut self, target: &str, signal: &str) -> Result<Answer, CommandError> {
        let name = if signal.starts_with("SIG") || signal.parse::<i32>().is_ok() {
            signal.to_string()
        } else {
            format!("SIG{signal}")
        };
        let sig = signal
            .parse::<i32>()
            .ok()
            .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
            .or_else(|| super::parse_signal(&name))
            .ok_or_else(|| {
                err(
                    ErrorCode::BadRequest,
                    format!("unknown signal {signal:?}; use a name such as SIGUSR2, SIGHUP or USR1, or a number"),
                )
            })?;
        let (app_part, only) = match target.rsplit_once(':') {
            Some((a, i)) if i.parse::<u32>().is_ok() => (a, i.parse::<u32>().ok()),
            _ => (target, None),
        };
        let ids = self.resolve(app_part)?;
        let mut pids = Vec::new();
        for id in &ids {
            let Some(app) = self.apps.get(id) else {
                continue;
            };
            for s in app
                .slots
                .iter()
                .filter(|s| only.is_none_or(|i| s.index == i))
            {
                if let Some(p) = s.state.proc() {
                    pids.push(p.pid);
                }
            }
        }
        if pids.is_empty() {
            return Err(err(
                ErrorCode::UnknownApp,
                format!("no running instance matches {target:?}; `herd list` shows them"),
            ));
        }
        for &pid in &pids {
            self.os.signal_group(pid, sig);
        }
        Ok(Answer::Now(Reply::done(format!(
            "sent {} to {} process{}",
            sig.as_str(),
            pids.len(),
            if pids.len() == 1 { "" } else { "es" }
        ))))
    }

    fn kill(&mut self) -> Answer {
        self.shutting_down = true;
        let ids: Vec<u32> = self.apps.keys().copied().collect();
        self.stop_apps(&ids);
        Answer::Later(ids, WaitKind::Kill)
    }

    /// Runs `f` on every app `target` names; answered once they have settled.
    fn each_app(
        &mut self,
        target: &str,
        mut f: impl FnMut(&mut Self, u32) -> Result<(), CommandError>,
    ) -> Result<Answer, CommandError> {
        let ids = self.resolve(target)?;
        for &id in &ids {
            f(self, id)?;
        }
        Ok(Answer::Later(ids, WaitKind::Apps))
    }

    /// Turns a target (name, id or `all`) into app ids.
    pub(super) fn resolve(&self, target: &str) -> Result<Vec<u32>, CommandError> {
        if target == "all" {
            return Ok(self.apps.keys().copied().collect());
        }
        if let Ok(id) = target.parse::<u32>() {
            if self.apps.contains_key(&id) {
                return Ok(vec![id]);
            }
        }
        if let Some(app) = self.apps.values().find(|a| a.spec.name == target) {
            return Ok(vec![app.id]);
        }
        // PM2's namespaces: every app of the namespace, when no app has the name.
        let ns: Vec<u32> = self
            .apps
            .values()
            .filter(|a| a.spec.namespace == target)
            .map(|a| a.id)
            .collect();
        if !ns.is_empty() {
            return Ok(ns);
        }
        Err(err(
            ErrorCode::UnknownApp,
            format!(
                "no app or namespace named {target:?}, and no app numbered so; `herd list` shows the apps"
            ),
        ))
    }

    /// Runs `f` on every log file of the apps `ids`: how many it did, and the first failure.
    pub(super) fn each_log(
        &self,
        ids: &[u32],
        f: impl Fn(&mut logs::LogFile) -> std::io::Result<()>,
    ) -> (usize, Option<String>) {
        let mut n = 0;
        let mut failed = None;
        // A file several slots or streams write (merged, PM2's log_file) is done once.
        let mut seen: Vec<*const std::sync::Mutex<logs::LogFile>> = Vec::new();
        for app in ids.iter().filter_map(|id| self.apps.get(id)) {
            for slot in app.all_slots() {
                for log in [Some(&slot.out), Some(&slot.err), slot.both.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    if seen.contains(&std::sync::Arc::as_ptr(log)) {
                        continue;
                    }
                    seen.push(std::sync::Arc::as_ptr(log));
                    let Ok(mut file) = log.lock() else { continue };
                    if file.is_discarded() {
                        continue;
                    }
                    match f(&mut file) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            failed.get_or_insert_with(|| format!("{}: {e}", file.path().display()));
                        }
                    }
                }
            }
        }
        (n, failed)
    }

    pub(super) fn log_files(
        &self,
        target: &str,
        stream: Option<LogStream>,
    ) -> Result<Vec<LogRef>, CommandError> {
        let ids = self.resolve(target)?;
        let mut out: Vec<LogRef> = Vec::new();
        for app in ids.iter().filter_map(|id| self.apps.get(id)) {
            let slots = app.primary.iter().chain(&app.slots);
            for slot in slots {
                for s in [LogStream::Out, LogStream::Err] {
                    if stream.is_some() && stream != Some(s) {
                        continue;
                    }
                    let file = match s {
                        LogStream::Out => &slot.out,
                        LogStream::Err => &slot.err,
                    };
                    // A stream that goes nowhere is read from PM2's log_file, if there is one.
                    let path = [Some(file), slot.both.as_ref()]
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.lock().ok())
                        .find(|f| !f.is_discarded())
                        .map(|f| f.path().to_path_buf());
                    // Nothing written: listed still (as /dev/null, which reads empty), so that
                    // followers of the app get its lines.
                    let path = path.unwrap_or_else(|| PathBuf::from(LogSpec::NULL));
                    // A file several instances, streams or apps write is read once.
                    if out.iter().any(|r| {
                        r.path == path
                            && (r.app == app.spec.name || path != Path::new(LogSpec::NULL))
                    }) {
                        continue;
                    }
                    out.push(LogRef {
                        app: app.spec.name.clone(),
                        instance: slot.index,
                        stream: s,
                        path,
                    });
                }
            }
        }
        Ok(out)
    }

    pub(super) fn infos(&mut self, ids: &[u32], with_spec: bool) -> Vec<AppInfo> {
        let mut out = Vec::new();
        let bus = &self.bus;
        for id in ids {
            let waiting_for = if self.apps.get(id).is_some_and(|a| a.waiting) {
                self.waiting_for(*id)
            } else {
                Vec::new()
            };
            let Some(app) = self.apps.get_mut(id) else {
                continue;
            };
            let port = app.port();
            let probed = app.spec.readiness.is_some() || app.spec.liveness.is_some();
            let listen = if app.listeners.is_empty() {
                app.spec.listen.iter().map(|l| l.addr.clone()).collect()
            } else {
                app.listeners.iter().map(|l| l.addr().to_string()).collect()
            };
            let processes = app
                .slots
                .iter_mut()
                .map(|slot| process_info(slot, bus, &self.cgroups, &mut *self.os, probed))
                .collect();
            let primary = app
                .primary
                .as_mut()
                .map(|slot| process_info(slot, bus, &self.cgroups, &mut *self.os, false));
            out.push(AppInfo {
                primary,
                id: app.id,
                name: app.spec.name.clone(),
                namespace: app.spec.namespace.clone(),
                status: app.status,
                listen,
                port,
                balance: app.spec.balance,
                processes,
                spec: with_spec.then(|| Box::new(app.spec.clone())),
                env_version: app.env_version,
                containment: with_spec.then(|| self.containment.info()),
                routing_fallback: app.routing_fallback,
                waiting_for,
                generation: app.generation,
                previous: if with_spec {
                    app.previous.clone()
                } else {
                    Vec::new()
                },
                next_cron_restart_ms: app
                    .cron
                    .as_ref()
                    .and_then(|c| c.next())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            });
        }
        out
    }
}

/// The answer to `flush` and `reloadLogs`.
/// What a command answers.
pub(super) enum Answer {
    /// This reply, now.
    Now(Reply),
    /// The apps' state once they have settled.
    Later(Vec<u32>, WaitKind),
}

impl Answer {
    /// The state of app `id` once it has settled.
    pub(super) fn app(id: u32) -> Self {
        Answer::Later(vec![id], WaitKind::Apps)
    }
}

fn pong() -> Reply {
    Reply::Pong {
        v: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    }
}

pub(super) fn log_files_reply(did: &str, n: usize, failed: Option<String>) -> Reply {
    match failed {
        None => Reply::done(format!("{did} {n} log files")),
        Some(e) => Reply::error(
            ErrorCode::Internal,
            format!("{did} {n} log files; failed: {e}"),
        ),
    }
}

/// A reply refusing a command (for the bus and the update, which answer the CLI themselves).
pub(super) fn refusal(code: ErrorCode, msg: impl Into<String>) -> Reply {
    CommandError::new(code, msg).into()
}

/// A refusal of kind `code`.
pub(super) fn err(code: ErrorCode, msg: impl Into<String>) -> CommandError {
    CommandError::new(code, msg)
}

/// One slot as `herd list` shows it, with a fresh CPU and memory sample of its process.
fn process_info(
    slot: &mut super::Slot,
    bus: &super::bus::Bus,
    cgroups: &std::collections::HashMap<u32, std::path::PathBuf>,
    os: &mut dyn super::Os,
    probed: bool,
) -> ProcessInfo {
    let status = slot.state.status();
    let mut info = ProcessInfo {
        instance: slot.index,
        pid: None,
        status,
        restarts: slot.restarts,
        uptime_ms: None,
        cpu_percent: None,
        memory_bytes: None,
        last_exit: slot.last_exit.clone(),
        messages_dropped: 0,
        subscriptions: 0,
        bus_refused: 0,
        env_version: 0,
        cgroup: None,
        pm2_metrics: serde_json::Map::new(),
        actions: Vec::new(),
        health: None,
    };
    if let Some(p) = slot.state.proc_mut() {
        info.pid = Some(p.pid);
        let (subs, refused) = bus.peer_counts(p.pid);
        info.subscriptions = subs as u64;
        info.bus_refused = refused;
        info.env_version = p.env_version;
        info.messages_dropped = p.channel.as_ref().map_or(0, |c| c.dropped());
        info.uptime_ms = Some(p.since.elapsed().as_millis() as u64);
        let cg = cgroups.get(&p.pid);
        if let Some(s) = os.sample(p.pid) {
            info.cpu_percent = Some(stats::cpu_percent(
                &s,
                p.sample.as_ref(),
                p.since.into_std(),
            ));
            info.memory_bytes = Some(s.rss_bytes);
            p.sample = Some(s);
        }
        // The whole tree's memory, children included.
        if let Some(m) = cg.and_then(|cg| cgroup::memory(cg)) {
            info.memory_bytes = Some(m);
        }
        info.cgroup = cg.map(|cg| cg.display().to_string());
        if probed {
            info.health = Some(p.health.info());
        }
        if let Some(io) = &p.pm2 {
            info.pm2_metrics = io.metrics.clone();
            info.actions = io.actions.clone();
        }
    }
    info
}
