//! Listening sockets held by the daemon and handed to instances.
//!
//! For a TCP address with `hash` or `sticky` balance, every instance slot gets its own
//! `SO_REUSEPORT` socket, all in one reuseport group. The daemon keeps every slot's socket
//! open, so a slot's replacement process inherits the same socket and serves whatever queued
//! there. A classic-BPF selector attached to the group (`SO_ATTACH_REUSEPORT_CBPF`) steers new
//! connections only to slots that are serving; it is rebuilt whenever that set changes.
//!
//! The kernel identifies a socket in the selector by its place in the group: the order in
//! which sockets called `listen`, where closing one moves the last into its place. [`Listener`]
//! mirrors that order so the selector's indices stay right.
//!
//! Unix paths and the `shared` balance use one socket that all instances accept from.
//!
//! This module does not accept connections or look at traffic: after `accept` the daemon is
//! off the data path.

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use herd_proto::Balance;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Backlog of every listening socket the daemon creates.
const BACKLOG: i32 = 1024;

/// Where an app listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address; port 0 picks a free port once for the whole app.
    Tcp(SocketAddr),
    /// A Unix stream socket at a path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    /// Accepts `HOST:PORT`, `[V6]:PORT`, a bare `PORT` (all IPv4 interfaces), `unix:/path` or
    /// an absolute path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(ListenAddr::Unix(PathBuf::from(s)));
        }
        if let Ok(port) = s.parse::<u16>() {
            return Ok(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
        }
        s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
            format!(
                "cannot read listen address {s:?}: use HOST:PORT (127.0.0.1:8000, [::1]:8000), a port, or unix:/path"
            )
        })
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why a listener handed over by an earlier daemon cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// Its address does not read as one (the earlier program wrote something else).
    #[error("{reason}")]
    Address {
        /// Why, as [`ListenAddr`]'s parser says it.
        reason: String,
    },
}

/// A listening address that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Someone else listens there.
    #[error("{addr} is already in use by another program; stop it or choose another port (`ss -ltnp 'sport = :{port}'` shows who holds it)")]
    InUse {
        /// The address.
        addr: String,
        /// Its port.
        port: u16,
    },
    /// Privileged port without the privilege.
    #[error("port {port} needs root or CAP_NET_BIND_SERVICE; use a port above 1023, such as 8080")]
    Permission {
        /// The port.
        port: u16,
    },
    /// The address is not one of this machine's.
    #[error("{addr} is not an address of this machine; use 0.0.0.0, 127.0.0.1 or one of its own addresses")]
    NotAvailable {
        /// The address.
        addr: String,
    },
    /// A Unix socket path that is taken by a live listener or is not a socket.
    #[error("{path} exists and {why}; remove it or choose another path")]
    PathTaken {
        /// The path.
        path: String,
        /// What is in the way.
        why: &'static str,
    },
    /// Any other failure.
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The system error.
        source: io::Error,
    },
}

impl ListenError {
    fn from_io(addr: &ListenAddr, err: io::Error) -> Self {
        let port = match addr {
            ListenAddr::Tcp(a) => a.port(),
            ListenAddr::Unix(_) => 0,
        };
        match err.raw_os_error() {
            Some(libc::EADDRINUSE) => ListenError::InUse {
                addr: addr.to_string(),
                port,
            },
            Some(libc::EACCES) if port != 0 => ListenError::Permission { port },
            Some(libc::EADDRNOTAVAIL) => ListenError::NotAvailable {
                addr: addr.to_string(),
            },
            _ => ListenError::Io {
                addr: addr.to_string(),
                source: err,
            },
        }
    }
}

/// The sockets of one listening address of one app.
#[derive(Debug)]
pub struct Listener {
    addr: ListenAddr,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// One socket for every instance.
    Shared(OwnedFd),
    /// One reuseport socket per slot.
    PerSlot {
        /// Socket of each slot, by slot number.
        by_slot: Vec<Option<OwnedFd>>,
        /// Slot number of each socket, in the kernel's group order.
        group: Vec<u32>,
    },
}

