//! The state a daemon hands to its successor on `herd update`: it re-executes itself (same
//! pid, so its instances stay its children) and the new program reads this, with every socket,
//! pipe and channel still open under the fd numbers written here.
//!
//! The format is versioned: [`FORMAT`] is what this build writes and reads. Before it executes
//! the new binary, the old daemon asks it which formats it reads (`herd daemon
//! --handover-formats`) and refuses the update if its own is not among them, so a successor
//! never receives state it cannot take.
//!
//! The state travels in a memfd whose number is in `HERD_HANDOVER_FD`. Numbers in it are fds
//! that stay open across `execve` (close-on-exec cleared); everything else of the old daemon
//! is closed by the kernel.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use herd_proto::{AppSpec, AppStatus, ExitInfo};
use serde::{Deserialize, Serialize};

/// Version of the handover format this build writes and reads.
pub const FORMAT: u32 = 1;

/// The environment variable naming the memfd that holds the state.
pub const ENV: &str = "HERD_HANDOVER_FD";

/// Everything the next daemon takes over.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handover {
    /// [`FORMAT`] of the writer.
    pub format: u32,
    /// Version of the daemon that wrote it.
    pub from_version: String,
    /// Milliseconds since the Unix epoch when the update began.
    pub began_unix_ms: u64,
    /// The daemon's own fds by name (`control`, `lock`).
    pub daemon_fds: BTreeMap<String, RawFd>,
    /// The connection of the `herd update` client, to answer once the new daemon runs.
    pub reply_fd: Option<RawFd>,
    /// The supervisor's state.
    pub supervisor: SupervisorState,
}

/// The supervisor's part.
#[derive(Debug, Serialize, Deserialize)]
pub struct SupervisorState {
    /// The daemon's settings as it ran with them (`config.toml` is read again only by a
    /// daemon that starts afresh).
    pub host: String,
    /// Broker URL.
    pub bus_url: Option<String>,
    /// Largest bus message.
    pub max_message_bytes: usize,
    /// The daemon's limits.
    #[serde(default)]
    pub limits: crate::Limits,
    /// The instances' `NOTIFY_SOCKET`.
    pub notify_fd: RawFd,
    /// Id of the next app.
    pub next_id: u32,
    /// Every app.
    pub apps: Vec<AppState>,
    /// The bus.
    pub bus: BusState,
    /// Output pipes of exited processes still held by their children.
    #[serde(default)]
    pub orphan_pipes: Vec<OrphanPipe>,
    /// The daemon's parent cgroup, when instances run in cgroups (absent from earlier
    /// builds, which had none).
    #[serde(default)]
    pub cgroup_parent: Option<std::path::PathBuf>,
    /// Processes on their way out when the state was written for a keeper (a reload's
    /// unfinished or replaced process, an instance being stopped or scaled away): the next
    /// daemon stops them. Always empty after `herd update`, which waits for them to end.
    #[serde(default)]
    pub strays: Vec<u32>,
}

/// One app.
#[derive(Debug, Serialize, Deserialize)]
pub struct AppState {
    /// Its id.
    pub id: u32,
    /// Its spec (from an older herd too: [`AppSpec::from_saved`]).
    #[serde(deserialize_with = "AppSpec::deserialize_saved")]
    pub spec: AppSpec,
    /// Running or stopped.
    pub status: AppStatus,
    /// Version of its environment.
    pub env_version: u32,
    /// Its listening sockets.
    pub listeners: Vec<ListenerState>,
    /// Sockets bound for Node workers' other listens, by request key.
    pub extra: Vec<(String, ListenerState)>,
    /// Who holds each of `extra` (by request key): the pids, each with Node's keys of the
    /// handles it holds. A socket missing here (written by an older daemon) is taken as held
    /// by every process of the app, and so closed once they have all exited.
    #[serde(default)]
    pub extra_holders: BTreeMap<String, BTreeMap<u32, Vec<String>>>,
    /// Its slots.
    pub slots: Vec<SlotState>,
    /// Its spec's generation (absent from an older daemon: 1).
    #[serde(default = "first_generation")]
    pub generation: u32,
    /// Its earlier specs, oldest first, for `herd rollback`.
    #[serde(default)]
    pub previous: Vec<AppSpec>,
}

