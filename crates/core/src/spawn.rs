//! Starting an instance process: fork, set up the child, exec.
//!
//! This is the one module of herd with `unsafe` process code. Everything the child needs is
//! prepared before `fork`; between `fork` and `exec` the child calls only async-signal-safe
//! functions (no allocation, no locks), as a forked copy of a threaded process must.
//!
//! The child:
//! - moves itself into its cgroup when it has one (writing `0` to the leaf's `cgroup.procs`,
//!   through an fd opened before `fork`), so everything it ever starts stays contained;
//! - becomes a session and process-group leader (`setsid`), so a signal to the group reaches
//!   everything it starts;
//! - takes the app's user, when it has one: supplementary groups, group, then user
//!   (`setgroups`, `setgid`, `setuid`; the ids are resolved before `fork`, [`crate::user`]),
//!   while it is still in the daemon's cgroup and before anything it opens as that user;
//! - gets `SIGKILL` when the daemon dies (`PR_SET_PDEATHSIG`, set after the user switch,
//!   which clears it), so no instance outlives it — unless a keeper adopts the instances
//!   when the daemon dies (`outlive_daemon`, docs/keeper.md);
//! - gets the listening sockets as fds `3..3+n`, then any extra fds, and `LISTEN_PID` set to
//!   its own pid (written into a buffer prepared before `fork`), as socket activation asks;
//! - has default signal dispositions and an empty signal mask, whatever the daemon had.
//!
//! If `exec` fails, the child reports the error through a close-on-exec pipe, so the caller
//! gets "not found" or "permission denied" instead of an instance that dies with code 127.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What to start.
#[derive(Debug)]
pub struct SpawnRequest<'a> {
    /// Path of the executable (absolute, or relative to the daemon's cwd).
    pub program: PathBuf,
    /// `argv`, including `argv[0]`.
    pub argv: Vec<String>,
    /// The whole environment of the child. `LISTEN_PID` is added when `fds` is not empty.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Listening sockets, placed at fds 3, 4, … in order.
    pub listen_fds: Vec<BorrowedFd<'a>>,
    /// Further fds, placed right after the listening sockets.
    pub extra_fds: Vec<BorrowedFd<'a>>,
    /// Becomes fd 0.
    pub stdin: OwnedFd,
    /// Becomes fd 1.
    pub stdout: OwnedFd,
    /// Becomes fd 2.
    pub stderr: OwnedFd,
    /// The `cgroup.procs` file of the cgroup the child joins before anything else, if any.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    /// That cgroup's directory: the child is created in it (`clone3` with
    /// `CLONE_INTO_CGROUP`, Linux 5.7+), which spares the migration a write to `cgroup.procs`
    /// costs (~18 ms measured here: the kernel waits for an RCU grace period). Where the kernel
    /// refuses, the child joins through `cgroup_procs`.
    pub cgroup_dir: Option<BorrowedFd<'a>>,
    /// The user the child switches to before it enters `cwd` and executes, if any.
    pub credentials: Option<Credentials>,
    /// The child outlives the daemon (a keeper adopts it, docs/keeper.md): no parent-death
    /// signal.
    pub outlive_daemon: bool,
}

/// The ids a child takes ([`crate::user::RunAs`], resolved before `fork`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id (`setuid`).
    pub uid: u32,
    /// Primary group id (`setgid`).
    pub gid: u32,
    /// Supplementary groups (`setgroups`).
    pub groups: Vec<u32>,
}

