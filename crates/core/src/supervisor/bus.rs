//! The message bus, on this host: routing between instances, the CLI and (through the bridge)
//! other hosts.
//!
//! An instance receives `{"type":"process:msg","herd":"message","topic":…,"data":…,"from":…}`
//! (PM2's shape: Node apps get it through `process.on('message')`), with `"request": N` when a
//! reply is awaited; it answers with a message carrying `"reply_to": N`. It sends with
//! `{"herd":"send"|"publish"|"subscribe"|"unsubscribe"|"request"|"reply", …}` — see
//! `docs/protocol.md`. Queues are bounded per instance; a slow or dead consumer loses messages
//! (counted), never stalls the daemon or anyone else.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::{BusStats, ErrorCode, Reply, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};

use super::{err, SlotState, State};
use crate::bus::{host_channel, Address, Bridge, Envelope, Kind, ALL};

/// Who waits for a reply.
pub(super) enum Requester {
    /// `herd request`.
    Cli(oneshot::Sender<Reply>),
    /// An instance here, which numbered its request `id`.
    Instance { pid: u32, id: Value },
    /// A daemon elsewhere, which numbered its request `id`.
    Remote { host: String, id: String },
}

/// A request waiting for its reply.
pub(super) struct Pending {
    requester: Requester,
    /// Pid of the instance asked, when it is here.
    target_pid: Option<u32>,
    to: String,
}

/// The bus's state and counters.
pub(super) struct Bus {
    pub host: String,
    pub max_bytes: usize,
    /// Topic → pids of instances subscribed.
    subs: HashMap<String, BTreeSet<u32>>,
    requests: HashMap<u64, Pending>,
    /// When each request times out (answered ones are skipped when their time comes).
    pub deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(tokio::time::Instant, u64)>>,
    next: u64,
    /// Every envelope that passes, for `herd bus`.
    pub monitor: broadcast::Sender<Arc<Envelope>>,
    pub bridge: Option<Bridge>,
    routed: u64,
    no_recipient: u64,
    rejected: u64,
    /// Messages an instance did not take (its queue was full, or it had just gone).
    dropped: u64,
}

/// What became of a message routed from here.
#[derive(Debug, Clone, Copy, Default)]
struct Routed {
    /// Instances here that took it, and hosts it went to.
    taken: usize,
    /// Instances here that matched but did not take it (queue full).
    full: usize,
}

impl Bus {
    pub(super) fn new(host: String, max_bytes: usize, bridge: Option<Bridge>) -> Self {
        Self {
            host,
            max_bytes,
            subs: HashMap::new(),
            requests: HashMap::new(),
            deadlines: std::collections::BinaryHeap::new(),
            next: 0,
            monitor: broadcast::channel(1024).0,
            bridge,
            routed: 0,
            no_recipient: 0,
            rejected: 0,
            dropped: 0,
        }
    }
}

fn delivery(env: &Envelope, request: Option<u64>) -> Value {
    let mut m = json!({
        "type": "process:msg",
        "herd": "message",
        "topic": env.topic.clone().unwrap_or_else(|| "herd".into()),
        "data": env.data,
        "from": env.from,
    });
    if let Some(n) = request {
        m["request"] = json!(n);
    }
    m
}

impl State {
    /// Counters and broker state, for `herd describe`.
    pub(super) fn bus_stats(&self) -> BusStats {
        let dropped = self.bus.dropped;
        let b = self.bus.bridge.as_ref();
        let load = |f: fn(&crate::bus::BridgeStats) -> u64| b.map_or(0, |b| f(&b.stats));
        BusStats {
            host: self.bus.host.clone(),
            broker: b.map(|b| b.url.clone()),
            connected: b.is_some_and(|b| b.stats.connected.load(Ordering::Relaxed)),
            routed: self.bus.routed,
            dropped,
            rejected: self.bus.rejected,
            no_recipient: self.bus.no_recipient,
            remote_published: load(|s| s.published.load(Ordering::Relaxed)),
            remote_received: load(|s| s.received.load(Ordering::Relaxed)),
            lost: load(|s| s.lost.load(Ordering::Relaxed)),
            reconnects: load(|s| s.reconnects.load(Ordering::Relaxed)),
        }
    }

