// An express app inside the usual cluster boilerplate, with a primary that re-forks a worker
// that died (the most common idiom) and counts requests the workers report to it.
//   npm install express && herd start express-cluster.js --primary --port 3000
const cluster = require('node:cluster');
const os = require('node:os');

if (cluster.isPrimary) {
  const counts = {};
  const watch = (worker) => {
    worker.on('message', (msg) => {
      if (msg && msg.served) counts[worker.id] = (counts[worker.id] || 0) + msg.served;
    });
  };
  for (let i = 0; i < (Number(process.env.WORKERS) || os.availableParallelism()); i++) {
    watch(cluster.fork());
  }
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} died (${signal || code}); forking a new one`);
    const next = cluster.fork();
    watch(next);
    console.log(`forked worker ${next.process.pid}`);
  });
  setInterval(() => console.log(`served so far: ${JSON.stringify(counts)}`), 5000).unref();
} else {
  const express = require('express');
  const app = express();
  let served = 0;
  app.get('/', (req, res) => {
    served++;
    res.send(`pid=${process.pid} worker=${cluster.worker.id}\n`);
  });
  setInterval(() => {
    if (served) process.send({ served });
    served = 0;
  }, 1000).unref();
  app.listen(Number(process.env.PORT) || 3000, () => console.log(`express worker ${process.pid} up`));
}
