'use strict';
// herd's Node `cluster`, primary side. herd preloads this file (NODE_OPTIONS=--require) into
// the primary of an app started with `herd start app.js --primary`: the script's own
// `cluster.isPrimary` branch runs, and its `cluster.fork()` starts a herd instance of the app
// (a cluster worker on herd's sockets, with herd's restarts, reloads and logs) instead of a
// child of this process. `cluster.workers`, `worker.send()`, `worker.kill()`,
// `worker.disconnect()` and the events `fork`, `online`, `listening`, `message`,
// `disconnect` and `exit` behave as Node documents them (docs/node-primary.md lists the rest).
//
// It talks to the daemon over two sockets: HERD_PRIMARY_FD (one JSON object per line each way:
// events about workers; sends, disconnects and signals to them) and HERD_PRIMARY_CALL_FD
// (fork(), which waits for its answer, so the worker's pid is known when fork() returns).
// The messages are those of crates/core/src/supervisor/primary.rs.
//
// Messages between the primary and a worker with herd's worker preload take a direct link
// instead: a Unix socket the daemon binds and hands over (HERD_PRIMARY_LINK_FD), which the
// workers connect to. Its protocol, and the fences that keep the two ways in order, are
// described in node/preload/worker.cjs.
//
// Not a herd primary (no HERD_PRIMARY_FD): it does nothing.

