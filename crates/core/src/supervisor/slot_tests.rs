//! The slot machine driven without processes: a fake [`Os`] hands out pids and records
//! signals, the tests deliver exits and readiness as events, and tokio's paused time drives
//! every timer. One test per transition, one per race that users met or could meet, and a
//! property test that feeds random sequences of exits, readies, timeouts and commands and
//! checks the supervisor's invariants after every step.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herd_proto::{
    AppSpec, AppStatus, Command, ErrorCode, ListenSpec, ProcessStatus, Reply, ScaleTo,
};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::os::Os;
use super::{Config, Event, Role, SlotState, State, TimerKey};
use crate::ipc::Inbound;
use crate::spawn::{SpawnError, SpawnRequest};
use crate::stats::Sample;

/// Pids far above any real one (Linux caps them at 2^22), so a slip never signals a process.
const FIRST_PID: u32 = 50_000_000;

/// What the fake operating system has seen.
#[derive(Debug, Default)]
struct World {
    next: u32,
    /// Processes started and not yet reported as exited.
    live: BTreeSet<u32>,
    spawned: Vec<u32>,
    /// Processes asked to stop or killed, not yet reported as exited.
    asked: BTreeSet<u32>,
    signals: Vec<(u32, Signal)>,
    kills: Vec<u32>,
    fail_spawns: bool,
}

/// The wall clock of the tests at their start: 2030-01-01 00:01:00 UTC (a quarter-hour
/// offset from UTC, as every time zone has, keeps `*/5` minutes where they are).
const WALL_START: Duration = Duration::from_secs(1_893_456_060);

/// The fake OS; its wall clock starts at [`WALL_START`] and moves with tokio's paused clock.
struct FakeOs(Arc<Mutex<World>>, tokio::time::Instant);

impl Os for FakeOs {
    fn spawn(&mut self, _req: SpawnRequest<'_>) -> Result<u32, SpawnError> {
        let mut w = self.0.lock().unwrap();
        if w.fail_spawns {
            return Err(SpawnError::Fork(std::io::Error::other("no more processes")));
        }
        let pid = FIRST_PID + w.next;
        w.next += 1;
        w.live.insert(pid);
        w.spawned.push(pid);
        Ok(pid)
    }

    fn signal_group(&mut self, pid: u32, signal: Signal) {
        let mut w = self.0.lock().unwrap();
        w.signals.push((pid, signal));
        if w.live.contains(&pid) {
            w.asked.insert(pid);
        }
    }

    fn kill_tree(&mut self, pid: u32, _cgroup: Option<&std::path::Path>) {
        let mut w = self.0.lock().unwrap();
        w.kills.push(pid);
        if w.live.contains(&pid) {
            w.asked.insert(pid);
        }
    }

    fn sample(&mut self, _pid: u32) -> Option<Sample> {
        None
    }

    fn wall_clock(&self) -> SystemTime {
        UNIX_EPOCH + WALL_START + self.1.elapsed()
    }
}

/// A supervisor state with a fake OS, and the means to drive it.
struct Sim {
    st: State,
    world: Arc<Mutex<World>>,
    _rx: mpsc::UnboundedReceiver<Event>,
    ipc_rx: mpsc::Receiver<Event>,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Sim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let world = Arc::new(Mutex::new(World::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let (ipc_tx, ipc_rx) = mpsc::channel(1 << 16);
        let (logs, _) = broadcast::channel(16);
        let (lifecycle, _) = broadcast::channel(16);
        let cfg = Config {
            host: "test".into(),
            bus_url: None,
            max_message_bytes: 1 << 20,
            log_dir: dir.path().join("logs"),
            notify_path: dir.path().join("notify.sock"),
            pids_file: None,
            limits: crate::Limits::default(),
            node_dir: None,
            keeper: None,
        };
        let bus = super::bus::Bus::new(cfg.host.clone(), 1 << 20, cfg.limits, None);
        let mut st = State::new(
            cfg,
            Box::new(FakeOs(world.clone(), tokio::time::Instant::now())),
            tx,
            ipc_tx,
            logs,
            lifecycle,
            bus,
            -1,
        );
        // The Node preloads, as the daemon installs them (an app's primary needs its own).
        st.node_shims = Some(crate::node_shims::install(&dir.path().join("node")).unwrap());
        // A real port, so the reuseport selector is really attached and checked.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            st,
            world,
            _rx: rx,
            ipc_rx,
            _dir: dir,
            port,
        }
    }

    fn spec(&self, instances: u32) -> AppSpec {
        AppSpec {
            name: "web".into(),
            script: "/bin/sh".into(),
            instances,
            listen: vec![ListenSpec {
                addr: format!("127.0.0.1:{}", self.port),
                name: "http".into(),
            }],
            ..AppSpec::default()
        }
    }

    /// A `wait_ready` app of `n` instances, started, every instance ready.
    fn ready_app(n: u32) -> Self {
        let mut sim = Self::new();
        let spec = AppSpec {
            wait_ready: true,
            ..sim.spec(n)
        };
        drop(sim.start(spec));
        for i in 0..n as usize {
            sim.ready(sim.current(i).unwrap());
        }
        sim
    }

    /// `herd reload web`.
    fn reload(&mut self) -> oneshot::Receiver<Reply> {
        self.cmd(Command::Reload {
            target: "web".into(),
            env: None,
        })
    }

    /// Handles one event as the event loop does.
    fn event(&mut self, ev: Event) {
        self.st.handle(ev);
        self.st.after_event();
        // What the instances' (dropped) channels said: they closed.
        while let Ok(ev) = self.ipc_rx.try_recv() {
            self.st.handle(ev);
            self.st.after_event();
        }
    }

    fn cmd(&mut self, cmd: Command) -> oneshot::Receiver<Reply> {
        let (reply, rx) = oneshot::channel();
        self.event(Event::Request { cmd, reply });
        rx
    }

    fn start(&mut self, spec: AppSpec) -> oneshot::Receiver<Reply> {
        self.cmd(Command::Start {
            spec: Box::new(spec),
        })
    }

    fn exit(&mut self, pid: u32, code: i32) {
        self.gone(pid);
        self.event(Event::Exited {
            pid,
            status: WaitStatus::Exited(Pid::from_raw(pid as i32), code),
        });
    }

    fn killed(&mut self, pid: u32) {
        self.gone(pid);
        self.event(Event::Exited {
            pid,
            status: WaitStatus::Signaled(Pid::from_raw(pid as i32), Signal::SIGKILL, false),
        });
    }

    fn gone(&mut self, pid: u32) {
        let mut w = self.world.lock().unwrap();
        w.live.remove(&pid);
        w.asked.remove(&pid);
    }

    fn ready(&mut self, pid: u32) {
        self.event(Event::Ipc {
            pid,
            msg: Inbound::Ready,
        });
    }

