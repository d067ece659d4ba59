//! Load for herd's bus, used by `bench/bus.py`: a Rust instance that measures request/reply
//! round trips to another instance, or floods one with messages, or counts what it receives.
//! Settings come from the environment (set with `herd start -e`); the results are one JSON
//! object written to the file `BENCH_OUT` (written whole, then renamed into place).
//!
//!     herd start target/release/examples/bus-echo --name echo
//!     herd start target/release/examples/bus-bench --name rtt --no-autorestart \
//!         -e BENCH_MODE=rtt -e BENCH_TARGET=echo:0 -e BENCH_CONC=16 -e BENCH_OUT=/tmp/rtt.json
//!
//! Modes (`BENCH_MODE`):
//! - `rtt`: `BENCH_CONC` tasks each make sequential requests to `BENCH_TARGET` for
//!   `BENCH_WARMUP` + `BENCH_SECS` seconds, each with a timeout of `BENCH_TIMEOUT_MS` (5000);
//!   round trips and latencies of the last `BENCH_SECS` are reported.
//! - `flood`: sends `BENCH_SIZE`-byte strings to `BENCH_TARGET` for `BENCH_WARMUP` +
//!   `BENCH_SECS` + 1 seconds, with at most `BENCH_WINDOW` messages not yet acknowledged by the
//!   sink (0: no limit, as fast as the channel takes them).
//! - `sink`: counts messages; acknowledges every `BENCH_ACK`th to its sender (0: never); its
//!   window starts `BENCH_WARMUP` seconds after the first message and lasts `BENCH_SECS`; it
//!   writes its results once no message came for a second.
//!
//! With `BENCH_DAEMON_PID` set, the CPU time of that process (herd's daemon) over the window
//! is reported too, read from `/proc/PID/stat`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn env<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(2) }; // _SC_CLK_TCK
    Some(ticks as f64 / hz.max(1) as f64)
}

extern "C" {
    fn sysconf(name: i32) -> i64;
}

fn daemon_cpu() -> Option<f64> {
    cpu_secs(std::env::var("BENCH_DAEMON_PID").ok()?.parse().ok()?)
}

fn write_out(v: &Value) -> std::io::Result<()> {
    let path = std::env::var("BENCH_OUT").map_err(|_| std::io::Error::other("no BENCH_OUT"))?;
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, serde_json::to_vec(v).expect("serialises"))?;
    std::fs::rename(tmp, path)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let bus = herd::bus::Bus::connect()?;
    herd::ready()?;
    let mode: String = env("BENCH_MODE", "rtt".to_string());
    let result = match mode.as_str() {
        "rtt" => rtt(bus).await?,
        "flood" => flood(bus).await?,
        "sink" => sink(bus).await?,
        other => return Err(std::io::Error::other(format!("unknown BENCH_MODE {other}"))),
    };
    println!("{result}");
    write_out(&result)
}

/// Waits until `target` answers, so that the run does not start before it.
async fn wait_for(bus: &herd::bus::Bus, target: &str) -> std::io::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match bus
            .request(target, json!("hello"), Duration::from_secs(1))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn rtt(bus: herd::bus::Bus) -> std::io::Result<Value> {
    let target: String = env("BENCH_TARGET", "echo:0".to_string());
    let conc: usize = env("BENCH_CONC", 1);
    let secs: f64 = env("BENCH_SECS", 5.0);
    let warmup: f64 = env("BENCH_WARMUP", 1.0);
    let timeout = Duration::from_millis(env("BENCH_TIMEOUT_MS", 5000));
    wait_for(&bus, &target).await?;

    let t0 = Instant::now();
    let from = t0 + Duration::from_secs_f64(warmup);
    let until = from + Duration::from_secs_f64(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for t in 0..conc {
        let (bus, target) = (bus.clone(), target.clone());
        let (errors, first_error) = (errors.clone(), first_error.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut n: u64 = 0;
            loop {
                let start = Instant::now();
                if start >= until {
                    break;
                }
                n += 1;
                let r = bus.request(&target, json!({"t": t, "n": n}), timeout).await;
                let end = Instant::now();
                match r {
                    Ok(_) if start >= from && end <= until => {
                        lat.push((end - start).as_nanos() as u64);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .expect("not poisoned")
                            .get_or_insert_with(|| e.to_string());
                    }
                }
            }
            lat
        }));
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu0 = daemon_cpu();
    tokio::time::sleep_until(until.into()).await;
    let cpu1 = daemon_cpu();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.map_err(std::io::Error::other)?);
    }
    lat.sort_unstable();
    let first_error = first_error.lock().expect("not poisoned").clone();
    Ok(json!({
        "mode": "rtt",
        "conc": conc,
        "secs": secs,
        "round_trips": lat.len(),
        "rate": lat.len() as f64 / secs,
        "p50_us": percentile(&lat, 0.50) as f64 / 1000.0,
        "p99_us": percentile(&lat, 0.99) as f64 / 1000.0,
        "max_us": lat.last().copied().unwrap_or(0) as f64 / 1000.0,
        "errors": errors.load(Ordering::Relaxed),
        "first_error": first_error,
        "daemon_cpu_s": cpu0.zip(cpu1).map(|(a, b)| b - a),
    }))
}

