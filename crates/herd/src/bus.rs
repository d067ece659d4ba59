//! herd's message bus from Rust (feature `tokio`): send to instances (`api:3`, `api`, `*`, each
//! optionally `@host`), publish and subscribe to topics, and request/reply with a timeout.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let bus = herd::bus::Bus::connect()?;
//! bus.subscribe("news")?;
//! let answer = bus.request("api:0", serde_json::json!({"q": 1}), std::time::Duration::from_secs(2)).await?;
//! while let Some(msg) = bus.recv().await {
//!     if msg.is_request() {
//!         msg.reply(serde_json::json!({"echo": msg.data})).await?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! The wire format (one JSON object per line on `HERD_IPC_FD`) is [`herd_proto::worker`]
//! (described in herd's `docs/bus.md`); this client is a few dozen lines over it.

use std::collections::HashMap;
use std::io;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_proto::worker::{self, HerdOp, ToInstance};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A connection to herd's bus through this instance's channel. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next: Arc<AtomicU64>,
    incoming: Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>,
    dropped: Arc<AtomicU64>,
}

/// A message for this instance: sent to it, published on a topic it subscribed to, or a
/// request awaiting [`Message::reply`].
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic (`herd` for plain sends).
    pub topic: String,
    /// The payload.
    pub data: Value,
    /// Sender: `app:i@host` or `cli@host`.
    pub from: String,
    request: Option<u64>,
    writer: Option<Arc<tokio::sync::Mutex<OwnedWriteHalf>>>,
}

impl Message {
    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.request.is_some()
    }

    /// Answers a request (a no-op for other messages).
    ///
    /// # Errors
    /// When the channel is gone.
    pub async fn reply(&self, data: Value) -> io::Result<()> {
        match (self.request, &self.writer) {
            (Some(n), Some(w)) => {
                let reply = worker::Reply {
                    reply_to: n,
                    data: Some(data),
                };
                write(w, &HerdOp::Reply(reply)).await
            }
            _ => Ok(()),
        }
    }
}

async fn write(w: &tokio::sync::Mutex<OwnedWriteHalf>, op: &HerdOp) -> io::Result<()> {
    let line = op.to_line().map_err(io::Error::other)?;
    w.lock().await.write_all(&line).await
}

impl Bus {
    /// Takes this instance's channel (`HERD_IPC_FD`). Call once; later calls fail.
    ///
    /// # Errors
    /// Outside herd, or when called twice, or when the runtime cannot register the socket.
    pub fn connect() -> io::Result<Self> {
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let fd: i32 = std::env::var("HERD_IPC_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("no HERD_IPC_FD: this program is not run by herd (for Node apps use node/herd.js)"))?;
        if TAKEN.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(
                "the herd bus channel is already taken by this process",
            ));
        }
        // SAFETY: herd hands this fd to the instance; the flag above gives it out once.
        let std = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
        std.set_nonblocking(true)?;
        let (r, w) = tokio::net::UnixStream::from_std(std)?.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(w));
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::channel(1024);
        let reader_pending = pending.clone();
        let reader_writer = writer.clone();
        let dropped = Arc::new(AtomicU64::new(0));
        let reader_dropped = dropped.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Lines that are none of herd's messages (a later daemon's) are skipped.
                let Ok(msg) = serde_json::from_str::<ToInstance>(&line) else {
                    continue;
                };
                let error = |e: String| if e.is_empty() { "error".into() } else { e };
                // The answer to a request of ours (numbered in `Bus::request`), or why not.
                let answer = match msg {
                    ToInstance::Reply(a) => a.reply_to.as_u64().map(|n| (n, Ok(a.data))),
                    ToInstance::Error(r) => match r.reply_to.as_ref().and_then(Value::as_u64) {
                        Some(n) => Some((n, Err(error(r.error)))),
                        None => {
                            eprintln!("herd bus: {}", error(r.error));
                            None
                        }
                    },
                    ToInstance::Message(d) => {
                        let msg = Message {
                            topic: d.topic,
                            data: d.data.into_owned(),
                            from: d.from,
                            request: d.request,
                            writer: Some(reader_writer.clone()),
                        };
                        // A full queue drops, as the daemon does for instances that do not read
                        // (replies to requests still get through); it is counted and said.
                        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg) {
                            let n = reader_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            if n.is_power_of_two() {
                                eprintln!("herd bus: {n} message(s) dropped so far: this program does not call Bus::recv fast enough (1024 are kept)");
                            }
                        }
                        None
                    }
                    // The Rust crate offers no metrics to herd's endpoint (yet): never asked.
                    ToInstance::Scrape { .. } => None,
                };
                if let Some((n, result)) = answer {
                    if let Some(p) = reader_pending.lock().expect("not poisoned").remove(&n) {
                        let _ = p.send(result);
                    }
                }
            }
        });
        Ok(Self {
            writer,
            pending,
            next: Arc::new(AtomicU64::new(1)),
            incoming: Arc::new(tokio::sync::Mutex::new(rx)),
            dropped,
        })
    }

    /// Messages dropped because [`Bus::recv`] was not called fast enough (1024 wait at most).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends to instances: `api:3`, `api` (each), `*` (all), optionally `@host`.
    ///
    /// # Errors
    /// When the channel is gone.
    pub async fn send(&self, to: &str, data: Value) -> io::Result<()> {
        let send = worker::Send {
            to: Some(to.into()),
            topic: None,
            data,
        };
        write(&self.writer, &HerdOp::Send(send)).await
    }

    /// Publishes on a topic, to every subscribed instance on every host.
    ///
    /// # Errors
    /// When the channel is gone.
    pub async fn publish(&self, topic: &str, data: Value) -> io::Result<()> {
        let publish = worker::Publish {
            topic: Some(topic.into()),
            data,
        };
        write(&self.writer, &HerdOp::Publish(publish)).await
    }

    /// Subscribes to a topic; its messages arrive through [`Bus::recv`].
    ///
    /// # Errors
    /// When the channel is gone.
    pub fn subscribe(&self, topic: &str) -> io::Result<()> {
        let w = self.writer.clone();
        let msg = HerdOp::Subscribe(worker::Subscribe {
            topic: Some(topic.into()),
        });
        // Subscribing is cheap and ordered with later writes through the same lock.
        tokio::spawn(async move { write(&w, &msg).await });
        Ok(())
    }

    /// Sends a request to one instance and waits for its reply.
    ///
    /// # Errors
    /// A timeout, no such instance, or the channel gone, with herd's explanation.
    pub async fn request(&self, to: &str, data: Value, timeout: Duration) -> io::Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("not poisoned").insert(id, tx);
        let request = worker::Request {
            to: Some(to.into()),
            topic: None,
            data,
            id: id.into(),
            timeout_ms: Some(timeout.as_millis() as u64),
        };
        write(&self.writer, &HerdOp::Request(request)).await?;
        // The daemon answers a timeout itself; this one only guards against a vanished daemon.
        match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(io::Error::other(e)),
            _ => {
                self.pending.lock().expect("not poisoned").remove(&id);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{to} did not reply in time"),
                ))
            }
        }
    }

    /// The next message for this instance; `None` once the channel is closed.
    pub async fn recv(&self) -> Option<Message> {
        self.incoming.lock().await.recv().await
    }
}
