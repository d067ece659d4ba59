//! Wire types shared by the `herd` CLI and daemon: the control protocol spoken over
//! `HERD_HOME/herd.sock`, the app specification it carries, the newline-delimited JSON
//! codec with its size limit, and ([`worker`]) the messages on an instance's own channel.
//!
//! This crate owns only data shapes and framing. It does no I/O of its own beyond what a
//! caller hands it, and knows nothing about processes or sockets.
//!
//! Every request and every reply is one JSON object on one line, tagged with the protocol
//! version `v`. See `docs/protocol.md` for the full description.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod codec;
mod control;
mod spec;
pub mod worker;

pub use codec::{encode_line, EncodeError, LineBuffer, LineError, MAX_CONTROL_LINE};
pub use control::{
    AppInfo, AppStatus, BusStats, Command, Containment, ErrorBody, ErrorCode, ExitInfo, Health,
    LogStream, ProbeResult, ProcessInfo, ProcessStatus, Reply, Request, ScaleTo, PROTOCOL_VERSION,
};
pub use spec::{
    is_secret_key, is_valid_name, masked_value, same_addresses, AppSpec, Balance, ListenSpec,
    LogSpec, Probe, ProbeCheck, SpecError, DEFAULT_NAMESPACE,
};
