//! The per-instance IPC channel: a Unix stream socket pair, one JSON object per line in each
//! direction. Generic programs find their end at `HERD_IPC_FD`; Node.js instances get it as
//! their own IPC channel (`NODE_CHANNEL_FD`), over which herd speaks Node's cluster protocol.
//!
//! Reads use `recvmsg` so that a file descriptor a Node app sends along with a message is
//! received (and closed) rather than silently dropped; writes use `sendmsg` so that listening
//! sockets can be handed to a Node worker (`SCM_RIGHTS`). Outgoing messages wait in a bounded
//! queue; when it is full the message is dropped and counted, never awaited by the daemon.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::io::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use herd_proto::worker::{FromInstance, Word};
use herd_proto::{LineBuffer, LineError};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde_json::Value;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, Notify};

/// Largest message an instance may send on its channel.
pub const MAX_IPC_MESSAGE: usize = 1 << 20;
/// Messages queued for one instance before further ones are dropped.
const QUEUE: usize = 1024;
/// Room beyond [`QUEUE`] for answers to the instance's own requests (a Node worker's
/// `queryServer`): a worker that sends a burst of requests before it reads any answer (a loop
/// of `listen()` calls) must get every answer, or its `listen()` waits forever. Still bounded,
/// against an instance that never reads.
const REPLY_RESERVE: usize = 16 * 1024;
/// Bytes queued for one instance before further messages are dropped (one message is always
/// taken into an empty queue, whatever its size): without it, an instance that never reads
/// could make the daemon hold `QUEUE` messages of the largest size, a gigabyte.
const QUEUE_BYTES: usize = 8 << 20;
/// [`QUEUE`] for a channel that carries many small messages in bursts and whose reader is
/// expected to keep up on average (a Node primary's, which gets every message of its workers
/// that have no direct link: Node's own channel buffers a burst of them without loss). The
/// byte bound still holds.
pub const QUEUE_WIDE: usize = 64 * 1024;

