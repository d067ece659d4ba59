// The prom-client app of bench/metrics.py, written as people write one:
// - a counter of requests (`app_requests_total`, only `GET /` counts);
// - BENCH_SERIES gauges' worth of series: one gauge `bench_series` with that many label values
//   (default 200), set once at start;
// - prom-client's default metrics when BENCH_DEFAULT_METRICS=1 (off by default);
// - its own `GET /metrics` route, answered from this process's registry — what a scrape of a
//   PM2 cluster gets: one worker's answer;
// - under herd (HERD_APP is set), herd's one line, so that herd's /metrics sees every instance
//   (left out with BENCH_EXPOSE=0, for the baseline of herd's own series).
// Instrumentation for the benchmark only: `GET /` answers `ok <pid>`; `GET /pid` answers the
// pid (not counted); with BENCH_TIMING=1 the registry herd scrapes is wrapped to time each
// scrape in this process (from the scrape message's arrival to the text being ready), and
// `GET /timing` answers `{pid, ms: [...], at: [[arrival, ready], ...]}` (at: wall clock, ms
// since the epoch) of those scrapes.
// prom-client is found through NODE_PATH (bench/.cache/prom-client/node_modules).
const http = require('http');
const client = require('prom-client');

const register = client.register;
if (process.env.BENCH_DEFAULT_METRICS === '1') client.collectDefaultMetrics();
const requests = new client.Counter({ name: 'app_requests_total', help: 'Requests served' });
const series = new client.Gauge({ name: 'bench_series', help: 'Series for the benchmark', labelNames: ['n'] });
const count = Number(process.env.BENCH_SERIES ?? 200);
for (let i = 0; i < count; i++) series.set({ n: String(i) }, i);

const timings = []; // ms from the scrape's arrival to the text
const at = []; // [arrival, text ready], wall clock in ms since the epoch
const wall = () => performance.timeOrigin + performance.now();
if (process.env.HERD_APP && process.env.BENCH_EXPOSE !== '0') {
  if (process.env.BENCH_TIMING === '1') {
    let arrived = null;
    let arrivedWall = null;
    const timed = {
      metrics: async () => {
        const t0 = arrived ?? process.hrtime.bigint();
        const w0 = arrivedWall ?? wall();
        arrived = arrivedWall = null;
        const text = await register.metrics();
        timings.push(Number(process.hrtime.bigint() - t0) / 1e6);
        at.push([w0, wall()]);
        if (timings.length > 1000) timings.shift(), at.shift();
        return text;
      },
    };
    require('../../node/herd').exposeMetrics(timed);
    // Called right after herd.js's own listener, in the same tick as the scrape's arrival.
    process.on('message', (m) => {
      if (m && m.herd === 'scrape' && arrived === null) {
        arrived = process.hrtime.bigint();
        arrivedWall = wall();
      }
    });
  } else {
    require('../../node/herd').exposeMetrics(register); // herd: one scrape for every instance
  }
}

http
  .createServer(async (req, res) => {
    if (req.url === '/metrics') {
      res.setHeader('Content-Type', register.contentType);
      res.setHeader('X-Pid', String(process.pid));
      res.end(await register.metrics());
      return;
    }
    if (req.url === '/pid') {
      res.end(String(process.pid));
      return;
    }
    if (req.url === '/timing') {
      res.end(JSON.stringify({ pid: process.pid, ms: timings, at }));
      return;
    }
    requests.inc();
    res.end(`ok ${process.pid}`);
  })
  .listen(Number(process.env.PORT));
