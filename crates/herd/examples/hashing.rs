//! Worker threads in a Rust instance: cheap requests are served on the async runtime, while
//! CPU-heavy ones (here: hashing) run on a bounded pool of blocking threads, so one heavy
//! request cannot stall the cheap ones. The same idea as Node's `worker_threads` inside a
//! cluster worker.
//!
//!     herd start target/debug/examples/hashing -i 2 --port 8000
//!
//! Routes: `/` (cheap), `/hash/{ms}` (hash for that many milliseconds, on the pool),
//! `/hash-inline/{ms}` (the same on the async thread itself — what not to do, kept to show the
//! difference).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use tokio::sync::Semaphore;

/// CPU-bound work: chained hashes for `ms` milliseconds.
fn hash_for(ms: u64) -> u64 {
    let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut h = 0u64;
    let mut i = 0u64;
    while std::time::Instant::now() < end {
        for _ in 0..1000 {
            let mut s = DefaultHasher::new();
            (h, i).hash(&mut s);
            h = s.finish();
            i += 1;
        }
    }
    h
}

fn main() -> std::io::Result<()> {
    // One async thread per instance (herd runs one instance per core); heavy work goes to a
    // pool of at most 2 blocking threads, waiting its turn when the pool is busy.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(2)
        .build()?;
    rt.block_on(async {
        let listener = match herd::tokio_listener()? {
            Some(l) => l,
            None => {
                let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
                tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?
            }
        };
        let pool = Arc::new(Semaphore::new(2));
        let app = Router::new()
            .route(
                "/",
                get(|| async { format!("pid={} cheap", std::process::id()) }),
            )
            .route(
                "/hash/{ms}",
                get(
                    |State(pool): State<Arc<Semaphore>>, Path(ms): Path<u64>| async move {
                        let _permit = pool.acquire_owned().await.expect("never closed");
                        let h = tokio::task::spawn_blocking(move || hash_for(ms))
                            .await
                            .expect("hashing does not panic");
                        format!("pid={} hash={h:x}", std::process::id())
                    },
                ),
            )
            .route(
                "/hash-inline/{ms}",
                get(|Path(ms): Path<u64>| async move {
                    format!("pid={} hash={:x}", std::process::id(), hash_for(ms))
                }),
            )
            .with_state(pool);
        herd::ready()?;
        axum::serve(listener, app)
            .with_graceful_shutdown(herd::shutdown())
            .await
    })
}
