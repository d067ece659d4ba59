//! Capture of instances' output: pipes read by the daemon, written to
//! `HERD_HOME/logs/<app>-<i>.out|.err` with size-based rotation, and fanned out to whoever
//! follows the logs.
//!
//! The daemon reads every pipe as soon as data arrives and writes it to the page cache, so an
//! app that writes fast is not slowed by herd; followers get lines through a bounded broadcast
//! channel, and a follower that cannot keep up loses lines (counted), never the app.
//!
//! PM2's options (`out_file`, `merge_logs`, `log_date_format`, `log_type: json`…, docs/logs.md)
//! choose the files and [`LineFormat`]; which file each slot gets is the supervisor's business
//! (`supervisor/slot_logs.rs`).

mod format;

pub use format::{DateFormat, LineFormat, Origin};

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use herd_proto::{LogSpec, LogStream};
use nix::errno::Errno;
use nix::fcntl::{splice, tee, SpliceFFlags};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::sync::broadcast;

/// One line of output, as sent to followers.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// App name.
    pub app: Arc<str>,
    /// Instance number.
    pub instance: u32,
    /// Which stream.
    pub stream: LogStream,
    /// The line, without newline.
    pub line: String,
}

/// Channel that carries [`LogEvent`]s to followers.
pub type LogBus = broadcast::Sender<Arc<LogEvent>>;

/// A log file that rotates itself: `x.out` → `x.out.1` → … → `x.out.<keep>`.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    /// `None`: output is discarded (the file could not be opened).
    file: Option<File>,
    size: u64,
    max_size: u64,
    keep: u32,
    /// Where herd's own notes about this slot also go (followers, `herd run`).
    notes: Option<(LogBus, Arc<str>, u32, LogStream)>,
    /// Rotated by size and emptied by `herd flush`: a regular file (not a device or a FIFO
    /// that a user named as the app's log).
    regular: bool,
    /// How herd's own notes are written into it.
    format: LineFormat,
    /// A path the user named ([`LogFile::open_named`]), opened again the same way.
    named: bool,
    /// Its file system refused `splice` (some FUSE or network ones do): written instead.
    no_splice: bool,
}

/// A log file shared by the processes of one slot (during a reload two write to it).
pub type SharedLog = Arc<Mutex<LogFile>>;