    /// Lets `d` pass; every timer due fires, as in the event loop.
    async fn advance(&mut self, d: Duration) {
        tokio::time::advance(d).await;
        self.st.fire_timers();
        self.st.after_event();
    }

    /// Slot 0's process crashes (a quick crash): restarted after exactly `delay` ms.
    async fn crash_restarted_after(&mut self, delay: u64) {
        self.exit(self.current(0).unwrap(), 1);
        assert_eq!(self.statuses(), vec![ProcessStatus::WaitingRestart]);
        let before = self.spawned().len();
        self.advance(Duration::from_millis(delay - 1)).await;
        assert_eq!(self.spawned().len(), before, "restarted before {delay} ms");
        self.advance(Duration::from_millis(1)).await;
        assert_eq!(
            self.spawned().len(),
            before + 1,
            "not restarted at {delay} ms"
        );
        self.check_invariants();
    }

    fn spawned(&self) -> Vec<u32> {
        self.world.lock().unwrap().spawned.clone()
    }

    fn app(&self) -> &super::App {
        self.st.apps.values().next().expect("an app")
    }

    fn statuses(&self) -> Vec<ProcessStatus> {
        self.app().slots.iter().map(|s| s.state.status()).collect()
    }

    fn current(&self, i: usize) -> Option<u32> {
        self.app().slots[i].state.proc().map(|p| p.pid)
    }

    fn next(&self, i: usize) -> Option<u32> {
        self.app().slots[i].state.next().map(|p| p.pid)
    }

    fn asked(&self) -> BTreeSet<u32> {
        self.world.lock().unwrap().asked.clone()
    }

    /// Checks what must hold after every event.
    fn check_invariants(&self) {
        let w = self.world.lock().unwrap();
        // Every pid the supervisor knows is a process that runs, and every running process
        // is known once, in the place its role says.
        let known: BTreeSet<u32> = self.st.pids.keys().copied().collect();
        assert_eq!(known, w.live, "known pids differ from running processes");
        let mut places: HashMap<u32, usize> = HashMap::new();
        for app in self.st.apps.values() {
            for s in app.slots.iter().chain(app.primary.as_ref()) {
                for (p, role) in [
                    (s.state.proc(), Role::Current),
                    (s.state.next(), Role::Next),
                ] {
                    if let Some(p) = p {
                        *places.entry(p.pid).or_default() += 1;
                        assert_eq!(
                            self.st.pids.get(&p.pid),
                            Some(&(app.id, s.index, role)),
                            "pid {} is in slot {} as {role:?}",
                            p.pid,
                            s.index
                        );
                    }
                }
            }
            for (i, p) in &app.retiring {
                *places.entry(p.pid).or_default() += 1;
                assert_eq!(
                    self.st.pids.get(&p.pid),
                    Some(&(app.id, *i, Role::Retiring))
                );
            }
            // The slots routed to are exactly those that serve (and, with a readiness
            // probe, pass it; all of them if none does).
            if app.status == AppStatus::Running && !app.listeners.is_empty() {
                let serving: Vec<u32> = app
                    .slots
                    .iter()
                    .filter(|s| s.state.routed())
                    .map(|s| s.index)
                    .collect();
                let ready: Vec<u32> = app
                    .slots
                    .iter()
                    .filter(|s| s.state.routed())
                    .filter(|s| {
                        app.spec.readiness.is_none()
                            || s.state.proc().is_some_and(|p| p.health.ready == Some(true))
                    })
                    .map(|s| s.index)
                    .collect();
                let want = if ready.is_empty() { serving } else { ready };
                assert_eq!(app.routed.as_ref(), Some(&want), "routing set");
            }
            // The cron timer is armed exactly while the app runs with a schedule.
            assert_eq!(
                self.st
                    .timers
                    .deadline(TimerKey::Cron { app: app.id })
                    .is_some(),
                app.cron.is_some()
                    && app.status == AppStatus::Running
                    && !app.deleting
                    && !app.waiting,
                "cron timer"
            );
            // A slot's timer is armed exactly when its state waits for a deadline.
            for s in app.slots.iter().chain(app.primary.as_ref()) {
                let key = TimerKey::Slot {
                    app: app.id,
                    slot: s.index,
                };
                assert_eq!(self.st.timers.deadline(key), s.state.deadline());
            }
        }
        assert!(
            places.values().all(|&n| n == 1),
            "a pid in two places: {places:?}"
        );
        assert_eq!(places.len(), w.live.len(), "a running pid in no place");
        for key in self.st.timers.keys() {
            if let TimerKey::Slot { app, slot } = key {
                let s = self.st.apps.get(app).and_then(|a| a.slot(*slot));
                assert!(
                    s.is_some_and(|s| s.state.deadline().is_some()),
                    "a timer for slot {slot} that waits for nothing"
                );
            }
        }
    }

    /// Lets every process behave: the ones asked to stop exit, starting ones get ready, and
    /// time passes, until nothing changes.
    async fn settle(&mut self) {
        for _ in 0..50 {
            let asked: Vec<u32> = self.asked().into_iter().collect();
            for pid in &asked {
                self.exit(*pid, 0);
            }
            let starting: Vec<u32> = self
                .st
                .apps
                .values()
                .flat_map(|a| a.slots.iter())
                .filter_map(|s| match &s.state {
                    SlotState::Starting { proc, .. } => Some(proc.pid),
                    SlotState::Reloading { next, .. } => Some(next.pid),
                    _ => None,
                })
                .collect();
            for pid in &starting {
                self.ready(*pid);
            }
            // Processes behave: each passes its probes.
            let probed: Vec<(u32, bool, bool)> = self
                .st
                .apps
                .values()
                .flat_map(|a| {
                    let (r, l) = (a.spec.readiness.is_some(), a.spec.liveness.is_some());
                    a.slots.iter().filter_map(move |s| match &s.state {
                        SlotState::Online { proc } => Some((proc.pid, r, l)),
                        _ => None,
                    })
                })
                .collect();
            for (pid, r, l) in probed {
                if r {
                    self.event(Event::Probe {
                        pid,
                        kind: super::probes::ProbeKind::Readiness,
                        ok: true,
                        detail: "ok".into(),
                    });
                }
                if l {
                    self.event(Event::Probe {
                        pid,
                        kind: super::probes::ProbeKind::Liveness,
                        ok: true,
                        detail: "ok".into(),
                    });
                }
            }
            self.advance(Duration::from_secs(20)).await;
            self.check_invariants();
            if asked.is_empty() && starting.is_empty() && self.st.apps.values().all(|a| a.settled())
            {
                return;
            }
        }
        panic!("the supervisor did not settle: {:?}", self.statuses());
    }
}

