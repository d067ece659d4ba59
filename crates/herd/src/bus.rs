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
//!
//! **Direct channels.** Sends and requests to one instance on this host (`api:0`) go peer to
//! peer once the daemon has introduced the two instances: the first message to an address
//! goes through the daemon together with `{"herd":"direct","to":…}`, the daemon answers with
//! one end of a socket pair (the other end goes to the peer), and later messages to that
//! address are written on it, the daemon off the path. Messages to one address stay in the
//! order they were sent: while a channel is being opened, further messages to that address
//! wait for it (at most 2 s, then they go through the daemon). A channel closes when its peer
//! exits (its pending requests fail at once), when the daemon says the peer stopped serving
//! its address (a reload), or when this instance holds more than `max_direct_channels`
//! (least recently used first); the next message opens a new one. `HERD_BUS_DIRECT=0` keeps
//! everything on the daemon's path.
//!
//! **Latency.** Each channel is read by a task of this module, which hands messages to
//! [`Bus::recv`] and answers to [`Bus::request`]. On a `current_thread` runtime, a loop over
//! `recv()` in a spawned task answers sooner than one in `main`'s own future: tokio polls its
//! reactor once more (a syscall) before it polls the `block_on` future a task woke.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use herd_proto::worker::{self, ChannelMsg, HerdOp, ToInstance};
use serde_json::Value;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot, Notify};

mod line;

/// Messages kept for [`Bus::recv`]; past it they are dropped (and counted).
const INCOMING: usize = 1024;
/// How long messages to an address wait for its direct channel to open before they take the
/// daemon's path.
const OPENING_WAIT: Duration = Duration::from_secs(2);
/// How long the daemon's path is used after a channel request went unanswered.
const REFUSED_WAIT: Duration = Duration::from_secs(30);
/// Defaults until the daemon says otherwise (in its first channel message).
const MAX_BYTES: usize = 1 << 20;
const MAX_CHANNELS: usize = 128;

type Writer = tokio::sync::Mutex<OwnedWriteHalf>;

/// A request of ours waiting for its answer, and the direct channel it went on (if any).
struct Waiting {
    tx: oneshot::Sender<Result<Value, String>>,
    via: Option<u64>,
}

/// One direct channel to another instance.
struct Conn {
    id: u64,
    /// The instance at the other end (`app:i@host`).
    peer: String,
    /// Our own address, the `from` of what we write.
    me: String,
    max_bytes: usize,
    /// The socket (non-blocking), shared with [`read_direct`]. Written directly under
    /// `writing` (which keeps lines whole and in order): it is registered with the runtime for
    /// reading only, because a registration for writability would wake this process each time
    /// the peer reads what it was sent (the kernel signals the freed space), a wake-up per
    /// message that a request/reply pair pays on both sides.
    sock: Arc<OwnedFd>,
    writing: tokio::sync::Mutex<()>,
    /// When it was last used (a tick of [`Routes::clock`]): the least recently used is closed
    /// first.
    used: AtomicU64,
}

/// What to do with messages to one address.
enum Route {
    /// The daemon was asked for a channel; messages wait for its answer.
    Opening(Arc<Notify>),
    Open(Arc<Conn>),
    /// The daemon refused one: its path until then.
    Refused(Instant),
}

#[derive(Default)]
struct Routes {
    by_addr: HashMap<String, Route>,
    /// Every open channel, opened by us or by the peer.
    conns: HashMap<u64, Arc<Conn>>,
    next_conn: u64,
    clock: u64,
    /// `app:i@host`, once the daemon told us.
    me: Option<String>,
    max_channels: Option<usize>,
}

struct Shared {
    daemon: Writer,
    pending: Mutex<HashMap<u64, Waiting>>,
    next: AtomicU64,
    incoming: mpsc::Sender<Message>,
    dropped: AtomicU64,
    routes: Mutex<Routes>,
    direct: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection to herd's bus through this instance's channel. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
    incoming: Arc<tokio::sync::Mutex<mpsc::Receiver<Message>>>,
}

/// Where the answer to a message goes: the daemon, or the direct channel it came on.
#[derive(Clone)]
enum Via {
    Daemon(Arc<Shared>),
    Direct(Arc<Conn>),
}