impl Listener {
    /// Binds `addr` for `slots` instance slots.
    ///
    /// # Errors
    /// [`ListenError`] worded for the user: in use, not permitted, not available, or other.
    pub fn bind(addr: &ListenAddr, balance: Balance, slots: u32) -> Result<Self, ListenError> {
        match addr {
            ListenAddr::Unix(path) => Ok(Listener {
                addr: addr.clone(),
                kind: Kind::Shared(bind_unix(path)?),
            }),
            ListenAddr::Tcp(sa) => {
                // A plain bind fails if anyone listens on the port, even with SO_REUSEPORT;
                // without this probe the daemon would silently join a stranger's group.
                let probe = new_tcp(sa, false).map_err(|e| ListenError::from_io(addr, e))?;
                probe
                    .bind(&(*sa).into())
                    .map_err(|e| ListenError::from_io(addr, e))?;
                let real = probe
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(*sa);
                drop(probe);
                let bound = ListenAddr::Tcp(real);
                if balance == Balance::Shared {
                    let s =
                        listen_tcp(&real, false).map_err(|e| ListenError::from_io(&bound, e))?;
                    return Ok(Listener {
                        addr: bound,
                        kind: Kind::Shared(s),
                    });
                }
                let mut l = Listener {
                    addr: bound,
                    kind: Kind::PerSlot {
                        by_slot: Vec::new(),
                        group: Vec::new(),
                    },
                };
                for slot in 0..slots {
                    l.add_slot(slot)?;
                }
                Ok(l)
            }
        }
    }

    /// The listener's sockets, kept across `execve` in `kept`, for a daemon update.
    ///
    /// # Errors
    /// When an fd cannot be duplicated.
    pub fn export(
        &self,
        kept: &mut crate::handover::Kept,
    ) -> io::Result<crate::handover::ListenerState> {
        let mut state = crate::handover::ListenerState {
            addr: self.addr.to_string(),
            shared: None,
            by_slot: Vec::new(),
            group: Vec::new(),
        };
        match &self.kind {
            Kind::Shared(fd) => state.shared = Some(kept.keep(fd.as_fd())?),
            Kind::PerSlot { by_slot, group } => {
                for fd in by_slot {
                    state.by_slot.push(match fd {
                        Some(fd) => Some(kept.keep(fd.as_fd())?),
                        None => None,
                    });
                }
                state.group = group.clone();
            }
        }
        Ok(state)
    }

    /// A listener taken over from an earlier daemon.
    ///
    /// # Safety
    /// The fds in `state` must be open, inherited through the handover, and adopted once.
    ///
    /// # Errors
    /// [`AdoptError::Address`] when the address does not parse; no fd is taken then.
    pub unsafe fn adopt(state: &crate::handover::ListenerState) -> Result<Self, AdoptError> {
        let addr: ListenAddr = state
            .addr
            .parse()
            .map_err(|reason| AdoptError::Address { reason })?;
        // SAFETY (both): guaranteed by the caller.
        let kind = match state.shared {
            Some(fd) => Kind::Shared(unsafe { crate::handover::adopt(fd) }),
            None => Kind::PerSlot {
                by_slot: state
                    .by_slot
                    .iter()
                    .map(|fd| fd.map(|fd| unsafe { crate::handover::adopt(fd) }))
                    .collect(),
                group: state.group.clone(),
            },
        };
        Ok(Self { addr, kind })
    }

    /// The address as bound (with the real port).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The TCP port, if this is a TCP listener.
    pub fn port(&self) -> Option<u16> {
        match &self.addr {
            ListenAddr::Tcp(a) => Some(a.port()),
            ListenAddr::Unix(_) => None,
        }
    }

    /// Whether every slot gets its own socket.
    pub fn is_per_slot(&self) -> bool {
        matches!(self.kind, Kind::PerSlot { .. })
    }

