//! The control socket's path from bytes to a request the supervisor would act on: the
//! daemon's `LineBuffer` (fed in reads of fuzzer-chosen sizes, with a fuzzer-chosen limit),
//! `serde_json` into `Request`, the version check, and the checks a `start` spec passes
//! before anything is bound or spawned.
//!
//! Input: byte 0 picks the line limit (1..=256, or the real 1 MiB when 0), byte 1 seeds the
//! read sizes and whether the buffer is moved through `parts`/`from_parts` (as a handover
//! does); the rest is the stream.
//!
//! Invariants beyond "no panic":
//! - the lines and refusals equal a reference split of the stream (`\n`, one trailing `\r`
//!   stripped, a line longer than the limit refused once and skipped),
//! - no line is longer than the limit or holds a `\n`,
//! - a parsed request encodes as one line that parses back to the same request.
#![no_main]

use herd_proto::{encode_line, Command, LineBuffer, LineError, Request, MAX_CONTROL_LINE};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Event {
    Line(Vec<u8>),
    TooLong,
}

/// What the stream must yield, from first principles.
fn reference(stream: &[u8], limit: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut pieces = stream.split(|&b| b == b'\n').peekable();
    while let Some(piece) = pieces.next() {
        let complete = pieces.peek().is_some();
        if piece.len() > limit {
            out.push(Event::TooLong);
        } else if complete {
            let line = piece.strip_suffix(b"\r").unwrap_or(piece);
            out.push(Event::Line(line.to_vec()));
        }
    }
    out
}

fn drain(buf: &mut LineBuffer, limit: usize, events: &mut Vec<Event>) {
    loop {
        match buf.next_line() {
            Ok(Some(line)) => {
                assert!(
                    line.len() <= limit,
                    "a line of {} bytes passed the limit {limit}",
                    line.len()
                );
                assert!(!line.contains(&b'\n'));
                events.push(Event::Line(line));
            }
            Ok(None) => return,
            Err(LineError::TooLong { limit: l }) => {
                assert_eq!(l, limit);
                events.push(Event::TooLong);
                // The instance channel goes on past an oversized line; the control socket
                // closes the connection, which is the first error in this same sequence.
                buf.skip_current();
            }
        }
    }
}

/// What the daemon does with one line before the supervisor sees it.
fn handle(line: &[u8]) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(_) => {
            // The daemon looks for a version to say "wrong version" rather than "bad request".
            let _ = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("v").and_then(serde_json::Value::as_u64));
            return;
        }
    };
    let wire = encode_line(&req).expect("a value encodes");
    assert_eq!(wire.last(), Some(&b'\n'));
    assert!(
        !wire[..wire.len() - 1].contains(&b'\n'),
        "an encoded request spans lines"
    );
    let again: Request = serde_json::from_slice(&wire).expect("an encoded request parses");
    assert_eq!(again, req, "a request changed on its way through JSON");
    if let Command::Send { to, .. } | Command::Request { to, .. } = &req.cmd {
        address(to);
    }
    if let Command::Start { spec } = &req.cmd {
        let _ = spec.validate();
        let _ = herd_core::supervisor::parse_signal(&spec.kill_signal);
        for l in &spec.listen {
            let _ = l.addr.parse::<herd_core::sockets::ListenAddr>();
        }
        for (k, v) in &spec.env {
            let _ = herd_proto::masked_value(k, v);
        }
        let _ = herd_proto::is_valid_name(&spec.name);
    }
}

/// A bus address, as the supervisor reads `to`.
fn address(to: &str) {
    if let Ok(a) = herd_core::bus::Address::parse(to) {
        let _ = a.reaches("web-1");
        let _ = a.reaches_others("web-1");
        if let Some(host) = &a.host {
            let _ = herd_core::bus::host_channel(host);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, mode, stream @ ..] = data else {
        return;
    };
    let limit = match *limit {
        0 => MAX_CONTROL_LINE,
        n => usize::from(n),
    };
    let mut sizes = u64::from(*mode) | 1;
    let mut buf = LineBuffer::new(limit);
    let mut events = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        // A small xorshift makes read sizes of 1 to 64 bytes from the mode byte.
        sizes ^= sizes << 13;
        sizes ^= sizes >> 7;
        sizes ^= sizes << 17;
        let n = (sizes % 64) as usize + 1;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend(chunk);
        drain(&mut buf, limit, &mut events);
        if mode & 0x80 != 0 && sizes & 1 == 0 {
            let (bytes, skipping) = buf.parts();
            buf = LineBuffer::from_parts(limit, bytes, skipping);
        }
    }
    assert_eq!(events, reference(stream, limit));
    for e in &events {
        if let Event::Line(line) = e {
            handle(line);
        }
    }
});