impl LogFile {
    /// Opens or creates one of herd's own files (`logs/<app>-<i>.out`). Herd alone writes it,
    /// at its end (found again before every write, so a file truncated by `logrotate`'s
    /// `copytruncate` is written from its start), and without `O_APPEND`, which `splice` refuses:
    /// output goes into it by [`LogFile::take`].
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: PathBuf, spec: &LogSpec) -> io::Result<Self> {
        let file = open_own(&path)?;
        Self::with_file(path, file, spec)
    }

    /// Opens (appending) or creates a file a user named (`out_file` and the like): its folder
    /// is made if missing, as PM2 does, and a symbolic link is followed (the user chose the
    /// path).
    ///
    /// # Errors
    /// When the folder cannot be made or the file cannot be opened.
    pub fn open_named(path: PathBuf, spec: &LogSpec) -> io::Result<Self> {
        let file = open_named(&path)?;
        let mut log = Self::with_file(path, file, spec)?;
        log.named = true;
        Ok(log)
    }

    fn with_file(path: PathBuf, file: File, spec: &LogSpec) -> io::Result<Self> {
        let meta = file.metadata()?;
        Ok(Self {
            path,
            size: meta.len(),
            regular: meta.is_file(),
            file: Some(file),
            max_size: spec.max_size.max(1024),
            keep: spec.keep,
            notes: None,
            format: LineFormat::of(spec),
            named: false,
            no_splice: false,
        })
    }

    /// A log that discards everything (its file could not be opened); it opens nothing.
    pub fn discard(spec: &LogSpec) -> Self {
        Self {
            path: PathBuf::from("/dev/null"),
            file: None,
            size: 0,
            max_size: spec.max_size.max(1024),
            keep: spec.keep,
            notes: None,
            regular: false,
            format: LineFormat::Raw,
            named: false,
            no_splice: false,
        }
    }

    /// Takes the size limit, the number kept and the format of `spec` (a file opened for
    /// one spec and wanted again for a changed one).
    pub fn configure(&mut self, spec: &LogSpec) {
        self.max_size = spec.max_size.max(1024);
        self.keep = spec.keep;
        self.format = LineFormat::of(spec);
    }

    /// Also sends herd's notes ([`LogFile::note`]) to followers, as lines of this instance.
    pub fn announce(
        mut self,
        bus: LogBus,
        app: Arc<str>,
        instance: u32,
        stream: LogStream,
    ) -> Self {
        self.notes = Some((bus, app, instance, stream));
        self
    }

    /// Writes one of herd's own notes (`[herd] …`), stamped, and tells followers.
    pub fn note(&mut self, note: &str) {
        let line = match &self.format {
            // A note is always stamped in herd's own files.
            LineFormat::Raw | LineFormat::Stamped => format!(
                "{} {note}\n",
                humantime::format_rfc3339_millis(std::time::SystemTime::now())
            )
            .into_bytes(),
            format => {
                let (app, instance, stream) = match &self.notes {
                    Some((_, app, instance, stream)) => (&**app, *instance, *stream),
                    None => ("", 0, LogStream::Err),
                };
                let mut out = Vec::new();
                format.write(
                    &mut out,
                    note.as_bytes(),
                    Origin {
                        app,
                        instance,
                        stream,
                    },
                );
                out
            }
        };
        let r = self.write(&line);
        count_write(&self.path, line.len(), r);
        if let Some((bus, app, instance, stream)) = &self.notes {
            if bus.receiver_count() > 0 {
                let _ = bus.send(Arc::new(LogEvent {
                    app: app.clone(),
                    instance: *instance,
                    stream: *stream,
                    line: note.to_string(),
                }));
            }
        }
    }

    /// Appends bytes, rotating first if they would pass the size limit.
    ///
    /// # Errors
    /// When writing or rotating fails.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.put(bytes, |file, piece| file.write_all(piece))
    }

    /// Whether the kernel can move bytes from a pipe into this file ([`LogFile::take`]): one of
    /// herd's own regular files, on a file system that takes `splice`.
    fn spliced(&self) -> bool {
        self.file.is_some() && self.regular && !self.named && !self.no_splice
    }

    /// Whether `e` says that the file system does not take `splice` (then it is not tried on
    /// this file again; its bytes are written instead).
    fn refuses_splice(&mut self, e: Errno) -> bool {
        let refused = matches!(e, Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS);
        if refused && !self.no_splice {
            self.no_splice = true;
            tracing::info!(path = %self.path.display(), "the file system does not take splice: output is written (a daemon killed between a write and its taking may write a chunk twice)");
        }
        refused
    }

    /// Moves what `pipe` holds, up to `max` bytes, into the file in one `splice`: taken from the
    /// pipe and written by the same call, so a daemon killed at any instant neither loses nor
    /// doubles a byte. `None` when this file does not take bytes so (see
    /// [`LogFile::spliced`]) or the bytes might pass the size limit (rotation cuts at a line
    /// end, which needs them seen: [`peek`] and [`LogFile::take`]). `Ok(0)`: the pipe is closed
    /// and empty.
    fn splice_from(&mut self, pipe: BorrowedFd<'_>, max: usize) -> Option<io::Result<usize>> {
        if !self.spliced() {
            return None;
        }
        if let Err(e) = self.at_end() {
            return Some(Err(e));
        }
        let file = self.file.as_ref()?;
        if self.max_size.saturating_sub(self.size) < max as u64 {
            return None;
        }
        match splice(pipe, None, file, None, max, SpliceFFlags::SPLICE_F_NONBLOCK) {
            Ok(n) => {
                self.size += n as u64;
                Some(Ok(n))
            }
            // Before anything was taken: the caller peeks and writes instead.
            Err(e) if self.refuses_splice(e) => None,
            Err(e) => Some(Err(e.into())),
        }
    }

    /// Moves the first `bytes.len()` bytes of `pipe` — `bytes` is what [`peek`] saw there —
    /// into the file, rotating as [`LogFile::write`] does. Into one of herd's own files the
    /// kernel moves them (`splice`: see [`LogFile::splice_from`]); into any other they are
    /// written, then taken from the pipe. Whatever could not be written is taken and dropped
    /// all the same: a failing file never blocks the app.
    ///
    /// # Errors
    /// When writing or rotating fails (the bytes not written are dropped).
    pub fn take(&mut self, pipe: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
        let mut taken = 0;
        let r = if self.spliced() {
            self.put(bytes, |file, piece| {
                let mut left = piece.len();
                while left > 0 {
                    match splice(
                        pipe,
                        None,
                        &*file,
                        None,
                        left,
                        SpliceFFlags::SPLICE_F_NONBLOCK,
                    ) {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(n) => {
                            left = left.saturating_sub(n);
                            taken += n;
                        }
                        Err(Errno::EINTR) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })
        } else {
            self.write(bytes)
        };
        let r = match r {
            // The file system refused: the rest is written instead.
            Err(e)
                if e.raw_os_error()
                    .is_some_and(|n| self.refuses_splice(Errno::from_raw(n))) =>
            {
                self.write(bytes.get(taken..).unwrap_or_default())
            }
            r => r,
        };
        // What was peeked is in the pipe still (herd alone reads it), whatever the file did.
        let left = bytes.len().saturating_sub(taken);
        let drained = drop_from(pipe, left);
        r.and(drained)
    }

    /// Finds the end of one of herd's own files again before a write: someone (`logrotate`'s
    /// `copytruncate`) may have truncated it.
    fn at_end(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.as_mut().filter(|_| self.regular && !self.named) {
            self.size = file.seek(SeekFrom::End(0))?;
        }
        Ok(())
    }

    /// Puts `bytes` into the file through `put`, rotating first where they would pass the size
    /// limit: a file never passes max_size, a large write is split at a line end where one
    /// fits.
    fn put(
        &mut self,
        mut bytes: &[u8],
        mut put: impl FnMut(&mut File, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.at_end()?;
        while !bytes.is_empty() {
            let Some(file) = self.file.as_mut() else {
                return Ok(());
            };
            let room = self.max_size.saturating_sub(self.size) as usize;
            if bytes.len() <= room || !self.regular {
                put(file, bytes)?;
                self.size += bytes.len() as u64;
                return Ok(());
            }
            let cut = bytes
                .get(..room)
                .and_then(|head| head.iter().rposition(|&b| b == b'\n'))
                .map(|i| i + 1)
                .or((self.size == 0).then_some(room))
                .unwrap_or(0);
            // `cut` is at most `room`, below `bytes.len()`.
            let (now, rest) = bytes.split_at_checked(cut).unwrap_or((bytes, &[]));
            put(file, now)?;
            self.size += now.len() as u64;
            bytes = rest;
            self.rotate()?;
        }
        Ok(())
    }

    /// Opens the file again at its path (after logrotate moved it, `SIGHUP`/`herd reloadLogs`).
    ///
    /// # Errors
    /// When the file cannot be opened; the old one is kept.
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            return Ok(());
        }
        let file = if self.named {
            open_named(&self.path)?
        } else {
            open_own(&self.path)?
        };
        let meta = file.metadata()?;
        self.size = meta.len();
        self.regular = meta.is_file();
        self.file = Some(file);
        Ok(())
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether nothing is written (`/dev/null`, `disable_logs`, a file that could not be
    /// opened).
    pub fn is_discarded(&self) -> bool {
        self.file.is_none()
    }

    /// Empties the file and removes its rotated files (`herd flush`).
    ///
    /// # Errors
    /// When the file cannot be truncated.
    pub fn truncate(&mut self) -> io::Result<()> {
        let Some(file) = self.file.as_mut().filter(|_| self.regular) else {
            return Ok(());
        };
        for n in 1..=self.keep {
            let _ = std::fs::remove_file(format!("{}.{n}", self.path.display()));
        }
        file.set_len(0)?;
        self.size = 0;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        if self.keep == 0 {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = Some(if self.named {
            open_named(&self.path)?
        } else {
            open_own(&self.path)?
        });
        self.size = 0;
        Ok(())
    }
}

/// Opens one of herd's own logs for writing at its end ([`LogFile::open`]): created 0600, and
/// never through a symbolic link (a link in `logs/` would let whoever made it point herd's
/// writes at another file).
fn open_own(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} is a symbolic link, which herd does not follow; remove it",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })
}

/// Opens a file a user named for appending: its folder made if missing (as PM2 does),
/// symbolic links followed.
fn open_named(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Counts a log write that failed (a full disk drops the output, never stops an app) and says
/// so once per failing stretch, and once when writes work again.
fn count_write(path: &Path, len: usize, r: io::Result<()>) {
    use crate::health::APP_LOGS;
    match r {
        Ok(()) => {
            if APP_LOGS.succeeded() {
                tracing::info!("instance logs are written again");
            }
        }
        Err(e) => {
            if APP_LOGS.failed(len, &e) {
                tracing::warn!(
                    path = %path.display(),
                    "cannot write instance log: {e}; output is dropped (and counted) until writes work again"
                );
            }
        }
    }
}

/// Where one stream of one process goes.
#[derive(Debug, Clone)]
pub struct PumpTarget {
    /// App name.
    pub app: Arc<str>,
    /// Instance number.
    pub instance: u32,
    /// Which stream.
    pub stream: LogStream,
    /// The slot's file.
    pub file: SharedLog,
    /// A file that gets both streams too (PM2's `log_file`).
    pub also: Option<SharedLog>,
    /// How lines are written.
    pub format: Arc<LineFormat>,
    /// Bytes go to the file only as whole lines: the file is shared (merged instances, both
    /// streams) or lines are formatted.
    pub whole_lines: bool,
    /// Followers.
    pub bus: LogBus,
    /// The pipe's state, shared so a daemon update can carry it over.
    pub state: Arc<PumpState>,
}

/// What a pump holds, seen from the supervisor.
#[derive(Debug)]
pub struct PumpState {
    /// The pipe's read end (owned by the pump while it runs).
    pub fd: std::os::fd::RawFd,
    /// The line in progress.
    pub partial: Mutex<Vec<u8>>,
    /// The pump has ended and closed the pipe.
    pub done: std::sync::atomic::AtomicBool,
}

impl PumpState {
    /// The state of a new pump of `fd`, starting with `partial`.
    pub fn new(fd: std::os::fd::RawFd, partial: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            fd,
            partial: Mutex::new(partial),
            done: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Longest partial line kept while waiting for its newline; longer ones are cut.
const MAX_PARTIAL: usize = 64 * 1024;

/// Most bytes a pump reads at a time.
const CHUNK: usize = 16 * 1024;

/// Most bytes a pump moves at a time into its file by `splice` (all a pipe holds).
const SPLICED: usize = 1024 * 1024;

/// Copies a process's pipe to its log until the pipe closes (the process and all its children
/// exited or closed it).
///
/// Bytes leave the pipe only once they are in the file, so a daemon killed at any instant
/// (the keeper starts the next one, which reads the same pipe) loses none. Into herd's own
/// files (`logs/<app>-<i>.out|err`, unformatted) the kernel moves them in one call and none is
/// doubled either; into formatted or shared files they are written, then taken, and a kill
/// between those two calls writes that chunk again (docs/keeper.md).
pub async fn pump(pipe: tokio::net::unix::pipe::Receiver, t: PumpTarget) {
    let mut buf = vec![0u8; CHUNK];
    // Unformatted into the slot's own file: bytes go as they come, lines are made for
    // followers only (`heard`: their line in progress).
    let raw = !t.whole_lines && t.also.is_none();
    let mut heard = Vec::new();
    let mut held = 0;
    if raw {
        // A line in progress handed over by a daemon that made whole lines.
        let partial = std::mem::take(&mut *lock(&t.state.partial));
        write_log(&t, &partial);
    }
    loop {
        if let Err(e) = pipe.readable().await {
            tracing::warn!(app = %t.app, instance = t.instance, "log pipe failed: {e}");
            break;
        }
        let step = pipe.try_io(|| {
            if raw {
                raw_step(pipe.as_fd(), &t, &mut buf, &mut heard)
            } else {
                line_step(pipe.as_fd(), &t, &mut buf, &mut held)
            }
        });
        match step {
            Ok(true) => {}
            Ok(false) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                tracing::warn!(app = %t.app, instance = t.instance, "log pipe read failed: {e}");
                break;
            }
        }
    }
    drop(pipe);
    t.state
        .done
        .store(true, std::sync::atomic::Ordering::Release);
    let followers = t.bus.receiver_count() > 0;
    if followers && !heard.is_empty() {
        emit_line(&t, &heard, true, &mut Vec::new());
    }
    let partial = std::mem::take(&mut *lock(&t.state.partial));
    if !partial.is_empty() {
        let mut out = Vec::new();
        emit_line(&t, &partial, followers, &mut out);
        write_log(&t, &out);
    }
}

/// Its holders only append, drain and take bytes, which cannot leave it half-updated: a
/// poisoned lock is taken as it is.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One move of unformatted output into the slot's own file. `Ok(false)`: the pipe has ended.
fn raw_step(
    pipe: BorrowedFd<'_>,
    t: &PumpTarget,
    buf: &mut [u8],
    heard: &mut Vec<u8>,
) -> io::Result<bool> {
    let followers = t.bus.receiver_count() > 0;
    if !followers {
        let mut file = lock(&t.file);
        match file.splice_from(pipe, SPLICED) {
            Some(Ok(n)) => return Ok(n > 0),
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Some(Err(e)) => {
                // The file failed (a full disk): the output is dropped and counted.
                count_write(&file.path, buf.len(), Err(e));
                drop(file);
                return read(pipe, buf).map(|n| n > 0);
            }
            None => {}
        }
    }
    let (n, seen) = match peek(pipe, buf) {
        Some(n) => (n?, true),
        None => (read(pipe, buf)?, false),
    };
    let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
        return Ok(false);
    };
    if followers {
        heard.extend_from_slice(chunk);
        emit_complete_lines(t, heard, true, &mut Vec::new());
        if heard.len() > MAX_PARTIAL {
            emit_line(t, heard, true, &mut Vec::new());
            heard.clear();
        }
    }
    if seen {
        let mut file = lock(&t.file);
        let r = file.take(pipe, chunk);
        count_write(&file.path, chunk.len(), r);
    } else {
        write_log(t, chunk);
    }
    Ok(true)
}

/// Longest start of a line left in the pipe until its end comes (longer ones are taken and
/// kept by the pump, up to [`MAX_PARTIAL`]).
const HOLD: usize = 8 * 1024;

/// One read of output that goes to its files as whole, possibly formatted, lines.
/// `Ok(false)`: the pipe has ended.
///
/// The start of a line whose end has not come yet stays in the pipe (`held`: how many bytes),
/// so a daemon killed meanwhile loses nothing of it; the pump waits for more bytes or the
/// pipe's end.
fn line_step(
    pipe: BorrowedFd<'_>,
    t: &PumpTarget,
    buf: &mut [u8],
    held: &mut usize,
) -> io::Result<bool> {
    let (n, seen) = match peek(pipe, buf) {
        Some(n) => (n?, true),
        None => (read(pipe, buf)?, false),
    };
    let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
        return Ok(false);
    };
    // Nothing came after the held start of a line: wait for more, unless the pipe has no
    // writer left, when that start is the last line.
    let ended = seen && n == *held && hung_up(pipe);
    if seen && n == *held && !ended {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let followers = t.bus.receiver_count() > 0;
    let mut partial = lock(&t.state.partial);
    let kept_before = partial.len();
    partial.extend_from_slice(chunk);
    let mut out = Vec::with_capacity(partial.len() + 64);
    let complete = emit_complete_lines(t, &mut partial, followers, &mut out);
    let mut take = n;
    *held = 0;
    if ended || partial.len() > MAX_PARTIAL {
        let line = std::mem::take(&mut *partial);
        emit_line(t, &line, followers, &mut out);
    } else if seen && kept_before == 0 && partial.len() <= HOLD {
        // The line in progress stays in the pipe.
        take = complete;
        *held = partial.len();
        partial.clear();
    }
    drop(partial);
    write_log(t, &out);
    if seen {
        // Written: now taken from the pipe.
        drop_from(pipe, take)?;
    }
    Ok(true)
}

/// Whether no process holds the pipe's write end any more.
fn hung_up(pipe: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pipe, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds
            .first()
            .and_then(PollFd::revents)
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
}

thread_local! {
    /// This thread's pipe that [`peek`] copies a pump's bytes into.
    static PEEK: std::cell::RefCell<Option<(OwnedFd, OwnedFd)>> =
        const { std::cell::RefCell::new(None) };
}

/// Copies up to `buf.len()` bytes from the head of `pipe` into `buf` without taking them
/// (`tee` into a pipe of this thread, read back at once). `Ok(0)`: the pipe is closed and
/// empty. `None` when no pipe of this thread could be made (the caller reads and takes).
fn peek(pipe: BorrowedFd<'_>, buf: &mut [u8]) -> Option<io::Result<usize>> {
    PEEK.with(|cell| {
        let mut cell = cell.try_borrow_mut().ok()?;
        if cell.is_none() {
            *cell =
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                    .inspect_err(|e| tracing::warn!("no pipe to read logs through: {e}"))
                    .ok();
        }
        let (r, w) = cell.as_ref()?;
        let n = match tee(pipe, w, buf.len(), SpliceFFlags::SPLICE_F_NONBLOCK) {
            Ok(n) => n,
            Err(e) => return Some(Err(e.into())),
        };
        let mut got = 0;
        while got < n {
            let Some(rest) = buf.get_mut(got..n) else {
                break;
            };
            match nix::unistd::read(r, rest) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    // Never leave bytes behind for the next pump of this thread.
                    *cell = None;
                    return Some(Err(e.into()));
                }
            }
        }
        Some(Ok(got))
    })
}

/// Reads (and so takes) what `pipe` holds into `buf`.
fn read(pipe: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(pipe, buf) {
            Err(Errno::EINTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Takes the first `n` bytes of `pipe` (already written elsewhere, or dropped).
fn drop_from(pipe: BorrowedFd<'_>, mut n: usize) -> io::Result<()> {
    let mut sink = [0u8; 4096];
    while n > 0 {
        let want = n.min(sink.len());
        match read(pipe, sink.get_mut(..want).unwrap_or_default())? {
            0 => break,
            k => n = n.saturating_sub(k),
        }
    }
    Ok(())
}

/// Emits the complete lines at the start of `pending` (up to and with its last newline) and
/// removes them; returns how many bytes they took.
fn emit_complete_lines(
    t: &PumpTarget,
    pending: &mut Vec<u8>,
    followers: bool,
    out: &mut Vec<u8>,
) -> usize {
    let complete = pending
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    for line in pending
        .get(..complete)
        .unwrap_or_default()
        .split_inclusive(|&b| b == b'\n')
    {
        emit_line(t, line.strip_suffix(b"\n").unwrap_or(line), followers, out);
    }
    pending.drain(..complete);
    complete
}

fn emit_line(t: &PumpTarget, line: &[u8], followers: bool, out: &mut Vec<u8>) {
    t.format.write(
        out,
        line,
        Origin {
            app: &t.app,
            instance: t.instance,
            stream: t.stream,
        },
    );
    if followers {
        let _ = t.bus.send(Arc::new(LogEvent {
            app: t.app.clone(),
            instance: t.instance,
            stream: t.stream,
            line: String::from_utf8_lossy(line).into_owned(),
        }));
    }
}

/// Writes `bytes` to the target's file and its combined file. Each is locked for one whole
/// write, so processes that share a file (merged instances, both streams) never split each
/// other's lines.
fn write_log(t: &PumpTarget, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let also = t.also.as_ref().filter(|a| !Arc::ptr_eq(a, &t.file));
    for file in std::iter::once(&t.file).chain(also) {
        let Ok(mut f) = file.lock() else {
            continue;
        };
        let r = f.write(bytes);
        count_write(&f.path, bytes.len(), r);
    }
}

/// The last `n` lines of a log file and, if it holds fewer, of its first rotated file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    if n == 0 {
        return Vec::new();
    }
    let mut lines = tail_one(path, n);
    if lines.len() < n {
        let older = PathBuf::from(format!("{}.1", path.display()));
        let mut before = tail_one(&older, n - lines.len());
        before.append(&mut lines);
        lines = before;
    }
    lines
}

fn tail_one(path: &Path, n: usize) -> Vec<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // A symbolic link in `logs/` is not shown: it could point anywhere.
    let Ok(mut f) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
    else {
        return Vec::new();
    };
    let Ok(len) = f.seek(SeekFrom::End(0)) else {
        return Vec::new();
    };
    // Read backwards in blocks until enough newlines are seen.
    let mut pos = len;
    let mut data: Vec<u8> = Vec::new();
    while pos > 0 {
        let step = pos.min(64 * 1024);
        pos -= step;
        let mut block = vec![0u8; step as usize];
        if f.seek(SeekFrom::Start(pos)).is_err() || f.read_exact(&mut block).is_err() {
            break;
        }
        block.extend_from_slice(&data);
        data = block;
        if data.iter().filter(|&&b| b == b'\n').count() > n {
            break;
        }
    }
    let text = String::from_utf8_lossy(&data);
    let all: Vec<&str> = text.lines().collect();
    all.iter()
        .skip(all.len().saturating_sub(n))
        .map(|s| s.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-0.out");
        let spec = LogSpec {
            max_size: 1024,
            keep: 2,
            ..LogSpec::default()
        };
        let mut f = LogFile::open(path.clone(), &spec).unwrap();
        let line = [b'x'; 99];
        for _ in 0..40 {
            f.write(&line).unwrap();
            f.write(b"\n").unwrap();
        }
        f.write(&[b'y'; 5000]).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        assert!(dir.path().join("a-0.out.1").exists());
        assert!(dir.path().join("a-0.out.2").exists());
        assert!(!dir.path().join("a-0.out.3").exists());
    }

    #[test]
    fn a_named_file_gets_its_folder_made_rotates_and_reopens_after_a_move() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made/by/herd/out.log");
        let spec = LogSpec {
            max_size: 1024,
            keep: 1,
            ..LogSpec::default()
        };
        let mut f = LogFile::open_named(path.clone(), &spec).unwrap();
        for _ in 0..30 {
            f.write(&[b'x'; 99]).unwrap();
            f.write(b"\n").unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        assert!(dir.path().join("made/by/herd/out.log.1").exists());
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        f.reopen().unwrap();
        f.write(b"fresh\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "fresh\n");
        f.truncate().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert!(!dir.path().join("made/by/herd/out.log.1").exists());
    }

    /// A pump stopped at any await (as a daemon killed between two moves) and a new one on the
    /// same pipe: every byte reaches the file once, a line begun before the stop included.
    #[test]
    fn a_pump_stopped_mid_line_and_the_next_one_lose_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for whole_lines in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a-0.out");
            let spec = LogSpec::default();
            let file: SharedLog = Arc::new(Mutex::new(LogFile::open(path.clone(), &spec).unwrap()));
            let (bus, _) = broadcast::channel(16);
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
            let target = |fd: &OwnedFd| PumpTarget {
                app: Arc::from("a"),
                instance: 0,
                stream: LogStream::Out,
                file: file.clone(),
                also: None,
                format: Arc::new(LineFormat::Raw),
                whole_lines,
                bus: bus.clone(),
                state: PumpState::new(std::os::fd::AsRawFd::as_raw_fd(fd), Vec::new()),
            };
            let settle = || std::thread::sleep(std::time::Duration::from_millis(50));
            rt.block_on(async {
                let first = r.try_clone().unwrap();
                let t = target(&first);
                let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(first).unwrap();
                let pump = tokio::spawn(pump(rx, t));
                nix::unistd::write(&w, b"one\ntw").unwrap();
                for _ in 0..5 {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                pump.abort();
                let _ = pump.await;
            });
            settle();
            let written = std::fs::read_to_string(&path).unwrap();
            match whole_lines {
                // The line in progress stayed in the pipe.
                true => assert_eq!(written, "one\n"),
                false => assert_eq!(written, "one\ntw"),
            }
            rt.block_on(async {
                let t = target(&r);
                let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r).unwrap();
                let pump = tokio::spawn(pump(rx, t));
                nix::unistd::write(&w, b"o\nthree").unwrap();
                drop(w);
                tokio::time::timeout(std::time::Duration::from_secs(5), pump)
                    .await
                    .expect("the pump ends with its pipe")
                    .unwrap();
            });
            let want = match whole_lines {
                true => "one\ntwo\nthree\n",
                false => "one\ntwo\nthree",
            };
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                want,
                "whole lines: {whole_lines}"
            );
        }
    }

    #[test]
    fn tail_reads_last_lines_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a-0.out");
        std::fs::write(dir.path().join("a-0.out.1"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(&path, "four\nfive\n").unwrap();
        assert_eq!(tail(&path, 3), vec!["three", "four", "five"]);
        assert_eq!(tail(&path, 1), vec!["five"]);
    }
}