/// `struct clone_args` of `clone3(2)`.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks a child into the cgroup `dir`: like `fork()` (0 in the child, the pid in the parent),
/// or the error, with which the caller falls back to `fork()`.
///
/// # Safety
/// As `fork()`: the child may only call async-signal-safe functions until it executes. The
/// raw system call skips glibc's fork handlers, which the child does not need for that.
unsafe fn fork_into(dir: RawFd) -> Result<libc::pid_t, io::Error> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid clone_args of the size given; see the function's contract.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as libc::pid_t)
    }
}

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `fork` itself failed (out of processes or memory).
    #[error("cannot create a process: {0}")]
    Fork(io::Error),
    /// The working directory could not be entered.
    #[error("cannot enter working directory {path}: {source}{hint}")]
    Cwd {
        /// The directory.
        path: String,
        /// Why.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// The child could not take the app's user and group.
    #[error("cannot switch to uid {uid}, gid {gid}: {source}; the daemon must run as root to start apps as another user")]
    User {
        /// The user id.
        uid: u32,
        /// The group id.
        gid: u32,
        /// Why.
        source: io::Error,
    },
    /// `exec` failed.
    #[error("cannot run {path}: {source}{hint}")]
    Exec {
        /// The program.
        path: String,
        /// Why.
        source: io::Error,
        /// What to do about it.
        hint: &'static str,
    },
    /// An argument or variable held a NUL byte.
    #[error("an argument or environment variable contains a NUL byte")]
    Nul,
}