fn answered(rx: &mut oneshot::Receiver<Reply>) -> Option<Reply> {
    rx.try_recv().ok()
}

/// A probe result for `pid`, as the OS side sends it back.
fn probe(sim: &mut Sim, pid: u32, kind: super::probes::ProbeKind, ok: bool) {
    sim.event(Event::Probe {
        pid,
        kind,
        ok,
        detail: if ok { "HTTP 200" } else { "HTTP 500" }.into(),
    });
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn readiness_steers_routing_falls_back_to_all_and_a_reload_waits_for_it() {
    use super::probes::ProbeKind::Readiness;
    let mut sim = Sim::new();
    let spec = AppSpec {
        wait_ready: true,
        readiness: Some(herd_proto::Probe {
            failure_threshold: 2,
            ..herd_proto::Probe::default()
        }),
        ..sim.spec(3)
    };
    drop(sim.start(spec));
    for i in 0..3 {
        sim.ready(sim.current(i).unwrap());
    }
    sim.check_invariants();
    // Nobody has passed yet: every serving instance is routed, and the app says why.
    assert_eq!(sim.app().routed, Some(vec![0, 1, 2]));
    assert!(sim.app().routing_fallback);
    let pids: Vec<u32> = (0..3).map(|i| sim.current(i).unwrap()).collect();
    probe(&mut sim, pids[0], Readiness, true);
    assert_eq!(sim.app().routed, Some(vec![0]));
    assert!(!sim.app().routing_fallback);
    probe(&mut sim, pids[1], Readiness, true);
    probe(&mut sim, pids[2], Readiness, true);
    assert_eq!(sim.app().routed, Some(vec![0, 1, 2]));
    // One failure is not enough; two in a row are.
    probe(&mut sim, pids[1], Readiness, false);
    assert_eq!(sim.app().routed, Some(vec![0, 1, 2]));
    probe(&mut sim, pids[1], Readiness, false);
    assert_eq!(sim.app().routed, Some(vec![0, 2]));
    assert_eq!(sim.current(1), Some(pids[1]), "not ready is not restarted");
    probe(&mut sim, pids[1], Readiness, true);
    assert_eq!(sim.app().routed, Some(vec![0, 1, 2]));
    // All failing: all routed.
    for &p in &pids {
        probe(&mut sim, p, Readiness, false);
        probe(&mut sim, p, Readiness, false);
    }
    assert_eq!(sim.app().routed, Some(vec![0, 1, 2]));
    assert!(sim.app().routing_fallback);
    for &p in &pids {
        probe(&mut sim, p, Readiness, true);
    }
    // A reload: slot 0's new process is promoted when ready, and the reload waits there for
    // its readiness before it touches slot 1.
    drop(sim.reload());
    let next = sim.next(0).expect("slot 0 reloads first");
    sim.ready(next);
    sim.check_invariants();
    assert_eq!(sim.current(0), Some(next));
    assert_eq!(
        sim.next(1),
        None,
        "the reload waits for the new process's readiness"
    );
    assert_eq!(
        sim.app().routed,
        Some(vec![1, 2]),
        "not routed before it passes"
    );
    probe(&mut sim, next, Readiness, true);
    assert!(sim.next(1).is_some(), "then it moves on");
    assert_eq!(sim.app().routed, Some(vec![0, 1, 2]));
}

#[tokio::test(start_paused = true)]
async fn an_app_waits_for_the_apps_it_depends_on_and_stops_before_them() {
    let mut sim = Sim::new();
    let by_name = |sim: &Sim, name: &str| -> Vec<ProcessStatus> {
        let app = sim.st.apps.values().find(|a| a.spec.name == name).unwrap();
        app.slots.iter().map(|s| s.state.status()).collect()
    };
    let pid_of = |sim: &Sim, name: &str| -> Option<u32> {
        let app = sim.st.apps.values().find(|a| a.spec.name == name).unwrap();
        app.slots[0].state.proc().map(|p| p.pid)
    };
    // Unknown, and itself: refused.
    let mut r = sim.start(AppSpec {
        name: "api".into(),
        depends_on: vec!["db".into()],
        ..sim.spec(1)
    });
    assert!(matches!(r.try_recv(), Ok(Reply::Error { .. })));
    let db = AppSpec {
        name: "db".into(),
        wait_ready: true,
        listen: Vec::new(),
        readiness: Some(herd_proto::Probe::default()),
        ..sim.spec(1)
    };
    drop(sim.start(db));
    drop(sim.start(AppSpec {
        name: "api".into(),
        depends_on: vec!["db".into()],
        ..sim.spec(1)
    }));
    sim.check_invariants();
    assert_eq!(by_name(&sim, "api"), [ProcessStatus::Stopped], "waits");
    let api_id = sim
        .st
        .apps
        .values()
        .find(|a| a.spec.name == "api")
        .unwrap()
        .id;
    assert_eq!(sim.st.waiting_for(api_id), ["db"]);
    // db listens: not enough, its readiness probe has not passed.
    let db_pid = pid_of(&sim, "db").unwrap();
    sim.ready(db_pid);
    assert_eq!(by_name(&sim, "api"), [ProcessStatus::Stopped]);
    sim.event(Event::Probe {
        pid: db_pid,
        kind: super::probes::ProbeKind::Readiness,
        ok: true,
        detail: "HTTP 200".into(),
    });
    sim.check_invariants();
    assert_ne!(
        by_name(&sim, "api"),
        [ProcessStatus::Stopped],
        "started once db is ready"
    );
    let api_pid = pid_of(&sim, "api").unwrap();
    // `stop all`: api first; db only once api has exited.
    let mut stop = sim.cmd(Command::Stop {
        target: "all".into(),
    });
    assert!(sim.asked().contains(&api_pid));
    assert!(!sim.asked().contains(&db_pid), "db waits for api");
    assert!(stop.try_recv().is_err(), "not answered yet");
    sim.exit(api_pid, 0);
    assert!(sim.asked().contains(&db_pid));
    sim.exit(db_pid, 0);
    sim.check_invariants();
    assert!(matches!(stop.try_recv(), Ok(Reply::Apps { .. })));
}

#[tokio::test(start_paused = true)]
async fn liveness_failures_restart_through_the_crash_loop_guard() {
    use super::probes::ProbeKind::Liveness;
    let mut sim = Sim::new();
    let spec = AppSpec {
        wait_ready: true,
        max_restarts: 2,
        liveness: Some(herd_proto::Probe {
            failure_threshold: 2,
            ..herd_proto::Probe::default()
        }),
        ..sim.spec(1)
    };
    drop(sim.start(spec));
    for round in 0..3 {
        let pid = sim.current(0).unwrap();
        sim.ready(pid);
        probe(&mut sim, pid, Liveness, true);
        probe(&mut sim, pid, Liveness, false);
        assert_eq!(
            sim.statuses(),
            [ProcessStatus::Online],
            "one failure is not enough"
        );
        probe(&mut sim, pid, Liveness, false);
        assert_eq!(sim.statuses(), [ProcessStatus::Stopping], "round {round}");
        assert!(sim.asked().contains(&pid), "asked to stop");
        sim.exit(pid, 0);
        sim.check_invariants();
        if round < 2 {
            // Restarted (after the policy's backoff).
            sim.advance(Duration::from_secs(20)).await;
            sim.check_invariants();
            assert_ne!(sim.current(0), Some(pid), "round {round}");
        }
    }
    assert_eq!(
        sim.statuses(),
        [ProcessStatus::Errored],
        "counted as crashes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_is_restarted_at_once_then_with_growing_delays_then_errored() {
    let mut sim = Sim::new();
    let spec = AppSpec {
        max_restarts: 3,
        ..sim.spec(1)
    };
    let mut r = sim.start(spec);
    assert!(matches!(answered(&mut r), Some(Reply::Apps { .. })));
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online]);
    // First quick crash: at once.
    sim.exit(sim.current(0).unwrap(), 1);
    assert_eq!(sim.spawned().len(), 2);
    sim.check_invariants();
    // Then 100 ms, 200 ms: not a millisecond earlier.
    for delay in [100, 200] {
        sim.crash_restarted_after(delay).await;
    }
    // The fourth quick crash in a row passes max_restarts = 3.
    sim.exit(sim.current(0).unwrap(), 1);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Errored]);
    sim.advance(Duration::from_secs(60)).await;
    assert_eq!(sim.spawned().len(), 4);
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_stable_run_resets_the_backoff() {
    let mut sim = Sim::new();
    drop(sim.start(sim.spec(1)));
    sim.exit(sim.current(0).unwrap(), 1);
    sim.exit(sim.current(0).unwrap(), 1);
    assert_eq!(sim.statuses(), vec![ProcessStatus::WaitingRestart]);
    sim.advance(Duration::from_millis(100)).await;
    // It runs longer than min_uptime: the next crash restarts at once.
    sim.advance(Duration::from_secs(2)).await;
    let n = sim.spawned().len();
    sim.exit(sim.current(0).unwrap(), 1);
    assert_eq!(sim.spawned().len(), n + 1);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online]);
}

