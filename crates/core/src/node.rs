//! Node's cluster-worker protocol, as herd speaks it from the primary's side.
//!
//! A Node instance is started as a cluster worker (`NODE_UNIQUE_ID`, `NODE_CHANNEL_FD`, json
//! serialization), exactly as under PM2's cluster mode. Every `listen()` the app makes arrives
//! as a `queryServer` request; herd answers with a listening socket it holds, passed over the
//! channel (`NODE_HANDLE`, `SCM_RIGHTS`). A `disconnect` message makes the worker close its
//! servers, finish in-flight requests and exit: the graceful stop of Node's own
//! `worker.disconnect()`. See `shared/research/node-integration.md` for the verified facts.
//!
//! This module only reads and builds messages; the supervisor decides which socket to give.

use serde_json::{json, Value};

/// The kind of address a worker asks to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    /// TCP over IPv4 (also `listen(port)` without a host).
    Tcp4,
    /// TCP over IPv6.
    Tcp6,
    /// A Unix socket path (a "pipe" in Node's words).
    Pipe,
    /// A UDP socket (`dgram`): herd does not share these.
    Udp,
}

/// A worker's `queryServer` request: "give me a socket for this address".
#[derive(Debug, Clone, PartialEq)]
pub struct QueryServer {
    /// Sequence number to acknowledge.
    pub seq: u64,
    /// Host the app asked for, if any.
    pub address: Option<String>,
    /// Port the app asked for (0: any free port).
    pub port: u16,
    /// Kind of address.
    pub kind: AddressType,
    /// The worker's own count of listens on this address (0 for the first).
    pub index: u64,
}

impl QueryServer {
    /// Reads a `queryServer` message; `None` for other messages or unusable ones.
    pub fn parse(msg: &Value) -> Option<Self> {
        if msg.get("act")?.as_str()? != "queryServer" {
            return None;
        }
        let kind = match &msg["addressType"] {
            Value::Number(n) if n.as_i64() == Some(4) => AddressType::Tcp4,
            Value::Number(n) if n.as_i64() == Some(6) => AddressType::Tcp6,
            Value::Number(n) if n.as_i64() == Some(-1) => AddressType::Pipe,
            Value::String(s) if s.starts_with("udp") => AddressType::Udp,
            _ => AddressType::Tcp4,
        };
        Some(Self {
            seq: msg.get("seq")?.as_u64()?,
            address: msg["address"].as_str().map(str::to_string),
            port: msg["port"].as_u64().unwrap_or(0).min(u64::from(u16::MAX)) as u16,
            kind,
            index: msg["index"].as_u64().unwrap_or(0),
        })
    }

    /// The address as people write it, for messages: `127.0.0.1:8080`, `:8080`, a path.
    pub fn display_addr(&self) -> String {
        match self.kind {
            AddressType::Pipe => self.address.clone().unwrap_or_default(),
            AddressType::Tcp6 => {
                format!("[{}]:{}", self.address.as_deref().unwrap_or(""), self.port)
            }
            _ => format!("{}:{}", self.address.as_deref().unwrap_or(""), self.port),
        }
    }

    /// The opaque key the worker quotes when it closes the server.
    pub fn key(&self) -> String {
        format!(
            "{}:{}:{:?}:{}",
            self.address.as_deref().unwrap_or(""),
            self.port,
            self.kind,
            self.index
        )
    }
}

/// Sequence number of a cluster message (for acknowledgements).
pub fn seq(msg: &Value) -> Option<u64> {
    msg.get("seq")?.as_u64()
}

/// The `act` of a cluster message.
pub fn act(msg: &Value) -> &str {
    msg.get("act").and_then(Value::as_str).unwrap_or("")
}

/// The answer to a `queryServer` that carries a listening socket (sent with the fd).
/// `socketType: 1` (a TCP handle, as Node's own primary writes it) is what Deno's Node layer
/// needs to accept on the socket; Node ignores it.
pub fn handle_reply(q: &QueryServer, our_seq: u64) -> Value {
    json!({
        "cmd": "NODE_HANDLE",
        "type": "net.Native",
        "socketType": 1,
        "msg": {"cmd": "NODE_CLUSTER", "errno": 0, "key": q.key(), "ack": q.seq, "data": null, "seq": our_seq}
    })
}

/// The answer to a `queryServer` that failed: `errno` is a positive errno value, sent the way
/// libuv reports it (negative), so the app sees e.g. `Error: bind EADDRINUSE`.
pub fn error_reply(q: &QueryServer, errno: i32, our_seq: u64) -> Value {
    json!({"cmd": "NODE_CLUSTER", "errno": -errno, "key": q.key(), "ack": q.seq, "data": null, "seq": our_seq})
}

/// A plain acknowledgement of the worker's message `seq`.
pub fn ack(seq: u64, our_seq: u64) -> Value {
    json!({"cmd": "NODE_CLUSTER", "ack": seq, "seq": our_seq})
}

/// Asks the worker to close its servers, finish in-flight requests, disconnect and exit.
pub fn disconnect(our_seq: u64) -> Value {
    json!({"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": our_seq})
}

/// Whether a script is run by Node: by interpreter name or by its `#!` line.
pub fn is_node(interpreter: Option<&str>, script: &std::path::Path) -> bool {
    if let Some(i) = interpreter {
        let base = std::path::Path::new(i)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(i);
        // Deno runs Node's cluster workers too (`--interpreter deno --interpreter-args "run -A"`).
        return base == "node" || base == "nodejs" || base == "deno";
    }
    shebang_is_node(script)
}

/// True when the file starts with `#!…node` (`#!/usr/bin/env node`, `#!/usr/bin/node`).
pub fn shebang_is_node(script: &std::path::Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 128];
    let Ok(mut f) = std::fs::File::open(script) else {
        return false;
    };
    let n = f.read(&mut head).unwrap_or(0);
    let head = head.get(..n).unwrap_or_default();
    if !head.starts_with(b"#!") {
        return false;
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    line.split_whitespace()
        .any(|w| w.ends_with("/node") || w == "node" || w.ends_with("/nodejs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_query_server() {
        let m = json!({"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":41707,"addressType":4,"backlog":511,"seq":1});
        let q = QueryServer::parse(&m).unwrap();
        assert_eq!(q.port, 41707);
        assert_eq!(q.kind, AddressType::Tcp4);
        assert_eq!(q.seq, 1);
        let r = handle_reply(&q, 7);
        assert_eq!(r["msg"]["ack"], 1);
        assert_eq!(r["type"], "net.Native");
        let e = error_reply(&q, libc::EADDRINUSE, 8);
        assert_eq!(e["errno"], -98);
        let udp = json!({"act":"queryServer","addressType":"udp4","port":5,"seq":2});
        assert_eq!(QueryServer::parse(&udp).unwrap().kind, AddressType::Udp);
        assert!(QueryServer::parse(&json!({"act":"online","seq":0})).is_none());
    }

    #[test]
    fn detects_node_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let next = dir.path().join("next");
        std::fs::write(&next, "#!/usr/bin/env node\nrequire('x')\n").unwrap();
        let sh = dir.path().join("run.sh");
        std::fs::write(&sh, "#!/bin/sh\nexec node x\n").unwrap();
        assert!(is_node(None, &next));
        assert!(!is_node(None, &sh));
        assert!(is_node(Some("/usr/bin/node"), &sh));
        assert!(!is_node(Some("python3"), &next));
    }
}