const STAGE_CWD: u32 = 1;
const STAGE_EXEC: u32 = 2;
const STAGE_SETUP: u32 = 3;
const STAGE_USER: u32 = 4;

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// Starts the process and returns its pid once `exec` has succeeded.
///
/// # Errors
/// [`SpawnError`], worded for the user.
pub fn spawn(req: SpawnRequest<'_>) -> Result<u32, SpawnError> {
    let program = cstring(req.program.as_os_str())?;
    let argv: Vec<CString> = req
        .argv
        .iter()
        .map(|a| cstring(OsStr::new(a)))
        .collect::<Result<_, _>>()?;
    let mut env: Vec<Vec<u8>> = Vec::with_capacity(req.env.len() + 1);
    for (k, v) in &req.env {
        if k == "LISTEN_PID" {
            continue;
        }
        let mut e = Vec::with_capacity(k.len() + v.len() + 2);
        e.extend_from_slice(k.as_bytes());
        e.push(b'=');
        e.extend_from_slice(v.as_bytes());
        if e.contains(&0) {
            return Err(SpawnError::Nul);
        }
        e.push(0);
        env.push(e);
    }
    // Room for the pid, written by the child into its own copy of this buffer.
    let listen_pid_slot = (!req.listen_fds.is_empty()).then(|| {
        let mut e = LISTEN_PID_PREFIX.to_vec();
        e.resize(LISTEN_PID_PREFIX.len() + 12, 0);
        env.push(e);
        env.len() - 1
    });
    let cwd = cstring(req.cwd.as_os_str())?;
    // The groups as the kernel takes them, prepared here: the child must not allocate.
    let groups: Vec<libc::gid_t> = req
        .credentials
        .as_ref()
        .map(|c| c.groups.clone())
        .unwrap_or_default();
    let ids = req.credentials.as_ref().map(|c| (c.uid, c.gid));

    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*mut libc::c_char> = env
        .iter_mut()
        .map(|e| e.as_mut_ptr().cast::<libc::c_char>())
        .collect();
    env_ptrs.push(std::ptr::null_mut());
    let listen_pid_buf: *mut u8 = listen_pid_slot
        .and_then(|i| env_ptrs.get(i))
        .map_or(std::ptr::null_mut(), |e| e.cast::<u8>());

    // fd plan. Targets are 0..=2, then 3.. for listeners and extras.
    let mut plan: Vec<FdMove> = vec![
        FdMove::new(req.stdin.as_raw_fd(), 0),
        FdMove::new(req.stdout.as_raw_fd(), 1),
        FdMove::new(req.stderr.as_raw_fd(), 2),
    ];
    for (i, fd) in req
        .listen_fds
        .iter()
        .chain(req.extra_fds.iter())
        .enumerate()
    {
        plan.push(FdMove::new(fd.as_raw_fd(), 3 + i as RawFd));
    }
    let high_water = 3 + plan.len() as RawFd;

    let (err_read, err_write) = pipe_cloexec().map_err(SpawnError::Fork)?;
    let parent_pid = std::process::id() as libc::pid_t;

    // The child is created in its cgroup where the kernel can; otherwise it joins it itself.
    // SAFETY (both): after fork the child runs only `child_after_fork`, which uses
    // async-signal-safe calls on memory prepared above and never returns.
    let into = req
        .cgroup_dir
        .and_then(|dir| unsafe { fork_into(dir.as_raw_fd()) }.ok());
    let pid = match into {
        Some(pid) => pid,
        None => unsafe { libc::fork() },
    };
    if pid < 0 {
        return Err(SpawnError::Fork(io::Error::last_os_error()));
    }
    let cgroup_fd = match into {
        Some(_) => -1,
        None => req.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
    };
    if pid == 0 {
        // SAFETY: see above; every pointer is valid in the child's copy of the address space.
        unsafe {
            child_after_fork(ChildPlan {
                parent_pid,
                outlive_daemon: req.outlive_daemon,
                program: program.as_ptr(),
                argv: argv_ptrs.as_ptr(),
                envp: env_ptrs.as_ptr(),
                cwd: cwd.as_ptr(),
                plan: &mut plan,
                high_water,
                listen_pid_buf,
                err_fd: err_write.as_raw_fd(),
                cgroup_fd,
                ids,
                groups: &groups,
            })
        }
    }
    drop(err_write);
    drop(req.stdin);
    drop(req.stdout);
    drop(req.stderr);

    let mut report = [0u8; 8];
    let n = read_full(&err_read, &mut report);
    if n == 8 {
        let [s0, s1, s2, s3, e0, e1, e2, e3] = report;
        let stage = u32::from_ne_bytes([s0, s1, s2, s3]);
        let errno = i32::from_ne_bytes([e0, e1, e2, e3]);
        let source = io::Error::from_raw_os_error(errno);
        // The child has exited with 127; the reaper collects it.
        return Err(match stage {
            STAGE_CWD => SpawnError::Cwd {
                path: req.cwd.display().to_string(),
                hint: match (errno, ids) {
                    (libc::EACCES, Some(_)) => "; the app runs as another user (--uid), who may not enter it: give that user access (chmod, chown) or choose another --cwd",
                    _ => "",
                },
                source,
            },
            STAGE_USER => {
                let (uid, gid) = ids.unwrap_or_default();
                SpawnError::User { uid, gid, source }
            }
            STAGE_EXEC => SpawnError::Exec {
                path: req.program.display().to_string(),
                hint: match errno {
                    libc::EACCES if ids.is_some() => "; the app runs as another user (--uid), who may not read or run it: give that user access (chmod, chown) to it and its folders",
                    libc::ENOENT => "; check the path, or the interpreter named in its #! line",
                    libc::EACCES => "; make it executable (chmod +x) or give an interpreter",
                    libc::ENOEXEC => "; it is not a program: give an interpreter (--interpreter)",
                    _ => "",
                },
                source,
            },
            _ => SpawnError::Fork(source),
        });
    }
    Ok(pid as u32)
}

struct ChildPlan<'a> {
    parent_pid: libc::pid_t,
    /// No parent-death signal (a keeper adopts the child when the daemon dies).
    outlive_daemon: bool,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *mut libc::c_char,
    cwd: *const libc::c_char,
    plan: &'a mut [FdMove],
    high_water: RawFd,
    listen_pid_buf: *mut u8,
    err_fd: RawFd,
    /// `cgroup.procs` of the child's cgroup, or -1.
    cgroup_fd: RawFd,
    /// The user and group to switch to, if any.
    ids: Option<(u32, u32)>,
    /// The supplementary groups to take with them.
    groups: &'a [libc::gid_t],
}

