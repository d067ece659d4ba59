//! A bare hyper 1 server on the socket herd hands it (or on PORT when run alone).
//!
//!     herd start target/debug/examples/hyper -i 2 --port 8000

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

async fn hello(_: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("pid={} hyper", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn main() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = match herd::tokio_listener()? {
            Some(l) => l,
            None => {
                let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
                tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?
            }
        };
        herd::ready()?;
        let shutdown = herd::shutdown();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => {
                    let (stream, _) = accepted?;
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service_fn(hello))
                            .await;
                    });
                }
            }
        }
    })
}
