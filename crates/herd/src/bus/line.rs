//! The bus's lines read and written in one pass, for the shapes every message and reply
//! takes. The protocol's types stay [`herd_proto::worker`]'s: what this module reads is
//! handed on as a [`ToInstance`], what it writes is byte for byte what `ToInstance` writes
//! (the tests hold it to both), and any other line is read by `ToInstance` itself.
//!
//! Why: `ToInstance` is tagged by its `herd` key, so serde first buffers a whole line into a
//! tree of its own, then reads the message out of that tree: twice the work and an allocation
//! per key for each message (the cost of a request/reply over a direct channel was a fifth
//! JSON). Writing borrows instead of copying the topic and the sender's address.

use std::borrow::Cow;

use herd_proto::worker::{Answer, Delivery, ProcessMsgType, Refusal, ToInstance};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Room for a small message and its envelope without growing the buffer.
const LINE_CAPACITY: usize = 256;

/// Every key of `message`, `reply` and `error` lines, read in one pass; keys of other lines
/// are ignored (they are read again as [`ToInstance`]).
#[derive(Deserialize)]
struct Flat<'a> {
    #[serde(borrow)]
    herd: Cow<'a, str>,
    #[serde(rename = "type", default, deserialize_with = "some")]
    kind: Option<ProcessMsgType>,
    #[serde(default, deserialize_with = "some")]
    topic: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default, deserialize_with = "some")]
    from: Option<String>,
    #[serde(default, deserialize_with = "whole")]
    request: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    reply_to: Option<Value>,
    #[serde(default, deserialize_with = "some")]
    error: Option<String>,
    #[serde(default)]
    limit: Option<String>,
}

/// A key that is a `T` where `ToInstance` has one (`null` is not a string): `None` only when
/// absent.
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// As `herd_proto`'s: a request number is a whole number, anything else none.
fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Value::deserialize(d)?.as_u64())
}

/// As `herd_proto`'s: any value, `null` included; `None` only when absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Reads one line (without its newline); `None` for what is none of herd's messages.
pub(super) fn parse(line: &[u8]) -> Option<ToInstance<'static>> {
    if let Ok(f) = serde_json::from_slice::<Flat<'_>>(line) {
        match &*f.herd {
            "message" => {
                return Some(ToInstance::Message(Delivery {
                    kind: f.kind.unwrap_or_default(),
                    topic: f.topic.unwrap_or_else(|| "herd".into()),
                    data: Cow::Owned(f.data),
                    from: f.from.unwrap_or_default(),
                    request: f.request,
                }))
            }
            "reply" => {
                return Some(ToInstance::Reply(Answer {
                    reply_to: f.reply_to.unwrap_or(Value::Null),
                    data: f.data,
                    from: f.from.unwrap_or_default(),
                }))
            }
            "error" => {
                return Some(ToInstance::Error(Refusal {
                    error: f.error.unwrap_or_default(),
                    reply_to: f.reply_to,
                    limit: f.limit,
                }))
            }
            _ => {}
        }
    }
    serde_json::from_slice(line).ok()
}

/// `ToInstance::Message(Delivery { … })` as it is written, from borrowed parts.
#[derive(Serialize)]
struct DeliveryOut<'a> {
    herd: &'static str,
    #[serde(rename = "type")]
    kind: ProcessMsgType,
    topic: &'a str,
    data: &'a Value,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<u64>,
}

/// The line (newline included) of a message on a direct channel.
pub(super) fn delivery(
    topic: &str,
    data: &Value,
    from: &str,
    request: Option<u64>,
) -> serde_json::Result<Vec<u8>> {
    let out = DeliveryOut {
        herd: "message",
        kind: ProcessMsgType::ProcessMsg,
        topic,
        data,
        from,
        request,
    };
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    serde_json::to_writer(&mut line, &out)?;
    line.push(b'\n');
    Ok(line)
}

