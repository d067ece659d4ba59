//! Node's cluster-worker protocol, as herd speaks it from the primary's side.
//!
//! A Node instance is started as a cluster worker (`NODE_UNIQUE_ID`, `NODE_CHANNEL_FD`, json
//! serialization), exactly as under PM2's cluster mode. Every `listen()` the app makes arrives
//! as a `queryServer` request; herd answers with a listening socket it holds, passed over the
//! channel (`NODE_HANDLE`, `SCM_RIGHTS`). A `disconnect` message makes the worker close its
//! servers, finish in-flight requests and exit: the graceful stop of Node's own
//! `worker.disconnect()`. See `shared/research/node-integration.md` for the verified facts.
//!
//! herd's own messages to and from its worker preload (`node/preload/worker.cjs`) travel on
//! the same channel as [`PreloadMsg`]: their `cmd` is `NODE_HERD`, so Node hands them to
//! `process.on('internalMessage')` and the app never sees them.
//!
//! This module only reads and builds messages; the supervisor decides which socket to give.

use serde::{Deserialize, Serialize};
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
    /// What the worker offers to share with the others on this address (a TLS server's
    /// session ticket keys); Node's primary answers every worker with the first one's.
    pub data: Value,
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
            data: msg.get("data").cloned().unwrap_or(Value::Null),
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
/// `data` is what the first worker on this address offered (see [`QueryServer::data`]): an
/// HTTPS server's workers need it (Node's TLS code reads its ticket keys from it).
pub fn handle_reply(q: &QueryServer, data: &Value, our_seq: u64) -> Value {
    json!({
        "cmd": "NODE_HANDLE",
        "type": "net.Native",
        "socketType": 1,
        "msg": {"cmd": "NODE_CLUSTER", "errno": 0, "key": q.key(), "ack": q.seq, "data": data, "seq": our_seq}
    })
}

impl QueryServer {
    /// The address a worker listens on, the same for every worker of an app (not its `key`,
    /// which counts the worker's own listens).
    pub fn address_key(&self) -> String {
        format!(
            "{}|{}|{:?}",
            self.address.as_deref().unwrap_or(""),
            self.port,
            self.kind
        )
    }
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

/// The `cmd` of herd's messages to and from its worker preload.
pub const PRELOAD_CMD: &str = "NODE_HERD";

/// The version of the preload protocol herd speaks (the preload's `hello` names its own).
pub const PRELOAD_VERSION: u32 = 1;

/// herd's messages to and from its worker preload (`node/preload/worker.cjs`), sent as
/// `{"cmd":"NODE_HERD","act":…}`. The graceful stop of a worker with the preload:
/// herd sends [`PreloadMsg::Drain`]; the worker stops accepting, answers with
/// `Connection: close`, closes connections idle for the whole grace period, and answers
/// [`PreloadMsg::Drained`]; herd then sends Node's [`disconnect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "act", rename_all = "snake_case")]
pub enum PreloadMsg {
    /// Worker → herd, when the preload loads (before the app's code): this worker
    /// understands `drain`.
    Hello {
        /// The preload's protocol version.
        version: u32,
    },
    /// herd → worker: stop accepting, let clients finish, close connections that stay idle
    /// for `grace_ms`, then say `drained`.
    Drain {
        /// How long an idle keep-alive connection is left open for its client to reuse
        /// (and be answered `Connection: close`).
        grace_ms: u64,
    },
    /// Worker → herd: its servers are closed and their connections gone.
    Drained,
    /// A fence between the two ways a message travels between a worker and its app's own
    /// primary (`--primary`): through herd (this channel), or on the direct link (a Unix
    /// socket the primary accepts on, `HERD_PRIMARY_LINK`). A message on the link carries
    /// the number of the last fence its sender sent through herd, and is delivered only once
    /// that fence has arrived: whatever went through herd before it (Node's `online` and
    /// `listening`, messages sent before the link was up) comes first, as on Node's one
    /// channel. Worker → herd → primary (`primary` absent), or primary → herd → worker
    /// (`primary`: the primary's pid, as the link's first line names it).
    Fence {
        /// The fence's number, counted up by its sender.
        n: u64,
        /// The primary that sent it (herd → worker only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        primary: Option<u32>,
    },
    /// Worker → herd → primary: the worker wrote barrier `n` on its direct link, and what it
    /// sends through herd from now on comes after it; the primary takes nothing more of the
    /// worker's from herd until it has read the link up to the barrier.
    Barrier {
        /// The barrier's number, counted up by the worker.
        n: u64,
    },
}

/// [`PreloadMsg`] as it travels: with its `cmd`.
#[derive(Serialize, Deserialize)]
struct PreloadPacket {
    cmd: PreloadCmd,
    #[serde(flatten)]
    msg: PreloadMsg,
}

#[derive(Serialize, Deserialize)]
enum PreloadCmd {
    #[serde(rename = "NODE_HERD")]
    NodeHerd,
}

impl PreloadMsg {
    /// The message as sent on the channel.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(PreloadPacket {
            cmd: PreloadCmd::NodeHerd,
            msg: self.clone(),
        })
        .unwrap_or(Value::Null)
    }

    /// Reads a `NODE_HERD` message; `None` for another `cmd` or an `act` herd does not know.
    pub fn parse(v: &Value) -> Option<Self> {
        PreloadPacket::deserialize(v).ok().map(|p| p.msg)
    }
}