fn first_generation() -> u32 {
    1
}

/// One listening address.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListenerState {
    /// The address as bound.
    pub addr: String,
    /// The socket every instance shares, for a shared listener.
    pub shared: Option<RawFd>,
    /// Each slot's socket, for a per-slot listener.
    pub by_slot: Vec<Option<RawFd>>,
    /// Slot of each socket in the kernel's reuseport group order.
    pub group: Vec<u32>,
}

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotStatus {
    /// Started, not yet ready.
    Starting,
    /// Serving.
    Online,
    /// Restarts when `timer_ms` has passed.
    WaitingRestart,
    /// Stopped.
    Stopped,
    /// Exited, not restarted.
    Exited,
    /// Gave up after quick crashes.
    Errored,
}

/// One slot.
#[derive(Debug, Serialize, Deserialize)]
pub struct SlotState {
    /// Instance number.
    pub index: u32,
    /// Where it stands.
    pub status: SlotStatus,
    /// Time left on its timer (restart backoff, listen timeout), in ms.
    pub timer_ms: Option<u64>,
    /// The same as a time (ms since the Unix epoch), in a state written for a keeper, which
    /// is read some time after it was written.
    #[serde(default)]
    pub timer_unix_ms: Option<u64>,
    /// Its process, when it has one.
    pub process: Option<ProcState>,
    /// Restarts so far.
    pub restarts: u32,
    /// Restart policy memory: quick runs in a row.
    pub unstable: u32,
    /// Restart policy memory: backoff step.
    pub backoff_step: u32,
    /// How its last process ended.
    pub last_exit: Option<ExitInfo>,
}

/// One running process.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProcState {
    /// Its pid (a child of the daemon's process, which keeps its pid across the update).
    pub pid: u32,
    /// How long it has run, in ms.
    pub uptime_ms: u64,
    /// When it started (ms since the Unix epoch), in a state written for a keeper.
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    /// Environment version it started with.
    pub env_version: u32,
    /// Sockets handed to it as a Node worker.
    pub listens: u32,
    /// Sequence number of the last cluster message sent to it.
    pub seq: u64,
    /// A Node worker running herd's preload (absent from earlier builds: then it is stopped
    /// by Node's disconnect alone).
    #[serde(default)]
    pub node_preload: bool,
    /// Its stdout pipe.
    pub out: Option<PipeState>,
    /// Its stderr pipe.
    pub err: Option<PipeState>,
    /// Its IPC channel.
    pub channel: Option<ChannelState>,
    /// Its cgroup, when it runs in its own (absent from earlier builds).
    #[serde(default)]
    pub cgroup: Option<std::path::PathBuf>,
}

/// An output pipe still open after its process exited (its children hold it).
#[derive(Debug, Serialize, Deserialize)]
pub struct OrphanPipe {
    /// App id.
    pub app: u32,
    /// Slot.
    pub slot: u32,
    /// `out` or `err`.
    pub stream: herd_proto::LogStream,
    /// The pipe.
    pub pipe: PipeState,
}

/// The daemon's read end of an output pipe.
#[derive(Debug, Serialize, Deserialize)]
pub struct PipeState {
    /// The fd.
    pub fd: RawFd,
    /// The line in progress.
    pub partial: Vec<u8>,
}

/// The daemon's end of an IPC channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelState {
    /// The fd.
    pub fd: RawFd,
    /// Bytes read but not yet made into messages.
    pub unread: Vec<u8>,
    /// Dropping the rest of an oversized line.
    pub skipping: bool,
    /// Messages still to write (the first without the bytes already written), with the fd
    /// that travels with each.
    pub queued: Vec<(Vec<u8>, Option<RawFd>)>,
    /// Messages dropped so far.
    pub dropped: u64,
}

