//! `herd web`: a dashboard in the browser — every app and instance live (server-sent events),
//! CPU and memory charts, a log tail, and restart, reload, scale and stop buttons.
//!
//! A process of its own, like `herd monit`: it asks the daemon over the control socket only
//! while a page is open (one `list` a second per open page, one followed log stream per log
//! tail), so the daemon costs nothing more when nobody looks, and a fault here never reaches it.
//!
//! Security model (docs/web.md): it listens on 127.0.0.1 unless told otherwise. At start it makes
//! a random token (256 bits), stores it in `HERD_HOME/web.token` (0600) and prints the address
//! with it once. The browser exchanges the token for a session cookie (HttpOnly, SameSite=Strict)
//! and is sent to `/`, so the token leaves the address bar. Every request without a valid
//! session gets 401. Requests that change something (POST) must also come from the dashboard's
//! own origin (`Origin`) and carry the session's CSRF token (`x-herd-csrf`), else 403. On a
//! loopback address the `Host` header must name it (no DNS rebinding). Pages are served with a
//! strict Content-Security-Policy (no inline script, nothing from elsewhere).

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use herd_daemon::Home;
use herd_proto::{Command, Reply, ScaleTo};
use serde::Deserialize;

use crate::args::WebArgs;
use crate::client::Client;

const INDEX: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");
const COOKIE: &str = "herd_web";
/// How often an open page gets the state.
const EVERY: Duration = Duration::from_secs(1);
/// Sessions kept (the oldest goes first): one per browser that used the token.
const MAX_SESSIONS: usize = 64;
/// Past log lines sent when a log tail opens, at most.
const MAX_PAST_LINES: usize = 1000;
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

struct Web {
    home: Home,
    token: String,
    /// `Host` values accepted (empty: any, for an address that is not loopback).
    hosts: Vec<String>,
    /// `Origin` values accepted for requests that change something.
    origins: Vec<String>,
    /// (session id, its CSRF token), oldest first.
    sessions: Mutex<Vec<(String, String)>>,
}

/// Runs the dashboard until interrupted.
///
/// # Errors
/// When the address cannot be bound or the token cannot be stored.
pub fn run(home: &Home, args: &WebArgs) -> Result<std::process::ExitCode> {
    let addr: SocketAddr = args.listen.parse().with_context(|| {
        format!(
            "--listen {:?} is not an address and port; give one such as 127.0.0.1:9210",
            args.listen
        )
    })?;
    // The daemon, started if it is not running (as `herd list` would).
    Client::connect(home)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the web server's runtime")?;
    rt.block_on(serve(home.clone(), addr))
}

