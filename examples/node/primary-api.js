// The rest of Node's cluster API in a primary, for the tests and as a reference of what herd
// backs: worker.send() and replies, cluster.workers, worker.kill(), worker.disconnect(),
// exitedAfterDisconnect, and the events on both the worker and `cluster`.
//   herd start primary-api.js --primary --port 8000
const cluster = require('node:cluster');
const http = require('node:http');

if (cluster.isPrimary) {
  const log = (...a) => console.log('[primary]', ...a);
  for (const ev of ['fork', 'online', 'listening', 'disconnect']) {
    cluster.on(ev, (w) => log(`cluster ${ev} id=${w.id} pid=${w.process.pid}`));
  }
  cluster.on('exit', (w, code, signal) => {
    log(`cluster exit id=${w.id} pid=${w.process.pid} code=${code} signal=${signal} after=${w.exitedAfterDisconnect} dead=${w.isDead()}`);
    if (!w.exitedAfterDisconnect) {
      const n = cluster.fork();
      log(`refork id=${n.id} pid=${n.process.pid}`);
    }
  });
  cluster.on('message', (w, msg) => {
    if (msg && msg.pong) log(`pong from id=${w.id} pid=${w.process.pid} n=${msg.pong}`);
    if (msg && msg.cmd === 'kill-me') w.kill();
    if (msg && msg.cmd === 'disconnect-me') w.disconnect();
  });
  const n = Number(process.env.WORKERS) || 2;
  for (let i = 0; i < n; i++) cluster.fork({ ROLE: 'web' });
  // Ping every worker on demand: SIGUSR2 to the primary.
  let round = 0;
  process.on('SIGUSR2', () => {
    round++;
    const ids = Object.keys(cluster.workers).join(',');
    log(`workers ${ids}`);
    for (const w of Object.values(cluster.workers)) w.send({ ping: round });
  });
} else {
  process.on('message', (msg) => {
    if (msg && msg.ping) process.send({ pong: msg.ping });
  });
  http
    .createServer((req, res) => {
      if (req.url === '/kill-me') process.send({ cmd: 'kill-me' });
      if (req.url === '/disconnect-me') process.send({ cmd: 'disconnect-me' });
      res.end(`pid=${process.pid} id=${cluster.worker.id} role=${process.env.ROLE}\n`);
    })
    .listen(Number(process.env.PORT) || 8000);
}
