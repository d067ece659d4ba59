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

const pending = new Map();
const topics = new Map();
const messageHandlers = new Set();
const errorHandlers = new Set();
let requestHandler = null;
let nextId = 1;

function post(msg) {
  if (typeof process.send !== 'function') {
    throw new Error('herd: no IPC channel; run this app with `herd start`');
  }
  process.send(msg);
}

let metricsRegister = null;

function onIncoming(msg) {
  if (!msg || typeof msg !== 'object') return;
  if (msg.herd === 'scrape') {
    // herd's Prometheus endpoint asks every instance at once and merges the answers.
    if (!metricsRegister) return;
    Promise.resolve()
      .then(() => metricsRegister.metrics())
      .then((text) => post({ herd: 'metrics', reply_to: msg.id, text: String(text) }))
      .catch(() => post({ herd: 'metrics', reply_to: msg.id, text: '' }));
    return;
  }
  if (msg.herd === 'reply' && pending.has(msg.reply_to)) {
    const p = pending.get(msg.reply_to);
    pending.delete(msg.reply_to);
    p.resolve(msg.data);
  } else if (msg.herd === 'error') {
    if (msg.reply_to != null && pending.has(msg.reply_to)) {
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
      Promise.resolve()
        .then(() => requestHandler(msg.data, msg))
        .then((data) => post({ herd: 'reply', reply_to: msg.request, data: data === undefined ? null : data }))
        .catch((e) => post({ herd: 'reply', reply_to: msg.request, data: { error: String(e && e.message || e) } }));
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
  }
}

exports.send = (to, data, topic) => { post({ herd: 'send', to, data, topic }); };
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
    pending.set(id, { resolve, reject });
    post({ herd: 'request', to, data, topic, id, timeout_ms: timeout });
  });
};
exports.onRequest = (fn) => { listen(); requestHandler = fn; };
exports.onMessage = (fn) => { listen(); messageHandlers.add(fn); };
exports.onError = (fn) => { listen(); errorHandlers.add(fn); };
exports.ready = () => { post('ready'); };
// Offers this instance's metrics to herd's Prometheus endpoint (`metrics` in config.toml):
// one scrape of herd returns every instance's series, labelled app and instance. `register`
// is anything with `metrics()` returning Prometheus' text format (or a promise of it), such as
// prom-client's default registry.
exports.exposeMetrics = (register) => {
  listen();
  metricsRegister = register;
  post({ herd: 'metrics_offer' });
};