/// PM2's `restart_delay`: a fixed wait before every restart, the backoff on top of it.
#[tokio::test(start_paused = true)]
async fn a_fixed_restart_delay_comes_before_every_restart_with_the_backoff_on_top() {
    let mut sim = Sim::new();
    let spec = AppSpec {
        restart_delay_ms: 1_000,
        ..sim.spec(1)
    };
    drop(sim.start(spec));
    // Quick crashes: 1000 ms (no backoff yet), then 1100 ms, then 1200 ms.
    for delay in [1_000, 1_100, 1_200] {
        sim.crash_restarted_after(delay).await;
    }
    // A stable run resets the backoff, not the fixed delay: 1000 ms again.
    sim.advance(Duration::from_secs(2)).await;
    sim.exit(sim.current(0).unwrap(), 1);
    assert_eq!(sim.statuses(), vec![ProcessStatus::WaitingRestart]);
    let before = sim.spawned().len();
    sim.advance(Duration::from_millis(999)).await;
    assert_eq!(sim.spawned().len(), before);
    sim.advance(Duration::from_millis(1)).await;
    assert_eq!(sim.spawned().len(), before + 1);
    sim.check_invariants();
}

/// `cron_restart`: a rolling reload at each match, the timer armed again after each, and
/// none while the app is stopped.
#[tokio::test(start_paused = true)]
async fn cron_restart_reloads_at_each_match_while_the_app_runs() {
    let mut sim = Sim::new();
    let spec = AppSpec {
        wait_ready: true,
        cron_restart: Some("*/5 * * * *".into()),
        ..sim.spec(2)
    };
    drop(sim.start(spec));
    for i in 0..2 {
        sim.ready(sim.current(i).unwrap());
    }
    sim.check_invariants();
    let id = sim.app().id;
    let key = TimerKey::Cron { app: id };
    let minute = Duration::from_secs(60);
    let next = |sim: &Sim| sim.app().cron.as_ref().and_then(|c| c.next());
    // Started at 00:01: the first match is 00:05.
    assert_eq!(next(&sim), Some(UNIX_EPOCH + WALL_START + 4 * minute));
    let before = sim.spawned().len();
    let old = [sim.current(0).unwrap(), sim.current(1).unwrap()];
    // Not a second early (the timer looks at the wall clock at least every minute).
    sim.advance(4 * minute - Duration::from_secs(1)).await;
    assert_eq!(sim.spawned().len(), before, "reloaded before 00:05");
    assert!(sim.st.timers.deadline(key).is_some());
    sim.advance(Duration::from_secs(1)).await;
    // 00:05: the reload starts with slot 0's next process, beside the old one.
    assert_eq!(sim.spawned().len(), before + 1, "no reload at 00:05");
    assert_eq!(
        sim.statuses(),
        vec![ProcessStatus::Online, ProcessStatus::Online]
    );
    assert!(sim.next(0).is_some(), "slot 0 reloads");
    // Re-armed for the match after it, 00:10.
    assert_eq!(next(&sim), Some(UNIX_EPOCH + WALL_START + 9 * minute));
    sim.check_invariants();
    sim.ready(sim.next(0).unwrap());
    sim.ready(sim.next(1).expect("then slot 1"));
    sim.settle().await;
    assert_eq!(sim.app().reloads, (1, 0));
    for (i, pid) in old.iter().enumerate() {
        assert_ne!(sim.current(i), Some(*pid), "instance {i} was not replaced");
    }
    // 00:10: the second reload.
    let at = sim.spawned().len();
    let left = (UNIX_EPOCH + WALL_START + 9 * minute)
        .duration_since(sim.st.os.wall_clock())
        .unwrap();
    sim.advance(left).await;
    assert_eq!(sim.spawned().len(), at + 1, "no reload at 00:10");
    assert_eq!(next(&sim), Some(UNIX_EPOCH + WALL_START + 14 * minute));
    sim.ready(sim.next(0).unwrap());
    sim.ready(sim.next(1).unwrap());
    sim.settle().await;
    assert_eq!(sim.app().reloads, (2, 0));
    // Stopped: no timer, and nothing at 00:15.
    drop(sim.cmd(Command::Stop {
        target: "web".into(),
    }));
    sim.settle().await;
    assert_eq!(sim.st.timers.deadline(key), None);
    assert_eq!(next(&sim), None);
    let stopped = sim.spawned().len();
    sim.advance(10 * minute).await;
    assert_eq!(sim.spawned().len(), stopped);
    // Started again: armed for the next match from now.
    drop(sim.cmd(Command::Resume {
        target: "web".into(),
    }));
    sim.settle().await;
    let wall = sim.st.os.wall_clock();
    let due = next(&sim).expect("armed again");
    assert!(due > wall && due <= wall + 5 * minute, "{due:?}");
    // Deleted: the timer goes with the app.
    drop(sim.cmd(Command::Delete {
        target: "web".into(),
    }));
    sim.settle().await;
    assert!(sim.st.apps.is_empty());
    assert_eq!(sim.st.timers.deadline(key), None);
}