/// How long a draining worker leaves an idle keep-alive connection open: half the kill
/// timeout (the other half is for requests under way and the exit), at most
/// [`DRAIN_GRACE_MAX`]. A client that reuses its connection within it gets its answer, with
/// `Connection: close`; one idle for all of it is closed.
pub fn drain_grace(kill_timeout_ms: u64) -> u64 {
    (kill_timeout_ms / 2).min(DRAIN_GRACE_MAX)
}

/// The longest grace [`drain_grace`] gives.
pub const DRAIN_GRACE_MAX: u64 = 1_000;

/// Whether the interpreter is Deno (which runs Node's cluster workers, but not herd's preloads).
pub fn is_deno(interpreter: Option<&str>) -> bool {
    interpreter.is_some_and(|i| {
        std::path::Path::new(i)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n == "deno")
    })
}

/// Whether a script is run by Node: by interpreter name or by its `#!` line.
pub fn is_node(interpreter: Option<&str>, script: &std::path::Path) -> bool {
    if let Some(i) = interpreter {
        let base = std::path::Path::new(i)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(i);
        // Deno runs Node's cluster workers too, but only when asked (`--node-cluster`): by
        // default it runs as a plain program, where Deno.serve works as well (crate::runtimes).
        return base == "node" || base == "nodejs";
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
        let r = handle_reply(&q, &Value::Null, 7);
        assert_eq!(r["msg"]["ack"], 1);
        assert_eq!(r["type"], "net.Native");
        let e = error_reply(&q, libc::EADDRINUSE, 8);
        assert_eq!(e["errno"], -98);
        let udp = json!({"act":"queryServer","addressType":"udp4","port":5,"seq":2});
        assert_eq!(QueryServer::parse(&udp).unwrap().kind, AddressType::Udp);
        assert!(QueryServer::parse(&json!({"act":"online","seq":0})).is_none());
    }

    #[test]
    fn preload_messages_read_and_write_with_their_cmd() {
        let drain = PreloadMsg::Drain { grace_ms: 800 }.to_value();
        assert_eq!(
            drain,
            json!({"cmd": "NODE_HERD", "act": "drain", "grace_ms": 800})
        );
        assert_eq!(
            PreloadMsg::parse(&json!({"cmd":"NODE_HERD","act":"hello","version":1})),
            Some(PreloadMsg::Hello { version: 1 })
        );
        assert_eq!(
            PreloadMsg::parse(&json!({"cmd":"NODE_HERD","act":"drained"})),
            Some(PreloadMsg::Drained)
        );
        // Another cmd, or an act of a later preload, is not one of these.
        assert_eq!(
            PreloadMsg::parse(&json!({"cmd":"NODE_CLUSTER","act":"drained"})),
            None
        );
        assert_eq!(
            PreloadMsg::parse(&json!({"cmd":"NODE_HERD","act":"later"})),
            None
        );
        assert_eq!(PreloadMsg::parse(&json!("drained")), None);
        // A fence: from a worker without `primary`, to one with the primary's pid.
        assert_eq!(
            PreloadMsg::parse(&json!({"cmd":"NODE_HERD","act":"fence","n":3})),
            Some(PreloadMsg::Fence {
                n: 3,
                primary: None
            })
        );
        assert_eq!(
            PreloadMsg::Fence {
                n: 4,
                primary: Some(77)
            }
            .to_value(),
            json!({"cmd":"NODE_HERD","act":"fence","n":4,"primary":77})
        );
        assert_eq!(
            PreloadMsg::parse(&json!({"cmd":"NODE_HERD","act":"fence","n":-1})),
            None
        );
    }

    #[test]
    fn the_drain_grace_is_half_the_kill_timeout_up_to_a_second() {
        assert_eq!(drain_grace(5_000), 1_000);
        assert_eq!(drain_grace(1_600), 800);
        assert_eq!(drain_grace(0), 0);
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
