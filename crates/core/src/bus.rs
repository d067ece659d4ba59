//! The message bus's shared pieces: addresses, the envelope daemons exchange, and the bridge
//! that carries envelopes between daemons on different hosts through a real broker (Redis
//! pub/sub, NATS or Kafka).
//!
//! Routing itself (who gets what on this host) is the supervisor's; this module only names
//! things and moves bytes to and from the broker. herd keeps no membership of its own: a
//! daemon subscribes to `herd.all` (publishes, app-wide and broadcast messages) and to
//! `herd.host.<its host>` (messages addressed to it), and that is all. (With Kafka these are
//! topics of one partition, which each daemon creates when they are missing.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// Where a message goes: `api:3`, `api`, `*` (or `all`), each optionally `@host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// App name or id; `None` for every app.
    pub app: Option<String>,
    /// One instance of the app.
    pub instance: Option<u32>,
    /// One host; `None` for every host (or, for one instance, this host).
    pub host: Option<String>,
}

impl Address {
    /// Reads an address.
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("cannot read address {s:?}: use app, app:INSTANCE or * (each optionally @host)")
        };
        let (target, host) = match s.split_once('@') {
            Some((t, h)) if !h.is_empty() => (t, Some(h.to_string())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        if target == "*" || target == "all" || target.is_empty() && host.is_some() {
            return Ok(Self {
                app: None,
                instance: None,
                host,
            });
        }
        let (app, instance) = match target.rsplit_once(':') {
            Some((a, i)) => (a, Some(i.parse::<u32>().map_err(|_| bad())?)),
            None => (target, None),
        };
        if app.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            app: Some(app.to_string()),
            instance,
            host,
        })
    }

    /// Whether the address can reach instances on `host` (this daemon's).
    pub fn reaches(&self, host: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == host)
    }

    /// Whether it can reach instances on other hosts.
    pub fn reaches_others(&self, host: &str) -> bool {
        match &self.host {
            Some(h) => h != host,
            // One instance without a host means this host's.
            None => self.instance.is_none(),
        }
    }
}

/// What an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// To instances named by `to`.
    Send,
    /// To whoever subscribed to `topic`.
    Publish,
    /// To one instance named by `to`; a `reply` is awaited.
    Request,
    /// The answer to `reply_to`.
    Reply,
    /// A request could not be delivered or answered.
    Error,
}

/// A message as daemons exchange it over the broker, and as `herd bus` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// What it is.
    pub kind: Kind,
    /// Sender: `app:i@host` or `cli@host`.
    pub from: String,
    /// Host of the daemon that put it on the bus.
    pub origin: String,
    /// Address, for send and request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Topic, for publish (and optionally send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The payload.
    #[serde(default)]
    pub data: Value,
    /// Request id, unique per origin (`host:n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Request this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// Counters of a bridge, visible in `herd describe`.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Connected to the broker now.
    pub connected: AtomicBool,
    /// Envelopes put on the broker.
    pub published: AtomicU64,
    /// Envelopes taken from the broker.
    pub received: AtomicU64,
    /// Envelopes that could not be put on the broker (it was away, or the queue was full).
    pub lost: AtomicU64,
    /// Times the connection was made again after losing it.
    pub reconnects: AtomicU64,
    /// Envelopes taken off the queue whose put on the broker has not finished yet (Kafka sends
    /// what is queued in batches): they still wait, as far as `herd update` is concerned.
    pub(crate) sending: AtomicU64,
}

#[cfg(feature = "bridge")]
mod brokers;

/// Why a topic (or an address, or a request id) named by an instance or the CLI is refused.
/// Never repeats the name: it may be a megabyte. `None` when it is within the limit
/// (`max_topic_bytes`).
pub fn topic_refusal(limits: &crate::Limits, what: &str, len: usize) -> Option<String> {
    (len > limits.max_topic_bytes).then(|| {
        format!(
            "{what} of {len} bytes refused: over the limit of {} bytes (max_topic_bytes; raise it in HERD_HOME/config.toml)",
            limits.max_topic_bytes
        )
    })
}

/// The broker channel of every daemon.
pub const ALL: &str = "herd.all";

/// How the URLs of the brokers herd speaks to begin.
pub const SCHEMES: [&str; 4] = ["redis://", "rediss://", "nats://", "kafka://"];