/// What arrived on an instance's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The instance is ready to serve (`{"herd":"ready"}`, or PM2's `process.send('ready')`).
    Ready,
    /// A Node cluster-protocol message (`{"cmd":"NODE_CLUSTER",…}`).
    Cluster(Value),
    /// A message of herd's worker preload (`{"cmd":"NODE_HERD",…}`); `None` for one this
    /// herd does not know (from a later preload), which is ignored. Never the app's.
    Preload(Option<crate::node::PreloadMsg>),
    /// The worker acknowledged a handle herd sent.
    HandleAck,
    /// The worker refused a handle herd sent.
    HandleNack,
    /// A message from the app itself (`process.send(…)` or a line on `HERD_IPC_FD`), read by
    /// the bus as a [`FromInstance`].
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
        // is still the app's, so it is passed on with the bad escapes replaced. (Only a line
        // with an escape is worth a second parse: garbage costs one.)
        Err(e) => match Some(line)
            .filter(|l| l.contains(&b'\\') && l.windows(2).any(|w| w == b"\\u"))
            .and_then(|l| std::str::from_utf8(l).ok())
            .map(replace_lone_surrogates)
            .and_then(|s| serde_json::from_str(&s).ok())
        {
            Some(v) => v,
            None => return Inbound::Malformed(e.to_string()),
        },
    };
    if FromInstance::is_ready(&v) {
        return Inbound::Ready;
    }
    match v.get("cmd").and_then(Value::as_str) {
        Some("NODE_CLUSTER") => Inbound::Cluster(v),
        Some(crate::node::PRELOAD_CMD) => Inbound::Preload(crate::node::PreloadMsg::parse(&v)),
        Some("NODE_HANDLE_ACK") => Inbound::HandleAck,
        Some("NODE_HANDLE_NACK") => Inbound::HandleNack,
        Some("NODE_HANDLE") => {
            // The app sent a handle with its message: the message is the app's.
            let msg = v.get("msg").cloned().unwrap_or(Value::Null);
            if msg == Word::Ready.as_str() {
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
    while let Some((before, after)) = rest.split_once("\\u") {
        out.push_str(before);
        match hex4(after) {
            Some((high, c, tail)) if (0xD800..0xDC00).contains(&c) => {
                let low = tail
                    .strip_prefix("\\u")
                    .and_then(hex4)
                    .filter(|(_, l, _)| (0xDC00..0xE000).contains(l));
                match low {
                    Some((low, _, tail)) => {
                        out.push_str("\\u");
                        out.push_str(high);
                        out.push_str("\\u");
                        out.push_str(low);
                        rest = tail;
                    }
                    None => {
                        out.push_str("\\ufffd");
                        rest = tail;
                    }
                }
            }
            Some((_, c, tail)) if (0xDC00..0xE000).contains(&c) => {
                out.push_str("\\ufffd");
                rest = tail;
            }
            _ => {
                out.push_str("\\u");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The four hex digits at the start of `s`: as written, their value, and what follows.
fn hex4(s: &str) -> Option<(&str, u16, &str)> {
    let (digits, tail) = s.split_at_checked(4)?;
    let value = u16::from_str_radix(digits, 16).ok()?;
    Some((digits, value, tail))
}

struct Outgoing {
    bytes: Vec<u8>,
    fd: Option<OwnedFd>,
}

/// Messages waiting to be written; the front one may be partly written already.
struct Queue {
    msgs: VecDeque<Outgoing>,
    /// Bytes of the messages in `msgs`.
    bytes: usize,
    /// Bytes of the front message already written.
    sent: usize,
    closed: bool,
    /// The bound on `msgs.len()`: [`QUEUE`], or what [`Channel::widen`] set.
    max: usize,
}

/// What the reader holds between reads: unparsed bytes, and whether a parsed message is on
/// its way to the daemon (waiting for room in the sink).
struct ReadState {
    lines: Mutex<LineBuffer>,
    holding: AtomicBool,
}

/// Sending side of an instance's channel. Cheap to clone.
#[derive(Clone)]
pub struct Channel {
    fd: RawFd,
    // A poisoned lock of this module is taken as it is (`PoisonError::into_inner`): every
    // holder makes a few field updates that cannot panic, so a panic elsewhere in the thread
    // never leaves a queue or a line buffer half-updated (and release builds abort on panic).
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    read: Arc<ReadState>,
    dropped: Arc<AtomicU64>,
    _last: Arc<Closer>,
    /// Keeps the socket (and so `fd`) open while a handle exists.
    _stream: Arc<UnixStream>,
}

/// Ends the writer once the last handle of a channel is gone.
struct Closer {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.wake.notify_one();
    }
}

/// A channel's state at a point where no task of it runs, for a daemon update: the bytes
/// read but not yet handled, and the messages not yet (fully) written, with their fds.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bytes read from the instance that no message has been made of yet.
    pub unread: Vec<u8>,
    /// Dropping the rest of an oversized line.
    pub skipping: bool,
    /// Messages still to write, the first one without its already-written bytes.
    pub queued: Vec<(Vec<u8>, Option<RawFd>)>,
    /// Messages dropped so far.
    pub dropped: u64,
}

impl Channel {
    /// Queues one JSON message, optionally with a file descriptor. Returns false (and counts
    /// the drop) when the queue is full or the channel is closed.
    pub fn send(&self, msg: &Value, fd: Option<OwnedFd>) -> bool {
        self.queue_up(msg, fd, false)
    }

    /// [`Channel::send`] for the answer to a request of the instance: it may use
    /// [`REPLY_RESERVE`] places beyond the queue's bound, and is not held to its byte bound
    /// (answers are small).
    pub fn send_reply(&self, msg: &Value, fd: Option<OwnedFd>) -> bool {
        self.queue_up(msg, fd, true)
    }

    /// File descriptors queued for the instance and not yet sent: each is open in the
    /// daemon until the instance reads its message.
    pub fn queued_fds(&self) -> usize {
        let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.msgs.iter().filter(|m| m.fd.is_some()).count()
    }

    fn queue_up(&self, msg: &Value, fd: Option<OwnedFd>, reply: bool) -> bool {
        let refuse = |q: &Queue, len: usize| {
            if reply {
                return q.closed || q.msgs.len() >= q.max + REPLY_RESERVE;
            }
            q.closed
                || q.msgs.len() >= q.max
                || (!q.msgs.is_empty() && q.bytes.saturating_add(len) > QUEUE_BYTES)
        };
        // A full queue costs no serialisation: a consumer that never reads makes every
        // further message cheap to drop.
        if refuse(
            &self.queue.lock().unwrap_or_else(PoisonError::into_inner),
            0,
        ) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut bytes = match serde_json::to_vec(msg) {
            Ok(bytes) => bytes,
            Err(e) => {
                // A JSON value always serialises; should one not, it is dropped like any other.
                tracing::warn!("a message for an instance could not be encoded: {e}");
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        bytes.push(b'\n');
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if refuse(&q, bytes.len()) {
            drop(q);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.bytes += bytes.len();
        q.msgs.push_back(Outgoing { bytes, fd });
        drop(q);
        self.wake.notify_one();
        true
    }

    /// [`Channel::send`] of a message made only if the queue has room: a consumer that never
    /// reads costs nothing per message but the count of drops.
    pub fn send_with(&self, msg: impl FnOnce() -> Value) -> bool {
        let full = {
            let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.closed || q.msgs.len() >= q.max || q.bytes >= QUEUE_BYTES
        };
        if full {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.send(&msg(), None)
    }

    /// Lets up to `max` messages wait (instead of [`QUEUE`]); the byte bound is unchanged.
    pub fn widen(&self, max: usize) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .max = max.max(QUEUE);
    }

    /// Messages dropped because the instance did not read fast enough (or had gone).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The daemon's end of the socket (owned by the channel's tasks).
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    /// Whether the reader holds a message it could not yet hand to the daemon.
    pub fn holding(&self) -> bool {
        self.read.holding.load(Ordering::Acquire)
    }

    /// The channel's buffered state. Only meaningful while its tasks are not running (the
    /// daemon's single thread is busy) and [`Channel::holding`] is false.
    pub fn snapshot(&self) -> Snapshot {
        let q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let queued = q
            .msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let skip = if i == 0 { q.sent } else { 0 };
                let fd = if i == 0 && q.sent > 0 {
                    None
                } else {
                    m.fd.as_ref().map(AsRawFd::as_raw_fd)
                };
                (m.bytes.get(skip..).unwrap_or_default().to_vec(), fd)
            })
            .collect();
        let (unread, skipping) = self
            .read
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .parts();
        Snapshot {
            unread,
            skipping,
            queued,
            dropped: self.dropped(),
        }
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
    resume(ours, max_message, sink, wrap, Resume::default())
}

/// What a channel taken over from an earlier daemon starts with.
#[derive(Default)]
pub struct Resume {
    /// Bytes read but not yet parsed.
    pub unread: Vec<u8>,
    /// Dropping the rest of an oversized line.
    pub skipping: bool,
    /// Messages still to write.
    pub queued: Vec<(Vec<u8>, Option<OwnedFd>)>,
    /// Messages dropped so far.
    pub dropped: u64,
}

/// [`start`], for a channel taken over from an earlier daemon (`herd update`).
///
/// # Errors
/// When the socket cannot be registered with the runtime.
pub fn resume<T: Send + 'static>(
    ours: std::os::unix::net::UnixStream,
    max_message: usize,
    sink: mpsc::Sender<T>,
    wrap: impl Fn(Inbound) -> T + Send + Sync + 'static,
    from: Resume,
) -> io::Result<Channel> {
    ours.set_nonblocking(true)?;
    let fd = ours.as_raw_fd();
    let stream = Arc::new(UnixStream::from_std(ours)?);
    let msgs: VecDeque<Outgoing> = from
        .queued
        .into_iter()
        .map(|(bytes, fd)| Outgoing { bytes, fd })
        .collect();
    let queue = Arc::new(Mutex::new(Queue {
        bytes: msgs.iter().map(|m| m.bytes.len()).sum(),
        msgs,
        sent: 0,
        closed: false,
        max: QUEUE,
    }));
    let wake = Arc::new(Notify::new());
    let read = Arc::new(ReadState {
        lines: Mutex::new(LineBuffer::from_parts(
            max_message,
            from.unread,
            from.skipping,
        )),
        holding: AtomicBool::new(false),
    });
    tokio::spawn(write_loop(stream.clone(), queue.clone(), wake.clone()));
    tokio::spawn(read_loop(stream.clone(), read.clone(), sink, wrap));
    Ok(Channel {
        fd,
        _last: Arc::new(Closer {
            queue: queue.clone(),
            wake: wake.clone(),
        }),
        queue,
        wake,
        read,
        dropped: Arc::new(AtomicU64::new(from.dropped)),
        _stream: stream,
    })
}

/// Most messages one write of a channel takes.
const BATCH_MSGS: usize = 64;
/// A write of a channel stops adding messages past this many bytes.
const BATCH_BYTES: usize = 256 * 1024;

async fn write_loop(stream: Arc<UnixStream>, queue: Arc<Mutex<Queue>>, wake: Arc<Notify>) {
    loop {
        let (empty, closed) = {
            let q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            (q.msgs.is_empty(), q.closed)
        };
        if empty {
            if closed {
                return;
            }
            wake.notified().await;
            continue;
        }
        // One sendmsg per readiness, of as many queued messages as it takes (up to
        // `BATCH_MSGS` / `BATCH_BYTES`): a burst costs one system call, not one per message. A
        // message with an fd goes first in its call (the fd travels with its first bytes), so
        // the batch stops before the next one that has an fd. The closure keeps the queue's
        // bookkeeping, so the queue is consistent whenever this task yields.
        let r = stream
            .async_io(Interest::WRITABLE, || {
                let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                let sent = q.sent;
                let Some(front) = q.msgs.front() else {
                    return Ok(());
                };
                let raw: Vec<RawFd> = if sent == 0 {
                    front.fd.iter().map(AsRawFd::as_raw_fd).collect()
                } else {
                    Vec::new()
                };
                // `sent` is below the front message's length (it is reset when the message
                // goes); were it not, nothing of it is written and the message goes.
                let mut iov = vec![IoSlice::new(front.bytes.get(sent..).unwrap_or_default())];
                let mut total = iov.iter().map(|s| s.len()).sum::<usize>();
                for m in q.msgs.iter().skip(1) {
                    if m.fd.is_some() || iov.len() >= BATCH_MSGS || total >= BATCH_BYTES {
                        break;
                    }
                    total += m.bytes.len();
                    iov.push(IoSlice::new(&m.bytes));
                }
                let cmsg: Vec<ControlMessage<'_>> = if raw.is_empty() {
                    Vec::new()
                } else {
                    vec![ControlMessage::ScmRights(&raw)]
                };
                let mut n = sendmsg::<()>(
                    stream.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)?;
                drop(iov);
                // The messages written whole go (an fd closes with its message); the first one
                // written in part stays, with how much of it went.
                let mut at = sent;
                while let Some(front) = q.msgs.front() {
                    let left = front.bytes.len().saturating_sub(at);
                    if n < left {
                        q.sent = at + n;
                        break;
                    }
                    n -= left;
                    let len = front.bytes.len();
                    q.msgs.pop_front();
                    q.bytes = q.bytes.saturating_sub(len);
                    q.sent = 0;
                    at = 0;
                    if n == 0 {
                        break;
                    }
                }
                Ok(())
            })
            .await;
        if r.is_err() {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.closed = true;
            q.msgs.clear();
            q.bytes = 0;
            return;
        }
    }
}

async fn read_loop<T>(
    stream: Arc<UnixStream>,
    state: Arc<ReadState>,
    sink: mpsc::Sender<T>,
    wrap: impl Fn(Inbound) -> T,
) {
    let on_message = |m: Inbound| {
        state.holding.store(true, Ordering::Release);
        let sent = sink.send(wrap(m));
        async {
            let r = sent.await;
            state.holding.store(false, Ordering::Release);
            r
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Lines already read (handed over by an earlier daemon, or left by the last read).
        loop {
            let next = state
                .lines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .next_line();
            match next {
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Some(line)) => {
                    if on_message(classify(&line)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(LineError::TooLong { limit }) => {
                    state
                        .lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .skip_current();
                    let _ = on_message(Inbound::TooLarge(limit)).await;
                }
            }
        }
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
        // The bytes go into the shared buffer before this task can yield again.
        state
            .lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(buf.get(..n).unwrap_or_default());
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
        assert_eq!(
            classify(br#"{"cmd":"NODE_HERD","act":"drained"}"#),
            Inbound::Preload(Some(crate::node::PreloadMsg::Drained))
        );
        // The preload's messages never reach the bus, even those this herd does not know.
        assert_eq!(
            classify(br#"{"cmd":"NODE_HERD","act":"later"}"#),
            Inbound::Preload(None)
        );
    }

    #[test]
    fn escapes_next_to_multibyte_text_are_kept_as_they_are() {
        for s in [
            r"x\ud83d\ude00y",
            "\\u12\u{e9}4 \\u\u{e9}\u{e9} \\ud800\\u\u{e9}",
            r"\u",
            r"\u00",
        ] {
            let expected = s.replace(r"\ud800\u", r"\ufffd\u");
            assert_eq!(replace_lone_surrogates(s), expected, "{s:?}");
        }
        assert_eq!(
            replace_lone_surrogates(r"a\udc00b\ud800"),
            r"a\ufffdb\ufffd"
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

    #[test]
    fn a_float_from_an_instance_is_passed_on_unchanged() {
        // Found while fuzzing: the daemon parses an instance's message and writes it out
        // again to its recipients; a float must come out as it went in.
        let Inbound::App(v) = classify(br#"{"data":1.0715660391465826e-75}"#) else {
            panic!()
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"data":1.0715660391465826e-75}"#
        );
    }

    #[tokio::test]
    async fn answers_have_room_beyond_a_full_queue_but_not_without_end() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel::<Inbound>(16);
        let ch = start(ours, MAX_IPC_MESSAGE, tx, |m| m).unwrap();
        // Nothing awaits here, so the writer (on this single-threaded runtime) sends nothing.
        let m = serde_json::json!({"x": 1});
        for _ in 0..QUEUE {
            assert!(ch.send(&m, None));
        }
        assert!(!ch.send(&m, None));
        assert!(ch.send_reply(&m, None));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(ch.send_reply(&m, Some(r)));
        assert_eq!(ch.queued_fds(), 1);
        for _ in 2..REPLY_RESERVE {
            assert!(ch.send_reply(&m, None));
        }
        assert!(!ch.send_reply(&m, None));
        assert_eq!(ch.dropped(), 2);
    }

    #[tokio::test]
    async fn a_widened_queue_takes_more_messages_but_the_same_bytes() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel::<Inbound>(16);
        let ch = start(ours, MAX_IPC_MESSAGE, tx, |m| m).unwrap();
        ch.widen(QUEUE_WIDE);
        let m = serde_json::json!({"x": 1});
        for _ in 0..QUEUE_WIDE {
            assert!(ch.send(&m, None));
        }
        assert!(!ch.send(&m, None));
        assert_eq!(ch.dropped(), 1);
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel::<Inbound>(16);
        let ch = start(ours, MAX_IPC_MESSAGE, tx, |m| m).unwrap();
        ch.widen(QUEUE_WIDE);
        let big = serde_json::json!("x".repeat(QUEUE_BYTES / 2 + 1));
        assert!(ch.send(&big, None));
        assert!(!ch.send(&big, None), "the byte bound is the same");
    }

    #[tokio::test]
    async fn a_consumer_that_never_reads_holds_a_bounded_number_of_bytes() {
        let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let ch = start(ours, MAX_IPC_MESSAGE, tx, |m| m).unwrap();
        let big = serde_json::json!("x".repeat(QUEUE_BYTES / 2 + 1));
        // Far more than a socket buffer: the first stays queued, partly written.
        assert!(ch.send(&big, None));
        tokio::task::yield_now().await;
        assert!(!ch.send(&big, None), "two halves are over the byte bound");
        assert!(ch.send(&serde_json::json!(1), None), "small ones still fit");
        assert_eq!(ch.dropped(), 1);
    }

    #[test]
    fn garbage_is_parsed_once() {
        assert!(matches!(
            classify(b"not json at all"),
            Inbound::Malformed(_)
        ));
        assert!(matches!(
            classify(br#"{"a":"\u12"}"#),
            Inbound::Malformed(_)
        ));
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

    /// A burst goes out in few writes (batched) yet whole and in order, and an fd queued in
    /// the middle of it arrives in the read that holds its own message's first bytes (the
    /// kernel may join earlier bytes to that read, never a second fd).
    #[tokio::test]
    async fn a_burst_is_batched_whole_and_in_order_with_an_fd_on_its_message() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        let ch = start(ours, MAX_IPC_MESSAGE, tx, |m| m).unwrap();
        let n = 600;
        for i in 0..n {
            let fd = (i == 300).then(|| nix::unistd::pipe().unwrap().0);
            assert!(ch.send(
                &serde_json::json!({ "i": i, "pad": "x".repeat(i % 97) }),
                fd
            ));
        }
        let theirs_fd = theirs.as_raw_fd();
        let (text, fd_at) = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            let mut fd_at = None;
            while all.iter().filter(|&&b| b == b'\n').count() < n {
                let mut buf = [0u8; 65536];
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([RawFd; 1]);
                let msg = recvmsg::<()>(theirs_fd, &mut iov, Some(&mut space), MsgFlags::empty())
                    .unwrap();
                let got_fd = msg
                    .cmsgs()
                    .unwrap()
                    .any(|c| matches!(c, ControlMessageOwned::ScmRights(_)));
                let len = msg.bytes;
                if got_fd {
                    assert!(fd_at.is_none(), "a second fd");
                    fd_at = Some((all.len(), all.len() + len));
                }
                all.extend_from_slice(&buf[..len]);
            }
            (String::from_utf8(all).unwrap(), fd_at)
        })
        .await
        .unwrap();
        let got: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["i"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
        let start: usize = text.lines().take(300).map(|l| l.len() + 1).sum();
        let (from, to) = fd_at.expect("the fd arrived");
        assert!(
            from <= start && start < to,
            "fd with bytes {from}..{to}, message 300 at {start}"
        );
        drop(theirs);
    }
}
