//! The per-instance IPC channel: a Unix stream socket pair, one JSON object per line in each
//! direction. Generic programs find their end at `HERD_IPC_FD`; Node.js instances get it as
//! their own IPC channel (`NODE_CHANNEL_FD`), over which herd speaks Node's cluster protocol.
//!
//! Reads use `recvmsg` so that a file descriptor a Node app sends along with a message is
//! received (and closed) rather than silently dropped; writes use `sendmsg` so that listening
//! sockets can be handed to a Node worker (`SCM_RIGHTS`). Outgoing messages wait in a bounded
//! queue; when it is full the message is dropped and counted, never awaited by the daemon.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herd_proto::{LineBuffer, LineError};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde_json::Value;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Largest message an instance may send on its channel.
pub const MAX_IPC_MESSAGE: usize = 1 << 20;
/// Messages queued for one instance before further ones are dropped.
const QUEUE: usize = 1024;

/// What arrived on an instance's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The instance is ready to serve (`{"herd":"ready"}`, or PM2's `process.send('ready')`).
    Ready,
    /// A Node cluster-protocol message (`{"cmd":"NODE_CLUSTER",…}`).
    Cluster(Value),
    /// The worker acknowledged a handle herd sent.
    HandleAck,
    /// The worker refused a handle herd sent.
    HandleNack,
    /// A message from the app itself (`process.send(…)` or a line on `HERD_IPC_FD`).
    App(Value),
    /// A line that is not JSON; it is dropped.
    Malformed(String),
    /// A line longer than the limit; it is dropped and the channel goes on.
    TooLarge(usize),
    /// The instance closed its end (a Node worker that disconnected, or an exiting process).
    Closed,
}

/// Classifies one line from an instance. `with_handle` says an fd came with it.
pub fn classify(line: &[u8]) -> Inbound {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        // Node escapes lone surrogates (`"\ud800"`), which serde_json refuses; such a message
        // is still the app's, so it is passed on with the bad escapes replaced.
        Err(e) => match std::str::from_utf8(line)
            .ok()
            .map(replace_lone_surrogates)
            .and_then(|s| serde_json::from_str(&s).ok())
        {
            Some(v) => v,
            None => return Inbound::Malformed(e.to_string()),
        },
    };
    if v == "ready" || v.get("herd").and_then(Value::as_str) == Some("ready") {
        return Inbound::Ready;
    }
    match v.get("cmd").and_then(Value::as_str) {
        Some("NODE_CLUSTER") => Inbound::Cluster(v),
        Some("NODE_HANDLE_ACK") => Inbound::HandleAck,
        Some("NODE_HANDLE_NACK") => Inbound::HandleNack,
        Some("NODE_HANDLE") => {
            // The app sent a handle with its message: the message is the app's.
            let msg = v.get("msg").cloned().unwrap_or(Value::Null);
            if msg == "ready" {
                Inbound::Ready
            } else {
                Inbound::App(msg)
            }
        }
        _ => Inbound::App(v),
    }
}

fn replace_lone_surrogates(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("\\u") {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        let code = esc.get(2..6).and_then(|h| u16::from_str_radix(h, 16).ok());
        match code {
            Some(c) if (0xD800..0xDC00).contains(&c) => {
                let low = esc
                    .get(6..8)
                    .filter(|p| *p == "\\u")
                    .and_then(|_| esc.get(8..12))
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                    .filter(|l| (0xDC00..0xE000).contains(l));
                if low.is_some() {
                    out.push_str(&esc[..12]);
                    rest = &esc[12..];
                } else {
                    out.push_str("\\ufffd");
                    rest = &esc[6..];
                }
            }
            Some(c) if (0xDC00..0xE000).contains(&c) => {
                out.push_str("\\ufffd");
                rest = &esc[6..];
            }
            _ => {
                out.push_str(&esc[..2.min(esc.len())]);
                rest = &esc[2.min(esc.len())..];
            }
        }
    }
    out.push_str(rest);
    out
}

struct Outgoing {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
}

/// Sending side of an instance's channel. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    tx: mpsc::Sender<Outgoing>,
    dropped: Arc<AtomicU64>,
}