/// The broker channel of one host's daemon.
pub fn host_channel(host: &str) -> String {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("herd.host.{safe}")
}

/// Why a [`Bridge`] cannot start. The messages name the URL with its password hidden.
///
/// The message is whole in `Display`, so the error underneath is not also given as
/// `source()`: a chain would show it twice.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The URL is not of a broker herd speaks to.
    #[error(
        "bus URL {url} is not supported: use redis://HOST:PORT, nats://HOST:PORT or kafka://HOST:PORT"
    )]
    Unsupported {
        /// The URL, password hidden.
        url: String,
    },
    /// This build has no broker support.
    #[error("this build of herd has no broker support (cargo feature `bridge`); cannot use {url}")]
    NotBuilt {
        /// The URL, password hidden.
        url: String,
    },
    /// The broker's client cannot read the URL.
    #[cfg(feature = "bridge")]
    #[error("cannot read bus URL {url}: {error}")]
    BadUrl {
        /// The URL, password hidden.
        url: String,
        /// What is wrong with it.
        error: String,
    },
}

/// Checks a bus URL as [`Bridge::start`] does, without connecting: for settings, so that a
/// wrong URL is named before the daemon starts.
///
/// # Errors
/// As [`Bridge::start`].
pub fn check_url(url: &str) -> Result<(), BridgeError> {
    let shown = hide_password(url);
    if !SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(BridgeError::Unsupported { url: shown });
    }
    #[cfg(not(feature = "bridge"))]
    {
        Err(BridgeError::NotBuilt { url: shown })
    }
    #[cfg(feature = "bridge")]
    {
        brokers::check(url).map_err(|error| BridgeError::BadUrl { url: shown, error })
    }
}

/// A connection to the broker, kept up by a task of its own.
#[derive(Clone)]
pub struct Bridge {
    tx: mpsc::Sender<(String, Vec<u8>)>,
    /// Its counters.
    pub stats: Arc<BridgeStats>,
    /// The URL with any password hidden, for display.
    pub url: String,
}

impl Bridge {
    /// Connects (in the background) to the broker at `url` and calls `on_envelope` for every
    /// envelope on `herd.all` (except this host's own) and on this host's channel. Unreadable
    /// envelopes are logged at most `log.0` times per `log.1`.
    ///
    /// # Errors
    /// [`BridgeError::Unsupported`] when the URL is not `redis://…`, `rediss://…`, `nats://…`
    /// or `kafka://…`, [`BridgeError::BadUrl`] when it cannot be read,
    /// [`BridgeError::NotBuilt`] without the `bridge` feature.
    pub fn start(
        url: &str,
        host: &str,
        log: (u32, std::time::Duration),
        on_envelope: impl Fn(Envelope) + Send + Sync + 'static,
    ) -> Result<Self, BridgeError> {
        let (log_burst, log_interval) = log;
        let shown = hide_password(url);
        if !SCHEMES.iter().any(|s| url.starts_with(s)) {
            return Err(BridgeError::Unsupported { url: shown });
        }
        #[cfg(not(feature = "bridge"))]
        {
            let _ = (host, on_envelope, log_burst, log_interval);
            Err(BridgeError::NotBuilt { url: shown })
        }
        #[cfg(feature = "bridge")]
        {
            let stats = Arc::new(BridgeStats::default());
            let (tx, rx) = mpsc::channel(4096);
            let host = host.to_string();
            let me = host.clone();
            // Whoever can publish on the broker must not fill this daemon's log either.
            let noisy =
                std::sync::Mutex::new(crate::ratelimit::LogLimit::new(log_burst, log_interval));
            let deliver = Arc::new(move |bytes: &[u8], stats: &BridgeStats| {
                stats.received.fetch_add(1, Ordering::Relaxed);
                match serde_json::from_slice::<Envelope>(bytes) {
                    Ok(env) if env.origin != me => on_envelope(env),
                    Ok(_) => {}
                    Err(e) => {
                        let admit = noisy
                            .lock()
                            .map(|mut l| l.admit(tokio::time::Instant::now()));
                        match admit {
                            Ok(crate::ratelimit::Admit::Log { suppressed: 0 }) => {
                                tracing::warn!("bus: unreadable envelope from the broker dropped: {e}")
                            }
                            Ok(crate::ratelimit::Admit::Log { suppressed }) => tracing::warn!(
                                "bus: unreadable envelope from the broker dropped: {e} ({suppressed} more suppressed before it)"
                            ),
                            _ => {}
                        }
                    }
                }
            });
            if let Err(error) = brokers::spawn(url, host, rx, stats.clone(), deliver) {
                return Err(BridgeError::BadUrl { url: shown, error });
            }
            Ok(Self {
                tx,
                stats,
                url: shown,
            })
        }
    }

