//! Starting a slot's process (with the worker contract's fds and variables, its output pumps
//! and its channel), asking it to stop, and the memory limit.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::{AppStatus, LogStream};
use tokio::time::Instant;

use super::primary::{self, PRIMARY};
use super::run_as;
use super::{
    arm_retire, begin_stop, grow_pipe, is_herd_managed, needs_ready, write_note, Containment,
    Event, Lifecycle, Proc, Role, SlotState, StartError, State, Then, TimerKey, CGROUP_EMPTY_MAX,
    MEMORY_CHECK,
};
use crate::logs::{self, PumpTarget};
use crate::spawn::{self, SpawnRequest};
use crate::{ipc, node_shims, policy};

impl State {
    /// Starts a slot's process, applying the restart policy if that fails.
    pub(super) fn launch(&mut self, id: u32, i: u32) {
        if let Err(e) = self.try_spawn(id, i) {
            self.spawn_failed(id, i, &e.to_string());
        }
    }

    pub(super) fn spawn_failed(&mut self, id: u32, i: u32, why: &str) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        tracing::warn!(app = %app.spec.name, instance = i, "cannot start instance: {why}");
        write_note(
            &slot.err,
            &format!("[herd] cannot start {}: {why}", primary::who(i)),
        );
        let decision = policy::on_exit(&app.spec, &mut slot.history, Duration::ZERO, None);
        self.apply_decision(id, i, decision, true);
    }

    /// Starts the slot's process and makes it the current one.
    pub(super) fn try_spawn(&mut self, id: u32, i: u32) -> Result<(), StartError> {
        let proc = self.spawn_proc(id, i, Role::Current)?;
        let Some(app) = self.apps.get_mut(&id) else {
            return Err(StartError::Gone(format!("app {id}")));
        };
        let wait = needs_ready(&app.spec) && i != PRIMARY;
        let worker_of_primary = app.spec.primary && i != PRIMARY;
        let pid = proc.pid;
        let listen_timeout = Duration::from_millis(app.spec.listen_timeout_ms);
        let Some(slot) = slot_mut!(app, i) else {
            return Err(StartError::Gone(format!("instance {i}")));
        };
        if wait {
            slot.set(SlotState::Starting {
                proc,
                deadline: Instant::now() + listen_timeout,
            });
        } else {
            slot.set(SlotState::Online { proc });
        }
        if worker_of_primary {
            self.worker_started(id, i, pid);
        }
        Ok(())
    }

    /// Starts a process for slot `i` and registers its pid; the caller places it.
    pub(super) fn spawn_proc(&mut self, id: u32, i: u32, role: Role) -> Result<Proc, StartError> {
        // A worker of an app's primary gets Node's next worker id (or the one a fork claimed).
        let worker_id = match self.apps.get(&id) {
            Some(a) if a.spec.primary && i != PRIMARY => self.worker_id_for(id, i),
            _ => 0,
        };
        // The app's user (`--uid`), and the Node files that user can read.
        let run_as = self.run_as(id)?;
        let node = self
            .apps
            .get(&id)
            .is_some_and(|a| a.spec.node || a.spec.primary || runtime_of(&a.spec).is_some());
        let shims = self.shims_for(run_as.as_ref(), node);
        let owner = run_as::is_other_user(run_as.as_ref())
            .then(|| run_as.as_ref().map(|r| (r.uid, r.gid)))
            .flatten();
        // The primary accepts on the direct link its workers connect to (through its preload).
        let link = self.link_socket(id, shims.as_ref(), owner).and_then(|l| {
            Some((
                l.path().to_str()?.to_owned(),
                l.fd().try_clone_to_owned().ok()?,
            ))
        });
        let app = self
            .apps
            .get(&id)
            .ok_or_else(|| StartError::Gone(format!("app {id}")))?;
        let spec = &app.spec;
        let app_env_version = app.env_version;
        let addrs: Vec<String> = app.listeners.iter().map(|l| l.addr().to_string()).collect();
        let is_primary = i == PRIMARY;
        // A worker of the app's primary runs what the primary forked it with.
        let fork = app
            .slot(i)
            .map(|s| s.fork.clone())
            .filter(|_| spec.primary && !is_primary)
            .unwrap_or_default();
        let cwd = PathBuf::from(&spec.cwd);
        let path_var = spec.env.get("PATH").map(String::as_str);
        let script = fork.exec.clone().unwrap_or_else(|| spec.script.clone());
        let (program, mut argv) = match &spec.interpreter {
            Some(interp) => {
                let p =
                    spawn::resolve_program(interp, path_var, &cwd).map_err(StartError::Program)?;
                let mut argv = vec![interp.clone()];
                match &fork.exec_argv {
                    Some(a) => argv.extend(a.iter().cloned()),
                    None => argv.extend(spec.interpreter_args.iter().cloned()),
                }
                argv.push(script);
                (p, argv)
            }
            None => (
                spawn::resolve_program(&script, path_var, &cwd).map_err(StartError::Program)?,
                vec![script],
            ),
        };
        match &fork.args {
            Some(a) => argv.extend(a.iter().cloned()),
            None => argv.extend(spec.args.iter().cloned()),
        }

        // Node workers get their sockets through the cluster protocol, not as inherited fds;
        // a primary gets none.
        let listen_fds: Vec<_> = if spec.node || is_primary {
            Vec::new()
        } else {
            app.listeners
                .iter()
                .filter_map(|l| l.fd_for_slot(i))
                .collect()
        };
        let names: Vec<&str> = spec.listen.iter().map(|l| l.name.as_str()).collect();
        let port = app.port();
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            // The user's own PORT stands when herd has no port to give.
            .filter(|(k, _)| !is_herd_managed(k) || (k.as_str() == "PORT" && port.is_none()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // `cluster.fork(env)`: the worker's own variables over the app's.
        for (k, v) in &fork.env {
            if !is_herd_managed(k) {
                env.retain(|(key, _)| key != k);
                env.push((k.clone(), v.clone()));
            }
        }
        if let Some(port) = port {
            env.push(("PORT".into(), port.to_string()));
        }
        let ipc_fd = 3 + listen_fds.len();
        env.extend([
            ("HERD_APP".into(), spec.name.clone()),
            ("HERD_APP_ID".into(), id.to_string()),
            ("HERD_INSTANCES".into(), spec.instances.to_string()),
            (
                "NOTIFY_SOCKET".into(),
                self.cfg.notify_path.display().to_string(),
            ),
        ]);
        if !is_primary {
            env.extend([
                ("HERD_INSTANCE".into(), i.to_string()),
                ("NODE_APP_INSTANCE".into(), i.to_string()),
            ]);
            // PM2's instance_var and increment_var.
            if let Some(var) = spec.instance_var.as_ref().filter(|v| !is_herd_managed(v)) {
                env.retain(|(k, _)| k != var);
                env.push((var.clone(), i.to_string()));
            }
            if let Some(var) = &spec.increment_var {
                let base = env
                    .iter()
                    .find(|(k, _)| k == var)
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok());
                if let Some(base) = base {
                    env.retain(|(k, _)| k != var);
                    env.push((var.clone(), (base + u64::from(i)).to_string()));
                }
            }
        }
        run_as::login_env(&mut env, run_as.as_ref(), &spec.declared_env);
        let primary_app = spec.primary;
        let node = spec.node;
        // A worker given the direct link to the primary (its preload connects to it).
        let mut linked = false;
        if is_primary {
            // The primary runs as a plain Node process, with herd's `cluster` preloaded and
            // its two sockets; its own NODE_OPTIONS stay after the preload.
            let shims = shims.as_ref().ok_or_else(|| {
                StartError::Program(
                    "herd could not write its Node preload files (see the daemon's log); an app's own primary needs them".into(),
                )
            })?;
            let theirs = spec.env.get("NODE_OPTIONS").map(String::as_str);
            let opts = node_shims::node_options(&shims.path(&node_shims::PRIMARY), theirs);
            env.retain(|(k, _)| k != "NODE_OPTIONS");
            env.extend([
                ("NODE_OPTIONS".into(), opts),
                ("HERD_PRIMARY_FD".into(), ipc_fd.to_string()),
                ("HERD_PRIMARY_CALL_FD".into(), (ipc_fd + 1).to_string()),
            ]);
            if link.is_some() {
                env.push(("HERD_PRIMARY_LINK_FD".into(), (ipc_fd + 2).to_string()));
            }
        } else if node {
            let unique = if primary_app { worker_id } else { i + 1 };
            env.extend([
                ("NODE_CHANNEL_FD".into(), ipc_fd.to_string()),
                ("NODE_CHANNEL_SERIALIZATION_MODE".into(), "json".into()),
                ("NODE_UNIQUE_ID".into(), unique.to_string()),
            ]);
            // The worker preload (graceful drain of keep-alive connections), before the app's
            // own NODE_OPTIONS: a variable, so it reaches `node app.js`, a `#!/usr/bin/env
            // node` script such as `next` and an ES module entry point alike.
            // Deno's Node layer breaks under it (workers stop accepting): not for Deno.
            if let Some(shims) = shims
                .as_ref()
                .filter(|_| node_shims::enabled(&spec.env))
                .filter(|_| !crate::node::is_deno(spec.interpreter.as_deref()))
            {
                let theirs = spec.env.get("NODE_OPTIONS").map(String::as_str);
                let options = node_shims::node_options(&shims.path(&node_shims::WORKER), theirs);
                env.retain(|(k, _)| k != "NODE_OPTIONS");
                env.push(("NODE_OPTIONS".into(), options));
                if let Some((path, _)) = &link {
                    env.push(("HERD_PRIMARY_LINK".into(), path.clone()));
                    linked = true;
                }
            }
        } else {
            env.push(("HERD_IPC_FD".into(), ipc_fd.to_string()));
            // Bun and Deno cannot listen on an inherited socket: herd's library makes their
            // own bind to the port take it (crate::runtimes).
            if !listen_fds.is_empty() {
                if let Some(preload) = adopt_preload(spec, shims.as_ref()) {
                    env.retain(|(k, _)| k != "LD_PRELOAD");
                    env.push(("LD_PRELOAD".into(), preload));
                }
            }
        }
        if !listen_fds.is_empty() {
            env.push(("LISTEN_FDS".into(), listen_fds.len().to_string()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":")));
        }

        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(StartError::io("socketpair"))?;
        // The primary's call socket: `fork()` blocks on it until the daemon answers (at most
        // CALL_TIMEOUT, then it throws).
        let call = if is_primary {
            let (a, b) =
                std::os::unix::net::UnixStream::pair().map_err(StartError::io("socketpair"))?;
            b.set_read_timeout(Some(primary::CALL_TIMEOUT))
                .map_err(StartError::io("socket timeout"))?;
            Some((a, b))
        } else {
            None
        };
        let mut extra_fds = vec![theirs.as_fd()];
        if let Some((_, b)) = &call {
            extra_fds.push(b.as_fd());
            if let Some((_, fd)) = &link {
                extra_fds.push(fd.as_fd());
            }
        }
        let (out_r, out_w) = spawn::pipe_cloexec().map_err(StartError::io("pipe"))?;
        let (err_r, err_w) = spawn::pipe_cloexec().map_err(StartError::io("pipe"))?;
        grow_pipe(&out_w);
        grow_pipe(&err_w);
        let stdin: OwnedFd = std::fs::File::open("/dev/null")
            .map_err(StartError::io("/dev/null"))?
            .into();
        let leaf = new_cgroup(
            &mut self.containment,
            &mut self.cgroup_warned,
            &spec.name,
            i,
        );
        // The cgroup's directory, to create the child in it (see SpawnRequest::cgroup_dir).
        let leaf_dir = leaf
            .as_ref()
            .and_then(|(path, _)| std::fs::File::open(path).ok());
        let pid = self
            .os
            .spawn(SpawnRequest {
                program,
                argv,
                env,
                cwd,
                listen_fds,
                extra_fds,
                stdin,
                stdout: out_w,
                stderr: err_w,
                cgroup_procs: leaf.as_ref().map(|(_, fd)| fd.as_fd()),
                cgroup_dir: leaf_dir.as_ref().map(|d| d.as_fd()),
                credentials: run_as::credentials(run_as.as_ref()),
                outlive_daemon: self.cfg.keeper.is_some(),
            })
            .map_err(|e| {
                // The child may not have exited yet; its leaf goes once it has.
                if let Some((leaf, _)) = &leaf {
                    tokio::spawn(crate::cgroup::remove_when_empty(
                        leaf.clone(),
                        CGROUP_EMPTY_MAX,
                    ));
                }
                StartError::Spawn(e)
            })?;
        drop(theirs);
        let call = call.map(|(a, _)| a);
        if let Some((leaf, _)) = leaf {
            self.joined_cgroup(pid, leaf);
        }

        let out = self.start_pump(id, i, LogStream::Out, out_r, Vec::new());
        let err = self.start_pump(id, i, LogStream::Err, err_r, Vec::new());
        let name = self
            .apps
            .get(&id)
            .map(|a| a.spec.name.clone())
            .unwrap_or_default();
        let channel = ipc::start(
            ours,
            self.cfg.max_message_bytes,
            self.ipc_tx.clone(),
            move |msg| Event::Ipc { pid, msg },
        )
        .map_err(|e| tracing::warn!("IPC channel of pid {pid}: {e}"))
        .ok();
        // A primary's channel carries the messages of its workers that have no direct link,
        // and such a worker's channel the primary's: bursts of them wait (as on Node's own
        // channel), within the byte bound, rather than being dropped.
        if self.apps.get(&id).is_some_and(|a| a.spec.primary) {
            if let Some(ch) = &channel {
                ch.widen(ipc::QUEUE_WIDE);
            }
        }
        if let Some(call) = call {
            let call = ipc::start(
                call,
                self.cfg.max_message_bytes,
                self.ipc_tx.clone(),
                move |msg| Event::PrimaryCall { pid, msg },
            )
            .map_err(|e| tracing::warn!("call socket of the primary {pid}: {e}"))
            .ok();
            self.primary_started(id, pid, call);
        }
        self.pids.insert(pid, (id, i, role));
        self.write_pids();
        let _ = self.lifecycle.send(Lifecycle::Started {
            app: name,
            instance: i,
            pid,
        });
        let restarts = self
            .apps
            .get(&id)
            .and_then(|a| a.slot(i))
            .map_or(0, |s| s.restarts);
        self.lifecycle_event(
            id,
            i,
            Some(pid),
            "start",
            serde_json::json!({"restarts": restarts}),
        );
        Ok(Proc {
            pid,
            since: Instant::now(),
            sample: None,
            channel,
            listens: 0,
            seq: 0,
            preload: false,
            node_stop: super::cluster::NodeStop::Serving,
            env_version: app_env_version,
            primary: is_primary,
            metrics: false,
            pm2: None,
            seen: Box::new(primary::Seen {
                id: worker_id,
                link: linked,
                ..Default::default()
            }),
            out,
            err,
            health: Default::default(),
            addrs,
        })
    }

    /// Records the cgroup of a started process, once it is seen to be in it.
    fn joined_cgroup(&mut self, pid: u32, leaf: PathBuf) {
        // The child moved itself before exec; if the kernel refused, the leaf stays empty. A
        // process that has already exited is not listed either, but then its children (if
        // any) keep the leaf populated and rmdir fails.
        if crate::cgroup::contains(&leaf, pid) || std::fs::remove_dir(&leaf).is_err() {
            self.cgroups.insert(pid, leaf);
        } else if !std::mem::replace(&mut self.cgroup_warned, true) {
            tracing::warn!(
                pid,
                "the process could not join its cgroup {}; it is contained by its process group only",
                leaf.display()
            );
        }
    }

    /// Copies one output pipe of a process of slot `i` to the slot's log file and followers.
    pub(super) fn start_pump(
        &mut self,
        id: u32,
        i: u32,
        stream: LogStream,
        fd: OwnedFd,
        partial: Vec<u8>,
    ) -> Option<Arc<logs::PumpState>> {
        let app = self.apps.get(&id)?;
        let slot = app.slot(i)?;
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => {
                let state = logs::PumpState::new(raw, partial);
                tokio::spawn(logs::pump(
                    rx,
                    PumpTarget {
                        app: Arc::from(app.spec.name.as_str()),
                        instance: i,
                        stream,
                        file: match stream {
                            LogStream::Out => slot.out.clone(),
                            LogStream::Err => slot.err.clone(),
                        },
                        also: slot.both.clone(),
                        format: Arc::new(logs::LineFormat::of(&app.spec.log)),
                        whole_lines: !app.spec.log.is_plain() || app.spec.log.timestamps,
                        bus: self.logs.clone(),
                        state: state.clone(),
                    },
                ));
                self.pumps
                    .retain(|p| !p.3.done.load(std::sync::atomic::Ordering::Acquire));
                self.pumps.push((id, i, stream, state.clone()));
                Some(state)
            }
            Err(e) => {
                tracing::warn!(app = %app.spec.name, instance = i, "cannot read output: {e}");
                None
            }
        }
    }

    /// Asks a slot's process to stop (see [`begin_stop`]); SIGKILL follows after the timeout.
    pub(super) fn stop_slot(&mut self, id: u32, i: u32, then: Then) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let timeout = Duration::from_millis(app.spec.kill_timeout_ms);
        let Some(slot) = slot_mut!(app, i) else {
            return;
        };
        let deadline = Instant::now() + timeout;
        match slot.state.take() {
            // A reload's new process goes too.
            SlotState::Reloading {
                current: mut proc,
                mut next,
                ..
            } => {
                begin_stop(&mut *self.os, &app.spec, &mut next);
                self.pids.insert(next.pid, (id, i, Role::Retiring));
                arm_retire(&mut self.timers, next.pid, timeout);
                app.retiring.push((i, next));
                begin_stop(&mut *self.os, &app.spec, &mut proc);
                slot.set(SlotState::Stopping {
                    proc,
                    then,
                    deadline,
                });
            }
            SlotState::Starting { mut proc, .. } | SlotState::Online { mut proc } => {
                begin_stop(&mut *self.os, &app.spec, &mut proc);
                slot.set(SlotState::Stopping {
                    proc,
                    then,
                    deadline,
                });
            }
            // A slot drained by a scale-down is removed, whatever else is asked meanwhile.
            SlotState::Draining { mut proc, .. } => {
                begin_stop(&mut *self.os, &app.spec, &mut proc);
                slot.set(SlotState::Stopping {
                    proc,
                    then: Then::Remove,
                    deadline,
                });
            }
            SlotState::Stopping {
                proc,
                then: old,
                deadline,
            } => {
                // A removal stays a removal; otherwise the latest wish wins.
                let then = if old == Then::Remove { old } else { then };
                slot.set(SlotState::Stopping {
                    proc,
                    then,
                    deadline,
                });
            }
            SlotState::Gone => slot.set(SlotState::Gone),
            _ => match then {
                Then::Stay => slot.set(SlotState::Stopped),
                Then::Remove => slot.set(SlotState::Gone),
                Then::Restart | Then::Unlive => {
                    slot.set(SlotState::Stopped);
                    self.launch(id, i);
                }
            },
        }
    }

    pub(super) fn arm_memory_check(&mut self, id: u32) {
        let Some(app) = self.apps.get(&id) else {
            return;
        };
        let key = TimerKey::Memory { app: id };
        if app.spec.max_memory_bytes.is_none() || self.timers.deadline(key).is_some() {
            return;
        }
        self.timers.set(key, Instant::now() + MEMORY_CHECK);
    }

    pub(super) fn on_memory_check(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        if app.status != AppStatus::Running {
            return;
        }
        let Some(limit) = app.spec.max_memory_bytes else {
            return;
        };
        let mut over = Vec::new();
        for slot in &app.slots {
            if let SlotState::Online { proc: p } = &slot.state {
                // The whole tree counts when the process has a cgroup.
                let used = match self.cgroups.get(&p.pid) {
                    Some(cg) => crate::cgroup::memory(cg),
                    None => self.os.sample(p.pid).map(|s| s.rss_bytes),
                };
                if let Some(used) = used {
                    if used > limit {
                        over.push((slot.index, used));
                    }
                }
            }
        }
        for (i, rss) in over {
            let Some(app) = self.apps.get(&id) else {
                return;
            };
            let Some(slot) = app.slot(i) else {
                continue;
            };
            tracing::info!(app = %app.spec.name, instance = i, rss, limit, "memory limit passed; restarting instance");
            write_note(
                &slot.err,
                &format!("[herd] instance {i} uses {rss} bytes, over max_memory_restart {limit}; restarting it"),
            );
            self.stop_slot(id, i, Then::Restart);
        }
        self.arm_memory_check(id);
    }
}