    /// Creates the socket of a new slot (scale up). A no-op for shared listeners.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn add_slot(&mut self, slot: u32) -> Result<(), ListenError> {
        let ListenAddr::Tcp(sa) = self.addr else {
            return Ok(());
        };
        let Kind::PerSlot { by_slot, group } = &mut self.kind else {
            return Ok(());
        };
        let fd = listen_tcp(&sa, true).map_err(|e| ListenError::from_io(&self.addr, e))?;
        let i = slot as usize;
        match by_slot.get_mut(i) {
            Some(place) => *place = Some(fd),
            None => {
                by_slot.resize_with(i, || None);
                by_slot.push(Some(fd));
            }
        }
        group.push(slot);
        Ok(())
    }

    /// Closes a slot's socket (scale down, after its instance has gone). Connections still
    /// queued on it are reset by the kernel, so steer the slot out and let its instance drain
    /// the queue first.
    pub fn remove_slot(&mut self, slot: u32) {
        if let Kind::PerSlot { by_slot, group } = &mut self.kind {
            if let Some(fd) = by_slot.get_mut(slot as usize).and_then(Option::take) {
                drop(fd);
                // The kernel moves the group's last socket into the closed one's place.
                if let Some(i) = group.iter().position(|&s| s == slot) {
                    group.swap_remove(i);
                }
            }
        }
    }

    /// The slots that have a socket here (none for a shared listener).
    pub fn slots(&self) -> Vec<u32> {
        match &self.kind {
            Kind::PerSlot { group, .. } => group.clone(),
            Kind::Shared(_) => Vec::new(),
        }
    }

    /// The socket an instance of `slot` inherits.
    pub fn fd_for_slot(&self, slot: u32) -> Option<BorrowedFd<'_>> {
        match &self.kind {
            Kind::Shared(fd) => Some(fd.as_fd()),
            Kind::PerSlot { by_slot, .. } => by_slot
                .get(slot as usize)
                .and_then(|s| s.as_ref())
                .map(|f| f.as_fd()),
        }
    }

    /// Connections accepted by the kernel and waiting in `slot`'s queue.
    pub fn queued(&self, slot: u32) -> Option<u32> {
        let fd = match &self.kind {
            Kind::PerSlot { by_slot, .. } => by_slot.get(slot as usize)?.as_ref()?,
            Kind::Shared(_) => return None,
        };
        accept_queue_len(fd.as_fd())
    }

    /// Rebuilds the selector so that new connections reach only the slots in `live`.
    /// With no live slot the kernel's own hash is used, so connections queue until an instance
    /// comes back instead of being refused.
    ///
    /// # Errors
    /// When the kernel refuses the program (it should not; logged by the caller).
    /// Where a health probe connects to reach slot `slot`'s own socket, and the loopback
    /// address it connects from: the selector sends a connection from `127.87.H.L` to the
    /// socket at group index `H·256+L`, whatever the routing set (docs/health.md). `None`
    /// for a shared listener, a Unix socket, an IPv6-only address, or a slot without socket.
    pub fn probe_target(&self, slot: u32) -> Option<(SocketAddr, std::net::Ipv4Addr)> {
        let Kind::PerSlot { by_slot, group } = &self.kind else {
            return None;
        };
        let idx = group.iter().position(|&s| s == slot)?;
        let idx = u16::try_from(idx).ok()?;
        let fd = by_slot.get(slot as usize)?.as_ref()?;
        let bound = SockRef::from(fd).local_addr().ok()?.as_socket()?;
        let dest = match bound {
            SocketAddr::V4(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V4(a) => SocketAddr::V4(a),
            // An IPv6 socket takes IPv4 connections too (mapped) unless it is IPv6-only.
            SocketAddr::V6(a) if a.ip().is_unspecified() => {
                SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, a.port()))
            }
            SocketAddr::V6(a) => SocketAddr::from((a.ip().to_ipv4_mapped()?, a.port())),
        };
        let [h, l] = idx.to_be_bytes();
        Some((dest, std::net::Ipv4Addr::new(127, PROBE_NET_OCTET, h, l)))
    }

    pub fn steer(&self, balance: Balance, live: &[u32]) -> io::Result<()> {
        let Kind::PerSlot { by_slot, group } = &self.kind else {
            return Ok(());
        };
        let Some(any) = by_slot.iter().flatten().next() else {
            return Ok(());
        };
        let is_v6 = matches!(self.addr, ListenAddr::Tcp(SocketAddr::V6(_)));
        let table = jump_table(balance, group, live);
        let prog = selector_program(balance, is_v6, &table);
        attach_selector(any.as_fd(), &prog)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenAddr::Unix(path) = &self.addr {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn new_tcp(sa: &SocketAddr, reuseport: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*sa), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    Ok(s)
}

fn listen_tcp(sa: &SocketAddr, reuseport: bool) -> io::Result<OwnedFd> {
    let s = new_tcp(sa, reuseport)?;
    s.bind(&(*sa).into())?;
    s.listen(BACKLOG)?;
    Ok(StdTcpListener::from(s).into())
}

fn bind_unix(path: &Path) -> Result<OwnedFd, ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let shown = path.display().to_string();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ListenError::PathTaken {
                path: shown,
                why: "is not a socket",
            });
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::PathTaken {
                path: shown,
                why: "a program is listening on it",
            });
        }
        // A socket file nobody listens on is a leftover of an earlier run.
        let _ = std::fs::remove_file(path);
    }
    let l = StdUnixListener::bind(path)
        .map_err(|e| ListenError::from_io(&ListenAddr::Unix(path.to_path_buf()), e))?;
    Ok(l.into())
}

