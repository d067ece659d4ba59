//! `herd web` (issue #14): the dashboard in a real headless Chromium (Debian's `chromium`,
//! driven by puppeteer-core from the npm registry) — the page loads with the printed token,
//! shows the apps live with their log lines, and its Reload button performs a rolling reload;
//! a screenshot is saved to `target/test-artifacts/web-dashboard.png`. And its security model
//! at the HTTP level: no session → 401, a wrong token → 401, a foreign Host → 421, a POST
//! without the page's Origin or CSRF token → 403, and the token file is 0600.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::*;

/// Debian's Chromium, if installed; in CI its absence fails the test.
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let msg = "chromium is needed for the dashboard test (Debian: apt-get install chromium; scripts/test installs it)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// `herd web` on a free port: the process and the address it printed (with its token).
struct WebServer {
    child: Child,
    url: String,
}

impl WebServer {
    fn start(h: &Herd) -> Self {
        let mut child = h
            .command(&["web", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("herd web printed no address: {first:?}"))
            .to_string();
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
        Self { child, url }
    }

    fn addr(&self) -> SocketAddr {
        let hostport = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        hostport.parse().unwrap()
    }

    fn token(&self) -> String {
        self.url.split("token=").nth(1).unwrap().to_string()
    }

    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let status = wait_until(Duration::from_secs(10), || {
            self.child.try_wait().unwrap().ok_or(())
        });
        if status.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("herd web did not stop on Ctrl-C (SIGINT)");
        }
    }
}

/// One raw HTTP/1.1 request; the status code and the whole answer.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    (code, answer)
}

#[test]
fn the_dashboard_guards_its_door_and_reloads_an_app_from_a_real_browser() {
    let Some(base) = node_fixture() else { return };
    let Some(chrome) = chromium() else { return };
    let h = Herd::new();
    let port = free_port();
    let app = base.join("apps/http.js");
    h.ok(&[
        "start",
        app.to_str().unwrap(),
        "--name",
        "site",
        "-i",
        "2",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    wait_until(Duration::from_secs(20), || {
        (h.statuses("site") == ["online", "online"])
            .then_some(())
            .ok_or(())
    })
    .expect("the app did not come online");
    let before = h.pids("site");

    let web = WebServer::start(&h);
    let addr = web.addr();
    let token_file = h.home().join("web.token");
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        web.token()
    );
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The door, at the HTTP level.
    assert_eq!(request(addr, "GET", "/", &[]).0, 401, "no session");
    assert_eq!(request(addr, "GET", "/api/state", &[]).0, 401, "no session");
    assert_eq!(
        request(addr, "GET", "/?token=0123", &[]).0,
        401,
        "wrong token"
    );
    let (code, answer) = request(addr, "GET", &format!("/?token={}", web.token()), &[]);
    assert_eq!(code, 303, "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {answer}"));
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let with = [("Cookie", session.as_str())];
    let (code, state) = request(addr, "GET", "/api/state", &with);
    assert_eq!(code, 200, "{state}");
    assert!(state.contains("\"name\":\"site\""), "{state}");
    assert_eq!(
        request(
            addr,
            "GET",
            "/api/state",
            &[("Cookie", session.as_str()), ("Host", "evil.example:80")]
        )
        .0,
        421,
        "a foreign Host (DNS rebinding)"
    );
    let origin = format!("http://{addr}");
    assert_eq!(
        request(addr, "POST", "/api/apps/site/stop", &with).0,
        403,
        "a POST without Origin"
    );
    assert_eq!(
        request(
            addr,
            "POST",
            "/api/apps/site/stop",
            &[("Cookie", session.as_str()), ("Origin", origin.as_str())]
        )
        .0,
        403,
        "a POST without the CSRF token"
    );
    assert_eq!(
        request(
            addr,
            "POST",
            "/api/apps/site/stop",
            &[
                ("Cookie", session.as_str()),
                ("Origin", "http://evil.example"),
                ("x-herd-csrf", "whatever")
            ]
        )
        .0,
        403,
        "a POST from another origin"
    );
    assert_eq!(h.pids("site"), before, "a refused request changed nothing");

    // The page, in a real browser.
    let shots = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("web-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = std::process::Command::new("node")
        .arg(base.join("apps/web-dashboard.js"))
        .arg(&web.url)
        .arg("site")
        .arg(&shot)
        .arg(&chrome)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the browser run failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SHOWN site 2"), "{text}");
    assert!(text.contains("RELOADED reload site: "), "{text}");
    assert!(text.contains("NOCSRF 403"), "{text}");
    assert!(text.contains("ANON 401"), "{text}");
    // The click made a rolling reload: every instance is a new process, all online.
    let after = h.pids("site");
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "pids before {before:?}, after {after:?}"
    );
    assert_eq!(h.statuses("site"), ["online", "online"]);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");

    web.stop();
    h.finish();
}