/// One fd the child gets: `source` (the daemon's) becomes `target`, by way of a copy above
/// every target (`scratch`, made in the child), so no move overwrites a source still needed.
#[derive(Clone, Copy)]
struct FdMove {
    source: RawFd,
    target: RawFd,
    scratch: RawFd,
}

impl FdMove {
    fn new(source: RawFd, target: RawFd) -> Self {
        Self {
            source,
            target,
            scratch: -1,
        }
    }
}

/// Runs in the forked child. Only async-signal-safe calls; never returns.
unsafe fn child_after_fork(p: ChildPlan<'_>) -> ! {
    // Where failures are reported; moved above every fd target below, and kept out of the
    // close_range (it closes at exec).
    let err_fd = std::cell::Cell::new(p.err_fd);
    let fail = |stage: u32| -> ! {
        let errno = *libc::__errno_location();
        let [s0, s1, s2, s3] = stage.to_ne_bytes();
        let [e0, e1, e2, e3] = errno.to_ne_bytes();
        let msg = [s0, s1, s2, s3, e0, e1, e2, e3];
        libc::write(err_fd.get(), msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    };

    // Into the cgroup first, so nothing the child does later can leave it. "0" means the
    // writer itself. A refusal is not fatal: the process group still holds, and the parent
    // checks the cgroup's members after exec.
    if p.cgroup_fd >= 0 {
        libc::write(p.cgroup_fd, b"0".as_ptr().cast(), 1);
    }

    // Signal state: empty mask, default dispositions (the daemon ignores SIGPIPE, and ignored
    // signals survive exec).
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for sig in 1..32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }

    if libc::setsid() < 0 {
        fail(STAGE_SETUP);
    }
    // The app's user: groups first, then the group, then the user (after setuid the child
    // may no longer change the other two). Still in the daemon's cgroup join above, which
    // the user could not have written; before any file the app opens, the working directory
    // included, so those are checked as the user.
    if let Some((uid, gid)) = p.ids {
        if libc::setgroups(p.groups.len(), p.groups.as_ptr()) < 0
            || libc::setgid(gid) < 0
            || libc::setuid(uid) < 0
        {
            fail(STAGE_USER);
        }
    }
    // After the user switch: a change of credentials clears the parent-death signal.
    if !p.outlive_daemon {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // The daemon may have died between fork and prctl; then nobody would kill us.
        if libc::getppid() != p.parent_pid {
            libc::_exit(1);
        }
    }

    // Move every source above all targets first, so no dup2 overwrites a source still needed
    // (the report pipe too, so that no dup2 closes it).
    let moved = libc::fcntl(err_fd.get(), libc::F_DUPFD_CLOEXEC, p.high_water);
    if moved < 0 {
        fail(STAGE_SETUP);
    }
    err_fd.set(moved);
    for m in p.plan.iter_mut() {
        m.scratch = libc::fcntl(m.source, libc::F_DUPFD_CLOEXEC, p.high_water);
        if m.scratch < 0 {
            fail(STAGE_SETUP);
        }
    }
    for m in p.plan.iter() {
        // dup2 clears FD_CLOEXEC on the target, so these survive exec; the scratch copies,
        // and every other fd of the daemon (all opened close-on-exec), do not.
        if libc::dup2(m.scratch, m.target) < 0 {
            fail(STAGE_SETUP);
        }
    }

    // Nothing else crosses exec: fds the daemon itself inherited without close-on-exec (from
    // the shell that first ran herd) would otherwise leak into every instance. The report
    // pipe stays open (close-on-exec) so that a failing chdir or exec is still reported:
    // closing it here lost those reports (the child exited 127 without a word).
    if moved > p.high_water {
        libc::syscall(
            libc::SYS_close_range,
            p.high_water as libc::c_uint,
            (moved - 1) as libc::c_uint,
            0 as libc::c_uint,
        );
    }
    libc::syscall(
        libc::SYS_close_range,
        (moved + 1) as libc::c_uint,
        libc::c_uint::MAX,
        0 as libc::c_uint,
    );

    if libc::chdir(p.cwd) < 0 {
        fail(STAGE_CWD);
    }

    if !p.listen_pid_buf.is_null() {
        write_decimal(
            p.listen_pid_buf.add(LISTEN_PID_PREFIX.len()),
            libc::getpid() as u32,
        );
    }

    libc::execve(p.program, p.argv, p.envp.cast());
    fail(STAGE_EXEC)
}