/// The bus.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BusState {
    /// Number of the next request.
    pub next: u64,
    /// Counters.
    pub routed: u64,
    /// Counters.
    pub no_recipient: u64,
    /// Counters.
    pub rejected: u64,
    /// Counters (absent in handovers of early builds).
    #[serde(default)]
    pub dropped: u64,
    /// Messages refused by a limit (absent in handovers of early builds).
    #[serde(default)]
    pub refused: u64,
    /// The same, per instance pid (absent in handovers of early builds).
    #[serde(default)]
    pub refused_by: Vec<(u32, u64)>,
    /// Topic → pids subscribed.
    pub subs: BTreeMap<String, Vec<u32>>,
    /// Requests waiting for a reply from an instance or another host.
    pub requests: Vec<RequestState>,
}

/// A request waiting for its reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestState {
    /// Its number.
    pub id: u64,
    /// Who waits.
    pub requester: RequesterState,
    /// Pid of the instance asked, when it is here.
    pub target_pid: Option<u32>,
    /// Address asked.
    pub to: String,
    /// Time left, in ms.
    pub remaining_ms: u64,
}

/// Who waits for a reply.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequesterState {
    /// An instance here.
    Instance {
        /// Its pid.
        pid: u32,
        /// Its number for the request.
        id: serde_json::Value,
    },
    /// A daemon elsewhere.
    Remote {
        /// Its host.
        host: String,
        /// Its number for the request.
        id: String,
    },
}

/// Fds to keep open across `execve`: each is a duplicate (without close-on-exec) of one the
/// daemon holds, so the originals can stay where they are if the update is called off.
///
/// For a keeper ([`Kept::borrowing`]) nothing is duplicated: each fd is named by its own
/// number, and the list of them is sent to the keeper, which places each at that number in
/// the next daemon.
#[derive(Debug, Default)]
pub struct Kept {
    fds: Vec<OwnedFd>,
    borrowing: bool,
    borrowed: Vec<RawFd>,
    seen: std::collections::HashSet<RawFd>,
}

impl Kept {
    /// A `Kept` that names fds by their own numbers (for a keeper) instead of duplicating
    /// them.
    pub fn borrowing() -> Self {
        Self {
            borrowing: true,
            ..Self::default()
        }
    }

    /// Duplicates `fd` to survive `execve` and returns the number the successor finds it at.
    ///
    /// # Errors
    /// When the process is out of fds.
    pub fn keep(&mut self, fd: BorrowedFd<'_>) -> io::Result<RawFd> {
        if self.borrowing {
            let n = fd.as_raw_fd();
            if self.seen.insert(n) {
                self.borrowed.push(n);
            }
            return Ok(n);
        }
        // dup() never sets close-on-exec.
        let dup = nix::unistd::dup(fd).map_err(io::Error::from)?;
        let n = dup.as_raw_fd();
        self.fds.push(dup);
        Ok(n)
    }

    /// The fds named so far by a borrowing `Kept`.
    pub fn borrowed(&self) -> &[RawFd] {
        &self.borrowed
    }
}

/// Writes the state into a memfd that stays open across `execve`.
///
/// # Errors
/// When the memfd cannot be created or written.
pub fn write(state: &Handover) -> io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(c"herd-handover", nix::sys::memfd::MFdFlags::empty())
        .map_err(io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&serde_json::to_vec(state).map_err(io::Error::other)?)?;
    file.rewind()?;
    Ok(file.into())
}

/// Which formats [`read`] accepts, as `herd daemon --handover-formats` prints them.
pub fn formats() -> String {
    FORMAT.to_string()
}

