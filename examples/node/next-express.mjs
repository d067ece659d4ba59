// The seed's Next.js script: Next.js and express on one port inside cluster code, as a custom
// server (`next({ dev: false })`, `app.prepare()`, express, `http.createServer(server)`).
//   npm install express next react react-dom && npx next build next-app
//   NEXT_DIR=next-app herd start next-express.mjs --primary --port 3000
import http from 'node:http';
import os from 'node:os';
import cluster from 'node:cluster';

import express from 'express';
import next from 'next';

const port = Number(process.env.PORT) || 3000;
const hostname = process.env.HOST || 'localhost';
const numCPUs = Number(process.env.WORKERS) || os.cpus().length;
if (cluster.isPrimary) {
  for (let i = 0; i < numCPUs; i++) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} died`);
  });
} else {
  // Next.js with express, on the same port.
  const app = next({ dev: false, hostname, port, dir: process.env.NEXT_DIR || '.' });
  const handle = app.getRequestHandler();
  app.prepare().then(() => {
    const server = express();
    server.get('/api/hello', (req, res) => res.json({ pid: process.pid, from: 'express' }));
    server.all('*', (req, res) => handle(req, res));
    http
      .createServer(server)
      .listen(port, () => console.log(`[server] Server running on port ${port}`));
  });
}
