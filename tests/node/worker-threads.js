// Clustering and worker threads together: herd runs this app as N cluster workers, and each
// keeps CPU-heavy work (hashing) off its event loop on a small pool of worker_threads.
const http = require('http');
const crypto = require('crypto');
const { Worker, isMainThread, parentPort } = require('worker_threads');

// CPU-bound work: chained sha256 for `ms` milliseconds.
function hashFor(ms) {
  let h = Buffer.from('seed');
  const end = Date.now() + ms;
  while (Date.now() < end) {
    for (let i = 0; i < 100; i++) h = crypto.createHash('sha256').update(h).digest();
  }
  return h.toString('hex').slice(0, 16);
}

if (!isMainThread) {
  parentPort.on('message', ({ id, ms }) => parentPort.postMessage({ id, hash: hashFor(ms) }));
} else {
  // A fixed pool of 2 threads; jobs wait in a queue when both are busy.
  const pool = [0, 1].map(() => ({ worker: new Worker(__filename), busy: false }));
  const queue = [];
  const waiting = new Map();
  let nextId = 1;
  function pump() {
    for (const slot of pool) {
      if (!slot.busy && queue.length) {
        const job = queue.shift();
        slot.busy = true;
        slot.worker.once('message', (m) => { slot.busy = false; waiting.get(m.id)(m.hash); waiting.delete(m.id); pump(); });
        slot.worker.postMessage(job);
      }
    }
  }
  const offload = (ms) => new Promise((resolve) => {
    const id = nextId++;
    waiting.set(id, resolve);
    queue.push({ id, ms });
    pump();
  });
  for (const slot of pool) slot.worker.unref();

  http.createServer(async (req, res) => {
    if (req.url.startsWith('/hash/')) return res.end(`pid=${process.pid} hash=${await offload(Number(req.url.slice(6)))}`);
    if (req.url.startsWith('/hash-inline/')) return res.end(`pid=${process.pid} hash=${hashFor(Number(req.url.slice(13)))}`);
    res.end(`pid=${process.pid} cheap`);
  }).listen(process.env.PORT);
}