    /// Whether envelopes wait to be put on the broker (while it is connected).
    pub fn has_queued(&self) -> bool {
        self.stats.connected.load(Ordering::Relaxed)
            && (self.tx.capacity() < self.tx.max_capacity()
                || self.stats.sending.load(Ordering::Relaxed) > 0)
    }

    /// Puts an envelope on a broker channel. Never waits: while the broker is away, or if the
    /// queue is full, the envelope is counted as lost.
    pub fn publish(&self, channel: &str, env: &Envelope) {
        if !self.stats.connected.load(Ordering::Relaxed) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let bytes = match serde_json::to_vec(env) {
            Ok(bytes) => bytes,
            Err(e) => {
                // Envelopes hold strings and JSON values only: this is not expected to happen.
                tracing::warn!("bus: an envelope could not be encoded for the broker: {e}");
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if self.tx.try_send((channel.to_string(), bytes)).is_err() {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn hide_password(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?.1)))
    {
        Some((scheme, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(feature = "bridge")]
type Deliver = Arc<dyn Fn(&[u8], &BridgeStats) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = Address::parse("api:3@b").unwrap();
        assert_eq!(
            (a.app.as_deref(), a.instance, a.host.as_deref()),
            (Some("api"), Some(3), Some("b"))
        );
        let a = Address::parse("api").unwrap();
        assert!(a.reaches("x") && a.reaches_others("x"));
        let a = Address::parse("api:1").unwrap();
        assert!(a.reaches("x") && !a.reaches_others("x"));
        let a = Address::parse("*").unwrap();
        assert_eq!(a.app, None);
        let a = Address::parse("api:0@me").unwrap();
        assert!(a.reaches("me") && !a.reaches_others("me"));
        assert!(Address::parse("api:x").is_err());
        assert!(Address::parse("api@").is_err());
        assert!(Address::parse(":1").is_err());
    }

    #[test]
    fn channels_and_urls() {
        assert_eq!(
            host_channel("web-1.example.com"),
            "herd.host.web-1_example_com"
        );
        assert_eq!(
            hide_password("redis://:secret@127.0.0.1:6379"),
            "redis://***@127.0.0.1:6379"
        );
        assert_eq!(
            hide_password("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(hide_password("a@b://c"), "a@b://c");
        assert_eq!(hide_password("x://u:p@h@i/p"), "x://***@i/p");
        assert!(check_url("kafka://127.0.0.1:9092").is_ok());
        assert!(check_url("nats://127.0.0.1:4222").is_ok());
        assert!(check_url("redis://127.0.0.1:6379").is_ok());
        assert_eq!(
            check_url("kafka://u:pw@h:1").map_err(|e| e.to_string()),
            Err("cannot read bus URL kafka://***@h:1: kafka:// takes no user or password (herd does not speak SASL to Kafka)".into())
        );
        let refused = Bridge::start(
            "http://u:pw@x",
            "h",
            (1, std::time::Duration::from_secs(1)),
            |_| {},
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            refused.as_deref(),
            Some(
                "bus URL http://***@x is not supported: use redis://HOST:PORT, nats://HOST:PORT or kafka://HOST:PORT"
            )
        );
    }

    #[test]
    fn envelope_wire_shape() {
        let e = Envelope {
            kind: Kind::Publish,
            from: "api:0@a".into(),
            origin: "a".into(),
            to: None,
            topic: Some("news".into()),
            data: serde_json::json!({"x": 1}),
            id: None,
            reply_to: None,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"kind":"publish","from":"api:0@a","origin":"a","topic":"news","data":{"x":1}}"#
        );
    }
}