/// A bad expression is refused by the daemon too (a spec sent by another client).
#[tokio::test(start_paused = true)]
async fn a_bad_cron_restart_is_refused_naming_the_field() {
    let mut sim = Sim::new();
    let spec = AppSpec {
        cron_restart: Some("0 3 * *".into()),
        ..sim.spec(1)
    };
    let mut r = sim.start(spec);
    match answered(&mut r) {
        Some(Reply::Error { error, .. }) => {
            assert_eq!(error.code, ErrorCode::InvalidSpec);
            assert!(
                error
                    .message
                    .starts_with("cron_restart \"0 3 * *\" is not a cron expression"),
                "{}",
                error.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(sim.st.apps.is_empty());
    assert!(sim.spawned().is_empty());
}

#[tokio::test(start_paused = true)]
async fn stop_sends_the_kill_signal_then_sigkill_at_the_kill_timeout() {
    let mut sim = Sim::new();
    drop(sim.start(sim.spec(1)));
    let pid = sim.current(0).unwrap();
    let mut r = sim.cmd(Command::Stop {
        target: "web".into(),
    });
    assert_eq!(
        sim.world.lock().unwrap().signals,
        vec![(pid, Signal::SIGTERM)]
    );
    assert_eq!(sim.statuses(), vec![ProcessStatus::Stopping]);
    assert!(
        answered(&mut r).is_none(),
        "answered before the process exited"
    );
    sim.advance(Duration::from_millis(4999)).await;
    assert!(sim.world.lock().unwrap().kills.is_empty());
    sim.advance(Duration::from_millis(1)).await;
    assert_eq!(sim.world.lock().unwrap().kills, vec![pid]);
    sim.check_invariants();
    sim.killed(pid);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Stopped]);
    assert!(matches!(answered(&mut r), Some(Reply::Apps { .. })));
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn reload_promotes_each_next_process_once_it_is_ready() {
    let mut sim = Sim::ready_app(2);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online; 2]);
    let old: Vec<u32> = (0..2).map(|i| sim.current(i).unwrap()).collect();
    let mut r = sim.reload();
    for (i, &old) in old.iter().enumerate() {
        let next = sim.next(i).expect("a next process");
        // The old one serves meanwhile.
        assert_eq!(sim.current(i), Some(old));
        assert!(sim.app().slots[i].state.routed());
        sim.check_invariants();
        sim.ready(next);
        assert_eq!(sim.current(i), Some(next));
        assert!(
            sim.asked().contains(&old),
            "the old process was not asked to stop"
        );
        sim.check_invariants();
    }
    assert!(
        answered(&mut r).is_none(),
        "answered before the old ones exited"
    );
    for pid in old {
        sim.exit(pid, 0);
    }
    assert!(matches!(answered(&mut r), Some(Reply::Apps { .. })));
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_reload_whose_next_process_never_gets_ready_keeps_the_old_one() {
    let mut sim = Sim::ready_app(2);
    let old = sim.current(0).unwrap();
    let mut r = sim.reload();
    let next = sim.next(0).unwrap();
    sim.advance(Duration::from_millis(3000)).await;
    assert!(sim.world.lock().unwrap().kills.contains(&next));
    assert_eq!(sim.current(0), Some(old));
    assert_eq!(sim.next(0), None);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online; 2]);
    // Slot 1 was never touched.
    assert_eq!(sim.spawned().len(), 3);
    sim.check_invariants();
    sim.killed(next);
    match answered(&mut r) {
        Some(Reply::Error { error, .. }) => {
            assert_eq!(error.code, ErrorCode::ReloadFailed);
            assert!(error.message.contains("did not say it was ready"));
        }
        other => panic!("{other:?}"),
    }
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn scale_down_drains_the_slot_then_stops_it() {
    let mut sim = Sim::new();
    drop(sim.start(sim.spec(2)));
    let pid = sim.current(1).unwrap();
    let mut r = sim.cmd(Command::Scale {
        target: "web".into(),
        to: ScaleTo::Exactly(1),
    });
    assert_eq!(sim.statuses()[1], ProcessStatus::Stopping);
    assert!(!sim.app().slots[1].state.routed());
    assert!(sim.asked().is_empty(), "stopped before it drained");
    sim.check_invariants();
    sim.advance(Duration::from_millis(40)).await;
    assert!(sim.asked().contains(&pid));
    sim.exit(pid, 0);
    assert_eq!(sim.app().slots.len(), 1);
    assert!(matches!(answered(&mut r), Some(Reply::Apps { .. })));
    sim.check_invariants();
}

