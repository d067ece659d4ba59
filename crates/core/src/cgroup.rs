//! Containment of each instance's whole process tree in a cgroup v2, where herd may create
//! one (as root, or in a delegated subtree).
//!
//! A process group reaches only the processes that stay in it: a child that calls `setsid`,
//! double-forks or `setpgid` leaves it, survives `herd stop` and keeps serving the app's port
//! with the listening socket it inherited. A cgroup cannot be left without privilege, so herd
//! does what systemd does for a service: one cgroup per instance process, killed as a whole
//! (`cgroup.kill`, or each pid of `cgroup.procs` on kernels before 5.14), and removed once
//! empty.
//!
//! Layout: `<the daemon's own cgroup>/herd-<daemon pid>/<app>-<instance>-<seq>`. The daemon
//! stays where it was started; only instances go in the leaves. The v2 hierarchy is found
//! through `/proc/self/mountinfo` (fstype `cgroup2`, which may be systemd's `unified` mount on
//! a hybrid layout) and the daemon's place in it through `/proc/self/cgroup` (`0::/path`).
//!
//! This module owns the files under the cgroup mount; it does not own the decision of when to
//! kill (the supervisor) or the move of a child into its leaf (spawn, between fork and exec).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill as send_signal, Signal};
use nix::unistd::Pid;

/// Set `HERD_CGROUPS=off` to keep instances in process groups only.
pub const ENV_SWITCH: &str = "HERD_CGROUPS";

/// What the limitation of process groups is, for `herd describe`.
pub const PROCESS_GROUP_NOTE: &str =
    "children that call setsid escape herd stop; run as root or under a delegated cgroup";

/// The daemon's parent cgroup, under which each instance process gets a leaf.
#[derive(Debug)]
pub struct Tree {
    path: PathBuf,
    next: u64,
}

/// The v2 mount as found in `/proc/self/mountinfo`: where it is mounted, and which path of the
/// hierarchy (as seen from our cgroup namespace) is its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point, e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/unified`.
    pub point: PathBuf,
    /// The hierarchy path at that mount point, usually `/`.
    pub root: String,
}

/// Finds the first `cgroup2` mount in the text of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Option<Mount> {
    for line in text.lines() {
        // id parent major:minor root point options [optional fields...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        return Some(Mount {
            point: PathBuf::from(unescape(point)),
            root: unescape(root),
        });
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b.get(i) == Some(&b'\\') && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.extend(b.get(i));
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v2 path of our cgroup from the text of `/proc/self/cgroup` (its `0::/path` line).
pub fn parse_own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end().to_string())
        .filter(|p| p.starts_with('/'))
}

/// Where the cgroup at hierarchy path `own` is in the file system, given the v2 mount.
pub fn locate(mount: &Mount, own: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = own.strip_prefix(root)?;
    if !rel.is_empty() && !rel.starts_with('/') {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    // A path that climbs out ("/../x", from another cgroup namespace) is not ours to use.
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(if rel.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rel)
    })
}

/// A cgroup name made of what the kernel and a reader take without surprise.
fn sanitize(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() {
        "app".into()
    } else {
        s
    }
}

