//! The brokers a bridge can use: Redis pub/sub, NATS and Kafka (in [`kafka`]). Each runs as
//! one task that keeps the connection up, delivers what arrives and publishes what is queued.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{hide_password, host_channel, BridgeStats, Deliver, ALL};

/// How often a bridge asks its broker whether it is still there. A link that goes silent (a
/// cable cut, a host's interface down) resets no connection: without asking, a bridge that
/// only receives would believe itself connected until TCP gave up, a quarter of an hour
/// later, and what it was given to publish meanwhile would be neither sent nor counted lost.
/// With it, a silent link is noticed within about three heartbeats.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The most envelopes a Redis bridge puts in one pipeline of `PUBLISH`es.
const PUBLISH_BATCH: usize = 512;

mod kafka;

/// Reads `url` as its broker's client will, without connecting.
///
/// # Errors
/// What is wrong with a Redis or Kafka URL (NATS URLs are read on connecting).
pub(super) fn check(url: &str) -> Result<(), String> {
    if url.starts_with("nats://") {
        Ok(())
    } else if url.starts_with("kafka://") {
        kafka::bootstrap(url).map(|_| ())
    } else {
        redis::Client::open(url)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Starts the task for `url`'s broker.
///
/// # Errors
/// What is wrong with `url` when it is a Redis or Kafka URL that cannot be read (NATS URLs
/// are read on connecting).
pub(super) fn spawn(
    url: &str,
    host: String,
    rx: mpsc::Receiver<(String, Vec<u8>)>,
    stats: Arc<BridgeStats>,
    deliver: Deliver,
) -> Result<(), String> {
    if url.starts_with("nats://") {
        tokio::spawn(nats_task(url.to_string(), host, rx, stats, deliver));
    } else if url.starts_with("kafka://") {
        let brokers = kafka::bootstrap(url)?;
        tokio::spawn(kafka::task(brokers, host, rx, stats, deliver));
    } else {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        tokio::spawn(redis_task(client, host, rx, stats, deliver));
    }
    Ok(())
}

async fn redis_task(
    client: redis::Client,
    host: String,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    stats: Arc<BridgeStats>,
    deliver: Deliver,
) {
    let mine = host_channel(&host);
    let mut queued = Vec::with_capacity(PUBLISH_BATCH);
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(3), async {
            let mut sub = client.get_async_pubsub().await?;
            sub.subscribe(ALL).await?;
            sub.subscribe(&mine).await?;
            let conn = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((sub, conn))
        })
        .await;
        match connected {
            Ok(Ok((sub, mut conn))) => {
                if !first {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                delay = Duration::from_millis(100);
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!("bus: connected to redis");
                let (mut sink, mut messages) = sub.split();
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) => deliver(m.get_payload_bytes(), &stats),
                            None => break,
                        },
                        // What is queued goes out as one pipeline: one round trip for up to
                        // PUBLISH_BATCH messages instead of one each.
                        n = rx.recv_many(&mut queued, PUBLISH_BATCH) => {
                            if n == 0 {
                                return;
                            }
                            let n = n as u64;
                            stats.sending.store(n, Ordering::Relaxed);
                            let mut pipe = redis::pipe();
                            for (channel, bytes) in queued.drain(..) {
                                pipe.cmd("PUBLISH").arg(channel).arg(bytes).ignore();
                            }
                            let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                            stats.sending.store(0, Ordering::Relaxed);
                            match r {
                                Ok(()) => { stats.published.fetch_add(n, Ordering::Relaxed); }
                                Err(e) => {
                                    // Which of them Redis took before failing is not known:
                                    // all are counted lost.
                                    stats.lost.fetch_add(n, Ordering::Relaxed);
                                    tracing::warn!("bus: publish to redis failed: {e}");
                                    break;
                                }
                            }
                        },
                        // On the subscribing connection: the one a silent link leaves waiting
                        // (a publish would notice by itself, its answer being late).
                        _ = heartbeat.tick() => {
                            match tokio::time::timeout(2 * HEARTBEAT, sink.ping::<redis::Value>()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => {
                                    tracing::warn!("bus: redis did not answer a ping: {e}");
                                    break;
                                }
                                Err(_) => {
                                    tracing::warn!("bus: redis did not answer a ping in {:?}", 2 * HEARTBEAT);
                                    break;
                                }
                            }
                        }
                    }
                }
                stats.connected.store(false, Ordering::Relaxed);
                tracing::warn!("bus: lost the connection to redis; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!("bus: cannot connect to redis: {e}"),
            Err(_) => tracing::debug!("bus: connecting to redis timed out"),
        }
        // Whatever was queued for the broker while it was away is lost, and counted.
        while rx.try_recv().is_ok() {
            stats.lost.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

async fn nats_task(
    url: String,
    host: String,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    stats: Arc<BridgeStats>,
    deliver: Deliver,
) {
    let events = stats.clone();
    let first = Arc::new(AtomicBool::new(true));
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        // The client disconnects when two pings wait for their answer at the next one.
        .ping_interval(HEARTBEAT)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100u64 << attempts.min(5) as u64).min(2000))
        })
        .event_callback(move |event| {
            let stats = events.clone();
            let first = first.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        if !first.swap(false, Ordering::Relaxed) {
                            stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        stats.connected.store(true, Ordering::Relaxed);
                        tracing::info!("bus: connected to nats");
                    }
                    async_nats::Event::Disconnected => {
                        stats.connected.store(false, Ordering::Relaxed);
                        tracing::warn!("bus: lost the connection to nats; reconnecting");
                    }
                    _ => {}
                }
            }
        });
    let client = match options.connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("bus: cannot use nats at {}: {e}", hide_password(&url));
            return;
        }
    };
    let subs = async {
        let a = client.subscribe(ALL).await?;
        let b = client.subscribe(host_channel(&host)).await?;
        Ok::<_, async_nats::SubscribeError>(futures_util::stream::select(a, b))
    }
    .await;
    let mut subs = match subs {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("bus: cannot subscribe on nats: {e}");
            return;
        }
    };
    let mut queued = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        tokio::select! {
            m = subs.next() => match m {
                Some(m) => deliver(&m.payload, &stats),
                None => return,
            },
            // What is queued goes to the client in one go (its connection task writes them
            // out together), not one turn of this loop each.
            n = rx.recv_many(&mut queued, PUBLISH_BATCH) => {
                if n == 0 {
                    return;
                }
                for (subject, bytes) in queued.drain(..) {
                    match client.publish(subject, bytes.into()).await {
                        Ok(()) => { stats.published.fetch_add(1, Ordering::Relaxed); }
                        Err(e) => {
                            stats.lost.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!("bus: publish to nats failed: {e}");
                        }
                    }
                }
            },
        }
    }
}
