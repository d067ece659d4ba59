//! `hello` over HTTP/1.1 with hyper 1, for bench/compare.py.
//!
//! Listener: fd 3 when `LISTEN_FDS` is set and `LISTEN_PID` is our pid (herd, systemd socket
//! activation), else it binds `127.0.0.1:$PORT` itself.
//!
//! Runtime: `--threads 1` (the default under herd, one instance per core) runs tokio's
//! current-thread runtime; `--threads N` (N > 1) a multi-thread runtime with N workers, which is
//! how the server runs alone on an N-core machine.

use std::convert::Infallible;
use std::net::TcpListener as StdListener;
use std::os::fd::FromRawFd;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

fn inherited() -> Option<StdListener> {
    let ours = std::env::var("LISTEN_PID").ok()? == std::process::id().to_string();
    let n: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if !ours || n < 1 {
        return None;
    }
    // SAFETY: socket activation hands us fd 3, already bound and listening; nothing else owns it.
    Some(unsafe { StdListener::from_raw_fd(3) })
}

fn listener() -> std::io::Result<StdListener> {
    let l = match inherited() {
        Some(l) => l,
        None => {
            let port: u16 = std::env::var("PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .expect("set PORT, or run under herd");
            StdListener::bind(("127.0.0.1", port))?
        }
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

async fn serve(std_listener: StdListener) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue, // e.g. EMFILE or a connection reset before accept
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n >= 1)
                    .expect("--threads N, N >= 1")
            }
            other => panic!("unknown argument {other:?}"),
        }
    }
    let l = listener()?;
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(serve(l))
}
