//! What one instance, one client or one app may take from the daemon: every bound that keeps a
//! misbehaving (or hostile) instance from growing the daemon's memory, file descriptors or log
//! without end. Read from `HERD_HOME/config.toml` by the daemon; the defaults suit a host that
//! runs a few dozen instances. Enforcement lives with each owner (bus router, Node cluster
//! protocol, control server, instance channels); this file only holds the numbers.

use serde::{Deserialize, Serialize};

/// The daemon's limits. Every field has a default, so an older handover (`herd update`) or a
/// `config.toml` that names none of them gets these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Longest bus topic, in bytes.
    pub max_topic_bytes: usize,
    /// Topics one instance may subscribe to at once.
    pub max_subscriptions: usize,
    /// Requests of one instance that may wait for a reply at once.
    pub max_pending_requests: usize,
    /// Direct bus channels one instance keeps open at once (docs/bus.md, "Direct channels");
    /// past it, its client closes the least recently used. 0: no direct channels, everything
    /// goes through the daemon.
    pub max_direct_channels: usize,
    /// Listening sockets the daemon binds for one app's Node workers beyond the app's own
    /// addresses (`listen()` on other ports).
    pub max_listen_sockets: usize,
    /// Control connections served at once.
    pub max_control_connections: usize,
    /// A control connection that sends no request for this long is closed (ms).
    pub control_idle_timeout_ms: u64,
    /// Lines one instance may make the daemon write to its own log per interval; the rest are
    /// counted and reported as "N more suppressed".
    pub instance_log_burst: u32,
    /// The interval of `instance_log_burst` (ms).
    pub instance_log_interval_ms: u64,
    /// `daemon.log` moves to `daemon.log.1` past this size (bytes).
    pub daemon_log_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_topic_bytes: 1024,
            max_subscriptions: 1024,
            max_pending_requests: 1024,
            max_direct_channels: 128,
            max_listen_sockets: 32,
            max_control_connections: 1024,
            control_idle_timeout_ms: 60_000,
            instance_log_burst: 20,
            instance_log_interval_ms: 10_000,
            daemon_log_max_bytes: 10 << 20,
        }
    }
}
