//! The state a daemon hands its successor on `herd update` (`handover::parse`, what
//! `handover::read` does with the memfd's bytes), and what the successor computes from it
//! before it adopts any fd: the list of fds to close on exec.
//!
//! No fd is adopted here: the numbers are only read.
//!
//! Invariants beyond "no panic": a handover that parses serialises and parses again to the
//! same JSON (what the next update writes is what this one read), and `fds` lists the
//! channel's and the daemon's own fds.
#![no_main]

use herd_core::handover;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = handover::parse(data) else {
        return;
    };
    assert_eq!(h.format, handover::FORMAT);
    let fds = handover::fds(&h);
    assert!(fds.contains(&h.supervisor.notify_fd));
    for fd in h.daemon_fds.values() {
        assert!(fds.contains(fd));
    }
    let first = serde_json::to_value(&h).expect("a handover serialises");
    let text = serde_json::to_vec(&h).expect("a handover serialises");
    let again = handover::parse(&text).expect("a written handover reads back");
    let second = serde_json::to_value(&again).expect("a handover serialises");
    assert_eq!(first, second, "a handover changed on its way through JSON");
});
