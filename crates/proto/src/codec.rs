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
///
/// Lines are taken from the front by moving an offset, not the bytes: a read full of short
/// lines costs one copy of each line, not one move of the rest of the buffer per line (which
/// made a flood of short garbage lines quadratic).
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Where the first byte not yet taken is in `buf`.
    start: usize,
    limit: usize,
    /// Dropping the rest of an oversized line, up to its newline.
    skipping: bool,
    /// Bytes after `start` already scanned for a newline, so each byte is scanned once.
    scanned: usize,
}

impl LineBuffer {
    /// A buffer that refuses lines longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self::from_parts(limit, Vec::new(), false)
    }

    /// The bytes not yet taken.
    fn rest(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Forgets the first `n` bytes not yet taken.
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
        self.scanned = 0;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= self.buf.len() / 2 {
            // Moving what is left costs no more than what was taken since the last move.
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, mut bytes: &[u8]) {
        if self.skipping {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.skipping = false;
                    bytes = bytes.get(i + 1..).unwrap_or_default();
                }
                None => return,
            }
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Drops the oversized line in progress (up to its newline, even if that is still to
    /// come), so a peer that sent one too large can go on with the next.
    pub fn skip_current(&mut self) {
        match self.rest().iter().position(|&b| b == b'\n') {
            Some(i) => self.consume(i + 1),
            None => {
                self.buf.clear();
                self.start = 0;
                self.scanned = 0;
                self.skipping = true;
            }
        }
    }

    /// Takes the next complete line, if any.
    ///
    /// # Errors
    /// [`LineError::TooLong`] when the current line passes the limit; the buffer should then
    /// be dropped together with the connection, since the stream cannot be resynchronised.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineError> {
        let rest = self.rest();
        let found = rest
            .get(self.scanned..)
            .and_then(|r| r.iter().position(|&b| b == b'\n'));
        if let Some(pos) = found {
            let end = self.scanned + pos;
            if end > self.limit {
                return Err(LineError::TooLong { limit: self.limit });
            }
            let mut line = rest.get(..end).unwrap_or_default();
            if line.last() == Some(&b'\r') {
                line = line.get(..line.len() - 1).unwrap_or_default();
            }
            let line = line.to_vec();
            self.consume(end + 1);
            return Ok(Some(line));
        }
        let held = rest.len();
        self.scanned = held;
        if held > self.limit {
            return Err(LineError::TooLong { limit: self.limit });
        }
        Ok(None)
    }

    /// Bytes held that do not yet form a complete line.
    pub fn pending(&self) -> usize {
        self.rest().len()
    }

    /// The bytes held and whether the rest of an oversized line is being dropped, to move the
    /// buffer elsewhere ([`LineBuffer::from_parts`]).
    pub fn parts(&self) -> (Vec<u8>, bool) {
        (self.rest().to_vec(), self.skipping)
    }

    /// A buffer holding `buf`, as [`LineBuffer::parts`] gave it.
    pub fn from_parts(limit: usize, buf: Vec<u8>, skipping: bool) -> Self {
        Self {
            buf,
            start: 0,
            limit,
            skipping,
            scanned: 0,
        }
    }
}

/// Why a value could not be written as a line.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde_json refused the value (a map with keys that are not strings, a path that is
    /// not UTF-8, a `Serialize` impl that fails). The protocol's own types hold only strings,
    /// numbers and JSON values, so this is a bug in whoever built the value.
    #[error("cannot encode the message as JSON: {source}")]
    Json {
        /// What serde_json said.
        #[from]
        source: serde_json::Error,
    },
}

/// Serialises `value` as one JSON line, newline included.
///
/// # Errors
/// [`EncodeError::Json`] when serde_json refuses `value`.
pub fn encode_line<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = serde_json::to_vec(value)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_short_lines_in_one_read_come_out_in_order_with_the_rest_kept() {
        let mut b = LineBuffer::new(64);
        let mut input = Vec::new();
        for i in 0..1000 {
            input.extend_from_slice(format!("line {i}\r\n").as_bytes());
        }
        input.extend_from_slice(b"partial");
        b.extend(&input);
        for i in 0..1000 {
            assert_eq!(
                b.next_line().unwrap().unwrap(),
                format!("line {i}").into_bytes()
            );
        }
        assert_eq!(b.next_line().unwrap(), None);
        assert_eq!(b.pending(), 7);
        assert_eq!(b.parts().0, b"partial");
        b.extend(b" end\n");
        assert_eq!(b.next_line().unwrap().unwrap(), b"partial end");
        assert_eq!(b.pending(), 0);
    }

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
