'use strict';
// herd's Node preloads (primary.cjs, worker.cjs): one JSON object per line on a connected
// net.Socket, the way Node's own IPC channel carries a cluster's messages.
//
// Why not the socket's stream API: a message round trip primary → worker → primary is a few
// tens of µs, and the stream machinery (Writable.write, write requests, Readable.push, the
// string decoder, 'data' events) costs several µs of it on each side. Node's IPC channel
// skips all of it: it writes each line with the pipe handle's writeUtf8String and reads in
// the handle's onread. So does this, with the same handle the socket holds (the socket keeps
// owning it: end(), destroy(), 'close' and 'error' are the socket's as usual).
//
// It needs Node's stream_wrap binding (process.binding, which Node 20 to 24 still give). Where
// it is missing or not as expected (another runtime, another Node), or where reaching it would
// print a deprecation warning (--pending-deprecation), the stream API is used instead: the same
// lines, a little slower.

let sw = null;
function streamWrap() {
  if (sw !== null) return sw || null;
  sw = false;
  try {
    const opts = `${process.env.NODE_OPTIONS || ''} ${process.execArgv.join(' ')}`;
    if (/--pending-deprecation/.test(opts) || process.env.NODE_PENDING_DEPRECATION === '1') return null;
    if (typeof process.binding !== 'function' || process.versions.bun || process.versions.deno) return null;
    const b = process.binding('stream_wrap');
    if (typeof b.WriteWrap === 'function' && b.streamBaseState && Number.isInteger(b.kReadBytesOrError)
      && Number.isInteger(b.kArrayBufferOffset)) {
      sw = b;
    }
  } catch (_) {
    // Not there: the stream API.
  }
  return sw || null;
}

function noop() {}

// Calls onObject(obj) with each JSON object that arrives on `sock` (a line that is not an
// object is skipped). Returns the writer of the socket: write(line) sends one line (the string
// ends with '\n'), queued() is how many bytes wait to be written.
function lines(sock, onObject) {
  const b = streamWrap();
  const h = sock._handle;
  if (b !== null && h && typeof h.writeUtf8String === 'function' && typeof h.onread === 'function'
    && typeof h.writeQueueSize === 'number') {
    return fast(b, sock, h, onObject);
  }
  return slow(sock, onObject);
}

function parseInto(text, onObject) {
  let start = 0;
  let nl;
  while ((nl = text.indexOf('\n', start)) >= 0) {
    const line = text.slice(start, nl);
    start = nl + 1;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (_) {
      continue;
    }
    if (msg !== null && typeof msg === 'object') onObject(msg);
  }
}

function fast(b, sock, h, onObject) {
  const state = b.streamBaseState;
  const streamOnread = h.onread;
  let rest = null; // bytes after the last newline read so far
  h.onread = function onread(arrayBuffer) {
    const nread = state[b.kReadBytesOrError];
    if (!(nread > 0) || !arrayBuffer) {
      // End of stream or an error: the socket's own handling (its 'end', 'close', 'error').
      return streamOnread.call(this, arrayBuffer);
    }
    let chunk = Buffer.from(arrayBuffer, state[b.kArrayBufferOffset], nread);
    if (rest !== null) {
      chunk = Buffer.concat([rest, chunk]);
      rest = null;
    }
    const last = chunk.lastIndexOf(10);
    if (last < 0) {
      rest = Buffer.from(chunk); // a copy: a view would keep the whole read buffer
      return undefined;
    }
    // A whole line ends with '\n', never inside a UTF-8 sequence: decoding up to it is exact.
    if (last + 1 < chunk.length) rest = Buffer.from(chunk.subarray(last + 1));
    parseInto(chunk.toString('utf8', 0, last + 1), onObject);
    return undefined;
  };
  return {
    write(line) {
      if (sock.destroyed || h !== sock._handle) return false;
      const req = new b.WriteWrap();
      req.handle = h;
      req.oncomplete = noop;
      req.async = false;
      const err = h.writeUtf8String(req, line);
      if (err !== 0) {
        // As Node's channel: a failed write closes the link; its 'close' says the rest.
        sock.destroy();
        return false;
      }
      return true;
    },
    queued() {
      return h.writeQueueSize;
    },
  };
}

function slow(sock, onObject) {
  sock.setEncoding('utf8');
  let buffered = '';
  sock.on('data', (chunk) => {
    buffered += chunk;
    const last = buffered.lastIndexOf('\n');
    if (last < 0) return;
    const text = buffered.slice(0, last + 1);
    buffered = buffered.slice(last + 1);
    parseInto(text, onObject);
  });
  return {
    write(line) {
      if (sock.destroyed) return false;
      sock.write(line);
      return true;
    },
    queued() {
      return sock.writableLength;
    },
  };
}

// Whether lines() takes the handle's own path (for the tests).
function usesHandle() {
  return streamWrap() !== null;
}

module.exports = { lines, usesHandle };