async fn serve(home: Home, addr: SocketAddr) -> Result<std::process::ExitCode> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; choose another with --listen"))?;
    let bound = listener.local_addr()?;
    let token = random_hex()?;
    store_token(&home, &token)?;
    let host = bound.to_string();
    let (hosts, origins) = if bound.ip().is_loopback() {
        let hosts = vec![host.clone(), format!("localhost:{}", bound.port())];
        let origins = hosts.iter().map(|h| format!("http://{h}")).collect();
        (hosts, origins)
    } else {
        eprintln!(
            "herd web: listening on {bound}, not a loopback address: anyone who can reach it and has the token controls your apps"
        );
        (Vec::new(), Vec::new())
    };
    let shown = if bound.ip().is_unspecified() {
        format!("127.0.0.1:{}", bound.port())
    } else {
        host
    };
    let web = Arc::new(Web {
        home: home.clone(),
        token: token.clone(),
        hosts,
        origins,
        sessions: Mutex::new(Vec::new()),
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .route("/api/logs", get(logs))
        .route("/api/apps/{name}/{action}", post(action))
        .fallback(not_found)
        .with_state(web)
        .layer(axum::middleware::map_response(secure));
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "herd web: open http://{shown}/?token={token}\n(the token is also in {}; Ctrl-C stops the dashboard, not your apps)",
        home.dir.join("web.token").display()
    );
    let _ = out.flush();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the dashboard")?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// 32 random bytes from the kernel, in hex.
fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the dashboard's token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `HERD_HOME/web.token`, 0600, replaced by a rename (never written through a link).
fn store_token(home: &Home, token: &str) -> Result<()> {
    let path = home.dir.join("web.token");
    let tmp = home.dir.join(".web.token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Equal strings, compared in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn cookie_session(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

impl Web {
    fn host_ok(&self, headers: &HeaderMap) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| self.hosts.iter().any(|ok| ok.eq_ignore_ascii_case(h)))
    }

    /// The CSRF token of the request's session, if it has one.
    fn session(&self, headers: &HeaderMap) -> Option<String> {
        let sid = cookie_session(headers)?;
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions
            .iter()
            .find(|(id, _)| same(id, &sid))
            .map(|(_, csrf)| csrf.clone())
    }

    fn new_session(&self) -> Result<String> {
        let sid = random_hex()?;
        let csrf = random_hex()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        if sessions.len() >= MAX_SESSIONS {
            sessions.remove(0);
        }
        sessions.push((sid.clone(), csrf));
        Ok(sid)
    }

    /// The request may read: right host, a session. Its CSRF token, or why not.
    fn gate(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        if !self.host_ok(headers) {
            return Err(Refusal::Host);
        }
        self.session(headers).ok_or(Refusal::Session)
    }

    /// The request may change something: [`Web::gate`], its own origin, the CSRF token.
    fn gate_change(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let csrf = self.gate(headers)?;
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        let origin_ok = match origin {
            Some(o) => self.origins.is_empty() || self.origins.iter().any(|ok| ok == o),
            None => false,
        };
        if !origin_ok {
            return Err(Refusal::Origin);
        }
        let sent = headers
            .get("x-herd-csrf")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(sent, &csrf) {
            return Err(Refusal::Csrf);
        }
        Ok(())
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A `Host` that is not the dashboard's (DNS rebinding).
    Host,
    /// No session, or a wrong token.
    Session,
    /// A change requested from another page.
    Origin,
    /// A change without the session's CSRF token.
    Csrf,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Host => plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this dashboard answers only to the address herd web printed\n",
            ),
            Refusal::Session => unauthorized(),
            Refusal::Origin => plain(
                StatusCode::FORBIDDEN,
                "refused: this request does not come from the dashboard's own page (Origin)\n",
            ),
            Refusal::Csrf => plain(
                StatusCode::FORBIDDEN,
                "refused: missing or wrong CSRF token (x-herd-csrf); reload the page\n",
            ),
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><meta charset=utf-8><title>herd: sign in</title><p>Open the address <code>herd web</code> printed (it carries a token; the token is also in <code>HERD_HOME/web.token</code>).</p>\n",
    )
        .into_response()
}

async fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize)]
struct IndexQuery {
    token: Option<String>,
}

