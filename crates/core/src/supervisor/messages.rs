//! Messages between the CLI and instances: `herd send` and `herd request`.
//!
//! An instance receives `{"type":"process:msg","topic":…,"data":…,"from":…}` (PM2's shape;
//! Node apps get it through `process.on('message')`), with `"request": N` when a reply is
//! awaited. It replies with any message carrying `"reply_to": N`, e.g.
//! `process.send({type: 'process:msg', data: …, reply_to: N})`. Replies reach only the
//! requester; a request that gets none in time is an error, never a hang.

use std::time::Duration;

use herd_proto::{ErrorCode, Reply, PROTOCOL_VERSION};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::{err, Event, SlotState, State};

/// A request waiting for its reply.
pub(super) struct Pending {
    pid: u32,
    from: String,
    reply: oneshot::Sender<Reply>,
}

impl State {
    /// Running instances an address names: `app:i`, `app`, `all` or `*`, by name or id.
    fn recipients(&self, to: &str) -> Result<Vec<(u32, u32, u32)>, Reply> {
        let (app_part, inst) = match to.rsplit_once(':') {
            Some((a, i)) => {
                let i: u32 = i.parse().map_err(|_| {
                    err(
                        ErrorCode::BadRequest,
                        format!("cannot read address {to:?}: use app, app:INSTANCE or all"),
                    )
                })?;
                (a, Some(i))
            }
            None => (to, None),
        };
        let ids = if app_part == "*" {
            self.apps.keys().copied().collect()
        } else {
            self.resolve(app_part)?
        };
        let mut out = Vec::new();
        for id in ids {
            let app = &self.apps[&id];
            for slot in &app.slots {
                if inst.is_some_and(|i| i != slot.index) {
                    continue;
                }
                if let SlotState::Online(p) | SlotState::Starting(p) = &slot.state {
                    if p.channel.is_some() {
                        out.push((id, slot.index, p.pid));
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(err(
                ErrorCode::NoRecipient,
                format!("no running instance matches {to:?}; `herd list` shows what runs"),
            ));
        }
        Ok(out)
    }

    fn deliver(&mut self, id: u32, i: u32, msg: &Value) -> bool {
        let Some(slot) = self.apps.get(&id).and_then(|a| a.slots.get(i as usize)) else {
            return false;
        };
        slot.state
            .proc()
            .and_then(|p| p.channel.as_ref())
            .is_some_and(|ch| ch.send(msg, None))
    }

    pub(super) fn send_message(&mut self, to: &str, topic: Option<String>, data: Value) -> Reply {
        let targets = match self.recipients(to) {
            Ok(t) => t,
            Err(e) => return e,
        };
        let msg = json!({"type": "process:msg", "topic": topic.unwrap_or_else(|| "herd".into()), "data": data, "from": "cli"});
        let mut sent = 0;
        for (id, i, _) in &targets {
            if self.deliver(*id, *i, &msg) {
                sent += 1;
            }
        }
        let dropped = targets.len() - sent;
        if dropped > 0 {
            Reply::done(format!(
                "sent to {sent} instance(s); {dropped} did not take it (queue full or channel closed)"
            ))
        } else {
            Reply::done(format!("sent to {sent} instance(s)"))
        }
    }

    pub(super) fn start_request(
        &mut self,
        to: &str,
        topic: Option<String>,
        data: Value,
        timeout: Duration,
        reply: oneshot::Sender<Reply>,
    ) {
        let targets = match self.recipients(to) {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(e);
                return;
            }
        };
        // One instance answers; spread requests to an app over its instances.
        self.next_request += 1;
        let n = self.next_request;
        let (id, i, pid) = targets[(n as usize) % targets.len()];
        let msg = json!({"type": "process:msg", "topic": topic.unwrap_or_else(|| "herd".into()), "data": data, "from": "cli", "request": n});
        if !self.deliver(id, i, &msg) {
            let _ = reply.send(err(
                ErrorCode::NoRecipient,
                format!("instance {to} did not take the request (queue full or channel closed)"),
            ));
            return;
        }
        let from = format!("{}:{i}", self.apps[&id].spec.name);
        self.requests.insert(n, Pending { pid, from, reply });
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = tx.send(Event::RequestTimeout { id: n });
        });
    }

    pub(super) fn on_request_timeout(&mut self, n: u64) {
        if let Some(p) = self.requests.remove(&n) {
            let _ = p.reply.send(err(
                ErrorCode::Timeout,
                format!("{} did not reply in time; it must answer with a message carrying \"reply_to\": {n}", p.from),
            ));
        }
    }

    /// A message an app sent: a reply to a request, or (for now) logged.
    pub(super) fn on_app_message(&mut self, pid: u32, v: Value) {
        if let Some(n) = v.get("reply_to").and_then(Value::as_u64) {
            if self.requests.get(&n).is_some_and(|p| p.pid == pid) {
                let p = self.requests.remove(&n).expect("checked");
                let data = v.get("data").cloned().unwrap_or(v);
                let _ = p.reply.send(Reply::Message {
                    v: PROTOCOL_VERSION,
                    from: p.from,
                    data,
                });
                return;
            }
        }
        tracing::debug!(pid, "message from instance: {v}");
    }
}