/// The line (newline included) of any message, in a buffer with room for a small one.
pub(super) fn to_line<T: Serialize>(msg: &T) -> serde_json::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(LINE_CAPACITY);
    serde_json::to_writer(&mut line, msg)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::worker::{HerdOp, Reply};
    use serde_json::json;

    /// Lines of every shape, the odd ones included: read here as `ToInstance` reads them.
    #[test]
    fn reads_every_line_as_to_instance_does() {
        let lines = [
            r#"{"herd":"message","type":"process:msg","topic":"herd","data":{"a":[1,2]},"from":"api:0@h","request":7}"#,
            r#"{"herd":"message","topic":"news","data":"x","from":"web:1@h"}"#,
            r#"{"herd":"message","data":null}"#,
            r#"{"herd":"message"}"#,
            r#"{"herd":"message","request":1.5,"data":1}"#,
            r#"{"herd":"message","request":-3,"data":1}"#,
            r#"{"herd":"message","type":"other","data":1}"#,
            r#"{"herd":"message","topic":5}"#,
            r#"{"herd":"message","from":null}"#,
            r#"{"herd":"message","topic":null}"#,
            r#"{"herd":"message","type":null}"#,
            r#"{"herd":"message","data":1,"data":2}"#,
            r#"{"herd":"message","herd":"reply"}"#,
            r#"{"herd":"reply","from":null}"#,
            r#"{"herd":"error","error":null}"#,
            r#"{"herd":"error","limit":null,"reply_to":1}"#,
            r#"{"herd":"reply","reply_to":2,"request":"x","error":5}"#,
            r#"{"herd":"message","data":"caf\u00e9 \"q\"","from":"a\nb","extra":{"k":[]}}"#,
            r#"{"data":{"echo":1},"herd":"reply","reply_to":3,"from":"echo:0@h"}"#,
            r#"{"herd":"reply","reply_to":"x","data":null}"#,
            r#"{"herd":"reply"}"#,
            r#"{"herd":"reply","reply_to":3,"topic":7}"#,
            r#"{"herd":"error","error":"no running instance matches \"a:9\"","reply_to":4}"#,
            r#"{"herd":"error","error":"too many","limit":"max_subscriptions"}"#,
            r#"{"herd":"error","reply_to":null}"#,
            r#"{"herd":"error","limit":3}"#,
            r#"{"herd":"scrape","id":4}"#,
            r#"{"herd":"channel","to":"api:0","peer":"api:0@h","me":"web:1@h","max_bytes":10}"#,
            r#"{"herd":"unroute","peer":"api:0@h"}"#,
            r#"{"herd":"h\u0065llo"}"#,
            r#"{"herd":"m\u0065ssage","data":2}"#,
            r#"{"herd":7}"#,
            r#"{"type":"process:msg","data":1}"#,
            r#"[1,2]"#,
            r#"not json"#,
            r#"{"herd":"message","data":1"#,
        ];
        for line in lines {
            let want = serde_json::from_str::<ToInstance<'static>>(line).ok();
            assert_eq!(parse(line.as_bytes()), want, "{line}");
        }
    }

    #[test]
    fn writes_what_to_instance_writes() {
        let data = json!({"t": 1, "s": "é \"x\"\n", "n": [1.5, null, true]});
        for (topic, request) in [("herd", Some(9)), ("news", None)] {
            let want = ToInstance::Message(Delivery {
                kind: ProcessMsgType::ProcessMsg,
                topic: topic.into(),
                data: Cow::Borrowed(&data),
                from: "web:1@h".into(),
                request,
            });
            let mut want = serde_json::to_vec(&want).unwrap();
            want.push(b'\n');
            assert_eq!(delivery(topic, &data, "web:1@h", request).unwrap(), want);
        }
        let reply = HerdOp::Reply(Reply {
            reply_to: 3,
            data: Some(data.clone()),
        });
        let mut want = serde_json::to_vec(&reply).unwrap();
        want.push(b'\n');
        assert_eq!(to_line(&reply).unwrap(), want);
    }
}
