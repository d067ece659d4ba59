//! An axum server as its own cluster primary, like Node's `cluster` module: N workers share
//! the port, a killed worker is replaced, workers and primary exchange messages, and SIGTERM
//! drains every worker before exiting. Run by the herd daemon instead, the same binary is a
//! worker of the daemon.
//!
//!     CLUSTER_PORT=8000 CLUSTER_WORKERS=2 cargo run --example cluster
//!     herd start target/debug/examples/cluster -i 2 --port 8000

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use herd::cluster::Cluster;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

#[derive(Clone)]
struct App {
    id: u32,
    bus: Option<herd::bus::Bus>,
    acks: Arc<Mutex<mpsc::Receiver<Value>>>,
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("CLUSTER_PORT").unwrap_or_else(|_| "8000".into());
    let workers = std::env::var("CLUSTER_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(herd::cluster::available_parallelism);
    Cluster::builder()
        .name("cluster")
        .workers(workers)
        .listen(&format!("127.0.0.1:{port}"))
        .on_exit(|_, exit| {
            eprintln!(
                "primary: worker {} (pid {}) exited ({:?} {:?}); it is restarted",
                exit.id, exit.pid, exit.code, exit.signal
            )
        })
        .on_message(|primary, worker, msg| {
            println!("primary: worker {worker} says {msg}");
            primary.send(worker, json!({"ack": msg}));
        })
        .run(|mut worker| async move {
            let listener = worker
                .listener()
                .ok_or_else(|| std::io::Error::other("no socket: run with a port"))?;
            let (ack_tx, ack_rx) = mpsc::channel(16);
            let app = App {
                id: worker.id(),
                bus: worker.bus().cloned(),
                acks: Arc::new(Mutex::new(ack_rx)),
            };
            // One reader of the bus: answers requests, passes the primary's messages on.
            if let Some(bus) = worker.bus().cloned() {
                tokio::spawn(async move {
                    while let Some(msg) = bus.recv().await {
                        if msg.is_request() {
                            let _ = msg
                                .reply(json!({"echo": msg.data, "pid": std::process::id()}))
                                .await;
                        } else if msg.topic == "primary" {
                            let _ = ack_tx.try_send(msg.data);
                        }
                    }
                });
            }
            let router = Router::new()
                .route(
                    "/",
                    get(|State(a): State<App>| async move {
                        format!("pid={} worker={}", std::process::id(), a.id)
                    }),
                )
                .route(
                    "/slow/{ms}",
                    get(|Path(ms): Path<u64>| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        format!("pid={} slept={ms}", std::process::id())
                    }),
                )
                .route(
                    "/tell/{msg}",
                    get(|State(a): State<App>, Path(msg): Path<String>| async move {
                        let Some(bus) = &a.bus else {
                            return "no bus".to_string();
                        };
                        if let Err(e) = bus.send("primary", json!(msg)).await {
                            return format!("error: {e}");
                        }
                        let mut acks = a.acks.lock().await;
                        match tokio::time::timeout(Duration::from_secs(3), acks.recv()).await {
                            Ok(Some(ack)) => ack.to_string(),
                            _ => "no ack".to_string(),
                        }
                    }),
                )
                .with_state(app);
            herd::ready()?;
            axum::serve(listener, router)
                .with_graceful_shutdown(herd::shutdown())
                .await
        })
}
