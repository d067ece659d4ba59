'use strict';
// herd's message bus for Node apps run by herd: a thin layer over process.send and
// process.on('message'). No dependencies; works in CommonJS and (via import) in ES modules.
//
// The messages it writes and reads are those of herd's crates/proto/src/worker.rs (the one
// definition; docs/bus.md describes them): it writes HerdOp's `{herd: 'send'|'publish'|
// 'subscribe'|'unsubscribe'|'request'|'reply', …}` and PM2's 'ready', and reads ToInstance's
// `{herd: 'message'|'reply'|'error', …}`. Change a shape there, and here with it.
//
//   const herd = require('./herd');
//   herd.subscribe('news', (data, msg) => { ... });
//   herd.publish('news', { headline: 'hi' });
//   herd.send('api:1', { hello: true });          // one instance; 'api' = each; '*' = all
//   const answer = await herd.request('api:0', { q: 1 }, { timeout: 2000 });
//   herd.onRequest(async (data, msg) => ({ echo: data }));
//   herd.onMessage((data, msg) => { ... });       // messages sent to this instance
//   herd.exposeMetrics(require('prom-client').register);  // this instance in herd's /metrics
//
// Addresses may end in @host to reach another host (with a bus URL set on the daemons).
//
// Direct channels (docs/bus.md): sends and requests to one instance on this host ('api:0')
// go peer to peer once the daemon has introduced the two instances. The first message to an
// address goes through the daemon with {herd: 'direct', to}; the daemon answers with one end
// of a socket pair (a net.Socket; the other end goes to the peer) and later messages to that
// address are written on it as JSON lines, the daemon off the path. Messages to one address
// keep their order: those sent while the channel opens wait for it. A peer that exits closes
// its channels and the requests waiting on them fail at once. HERD_BUS_DIRECT=0 turns this
// off; so does running outside Node itself (Bun, Deno).

const pending = new Map();
const topics = new Map();
const messageHandlers = new Set();
const errorHandlers = new Set();
let requestHandler = null;
let nextId = 1;

const directOn =
  process.env.HERD_BUS_DIRECT !== '0' && !process.versions.bun && typeof globalThis.Deno === 'undefined';
// address ('api:0') → {state: 'opening', queue: [line…]} | {state: 'open', conn} |
// {state: 'refused', until}
const routes = new Map();
// Every open channel (opened by us or by the peer), for the cap on their number.
const conns = new Set();
let me = null; // 'app:i@host', once the daemon said
let maxChannels = 128;
let clock = 0;
// The daemon's path after a request for a channel that got no answer, for this long.
const OPENING_WAIT_MS = 2000;
const REFUSED_WAIT_MS = 30000;
// Direct messages are given to the app's own process.on('message') listeners too (PM2's
// shape), marked with the channel their answers go back on.
const VIA = Symbol('herd.via');

function post(msg) {
  if (typeof process.send !== 'function') {
    throw new Error('herd: no IPC channel; run this app with `herd start`');
  }
  process.send(msg);
}

let metricsRegister = null;

// The key a direct channel is kept under: 'app:i' for one instance on this host.
function directKey(to) {
  if (!directOn || typeof to !== 'string') return null;
  let addr = to;
  const at = to.indexOf('@');
  if (at >= 0) {
    const host = me && me.slice(me.indexOf('@') + 1);
    if (!me || to.slice(at + 1) !== host) return null;
    addr = to.slice(0, at);
  }
  const m = /^([^:*]+):(\d+)$/.exec(addr);
  return m ? addr : null;
}

function writeLine(conn, obj) {
  conn.used = ++clock;
  conn.socket.write(JSON.stringify(obj) + '\n');
}

// Sends `msg` (a herd op for the daemon) to `to`, or the delivery `direct(conn)` makes of it
// on the channel to `to`.
function route(to, msg, direct) {
  const key = directKey(to);
  if (key === null) return post(msg);
  const r = routes.get(key);
  if (r && r.state === 'open') return writeLine(r.conn, direct(r.conn));
  if (r && r.state === 'opening') {
    r.queue.push({ msg, direct });
    return undefined;
  }
  if (r && r.state === 'refused' && Date.now() < r.until) return post(msg);
  listen();
  post(msg);
  post({ herd: 'direct', to });
  const opening = { state: 'opening', queue: [], timer: null };
  opening.timer = setTimeout(() => {
    if (routes.get(key) === opening) settle(key, null, REFUSED_WAIT_MS);
  }, OPENING_WAIT_MS);
  opening.timer.unref();
  routes.set(key, opening);
  return undefined;
}

