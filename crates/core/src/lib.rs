//! herd's core: listening sockets shared by instances, spawning, supervision with restart
//! policy, log capture and the per-instance channels. Used by the daemon and by `herd run`.
//!
//! It owns processes and sockets; it does not own the control socket, the CLI or persistence.

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
pub mod limits;
pub mod logs;
pub mod node;
pub mod notify;
pub mod policy;
pub mod ratelimit;
pub mod sockets;
pub mod spawn;
pub mod stats;
// Not yet held to the rule above: the supervisor is being rewritten, and denies these lints
// itself once it is clean (then this allow goes, and the crate moves to `[lints]`).
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
pub mod supervisor;
pub mod watch;

pub use limits::Limits;
pub use supervisor::{log_path, sweep_leftovers, Config, Lifecycle, LogRef, Supervisor};
