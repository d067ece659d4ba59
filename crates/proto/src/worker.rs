//! The messages on an instance's own channel (`HERD_IPC_FD`, or a Node app's IPC channel):
//! what a worker sends the daemon ([`FromInstance`]) and what the daemon sends it
//! ([`ToInstance`]), one JSON value per line. `docs/protocol.md` and `docs/bus.md` describe
//! them; this module is their definition, used by the daemon and the `herd` crate, and
//! mirrored by `node/herd.js`.
//!
//! Node's own cluster protocol (`{"cmd":"NODE_CLUSTER",…}`, `NODE_HANDLE`) on the same channel
//! is not here: it is Node's, and lives with the code that speaks it (`herd-core`'s `node`).
//!
//! The wire form is that of a [`serde_json::Value`]: keys in sorted order
//! ([`ToInstance::to_value`], [`HerdOp::to_line`]). Reading is lenient, as the daemon
//! always was: unknown fields are ignored, a missing `data` is `null`, and a field of the
//! wrong type (a numeric `topic`) counts as absent, so that the daemon can say what is
//! missing instead of refusing a line it cannot name.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// PM2's bare-string messages: `process.send('ready')` from a worker, and `"shutdown"` to a
/// worker of an app with `shutdown_with_message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Word {
    /// The worker is ready to serve (same as `{"herd":"ready"}`).
    Ready,
    /// The daemon asks the worker to stop.
    Shutdown,
}

impl Word {
    /// The message as it travels (a JSON string).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Shutdown => "shutdown",
        }
    }
}

/// The `type` of PM2's messages: always `"process:msg"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessMsgType {
    /// `"process:msg"`.
    #[default]
    #[serde(rename = "process:msg")]
    ProcessMsg,
}

// ----- from an instance --------------------------------------------------------------------

/// A message of herd's own protocol from an instance: `{"herd": "<op>", …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "herd", rename_all = "snake_case")]
pub enum HerdOp {
    /// `{"herd":"ready"}`: ready to serve.
    Ready,
    /// `{"herd":"send","to":"api:1","data":…,"topic":"t"}`.
    Send(Send),
    /// `{"herd":"publish","topic":"news","data":…}`.
    Publish(Publish),
    /// `{"herd":"subscribe","topic":"news"}`.
    Subscribe(Subscribe),
    /// `{"herd":"unsubscribe","topic":"news"}`.
    Unsubscribe(Unsubscribe),
    /// `{"herd":"request","to":"api:0","data":…,"id":7,"timeout_ms":2000}`.
    Request(Request),
    /// `{"herd":"reply","reply_to":N,"data":…}`.
    Reply(Reply),
    /// `{"herd":"direct"}`: this instance takes direct channels; with `"to":"api:0"`, also
    /// asks for one to that instance ([`ToInstance::Channel`] answers).
    Direct(Direct),
}

/// Delivers `data` to an address (`app:i`, `app`, `*`, optionally `@host`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Send {
    /// The address; absent (or not a string) is refused by the daemon.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub to: Option<String>,
    /// The topic the recipients see (`herd` when absent).
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
}

/// Delivers `data` to every subscriber of `topic`, on every host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    /// The topic; absent (or not a string) is refused by the daemon.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
}

/// Starts receiving a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The topic; absent (or not a string) is refused by the daemon.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
}

/// Stops receiving a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// The topic; absent (or not a string) is refused by the daemon.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
}

/// Delivers `data` to one instance and routes its [`Reply`] back as an [`Answer`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The address; absent (or not a string) is refused by the daemon.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub to: Option<String>,
    /// The topic the recipient sees (`herd` when absent).
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
    /// The requester's own number for it, any JSON value (`null` when absent), quoted back
    /// as `reply_to`.
    #[serde(default)]
    pub id: Value,
    /// How long to wait for the reply (default 5000, at most 600000); absent or not a
    /// whole number is the default.
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_ms: Option<u64>,
}

/// Answers the request numbered `reply_to` that the instance received (`request` of a
/// [`Delivery`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The `request` number of the delivery answered.
    pub reply_to: u64,
    /// The answer. Absent (not `null`): the whole message is the answer, as for PM2-shaped
    /// replies (`{"type":"process:msg","reply_to":N,…}`) that put it elsewhere.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub data: Option<Value>,
}

