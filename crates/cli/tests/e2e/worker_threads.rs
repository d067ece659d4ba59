//! Clustering and worker threads together: CPU-heavy requests run on a thread pool, and cheap
//! requests on the same instance stay fast meanwhile. Each test also runs the heavy work on the
//! event loop itself, to show that the measurement can tell the difference.

use std::time::{Duration, Instant};

use crate::common::*;

/// Max latency of cheap requests made while `heavy` concurrent heavy requests run on `path`.
fn cheap_latency_during(port: u16, heavy_path: &'static str, heavy: usize) -> (Duration, Duration) {
    let addr = loopback(port);
    let t = Instant::now();
    let heavies: Vec<_> = (0..heavy)
        .map(|_| {
            std::thread::spawn(move || get(addr, heavy_path, Duration::from_secs(30)).unwrap())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let mut worst = Duration::ZERO;
    while heavies.iter().any(|h| !h.is_finished()) && t.elapsed() < Duration::from_secs(30) {
        let s = Instant::now();
        let body = get(addr, "/", Duration::from_secs(30)).unwrap();
        assert!(body.contains("cheap"));
        worst = worst.max(s.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in heavies {
        h.join().unwrap();
    }
    (worst, t.elapsed())
}

fn check(h: &Herd, port: u16, pool_path: &'static str, inline_path: &'static str) {
    let (pooled, heavy_time) = cheap_latency_during(port, pool_path, 3);
    assert!(
        heavy_time > Duration::from_millis(400),
        "heavy work too light to tell anything: {heavy_time:?}"
    );
    assert!(
        pooled < Duration::from_millis(250),
        "a cheap request took {pooled:?} while heavy work ran on the pool ({heavy_time:?})"
    );
    let (inline, _) = cheap_latency_during(port, inline_path, 1);
    assert!(
        inline > pooled * 2 && inline > Duration::from_millis(200),
        "the inline control did not block cheap requests ({inline:?} vs {pooled:?})"
    );
    let _ = h;
}

#[test]
fn rust_instance_keeps_cheap_requests_fast_with_a_blocking_pool() {
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    h.ok(&[
        "start",
        example_bin("hashing").to_str().unwrap(),
        "--name",
        "hash",
        "--listen",
        &listen,
        "--wait-ready",
    ]);
    check(&h, port, "/hash/600", "/hash-inline/600");
    h.finish();
}

#[test]
fn node_instance_keeps_cheap_requests_fast_with_worker_threads() {
    let Some(base) = node_fixture() else { return };
    let h = Herd::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let script = base.join("apps/worker-threads.js");
    h.ok(&[
        "start",
        script.to_str().unwrap(),
        "--name",
        "wt",
        "--listen",
        &listen,
    ]);
    check(&h, port, "/hash/600", "/hash-inline/600");
    h.finish();
}