/// Writes `n` in decimal followed by NUL at `out` (at most 11 bytes).
unsafe fn write_decimal(out: *mut u8, mut n: u32) {
    // Filled from its end; `u32::MAX` has 10 digits, so they always fit.
    let mut digits = [0u8; 10];
    let mut len = 0;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, &d) in digits.iter().skip(digits.len() - len).enumerate() {
        *out.add(i) = d;
    }
    *out.add(len) = 0;
}

fn cstring(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul)
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    Ok((r, w))
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match nix::unistd::read(fd, rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    got
}

/// Finds `name` on `path_var` (a `PATH` value) the way `execvp` would, or checks a path.
///
/// # Errors
/// A message naming the problem and the fix.
pub fn resolve_program(name: &str, path_var: Option<&str>, cwd: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = if Path::new(name).is_absolute() {
            PathBuf::from(name)
        } else {
            cwd.join(name)
        };
        return match std::fs::metadata(&p) {
            Err(_) => Err(format!("{} does not exist; check the path", p.display())),
            Ok(m) if m.is_dir() => Err(format!("{} is a directory, not a program", p.display())),
            Ok(_) if !is_exec(&p) => Err(format!(
                "{} is not executable; run chmod +x on it or give an interpreter (--interpreter)",
                p.display()
            )),
            Ok(_) => Ok(p),
        };
    }
    let path_var = path_var.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if is_exec(&p) {
            return Ok(p);
        }
    }
    Err(crate::runtimes::not_found(name).unwrap_or_else(|| {
        format!("{name} was not found on PATH; install it or give its full path")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        let mut buf = [0xffu8; 12];
        unsafe { write_decimal(buf.as_mut_ptr(), 4_194_304) };
        assert_eq!(&buf[..8], b"4194304\0");
        unsafe { write_decimal(buf.as_mut_ptr(), 0) };
        assert_eq!(&buf[..2], b"0\0");
    }

    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn request(cwd: &str) -> SpawnRequest<'static> {
        SpawnRequest {
            program: "/bin/true".into(),
            argv: vec!["true".into()],
            env: Vec::new(),
            cwd: cwd.into(),
            listen_fds: Vec::new(),
            extra_fds: Vec::new(),
            stdin: null(),
            stdout: null(),
            stderr: null(),
            cgroup_procs: None,
            cgroup_dir: None,
            credentials: None,
            outlive_daemon: false,
        }
    }

    /// Regression: the child closed its report pipe with every other fd before it entered
    /// the working directory and executed, so those failures came back as a silent exit 127.
    #[test]
    fn a_failing_chdir_is_reported_not_a_silent_exit() {
        let e = spawn(request("/nonexistent-herd-test")).unwrap_err();
        assert!(matches!(e, SpawnError::Cwd { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent-herd-test"), "{e}");
        let pid = spawn(request("/")).unwrap();
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid as i32), 0)
        );
    }

    #[test]
    fn resolves_on_path() {
        let sh = resolve_program("sh", Some("/nonexistent:/bin:/usr/bin"), Path::new("/")).unwrap();
        assert!(sh.ends_with("sh"));
        let err =
            resolve_program("no-such-program-herd", Some("/bin"), Path::new("/")).unwrap_err();
        assert!(err.contains("not found on PATH"));
        let err = resolve_program("./missing.py", None, Path::new("/tmp")).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
