//! What an instance can send the daemon on its channel: lines (herd's `{"herd":"ready"}`, an
//! app's own messages, Node's escaped lone surrogates) classified by `ipc::classify`, and
//! Node's cluster messages read by `node::QueryServer::parse` and answered.
//!
//! Bus addresses in app messages (`Address::parse`) and the broker's envelopes are read too.
//!
//! Input: the bytes of the channel, split into lines as the daemon's reader does (with the
//! real 1 MiB limit; whitespace-only lines are skipped as there).
//!
//! Invariants beyond "no panic":
//! - a line that is JSON is never `Malformed`, and every message handed on re-encodes as
//!   one line that parses back to the same value (the bus forwards it so),
//! - an envelope from the broker re-encodes as one line,
//! - an answer to a `queryServer` acknowledges its `seq` and is one line.
#![no_main]

use herd_core::bus::{Address, Envelope};
use herd_core::ipc::{classify, Inbound, MAX_IPC_MESSAGE};
use herd_core::node::{self, QueryServer};
use herd_proto::LineBuffer;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn one_line(v: &Value) {
    let bytes = serde_json::to_vec(v).expect("a Value serialises");
    assert!(!bytes.contains(&b'\n'), "a message spans lines: {v}");
}

fn cluster(msg: &Value) {
    let _ = node::seq(msg);
    let _ = node::act(msg);
    if let Some(q) = QueryServer::parse(msg) {
        assert_eq!(node::act(msg), "queryServer");
        let _ = q.display_addr();
        let _ = q.key();
        let reply = node::handle_reply(&q, &q.data, 1);
        assert_eq!(reply["msg"]["ack"].as_u64(), Some(q.seq));
        one_line(&reply);
        let err = node::error_reply(&q, 98, 2);
        assert_eq!(err["ack"].as_u64(), Some(q.seq));
        one_line(&err);
    }
    if let Some(seq) = node::seq(msg) {
        one_line(&node::ack(seq, 3));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = LineBuffer::new(MAX_IPC_MESSAGE);
    lines.extend(data);
    while let Ok(Some(line)) = lines.next_line() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // What another host's daemon puts on the broker is read the same way.
        if let Ok(env) = serde_json::from_slice::<Envelope>(&line) {
            let wire = serde_json::to_vec(&env).expect("an envelope serialises");
            assert!(!wire.contains(&b'\n'));
        }
        let strict = serde_json::from_slice::<Value>(&line).ok();
        let got = classify(&line);
        if strict.is_none() && !matches!(got, Inbound::Malformed(_)) {
            // Only the lone-surrogate fallback takes what serde_json refuses.
            assert!(
                line.windows(2).any(|w| w == b"\\u"),
                "non-JSON taken: {got:?}"
            );
        }
        match got {
            Inbound::Malformed(_) => {
                assert!(strict.is_none(), "JSON refused as malformed");
            }
            Inbound::Cluster(v) => {
                assert_eq!(v.get("cmd").and_then(Value::as_str), Some("NODE_CLUSTER"));
                one_line(&v);
                cluster(&v);
            }
            Inbound::App(v) => {
                one_line(&v);
                // The daemon passes it on as text that its recipient parses again.
                let wire = serde_json::to_vec(&v).expect("a Value serialises");
                let again: Value = serde_json::from_slice(&wire).expect("it parses back");
                assert_eq!(again, v, "a message changed on its way through the daemon");
                // Bus messages (`{"herd":"send","to":"api:1",…}`) name an address.
                if let Some(to) = v.get("to").and_then(Value::as_str) {
                    if let Ok(a) = Address::parse(to) {
                        let _ = (a.reaches("web-1"), a.reaches_others("web-1"));
                    }
                }
                // A worker's message goes on to the bus; its cluster parts are read as well.
                cluster(&v);
            }
            Inbound::Preload(m) => {
                // The preload's messages never reach the bus; one herd knows writes back whole.
                if let Some(m) = m {
                    let v = m.to_value();
                    one_line(&v);
                    assert_eq!(node::PreloadMsg::parse(&v), Some(m));
                }
            }
            Inbound::Ready | Inbound::HandleAck | Inbound::HandleNack => {}
            Inbound::TooLarge(_) | Inbound::Closed => unreachable!("not made by classify"),
        }
    }
});