// The answer to a request for a channel: open (conn) or refused (retry after ms); what waited
// goes out in order.
function settle(key, conn, retryMs) {
  const r = routes.get(key);
  const queue = r && r.state === 'opening' ? r.queue : [];
  if (r && r.timer) clearTimeout(r.timer);
  if (conn) routes.set(key, { state: 'open', conn });
  else routes.set(key, { state: 'refused', until: Date.now() + (retryMs || 1000) });
  for (const q of queue) {
    if (conn) writeLine(conn, q.direct(conn));
    else post(q.msg);
  }
}

function closeConn(conn, why) {
  if (!conns.delete(conn)) return;
  for (const [key, r] of routes) {
    if (r.state === 'open' && r.conn === conn) routes.delete(key);
  }
  for (const [id, p] of pending) {
    if (p.conn === conn) {
      pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new Error(`${conn.peer} ${why}`));
    }
  }
  conn.socket.destroy();
}

function adopt(msg, socket) {
  if (msg.me) me = msg.me;
  if (msg.max_channels) maxChannels = Math.max(1, msg.max_channels);
  const maxBytes = msg.max_bytes || 1 << 20;
  const conn = { socket, peer: msg.peer, me: msg.me, used: ++clock, maxBytes };
  conns.add(conn);
  let buf = '';
  let skipping = false;
  socket.setEncoding('utf8');
  socket.on('data', (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (skipping) {
        skipping = false;
        continue;
      }
      if (!line.trim()) continue;
      let m;
      try {
        m = JSON.parse(line);
      } catch {
        continue;
      }
      if (!m || typeof m !== 'object') continue;
      if (m.herd === 'message') {
        m.from = conn.peer; // what comes on a channel is from its peer
        Object.defineProperty(m, VIA, { value: conn });
        process.emit('message', m);
      } else if (m.herd === 'reply' || m.herd === 'error') {
        const p = pending.get(m.reply_to);
        if (p && p.conn === conn) {
          pending.delete(m.reply_to);
          clearTimeout(p.timer);
          if (m.herd === 'reply') p.resolve(m.data);
          else p.reject(new Error(m.error));
        }
      }
    }
    if (buf.length > maxBytes) {
      console.warn(`herd: a message longer than ${maxBytes} bytes on a direct channel was dropped`);
      buf = '';
      skipping = true;
    }
  });
  socket.on('error', () => {});
  socket.unref(); // a channel does not keep the process alive
  socket.on('close', () => closeConn(conn, 'closed its direct channel before replying: it exited or restarted'));
  // Too many: the least recently used goes (its peer sees it close).
  while (conns.size > maxChannels) {
    let old = null;
    for (const c of conns) if (!old || c.used < old.used) old = c;
    closeConn(old, 'channel was closed: this instance holds max_direct_channels channels');
  }
  return conn;
}

function onChannel(msg, socket) {
  if (msg.me) me = msg.me;
  const conn = msg.error || !socket ? null : adopt(msg, socket);
  if (msg.to != null) {
    const key = directKey(msg.to) || msg.to;
    settle(key, conn, msg.retry_ms);
  }
}

