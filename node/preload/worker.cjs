'use strict';
// herd's preload for Node cluster workers. herd puts `--require "<this file>"` in front of the
// app's own NODE_OPTIONS (crates/core/src/node_shims.rs embeds this file and writes it to
// HERD_HOME/node/); `HERD_NODE_PRELOAD=off` in the app's environment leaves it out.
//
// What it is for: a stop or reload must not drop a request on a kept-alive connection. Node's
// own graceful stop (cluster `disconnect` → `server.close()`) closes idle keep-alive
// connections at once, which races with a client that is just reusing one: the client sees
// its connection closed before any answer. Instead, on herd's `drain` this:
//   1. stops accepting (the listening handle is closed; the connections are not);
//   2. answers every request from then on with `Connection: close` (and one already under way,
//      if its headers are not sent yet), so clients leave by themselves after their answer;
//   3. closes a connection only once it has stayed idle for the whole grace period (no
//      request under way, not a byte received);
//   4. says `drained` when its servers are closed and their connections gone; herd then sends
//      Node's usual `disconnect`.
//
// Protocol (typed in crates/core/src/node.rs, `PreloadMsg`). Objects whose `cmd` starts with
// `NODE_` go to process.on('internalMessage'), never to the app's 'message' listeners:
//   worker → herd  {cmd:'NODE_HERD', act:'hello', version:1}    at load: it understands drain
//   herd → worker  {cmd:'NODE_HERD', act:'drain', grace_ms:N}
//   worker → herd  {cmd:'NODE_HERD', act:'drained'}
//   both ways      {cmd:'NODE_HERD', act:'fence', n:N[, primary:PID]}   (see below)
//   worker → herd  {cmd:'NODE_HERD', act:'barrier', n:N}                (see below)
//
// And in a worker of an app with its own primary (`herd start app.js --primary`), whose
// messages to and from the primary would otherwise go through the daemon: a direct link to
// the primary, a Unix socket (HERD_PRIMARY_LINK) the daemon binds and the primary accepts on.
// One JSON object per line: the worker's {hello: <worker id>, pid}, the primary's {welcome:
// <its pid>}, then messages {f: <fence>, m: <the message>} both ways. The app's own messages
// to the primary (not Node's, not herd's bus) take the link once it is up; everything else
// still goes through herd. Node keeps a worker's messages in order on its one channel: here a
// message on the link waits until the last fence its sender sent through herd has arrived,
// so what went through herd before it (Node's `online` and `listening`, messages from before
// the link was up) comes first. The other way round, a worker that sends through herd after
// sending on the link first writes a barrier {b: N} on the link and sends {act:'barrier', n:N}
// through herd: the primary takes nothing more of the worker's from herd until it has read
// the link up to that barrier. (A worker's `disconnect` and `exit` wait for its link to close.)
//
// It does nothing in a process that is not a herd cluster worker, and takes itself out of
// NODE_OPTIONS at once so that node processes the app starts do not load it. No dependencies;
// the app's code is untouched but for `net.Server.prototype.listen`, wrapped to see servers.

