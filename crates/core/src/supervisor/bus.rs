//! The message bus, on this host: routing between instances, the CLI and (through the bridge)
//! other hosts.
//!
//! An instance receives `{"type":"process:msg","herd":"message","topic":…,"data":…,"from":…}`
//! (PM2's shape: Node apps get it through `process.on('message')`), with `"request": N` when a
//! reply is awaited; it answers with a message carrying `"reply_to": N`. It sends with
//! `{"herd":"send"|"publish"|"subscribe"|"unsubscribe"|"request"|"reply", …}` — defined in
//! `herd_proto::worker`, described in `docs/bus.md`. Queues are bounded per instance; a slow or dead consumer loses messages
//! (counted), never stalls the daemon or anyone else.
//!
//! What one instance can make the router hold is bounded too (`Limits`): topic length,
//! subscriptions, requests waiting for a reply, and the lines its bad input writes to the
//! daemon's log. A message over a limit is refused, counted (per instance and in total) and
//! answered on the sender's channel with the limit and the config key that raises it.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herd_proto::worker::{
    self, Answer, Delivery, FromInstance, ProcessMsg, ProcessMsgType, Refusal, ToInstance,
};
use herd_proto::{BusStats, ErrorCode, Reply, PROTOCOL_VERSION};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use super::{refusal, SlotState, State};

/// Where a worker's `process.send(msg)` to "the primary" is published when the app has no
/// primary of its own (`--primary`).
pub(super) const PRIMARY_TOPIC: &str = "primary";

/// Where herd publishes what happens to instances (started, online, exited, restarting,
/// errored), for a coordinator app or `herd bus` to do what `cluster.on('exit')` did.
pub const LIFECYCLE_TOPIC: &str = "herd:lifecycle";
mod direct;

use crate::bus::{host_channel, topic_refusal, Address, Bridge, Envelope, Kind, ALL};
use crate::ratelimit::{Admit, PerSource};
use crate::Limits;

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

/// What the bus keeps for one local instance (from its first subscription, request or
/// refusal until it exits).
#[derive(Default)]
struct Peer {
    /// Topics it subscribed to (the same strings as the keys of `Bus::subs`).
    topics: HashSet<Arc<str>>,
    /// Its requests that wait for a reply.
    pending: usize,
    /// Its messages refused by a limit.
    refused: u64,
    /// It takes direct channels (it said `{"herd":"direct"}`).
    direct: bool,
    /// Channel ends handed to it that it has not yet said it took.
    untaken: u32,
}

/// The bus's state and counters.
pub(super) struct Bus {
    pub host: String,
    pub max_bytes: usize,
    limits: Limits,
    /// Topic → pids of instances subscribed.
    subs: HashMap<Arc<str>, BTreeSet<u32>>,
    /// Per-instance state, by pid.
    peers: HashMap<u32, Peer>,
    /// What each instance's bad input may write to the daemon's log.
    noisy: PerSource<u32>,
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
    /// Messages refused by a limit (topic length, subscriptions, pending requests).
    refused: u64,
    /// Messages an instance did not take (its queue was full, or it had just gone).
    dropped: u64,
    /// Instances introduced to others for direct channels, with the pids given a channel to
    /// each: told `unroute` once it stops serving its address.
    introduced: HashMap<u32, HashSet<u32>>,
    /// Direct channels handed out (pairs), and refused.
    pub(super) direct_opened: u64,
    pub(super) direct_refused: u64,
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
    pub(super) fn new(
        host: String,
        max_bytes: usize,
        limits: Limits,
        bridge: Option<Bridge>,
    ) -> Self {
        Self {
            host,
            max_bytes,
            limits,
            subs: HashMap::new(),
            peers: HashMap::new(),
            noisy: PerSource::new(
                limits.instance_log_burst,
                Duration::from_millis(limits.instance_log_interval_ms),
            ),
            requests: HashMap::new(),
            deadlines: std::collections::BinaryHeap::new(),
            next: 0,
            monitor: broadcast::channel(1024).0,
            bridge,
            routed: 0,
            no_recipient: 0,
            rejected: 0,
            refused: 0,
            dropped: 0,
            introduced: HashMap::new(),
            direct_opened: 0,
            direct_refused: 0,
        }
    }

