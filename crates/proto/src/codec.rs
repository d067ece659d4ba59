//! Newline-delimited JSON framing with a hard size limit.
//!
//! A peer that sends a line longer than the limit gets [`LineError::TooLong`] as soon as the
//! limit is passed, without the rest being buffered: a 100 MB message costs the reader at most
//! `limit` bytes of memory.

use serde::Serialize;

/// Largest control message, in bytes, that either side accepts (1 MiB).
pub const MAX_CONTROL_LINE: usize = 1 << 20;

/// Why a line could not be taken from a [`LineBuffer`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    /// The line in progress is already longer than the limit.
    #[error("message longer than {limit} bytes; split it or raise the limit")]
    TooLong {
        /// The limit that was passed.
        limit: usize,
    },
}

/// Accumulates bytes and yields complete lines (without the trailing `\n`).
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    limit: usize,
    /// Dropping the rest of an oversized line, up to its newline.
    skipping: bool,
    /// Bytes of `buf` already scanned for a newline, so each byte is scanned once.
    scanned: usize,
}

impl LineBuffer {
    /// A buffer that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            skipping: false,
            scanned: 0,
        }
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, mut bytes: &[u8]) {
        if self.skipping {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.skipping = false;
                    bytes = &bytes[i + 1..];
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Drops the oversized line in progress (up to its newline, even if that is still to
    /// come), so a peer that sent one too large can go on with the next.
    pub fn skip_current(&mut self) {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.buf.drain(..=i);
            }
            None => {
                self.buf.clear();
                self.skipping = true;
            }
        }
        self.scanned = 0;
    }

    /// Takes the next complete line, if any.
    ///
    /// # Errors
    /// [`LineError::TooLong`] when the current line passes the limit; the buffer should then
    /// be dropped together with the connection, since the stream cannot be resynchronised.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + pos;
            if end > self.limit {
                return Err(LineError::TooLong { limit: self.limit });
            }
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.scanned = 0;
            return Ok(Some(line));
        }
        self.scanned = self.buf.len();
        if self.buf.len() > self.limit {
            return Err(LineError::TooLong { limit: self.limit });
        }
        Ok(None)
    }

    /// Bytes held that do not yet form a complete line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The bytes held and whether the rest of an oversized line is being dropped, to move the
    /// buffer elsewhere ([`LineBuffer::from_parts`]).
    pub fn parts(&self) -> (Vec<u8>, bool) {
        (self.buf.clone(), self.skipping)
    }

    /// A buffer holding `buf`, as [`LineBuffer::parts`] gave it.
    pub fn from_parts(limit: usize, buf: Vec<u8>, skipping: bool) -> Self {
        Self {
            buf,
            limit,
            skipping,
            scanned: 0,
        }
    }
}

/// Serialises `value` as one JSON line, newline included.
pub fn encode_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).expect("protocol types always serialise");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_reads() {
        let mut b = LineBuffer::new(64);
        b.extend(b"{\"a\":1}\n{\"b\"");
        assert_eq!(b.next_line().unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(b.next_line().unwrap(), None);
        b.extend(b":2}\r\n");
        assert_eq!(b.next_line().unwrap().unwrap(), b"{\"b\":2}");
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn oversized_line_is_refused_before_newline_arrives() {
        let mut b = LineBuffer::new(8);
        b.extend(b"0123456789");
        assert_eq!(b.next_line(), Err(LineError::TooLong { limit: 8 }));
    }

    #[test]
    fn after_an_oversized_line_the_next_one_is_read() {
        let mut b = LineBuffer::new(4);
        b.extend(b"0123456789");
        assert!(b.next_line().is_err());
        b.skip_current();
        b.extend(b"abc\nok\n");
        assert_eq!(b.next_line().unwrap().unwrap(), b"ok");
        let mut b = LineBuffer::new(4);
        b.extend(b"0123456\nok\n");
        assert!(b.next_line().is_err());
        b.skip_current();
        assert_eq!(b.next_line().unwrap().unwrap(), b"ok");
    }

    #[test]
    fn oversized_line_with_newline_is_refused() {
        let mut b = LineBuffer::new(4);
        b.extend(b"0123456\nok\n");
        assert_eq!(b.next_line(), Err(LineError::TooLong { limit: 4 }));
    }
}
