//! The Kafka bridge. `herd.all` and `herd.host.<host>` are topics of one partition each, which
//! a daemon creates when they are missing (on connecting, so also after a broker that kept
//! nothing came back). It reads both from the end it finds on its first connection — a daemon
//! that starts does not replay history — and after a reconnection from where it stopped, so
//! what others put on the broker meanwhile still arrives. What is queued for the broker goes
//! out in batches: produce requests of up to 7 KiB, one topic each.
//!
//! It does not own: consumer groups (each daemon reads its own topics itself, keeping its
//! offsets in memory), topics of hosts that never connected (a message to one is counted lost
//! rather than creating its topic), TLS or SASL.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::mpsc;

use crate::bus::{host_channel, BridgeStats, Deliver, ALL};

/// Port of a broker named without one.
const DEFAULT_PORT: u16 = 9092;
/// How long a fetch waits for records when there are none. Some brokers (Tansu) answer an
/// empty fetch only when this ends, even if records arrive meanwhile: it bounds the latency
/// of every hop, so it is short.
const FETCH_WAIT_MS: i32 = 50;
/// Most bytes one fetch brings (a larger record still comes, alone).
const FETCH_BYTES: i32 = 4 << 20;
/// Most envelopes taken off the queue for one round of produce requests.
const BATCH_RECORDS: usize = 512;
/// Most bytes of envelopes in one produce request, counting [`RECORD_OVERHEAD`] for each (a
/// larger envelope still goes, alone). The client writes a request's length and then its body
/// through an 8 KiB buffer, on a socket without TCP_NODELAY: a request over 8 KiB leaves in
/// two writes, Nagle holds the second until the first is acknowledged, and the broker delays
/// that acknowledgement — about 40 ms for each such request (measured with Tansu: 0.3 ms for
/// 6 KB, 44 ms for 10 KB). Under 7 KiB, with the request's own header (which names the host
/// twice), it leaves in one write.
const BATCH_BYTES: usize = 7 << 10;
/// What a record adds to its envelope in a batch, at most, for small batches (length, offset
/// and timestamp deltas, key and header counts).
const RECORD_OVERHEAD: usize = 16;
/// Connecting and setting up both topics, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client retries a request that failed for want of a connection before it
/// gives up.
const RETRY_FOR: Duration = Duration::from_secs(1);
/// Longest a fetch or a produce may take before the broker is taken for gone and the bridge
/// starts over. The client's own retries nest (finding the partition's leader again retries
/// too), so without this bound a vanished broker is noticed only after several seconds.
const STALL: Duration = Duration::from_secs(2);

/// The bootstrap brokers of `kafka://HOST[:PORT][,HOST[:PORT]…]`.
///
/// # Errors
/// What is wrong with the URL.
pub(crate) fn bootstrap(url: &str) -> Result<Vec<String>, String> {
    let rest = url
        .strip_prefix("kafka://")
        .ok_or("it does not begin with kafka://")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(
            "kafka:// takes no user or password (herd does not speak SASL to Kafka)".into(),
        );
    }
    if rest.contains(['/', '?', '#']) {
        return Err("kafka:// takes HOST:PORT[,HOST:PORT…] and nothing after it".into());
    }
    rest.split(',')
        .map(|broker| {
            let (host, port) = match broker.rsplit_once(':') {
                // `[::1]` alone: the colons are the address's.
                Some((h, p)) if !p.contains(']') => (h, Some(p)),
                _ => (broker, None),
            };
            if host.is_empty() {
                return Err(format!(
                    "broker {broker:?} has no host: use kafka://HOST:PORT"
                ));
            }
            let port = match port {
                Some(p) => p.parse::<u16>().map_err(|_| {
                    format!("broker {broker:?} has no valid port: use kafka://HOST:PORT")
                })?,
                None => DEFAULT_PORT,
            };
            Ok(format!("{host}:{port}"))
        })
        .collect()
}

