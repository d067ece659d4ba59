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