/// Length of a listening TCP socket's accept queue (`tcpi_unacked` of a listener).
fn accept_queue_len(fd: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_unacked)
    }
}

/// Maps the selector's key (0..table.len()) to group indices.
///
/// `hash`: the table holds only live sockets, so connections spread evenly over them.
/// `sticky`: the table holds every slot, a dead slot's entry pointing at a live substitute, so
/// a death remaps only that slot's clients.
fn jump_table(balance: Balance, group: &[u32], live: &[u32]) -> Vec<u32> {
    let index_of = |slot: u32| group.iter().position(|&s| s == slot).map(|i| i as u32);
    let live_idx: Vec<u32> = live.iter().filter_map(|&s| index_of(s)).collect();
    if live_idx.is_empty() {
        return Vec::new();
    }
    match balance {
        Balance::Sticky => {
            let mut slots: Vec<u32> = group.to_vec();
            slots.sort_unstable();
            // The k-th slot, when dead, takes the (k mod live)-th live index: `cycle` over the
            // live indexes (not empty, see above) gives it without an index.
            slots
                .iter()
                .zip(live_idx.iter().cycle())
                .map(|(&slot, &instead)| match index_of(slot) {
                    Some(i) if live.contains(&slot) => i,
                    _ => instead,
                })
                .collect()
        }
        _ => live_idx,
    }
}

const fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The second octet of the loopback block health probes connect from (`127.87.0.0/16`).
pub const PROBE_NET_OCTET: u8 = 87;
const PROBE_NET: u32 = 0x7f57_0000;

