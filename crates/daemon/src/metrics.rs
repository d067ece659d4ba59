//! The Prometheus endpoint (`metrics = "127.0.0.1:9209"` in config.toml, or `HERD_METRICS`):
//! `GET /metrics` answers one scrape of the whole cluster ([`Supervisor::scrape`]). A small
//! HTTP/1.1 responder, one request per connection: what a Prometheus server (or curl) sends is
//! all it reads. Bounded: a request head over 8 KiB, or one that takes longer than 5 s to
//! arrive, is answered with an error and closed; at most 32 connections are served at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herd_core::Supervisor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How long a scrape waits for the instances.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(1000);
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 32;

/// Binds the endpoint and serves it until the daemon exits. A failure to bind is logged (the
/// daemon runs on without the endpoint) and returned.
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(addr: SocketAddr, sup: Supervisor) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "Prometheus endpoint at http://{addr}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Too many at once: this one is closed at once.
                continue;
            };
            let sup = sup.clone();
            tokio::spawn(async move {
                let _ = answer(stream, &sup).await;
                drop(permit);
            });
        }
    });
    Ok(())
}

async fn answer(mut stream: TcpStream, sup: &Supervisor) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            return respond(
                &mut stream,
                "400 Bad Request",
                "text/plain",
                "a request head of at most 8 KiB, please\n",
            )
            .await
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return respond(
                &mut stream,
                "408 Request Timeout",
                "text/plain",
                "the request took too long\n",
            )
            .await
        }
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut sum = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair {
            "sum=app" => sum = true,
            "sum=" | "sum=instance" | "sum=none" => sum = false,
            _ => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "unknown query: /metrics takes only ?sum=app (instances' counters and histograms summed per app)\n",
                )
                .await
            }
        }
    }
    match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => {
            let body = sup.scrape(SCRAPE_TIMEOUT, sum).await.unwrap_or_default();
            let body = if method == "HEAD" {
                String::new()
            } else {
                body
            };
            respond(
                &mut stream,
                "200 OK",
                herd_core::metrics::CONTENT_TYPE,
                &body,
            )
            .await
        }
        ("GET" | "HEAD", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "text/plain",
                "herd serves /metrics\n",
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "text/plain",
                "GET /metrics\n",
            )
            .await
        }
    }
}

/// The request head, up to the blank line; `None` when it is longer than [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
