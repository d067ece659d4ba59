//! PM2's in-app metrics and actions (`@pm2/io`), unchanged: an app using `io.metric`,
//! `io.counter`, `io.action` sends `{"type":"axm:monitor"|"axm:action"|"axm:reply",…}` with
//! `process.send` as it does under PM2. herd keeps each instance's latest metrics (shown by
//! `describe` and the Prometheus endpoint) and its actions, and `herd trigger` runs an action:
//! `{"msg": name, "opts": arg}` to every instance that declared it, answered by its
//! `axm:reply`. None of these messages goes to the bus.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use herd_proto::{ErrorCode, Reply, PROTOCOL_VERSION};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{err, CommandError, State, TimerKey};

/// At most this many metrics and actions are kept per instance.
const MAX_ENTRIES: usize = 256;

/// What an instance told of itself through `@pm2/io`.
#[derive(Debug, Default)]
pub(super) struct Pm2Io {
    /// Its metrics, as last sent: name → `{value, unit, type, …}`.
    pub(super) metrics: Map<String, Value>,
    /// The actions it declared.
    pub(super) actions: Vec<String>,
}

/// A `herd trigger` waiting for replies.
pub(super) struct Trigger {
    action: String,
    /// Instances asked and not yet answered: pid → instance number.
    waiting: HashMap<u32, u32>,
    got: BTreeMap<u32, Value>,
    reply: oneshot::Sender<Reply>,
}

/// Whether `v` is one of `@pm2/io`'s messages (`type` starting with `axm:`).
pub(super) fn is_axm(v: &Value) -> bool {
    v.get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with("axm:"))
}

impl State {
    /// A `@pm2/io` message of instance `pid`.
    pub(super) fn on_axm(&mut self, pid: u32, v: Value) {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let data = v.get("data");
        match kind {
            "axm:monitor" => {
                let Some(Value::Object(m)) = data else { return };
                let Some(p) = self.proc_mut(pid) else { return };
                let io = p.pm2.get_or_insert_with(Default::default);
                io.metrics = m
                    .iter()
                    .take(MAX_ENTRIES)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            }
            "axm:action" => {
                let Some(name) = data
                    .and_then(|d| d.get("action_name"))
                    .and_then(Value::as_str)
                else {
                    return;
                };
                let Some(p) = self.proc_mut(pid) else { return };
                let io = p.pm2.get_or_insert_with(Default::default);
                if io.actions.len() < MAX_ENTRIES && !io.actions.iter().any(|a| a == name) {
                    io.actions.push(name.to_string());
                }
            }
            "axm:reply" => {
                let name = data
                    .and_then(|d| d.get("action_name"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let ret = data
                    .and_then(|d| d.get("return"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let done: Vec<u64> = self
                    .triggers
                    .iter_mut()
                    .filter(|(_, t)| t.action == name)
                    .filter_map(|(id, t)| {
                        let i = t.waiting.remove(&pid)?;
                        t.got.insert(i, ret.clone());
                        t.waiting.is_empty().then_some(*id)
                    })
                    .collect();
                for id in done {
                    self.finish_trigger(id);
                }
            }
            // Options, scoped actions, notifications: nothing herd shows yet.
            _ => {}
        }
    }

    /// `herd trigger`: the action to every instance of `target` that declared it.
    pub(super) fn trigger(
        &mut self,
        target: &str,
        action: &str,
        arg: Option<Value>,
        timeout: Duration,
        reply: oneshot::Sender<Reply>,
    ) -> Result<(), (CommandError, oneshot::Sender<Reply>)> {
        let (app_name, only) = match target.rsplit_once(':') {
            Some((a, i)) => match i.parse::<u32>() {
                Ok(i) => (a, Some(i)),
                Err(_) => (target, None),
            },
            None => (target, None),
        };
        let ids = match self.resolve(app_name) {
            Ok(ids) => ids,
            Err(e) => return Err((e, reply)),
        };
        let mut msg = json!({ "msg": action });
        if let (Some(arg), Some(o)) = (arg, msg.as_object_mut()) {
            o.insert("opts".into(), arg);
        }
        let mut waiting = HashMap::new();
        let mut known = Vec::new();
        for app in ids.iter().filter_map(|id| self.apps.get(id)) {
            for s in &app.slots {
                if only.is_some_and(|i| i != s.index) {
                    continue;
                }
                let Some(p) = s.state.proc() else { continue };
                let Some(io) = &p.pm2 else { continue };
                known.extend(io.actions.iter().cloned());
                if io.actions.iter().any(|a| a == action)
                    && p.channel.as_ref().is_some_and(|ch| ch.send(&msg, None))
                {
                    waiting.insert(p.pid, s.index);
                }
            }
        }
        if waiting.is_empty() {
            known.sort();
            known.dedup();
            let have = if known.is_empty() {
                "none of its instances declared an action (with @pm2/io's io.action)".to_string()
            } else {
                format!("its actions: {}", known.join(", "))
            };
            return Err((
                err(
                    ErrorCode::BadRequest,
                    format!("no running instance of {target} has the action {action:?}; {have}"),
                ),
                reply,
            ));
        }
        self.trigger_id = self.trigger_id.wrapping_add(1);
        let id = self.trigger_id;
        self.triggers.insert(
            id,
            Trigger {
                action: action.to_string(),
                waiting,
                got: BTreeMap::new(),
                reply,
            },
        );
        self.timers
            .set(TimerKey::Trigger { id }, Instant::now() + timeout);
        Ok(())
    }

    /// Answers trigger `id` with the replies it got (all, or those in time).
    pub(super) fn finish_trigger(&mut self, id: u64) {
        self.timers.cancel(TimerKey::Trigger { id });
        let Some(t) = self.triggers.remove(&id) else {
            return;
        };
        let mut data: Vec<Value> = t
            .got
            .into_iter()
            .map(|(i, ret)| json!({"instance": i, "return": ret}))
            .collect();
        data.extend(
            t.waiting
                .values()
                .map(|i| json!({"instance": i, "error": "no reply in time"})),
        );
        let _ = t.reply.send(Reply::Message {
            v: PROTOCOL_VERSION,
            from: t.action,
            data: Value::Array(data),
        });
    }
}