    /// Subscriptions held by an instance, and its messages refused by a limit.
    pub(super) fn peer_counts(&self, pid: u32) -> (usize, u64) {
        self.peers
            .get(&pid)
            .map_or((0, 0), |p| (p.topics.len(), p.refused))
    }

    fn insert_request(&mut self, n: u64, p: Pending) {
        if let Requester::Instance { pid, .. } = &p.requester {
            self.peers.entry(*pid).or_default().pending += 1;
        }
        self.requests.insert(n, p);
    }

    fn remove_request(&mut self, n: u64) -> Option<Pending> {
        let p = self.requests.remove(&n)?;
        if let Requester::Instance { pid, .. } = &p.requester {
            if let Some(peer) = self.peers.get_mut(pid) {
                peer.pending = peer.pending.saturating_sub(1);
            }
        }
        Some(p)
    }
}

fn delivery(env: &Envelope, request: Option<u64>) -> Value {
    ToInstance::Message(Delivery {
        kind: ProcessMsgType::ProcessMsg,
        topic: env.topic.clone().unwrap_or_else(|| "herd".into()),
        data: Cow::Borrowed(&env.data),
        from: env.from.clone(),
        request,
    })
    .to_value()
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
            refused: self.bus.refused,
            no_recipient: self.bus.no_recipient,
            remote_published: load(|s| s.published.load(Ordering::Relaxed)),
            remote_received: load(|s| s.received.load(Ordering::Relaxed)),
            lost: load(|s| s.lost.load(Ordering::Relaxed)),
            reconnects: load(|s| s.reconnects.load(Ordering::Relaxed)),
            direct_opened: self.bus.direct_opened,
            direct_refused: self.bus.direct_refused,
        }
    }

    fn label(&self, pid: u32) -> String {
        match self.pids.get(&pid) {
            Some(&(id, i, _)) => match self.apps.get(&id) {
                Some(a) if i == super::primary::PRIMARY => {
                    format!("{}:primary@{}", a.spec.name, self.bus.host)
                }
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
                if let SlotState::Online { proc: p }
                | SlotState::Starting { proc: p, .. }
                | SlotState::Reloading { current: p, .. } = &slot.state
                {
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
        let slot = self.apps.get(&id)?.slot(i)?;
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

    /// [`State::tell`] of a message made only if the instance's queue has room.
    fn tell_with(&mut self, pid: u32, msg: impl FnOnce() -> Value) {
        if self.channel_of(pid).is_some_and(|ch| ch.send_with(msg)) {
            self.bus.routed += 1;
        } else {
            self.bus.dropped += 1;
        }
    }

    /// Refuses a malformed or invalid message (counted as rejected) and tells the sender why.
    fn reject(&mut self, pid: u32, id: Option<Value>, why: String) {
        self.bus.rejected += 1;
        self.refuse(pid, id, why);
    }

    /// Refuses a message over a limit: counted (in total and for the instance) and answered
    /// with the limit's config key, so the sender can tell which limit and how to raise it.
    /// `why` is only called when its text is needed: a flood of refusals to an instance that
    /// does not read them builds nothing.
    fn over_limit(
        &mut self,
        pid: u32,
        id: Option<Value>,
        limit: &'static str,
        why: impl Fn() -> String,
    ) {
        self.bus.refused += 1;
        self.bus.peers.entry(pid).or_default().refused += 1;
        if self.may_log(pid) {
            tracing::warn!(pid, "bus: {}", why());
        }
        self.tell_with(pid, || {
            let limit = Some(limit.into());
            ToInstance::Error(Refusal {
                error: why(),
                reply_to: id,
                limit,
            })
            .to_value()
        });
    }

    /// Writes a warning caused by one instance's input to the daemon's log, within that
    /// instance's share (`instance_log_burst` lines per `instance_log_interval_ms`); the rest
    /// are counted and reported as "N more suppressed". Nothing is formatted for a line that
    /// is suppressed.
    pub(super) fn instance_warn(&mut self, pid: u32, what: std::fmt::Arguments<'_>) {
        if self.may_log(pid) {
            tracing::warn!(pid, "{what}");
        }
    }

    /// Whether a line about this instance may be logged now (see [`State::instance_warn`]);
    /// reports what was suppressed before it first.
    fn may_log(&mut self, pid: u32) -> bool {
        // A gone instance says nothing more; keeping a limiter for it would never be freed.
        if !self.pids.contains_key(&pid) {
            return true;
        }
        match self.bus.noisy.admit(pid, tokio::time::Instant::now()) {
            Admit::Log { suppressed } => {
                self.log_suppressed(pid, suppressed);
                true
            }
            Admit::Suppress => false,
        }
    }

    /// [`State::may_log`] for a debug line: only asked (and counted) when debug lines are
    /// written at all, so that they never use up an instance's share of warnings.
    fn may_debug(&mut self, pid: u32) -> bool {
        tracing::enabled!(tracing::Level::DEBUG) && self.may_log(pid)
    }

    fn log_suppressed(&self, pid: u32, n: u64) {
        if n > 0 {
            let l = &self.bus.limits;
            tracing::warn!(
                pid,
                "{n} more suppressed: the daemon logs at most {} lines per {} ms about one instance (instance_log_burst, instance_log_interval_ms in HERD_HOME/config.toml)",
                l.instance_log_burst,
                l.instance_log_interval_ms
            );
        }
    }

    /// Reports the suppressed counts whose interval has ended.
    fn flush_suppressed(&mut self) {
        for (pid, n) in self.bus.noisy.due(tokio::time::Instant::now()) {
            self.log_suppressed(pid, n);
        }
    }

    /// Tells the sender its message went nowhere (counted where that happened).
    fn refuse(&mut self, pid: u32, id: Option<Value>, why: String) {
        if self.may_debug(pid) {
            tracing::debug!(pid, "bus: {why}");
        }
        self.tell(pid, ToInstance::error(why, id).to_value());
    }

    /// Delivers a send or publish here.
    fn deliver_local(&mut self, env: &Envelope) -> Routed {
        let pids: Vec<u32> = match env.kind {
            Kind::Publish => env
                .topic
                .as_ref()
                .and_then(|t| self.bus.subs.get(t.as_str()))
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
            refusal(
                ErrorCode::TooLarge,
                format!("a message of {size} bytes is over the bus limit of {} bytes; send smaller messages (or raise max_message_bytes in HERD_HOME/config.toml)", self.bus.max_bytes),
            )
        })
    }

    /// A CLI topic or address over `max_topic_bytes` gets the same refusal as an instance's.
    fn cli_over_limit(&mut self, what: &str, name: Option<&str>) -> Option<Reply> {
        let why = topic_refusal(&self.bus.limits, what, name.map_or(0, str::len))?;
        self.bus.refused += 1;
        Some(refusal(ErrorCode::TooLarge, why))
    }

    pub(super) fn cli_send(&mut self, to: &str, topic: Option<String>, data: Value) -> Reply {
        if let Some(e) = self.too_large(&data) {
            return e;
        }
        if let Some(e) = self
            .cli_over_limit("a topic", topic.as_deref())
            .or_else(|| self.cli_over_limit("an address", Some(to)))
        {
            return e;
        }
        if let Err(e) = Address::parse(to) {
            return refusal(ErrorCode::BadRequest, e);
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
            Routed { taken: 0, full: 0 } => refusal(
                ErrorCode::NoRecipient,
                format!("no running instance matches {to:?}; `herd list` shows what runs"),
            ),
            Routed { taken: 0, full } => refusal(
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
        if let Some(e) = self.cli_over_limit("a topic", Some(&topic)) {
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
        if let Some(e) = self.too_large(&data).or_else(|| {
            self.cli_over_limit("a topic", topic.as_deref())
                .or_else(|| self.cli_over_limit("an address", Some(to)))
        }) {
            let _ = reply.send(e);
            return;
        }
        let from = format!("cli@{}", self.bus.host);
        if let Err(e) = self.start_request(Requester::Cli(reply), from, to, topic, data, timeout) {
            if let Requester::Cli(reply) = e.0 {
                let _ = reply.send(refusal(e.1, e.2));
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
        self.bus.insert_request(
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
        // Answered requests leave their entry until its time comes; an instance that asks
        // and answers itself in a loop would grow the heap for up to the longest timeout.
        // Dropping the dead entries when they outnumber the live ones keeps it in proportion.
        if self.bus.deadlines.len() > 2 * self.bus.requests.len() + 1024 {
            let live = &self.bus.requests;
            self.bus
                .deadlines
                .retain(|std::cmp::Reverse((_, n))| live.contains_key(n));
        }
        Ok(())
    }

    /// The earliest request deadline still pending, or the end of an interval in which an
    /// instance's log lines were suppressed, whichever comes first.
    pub(super) fn next_deadline(&mut self) -> Option<tokio::time::Instant> {
        let mut request = None;
        while let Some(std::cmp::Reverse((at, n))) = self.bus.deadlines.peek().copied() {
            if self.bus.requests.contains_key(&n) {
                request = Some(at);
                break;
            }
            self.bus.deadlines.pop();
        }
        match (request, self.bus.noisy.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Times out every request whose deadline has passed (and reports suppressed log lines
    /// whose interval has ended).
    pub(super) fn expire_requests(&mut self) {
        self.flush_suppressed();
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
        if let Some(p) = self.bus.remove_request(n) {
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
                    Err(why) => refusal(ErrorCode::Timeout, why),
                });
            }
            Requester::Instance { pid, id } => {
                let m = match result {
                    Ok(data) => ToInstance::Reply(Answer {
                        reply_to: id,
                        data,
                        from,
                    }),
                    Err(why) => ToInstance::error(why, Some(id)),
                };
                self.tell(pid, m.to_value());
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
        // A message read before its sender exited may be handled after the exit: nothing of a
        // gone instance may be kept (a subscription would never be freed).
        if !self.pids.contains_key(&pid) {
            return;
        }
        let msg = FromInstance::read(&v);
        // A reply that is also PM2's `process:msg` is published when it answers nothing.
        let pm2 = match &msg {
            FromInstance::Reply(_) => ProcessMsg::read(&v),
            _ => None,
        };
        let names_topic = match &msg {
            FromInstance::Reply(_) => pm2.is_some(),
            FromInstance::Ready | FromInstance::Other => false,
            _ => true,
        };
        if names_topic {
            let id = match &msg {
                FromInstance::Request(r) => Some(r.id.clone()),
                _ => None,
            };
            let topic = msg
                .topic()
                .or(pm2.as_ref().and_then(|p| p.topic.as_deref()));
            let len = topic.map_or(0, str::len);
            if len > self.bus.limits.max_topic_bytes {
                let l = self.bus.limits;
                return self.over_limit(pid, id, "max_topic_bytes", || {
                    topic_refusal(&l, "a topic", len).unwrap_or_default()
                });
            }
            // An address or a request id is kept while a request waits: bounded like a topic
            // (a `to` is bounded in any message that names a topic, as it always was).
            let to_len = v.get("to").and_then(Value::as_str).map_or(0, str::len);
            if let Some(why) = topic_refusal(&self.bus.limits, "an address", to_len) {
                return self.over_limit(pid, id, "max_topic_bytes", || why.clone());
            }
            let id_len = id.as_ref().map_or(0, |id| match id {
                Value::String(s) => s.len(),
                Value::Number(_) | Value::Null | Value::Bool(_) => 0,
                other => other.to_string().len(),
            });
            if let Some(why) = topic_refusal(&self.bus.limits, "a request id", id_len) {
                return self.over_limit(pid, None, "max_topic_bytes", || why.clone());
            }
        }
        let from = self.label(pid);
        let other = matches!(msg, FromInstance::Other);
        let pm2 = match msg {
            FromInstance::Send(worker::Send { to, topic, data }) => {
                let Some(to) = to else {
                    return self.reject(pid, None, "send needs \"to\" (app, app:i or *)".into());
                };
                if let Err(e) = Address::parse(&to) {
                    return self.reject(pid, None, e);
                }
                let env = Envelope {
                    kind: Kind::Send,
                    from,
                    origin: self.bus.host.clone(),
                    to: Some(to.clone()),
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
                return;
            }
            FromInstance::Publish(worker::Publish { topic, data }) => {
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
                return;
            }
            FromInstance::Subscribe(worker::Subscribe { topic }) => {
                let Some(topic) = topic else {
                    return self.reject(pid, None, "subscribe needs \"topic\"".into());
                };
                return self.subscribe(pid, topic);
            }
            FromInstance::Unsubscribe(worker::Unsubscribe { topic }) => {
                let Some(topic) = topic else {
                    return self.reject(pid, None, "unsubscribe needs \"topic\"".into());
                };
                return self.unsubscribe(pid, &topic);
            }
            FromInstance::Request(worker::Request {
                to,
                topic,
                data,
                id,
                timeout_ms,
            }) => {
                let Some(to) = to else {
                    return self.reject(pid, Some(id), "request needs \"to\"".into());
                };
                let max = self.bus.limits.max_pending_requests;
                if self.bus.peers.get(&pid).is_some_and(|p| p.pending >= max) {
                    return self.over_limit(pid, Some(id), "max_pending_requests", || format!("request refused: this instance has {max} requests waiting for a reply, the limit (max_pending_requests; raise it in HERD_HOME/config.toml, or wait for replies or timeouts)"));
                }
                let timeout = Duration::from_millis(timeout_ms.unwrap_or(5000).min(600_000));
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
                return;
            }
            // A reply: `{"herd":"reply","reply_to":N,…}` or any message with `reply_to`.
            FromInstance::Reply(worker::Reply { reply_to: n, data }) => {
                let mine = self
                    .bus
                    .requests
                    .get(&n)
                    .is_some_and(|p| p.target_pid == Some(pid));
                if let Some(p) = mine.then(|| self.bus.remove_request(n)).flatten() {
                    let data = data.unwrap_or_else(|| v.clone());
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
                pm2
            }
            FromInstance::ProcessMsg(m) => Some(m),
            FromInstance::Direct(d) => return self.on_direct(pid, d),
            FromInstance::Ready | FromInstance::Other => None,
        };
        // PM2's `process.send({type: 'process:msg', topic, data})` goes to the bus.
        if let Some(ProcessMsg { topic, data, .. }) = pm2 {
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
        if other && super::pm2io::is_axm(&v) {
            // PM2's `@pm2/io` metrics and actions: kept by herd, not published.
            return self.on_axm(pid, v);
        }
        if other {
            // Node's `process.send(msg)` to "the primary": the app's own primary gets it as
            // Node's `message`; without one it is published on the topic `primary`, never lost.
            let has_primary = self
                .pids
                .get(&pid)
                .and_then(|(id, _, _)| self.apps.get(id))
                .is_some_and(|a| a.spec.primary);
            if has_primary {
                self.worker_event(pid, super::primary::WorkerEvent::Message(v));
            } else {
                let env = Envelope {
                    kind: Kind::Publish,
                    from,
                    origin: self.bus.host.clone(),
                    to: None,
                    topic: Some(PRIMARY_TOPIC.into()),
                    data: v,
                    id: None,
                    reply_to: None,
                };
                self.route_out(env);
            }
            return;
        }
        if self.may_debug(pid) {
            tracing::debug!(pid, "message from instance ignored: {v}");
        }
    }

    /// Subscribes an instance to a topic, within `max_subscriptions`. A topic it holds
    /// already is not a new subscription.
    fn subscribe(&mut self, pid: u32, topic: String) {
        let max = self.bus.limits.max_subscriptions;
        let peer = self.bus.peers.entry(pid).or_default();
        if peer.topics.contains(topic.as_str()) {
            return;
        }
        if peer.topics.len() >= max {
            return self.over_limit(pid, None, "max_subscriptions", || format!("subscription refused: this instance holds {max} subscriptions, the limit (max_subscriptions; raise it in HERD_HOME/config.toml, or unsubscribe from topics it no longer needs)"));
        }
        // One allocation shared by the topic index and the instance's own list.
        let topic: Arc<str> = match self.bus.subs.get_key_value(topic.as_str()) {
            Some((t, _)) => t.clone(),
            None => topic.into(),
        };
        peer.topics.insert(topic.clone());
        self.bus.subs.entry(topic).or_default().insert(pid);
    }

    /// Ends a subscription (and frees its place); unknown topics are ignored.
    fn unsubscribe(&mut self, pid: u32, topic: &str) {
        let Some(peer) = self.bus.peers.get_mut(&pid) else {
            return;
        };
        if peer.topics.remove(topic) {
            if let Some(s) = self.bus.subs.get_mut(topic) {
                s.remove(&pid);
                if s.is_empty() {
                    self.bus.subs.remove(topic);
                }
            }
        }
    }

    /// An instance sent a line over the size limit or not JSON.
    pub(super) fn on_bad_message(&mut self, pid: u32, why: std::fmt::Arguments<'_>) {
        if !self.pids.contains_key(&pid) {
            return;
        }
        self.instance_warn(pid, format_args!("bus: {why}"));
        // One per bad line: nothing is built for an instance that does not read its answers.
        self.bus.rejected += 1;
        self.tell_with(pid, || ToInstance::error(why.to_string(), None).to_value());
    }

    /// An instance is gone: its subscriptions, its waiting requests and the requests it was
    /// asked go with it.
    pub(super) fn forget_instance(&mut self, pid: u32) {
        // Its channels close with it: their other ends see that for themselves.
        self.bus.introduced.remove(&pid);
        for openers in self.bus.introduced.values_mut() {
            openers.remove(&pid);
        }
        let suppressed = self.bus.noisy.forget(pid);
        self.log_suppressed(pid, suppressed);
        if let Some(peer) = self.bus.peers.remove(&pid) {
            for topic in &peer.topics {
                if let Some(s) = self.bus.subs.get_mut(topic) {
                    s.remove(&pid);
                    if s.is_empty() {
                        self.bus.subs.remove(topic);
                    }
                }
            }
        }
        let asked: Vec<u64> = self
            .bus
            .requests
            .iter()
            .filter(|(_, p)| p.target_pid == Some(pid))
            .map(|(&n, _)| n)
            .collect();
        for n in asked {
            if let Some(p) = self.bus.remove_request(n) {
                let why = format!("{} exited before replying", p.to);
                self.answer(p.requester, Err(why), String::new());
            }
        }
        self.bus
            .requests
            .retain(|_, p| !matches!(p.requester, Requester::Instance { pid: q, .. } if q == pid));
    }

    // ----- from other hosts -----------------------------------------------------------------

    /// Publishes a lifecycle event of process `pid` (slot `i` of app `id`) on
    /// [`LIFECYCLE_TOPIC`]: `{"event", "app", "instance", "pid", "host", …extra}`.
    pub(super) fn lifecycle_event(
        &mut self,
        id: u32,
        i: u32,
        pid: Option<u32>,
        event: &str,
        extra: Value,
    ) {
        let Some(app) = self.apps.get(&id) else {
            return;
        };
        let instance = if i == super::primary::PRIMARY {
            Value::from("primary")
        } else {
            Value::from(i)
        };
        let mut data = serde_json::json!({
            "event": event,
            "app": app.spec.name,
            "instance": instance,
            "pid": pid,
            "host": self.bus.host,
        });
        if let (Some(d), Value::Object(more)) = (data.as_object_mut(), extra) {
            d.extend(more);
        }
        let env = Envelope {
            kind: Kind::Publish,
            from: format!("herd@{}", self.bus.host),
            origin: self.bus.host.clone(),
            to: None,
            topic: Some(LIFECYCLE_TOPIC.into()),
            data,
            id: None,
            reply_to: None,
        };
        self.route_out(env);
    }

    pub(super) fn on_remote(&mut self, env: Envelope) {
        // Another daemon applies its own limits; one with larger ones (or anything else on
        // the broker) still does not make this one hold or deliver an oversized name.
        let max = self.bus.limits.max_topic_bytes;
        if env.topic.as_ref().is_some_and(|t| t.len() > max)
            || env.to.as_ref().is_some_and(|t| t.len() > max)
        {
            self.bus.refused += 1;
            return;
        }
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
                if let Some(p) = self.bus.remove_request(n) {
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
    /// The bus for a keeper's state: the subscriptions alone (counters and requests change
    /// with every message; a daemon that dies loses them, and requests under way time out).
    pub(super) fn export_journal(&self) -> crate::handover::BusState {
        let mut b = self.export();
        b.routed = 0;
        b.no_recipient = 0;
        b.rejected = 0;
        b.dropped = 0;
        b.refused = 0;
        b.refused_by.clear();
        b.requests.clear();
        // Written as 0: the next daemon numbers its requests from the clock instead, past
        // any a dying daemon gave.
        b.next = 0;
        b
    }

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
            refused: self.refused,
            refused_by: self
                .peers
                .iter()
                .filter(|(_, p)| p.refused > 0)
                .map(|(&pid, p)| (pid, p.refused))
                .collect(),
            dropped: self.dropped,
            subs: self
                .subs
                .iter()
                .map(|(t, pids)| (t.to_string(), pids.iter().copied().collect()))
                .collect(),
            requests,
        }
    }

    /// Takes over what [`Bus::export`] gave.
    pub(super) fn import(&mut self, s: crate::handover::BusState) {
        use crate::handover::RequesterState;
        self.next = match s.next {
            // From a keeper's state: past any number the dead daemon can have given.
            0 => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                .saturating_mul(1024),
            n => n,
        };
        self.routed = s.routed;
        self.no_recipient = s.no_recipient;
        self.rejected = s.rejected;
        self.refused = s.refused;
        self.dropped = s.dropped;
        self.subs = HashMap::new();
        self.peers = HashMap::new();
        for (pid, refused) in s.refused_by {
            self.peers.entry(pid).or_default().refused = refused;
        }
        for (t, pids) in s.subs {
            let t: Arc<str> = t.into();
            for &pid in &pids {
                self.peers.entry(pid).or_default().topics.insert(t.clone());
            }
            self.subs.insert(t, pids.into_iter().collect());
        }
        let now = tokio::time::Instant::now();
        for r in s.requests {
            let requester = match r.requester {
                RequesterState::Instance { pid, id } => Requester::Instance { pid, id },
                RequesterState::Remote { host, id } => Requester::Remote { host, id },
            };
            self.insert_request(
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