/// A message for this instance: sent to it, published on a topic it subscribed to, or a
/// request awaiting [`Message::reply`].
#[derive(Clone)]
pub struct Message {
    /// Topic (`herd` for plain sends).
    pub topic: String,
    /// The payload.
    pub data: Value,
    /// Sender: `app:i@host` or `cli@host`.
    pub from: String,
    request: Option<u64>,
    via: Option<Via>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("topic", &self.topic)
            .field("data", &self.data)
            .field("from", &self.from)
            .field("request", &self.request)
            .field("direct", &matches!(self.via, Some(Via::Direct(_))))
            .finish()
    }
}

impl Message {
    /// Whether the sender waits for a reply.
    pub fn is_request(&self) -> bool {
        self.request.is_some()
    }

    /// Whether it came on a direct channel (not through the daemon).
    pub fn is_direct(&self) -> bool {
        matches!(self.via, Some(Via::Direct(_)))
    }

    /// Answers a request (a no-op for other messages), on the path it came by.
    ///
    /// # Errors
    /// When the channel is gone.
    pub async fn reply(&self, data: Value) -> io::Result<()> {
        let Some(n) = self.request else {
            return Ok(());
        };
        let reply = HerdOp::Reply(worker::Reply {
            reply_to: n,
            data: Some(data),
        });
        match &self.via {
            Some(Via::Daemon(s)) => write_op(&s.daemon, &reply).await,
            Some(Via::Direct(c)) => {
                let line = line::to_line(&reply).map_err(io::Error::other)?;
                c.write(&line).await
            }
            None => Ok(()),
        }
    }
}

