// A plain Node http server, written as for PM2 or `node server.js`: no herd code at all.
const http = require('http');
const cluster = require('cluster');

const port = Number(process.env.PORT || 3000);
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/slow/')) {
    const ms = Number(req.url.slice(6)) || 0;
    setTimeout(() => res.end(`pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE} slept=${ms}`), ms);
    return;
  }
  if (req.url === '/worker') {
    res.end(`isWorker=${cluster.isWorker} id=${cluster.worker && cluster.worker.id}`);
    return;
  }
  res.end(`pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE}`);
});
server.listen(port, () => console.log(`http.js pid ${process.pid} listening on ${port}`));

// Echo messages back, as apps using PM2's process messages do.
process.on('message', (msg) => {
  if (process.send) process.send({ type: 'process:msg', data: { echo: msg, pid: process.pid }, topic: 'echo' });
});
