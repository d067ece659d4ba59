//! The JavaScript files herd puts into Node processes (from the repository's `node/preload/`),
//! and the port-adoption library it puts into Bun and Deno apps (`crates/core/shim/`),
//! embedded in the binary and written into a directory herd owns (`HERD_HOME/node/` for the
//! daemon, a `herd run`'s own runtime directory), and how a worker is told to load one
//! (`NODE_OPTIONS=--require "<path>"`).
//!
//! To add a file: put it in `node/preload/`, add a [`Shim`] constant and list it in [`SHIMS`].
//! It does not decide which process loads what, nor speak to a loaded file: the supervisor
//! does (`supervisor/process.rs`, `supervisor/cluster.rs`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shim {
    /// Its file name in the directory.
    pub name: &'static str,
    /// Its content.
    pub text: &'static [u8],
}

/// The preload of Node cluster workers: graceful drain of keep-alive connections on stop and
/// reload (see the file's header).
pub const WORKER: Shim = Shim {
    name: "worker.cjs",
    text: include_bytes!("../../../node/preload/worker.cjs"),
};

/// The preload of an app's own cluster primary (`--primary`): Node's `cluster` API backed by
/// herd (see the file's header and `supervisor/primary.rs`).
pub const PRIMARY: Shim = Shim {
    name: "primary.cjs",
    text: include_bytes!("../../../node/preload/primary.cjs"),
};

/// JSON lines on a socket the way Node's IPC channel writes and reads them, for the two
/// preloads above (they `require('./lines.cjs')`).
pub const LINES: Shim = Shim {
    name: "lines.cjs",
    text: include_bytes!("../../../node/preload/lines.cjs"),
};

/// herd's port adoption for Bun and Deno apps (`crates/core/shim/adopt.c`, loaded with
/// `LD_PRELOAD`; see [`crate::runtimes`]).
pub const ADOPT: Shim = Shim {
    name: "herd-adopt.so",
    text: include_bytes!(concat!(env!("OUT_DIR"), "/herd-adopt.so")),
};

/// Every embedded file, written by [`install`].
pub const SHIMS: &[Shim] = &[WORKER, PRIMARY, LINES, ADOPT];

/// The switch, read from an app's environment: `HERD_NODE_PRELOAD=off` (or `0`) starts its
/// workers without the preload (Node's own disconnect alone on stop).
pub const ENV_SWITCH: &str = "HERD_NODE_PRELOAD";

/// The files of [`SHIMS`], written into a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    dir: PathBuf,
}

impl Installed {
    /// The directory (0700, the daemon's user's).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `shim` is.
    pub fn path(&self, shim: &Shim) -> PathBuf {
        self.dir.join(shim.name)
    }
}

/// Writes every file of [`SHIMS`] into `dir`: the directory is created (mode 0700; its parent
/// must exist) or checked to be a real directory of the caller's; a file is written (0600,
/// never through a symbolic link, replaced by a rename so a process reading it never sees half
/// of it) only if its content differs.
///
/// # Errors
/// When the directory is not usable or a file cannot be written.
pub fn install(dir: &Path) -> io::Result<Installed> {
    install_with(dir, 0o700, 0o600)
}

/// [`install`] into a directory that instances running as another user (`--uid`) can read,
/// which no directory under the daemon's 0700 `HERD_HOME` is: the directory is 0755 and the
/// files 0644, both the daemon's. They hold nothing secret (they are herd's own source); the
/// control socket and everything else of `HERD_HOME` stay out of the app user's reach.
///
/// # Errors
/// As [`install`].
pub fn install_shared(dir: &Path) -> io::Result<Installed> {
    install_with(dir, 0o755, 0o644)
}

/// Where [`install_shared`] puts the files of the daemon whose own copy is in `private`:
/// `/run/herd-<hash of private's path>` (a runtime directory, as systemd's
/// `RuntimeDirectory=`, emptied at boot), or the same name in the temporary directory where
/// `/run` is not usable.
pub fn shared_dir(private: &Path) -> PathBuf {
    // FNV-1a: stable across builds, so a daemon replaced by `herd update` finds the same one.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in private.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let run = Path::new("/run");
    let base = match std::fs::symlink_metadata(run) {
        Ok(m) if m.is_dir() && m.uid() == 0 && m.mode() & 0o022 == 0 => run.to_path_buf(),
        _ => std::env::temp_dir(),
    };
    base.join(format!("herd-{h:016x}"))
}