function onIncoming(msg, handle) {
  if (!msg || typeof msg !== 'object') return;
  if (msg.herd === 'channel') return onChannel(msg, handle);
  if (msg.herd === 'unroute') {
    // The peer stopped serving its address (a reload): the daemon's path again, which
    // introduces its successor; answers to what went on the channel still arrive.
    for (const [key, r] of routes) {
      if (r.state === 'open' && r.conn.peer === msg.peer) {
        routes.delete(key);
        r.conn.socket.end();
      }
    }
    return;
  }
  if (msg.herd === 'scrape') {
    // herd's Prometheus endpoint asks every instance at once and merges the answers.
    if (!metricsRegister) return;
    Promise.resolve()
      .then(() => metricsRegister.metrics())
      .then((text) => post({ herd: 'metrics', reply_to: msg.id, text: String(text) }))
      .catch(() => post({ herd: 'metrics', reply_to: msg.id, text: '' }));
    return;
  }
  if (msg.herd === 'reply' && pending.has(msg.reply_to) && !pending.get(msg.reply_to).conn) {
    const p = pending.get(msg.reply_to);
    pending.delete(msg.reply_to);
    p.resolve(msg.data);
  } else if (msg.herd === 'error') {
    if (msg.reply_to != null && pending.has(msg.reply_to) && !pending.get(msg.reply_to).conn) {
      const p = pending.get(msg.reply_to);
      pending.delete(msg.reply_to);
      p.reject(new Error(msg.error));
    } else if (errorHandlers.size) {
      for (const fn of errorHandlers) fn(new Error(msg.error));
    } else {
      console.warn(`herd: ${msg.error}`);
    }
  } else if (msg.herd === 'message') {
    if (msg.request != null) {
      if (!requestHandler) return;
      const conn = msg[VIA];
      const answer = (reply) => {
        if (!conn) return post(reply);
        if (conns.has(conn)) return writeLine(conn, reply);
        return undefined; // the channel closed: the asker was told
      };
      Promise.resolve()
        .then(() => requestHandler(msg.data, msg))
        .then((data) => answer({ herd: 'reply', reply_to: msg.request, data: data === undefined ? null : data }))
        .catch((e) => answer({ herd: 'reply', reply_to: msg.request, data: { error: String(e && e.message || e) } }));
      return;
    }
    const subs = topics.get(msg.topic);
    if (subs && !msg.to) for (const fn of subs) fn(msg.data, msg);
    for (const fn of messageHandlers) fn(msg.data, msg);
  }
}

let listening = false;
function listen() {
  if (!listening) {
    listening = true;
    process.on('message', onIncoming);
    // Others may open direct channels to this instance.
    if (directOn && typeof process.send === 'function') post({ herd: 'direct' });
  }
}

const delivery = (conn, data, topic, request) => {
  const m = { type: 'process:msg', herd: 'message', topic: topic == null ? 'herd' : topic, data, from: conn.me };
  if (request != null) m.request = request;
  return m;
};

exports.send = (to, data, topic) => {
  route(to, { herd: 'send', to, data, topic }, (conn) => delivery(conn, data, topic));
};
exports.publish = (topic, data) => { post({ herd: 'publish', topic, data }); };
exports.subscribe = (topic, fn) => {
  listen();
  if (!topics.has(topic)) {
    topics.set(topic, new Set());
    post({ herd: 'subscribe', topic });
  }
  topics.get(topic).add(fn);
  return () => {
    const set = topics.get(topic);
    if (set && set.delete(fn) && set.size === 0) {
      topics.delete(topic);
      post({ herd: 'unsubscribe', topic });
    }
  };
};
exports.request = (to, data, { timeout = 5000, topic } = {}) => {
  listen();
  return new Promise((resolve, reject) => {
    const id = nextId++;
    const p = { resolve, reject, conn: null, timer: null };
    pending.set(id, p);
    route(to, { herd: 'request', to, data, topic, id, timeout_ms: timeout }, (conn) => {
      // On a channel no daemon times it out: this instance does.
      p.conn = conn;
      p.timer = setTimeout(() => {
        if (pending.get(id) === p) {
          pending.delete(id);
          reject(new Error(`${to} did not reply in time; it must answer with a message carrying "reply_to"`));
        }
      }, timeout);
      p.timer.unref();
      return delivery(conn, data, topic, id);
    });
  });
};
exports.onRequest = (fn) => { listen(); requestHandler = fn; };
exports.onMessage = (fn) => { listen(); messageHandlers.add(fn); };
exports.onError = (fn) => { listen(); errorHandlers.add(fn); };
exports.ready = () => { post('ready'); };
// Whether a message came on a direct channel (not through the daemon).
exports.isDirect = (msg) => Boolean(msg && msg[VIA]);
// Offers this instance's metrics to herd's Prometheus endpoint (`metrics` in config.toml):
// one scrape of herd returns every instance's series, labelled app and instance. `register`
// is anything with `metrics()` returning Prometheus' text format (or a promise of it), such as
// prom-client's default registry.
exports.exposeMetrics = (register) => {
  listen();
  metricsRegister = register;
  post({ herd: 'metrics_offer' });
};
