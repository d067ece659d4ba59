// The cluster script of bench/primary.py, run as is by `node primary.js` (Node's cluster:
// the primary forks the workers and round-robins connections to them) and by
// `herd start primary.js --primary` (the same primary; its cluster.fork() starts herd
// instances on herd's per-slot sockets). No herd code: only Node's cluster API.
//
// - WORKERS (default: one per CPU) workers serve bench/apps/hello.js on PORT and answer a
//   message {ping: x} with process.send({pong: x}).
// - The primary forks a new worker when one dies (as production primaries do), and prints
//   `BENCH_READY <n>` once n workers listen.
// - SIGUSR2 to the primary: it measures the message round trip primary → worker → primary,
//   worker.send({ping: t}) answered by process.send({pong: t}), RTT_WARM sequential round
//   trips of warm-up (default 200) then RTT_COUNT (default 2000), the workers taken in turn,
//   and prints one line `BENCH_RTT {json}` (µs: p50, p99, mean, min, max; or {"error": …}).
const cluster = require('node:cluster');
const os = require('node:os');

if (cluster.isPrimary) {
  const n = Number(process.env.WORKERS) || os.availableParallelism();
  let stopping = false;
  let listening = 0;
  const fork = () => {
    const w = cluster.fork();
    w.once('listening', () => {
      listening++;
      if (listening === n) console.log(`BENCH_READY ${n}`);
    });
  };
  for (let i = 0; i < n; i++) fork();
  cluster.on('exit', (w) => {
    if (!stopping && !w.exitedAfterDisconnect) fork();
  });
  if (!process.env.HERD_APP) {
    // Plain node: the primary owns its workers and takes them along when it is stopped.
    // (Under herd, herd stops the workers itself.)
    process.on('SIGTERM', () => {
      stopping = true;
      for (const id in cluster.workers) cluster.workers[id].process.kill('SIGKILL');
      process.exit(0);
    });
  }

  let waiting = null; // {expect, resolve, timer}
  cluster.on('message', (w, msg) => {
    if (waiting && msg && msg.pong === waiting.expect) {
      const { resolve, timer } = waiting;
      waiting = null;
      clearTimeout(timer);
      resolve();
    }
  });
  const roundTrip = (w, seq) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiting = null;
      reject(new Error(`no pong ${seq} from worker ${w.id} within 5 s`));
    }, 5000);
    waiting = { expect: seq, resolve, timer };
    w.send({ ping: seq });
  });
  let busy = false;
  process.on('SIGUSR2', async () => {
    if (busy) return;
    busy = true;
    const warm = Number(process.env.RTT_WARM) || 3000;
    const count = Number(process.env.RTT_COUNT) || 2000;
    try {
      const us = [];
      let seq = 0;
      for (let i = 0; i < warm + count; i++) {
        const ws = Object.values(cluster.workers).filter((w) => w.isConnected());
        if (ws.length === 0) throw new Error('no connected worker');
        const w = ws[i % ws.length];
        const t = process.hrtime.bigint();
        await roundTrip(w, ++seq);
        if (i >= warm) us.push(Number(process.hrtime.bigint() - t) / 1000);
      }
      us.sort((a, b) => a - b);
      const q = (p) => us[Math.min(us.length - 1, Math.floor(us.length * p))];
      const mean = us.reduce((a, b) => a + b, 0) / us.length;
      console.log(`BENCH_RTT ${JSON.stringify({
        n: us.length, warm, workers: Object.keys(cluster.workers).length,
        p50: q(0.5), p99: q(0.99), mean, min: us[0], max: us[us.length - 1],
      })}`);
    } catch (e) {
      console.log(`BENCH_RTT ${JSON.stringify({ error: String(e.message || e) })}`);
    }
    busy = false;
  });
} else {
  process.on('message', (msg) => {
    if (msg && msg.ping !== undefined) process.send({ pong: msg.ping });
  });
  require('./hello.js');
}