async fn flood(bus: herd::bus::Bus) -> std::io::Result<Value> {
    let target: String = env("BENCH_TARGET", "sink:0".to_string());
    let secs: f64 = env("BENCH_SECS", 5.0);
    let warmup: f64 = env("BENCH_WARMUP", 1.0);
    let size: usize = env("BENCH_SIZE", 1024);
    let window: u64 = env("BENCH_WINDOW", 0);
    wait_for(&bus, &target).await?;

    // Acknowledgements from the sink carry how many it has seen so far.
    let acked = Arc::new(AtomicU64::new(0));
    let more = Arc::new(tokio::sync::Notify::new());
    {
        let (bus, acked, more) = (bus.clone(), acked.clone(), more.clone());
        tokio::spawn(async move {
            while let Some(m) = bus.recv().await {
                if let Some(n) = m.data.get("ack").and_then(Value::as_u64) {
                    acked.fetch_max(n, Ordering::Relaxed);
                    more.notify_one();
                }
            }
        });
    }
    let payload = Value::String("x".repeat(size));
    let until = Instant::now() + Duration::from_secs_f64(warmup + secs + 1.0);
    let mut sent: u64 = 0;
    let mut stalls: u64 = 0;
    while Instant::now() < until {
        if window > 0 {
            while sent - acked.load(Ordering::Relaxed) >= window {
                stalls += 1;
                // An acknowledgement can be lost like any message: do not wait for ever.
                if tokio::time::timeout(Duration::from_secs(1), more.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        bus.send(&target, payload.clone()).await?;
        sent += 1;
    }
    Ok(json!({
        "mode": "flood",
        "size": size,
        "window": window,
        "sent": sent,
        "acked": acked.load(Ordering::Relaxed),
        "stalls": stalls,
    }))
}

async fn sink(bus: herd::bus::Bus) -> std::io::Result<Value> {
    let secs: f64 = env("BENCH_SECS", 5.0);
    let warmup: f64 = env("BENCH_WARMUP", 1.0);
    let ack_every: u64 = env("BENCH_ACK", 0);
    let mut total: u64 = 0;
    let mut bytes: u64 = 0;
    let (mut from, mut until) = (None::<Instant>, None::<Instant>);
    let (mut in_window, mut cpu0, mut cpu1) = (0u64, None, None);
    loop {
        let wait = if until.is_some_and(|u| Instant::now() > u) {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(60)
        };
        let msg = match tokio::time::timeout(wait, bus.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        if msg.is_request() {
            msg.reply(json!("sink")).await?;
            continue;
        }
        let now = Instant::now();
        if from.is_none() {
            from = Some(now + Duration::from_secs_f64(warmup));
            until = Some(now + Duration::from_secs_f64(warmup + secs));
        }
        total += 1;
        bytes += msg.data.as_str().map_or(0, str::len) as u64;
        if now >= from.expect("set") && now <= until.expect("set") {
            if cpu0.is_none() {
                cpu0 = daemon_cpu();
            }
            in_window += 1;
        } else if now > until.expect("set") && cpu1.is_none() {
            cpu1 = daemon_cpu();
        }
        if ack_every > 0 && total.is_multiple_of(ack_every) {
            bus.send(&msg.from, json!({ "ack": total })).await?;
        }
    }
    Ok(json!({
        "mode": "sink",
        "secs": secs,
        "received": total,
        "bytes": bytes,
        "in_window": in_window,
        "rate": in_window as f64 / secs,
        "daemon_cpu_s": cpu0.zip(cpu1).map(|(a, b)| b - a),
    }))
}
