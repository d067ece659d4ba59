//! An axum hello server in three deployments, for bench/rust.py:
//!
//! - `AXUM_MODE=multi PORT=8000 axum-hello`: one process, a multi-threaded tokio runtime;
//! - `AXUM_MODE=cluster PORT=8000 axum-hello`: the embedded cluster, one single-threaded
//!   worker per CPU;
//! - `herd start axum-hello -i N --port 8000`: a single-threaded worker of the herd daemon.

use axum::routing::get;
use axum::Router;

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let mode = std::env::var("AXUM_MODE").unwrap_or_default();
    if mode == "multi" && !herd::is_managed() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(async {
            let l = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
            axum::serve(l, app())
                .with_graceful_shutdown(herd::shutdown())
                .await
        });
    }
    // Under herd, or as the embedded cluster's primary and workers.
    herd::cluster::Cluster::builder()
        .listen(&format!("127.0.0.1:{port}"))
        .run(|mut worker| async move {
            let l = worker
                .listener()
                .ok_or_else(|| std::io::Error::other("no socket"))?;
            herd::ready()?;
            axum::serve(l, app())
                .with_graceful_shutdown(herd::shutdown())
                .await
        })
}