    fn label(&self, pid: u32) -> String {
        match self.pids.get(&pid) {
            Some(&(id, i, _)) => match self.apps.get(&id) {
                Some(a) => format!("{}:{i}@{}", a.spec.name, self.bus.host),
                None => format!("pid{pid}@{}", self.bus.host),
            },
            None => format!("pid{pid}@{}", self.bus.host),
        }
    }

    fn watch(&self, env: &Envelope) {
        if self.bus.monitor.receiver_count() > 0 {
            let _ = self.bus.monitor.send(Arc::new(env.clone()));
        }
    }

    /// Local running instances an address names (ignoring its host part).
    fn local_targets(&self, a: &Address) -> Vec<u32> {
        let mut out = Vec::new();
        for app in self.apps.values() {
            if let Some(name) = &a.app {
                if &app.spec.name != name && name.parse::<u32>().ok() != Some(app.id) {
                    continue;
                }
            }
            for slot in &app.slots {
                if a.instance.is_some_and(|i| i != slot.index) {
                    continue;
                }
                if let SlotState::Online(p) | SlotState::Starting(p) = &slot.state {
                    if p.channel.is_some() {
                        out.push(p.pid);
                    }
                }
            }
        }
        out
    }

    fn channel_of(&self, pid: u32) -> Option<&crate::ipc::Channel> {
        let &(id, i, _) = self.pids.get(&pid)?;
        let slot = self.apps.get(&id)?.slots.get(i as usize)?;
        slot.state.proc().filter(|p| p.pid == pid)?.channel.as_ref()
    }

    /// Sends to one local instance; false if it did not take it (queue full or gone).
    fn push(&mut self, pid: u32, msg: &Value) -> bool {
        let ok = self.channel_of(pid).is_some_and(|ch| ch.send(msg, None));
        if ok {
            self.bus.routed += 1;
        } else {
            self.bus.dropped += 1;
        }
        ok
    }

    fn tell(&mut self, pid: u32, msg: Value) {
        self.push(pid, &msg);
    }

    /// Refuses a malformed or invalid message (counted as rejected) and tells the sender why.
    fn reject(&mut self, pid: u32, id: Option<Value>, why: String) {
        self.bus.rejected += 1;
        self.refuse(pid, id, why);
    }

    /// Tells the sender its message went nowhere (counted where that happened).
    fn refuse(&mut self, pid: u32, id: Option<Value>, why: String) {
        tracing::debug!(pid, "bus: {why}");
        let mut m = json!({"herd": "error", "error": why});
        if let Some(id) = id {
            m["reply_to"] = id;
        }
        self.tell(pid, m);
    }

    /// Delivers a send or publish here.
    fn deliver_local(&mut self, env: &Envelope) -> Routed {
        let pids: Vec<u32> = match env.kind {
            Kind::Publish => env
                .topic
                .as_ref()
                .and_then(|t| self.bus.subs.get(t))
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
            _ => match env.to.as_deref().map(Address::parse) {
                Some(Ok(a)) if a.reaches(&self.bus.host) => self.local_targets(&a),
                _ => Vec::new(),
            },
        };
        let msg = delivery(env, None);
        let taken = pids.iter().filter(|&&p| self.push(p, &msg)).count();
        Routed {
            taken,
            full: pids.len() - taken,
        }
    }

    /// A send or publish from here (an instance or the CLI): local delivery, then the broker.
    fn route_out(&mut self, env: Envelope) -> Routed {
        self.watch(&env);
        // `primary` is whoever embeds the supervisor (the Rust cluster API) or watches the
        // bus (`herd bus`): it gets the message through the bus monitor.
        if env.to.as_deref() == Some("primary") {
            self.bus.routed += 1;
            return Routed { taken: 1, full: 0 };
        }
        let mut r = self.deliver_local(&env);
        let n = &mut r.taken;
        if let Some(bridge) = &self.bus.bridge {
            match env.kind {
                Kind::Publish => {
                    bridge.publish(ALL, &env);
                    *n += 1;
                }
                _ => {
                    if let Some(Ok(a)) = env.to.as_deref().map(Address::parse) {
                        if a.reaches_others(&self.bus.host) {
                            let channel = a.host.as_deref().map_or(ALL.to_string(), host_channel);
                            bridge.publish(&channel, &env);
                            *n += 1;
                        }
                    }
                }
            }
        }
        if r.taken == 0 && r.full == 0 && env.kind == Kind::Send {
            self.bus.no_recipient += 1;
        }
        r
    }

