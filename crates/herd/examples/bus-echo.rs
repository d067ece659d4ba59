//! A Rust instance on herd's bus: answers requests (echoing them), remembers what it saw on
//! the topic "news", and on `{"ask": ADDRESS}` asks that instance in turn.
//!
//!     herd start target/debug/examples/bus-echo --name rust

use std::time::Duration;

use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let bus = herd::bus::Bus::connect()?;
    bus.subscribe("news")?;
    herd::ready()?;
    println!("bus-echo: instance {:?} on the bus", herd::instance());
    let mut seen: Vec<Value> = Vec::new();
    while let Some(msg) = bus.recv().await {
        if !msg.is_request() {
            seen.push(json!({"topic": msg.topic, "data": msg.data, "from": msg.from}));
            continue;
        }
        let answer = if msg.data == "seen" {
            json!(seen)
        } else if let Some(to) = msg.data.get("ask").and_then(Value::as_str) {
            match bus
                .request(to, json!("from rust"), Duration::from_secs(2))
                .await
            {
                Ok(v) => json!({"asked": to, "answer": v}),
                Err(e) => json!({"asked": to, "error": e.to_string()}),
            }
        } else {
            json!({"echo": msg.data, "lang": "rust", "pid": std::process::id()})
        };
        msg.reply(answer).await?;
    }
    Ok(())
}
