// Clustering and worker threads together (the seed's note): the primary forks the cluster,
// and each worker keeps CPU-heavy work off its event loop on a worker_thread.
//   herd start worker-threads.js --primary --port 8000     GET /hash/200 hashes for 200 ms
const cluster = require('node:cluster');
const http = require('node:http');
const crypto = require('node:crypto');
const { Worker, isMainThread, parentPort } = require('node:worker_threads');

function hashFor(ms) {
  let h = Buffer.from('seed');
  const end = Date.now() + ms;
  while (Date.now() < end) h = crypto.createHash('sha256').update(h).digest();
  return h.toString('hex').slice(0, 16);
}

if (!isMainThread) {
  parentPort.on('message', ({ id, ms }) => parentPort.postMessage({ id, hash: hashFor(ms) }));
} else if (cluster.isPrimary) {
  const n = Number(process.env.WORKERS) || require('node:os').availableParallelism();
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('exit', (worker) => console.log(`worker ${worker.process.pid} died`));
} else {
  const thread = new Worker(__filename);
  const waiting = new Map();
  let nextId = 1;
  thread.on('message', ({ id, hash }) => {
    waiting.get(id)(hash);
    waiting.delete(id);
  });
  http
    .createServer(async (req, res) => {
      const m = /^\/hash\/(\d+)$/.exec(req.url);
      if (!m) return res.end(`pid=${process.pid} threads=yes\n`);
      const id = nextId++;
      const hash = await new Promise((resolve) => {
        waiting.set(id, resolve);
        thread.postMessage({ id, ms: Number(m[1]) });
      });
      res.end(`pid=${process.pid} hash=${hash}\n`);
    })
    .listen(Number(process.env.PORT) || 8000);
}