/// The user's report (issue #12): reload, then a scale-down while the last slot's next
/// process starts; both commands hung.
#[tokio::test(start_paused = true)]
async fn scale_down_while_the_last_slot_reloads_answers_both() {
    let mut sim = Sim::ready_app(2);
    let mut reload = sim.reload();
    sim.ready(sim.next(0).unwrap());
    let next1 = sim.next(1).expect("slot 1 reloading");
    let mut scale = sim.cmd(Command::Scale {
        target: "web".into(),
        to: ScaleTo::Exactly(1),
    });
    sim.check_invariants();
    assert!(
        sim.asked().contains(&next1),
        "the next process of a removed slot runs on"
    );
    // The next process gets ready anyway: it must not replace a slot that is going.
    sim.ready(next1);
    sim.check_invariants();
    sim.settle().await;
    assert!(matches!(answered(&mut reload), Some(Reply::Apps { .. })));
    assert!(matches!(answered(&mut scale), Some(Reply::Apps { .. })));
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online]);
    assert_eq!(sim.world.lock().unwrap().live.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stop_during_a_reload_stops_current_and_next() {
    let mut sim = Sim::ready_app(1);
    let mut reload = sim.reload();
    let (cur, next) = (sim.current(0).unwrap(), sim.next(0).unwrap());
    let mut stop = sim.cmd(Command::Stop {
        target: "web".into(),
    });
    assert_eq!(sim.asked(), BTreeSet::from([cur, next]));
    sim.check_invariants();
    sim.settle().await;
    assert_eq!(sim.statuses(), vec![ProcessStatus::Stopped]);
    assert!(matches!(answered(&mut stop), Some(Reply::Apps { .. })));
    match answered(&mut reload) {
        Some(Reply::Error { error, .. }) => assert!(error.message.contains("stopped")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_current_process_crashing_during_a_reload_hands_over_to_the_next() {
    let mut sim = Sim::ready_app(1);
    let mut reload = sim.reload();
    let (cur, next) = (sim.current(0).unwrap(), sim.next(0).unwrap());
    sim.exit(cur, 1);
    assert_eq!(sim.current(0), Some(next));
    assert_eq!(sim.statuses(), vec![ProcessStatus::Starting]);
    sim.check_invariants();
    sim.ready(next);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online]);
    assert!(matches!(answered(&mut reload), Some(Reply::Apps { .. })));
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn the_next_process_crashing_fails_the_reload_and_keeps_the_old() {
    let mut sim = Sim::ready_app(1);
    let mut reload = sim.reload();
    let (cur, next) = (sim.current(0).unwrap(), sim.next(0).unwrap());
    sim.exit(next, 3);
    assert_eq!(sim.current(0), Some(cur));
    assert_eq!(sim.statuses(), vec![ProcessStatus::Online]);
    match answered(&mut reload) {
        Some(Reply::Error { error, .. }) => assert!(error.message.contains("before it was ready")),
        other => panic!("{other:?}"),
    }
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_stop_while_a_restart_waits_never_restarts() {
    let mut sim = Sim::new();
    drop(sim.start(sim.spec(1)));
    sim.exit(sim.current(0).unwrap(), 1);
    sim.exit(sim.current(0).unwrap(), 1);
    assert_eq!(sim.statuses(), vec![ProcessStatus::WaitingRestart]);
    let n = sim.spawned().len();
    let mut stop = sim.cmd(Command::Stop {
        target: "web".into(),
    });
    assert!(matches!(answered(&mut stop), Some(Reply::Apps { .. })));
    sim.advance(Duration::from_secs(60)).await;
    assert_eq!(sim.spawned().len(), n);
    assert_eq!(sim.statuses(), vec![ProcessStatus::Stopped]);
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn delete_during_a_reload_removes_the_app_and_every_process() {
    let mut sim = Sim::ready_app(2);
    let _reload = sim.reload();
    let mut del = sim.cmd(Command::Delete {
        target: "web".into(),
    });
    sim.check_invariants();
    for pid in sim.asked() {
        sim.exit(pid, 0);
    }
    assert!(sim.st.apps.is_empty());
    assert!(matches!(answered(&mut del), Some(Reply::Done { .. })));
    assert!(sim.world.lock().unwrap().live.is_empty());
    assert_eq!(sim.st.timers.keys().count(), 0, "timers outlive the app");
}

#[tokio::test(start_paused = true)]
async fn an_update_waits_while_a_reload_is_under_way() {
    let mut sim = Sim::ready_app(1);
    assert_eq!(sim.st.busy_reason(), None);
    let _reload = sim.reload();
    assert!(sim.st.busy_reason().is_some());
    sim.settle().await;
    assert_eq!(sim.st.busy_reason(), None);
}

#[tokio::test(start_paused = true)]
async fn a_program_that_cannot_start_waits_before_each_try() {
    let mut sim = Sim::new();
    drop(sim.start(sim.spec(1)));
    sim.world.lock().unwrap().fail_spawns = true;
    let n = sim.spawned().len();
    sim.exit(sim.current(0).unwrap(), 1);
    // A failed spawn is never retried at once.
    assert_eq!(sim.statuses(), vec![ProcessStatus::WaitingRestart]);
    sim.world.lock().unwrap().fail_spawns = false;
    sim.advance(Duration::from_millis(100)).await;
    assert_eq!(sim.spawned().len(), n + 1);
    sim.check_invariants();
}

// ----- an app's own primary (`--primary`) -----------------------------------------------

impl Sim {
    /// A Node app with its own primary and no worker yet, started.
    fn primary_app() -> Self {
        let mut sim = Self::new();
        let spec = AppSpec {
            node: true,
            primary: true,
            ..sim.spec(0)
        };
        drop(sim.start(spec));
        sim
    }

    fn primary_pid(&self) -> Option<u32> {
        self.app().primary.as_ref()?.state.proc().map(|p| p.pid)
    }

    /// `cluster.fork()` in the primary: the pid it returns.
    fn fork(&mut self) -> Option<u64> {
        let id = self.app().id;
        let v = self.st.fork(id, Default::default()).unwrap();
        self.st.after_event();
        v["pid"].as_u64()
    }

    fn seen(&self, i: usize) -> (bool, Option<tokio::time::Instant>) {
        let p = self.app().slots[i].state.proc().unwrap();
        (p.seen.known, p.seen.pooled)
    }
}

#[tokio::test(start_paused = true)]
async fn forks_start_workers_and_a_fork_after_a_death_takes_the_replacement() {
    let mut sim = Sim::primary_app();
    assert!(sim.primary_pid().is_some());
    assert!(sim.app().slots.is_empty());
    let a = sim.fork().unwrap() as u32;
    let b = sim.fork().unwrap() as u32;
    assert_eq!(sim.app().slots.len(), 2);
    assert_eq!((sim.current(0), sim.current(1)), (Some(a), Some(b)));
    assert!(sim.seen(0).0 && sim.seen(1).0, "forked workers are known");
    sim.check_invariants();
    // A worker dies after a stable run: herd restarts it at once, unclaimed.
    sim.advance(Duration::from_secs(2)).await;
    sim.killed(a);
    let replacement = sim.current(0).unwrap();
    assert_ne!(replacement, a);
    assert_eq!(sim.seen(0), (false, Some(tokio::time::Instant::now())));
    // The primary's exit handler forks: it gets that replacement, not a third worker.
    assert_eq!(sim.fork(), Some(u64::from(replacement)));
    assert_eq!(sim.app().slots.len(), 2);
    assert!(sim.seen(0).0);
    sim.advance(Duration::from_secs(10)).await;
    assert_eq!(
        sim.spawned().len(),
        4,
        "primary, two workers, one replacement"
    );
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_replacement_nobody_claims_is_announced_after_the_window() {
    let mut sim = Sim::primary_app();
    let a = sim.fork().unwrap() as u32;
    sim.advance(Duration::from_secs(2)).await;
    sim.killed(a);
    assert!(!sim.seen(0).0);
    assert!(sim
        .st
        .timers
        .deadline(TimerKey::Claims { app: sim.app().id })
        .is_some());
    sim.advance(super::primary::CLAIM_WINDOW - Duration::from_millis(1))
        .await;
    assert!(!sim.seen(0).0, "announced early");
    sim.advance(Duration::from_millis(1)).await;
    assert_eq!(sim.seen(0), (true, None));
    // A later fork is a new worker.
    sim.fork().unwrap();
    assert_eq!(sim.app().slots.len(), 2);
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_primary_takes_the_running_workers_back() {
    let mut sim = Sim::primary_app();
    let workers = [sim.fork().unwrap(), sim.fork().unwrap()];
    sim.advance(Duration::from_secs(2)).await;
    let old = sim.primary_pid().unwrap();
    sim.killed(old);
    let new = sim.primary_pid().unwrap();
    assert_ne!(
        new, old,
        "the primary is restarted at once after a stable run"
    );
    // Its workers kept running, waiting to be claimed; its forks get them, in order.
    assert!(!sim.seen(0).0);
    assert_eq!(sim.fork(), Some(workers[0]));
    assert_eq!(sim.fork(), Some(workers[1]));
    assert_eq!(sim.app().slots.len(), 2);
    // A third fork starts one more.
    sim.fork().unwrap();
    assert_eq!(sim.app().slots.len(), 3);
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn an_unclaimed_workers_messages_fences_and_barriers_wait_in_order_for_the_primary() {
    use super::primary::WorkerEvent;
    let mut sim = Sim::primary_app();
    let w = sim.fork().unwrap() as u32;
    sim.advance(Duration::from_secs(2)).await;
    let old = sim.primary_pid().unwrap();
    sim.killed(old);
    // The new primary does not know the worker yet: what it sends waits, in order.
    sim.st
        .worker_event(w, WorkerEvent::Message(serde_json::json!({"a": 1})));
    sim.st.worker_event(w, WorkerEvent::Fence(1));
    sim.st.worker_event(w, WorkerEvent::Barrier(1));
    sim.st
        .worker_event(w, WorkerEvent::Message(serde_json::json!({"a": 2})));
    let held = |sim: &Sim| -> Vec<String> {
        let p = sim.app().slots[0].state.proc().unwrap();
        p.seen
            .held
            .iter()
            .map(|e| {
                format!(
                    "{}:{}",
                    e["event"].as_str().unwrap(),
                    e["n"].as_u64().or(e["msg"]["a"].as_u64()).unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        held(&sim),
        ["message:1", "fence:1", "barrier:1", "message:2"]
    );
    // Its fork takes the worker: they are passed on (and no longer held).
    assert_eq!(sim.fork(), Some(u64::from(w)));
    assert!(held(&sim).is_empty());
    sim.check_invariants();
}

#[tokio::test(start_paused = true)]
async fn a_fork_starts_a_backing_off_slot_at_once_and_kill_removes_the_slot() {
    let mut sim = Sim::primary_app();
    let a = sim.fork().unwrap() as u32;
    // A second quick crash in a row backs off...
    sim.killed(a);
    let again = sim.current(0).unwrap();
    sim.killed(again);
    assert_eq!(sim.statuses(), vec![ProcessStatus::WaitingRestart]);
    // ...but the primary's fork starts it now (Node's fork is immediate).
    let b = sim.fork().unwrap() as u32;
    assert_eq!(sim.current(0), Some(b));
    assert_eq!(sim.app().slots.len(), 1);
    // worker.kill(): drained, stopped, gone; not restarted.
    let id = sim.app().id;
    let wid = sim.app().slots[0].state.proc().unwrap().seen.id;
    sim.st.on_primary_message(
        sim.primary_pid().unwrap(),
        serde_json::json!({"herd": "disconnect", "id": wid}),
    );
    sim.st.after_event();
    sim.settle().await;
    assert!(sim.st.apps[&id].slots.is_empty(), "the slot went");
    assert!(!sim.world.lock().unwrap().live.contains(&b));
    sim.check_invariants();
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// The `n`-th running process exits (by itself, or as asked).
        Exit(usize, i32),
        /// The `n`-th running process says it is ready.
        Ready(usize),
        Advance(u64),
        Stop,
        Resume,
        Restart,
        Reload,
        Scale(u32),
        /// A probe of the `n`-th running process came back: readiness or liveness, passed or
        /// not.
        Probe(usize, bool, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..8, prop_oneof![Just(0), Just(1), Just(7)]).prop_map(|(n, c)| Op::Exit(n, c)),
            3 => (0usize..8).prop_map(Op::Ready),
            3 => prop_oneof![Just(1u64), Just(20), Just(100), Just(1000), Just(3000), Just(6000)]
                .prop_map(Op::Advance),
            1 => Just(Op::Stop),
            1 => Just(Op::Resume),
            1 => Just(Op::Restart),
            2 => Just(Op::Reload),
            2 => (1u32..5).prop_map(Op::Scale),
            3 => (0usize..8, any::<bool>(), any::<bool>()).prop_map(|(n, r, ok)| Op::Probe(n, r, ok)),
        ]
    }

    async fn run(wait_ready: bool, ops: Vec<Op>) {
        run_with(wait_ready, false, ops).await;
    }

    async fn run_with(wait_ready: bool, probes: bool, ops: Vec<Op>) {
        let mut sim = Sim::new();
        let probe = probes.then(|| herd_proto::Probe {
            failure_threshold: 2,
            ..herd_proto::Probe::default()
        });
        let spec = AppSpec {
            wait_ready,
            max_restarts: 1000,
            readiness: probe.clone(),
            liveness: probe,
            // A reload on a schedule too, a minute in (00:02 in UTC), among the other commands.
            cron_restart: Some("2 0 * * *".into()),
            ..sim.spec(2)
        };
        drop(sim.start(spec));
        sim.check_invariants();
        let mut want = 2;
        for op in ops {
            let live: Vec<u32> = sim.world.lock().unwrap().live.iter().copied().collect();
            let target = || "web".to_string();
            match op {
                Op::Exit(n, code) => {
                    if let Some(&pid) = live.get(n % live.len().max(1)) {
                        sim.exit(pid, code);
                    }
                }
                Op::Ready(n) => {
                    if let Some(&pid) = live.get(n % live.len().max(1)) {
                        sim.ready(pid);
                    }
                }
                Op::Advance(ms) => sim.advance(Duration::from_millis(ms)).await,
                Op::Stop => drop(sim.cmd(Command::Stop { target: target() })),
                Op::Resume => drop(sim.cmd(Command::Resume { target: target() })),
                Op::Restart => drop(sim.cmd(Command::Restart {
                    target: target(),
                    env: None,
                })),
                Op::Reload => drop(sim.cmd(Command::Reload {
                    target: target(),
                    env: None,
                })),
                Op::Scale(n) => {
                    want = n;
                    drop(sim.cmd(Command::Scale {
                        target: target(),
                        to: ScaleTo::Exactly(n),
                    }))
                }
                Op::Probe(n, readiness, ok) => {
                    if let Some(&pid) = live.get(n % live.len().max(1)) {
                        sim.event(Event::Probe {
                            pid,
                            kind: if readiness {
                                super::super::probes::ProbeKind::Readiness
                            } else {
                                super::super::probes::ProbeKind::Liveness
                            },
                            ok,
                            detail: String::new(),
                        });
                    }
                }
            }
            sim.check_invariants();
        }
        // Left alone, it converges to the spec: every slot online (or stopped), nothing else
        // running.
        sim.settle().await;
        let app = sim.app();
        assert_eq!(app.slots.len() as u32, want, "slots: {:?}", sim.statuses());
        let expect = if app.status == AppStatus::Running {
            ProcessStatus::Online
        } else {
            ProcessStatus::Stopped
        };
        assert!(
            sim.statuses().iter().all(|s| *s == expect),
            "{:?} after settling",
            sim.statuses()
        );
        let running = sim.world.lock().unwrap().live.len() as u32;
        assert_eq!(
            running,
            if expect == ProcessStatus::Online {
                want
            } else {
                0
            }
        );
    }

    /// What an app with its own primary meets: its forks and kills mixed with everything else.
    #[derive(Debug, Clone)]
    enum PrimaryOp {
        Any(Op),
        Fork,
        /// The primary's `worker.disconnect()` of its `n`-th known worker.
        Disconnect(usize),
    }

    fn primary_op() -> impl Strategy<Value = PrimaryOp> {
        prop_oneof![
            6 => op().prop_map(PrimaryOp::Any),
            2 => Just(PrimaryOp::Fork),
            1 => (0usize..8).prop_map(PrimaryOp::Disconnect),
        ]
    }

    async fn run_primary(ops: Vec<PrimaryOp>) {
        let mut sim = Sim::primary_app();
        sim.check_invariants();
        let target = || "web".to_string();
        for op in ops {
            let live: Vec<u32> = sim.world.lock().unwrap().live.iter().copied().collect();
            match op {
                PrimaryOp::Fork => {
                    let id = sim.app().id;
                    // Refused while the app is stopped; otherwise a worker or a claim.
                    let _ = sim.st.fork(id, Default::default());
                    sim.st.after_event();
                }
                PrimaryOp::Disconnect(n) => {
                    let known: Vec<u32> = sim
                        .app()
                        .slots
                        .iter()
                        .filter_map(|s| s.state.proc())
                        .filter(|p| p.seen.known)
                        .map(|p| p.seen.id)
                        .collect();
                    if let (Some(&wid), Some(primary)) =
                        (known.get(n % known.len().max(1)), sim.primary_pid())
                    {
                        sim.st.on_primary_message(
                            primary,
                            serde_json::json!({"herd": "disconnect", "id": wid}),
                        );
                        sim.st.after_event();
                    }
                }
                PrimaryOp::Any(Op::Exit(n, code)) => {
                    if let Some(&pid) = live.get(n % live.len().max(1)) {
                        sim.exit(pid, code);
                    }
                }
                PrimaryOp::Any(Op::Ready(n)) => {
                    if let Some(&pid) = live.get(n % live.len().max(1)) {
                        sim.ready(pid);
                    }
                }
                PrimaryOp::Any(Op::Advance(ms)) => sim.advance(Duration::from_millis(ms)).await,
                // The primary's app has no probes: a result for it is dropped.
                PrimaryOp::Any(Op::Probe(n, _, ok)) => {
                    if let Some(&pid) = live.get(n % live.len().max(1)) {
                        sim.event(Event::Probe {
                            pid,
                            kind: super::super::probes::ProbeKind::Liveness,
                            ok,
                            detail: String::new(),
                        });
                    }
                }
                PrimaryOp::Any(Op::Stop) => drop(sim.cmd(Command::Stop { target: target() })),
                PrimaryOp::Any(Op::Resume) => drop(sim.cmd(Command::Resume { target: target() })),
                PrimaryOp::Any(Op::Restart) => drop(sim.cmd(Command::Restart {
                    target: target(),
                    env: None,
                })),
                PrimaryOp::Any(Op::Reload) => drop(sim.cmd(Command::Reload {
                    target: target(),
                    env: None,
                })),
                PrimaryOp::Any(Op::Scale(n)) => drop(sim.cmd(Command::Scale {
                    target: target(),
                    to: ScaleTo::Exactly(n),
                })),
            }
            sim.check_invariants();
            // Node worker ids are never given twice among running workers, and a worker is
            // either known to the primary or waiting to be claimed, never both.
            let mut ids = BTreeSet::new();
            for s in &sim.app().slots {
                for p in [s.state.proc(), s.state.next()].into_iter().flatten() {
                    assert!(ids.insert(p.seen.id), "worker id {} twice", p.seen.id);
                    assert!(!(p.seen.known && p.seen.pooled.is_some()));
                }
            }
        }
        // Left alone, it converges: the primary runs (if the app does), every worker slot is
        // online, and every worker is known to the primary once the claim window has passed.
        sim.settle().await;
        sim.advance(super::super::primary::CLAIM_WINDOW).await;
        sim.settle().await;
        let app = sim.app();
        let running = app.status == AppStatus::Running;
        let primary = app.primary.as_ref().map(|p| p.state.status());
        let expect = if running {
            ProcessStatus::Online
        } else {
            ProcessStatus::Stopped
        };
        assert_eq!(primary, Some(expect), "the primary after settling");
        // Slots the primary's disconnects left as holes (gone) count for nothing.
        let kept: Vec<&super::super::Slot> = app
            .slots
            .iter()
            .filter(|s| !matches!(s.state, SlotState::Gone))
            .collect();
        let statuses: Vec<ProcessStatus> = kept.iter().map(|s| s.state.status()).collect();
        assert!(statuses.iter().all(|s| *s == expect), "{statuses:?}");
        if running {
            for s in &kept {
                let p = s.state.proc().expect("a running worker");
                assert!(p.seen.known, "worker {} never reached the primary", p.pid);
            }
        }
        let live = sim.world.lock().unwrap().live.len();
        let want = if running { kept.len() + 1 } else { 0 };
        assert_eq!(live, want);
    }

    /// A single-threaded runtime on paused time, as `#[tokio::test(start_paused = true)]`.
    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn an_app_with_a_primary_keeps_every_invariant_and_converges(
            ops in proptest::collection::vec(primary_op(), 1..60),
        ) {
            let rt = paused_runtime();
            rt.block_on(run_primary(ops));
        }

        #[test]
        fn random_events_with_health_probes_keep_every_invariant_and_converge(
            wait_ready in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let rt = paused_runtime();
            rt.block_on(run_with(wait_ready, true, ops));
        }

        #[test]
        fn random_events_keep_every_invariant_and_converge(
            wait_ready in any::<bool>(),
            ops in proptest::collection::vec(op(), 1..60),
        ) {
            let rt = paused_runtime();
            rt.block_on(run(wait_ready, ops));
        }
    }
}