/// Builds the classic-BPF reuseport selector.
///
/// The key is computed from the packet's headers (not `skb->hash`, which is 0 on NICs without
/// receive hashing): the source address, plus both ports for `hash`, mixed by an integer hash
/// so that the low bits (Linux prefers even source ports) do not decide alone. The
/// program returns `table[key % table.len()]`; with an empty table it returns an out-of-range
/// index, which makes the kernel fall back to its own hash.
fn selector_program(balance: Balance, is_v6: bool, table: &[u32]) -> Vec<libc::sock_filter> {
    use libc::*;
    let net = SKF_NET_OFF as u32;
    let ld = |off: u32| stmt(BPF_LD | BPF_W | BPF_ABS, net.wrapping_add(off));
    let with_ports = balance != Balance::Sticky;
    // A health probe's connection (from 127.87.H.L, never a client's address) goes to the
    // socket at group index H·256+L, routed or not.
    let probe = [
        ld(12),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xffff_0000),
        jump(BPF_JMP | BPF_JEQ | BPF_K, PROBE_NET, 0, 3),
        stmt(BPF_MISC | BPF_TXA, 0),
        stmt(BPF_ALU | BPF_AND | BPF_K, 0xffff),
        stmt(BPF_RET | BPF_A, 0),
    ];
    let Some((last, rest)) = table.split_last() else {
        let mut prog = Vec::new();
        if is_v6 {
            prog.push(stmt(BPF_LD | BPF_B | BPF_ABS, net));
            prog.push(stmt(BPF_ALU | BPF_RSH | BPF_K, 4));
            prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, probe.len() as u8));
        }
        prog.extend(probe);
        prog.push(stmt(BPF_RET | BPF_K, u32::MAX));
        return prog;
    };
    // After the probe check, A = the IPv4 source address, as the hash below starts from.
    let mut v4 = probe.to_vec();
    // (The probe check's last jump lands here with A masked: load the address again.)
    v4.push(ld(12));
    if with_ports {
        v4.extend([
            stmt(BPF_MISC | BPF_TAX, 0),
            ld(20),
            stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        ]);
    }
    let mut v6 = vec![ld(8)];
    for off in [12, 16, 20] {
        v6.extend([
            stmt(BPF_MISC | BPF_TAX, 0),
            ld(off),
            stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        ]);
    }
    if with_ports {
        v6.extend([
            stmt(BPF_MISC | BPF_TAX, 0),
            ld(40),
            stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        ]);
    }
    let mut prog = Vec::new();
    if is_v6 {
        // An IPv6 socket also receives IPv4 (mapped) connections: pick by the IP version.
        prog.push(stmt(BPF_LD | BPF_B | BPF_ABS, net));
        prog.push(stmt(BPF_ALU | BPF_RSH | BPF_K, 4));
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, 6, (v4.len() + 1) as u8, 0));
        prog.extend(v4.iter().copied());
        prog.push(stmt(BPF_JMP | BPF_JA, v6.len() as u32));
        prog.extend(v6);
    } else {
        prog.extend(v4);
    }
    // lowbias32 (x ^= x>>16; x *= C1; x ^= x>>15; x *= C2; x ^= x>>16): every output bit
    // depends on every input bit, so `% n` sees the varying source-port bits.
    let fold = |shift: u32| {
        [
            stmt(BPF_MISC | BPF_TAX, 0),
            stmt(BPF_ALU | BPF_RSH | BPF_K, shift),
            stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        ]
    };
    prog.extend(fold(16));
    prog.push(stmt(BPF_ALU | BPF_MUL | BPF_K, 0x7feb_352d));
    prog.extend(fold(15));
    prog.push(stmt(BPF_ALU | BPF_MUL | BPF_K, 0x846c_a68b));
    prog.extend(fold(16));
    prog.push(stmt(BPF_ALU | BPF_MOD | BPF_K, table.len() as u32));
    for (k, &idx) in rest.iter().enumerate() {
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, k as u32, 0, 1));
        prog.push(stmt(BPF_RET | BPF_K, idx));
    }
    prog.push(stmt(BPF_RET | BPF_K, *last));
    prog
}