(function herdPrimary() {
  const evFd = Number.parseInt(process.env.HERD_PRIMARY_FD, 10);
  const callFd = Number.parseInt(process.env.HERD_PRIMARY_CALL_FD, 10);
  const linkFd = Number.parseInt(process.env.HERD_PRIMARY_LINK_FD, 10);
  if (!Number.isInteger(evFd) || !Number.isInteger(callFd) || process.env.NODE_UNIQUE_ID) return;
  // Nothing of this file reaches the primary's own children.
  delete process.env.HERD_PRIMARY_FD;
  delete process.env.HERD_PRIMARY_CALL_FD;
  delete process.env.HERD_PRIMARY_LINK_FD;
  if (typeof process.env.NODE_OPTIONS === 'string') {
    const opts = process.env.NODE_OPTIONS.replace(/^--require\s+("(?:[^"\\]|\\.)*"|\S+)\s*/, '');
    if (opts) process.env.NODE_OPTIONS = opts;
    else delete process.env.NODE_OPTIONS;
  }

  const cluster = require('node:cluster');
  const EventEmitter = require('node:events');
  const fs = require('node:fs');
  const net = require('node:net');

  // ----- the daemon's sockets -------------------------------------------------------------

  const { lines } = require('./lines.cjs');
  const sock = new net.Socket({ fd: evFd, readable: true, writable: true });
  sock.unref();
  let kept = false;
  function keepAlive(on) {
    // Like the IPC channels of Node's workers, the link to herd keeps the primary running
    // while it has workers.
    if (on && !kept) sock.ref();
    if (!on && kept) sock.unref();
    kept = on;
  }
  const daemon = lines(sock, onEvent);
  sock.on('error', () => {});

  function post(msg) {
    daemon.write(JSON.stringify(msg) + '\n');
  }

  const readBuf = Buffer.alloc(64 * 1024);
  function call(req) {
    const out = Buffer.from(JSON.stringify(req) + '\n');
    for (let off = 0; off < out.length;) off += fs.writeSync(callFd, out, off);
    let acc = Buffer.alloc(0);
    for (;;) {
      let n;
      try {
        n = fs.readSync(callFd, readBuf, 0, readBuf.length, null);
      } catch (e) {
        if (e.code === 'EINTR') continue;
        if (e.code === 'EAGAIN') throw new Error('herd did not answer cluster.fork() in time');
        throw e;
      }
      if (n === 0) throw new Error('herd closed the primary\'s socket: the daemon is gone');
      acc = Buffer.concat([acc, readBuf.subarray(0, n)]);
      const nl = acc.indexOf(10);
      if (nl >= 0) return JSON.parse(acc.subarray(0, nl).toString('utf8'));
    }
  }

  // ----- the direct link to the workers ----------------------------------------------------

  // Per worker id: its link ({sock, id, queue, barrier, closed}: the messages and barriers
  // that came on it and wait for their fence or for the worker to be known; the last barrier
  // read), and the last fence it sent through herd.
  const links = new Map();
  const fences = new Map();
  const QUEUE_MAX = 10000;
  const LINK_BUFFER_MAX = 8 << 20;
  // How long messages for a worker that was given the link wait for it to connect before they
  // go through herd instead (its preload connects as it loads, before the app's code).
  const LINK_WAIT_MS = 5000;
  // How long a worker's events through herd wait for its link to catch up.
  const HOLD_MS = 1000;

  if (Number.isInteger(linkFd)) {
    const server = net.createServer(onLink);
    server.on('error', (e) => process.emitWarning(`herd: the workers' direct link failed: ${e.message}`, 'HerdWarning'));
    server.listen({ fd: linkFd });
    server.unref();
  }

  function onLink(sock) {
    sock.unref();
    const st = { sock, out: null, id: 0, queue: [], barrier: 0, closed: false, warned: false };
    st.out = lines(sock, (msg) => onLinkLine(st, msg));
    sock.on('error', () => {});
    sock.on('close', () => {
      st.closed = true;
      if (links.get(st.id) === st) links.delete(st.id);
      const w = byId.get(st.id);
      if (w && w.herdLink === st) w.herdLink = null;
      pumpLink(st, true);
      if (w && w.herdHold) release(w);
    });
  }

  function onLinkLine(st, msg) {
    if (st.id === 0) {
      if (!Number.isInteger(msg.hello) || msg.hello <= 0) {
        st.sock.destroy();
        return;
      }
      st.id = msg.hello;
      links.set(st.id, st);
      st.out.write(JSON.stringify({ welcome: process.pid }) + '\n');
      const w = byId.get(st.id);
      if (w) attach(w, st);
      return;
    }
    if (st.queue.length === 0 && 'm' in msg) {
      // The usual case: nothing waits before it, and its fence has come.
      const w = byId.get(st.id);
      if (w !== undefined && !w.herdAdopting && (msg.f | 0) <= (fences.get(st.id) || 0)) {
        w.process.emit('message', msg.m, undefined);
        return;
      }
    } else if (!('m' in msg) && !Number.isInteger(msg.b)) {
      return;
    }
    if (st.queue.length >= QUEUE_MAX) {
      if (!st.warned) process.emitWarning(`herd: worker ${st.id} sent more than ${QUEUE_MAX} messages before the primary knew it; later ones were dropped`, 'HerdWarning');
      st.warned = true;
      return;
    }
    st.queue.push(msg);
    pumpLink(st, false);
  }

  // Delivers what came on the link once its fence came through herd (or, `all`, once the
  // link closed: nothing more is coming on it). A barrier read may let the worker's events
  // from herd go on.
  function pumpLink(st, all) {
    const w = byId.get(st.id);
    if (!w || w.herdAdopting) return;
    const fence = fences.get(st.id) || 0;
    while (st.queue.length > 0) {
      const head = st.queue[0];
      if ('m' in head) {
        if (!all && (head.f | 0) > fence) return;
        st.queue.shift();
        w.process.emit('message', head.m, undefined);
      } else {
        st.queue.shift();
        st.barrier = Math.max(st.barrier, head.b);
        if (w.herdHold && w.herdHold.n <= st.barrier) release(w);
      }
    }
  }

  // The worker's events from herd wait while it holds: until its link reached a barrier, or
  // (`disconnect`, `exit`) closed. What it sent before them comes first, as on Node's channel.
  function held(w, msg) {
    if (w.herdHold) {
      w.herdHold.events.push(msg);
      return true;
    }
    const st = links.get(w.id);
    const open = st !== undefined && !st.closed;
    if (msg.event === 'barrier') {
      if (open && st.barrier < msg.n) hold(w, msg.n);
      return true;
    }
    if ((msg.event === 'disconnect' || msg.event === 'exit') && open) {
      hold(w, Infinity);
      w.herdHold.events.push(msg);
      return true;
    }
    return false;
  }

  function hold(w, n) {
    const timer = setTimeout(() => {
      const st = links.get(w.id);
      if (st) pumpLink(st, true);
      if (w.herdHold && w.herdHold.timer === timer) release(w);
    }, HOLD_MS);
    timer.unref();
    w.herdHold = { n, events: [], timer };
  }

  function release(w) {
    const { events, timer } = w.herdHold;
    clearTimeout(timer);
    w.herdHold = null;
    for (let i = 0; i < events.length; i++) {
      if (w.herdHold) {
        w.herdHold.events.push(...events.slice(i));
        return;
      }
      if (!held(w, events[i])) onWorkerEvent(w, events[i]);
    }
  }

  // The worker's link is up: what the primary kept for it goes on it.
  function attach(w, st) {
    w.herdLink = st;
    clearTimeout(w.herdWait);
    w.herdWait = null;
    const kept = w.herdKept;
    w.herdKept = [];
    for (const m of kept) linkSend(w, m);
  }

  function linkSend(w, message) {
    if (w.herdLink.out.queued() > LINK_BUFFER_MAX) {
      // The worker does not read: as herd's channel does, messages beyond a bound are dropped.
      const err = new Error(`herd: worker ${w.id} does not read its messages; the message was dropped`);
      if (w.listenerCount('error') > 0) w.emit('error', err);
      else if (!w.herdDropping) process.emitWarning(err.message, 'HerdWarning');
      w.herdDropping = true;
      return;
    }
    w.herdDropping = false;
    const n = w.herdViaHerd ? w.herdFence + 1 : w.herdFence;
    // Throws as Node's own send does for what JSON cannot write (a BigInt, a cycle).
    const line = JSON.stringify({ f: n, m: message }) + '\n';
    if (w.herdViaHerd) {
      post({ herd: 'fence', id: w.id, n });
      w.herdFence = n;
      w.herdViaHerd = false;
    }
    w.herdLink.out.write(line);
  }

  function herdSend(w, message) {
    w.herdViaHerd = true;
    post({ herd: 'send', id: w.id, msg: message });
  }

  // A worker given the link that did not connect in time: through herd from now on.
  function noLink(w) {
    w.herdWait = null;
    w.herdExpect = false;
    const kept = w.herdKept;
    w.herdKept = [];
    if (w.process.connected) for (const m of kept) herdSend(w, m);
  }

  // ----- workers --------------------------------------------------------------------------

  // The worker's `process`: what Node's ChildProcess offers a primary, backed by herd.
  class WorkerProcess extends EventEmitter {
    constructor(id, pid) {
      super();
      this.herdId = id;
      this.pid = pid == null ? undefined : pid;
      this.connected = true;
      this.exitCode = null;
      this.signalCode = null;
      this.killed = false;
      this.stdin = null;
      this.stdout = null;
      this.stderr = null;
    }
    kill(signal) {
      post({ herd: 'signal', id: this.herdId, signal: signalName(signal) });
      this.killed = true;
      return true;
    }
    send(message, handle, options, callback) {
      const w = byId.get(this.herdId);
      return w ? w.send(message, handle, options, callback) : false;
    }
    disconnect() {
      const w = byId.get(this.herdId);
      if (w) w.disconnect();
    }
    ref() {}
    unref() {}
  }

  function signalName(signal) {
    if (signal == null) return 'SIGTERM';
    if (typeof signal === 'number') {
      const name = Object.keys(require('node:os').constants.signals)
        .find((k) => require('node:os').constants.signals[k] === signal);
      return name || String(signal);
    }
    return String(signal);
  }

  // Every worker herd told this primary of, by Node worker id (live or not yet reported dead).
  const byId = new Map();

  class HerdWorker extends cluster.Worker {
    constructor(id, pid) {
      const proc = new WorkerProcess(id, pid);
      super({ id, process: proc, state: 'none' });
      this.on('message', function onMessage(message, handle) {
        cluster.emit('message', this, message, handle);
      });
      this.herdLink = null; // the worker's direct link, once it connected
      this.herdExpect = false; // it was given the link: messages for it wait for it
      this.herdKept = []; // those messages
      this.herdWait = null; // the timer after which they go through herd instead
      this.herdViaHerd = false; // a message went through herd since the last fence
      this.herdFence = 0;
      this.herdHold = null; // {n, events, timer}: its events from herd waiting for the link
      this.herdAdopting = false; // `fork` not emitted yet: its messages wait
      this.herdDropping = false; // its link is full: messages are dropped (warned once)
    }
    send(message, handle, options, callback) {
      if (typeof handle === 'function') {
        callback = handle;
        handle = undefined;
      } else if (typeof options === 'function') {
        callback = options;
      }
      if (handle) {
        const err = new Error('herd does not pass handles from the primary to a worker');
        if (callback) process.nextTick(callback, err);
        else throw err;
        return false;
      }
      if (!this.process.connected) {
        const err = new Error('Channel closed');
        err.code = 'ERR_IPC_CHANNEL_CLOSED';
        if (callback) process.nextTick(callback, err);
        else process.nextTick(() => this.emit('error', err));
        return false;
      }
      if (message === undefined) throw new TypeError('The "message" argument must be specified');
      const st = this.herdLink;
      if (st !== null && !st.closed) {
        linkSend(this, message);
      } else if (this.herdExpect) {
        JSON.stringify(message); // throws now for what JSON cannot write, as Node's send does
        this.herdKept.push(message);
        if (this.herdWait === null) {
          this.herdWait = setTimeout(noLink, LINK_WAIT_MS, this);
          this.herdWait.unref();
        }
      } else {
        herdSend(this, message);
      }
      if (callback) process.nextTick(callback, null);
      return true;
    }
    disconnect() {
      this.exitedAfterDisconnect = true;
      post({ herd: 'disconnect', id: this.id });
      return this;
    }
    destroy(signal) {
      if (this.isConnected()) {
        this.disconnect();
      } else {
        this.process.kill(signal || 'SIGTERM');
      }
    }
    kill(signal) {
      this.destroy(signal);
    }
    isDead() {
      return this.process.exitCode != null || this.process.signalCode != null;
    }
    isConnected() {
      return this.process.connected;
    }
  }

  // A worker the primary now knows: it is in `cluster.workers` and hears of itself.
  function adopt(ans) {
    const w = new HerdWorker(ans.id, ans.pid);
    byId.set(w.id, w);
    cluster.workers[w.id] = w;
    keepAlive(true);
    w.herdExpect = !!ans.link;
    const st = links.get(w.id);
    if (st && !st.closed) attach(w, st);
    w.herdAdopting = true;
    process.nextTick(() => {
      w.herdAdopting = false;
      cluster.emit('fork', w);
      // A worker herd already ran (a restarted primary finds its workers, a fork takes a
      // replacement): what it did so far comes right after.
      if (ans.online) online(w);
      if (ans.listening) listening(w, ans.listening);
      if (ans.disconnected) disconnected(w);
      const early = links.get(w.id);
      if (early) pumpLink(early, false);
    });
    return w;
  }

  function online(w) {
    if (w.state === 'none') {
      w.state = 'online';
      w.emit('online');
      cluster.emit('online', w);
    }
  }

  function listening(w, address) {
    const info = {
      addressType: address && address.addressType,
      address: address && address.address,
      port: address && address.port,
    };
    w.state = 'listening';
    w.emit('listening', info);
    cluster.emit('listening', w, info);
  }

  function disconnected(w) {
    if (!w.process.connected) return;
    w.process.connected = false;
    w.exitedAfterDisconnect = !!w.exitedAfterDisconnect;
    if (w.state !== 'dead') w.state = 'disconnected';
    delete cluster.workers[w.id];
    w.process.emit('disconnect');
    w.emit('disconnect');
    cluster.emit('disconnect', w);
    settleDisconnectAll();
  }

  function exited(w, code, signal, afterDisconnect) {
    w.process.exitCode = code == null ? null : code;
    w.process.signalCode = signal == null ? null : signal;
    if (afterDisconnect) w.exitedAfterDisconnect = true;
    disconnected(w);
    w.exitedAfterDisconnect = !!w.exitedAfterDisconnect;
    w.state = 'dead';
    delete cluster.workers[w.id];
    byId.delete(w.id);
    fences.delete(w.id);
    clearTimeout(w.herdWait);
    w.herdKept = [];
    const st = links.get(w.id);
    if (st) {
      links.delete(w.id);
      st.sock.destroy();
    }
    w.process.emit('exit', w.process.exitCode, w.process.signalCode);
    w.emit('exit', w.process.exitCode, w.process.signalCode);
    cluster.emit('exit', w, w.process.exitCode, w.process.signalCode);
    settleDisconnectAll();
  }

  function onEvent(msg) {
    if (!msg || typeof msg !== 'object') return;
    if (msg.herd === 'error') {
      const w = msg.id != null ? byId.get(msg.id) : undefined;
      const err = new Error(`herd: ${msg.error}`);
      if (w && w.listenerCount('error') > 0) w.emit('error', err);
      else process.emitWarning(err.message, 'HerdWarning');
      return;
    }
    if (msg.herd !== 'worker') return;
    if (msg.event === 'announce') {
      if (!byId.has(msg.id)) adopt(msg);
      return;
    }
    const w = byId.get(msg.id);
    if (!w) return;
    if (!held(w, msg)) onWorkerEvent(w, msg);
  }

  function onWorkerEvent(w, msg) {
    switch (msg.event) {
      case 'spawn':
        w.process.pid = msg.pid;
        if (!w.herdLink) w.herdExpect = !!msg.link;
        break;
      case 'online':
        online(w);
        break;
      case 'listening':
        online(w);
        listening(w, msg.address);
        break;
      case 'message':
        w.process.emit('message', msg.msg, undefined);
        break;
      case 'fence': {
        if ((fences.get(w.id) || 0) < msg.n) fences.set(w.id, msg.n);
        const st = links.get(w.id);
        if (st) pumpLink(st, false);
        break;
      }
      case 'disconnect':
        disconnected(w);
        break;
      case 'exit':
        exited(w, msg.code, msg.signal, msg.exitedAfterDisconnect);
        break;
      default:
    }
  }

  // ----- the cluster API ------------------------------------------------------------------

  function sameArray(a, b) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => x === b[i]);
  }

  cluster.fork = function fork(env) {
    cluster.setupPrimary();
    const s = cluster.settings || {};
    const spec = { env: {} };
    if (env && typeof env === 'object') {
      for (const [k, v] of Object.entries(env)) {
        if (v !== undefined) spec.env[k] = String(v);
      }
    }
    // What setupPrimary changed from Node's defaults (the primary's own script and flags).
    if (s.exec && s.exec !== process.argv[1]) spec.exec = require('node:path').resolve(s.exec);
    if (s.args && !sameArray(s.args, process.argv.slice(2))) spec.args = s.args.map(String);
    if (s.execArgv && !sameArray(s.execArgv, process.execArgv)) spec.execArgv = s.execArgv.map(String);
    const ans = call({ herd: 'fork', spec });
    if (!ans || ans.herd !== 'forked') {
      throw new Error(`herd: cluster.fork() failed: ${(ans && ans.error) || 'no answer'}`);
    }
    const existing = byId.get(ans.id);
    if (existing) return existing;
    return adopt(ans);
  };

  let disconnectAll = null;
  function settleDisconnectAll() {
    if (!disconnectAll) return;
    const live = [...byId.values()].filter((w) => w.isConnected());
    if (live.length > 0) return;
    const callbacks = disconnectAll;
    disconnectAll = null;
    if (byId.size === 0) keepAlive(false);
    for (const cb of callbacks) process.nextTick(cb);
  }

  cluster.disconnect = function disconnect(cb) {
    disconnectAll = disconnectAll || [];
    if (typeof cb === 'function') disconnectAll.push(cb);
    for (const w of byId.values()) {
      if (w.isConnected()) w.disconnect();
    }
    settleDisconnectAll();
  };

  // `import { fork } from 'node:cluster'` sees the same functions.
  require('node:module').syncBuiltinESMExports();
})();