/// The bridge's task: connects, consumes both topics, produces what is queued, and starts over
/// (after 0.1–2 s) whenever the broker goes away.
pub(crate) async fn task(
    brokers: Vec<String>,
    host: String,
    mut rx: mpsc::Receiver<(String, Vec<u8>)>,
    stats: Arc<BridgeStats>,
    deliver: Deliver,
) {
    let mut cursors = [
        Cursor::new(ALL.to_string()),
        Cursor::new(host_channel(&host)),
    ];
    let mut delay = Duration::from_millis(100);
    let mut first = true;
    loop {
        let session = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Session::open(&brokers, &host, &mut cursors),
        )
        .await;
        match session {
            Ok(Ok(session)) => {
                if !first {
                    stats.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                first = false;
                delay = Duration::from_millis(100);
                stats.connected.store(true, Ordering::Relaxed);
                tracing::info!("bus: connected to kafka");
                let ended = session.run(&mut rx, &stats, &deliver, &mut cursors).await;
                stats.connected.store(false, Ordering::Relaxed);
                // A batch cut short is lost.
                let cut = stats.sending.swap(0, Ordering::Relaxed);
                stats.lost.fetch_add(cut, Ordering::Relaxed);
                match ended {
                    Ended::Closed => return,
                    Ended::Lost(KafkaError::Timeout) => tracing::warn!(
                        "bus: lost the connection to kafka (no answer in {STALL:?}); reconnecting"
                    ),
                    Ended::Lost(e) => {
                        tracing::warn!("bus: lost the connection to kafka ({e}); reconnecting")
                    }
                }
            }
            Ok(Err(e)) => tracing::debug!("bus: cannot connect to kafka: {e}"),
            Err(_) => tracing::debug!("bus: connecting to kafka timed out"),
        }
        // Whatever was queued for the broker while it was away is lost, and counted.
        while rx.try_recv().is_ok() {
            stats.lost.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Where reading one of this daemon's topics goes on.
struct Cursor {
    topic: String,
    /// Offset of the next record to read; `None` before the first connection.
    next: Option<i64>,
    /// Offset and timestamp of the last record read: if the topic no longer has that record
    /// there, it was made anew.
    last: Option<(i64, DateTime<Utc>)>,
}

impl Cursor {
    fn new(topic: String) -> Self {
        Self {
            topic,
            next: None,
            last: None,
        }
    }

    /// Where to read from on a fresh connection: the end on the first one; then where it
    /// stopped, or the beginning if the topic no longer holds that offset or no longer has
    /// the last record read in its place (it was made anew by a broker that kept nothing, and
    /// other daemons may already have put more records on it than this one had read), or its
    /// old records were deleted meanwhile.
    fn resume(&self, earliest: i64, latest: i64, last_still_there: bool) -> i64 {
        match self.next {
            None => latest,
            Some(n) if (earliest..=latest).contains(&n) && last_still_there => n,
            Some(_) => earliest,
        }
    }
}

/// Why a session ended.
enum Ended {
    /// The bridge was dropped: the daemon is going.
    Closed,
    /// The broker went away (or answered what it should not have).
    Lost(KafkaError),
}

/// One connection to the broker: its client, a reader for each of this daemon's topics and
/// the writers it made (`herd.all`'s from the start, so the first envelope does not wait for
/// it).
struct Session {
    client: Client,
    readers: [(PartitionClient, i64); 2],
    writers: HashMap<String, PartitionClient>,
}

impl Session {
    /// Connects, creates the topics that are missing and finds where to read them from.
    async fn open(
        brokers: &[String],
        host: &str,
        cursors: &mut [Cursor; 2],
    ) -> Result<Self, KafkaError> {
        let client = ClientBuilder::new(brokers.to_vec())
            .client_id(format!("herd-{host}"))
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
                base: 2.0,
                deadline: Some(RETRY_FOR),
            })
            .build()
            .await?;
        let controller = client.controller_client()?;
        for c in cursors.iter() {
            // Replication: the broker's default (-1).
            match controller.create_topic(c.topic.as_str(), 1, -1, 5000).await {
                Ok(()) => tracing::info!("bus: created the kafka topic {}", c.topic),
                Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::TopicAlreadyExists,
                    ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
        let [all, mine] = cursors;
        let all = reader(&client, all).await?;
        let mine = reader(&client, mine).await?;
        let writer = client
            .partition_client(ALL, 0, UnknownTopicHandling::Retry)
            .await?;
        Ok(Self {
            client,
            readers: [all, mine],
            writers: HashMap::from([(ALL.to_string(), writer)]),
        })
    }

    /// Reads both topics and produces what is queued until the broker goes away or the
    /// queue's sender is dropped.
    async fn run(
        self,
        rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
        stats: &BridgeStats,
        deliver: &Deliver,
        cursors: &mut [Cursor; 2],
    ) -> Ended {
        let Self {
            client,
            readers,
            writers,
        } = self;
        let [(all, at_all), (mine, at_mine)] = readers;
        let [c_all, c_mine] = cursors;
        c_all.next = Some(at_all);
        c_mine.next = Some(at_mine);
        // Each reader has a connection of its own (rskafka gives one to every partition
        // client), so a fetch waiting for records holds up neither the other nor a produce.
        tokio::select! {
            e = read(&all, c_all, stats, deliver) => Ended::Lost(e),
            e = read(&mine, c_mine, stats, deliver) => Ended::Lost(e),
            ended = produce(&client, writers, rx, stats) => ended,
        }
    }
}

/// A reader of `cursor`'s topic and where it starts.
async fn reader(
    client: &Client,
    cursor: &mut Cursor,
) -> Result<(PartitionClient, i64), KafkaError> {
    // Just created: a broker may not know it everywhere yet.
    let p = client
        .partition_client(cursor.topic.as_str(), 0, UnknownTopicHandling::Retry)
        .await?;
    let earliest = p.get_offset(OffsetAt::Earliest).await?;
    let latest = p.get_offset(OffsetAt::Latest).await?;
    let last_still_there = match cursor.last {
        None => true,
        Some((offset, at)) if (earliest..latest).contains(&offset) => {
            let (records, _) = p.fetch_records(offset, 1..FETCH_BYTES, 0).await?;
            records
                .iter()
                .any(|r| r.offset == offset && r.record.timestamp == at)
        }
        Some(_) => false,
    };
    let start = cursor.resume(earliest, latest, last_still_there);
    if !last_still_there {
        cursor.last = None;
    }
    Ok((p, start))
}

/// Delivers the records of `p` from `cursor.next` on, until the broker goes away.
async fn read(
    p: &PartitionClient,
    cursor: &mut Cursor,
    stats: &BridgeStats,
    deliver: &Deliver,
) -> KafkaError {
    let mut next = cursor.next.unwrap_or_default();
    loop {
        let fetched =
            tokio::time::timeout(STALL, p.fetch_records(next, 1..FETCH_BYTES, FETCH_WAIT_MS)).await;
        let (records, high) = match fetched.unwrap_or(Err(KafkaError::Timeout)) {
            Ok(r) => r,
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                match p.get_offset(OffsetAt::Earliest).await {
                    Ok(o) => next = o,
                    Err(e) => return e,
                }
                cursor.next = Some(next);
                continue;
            }
            Err(e) => return e,
        };
        if records.is_empty() && next > high {
            // The topic is newer than the offset (some brokers say so instead of
            // OffsetOutOfRange): it was made anew, all of it is unread.
            match p.get_offset(OffsetAt::Earliest).await {
                Ok(o) => next = o,
                Err(e) => return e,
            }
        }
        for r in records {
            // A compressed batch may begin before the offset asked for.
            if r.offset < next {
                continue;
            }
            next = r.offset + 1;
            cursor.last = Some((r.offset, r.record.timestamp));
            if let Some(bytes) = r.record.value {
                deliver(&bytes, stats);
            }
        }
        cursor.next = Some(next);
    }
}

/// Puts what is queued on the broker, in batches, until the queue's sender is dropped or the
/// broker goes away.
async fn produce(
    client: &Client,
    mut writers: HashMap<String, PartitionClient>,
    rx: &mut mpsc::Receiver<(String, Vec<u8>)>,
    stats: &BridgeStats,
) -> Ended {
    let mut queued = Vec::with_capacity(BATCH_RECORDS);
    loop {
        queued.clear();
        if rx.recv_many(&mut queued, BATCH_RECORDS).await == 0 {
            return Ended::Closed;
        }
        stats.sending.store(queued.len() as u64, Ordering::Relaxed);
        for (topic, records) in batches(queued.drain(..)) {
            let n = records.len() as u64;
            let put = async {
                match writer(client, &mut writers, &topic).await? {
                    Some(w) => w
                        .produce(records, Compression::NoCompression)
                        .await
                        .map(|_| true),
                    None => Ok(false),
                }
            };
            let result = tokio::time::timeout(STALL, put)
                .await
                .unwrap_or(Err(KafkaError::Timeout));
            stats.sending.fetch_sub(n, Ordering::Relaxed);
            match result {
                Ok(true) => {
                    stats.published.fetch_add(n, Ordering::Relaxed);
                }
                Ok(false) => {
                    // No daemon of that host has connected to this broker: nobody would read it.
                    stats.lost.fetch_add(n, Ordering::Relaxed);
                    tracing::debug!("bus: kafka has no topic {topic}: {n} messages lost");
                }
                Err(e) if gone(&e) => {
                    stats.lost.fetch_add(n, Ordering::Relaxed);
                    return Ended::Lost(e);
                }
                Err(e) => {
                    // The broker refused these (too large, say); the next ones may go.
                    stats.lost.fetch_add(n, Ordering::Relaxed);
                    writers.remove(&topic);
                    tracing::warn!("bus: kafka refused {n} messages for {topic}: {e}");
                }
            }
        }
    }
}

/// The writer of `topic`, made on first use; `None` when the topic does not exist (it is not
/// created here: anyone may address a host that never was).
async fn writer<'a>(
    client: &Client,
    writers: &'a mut HashMap<String, PartitionClient>,
    topic: &str,
) -> Result<Option<&'a PartitionClient>, KafkaError> {
    if !writers.contains_key(topic) {
        // Listing asks for no topic by name, so it never makes one on a broker that creates
        // topics on first mention.
        if topic != ALL && !client.list_topics().await?.iter().any(|t| t.name == topic) {
            return Ok(None);
        }
        let w = client
            .partition_client(topic, 0, UnknownTopicHandling::Error)
            .await?;
        writers.insert(topic.to_string(), w);
    }
    Ok(writers.get(topic))
}

