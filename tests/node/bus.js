// A Node app on the bus: subscribes, answers requests, and exposes what it saw over HTTP.
const http = require('http');
const herd = require('./herd');

const seen = [];
const errors = [];
herd.subscribe('news', (data) => seen.push({ topic: 'news', data }));
herd.onMessage((data, msg) => { if (!msg.request && msg.topic !== 'news') seen.push({ direct: data, from: msg.from }); });
herd.onRequest(async (data, msg) => {
  if (data === 'seen') return seen;
  if (data === 'errors') return errors;
  if (data && data.sleep_ms) await new Promise((r) => setTimeout(r, data.sleep_ms));
  return { echo: data, pid: process.pid, instance: process.env.HERD_INSTANCE, direct: herd.isDirect(msg) };
});
herd.onError((e) => errors.push(e.message));

http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  try {
    if (url.pathname === '/seen') return res.end(JSON.stringify(seen));
    if (url.pathname === '/errors') return res.end(JSON.stringify(errors));
    if (url.pathname === '/publish') { herd.publish(url.searchParams.get('topic'), url.searchParams.get('data')); return res.end('ok'); }
    if (url.pathname === '/send') { herd.send(url.searchParams.get('to'), url.searchParams.get('data')); return res.end('ok'); }
    if (url.pathname === '/ask') {
      const raw = url.searchParams.get('data');
      const data = url.searchParams.get('json') ? JSON.parse(raw) : raw;
      const t = Date.now();
      try {
        const answer = await herd.request(url.searchParams.get('to'), data, { timeout: Number(url.searchParams.get('timeout') || 3000) });
        return res.end(JSON.stringify(url.searchParams.get('json') ? { answer, ms: Date.now() - t } : answer));
      } catch (e) {
        if (!url.searchParams.get('json')) throw e;
        return res.end(JSON.stringify({ error: e.message, ms: Date.now() - t }));
      }
    }
    if (url.pathname === '/burst') {
      const n = Number(url.searchParams.get('n'));
      for (let i = 0; i < n; i++) herd.send(url.searchParams.get('to'), { seq: i });
      return res.end('ok');
    }
    if (url.pathname === '/big') { process.send({ herd: 'publish', topic: 'big', data: 'x'.repeat(Number(url.searchParams.get('n'))) }); return res.end('ok'); }
    if (url.pathname === '/garbage') { process.send({ herd: 'send' }); return res.end('ok'); }
    if (url.pathname === '/flood') {
      const n = Number(url.searchParams.get('n'));
      for (let i = 0; i < n; i++) herd.publish('flood', i);
      return res.end('ok');
    }
    res.end(`pid=${process.pid} instance=${process.env.HERD_INSTANCE}`);
  } catch (e) {
    res.statusCode = 500;
    res.end(`error: ${e.message}`);
  }
}).listen(process.env.PORT);