fn attach_selector(fd: BorrowedFd<'_>, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `prog`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn loopback() -> ListenAddr {
        ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "8000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:8000".parse().unwrap())
        );
        assert_eq!(
            "[::1]:80".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert!("nope:port".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn sticky_table_remaps_only_dead_slot() {
        let group = [0, 1, 2, 3];
        let all = jump_table(Balance::Sticky, &group, &[0, 1, 2, 3]);
        assert_eq!(all, vec![0, 1, 2, 3]);
        let one_dead = jump_table(Balance::Sticky, &group, &[0, 1, 3]);
        assert_eq!(one_dead[0], 0);
        assert_eq!(one_dead[1], 1);
        assert_eq!(one_dead[3], 3);
        assert_ne!(one_dead[2], 2);
        assert_eq!(jump_table(Balance::Hash, &group, &[3, 1]), vec![3, 1]);
        assert!(jump_table(Balance::Hash, &group, &[]).is_empty());
    }

    #[test]
    fn group_order_follows_swap_remove() {
        let mut l = Listener::bind(&loopback(), Balance::Hash, 4).unwrap();
        l.remove_slot(1);
        let Kind::PerSlot { group, .. } = &l.kind else {
            panic!()
        };
        assert_eq!(group, &vec![0, 3, 2]);
        l.add_slot(1).unwrap();
        let Kind::PerSlot { group, .. } = &l.kind else {
            panic!()
        };
        assert_eq!(group, &vec![0, 3, 2, 1]);
    }

    /// Accepts on each slot's socket from a thread and counts who got what.
    fn spread(l: &Listener, slots: u32, conns: usize) -> HashMap<u32, usize> {
        let ListenAddr::Tcp(addr) = *l.addr() else {
            panic!()
        };
        let mut clients = Vec::new();
        for _ in 0..conns {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap();
            c.write_all(b"x").unwrap();
            clients.push(c);
        }
        let mut counts = HashMap::new();
        for slot in 0..slots {
            let fd = l.fd_for_slot(slot).unwrap().try_clone_to_owned().unwrap();
            let tl = TcpListener::from(fd);
            tl.set_nonblocking(true).unwrap();
            while let Ok((mut s, _)) = tl.accept() {
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
                *counts.entry(slot).or_insert(0) += 1;
            }
        }
        counts
    }

    #[test]
    fn selector_spreads_over_live_slots_only() {
        let l = Listener::bind(&loopback(), Balance::Hash, 4).unwrap();
        l.steer(Balance::Hash, &[0, 1, 2, 3]).unwrap();
        let c = spread(&l, 4, 400);
        assert_eq!(c.values().sum::<usize>(), 400);
        for slot in 0..4 {
            let n = c.get(&slot).copied().unwrap_or(0);
            assert!(n > 50, "slot {slot} got {n} of 400: {c:?}");
        }
        l.steer(Balance::Hash, &[0, 2, 3]).unwrap();
        let c = spread(&l, 4, 300);
        assert_eq!(c.get(&1), None, "a steered-out slot got connections: {c:?}");
        assert_eq!(c.values().sum::<usize>(), 300);
    }

    /// A probe's connection lands on the slot it names, routed or not, whatever the balance
    /// and whether the socket is IPv4 or dual-stack IPv6; clients still spread as before.
    #[test]
    fn a_probe_reaches_the_slot_it_names_even_out_of_the_routing_set() {
        let v6: ListenAddr = "[::]:0".parse().unwrap();
        for (addr, balance) in [
            (loopback(), Balance::Hash),
            (loopback(), Balance::Sticky),
            (v6, Balance::Hash),
        ] {
            let l = Listener::bind(&addr, balance, 3).unwrap();
            for live in [vec![0, 1, 2], vec![0, 2], vec![]] {
                l.steer(balance, &live).unwrap();
                for slot in 0..3u32 {
                    let (dest, src) = l.probe_target(slot).unwrap();
                    for _ in 0..5 {
                        let s = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                        s.bind(&SocketAddr::from((src, 0)).into()).unwrap();
                        s.connect(&dest.into()).unwrap();
                        drop(s);
                    }
                    let fd = l.fd_for_slot(slot).unwrap().try_clone_to_owned().unwrap();
                    let tl = TcpListener::from(fd);
                    tl.set_nonblocking(true).unwrap();
                    let mut got = 0;
                    while tl.accept().is_ok() {
                        got += 1;
                    }
                    assert_eq!(got, 5, "{addr:?} {balance:?} live {live:?}: slot {slot}");
                    for other in (0..3u32).filter(|&o| o != slot) {
                        let fd = l.fd_for_slot(other).unwrap().try_clone_to_owned().unwrap();
                        let tl = TcpListener::from(fd);
                        tl.set_nonblocking(true).unwrap();
                        assert!(tl.accept().is_err(), "slot {other} got slot {slot}'s probe");
                    }
                }
            }
            l.steer(balance, &[0, 1, 2]).unwrap();
        }
    }

    #[test]
    fn sticky_keeps_one_client_on_one_slot() {
        let l = Listener::bind(&loopback(), Balance::Sticky, 3).unwrap();
        l.steer(Balance::Sticky, &[0, 1, 2]).unwrap();
        let c = spread(&l, 3, 60);
        assert_eq!(
            c.len(),
            1,
            "one client address went to several slots: {c:?}"
        );
    }

    #[test]
    fn in_use_port_is_reported() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ListenAddr::Tcp(taken.local_addr().unwrap());
        let err = Listener::bind(&addr, Balance::Hash, 2).unwrap_err();
        assert!(matches!(err, ListenError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("choose another port"));
    }
}
