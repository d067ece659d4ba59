//! What the unit tests of `list`, `describe` and `monit` build replies from: one online
//! instance and one running app, every field set, to be adjusted with struct-update syntax.

use herd_proto::{AppInfo, AppStatus, Balance, ProcessInfo, ProcessStatus};

/// Instance `instance`, pid `pid`: online for 65 s, 0.5% CPU, 3 MiB.
pub fn process(instance: u32, pid: u32) -> ProcessInfo {
    ProcessInfo {
        instance,
        pid: Some(pid),
        status: ProcessStatus::Online,
        restarts: 0,
        uptime_ms: Some(65_000),
        cpu_percent: Some(0.5),
        memory_bytes: Some(3 << 20),
        messages_dropped: 0,
        subscriptions: 0,
        bus_refused: 0,
        last_exit: None,
        env_version: 1,
        cgroup: None,
        pm2_metrics: Default::default(),
        actions: Vec::new(),
        health: None,
    }
}

/// App `name` (id `id`), running on 127.0.0.1:8000 with these instances.
pub fn app(id: u32, name: &str, processes: Vec<ProcessInfo>) -> AppInfo {
    AppInfo {
        id,
        name: name.into(),
        status: AppStatus::Running,
        listen: vec!["127.0.0.1:8000".into()],
        port: Some(8000),
        balance: Balance::default(),
        namespace: herd_proto::DEFAULT_NAMESPACE.into(),
        processes,
        primary: None,
        spec: None,
        env_version: 1,
        containment: None,
        routing_fallback: false,
        waiting_for: Vec::new(),
        generation: 1,
        previous: Vec::new(),
        next_cron_restart_ms: None,
    }
}