/// Reads the state the previous daemon left at `fd` (from [`ENV`]). The fd stays open, for
/// [`fall_back`]; [`close`] it once the state is taken over.
///
/// # Errors
/// When the fd cannot be read or holds a format this build does not read.
pub fn read(fd: RawFd) -> io::Result<Handover> {
    if !is_open(fd) {
        return Err(io::Error::other(format!("{ENV}={fd} is not an open fd")));
    }
    // SAFETY: the previous daemon passed this fd to us alone for this purpose; it is only
    // borrowed here (the ManuallyDrop keeps it open).
    let mut file =
        std::mem::ManuallyDrop::new(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    file.rewind()?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    parse(&text)
}

/// The state in `text`, as [`read`] takes it from the memfd.
///
/// # Errors
/// When `text` is not JSON, holds a format this build does not read, or does not have the
/// shape of a [`Handover`].
pub fn parse(text: &[u8]) -> io::Result<Handover> {
    let v: serde_json::Value = serde_json::from_slice(text).map_err(io::Error::other)?;
    let format = v.get("format").and_then(serde_json::Value::as_u64);
    if format != Some(u64::from(FORMAT)) {
        return Err(io::Error::other(format!(
            "handover format {format:?} is not {FORMAT}, the one this herd reads"
        )));
    }
    serde_json::from_value(v).map_err(io::Error::other)
}

/// Checks that a handover is consistent before anything in it is adopted: every fd listed
/// once and above stderr (two owners of one fd would close it twice), app ids distinct and
/// below `next_id` (a later app would replace an adopted one), slot indexes distinct per app.
///
/// # Errors
/// What is wrong; the caller gives the state back to the previous program.
pub fn check(h: &Handover) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for fd in fds(h) {
        if fd <= 2 || !seen.insert(fd) {
            return Err(format!("fd {fd} is listed twice or is a standard stream"));
        }
    }
    let mut ids = std::collections::HashSet::new();
    for a in &h.supervisor.apps {
        if !ids.insert(a.id) || a.id >= h.supervisor.next_id {
            return Err(format!(
                "app id {} is listed twice or not below next_id {}",
                a.id, h.supervisor.next_id
            ));
        }
        let mut slots = std::collections::HashSet::new();
        if !a.slots.iter().all(|s| slots.insert(s.index)) {
            return Err(format!("app {} lists a slot twice", a.id));
        }
    }
    Ok(())
}

/// Closes the handover's memfd and the previous program's fd once the state is taken over.
pub fn close(fd: RawFd) {
    let exe = std::env::var(EXE_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok());
    for fd in std::iter::once(fd).chain(exe) {
        if is_open(fd) {
            // SAFETY: these fds were passed for the handover alone and are not used after.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// Every fd a handover names, to close on exec at once: any the new program does not take
/// over must not outlive the next update nor reach instances.
pub fn fds(h: &Handover) -> Vec<RawFd> {
    let s = &h.supervisor;
    let mut out: Vec<RawFd> = h.daemon_fds.values().copied().collect();
    out.extend(h.reply_fd);
    out.push(s.notify_fd);
    let listener = |l: &ListenerState, out: &mut Vec<RawFd>| {
        out.extend(l.shared);
        out.extend(l.by_slot.iter().flatten());
    };
    for a in &s.apps {
        for l in &a.listeners {
            listener(l, &mut out);
        }
        for (_, l) in &a.extra {
            listener(l, &mut out);
        }
        for slot in &a.slots {
            if let Some(p) = &slot.process {
                out.extend(p.out.iter().map(|p| p.fd));
                out.extend(p.err.iter().map(|p| p.fd));
                if let Some(c) = &p.channel {
                    out.push(c.fd);
                    out.extend(c.queued.iter().filter_map(|q| q.1));
                }
            }
        }
    }
    out.extend(s.orphan_pipes.iter().map(|o| o.pipe.fd));
    out
}

/// This process's environment as `execve` takes it, without the variables named in `skip`
/// (and without any entry holding a NUL byte).
pub fn environment_without(skip: &[&str]) -> Vec<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::env::vars_os()
        .filter(|(k, _)| !skip.iter().any(|s| k == std::ffi::OsStr::new(s)))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            std::ffi::CString::new(kv).ok()
        })
        .collect()
}

