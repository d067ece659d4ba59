// The seed's first script (ESM): fork one worker per CPU, log deaths, serve from the workers.
//   herd start cluster-basic.mjs --primary          the primary runs; herd runs its workers
//   herd start cluster-basic.mjs -i 2               worker branch only, as under PM2
//   node cluster-basic.mjs                          plain Node, for comparison
import http from 'node:http';
import os from 'node:os';
import cluster from 'node:cluster';

const port = Number(process.env.PORT) || 8000;
const numCPUs = Number(process.env.WORKERS) || os.cpus().length;
if (cluster.isPrimary) {
  for (let i = 0; i < numCPUs; i++) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} died!`);
  });
} else {
  http
    .createServer((req, res) => res.end(`pid=${process.pid}\n`))
    .listen(port, () => console.log(`[server] Server running on port ${port}`));
}