/// Whether `e` means the broker is away (rather than refusing one request).
fn gone(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::Connection(_)
            | KafkaError::Request(_)
            | KafkaError::RetryFailed(_)
            | KafkaError::Timeout
    )
}

/// Groups what was queued into produce requests: by topic, in the order queued within each,
/// at most [`BATCH_BYTES`] a request (an envelope larger than that alone).
fn batches(queued: impl Iterator<Item = (String, Vec<u8>)>) -> Vec<(String, Vec<Record>)> {
    let mut out: Vec<(String, Vec<Record>, usize)> = Vec::new();
    let now = Utc::now();
    for (topic, bytes) in queued {
        let size = bytes.len() + RECORD_OVERHEAD;
        let record = Record {
            key: None,
            value: Some(bytes),
            headers: Default::default(),
            timestamp: now,
        };
        // The last open batch of this topic, if the record fits in it.
        let open = out
            .iter_mut()
            .rev()
            .find(|(t, _, _)| *t == topic)
            .filter(|(_, _, used)| used + size <= BATCH_BYTES);
        match open {
            Some((_, records, used)) => {
                records.push(record);
                *used += size;
            }
            None => out.push((topic, vec![record], size)),
        }
    }
    out.into_iter().map(|(t, r, _)| (t, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            bootstrap("kafka://127.0.0.1:9093").unwrap(),
            ["127.0.0.1:9093"]
        );
        assert_eq!(bootstrap("kafka://a,b:1/").unwrap(), ["a:9092", "b:1"]);
        assert_eq!(bootstrap("kafka://[::1]").unwrap(), ["[::1]:9092"]);
        assert_eq!(bootstrap("kafka://[::1]:7").unwrap(), ["[::1]:7"]);
        assert!(bootstrap("kafka://u:p@h:1").unwrap_err().contains("SASL"));
        assert!(bootstrap("kafka://h:x").unwrap_err().contains("port"));
        assert!(bootstrap("kafka://").unwrap_err().contains("no host"));
        assert!(bootstrap("kafka://h:1/topic").is_err());
    }

    #[test]
    fn cursors_resume_where_they_can() {
        let mut c = Cursor::new("t".into());
        // First connection: from the end, no history.
        assert_eq!(c.resume(0, 10, true), 10);
        c.next = Some(7);
        assert_eq!(c.resume(0, 10, true), 7);
        // Made anew, shorter than what was read: all of it.
        assert_eq!(c.resume(0, 3, true), 0);
        // Made anew and already longer: the last record read is not in its place.
        assert_eq!(c.resume(0, 10, false), 0);
        // Old records deleted past the offset: from the oldest kept.
        assert_eq!(c.resume(8, 12, true), 8);
    }

    #[test]
    fn batches_keep_order_per_topic_and_cap_bytes() {
        let q = |t: &str, n: usize| (t.to_string(), vec![b'x'; n]);
        let out = batches(
            [
                q("a", 10),
                q("b", 10),
                q("a", BATCH_BYTES - 10 - 2 * RECORD_OVERHEAD),
                q("a", 1),
                q("a", BATCH_BYTES * 2),
                q("b", 1),
            ]
            .into_iter(),
        );
        let shape: Vec<(&str, Vec<usize>)> = out
            .iter()
            .map(|(t, r)| {
                (
                    t.as_str(),
                    r.iter().map(|r| r.value.as_ref().unwrap().len()).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("a", vec![10, BATCH_BYTES - 10 - 2 * RECORD_OVERHEAD]),
                ("b", vec![10, 1]),
                ("a", vec![1]),
                ("a", vec![BATCH_BYTES * 2]),
            ]
        );
    }
}
