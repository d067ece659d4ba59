// The seed's second script (CommonJS), as in Node's cluster documentation. The port comes
// from PORT (herd sets it with --port) so that the example runs beside other servers.
const cluster = require('node:cluster');
const http = require('node:http');
const numCPUs = require('node:os').availableParallelism();
const process = require('node:process');
// herd's tests run it with WORKERS=2 on a 2-core machine beside other tests.
const workers = Number(process.env.WORKERS) || numCPUs;

if (cluster.isPrimary) {
  console.log(`Primary ${process.pid} is running`);

  // Fork workers.
  for (let i = 0; i < workers; i++) {
    cluster.fork();
  }

  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} died`);
  });
} else {
  // Workers can share any TCP connection
  // In this case it is an HTTP server
  http
    .createServer((req, res) => {
      res.writeHead(200);
      res.end(`hello world pid=${process.pid}\n`);
    })
    .listen(Number(process.env.PORT) || 8000);

  console.log(`Worker ${process.pid} started`);
}
