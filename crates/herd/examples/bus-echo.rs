//! A Rust instance on herd's bus: answers requests (echoing them, and saying whether each
//! came on a direct channel), remembers what it saw on the topic "news" and what was sent to
//! it, and on request:
//! - `{"ask": ADDRESS, "send": DATA, "timeout_ms": N}` asks that instance in turn;
//! - `{"burst": ADDRESS, "n": N}` sends it N messages `{"seq": i}`;
//! - `{"sleep_ms": N}` answers after N ms;
//! - `"channels"` answers how many direct channels it holds.
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
    // In a task of its own rather than in `main`'s future: tokio's current_thread runtime
    // polls its reactor once more (a syscall) before it polls the `block_on` future that
    // another task (here the bus's reader) woke; a spawned task runs at once.
    tokio::spawn(serve(bus))
        .await
        .map_err(std::io::Error::other)?
}

async fn serve(bus: herd::bus::Bus) -> std::io::Result<()> {
    let pid = std::process::id();
    let mut seen: Vec<Value> = Vec::new();
    while let Some(msg) = bus.recv().await {
        if !msg.is_request() {
            seen.push(json!({"topic": msg.topic, "data": msg.data, "from": msg.from}));
            continue;
        }
        let d = &msg.data;
        let answer = if *d == "seen" {
            json!(seen)
        } else if *d == "channels" {
            json!(bus.direct_channels())
        } else if let Some(to) = d.get("ask").and_then(Value::as_str) {
            let send = d.get("send").cloned().unwrap_or(json!("from rust"));
            let ms = d.get("timeout_ms").and_then(Value::as_u64).unwrap_or(2000);
            let t = std::time::Instant::now();
            match bus.request(to, send, Duration::from_millis(ms)).await {
                Ok(v) => json!({"asked": to, "answer": v, "ms": t.elapsed().as_millis() as u64}),
                Err(e) => {
                    json!({"asked": to, "error": e.to_string(), "ms": t.elapsed().as_millis() as u64})
                }
            }
        } else if let Some(to) = d.get("burst").and_then(Value::as_str) {
            let n = d.get("n").and_then(Value::as_u64).unwrap_or(0);
            for i in 0..n {
                bus.send(to, json!({"seq": i})).await?;
            }
            json!({"sent": n})
        } else {
            if let Some(ms) = d.get("sleep_ms").and_then(Value::as_u64) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            json!({"echo": msg.data, "lang": "rust", "pid": pid, "direct": msg.is_direct()})
        };
        msg.reply(answer).await?;
    }
    Ok(())
}