    // ----- from the CLI ---------------------------------------------------------------------

    /// A CLI message over the size limit gets the same refusal as an instance's.
    fn too_large(&mut self, data: &Value) -> Option<Reply> {
        let size = serde_json::to_vec(data).map_or(0, |v| v.len());
        (size > self.bus.max_bytes).then(|| {
            self.bus.rejected += 1;
            err(
                ErrorCode::TooLarge,
                format!("a message of {size} bytes is over the bus limit of {} bytes; send smaller messages (or raise max_message_bytes in HERD_HOME/config.toml)", self.bus.max_bytes),
            )
        })
    }

    pub(super) fn cli_send(&mut self, to: &str, topic: Option<String>, data: Value) -> Reply {
        if let Some(e) = self.too_large(&data) {
            return e;
        }
        if let Err(e) = Address::parse(to) {
            return err(ErrorCode::BadRequest, e);
        }
        let env = Envelope {
            kind: Kind::Send,
            from: format!("cli@{}", self.bus.host),
            origin: self.bus.host.clone(),
            to: Some(to.to_string()),
            topic,
            data,
            id: None,
            reply_to: None,
        };
        match self.route_out(env) {
            Routed { taken: 0, full: 0 } => err(
                ErrorCode::NoRecipient,
                format!("no running instance matches {to:?}; `herd list` shows what runs"),
            ),
            Routed { taken: 0, full } => err(
                ErrorCode::QueueFull,
                format!("{full} matching instance(s) did not take the message: their queue is full (they do not read their channel fast enough)"),
            ),
            Routed { taken, full: 0 } => {
                Reply::done(format!("sent to {taken} instance(s) or host(s)"))
            }
            Routed { taken, full } => Reply::done(format!(
                "sent to {taken} instance(s) or host(s); {full} did not take it (queue full)"
            )),
        }
    }

    pub(super) fn cli_publish(&mut self, topic: String, data: Value) -> Reply {
        if let Some(e) = self.too_large(&data) {
            return e;
        }
        let env = Envelope {
            kind: Kind::Publish,
            from: format!("cli@{}", self.bus.host),
            origin: self.bus.host.clone(),
            to: None,
            topic: Some(topic),
            data,
            id: None,
            reply_to: None,
        };
        let r = self.route_out(env);
        let full = if r.full > 0 {
            format!("; {} subscriber(s) did not take it (queue full)", r.full)
        } else {
            String::new()
        };
        Reply::done(format!(
            "published to {} subscriber(s) or host(s){full}",
            r.taken
        ))
    }

    pub(super) fn cli_request(
        &mut self,
        to: &str,
        topic: Option<String>,
        data: Value,
        timeout: Duration,
        reply: oneshot::Sender<Reply>,
    ) {
        if let Some(e) = self.too_large(&data) {
            let _ = reply.send(e);
            return;
        }
        let from = format!("cli@{}", self.bus.host);
        if let Err(e) = self.start_request(Requester::Cli(reply), from, to, topic, data, timeout) {
            if let Requester::Cli(reply) = e.0 {
                let _ = reply.send(err(e.1, e.2));
            }
        }
    }

    /// Starts a request from here. On failure gives the requester back with the error.
    fn start_request(
        &mut self,
        requester: Requester,
        from: String,
        to: &str,
        topic: Option<String>,
        data: Value,
        timeout: Duration,
    ) -> Result<(), (Requester, ErrorCode, String)> {
        let a = match Address::parse(to) {
            Ok(a) => a,
            Err(e) => return Err((requester, ErrorCode::BadRequest, e)),
        };
        self.bus.next += 1;
        let n = self.bus.next;
        let mut env = Envelope {
            kind: Kind::Request,
            from,
            origin: self.bus.host.clone(),
            to: Some(to.to_string()),
            topic,
            data,
            id: Some(format!("{}:{n}", self.bus.host)),
            reply_to: None,
        };
        self.watch(&env);
        let local = if a.reaches(&self.bus.host) {
            self.local_targets(&a)
        } else {
            Vec::new()
        };
        let target_pid = if let Some(&pid) = local.get(n as usize % local.len().max(1)) {
            if !self.push(pid, &delivery(&env, Some(n))) {
                return Err((
                    requester,
                    ErrorCode::QueueFull,
                    format!("{to} did not take the request (its queue is full)"),
                ));
            }
            Some(pid)
        } else if let (Some(bridge), Some(host)) = (&self.bus.bridge, a.host.as_deref()) {
            if host == self.bus.host {
                self.bus.no_recipient += 1;
                return Err((
                    requester,
                    ErrorCode::NoRecipient,
                    format!("no running instance matches {to:?}"),
                ));
            }
            env.to = Some(to.to_string());
            bridge.publish(&host_channel(host), &env);
            None
        } else {
            self.bus.no_recipient += 1;
            let hint = if self.bus.bridge.is_some() {
                "; to ask another host, add @host"
            } else {
                ""
            };
            return Err((
                requester,
                ErrorCode::NoRecipient,
                format!("no running instance matches {to:?}{hint}"),
            ));
        };
        self.bus.requests.insert(
            n,
            Pending {
                requester,
                target_pid,
                to: to.to_string(),
            },
        );
        // One heap entry per request, not a task: at tens of thousands of requests a second,
        // a sleeping task each would hold megabytes.
        self.bus.deadlines.push(std::cmp::Reverse((
            tokio::time::Instant::now() + timeout,
            n,
        )));
        Ok(())
    }

