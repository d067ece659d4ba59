// Node's own cluster IPC, for comparison with herd's bus in bench/bus.py. A primary forks two
// workers; worker 1 measures, worker 2 answers relayed requests.
//
//   node bus-cluster.js MODE CONC SECS WARMUP SIZE
//
// MODE rtt:    worker 1 → primary → worker 1 (the primary answers), CONC requests in flight.
// MODE relay:  worker 1 → primary → worker 2 → primary → worker 1.
// MODE oneway: worker 1 sends SIZE-byte strings to the primary as fast as process.send takes
//              them (waiting for the write callback when it reports a backlog); the primary
//              counts them over SECS, starting WARMUP s after the first one.
// Prints one JSON line (with the primary's CPU time over the window) and exits.
'use strict';
const cluster = require('cluster');

const [mode, conc, secs, warmup, size] = [
  process.argv[2] || 'rtt', Number(process.argv[3] || 1), Number(process.argv[4] || 5),
  Number(process.argv[5] || 1), Number(process.argv[6] || 1024),
];
const now = () => process.hrtime.bigint();
const cpu = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1e6; };

if (cluster.isPrimary) {
  const w1 = cluster.fork({ BENCH_ROLE: 'client' });
  const w2 = cluster.fork({ BENCH_ROLE: 'echo' });
  let online = 0;
  let c0 = null;
  let c1 = null;
  // Oneway counting.
  let first = null;
  let total = 0;
  let inWindow = 0;
  let bytes = 0;
  const finish = (result) => {
    console.log(JSON.stringify(result));
    for (const w of [w1, w2]) w.process.kill('SIGKILL');
    process.exit(0);
  };
  const mark = () => {
    // The window, on the primary's clock, for its CPU time.
    setTimeout(() => { c0 = cpu(); }, warmup * 1000);
    setTimeout(() => { c1 = cpu(); }, (warmup + secs) * 1000);
  };
  for (const w of [w1, w2]) w.on('online', () => { if (++online === 2) { if (mode !== 'oneway') mark(); w1.send({ go: true }); } });
  w1.on('message', (m) => {
    if (m.r !== undefined) {
      if (mode === 'rtt') w1.send({ a: m.r, d: m.d });
      else w2.send({ r: m.r, d: m.d });
    } else if (m.s !== undefined) {
      const t = now();
      if (first === null) {
        first = t;
        c0 = null;
        setTimeout(() => { c0 = cpu(); }, warmup * 1000);
        setTimeout(() => {
          c1 = cpu();
          setTimeout(() => finish({ mode, size, secs, in_window: inWindow, received: total, bytes, rate: inWindow / secs, primary_cpu_s: c1 - c0 }), 200);
        }, (warmup + secs) * 1000);
      }
      total++;
      bytes += m.s.length;
      const from = first + BigInt(Math.round(warmup * 1e9));
      if (t >= from && t <= from + BigInt(Math.round(secs * 1e9))) inWindow++;
    } else if (m.result) {
      finish({ ...m.result, primary_cpu_s: c1 !== null && c0 !== null ? c1 - c0 : null });
    }
  });
  w2.on('message', (m) => { if (m.a !== undefined) w1.send(m); });
  setTimeout(() => { console.error('bus-cluster: timed out'); finish({ error: 'timeout' }); }, (warmup + secs + 30) * 1000);
} else if (process.env.BENCH_ROLE === 'echo') {
  process.on('message', (m) => { if (m.r !== undefined) process.send({ a: m.r, d: { echo: m.d, pid: process.pid } }); });
} else {
  process.once('message', (m) => { if (m.go) (mode === 'oneway' ? oneway : roundTrips)(); });
}

function roundTrips() {
  const pending = new Map();
  let next = 1;
  process.on('message', (m) => {
    if (m.a !== undefined) {
      const p = pending.get(m.a);
      pending.delete(m.a);
      p(m.d);
    }
  });
  const request = (d) => new Promise((resolve) => { const id = next++; pending.set(id, resolve); process.send({ r: id, d }); });
  const t0 = now();
  const from = t0 + BigInt(Math.round(warmup * 1e9));
  const until = from + BigInt(Math.round(secs * 1e9));
  const lat = [];
  const task = async (t) => {
    let n = 0;
    for (;;) {
      const start = now();
      if (start >= until) return;
      n++;
      await request({ t, n });
      const end = now();
      if (start >= from && end <= until) lat.push(Number(end - start));
    }
  };
  const tasks = [];
  for (let t = 0; t < conc; t++) tasks.push(task(t));
  Promise.all(tasks).then(() => {
    lat.sort((a, b) => a - b);
    const pct = (p) => (lat.length ? lat[Math.round((lat.length - 1) * p)] / 1000 : 0);
    process.send({ result: { mode, conc, secs, round_trips: lat.length, rate: lat.length / secs, p50_us: pct(0.5), p99_us: pct(0.99), max_us: pct(1), errors: 0 } });
  });
}

function oneway() {
  const payload = 'x'.repeat(size);
  const until = Date.now() + (warmup + secs + 1) * 1000;
  let sent = 0;
  const pump = () => {
    while (Date.now() < until) {
      sent++;
      if (!process.send({ s: payload })) {
        // A backlog: wait until this one is written.
        process.send({ s: payload }, pump);
        sent++;
        return;
      }
    }
  };
  pump();
}