(function herdWorkerPreload() {
  dropOwnOption();
  const cluster = require('cluster');
  if (!cluster.isWorker || typeof process.send !== 'function' || !process.env.HERD_APP) return;

  const net = require('net');
  const http = require('http');
  const { lines } = require('./lines.cjs');

  const CMD = 'NODE_HERD';
  const VERSION = 1;
  const REQUEST_START = 'http.server.request.start';

  // Every server that listened; the open connections of its HTTP servers; and, once draining,
  // the idle timer of each connection.
  const servers = new Set();
  const conns = new Set();
  const idle = new Map(); // socket → { timer, mark }
  let drain = null; // { grace, pending, sent } once herd asked

  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = {
    listen(...args) {
      track(this);
      return listen.apply(this, args);
    },
  }.listen;

  function track(server) {
    if (servers.has(server)) return;
    servers.add(server);
    const https = httpsServer();
    const isHttps = https !== null && server instanceof https;
    if (!isHttps && !(server instanceof http.Server)) return;
    server.prependListener(isHttps ? 'secureConnection' : 'connection', onConnection);
  }

  // Per connection, and as little as possible (no closure, no object): a request's path is
  // not touched at all until a drain.
  function onConnection(socket) {
    conns.add(socket);
    socket.on('close', onSocketClose);
    if (drain) idleSoon(socket);
  }

  function onSocketClose() {
    conns.delete(this);
    if (!drain) return;
    forgetIdle(this);
    settle();
  }

  // https.Server, if the app loaded it: loading it here would cost every worker about 1 MB (tls),
  // and a server cannot be an https.Server before the app loaded the module.
  function httpsServer() {
    const loaded = process.moduleLoadList;
    if (Array.isArray(loaded) && !loaded.includes('NativeModule https')) return null;
    return require('https').Server;
  }

  function send(act, more) {
    try {
      process.send({ cmd: CMD, act, ...more });
    } catch (_) {
      // The channel is gone: herd stops the process by signal instead.
    }
  }

  function onDrain(graceMs) {
    if (drain) return;
    drain = { grace: Math.max(0, Math.min(Number(graceMs) || 0, 600000)), pending: 0, sent: false };
    const dc = require('diagnostics_channel');
    if (typeof dc.subscribe === 'function') dc.subscribe(REQUEST_START, onRequest);
    else dc.channel(REQUEST_START).subscribe(onRequest);
    for (const server of servers) {
      if (!server.listening) continue;
      drain.pending++;
      // net's close, not http's: http's also closes idle keep-alive connections at once.
      net.Server.prototype.close.call(server, () => {
        drain.pending--;
        settle();
      });
    }
    for (const socket of conns) {
      const res = socket._httpMessage; // the answer under way, if any
      if (res) {
        if (!res.headersSent) res.shouldKeepAlive = false;
        res.once('close', () => afterResponse(socket, res));
      } else {
        idleSoon(socket);
      }
    }
    settle();
  }

  // A request after the drain began: its answer says `Connection: close`.
  function onRequest({ response, socket }) {
    if (!conns.has(socket)) return;
    response.shouldKeepAlive = false;
    forgetIdle(socket);
    response.once('close', () => afterResponse(socket, response));
  }

  // An answer is done. If the connection stays open (its answer went out as keep-alive
  // before the drain, or the app set `Connection: keep-alive` itself), it gets the grace.
  function afterResponse(socket, res) {
    if (socket.destroyed || socket.writableEnded) return;
    const next = socket._httpMessage; // a pipelined answer that follows
    if (next && next !== res) {
      if (!next.headersSent) next.shouldKeepAlive = false;
      next.once('close', () => afterResponse(socket, next));
      return;
    }
    idleSoon(socket);
  }

  function idleSoon(socket) {
    forgetIdle(socket);
    const timer = setTimeout(() => setImmediate(closeIfIdle, socket), drain.grace);
    timer.unref();
    idle.set(socket, { timer, mark: socket.bytesRead });
  }

  function forgetIdle(socket) {
    const st = idle.get(socket);
    if (st === undefined) return;
    clearTimeout(st.timer);
    idle.delete(socket);
  }

  // Runs in the check phase, right after the poll phase read what had arrived: a request
  // that reached the socket by then has started (it cleared the timer) or shows in bytesRead.
  function closeIfIdle(socket) {
    const st = idle.get(socket);
    if (st === undefined) return;
    idle.delete(socket);
    if (socket.destroyed || socket.writableEnded || socket._httpMessage) return;
    if (!socket.parser) {
      // Upgraded (e.g. a WebSocket): no longer HTTP's; the server's close waits for it.
      conns.delete(socket);
      settle();
      return;
    }
    if (socket.bytesRead !== st.mark) {
      idleSoon(socket); // part of a request came in: give it the time to finish arriving
      return;
    }
    socket.destroy();
  }

  function settle() {
    if (!drain || drain.sent || drain.pending > 0 || conns.size > 0) return;
    drain.sent = true;
    send('drained');
  }

  process.on('internalMessage', (msg) => {
    if (!msg || msg.cmd !== CMD || msg.act !== 'drain') return;
    try {
      onDrain(msg.grace_ms);
    } catch (e) {
      // Never leave herd waiting: it goes on with Node's own disconnect.
      process.emitWarning(`herd preload: drain failed: ${e && e.stack}`);
      if (drain) drain.sent = true;
      send('drained');
    }
  });

  send('hello', { version: VERSION });

  // ----- the direct link to the app's own primary -----------------------------------------

  const linkPath = process.env.HERD_PRIMARY_LINK;
  delete process.env.HERD_PRIMARY_LINK;
  if (linkPath && cluster.worker) primaryLink(linkPath, cluster.worker.id);

  function primaryLink(path, id) {
    const nodeSend = process.send;
    let link = null; // the connected socket and its writer: {sock, out}
    let connecting = false;
    let viaHerd = true; // something went through herd since the last fence
    let onLink = false; // something went on the link since the last barrier
    let fenceOut = 0;
    let barrierOut = 0;
    let retry = 50;
    let dropping = false;
    const LINK_BUFFER_MAX = 8 << 20;
    const early = []; // [message, callback]: sent while the link was being made
    const fenceIn = new Map(); // primary pid → the last fence it sent through herd
    const waiting = []; // {p, f, m}: messages from the link waiting for their fence
    const gone = new Set(); // primaries whose link closed a while ago: nothing waits for them

    // Node's own `process.send` (and its internal messages) but for the app's messages to
    // the primary, which take the link.
    process.send = {
      send(message, handle, options, callback) {
        const mine = process.connected && forPrimary(message, handle);
        if (mine && (link !== null || connecting)) {
          if (typeof handle === 'function') callback = handle;
          else if (typeof options === 'function') callback = options;
          if (link !== null && early.length === 0) return onTheLink(message, callback);
          // The link is being made (a millisecond): kept, in order, until it is.
          JSON.stringify(message); // throws now for what JSON cannot write, as Node's does
          early.push([message, callback]);
          return true;
        }
        // Through herd. What was kept for the link goes first, and for what the primary will
        // see (Node's own messages, the app's when there is no link), a barrier tells it to
        // read the link up to here first: Node's one channel keeps a worker's messages (and
        // `listening`) in the order they were sent. herd's bus needs none.
        flushEarly(false);
        const seen = mine || (message !== null && typeof message === 'object' && message.cmd === 'NODE_CLUSTER');
        if (seen && onLink && link !== null && process.connected) {
          barrierOut++;
          link.out.write(`{"b":${barrierOut}}\n`);
          nodeSend.call(process, { cmd: CMD, act: 'barrier', n: barrierOut });
        }
        if (seen) onLink = false;
        viaHerd = true;
        return nodeSend.apply(process, arguments);
      },
    }.send;

    function onTheLink(message, callback) {
      if (link.out.queued() > LINK_BUFFER_MAX) {
        // The primary does not read (it is gone, and no new one accepted yet): as herd's
        // channel does, messages beyond a bound are dropped rather than kept without end.
        if (!dropping) process.emitWarning('herd: the primary does not read its messages; dropping them', 'HerdWarning');
        dropping = true;
        return false;
      }
      dropping = false;
      const n = viaHerd ? fenceOut + 1 : fenceOut;
      // Throws as Node's own send does for what JSON cannot write (a BigInt, a cycle).
      const line = JSON.stringify({ f: n, m: message }) + '\n';
      if (viaHerd) {
        fenceOut = n;
        nodeSend.call(process, { cmd: CMD, act: 'fence', n });
        viaHerd = false;
      }
      link.out.write(line);
      onLink = true;
      if (typeof callback === 'function') process.nextTick(callback, null);
      return true;
    }

    // What was sent while the link was being made: on the link once it is up, through herd
    // if it failed or something had to go through herd meanwhile.
    function flushEarly(up) {
      while (early.length > 0) {
        const [message, callback] = early.shift();
        if (up && link !== null) {
          onTheLink(message, callback);
        } else {
          viaHerd = true;
          try {
            nodeSend.call(process, message, callback);
          } catch (_) {
            // The channel closed meanwhile: as with Node's send, the message is lost.
          }
        }
      }
    }

    // The app's own message for the primary: not one of Node's, herd's bus, PM2's.
    function forPrimary(msg, handle) {
      if (handle != null && typeof handle !== 'function') return false;
      switch (typeof msg) {
        case 'number':
        case 'boolean':
          return true;
        case 'string':
          return msg !== 'ready';
        case 'object': {
          if (msg === null || Array.isArray(msg)) return true;
          if (typeof msg.cmd === 'string' && msg.cmd.startsWith('NODE_')) return false;
          if ('herd' in msg || 'reply_to' in msg) return false;
          const t = msg.type;
          return !(typeof t === 'string' && (t === 'process:msg' || t.startsWith('axm:')));
        }
        default:
          return false;
      }
    }

    function connect() {
      if (link !== null || connecting || !process.connected) return;
      connecting = true;
      const sock = net.connect({ path });
      sock.unref();
      let primary = 0;
      sock.on('connect', () => {
        connecting = false;
        retry = 50;
        const out = lines(sock, (msg) => {
          if (primary === 0) {
            if (Number.isInteger(msg.welcome)) primary = msg.welcome;
            return;
          }
          if (!('m' in msg)) return;
          if (waiting.length === 0 && (msg.f | 0) <= (fenceIn.get(primary) || 0)) {
            process.nextTick(deliver, msg.m);
          } else {
            waiting.push({ p: primary, f: msg.f | 0, m: msg.m });
          }
        });
        out.write(JSON.stringify({ hello: id, pid: process.pid }) + '\n');
        link = { sock, out };
        viaHerd = true; // a new link: its first message fences what went before
        onLink = false;
        flushEarly(true);
      });
      sock.on('error', () => {});
      sock.on('close', () => {
        connecting = false;
        if (link !== null && link.sock === sock) link = null;
        viaHerd = true;
        onLink = false;
        flushEarly(false);
        if (primary !== 0 && waiting.length > 0) {
          // Its fences are on their way through herd; past a second, nothing more is waited for.
          const p = primary;
          setTimeout(() => {
            gone.add(p);
            pump();
          }, 1000).unref();
        }
        if (!process.connected) return;
        // The daemon's socket outlives the primary: a new link waits for the next one.
        setTimeout(connect, retry).unref();
        retry = Math.min(retry * 2, 5000);
      });
    }

    function deliver(message) {
      process.emit('message', message, undefined);
    }

    function pump() {
      while (waiting.length > 0) {
        const h = waiting[0];
        if (h.f > (fenceIn.get(h.p) || 0) && !gone.has(h.p)) return;
        waiting.shift();
        process.nextTick(deliver, h.m);
      }
    }

    process.on('internalMessage', (msg) => {
      if (!msg || msg.cmd !== CMD || msg.act !== 'fence') return;
      const p = msg.primary | 0;
      if ((fenceIn.get(p) || 0) < msg.n) fenceIn.set(p, msg.n);
      pump();
    });
    process.on('disconnect', () => {
      if (link !== null) link.sock.end();
    });
    connect();
  }
})();

// Takes `--require "<this file>"` (as herd writes it, first) out of NODE_OPTIONS, keeping the
// rest: node processes started by the app inherit NODE_OPTIONS, and must not load this.
function dropOwnOption() {
  const opts = process.env.NODE_OPTIONS;
  if (typeof opts !== 'string') return;
  const m = /^\s*--require\s+"((?:[^"\\]|\\.)*)"(?:\s+|$)/.exec(opts);
  if (!m) return;
  const path = m[1].replace(/\\(.)/g, '$1');
  let same = path === __filename;
  if (!same) {
    try {
      same = require('fs').realpathSync(path) === __filename;
    } catch (_) {
      same = false;
    }
  }
  if (!same) return;
  const rest = opts.slice(m[0].length);
  if (rest) process.env.NODE_OPTIONS = rest;
  else delete process.env.NODE_OPTIONS;
}
