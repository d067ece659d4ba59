// A Node instance on herd's bus for bench/bus.py, using node/herd.js (required from the
// repository by path, as an app would copy it). BENCH_MODE=echo answers requests;
// BENCH_MODE=rtt makes BENCH_CONC concurrent sequential requests to BENCH_TARGET for
// BENCH_WARMUP + BENCH_SECS seconds and writes what it measured over the last BENCH_SECS to
// BENCH_OUT (whole, then renamed). BENCH_DAEMON_PID: report that process's CPU over the window.
'use strict';
const fs = require('fs');
const path = require('path');
const herd = require(path.join(__dirname, '..', '..', 'node', 'herd.js'));

const env = (k, d) => (process.env[k] === undefined ? d : process.env[k]);
const mode = env('BENCH_MODE', 'echo');

function cpuSecs(pid) {
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(')').pop().trim().split(/\s+/);
    return (Number(f[11]) + Number(f[12])) / Number(env("BENCH_CLK_TCK", 100));
  } catch {
    return null;
  }
}
const daemonCpu = () => (process.env.BENCH_DAEMON_PID ? cpuSecs(process.env.BENCH_DAEMON_PID) : null);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function writeOut(v) {
  const out = process.env.BENCH_OUT;
  fs.writeFileSync(out + '.tmp', JSON.stringify(v));
  fs.renameSync(out + '.tmp', out);
}

if (mode === 'echo') {
  herd.onRequest(async (data) => ({ echo: data, lang: 'node', pid: process.pid }));
  herd.ready();
  // The channel keeps the process alive.
} else if (mode === 'rtt') {
  (async () => {
    const target = env('BENCH_TARGET', 'necho:0');
    const conc = Number(env('BENCH_CONC', 1));
    const secs = Number(env('BENCH_SECS', 5));
    const warmup = Number(env('BENCH_WARMUP', 1));
    herd.ready();
    const deadline = Date.now() + 30000;
    for (;;) {
      try {
        await herd.request(target, 'hello', { timeout: 1000 });
        break;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await sleep(50);
      }
    }
    const now = () => process.hrtime.bigint();
    const t0 = now();
    const from = t0 + BigInt(Math.round(warmup * 1e9));
    const until = from + BigInt(Math.round(secs * 1e9));
    const lat = [];
    let errors = 0;
    let firstError = null;
    const task = async (t) => {
      let n = 0;
      for (;;) {
        const start = now();
        if (start >= until) return;
        n++;
        try {
          await herd.request(target, { t, n }, { timeout: 5000 });
          const end = now();
          if (start >= from && end <= until) lat.push(Number(end - start));
        } catch (e) {
          errors++;
          if (firstError === null) firstError = String(e.message);
        }
      }
    };
    const marks = (async () => {
      await sleep(Number(from - now()) / 1e6);
      const c0 = daemonCpu();
      await sleep(Number(until - now()) / 1e6);
      return [c0, daemonCpu()];
    })();
    const tasks = [];
    for (let t = 0; t < conc; t++) tasks.push(task(t));
    await Promise.all(tasks);
    const [c0, c1] = await marks;
    lat.sort((a, b) => a - b);
    const pct = (p) => (lat.length ? lat[Math.round((lat.length - 1) * p)] / 1000 : 0);
    const result = {
      mode: 'rtt', conc, secs, round_trips: lat.length, rate: lat.length / secs,
      p50_us: pct(0.5), p99_us: pct(0.99), max_us: pct(1), errors, first_error: firstError,
      daemon_cpu_s: c0 !== null && c1 !== null ? c1 - c0 : null,
    };
    console.log(JSON.stringify(result));
    writeOut(result);
    process.exit(0);
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