impl Conn {
    /// Writes a whole line: straight to the socket while it takes it, waiting for space when
    /// it is full (the peer does not read: backpressure, nothing is dropped).
    async fn write(&self, line: &[u8]) -> io::Result<()> {
        let _writing = self.writing.lock().await;
        let mut rest = line;
        while !rest.is_empty() {
            let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
            match rustix::net::send(&self.sock, rest, flags) {
                Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => self.writable().await?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Waits until the socket takes more. Only a full socket gets here: a registration for
    /// writability of its own (a duplicate of the fd, so that the reader's registration stays
    /// readable-only), dropped once it says so.
    async fn writable(&self) -> io::Result<()> {
        let dup = self.sock.as_fd().try_clone_to_owned()?;
        let fd = register(Arc::new(dup), Interest::WRITABLE)?;
        let _ready = fd.writable().await?;
        Ok(())
    }

    /// Closes it for writing (after any line being written): the peer sees the end, closes
    /// its side, and our reader then sees it too.
    async fn shutdown(&self) {
        let _writing = self.writing.lock().await;
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Write);
    }
}

async fn write_op(w: &Writer, op: &HerdOp) -> io::Result<()> {
    let line = op.to_line().map_err(io::Error::other)?;
    w.lock().await.write_all(&line).await
}

/// The part of an address a direct channel is kept under: `app:i` for one instance on this
/// host (`@host` naming this host is dropped), `None` for anything else.
fn direct_key(to: &str, me: Option<&str>) -> Option<String> {
    let (addr, host) = match to.split_once('@') {
        Some((a, h)) => (a, Some(h)),
        None => (to, None),
    };
    if let Some(h) = host {
        let mine = me.and_then(|m| m.split_once('@')).map(|(_, h)| h)?;
        if h != mine {
            return None;
        }
    }
    let (app, i) = addr.split_once(':')?;
    (!app.is_empty() && app != "*" && i.parse::<u32>().is_ok()).then(|| addr.to_string())
}

/// Which path a message to an address takes.
enum Path {
    Direct(Arc<Conn>),
    Daemon,
    /// The daemon's, and ask it for a channel right after the message.
    DaemonThenOpen,
}

impl Shared {
    /// The path for a message to `to`, waiting for a channel being opened.
    async fn path(&self, to: &str) -> Path {
        if !self.direct {
            return Path::Daemon;
        }
        let deadline = tokio::time::Instant::now() + OPENING_WAIT;
        loop {
            let (key, notify) = {
                let mut r = lock(&self.routes);
                let Some(key) = direct_key(to, r.me.as_deref()) else {
                    return Path::Daemon;
                };
                r.clock += 1;
                let now = r.clock;
                match r.by_addr.get(&key) {
                    Some(Route::Open(c)) => {
                        c.used.store(now, Ordering::Relaxed);
                        return Path::Direct(c.clone());
                    }
                    Some(Route::Opening(n)) => (key, n.clone()),
                    Some(Route::Refused(until)) if Instant::now() < *until => return Path::Daemon,
                    _ => {
                        r.by_addr
                            .insert(key, Route::Opening(Arc::new(Notify::new())));
                        return Path::DaemonThenOpen;
                    }
                }
            };
            // Made before looking again, so that the change it waits for cannot slip between.
            let notified = notify.notified();
            let opening = |r: &Routes| matches!(r.by_addr.get(&key), Some(Route::Opening(_)));
            if !opening(&lock(&self.routes)) {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // No answer (a daemon that does not know direct channels): the daemon's path
                // for a while.
                let mut r = lock(&self.routes);
                if opening(&r) {
                    r.by_addr
                        .insert(key, Route::Refused(Instant::now() + REFUSED_WAIT));
                    notify.notify_waiters();
                }
                return Path::Daemon;
            }
        }
    }

    /// Writes a message on the daemon's channel, with the request for a channel after it
    /// when asked (both under one lock: nothing to that address can come between).
    async fn via_daemon(&self, op: &HerdOp, open: Option<&str>) -> io::Result<()> {
        let mut line = op.to_line().map_err(io::Error::other)?;
        if let Some(to) = open {
            let direct = HerdOp::Direct(worker::Direct {
                to: Some(to.into()),
                taken: None,
            });
            line.extend(direct.to_line().map_err(io::Error::other)?);
        }
        self.daemon.lock().await.write_all(&line).await
    }

    /// A channel that broke under a write: forgotten, so that the next message opens another.
    fn forget_conn(&self, conn: &Conn) {
        let mut r = lock(&self.routes);
        r.conns.remove(&conn.id);
        r.by_addr
            .retain(|_, route| !matches!(route, Route::Open(c) if c.id == conn.id));
    }

    /// A channel's end: its requests still waiting fail now.
    fn closed(&self, conn: &Conn, why: &str) {
        self.forget_conn(conn);
        let failed: Vec<Waiting> = {
            let mut p = lock(&self.pending);
            let ids: Vec<u64> = p
                .iter()
                .filter(|(_, w)| w.via == Some(conn.id))
                .map(|(&id, _)| id)
                .collect();
            ids.into_iter().filter_map(|id| p.remove(&id)).collect()
        };
        for w in failed {
            let _ = w.tx.send(Err(format!("{} {why}", conn.peer)));
        }
    }

    /// Hands an answer to the request `id`, if it went the way the answer came (`via`: the
    /// direct channel, or `None` for the daemon): a peer cannot answer what it was not asked.
    fn answer(&self, id: u64, via: Option<u64>, result: Result<Value, String>) {
        let mut p = lock(&self.pending);
        if p.get(&id).is_some_and(|w| w.via == via) {
            if let Some(w) = p.remove(&id) {
                drop(p);
                let _ = w.tx.send(result);
            }
        }
    }

    /// Hands a message to [`Bus::recv`]; a full queue drops it (counted and said).
    fn take(&self, msg: Message) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.incoming.try_send(msg) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                eprintln!("herd bus: {n} message(s) dropped so far: this program does not call Bus::recv fast enough ({INCOMING} are kept)");
            }
        }
    }

    /// One message from the daemon or a direct channel.
    fn on_message(self: &Arc<Self>, msg: ToInstance<'_>, via: Via, fds: &mut VecDeque<OwnedFd>) {
        let error = |e: String| if e.is_empty() { "error".into() } else { e };
        let from = match &via {
            Via::Direct(c) => Some(c.id),
            Via::Daemon(_) => None,
        };
        match msg {
            ToInstance::Reply(a) => {
                if let Some(n) = a.reply_to.as_u64() {
                    self.answer(n, from, Ok(a.data));
                }
            }
            ToInstance::Error(r) => match r.reply_to.as_ref().and_then(Value::as_u64) {
                Some(n) => self.answer(n, from, Err(error(r.error))),
                None => eprintln!("herd bus: {}", error(r.error)),
            },
            ToInstance::Message(d) => self.take(Message {
                topic: d.topic,
                data: d.data.into_owned(),
                from: d.from,
                request: d.request,
                via: Some(via),
            }),
            ToInstance::Channel(c) if matches!(via, Via::Daemon(_)) => self.on_channel(c, fds),
            ToInstance::Unroute(u) if matches!(via, Via::Daemon(_)) => self.unroute(&u.peer),
            // The Rust crate offers no metrics to herd's endpoint (yet): never asked.
            _ => {}
        }
    }

    /// The daemon's answer to a request for a channel, or a channel another instance opened.
    fn on_channel(self: &Arc<Self>, c: ChannelMsg, fds: &mut VecDeque<OwnedFd>) {
        let fd = if c.error.is_none() {
            // Counted for the daemon, which hands only a few ends not yet taken.
            let s = self.clone();
            tokio::spawn(async move {
                let taken = HerdOp::Direct(worker::Direct {
                    to: None,
                    taken: Some(1),
                });
                let _ = write_op(&s.daemon, &taken).await;
            });
            fds.pop_front()
        } else {
            None
        };
        let mut r = lock(&self.routes);
        if let Some(me) = &c.me {
            r.me = Some(me.clone());
        }
        if let Some(max) = c.max_channels {
            r.max_channels = Some(max.max(1));
        }
        let conn = match (fd, c.peer) {
            (Some(fd), Some(peer)) => match open_direct(fd) {
                Ok((sock, read)) => {
                    r.next_conn += 1;
                    r.clock += 1;
                    let conn = Arc::new(Conn {
                        id: r.next_conn,
                        peer,
                        me: c.me.clone().unwrap_or_default(),
                        max_bytes: c.max_bytes.unwrap_or(MAX_BYTES),
                        sock,
                        writing: tokio::sync::Mutex::new(()),
                        used: AtomicU64::new(r.clock),
                    });
                    r.conns.insert(conn.id, conn.clone());
                    tokio::spawn(read_direct(self.clone(), conn.clone(), read));
                    Some(conn)
                }
                Err(e) => {
                    eprintln!("herd bus: a direct channel could not be used: {e}");
                    None
                }
            },
            _ => None,
        };
        if let Some(to) = c.to {
            let key = direct_key(&to, r.me.as_deref()).unwrap_or(to);
            let route = match &conn {
                Some(conn) => Route::Open(conn.clone()),
                None => {
                    let retry = Duration::from_millis(c.retry_ms.unwrap_or(1000));
                    Route::Refused(Instant::now() + retry)
                }
            };
            if let Some(Route::Opening(n)) = r.by_addr.insert(key, route) {
                n.notify_waiters();
            }
        }
        // Too many: the least recently used goes (its peer sees it close).
        let max = r.max_channels.unwrap_or(MAX_CHANNELS);
        while r.conns.len() > max {
            let Some(old) = r
                .conns
                .values()
                .min_by_key(|c| c.used.load(Ordering::Relaxed))
                .cloned()
            else {
                break;
            };
            r.conns.remove(&old.id);
            r.by_addr
                .retain(|_, route| !matches!(route, Route::Open(c) if c.id == old.id));
            tokio::spawn(async move {
                old.shutdown().await;
            });
        }
    }

    /// The daemon says `peer` no longer serves its address: messages to it go through the
    /// daemon again (which introduces its successor); the channel is closed for writing, and
    /// answers to what was sent on it still arrive.
    fn unroute(&self, peer: &str) {
        let mut r = lock(&self.routes);
        let gone: Vec<Arc<Conn>> = r
            .by_addr
            .values()
            .filter_map(|route| match route {
                Route::Open(c) if c.peer == peer => Some(c.clone()),
                _ => None,
            })
            .collect();
        r.by_addr
            .retain(|_, route| !matches!(route, Route::Open(c) if c.peer == peer));
        for c in gone {
            tokio::spawn(async move {
                c.shutdown().await;
            });
        }
    }
}