/// Marks `fd` close-on-exec.
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: F_SETFD only changes the descriptor's flags; an fd that is not open gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// The new program could not take over: executes the previous one again with the same state
/// (the memfd is read again from its start), telling it why (`HERD_UPDATE_FAILED`). Returns
/// only if that is not possible: no previous program kept, or this already is the fallback.
pub fn fall_back(memfd: RawFd, why: &str) -> io::Error {
    if std::env::var_os(FAILED_ENV).is_some() {
        return io::Error::other("the previous program could not take its state back either");
    }
    let Some(exe) = std::env::var(EXE_ENV)
        .ok()
        .and_then(|v| v.parse::<RawFd>().ok())
        .filter(|&fd| is_open(fd))
    else {
        return io::Error::other("the previous program was not kept");
    };
    let mut env = environment_without(&[ENV, FAILED_ENV, EXE_ENV, FAULT_ENV]);
    let why = why.replace('\0', " ");
    for entry in [format!("{ENV}={memfd}"), format!("{FAILED_ENV}={why}")] {
        // Neither holds a NUL (a number, and `why` without them); an error here is a bug,
        // answered like any other failure to go back.
        match std::ffi::CString::new(entry) {
            Ok(entry) => env.push(entry),
            Err(e) => return io::Error::other(format!("cannot pass the state back: {e}")),
        }
    }
    // The same command line (`herd daemon`, or `herd run …`).
    let argv: Vec<std::ffi::CString> = std::env::args_os()
        .filter_map(|a| {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::CString::new(a.as_bytes()).ok()
        })
        .collect();
    // SAFETY: `exe` is the fd of the previous program, kept for this; it is only borrowed.
    let exe = unsafe { BorrowedFd::borrow_raw(exe) };
    match nix::unistd::execveat(exe, c"", &argv, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH) {
        Ok(never) => match never {},
        Err(e) => io::Error::from(e),
    }
}

/// Set, with the reason, when a daemon runs again after its successor could not take over.
pub const FAILED_ENV: &str = "HERD_UPDATE_FAILED";

/// Fault injection for tests: a new program that has it fails to take over (the previous
/// one, run again, does not get it).
pub const FAULT_ENV: &str = "HERD_FAULT_TAKEOVER";

/// The fd of the previous program, for [`fall_back`].
pub const EXE_ENV: &str = "HERD_HANDOVER_EXE_FD";

/// Takes ownership of an fd inherited through a handover.
///
/// # Safety
/// `fd` must be one listed in the [`Handover`] this process read, taken once.
pub unsafe fn adopt(fd: RawFd) -> OwnedFd {
    // Close-on-exec again, as every fd the daemon holds: the next update keeps its own
    // duplicates, and instances must not inherit it.
    // SAFETY: F_SETFD only changes the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Whether `fd` is an open descriptor (a sanity check before adopting one).
pub fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; an fd that is not open gives EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_real_handover_passes_the_check_and_a_forged_one_does_not() {
        let text = include_bytes!("../../../fuzz/corpus/handover/real");
        let h = parse(text).unwrap();
        assert_eq!(check(&h), Ok(()));
        let mut dup = parse(text).unwrap();
        let first = dup.supervisor.apps[0].id;
        dup.supervisor.apps[1].id = first;
        assert!(check(&dup).unwrap_err().contains("listed twice"));
        let mut low = parse(text).unwrap();
        low.supervisor.next_id = 0;
        assert!(check(&low).is_err());
        let mut fd = parse(text).unwrap();
        fd.supervisor.notify_fd = fd.daemon_fds["control"];
        assert!(check(&fd).unwrap_err().contains("fd"));
    }

    #[test]
    fn state_from_a_build_without_cgroups_reads_as_none() {
        let proc: ProcState = serde_json::from_str(
            r#"{"pid":42,"uptime_ms":1,"env_version":1,"listens":0,"seq":0,"out":null,"err":null,"channel":null}"#,
        )
        .unwrap();
        assert_eq!(proc.cgroup, None);
        let sup: SupervisorState = serde_json::from_str(
            r#"{"host":"h","bus_url":null,"max_message_bytes":1,"notify_fd":3,"next_id":0,"apps":[],"bus":{"next":0,"routed":0,"no_recipient":0,"rejected":0,"subs":{},"requests":[]}}"#,
        )
        .unwrap();
        assert_eq!(sup.cgroup_parent, None);
    }

    #[test]
    fn an_app_written_before_extra_holders_were_kept_still_reads() {
        let spec = serde_json::to_value(AppSpec::default()).unwrap();
        let app = serde_json::json!({
            "id": 3, "spec": spec, "status": "running", "env_version": 1,
            "listeners": [], "slots": [],
            "extra": [["|0|Tcp4", {"addr": "0.0.0.0:0", "shared": 9, "by_slot": [], "group": []}]],
        });
        let a: AppState = serde_json::from_value(app).unwrap();
        assert_eq!(a.extra.len(), 1);
        assert!(a.extra_holders.is_empty());
    }
}