    /// The earliest request deadline still pending.
    pub(super) fn next_deadline(&mut self) -> Option<tokio::time::Instant> {
        while let Some(std::cmp::Reverse((at, n))) = self.bus.deadlines.peek().copied() {
            if self.bus.requests.contains_key(&n) {
                return Some(at);
            }
            self.bus.deadlines.pop();
        }
        None
    }

    /// Times out every request whose deadline has passed.
    pub(super) fn expire_requests(&mut self) {
        let now = tokio::time::Instant::now();
        while let Some(std::cmp::Reverse((at, n))) = self.bus.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.bus.deadlines.pop();
            self.on_request_timeout(n);
        }
    }

    pub(super) fn on_request_timeout(&mut self, n: u64) {
        if let Some(p) = self.bus.requests.remove(&n) {
            let why = format!(
                "{} did not reply in time; it must answer with a message carrying \"reply_to\"",
                p.to
            );
            self.answer(p.requester, Err(why), String::new());
        }
    }

    /// Hands a reply (or a failure) to whoever asked.
    fn answer(&mut self, requester: Requester, result: Result<Value, String>, from: String) {
        match requester {
            Requester::Cli(reply) => {
                let _ = reply.send(match result {
                    Ok(data) => Reply::Message {
                        v: PROTOCOL_VERSION,
                        from,
                        data,
                    },
                    Err(why) => err(ErrorCode::Timeout, why),
                });
            }
            Requester::Instance { pid, id } => {
                let m = match result {
                    Ok(data) => {
                        json!({"herd": "reply", "reply_to": id, "data": data, "from": from})
                    }
                    Err(why) => json!({"herd": "error", "reply_to": id, "error": why}),
                };
                self.tell(pid, m);
            }
            Requester::Remote { host, id } => {
                let (kind, data) = match result {
                    Ok(d) => (Kind::Reply, d),
                    Err(why) => (Kind::Error, Value::String(why)),
                };
                let env = Envelope {
                    kind,
                    from,
                    origin: self.bus.host.clone(),
                    to: None,
                    topic: None,
                    data,
                    id: None,
                    reply_to: Some(id),
                };
                if let Some(b) = &self.bus.bridge {
                    b.publish(&host_channel(&host), &env);
                }
            }
        }
    }

    // ----- from instances -------------------------------------------------------------------

    /// A message an instance sent on its channel.
    pub(super) fn on_app_message(&mut self, pid: u32, v: Value) {
        let op = v.get("herd").and_then(Value::as_str).map(str::to_string);
        let from = self.label(pid);
        let topic = v.get("topic").and_then(Value::as_str).map(str::to_string);
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        match op.as_deref() {
            Some("send") => {
                let Some(to) = v.get("to").and_then(Value::as_str) else {
                    return self.reject(pid, None, "send needs \"to\" (app, app:i or *)".into());
                };
                if let Err(e) = Address::parse(to) {
                    return self.reject(pid, None, e);
                }
                let env = Envelope {
                    kind: Kind::Send,
                    from,
                    origin: self.bus.host.clone(),
                    to: Some(to.into()),
                    topic,
                    data,
                    id: None,
                    reply_to: None,
                };
                let r = self.route_out(env);
                if r.taken == 0 && r.full > 0 {
                    self.refuse(
                        pid,
                        None,
                        format!("{to:?} did not take the message: its queue is full"),
                    );
                } else if r.taken == 0 {
                    self.refuse(pid, None, format!("no running instance matches {to:?}"));
                }
            }
            Some("publish") => {
                let Some(topic) = topic else {
                    return self.reject(pid, None, "publish needs \"topic\"".into());
                };
                let env = Envelope {
                    kind: Kind::Publish,
                    from,
                    origin: self.bus.host.clone(),
                    to: None,
                    topic: Some(topic),
                    data,
                    id: None,
                    reply_to: None,
                };
                self.route_out(env);
            }
            Some("subscribe") | Some("unsubscribe") => {
                let Some(topic) = topic else {
                    return self.reject(pid, None, "subscribe needs \"topic\"".into());
                };
                if op.as_deref() == Some("subscribe") {
                    self.bus.subs.entry(topic).or_default().insert(pid);
                } else if let Some(s) = self.bus.subs.get_mut(&topic) {
                    s.remove(&pid);
                }
            }
            Some("request") => {
                let id = v.get("id").cloned().unwrap_or(Value::Null);
                let Some(to) = v.get("to").and_then(Value::as_str).map(str::to_string) else {
                    return self.reject(pid, Some(id), "request needs \"to\"".into());
                };
                let timeout = Duration::from_millis(
                    v.get("timeout_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(5000)
                        .min(600_000),
                );
                let requester = Requester::Instance { pid, id };
                if let Err((Requester::Instance { pid, id }, code, why)) =
                    self.start_request(requester, from, &to, topic, data, timeout)
                {
                    if code == ErrorCode::BadRequest {
                        self.reject(pid, Some(id), why);
                    } else {
                        self.refuse(pid, Some(id), why);
                    }
                }
            }
            _ => {
                // A reply: `{"herd":"reply","reply_to":N,…}` or any message with `reply_to`.
                if let Some(n) = v.get("reply_to").and_then(Value::as_u64) {
                    if self
                        .bus
                        .requests
                        .get(&n)
                        .is_some_and(|p| p.target_pid == Some(pid))
                    {
                        let p = self.bus.requests.remove(&n).expect("checked");
                        let data = if v.get("data").is_some() {
                            data
                        } else {
                            v.clone()
                        };
                        let env = Envelope {
                            kind: Kind::Reply,
                            from: from.clone(),
                            origin: self.bus.host.clone(),
                            to: None,
                            topic: None,
                            data: data.clone(),
                            id: None,
                            reply_to: Some(format!("{}:{n}", self.bus.host)),
                        };
                        self.watch(&env);
                        self.answer(p.requester, Ok(data), from);
                        return;
                    }
                }
                // PM2's `process.send({type: 'process:msg', topic, data})` goes to the bus.
                if v.get("type").and_then(Value::as_str) == Some("process:msg") {
                    let env = Envelope {
                        kind: Kind::Publish,
                        from,
                        origin: self.bus.host.clone(),
                        to: None,
                        topic: Some(topic.unwrap_or_else(|| "process:msg".into())),
                        data,
                        id: None,
                        reply_to: None,
                    };
                    self.route_out(env);
                    return;
                }
                tracing::debug!(pid, "message from instance ignored: {v}");
            }
        }
    }

    /// An instance sent a line over the size limit or not JSON.
    pub(super) fn on_bad_message(&mut self, pid: u32, why: String) {
        tracing::warn!(pid, "bus: {why}");
        self.reject(pid, None, why);
    }

    /// An instance is gone: its subscriptions and the requests it was asked go with it.
    pub(super) fn forget_instance(&mut self, pid: u32) {
        for s in self.bus.subs.values_mut() {
            s.remove(&pid);
        }
        self.bus.subs.retain(|_, s| !s.is_empty());
        let asked: Vec<u64> = self
            .bus
            .requests
            .iter()
            .filter(|(_, p)| p.target_pid == Some(pid))
            .map(|(&n, _)| n)
            .collect();
        for n in asked {
            let p = self.bus.requests.remove(&n).expect("listed");
            let why = format!("{} exited before replying", p.to);
            self.answer(p.requester, Err(why), String::new());
        }
        self.bus
            .requests
            .retain(|_, p| !matches!(p.requester, Requester::Instance { pid: q, .. } if q == pid));
    }

    // ----- from other hosts -----------------------------------------------------------------

    pub(super) fn on_remote(&mut self, env: Envelope) {
        self.watch(&env);
        match env.kind {
            Kind::Send | Kind::Publish => {
                self.deliver_local(&env);
            }
            Kind::Request => {
                let Some(to) = env.to.clone() else { return };
                let Some(id) = env.id.clone() else { return };
                let requester = Requester::Remote {
                    host: env.origin.clone(),
                    id,
                };
                let to_here = match Address::parse(&to) {
                    Ok(mut a) => {
                        a.host = None;
                        let mut s = a.app.clone().unwrap_or_else(|| "*".into());
                        if let Some(i) = a.instance {
                            s = format!("{s}:{i}");
                        }
                        s
                    }
                    Err(_) => return,
                };
                if let Err((req, _, why)) = self.start_request(
                    requester,
                    env.from.clone(),
                    &to_here,
                    env.topic.clone(),
                    env.data.clone(),
                    Duration::from_secs(30),
                ) {
                    self.answer(req, Err(why), format!("daemon@{}", self.bus.host));
                }
            }
            Kind::Reply | Kind::Error => {
                let Some(n) = env
                    .reply_to
                    .as_deref()
                    .and_then(|r| r.strip_prefix(&format!("{}:", self.bus.host)))
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    return;
                };
                if let Some(p) = self.bus.requests.remove(&n) {
                    let result = if env.kind == Kind::Reply {
                        Ok(env.data)
                    } else {
                        Err(env.data.as_str().unwrap_or("remote error").to_string())
                    };
                    self.answer(p.requester, result, env.from);
                }
            }
        }
    }
}