/// A received channel end, non-blocking, and its registration with the runtime for reading.
type DirectReader = AsyncFd<Arc<OwnedFd>>;

fn open_direct(fd: OwnedFd) -> io::Result<(Arc<OwnedFd>, DirectReader)> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    let sock = Arc::new(OwnedFd::from(std));
    let read = register(sock.clone(), Interest::READABLE)?;
    Ok((sock, read))
}

/// Registers a socket with the runtime for `interest` only.
fn register(sock: Arc<OwnedFd>, interest: Interest) -> io::Result<DirectReader> {
    // SAFETY: the fd is owned by the `OwnedFd`, which the `AsyncFd` keeps alive (an `Arc` of
    // it) until it is dropped: it stays open and the same file for the registration's life.
    unsafe { AsyncFd::register_with_interest(sock, interest) }.map_err(|e| e.into_parts().1)
}

/// Splits complete lines off `buf`, giving each to `each`; a line longer than `max` is
/// dropped (as is the rest of it, up to its newline) and said once.
fn lines(buf: &mut Vec<u8>, skipping: &mut bool, max: usize, mut each: impl FnMut(&[u8])) {
    let mut start = 0;
    while let Some(end) = buf
        .get(start..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    {
        let line = buf.get(start..start + end).unwrap_or_default();
        if !*skipping && !line.iter().all(u8::is_ascii_whitespace) {
            each(line);
        }
        *skipping = false;
        start += end + 1;
    }
    buf.drain(..start);
    if !*skipping && buf.len() > max {
        eprintln!("herd bus: a message longer than {max} bytes was dropped");
        *skipping = true;
    }
    if *skipping {
        buf.clear();
    }
}

/// Reads the daemon's channel: lines, and the channel ends that come with `channel` messages.
async fn read_daemon(shared: Arc<Shared>, r: OwnedReadHalf) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut fds: VecDeque<OwnedFd> = VecDeque::new();
    let mut skipping = false;
    let mut msgs = Vec::new();
    loop {
        let read = r
            .as_ref()
            .async_io(Interest::READABLE, || {
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
                let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
                let mut iov = [io::IoSliceMut::new(&mut chunk)];
                let got = rustix::net::recvmsg(
                    r.as_ref(),
                    &mut iov,
                    &mut control,
                    rustix::net::RecvFlags::DONTWAIT | rustix::net::RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                for m in control.drain() {
                    if let rustix::net::RecvAncillaryMessage::ScmRights(received) = m {
                        fds.extend(received);
                    }
                }
                Ok(got.bytes)
            })
            .await;
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        lines(&mut buf, &mut skipping, MAX_BYTES.max(16 << 20), |line| {
            // Lines that are none of herd's messages (a later daemon's) are skipped.
            msgs.extend(line::parse(line));
        });
        for m in msgs.drain(..) {
            shared.on_message(m, Via::Daemon(shared.clone()), &mut fds);
        }
        // An fd whose message never came (none of ours) is closed with the rest of the read.
        if fds.len() > 8 {
            fds.clear();
        }
    }
}

/// Reads one direct channel until it closes, then fails what still waits on it.
async fn read_direct(shared: Arc<Shared>, conn: Arc<Conn>, r: DirectReader) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut skipping = false;
    let mut none = VecDeque::new();
    let mut msgs = Vec::new();
    loop {
        let n = match read_some(&r, &mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        lines(&mut buf, &mut skipping, conn.max_bytes, |line| {
            msgs.extend(line::parse(line));
        });
        for m in msgs.drain(..) {
            // What comes on a direct channel is from its peer, whatever it says.
            let m = match m {
                ToInstance::Message(mut d) => {
                    d.from.clone_from(&conn.peer);
                    ToInstance::Message(d)
                }
                other => other,
            };
            shared.on_message(m, Via::Direct(conn.clone()), &mut none);
        }
    }
    shared.closed(
        &conn,
        "closed its direct channel before replying: it exited or restarted",
    );
}

/// Reads what is there (waiting for something); `Ok(0)` at the end.
async fn read_some(r: &DirectReader, chunk: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = r.readable().await?;
        match rustix::io::read(r.get_ref(), &mut *chunk) {
            Ok(n) => {
                // Less than asked: the socket is drained (as tokio's own streams assume), so
                // wait for the next edge rather than asking again only to hear "again".
                if 0 < n && n < chunk.len() {
                    ready.clear_ready();
                }
                return Ok(n);
            }
            Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
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
        let (tx, rx) = mpsc::channel(INCOMING);
        let direct = std::env::var("HERD_BUS_DIRECT").as_deref() != Ok("0");
        let shared = Arc::new(Shared {
            daemon: tokio::sync::Mutex::new(w),
            pending: Mutex::default(),
            next: AtomicU64::new(1),
            incoming: tx,
            dropped: AtomicU64::new(0),
            routes: Mutex::default(),
            direct,
        });
        tokio::spawn(read_daemon(shared.clone(), r));
        if direct {
            // Others may open channels to this instance.
            let s = shared.clone();
            tokio::spawn(async move {
                let _ = write_op(&s.daemon, &HerdOp::Direct(worker::Direct::default())).await;
            });
        }
        Ok(Self {
            shared,
            incoming: Arc::new(tokio::sync::Mutex::new(rx)),
        })
    }

    /// Messages dropped because [`Bus::recv`] was not called fast enough (1024 wait at most).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Direct channels open now (opened by this instance or to it).
    pub fn direct_channels(&self) -> usize {
        lock(&self.shared.routes).conns.len()
    }

    /// Writes a delivery on a direct channel; `false` when the channel broke (it is
    /// forgotten, and the message should take the daemon's path).
    async fn write_direct(
        &self,
        conn: &Conn,
        topic: Option<&str>,
        data: &Value,
        request: Option<u64>,
    ) -> io::Result<bool> {
        let line = line::delivery(topic.unwrap_or("herd"), data, &conn.me, request)
            .map_err(io::Error::other)?;
        // The limit is on the line without its newline.
        if line.len() - 1 > conn.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a message of {} bytes is over the bus limit of {} bytes; send smaller messages (or raise max_message_bytes in HERD_HOME/config.toml)",
                    line.len() - 1,
                    conn.max_bytes
                ),
            ));
        }
        if conn.write(&line).await.is_ok() {
            return Ok(true);
        }
        self.shared.forget_conn(conn);
        Ok(false)
    }

    /// Sends to instances: `api:3`, `api` (each), `*` (all), optionally `@host`.
    ///
    /// # Errors
    /// When the channel is gone, or the message is over the bus's size limit.
    pub async fn send(&self, to: &str, data: Value) -> io::Result<()> {
        let path = self.shared.path(to).await;
        if let Path::Direct(conn) = &path {
            if self.write_direct(conn, None, &data, None).await? {
                return Ok(());
            }
        }
        let send = HerdOp::Send(worker::Send {
            to: Some(to.into()),
            topic: None,
            data,
        });
        let open = matches!(path, Path::DaemonThenOpen).then_some(to);
        self.shared.via_daemon(&send, open).await
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
        write_op(&self.shared.daemon, &HerdOp::Publish(publish)).await
    }

    /// Subscribes to a topic; its messages arrive through [`Bus::recv`].
    ///
    /// # Errors
    /// When the channel is gone.
    pub fn subscribe(&self, topic: &str) -> io::Result<()> {
        let s = self.shared.clone();
        let msg = HerdOp::Subscribe(worker::Subscribe {
            topic: Some(topic.into()),
        });
        // Subscribing is cheap and ordered with later writes through the same lock.
        tokio::spawn(async move { write_op(&s.daemon, &msg).await });
        Ok(())
    }

    /// Sends a request to one instance and waits for its reply.
    ///
    /// # Errors
    /// A timeout, no such instance, the instance gone before replying, or the channel gone,
    /// with herd's explanation.
    pub async fn request(&self, to: &str, data: Value, timeout: Duration) -> io::Result<Value> {
        let id = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let path = self.shared.path(to).await;
        if let Path::Direct(conn) = &path {
            let (tx, rx) = oneshot::channel();
            let via = Some(conn.id);
            lock(&self.shared.pending).insert(id, Waiting { tx, via });
            match self.write_direct(conn, None, &data, Some(id)).await {
                // Timed here: no daemon on this path.
                Ok(true) => return finish(&self.shared, id, to, rx, timeout).await,
                // The channel broke: the daemon's path.
                Ok(false) => drop(lock(&self.shared.pending).remove(&id)),
                Err(e) => {
                    lock(&self.shared.pending).remove(&id);
                    return Err(e);
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, Waiting { tx, via: None });
        let request = HerdOp::Request(worker::Request {
            to: Some(to.into()),
            topic: None,
            data,
            id: id.into(),
            timeout_ms: Some(timeout.as_millis() as u64),
        });
        let open = matches!(path, Path::DaemonThenOpen).then_some(to);
        if let Err(e) = self.shared.via_daemon(&request, open).await {
            lock(&self.shared.pending).remove(&id);
            return Err(e);
        }
        // The daemon answers a timeout itself; this one only guards against a vanished daemon.
        finish(&self.shared, id, to, rx, timeout + Duration::from_secs(1)).await
    }

    /// The next message for this instance; `None` once the channel is closed.
    pub async fn recv(&self) -> Option<Message> {
        self.incoming.lock().await.recv().await
    }
}

async fn finish(
    shared: &Shared,
    id: u64,
    to: &str,
    rx: oneshot::Receiver<Result<Value, String>>,
    wait: Duration,
) -> io::Result<Value> {
    match tokio::time::timeout(wait, rx).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(io::Error::other(e)),
        _ => {
            lock(&shared.pending).remove(&id);
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{to} did not reply in time"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_instance_here_gets_a_direct_channel() {
        let me = Some("web:1@h1");
        assert_eq!(direct_key("api:0", me).as_deref(), Some("api:0"));
        assert_eq!(direct_key("api:0@h1", me).as_deref(), Some("api:0"));
        assert_eq!(direct_key("3:2", None).as_deref(), Some("3:2"));
        for other in [
            "api", "api:0@h2", "*", "*:0", "api:x", ":0", "api@h1", "all",
        ] {
            assert_eq!(direct_key(other, me), None, "{other}");
        }
        // Before the daemon said which host this is, `@host` goes through the daemon.
        assert_eq!(direct_key("api:0@h1", None), None);
    }

    /// Backpressure on a direct channel: a peer that reads slowly makes the writer wait for
    /// room (the socket registered for reading only), and every line arrives whole and in order.
    #[tokio::test]
    async fn a_full_direct_channel_makes_the_writer_wait_and_loses_nothing() {
        use std::io::Read;
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (sock, _reader) = open_direct(ours.into()).unwrap();
        let conn = Conn {
            id: 1,
            peer: "b:0@h".into(),
            me: "a:0@h".into(),
            max_bytes: MAX_BYTES,
            sock,
            writing: tokio::sync::Mutex::new(()),
            used: AtomicU64::new(0),
        };
        // 8 MiB: far more than a socket buffer holds.
        let (lines, size) = (128usize, 64 * 1024);
        let peer = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                std::thread::sleep(Duration::from_micros(200));
                match theirs.read(&mut buf).unwrap() {
                    0 => return got,
                    n => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        for i in 0..lines {
            conn.write(&vec![(i % 251) as u8; size]).await.unwrap();
        }
        conn.shutdown().await;
        let got = peer.join().unwrap();
        assert_eq!(got.len(), lines * size);
        for (i, chunk) in got.chunks(size).enumerate() {
            assert!(chunk.iter().all(|&b| b == (i % 251) as u8), "line {i}");
        }
    }

    #[test]
    fn lines_are_split_and_long_ones_dropped() {
        let mut buf = b"{\"a\":1}\n\n{\"b\"".to_vec();
        let mut skipping = false;
        let mut got = Vec::new();
        lines(&mut buf, &mut skipping, 16, |l| got.push(l.to_vec()));
        assert_eq!(got, vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(buf, b"{\"b\"");
        buf.extend_from_slice(&[b'x'; 40]);
        lines(&mut buf, &mut skipping, 16, |l| got.push(l.to_vec()));
        assert!(skipping && buf.is_empty());
        buf.extend_from_slice(b"yyy\n{\"c\":3}\n");
        lines(&mut buf, &mut skipping, 16, |l| got.push(l.to_vec()));
        assert_eq!(got.last().unwrap(), b"{\"c\":3}");
        assert_eq!(got.len(), 2);
    }
}