/// A fresh cgroup for a process of `app`'s slot `i`, with its `cgroup.procs` open for the
/// child to join; `None` (and the process group alone) when cgroups are off or fail. A
/// failure never fails the spawn; it is logged once.
fn new_cgroup(
    containment: &mut Containment,
    warned: &mut bool,
    app: &str,
    i: u32,
) -> Option<(PathBuf, OwnedFd)> {
    let Containment::Cgroups(tree) = containment else {
        return None;
    };
    let made = tree
        .new_leaf(app, i)
        .and_then(|leaf| match crate::cgroup::open_procs(&leaf) {
            Ok(fd) => Ok((leaf, fd)),
            Err(e) => {
                let _ = std::fs::remove_dir(&leaf);
                Err(e)
            }
        });
    match made {
        Ok(made) => Some(made),
        Err(e) => {
            if !std::mem::replace(warned, true) {
                tracing::warn!(
                    "cannot create a cgroup under {} ({e}); this and later instances that fail \
                     the same way are contained by their process group only",
                    tree.path().display()
                );
            }
            None
        }
    }
}

/// Whether the app runs under Bun or Deno: `--interpreter bun`, or a command line such as
/// "bun server.ts".
fn runtime_of(spec: &herd_proto::AppSpec) -> Option<crate::runtimes::Runtime> {
    crate::runtimes::Runtime::of(spec.interpreter.as_deref())
        .or_else(|| crate::runtimes::Runtime::of(Some(&spec.script)))
}

/// `LD_PRELOAD` for a Bun or Deno app (herd's port adoption, [`crate::runtimes`]), from
/// `shims` (a directory the process's user can read), unless its environment says
/// `HERD_ADOPT=off`; `None` for other apps.
fn adopt_preload(
    spec: &herd_proto::AppSpec,
    shims: Option<&node_shims::Installed>,
) -> Option<String> {
    runtime_of(spec)?;
    if !crate::runtimes::enabled(&spec.env) {
        return None;
    }
    let Some(shims) = shims else {
        tracing::warn!(
            "{}: herd could not write its port-adoption library (see above); the app binds its port itself",
            spec.name
        );
        return None;
    };
    let lib = shims.path(&node_shims::ADOPT);
    let preload = crate::runtimes::ld_preload(&lib, spec.env.get("LD_PRELOAD").map(String::as_str));
    if preload.is_none() {
        tracing::warn!(
            "{}: cannot preload {} (LD_PRELOAD splits at spaces and colons); use a HERD_HOME without them",
            spec.name,
            lib.display()
        );
    }
    preload
}