/// Asks for direct channels (docs/bus.md, "Direct channels").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Direct {
    /// The instance (`app:i`, on this host) to open a channel to; absent: only say that this
    /// instance takes channels others open to it.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub to: Option<String>,
    /// Channel messages (`{"herd":"channel"}` with their ends) taken since the last count: the
    /// daemon hands an instance only a few ends it has not counted (Node workers count with
    /// Node's own `NODE_HANDLE_ACK`).
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub taken: Option<u64>,
}

/// PM2's `process.send({type: 'process:msg', topic, data})`: published on `topic`
/// (`process:msg` when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessMsg {
    /// Always `"process:msg"`.
    #[serde(rename = "type")]
    pub kind: ProcessMsgType,
    /// The topic.
    #[serde(
        default,
        deserialize_with = "string",
        skip_serializing_if = "Option::is_none"
    )]
    pub topic: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
}

/// A message from an instance, read as the daemon reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum FromInstance {
    /// `{"herd":"ready"}` or PM2's `"ready"`.
    Ready,
    /// `{"herd":"send",…}`.
    Send(Send),
    /// `{"herd":"publish",…}`.
    Publish(Publish),
    /// `{"herd":"subscribe",…}`.
    Subscribe(Subscribe),
    /// `{"herd":"unsubscribe",…}`.
    Unsubscribe(Unsubscribe),
    /// `{"herd":"request",…}`.
    Request(Request),
    /// `{"herd":"direct",…}`.
    Direct(Direct),
    /// `{"herd":"reply","reply_to":N,…}`, or any other message (but the five above) with a
    /// whole-number `reply_to`. One that is also PM2's `process:msg` (`tests/node/http.js`
    /// answers so) is published as such when it answers no request of the daemon's:
    /// [`ProcessMsg::read`].
    Reply(Reply),
    /// PM2's `{"type":"process:msg",…}`.
    ProcessMsg(ProcessMsg),
    /// Anything else; the daemon ignores it.
    Other,
}

/// The ops the daemon dispatches on (the tags of [`HerdOp`]).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Tag {
    Ready,
    Send,
    Publish,
    Subscribe,
    Unsubscribe,
    Request,
    Reply,
    Direct,
}

impl FromInstance {
    /// Reads one message. Each shape is taken by its own struct straight from `v` (the
    /// payload is copied once); a message that fits none is [`FromInstance::Other`].
    pub fn read(v: &Value) -> Self {
        if Self::is_ready(v) {
            return Self::Ready;
        }
        let tag = v.get("herd").and_then(|t| Tag::deserialize(t).ok());
        let typed = match tag {
            Some(Tag::Send) => Send::deserialize(v).map(Self::Send).ok(),
            Some(Tag::Publish) => Publish::deserialize(v).map(Self::Publish).ok(),
            Some(Tag::Subscribe) => Subscribe::deserialize(v).map(Self::Subscribe).ok(),
            Some(Tag::Unsubscribe) => Unsubscribe::deserialize(v).map(Self::Unsubscribe).ok(),
            Some(Tag::Request) => Request::deserialize(v).map(Self::Request).ok(),
            Some(Tag::Direct) => Direct::deserialize(v).map(Self::Direct).ok(),
            Some(Tag::Ready | Tag::Reply) | None => None,
        };
        if let Some(m) = typed {
            return m;
        }
        // (A struct would also take an array: `[1]` is no reply.)
        if let Some(r) = v.is_object().then(|| Reply::deserialize(v).ok()).flatten() {
            return Self::Reply(r);
        }
        ProcessMsg::read(v).map_or(Self::Other, Self::ProcessMsg)
    }

    /// Whether `v` says the instance is ready: `{"herd":"ready"}` or `"ready"`.
    pub fn is_ready(v: &Value) -> bool {
        v == Word::Ready.as_str() || v.get("herd").and_then(Value::as_str) == Some("ready")
    }

    /// The topic the message names, if any (bounded by `max_topic_bytes`).
    pub fn topic(&self) -> Option<&str> {
        match self {
            Self::Send(Send { topic, .. })
            | Self::Publish(Publish { topic, .. })
            | Self::Subscribe(Subscribe { topic })
            | Self::Unsubscribe(Unsubscribe { topic })
            | Self::Request(Request { topic, .. })
            | Self::ProcessMsg(ProcessMsg { topic, .. }) => topic.as_deref(),
            Self::Ready | Self::Reply(_) | Self::Direct(_) | Self::Other => None,
        }
    }
}

