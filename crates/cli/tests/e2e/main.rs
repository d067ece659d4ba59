//! herd's end-to-end tests, run against the real `herd` binary: one test binary (issue #12),
//! one module per area, sharing the harness in `common`.

mod common;

mod apply;
mod bad_input;
mod bus;
mod cluster;
mod contain;
mod cross_host;
mod deploy;
mod direct;
mod embedded;
mod flood;
mod foreground;
mod hardening;
mod health;
mod keeper;
mod lifecycle;
mod listen;
mod listen_flood;
mod log_options;
mod logs;
mod metrics;
mod monit;
mod node;
mod primary;
mod races;
mod runtimes;
mod three_hosts;
mod update;
mod users;
mod vocabulary;
mod web;
mod worker_threads;
