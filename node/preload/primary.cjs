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
// Not a herd primary (no HERD_PRIMARY_FD): it does nothing.

(function herdPrimary() {
  const evFd = Number.parseInt(process.env.HERD_PRIMARY_FD, 10);
  const callFd = Number.parseInt(process.env.HERD_PRIMARY_CALL_FD, 10);
  if (!Number.isInteger(evFd) || !Number.isInteger(callFd) || process.env.NODE_UNIQUE_ID) return;
  // Nothing of this file reaches the primary's own children.
  delete process.env.HERD_PRIMARY_FD;
  delete process.env.HERD_PRIMARY_CALL_FD;
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

  const sock = new net.Socket({ fd: evFd, readable: true, writable: true });
  sock.setEncoding('utf8');
  sock.unref();
  let kept = false;
  function keepAlive(on) {
    // Like the IPC channels of Node's workers, the link to herd keeps the primary running
    // while it has workers.
    if (on && !kept) sock.ref();
    if (!on && kept) sock.unref();
    kept = on;
  }
  let buffered = '';
  sock.on('data', (chunk) => {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      if (!line) continue;
      let msg;
      try {
        msg = JSON.parse(line);
      } catch (e) {
        continue;
      }
      onEvent(msg);
    }
  });
  sock.on('error', () => {});

  function post(msg) {
    if (!sock.destroyed) sock.write(JSON.stringify(msg) + '\n');
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
      post({ herd: 'send', id: this.id, msg: message });
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
    process.nextTick(() => {
      cluster.emit('fork', w);
      // A worker herd already ran (a restarted primary finds its workers, a fork takes a
      // replacement): what it did so far comes right after.
      if (ans.online) online(w);
      if (ans.listening) listening(w, ans.listening);
      if (ans.disconnected) disconnected(w);
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
    switch (msg.event) {
      case 'spawn':
        w.process.pid = msg.pid;
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