impl ProcessMsg {
    /// Reads `v` as PM2's `process:msg`, if it is one (whatever else it carries).
    pub fn read(v: &Value) -> Option<Self> {
        Self::is(v).then(|| Self::deserialize(v).ok()).flatten()
    }

    /// Whether `v` has `"type":"process:msg"`.
    pub fn is(v: &Value) -> bool {
        v.get("type").and_then(Value::as_str) == Some("process:msg")
    }
}

impl HerdOp {
    /// The line an instance writes: the message's JSON with its keys sorted (as every
    /// client has written it), and a newline.
    ///
    /// # Errors
    /// Never for these types (only strings, numbers and JSON values); kept for the API of
    /// `serde_json`.
    pub fn to_line(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut line = serde_json::to_vec(&serde_json::to_value(self)?)?;
        line.push(b'\n');
        Ok(line)
    }
}

// ----- to an instance ----------------------------------------------------------------------

/// A message of the bus from the daemon to an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "herd", rename_all = "snake_case")]
pub enum ToInstance<'a> {
    /// `{"type":"process:msg","herd":"message",…}`: a send, a publish or a request.
    Message(Delivery<'a>),
    /// `{"herd":"reply","reply_to":7,"data":…,"from":…}`: the answer to the instance's own
    /// [`Request`].
    Reply(Answer),
    /// `{"herd":"error","error":…}`: a message of the instance refused, or its request failed.
    Error(Refusal),
    /// `{"herd":"scrape","id":N}`: send your metrics ([`MetricsMsg::Metrics`] with
    /// `reply_to: N`), for herd's Prometheus endpoint.
    Scrape {
        /// Quote it in the answer.
        id: u64,
    },
    /// `{"herd":"channel",…}`: a direct channel to another instance (its end comes with the
    /// message, `SCM_RIGHTS`), or why there is none.
    Channel(ChannelMsg),
    /// `{"herd":"unroute","peer":"api:0@web-1"}`: that instance no longer serves its address.
    Unroute(Unroute),
}

/// A direct channel handed to an instance, or refused (docs/bus.md, "Direct channels").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelMsg {
    /// The address the instance asked for (`Direct::to`): present for the channel it opened
    /// (and for a refusal), absent for one another instance opened to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The instance at the other end (`app:i@host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// This instance's own address (`app:i@host`): the `from` of what it writes on the
    /// channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub me: Option<String>,
    /// Longest line either end may write on the channel (`max_message_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
    /// Direct channels an instance keeps open at most (`max_direct_channels`); past it, the
    /// least recently used is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_channels: Option<usize>,
    /// Why there is no channel (no fd comes with the message): use the daemon for `to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error`: ask again no sooner than this (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ms: Option<u64>,
}

/// `{"herd":"unroute","peer":…}` from the daemon says the instance `peer` stopped serving its address (reloaded away,
/// stopped): send to its address through the daemon again, which introduces its successor.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unroute {
    /// The instance that stopped serving (`app:i@host`).
    pub peer: String,
}

/// An instance's metrics for herd's Prometheus endpoint (docs/metrics.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "herd", rename_all = "snake_case")]
pub enum MetricsMsg {
    /// `{"herd":"metrics_offer"}`: this instance answers scrapes.
    MetricsOffer,
    /// `{"herd":"metrics","reply_to":N,"text":"…"}`: its metrics, in Prometheus' text format,
    /// answering the scrape `N`.
    Metrics {
        /// The scrape's id.
        reply_to: u64,
        /// The exposition text.
        text: String,
    },
}

impl MetricsMsg {
    /// Reads `v` as one of these, if it is one.
    pub fn read(v: &Value) -> Option<Self> {
        match v.get("herd")?.as_str()? {
            "metrics_offer" | "metrics" => Self::deserialize(v).ok(),
            _ => None,
        }
    }
}