impl Tree {
    /// Creates (or takes back) this daemon's parent cgroup under its own cgroup.
    ///
    /// # Errors
    /// Why herd cannot contain instances in cgroups here, worded for `herd describe`.
    pub fn create() -> Result<Self, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = parse_mountinfo(&mountinfo).ok_or("no cgroup2 file system is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = parse_own_cgroup(&own).ok_or("this process has no cgroup v2 path")?;
        let dir = locate(&mount, &own).ok_or_else(|| {
            format!(
                "the daemon's cgroup {own} is outside the cgroup2 mount at {}",
                mount.point.display()
            )
        })?;
        let path = dir.join(format!("herd-{}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
        }
        let tree = Self { path, next: 0 };
        // Writing cgroup.procs is what moves a child in; a tree where that is refused is no
        // use.
        if let Err(e) = OpenOptions::new()
            .write(true)
            .open(tree.path.join("cgroup.procs"))
        {
            let why = format!("cannot write {}/cgroup.procs: {e}", tree.path.display());
            let _ = std::fs::remove_dir(&tree.path);
            return Err(why);
        }
        Ok(tree)
    }

    /// Takes over the parent cgroup an earlier daemon of this process made (`herd update`).
    pub fn adopt(path: PathBuf) -> Option<Self> {
        path.is_dir().then_some(Self { path, next: 0 })
    }

    /// The parent cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a leaf for one process of `app`'s instance `instance`.
    ///
    /// # Errors
    /// When the directory cannot be made.
    pub fn new_leaf(&mut self, app: &str, instance: u32) -> io::Result<PathBuf> {
        let app = sanitize(app);
        // After a takeover the sequence starts again; names already in use are skipped.
        for _ in 0..1000 {
            self.next += 1;
            let leaf = self.path.join(format!("{app}-{instance}-{}", self.next));
            match std::fs::create_dir(&leaf) {
                Ok(()) => return Ok(leaf),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::from(io::ErrorKind::AlreadyExists))
    }

    /// Kills everything in every leaf, removes the leaves and the parent (at shutdown, or for
    /// what a crashed daemon left). Waits up to `limit` for the processes to go.
    pub fn remove_all(&self, limit: Duration) {
        remove_tree(&self.path, limit);
    }
}

/// Kills and removes the parent cgroup at `path` with all its leaves; see
/// [`Tree::remove_all`]. Returns how many processes were in it.
pub fn remove_tree(path: &Path, limit: Duration) -> usize {
    let leaves = leaves(path);
    let mut n = 0;
    for leaf in &leaves {
        n += procs(leaf).len();
        let _ = kill(leaf);
    }
    let deadline = Instant::now() + limit;
    for leaf in &leaves {
        loop {
            match std::fs::remove_dir(leaf) {
                Err(e) if e.kind() != io::ErrorKind::NotFound && Instant::now() < deadline => {
                    let _ = kill(leaf);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!("cannot remove cgroup {}: {e}", leaf.display());
                    break;
                }
                _ => break,
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("cannot remove cgroup {}: {e}", path.display());
        }
    }
    n
}

/// Sub-cgroups of `path`.
fn leaves(path: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(path)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Opens a leaf's `cgroup.procs` for the child to write itself into (close-on-exec).
///
/// # Errors
/// When it cannot be opened for writing.
pub fn open_procs(leaf: &Path) -> io::Result<OwnedFd> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(leaf.join("cgroup.procs"))
        .map(OwnedFd::from)
}

/// Pids in a cgroup (empty if it is gone).
pub fn procs(leaf: &Path) -> Vec<u32> {
    std::fs::read_to_string(leaf.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILLs every process in the cgroup: `cgroup.kill` where the kernel has it (5.14+),
/// otherwise each pid of `cgroup.procs`, a few passes over, to catch what forked meanwhile.
///
/// # Errors
/// When the cgroup cannot be read or written (a cgroup already gone is not an error).
pub fn kill(leaf: &Path) -> io::Result<()> {
    match std::fs::write(leaf.join("cgroup.kill"), b"1") {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !leaf.exists() => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    kill_each(leaf);
    Ok(())
}

/// SIGKILLs each pid of `cgroup.procs`, a few passes over (kernels before 5.14).
fn kill_each(leaf: &Path) {
    for _ in 0..5 {
        let pids = procs(leaf);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = send_signal(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Removes a killed leaf once the last of its processes has exited (`rmdir` answers EBUSY
/// while any is left). Looks again at growing intervals, only while a stop is under way;
/// gives up after `limit` (the leaf is then removed at shutdown). Returns whether it is gone.
pub async fn remove_when_empty(leaf: PathBuf, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut wait = Duration::from_millis(1);
    loop {
        match std::fs::remove_dir(&leaf) {
            Ok(()) => return true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return true,
            Err(e) if e.raw_os_error() != Some(libc::EBUSY) => {
                tracing::warn!("cannot remove cgroup {}: {e}", leaf.display());
                return false;
            }
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "cgroup {} still has processes after {limit:?}; it is removed at shutdown",
                leaf.display()
            );
            return false;
        }
        // Without cgroup.kill a process may have forked between two passes.
        let _ = kill(&leaf);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

/// Memory of everything in the cgroup: `memory.current` where the memory controller is on,
/// otherwise the resident memory of each of its processes, summed.
pub fn memory(leaf: &Path) -> Option<u64> {
    if let Ok(t) = std::fs::read_to_string(leaf.join("memory.current")) {
        if let Ok(v) = t.trim().parse() {
            return Some(v);
        }
    }
    let pids = procs(leaf);
    if pids.is_empty() {
        return None;
    }
    let page = procfs::page_size();
    let mut total = 0u64;
    for pid in pids {
        // statm: size resident shared text lib data dt, in pages.
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/statm")) {
            if let Some(rss) = t
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
            {
                total = total.saturating_add(rss.saturating_mul(page));
            }
        }
    }
    Some(total)
}

/// Which of `leaves` (pid → leaf) holds `pid`, by the `0::` line of its `/proc/<pid>/cgroup`.
pub fn owner_of<S: std::hash::BuildHasher>(
    pid: u32,
    leaves: &std::collections::HashMap<u32, PathBuf, S>,
) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let own = parse_own_cgroup(&text)?;
    let rel = Path::new(own.trim_start_matches('/'));
    if rel.as_os_str().is_empty() {
        return None;
    }
    leaves
        .iter()
        .find(|(_, leaf)| leaf.ends_with(rel))
        .map(|(owner, _)| *owner)
}

/// Whether `pid` is in the cgroup.
pub fn contains(leaf: &Path, pid: u32) -> bool {
    procs(leaf).contains(&pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_in_a_hybrid_layout() {
        let m = parse_mountinfo(HYBRID).unwrap();
        assert_eq!(m.point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.root, "/");
    }

    #[test]
    fn finds_a_unified_mount_and_unescapes() {
        let text = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo(text).unwrap().point,
            PathBuf::from("/sys/fs/cgroup")
        );
        let text = "25 1 0:22 /a\\040b /mnt/my\\040cg rw - cgroup2 none rw\n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m.point, PathBuf::from("/mnt/my cg"));
        assert_eq!(m.root, "/a b");
    }

    #[test]
    fn no_v2_mount() {
        assert_eq!(parse_mountinfo(&HYBRID.replace("cgroup2", "cgroup")), None);
        assert_eq!(parse_mountinfo(""), None);
    }

    #[test]
    fn own_cgroup_is_the_0_line() {
        let hybrid = "9:name=systemd:/user.slice\n4:memory:/x\n0::/user.slice/session-3.scope\n";
        assert_eq!(
            parse_own_cgroup(hybrid).as_deref(),
            Some("/user.slice/session-3.scope")
        );
        assert_eq!(parse_own_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_own_cgroup("4:memory:/x\n"), None);
        assert_eq!(parse_own_cgroup("0::\n"), None);
    }

    #[test]
    fn locates_own_cgroup_under_the_mount() {
        let m = Mount {
            point: "/sys/fs/cgroup/unified".into(),
            root: "/".into(),
        };
        assert_eq!(
            locate(&m, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            locate(&m, "/system.slice/herd.service"),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/system.slice/herd.service"
            ))
        );
        // A mount of a subtree (e.g. bind-mounted into a container).
        let sub = Mount {
            point: "/sys/fs/cgroup".into(),
            root: "/docker/abc".into(),
        };
        assert_eq!(
            locate(&sub, "/docker/abc/app"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(locate(&sub, "/docker/abcdef"), None);
        assert_eq!(locate(&sub, "/other"), None);
        assert_eq!(locate(&m, "/../outside"), None);
    }

    /// A leaf under a tree of this test process, or `None` where cgroups cannot be made.
    fn scratch_tree() -> Option<Tree> {
        match Tree::create() {
            Ok(t) => Some(t),
            Err(why) => {
                eprintln!("SKIPPED: cannot create cgroups here: {why}");
                None
            }
        }
    }

    fn sleeper_in(leaf: &Path) -> std::process::Child {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        std::fs::write(leaf.join("cgroup.procs"), child.id().to_string()).unwrap();
        child
    }

    #[test]
    fn kills_by_cgroup_kill_and_by_iterating_then_removes() {
        let Some(mut tree) = scratch_tree() else {
            return;
        };
        let a = tree.new_leaf("unit", 0).unwrap();
        let b = tree.new_leaf("unit", 1).unwrap();
        let mut ca = sleeper_in(&a);
        let mut cb = sleeper_in(&b);
        assert!(contains(&a, ca.id()));
        assert!(memory(&a).is_some_and(|m| m > 0));
        let mut owners = std::collections::HashMap::new();
        owners.insert(7u32, b.clone());
        assert_eq!(owner_of(cb.id(), &owners), Some(7));
        kill(&a).unwrap();
        // The path taken on kernels without cgroup.kill.
        kill_each(&b);
        assert!(ca.wait().unwrap().code().is_none());
        assert!(cb.wait().unwrap().code().is_none());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        assert!(rt.block_on(remove_when_empty(a.clone(), Duration::from_secs(5))));
        assert!(!a.exists());
        tree.remove_all(Duration::from_secs(5));
        assert!(!b.exists());
        assert!(!tree.path().exists());
    }

    #[test]
    fn leaf_names_are_plain() {
        assert_eq!(sanitize("api"), "api");
        assert_eq!(sanitize("my app/../x"), "my_app____x");
        assert_eq!(sanitize(""), "app");
    }
}
