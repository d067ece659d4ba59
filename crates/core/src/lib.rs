//! herd's core: listening sockets shared by instances, spawning, supervision with restart
//! policy, log capture and the per-instance channels. Used by the daemon and by `herd run`.
//!
//! It owns processes and sockets; it does not own the control socket, the CLI or persistence.

// A panic in the daemon is every app down (the release build aborts): no unwrap, expect,
// indexing or panic outside tests, in the whole crate. (A crate-wide `[lints]` table in
// Cargo.toml cannot spare the tests, hence the attribute.)
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod bus;
pub mod cgroup;
pub mod handover;
pub mod health;
pub mod ipc;
pub mod keeper;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod node_shims;
pub mod notify;
pub mod policy;
pub mod ratelimit;
pub mod runtimes;
pub mod schedule;
pub mod sockets;
pub mod spawn;
pub mod stats;
pub mod supervisor;
pub mod user;
pub mod watch;

pub use limits::Limits;
pub use supervisor::{log_path, sweep_leftovers, Config, Lifecycle, LogRef, Supervisor};