impl Bus {
    /// Whether a `herd request` waits for its reply (its answer cannot cross an update).
    pub(super) fn cli_waiting(&self) -> bool {
        self.requests
            .values()
            .any(|p| matches!(p.requester, Requester::Cli(_)))
    }

    /// Subscriptions, requests waiting on instances or other hosts, and counters, for a
    /// daemon update.
    pub(super) fn export(&self) -> crate::handover::BusState {
        use crate::handover::{RequestState, RequesterState};
        let now = tokio::time::Instant::now();
        let mut requests = Vec::new();
        for std::cmp::Reverse((at, n)) in self.deadlines.iter() {
            let Some(p) = self.requests.get(n) else {
                continue;
            };
            let requester = match &p.requester {
                Requester::Cli(_) => continue,
                Requester::Instance { pid, id } => RequesterState::Instance {
                    pid: *pid,
                    id: id.clone(),
                },
                Requester::Remote { host, id } => RequesterState::Remote {
                    host: host.clone(),
                    id: id.clone(),
                },
            };
            requests.push(RequestState {
                id: *n,
                requester,
                target_pid: p.target_pid,
                to: p.to.clone(),
                remaining_ms: at.saturating_duration_since(now).as_millis() as u64,
            });
        }
        crate::handover::BusState {
            next: self.next,
            routed: self.routed,
            no_recipient: self.no_recipient,
            rejected: self.rejected,
            dropped: self.dropped,
            subs: self
                .subs
                .iter()
                .map(|(t, pids)| (t.clone(), pids.iter().copied().collect()))
                .collect(),
            requests,
        }
    }

    /// Takes over what [`Bus::export`] gave.
    pub(super) fn import(&mut self, s: crate::handover::BusState) {
        use crate::handover::RequesterState;
        self.next = s.next;
        self.routed = s.routed;
        self.no_recipient = s.no_recipient;
        self.rejected = s.rejected;
        self.dropped = s.dropped;
        self.subs = s
            .subs
            .into_iter()
            .map(|(t, pids)| (t, pids.into_iter().collect()))
            .collect();
        let now = tokio::time::Instant::now();
        for r in s.requests {
            let requester = match r.requester {
                RequesterState::Instance { pid, id } => Requester::Instance { pid, id },
                RequesterState::Remote { host, id } => Requester::Remote { host, id },
            };
            self.requests.insert(
                r.id,
                Pending {
                    requester,
                    target_pid: r.target_pid,
                    to: r.to,
                },
            );
            self.deadlines.push(std::cmp::Reverse((
                now + Duration::from_millis(r.remaining_ms),
                r.id,
            )));
        }
    }
}