/// A message for the instance, in PM2's shape so that apps written for PM2's
/// `sendDataToProcessId` take it as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery<'a> {
    /// Always `"process:msg"`.
    #[serde(rename = "type", default)]
    pub kind: ProcessMsgType,
    /// The topic (`herd` for plain sends).
    #[serde(default = "herd_topic")]
    pub topic: String,
    /// The payload: borrowed by the daemon, which writes one delivery per message whatever
    /// the number of recipients.
    #[serde(default)]
    pub data: Cow<'a, Value>,
    /// The sender: `app:i@host` or `cli@host`.
    #[serde(default)]
    pub from: String,
    /// Present when a reply is awaited: answer with a [`Reply`] whose `reply_to` is this.
    #[serde(
        default,
        deserialize_with = "whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub request: Option<u64>,
}

fn herd_topic() -> String {
    "herd".into()
}

/// The reply to a [`Request`] of the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The request's `id`, as the instance gave it.
    #[serde(default)]
    pub reply_to: Value,
    /// The reply.
    #[serde(default)]
    pub data: Value,
    /// Who replied (`app:i@host`).
    #[serde(default)]
    pub from: String,
}

/// Why a message of the instance went nowhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    /// For people: what happened and the fix.
    #[serde(default)]
    pub error: String,
    /// The `id` of the instance's request this answers (present, possibly `null`, for a
    /// request; absent for other messages).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub reply_to: Option<Value>,
    /// For a refusal by a limit: the config key that raises it (`max_subscriptions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

impl ToInstance<'_> {
    /// A refusal, answering the request `reply_to` if it was one.
    pub fn error(error: String, reply_to: Option<Value>) -> Self {
        Self::Error(Refusal {
            error,
            reply_to,
            limit: None,
        })
    }

    /// The message as a JSON value, which is how the daemon queues it: written out, its keys
    /// come in sorted order.
    pub fn to_value(&self) -> Value {
        // Serialising these types cannot fail (string keys, strings, numbers and JSON values
        // only; every variant is serialised in the tests); should it, the instance gets a
        // `null`, which every client ignores.
        serde_json::to_value(self).unwrap_or_default()
    }
}

// ----- lenient fields ----------------------------------------------------------------------

/// A string, or `None` for anything else (absent, `null`, a number…).
fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// A whole number, or `None` for anything else.
fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?.as_u64())
}

