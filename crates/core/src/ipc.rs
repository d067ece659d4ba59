//! The per-instance IPC channel (`HERD_IPC_FD`): a Unix stream socket pair, one JSON object per
//! line in each direction. For now the daemon reads it for readiness (`{"herd":"ready"}`);
//! the message bus builds on the same channel.

use herd_proto::{LineBuffer, LineError};
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;

/// Largest message an instance may send on its channel.
pub const MAX_IPC_MESSAGE: usize = 1 << 20;

/// What arrived on an instance's channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The instance is ready to serve.
    Ready,
    /// A well-formed message herd does not act on yet.
    Other(serde_json::Value),
    /// A line that is not JSON; it is dropped.
    Malformed(String),
}

/// Classifies one line from an instance.
pub fn classify(line: &[u8]) -> Inbound {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(v) => {
            if v.get("herd").and_then(|h| h.as_str()) == Some("ready") || v == "ready" {
                Inbound::Ready
            } else {
                Inbound::Other(v)
            }
        }
        Err(e) => Inbound::Malformed(e.to_string()),
    }
}

/// Reads the channel until it closes or the peer sends an oversized line (then the channel is
/// dropped: a stream cannot be resynchronised mid-line).
pub async fn serve(mut rx: OwnedReadHalf, mut on_message: impl FnMut(Inbound)) {
    let mut lines = LineBuffer::new(MAX_IPC_MESSAGE);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        lines.extend(&buf[..n]);
        loop {
            match lines.next_line() {
                Ok(Some(line)) if line.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Some(line)) => on_message(classify(&line)),
                Ok(None) => break,
                Err(LineError::TooLong { limit }) => {
                    on_message(Inbound::Malformed(format!(
                        "message longer than {limit} bytes; channel closed"
                    )));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(br#"{"herd":"ready"}"#), Inbound::Ready);
        assert_eq!(classify(br#""ready""#), Inbound::Ready);
        assert!(matches!(classify(br#"{"x":1}"#), Inbound::Other(_)));
        assert!(matches!(classify(b"{nope"), Inbound::Malformed(_)));
    }
}