impl Channel {
    /// Queues one JSON message, optionally with a file descriptor. Returns false (and counts
    /// the drop) when the queue is full or the channel is closed.
    pub fn send(&self, msg: &Value, fd: Option<OwnedFd>) -> bool {
        let mut bytes = serde_json::to_vec(msg).expect("JSON values always serialise");
        bytes.push(b'\n');
        if self.tx.try_send(Outgoing { bytes, fd }).is_ok() {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Messages dropped because the instance did not read fast enough (or had gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Starts reading and writing the daemon's end of a channel. Every message goes to `sink`
/// (through `wrap`), and [`Inbound::Closed`] at the end. The sink is bounded: when the daemon
/// falls behind, this reader waits, so a flooding instance is slowed down (its own writes
/// block) instead of the daemon's memory growing.
///
/// # Errors
/// When the socket cannot be registered with the runtime.
pub fn start<T: Send + 'static>(
    ours: std::os::unix::net::UnixStream,
    max_message: usize,
    sink: mpsc::Sender<T>,
    wrap: impl Fn(Inbound) -> T + Send + Sync + 'static,
) -> io::Result<Channel> {
    ours.set_nonblocking(true)?;
    let stream = Arc::new(UnixStream::from_std(ours)?);
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(write_loop(stream.clone(), rx));
    tokio::spawn(read_loop(stream, max_message, sink, wrap));
    Ok(Channel {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    })
}

async fn write_loop(stream: Arc<UnixStream>, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(msg) = rx.recv().await {
        let mut sent = 0;
        let mut fd = msg.fd;
        while sent < msg.bytes.len() {
            let r = stream
                .async_io(Interest::WRITABLE, || {
                    let iov = [IoSlice::new(&msg.bytes[sent..])];
                    let raw: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
                    let cmsg: Vec<ControlMessage<'_>> = if raw.is_empty() {
                        Vec::new()
                    } else {
                        vec![ControlMessage::ScmRights(&raw)]
                    };
                    sendmsg::<()>(
                        stream.as_raw_fd(),
                        &iov,
                        &cmsg,
                        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(io::Error::from)
                })
                .await;
            match r {
                Ok(n) => {
                    sent += n;
                    // The fd travels with the first bytes; ours closes once it is sent.
                    fd = None;
                }
                Err(_) => return,
            }
        }
    }
}

async fn read_loop<T>(
    stream: Arc<UnixStream>,
    max: usize,
    sink: mpsc::Sender<T>,
    wrap: impl Fn(Inbound) -> T,
) {
    let on_message = |m: Inbound| sink.send(wrap(m));
    let mut lines = LineBuffer::new(max);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let r = stream
            .async_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([RawFd; 8]);
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                // Any fd an app sends is closed here: herd does not take handles from apps.
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for fd in fds {
                                // SAFETY: the kernel just gave us this fd; nobody else owns it.
                                drop(unsafe { OwnedFd::from_raw_fd(fd) });
                            }
                        }
                    }
                }
                Ok(msg.bytes)
            })
            .await;
        let n = match r {
            Ok(0) | Err(_) => {
                let _ = on_message(Inbound::Closed).await;
                return;
            }
            Ok(n) => n,
        };
        lines.extend(&buf[..n]);
        loop {
            match lines.next_line() {
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Some(line)) => {
                    if on_message(classify(&line)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(LineError::TooLong { limit }) => {
                    let _ = on_message(Inbound::TooLarge(limit)).await;
                    lines.skip_current();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(br#"{"herd":"ready"}"#), Inbound::Ready);
        assert_eq!(classify(br#""ready""#), Inbound::Ready);
        assert!(matches!(classify(br#"{"x":1}"#), Inbound::App(_)));
        assert!(matches!(classify(b"{nope"), Inbound::Malformed(_)));
        assert!(matches!(
            classify(br#"{"cmd":"NODE_CLUSTER","act":"online","seq":0}"#),
            Inbound::Cluster(_)
        ));
        assert_eq!(
            classify(br#"{"cmd":"NODE_HANDLE_ACK"}"#),
            Inbound::HandleAck
        );
    }

    #[test]
    fn lone_surrogates_are_replaced_not_refused() {
        let v = classify(br#"{"type":"process:msg","data":"a\ud800b"}"#);
        let Inbound::App(v) = v else { panic!("{v:?}") };
        assert_eq!(v["data"], "a\u{fffd}b");
        let pair = classify(br#"{"d":"\ud83d\ude00"}"#);
        let Inbound::App(v) = pair else { panic!() };
        assert_eq!(v["d"], "😀");
    }

    #[tokio::test]
    async fn passes_an_fd_and_reads_lines() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let ch = start(ours, MAX_IPC_MESSAGE, tx, |m| m).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(ch.send(&serde_json::json!({"cmd":"NODE_HANDLE"}), Some(r)));
        // Read on the other end with recvmsg and check an fd arrived.
        let theirs_fd = theirs.as_raw_fd();
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 256];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let msg =
                recvmsg::<()>(theirs_fd, &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
            let fds: Vec<RawFd> = msg
                .cmsgs()
                .unwrap()
                .filter_map(|c| match c {
                    ControlMessageOwned::ScmRights(f) => Some(f),
                    _ => None,
                })
                .flatten()
                .collect();
            (msg.bytes, fds)
        })
        .await
        .unwrap();
        assert!(got.0 > 0);
        assert_eq!(got.1.len(), 1);
        use std::io::Write;
        (&theirs).write_all(b"{\"herd\":\"ready\"}\n").unwrap();
        assert_eq!(rx.recv().await.unwrap(), Inbound::Ready);
        drop(theirs);
        assert_eq!(rx.recv().await.unwrap(), Inbound::Closed);
    }
}