fn install_with(dir: &Path, dir_mode: u32, file_mode: u32) -> io::Result<Installed> {
    let dir = std::path::absolute(dir)?;
    own_dir(&dir, dir_mode)?;
    for shim in SHIMS {
        let path = dir.join(shim.name);
        if read_nofollow(&path).ok().as_deref() == Some(shim.text)
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.mode() & 0o7777 == file_mode)
        {
            continue;
        }
        let tmp = dir.join(format!(".{}.tmp", shim.name));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        // The mode asked for, whatever the umask.
        f.set_permissions(std::fs::Permissions::from_mode(file_mode))?;
        f.write_all(shim.text)?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
    }
    Ok(Installed { dir })
}

fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Creates `dir` (with `mode`) or checks that it is a directory of the caller's, not a link,
/// and gives it `mode`.
fn own_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            // The mode asked for, whatever the umask.
            return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::other(format!(
            "{} is not a directory of yours (herd follows no links there); remove it",
            dir.display()
        )));
    }
    if m.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Whether an app with environment `env` gets the preload (see [`ENV_SWITCH`]).
pub fn enabled(env: &BTreeMap<String, String>) -> bool {
    !env.get(ENV_SWITCH)
        .is_some_and(|v| matches!(v.trim(), "off" | "0" | "false" | "no"))
}

/// `NODE_OPTIONS` that loads `preload` first, then whatever the app's own `NODE_OPTIONS`
/// says. The preload takes its part out again when it loads (so node processes the app
/// starts do not load it): it expects it first, written exactly so.
pub fn node_options(preload: &Path, theirs: Option<&str>) -> String {
    let ours = format!("--require {}", quote(preload));
    match theirs.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => format!("{ours} {t}"),
        None => ours,
    }
}

/// A path in double quotes as Node's `NODE_OPTIONS` parser reads it: inside quotes a
/// backslash escapes the next character.
fn quote(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_options_put_the_preload_first_quoted_and_keep_theirs() {
        let p = Path::new("/home/a b/.herd/node/worker.cjs");
        assert_eq!(
            node_options(p, None),
            r#"--require "/home/a b/.herd/node/worker.cjs""#
        );
        assert_eq!(
            node_options(p, Some("  --max-old-space-size=512 ")),
            r#"--require "/home/a b/.herd/node/worker.cjs" --max-old-space-size=512"#
        );
        assert_eq!(node_options(p, Some("")), node_options(p, None));
        assert_eq!(
            node_options(Path::new(r#"/x/"q"\w.cjs"#), None),
            r#"--require "/x/\"q\"\\w.cjs""#
        );
    }

    #[test]
    fn the_switch_is_read_from_the_apps_environment() {
        let mut env = BTreeMap::new();
        assert!(enabled(&env));
        env.insert(ENV_SWITCH.to_string(), "off".to_string());
        assert!(!enabled(&env));
        env.insert(ENV_SWITCH.to_string(), "on".to_string());
        assert!(enabled(&env));
    }

    #[test]
    fn install_writes_each_file_once_into_a_private_directory() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("node");
        let got = install(&dir).unwrap();
        let path = got.path(&WORKER);
        assert_eq!(std::fs::read(&path).unwrap(), WORKER.text);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        // Same content: not written again (the inode stays).
        let ino = std::fs::metadata(&path).unwrap().ino();
        install(&dir).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        // Other content (an older herd's): replaced.
        std::fs::write(&path, "old").unwrap();
        install(&dir).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), WORKER.text);
        // A link in place of the file is replaced, not written through.
        let target = home.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        install(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn the_shared_copy_is_readable_by_others_and_its_place_stable() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("shared");
        let got = install_shared(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&got.path(&WORKER)), 0o644);
        assert_eq!(mode(&got.path(&LINES)), 0o644);
        let a = shared_dir(Path::new("/root/.herd/node"));
        assert_eq!(a, shared_dir(Path::new("/root/.herd/node")));
        assert_ne!(a, shared_dir(Path::new("/srv/herd/node")));
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("herd-"));
    }

    #[test]
    fn install_refuses_a_link_for_the_directory() {
        let home = tempfile::tempdir().unwrap();
        let real = home.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let dir = home.path().join("node");
        std::os::unix::fs::symlink(&real, &dir).unwrap();
        let e = install(&dir).unwrap_err().to_string();
        assert!(e.contains("not a directory of yours"), "{e}");
        assert!(std::fs::read_dir(&real).unwrap().next().is_none());
    }
}