async fn index(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<IndexQuery>,
) -> Response {
    if let Some(token) = q.token {
        if !web.host_ok(&headers) {
            return Refusal::Host.into_response();
        }
        if !same(&token, &web.token) {
            return Refusal::Session.into_response();
        }
        let Ok(sid) = web.new_session() else {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not make a session\n",
            );
        };
        // To `/`: the token leaves the address bar (and the history).
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/"),
                ),
            ],
        )
            .into_response();
    }
    match web.gate(&headers) {
        Ok(csrf) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX.replace("{{CSRF}}", &csrf),
        )
            .into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn app_js(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match web.gate(&headers) {
        Ok(_) => (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            APP_JS,
        )
            .into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn app_css(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match web.gate(&headers) {
        Ok(_) => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

/// One command to the daemon, from a blocking thread (the control client is synchronous).
async fn call(home: &Home, cmd: Command) -> Result<Reply, String> {
    let home = home.clone();
    tokio::task::spawn_blocking(move || {
        let mut client = Client::connect_existing(&home)
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| {
                "the herd daemon is not running (stopped by `herd kill`?); the next herd command starts it".to_string()
            })?;
        client.call(cmd).map_err(|e| format!("{e:#}"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the request to the daemon failed: {e}")))
}

/// The apps as `herd list --json` gives them, with the daemon's warnings, or the error.
async fn state_json(home: &Home) -> String {
    let v = match call(home, Command::List).await {
        Ok(Reply::Apps { apps, warnings, .. }) => {
            serde_json::json!({"apps": apps, "warnings": warnings})
        }
        Ok(Reply::Error { error, .. }) => serde_json::json!({"error": error.message}),
        Ok(other) => {
            serde_json::json!({"error": format!("unexpected reply from the daemon: {other:?}")})
        }
        Err(e) => serde_json::json!({"error": e}),
    };
    v.to_string()
}

async fn state(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(refused) = web.gate(&headers) {
        return refused.into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        state_json(&web.home).await,
    )
        .into_response()
}

/// The state every second, as `state` events, while the page is open.
async fn events(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(refused) = web.gate(&headers) {
        return refused.into_response();
    }
    let stream = futures_util::stream::unfold((web, true), |(web, first)| async move {
        if !first {
            tokio::time::sleep(EVERY).await;
        }
        let data = state_json(&web.home).await;
        let ev = Event::default().event("state").data(data);
        Some((Ok::<_, Infallible>(ev), (web, false)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Deserialize)]
struct LogsQuery {
    app: Option<String>,
    lines: Option<usize>,
}

/// Shuts the followed log stream down when the page's stream is dropped, which ends the
/// thread reading it.
struct StopOnDrop(std::os::unix::net::UnixStream);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// An app's log lines (`all`: every app's), the last ones then new ones, as `log` events
/// (`{app, instance, stream, line}`); an `error` event if the stream fails.
async fn logs(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<LogsQuery>,
) -> Response {
    if let Err(refused) = web.gate(&headers) {
        return refused.into_response();
    }
    let target = q.app.unwrap_or_else(|| "all".into());
    let lines = q.lines.unwrap_or(100).min(MAX_PAST_LINES);
    let home = web.home.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(1024);
    let opened = tokio::task::spawn_blocking(
        move || -> Result<(Client, std::os::unix::net::UnixStream)> {
            let Some(mut client) = Client::connect_existing(&home)? else {
                bail!("the herd daemon is not running");
            };
            client.send(Command::Logs {
                target,
                lines,
                follow: true,
                stream: None,
            })?;
            let closer = client.closer()?;
            Ok((client, closer))
        },
    )
    .await;
    let (mut client, closer) = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            let _ = tx.try_send(Event::default().event("error").data(msg));
            return sse(rx, None);
        }
        Err(e) => {
            let _ = tx.try_send(Event::default().event("error").data(e.to_string()));
            return sse(rx, None);
        }
    };
    let spawned = std::thread::Builder::new()
        .name("web-logs".into())
        .spawn(move || loop {
            let ev = match client.recv() {
                Ok(Some(Reply::Log {
                    app,
                    instance,
                    stream,
                    line,
                    ..
                })) => Event::default().event("log").data(
                    serde_json::json!({"app": app, "instance": instance, "stream": stream, "line": line})
                        .to_string(),
                ),
                Ok(Some(Reply::Error { error, .. })) => {
                    let _ = tx.blocking_send(Event::default().event("error").data(error.message));
                    return;
                }
                Ok(Some(Reply::End { .. })) | Ok(None) => {
                    let _ = tx.blocking_send(
                        Event::default()
                            .event("error")
                            .data("the log stream ended (the daemon was updated or stopped)"),
                    );
                    return;
                }
                Ok(Some(_)) => continue,
                Err(_) => return,
            };
            if tx.blocking_send(ev).is_err() {
                return;
            }
        });
    if spawned.is_err() {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "could not start a thread for the log stream\n",
        );
    }
    sse(rx, Some(StopOnDrop(closer)))
}

fn sse(rx: tokio::sync::mpsc::Receiver<Event>, stop: Option<StopOnDrop>) -> Response {
    let stream = futures_util::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        rx.recv()
            .await
            .map(|ev| (Ok::<_, Infallible>(ev), (rx, stop)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `POST /api/apps/{name}/{action}`: restart, reload, stop, start, scale-up, scale-down.
async fn action(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if let Err(refused) = web.gate_change(&headers) {
        return refused.into_response();
    }
    let target = name.clone();
    let cmd = match action.as_str() {
        "restart" => Command::Restart { target, env: None },
        "reload" => Command::Reload { target, env: None },
        "stop" => Command::Stop { target },
        "start" => Command::Resume { target },
        "scale-up" => Command::Scale {
            target,
            to: ScaleTo::Delta(1),
        },
        "scale-down" => Command::Scale {
            target,
            to: ScaleTo::Delta(-1),
        },
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "no such action: restart, reload, stop, start, scale-up or scale-down\n",
            )
        }
    };
    let (status, ok, message) = match call(&web.home, cmd).await {
        Ok(Reply::Done { message, .. }) => (StatusCode::OK, true, message),
        Ok(Reply::Error { error, .. }) => (StatusCode::CONFLICT, false, error.message),
        Ok(_) => (StatusCode::OK, true, format!("{action} {name}: done")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, false, e),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"ok": ok, "message": message}).to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_compares_whole_strings() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; herd_web=xyz; b=2"),
        );
        assert_eq!(cookie_session(&h).as_deref(), Some("xyz"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("herd_webx=1"));
        assert_eq!(cookie_session(&h), None);
    }
}