/// Any value, `null` included; `None` only when the field is absent (with `default`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    /// Each line of docs/bus.md's "From an instance" table reads as its shape, and written
    /// again (by the `herd` crate) gives the same JSON.
    #[test]
    fn messages_from_an_instance_read_as_documented() {
        let cases = [
            (
                r#"{"herd":"send","to":"api:1","data":{"x":1},"topic":"t"}"#,
                HerdOp::Send(Send {
                    to: Some("api:1".into()),
                    topic: Some("t".into()),
                    data: json!({"x": 1}),
                }),
            ),
            (
                r#"{"herd":"publish","topic":"news","data":"hi"}"#,
                HerdOp::Publish(Publish {
                    topic: Some("news".into()),
                    data: json!("hi"),
                }),
            ),
            (
                r#"{"herd":"subscribe","topic":"news"}"#,
                HerdOp::Subscribe(Subscribe {
                    topic: Some("news".into()),
                }),
            ),
            (
                r#"{"herd":"unsubscribe","topic":"news"}"#,
                HerdOp::Unsubscribe(Unsubscribe {
                    topic: Some("news".into()),
                }),
            ),
            (
                r#"{"herd":"request","to":"api:0","data":{"q":1},"id":7,"timeout_ms":2000}"#,
                HerdOp::Request(Request {
                    to: Some("api:0".into()),
                    topic: None,
                    data: json!({"q": 1}),
                    id: json!(7),
                    timeout_ms: Some(2000),
                }),
            ),
            (
                r#"{"herd":"reply","reply_to":12,"data":"pong"}"#,
                HerdOp::Reply(Reply {
                    reply_to: 12,
                    data: Some(json!("pong")),
                }),
            ),
            (r#"{"herd":"ready"}"#, HerdOp::Ready),
            (r#"{"herd":"direct"}"#, HerdOp::Direct(Direct::default())),
            (
                r#"{"herd":"direct","to":"api:0"}"#,
                HerdOp::Direct(Direct {
                    to: Some("api:0".into()),
                    taken: None,
                }),
            ),
            (
                r#"{"herd":"direct","taken":1}"#,
                HerdOp::Direct(Direct {
                    to: None,
                    taken: Some(1),
                }),
            ),
        ];
        for (line, op) in cases {
            assert_eq!(serde_json::from_str::<HerdOp>(line).unwrap(), op, "{line}");
            assert_eq!(serde_json::to_value(&op).unwrap(), v(line), "{line}");
            let read = FromInstance::read(&v(line));
            let expected = match op.clone() {
                HerdOp::Ready => FromInstance::Ready,
                HerdOp::Send(m) => FromInstance::Send(m),
                HerdOp::Publish(m) => FromInstance::Publish(m),
                HerdOp::Subscribe(m) => FromInstance::Subscribe(m),
                HerdOp::Unsubscribe(m) => FromInstance::Unsubscribe(m),
                HerdOp::Request(m) => FromInstance::Request(m),
                HerdOp::Reply(m) => FromInstance::Reply(m),
                HerdOp::Direct(m) => FromInstance::Direct(m),
            };
            assert_eq!(read, expected, "{line}");
        }
    }

    #[test]
    fn pm2_shapes_are_read() {
        assert_eq!(FromInstance::read(&json!("ready")), FromInstance::Ready);
        let pm2 = v(r#"{"type":"process:msg","topic":"t","data":{"a":1}}"#);
        let FromInstance::ProcessMsg(m) = FromInstance::read(&pm2) else {
            panic!()
        };
        assert_eq!(m.topic.as_deref(), Some("t"));
        assert_eq!(serde_json::to_value(&m).unwrap(), pm2);
        // A PM2-shaped answer (tests/node/http.js) is a reply first, and PM2's too.
        let both = v(r#"{"type":"process:msg","topic":"echo","reply_to":3,"data":1}"#);
        assert_eq!(
            FromInstance::read(&both),
            FromInstance::Reply(Reply {
                reply_to: 3,
                data: Some(json!(1))
            })
        );
        assert!(ProcessMsg::read(&both).is_some());
        assert_eq!(Word::Shutdown.as_str(), "shutdown");
        assert_eq!(serde_json::to_value(Word::Shutdown).unwrap(), "shutdown");
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_tolerated() {
        let m = FromInstance::read(&v(
            r#"{"herd":"send","to":5,"topic":["x"],"extra":{"y":2},"v":9}"#,
        ));
        assert_eq!(
            m,
            FromInstance::Send(Send {
                to: None,
                topic: None,
                data: Value::Null
            })
        );
        let m = FromInstance::read(&v(r#"{"herd":"request","to":"a","timeout_ms":"soon"}"#));
        let FromInstance::Request(r) = m else {
            panic!()
        };
        assert_eq!((r.id, r.timeout_ms), (Value::Null, None));
        // A reply with `data: null` answers null; one without data answers the whole message.
        let FromInstance::Reply(r) = FromInstance::read(&v(r#"{"reply_to":1,"data":null}"#)) else {
            panic!()
        };
        assert_eq!(r.data, Some(Value::Null));
        let FromInstance::Reply(r) = FromInstance::read(&v(r#"{"reply_to":1,"ok":true}"#)) else {
            panic!()
        };
        assert_eq!(r.data, None);
        // Unknown ops, non-numeric reply_to and plain objects are nothing of herd's.
        for other in [
            r#"{"herd":"dance"}"#,
            r#"{"herd":"reply","reply_to":"x"}"#,
            r#"{"x":1}"#,
            "[1,2]",
            "42",
        ] {
            assert_eq!(
                FromInstance::read(&v(other)),
                FromInstance::Other,
                "{other}"
            );
        }
        // The daemon's messages with fields it may add later.
        let d: ToInstance = serde_json::from_str(
            r#"{"herd":"message","topic":"t","data":1,"from":"a:0@h","new":true}"#,
        )
        .unwrap();
        assert!(matches!(
            d,
            ToInstance::Message(Delivery { request: None, .. })
        ));
    }

    /// docs/bus.md "To an instance", written as the daemon writes them: keys sorted.
    #[test]
    fn messages_to_an_instance_are_written_as_today() {
        let cases = [
            (
                ToInstance::Message(Delivery {
                    kind: ProcessMsgType::ProcessMsg,
                    topic: "news".into(),
                    data: Cow::Owned(json!({"h": 1})),
                    from: "api:0@web-1".into(),
                    request: None,
                }),
                r#"{"data":{"h":1},"from":"api:0@web-1","herd":"message","topic":"news","type":"process:msg"}"#,
            ),
            (
                ToInstance::Message(Delivery {
                    kind: ProcessMsgType::ProcessMsg,
                    topic: "herd".into(),
                    data: Cow::Owned(json!("ping")),
                    from: "cli@web-1".into(),
                    request: Some(12),
                }),
                r#"{"data":"ping","from":"cli@web-1","herd":"message","request":12,"topic":"herd","type":"process:msg"}"#,
            ),
            (
                ToInstance::Reply(Answer {
                    reply_to: json!(7),
                    data: json!({"pong": true}),
                    from: "api:0@web-1".into(),
                }),
                r#"{"data":{"pong":true},"from":"api:0@web-1","herd":"reply","reply_to":7}"#,
            ),
            (
                ToInstance::error("api:0 did not reply in time".into(), Some(json!(7))),
                r#"{"error":"api:0 did not reply in time","herd":"error","reply_to":7}"#,
            ),
            (
                ToInstance::error(
                    "a message longer than 1048576 bytes was dropped".into(),
                    None,
                ),
                r#"{"error":"a message longer than 1048576 bytes was dropped","herd":"error"}"#,
            ),
            (
                ToInstance::Error(Refusal {
                    error: "subscription refused".into(),
                    reply_to: None,
                    limit: Some("max_subscriptions".into()),
                }),
                r#"{"error":"subscription refused","herd":"error","limit":"max_subscriptions"}"#,
            ),
            (
                ToInstance::Channel(ChannelMsg {
                    to: Some("api:0".into()),
                    peer: Some("api:0@h".into()),
                    me: Some("web:1@h".into()),
                    max_bytes: Some(1024),
                    max_channels: Some(128),
                    error: None,
                    retry_ms: None,
                }),
                r#"{"herd":"channel","max_bytes":1024,"max_channels":128,"me":"web:1@h","peer":"api:0@h","to":"api:0"}"#,
            ),
            (
                ToInstance::Channel(ChannelMsg {
                    to: Some("api:9".into()),
                    error: Some("no running instance matches".into()),
                    retry_ms: Some(1000),
                    ..ChannelMsg::default()
                }),
                r#"{"error":"no running instance matches","herd":"channel","retry_ms":1000,"to":"api:9"}"#,
            ),
            (
                ToInstance::Unroute(Unroute {
                    peer: "api:0@h".into(),
                }),
                r#"{"herd":"unroute","peer":"api:0@h"}"#,
            ),
            // A request without an id is answered with `"reply_to":null`.
            (
                ToInstance::error("no".into(), Some(Value::Null)),
                r#"{"error":"no","herd":"error","reply_to":null}"#,
            ),
        ];
        for (msg, line) in cases {
            assert_eq!(serde_json::to_string(&msg.to_value()).unwrap(), line);
            assert_eq!(
                serde_json::from_str::<ToInstance>(line).unwrap(),
                msg,
                "{line}"
            );
        }
    }

    #[test]
    fn an_instance_writes_sorted_keys_as_before() {
        let op = HerdOp::Request(Request {
            to: Some("api:0".into()),
            topic: None,
            data: json!({"q": 1}),
            id: json!(1),
            timeout_ms: Some(2000),
        });
        assert_eq!(
            op.to_line().unwrap(),
            b"{\"data\":{\"q\":1},\"herd\":\"request\",\"id\":1,\"timeout_ms\":2000,\"to\":\"api:0\"}\n"
        );
        let send = HerdOp::Send(Send {
            to: Some("api".into()),
            topic: None,
            data: json!([1]),
        });
        assert_eq!(
            send.to_line().unwrap(),
            b"{\"data\":[1],\"herd\":\"send\",\"to\":\"api\"}\n"
        );
        let reply = HerdOp::Reply(Reply {
            reply_to: 3,
            data: Some(Value::Null),
        });
        assert_eq!(
            reply.to_line().unwrap(),
            b"{\"data\":null,\"herd\":\"reply\",\"reply_to\":3}\n"
        );
    }
}
